//! Parity of the two pre-trainers with the reference's own PyTorch code: the masked BiLSTM
//! autoencoder (forward, masking with a given mask, `compute_loss`) and TS-TCC (encoder,
//! projection head, `info_nce_loss`), on the fixtures that
//! `tools/parity/moola_pretrain_fixtures.py` computes by importing the reference's classes
//! (commit 6ecdb28) and running them in eval mode in float64 on float32 weights.
//!
//! Each state dict is loaded strictly (every parameter filled, every tensor used except
//! BatchNorm's `num_batches_tracked`) under moola's key rule [`moola::import::torch_key`], whose
//! names must equal the reference's state-dict keys exactly.

use std::path::PathBuf;

use burn::prelude::*;
use kiln::backend::Flex;
use kiln::torch::{Import, TorchFile};
use moola::pretrain::masked_lstm::model::mask_with;
use moola::pretrain::masked_lstm::{BiLstmMaskedAutoencoder, BiLstmMaskedAutoencoderConfig};
use moola::pretrain::ts_tcc::{TsTcc, TsTccConfig, info_nce_loss};
use serde::Deserialize;

type B = Flex;

mod common;
use common::{check, scalar, tensor3, values};

/// The reference commit the fixtures were computed from.
const REFERENCE_COMMIT: &str = "6ecdb28c78d6b91c94deabaf621c0c4ea4425e78";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

type Keys = Vec<(String, Vec<usize>)>;

#[derive(Deserialize)]
struct AeConfig {
    input_dim: usize,
    hidden_dim: usize,
    num_layers: usize,
    dropout: f64,
}

#[derive(Deserialize)]
struct AeLoss {
    total: f64,
    reconstruction: f64,
    regularization: f64,
    latent_std: f64,
    num_masked: usize,
}

#[derive(Deserialize)]
struct MaskedAeFixture {
    reference_commit: String,
    config: AeConfig,
    state_dict_keys: Keys,
    input: Vec<Vec<Vec<f32>>>,
    mask: Vec<Vec<bool>>,
    mask_token: Vec<f32>,
    x_masked: Vec<Vec<Vec<f64>>>,
    recon: Vec<Vec<Vec<f64>>>,
    loss: AeLoss,
}

#[derive(Deserialize)]
struct TsTccFixture {
    reference_commit: String,
    config: TsTccFixtureConfig,
    temperature: f64,
    state_dict_keys: Keys,
    v1: Vec<Vec<Vec<f32>>>,
    v2: Vec<Vec<Vec<f32>>>,
    z1: Vec<Vec<f64>>,
    z2: Vec<Vec<f64>>,
    encoded_v1: Vec<Vec<Vec<f64>>>,
    info_nce: f64,
}

#[derive(Deserialize)]
struct TsTccFixtureConfig {
    input_dim: usize,
    cnn_channels: Vec<usize>,
    cnn_kernels: Vec<usize>,
    transformer_layers: usize,
    transformer_heads: usize,
    dropout: f64,
    projection_hidden_dim: usize,
    projection_output_dim: usize,
}

fn sorted(mut keys: Keys) -> Keys {
    keys.sort();
    keys
}

/// Asserts that the model's parameter names under moola's key rule are the reference's
/// state-dict keys (with the same shapes), `num_batches_tracked` counters aside.
fn assert_names<M: Module<B>>(model: &M, reference: &Keys) {
    let ours = sorted(moola::import::torch_keys::<B, _>(model));
    let theirs = sorted(
        reference
            .iter()
            .filter(|(k, _)| !k.ends_with(".num_batches_tracked"))
            .cloned()
            .collect(),
    );
    assert_eq!(ours, theirs, "parameter names under torch_key");
}

/// Loads a fixture state dict strictly; returns the model and the number of tensors loaded.
fn load<M: Module<B>>(name: &str, model: M) -> (M, usize) {
    let file = TorchFile::open(fixture(name)).unwrap();
    let (model, applied) = Import::new(&file, &moola::import::torch_key)
        .apply(model)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(applied.untouched.is_empty());
    assert!(
        applied
            .excluded
            .iter()
            .all(|k| k.ends_with(".num_batches_tracked")),
        "{:?}",
        applied.excluded
    );
    assert_eq!(applied.loaded + applied.excluded.len(), file.len());
    (model, applied.loaded)
}

fn masked_ae() -> (MaskedAeFixture, BiLstmMaskedAutoencoder<B>) {
    let fx: MaskedAeFixture = read_json("masked_ae.json");
    assert_eq!(fx.reference_commit, REFERENCE_COMMIT);
    let c = &fx.config;
    let config = BiLstmMaskedAutoencoderConfig {
        input_dim: c.input_dim,
        hidden_dim: c.hidden_dim,
        num_layers: c.num_layers,
        dropout: c.dropout,
    };
    let model = config.init::<B>(&Default::default());
    assert_names(&model, &fx.state_dict_keys);
    let (model, loaded) = load("masked_ae.pt", model);
    assert_eq!(loaded, fx.state_dict_keys.len());
    (fx, model)
}

