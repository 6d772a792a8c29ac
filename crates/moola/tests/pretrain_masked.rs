//! Masked BiLSTM pre-training end to end: the autoencoder, a short run, the encoder artefact and
//! its transfer into SimpleLSTM.
//!
//! Every test holds kiln's global lock: the backend generator is process-global, and a test
//! that initialises a model while another trains would change that run's draws.

use burn::module::AutodiffModule;
use burn::prelude::*;
use kiln::backend::{Autodiff, Flex};
use moola::data::WindowSet;
use moola::model::{SimpleLstm, SimpleLstmConfig};
use moola::pretrain::masked_lstm::{
    BiLstmMaskedAutoencoderConfig, EncoderCard, MaskStrategy, MaskedLstmEncoder,
    MaskedLstmPretrainConfig, PretrainHistory, TimeSeriesAugmenter, load_encoder,
    load_pretrained_encoder, pretrain, save_encoder, transfer_encoder, unfreeze_encoder,
};
use moola::train::RunOptions;
use rand::Rng;

type B = Flex;
type AD = Autodiff<Flex>;

fn values<const D: usize, BB: Backend>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn parameter_counts_match_the_reference() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let model = BiLstmMaskedAutoencoderConfig::new().init::<B>(&device);
    assert_eq!(kiln::checkpoint::parameter_count(&model), 566_408);
    assert_eq!(
        kiln::checkpoint::parameter_count(&model.encoder_lstm),
        532_480
    );
    let encoder = MaskedLstmEncoder::from_autoencoder(&model);
    assert_eq!(kiln::checkpoint::parameter_count(&encoder), 532_480 + 4);
    // The mask token starts near zero (randn · 0.02).
    let token = values(model.mask_token.val());
    assert_eq!(token.len(), 4);
    assert!(token.iter().all(|v| v.abs() < 0.2));
}

/// Smooth, noisy OHLC-like windows of a few shapes around 0 (so masked steps are predictable
/// from their neighbours).
fn windows(n: usize, t: usize, seed: u64) -> WindowSet {
    let mut rng = kiln::seed::rng(seed, "windows", 0);
    let mut x = Vec::with_capacity(n * t * 4);
    for _ in 0..n {
        let freq: f32 = rng.random_range(0.05..0.3);
        let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let amp: f32 = rng.random_range(0.5..1.5);
        let mut prev = amp * phase.sin();
        for step in 0..t {
            let close = amp * (freq * step as f32 + phase).sin() + rng.random_range(-0.05..0.05);
            let open = prev;
            x.extend([open, open.max(close) + 0.1, open.min(close) - 0.1, close]);
            prev = close;
        }
    }
    WindowSet::new(
        (0..n).map(|i| format!("w{i}")).collect(),
        x,
        t,
        4,
        None,
        None,
    )
    .unwrap()
}

fn tiny(epochs: usize) -> MaskedLstmPretrainConfig {
    MaskedLstmPretrainConfig {
        hidden_dim: 8,
        num_layers: 2,
        dropout: 0.1,
        learning_rate: 1e-2,
        batch_size: 8,
        n_epochs: epochs,
        val_split: 0.25,
        patience: 50,
        ..MaskedLstmPretrainConfig::default()
    }
}

