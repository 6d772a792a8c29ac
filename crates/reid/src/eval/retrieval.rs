//! From embeddings to metrics (the reference's `R1_mAP.compute` in
//! [`utils/reid_metric.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/utils/reid_metric.py#L112)), in bounded memory.
//!
//! 1. Optional L2 normalisation of every embedding (`TEST.FEAT_NORM`, `F.normalize`, eps 1e-12).
//! 2. Distances by `SOLVER.DISTANCE_FUNC`:
//!    * `euclidean`: the **squared** distance `‖q‖² + ‖g‖² − 2·q·g`, no square root and no
//!      clamp (on normalised features `2 − 2·cos`, the same ranking as cosine);
//!    * `cosine`: `clamp(|1 − cos|, 1e-12)`, each norm floored at 1e-12.
//! 3. [`eval_func`](super::metrics::eval_func)'s CMC / mAP.
//!
//! [`evaluate`] never materialises the `Q × G` matrix: queries are processed in chunks of
//! [`RetrievalOptions::query_chunk`] rows (in parallel with rayon); each chunk's `rows × G`
//! distance block comes from one single-threaded SGEMM (`matrixmultiply` through ndarray), every
//! row is reduced to its first-match rank and AP (exact, see [`super::metrics`]) and the block is
//! dropped. Extra memory is the normalised copies of the embeddings (when `feat_norm`) plus one
//! `rows × G` f32 block per worker thread; [`RetrievalOptions::peak_block_bytes`] gives the
//! latter.

use std::borrow::Cow;

use anyhow::{Result, ensure};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::{
    DEFAULT_MAX_RANK, EvalLabels, EvalMetrics, QueryOutcome, aggregate, eval_func,
};
use super::rerank::{AqeParams, RerankParams, average_query_expansion, re_rank_features};
use crate::loss::DistanceFunc;

/// Norm floor of `F.normalize` and of the cosine distance.
pub const NORM_EPS: f32 = 1e-12;

/// A row-major `rows × dim` matrix of f32 embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMatrix {
    data: Vec<f32>,
    dim: usize,
}

impl FeatureMatrix {
    /// Wraps `data` (`rows · dim` values, row-major). Errors if `dim` is 0 or does not divide
    /// the length.
    pub fn new(data: Vec<f32>, dim: usize) -> Result<Self> {
        ensure!(dim > 0, "feature matrix: dimension must be positive");
        ensure!(
            data.len().is_multiple_of(dim),
            "feature matrix: {} values are not a whole number of rows of dimension {dim}",
            data.len()
        );
        Ok(FeatureMatrix { data, dim })
    }

    /// Builds a matrix from rows (all of length `dim`; at least one row or `dim` is unknown).
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self> {
        ensure!(!rows.is_empty(), "feature matrix: no rows");
        let dim = rows[0].len();
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
            anyhow::bail!(
                "feature matrix: row {i} has {} values, row 0 has {dim}",
                r.len()
            );
        }
        FeatureMatrix::new(rows.concat(), dim)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Scales every row to unit L2 norm, the norm floored at 1e-12 (`F.normalize`).
    pub fn l2_normalize_in_place(&mut self) {
        self.data.par_chunks_mut(self.dim).for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
            row.iter_mut().for_each(|v| *v /= norm);
        });
    }

    /// A row-normalised copy (see [`l2_normalize_in_place`](Self::l2_normalize_in_place)).
    pub fn l2_normalized(&self) -> Self {
        let mut out = self.clone();
        out.l2_normalize_in_place();
        out
    }

    fn view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.rows(), self.dim), &self.data)
            .expect("FeatureMatrix invariant: rows · dim == len")
    }

    fn rows_view(&self, start: usize, end: usize) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape(
            (end - start, self.dim),
            &self.data[start * self.dim..end * self.dim],
        )
        .expect("FeatureMatrix invariant: rows · dim == len")
    }

    fn squared_norms(&self) -> Vec<f32> {
        self.data
            .par_chunks(self.dim)
            .map(|row| row.iter().map(|v| v * v).sum())
            .collect()
    }
}

/// Embeddings with their identity and camera labels (one split of query/gallery).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingSet<'a> {
    /// Un-normalised embeddings, one row per image.
    pub features: &'a FeatureMatrix,
    /// Identity of each row.
    pub pids: &'a [i64],
    /// Camera of each row.
    pub camids: &'a [i64],
}

