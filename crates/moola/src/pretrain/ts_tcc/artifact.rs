//! The encoder artefact: the encoder's weights as a Burn record (`<path>.mpk`) and a JSON card
//! (`<path>.json`) with what rebuilding it needs, kiln's model-file convention
//! ([`kiln::artifact`]) like a saved classifier.
//!
//! The reference's `save_encoder` writes `{'encoder_state_dict', 'hyperparams': {cnn_channels,
//! cnn_kernels}}` with `torch.save`; the card holds those hyper-parameters plus the rest of the
//! encoder's shape (input dim, transformer layers and heads, dropout), and the weights keep the
//! state dict's names (`cnn_blocks.*`, `rel_pos_enc.*`, `transformer.*`), so reading a reference
//! checkpoint is an identity key table.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::model::{TsTccConfig, TsTccEncoder};
use crate::scaling::InputScaling;

/// Format tag of the encoder card.
pub const ENCODER_CARD_FORMAT: &str = "moola-burn-encoder/1";

/// The JSON card of a saved encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderCard {
    /// Format tag, [`ENCODER_CARD_FORMAT`].
    pub format: String,
    /// Which pre-training produced it (`ts_tcc`).
    pub kind: String,
    /// Features per time step.
    pub input_dim: usize,
    /// Output channels of the CNN blocks.
    pub cnn_channels: Vec<usize>,
    /// Kernel sizes of the causal branches.
    pub cnn_kernels: Vec<usize>,
    /// Transformer encoder layers.
    pub transformer_layers: usize,
    /// Attention heads.
    pub transformer_heads: usize,
    /// Dropout rate.
    pub dropout: f64,
    /// Where the weights came from (e.g. an imported PyTorch checkpoint), for the record.
    #[serde(default)]
    pub source: Option<String>,
    /// The input scaling of the windows it was pre-trained on (`none` for imported reference
    /// encoders and files written before the setting existed).
    #[serde(default)]
    pub scaling: InputScaling,
}

impl EncoderCard {
    /// The card describing `encoder`.
    pub fn describe<B: Backend>(encoder: &TsTccEncoder<B>) -> Self {
        let c = encoder.config();
        Self {
            format: ENCODER_CARD_FORMAT.to_string(),
            kind: "ts_tcc".to_string(),
            input_dim: encoder.input_dim(),
            cnn_channels: c.cnn_channels,
            cnn_kernels: c.cnn_kernels,
            transformer_layers: c.transformer_layers,
            transformer_heads: c.transformer_heads,
            dropout: c.dropout,
            source: None,
            scaling: InputScaling::None,
        }
    }

    /// The card with the input scaling of the pre-training windows.
    pub fn with_scaling(mut self, scaling: InputScaling) -> Self {
        self.scaling = scaling;
        self
    }

    /// The model configuration the card describes (projection head at the defaults).
    pub fn config(&self) -> TsTccConfig {
        TsTccConfig {
            cnn_channels: self.cnn_channels.clone(),
            cnn_kernels: self.cnn_kernels.clone(),
            transformer_layers: self.transformer_layers,
            transformer_heads: self.transformer_heads,
            dropout: self.dropout,
            ..TsTccConfig::default()
        }
    }
}

/// Saves an encoder: weights `<path>.mpk` and card `<path>.json` (`path` with or without either
/// extension), both written atomically.
pub fn save_encoder<B: Backend>(encoder: &TsTccEncoder<B>, path: &Path) -> Result<()> {
    save_encoder_with_card(encoder, &EncoderCard::describe(encoder), path)
}

/// [`save_encoder`] with a given card (e.g. one with a `source`); the card must describe the
/// encoder.
pub fn save_encoder_with_card<B: Backend>(
    encoder: &TsTccEncoder<B>,
    card: &EncoderCard,
    path: &Path,
) -> Result<()> {
    let described = EncoderCard::describe(encoder);
    let expected = EncoderCard {
        source: card.source.clone(),
        scaling: card.scaling,
        ..described.clone()
    };
    if expected != *card {
        bail!("the encoder card {card:?} does not describe the encoder ({described:?})");
    }
    let (weights, _) = kiln::artifact::paths(path);
    if let Some(dir) = weights.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    kiln::artifact::save(encoder, card, path)
}

