//! `get-similar` (the reference's [`inference/get_similar.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/inference/get_similar.py)) and
//! the top-k ranking it shares with `visrank`.
//!
//! The query images are embedded one by one (no centroids, whatever `MODEL.USE_CENTROIDS`
//! says); the gallery may be a centroid gallery from `create-embeddings`, whose `paths.npy`
//! then holds identities. Normalisation follows `--normalize-features` (not `TEST.FEAT_NORM`),
//! the distance `SOLVER.DISTANCE_FUNC`; the query and gallery are never compared by path, so an
//! image in both lists finds itself at distance ~0.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use kiln::DeviceKind;
use rayon::prelude::*;
use serde::Serialize;

use super::{GetSimilarArgs, embed_with_checkpoint, npy, output_dir, path_string, write_outputs};
use crate::config::ReidConfig;
use crate::data::{Sample, list_images};
use crate::eval::{EvalLabels, FeatureMatrix, RetrievalOptions, distance_matrix};

/// One ranked gallery entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// Gallery row.
    pub index: usize,
    /// Distance to the query (see [`RetrievalOptions`]).
    pub distance: f32,
}

/// The `k` nearest gallery entries of every query, nearest first.
///
/// Distances are evaluation's ([`distance_matrix`]): L2 normalisation when `opts.feat_norm`,
/// then the squared Euclidean distance or `|1 − cos|` (clamped at 1e-12). Equal distances keep
/// gallery order (the lower index first), like evaluation's stable sort. `k = usize::MAX` keeps
/// every entry. With `labels`, the entries evaluation would remove for a query (same pid and
/// same camera, or camera in the entry's set) are skipped before taking the `k` first, so a
/// query gets `k` kept entries when the gallery has that many.
///
/// Queries are processed in blocks of [`RetrievalOptions::chunk_rows`] rows, in parallel; only
/// one `rows × G` distance block per worker is alive at a time.
pub fn rank_gallery(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    opts: &RetrievalOptions,
    k: usize,
    labels: Option<&EvalLabels<'_>>,
) -> Result<Vec<Vec<Match>>> {
    ensure!(
        query.dim() == gallery.dim(),
        "query embeddings have dimension {} but gallery embeddings {}",
        query.dim(),
        gallery.dim()
    );
    ensure!(gallery.rows() > 0, "the gallery is empty");
    if let Some(labels) = labels {
        labels.validate()?;
        ensure!(
            labels.num_query() >= query.rows() && labels.num_gallery() == gallery.rows(),
            "ranking: {} query / {} gallery embeddings but {} / {} labels",
            query.rows(),
            gallery.rows(),
            labels.num_query(),
            labels.num_gallery()
        );
    }
    let dim = query.dim();
    let num_q = query.rows();
    let num_g = gallery.rows();
    let rows = opts.chunk_rows(num_g);
    let chunks: Vec<(usize, usize)> = (0..num_q)
        .step_by(rows.max(1))
        .map(|s| (s, (s + rows).min(num_q)))
        .collect();
    let per_chunk = chunks
        .into_par_iter()
        .map(|(start, end)| -> Result<Vec<Vec<Match>>> {
            let block_query =
                FeatureMatrix::new(query.as_slice()[start * dim..end * dim].to_vec(), dim)?;
            let block = distance_matrix(&block_query, gallery, opts)?;
            Ok(block
                .chunks(num_g)
                .enumerate()
                .map(|(i, row)| top_k_of_row(row, start + i, k, labels))
                .collect())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(per_chunk.into_iter().flatten().collect())
}

fn top_k_of_row(row: &[f32], q: usize, k: usize, labels: Option<&EvalLabels<'_>>) -> Vec<Match> {
    let mut candidates: Vec<Match> = row
        .iter()
        .enumerate()
        .filter(|&(g, _)| labels.is_none_or(|l| !l.is_removed(q, g)))
        .map(|(index, &distance)| Match { index, distance })
        .collect();
    let order = |a: &Match, b: &Match| {
        a.distance
            .total_cmp(&b.distance)
            .then(a.index.cmp(&b.index))
    };
    if k < candidates.len() {
        if k == 0 {
            return Vec::new();
        }
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(order);
    candidates
}

/// One query's entry of `results.json`.
#[derive(Debug, Serialize)]
struct QueryResult {
    indices: Vec<usize>,
    paths: Vec<String>,
    distances: Vec<f32>,
}

/// The gallery written by `create-embeddings`.
struct Gallery {
    features: FeatureMatrix,
    paths: Vec<String>,
}

fn load_gallery(dir: &std::path::Path) -> Result<Gallery> {
    if !dir.is_dir() {
        bail!(
            "--gallery-data {} is not a directory (expected the output of create-embeddings: \
             embeddings.npy and paths.npy)",
            dir.display()
        );
    }
    let emb_path = dir.join("embeddings.npy");
    let paths_path = dir.join("paths.npy");
    let (values, [rows, dim]) = npy::read_f32_matrix(&emb_path)?;
    let paths = npy::read_string_array(&paths_path)?;
    ensure!(
        rows == paths.len(),
        "{} has {rows} rows but {} has {} entries",
        emb_path.display(),
        paths_path.display(),
        paths.len()
    );
    ensure!(
        rows > 0 && dim > 0,
        "{} is empty (shape [{rows}, {dim}])",
        emb_path.display()
    );
    Ok(Gallery {
        features: FeatureMatrix::new(values, dim)?,
        paths,
    })
}

pub(super) fn run(
    cfg: &ReidConfig,
    args: &GetSimilarArgs,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    crate::infer::checkpoint_path(cfg)?;
    let distance = cfg
        .solver
        .distance_func
        .parse()
        .context("SOLVER.DISTANCE_FUNC")?;
    let gallery = load_gallery(&args.gallery_data)?;
    let root = cfg.root_dir();
    let query_paths: Vec<PathBuf> = list_images(&root, args.images_in_subfolders)
        .context("DATASETS.ROOT_DIR")?
        .into_iter()
        .map(|i| i.path)
        .collect();
    tracing::info!(
        "{} query images from {}, gallery of {} from {}",
        query_paths.len(),
        root.display(),
        gallery.paths.len(),
        args.gallery_data.display()
    );
    let samples = query_paths
        .iter()
        .map(|path| Sample::unlabelled(path.clone()))
        .collect();
    let query = embed_with_checkpoint(cfg, samples, device, progress)?.features;
    ensure!(
        query.dim() == gallery.features.dim(),
        "the model's embeddings have dimension {} but the gallery {} has {}-dimensional rows",
        query.dim(),
        args.gallery_data.join("embeddings.npy").display(),
        gallery.features.dim()
    );
    let opts = RetrievalOptions {
        feat_norm: args.normalize_features,
        distance,
        ..RetrievalOptions::default()
    };
    let k = if args.topk == 0 {
        gallery.features.rows()
    } else {
        args.topk.min(gallery.features.rows())
    };
    let ranked = rank_gallery(&query, &gallery.features, &opts, k, None)?;

    let query_names: Vec<String> = query_paths.iter().map(|p| path_string(p)).collect();
    let mut results = BTreeMap::new();
    let mut indices = Vec::with_capacity(ranked.len() * k);
    let mut distances = Vec::with_capacity(ranked.len() * k);
    for (name, matches) in query_names.iter().zip(&ranked) {
        indices.extend(matches.iter().map(|m| m.index as i64));
        distances.extend(matches.iter().map(|m| m.distance));
        results.insert(
            name.clone(),
            QueryResult {
                indices: matches.iter().map(|m| m.index).collect(),
                paths: matches
                    .iter()
                    .map(|m| gallery.paths[m.index].clone())
                    .collect(),
                distances: matches.iter().map(|m| m.distance).collect(),
            },
        );
    }
    let mut json = serde_json::to_vec_pretty(&results).context("cannot encode results.json")?;
    json.push(b'\n');

    let out = output_dir(cfg);
    let q = query.rows();
    let files = vec![
        (out.join("results.json"), json),
        (
            out.join("results_indices.npy"),
            npy::i64_matrix_bytes(&indices, q, k)?,
        ),
        (
            out.join("results_distances.npy"),
            npy::f32_matrix_bytes(&distances, q, k)?,
        ),
        (
            out.join("query_embeddings.npy"),
            npy::f32_matrix_bytes(query.as_slice(), q, query.dim())?,
        ),
        (
            out.join("query_paths.npy"),
            npy::string_array_bytes(&query_names),
        ),
    ];
    write_outputs(&files)?;
    println!(
        "top-{k} of {} gallery entries ({} distance{}) for {q} queries → {}",
        gallery.features.rows(),
        opts.distance,
        if opts.feat_norm { ", normalised" } else { "" },
        out.join("results.json").display()
    );
    Ok(())
}
