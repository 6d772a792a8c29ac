//! The pre-trained encoder artefact and its transfer into SimpleLSTM.
//!
//! **Artefact.** The reference's `save_encoder` writes a `torch.save` dict with the encoder LSTM's
//! state dict, the mask token, the architecture (`input_dim`, `hidden_dim`, `num_layers`,
//! `dropout`) and the training configuration (`mask_strategy`, `mask_ratio`, `patch_size`,
//! `learning_rate`, `batch_size`). Here that is `<path>.mpk` (a Burn record of
//! [`MaskedLstmEncoder`]: `encoder_lstm.*` and `mask_token`) plus `<path>.json` (an
//! [`EncoderCard`]), like the classifiers' `.mpk` + card.
//! The file follows kiln's model-file convention ([`kiln::artifact`]).
//!
//! [`load_encoder`] also reads the reference's own encoder file (a `torch.save` dict, NumPy
//! scalars in its hyper-parameters included): `hyperparams` builds the encoder, the bare
//! `nn.LSTM` keys of `encoder_state_dict` fill `encoder_lstm` under moola's key rule
//! ([`crate::import::torch_key`]: `weight_ih_l{k}[_reverse]` ↔
//! `layers.{k}.{forward_dir|reverse_dir}.weight_ih`), strictly, and the top-level `mask_token`
//! (when present) fills the mask token.
//!
//! **Transfer** ([`load_pretrained_encoder`], the reference's `SimpleLSTM.load_pretrained_encoder`
//! after its key-mapping fix): only the forward direction is copied (SimpleLSTM is
//! unidirectional); the hidden sizes must match (an error naming both otherwise); each tensor is
//! copied only when its shape matches, otherwise it is skipped with a warning (so for layers ≥ 1
//! the bidirectional `weight_ih` `[4H, 2H]` is skipped and `weight_hh` and the biases transfer);
//! with different layer counts the first `min` layers are used, with a warning. Freezing sets
//! `require_grad = false` on every `lstm.*` parameter; attention, layer norm and classifier stay
//! trainable; [`unfreeze_encoder`] undoes it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::model::{BiLstmMaskedAutoencoder, BiLstmMaskedAutoencoderConfig, MaskStrategy};
use crate::model::SimpleLstm;
use crate::nn::{Lstm, LstmDirection};
use crate::scaling::InputScaling;
use kiln::torch::PyValue;

/// The transferable part of a trained [`BiLstmMaskedAutoencoder`]: its bidirectional encoder
/// and its mask token (the reference's encoder checkpoint minus the metadata).
#[derive(Module, Debug)]
pub struct MaskedLstmEncoder<B: Backend> {
    /// Bidirectional LSTM (`encoder_lstm.layers.{k}.{forward_dir,reverse_dir}.*`).
    pub encoder_lstm: Lstm<B>,
    /// Mask token `[1, 1, F]`.
    pub mask_token: Param<Tensor<B, 3>>,
}

impl<B: Backend> MaskedLstmEncoder<B> {
    /// A randomly initialised encoder of an architecture (the receiver of a load).
    pub fn init(config: &BiLstmMaskedAutoencoderConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        Ok(kiln::checkpoint::materialize(Self {
            encoder_lstm: config.lstm_config().init(device),
            mask_token: super::model::init_mask_token(config.input_dim, device),
        }))
    }

    /// The encoder of an autoencoder (a copy of its weights).
    pub fn from_autoencoder(model: &BiLstmMaskedAutoencoder<B>) -> Self {
        Self {
            encoder_lstm: model.encoder_lstm.clone(),
            mask_token: model.mask_token.clone(),
        }
    }

    /// Features per step.
    pub fn input_dim(&self) -> usize {
        self.mask_token.dims()[2]
    }

    /// Hidden size per direction.
    pub fn hidden_dim(&self) -> usize {
        self.encoder_lstm.hidden_size()
    }

    /// Stacked layers.
    pub fn num_layers(&self) -> usize {
        self.encoder_lstm.layers.len()
    }
}

