//! The TS-TCC networks: the encoder the CNN-Transformer shares, the projection head and the
//! contrastive model that chains them.

use anyhow::{Context, Result, bail};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use kiln::amp;
use kiln::fused::relu;
use kiln::nn::{LayerNorm, LayerNormConfig};
use serde::{Deserialize, Serialize};

use crate::model::cnn_transformer::{
    CnnBlock, CnnTransformerConfig, EncoderLayers, RelativePositionalEncoding, cnn_forward,
};
use crate::nn::TransformerEncoder;

/// Hyper-parameters of the TS-TCC model (the reference `TSTCC` constructor's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TsTccConfig {
    /// Output channels of the CNN blocks (the last one is `d_model`).
    pub cnn_channels: Vec<usize>,
    /// Kernel sizes of the parallel causal branches.
    pub cnn_kernels: Vec<usize>,
    /// Transformer encoder layers.
    pub transformer_layers: usize,
    /// Attention heads.
    pub transformer_heads: usize,
    /// Dropout rate of the encoder.
    pub dropout: f64,
    /// Hidden width of the projection head.
    pub projection_hidden_dim: usize,
    /// Embedding width of the projection head.
    pub projection_output_dim: usize,
}

impl Default for TsTccConfig {
    fn default() -> Self {
        Self {
            cnn_channels: vec![64, 128, 128],
            cnn_kernels: vec![3, 5, 9],
            transformer_layers: 3,
            transformer_heads: 4,
            dropout: 0.25,
            projection_hidden_dim: 128,
            projection_output_dim: 64,
        }
    }
}

impl TsTccConfig {
    /// The CNN-Transformer classifier configuration with this encoder (defaults elsewhere): the
    /// classifier that a pre-trained encoder of this configuration loads into.
    pub fn classifier_config(&self) -> CnnTransformerConfig {
        CnnTransformerConfig {
            cnn_channels: self.cnn_channels.clone(),
            cnn_kernels: self.cnn_kernels.clone(),
            transformer_layers: self.transformer_layers,
            transformer_heads: self.transformer_heads,
            dropout: self.dropout,
            ..CnnTransformerConfig::default()
        }
    }

    /// The encoder part of a classifier configuration (projection head at the defaults).
    pub fn from_classifier(config: &CnnTransformerConfig) -> Self {
        Self {
            cnn_channels: config.cnn_channels.clone(),
            cnn_kernels: config.cnn_kernels.clone(),
            transformer_layers: config.transformer_layers,
            transformer_heads: config.transformer_heads,
            dropout: config.dropout,
            ..Self::default()
        }
    }

    /// Checks the hyper-parameters for `input_dim` features and sequences of `seq_len` steps.
    pub fn validate(&self, input_dim: usize, seq_len: usize) -> Result<()> {
        self.classifier_config()
            .validate_encoder(input_dim, seq_len)
            .context("ts_tcc: invalid encoder configuration")?;
        if self.projection_hidden_dim == 0 || self.projection_output_dim == 0 {
            bail!(
                "ts_tcc: projection_hidden_dim ({}) and projection_output_dim ({}) must be positive",
                self.projection_hidden_dim,
                self.projection_output_dim
            );
        }
        Ok(())
    }

    /// Builds the encoder for `input_dim` features (any sequence length up to the
    /// relative-position table's 512 steps), parameters materialised.
    pub fn init_encoder<B: Backend>(
        &self,
        input_dim: usize,
        device: &B::Device,
    ) -> Result<TsTccEncoder<B>> {
        self.validate(input_dim, 1)?;
        let EncoderLayers {
            cnn_blocks,
            rel_pos_enc,
            transformer,
        } = self
            .classifier_config()
            .init_encoder_layers(input_dim, device)?;
        Ok(kiln::checkpoint::materialize(TsTccEncoder {
            cnn_blocks,
            rel_pos_enc,
            transformer,
        }))
    }

    /// Builds the contrastive model (encoder and projection head), parameters materialised.
    pub fn init<B: Backend>(&self, input_dim: usize, device: &B::Device) -> Result<TsTcc<B>> {
        let encoder = self.init_encoder(input_dim, device)?;
        let d = encoder.d_model();
        let projection_head = ProjectionHead::new(
            d,
            self.projection_hidden_dim,
            self.projection_output_dim,
            device,
        );
        Ok(kiln::checkpoint::materialize(TsTcc {
            encoder,
            projection_head,
        }))
    }
}

/// The TS-TCC encoder: the CNN-Transformer's `cnn_blocks`, `rel_pos_enc` and `transformer` under
/// the same names, without the window weighting, the attention mask and the head.
///
/// `x [B, T, F] → cnn_blocks → + mean relative-position bias → transformer → [B, T, d]`.
#[derive(Module, Debug)]
pub struct TsTccEncoder<B: Backend> {
    /// Multi-scale causal CNN blocks (`cnn_blocks.{i}`).
    pub cnn_blocks: Vec<CnnBlock<B>>,
    /// Relative-position table (`rel_pos_enc.rel_pos_emb`).
    pub rel_pos_enc: RelativePositionalEncoding<B>,
    /// Post-norm transformer encoder (`transformer.layers.{i}`), no mask.
    pub transformer: TransformerEncoder<B>,
}

