//! `get-similar` (the reference's [`inference/get_similar.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/inference/get_similar.py)) and
//! the top-k ranking it shares with `visrank`.
//!
//! The query images are embedded one by one (no centroids, whatever `MODEL.USE_CENTROIDS`
//! says); the gallery may be a centroid gallery from `create-embeddings`, whose `paths.npy`
//! then holds identities. Normalisation follows `--normalize-features` (not `TEST.FEAT_NORM`),
//! the distance `SOLVER.DISTANCE_FUNC`; the query and gallery are never compared by path, so an
//! image in both lists finds itself at distance ~0.
//!
//! Queries come from `DATASETS.ROOT_DIR` (the reference), `--query` (images and directories)
//! or `--query-embeddings` (no model). The search is [`SavedGallery::search_post`]: the
//! gallery's index when it has one (`--exact` forces exact search), then `TEST.AQE` /
//! `TEST.RERANK` (see [`PostProcess`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use kiln::DeviceKind;
use rand::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use super::{GetSimilarArgs, embed_with_checkpoint, npy, output_dir, path_string, write_outputs};
use crate::config::ReidConfig;
use crate::data::{Sample, list_images};
use crate::eval::{EvalLabels, FeatureMatrix, RetrievalOptions, distance_matrix};
use crate::infer::{aqe_params, rerank_params};
use crate::search::gallery::EMBEDDINGS_FILE;
use crate::search::{Match, PostProcess, SavedGallery, SearchMetric, SearchMode, recall_at_k};

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

/// The queries of a run: their embeddings and the names they get in the outputs.
struct Queries {
    features: FeatureMatrix,
    names: Vec<String>,
    /// Where they came from, for messages.
    source: String,
}

fn image_queries(
    cfg: &ReidConfig,
    args: &GetSimilarArgs,
    device: DeviceKind,
    progress: bool,
) -> Result<Queries> {
    crate::infer::checkpoint_path(cfg)?;
    let (paths, source) = if args.query.is_empty() {
        let root = cfg.root_dir();
        let paths: Vec<PathBuf> = list_images(&root, args.images_in_subfolders)
            .context("DATASETS.ROOT_DIR")?
            .into_iter()
            .map(|i| i.path)
            .collect();
        (paths, root.display().to_string())
    } else {
        let mut paths = Vec::new();
        for p in &args.query {
            let listed = list_images(p, args.images_in_subfolders)
                .with_context(|| format!("--query {}", p.display()))?;
            paths.extend(listed.into_iter().map(|i| i.path));
        }
        (paths, format!("{} --query path(s)", args.query.len()))
    };
    let samples = paths
        .iter()
        .map(|path| Sample::unlabelled(path.clone()))
        .collect();
    let features = embed_with_checkpoint(cfg, samples, device, progress)?.features;
    Ok(Queries {
        features,
        names: paths.iter().map(|p| path_string(p)).collect(),
        source,
    })
}

fn embedding_queries(path: &Path, names: Option<&Path>) -> Result<Queries> {
    let (values, [rows, dim]) = npy::read_f32_matrix(path)?;
    ensure!(
        rows > 0 && dim > 0,
        "the query embeddings {} are empty (shape [{rows}, {dim}])",
        path.display()
    );
    let names = match names {
        Some(n) => {
            let names = npy::read_string_array(n)?;
            ensure!(
                names.len() == rows,
                "{} has {} names but {} has {rows} rows",
                n.display(),
                names.len(),
                path.display()
            );
            names
        }
        None => (0..rows)
            .map(|i| format!("{}#{i}", path.display()))
            .collect(),
    };
    Ok(Queries {
        features: FeatureMatrix::new(values, dim)?,
        names,
        source: path.display().to_string(),
    })
}

