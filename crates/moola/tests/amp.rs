//! Mixed precision on the three classifiers: a forward pass under kiln's autocast (f16 and bf16
//! matmuls, convolutions and linear layers; everything else f32) agrees with the f32 forward
//! within a stated tolerance, and does change the numbers (so the policy is really applied).
//!
//! Models at the reference sizes, eval mode, batch 8 of 105×4 windows (random walks around
//! 20,000, as `moola bench` uses, z-scored per window: raw prices of that size overflow f16,
//! whose largest value is 65,504, in the first convolution, in PyTorch's autocast as here).
//! Compared: class probabilities (softmax of the logits), max |p_half − p_f32| over the batch;
//! a NaN or inf counts as an infinite difference. Tolerances: 1e-2 for bf16 (8-bit mantissa),
//! 2e-3 for f16 (11-bit); measured on burn-flex: bf16 6.2e-4 / 7.8e-4 / 1.2e-3 and f16 4.2e-5 /
//! 3.2e-4 / 2.9e-4 for SimpleLSTM / CNN-Transformer / RWKV-TS.

use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use kiln::amp::{Precision, autocast};
use kiln::backend::Flex;
use moola::model::{CnnTransformerConfig, ModelSpec, RwkvTsConfig, SimpleLstmConfig};

type B = Flex;

fn max_prob_diff(spec: &ModelSpec, precision: Precision) -> f32 {
    let device = Default::default();
    let mut data = moola::bench::synthetic_windows(8, 3);
    let per = data.seq_len * data.n_features;
    for w in data.x.chunks_mut(per) {
        let mean = w.iter().sum::<f32>() / per as f32;
        let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / per as f32).sqrt();
        w.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }
    kiln::seed::seed_backend::<B>(&device, 1, "init", 0);
    let net = spec
        .init::<B>(data.n_features, 2, data.seq_len, &device)
        .unwrap();
    let x = || {
        Tensor::<B, 3>::from_data(
            TensorData::new(data.x.clone(), [8, data.seq_len, data.n_features]),
            &device,
        )
    };
    let probs = |t: Tensor<B, 2>| -> Vec<f32> { softmax(t, 1).into_data().to_vec().unwrap() };
    let full = probs(net.forward(x()).logits);
    let half = probs(autocast(precision, || net.forward(x()).logits));
    full.iter()
        .zip(&half)
        .map(|(a, b)| {
            let d = (a - b).abs();
            if d.is_finite() { d } else { f32::INFINITY }
        })
        .fold(0.0, f32::max)
}

fn check(spec: ModelSpec, name: &str, bf16_tol: f32, f16_tol: f32) {
    for (precision, tol) in [
        (Precision::Bf16Mixed, bf16_tol),
        (Precision::F16Mixed, f16_tol),
    ] {
        let d = max_prob_diff(&spec, precision);
        eprintln!("{name} {precision}: max |Δp| = {d:e}");
        assert!(d <= tol, "{name} {precision}: max |Δp| = {d:e} > {tol:e}");
        assert!(d > 0.0, "{name} {precision}: autocast changed nothing");
    }
}

#[test]
fn simple_lstm_half_forward_matches_f32() {
    check(
        ModelSpec::SimpleLstm(SimpleLstmConfig::default()),
        "simple_lstm",
        1e-2,
        2e-3,
    );
}

#[test]
fn cnn_transformer_half_forward_matches_f32() {
    check(
        ModelSpec::CnnTransformer(CnnTransformerConfig::default()),
        "cnn_transformer",
        1e-2,
        2e-3,
    );
}

#[test]
fn rwkv_ts_half_forward_matches_f32() {
    check(
        ModelSpec::RwkvTs(RwkvTsConfig::default()),
        "rwkv_ts",
        1e-2,
        2e-3,
    );
}

/// Test accuracy on the bundled BasicMotions (40 train / 40 test) with the quickstart recipe
/// (batch 8, up to 150 epochs, early stopping on a 15% split) in `precision`, and the test
/// probabilities.
fn basic_motions_accuracy(name: &str, precision: Precision) -> (f64, Vec<Vec<f64>>) {
    use kiln::amp::PrecisionSetting;
    use kiln::backend::Autodiff;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/BasicMotions");
    let train = moola::data::read_any(&dir.join("BasicMotions_TRAIN.ts")).unwrap();
    let test = moola::data::read_any(&dir.join("BasicMotions_TEST.ts")).unwrap();
    let overrides: Vec<String> = [
        (format!("{name}.train.batch_size"), "8"),
        (format!("{name}.train.n_epochs"), "150"),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k, v.to_string()])
    .collect();
    let cfg = moola::config::MoolaConfig::load(None, &overrides).unwrap();
    let (spec, mut recipe) = cfg.model(name).unwrap();
    recipe.precision = PrecisionSetting::Fixed(precision);
    let mut clf = moola::Classifier::<Autodiff<B>>::new(spec, recipe, Default::default());
    let fit = clf.fit(&train).unwrap();
    let labels = clf.labels().unwrap();
    let y = labels.encode(test.require_labels().unwrap()).unwrap();
    let proba = clf.predict_proba(&test).unwrap();
    let report = kiln::metrics::ClassificationReport::from_probabilities(&y, &proba).unwrap();
    eprintln!(
        "{name} {precision}: test accuracy {:.3} after {} epochs",
        report.accuracy, fit.epochs
    );
    (report.accuracy, proba)
}

#[test]
fn bf16_mixed_training_reaches_the_f32_accuracy_on_basic_motions() {
    let _guard = kiln::seed::global_lock();
    for name in ["simple_lstm", "cnn_transformer"] {
        let (full, p32) = basic_motions_accuracy(name, Precision::F32);
        let (half, p16) = basic_motions_accuracy(name, Precision::Bf16Mixed);
        // The precision was applied: bf16 rounding gives another model.
        assert_ne!(p16, p32, "{name}: bf16-mixed trained exactly the f32 model");
        assert!(full >= 0.95, "{name} f32: {full}");
        assert!(
            half >= full - 0.025,
            "{name}: bf16-mixed {half} vs f32 {full}"
        );
    }
}
