//! `create-embeddings` (the reference's
//! [`inference/create_embeddings.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/inference/create_embeddings.py)).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use kiln::DeviceKind;

use super::{
    CreateEmbeddingsArgs, embed_with_checkpoint, npy, output_dir, path_string, write_outputs,
};
use crate::config::ReidConfig;
use crate::data::{Sample, list_images};
use crate::eval::FeatureMatrix;
use crate::search::gallery::{EMBEDDINGS_FILE, PATHS_FILE};
use crate::search::index::INDEX_FILE;
use crate::search::{SavedGallery, SearchMetric};

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
    args: &CreateEmbeddingsArgs,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    crate::infer::checkpoint_path(cfg)?;
    let metric = SearchMetric {
        normalize: args.normalize_features,
        distance: crate::infer::distance_func(cfg)?,
    };
    if args.build_index {
        // Refuse impossible index settings before the (long) embedding.
        crate::search::AnnIndex::new(1, metric, args.index.params())?;
    }
    let root = cfg.root_dir();
    let images = list_images(&root, args.images_in_subfolders).context("DATASETS.ROOT_DIR")?;
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
    let embeddings_path = out.join(EMBEDDINGS_FILE);
    let paths_path = out.join(PATHS_FILE);
    let appended = args.append && embeddings_path.exists();
    let (features, names) = if appended {
        let (mut old, [rows, dim]) = npy::read_f32_matrix(&embeddings_path)?;
        let mut old_names = npy::read_string_array(&paths_path)?;
        ensure!(
            old_names.len() == rows,
            "{} has {rows} rows but {} has {} entries",
            embeddings_path.display(),
            paths_path.display(),
            old_names.len()
        );
        ensure!(
            dim == features.dim(),
            "cannot append {}-dimensional embeddings to {}, whose rows have dimension {dim}",
            features.dim(),
            embeddings_path.display()
        );
        old.extend_from_slice(features.as_slice());
        old_names.extend(names);
        (FeatureMatrix::new(old, dim)?, old_names)
    } else {
        (features, names)
    };
    let files = vec![
        (
            embeddings_path.clone(),
            npy::f32_matrix_bytes(features.as_slice(), features.rows(), features.dim())?,
        ),
        (paths_path.clone(), npy::string_array_bytes(&names)),
    ];
    write_outputs(&files)?;
    drop(files);
    let has_index = out.join(INDEX_FILE).exists();
    if args.build_index || (appended && has_index) {
        let mut gallery = SavedGallery::open(&out, false)?;
        if appended && has_index && !args.build_index {
            let added = gallery.update_index(progress)?;
            println!(
                "added {added} rows to the index {}",
                out.join(INDEX_FILE).display()
            );
        } else {
            let path = gallery.build_index(metric, args.index.params(), progress)?;
            println!(
                "indexed {} rows ({metric}) → {}",
                gallery.len(),
                path.display()
            );
        }
    } else if has_index {
        // A stale index over replaced embeddings would answer for other rows: remove it.
        for name in [INDEX_FILE, crate::search::index::SIDECAR_FILE] {
            let path = out.join(name);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale index {}", path.display()))?;
        }
        println!(
            "removed the index of the previous embeddings (rebuild it with `reid index \
             --gallery-data {}`)",
            out.display()
        );
    }
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