#[test]
fn a_short_run_learns_and_writes_its_history() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let data = windows(48, 35, 1);
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        run_dir: Some(dir.path().to_path_buf()),
        ..RunOptions::default()
    };
    let config = tiny(8);
    let out = pretrain::<AD>(&config, &data, &device, &run).unwrap();
    let h = &out.history;
    assert_eq!(out.epochs, 8);
    assert!(!out.stopped_early);
    for list in [
        &h.train_loss,
        &h.val_loss,
        &h.train_recon,
        &h.val_recon,
        &h.learning_rate,
    ] {
        assert_eq!(list.len(), out.epochs);
        assert!(list.iter().all(|v| v.is_finite()));
    }
    // Validation reconstruction goes down (fresh masks every epoch, so compare ends).
    let first = h.val_recon[0];
    let best = h.val_recon.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(best < 0.7 * first, "val_recon {:?}", h.val_recon);
    assert!(
        h.train_loss.last().unwrap() < &h.train_loss[0],
        "{:?}",
        h.train_loss
    );
    // Cosine schedule stepped per epoch: the rate after epoch e is lr_{e+1}; the last is η_min.
    for (e, lr) in h.learning_rate.iter().enumerate() {
        let want = 1e-5
            + (1e-2 - 1e-5) * (1.0 + (std::f64::consts::PI * (e + 1) as f64 / 8.0).cos()) / 2.0;
        assert!((lr - want).abs() < 1e-12, "epoch {e}: {lr} vs {want}");
    }
    assert!((h.learning_rate[7] - 1e-5).abs() < 1e-15);
    // kiln's own per-epoch rate is the one in use during the epoch (lr_e).
    let lr0 = out.metrics[0].1["lr"];
    assert!((lr0 - 1e-2).abs() < 1e-12, "{lr0}");
    // The history file equals the returned history.
    let written: PretrainHistory = kiln::io::read_json(dir.path().join("history.json")).unwrap();
    assert_eq!(&written, h);
    assert!(dir.path().join("metrics.csv").exists());
    // The card records architecture and training configuration.
    assert_eq!(out.card.hyperparams.hidden_dim, 8);
    assert_eq!(out.card.hyperparams.input_dim, 4);
    let tc = out.card.training_config.as_ref().unwrap();
    assert_eq!(
        (tc.mask_strategy, tc.patch_size, tc.batch_size),
        (MaskStrategy::Patch, 7, 8)
    );

    // Encoder artefact: save → load gives identical tensors and card.
    let encoder = out.encoder();
    let path = dir.path().join("encoder");
    out.save_encoder(&path).unwrap();
    assert!(dir.path().join("encoder.mpk").exists() && dir.path().join("encoder.json").exists());
    let (loaded, card) = load_encoder::<B>(&path, &device).unwrap();
    assert_eq!(card, out.card);
    let a = kiln::checkpoint::param_shapes(&encoder);
    assert_eq!(a, kiln::checkpoint::param_shapes(&loaded));
    let flat = |e: &MaskedLstmEncoder<B>| -> Vec<f32> {
        let mut v = values(e.mask_token.val());
        for layer in &e.encoder_lstm.layers {
            for dir in [Some(&layer.forward_dir), layer.reverse_dir.as_ref()]
                .into_iter()
                .flatten()
            {
                v.extend(values(dir.weight_ih.val()));
                v.extend(values(dir.weight_hh.val()));
                v.extend(values(dir.bias_ih.val()));
                v.extend(values(dir.bias_hh.val()));
            }
        }
        v
    };
    assert_eq!(flat(&encoder), flat(&loaded));
    // The restored best weights are the returned model's (its encoder is what was saved).
    let from_model = MaskedLstmEncoder::from_autoencoder(&out.model.valid());
    assert_eq!(flat(&from_model), flat(&loaded));
}

