//! PyTorch-layout building blocks whose parameter names match `torch.nn` state dicts, so that a
//! PyTorch checkpoint imports through a key-renaming table (see [`crate::import`]).
//!
//! * [`Lstm`]: `torch.nn.LSTM` (multi-layer, bidirectional, `batch_first`) with per-direction
//!   `weight_ih`/`weight_hh`/`bias_ih`/`bias_hh` in PyTorch layout;
//! * [`MultiheadAttention`]: `torch.nn.MultiheadAttention` with packed `in_proj_weight`/
//!   `in_proj_bias` and `out_proj`;
//! * [`TransformerEncoderLayer`] / [`TransformerEncoder`]: PyTorch's post-norm encoder layer.
//!
//! Dropout is active exactly when the backend is an autodiff backend (Burn's convention, also
//! used by `kiln::nn::BatchNorm`): train on `Autodiff<B>`, evaluate on `B` (`module.valid()`).

pub mod attention;
pub mod lstm;
pub mod transformer;

pub use attention::{AttentionMask, MultiheadAttention, MultiheadAttentionConfig};
pub use lstm::{Lstm, LstmConfig, LstmDirection, LstmLayer, LstmState};
pub use transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderLayer};

/// PyTorch's default initialiser of `nn.Linear`/`nn.Conv*` weights and biases:
/// `U(−1/√fan_in, 1/√fan_in)` (Kaiming-uniform with `a = √5`).
pub fn torch_default_uniform(fan_in: usize) -> burn::module::Initializer {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    burn::module::Initializer::Uniform {
        min: -bound,
        max: bound,
    }
}
