//! Inference plumbing shared by `test`, `create-embeddings`, `get-similar`, `visrank` and the
//! validation of training: loading a model for evaluation (a `reid train` checkpoint or the
//! reference's Lightning `.ckpt`). Embedding lives in [`crate::eval::embed`] and is re-exported
//! here for the tools.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ReidConfig;
use crate::model::{ReidModel, ReidModelConfig, load_reference_checkpoint};

pub use crate::eval::embed::{
    Embedded, aqe_params, distance_func, embed_batches, embed_samples, rerank_params,
    retrieval_options,
};

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
        // This project's checkpoints follow kiln's model-file convention: the task state is the
        // card the model is rebuilt from, the `model` section its weights.
        let (model, task, source) =
            kiln::artifact::load::<B, ReidModel<B>, CheckpointTask>(path, device, |task| {
                if let Some(want) = expected {
                    check_same(want, &task.model, path)?;
                }
                task.model.init::<B>(device)
            })?;
        Ok(LoadedModel {
            model: model.with_frozen_bnneck_bias(),
            config: task.model,
            source: source.to_string(),
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
