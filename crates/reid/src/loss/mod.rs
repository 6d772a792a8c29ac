//! # Training losses of centroids-reid (the reference's `losses/` and training steps)
//!
//! Every loss is generic over a Burn `Backend` and
//! differentiable under `Autodiff`. Features, centers and logits come in as tensors; labels and
//! the real/mock mask come in as host slices (they are batch metadata the sampler produced, and
//! the masks the losses need are built from them on the host).
//!
//! | Module | Reference | What |
//! |---|---|---|
//! | [`distance`] | `losses/triplet_loss.py` | non-squared Euclidean and cosine pairwise distances |
//! | [`triplet`] | `TripletLoss`, `hard_example_mining` | batch-hard triplet, self as positive, anchor mask |
//! | [`center`] | `losses/center_loss.py` | squared-distance center loss with the clamp quirk |
//! | [`cross_entropy`] | `CrossEntropyLabelSmooth` | label-smoothed CE (Burn's own, checked equal) |
//! | [`centroid`] | `train_ctl_model.py` | the centroid triplet loss, round by round as the code does it |
//! | [`objective`] | `training_step` of both scripts | the base-model and CTL-model totals |
//!
//! Labels are class indices (`usize`, train pids relabelled to `0..C`). Inputs are validated and
//! bad shapes or labels are reported as errors, never panics.

pub mod center;
pub mod centroid;
pub mod cross_entropy;
pub mod distance;
pub mod objective;
pub mod triplet;

pub use center::center_loss;
pub use centroid::{CentroidTripletLoss, CentroidTripletOutput, CtlRound, ctl_rounds};
pub use cross_entropy::{LABEL_SMOOTHING, cross_entropy_label_smooth};
pub use distance::{DistanceFunc, cosine_dist, euclidean_dist};
pub use objective::{
    CtlDiagnostics, LossConfig, LossInputs, LossTerms, base_model_loss, ctl_model_loss,
};
pub use triplet::{TripletLoss, TripletOutput};

use anyhow::{Result, ensure};
use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

/// Rows of `features` at `indices` (host indices), differentiable.
pub fn select_rows<B: Backend>(features: Tensor<B, 2>, indices: &[usize]) -> Tensor<B, 2> {
    let device = features.device();
    let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [indices.len()]), &device);
    features.select(0, idx)
}

/// Indices of the `true` entries of `is_real`, in order.
pub fn real_indices(is_real: &[bool]) -> Vec<usize> {
    is_real
        .iter()
        .enumerate()
        .filter_map(|(i, &r)| r.then_some(i))
        .collect()
}

/// A `[rows, cols]` boolean tensor from a row-major host vector.
pub(crate) fn bool_matrix<B: Backend>(
    values: Vec<bool>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    Tensor::<B, 2, Bool>::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Checks that a `[n, d]` feature tensor and its per-row metadata agree.
pub(crate) fn check_rows(what: &str, rows: usize, name: &str, len: usize) -> Result<()> {
    ensure!(
        rows == len,
        "{what}: features have {rows} rows but `{name}` has {len} entries"
    );
    Ok(())
}
