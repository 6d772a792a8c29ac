//! `torch.nn.TransformerEncoderLayer` / `TransformerEncoder` with PyTorch's defaults and names.
//!
//! PyTorch's defaults (`norm_first=False`, `activation=relu`, `batch_first=True`): a post-norm
//! layer
//!
//! ```text
//! x ← norm1(x + dropout1(self_attn(x)))
//! x ← norm2(x + dropout2(linear2(dropout(relu(linear1(x))))))
//! ```
//!
//! with dropout on the attention probabilities too, LayerNorm eps `1e-5` and no final norm on
//! the stack. Field names follow the PyTorch state dict (`self_attn.in_proj_weight`, `linear1`,
//! `linear2`, `norm1`, `norm2`; the stack's `layers.{i}`); burn-store maps LayerNorm
//! `weight`/`bias` to `gamma`/`beta` and transposes the Linear weights.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use kiln::amp;
use kiln::fused::relu;
use kiln::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};

use super::attention::{AttentionMask, MultiheadAttention, MultiheadAttentionConfig};

/// Configuration of a [`TransformerEncoderLayer`] (and, with `num_layers`, of a
/// [`TransformerEncoder`]).
#[derive(Config, Debug)]
pub struct TransformerEncoderConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub nhead: usize,
    /// Hidden width of the feed-forward block.
    pub dim_feedforward: usize,
    /// Dropout (attention probabilities, feed-forward, both residual branches).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Number of layers of a [`TransformerEncoder`].
    #[config(default = 1)]
    pub num_layers: usize,
}

impl TransformerEncoderConfig {
    /// Builds one layer with PyTorch's initialisation (Linear `U(±1/√fan_in)`, LayerNorm 1/0,
    /// attention as in [`MultiheadAttentionConfig::init`]).
    pub fn init_layer<B: Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<TransformerEncoderLayer<B>> {
        let self_attn = MultiheadAttentionConfig::new(self.d_model, self.nhead)
            .with_dropout(self.dropout)
            .init(device)?;
        let dropout = || DropoutConfig::new(self.dropout).init();
        Ok(TransformerEncoderLayer {
            self_attn,
            linear1: LinearConfig::new(self.d_model, self.dim_feedforward).init(device),
            dropout: dropout(),
            linear2: LinearConfig::new(self.dim_feedforward, self.d_model).init(device),
            norm1: LayerNormConfig::new(self.d_model).init(device),
            norm2: LayerNormConfig::new(self.d_model).init(device),
            dropout1: dropout(),
            dropout2: dropout(),
        })
    }

    /// Builds `num_layers` independent layers.
    pub fn init<B: Backend>(&self, device: &B::Device) -> anyhow::Result<TransformerEncoder<B>> {
        let layers = (0..self.num_layers)
            .map(|_| self.init_layer(device))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(TransformerEncoder { layers })
    }
}

/// Post-norm transformer encoder layer (PyTorch defaults).
#[derive(Module, Debug)]
pub struct TransformerEncoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: MultiheadAttention<B>,
    /// Feed-forward expansion.
    pub linear1: Linear<B>,
    /// Dropout inside the feed-forward block.
    pub dropout: Dropout,
    /// Feed-forward projection back to `d_model`.
    pub linear2: Linear<B>,
    /// Norm after the attention residual.
    pub norm1: LayerNorm<B>,
    /// Norm after the feed-forward residual.
    pub norm2: LayerNorm<B>,
    /// Dropout on the attention branch.
    pub dropout1: Dropout,
    /// Dropout on the feed-forward branch.
    pub dropout2: Dropout,
}

impl<B: Backend> TransformerEncoderLayer<B> {
    /// `[B, T, d] → [B, T, d]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<&AttentionMask<B>>) -> Tensor<B, 3> {
        let attn = self.self_attn.forward_self(x.clone(), mask);
        let x = self.norm1.forward(x + self.dropout1.forward(attn));
        let hidden = relu(amp::linear_layer(&self.linear1, x.clone()));
        let ff = amp::linear_layer(&self.linear2, self.dropout.forward(hidden));
        self.norm2.forward(x + self.dropout2.forward(ff))
    }
}

/// A stack of [`TransformerEncoderLayer`]s (no final norm, like PyTorch's default).
#[derive(Module, Debug)]
pub struct TransformerEncoder<B: Backend> {
    /// The layers (`transformer.layers.{i}` in the state dict).
    pub layers: Vec<TransformerEncoderLayer<B>>,
}

impl<B: Backend> TransformerEncoder<B> {
    /// `[B, T, d] → [B, T, d]`; the same mask is used by every layer.
    pub fn forward(&self, mut x: Tensor<B, 3>, mask: Option<&AttentionMask<B>>) -> Tensor<B, 3> {
        for layer in &self.layers {
            x = layer.forward(x, mask);
        }
        x
    }
}
