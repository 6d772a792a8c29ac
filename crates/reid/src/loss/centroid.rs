//! Centroid triplet loss, exactly as
//! [`train_ctl_model.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/train_ctl_model.py#L38) computes it.
//!
//! Input: a P×K batch in P contiguous blocks of K (`row = c·K + s`), pre-BN features
//! `f[P·K, d]`, labels (constant within a block, distinct across blocks) and `is_real` (mock
//! padding samples are `false`). Then, for every round `i = 0..K`:
//!
//! * class `c` takes part iff its `i`-th instance is real; its **query** is that instance and its
//!   **centroid** is the mean of its *other* real instances (`s ≠ i`), divided by the number of
//!   real contributors. So the query never sits in its own centroid, and every class's centroid
//!   in round `i` also leaves out that class's `i`-th instance;
//! * the round is skipped when at most one class takes part;
//! * otherwise `X = [queries; centroids]` (same class order) with labels `[y; y]` goes through
//!   the batch-hard [`TripletLoss`] (no anchor mask, mean over the `2P'` anchors): a query's
//!   hardest positive is its centroid, its hardest negative the nearest query *or* centroid of
//!   another class; centroids are anchors too.
//!
//! `L_ctl = mean_i L_i` over the rounds that were not skipped. The centroids are not detached,
//! so the gradient reaches every contributing feature.
//!
//! The reference builds this with masks (`create_masks_train`, `t_re`) and drops centroids whose
//! entries sum to `≤ 1e-7` in absolute value. The round membership here is derived directly:
//! a class whose `i`-th instance is real but which has no other real instance gets neither a
//! query nor a centroid (in the reference its zero centroid would be dropped while its query was
//! kept, misaligning the labels; the P×K sampler never produces such a class, since every
//! identity has at least two real images). A genuine centroid that happens to be the zero vector
//! is kept here, where the reference would drop it.
//!
//! Diagnostics (logged by the reference): the mean hardest-positive and hardest-negative
//! distance and the mean L2 norm of the centroids (`l2_mean_centroid`), each the mean over
//! non-skipped rounds of the per-round mean. When every round is skipped (only possible with a
//! single class per batch) the loss is `0` (no gradient) and the diagnostics are `NaN`.

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::distance::DistanceFunc;
use super::select_rows;
use super::triplet::TripletLoss;

/// The centroid triplet loss (`SOLVER.MARGIN`, `SOLVER.DISTANCE_FUNC`, `DATALOADER.NUM_INSTANCE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CentroidTripletLoss {
    /// Margin of the batch-hard triplet over queries and centroids (0.5).
    pub margin: f32,
    /// Distance of the batch-hard triplet (non-squared Euclidean by default).
    pub distance: DistanceFunc,
    /// K, the instances per identity block (4 in the reference).
    pub num_instances: usize,
}

impl Default for CentroidTripletLoss {
    fn default() -> Self {
        CentroidTripletLoss {
            margin: 0.5,
            distance: DistanceFunc::Euclidean,
            num_instances: 4,
        }
    }
}

/// Membership of one CTL round (host-side plan, see [`ctl_rounds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlRound {
    /// The round index `i` (which instance of each block is the query).
    pub index: usize,
    /// Blocks (classes, in batch order) taking part in this round.
    pub classes: Vec<usize>,
    /// Row of each participating class's query (`c·K + i`), aligned with `classes`.
    pub queries: Vec<usize>,
    /// Rows averaged into each participating class's centroid, aligned with `classes`.
    pub centroid_members: Vec<Vec<usize>>,
    /// `true` when at most one class takes part, so the round adds nothing.
    pub skipped: bool,
}

