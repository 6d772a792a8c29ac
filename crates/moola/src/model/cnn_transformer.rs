//! CNN-Transformer, ported from the reference's
//! [`models/cnn_transformer.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/models/cnn_transformer.py)
//! (commit `6ecdb28`).
//!
//! ```text
//! x [B, T, F] → [B, F, T] → cnn_blocks: (F→64), (64→128), (128→128), each
//!       cat_k CausalConv1d(k) → BatchNorm1d → ReLU → + residual (1×1 conv when in ≠ out)
//!   → [B, T, d]  (d = cnn_channels.last())
//!   → ×1.5 on the inner-window steps
//!   → + mean relative-position bias: pos_bias[i] = (1/T)·Σ_j rel_pos_emb[j − i + 511]
//!   → transformer: post-norm encoder layers (4 heads, FFN 4d, ReLU), with the additive mask
//!     that blocks buffer rows (outside the inner window) from inner-window columns
//!   → mean over the inner-window steps → output_norm → dropout → classifier   (logits)
//!   → optional pointer_start_head / pointer_end_head: Linear(d→1) on every inner step
//! ```
//!
//! * **CausalConv1d**: left padding `k − 1`, `Conv1d(in → out, k)` with bias, dropout. The
//!   channels of a block are split over its kernels as `out / n`, the first `out % n`
//!   branches getting one more (64 → 22, 21, 21; 128 → 43, 43, 42).
//! * **Parameters**: 875,938 for the defaults and `C = 2`; 876,067 for `C = 3`; +258 with
//!   pointer heads. The relative-position table alone is 1023·128 = 130,944.
//! * **Names** mirror the PyTorch state dict: `cnn_blocks.{i}.convs.{j}.conv.*`,
//!   `cnn_blocks.{i}.bn.*` (a [`kiln::nn::BatchNorm`]), `cnn_blocks.{i}.residual.*`,
//!   `rel_pos_enc.rel_pos_emb`, `transformer.layers.{i}.*`, `output_norm.*`, `classifier.*`,
//!   `pointer_{start,end}_head.*`.
//! * **Init**: PyTorch defaults (Conv/Linear `U(±1/√fan_in)`, BatchNorm 1/0 with running
//!   statistics 0/1, LayerNorm 1/0, `rel_pos_emb ~ N(0, 1)`, attention as in PyTorch).
//!
//! ## Window (reference quirk: a hard-coded 105-step layout; made configurable)
//! The reference hard-codes bars 30..75 of 105 and crashes at other lengths. Here the window is
//! `config.window`, or [`InnerWindow::default_for`] the sequence length given to `init` (the
//! reference layout for 105 steps, none otherwise). With no window there is no ×1.5
//! weighting, no attention mask, the classification pool averages all steps, and pointer heads
//! are refused by `init`. The relative-position table supports sequences of up to
//! [`REL_POS_MAX_LEN`] steps, as in the reference.

use anyhow::{Context, bail};
use burn::module::{Initializer, Param};
use burn::nn::PaddingConfig1d;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln::fused::relu;
use kiln::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use kiln::{amp, ops};
use serde::{Deserialize, Serialize};

use super::{InnerWindow, ModelOutput};
use crate::nn::{AttentionMask, TransformerEncoder, TransformerEncoderConfig};

/// `max_len` of the reference's `RelativePositionalEncoding` (table of `2·max_len − 1` rows).
pub const REL_POS_MAX_LEN: usize = 512;
/// Multiplier of the inner-window features (`WindowAwarePositionalEncoding`).
pub const WINDOW_WEIGHT: f32 = 1.5;

/// Hyper-parameters (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CnnTransformerConfig {
    /// Output channels of the three CNN blocks.
    pub cnn_channels: Vec<usize>,
    /// Kernel sizes of the parallel causal branches.
    pub cnn_kernels: Vec<usize>,
    /// Transformer encoder layers.
    pub transformer_layers: usize,
    /// Attention heads.
    pub transformer_heads: usize,
    /// Dropout rate.
    pub dropout: f64,
    /// Start/end pointer heads over the inner window.
    pub predict_pointers: bool,
    /// Inner window; `None` = default for the sequence length.
    pub window: Option<InnerWindow>,
}

