//! A pre-trained encoder carried into a classifier's `fit`: loaded into the network `fit` builds,
//! frozen, unfrozen on schedule with the learning-rate factor, and kept across refits.

use kiln::backend::{Autodiff, Flex};
use moola::Classifier;
use moola::data::WindowSet;
use moola::model::{ModelSpec, Net, SimpleLstmConfig};
use moola::pretrain::masked_lstm::{MaskedLstmPretrainConfig, load_encoder, pretrain};
use moola::train::{EncoderTransfer, RunOptions, TrainConfig};
use rand::Rng;

type AD = Autodiff<Flex>;

/// Up/down drifting windows (labelled).
fn labelled(n: usize, t: usize, seed: u64) -> WindowSet {
    let mut rng = kiln::seed::rng(seed, "labelled", 0);
    let mut x = Vec::with_capacity(n * t * 4);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let up = i % 2 == 0;
        let drift = if up { 0.05 } else { -0.05 };
        let mut close = 0.0f32;
        for _ in 0..t {
            let open = close;
            close += drift + rng.random_range(-0.05..0.05);
            x.extend([open, open.max(close) + 0.02, open.min(close) - 0.02, close]);
        }
        labels.push(if up { "up" } else { "down" }.to_string());
    }
    let ids = (0..n).map(|i| format!("w{i}")).collect();
    WindowSet::new(ids, x, t, 4, Some(labels), None).unwrap()
}

fn lstm_weights(net: &Net<Flex>) -> Vec<f32> {
    let Net::SimpleLstm(m) = net else {
        panic!("not a SimpleLSTM")
    };
    m.lstm.layers[0]
        .forward_dir
        .weight_hh
        .val()
        .into_data()
        .to_vec()
        .unwrap()
}

fn encoder_file(dir: &std::path::Path, hidden: usize) -> std::path::PathBuf {
    let device = Default::default();
    let config = MaskedLstmPretrainConfig {
        hidden_dim: hidden,
        num_layers: 1,
        batch_size: 8,
        n_epochs: 2,
        val_split: 0.0,
        ..MaskedLstmPretrainConfig::default()
    };
    let out = pretrain::<AD>(
        &config,
        &labelled(16, 20, 3),
        &device,
        &RunOptions::default(),
    )
    .unwrap();
    let path = dir.join("encoder");
    out.save_encoder(&path).unwrap();
    path
}

fn recipe(encoder: Option<std::path::PathBuf>, unfreeze_after: usize) -> TrainConfig {
    TrainConfig {
        n_epochs: 3,
        batch_size: 8,
        learning_rate: 1e-2,
        val_split: 0.0,
        encoder: EncoderTransfer {
            path: encoder,
            unfreeze_after,
            ..EncoderTransfer::default()
        },
        ..TrainConfig::default()
    }
}

fn spec(hidden: usize) -> ModelSpec {
    ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: hidden,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.0,
    })
}

#[test]
fn a_frozen_encoder_survives_every_fit_and_unfreezes_on_schedule() {
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = encoder_file(dir.path(), 8);
    let (encoder, _) = load_encoder::<Flex>(&path, &Default::default()).unwrap();
    let pretrained: Vec<f32> = encoder.encoder_lstm.layers[0]
        .forward_dir
        .weight_hh
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let data = labelled(24, 20, 4);

    // Frozen for the whole run (unfreezing after the last epoch): the LSTM is the encoder's,
    // fit after fit (the reference's refit dropped it).
    let mut frozen =
        Classifier::<AD>::new(spec(8), recipe(Some(path.clone()), 10), Default::default());
    for _ in 0..2 {
        frozen.fit(&data).unwrap();
        assert_eq!(lstm_weights(frozen.net().unwrap()), pretrained);
    }

    // Unfrozen at epoch 1: it trains from the encoder's weights on.
    let mut thawed =
        Classifier::<AD>::new(spec(8), recipe(Some(path.clone()), 1), Default::default());
    thawed.fit(&data).unwrap();
    assert_ne!(lstm_weights(thawed.net().unwrap()), pretrained);

    // Without an encoder the LSTM starts elsewhere.
    let mut scratch = Classifier::<AD>::new(spec(8), recipe(None, 10), Default::default());
    scratch.fit(&data).unwrap();
    assert_ne!(lstm_weights(scratch.net().unwrap()), pretrained);

    // A hidden-size mismatch is a clear error naming the file and both sizes.
    let mut wrong =
        Classifier::<AD>::new(spec(6), recipe(Some(path.clone()), 10), Default::default());
    let err = format!("{:#}", wrong.fit(&data).unwrap_err());
    assert!(
        err.contains("encoder") && err.contains('8') && err.contains('6'),
        "{err}"
    );
}

#[test]
fn a_ts_tcc_encoder_starts_the_cnn_transformer_and_unfreezes_in_stages() {
    use moola::pretrain::ts_tcc::{TsTccConfig, TsTccPretrainConfig, save_encoder};

    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = TsTccConfig {
        cnn_channels: vec![4, 8],
        cnn_kernels: vec![3, 5],
        transformer_layers: 1,
        transformer_heads: 2,
        dropout: 0.0,
        projection_hidden_dim: 8,
        projection_output_dim: 4,
    };
    let device = Default::default();
    let out = moola::pretrain::ts_tcc::pretrain::<AD>(
        &TsTccPretrainConfig {
            model: model.clone(),
            n_epochs: 1,
            batch_size: 8,
            val_split: 0.0,
            ..TsTccPretrainConfig::default()
        },
        &labelled(16, 20, 5),
        &device,
        &RunOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("tstcc");
    save_encoder(&out.model.encoder, &path).unwrap();
    let conv = |net: &Net<Flex>| -> Vec<f32> {
        let Net::CnnTransformer(m) = net else {
            panic!("not a CNN-Transformer")
        };
        m.cnn_blocks[0].convs[0]
            .conv
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap()
    };
    let (encoder, _) =
        moola::pretrain::ts_tcc::load_encoder::<Flex>(&path, &Default::default()).unwrap();
    let pretrained: Vec<f32> = encoder.cnn_blocks[0].convs[0]
        .conv
        .weight
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let spec = ModelSpec::CnnTransformer(model.classifier_config());
    let data = labelled(24, 20, 6);
    let with_schedule = |schedule: Vec<usize>| {
        let mut cfg = recipe(Some(path.clone()), 10);
        cfg.encoder.unfreeze_schedule = schedule;
        let mut clf = Classifier::<AD>::new(spec.clone(), cfg, Default::default());
        clf.fit(&data).unwrap();
        conv(clf.net().unwrap())
    };
    // Stages after the run: the CNN stays the encoder's. All three stages open at epoch 1: it
    // trains.
    assert_eq!(with_schedule(vec![10, 20, 30]), pretrained);
    assert_ne!(with_schedule(vec![1, 1, 1]), pretrained);
    // Only the first two stages (transformer layers) open: the CNN stays frozen.
    assert_eq!(with_schedule(vec![1, 1, 30]), pretrained);
}
