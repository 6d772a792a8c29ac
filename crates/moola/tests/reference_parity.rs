//! Parity of the CNN-Transformer (with and without pointer heads), RWKV-TS (with and without
//! InstanceNorm) and the classifier losses with the reference's OWN PyTorch code, on the
//! fixtures of `tools/parity/moola_reference_fixtures.py`: it fits the reference's
//! `CnnTransformerModel` / `RWKVTSModel` (commit 6ecdb28) for one epoch on tiny NumPy arrays,
//! perturbs the weights, writes the checkpoint with the reference's own `save`, and records the
//! reference network's eval-mode outputs in float64 (on the float32 weights and inputs) and its
//! `FocalLoss`, `mixup_criterion` and `compute_multitask_loss` on fixed targets.
//!
//! Each checkpoint goes through moola's public import path ([`import_torch_checkpoint`], strict:
//! every tensor used, every parameter filled), its metadata must map to the matching moola
//! config, and the imported model is also saved and reloaded as a [`Classifier`] whose
//! `predict_proba` / `predict` / `predict_with_pointers` must reproduce the reference's. Every
//! value is compared with `|a − b| ≤ 1e-4 · max(1, |b|)`.
//!
//! SimpleLSTM is not covered here: the architecture the port follows (reference commit 7c9b1bb)
//! is not in the reference's public history, and the 6ecdb28 `SimpleLSTMModel` is a different
//! network (see the script's docstring); `tests/import.rs` covers it.

use std::path::PathBuf;

use burn::prelude::*;
use kiln::backend::{Autodiff, Flex};
use moola::data::WindowSet;
use moola::import::import_torch_checkpoint;
use moola::loss;
use moola::model::rwkv_ts::{INSTANCE_NORM_EPS, window_mask_values};
use moola::model::{InnerWindow, ModelCard, ModelSpec, Net, Readout, RwkvTs};
use moola::{Classifier, TrainConfig};
use serde::Deserialize;
use serde_json::Value;

type B = Flex;

mod common;
use common::{check, scalar, tensor3, values};

/// The reference commit the fixtures were computed from.
const REFERENCE_COMMIT: &str = "6ecdb28c78d6b91c94deabaf621c0c4ea4425e78";

/// The focal loss' focusing parameter everywhere in the reference.
const GAMMA: f64 = 2.0;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

#[derive(Deserialize)]
struct Fixture {
    reference_commit: String,
    model: String,
    hyperparams: Value,
    predict_pointers: Option<bool>,
    n_classes: usize,
    input_dim: usize,
    classes: Vec<String>,
    label_types: Vec<String>,
    state_dict_keys: Vec<(String, Vec<usize>)>,
    input: Vec<Vec<Vec<f32>>>,
    logits: Vec<Vec<f64>>,
    probs: Vec<Vec<f64>>,
    #[serde(default)]
    start_logits: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    end_logits: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    start_probs: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    end_probs: Option<Vec<Vec<f64>>>,
    /// RWKV: each block's output at its first steps `[L, B, steps, d]`.
    #[serde(default)]
    block_heads: Option<Vec<Vec<Vec<Vec<f64>>>>>,
    /// RWKV: the state each block returns (its last step) `[L, B, d]`.
    #[serde(default)]
    block_states: Option<Vec<Vec<Vec<f64>>>>,
    /// RWKV: the reference head on the mean over all steps of the last block's output.
    #[serde(default)]
    mean_readout_logits: Option<Vec<Vec<f64>>>,
    reference_predictions: Predictions,
    losses: Losses,
}

