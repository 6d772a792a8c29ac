//! The per-batch training objectives of the two reference scripts, the `training_step` of
//! [`train_base_model.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/train_base_model.py#L38) and of
//! [`train_ctl_model.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/train_ctl_model.py#L38).
//!
//! Both take the **pre-BN** features `f[N, d]` of a P×K batch, its class labels and `is_real`
//! mask, the center-loss centers, and a `classify` closure that maps a feature subset to ID
//! logits (BNNeck + bias-free classifier, run by the model). The closure is called once, on
//!
//! * all N rows for the base model, or
//! * the real rows only (in batch order) for the CTL model, so the BNNeck's batch statistics
//!   are those of the real samples, as in the reference.
//!
//! | term | base model (`train_base_model.py`) | CTL model (`train_ctl_model.py`) |
//! |---|---|---|
//! | `triplet` | `w_tri ·` batch-hard over all N, anchors masked to real | same |
//! | `center` | `w_cen ·` center loss over all N | `w_cen ·` center loss over real rows |
//! | `id` | `w_id ·` CE-LS over all N | `w_id ·` CE-LS over real rows |
//! | `centroid_triplet` | — | `w_ctl ·` [`CentroidTripletLoss`] |
//! | `total` | `id + triplet + center` | `centroid_triplet + center + id + triplet` |
//!
//! The totals are summed in the reference's order. `center` already carries `w_cen` (5e-4): the
//! training step must rescale the centers' gradient by `1 / w_cen` before their SGD step (as the
//! reference's manual optimisation step does).

use anyhow::{Context, Result, ensure};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::center::center_loss;
use super::centroid::{CentroidTripletLoss, CtlRound};
use super::cross_entropy::{LABEL_SMOOTHING, cross_entropy_label_smooth};
use super::distance::DistanceFunc;
use super::triplet::TripletLoss;
use super::{check_rows, real_indices, select_rows};

/// Loss hyper-parameters (`SOLVER.*`, defaults of `config/defaults.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// `SOLVER.MARGIN`, for the query triplet and the CTL.
    pub margin: f32,
    /// `SOLVER.DISTANCE_FUNC`.
    pub distance: DistanceFunc,
    /// ε of the label-smoothed CE (fixed at 0.1 in the reference).
    pub label_smoothing: f32,
    /// `SOLVER.CENTER_LOSS_WEIGHT`.
    pub center_loss_weight: f32,
    /// `SOLVER.QUERY_XENT_WEIGHT`.
    pub query_xent_weight: f32,
    /// `SOLVER.QUERY_CONTRASTIVE_WEIGHT`.
    pub query_contrastive_weight: f32,
    /// `SOLVER.CENTROID_CONTRASTIVE_WEIGHT`.
    pub centroid_contrastive_weight: f32,
    /// K (`DATALOADER.NUM_INSTANCE`), the block size the CTL reshapes by.
    pub num_instances: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            margin: 0.5,
            distance: DistanceFunc::Euclidean,
            label_smoothing: LABEL_SMOOTHING,
            center_loss_weight: 5e-4,
            query_xent_weight: 1.0,
            query_contrastive_weight: 1.0,
            centroid_contrastive_weight: 1.0,
            num_instances: 4,
        }
    }
}

/// One batch as the losses see it.
#[derive(Debug, Clone)]
pub struct LossInputs<'a, B: Backend> {
    /// Pre-BN features `[N, d]`.
    pub features: Tensor<B, 2>,
    /// Class index of every row.
    pub labels: &'a [usize],
    /// `false` for mock padding rows.
    pub is_real: &'a [bool],
    /// Center-loss centers `[C, d]` (the model's `center_loss.centers` parameter).
    pub centers: Tensor<B, 2>,
}

/// The terms of a training objective. Loss terms are scalars `[1]` and already weighted.
#[derive(Debug, Clone)]
pub struct LossTerms<B: Backend> {
    /// The objective to back-propagate.
    pub total: Tensor<B, 1>,
    /// `query_xent`: weighted label-smoothed CE.
    pub id: Tensor<B, 1>,
    /// `query_triplet`: weighted batch-hard triplet.
    pub triplet: Tensor<B, 1>,
    /// `query_center`: center loss × `center_loss_weight`.
    pub center: Tensor<B, 1>,
    /// `centroid_triplet`: weighted CTL (`None` for the base model; the reference logs NaN).
    pub centroid_triplet: Option<Tensor<B, 1>>,
    /// Mean hardest-positive distance of the query triplet (detached).
    pub dist_ap: Tensor<B, 1>,
    /// Mean hardest-negative distance of the query triplet (detached).
    pub dist_an: Tensor<B, 1>,
    /// CTL diagnostics (CTL model only).
    pub ctl: Option<CtlDiagnostics<B>>,
}

