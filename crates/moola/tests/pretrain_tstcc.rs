//! TS-TCC pre-training through the public API: the encoder's names and shapes against the
//! CNN-Transformer, the projection head, a short pre-training run (loss, history, files), the
//! encoder artefact, and the transfer into the classifier with freezing and staged unfreezing.
//!
//! Every test holds kiln's global seed lock: the backend generator is process-global, and a
//! test drawing from it (parameter init, random inputs) would perturb the seeded runs of the
//! reproducibility tests.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use kiln::backend::{Autodiff, Flex};
use moola::WindowSet;
use moola::model::{CnnTransformer, CnnTransformerConfig};
use moola::pretrain::ts_tcc::{
    self, EncoderCard, TsTccConfig, TsTccEncoder, TsTccPretrainConfig, UNFREEZE_EPOCHS,
};
use moola::train::RunOptions;

type B = Flex;
type AD = Autodiff<Flex>;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// The tiny architecture of these tests.
fn tiny() -> TsTccConfig {
    TsTccConfig {
        cnn_channels: vec![4, 8],
        cnn_kernels: vec![3, 5],
        transformer_layers: 1,
        transformer_heads: 2,
        dropout: 0.1,
        projection_hidden_dim: 16,
        projection_output_dim: 8,
    }
}

fn classifier_config(config: &TsTccConfig) -> CnnTransformerConfig {
    config.classifier_config()
}

fn classifier<BB: Backend>(config: &TsTccConfig, seq_len: usize) -> CnnTransformer<BB> {
    let c = classifier_config(config)
        .init::<BB>(4, 2, seq_len, &Default::default())
        .unwrap();
    kiln::checkpoint::materialize(c)
}

fn encoder<BB: Backend>(config: &TsTccConfig) -> TsTccEncoder<BB> {
    kiln::checkpoint::materialize(config.init_encoder::<BB>(4, &Default::default()).unwrap())
}

/// Every float parameter by path: values and `require_grad`.
struct Params {
    skip_buffers: bool,
    path: Vec<String>,
    out: BTreeMap<String, (Vec<f32>, bool)>,
}

impl<BB: Backend> ModuleVisitor<BB> for Params {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<BB, D>>) {
        let path = self.path.join(".");
        if self.skip_buffers && (path.ends_with("running_mean") || path.ends_with("running_var")) {
            return;
        }
        let t = param.val();
        let trainable = t.is_require_grad();
        let values = t.into_data().convert::<f32>().to_vec().unwrap();
        self.out.insert(path, (values, trainable));
    }
}

