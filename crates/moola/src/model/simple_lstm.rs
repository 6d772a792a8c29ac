//! SimpleLSTM (the reference's `models/simple_lstm.py` in its modernization-era architecture of
//! commit `7c9b1bb`; by commit `6ecdb28` that file had been rewritten as a dual-input variant).
//!
//! ```text
//! x [B, T, F] → lstm (unidirectional, H, num_layers; inter-layer dropout when num_layers > 1)
//!             → attention: 4-head self-attention over all T steps, no mask (dropout on probs)
//!             → ln(lstm_out + attn_out) → last step [B, H]
//!             → classifier: Linear(H→32) → ReLU → Dropout → Linear(32→C)
//! ```
//!
//! Parameters: 36,834 for `H = 64, C = 2`; 36,867 for `C = 3`; 139,106 for `H = 128, C = 2`.
//! Field names mirror the PyTorch state dict: `lstm.*` (see [`crate::nn::Lstm`] for the layer
//! renaming), `attention.{in_proj_weight, in_proj_bias, out_proj.*}`, `ln.*`; the reference's
//! `nn.Sequential` head `classifier.0` / `classifier.3` is stored as `classifier_0` /
//! `classifier_3` (the ReLU and Dropout in between have no parameters).
//! Initialisation follows PyTorch's defaults (LSTM `U(±1/√H)`, attention Xavier/zero, LayerNorm
//! 1/0, Linear `U(±1/√fan_in)`).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use kiln::amp;
use kiln::fused::relu;
use kiln::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use serde::{Deserialize, Serialize};

use crate::nn::{Lstm, LstmConfig, MultiheadAttention, MultiheadAttentionConfig};

/// Width of the hidden layer of the classification head (fixed in the reference).
pub const CLASSIFIER_HIDDEN: usize = 32;

/// Hyper-parameters (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimpleLstmConfig {
    /// LSTM hidden size.
    pub hidden_size: usize,
    /// Stacked LSTM layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Dropout rate.
    pub dropout: f64,
}

impl Default for SimpleLstmConfig {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            num_layers: 1,
            num_heads: 4,
            dropout: 0.4,
        }
    }
}

impl SimpleLstmConfig {
    /// Checks the hyper-parameters against the data dimensions.
    pub fn validate(&self, input_dim: usize, n_classes: usize) -> anyhow::Result<()> {
        if input_dim == 0 || n_classes == 0 {
            anyhow::bail!(
                "simple_lstm: input_dim ({input_dim}) and n_classes ({n_classes}) must be positive"
            );
        }
        if self.hidden_size == 0 || self.num_layers == 0 {
            anyhow::bail!(
                "simple_lstm: hidden_size ({}) and num_layers ({}) must be positive",
                self.hidden_size,
                self.num_layers
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!("simple_lstm: dropout {} is not in [0, 1)", self.dropout);
        }
        self.attention_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("simple_lstm: hidden_size is the attention width: {e}"))
    }

    fn attention_config(&self) -> MultiheadAttentionConfig {
        MultiheadAttentionConfig::new(self.hidden_size, self.num_heads).with_dropout(self.dropout)
    }

    /// Builds the network.
    ///
    /// # Panics
    /// On an invalid configuration; call [`Self::validate`] first to get an error instead
    /// (`ModelSpec::init` does).
    pub fn init<B: Backend>(
        &self,
        input_dim: usize,
        n_classes: usize,
        device: &B::Device,
    ) -> SimpleLstm<B> {
        if let Err(e) = self.validate(input_dim, n_classes) {
            panic!("{e}");
        }
        let h = self.hidden_size;
        let lstm_dropout = if self.num_layers > 1 {
            self.dropout
        } else {
            0.0
        };
        SimpleLstm {
            lstm: LstmConfig::new(input_dim, h)
                .with_num_layers(self.num_layers)
                .with_dropout(lstm_dropout)
                .init(device),
            attention: self
                .attention_config()
                .init(device)
                .expect("validated attention configuration"),
            ln: LayerNormConfig::new(h).init(device),
            classifier_0: LinearConfig::new(h, CLASSIFIER_HIDDEN).init(device),
            classifier_dropout: DropoutConfig::new(self.dropout).init(),
            classifier_3: LinearConfig::new(CLASSIFIER_HIDDEN, n_classes).init(device),
        }
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct SimpleLstm<B: Backend> {
    /// Unidirectional LSTM (`lstm.*`).
    pub lstm: Lstm<B>,
    /// Self-attention over the LSTM outputs (`attention.*`).
    pub attention: MultiheadAttention<B>,
    /// LayerNorm of the residual sum (`ln.*`).
    pub ln: LayerNorm<B>,
    /// Head, first Linear (`classifier.0.*`).
    pub classifier_0: Linear<B>,
    /// Head dropout (`classifier.2`, no parameters).
    pub classifier_dropout: Dropout,
    /// Head, output Linear (`classifier.3.*`).
    pub classifier_3: Linear<B>,
}

impl<B: Backend> SimpleLstm<B> {
    /// Logits `[batch, classes]` from `[batch, time, features]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let out = self.lstm.forward(x);
        let [batch, steps, hidden] = out.dims();
        let attn = self.attention.forward_self(out.clone(), None);
        let y = self.ln.forward(out + attn);
        let last = y
            .slice([0..batch, steps - 1..steps, 0..hidden])
            .reshape([batch, hidden]);
        let z = self
            .classifier_dropout
            .forward(relu(amp::linear_layer(&self.classifier_0, last)));
        amp::linear_layer(&self.classifier_3, z)
    }
}