#[test]
fn early_stopping_stops_and_restores_the_best_weights() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let data = windows(24, 21, 2);
    // A large learning rate with no clipping makes the validation loss rise soon (at 1.0 the
    // weights also turn NaN, which would leave nothing to compare); patience 1 stops it.
    let config = MaskedLstmPretrainConfig {
        learning_rate: 0.2,
        grad_clip: 0.0,
        patience: 1,
        ..tiny(30)
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        run_dir: Some(dir.path().to_path_buf()),
        ..RunOptions::default()
    };
    let out = pretrain::<AD>(&config, &data, &device, &run).unwrap();
    assert!(out.stopped_early, "{:?}", out.history.val_loss);
    assert!(out.epochs < 30);
    assert_eq!(out.history.val_loss.len(), out.epochs);
    let (best_epoch, _) = out.history.best().unwrap();
    // Patience 1: the run ends one epoch after the last improvement.
    assert_eq!(out.epochs, best_epoch + 2);
    // The returned weights are the best epoch's: those of the (top-1) best checkpoint.
    let ckpt: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt") && !p.ends_with("last.ckpt"))
        .collect();
    assert_eq!(ckpt.len(), 1, "{ckpt:?}");
    let (meta, sections) = kiln::checkpoint::read_checkpoint(&ckpt[0]).unwrap();
    assert_eq!(meta.epochs_completed, best_epoch + 1);
    let record =
        kiln::checkpoint::record_from_bytes::<AD, _>(sections["model"].clone(), &device).unwrap();
    let best = kiln::checkpoint::load_checked(
        BiLstmMaskedAutoencoderConfig {
            hidden_dim: 8,
            num_layers: 2,
            dropout: 0.1,
            ..Default::default()
        }
        .init::<AD>(&device),
        record,
        "best checkpoint",
    )
    .unwrap();
    let (a, b) = (out.model.valid(), best.valid());
    assert_eq!(values(a.mask_token.val()), values(b.mask_token.val()));
    assert_eq!(
        values(a.decoder_3.weight.val()),
        values(b.decoder_3.weight.val())
    );
    assert_eq!(
        values(
            a.encoder_lstm.layers[1]
                .reverse_dir
                .as_ref()
                .unwrap()
                .weight_hh
                .val()
        ),
        values(
            b.encoder_lstm.layers[1]
                .reverse_dir
                .as_ref()
                .unwrap()
                .weight_hh
                .val()
        )
    );
}

#[test]
fn runs_are_reproducible_for_a_seed_and_validation_can_be_given() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let data = windows(20, 14, 3);
    let config = MaskedLstmPretrainConfig {
        mask_strategy: MaskStrategy::Block,
        num_layers: 1,
        ..tiny(2)
    };
    let a = pretrain::<AD>(&config, &data, &device, &RunOptions::default()).unwrap();
    let b = pretrain::<AD>(&config, &data, &device, &RunOptions::default()).unwrap();
    assert_eq!(a.history, b.history);
    // An explicit validation set replaces the split; no validation at all runs every epoch.
    let run = RunOptions {
        validation: Some(windows(5, 14, 4)),
        ..RunOptions::default()
    };
    let c = pretrain::<AD>(&config, &data, &device, &run).unwrap();
    assert_eq!(c.history.val_loss.len(), 2);
    let none = MaskedLstmPretrainConfig {
        val_split: 0.0,
        ..config.clone()
    };
    let d = pretrain::<AD>(&none, &data, &device, &RunOptions::default()).unwrap();
    assert_eq!(
        (
            d.epochs,
            d.history.val_loss.len(),
            d.history.train_loss.len()
        ),
        (2, 0, 2)
    );
    // Bad settings are errors.
    let bad = MaskedLstmPretrainConfig {
        mask_ratio: 1.5,
        ..config
    };
    assert!(pretrain::<AD>(&bad, &data, &device, &RunOptions::default()).is_err());
}

