//! moola's deep classifiers (the reference's `models/` directory): SimpleLSTM, CNN-Transformer,
//! RWKV-TS.
//!
//! Every network takes `[batch, time, features]` raw-price windows and returns class logits
//! (plus start/end pointer logits for the CNN-Transformer with pointer heads). Field names mirror
//! the reference's PyTorch state-dict keys, so that importing a PyTorch checkpoint is a mapping
//! table (see [`crate::import`]).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::scaling::InputScaling;

pub mod cnn_transformer;
pub mod rwkv_ts;
pub mod simple_lstm;

pub use cnn_transformer::{CnnTransformer, CnnTransformerConfig};
pub use rwkv_ts::{Readout, RwkvTs, RwkvTsConfig};
pub use simple_lstm::{SimpleLstm, SimpleLstmConfig};

/// The inner ("prediction") window of a sequence: steps `start..end`.
///
/// The reference hard-codes bars 30–74 of a 105-bar window. Window weighting, the
/// buffer→inner attention mask, the inner-window mean pool and the pointer heads use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InnerWindow {
    /// First step of the inner window.
    pub start: usize,
    /// One past the last step.
    pub end: usize,
}

impl InnerWindow {
    /// The reference layout: bars 30..75 of 105.
    pub const REFERENCE: InnerWindow = InnerWindow { start: 30, end: 75 };
    /// The reference window length.
    pub const REFERENCE_LEN: usize = 105;

    /// The default for a sequence length: the reference layout for 105 bars, none otherwise
    /// (then weighting and masking are off and pooling runs over all steps).
    pub fn default_for(seq_len: usize) -> Option<Self> {
        (seq_len == Self::REFERENCE_LEN).then_some(Self::REFERENCE)
    }

    /// Number of steps in the window.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Output of a classifier network.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// Class logits `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// Start/end pointer logits `[batch, inner_len]` each (CNN-Transformer with pointer heads).
    pub pointers: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
}

/// Which network, with its hyper-parameters (the reference's `hyperparams` dict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum ModelSpec {
    /// SimpleLSTM: unidirectional LSTM, self-attention, last-step head.
    SimpleLstm(SimpleLstmConfig),
    /// CNN-Transformer: multi-scale causal CNN, post-norm transformer, optional pointer heads.
    CnnTransformer(CnnTransformerConfig),
    /// RWKV-TS: simplified RWKV blocks with token shift and state threading, last-step head.
    RwkvTs(RwkvTsConfig),
}

impl ModelSpec {
    /// The reference defaults of a model by CLI name.
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        match name {
            "simple_lstm" => Ok(Self::SimpleLstm(SimpleLstmConfig::default())),
            "cnn_transformer" => Ok(Self::CnnTransformer(CnnTransformerConfig::default())),
            "rwkv_ts" => Ok(Self::RwkvTs(RwkvTsConfig::default())),
            other => anyhow::bail!(
                "unknown model `{other}`: expected simple_lstm, cnn_transformer or rwkv_ts"
            ),
        }
    }

    /// The CLI name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SimpleLstm(_) => "simple_lstm",
            Self::CnnTransformer(_) => "cnn_transformer",
            Self::RwkvTs(_) => "rwkv_ts",
        }
    }

    /// Builds the network for `input_dim` features, `n_classes` classes and sequences of
    /// `seq_len` steps (window-dependent parts take their defaults from `seq_len`).
    pub fn init<B: Backend>(
        &self,
        input_dim: usize,
        n_classes: usize,
        seq_len: usize,
        device: &B::Device,
    ) -> anyhow::Result<Net<B>> {
        let net = match self {
            Self::SimpleLstm(c) => {
                c.validate(input_dim, n_classes)?;
                Net::SimpleLstm(c.init(input_dim, n_classes, device))
            }
            Self::CnnTransformer(c) => {
                Net::CnnTransformer(c.init(input_dim, n_classes, seq_len, device)?)
            }
            Self::RwkvTs(c) => Net::RwkvTs(c.init(input_dim, n_classes, seq_len, device)?),
        };
        Ok(kiln::checkpoint::materialize(net))
    }
}