#[test]
fn masked_autoencoder_matches_the_reference() {
    let device = Default::default();
    let (fx, model) = masked_ae();
    let token = values(model.mask_token.val());
    let want_token: Vec<f64> = fx.mask_token.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(token, want_token, "mask token loaded");

    let x = tensor3(&fx.input, &device);
    let (b, t) = (fx.mask.len(), fx.mask[0].len());
    let flat: Vec<bool> = fx.mask.iter().flatten().copied().collect();
    assert_eq!(flat.iter().filter(|&&m| m).count(), fx.loss.num_masked);
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(flat, [b, t]), &device);

    // Masking with the reference's mask: exactly its x_masked.
    let x_masked = mask_with(x.clone(), model.mask_token.val(), mask.clone());
    let want: Vec<f64> = fx.x_masked.iter().flatten().flatten().copied().collect();
    assert_eq!(values(x_masked.clone()), want, "x_masked");

    let recon = model.forward(x_masked);
    assert_eq!(recon.dims(), [b, t, fx.config.input_dim]);
    let want: Vec<f64> = fx.recon.iter().flatten().flatten().copied().collect();
    check("masked_ae recon", &values(recon.clone()), &want);

    let loss = model.compute_loss(recon, x, mask).values();
    let l = &fx.loss;
    assert!(l.regularization > 0.0 && l.latent_std < 1.0);
    check("masked_ae total", &[loss.total], &[l.total]);
    check(
        "masked_ae reconstruction",
        &[loss.reconstruction],
        &[l.reconstruction],
    );
    check(
        "masked_ae regularization",
        &[loss.regularization],
        &[l.regularization],
    );
    check("masked_ae latent_std", &[loss.latent_std], &[l.latent_std]);
}

#[test]
fn masked_autoencoder_keys_are_the_reference_state_dict() {
    let (fx, _) = masked_ae();
    // The reference's default architecture (hidden 128): the names do not depend on the sizes.
    let config = BiLstmMaskedAutoencoderConfig {
        input_dim: fx.config.input_dim,
        hidden_dim: 128,
        num_layers: 2,
        dropout: 0.2,
    };
    let model = config.init::<B>(&Default::default());
    let keys: Vec<String> = moola::import::torch_keys::<B, _>(&model)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in [
        "mask_token",
        "encoder_lstm.weight_ih_l0",
        "encoder_lstm.bias_hh_l1_reverse",
        "layer_norm.weight",
        "decoder.0.weight",
        "decoder.3.bias",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
}

fn tstcc() -> (TsTccFixture, TsTcc<B>) {
    let fx: TsTccFixture = read_json("tstcc.json");
    assert_eq!(fx.reference_commit, REFERENCE_COMMIT);
    let c = &fx.config;
    let config = TsTccConfig {
        cnn_channels: c.cnn_channels.clone(),
        cnn_kernels: c.cnn_kernels.clone(),
        transformer_layers: c.transformer_layers,
        transformer_heads: c.transformer_heads,
        dropout: c.dropout,
        projection_hidden_dim: c.projection_hidden_dim,
        projection_output_dim: c.projection_output_dim,
    };
    let model = config.init::<B>(c.input_dim, &Default::default()).unwrap();
    assert_names(&model, &fx.state_dict_keys);
    let (model, loaded) = load("tstcc.pt", model);
    let counters = fx
        .state_dict_keys
        .iter()
        .filter(|(k, _)| k.ends_with(".num_batches_tracked"))
        .count();
    assert_eq!(counters, c.cnn_channels.len());
    assert_eq!(loaded, fx.state_dict_keys.len() - counters);
    (fx, model)
}

#[test]
fn ts_tcc_matches_the_reference() {
    let device = Default::default();
    let (fx, model) = tstcc();
    let v1 = tensor3(&fx.v1, &device);
    let v2 = tensor3(&fx.v2, &device);

    let encoded = model.encoder.forward(v1.clone());
    let want: Vec<f64> = fx.encoded_v1.iter().flatten().flatten().copied().collect();
    check("tstcc encoder(v1)", &values(encoded), &want);

    let z1 = model.forward(v1);
    let z2 = model.forward(v2);
    let want: Vec<f64> = fx.z1.iter().flatten().copied().collect();
    check("tstcc z1", &values(z1.clone()), &want);
    let want: Vec<f64> = fx.z2.iter().flatten().copied().collect();
    check("tstcc z2", &values(z2.clone()), &want);

    let loss = scalar(info_nce_loss(z1, z2, fx.temperature));
    check("tstcc info_nce", &[loss], &[fx.info_nce]);
}

#[test]
fn ts_tcc_projection_keys_are_the_reference_state_dict() {
    let (fx, model) = tstcc();
    let keys: Vec<String> = moola::import::torch_keys::<B, _>(&model)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for n in [0, 1, 3] {
        for p in ["weight", "bias"] {
            let key = format!("projection_head.projection.{n}.{p}");
            assert!(keys.contains(&key), "{key} not in {keys:?}");
            assert!(fx.state_dict_keys.iter().any(|(k, _)| *k == key));
        }
    }
}