#[derive(Deserialize)]
struct Predictions {
    predicted_labels: Vec<String>,
    #[serde(default)]
    start_predictions: Option<Vec<usize>>,
    #[serde(default)]
    end_predictions: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct Losses {
    targets: Vec<i64>,
    focal: f64,
    mixup: Mixup,
    #[serde(default)]
    alpha: Option<Vec<f32>>,
    #[serde(default)]
    focal_alpha: Option<f64>,
    #[serde(default)]
    multitask: Option<Multitask>,
}

#[derive(Deserialize)]
struct Mixup {
    y_b: Vec<i64>,
    lam: f64,
    focal: f64,
}

#[derive(Deserialize)]
struct Multitask {
    class_targets: Vec<i64>,
    start_targets: Vec<i64>,
    end_targets: Vec<i64>,
    cases: Vec<MultitaskCase>,
}

#[derive(Deserialize)]
struct MultitaskCase {
    alpha: f64,
    beta: f64,
    total: f64,
    class: f64,
    start: f64,
    end: f64,
}

fn read_fixture(name: &str) -> Fixture {
    let path = fixture(&format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(fx.reference_commit, REFERENCE_COMMIT, "{name}");
    fx
}

fn flat(v: &[Vec<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// The reference's float64 logits as a float32 tensor (what the losses are evaluated on).
fn logits_tensor(rows: &[Vec<f64>], device: &burn::tensor::Device<B>) -> Tensor<B, 2> {
    let (n, c) = (rows.len(), rows[0].len());
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [n, c]), device)
}

fn int_tensor(v: &[i64], device: &burn::tensor::Device<B>) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn usize_list(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The reference's `hyperparams` (and `predict_pointers`) map to moola's config.
fn assert_spec_mirrors_the_reference(fx: &Fixture, spec: &ModelSpec) {
    let hp = &fx.hyperparams;
    match spec {
        ModelSpec::CnnTransformer(c) => {
            assert_eq!(c.cnn_channels, usize_list(&hp["cnn_channels"]));
            assert_eq!(c.cnn_kernels, usize_list(&hp["cnn_kernels"]));
            assert_eq!(
                Some(c.transformer_layers as u64),
                hp["transformer_layers"].as_u64()
            );
            assert_eq!(
                Some(c.transformer_heads as u64),
                hp["transformer_heads"].as_u64()
            );
            assert_eq!(Some(c.dropout), hp["dropout_rate"].as_f64());
            assert_eq!(c.predict_pointers, fx.predict_pointers.unwrap_or(false));
            assert_eq!(c.window, None, "the window follows the sequence length");
        }
        ModelSpec::RwkvTs(c) => {
            assert_eq!(Some(c.d_model as u64), hp["d_model"].as_u64());
            assert_eq!(Some(c.n_layers as u64), hp["n_layers"].as_u64());
            assert_eq!(c.patch_sizes, usize_list(&hp["patch_sizes"]));
            assert_eq!(Some(c.dropout), hp["dropout_rate"].as_f64());
            assert_eq!(Some(c.instance_norm), hp["instance_norm"].as_bool());
            assert_eq!(c.window, None, "the window follows the sequence length");
            assert_eq!(
                c.readout,
                Default::default(),
                "the reference reads the last step"
            );
        }
        other => panic!("{}: unexpected spec {other:?}", fx.model),
    }
}

/// moola's parameter names under its key rule are the reference's state-dict keys (with the
/// same shapes), the tensors it does not load aside (BatchNorm's `num_batches_tracked`, RWKV's
/// `window_mask` buffers, which the import checks against the model's window instead).
fn assert_names(net: &Net<B>, fx: &Fixture) {
    let mut ours = moola::import::torch_keys::<B, _>(net);
    let mut theirs: Vec<_> = fx
        .state_dict_keys
        .iter()
        .filter(|(k, _)| !k.ends_with(".num_batches_tracked") && !k.ends_with(".window_mask"))
        .cloned()
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(
        ours, theirs,
        "{}: parameter names under torch_key",
        fx.model
    );
}

/// Imports a reference checkpoint and checks it against its fixture: metadata, names, the
/// network's outputs, and the same through a saved and reloaded [`Classifier`].
fn check_model(name: &str) -> Fixture {
    let device = Default::default();
    let fx = read_fixture(name);
    let (net, card) = import_torch_checkpoint::<B>(&fixture(&format!("{name}.pt")), &device)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));

    // Metadata: the reference's own save dict (NumPy label scalars included).
    assert_eq!(
        fx.label_types,
        ["numpy.str_"],
        "{name}: labels as the reference saves them"
    );
    assert_eq!(card.spec.name(), fx.model, "{name}: detected model");
    assert_eq!(card.classes, fx.classes, "{name}: classes in index order");
    assert_eq!(card.n_classes, fx.n_classes);
    assert_eq!(card.input_dim, fx.input_dim);
    assert_eq!(card.seq_len, InnerWindow::REFERENCE_LEN);
    assert_spec_mirrors_the_reference(&fx, &card.spec);
    assert_names(&net, &fx);

    // The network's outputs.
    let out = net.forward(tensor3(&fx.input, &device));
    check(
        &format!("{name} logits"),
        &values(out.logits),
        &flat(&fx.logits),
    );
    match (&out.pointers, &fx.start_logits, &fx.end_logits) {
        (Some((start, end)), Some(want_start), Some(want_end)) => {
            assert_eq!(start.dims()[1], InnerWindow::REFERENCE.len());
            check(
                &format!("{name} start logits"),
                &values(start.clone()),
                &flat(want_start),
            );
            check(
                &format!("{name} end logits"),
                &values(end.clone()),
                &flat(want_end),
            );
        }
        (None, None, None) => {}
        _ => panic!("{name}: pointer outputs do not match the fixture"),
    }
    if let Net::RwkvTs(rwkv) = &net {
        let (Some(heads), Some(states), Some(mean_logits)) =
            (&fx.block_heads, &fx.block_states, &fx.mean_readout_logits)
        else {
            panic!("{name}: no block outputs in the fixture");
        };
        check_rwkv_blocks(name, rwkv, tensor3(&fx.input, &device), heads, states);
        // moola's mean readout sees every step, the state-dependent first ones included.
        let mut mean = rwkv.clone();
        mean.readout = Readout::Mean;
        check(
            &format!("{name} mean-readout logits"),
            &values(mean.forward(tensor3(&fx.input, &device))),
            &flat(mean_logits),
        );
    }

    check_classifier_api(name, &fx, net, card);
    fx
}

/// RWKV's blocks one by one (this replays the network's forward up to its blocks: input
/// projection, InstanceNorm, the ×1.2 window weights, the state threaded from block to block):
/// each block's first output steps, where the threaded state enters, and the state it returns.
/// The classifier reads only the last step, which the state never reaches, so the logits alone
/// cannot tell whether it is threaded (the mean-readout logits check the library's own loop).
fn check_rwkv_blocks(
    name: &str,
    net: &RwkvTs<B>,
    x: Tensor<B, 3>,
    heads: &[Vec<Vec<Vec<f64>>>],
    states: &[Vec<Vec<f64>>],
) {
    let [batch, steps, _] = x.dims();
    let device = x.device();
    let mut h = net.input_proj.forward(x);
    let d = h.dims()[2];
    if net.instance_norm {
        let (var, mean) = h.clone().var_mean_bias(1);
        h = (h - mean) / var.add_scalar(INSTANCE_NORM_EPS).sqrt();
    }
    let window = net.window().expect("105 steps: the reference window");
    let mask = Tensor::<B, 3>::from_data(
        TensorData::new(window_mask_values(window, steps), [1, steps, 1]),
        &device,
    );
    let mut state = Tensor::zeros([batch, 1, d], &device);
    assert_eq!(net.blocks.len(), heads.len(), "{name}: blocks");
    for (i, block) in net.blocks.iter().enumerate() {
        (h, state) = block.forward(h, state, Some(&mask));
        let want: Vec<f64> = heads[i].iter().flatten().flatten().copied().collect();
        let head_steps = heads[i][0].len();
        let got = values(h.clone().slice([0..batch, 0..head_steps, 0..d]));
        check(&format!("{name} block {i} first steps"), &got, &want);
        check(
            &format!("{name} block {i} state"),
            &values(state.clone()),
            &flat(&states[i]),
        );
    }
}

/// The imported model saved as a moola model file and reloaded with [`Classifier::load`]
/// reproduces the reference's `predict_proba`, `predict` and `predict_with_pointers`.
fn check_classifier_api(name: &str, fx: &Fixture, net: Net<B>, card: ModelCard) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    moola::model::save(&net, &card, &path).unwrap();
    let config = TrainConfig::for_model(card.spec.name());
    let clf = Classifier::<Autodiff<B>>::load(&path, config, Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));

    let n = fx.input.len();
    let data = WindowSet::new(
        (0..n).map(|i| i.to_string()).collect(),
        fx.input.iter().flatten().flatten().copied().collect(),
        fx.input[0].len(),
        fx.input[0][0].len(),
        None,
        None,
    )
    .unwrap();
    let proba = clf.predict_proba(&data).unwrap();
    check(&format!("{name} probs"), &flat(&proba), &flat(&fx.probs));
    assert_eq!(
        clf.predict(&data).unwrap(),
        fx.reference_predictions.predicted_labels,
        "{name}: predicted labels"
    );

    let pointers = clf.predict_with_pointers(&data);
    match (&fx.start_probs, &fx.end_probs) {
        (Some(start), Some(end)) => {
            let p = pointers.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            check(
                &format!("{name} start probs"),
                &flat(&p.start_probabilities),
                &flat(start),
            );
            check(
                &format!("{name} end probs"),
                &flat(&p.end_probabilities),
                &flat(end),
            );
            check(
                &format!("{name} pointer-call probs"),
                &flat(&p.probabilities),
                &flat(&fx.probs),
            );
            let want = &fx.reference_predictions;
            assert_eq!(Some(&p.start_predictions), want.start_predictions.as_ref());
            assert_eq!(Some(&p.end_predictions), want.end_predictions.as_ref());
            assert_eq!(p.labels, want.predicted_labels);
        }
        _ => assert!(
            pointers.is_err(),
            "{name}: a model without pointer heads predicts no pointers"
        ),
    }
}