/// Every float tensor by path (BatchNorm running statistics included).
fn tensors<BB: Backend, M: Module<BB>>(module: &M) -> BTreeMap<String, (Vec<f32>, bool)> {
    let mut v = Params {
        skip_buffers: false,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The parameters (BatchNorm running statistics are buffers, not parameters).
fn params<BB: Backend, M: Module<BB>>(module: &M) -> BTreeMap<String, (Vec<f32>, bool)> {
    let mut v = Params {
        skip_buffers: true,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Paths of the trainable parameters.
fn trainable<BB: Backend, M: Module<BB>>(module: &M) -> Vec<String> {
    params::<BB, M>(module)
        .into_iter()
        .filter(|(_, (_, t))| *t)
        .map(|(p, _)| p)
        .collect()
}

fn is_encoder_path(p: &str) -> bool {
    p.starts_with("cnn_blocks.") || p.starts_with("transformer.") || p.starts_with("rel_pos_enc.")
}

/// `n` windows of `t` steps × 4 features: noisy sinusoids of a few frequencies, around 1.
fn synthetic(n: usize, t: usize) -> WindowSet {
    let mut x = Vec::with_capacity(n * t * 4);
    for i in 0..n {
        let freq = 0.2 + 0.15 * (i % 4) as f32;
        let phase = 0.37 * i as f32;
        let amp = 0.3 + 0.1 * (i % 3) as f32;
        for s in 0..t {
            let base = 1.0 + amp * (freq * s as f32 + phase).sin();
            for f in 0..4 {
                x.push(base + 0.05 * f as f32 + 0.01 * ((i * 7 + s * 3 + f) % 5) as f32);
            }
        }
    }
    let ids = (0..n).map(|i| format!("w{i}")).collect();
    WindowSet::new(ids, x, t, 4, None, None).unwrap()
}

// ---------------------------------------------------------------- networks

#[test]
fn encoder_parameters_are_the_classifiers_under_the_same_names() {
    let _guard = kiln::seed::global_lock();
    let config = TsTccConfig::default();
    let enc: TsTccEncoder<B> = encoder(&config);
    let clf: CnnTransformer<B> = classifier(&config, 105);
    let enc_shapes = kiln::checkpoint::param_shapes::<B, _>(&enc);
    let clf_shapes: BTreeMap<_, _> = kiln::checkpoint::param_shapes::<B, _>(&clf)
        .into_iter()
        .collect();
    assert!(!enc_shapes.is_empty());
    for (path, shape) in &enc_shapes {
        assert!(is_encoder_path(path), "{path}");
        assert_eq!(clf_shapes.get(path), Some(shape), "{path}");
    }
    // Everything the classifier has beyond the encoder is its head.
    let extra: Vec<_> = clf_shapes
        .keys()
        .filter(|p| !enc_shapes.iter().any(|(q, _)| q == *p))
        .collect();
    assert!(
        extra
            .iter()
            .all(|p| p.starts_with("output_norm.") || p.starts_with("classifier.")),
        "{extra:?}"
    );
    // The reference's encoder parameter count: the classifier's 875,938 (C = 2) minus its head
    // (LayerNorm 2·128 + Linear 128·2 + 2).
    assert_eq!(
        kiln::checkpoint::parameter_count::<B, _>(&enc),
        875_938 - 256 - 258
    );
}

#[test]
fn model_shapes_and_projection_head_names() {
    let _guard = kiln::seed::global_lock();
    let config = tiny();
    let model = config.init::<B>(4, &device()).unwrap();
    let x = Tensor::<B, 3>::random([3, 20, 4], Distribution::Normal(1.0, 0.2), &device());
    assert_eq!(model.encoder.forward(x.clone()).dims(), [3, 20, 8]);
    assert_eq!(model.forward(x).dims(), [3, 8]);
    let names: Vec<String> = kiln::checkpoint::param_shapes::<B, _>(&model)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("projection_head."))
        .collect();
    for want in [
        "projection_head.projection_0.weight",
        "projection_head.projection_0.bias",
        "projection_head.projection_1.gamma",
        "projection_head.projection_1.beta",
        "projection_head.projection_3.weight",
        "projection_head.projection_3.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert_eq!(names.len(), 6);
    // Defaults: 128 → 64 embeddings of a d = 128 encoder.
    let default = TsTccConfig::default().init::<B>(4, &device()).unwrap();
    let z = default.forward(Tensor::random(
        [2, 105, 4],
        Distribution::Default,
        &device(),
    ));
    assert_eq!(z.dims(), [2, 64]);
}

#[test]
fn configuration_errors_are_reported() {
    let _guard = kiln::seed::global_lock();
    let bad = TsTccConfig {
        transformer_heads: 3,
        ..tiny()
    };
    let err = format!("{:#}", bad.init::<B>(4, &device()).unwrap_err());
    assert!(err.contains("transformer_heads"), "{err}");
    let long = synthetic(4, 600);
    let err = ts_tcc::pretrain::<AD>(
        &TsTccPretrainConfig {
            model: tiny(),
            ..TsTccPretrainConfig::default()
        },
        &long,
        &device(),
        &RunOptions::default(),
    )
    .err()
    .expect("600 steps exceed the relative-position table");
    assert!(format!("{err:#}").contains("600"), "{err:#}");
}

// ---------------------------------------------------------------- pre-training

fn short_run() -> TsTccPretrainConfig {
    TsTccPretrainConfig {
        model: tiny(),
        n_epochs: 6,
        batch_size: 16,
        learning_rate: 3e-3,
        val_split: 0.2,
        early_stopping_patience: 50,
        ..TsTccPretrainConfig::default()
    }
}

#[test]
fn short_pretraining_lowers_the_loss_and_writes_its_history() {
    let _guard = kiln::seed::global_lock();
    let data = synthetic(48, 32);
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        run_dir: Some(dir.path().to_path_buf()),
        ..RunOptions::default()
    };
    let config = short_run();
    let out = ts_tcc::pretrain::<AD>(&config, &data, &device(), &run).unwrap();
    let h = &out.history;
    assert_eq!(out.epochs, 6);
    assert_eq!(h.train_loss.len(), 6);
    assert_eq!(h.val_loss.len(), 6);
    assert!(h.best_epoch < 6);
    assert!(
        h.train_loss
            .iter()
            .chain(&h.val_loss)
            .all(|v| v.is_finite())
    );
    assert!(
        h.train_loss[5] < h.train_loss[0],
        "training loss did not decrease: {:?}",
        h.train_loss
    );
    // The best epoch is the one with the lowest validation loss, and its weights came back.
    let min = h.val_loss.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(h.val_loss[h.best_epoch], min);
    assert!(out.restored_best);
    // History JSON in the run directory, next to kiln's metrics.
    let written: ts_tcc::PretrainHistory = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(ts_tcc::HISTORY_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(written.best_epoch, h.best_epoch);
    for (a, b) in written
        .train_loss
        .iter()
        .chain(&written.val_loss)
        .zip(h.train_loss.iter().chain(&h.val_loss))
    {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(ts_tcc::HISTORY_FILE)).unwrap(),
    )
    .unwrap();
    assert!(json["train_loss"].is_array() && json["val_loss"].is_array());
    assert!(json["best_epoch"].is_u64());
    assert!(dir.path().join("metrics.csv").exists());

    // The reference's behaviour: the last epoch's weights.
    let last = ts_tcc::pretrain::<AD>(
        &TsTccPretrainConfig {
            restore_best: false,
            ..config
        },
        &data,
        &device(),
        &RunOptions::default(),
    )
    .unwrap();
    assert!(!last.restored_best);
    assert_eq!(last.history.train_loss.len(), 6);
}

#[test]
fn early_stopping_and_no_validation() {
    let _guard = kiln::seed::global_lock();
    let data = synthetic(24, 16);
    // Patience 1 with a tiny learning rate: stops as soon as one epoch fails to improve.
    let config = TsTccPretrainConfig {
        n_epochs: 30,
        learning_rate: 1e-6,
        early_stopping_patience: 1,
        ..short_run()
    };
    let out = ts_tcc::pretrain::<AD>(&config, &data, &device(), &RunOptions::default()).unwrap();
    assert!(out.stopped_early, "{:?}", out.history);
    assert_eq!(out.history.train_loss.len(), out.epochs);
    assert!(out.epochs < 30);
    // Without validation: no val_loss, best_epoch 0, all epochs run.
    let config = TsTccPretrainConfig {
        n_epochs: 2,
        val_split: 0.0,
        ..short_run()
    };
    let out = ts_tcc::pretrain::<AD>(&config, &data, &device(), &RunOptions::default()).unwrap();
    assert_eq!(out.history.train_loss.len(), 2);
    assert!(out.history.val_loss.is_empty());
    assert_eq!(out.history.best_epoch, 0);
    assert!(!out.restored_best);
}

#[test]
fn validation_split_is_shuffled_seeded_and_ten_percent() {
    let _guard = kiln::seed::global_lock();
    let (train, val) = ts_tcc::shuffled_split(50, 0.1, 1337).unwrap();
    assert_eq!((train.len(), val.len()), (45, 5));
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
    assert_ne!(val, vec![0, 1, 2, 3, 4], "not shuffled");
    assert_eq!(ts_tcc::shuffled_split(50, 0.1, 1337).unwrap().1, val);
    assert_ne!(ts_tcc::shuffled_split(50, 0.1, 7).unwrap().1, val);
    // sklearn rounds the test share up.
    assert_eq!(ts_tcc::shuffled_split(11, 0.1, 0).unwrap().1.len(), 2);
    assert!(ts_tcc::shuffled_split(1, 0.1, 0).is_err());
}

#[test]
fn reference_defaults() {
    let _guard = kiln::seed::global_lock();
    let c = TsTccPretrainConfig::default();
    assert_eq!(c.model.cnn_channels, vec![64, 128, 128]);
    assert_eq!(c.model.cnn_kernels, vec![3, 5, 9]);
    assert_eq!(
        (c.model.transformer_layers, c.model.transformer_heads),
        (3, 4)
    );
    assert_eq!(c.model.dropout, 0.25);
    assert_eq!(
        (c.model.projection_hidden_dim, c.model.projection_output_dim),
        (128, 64)
    );
    assert_eq!((c.n_epochs, c.batch_size, c.seed), (100, 512, 1337));
    assert_eq!((c.learning_rate, c.weight_decay), (1e-4, 1e-4));
    assert_eq!((c.temperature, c.grad_clip), (0.5, Some(1.0)));
    assert_eq!((c.val_split, c.early_stopping_patience), (0.1, 15));
    let a = &c.augment;
    assert_eq!((a.jitter_prob, a.jitter_sigma), (0.8, 0.03));
    assert_eq!((a.scaling_prob, a.scaling_sigma), (0.5, 0.1));
    assert_eq!((a.time_warp_prob, a.time_warp_sigma), (0.5, 0.2));
    assert!(a.enabled && !a.per_sample_flips);
    assert_eq!(UNFREEZE_EPOCHS, [10, 20, 30]);
}

// ---------------------------------------------------------------- artefact

#[test]
fn encoder_save_load_round_trip_is_exact() {
    let _guard = kiln::seed::global_lock();
    let config = tiny();
    let enc: TsTccEncoder<B> = encoder(&config);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/encoder");
    ts_tcc::save_encoder(&enc, &path).unwrap();
    assert!(dir.path().join("nested/encoder.mpk").exists());
    let card_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("nested/encoder.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card_json["cnn_channels"], serde_json::json!([4, 8]));
    assert_eq!(card_json["cnn_kernels"], serde_json::json!([3, 5]));
    assert_eq!(card_json["transformer_layers"], 1);
    assert_eq!(card_json["transformer_heads"], 2);
    assert_eq!(card_json["dropout"], 0.1);
    assert_eq!(card_json["input_dim"], 4);

    let (loaded, card) = ts_tcc::load_encoder::<B>(&path.with_extension("mpk"), &device()).unwrap();
    assert_eq!(card, EncoderCard::describe(&enc));
    assert_eq!(card.config().cnn_channels, config.cnn_channels);
    assert_eq!(tensors::<B, _>(&loaded), tensors::<B, _>(&enc));
    // Same outputs in eval mode.
    let x = Tensor::<B, 3>::random([2, 12, 4], Distribution::Default, &device());
    let diff: f32 = (loaded.forward(x.clone()) - enc.forward(x))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0);
}

// ---------------------------------------------------------------- transfer

#[test]
fn transfer_copies_the_encoder_and_keeps_the_head() {
    let _guard = kiln::seed::global_lock();
    let config = tiny();
    // One training-mode pass moves the BatchNorm running statistics off their 0/1 start.
    let trained: TsTccEncoder<AD> = encoder(&config);
    trained.forward(Tensor::random([3, 24, 4], Distribution::Default, &device()));
    let enc: TsTccEncoder<B> = trained.valid();
    assert_ne!(
        tensors::<B, _>(&enc)["cnn_blocks.0.bn.running_mean"].0,
        vec![0.0; 4]
    );
    let clf: CnnTransformer<B> = classifier(&config, 24);
    let before = tensors::<B, _>(&clf);
    let clf = ts_tcc::load_pretrained_encoder(clf, &enc, false).unwrap();
    let after = tensors::<B, _>(&clf);
    let enc_params = tensors::<B, _>(&enc);
    assert!(enc_params.keys().any(|p| p.ends_with("running_var")));
    for (path, (values, _)) in &enc_params {
        assert_eq!(&after[path].0, values, "{path}");
    }
    for (path, (values, _)) in &after {
        if !enc_params.contains_key(path) {
            assert_eq!(&before[path].0, values, "head parameter {path} changed");
        }
    }
    // With T ≠ 105 the classifier has no window: its pooled features are the encoder's mean.
    let x = Tensor::<B, 3>::random([2, 24, 4], Distribution::Default, &device());
    let pooled = enc.forward(x.clone()).mean_dim(1).reshape([2, 8]);
    let want = clf.classifier.forward(clf.output_norm.forward(pooled));
    let got = clf.forward(x).logits;
    let diff: f32 = (got - want).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");

    // From the artefact, too.
    let dir = tempfile::tempdir().unwrap();
    ts_tcc::save_encoder(&enc, &dir.path().join("enc")).unwrap();
    let fresh: CnnTransformer<B> = classifier(&config, 24);
    let fresh =
        ts_tcc::load_pretrained_encoder_file(fresh, &dir.path().join("enc"), false).unwrap();
    let fresh = tensors::<B, _>(&fresh);
    for (path, (values, _)) in &enc_params {
        assert_eq!(&fresh[path].0, values, "{path}");
    }
}

#[test]
fn mismatched_architectures_are_refused_with_both_values() {
    let _guard = kiln::seed::global_lock();
    let clf: CnnTransformer<B> = classifier(&tiny(), 24);
    let other = TsTccConfig {
        cnn_channels: vec![4, 6],
        ..tiny()
    };
    let err = ts_tcc::load_pretrained_encoder(clf, &encoder::<B>(&other), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cnn_channels") && err.contains("[4, 8]") && err.contains("[4, 6]"),
        "{err}"
    );
    let clf: CnnTransformer<B> = classifier(&tiny(), 24);
    let other = TsTccConfig {
        cnn_kernels: vec![3, 7],
        ..tiny()
    };
    let err = ts_tcc::load_pretrained_encoder(clf, &encoder::<B>(&other), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cnn_kernels") && err.contains("[3, 5]") && err.contains("[3, 7]"),
        "{err}"
    );
    let clf: CnnTransformer<B> = classifier(&tiny(), 24);
    let other = TsTccConfig {
        transformer_layers: 2,
        ..tiny()
    };
    let err = ts_tcc::load_pretrained_encoder(clf, &encoder::<B>(&other), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("transformer layers"), "{err}");
    let clf: CnnTransformer<B> = classifier(&tiny(), 24);
    let five_features =
        kiln::checkpoint::materialize(tiny().init_encoder::<B>(5, &device()).unwrap());
    let err = ts_tcc::load_pretrained_encoder(clf, &five_features, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("input features"), "{err}");
}

/// Paths that received a gradient in one backward pass of the classifier's loss.
fn with_gradient(model: &CnnTransformer<AD>) -> Vec<String> {
    struct Grads<'a> {
        path: Vec<String>,
        grads: &'a <AD as AutodiffBackend>::Gradients,
        out: Vec<String>,
    }
    impl ModuleVisitor<AD> for Grads<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if param.val().grad(self.grads).is_some() {
                self.out.push(self.path.join("."));
            }
        }
    }
    let x = Tensor::<AD, 3>::random([3, 24, 4], Distribution::Default, &device());
    let grads = model.forward(x).logits.square().sum().backward();
    let mut v = Grads {
        path: Vec::new(),
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

#[test]
fn frozen_encoder_gets_no_gradient_and_the_head_does() {
    let _guard = kiln::seed::global_lock();
    let config = tiny();
    let enc: TsTccEncoder<AD> = encoder(&config);
    let clf: CnnTransformer<AD> = classifier(&config, 24);
    let all: Vec<String> = params::<AD, _>(&clf).into_keys().collect();
    let clf = ts_tcc::load_pretrained_encoder(clf, &enc, true).unwrap();
    let got = with_gradient(&clf);
    let head: Vec<String> = all
        .iter()
        .filter(|p| !is_encoder_path(p))
        .cloned()
        .collect();
    assert!(!head.is_empty());
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, head, "only the head may get gradients");
    assert_eq!(trainable::<AD, _>(&clf), head);

    // An AdamW step with weight decay moves the head and leaves the frozen encoder alone.
    let before = params::<AD, _>(&clf);
    let mut optim = burn::optim::AdamWConfig::new()
        .with_weight_decay(0.1)
        .init::<AD, CnnTransformer<AD>>();
    let x = Tensor::<AD, 3>::random([3, 24, 4], Distribution::Default, &device());
    let loss = clf.forward(x).logits.square().sum();
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &clf);
    let clf = burn::optim::Optimizer::step(&mut optim, 1e-2, clf, grads);
    let after = params::<AD, _>(&clf);
    for (path, (values, _)) in &after {
        let changed = values != &before[path].0;
        assert_eq!(changed, !is_encoder_path(path), "{path}");
    }

    // Unfrozen: every parameter gets one.
    let clf = ts_tcc::unfreeze_encoder_gradual(clf, 3).unwrap();
    let mut got = with_gradient(&clf);
    got.sort();
    assert_eq!(got, all);
}

