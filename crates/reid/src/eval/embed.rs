//! Embedding image sets with a model (the reference's validation step and
//! `create_embeddings.py`): post-BNNeck, eval-mode embeddings with their identities and cameras,
//! and evaluation's ranking options from the configuration.

use anyhow::{Context, Result};
use burn::prelude::*;

use super::{FeatureMatrix, RetrievalOptions};
use crate::config::ReidConfig;
use crate::data::{EvalBatch, EvalLoader, LoaderOptions, Sample, TestTransform};
use crate::model::ReidModel;

/// Embeddings with the identities and cameras of their images.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// `[n, emb]` post-BN embeddings (not normalised).
    pub features: FeatureMatrix,
    /// Person / product id of each row.
    pub pids: Vec<i64>,
    /// Camera id of each row.
    pub camids: Vec<i64>,
}

/// Post-BNNeck embeddings of every batch, in order. Run it on an inner (non-autodiff) backend
/// model so that the BatchNorms use their running statistics (eval mode).
pub fn embed_batches<B: Backend>(
    model: &ReidModel<B>,
    batches: impl Iterator<Item = Result<EvalBatch>>,
    total: Option<usize>,
    progress: bool,
    device: &B::Device,
) -> Result<Embedded> {
    let bar = kiln::progress::bar(total, "embedding", progress);
    let started = std::time::Instant::now();
    let mut data = Vec::new();
    let mut pids = Vec::new();
    let mut camids = Vec::new();
    let mut dim = model.emb_size();
    for batch in batches {
        let batch = batch?;
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(batch.images, [batch.n, 3, batch.height, batch.width]),
            device,
        );
        let emb = model.embed(x);
        dim = emb.dims()[1];
        let values: Vec<f32> = emb
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read embeddings: {e:?}"))?;
        data.extend(values);
        pids.extend(batch.pids);
        camids.extend(batch.camids);
        let rate = pids.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{rate:.1} images/s"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Embedded {
        features: FeatureMatrix::new(data, dim)?,
        pids,
        camids,
    })
}

/// `SOLVER.DISTANCE_FUNC` (training triplet distance and evaluation distance).
pub fn distance_func(cfg: &ReidConfig) -> Result<crate::loss::DistanceFunc> {
    cfg.solver
        .distance_func
        .parse()
        .context("SOLVER.DISTANCE_FUNC")
}

/// Evaluation's ranking options: `TEST.FEAT_NORM`, `SOLVER.DISTANCE_FUNC` and the
/// post-processing keys `TEST.RERANK*` / `TEST.AQE*`.
pub fn retrieval_options(cfg: &ReidConfig) -> Result<RetrievalOptions> {
    Ok(RetrievalOptions {
        feat_norm: cfg.test.feat_norm,
        distance: distance_func(cfg)?,
        rerank: rerank_params(cfg),
        aqe: aqe_params(cfg),
        ..RetrievalOptions::default()
    })
}

/// `TEST.RERANK_K1`, `TEST.RERANK_K2`, `TEST.RERANK_LAMBDA` when `TEST.RERANK` is on.
pub fn rerank_params(cfg: &ReidConfig) -> Option<super::RerankParams> {
    cfg.test.rerank.then_some(super::RerankParams {
        k1: cfg.test.rerank_k1,
        k2: cfg.test.rerank_k2,
        lambda: cfg.test.rerank_lambda as f32,
    })
}

/// `TEST.AQE_K`, `TEST.AQE_ALPHA` when `TEST.AQE` is on.
pub fn aqe_params(cfg: &ReidConfig) -> Option<super::AqeParams> {
    cfg.test.aqe.then_some(super::AqeParams {
        k: cfg.test.aqe_k,
        alpha: cfg.test.aqe_alpha as f32,
    })
}

/// Embeddings of `samples` (in order) with the test transform and `TEST.IMS_PER_BATCH`, on the
/// backend of `model`. Run it on an inner (non-autodiff) backend for eval-mode embeddings.
pub fn embed_samples<B: Backend>(
    model: &ReidModel<B>,
    samples: impl Into<std::sync::Arc<[Sample]>>,
    cfg: &ReidConfig,
    progress: bool,
    device: &B::Device,
) -> Result<Embedded> {
    let transform = TestTransform::from_config(&cfg.input)?;
    let loader = EvalLoader::new(
        samples.into(),
        transform,
        cfg.test.ims_per_batch,
        &LoaderOptions::from_config(cfg),
    )?;
    let total = loader.num_batches();
    embed_batches(model, loader, Some(total), progress, device)
}