/// `--check-recall n`: recall@k of the index against exact search on `n` sampled queries.
fn check_recall(
    gallery: &SavedGallery,
    queries: &FeatureMatrix,
    n: usize,
    k: usize,
    metric: SearchMetric,
) -> Result<()> {
    ensure!(n > 0, "--check-recall needs at least one query");
    let mut rows: Vec<usize> = (0..queries.rows()).collect();
    rows.shuffle(&mut StdRng::seed_from_u64(0));
    rows.truncate(n);
    rows.sort_unstable();
    let sample: Vec<f32> = rows.iter().flat_map(|&r| queries.row(r).to_vec()).collect();
    let t = Instant::now();
    let approx = gallery.search(&sample, k, metric, SearchMode::Index)?;
    let index_ms = t.elapsed().as_secs_f64() * 1e3 / rows.len() as f64;
    let t = Instant::now();
    let exact = gallery.search(&sample, k, metric, SearchMode::Exact)?;
    let exact_ms = t.elapsed().as_secs_f64() * 1e3 / rows.len() as f64;
    let ef = gallery
        .index()
        .map_or(0, |i| i.sidecar().params.expansion_search);
    println!(
        "recall@{k} of the index (ef {ef}) against exact search on {} of {} queries: {:.4} \
         ({index_ms:.2} ms vs {exact_ms:.2} ms per query, batched)",
        rows.len(),
        queries.rows(),
        recall_at_k(&approx, &exact, k)
    );
    Ok(())
}

pub(super) fn run(
    cfg: &ReidConfig,
    args: &GetSimilarArgs,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    let distance = cfg
        .solver
        .distance_func
        .parse()
        .context("SOLVER.DISTANCE_FUNC")?;
    let metric = SearchMetric {
        normalize: args.normalize_features,
        distance,
    };
    let mut gallery = SavedGallery::open(&args.gallery_data, args.view)
        .with_context(|| format!("--gallery-data {}", args.gallery_data.display()))?;
    if let (Some(ef), Some(index)) = (args.ef, gallery.index_mut()) {
        index.set_expansion_search(ef);
    }
    if let (Some(n), Some(index)) = (args.rescore, gallery.index_mut()) {
        index.set_rescore_candidates(n);
    }
    let queries = match &args.query_embeddings {
        Some(path) => embedding_queries(path, args.query_names.as_deref())?,
        None => image_queries(cfg, args, device, progress)?,
    };
    tracing::info!(
        "{} queries from {}, gallery of {} from {}",
        queries.names.len(),
        queries.source,
        gallery.len(),
        args.gallery_data.display()
    );
    let query = &queries.features;
    ensure!(
        query.dim() == gallery.dim(),
        "the queries ({}) have dimension {} but the gallery {} has {}-dimensional rows",
        queries.source,
        query.dim(),
        args.gallery_data.join(EMBEDDINGS_FILE).display(),
        gallery.dim()
    );
    let k = if args.topk == 0 {
        gallery.len()
    } else {
        args.topk.min(gallery.len())
    };
    let mode = if args.exact {
        SearchMode::Exact
    } else {
        SearchMode::Auto
    };
    let post = PostProcess {
        aqe: aqe_params(cfg),
        rerank: rerank_params(cfg),
        rerank_candidates: args.rerank_candidates,
    };
    let started = Instant::now();
    let ranked = gallery.search_post(query.as_slice(), k, metric, mode, &post)?;
    let how = match mode {
        SearchMode::Exact => "exact search",
        _ if gallery.index_fits(metric) => "index",
        _ => "exact search (no index for this distance)",
    };
    tracing::info!("searched in {:.1?} ({how})", started.elapsed());
    if let Some(n) = args.check_recall {
        check_recall(&gallery, query, n, k.min(100), metric)?;
    }

    let mut results = BTreeMap::new();
    let mut indices = Vec::with_capacity(ranked.len() * k);
    let mut distances = Vec::with_capacity(ranked.len() * k);
    for (name, matches) in queries.names.iter().zip(&ranked) {
        indices.extend(matches.iter().map(|m| m.index as i64));
        distances.extend(matches.iter().map(|m| m.distance));
        results.insert(
            name.clone(),
            QueryResult {
                indices: matches.iter().map(|m| m.index).collect(),
                paths: matches
                    .iter()
                    .map(|m| gallery.paths()[m.index].clone())
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
            npy::string_array_bytes(&queries.names),
        ),
    ];
    write_outputs(&files)?;
    println!(
        "top-{k} of {} gallery entries ({metric} distance, {how}) for {q} queries → {}",
        gallery.len(),
        out.join("results.json").display()
    );
    Ok(())
}