/// Architecture of a saved encoder (the reference's `hyperparams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderHyperparams {
    /// Features per step.
    pub input_dim: usize,
    /// Hidden size per direction.
    pub hidden_dim: usize,
    /// Stacked bidirectional layers.
    pub num_layers: usize,
    /// Dropout of the autoencoder.
    pub dropout: f64,
}

impl From<&BiLstmMaskedAutoencoderConfig> for EncoderHyperparams {
    fn from(c: &BiLstmMaskedAutoencoderConfig) -> Self {
        Self {
            input_dim: c.input_dim,
            hidden_dim: c.hidden_dim,
            num_layers: c.num_layers,
            dropout: c.dropout,
        }
    }
}

impl From<&EncoderHyperparams> for BiLstmMaskedAutoencoderConfig {
    fn from(h: &EncoderHyperparams) -> Self {
        Self {
            input_dim: h.input_dim,
            hidden_dim: h.hidden_dim,
            num_layers: h.num_layers,
            dropout: h.dropout,
        }
    }
}

/// How the encoder was pre-trained (the reference's `training_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderTrainingConfig {
    /// Masking strategy.
    pub mask_strategy: MaskStrategy,
    /// Masking ratio.
    pub mask_ratio: f64,
    /// Patch size of patch masking.
    pub patch_size: usize,
    /// Initial learning rate.
    pub learning_rate: f64,
    /// Batch size.
    pub batch_size: usize,
}

/// The JSON sidecar of a saved encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderCard {
    /// Format tag, [`ENCODER_CARD_FORMAT`].
    pub format: String,
    /// Architecture.
    pub hyperparams: EncoderHyperparams,
    /// Pre-training configuration (absent for encoders of unknown origin).
    #[serde(default)]
    pub training_config: Option<EncoderTrainingConfig>,
    /// Where the weights came from (e.g. an imported PyTorch file), for the record.
    #[serde(default)]
    pub source: Option<String>,
    /// The input scaling of the windows it was pre-trained on (`none` for imported reference
    /// encoders and files written before the setting existed).
    #[serde(default)]
    pub scaling: InputScaling,
}

/// The current encoder-card format tag.
pub const ENCODER_CARD_FORMAT: &str = "moola-burn-encoder/bilstm-masked/1";

impl EncoderCard {
    /// A card for an architecture and (optionally) its pre-training configuration.
    pub fn new(
        hyperparams: EncoderHyperparams,
        training_config: Option<EncoderTrainingConfig>,
    ) -> Self {
        Self {
            format: ENCODER_CARD_FORMAT.to_string(),
            hyperparams,
            training_config,
            source: None,
            scaling: InputScaling::None,
        }
    }
}

/// Saves an encoder: weights `<path>.mpk`, card `<path>.json` (both written atomically).
pub fn save_encoder<B: Backend>(
    encoder: &MaskedLstmEncoder<B>,
    card: &EncoderCard,
    path: &Path,
) -> Result<()> {
    let h = &card.hyperparams;
    if (h.input_dim, h.hidden_dim, h.num_layers)
        != (
            encoder.input_dim(),
            encoder.hidden_dim(),
            encoder.num_layers(),
        )
    {
        bail!(
            "the encoder card says input_dim {}, hidden_dim {}, num_layers {}, the weights have \
             {}, {}, {}",
            h.input_dim,
            h.hidden_dim,
            h.num_layers,
            encoder.input_dim(),
            encoder.hidden_dim(),
            encoder.num_layers()
        );
    }
    kiln::artifact::save(encoder, card, path)
}

