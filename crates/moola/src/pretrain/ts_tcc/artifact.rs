//! The encoder artefact: the encoder's weights as a Burn record (`<path>.mpk`, written by kiln)
//! and a JSON card (`<path>.json`) with what rebuilding it needs, the same pair of files a saved
//! classifier is (see [`crate::model::save`]).
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
use crate::model::model_paths;

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
        }
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
        ..described.clone()
    };
    if expected != *card {
        bail!("the encoder card {card:?} does not describe the encoder ({described:?})");
    }
    let (weights, card_path) = model_paths(path);
    if let Some(dir) = weights.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    kiln::checkpoint::save_module(encoder, &weights)?;
    kiln::io::write_json(&card_path, card)
}

/// Loads an encoder saved by [`save_encoder`] (shapes are checked against the card).
pub fn load_encoder<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(TsTccEncoder<B>, EncoderCard)> {
    let (weights, card_path) = model_paths(path);
    let card: EncoderCard = kiln::io::read_json(&card_path)
        .with_context(|| format!("cannot load the encoder card of {}", path.display()))?;
    if card.format != ENCODER_CARD_FORMAT {
        bail!(
            "{}: unsupported encoder format `{}` (expected {ENCODER_CARD_FORMAT})",
            card_path.display(),
            card.format
        );
    }
    let encoder = card
        .config()
        .init_encoder::<B>(card.input_dim, device)
        .with_context(|| format!("{}: invalid encoder card", card_path.display()))?;
    let encoder = kiln::checkpoint::load_module(encoder, &weights, device)?;
    Ok((encoder, card))
}
