//! RWKV-TS (reference §2.3). STUB: to be implemented.
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::InnerWindow;

/// Hyper-parameters (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RwkvTsConfig {
    /// Model width.
    pub d_model: usize,
    /// RWKV blocks.
    pub n_layers: usize,
    /// Stored and saved like the reference, never used.
    pub patch_sizes: Vec<usize>,
    /// Dropout rate.
    pub dropout: f64,
    /// InstanceNorm after the input projection.
    pub instance_norm: bool,
    /// Inner window for the ×1.2 mask; `None` = default for the sequence length.
    pub window: Option<InnerWindow>,
}

impl Default for RwkvTsConfig {
    fn default() -> Self {
        Self {
            d_model: 128,
            n_layers: 4,
            patch_sizes: vec![7, 15, 21, 35],
            dropout: 0.2,
            instance_norm: true,
            window: None,
        }
    }
}

impl RwkvTsConfig {
    /// Builds the network.
    pub fn init<B: Backend>(
        &self,
        _input_dim: usize,
        _n_classes: usize,
        _seq_len: usize,
        _device: &B::Device,
    ) -> anyhow::Result<RwkvTs<B>> {
        todo!()
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct RwkvTs<B: Backend> {
    /// Placeholder.
    pub classifier: burn::nn::Linear<B>,
}

impl<B: Backend> RwkvTs<B> {
    /// Logits `[batch, classes]`.
    pub fn forward(&self, _x: Tensor<B, 3>) -> Tensor<B, 2> {
        todo!()
    }
}