/// Loads an encoder saved by [`save_encoder`] (shapes are checked against the card), or the
/// reference's `torch.save` encoder file `{encoder_state_dict, hyperparams: {cnn_channels,
/// cnn_kernels}}`: the state dict's keys are this encoder's (moola's key rule,
/// [`crate::import::torch_key`]), the input width and the transformer depth are read off the
/// tensors, the heads (4) and dropout (0.25) are the reference's defaults unless `hyperparams`
/// holds `transformer_heads` / `dropout`; loading is strict.
pub fn load_encoder<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(TsTccEncoder<B>, EncoderCard)> {
    let card_path = kiln::artifact::paths(path).1;
    if kiln::artifact::is_foreign_file(path)? {
        return load_reference_encoder(path, device);
    }
    let (encoder, card, _) =
        kiln::artifact::load::<B, TsTccEncoder<B>, EncoderCard>(path, device, |card| {
            if card.format != ENCODER_CARD_FORMAT {
                bail!(
                    "{}: unsupported encoder format `{}` (expected {ENCODER_CARD_FORMAT})",
                    card_path.display(),
                    card.format
                );
            }
            card.config()
                .init_encoder::<B>(card.input_dim, device)
                .with_context(|| format!("{}: invalid encoder card", card_path.display()))
        })?;
    Ok((encoder, card))
}

fn load_reference_encoder<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(TsTccEncoder<B>, EncoderCard)> {
    use kiln::torch::PyValue;
    let shown = path.display();
    let ckpt = crate::import::read_encoder_checkpoint(path).with_context(|| {
        format!("{shown} is neither an encoder of `moola pretrain` nor the reference's")
    })?;
    let hp = ckpt
        .hyperparams
        .as_ref()
        .with_context(|| format!("{shown}: the encoder file has no `hyperparams`"))?;
    let list = |key: &str| -> Result<Vec<usize>> {
        match hp.get(key) {
            Some(PyValue::List(items) | PyValue::Tuple(items)) => items
                .iter()
                .map(|v| {
                    v.as_int()
                        .and_then(|i| usize::try_from(i).ok())
                        .with_context(|| format!("{shown}: `hyperparams.{key}` holds a non-count"))
                })
                .collect(),
            _ => bail!("{shown}: `hyperparams.{key}` is missing or not a list"),
        }
    };
    let defaults = TsTccConfig::default();
    let mut config = TsTccConfig {
        cnn_channels: list("cnn_channels")?,
        cnn_kernels: list("cnn_kernels")?,
        transformer_heads: hp
            .get("transformer_heads")
            .and_then(PyValue::as_int)
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(defaults.transformer_heads),
        dropout: hp
            .get("dropout")
            .and_then(PyValue::as_f64)
            .unwrap_or(defaults.dropout),
        ..defaults
    };
    // The depth and the input width are in the tensors.
    config.transformer_layers = ckpt
        .file
        .keys()
        .filter_map(|k| k.strip_prefix("transformer.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    // Build once with one input feature to learn the key of the first convolution's weight,
    // whose second dimension is the input width.
    let probe = config.init_encoder::<B>(1, device)?;
    let (first_conv, _) = crate::import::torch_keys::<B, _>(&probe)
        .into_iter()
        .find(|(k, _)| k.ends_with("conv.weight"))
        .context("internal: the encoder has no convolution")?;
    let input_dim = *ckpt
        .file
        .shape(&first_conv)
        .with_context(|| format!("{shown}: no `{first_conv}` in `encoder_state_dict`"))?
        .get(1)
        .with_context(|| format!("{shown}: `{first_conv}` is not a convolution weight"))?;
    let encoder = config.init_encoder::<B>(input_dim, device)?;
    let (encoder, _) = kiln::torch::Import::new(&ckpt.file, &crate::import::torch_key)
        .apply(encoder)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut card = EncoderCard::describe(&encoder);
    card.source = Some(format!("pytorch:{shown}"));
    Ok((encoder, card))
}