#[test]
fn mixed_precision_is_applied_and_trains_like_f32() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let data = windows(16, 14, 5);
    let run = |precision: &str| {
        let config = MaskedLstmPretrainConfig {
            precision: precision.parse().unwrap(),
            num_layers: 1,
            ..tiny(2)
        };
        pretrain::<AD>(&config, &data, &device, &RunOptions::default())
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

fn encoder(hidden: usize, layers: usize) -> MaskedLstmEncoder<AD> {
    let device = Default::default();
    let config = BiLstmMaskedAutoencoderConfig {
        hidden_dim: hidden,
        num_layers: layers,
        ..Default::default()
    };
    MaskedLstmEncoder::init(&config, &device).unwrap()
}

fn simple_lstm(hidden: usize, layers: usize) -> SimpleLstm<AD> {
    let device = Default::default();
    let config = SimpleLstmConfig {
        hidden_size: hidden,
        num_layers: layers,
        num_heads: 2,
        dropout: 0.1,
    };
    kiln::checkpoint::materialize(config.init(4, 3, &device))
}

#[test]
fn transfer_copies_the_forward_direction_where_shapes_match() {
    let _lock = kiln::seed::global_lock();
    let enc = encoder(8, 2);
    let (model, report) = transfer_encoder(simple_lstm(8, 2), &enc, false).unwrap();
    for k in 0..2 {
        let (ours, theirs) = (
            &model.lstm.layers[k].forward_dir,
            &enc.encoder_lstm.layers[k].forward_dir,
        );
        assert_eq!(values(ours.weight_hh.val()), values(theirs.weight_hh.val()));
        assert_eq!(values(ours.bias_ih.val()), values(theirs.bias_ih.val()));
        assert_eq!(values(ours.bias_hh.val()), values(theirs.bias_hh.val()));
        assert!(model.lstm.layers[k].reverse_dir.is_none());
    }
    let w0 = &model.lstm.layers[0].forward_dir.weight_ih;
    assert_eq!(
        values(w0.val()),
        values(enc.encoder_lstm.layers[0].forward_dir.weight_ih.val())
    );
    // Layer 1's input weights are [4H, 2H] in the encoder, [4H, H] here: skipped.
    assert_eq!(report.copied.len(), 7);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "lstm.layers.1.forward_dir.weight_ih");
    assert_eq!(model.lstm.layers[1].forward_dir.weight_ih.dims(), [32, 8]);
    // Fewer SimpleLSTM layers: only those are filled.
    let (one, report) = transfer_encoder(simple_lstm(8, 1), &enc, false).unwrap();
    assert_eq!(report.copied.len(), 4);
    assert_eq!(
        values(one.lstm.layers[0].forward_dir.weight_hh.val()),
        values(enc.encoder_lstm.layers[0].forward_dir.weight_hh.val())
    );
    // More SimpleLSTM layers than the encoder: the extra one keeps its initialisation.
    let fresh = simple_lstm(8, 3);
    let before = values(fresh.lstm.layers[2].forward_dir.weight_hh.val());
    let (three, report) = transfer_encoder(fresh, &encoder(8, 1), false).unwrap();
    assert_eq!(report.copied.len(), 4);
    assert_eq!(
        values(three.lstm.layers[2].forward_dir.weight_hh.val()),
        before
    );
}

#[test]
fn mismatched_hidden_sizes_are_an_error_naming_both() {
    let _lock = kiln::seed::global_lock();
    let err = load_pretrained_encoder(simple_lstm(8, 1), &encoder(16, 2), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("16") && err.contains('8'), "{err}");
    assert!(err.contains("hidden"), "{err}");
}

/// Whether each parameter of `model` got a gradient from one backward pass.
fn grads_of(model: &SimpleLstm<AD>) -> (bool, bool, bool) {
    let device = Default::default();
    let x = Tensor::<AD, 3>::random([3, 10, 4], burn::tensor::Distribution::Default, &device);
    let grads = model.forward(x).sum().backward();
    let lstm = model.lstm.layers[0]
        .forward_dir
        .weight_hh
        .grad(&grads)
        .is_some();
    let bias = model.lstm.layers[0]
        .forward_dir
        .bias_ih
        .grad(&grads)
        .is_some();
    let head = model.classifier_3.weight.grad(&grads).is_some()
        && model.attention.in_proj_weight.grad(&grads).is_some();
    (lstm, bias, head)
}

#[test]
fn freezing_stops_lstm_gradients_and_unfreezing_restores_them() {
    let _lock = kiln::seed::global_lock();
    let enc = encoder(8, 1);
    let model = load_pretrained_encoder(simple_lstm(8, 1), &enc, true).unwrap();
    assert_eq!(grads_of(&model), (false, false, true));
    // The frozen weights are the encoder's.
    assert_eq!(
        values(model.lstm.layers[0].forward_dir.weight_ih.val()),
        values(enc.encoder_lstm.layers[0].forward_dir.weight_ih.val())
    );
    let model = unfreeze_encoder(model);
    assert_eq!(grads_of(&model), (true, true, true));
    // Not frozen at all.
    let free = load_pretrained_encoder(simple_lstm(8, 1), &enc, false).unwrap();
    assert_eq!(grads_of(&free), (true, true, true));
    // Copies are detached from the encoder: its parameters get no gradient from SimpleLSTM.
    let device = Default::default();
    let x = Tensor::<AD, 3>::random([2, 5, 4], burn::tensor::Distribution::Default, &device);
    let grads = free.forward(x).sum().backward();
    assert!(
        enc.encoder_lstm.layers[0]
            .forward_dir
            .weight_hh
            .grad(&grads)
            .is_none()
    );
}