#[test]
fn cnn_transformer_with_pointers_matches_the_reference() {
    let fx = check_model("cnn_transformer_ptr");
    assert_eq!(fx.predict_pointers, Some(true));
}

#[test]
fn cnn_transformer_three_classes_matches_the_reference() {
    let fx = check_model("cnn_transformer_3c");
    assert_eq!(fx.predict_pointers, Some(false));
    assert_eq!(fx.n_classes, 3);
}

#[test]
fn rwkv_ts_matches_the_reference() {
    let fx = check_model("rwkv_ts");
    assert_eq!(
        fx.predict_pointers, None,
        "RWKV-TS saves no predict_pointers"
    );
    assert_eq!(fx.hyperparams["instance_norm"], true);
}

#[test]
fn rwkv_ts_without_instance_norm_matches_the_reference() {
    let fx = check_model("rwkv_ts_plain");
    assert_eq!(fx.hyperparams["instance_norm"], false);
    assert_eq!(fx.n_classes, 2);
}

/// The reference's `FocalLoss(gamma=2)` (with and without per-class α) and its
/// `mixup_criterion` on the reference logits of every fixture.
#[test]
fn focal_and_mixup_losses_match_the_reference() {
    let device = Default::default();
    let mut with_alpha = 0;
    for name in [
        "cnn_transformer_ptr",
        "cnn_transformer_3c",
        "rwkv_ts",
        "rwkv_ts_plain",
    ] {
        let fx = read_fixture(name);
        let l = &fx.losses;
        let logits = logits_tensor(&fx.logits, &device);
        let y = int_tensor(&l.targets, &device);
        let focal =
            |targets: Tensor<B, 1, Int>| loss::focal_loss(logits.clone(), targets, GAMMA, None);
        check(
            &format!("{name} focal"),
            &[scalar(focal(y.clone()))],
            &[l.focal],
        );
        let yb = int_tensor(&l.mixup.y_b, &device);
        check(
            &format!("{name} mixup focal"),
            &[scalar(loss::mixed(focal, y.clone(), yb, l.mixup.lam))],
            &[l.mixup.focal],
        );
        if let (Some(alpha), Some(want)) = (&l.alpha, l.focal_alpha) {
            let alpha = Tensor::<B, 1>::from_data(alpha.as_slice(), &device);
            let got = loss::focal_loss(logits.clone(), y, GAMMA, Some(&alpha));
            check(&format!("{name} focal α"), &[scalar(got)], &[want]);
            with_alpha += 1;
        }
    }
    assert_eq!(with_alpha, 1, "one fixture checks the per-class α");
}