impl EmbeddingSet<'_> {
    /// Checks that features and labels agree in length.
    pub fn validate(&self, what: &str) -> Result<()> {
        ensure!(
            self.pids.len() == self.features.rows() && self.camids.len() == self.features.rows(),
            "{what}: {} embeddings but {} pids and {} camids",
            self.features.rows(),
            self.pids.len(),
            self.camids.len()
        );
        Ok(())
    }
}

/// How embeddings become a ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalOptions {
    /// `TEST.FEAT_NORM`: L2-normalise embeddings first.
    pub feat_norm: bool,
    /// `SOLVER.DISTANCE_FUNC` (`euclidean` is the squared distance here).
    pub distance: DistanceFunc,
    /// CMC length (50).
    pub max_rank: usize,
    /// Queries per distance block; `0` picks `clamp(block_budget / (4·G), 1, 256)`.
    pub query_chunk: usize,
    /// Byte budget of one distance block when `query_chunk` is `0`.
    pub block_budget: usize,
    /// k-reciprocal re-ranking (`TEST.RERANK`), see [`super::rerank`].
    #[serde(default)]
    pub rerank: Option<RerankParams>,
    /// Average query expansion (`TEST.AQE`), applied before the distances.
    #[serde(default)]
    pub aqe: Option<AqeParams>,
}

impl Default for RetrievalOptions {
    fn default() -> Self {
        RetrievalOptions {
            feat_norm: true,
            distance: DistanceFunc::Euclidean,
            max_rank: DEFAULT_MAX_RANK,
            query_chunk: 0,
            block_budget: 64 << 20,
            rerank: None,
            aqe: None,
        }
    }
}

impl RetrievalOptions {
    /// Query rows per distance block for a gallery of `num_gallery` entries.
    pub fn chunk_rows(&self, num_gallery: usize) -> usize {
        if self.query_chunk > 0 {
            self.query_chunk
        } else {
            (self.block_budget / (4 * num_gallery.max(1))).clamp(1, 256)
        }
    }

    /// Bytes of distance blocks alive at once (one per rayon worker thread).
    pub fn peak_block_bytes(&self, num_query: usize, num_gallery: usize) -> usize {
        let rows = self.chunk_rows(num_gallery).min(num_query.max(1));
        rows * num_gallery * 4 * rayon::current_num_threads()
    }
}

/// Query and gallery embeddings prepared for distance blocks (normalised as configured).
struct Prepared<'a> {
    query: Cow<'a, FeatureMatrix>,
    gallery: Cow<'a, FeatureMatrix>,
    /// Squared norms of the query rows (Euclidean only).
    q_sq: Vec<f32>,
    /// Squared norms of the gallery rows (Euclidean only).
    g_sq: Vec<f32>,
    distance: DistanceFunc,
}

impl<'a> Prepared<'a> {
    fn new(
        query: &'a FeatureMatrix,
        gallery: &'a FeatureMatrix,
        opts: &RetrievalOptions,
    ) -> Result<Self> {
        ensure!(
            query.dim() == gallery.dim(),
            "retrieval: query embeddings have dimension {} but gallery embeddings {}",
            query.dim(),
            gallery.dim()
        );
        ensure!(gallery.rows() > 0, "retrieval: empty gallery");
        // Cosine needs unit rows anyway; normalising twice would only change rounding.
        let normalise = opts.feat_norm || opts.distance == DistanceFunc::Cosine;
        let (query, gallery) = if normalise {
            (
                Cow::Owned(query.l2_normalized()),
                Cow::Owned(gallery.l2_normalized()),
            )
        } else {
            (Cow::Borrowed(query), Cow::Borrowed(gallery))
        };
        let (q_sq, g_sq) = match opts.distance {
            DistanceFunc::Euclidean => (query.squared_norms(), gallery.squared_norms()),
            DistanceFunc::Cosine => (Vec::new(), Vec::new()),
        };
        Ok(Prepared {
            query,
            gallery,
            q_sq,
            g_sq,
            distance: opts.distance,
        })
    }

