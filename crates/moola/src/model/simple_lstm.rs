//! SimpleLSTM (reference §2.1). STUB: to be implemented.
use burn::prelude::*;
use serde::{Deserialize, Serialize};

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
    /// Builds the network.
    pub fn init<B: Backend>(
        &self,
        _input_dim: usize,
        _n_classes: usize,
        _device: &B::Device,
    ) -> SimpleLstm<B> {
        todo!()
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct SimpleLstm<B: Backend> {
    /// Placeholder.
    pub classifier: burn::nn::Linear<B>,
}

impl<B: Backend> SimpleLstm<B> {
    /// Logits `[batch, classes]`.
    pub fn forward(&self, _x: Tensor<B, 3>) -> Tensor<B, 2> {
        todo!()
    }
}
