//! Pairwise distances used by the training losses (`euclidean_dist` / `cosine_dist` of the
//! reference's [`losses/triplet_loss.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/losses/triplet_loss.py#L27)).
//!
//! * [`euclidean_dist`]: `sqrt(clamp(‖x‖² + ‖y‖² − 2·x·yᵀ, min = 1e-12))`, the **non-squared**
//!   Euclidean distance, evaluated in the same order as the reference (`xx + yy`, then the
//!   `−2·x·yᵀ` term), so the self-distance is about `1e-6` rather than exactly zero.
//! * [`cosine_dist`]: `clamp(|1 − cos(x, y)|, min = 1e-12)` with every norm floored at `1e-12`.
//!
//! Both are differentiable; the floors keep the gradient finite (zero) where they bite.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Floor of the squared distance (and of the cosine distance) in the reference.
pub const DIST_EPS: f32 = 1e-12;

/// `SOLVER.DISTANCE_FUNC`: the distance of the training triplet losses (and of evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistanceFunc {
    /// Non-squared Euclidean distance ([`euclidean_dist`]).
    #[default]
    Euclidean,
    /// `|1 − cos|` ([`cosine_dist`]).
    Cosine,
}

impl DistanceFunc {
    /// The pairwise `[m, n]` distance matrix between the rows of `x` `[m, d]` and `y` `[n, d]`.
    pub fn pairwise<B: Backend>(self, x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            DistanceFunc::Euclidean => euclidean_dist(x, y),
            DistanceFunc::Cosine => cosine_dist(x, y),
        }
    }

    /// The config spelling (`"euclidean"` / `"cosine"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DistanceFunc::Euclidean => "euclidean",
            DistanceFunc::Cosine => "cosine",
        }
    }
}

impl fmt::Display for DistanceFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DistanceFunc {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "euclidean" => Ok(DistanceFunc::Euclidean),
            "cosine" => Ok(DistanceFunc::Cosine),
            other => {
                bail!("unknown distance function {other:?} (expected \"euclidean\" or \"cosine\")")
            }
        }
    }
}

/// Row-wise squared norms `[n, 1]`.
fn squared_norms<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    x.square().sum_dim(1)
}

/// `sqrt(clamp(‖x_i‖² + ‖y_j‖² − 2·x_i·y_j, min = 1e-12))` for all pairs: `[m, n]`.
pub fn euclidean_dist<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
    let xx = squared_norms(x.clone());
    let yy = squared_norms(y.clone()).transpose();
    let xy = x.matmul(y.transpose());
    ((xx + yy) - xy * 2.0).clamp_min(DIST_EPS).sqrt()
}

/// Rows scaled to unit L2 norm, the norm floored at `1e-12` (`F.normalize`).
///
/// The floor is applied to the squared norm (`1e-24`) before the square root, which gives the
/// same value as flooring the norm but keeps the gradient finite for all-zero rows.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = squared_norms(x.clone())
        .clamp_min(DIST_EPS * DIST_EPS)
        .sqrt();
    x / norm
}

/// `clamp(|1 − cos(x_i, y_j)|, min = 1e-12)` for all pairs: `[m, n]`.
pub fn cosine_dist<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
    let cos = l2_normalize(x).matmul(l2_normalize(y).transpose());
    (cos.neg() + 1.0).abs().clamp_min(DIST_EPS)
}