impl Default for CnnTransformerConfig {
    fn default() -> Self {
        Self {
            cnn_channels: vec![64, 128, 128],
            cnn_kernels: vec![3, 5, 9],
            transformer_layers: 3,
            transformer_heads: 4,
            dropout: 0.25,
            predict_pointers: false,
            window: None,
        }
    }
}

impl CnnTransformerConfig {
    /// The model width `d_model` (the last CNN block's channels).
    pub fn d_model(&self) -> Option<usize> {
        self.cnn_channels.last().copied()
    }

    /// The window the network uses for `seq_len` steps.
    pub fn effective_window(&self, seq_len: usize) -> Option<InnerWindow> {
        self.window.or(InnerWindow::default_for(seq_len))
    }

    /// Checks the hyper-parameters of the encoder layers (CNN blocks, relative positions,
    /// transformer) against the input dimensions; the part of [`Self::validate`] that the TS-TCC
    /// encoder shares.
    pub fn validate_encoder(&self, input_dim: usize, seq_len: usize) -> anyhow::Result<()> {
        if input_dim == 0 {
            bail!("cnn_transformer: input_dim must be positive");
        }
        if seq_len == 0 || seq_len > REL_POS_MAX_LEN {
            bail!(
                "cnn_transformer: sequence length {seq_len} is outside 1..={REL_POS_MAX_LEN} \
                 (the relative-position table's range)"
            );
        }
        if self.cnn_channels.is_empty() || self.cnn_kernels.is_empty() {
            bail!("cnn_transformer: cnn_channels and cnn_kernels must not be empty");
        }
        if let Some(k) = self.cnn_kernels.iter().find(|&&k| k == 0) {
            bail!("cnn_transformer: kernel size {k} in cnn_kernels must be positive");
        }
        let branches = self.cnn_kernels.len();
        if let Some(c) = self.cnn_channels.iter().find(|&&c| c < branches) {
            bail!(
                "cnn_transformer: a block of {c} channels cannot be split over {branches} kernels"
            );
        }
        let d = self.d_model().expect("cnn_channels is not empty");
        if self.transformer_heads == 0 || !d.is_multiple_of(self.transformer_heads) {
            bail!(
                "cnn_transformer: d_model {d} (the last of cnn_channels) is not divisible by \
                 transformer_heads {}",
                self.transformer_heads
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("cnn_transformer: dropout {} is not in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// Checks the hyper-parameters against the data dimensions; returns the effective window.
    pub fn validate(
        &self,
        input_dim: usize,
        n_classes: usize,
        seq_len: usize,
    ) -> anyhow::Result<Option<InnerWindow>> {
        if input_dim == 0 || n_classes == 0 {
            bail!(
                "cnn_transformer: input_dim ({input_dim}) and n_classes ({n_classes}) must be positive"
            );
        }
        self.validate_encoder(input_dim, seq_len)?;
        let window = self.effective_window(seq_len);
        if let Some(w) = window
            && (w.is_empty() || w.end > seq_len)
        {
            bail!(
                "cnn_transformer: inner window {}..{} is not a non-empty range inside the {seq_len} steps",
                w.start,
                w.end
            );
        }
        if self.predict_pointers && window.is_none() {
            bail!(
                "cnn_transformer: pointer heads need an inner window, and sequences of {seq_len} \
                 steps have no default one: set `window`"
            );
        }
        Ok(window)
    }

    /// Builds the network (errors on an invalid configuration, see [`Self::validate`]).
    pub fn init<B: Backend>(
        &self,
        input_dim: usize,
        n_classes: usize,
        seq_len: usize,
        device: &B::Device,
    ) -> anyhow::Result<CnnTransformer<B>> {
        let window = self.validate(input_dim, n_classes, seq_len)?;
        let d = self.d_model().expect("validated");
        let EncoderLayers {
            cnn_blocks,
            rel_pos_enc,
            transformer,
        } = self.init_encoder_layers(input_dim, device)?;
        let pointer = || {
            self.predict_pointers
                .then(|| LinearConfig::new(d, 1).init(device))
        };
        Ok(CnnTransformer {
            cnn_blocks,
            rel_pos_enc,
            transformer,
            output_norm: LayerNormConfig::new(d).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            classifier: LinearConfig::new(d, n_classes).init(device),
            pointer_start_head: pointer(),
            pointer_end_head: pointer(),
            window,
        })
    }

    /// Builds the encoder layers for `input_dim` features: the CNN blocks, the transformer and
    /// the relative-position table (the configuration must have passed
    /// [`Self::validate_encoder`]). The CNN-Transformer and the TS-TCC encoder are both built
    /// from these.
    pub fn init_encoder_layers<B: Backend>(
        &self,
        input_dim: usize,
        device: &B::Device,
    ) -> anyhow::Result<EncoderLayers<B>> {
        let d = self
            .d_model()
            .context("cnn_transformer: cnn_channels must not be empty")?;
        let mut cnn_blocks = Vec::with_capacity(self.cnn_channels.len());
        let mut channels_in = input_dim;
        for &channels_out in &self.cnn_channels {
            cnn_blocks.push(CnnBlock::new(
                channels_in,
                channels_out,
                &self.cnn_kernels,
                self.dropout,
                device,
            ));
            channels_in = channels_out;
        }
        let transformer = TransformerEncoderConfig::new(d, self.transformer_heads, 4 * d)
            .with_dropout(self.dropout)
            .with_num_layers(self.transformer_layers)
            .init(device)
            .context("cnn_transformer: building the transformer")?;
        Ok(EncoderLayers {
            cnn_blocks,
            rel_pos_enc: RelativePositionalEncoding::new(d, REL_POS_MAX_LEN, device),
            transformer,
        })
    }
}

/// The encoder layers the CNN-Transformer shares with the TS-TCC encoder (same names, so an
/// encoder's weights map one-to-one onto the classifier's).
#[derive(Debug)]
pub struct EncoderLayers<B: Backend> {
    /// Multi-scale causal CNN blocks (`cnn_blocks.{i}`).
    pub cnn_blocks: Vec<CnnBlock<B>>,
    /// Relative-position table (`rel_pos_enc`).
    pub rel_pos_enc: RelativePositionalEncoding<B>,
    /// Post-norm transformer encoder (`transformer.layers.{i}`).
    pub transformer: TransformerEncoder<B>,
}

/// `[B, T, F] → [B, T, d]` through the CNN blocks (transposed to channels-first and back).
pub fn cnn_forward<B: Backend>(blocks: &[CnnBlock<B>], x: Tensor<B, 3>) -> Tensor<B, 3> {
    let mut h = x.swap_dims(1, 2); // [B, F, T]
    for block in blocks {
        h = block.forward(h);
    }
    h.swap_dims(1, 2) // [B, T, d]
}

/// Causal 1-D convolution: left padding `k − 1`, convolution, dropout.
#[derive(Module, Debug)]
pub struct CausalConv1d<B: Backend> {
    /// The convolution (`conv.weight [out, in, k]`, `conv.bias`).
    pub conv: Conv1d<B>,
    /// Dropout after the convolution.
    pub dropout: Dropout,
}

impl<B: Backend> CausalConv1d<B> {
    fn new(
        channels_in: usize,
        channels_out: usize,
        kernel: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let conv = Conv1dConfig::new(channels_in, channels_out, kernel)
            .with_padding(PaddingConfig1d::Explicit(kernel - 1, 0))
            .with_initializer(crate::nn::torch_default_uniform(channels_in * kernel))
            .init(device);
        Self {
            conv,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `[B, C_in, T] → [B, C_out, T]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dropout.forward(amp::conv1d_layer(&self.conv, x))
    }
}

/// Multi-scale causal CNN block with BatchNorm, ReLU and a residual connection.
#[derive(Module, Debug)]
pub struct CnnBlock<B: Backend> {
    /// One causal branch per kernel size.
    pub convs: Vec<CausalConv1d<B>>,
    /// BatchNorm1d over the concatenated branches.
    pub bn: kiln::nn::BatchNorm<B>,
    /// 1×1 convolution when the channel count changes (identity otherwise).
    pub residual: Option<Conv1d<B>>,
}

/// The reference's channel split: `out / n` per branch, the first `out % n` branches get one
/// more.
pub fn branch_channels(channels_out: usize, branches: usize) -> Vec<usize> {
    let base = channels_out / branches;
    let extra = channels_out % branches;
    (0..branches)
        .map(|i| base + usize::from(i < extra))
        .collect()
}

impl<B: Backend> CnnBlock<B> {
    fn new(
        channels_in: usize,
        channels_out: usize,
        kernels: &[usize],
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let convs = branch_channels(channels_out, kernels.len())
            .into_iter()
            .zip(kernels)
            .map(|(c, &k)| CausalConv1d::new(channels_in, c, k, dropout, device))
            .collect();
        let residual = (channels_in != channels_out).then(|| {
            Conv1dConfig::new(channels_in, channels_out, 1)
                .with_initializer(crate::nn::torch_default_uniform(channels_in))
                .init(device)
        });
        Self {
            convs,
            bn: kiln::nn::BatchNorm::new(channels_out, device),
            residual,
        }
    }

    /// `[B, C_in, T] → [B, C_out, T]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let branches = self.convs.iter().map(|c| c.forward(x.clone())).collect();
        let out = relu(self.bn.forward(Tensor::cat(branches, 1)));
        let residual = match &self.residual {
            Some(conv) => amp::conv1d_layer(conv, x),
            None => x,
        };
        out + residual
    }
}

/// Learnable relative-position table; the model uses its mean over key positions.
#[derive(Module, Debug)]
pub struct RelativePositionalEncoding<B: Backend> {
    /// `[2·max_len − 1, d]`; row `j − i + max_len − 1` is the embedding of offset `j − i`.
    pub rel_pos_emb: Param<Tensor<B, 2>>,
}

impl<B: Backend> RelativePositionalEncoding<B> {
    fn new(d_model: usize, max_len: usize, device: &B::Device) -> Self {
        Self {
            rel_pos_emb: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([2 * max_len - 1, d_model], device),
        }
    }

    /// `max_len` of the table.
    pub fn max_len(&self) -> usize {
        self.rel_pos_emb.dims()[0].div_ceil(2)
    }

    /// `pos_bias[i] = (1/T)·Σ_{j<T} E[j − i + max_len − 1]`, shape `[T, d]`, computed as one
    /// matmul with a constant averaging matrix `[T, 2·max_len − 1]`.
    ///
    /// # Panics
    /// When `steps > max_len` (the table has no rows for such offsets).
    pub fn mean_bias(&self, steps: usize) -> Tensor<B, 2> {
        let rows = self.rel_pos_emb.dims()[0];
        let max_len = self.max_len();
        assert!(
            steps <= max_len,
            "relative positions support at most {max_len} steps, got {steps}"
        );
        let mut avg = vec![0f32; steps * rows];
        let w = 1.0 / steps as f32;
        for i in 0..steps {
            for j in 0..steps {
                avg[i * rows + (j + max_len - 1 - i)] += w;
            }
        }
        let device = self.rel_pos_emb.device();
        let avg = Tensor::<B, 2>::from_data(TensorData::new(avg, [steps, rows]), &device);
        avg.matmul(self.rel_pos_emb.val())
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct CnnTransformer<B: Backend> {
    /// Multi-scale causal CNN blocks.
    pub cnn_blocks: Vec<CnnBlock<B>>,
    /// Relative-position table.
    pub rel_pos_enc: RelativePositionalEncoding<B>,
    /// Post-norm transformer encoder (`transformer.layers.{i}`).
    pub transformer: TransformerEncoder<B>,
    /// LayerNorm of the pooled features.
    pub output_norm: LayerNorm<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// Classification layer.
    pub classifier: Linear<B>,
    /// Start-pointer head (with `predict_pointers`).
    pub pointer_start_head: Option<Linear<B>>,
    /// End-pointer head (with `predict_pointers`).
    pub pointer_end_head: Option<Linear<B>>,
    /// The inner window in use (`None`: no weighting, no mask, pool over all steps).
    #[module(skip)]
    pub window: Option<InnerWindow>,
}

impl<B: Backend> CnnTransformer<B> {
    /// The inner window in use.
    pub fn window(&self) -> Option<InnerWindow> {
        self.window
    }

    /// The ×1.5 weights `[1, T, 1]` of the window steps.
    fn window_weights(window: InnerWindow, steps: usize, device: &B::Device) -> Tensor<B, 3> {
        let w: Vec<f32> = (0..steps)
            .map(|t| {
                if (window.start..window.end).contains(&t) {
                    WINDOW_WEIGHT
                } else {
                    1.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(w, [1, steps, 1]), device)
    }

    /// The additive mask `[T, T]`: `−∞` where a row outside the window meets a window column.
    pub fn attention_mask(window: InnerWindow, steps: usize, device: &B::Device) -> Tensor<B, 2> {
        let inside = |t: usize| (window.start..window.end).contains(&t);
        let mut m = vec![0f32; steps * steps];
        for i in (0..steps).filter(|&i| !inside(i)) {
            for j in (0..steps).filter(|&j| inside(j)) {
                m[i * steps + j] = f32::NEG_INFINITY;
            }
        }
        Tensor::from_data(TensorData::new(m, [steps, steps]), device)
    }

    /// Logits `[B, C]` and, with pointer heads, start/end logits `[B, window length]`.
    ///
    /// # Panics
    /// When the inner window does not fit the input's length, or the input is longer than
    /// [`REL_POS_MAX_LEN`] (the model was built for another sequence length).
    pub fn forward(&self, x: Tensor<B, 3>) -> ModelOutput<B> {
        let [batch, steps, _] = x.dims();
        let device = x.device();
        if let Some(w) = self.window {
            assert!(
                w.end <= steps,
                "cnn_transformer: inner window {}..{} does not fit {steps} steps",
                w.start,
                w.end
            );
        }
        let mut h = cnn_forward(&self.cnn_blocks, x); // [B, T, d]
        let d = h.dims()[2];
        if let Some(w) = self.window {
            h = ops::mul(h, Self::window_weights(w, steps, &device));
        }
        h = ops::add(h, self.rel_pos_enc.mean_bias(steps).unsqueeze_dim::<3>(0));
        let mask = self
            .window
            .map(|w| AttentionMask::Additive(Self::attention_mask(w, steps, &device)));
        let h = self.transformer.forward(h, mask.as_ref());
        let inner = match self.window {
            Some(w) => h.slice([0..batch, w.start..w.end, 0..d]),
            None => h,
        };
        let inner_len = inner.dims()[1];
        let pooled = inner.clone().mean_dim(1).reshape([batch, d]);
        let logits = amp::linear_layer(
            &self.classifier,
            self.dropout.forward(self.output_norm.forward(pooled)),
        );
        let pointers = match (&self.pointer_start_head, &self.pointer_end_head) {
            (Some(start), Some(end)) => Some((
                amp::linear_layer(start, inner.clone()).reshape([batch, inner_len]),
                amp::linear_layer(end, inner).reshape([batch, inner_len]),
            )),
            _ => None,
        };
        ModelOutput { logits, pointers }
    }
}