impl<B: Backend> TsTccEncoder<B> {
    /// `[B, T, F] → [B, T, d]`.
    ///
    /// # Panics
    /// When `T` exceeds the relative-position table (512 steps).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = cnn_forward(&self.cnn_blocks, x);
        let steps = h.dims()[1];
        let h = h + self.rel_pos_enc.mean_bias(steps).unsqueeze_dim::<3>(0);
        self.transformer.forward(h, None)
    }

    /// The model width (the last CNN block's channels).
    pub fn d_model(&self) -> usize {
        block_channels(&self.cnn_blocks)
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// The encoder hyper-parameters, read from the layers (projection head at the defaults).
    pub fn config(&self) -> TsTccConfig {
        encoder_config(&self.cnn_blocks, &self.transformer)
    }

    /// Features per time step the encoder takes.
    pub fn input_dim(&self) -> usize {
        block_input_dim(&self.cnn_blocks)
    }
}

/// Output channels of each CNN block.
pub(crate) fn block_channels<B: Backend>(blocks: &[CnnBlock<B>]) -> Vec<usize> {
    blocks.iter().map(|b| b.bn.num_features()).collect()
}

/// Kernel sizes of the branches (taken from the first block; every block has the same).
pub(crate) fn block_kernels<B: Backend>(blocks: &[CnnBlock<B>]) -> Vec<usize> {
    blocks
        .first()
        .map(|b| b.convs.iter().map(|c| c.conv.kernel_size).collect())
        .unwrap_or_default()
}

/// Input channels of the first CNN block.
pub(crate) fn block_input_dim<B: Backend>(blocks: &[CnnBlock<B>]) -> usize {
    blocks
        .first()
        .and_then(|b| b.convs.first())
        .map_or(0, |c| c.conv.weight.dims()[1])
}

/// Encoder hyper-parameters of a set of encoder layers.
pub(crate) fn encoder_config<B: Backend>(
    blocks: &[CnnBlock<B>],
    transformer: &TransformerEncoder<B>,
) -> TsTccConfig {
    let first = blocks.first().and_then(|b| b.convs.first());
    TsTccConfig {
        cnn_channels: block_channels(blocks),
        cnn_kernels: block_kernels(blocks),
        transformer_layers: transformer.layers.len(),
        transformer_heads: transformer
            .layers
            .first()
            .map_or(0, |l| l.self_attn.num_heads),
        dropout: first.map_or(0.0, |c| c.dropout.prob),
        ..TsTccConfig::default()
    }
}

/// Projection head `Linear(d→h) → LayerNorm(h) → ReLU → Linear(h→o)`.
///
/// The reference's `nn.Sequential` `projection.{0,1,3}` is stored as `projection_0`,
/// `projection_1`, `projection_3` (the ReLU at index 2 has no parameters), the way SimpleLSTM
/// stores its `classifier.{n}` head.
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    /// First Linear (`projection.0.*`).
    pub projection_0: Linear<B>,
    /// LayerNorm (`projection.1.*`).
    pub projection_1: LayerNorm<B>,
    /// Output Linear (`projection.3.*`).
    pub projection_3: Linear<B>,
}

impl<B: Backend> ProjectionHead<B> {
    /// PyTorch's initialisation (Linear `U(±1/√fan_in)`, LayerNorm 1/0, eps 1e-5).
    pub fn new(input_dim: usize, hidden_dim: usize, output_dim: usize, device: &B::Device) -> Self {
        Self {
            projection_0: LinearConfig::new(input_dim, hidden_dim).init(device),
            projection_1: LayerNormConfig::new(hidden_dim).init(device),
            projection_3: LinearConfig::new(hidden_dim, output_dim).init(device),
        }
    }

    /// `[B, d] → [B, o]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = amp::linear_layer(&self.projection_0, x);
        let h = relu(self.projection_1.forward(h));
        amp::linear_layer(&self.projection_3, h)
    }
}

/// The contrastive model: encoder → mean over all steps → projection head → `z [B, o]`.
#[derive(Module, Debug)]
pub struct TsTcc<B: Backend> {
    /// The encoder (what pre-training produces).
    pub encoder: TsTccEncoder<B>,
    /// The projection head (discarded after pre-training).
    pub projection_head: ProjectionHead<B>,
}

impl<B: Backend> TsTcc<B> {
    /// `[B, T, F] → [B, o]` embeddings.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let features = self.encoder.forward(x);
        let [batch, _, d] = features.dims();
        let pooled = features.mean_dim(1).reshape([batch, d]);
        self.projection_head.forward(pooled)
    }
}
