//! The library's way from images to a searchable gallery and back, without a dataset layout:
//! [`ImageEmbedder`] (a model and the configured test transform) embeds image files,
//! [`save_gallery`] writes what `create-embeddings` writes, and
//! [`SavedGallery`](super::SavedGallery) opens and searches it (`examples/reid_search.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use burn::prelude::Backend;

use super::gallery::{EMBEDDINGS_FILE, PATHS_FILE};
use crate::config::ReidConfig;
use crate::data::{Sample, list_images};
use crate::eval::FeatureMatrix;
use crate::infer::{embed_samples, load_model};
use crate::model::ReidModel;
use crate::tools::npy;

/// An eval-mode model that embeds image files with the test transform of a configuration
/// (`INPUT.SIZE_TEST`, `INPUT.PIXEL_MEAN` / `PIXEL_STD`, batches of `TEST.IMS_PER_BATCH`).
/// Use an inner (non-autodiff) backend, e.g. `kiln::backend::CpuBackend`.
pub struct ImageEmbedder<B: Backend> {
    model: ReidModel<B>,
    cfg: ReidConfig,
    device: B::Device,
}

impl<B: Backend> ImageEmbedder<B> {
    /// Wraps a model (e.g. [`crate::Trained::model`]).
    pub fn new(model: ReidModel<B>, cfg: &ReidConfig, device: &B::Device) -> Self {
        ImageEmbedder {
            model,
            cfg: cfg.clone(),
            device: device.clone(),
        }
    }

    /// Loads a checkpoint (`reid train` output or the reference's Lightning `.ckpt`).
    pub fn load(checkpoint: &Path, cfg: &ReidConfig, device: &B::Device) -> Result<Self> {
        let loaded = load_model::<B>(checkpoint, None, device)?;
        Ok(Self::new(loaded.model, cfg, device))
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.emb_size()
    }

    /// The post-BNNeck embeddings of `paths`, in order (not normalised).
    pub fn embed_paths(&self, paths: &[PathBuf]) -> Result<FeatureMatrix> {
        ensure!(!paths.is_empty(), "no image to embed");
        let samples: Arc<[Sample]> = paths.iter().cloned().map(Sample::unlabelled).collect();
        Ok(embed_samples(&self.model, samples, &self.cfg, false, &self.device)?.features)
    }

    /// Embeds the images of `path` (one image file, or the images directly in a directory,
    /// sorted by name); returns their paths and embeddings.
    pub fn embed_images(&self, path: &Path) -> Result<(Vec<PathBuf>, FeatureMatrix)> {
        let paths: Vec<PathBuf> = list_images(path, false)?
            .into_iter()
            .map(|i| i.path)
            .collect();
        let features = self.embed_paths(&paths)?;
        Ok((paths, features))
    }
}

/// Writes `embeddings.npy` and `paths.npy` into `dir` (atomically), the gallery layout of
/// `create-embeddings`.
pub fn save_gallery(dir: &Path, features: &FeatureMatrix, names: &[String]) -> Result<()> {
    ensure!(
        names.len() == features.rows(),
        "{} names for {} embeddings",
        names.len(),
        features.rows()
    );
    let emb = npy::f32_matrix_bytes(features.as_slice(), features.rows(), features.dim())?;
    kiln::io::write_atomic(dir.join(EMBEDDINGS_FILE), &emb)
        .with_context(|| format!("cannot write {}", dir.join(EMBEDDINGS_FILE).display()))?;
    kiln::io::write_atomic(dir.join(PATHS_FILE), &npy::string_array_bytes(names))
        .with_context(|| format!("cannot write {}", dir.join(PATHS_FILE).display()))
}