/// The K rounds of the CTL for a batch of `labels.len() / k` blocks of `k` rows.
///
/// Errors unless the batch is a whole number of blocks, every block carries one label and
/// blocks carry distinct labels (the layout the P×K sampler and collate produce).
pub fn ctl_rounds(labels: &[usize], is_real: &[bool], k: usize) -> Result<Vec<CtlRound>> {
    ensure!(
        k > 0,
        "centroid triplet loss: num_instances must be positive"
    );
    ensure!(
        labels.len() == is_real.len(),
        "centroid triplet loss: {} labels but {} is_real flags",
        labels.len(),
        is_real.len()
    );
    ensure!(
        labels.len().is_multiple_of(k),
        "centroid triplet loss: batch of {} rows is not a whole number of blocks of K = {k}",
        labels.len()
    );
    let blocks = labels.len() / k;
    let mut seen = std::collections::HashMap::with_capacity(blocks);
    for c in 0..blocks {
        let block = &labels[c * k..(c + 1) * k];
        if let Some(s) = block.iter().position(|&l| l != block[0]) {
            bail!(
                "centroid triplet loss: block {c} (rows {}..{}) mixes labels {} and {} (row {}); \
                 expected P contiguous blocks of K rows of one identity",
                c * k,
                (c + 1) * k,
                block[0],
                block[s],
                c * k + s
            );
        }
        if let Some(prev) = seen.insert(block[0], c) {
            bail!(
                "centroid triplet loss: label {} occupies blocks {prev} and {c}; \
                 identities must be distinct within a batch",
                block[0]
            );
        }
    }

    let rounds = (0..k)
        .map(|i| {
            let mut classes = Vec::new();
            let mut queries = Vec::new();
            let mut centroid_members = Vec::new();
            for c in 0..blocks {
                let query = c * k + i;
                if !is_real[query] {
                    continue;
                }
                let members: Vec<usize> = (0..k)
                    .filter(|&s| s != i)
                    .map(|s| c * k + s)
                    .filter(|&row| is_real[row])
                    .collect();
                if members.is_empty() {
                    continue;
                }
                classes.push(c);
                queries.push(query);
                centroid_members.push(members);
            }
            CtlRound {
                index: i,
                skipped: classes.len() <= 1,
                classes,
                queries,
                centroid_members,
            }
        })
        .collect();
    Ok(rounds)
}

/// Result of [`CentroidTripletLoss::forward`]. The diagnostics are detached scalars `[1]`.
#[derive(Debug, Clone)]
pub struct CentroidTripletOutput<B: Backend> {
    /// `mean_i L_i` over the non-skipped rounds (`[1]`; `0` when all are skipped).
    pub loss: Tensor<B, 1>,
    /// Mean hardest-positive distance (mean over rounds of the per-round mean).
    pub dist_ap_mean: Tensor<B, 1>,
    /// Mean hardest-negative distance (mean over rounds of the per-round mean).
    pub dist_an_mean: Tensor<B, 1>,
    /// Mean L2 norm of the centroids (mean over rounds of the per-round mean).
    pub l2_mean_centroid: Tensor<B, 1>,
    /// The round plan, skipped rounds included.
    pub rounds: Vec<CtlRound>,
}

impl CentroidTripletLoss {
    /// The CTL of `features` `[P·K, d]` (P contiguous blocks of K rows).
    pub fn forward<B: Backend>(
        &self,
        features: Tensor<B, 2>,
        labels: &[usize],
        is_real: &[bool],
    ) -> Result<CentroidTripletOutput<B>> {
        let [n, _] = features.dims();
        ensure!(
            n == labels.len(),
            "centroid triplet loss: features have {n} rows but `labels` has {} entries",
            labels.len()
        );
        let rounds = ctl_rounds(labels, is_real, self.num_instances)?;
        let device = features.device();
        let triplet = TripletLoss::new(self.margin, self.distance);

        let mut losses = Vec::new();
        let mut ap_means = Vec::new();
        let mut an_means = Vec::new();
        let mut norm_means = Vec::new();
        for round in rounds.iter().filter(|r| !r.skipped) {
            let p = round.classes.len();
            // Centroids as a weighted sum W·F: row a averages the members of class a.
            let mut weights = vec![0f32; p * n];
            for (a, members) in round.centroid_members.iter().enumerate() {
                let w = 1.0 / members.len() as f32;
                for &row in members {
                    weights[a * n + row] = w;
                }
            }
            let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [p, n]), &device);
            let centroids = weights.matmul(features.clone());
            let queries = select_rows(features.clone(), &round.queries);
            let class_labels: Vec<usize> = round
                .classes
                .iter()
                .map(|&c| labels[c * self.num_instances])
                .collect();
            let mut x_labels = class_labels.clone();
            x_labels.extend_from_slice(&class_labels);

            norm_means.push(centroids.clone().detach().square().sum_dim(1).sqrt().mean());
            let x = Tensor::cat(vec![queries, centroids], 0);
            let out = triplet
                .forward(x, &x_labels, None)
                .with_context(|| format!("centroid triplet loss, round {}", round.index))?;
            ap_means.push(out.dist_ap.detach().mean());
            an_means.push(out.dist_an.detach().mean());
            losses.push(out.loss);
        }

        let mean_of = |values: Vec<Tensor<B, 1>>| -> Tensor<B, 1> {
            if values.is_empty() {
                Tensor::<B, 1>::from_data(TensorData::new(vec![f32::NAN], [1]), &device)
            } else {
                Tensor::cat(values, 0).mean()
            }
        };
        let loss = if losses.is_empty() {
            Tensor::<B, 1>::zeros([1], &device)
        } else {
            Tensor::cat(losses, 0).mean()
        };
        Ok(CentroidTripletOutput {
            loss,
            dist_ap_mean: mean_of(ap_means),
            dist_an_mean: mean_of(an_means),
            l2_mean_centroid: mean_of(norm_means),
            rounds,
        })
    }
}
