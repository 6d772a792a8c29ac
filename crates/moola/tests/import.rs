//! PyTorch checkpoint import: parity with PyTorch on the fixtures of
//! `tools/parity/moola_fixtures.py` and errors on broken checkpoints.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use kiln::backend::Flex;
use moola::import::{ImportOptions, import_torch_checkpoint, import_torch_checkpoint_with};
use moola::model::{InnerWindow, ModelSpec, Net};
use serde::Deserialize;

type B = Flex;

/// Parity tolerance on probabilities (f32 forward vs PyTorch float64 on the same weights).
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

#[derive(Deserialize)]
struct Expected {
    model: String,
    classes: Vec<String>,
    input: Vec<Vec<Vec<f32>>>,
    probs: Vec<Vec<f64>>,
    #[serde(default)]
    start_probs: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    end_probs: Option<Vec<Vec<f64>>>,
    n_params: usize,
}

fn load_expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn input_tensor(input: &[Vec<Vec<f32>>], device: &burn::tensor::Device<B>) -> Tensor<B, 3> {
    let (b, t, f) = (input.len(), input[0].len(), input[0][0].len());
    let flat: Vec<f32> = input.iter().flatten().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t, f]), device)
}

fn max_abs_diff(got: Tensor<B, 2>, want: &[Vec<f64>]) -> f64 {
    let [rows, cols] = got.dims();
    assert_eq!((rows, cols), (want.len(), want[0].len()), "output shape");
    let got: Vec<f32> = got.into_data().to_vec().unwrap();
    got.iter()
        .zip(want.iter().flatten())
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

fn trainable_params(net: &Net<B>) -> usize {
    kiln::checkpoint::param_shapes::<B, _>(net)
        .into_iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Imports a fixture and returns the max abs difference of its probabilities.
fn check_parity(name: &str) -> f64 {
    let device = Default::default();
    let expected = load_expected(name);
    let (net, card) = import_torch_checkpoint::<B>(&fixture(&format!("{name}.pt")), &device)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(card.spec.name(), expected.model, "{name}: detected model");
    assert_eq!(
        card.classes, expected.classes,
        "{name}: classes in index order"
    );
    assert_eq!(card.n_classes, expected.classes.len());
    assert_eq!(card.input_dim, 4);
    assert_eq!(card.seq_len, InnerWindow::REFERENCE_LEN);
    assert_eq!(
        trainable_params(&net),
        expected.n_params,
        "{name}: parameter count"
    );

    let out = net.forward(input_tensor(&expected.input, &device));
    let mut worst = max_abs_diff(softmax(out.logits, 1), &expected.probs);
    match (&out.pointers, &expected.start_probs, &expected.end_probs) {
        (Some((start, end)), Some(want_start), Some(want_end)) => {
            let [_, len] = start.dims();
            assert_eq!(len, InnerWindow::REFERENCE.len());
            worst = worst.max(max_abs_diff(sigmoid(start.clone()), want_start));
            worst = worst.max(max_abs_diff(sigmoid(end.clone()), want_end));
        }
        (None, None, None) => {}
        _ => panic!("{name}: pointer outputs do not match the fixture"),
    }
    println!("{name}: max |Δp| = {worst:.3e}");
    assert!(worst < TOLERANCE, "{name}: max |Δp| = {worst:e}");
    worst
}

#[test]
fn simple_lstm_one_layer_matches_pytorch() {
    check_parity("simple_lstm_1l");
}

#[test]
fn simple_lstm_two_layers_matches_pytorch() {
    check_parity("simple_lstm_2l");
}

#[test]
fn cnn_transformer_with_pointers_matches_pytorch() {
    check_parity("cnn_transformer_ptr");
}

#[test]
fn cnn_transformer_three_classes_matches_pytorch() {
    check_parity("cnn_transformer_3c");
}

#[test]
fn rwkv_ts_matches_pytorch() {
    check_parity("rwkv_ts");
}

#[test]
fn imported_spec_mirrors_the_hyperparams() {
    let device = Default::default();
    let (_, card) =
        import_torch_checkpoint::<B>(&fixture("cnn_transformer_ptr.pt"), &device).unwrap();
    match card.spec {
        ModelSpec::CnnTransformer(c) => {
            assert_eq!(c.cnn_channels, vec![8, 12, 12]);
            assert_eq!(c.cnn_kernels, vec![3, 5, 9]);
            assert_eq!(c.transformer_layers, 2);
            assert_eq!(c.transformer_heads, 4);
            assert!(c.predict_pointers);
            assert_eq!(c.dropout, 0.25);
        }
        other => panic!("unexpected spec {other:?}"),
    }
    let (_, card) = import_torch_checkpoint::<B>(&fixture("rwkv_ts.pt"), &device).unwrap();
    match card.spec {
        ModelSpec::RwkvTs(c) => {
            assert_eq!((c.d_model, c.n_layers), (16, 2));
            assert_eq!(c.patch_sizes, vec![7, 15, 21, 35]);
            assert!(c.instance_norm);
        }
        other => panic!("unexpected spec {other:?}"),
    }
}

#[test]
fn imported_models_round_trip_through_save_and_load() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    for name in ["simple_lstm_2l", "cnn_transformer_ptr", "rwkv_ts"] {
        let expected = load_expected(name);
        let (net, card) =
            import_torch_checkpoint::<B>(&fixture(&format!("{name}.pt")), &device).unwrap();
        let path = dir.path().join(name);
        moola::model::save(&net, &card, &path).unwrap();
        let (loaded, loaded_card) = moola::model::load::<B>(&path, &device).unwrap();
        assert_eq!(loaded_card, card);
        let out = loaded.forward(input_tensor(&expected.input, &device));
        assert!(
            max_abs_diff(softmax(out.logits, 1), &expected.probs) < TOLERANCE,
            "{name}"
        );
        if let (Some((start, _)), Some(want)) = (out.pointers, &expected.start_probs) {
            assert!(max_abs_diff(sigmoid(start), want) < TOLERANCE, "{name}");
        }
    }
}

#[test]
fn explicit_model_name_must_fit_the_checkpoint() {
    let device = Default::default();
    let options = ImportOptions {
        model: Some("rwkv_ts".into()),
        ..ImportOptions::default()
    };
    let err = import_torch_checkpoint_with::<B>(&fixture("simple_lstm_1l.pt"), &options, &device)
        .unwrap_err();
    assert!(format!("{err:#}").contains("d_model"), "{err:#}");
}

#[test]
fn rwkv_import_at_another_length_has_no_window() {
    let device = Default::default();
    // 50 steps: no inner window; the 105-step reference mask is then never applied.
    let options = ImportOptions {
        seq_len: 50,
        ..ImportOptions::default()
    };
    let (net, card) =
        import_torch_checkpoint_with::<B>(&fixture("rwkv_ts.pt"), &options, &device).unwrap();
    assert_eq!(card.seq_len, 50);
    match net {
        Net::RwkvTs(m) => assert_eq!(m.window(), None),
        _ => panic!("expected RWKV-TS"),
    }
}

fn import_error(name: &str) -> String {
    let device = Default::default();
    match import_torch_checkpoint::<B>(&fixture(name), &device) {
        Ok(_) => panic!("{name} imported without error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let err = import_error("broken_missing.pt");
    assert!(
        err.contains("`ln.bias`") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn extra_tensor_is_an_error_naming_it() {
    let err = import_error("broken_extra.pt");
    assert!(
        err.contains("`extra_head.weight`") && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn mis_shaped_tensor_is_an_error_naming_it() {
    let err = import_error("broken_shape.pt");
    assert!(
        err.contains("`ln.weight` has shape [17], the model expects [16]"),
        "{err}"
    );
    assert!(!err.contains("unexpected"), "{err}");
}

#[test]
fn non_checkpoint_file_is_an_error() {
    let err = import_error("simple_lstm_1l.json");
    assert!(err.contains("simple_lstm_1l.json"), "{err}");
    let device = Default::default();
    let err = import_torch_checkpoint::<B>(&fixture("does_not_exist.pt"), &device).unwrap_err();
    assert!(format!("{err:#}").contains("does_not_exist.pt"), "{err:#}");
}

#[derive(Deserialize)]
struct BiLstmExpected {
    input: Vec<Vec<Vec<f32>>>,
    output: Vec<Vec<Vec<f64>>>,
    h_n: Vec<Vec<Vec<f64>>>,
    c_n: Vec<Vec<Vec<f64>>>,
}

fn max_abs_diff3(got: Tensor<B, 3>, want: &[Vec<Vec<f64>>]) -> f64 {
    let dims = got.dims();
    assert_eq!(
        dims,
        [want.len(), want[0].len(), want[0][0].len()],
        "output shape"
    );
    let got: Vec<f32> = got.into_data().to_vec().unwrap();
    got.iter()
        .zip(want.iter().flatten().flatten())
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

/// A checkpoint whose metadata the reference's `save` wrote after `fit` on NumPy arrays
/// (`np.str_` labels, `np.int64` counts; `simple_lstm_1l`'s weights) imports with plain-string
/// classes and `simple_lstm_1l`'s probabilities.
#[test]
fn numpy_labels_and_counts_import_as_plain_values() {
    let device = Default::default();
    let expected = load_expected("simple_lstm_1l");
    let (net, card) =
        import_torch_checkpoint::<B>(&fixture("simple_lstm_numpy_labels.pt"), &device)
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(card.spec.name(), "simple_lstm");
    assert_eq!(card.classes, vec!["down".to_string(), "up".to_string()]);
    assert_eq!((card.n_classes, card.input_dim), (2, 4));
    let out = net.forward(input_tensor(&expected.input, &device));
    let worst = max_abs_diff(softmax(out.logits, 1), &expected.probs);
    assert!(worst < TOLERANCE, "max |Δp| = {worst:e}");
}

/// The same bare bidirectional LSTM state dict through kiln's strict loader and moola's key
/// rule ([`moola::import::torch_key`]: `weight_ih_l{k}[_reverse]` ↔
/// `layers.{k}.{forward,reverse}_dir.weight_ih`), also read from an encoder checkpoint.
#[test]
fn bidirectional_lstm_loads_through_the_key_rule() {
    use kiln::torch::{Import, TorchFile};
    use moola::nn::LstmConfig;

    let device = Default::default();
    let text = std::fs::read_to_string(fixture("bilstm.json")).unwrap();
    let expected: BiLstmExpected = serde_json::from_str(&text).unwrap();
    let lstm = LstmConfig::new(4, 6)
        .with_num_layers(2)
        .with_bidirectional(true)
        .init::<B>(&device);
    // The bare state dict, and the same tensors as the `encoder_state_dict` of an encoder
    // checkpoint (with NumPy hyper-parameters).
    let encoder = moola::import::read_encoder_checkpoint(&fixture("encoder_bilstm.pt")).unwrap();
    assert_eq!(encoder.file.entry(), Some("encoder_state_dict"));
    let hp = encoder.hyperparams.as_ref().unwrap();
    assert_eq!(hp.get("input_dim").and_then(|v| v.as_int()), Some(4));
    assert_eq!(hp.get("dropout").and_then(|v| v.as_f64()), Some(0.2));
    for file in [TorchFile::open(fixture("bilstm.pt")).unwrap(), encoder.file] {
        let (lstm, applied) = Import::new(&file, &moola::import::torch_key)
            .apply(lstm.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(applied.loaded, 16);
        assert!(applied.untouched.is_empty() && applied.excluded.is_empty());
        let (out, state) = lstm.forward_with_state(input_tensor(&expected.input, &device), None);
        let worst = max_abs_diff3(out, &expected.output)
            .max(max_abs_diff3(state.h, &expected.h_n))
            .max(max_abs_diff3(state.c, &expected.c_n));
        assert!(worst < TOLERANCE, "{}: {worst}", file.path().display());
    }
}