#[test]
fn each_unfreeze_stage_opens_exactly_its_parts() {
    let _guard = kiln::seed::global_lock();
    let config = TsTccConfig {
        transformer_layers: 2,
        ..tiny()
    };
    let clf: CnnTransformer<AD> = classifier(&config, 24);
    let all: Vec<String> = params::<AD, _>(&clf).into_keys().collect();
    let head: Vec<String> = all
        .iter()
        .filter(|p| !is_encoder_path(p))
        .cloned()
        .collect();
    let with = |extra: &dyn Fn(&str) -> bool| -> Vec<String> {
        all.iter()
            .filter(|p| !is_encoder_path(p) || extra(p))
            .cloned()
            .collect()
    };

    let frozen = ts_tcc::freeze_encoder(clf);
    assert_eq!(trainable::<AD, _>(&frozen), head);
    let stage1 = ts_tcc::unfreeze_encoder_gradual(frozen, 1).unwrap();
    assert_eq!(
        trainable::<AD, _>(&stage1),
        with(&|p| p.starts_with("transformer.layers.1."))
    );
    let stage2 = ts_tcc::unfreeze_encoder_gradual(stage1, 2).unwrap();
    assert_eq!(
        trainable::<AD, _>(&stage2),
        with(&|p| p.starts_with("transformer."))
    );
    let stage3 = ts_tcc::unfreeze_encoder_gradual(stage2, 3).unwrap();
    assert_eq!(trainable::<AD, _>(&stage3), all);
    // BatchNorm running statistics never require gradients.
    for (path, (_, flag)) in tensors::<AD, _>(&stage3) {
        if path.contains("running_") {
            assert!(!flag, "{path}");
        }
    }
    let err = ts_tcc::unfreeze_encoder_gradual(stage3, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("stage 4"), "{err}");

    // The epoch schedule: frozen before 10, then stages 1, 2, 3 at 10, 20, 30.
    let clf: CnnTransformer<AD> = classifier(&config, 24);
    let expect = [
        (0, head.clone()),
        (9, head.clone()),
        (10, with(&|p| p.starts_with("transformer.layers.1."))),
        (19, with(&|p| p.starts_with("transformer.layers.1."))),
        (20, with(&|p| p.starts_with("transformer."))),
        (30, all.clone()),
        (55, all.clone()),
    ];
    let mut model = clf;
    for (epoch, want) in expect {
        model = ts_tcc::apply_unfreeze_schedule(model, epoch);
        assert_eq!(trainable::<AD, _>(&model), want, "epoch {epoch}");
    }
    // Going back (a resumed run at an earlier epoch) re-freezes.
    let model = ts_tcc::apply_unfreeze_schedule(model, 0);
    assert_eq!(trainable::<AD, _>(&model), head);
}

