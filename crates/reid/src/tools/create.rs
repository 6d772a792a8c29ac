//! `create-embeddings` (the reference's
//! [`inference/create_embeddings.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/inference/create_embeddings.py)).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use kiln::DeviceKind;

use super::{embed_with_checkpoint, npy, output_dir, path_string, write_outputs};
use crate::config::ReidConfig;
use crate::data::{Sample, list_images};
use crate::eval::FeatureMatrix;

/// How `create-embeddings` labels an image in centroid mode: the reference's `exctract_func`
/// (its second definition, which overrides the first) returns the name of the image's parent
/// directory.
pub const CENTROID_LABEL_RULE: &str = "the name of the image's parent directory";

/// The centroid label of an image: the name of its parent directory. Errors for a path without
/// one (e.g. a bare file name).
pub fn parent_dir_label(path: &Path) -> Result<String> {
    path.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| {
            format!(
                "{} has no parent directory to take its identity from (MODEL.USE_CENTROIDS \
                 labels every image with {CENTROID_LABEL_RULE})",
                path.display()
            )
        })
}

/// Plain means of the rows of `features` grouped by `labels`, one row per distinct label in
/// order of first appearance; returns the means and their labels. Accumulates in f64.
pub fn mean_by_label(
    features: &FeatureMatrix,
    labels: &[String],
) -> Result<(FeatureMatrix, Vec<String>)> {
    ensure!(
        labels.len() == features.rows(),
        "{} labels for {} embeddings",
        labels.len(),
        features.rows()
    );
    let dim = features.dim();
    let mut order: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut sums: Vec<Vec<f64>> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let slot = *index.entry(label.as_str()).or_insert_with(|| {
            order.push(label.clone());
            sums.push(vec![0.0; dim]);
            counts.push(0);
            order.len() - 1
        });
        for (s, &v) in sums[slot].iter_mut().zip(features.row(i)) {
            *s += f64::from(v);
        }
        counts[slot] += 1;
    }
    let data = sums
        .iter()
        .zip(&counts)
        .flat_map(|(sum, &n)| sum.iter().map(move |s| (s / n as f64) as f32))
        .collect();
    Ok((FeatureMatrix::new(data, dim)?, order))
}

pub(super) fn run(
    cfg: &ReidConfig,
    images_in_subfolders: bool,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    crate::infer::checkpoint_path(cfg)?;
    let root = cfg.root_dir();
    let images = list_images(&root, images_in_subfolders).context("DATASETS.ROOT_DIR")?;
    let paths: Vec<PathBuf> = images.into_iter().map(|i| i.path).collect();
    let labels = if cfg.model.use_centroids {
        Some(
            paths
                .iter()
                .map(|p| parent_dir_label(p))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    tracing::info!("embedding {} images from {}", paths.len(), root.display());
    let samples = paths
        .iter()
        .map(|path| Sample::unlabelled(path.clone()))
        .collect();
    let embedded = embed_with_checkpoint(cfg, samples, device, progress)?;
    let (features, names) = match labels {
        Some(labels) => mean_by_label(&embedded.features, &labels)?,
        None => (
            embedded.features,
            paths.iter().map(|p| path_string(p)).collect(),
        ),
    };

    let out = output_dir(cfg);
    let embeddings_path = out.join("embeddings.npy");
    let paths_path = out.join("paths.npy");
    let files = vec![
        (
            embeddings_path.clone(),
            npy::f32_matrix_bytes(features.as_slice(), features.rows(), features.dim())?,
        ),
        (paths_path.clone(), npy::string_array_bytes(&names)),
    ];
    write_outputs(&files)?;
    println!(
        "{} embeddings of dimension {}{} → {} and {}",
        features.rows(),
        features.dim(),
        if cfg.model.use_centroids {
            format!(" (centroids of {} images)", paths.len())
        } else {
            String::new()
        },
        embeddings_path.display(),
        paths_path.display()
    );
    Ok(())
}
