//! Cross-entropy with label smoothing (`CrossEntropyLabelSmooth` of the reference's
//! [`losses/triplet_loss.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/losses/triplet_loss.py#L176)).
//!
//! Targets `q = (1 − ε)·onehot(y) + ε/C`, loss `= mean_b Σ_c −q_c · log_softmax(z_b)_c`, with
//! `C` the number of logit columns (all train identities) and `ε = 0.1` in the reference.
//!
//! Burn's `CrossEntropyLoss` with `smoothing = Some(ε)` (no weights, no padding) computes exactly
//! this formula (`log_softmax`, targets `onehot·(1 − ε) + ε/C`, `sum_dim(1).mean().neg()`), so it
//! is used as is; `tests/loss.rs` checks it against hand-computed numbers. This wrapper adds the
//! input validation Burn does by panicking.

use anyhow::{Result, bail, ensure};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::check_rows;

/// The reference's smoothing constant (the constructor default, not configurable there).
pub const LABEL_SMOOTHING: f32 = 0.1;

/// Label-smoothed cross-entropy of `logits` `[B, C]` against class `labels`.
///
/// Errors on an empty batch, a length mismatch, a label `≥ C` or `epsilon ∉ [0, 1]`.
pub fn cross_entropy_label_smooth<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    epsilon: f32,
) -> Result<Tensor<B, 1>> {
    let [batch, classes] = logits.dims();
    check_rows("cross-entropy", batch, "labels", labels.len())?;
    ensure!(batch > 0, "cross-entropy: empty batch");
    ensure!(
        (0.0..=1.0).contains(&epsilon),
        "cross-entropy: label smoothing {epsilon} is outside [0, 1]"
    );
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
        bail!("cross-entropy: label {label} at row {i} is out of range for {classes} classes");
    }
    let device = logits.device();
    let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [batch]), &device);
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing(Some(epsilon))
        .init::<B>(&device);
    Ok(loss.forward(logits, targets))
}