/// Loads an encoder saved by [`save_encoder`] (shapes are checked against the card), or the
/// reference's `torch.save` encoder file (see the module docs).
pub fn load_encoder<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(MaskedLstmEncoder<B>, EncoderCard)> {
    let card_path = kiln::artifact::paths(path).1;
    if kiln::artifact::is_foreign_file(path)? {
        return load_reference_encoder(path, device);
    }
    let (encoder, card, _) =
        kiln::artifact::load::<B, MaskedLstmEncoder<B>, EncoderCard>(path, device, |card| {
            if card.format != ENCODER_CARD_FORMAT {
                bail!(
                    "{}: unsupported encoder format `{}` (expected {ENCODER_CARD_FORMAT})",
                    card_path.display(),
                    card.format
                );
            }
            let config = BiLstmMaskedAutoencoderConfig::from(&card.hyperparams);
            MaskedLstmEncoder::init(&config, device)
                .with_context(|| format!("{}: invalid hyperparams", card_path.display()))
        })?;
    Ok((encoder, card))
}

/// Reads the reference's encoder file (`MaskedLSTMPretrainer.save_encoder`).
fn load_reference_encoder<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(MaskedLstmEncoder<B>, EncoderCard)> {
    let shown = path.display();
    let ckpt = crate::import::read_encoder_checkpoint(path).with_context(|| {
        format!("{shown} is neither an encoder of `moola pretrain` nor the reference's")
    })?;
    let hp = ckpt
        .hyperparams
        .as_ref()
        .with_context(|| format!("{shown}: the encoder file has no `hyperparams`"))?;
    let int = |key: &str| -> Result<usize> {
        hp.get(key)
            .and_then(PyValue::as_int)
            .and_then(|v| usize::try_from(v).ok())
            .with_context(|| format!("{shown}: `hyperparams.{key}` is missing or not a count"))
    };
    let hyperparams = EncoderHyperparams {
        input_dim: int("input_dim")?,
        hidden_dim: int("hidden_dim")?,
        num_layers: int("num_layers")?,
        dropout: hp.get("dropout").and_then(PyValue::as_f64).unwrap_or(0.2),
    };
    let config = BiLstmMaskedAutoencoderConfig::from(&hyperparams);
    let MaskedLstmEncoder {
        encoder_lstm,
        mask_token,
    } = MaskedLstmEncoder::<B>::init(&config, device)
        .with_context(|| format!("{shown}: invalid hyperparams"))?;
    let (encoder_lstm, _) = kiln::torch::Import::new(&ckpt.file, &crate::import::torch_key)
        .apply(encoder_lstm)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let whole = kiln::torch::TorchFile::open(path)?;
    let mask_token = if whole.contains("mask_token") {
        let data = whole.read_f32("mask_token")?;
        let want = [1, 1, hyperparams.input_dim];
        if data.shape.as_slice() != want {
            bail!(
                "{shown}: `mask_token` has shape {:?}, expected {want:?}",
                data.shape
            );
        }
        Param::from_tensor(Tensor::from_data(data, device))
    } else {
        tracing::warn!("{shown} has no `mask_token`; the encoder keeps a fresh one");
        mask_token
    };
    let mut card = EncoderCard::new(hyperparams, None);
    card.source = Some(format!("pytorch:{shown}"));
    Ok((
        MaskedLstmEncoder {
            encoder_lstm,
            mask_token,
        },
        card,
    ))
}

/// What [`transfer_encoder`] copied and skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferReport {
    /// SimpleLSTM parameters overwritten, e.g. `lstm.layers.0.forward_dir.weight_hh`.
    pub copied: Vec<String>,
    /// Parameters left as they were, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Whether the LSTM was frozen.
    pub frozen: bool,
}

/// Replaces a parameter's value by a detached copy of `src`, keeping its id and gradient flag;
/// skipped (with the reason) when the shapes differ.
fn copy_param<B: Backend, const D: usize>(
    dst: Param<Tensor<B, D>>,
    src: &Param<Tensor<B, D>>,
    name: String,
    report: &mut TransferReport,
) -> Param<Tensor<B, D>> {
    let (want, have) = (dst.dims(), src.dims());
    if want != have {
        let why = format!("shape {have:?} in the encoder, {want:?} in SimpleLSTM");
        tracing::warn!("pretrained encoder: skipping {name}: {why}");
        report.skipped.push((name, why));
        return dst;
    }
    let value = src.val();
    report.copied.push(name);
    dst.map(|old| {
        let require_grad = old.is_require_grad();
        // Detached after the device move, so that the copy is a leaf of its own.
        value
            .to_device(&old.device())
            .detach()
            .set_require_grad(require_grad)
    })
}

