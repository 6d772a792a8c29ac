//! # Retrieval at gallery scale
//!
//! Searching a saved gallery (`create-embeddings` output) fast, at 10^5–10^7 embeddings:
//!
//! * [`exact`]: brute-force k-nearest-neighbour search as blocked matrix products (the `gemm`
//!   crate's SIMD kernels) with a streaming top-k, parallel over gallery blocks: the ground
//!   truth, the `--exact` fallback and the recall check;
//! * [`index`]: an approximate nearest-neighbour index (HNSW, the `usearch` crate) saved beside
//!   `embeddings.npy`, with f32 / f16 / int8 storage, memory-mapped loading and incremental
//!   additions;
//! * [`gallery`]: a saved gallery directory (embeddings memory-mapped, paths, the index when
//!   there is one) and the one search entry point of `get-similar` and the library;
//! * [`embedder`]: embedding image files with a model, no dataset layout ([`ImageEmbedder`]);
//! * [`bench`]: `reid bench-search`, index against exact search on synthetic clustered
//!   embeddings.
//!
//! Distances follow evaluation's conventions ([`crate::eval::distance_matrix`]), chosen by
//! [`SearchMetric`]: with `normalize` (get-similar's `--normalize-features`) or the cosine
//! distance every row is L2-normalised first; `euclidean` is the **squared** distance and
//! `cosine` is `max(|1 − cos|, 1e-12)`.

pub mod bench;
pub mod embedder;
pub mod exact;
pub mod gallery;
pub mod index;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::eval::RetrievalOptions;
use crate::eval::retrieval::NORM_EPS;
use crate::loss::DistanceFunc;

pub use embedder::{ImageEmbedder, save_gallery};
pub use exact::{ExactSearch, TopK};
pub use gallery::{PostProcess, SavedGallery, SearchMode, recall_at_k};
pub use index::{AnnIndex, IndexParams, IndexSidecar, Quantization};

/// One ranked gallery entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// Gallery row.
    pub index: usize,
    /// Distance to the query (see [`SearchMetric`]).
    pub distance: f32,
}

impl Match {
    /// The ranking order: ascending distance, ties by gallery row, NaN last.
    pub fn order(a: &Match, b: &Match) -> std::cmp::Ordering {
        a.distance
            .total_cmp(&b.distance)
            .then(a.index.cmp(&b.index))
    }
}

/// How embeddings are compared: L2-normalised or not, squared Euclidean or cosine distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchMetric {
    /// L2-normalise query and gallery rows first (`--normalize-features`, `TEST.FEAT_NORM`).
    pub normalize: bool,
    /// `SOLVER.DISTANCE_FUNC`.
    pub distance: DistanceFunc,
}

impl SearchMetric {
    /// The metric of evaluation's options.
    pub fn from_options(opts: &RetrievalOptions) -> Self {
        SearchMetric {
            normalize: opts.feat_norm,
            distance: opts.distance,
        }
    }

    /// Whether rows are compared as unit vectors (normalised, or cosine distance).
    pub fn unit_rows(&self) -> bool {
        self.normalize || self.distance == DistanceFunc::Cosine
    }

    /// The distance of a pair from its dot product and the two rows' L2 norms.
    #[inline]
    pub fn distance_from_dot(&self, dot: f32, q_norm: f32, g_norm: f32) -> f32 {
        if self.unit_rows() {
            let cos = dot / (q_norm.max(NORM_EPS) * g_norm.max(NORM_EPS));
            match self.distance {
                DistanceFunc::Euclidean => 2.0 - 2.0 * cos,
                DistanceFunc::Cosine => (1.0 - cos).abs().max(NORM_EPS),
            }
        } else {
            q_norm * q_norm + g_norm * g_norm - 2.0 * dot
        }
    }

    /// The distance of two rows, computed directly (f64 accumulation).
    pub fn distance(&self, q: &[f32], g: &[f32]) -> f32 {
        let (mut dot, mut qq, mut gg) = (0f64, 0f64, 0f64);
        for (&a, &b) in q.iter().zip(g) {
            dot += f64::from(a) * f64::from(b);
            qq += f64::from(a) * f64::from(a);
            gg += f64::from(b) * f64::from(b);
        }
        self.distance_from_dot(dot as f32, qq.sqrt() as f32, gg.sqrt() as f32)
    }
}

impl fmt::Display for SearchMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.distance,
            if self.normalize { ", normalised" } else { "" }
        )
    }
}

/// L2 norm of every `dim`-wide row of `data`, in parallel.
pub fn row_norms(data: &[f32], dim: usize) -> Vec<f32> {
    use rayon::prelude::*;
    data.par_chunks(dim)
        .map(|row| row.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}