#[test]
fn resumed_pretraining_matches_an_uninterrupted_run() {
    let _guard = kiln::seed::global_lock();
    let data = synthetic(30, 16);
    let config = TsTccPretrainConfig {
        n_epochs: 3,
        ..short_run()
    };
    let full = ts_tcc::pretrain::<AD>(&config, &data, &device(), &RunOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = RunOptions {
        run_dir: Some(dir.path().to_path_buf()),
        ..RunOptions::default()
    };
    ts_tcc::pretrain::<AD>(
        &TsTccPretrainConfig {
            n_epochs: 2,
            ..config.clone()
        },
        &data,
        &device(),
        &first,
    )
    .unwrap();
    let resumed = RunOptions {
        resume_from: Some(dir.path().join("checkpoints/last.ckpt")),
        ..first
    };
    let rest = ts_tcc::pretrain::<AD>(&config, &data, &device(), &resumed).unwrap();
    assert_eq!(rest.epochs, 3);
    assert_eq!(rest.history.train_loss.len(), 3);
    for (a, b) in rest.history.train_loss.iter().zip(&full.history.train_loss) {
        assert!(
            (a - b).abs() < 1e-6,
            "{:?} vs {:?}",
            rest.history,
            full.history
        );
    }
    for (a, b) in rest.history.val_loss.iter().zip(&full.history.val_loss) {
        assert!(
            (a - b).abs() < 1e-6,
            "{:?} vs {:?}",
            rest.history,
            full.history
        );
    }
}

#[test]
fn mixed_precision_pretraining_is_applied_and_trains_like_f32() {
    let _guard = kiln::seed::global_lock();
    let data = synthetic(24, 16);
    let run = |precision: &str| {
        let config = TsTccPretrainConfig {
            n_epochs: 2,
            precision: precision.parse().unwrap(),
            ..short_run()
        };
        ts_tcc::pretrain::<AD>(&config, &data, &device(), &RunOptions::default())
            .unwrap_or_else(|e| panic!("{precision}: {e:#}"))
            .history
    };
    let full = run("32");
    for precision in ["bf16-mixed", "16-mixed"] {
        let half = run(precision);
        for (name, a, b) in [
            ("train", &half.train_loss, &full.train_loss),
            ("val", &half.val_loss, &full.val_loss),
        ] {
            // Applied: half-precision rounding changes every loss; and it trains like f32.
            assert!(
                a != b,
                "{precision} {name} losses equal the f32 ones: {a:?}"
            );
            for (x, y) in a.iter().zip(b.iter()) {
                assert!(
                    (x - y).abs() <= 0.05 * y.abs(),
                    "{precision} {name} loss {x} vs f32 {y}"
                );
            }
        }
    }
}

#[test]
fn the_reference_encoder_file_loads_into_the_classifier() {
    // `{encoder_state_dict, hyperparams: {cnn_channels, cnn_kernels}}` as the reference's
    // `TSTCCPretrainer.save_encoder` writes it, holding the encoder of the `cnn_transformer_ptr`
    // checkpoint (tools/parity/moola_fixtures.py).
    let _guard = kiln::seed::global_lock();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let (encoder, card) =
        ts_tcc::load_encoder::<B>(&fixtures.join("encoder_tstcc.pt"), &device()).unwrap();
    assert_eq!(card.cnn_channels, vec![8, 12, 12]);
    assert_eq!(card.cnn_kernels, vec![3, 5, 9]);
    assert_eq!((card.input_dim, card.transformer_layers), (4, 2));
    assert!(card.source.as_deref().unwrap().contains("encoder_tstcc.pt"));
    // Into a fresh classifier of that architecture: its encoder is the checkpoint's.
    let (imported, _) = moola::import::import_torch_checkpoint::<B>(
        &fixtures.join("cnn_transformer_ptr.pt"),
        &device(),
    )
    .unwrap();
    let moola::model::Net::CnnTransformer(imported) = imported else {
        panic!("not a CNN-Transformer")
    };
    let fresh = card
        .config()
        .classifier_config()
        .init::<B>(4, 2, 105, &device())
        .unwrap();
    let loaded = ts_tcc::load_pretrained_encoder(fresh, &encoder, false).unwrap();
    let weights = |m: &CnnTransformer<B>| -> Vec<f32> {
        m.transformer.layers[1]
            .linear1
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap()
    };
    assert_eq!(weights(&loaded), weights(&imported));
}
