//! Center loss (the reference's [`losses/center_loss.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/losses/center_loss.py)).
//!
//! `L = (1/B) · Σ_i ‖x_i − c_{y_i}‖²`: the squared Euclidean distance, no ½ factor. It is computed
//! the reference's way, which this module reproduces on purpose:
//!
//! 1. the full `B × C` matrix `‖x_i‖² + ‖c_j‖² − 2·x_i·c_j`;
//! 2. multiplied by the one-hot label mask (off-label entries become exactly 0);
//! 3. **every** entry clamped to `[1e-12, 1e12]`, so each of the `B·(C−1)` masked zeros adds
//!    `1e-12` (the loss is offset by `(C−1)·1e-12`, negligible but kept for parity), and an
//!    on-label entry that rounds to ≤ 0 becomes `1e-12` with zero gradient;
//! 4. summed and divided by `B`.
//!
//! The centers are a parameter of the model (`center_loss.centers`, `[C, d]`) and are passed in
//! as a tensor, so they receive gradients when they are tracked.

use anyhow::{Result, bail, ensure};
use burn::tensor::{Tensor, backend::Backend};

use super::{bool_matrix, check_rows};

/// Clamp bounds of the reference.
const CLAMP_MIN: f32 = 1e-12;
const CLAMP_MAX: f32 = 1e12;

/// Center loss of `features` `[B, d]` with class `labels` against `centers` `[C, d]`.
///
/// Errors if the batch is empty, the dimensions disagree or a label is `≥ C`.
pub fn center_loss<B: Backend>(
    features: Tensor<B, 2>,
    labels: &[usize],
    centers: Tensor<B, 2>,
) -> Result<Tensor<B, 1>> {
    let [batch, dim] = features.dims();
    let [classes, center_dim] = centers.dims();
    check_rows("center loss", batch, "labels", labels.len())?;
    ensure!(batch > 0, "center loss: empty batch");
    ensure!(
        dim == center_dim,
        "center loss: features have dimension {dim} but centers have {center_dim}"
    );
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
        bail!("center loss: label {label} at row {i} is out of range for {classes} centers");
    }

    let device = features.device();
    let xx = features.clone().square().sum_dim(1);
    let cc = centers.clone().square().sum_dim(1).transpose();
    let distmat = (xx + cc) - features.matmul(centers.transpose()) * 2.0;
    let one_hot: Vec<bool> = labels
        .iter()
        .flat_map(|&l| (0..classes).map(move |c| c == l))
        .collect();
    let off_label = bool_matrix::<B>(one_hot, batch, classes, &device).bool_not();
    let masked = distmat.mask_fill(off_label, 0.0);
    Ok(masked.clamp(CLAMP_MIN, CLAMP_MAX).sum() / batch as f32)
}
