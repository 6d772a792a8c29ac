//! Batch-hard triplet loss (`TripletLoss` / `hard_example_mining` of the reference's
//! [`losses/triplet_loss.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/losses/triplet_loss.py#L68)).
//!
//! For every anchor `i` of `F[N, d]` with labels `y`:
//!
//! * `d_ap(i) = max_{j: y_j = y_i} D[i, j]`, the hardest positive, **self included** (the
//!   Euclidean self-distance is `sqrt(1e-12)`-ish, so it only wins when all positives are closer);
//! * `d_an(i) = min_{j: y_j ≠ y_i} D[i, j]`, the hardest negative;
//! * an optional anchor mask (`isReal`) keeps only some anchors **after** mining: masked samples
//!   still act as positives and negatives of the others;
//! * `loss = mean_i max(0, d_ap(i) − d_an(i) + margin)` (`MarginRankingLoss(d_an, d_ap, y = 1)`).
//!
//! The reference reshapes the masked distance matrix to `N × count`, which requires every label to
//! occur equally often. Mining here uses masks instead, so any label multiset works; for the P×K
//! layout the numbers are the same. Gradients flow through both mined distances (to the arg-max /
//! arg-min entry, as in PyTorch).

use anyhow::{Context, Result, ensure};
use burn::tensor::{Tensor, backend::Backend};

use super::distance::DistanceFunc;
use super::{bool_matrix, check_rows, real_indices, select_rows};

/// The batch-hard triplet loss with a hard margin (`SOLVER.MARGIN`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletLoss {
    /// Margin `m` of `max(0, d_ap − d_an + m)`; 0.5 in every reference config.
    pub margin: f32,
    /// Pairwise distance used for mining.
    pub distance: DistanceFunc,
}

impl Default for TripletLoss {
    fn default() -> Self {
        TripletLoss {
            margin: 0.5,
            distance: DistanceFunc::Euclidean,
        }
    }
}

/// Result of [`TripletLoss::forward`].
#[derive(Debug, Clone)]
pub struct TripletOutput<B: Backend> {
    /// Scalar loss `[1]`.
    pub loss: Tensor<B, 1>,
    /// Hardest-positive distance of each kept anchor, `[n_anchors]`.
    pub dist_ap: Tensor<B, 1>,
    /// Hardest-negative distance of each kept anchor, `[n_anchors]`.
    pub dist_an: Tensor<B, 1>,
}

impl TripletLoss {
    /// A loss with the given margin and distance.
    pub fn new(margin: f32, distance: DistanceFunc) -> Self {
        TripletLoss { margin, distance }
    }

    /// Batch-hard triplet loss of `features` `[N, d]` with `labels` (length N).
    ///
    /// `anchor_mask` (length N), when given, keeps only the anchors marked `true` after mining.
    /// Errors if the lengths disagree, if every sample has the same label (no negative exists)
    /// or if the mask keeps no anchor.
    pub fn forward<B: Backend>(
        &self,
        features: Tensor<B, 2>,
        labels: &[usize],
        anchor_mask: Option<&[bool]>,
    ) -> Result<TripletOutput<B>> {
        let [n, _] = features.dims();
        check_rows("triplet loss", n, "labels", labels.len())?;
        ensure!(n > 0, "triplet loss: empty batch");
        ensure!(
            labels.iter().any(|&l| l != labels[0]),
            "triplet loss: all {n} samples carry label {}, so no anchor has a negative",
            labels[0]
        );
        if let Some(mask) = anchor_mask {
            check_rows("triplet loss", n, "anchor_mask", mask.len())?;
        }

        let device = features.device();
        let dist = self.distance.pairwise(features.clone(), features);
        let same: Vec<bool> = labels
            .iter()
            .flat_map(|&a| labels.iter().map(move |&b| a == b))
            .collect();
        let same = bool_matrix::<B>(same, n, n, &device);

        let dist_ap = dist
            .clone()
            .mask_fill(same.clone().bool_not(), f32::NEG_INFINITY)
            .max_dim(1)
            .reshape([n]);
        let dist_an = dist.mask_fill(same, f32::INFINITY).min_dim(1).reshape([n]);

        let (dist_ap, dist_an) = match anchor_mask {
            Some(mask) if mask.iter().all(|&m| m) => (dist_ap, dist_an),
            Some(mask) => {
                let kept = real_indices(mask);
                ensure!(
                    !kept.is_empty(),
                    "triplet loss: the anchor mask keeps none of the {n} samples"
                );
                let pick =
                    |t: Tensor<B, 1>| select_rows(t.reshape([n, 1]), &kept).reshape([kept.len()]);
                (pick(dist_ap), pick(dist_an))
            }
            None => (dist_ap, dist_an),
        };
        let loss = margin_ranking(dist_ap.clone(), dist_an.clone(), self.margin)
            .context("triplet loss")?;
        Ok(TripletOutput {
            loss,
            dist_ap,
            dist_an,
        })
    }
}

/// `mean(max(0, d_ap − d_an + margin))`, PyTorch's `MarginRankingLoss(d_an, d_ap, 1)`.
fn margin_ranking<B: Backend>(
    dist_ap: Tensor<B, 1>,
    dist_an: Tensor<B, 1>,
    margin: f32,
) -> Result<Tensor<B, 1>> {
    ensure!(
        dist_ap.dims() == dist_an.dims(),
        "margin ranking: {:?} positives vs {:?} negatives",
        dist_ap.dims(),
        dist_an.dims()
    );
    Ok((dist_ap - dist_an + margin).clamp_min(0.0).mean())
}
