//! Inference plumbing shared by `test`, `create-embeddings`, `get-similar`, `visrank` and the
//! validation of training: loading a model for evaluation and turning image batches into
//! post-BNNeck eval-mode embeddings (as the reference's validation step and
//! `create_embeddings.py` compute them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ReidConfig;
use crate::data::{EvalBatch, EvalLoader, LoaderOptions, Sample, TestTransform};
use crate::eval::{FeatureMatrix, RetrievalOptions};
use crate::model::{ReidModel, ReidModelConfig, load_reference_checkpoint};

/// The task state this crate stores in its kiln checkpoints (`meta.task`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointTask {
    /// The model's configuration, enough to rebuild it.
    pub model: ReidModelConfig,
    /// Input size `[H, W]` the model was trained at (`INPUT.SIZE_TRAIN`).
    pub size_train: [usize; 2],
    /// Which training step produced it (`ctl` or `base`).
    pub step: String,
}

/// A model ready for evaluation and what it is.
pub struct LoadedModel<B: Backend> {
    /// The network.
    pub model: ReidModel<B>,
    /// Its configuration.
    pub config: ReidModelConfig,
    /// Human-readable origin (file and kind).
    pub source: String,
}

/// True when `path` is one of this project's kiln checkpoints (not a PyTorch file).
pub fn is_kiln_checkpoint(path: &Path) -> Result<bool> {
    kiln::checkpoint::is_checkpoint(path)
}

/// Loads a model for evaluation from this project's checkpoint (`reid train` output) or from the
/// reference's Lightning `.ckpt` (its `state_dict`). `expected`, when given, must match the
/// checkpoint's architecture (a checkpoint of the wrong architecture is an error naming both).
pub fn load_model<B: Backend>(
    path: &Path,
    expected: Option<&ReidModelConfig>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    if is_kiln_checkpoint(path)? {
        let (meta, sections) = kiln::checkpoint::read_checkpoint(path)?;
        let task: CheckpointTask =
            serde_json::from_value(meta.task.clone()).with_context(|| {
                format!(
                    "{} is a kiln checkpoint but not of a reid model",
                    path.display()
                )
            })?;
        if let Some(want) = expected {
            check_same(want, &task.model, path)?;
        }
        let model = task.model.init::<B>(device)?;
        let bytes = sections
            .get("model")
            .cloned()
            .with_context(|| format!("{} has no model section", path.display()))?;
        let record =
            kiln::checkpoint::record_from_bytes::<B, _>(bytes, device).with_context(|| {
                format!(
                    "{} does not hold {} weights",
                    path.display(),
                    task.model.name
                )
            })?;
        let model = kiln::checkpoint::load_checked(model, record, &path.display().to_string())?
            .with_frozen_bnneck_bias();
        Ok(LoadedModel {
            model,
            config: task.model,
            source: format!(
                "{} (reid checkpoint after {} epochs)",
                path.display(),
                meta.epochs_completed
            ),
        })
    } else {
        let (model, info) = load_reference_checkpoint::<B>(path, device)?;
        let config = ReidModelConfig::new(
            info.arch.to_string(),
            info.last_stride,
            info.emb_size,
            info.num_classes,
        );
        if let Some(want) = expected {
            check_same(want, &config, path)?;
        }
        Ok(LoadedModel {
            model,
            config,
            source: format!(
                "{} (reference Lightning checkpoint, epoch {})",
                path.display(),
                info.epoch.map_or("?".to_string(), |e| e.to_string())
            ),
        })
    }
}

fn check_same(want: &ReidModelConfig, got: &ReidModelConfig, path: &Path) -> Result<()> {
    if want.name != got.name || want.emb_size != got.emb_size {
        bail!(
            "{} holds a {} model ({}-d embeddings), but the configuration asks for {} ({}-d): \
             set MODEL.NAME / MODEL.BACKBONE_EMB_SIZE to match the checkpoint",
            path.display(),
            got.name,
            got.emb_size,
            want.name,
            want.emb_size
        );
    }
    Ok(())
}

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

/// `MODEL.PRETRAIN_PATH`, checked to name an existing file.
pub fn checkpoint_path(cfg: &ReidConfig) -> Result<PathBuf> {
    let raw = cfg.model.pretrain_path.trim();
    if raw.is_empty() {
        bail!(
            "MODEL.PRETRAIN_PATH is not set: give the model to use (a `reid train` checkpoint or \
             the reference's Lightning .ckpt), e.g. `MODEL.PRETRAIN_PATH runs/x/best.ckpt`"
        );
    }
    let path = PathBuf::from(raw);
    if !path.is_file() {
        bail!(
            "MODEL.PRETRAIN_PATH {} does not exist (or is not a file)",
            path.display()
        );
    }
    Ok(path)
}

/// `SOLVER.DISTANCE_FUNC` (training triplet distance and evaluation distance).
pub fn distance_func(cfg: &ReidConfig) -> Result<crate::loss::DistanceFunc> {
    cfg.solver
        .distance_func
        .parse()
        .context("SOLVER.DISTANCE_FUNC")
}

/// Evaluation's ranking options: `TEST.FEAT_NORM` and `SOLVER.DISTANCE_FUNC`.
pub fn retrieval_options(cfg: &ReidConfig) -> Result<RetrievalOptions> {
    Ok(RetrievalOptions {
        feat_norm: cfg.test.feat_norm,
        distance: distance_func(cfg)?,
        ..RetrievalOptions::default()
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
