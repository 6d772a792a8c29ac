//! `torch.nn.MultiheadAttention` (`batch_first=True`) with PyTorch's parameter names and layout.
//!
//! Parameters: `in_proj_weight [3E, E]` and `in_proj_bias [3E]` (query, key, value blocks, raw
//! parameters in PyTorch layout) and `out_proj` (a [`burn::nn::Linear`]; burn-store transposes its
//! weight on import). Queries are scaled by `1/√(E/h)`, the attention probabilities go through
//! dropout in training (autodiff backends), and an optional mask blocks key positions:
//! an additive float mask (`−∞` = blocked, PyTorch's float `attn_mask`) or a boolean mask
//! (`true` = blocked, PyTorch's bool `attn_mask`), both `[T_q, T_k]`.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use kiln::nn::{Dropout, DropoutConfig};
use kiln::{amp, ops};

/// Configuration of a [`MultiheadAttention`].
#[derive(Config, Debug)]
pub struct MultiheadAttentionConfig {
    /// Model width `E`.
    pub embed_dim: usize,
    /// Number of heads `h` (must divide `E`).
    pub num_heads: usize,
    /// Dropout on the attention probabilities.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl MultiheadAttentionConfig {
    /// Checks `E % h == 0` and `h > 0`.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            anyhow::bail!(
                "attention: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!("attention: dropout {} is not in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// Builds the layer with PyTorch's initialisation: `in_proj_weight` Xavier-uniform,
    /// `in_proj_bias` and `out_proj.bias` zero, `out_proj.weight` `U(±1/√E)`.
    ///
    /// Errors when the configuration is invalid (see [`Self::validate`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> anyhow::Result<MultiheadAttention<B>> {
        self.validate()?;
        let e = self.embed_dim;
        // xavier_uniform_ on [3E, E]: bound = √(6 / (fan_in + fan_out)) = √(6 / 4E).
        let bound = (6.0 / (4 * e) as f64).sqrt();
        let mut out_proj = LinearConfig::new(e, e).init(device);
        out_proj.bias = Some(Initializer::Zeros.init([e], device));
        Ok(MultiheadAttention {
            in_proj_weight: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([3 * e, e], device),
            in_proj_bias: Initializer::Zeros.init([3 * e], device),
            out_proj,
            dropout: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_heads,
        })
    }
}

/// Multi-head attention with PyTorch's parameter layout.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    /// Packed query/key/value projection `[3E, E]` (PyTorch layout: `y = x·Wᵀ + b`).
    pub in_proj_weight: Param<Tensor<B, 2>>,
    /// Packed query/key/value bias `[3E]`.
    pub in_proj_bias: Param<Tensor<B, 1>>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Dropout on the attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

/// An attention mask over `[T_q, T_k]`.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// Added to the scaled scores; `−∞` blocks a position.
    Additive(Tensor<B, 2>),
    /// `true` blocks a position.
    Blocked(Tensor<B, 2, Bool>),
}

impl<B: Backend> MultiheadAttention<B> {
    /// Model width `E`.
    pub fn embed_dim(&self) -> usize {
        self.in_proj_weight.dims()[1]
    }

    /// Self-attention `[B, T, E] → [B, T, E]` (query = key = value).
    pub fn forward_self(&self, x: Tensor<B, 3>, mask: Option<&AttentionMask<B>>) -> Tensor<B, 3> {
        let e = self.embed_dim();
        let [batch, steps, _] = x.dims();
        let qkv = amp::linear(
            x,
            self.in_proj_weight.val().transpose(),
            Some(self.in_proj_bias.val()),
        );
        let q = qkv.clone().slice([0..batch, 0..steps, 0..e]);
        let k = qkv.clone().slice([0..batch, 0..steps, e..2 * e]);
        let v = qkv.slice([0..batch, 0..steps, 2 * e..3 * e]);
        self.attend(q, k, v, mask)
    }

    /// General attention: `query [B, T_q, E]`, `key`/`value` `[B, T_k, E]` → `[B, T_q, E]`.
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        mask: Option<&AttentionMask<B>>,
    ) -> Tensor<B, 3> {
        let e = self.embed_dim();
        let w = self.in_proj_weight.val();
        let b = self.in_proj_bias.val();
        let project = |x: Tensor<B, 3>, block: usize| {
            let rows = block * e..(block + 1) * e;
            amp::linear(
                x,
                w.clone().slice([rows.clone(), 0..e]).transpose(),
                Some(b.clone().slice([rows])),
            )
        };
        let q = project(query, 0);
        let k = project(key, 1);
        let v = project(value, 2);
        self.attend(q, k, v, mask)
    }

    /// Scaled dot-product attention on projected `q`, `k`, `v`, then the output projection.
    fn attend(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        mask: Option<&AttentionMask<B>>,
    ) -> Tensor<B, 3> {
        let e = self.embed_dim();
        let heads = self.num_heads;
        let head_dim = e / heads;
        let [batch, tq, _] = q.dims();
        let tk = k.dims()[1];
        let split =
            |x: Tensor<B, 3>, t: usize| x.reshape([batch, t, heads, head_dim]).swap_dims(1, 2);
        // PyTorch scales the query before the product.
        let q = split(q, tq).mul_scalar(1.0 / (head_dim as f64).sqrt());
        let k = split(k, tk);
        let v = split(v, tk);
        let mut scores = amp::matmul(q, k.swap_dims(2, 3)); // [B, h, T_q, T_k]
        match mask {
            Some(AttentionMask::Additive(m)) => {
                scores = ops::add(scores, m.clone().reshape([1, 1, tq, tk]));
            }
            Some(AttentionMask::Blocked(m)) => {
                scores = scores.mask_fill(
                    m.clone()
                        .reshape([1, 1, tq, tk])
                        .expand([batch, heads, tq, tk]),
                    f32::NEG_INFINITY,
                );
            }
            None => {}
        }
        let probs = self.dropout.forward(softmax(scores, 3));
        let context = amp::matmul(probs, v)
            .swap_dims(1, 2)
            .reshape([batch, tq, e]);
        amp::linear_layer(&self.out_proj, context)
    }
}