    /// Distances of query rows `start..end` to the whole gallery, row-major into `out`.
    fn block(&self, start: usize, end: usize, out: &mut [f32]) {
        let num_g = self.gallery.rows();
        let q = self.query.rows_view(start, end);
        let g = self.gallery.view();
        let mut c = ArrayViewMut2::from_shape((end - start, num_g), out)
            .expect("distance block has rows · G entries");
        match self.distance {
            DistanceFunc::Euclidean => {
                // (‖q‖² + ‖g‖²) + (−2)·q·gᵀ, the reference's addmm order.
                general_mat_mul(-2.0, &q, &g.t(), 0.0, &mut c);
                for (i, mut row) in c.outer_iter_mut().enumerate() {
                    let qn = self.q_sq[start + i];
                    for (d, &gn) in row.iter_mut().zip(&self.g_sq) {
                        *d += qn + gn;
                    }
                }
            }
            DistanceFunc::Cosine => {
                general_mat_mul(1.0, &q, &g.t(), 0.0, &mut c);
                c.mapv_inplace(|cos| (1.0 - cos).abs().max(NORM_EPS));
            }
        }
    }
}

/// The full `Q × G` distance matrix (row-major) after the configured normalisation. For small
/// problems and tests; [`evaluate`] does not need it.
pub fn distance_matrix(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    opts: &RetrievalOptions,
) -> Result<Vec<f32>> {
    let prepared = Prepared::new(query, gallery, opts)?;
    let mut out = vec![0f32; query.rows() * gallery.rows()];
    prepared.block(0, query.rows(), &mut out);
    Ok(out)
}

/// Checks the labels and that they describe `query` and `gallery`.
fn check_labels(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    labels: &EvalLabels<'_>,
) -> Result<()> {
    labels.validate()?;
    ensure!(
        labels.num_query() == query.rows() && labels.num_gallery() == gallery.rows(),
        "retrieval: {} query / {} gallery embeddings but {} / {} labels",
        query.rows(),
        gallery.rows(),
        labels.num_query(),
        labels.num_gallery()
    );
    Ok(())
}

/// Per-query outcomes (`None` = no valid match), chunked and parallel over queries.
pub fn query_outcomes(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    labels: &EvalLabels<'_>,
    opts: &RetrievalOptions,
) -> Result<Vec<Option<QueryOutcome>>> {
    check_labels(query, gallery, labels)?;
    let prepared = Prepared::new(query, gallery, opts)?;
    let num_q = query.rows();
    let num_g = gallery.rows();
    let rows = opts.chunk_rows(num_g);
    let chunks: Vec<(usize, usize)> = (0..num_q)
        .step_by(rows)
        .map(|s| (s, (s + rows).min(num_q)))
        .collect();
    let per_chunk: Vec<Vec<Option<QueryOutcome>>> = chunks
        .into_par_iter()
        .map(|(start, end)| {
            let mut block = vec![0f32; (end - start) * num_g];
            prepared.block(start, end, &mut block);
            block
                .chunks(num_g)
                .enumerate()
                .map(|(i, row)| {
                    super::metrics::query_outcome_from_distances(row, start + i, labels)
                })
                .collect()
        })
        .collect();
    Ok(per_chunk.into_iter().flatten().collect())
}

/// CMC / mAP of `query` against `gallery` (no centroids), in bounded memory.
///
/// With `opts.aqe`, both sides are expanded first ([`average_query_expansion`]); with
/// `opts.rerank`, the distances are re-ranked ([`re_rank_features`], which needs the
/// `(Q+G)²` distances and `Q × (Q+G)` floats) before [`eval_func`].
pub fn evaluate(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    labels: &EvalLabels<'_>,
    opts: &RetrievalOptions,
) -> Result<EvalMetrics> {
    let expanded;
    let (query, gallery) = match &opts.aqe {
        Some(aqe) => {
            expanded = average_query_expansion(query, gallery, aqe)?;
            (&expanded.0, &expanded.1)
        }
        None => (query, gallery),
    };
    if let Some(params) = &opts.rerank {
        check_labels(query, gallery, labels)?;
        let distances = re_rank_features(query, gallery, opts, params)?;
        return eval_func(&distances, labels, opts.max_rank);
    }
    let outcomes = query_outcomes(query, gallery, labels, opts)?;
    aggregate(&outcomes, gallery.rows(), opts.max_rank)
}