/// The reference's `compute_multitask_loss` (and its class / start / end parts) on the pointer
/// model's reference logits.
#[test]
fn multitask_loss_matches_the_reference() {
    let device = Default::default();
    let fx = read_fixture("cnn_transformer_ptr");
    let mt = fx.losses.multitask.as_ref().expect("pointer fixture");
    let class_logits = logits_tensor(&fx.logits, &device);
    let start_logits = logits_tensor(fx.start_logits.as_ref().unwrap(), &device);
    let end_logits = logits_tensor(fx.end_logits.as_ref().unwrap(), &device);
    let y = int_tensor(&mt.class_targets, &device);
    let starts = int_tensor(&mt.start_targets, &device);
    let ends = int_tensor(&mt.end_targets, &device);
    let width = InnerWindow::REFERENCE.len();
    assert_eq!(mt.cases.len(), 2);
    for case in &mt.cases {
        let what = format!("multitask α={} β={}", case.alpha, case.beta);
        let parts = [
            scalar(loss::cross_entropy(class_logits.clone(), y.clone())),
            scalar(loss::bce_with_logits(
                start_logits.clone(),
                loss::one_hot(starts.clone(), width),
            )),
            scalar(loss::bce_with_logits(
                end_logits.clone(),
                loss::one_hot(ends.clone(), width),
            )),
        ];
        check(
            &format!("{what} class/start/end"),
            &parts,
            &[case.class, case.start, case.end],
        );
        let total = loss::multitask_loss(
            class_logits.clone(),
            y.clone(),
            start_logits.clone(),
            end_logits.clone(),
            starts.clone(),
            ends.clone(),
            case.alpha,
            case.beta,
        );
        check(&format!("{what} total"), &[scalar(total)], &[case.total]);
    }
}