#[test]
fn encoder_cards_are_checked() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let enc = MaskedLstmEncoder::<B>::init(
        &BiLstmMaskedAutoencoderConfig {
            hidden_dim: 4,
            num_layers: 1,
            ..Default::default()
        },
        &device,
    )
    .unwrap();
    let card = EncoderCard::new(
        (&BiLstmMaskedAutoencoderConfig {
            hidden_dim: 4,
            num_layers: 1,
            ..Default::default()
        })
            .into(),
        None,
    );
    let path = dir.path().join("enc.mpk");
    save_encoder(&enc, &card, &path).unwrap();
    let (_, back) = load_encoder::<B>(&path, &device).unwrap();
    assert_eq!(back, card);
    // A card that contradicts the weights is refused on save and on load.
    let mut wrong = card.clone();
    wrong.hyperparams.hidden_dim = 5;
    assert!(save_encoder(&enc, &wrong, &path).is_err());
    kiln::io::write_json(dir.path().join("enc.json"), &wrong).unwrap();
    let err = load_encoder::<B>(&path, &device).unwrap_err();
    assert!(format!("{err:#}").contains("shape"), "{err:#}");
}

#[test]
fn the_reference_encoder_file_loads() {
    // `{encoder_state_dict: <bare nn.LSTM(4, 6, 2, bidirectional) keys>, hyperparams: {...}}`
    // as the reference's `save_encoder` writes it (NumPy scalars in the hyper-parameters),
    // from tools/parity/moola_fixtures.py; `bilstm.pt` is the same LSTM's bare state dict.
    let _lock = kiln::seed::global_lock();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let device = Default::default();
    let (encoder, card) = load_encoder::<B>(&fixtures.join("encoder_bilstm.pt"), &device).unwrap();
    assert_eq!(
        (
            card.hyperparams.input_dim,
            card.hyperparams.hidden_dim,
            card.hyperparams.num_layers
        ),
        (4, 6, 2)
    );
    assert_eq!(card.hyperparams.dropout, 0.2);
    assert!(card.source.unwrap().contains("encoder_bilstm.pt"));
    let bare = kiln::torch::TorchFile::open(fixtures.join("bilstm.pt")).unwrap();
    for k in 0..2 {
        for (dir, ours) in [
            ("", &encoder.encoder_lstm.layers[k].forward_dir),
            (
                "_reverse",
                encoder.encoder_lstm.layers[k].reverse_dir.as_ref().unwrap(),
            ),
        ] {
            let want: Vec<f32> = bare
                .read_f32(&format!("weight_hh_l{k}{dir}"))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(values(ours.weight_hh.val()), want, "layer {k}{dir}");
        }
    }
    // A file that is neither kind is a clear error naming it.
    let err = load_encoder::<B>(&fixtures.join("simple_lstm_1l.pt"), &device).unwrap_err();
    assert!(format!("{err:#}").contains("simple_lstm_1l.pt"), "{err:#}");
}

#[test]
fn augmented_sets_pre_train() {
    let _lock = kiln::seed::global_lock();
    let device = Default::default();
    let data = windows(8, 21, 6);
    let aug = TimeSeriesAugmenter::default();
    let bigger = aug.augment_dataset(&data, 2, &mut kiln::seed::rng(1, "augment", 0));
    assert_eq!(bigger.len(), 24);
    let out = pretrain::<AD>(
        &MaskedLstmPretrainConfig {
            num_layers: 1,
            ..tiny(1)
        },
        &bigger,
        &device,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(out.history.train_loss.len(), 1);
}