/// Diagnostics of the centroid triplet loss (detached scalars).
#[derive(Debug, Clone)]
pub struct CtlDiagnostics<B: Backend> {
    /// Mean CTL hardest-positive distance.
    pub dist_ap: Tensor<B, 1>,
    /// Mean CTL hardest-negative distance.
    pub dist_an: Tensor<B, 1>,
    /// `l2_mean_centroid`.
    pub l2_mean_centroid: Tensor<B, 1>,
    /// The round plan (skipped rounds included).
    pub rounds: Vec<CtlRound>,
}

fn check_inputs<B: Backend>(what: &str, inputs: &LossInputs<'_, B>) -> Result<()> {
    let [n, _] = inputs.features.dims();
    check_rows(what, n, "labels", inputs.labels.len())?;
    check_rows(what, n, "is_real", inputs.is_real.len())?;
    ensure!(n > 0, "{what}: empty batch");
    Ok(())
}

fn query_triplet<B: Backend>(
    cfg: &LossConfig,
    inputs: &LossInputs<'_, B>,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>)> {
    let out = TripletLoss::new(cfg.margin, cfg.distance)
        .forward(inputs.features.clone(), inputs.labels, Some(inputs.is_real))
        .context("query triplet loss")?;
    Ok((
        out.loss * cfg.query_contrastive_weight,
        out.dist_ap.detach().mean(),
        out.dist_an.detach().mean(),
    ))
}

/// Base-model objective (`train_base_model.py`): `id + triplet + center`, all over the whole batch.
pub fn base_model_loss<B, F>(
    cfg: &LossConfig,
    inputs: LossInputs<'_, B>,
    classify: F,
) -> Result<LossTerms<B>>
where
    B: Backend,
    F: FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
{
    check_inputs("base-model loss", &inputs)?;
    let (triplet, dist_ap, dist_an) = query_triplet(cfg, &inputs)?;
    let center = center_loss(
        inputs.features.clone(),
        inputs.labels,
        inputs.centers.clone(),
    )
    .context("base-model center loss")?
        * cfg.center_loss_weight;
    let logits = classify(inputs.features.clone());
    let id = cross_entropy_label_smooth(logits, inputs.labels, cfg.label_smoothing)
        .context("base-model ID loss")?
        * cfg.query_xent_weight;
    let total = id.clone() + triplet.clone() + center.clone();
    Ok(LossTerms {
        total,
        id,
        triplet,
        center,
        centroid_triplet: None,
        dist_ap,
        dist_an,
        ctl: None,
    })
}

/// CTL-model objective (`train_ctl_model.py`): `centroid_triplet + center + id + triplet`, with
/// the center and ID terms over the real rows only and `classify` called on those rows.
pub fn ctl_model_loss<B, F>(
    cfg: &LossConfig,
    inputs: LossInputs<'_, B>,
    classify: F,
) -> Result<LossTerms<B>>
where
    B: Backend,
    F: FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
{
    check_inputs("CTL-model loss", &inputs)?;
    let (triplet, dist_ap, dist_an) = query_triplet(cfg, &inputs)?;

    let real = real_indices(inputs.is_real);
    ensure!(
        !real.is_empty(),
        "CTL-model loss: the batch of {} rows has no real sample",
        inputs.labels.len()
    );
    let real_features = select_rows(inputs.features.clone(), &real);
    let real_labels: Vec<usize> = real.iter().map(|&i| inputs.labels[i]).collect();
    let center = center_loss(real_features.clone(), &real_labels, inputs.centers.clone())
        .context("CTL-model center loss (real samples)")?
        * cfg.center_loss_weight;
    let logits = classify(real_features);
    let id = cross_entropy_label_smooth(logits, &real_labels, cfg.label_smoothing)
        .context("CTL-model ID loss (real samples)")?
        * cfg.query_xent_weight;

    let ctl = CentroidTripletLoss {
        margin: cfg.margin,
        distance: cfg.distance,
        num_instances: cfg.num_instances,
    }
    .forward(inputs.features.clone(), inputs.labels, inputs.is_real)?;
    let centroid_triplet = ctl.loss * cfg.centroid_contrastive_weight;

    let total = centroid_triplet.clone() + center.clone() + id.clone() + triplet.clone();
    Ok(LossTerms {
        total,
        id,
        triplet,
        center,
        centroid_triplet: Some(centroid_triplet),
        dist_ap,
        dist_an,
        ctl: Some(CtlDiagnostics {
            dist_ap: ctl.dist_ap_mean,
            dist_an: ctl.dist_an_mean,
            l2_mean_centroid: ctl.l2_mean_centroid,
            rounds: ctl.rounds,
        }),
    })
}