fn copy_direction<B: Backend>(
    mut dst: LstmDirection<B>,
    src: &LstmDirection<B>,
    prefix: &str,
    report: &mut TransferReport,
) -> LstmDirection<B> {
    let name = |p: &str| format!("{prefix}.{p}");
    dst.weight_ih = copy_param(dst.weight_ih, &src.weight_ih, name("weight_ih"), report);
    dst.weight_hh = copy_param(dst.weight_hh, &src.weight_hh, name("weight_hh"), report);
    dst.bias_ih = copy_param(dst.bias_ih, &src.bias_ih, name("bias_ih"), report);
    dst.bias_hh = copy_param(dst.bias_hh, &src.bias_hh, name("bias_hh"), report);
    dst
}

/// [`load_pretrained_encoder`] that also says what was copied and skipped.
pub fn transfer_encoder<B: Backend>(
    mut model: SimpleLstm<B>,
    encoder: &MaskedLstmEncoder<B>,
    freeze: bool,
) -> Result<(SimpleLstm<B>, TransferReport)> {
    let (theirs, ours) = (encoder.hidden_dim(), model.lstm.hidden_size());
    if theirs != ours {
        bail!(
            "the pretrained encoder's hidden size is {theirs} but SimpleLSTM's hidden_size is \
             {ours}: build SimpleLSTM with hidden_size {theirs} to use this encoder"
        );
    }
    let (enc_layers, lstm_layers) = (encoder.num_layers(), model.lstm.layers.len());
    if enc_layers != lstm_layers {
        tracing::warn!(
            "pretrained encoder has {enc_layers} layers, SimpleLSTM {lstm_layers}: copying the \
             first {}",
            enc_layers.min(lstm_layers)
        );
    }
    let mut report = TransferReport::default();
    let layers = std::mem::take(&mut model.lstm.layers);
    model.lstm.layers = layers
        .into_iter()
        .enumerate()
        .map(|(k, mut layer)| {
            if let Some(src) = encoder.encoder_lstm.layers.get(k) {
                // Forward direction only: the `_reverse` weights have no place in SimpleLSTM.
                layer.forward_dir = copy_direction(
                    layer.forward_dir,
                    &src.forward_dir,
                    &format!("lstm.layers.{k}.forward_dir"),
                    &mut report,
                );
            }
            layer
        })
        .collect();
    tracing::info!(
        "pretrained encoder: copied {} tensors, skipped {}{}",
        report.copied.len(),
        report.skipped.len(),
        if freeze { ", LSTM frozen" } else { "" }
    );
    if freeze {
        model = freeze_encoder(model);
        report.frozen = true;
    }
    Ok((model, report))
}

/// Copies a pre-trained encoder's forward-direction weights into SimpleLSTM's LSTM and
/// optionally freezes it (see the module docs for the rules).
pub fn load_pretrained_encoder<B: Backend>(
    model: SimpleLstm<B>,
    encoder: &MaskedLstmEncoder<B>,
    freeze: bool,
) -> Result<SimpleLstm<B>> {
    transfer_encoder(model, encoder, freeze).map(|(m, _)| m)
}

/// Stops gradients to every `lstm.*` parameter of SimpleLSTM.
pub fn freeze_encoder<B: Backend>(mut model: SimpleLstm<B>) -> SimpleLstm<B> {
    model.lstm = kiln::checkpoint::set_trainable(model.lstm, false);
    model
}

/// Makes every `lstm.*` parameter of SimpleLSTM trainable again.
pub fn unfreeze_encoder<B: Backend>(mut model: SimpleLstm<B>) -> SimpleLstm<B> {
    model.lstm = kiln::checkpoint::set_trainable(model.lstm, true);
    model
}
