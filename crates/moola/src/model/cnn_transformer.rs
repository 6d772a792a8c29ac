//! CNN-Transformer (reference §2.2). STUB: to be implemented.
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{InnerWindow, ModelOutput};

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
    /// Builds the network.
    pub fn init<B: Backend>(
        &self,
        _input_dim: usize,
        _n_classes: usize,
        _seq_len: usize,
        _device: &B::Device,
    ) -> anyhow::Result<CnnTransformer<B>> {
        todo!()
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct CnnTransformer<B: Backend> {
    /// Placeholder.
    pub classifier: burn::nn::Linear<B>,
}

impl<B: Backend> CnnTransformer<B> {
    /// Logits and pointer logits.
    pub fn forward(&self, _x: Tensor<B, 3>) -> ModelOutput<B> {
        todo!()
    }
}