/// Any of moola's networks.
#[derive(Module, Debug)]
pub enum Net<B: Backend> {
    /// SimpleLSTM.
    SimpleLstm(SimpleLstm<B>),
    /// CNN-Transformer.
    CnnTransformer(CnnTransformer<B>),
    /// RWKV-TS.
    RwkvTs(RwkvTs<B>),
}

impl<B: Backend> Net<B> {
    /// Forward pass on `[batch, time, features]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> ModelOutput<B> {
        match self {
            Net::SimpleLstm(m) => ModelOutput {
                logits: m.forward(x),
                pointers: None,
            },
            Net::CnnTransformer(m) => m.forward(x),
            Net::RwkvTs(m) => ModelOutput {
                logits: m.forward(x),
                pointers: None,
            },
        }
    }
}

/// The JSON sidecar of a saved model: everything needed to rebuild the network and map its
/// outputs back to labels (the reference's save dict minus the weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Format tag, `moola-burn/1`.
    pub format: String,
    /// Architecture and hyper-parameters.
    pub spec: ModelSpec,
    /// Features per time step.
    pub input_dim: usize,
    /// Number of classes.
    pub n_classes: usize,
    /// Sequence length the window-dependent parts were built for.
    pub seq_len: usize,
    /// Class labels in index order (sorted, like `np.unique`).
    pub classes: Vec<String>,
    /// Where the weights came from (e.g. an imported PyTorch checkpoint), for the record.
    #[serde(default)]
    pub source: Option<String>,
    /// The input transform the network was trained with, applied to every window before it
    /// (`none` for imported reference checkpoints and for files written before the setting
    /// existed).
    #[serde(default)]
    pub scaling: InputScaling,
}

/// The current sidecar format tag.
pub const CARD_FORMAT: &str = "moola-burn/1";

impl ModelCard {
    /// The card of a network of `spec` trained on windows of `seq_len` × `input_dim` with
    /// `classes` (in index order).
    pub fn new(spec: &ModelSpec, input_dim: usize, seq_len: usize, classes: Vec<String>) -> Self {
        Self {
            format: CARD_FORMAT.to_string(),
            spec: spec.clone(),
            input_dim,
            n_classes: classes.len(),
            seq_len,
            classes,
            source: None,
            scaling: InputScaling::None,
        }
    }

    /// The card with the input transform `scaling`.
    pub fn with_scaling(mut self, scaling: InputScaling) -> Self {
        self.scaling = scaling;
        self
    }
}

/// The weight and sidecar paths of a model path (`x`, `x.mpk` or `x.json` → `x.mpk`, `x.json`).
pub use kiln::artifact::paths as model_paths;

/// Saves a classifier as a model file: weights (Burn record) and card (JSON), both atomically
/// (the [`kiln::artifact`] convention).
pub fn save<B: Backend>(
    net: &Net<B>,
    card: &ModelCard,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    kiln::artifact::save(net, card, path)
}

/// Loads a classifier saved by [`save`] or produced by `moola import`, or the model of a
/// `moola train` checkpoint (`*.ckpt`, whose task state is the card).
pub fn load<B: Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<(Net<B>, ModelCard)> {
    let (net, card, _) = kiln::artifact::load::<B, Net<B>, ModelCard>(path, device, |card| {
        if card.format != CARD_FORMAT {
            anyhow::bail!(
                "{}: unsupported model format `{}` (expected {CARD_FORMAT})",
                path.display(),
                card.format
            );
        }
        if card.classes.len() != card.n_classes {
            anyhow::bail!(
                "{}: {} class labels for n_classes = {}",
                path.display(),
                card.classes.len(),
                card.n_classes
            );
        }
        card.spec
            .init::<B>(card.input_dim, card.n_classes, card.seq_len, device)
    })?;
    Ok((net, card))
}
