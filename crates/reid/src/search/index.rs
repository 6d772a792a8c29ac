//! The approximate nearest-neighbour index: HNSW from the `usearch` crate (its C++ core ships
//! in the crate and is compiled with the system C++ compiler; docs/retrieval.md says why this
//! library), saved as `index.usearch` beside the gallery's `embeddings.npy`, with its settings
//! in `index.json`.
//!
//! * **Metric.** Unit rows ([`SearchMetric::unit_rows`]: `--normalize-features` or the cosine
//!   distance) are indexed under usearch's cosine metric and its `1 − cos` is turned into this
//!   crate's distances (`2 − 2·cos` squared Euclidean, `|1 − cos|` cosine); raw rows with the
//!   Euclidean distance under its squared-L2 metric, which is this crate's distance already.
//! * **Storage** ([`Quantization`]): f32, f16 (half the memory, distances within ~1e-3) or int8
//!   (a quarter; unit-row metrics only). int8 rows are quantised here, each row scaled so that
//!   its largest component is ±127 (cosine does not see the per-row scale), rather than with
//!   usearch's own cast, which scales every row to unit norm first and, at 2048 dimensions,
//!   leaves each component only a handful of levels.
//! * **Keys** are gallery rows, so additions append rows (`reid index --add`).
//! * **Loading**: [`AnnIndex::open`] reads the file into memory; with `view` it is memory-mapped
//!   instead (read-only: nothing is loaded until a search touches it, and many processes share
//!   the page cache).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::{Match, SearchMetric, TopK};
use crate::loss::DistanceFunc;

/// File name of the index in a gallery directory.
pub const INDEX_FILE: &str = "index.usearch";
/// File name of the index's settings in a gallery directory.
pub const SIDECAR_FILE: &str = "index.json";
/// Version of `index.json`'s layout.
pub const SIDECAR_FORMAT: u32 = 1;

/// How the index stores vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 4 bytes per component.
    #[default]
    F32,
    /// 2 bytes per component.
    F16,
    /// 1 byte per component (unit-row metrics only).
    I8,
}

impl Quantization {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::I8 => "i8",
        }
    }

    /// Bytes per stored component.
    pub fn bytes(self) -> usize {
        match self {
            Quantization::F32 => 4,
            Quantization::F16 => 2,
            Quantization::I8 => 1,
        }
    }

    fn scalar_kind(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quantization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Quantization::F32),
            "f16" | "float16" | "half" => Ok(Quantization::F16),
            "i8" | "int8" => Ok(Quantization::I8),
            other => bail!("unknown index storage {other:?} (expected f32, f16 or i8)"),
        }
    }
}

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Graph degree `M` (edges per node and layer).
    pub connectivity: usize,
    /// Beam width while inserting (`ef_construction`).
    pub expansion_add: usize,
    /// Beam width while searching (`ef`); raised to `k` when smaller.
    pub expansion_search: usize,
    /// Vector storage.
    pub quantization: Quantization,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            quantization: Quantization::F32,
        }
    }
}

/// `index.json`: what the index holds and how it was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSidecar {
    /// [`SIDECAR_FORMAT`].
    pub format: u32,
    /// `usearch <version>`.
    pub library: String,
    /// The distance the index ranks by.
    pub metric: SearchMetric,
    /// The build parameters.
    pub params: IndexParams,
    /// Embedding dimension.
    pub dim: usize,
    /// Indexed rows (the first `rows` rows of `embeddings.npy`).
    pub rows: usize,
}

/// An HNSW index over gallery rows.
pub struct AnnIndex {
    index: Index,
    sidecar: IndexSidecar,
    /// Least candidates re-scored by [`AnnIndex::search_rescored`] (0: the default count).
    rescore: usize,
}

fn usearch_error(what: &str, path: Option<&Path>, e: impl std::fmt::Display) -> anyhow::Error {
    match path {
        Some(p) => anyhow::anyhow!("{what} {}: {e}", p.display()),
        None => anyhow::anyhow!("{what}: {e}"),
    }
}

/// A row scaled to int8 so that its largest |component| is 127 (all zeros stay zeros).
pub fn quantize_i8(row: &[f32]) -> Vec<i8> {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !max.is_finite() || max <= 0.0 {
        return vec![0; row.len()];
    }
    let scale = 127.0 / max;
    row.iter()
        .map(|v| (v * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

impl AnnIndex {
    /// An empty index for `dim`-dimensional rows.
    pub fn new(dim: usize, metric: SearchMetric, params: IndexParams) -> Result<Self> {
        ensure!(dim > 0, "index: the embedding dimension is 0");
        ensure!(
            params.connectivity >= 2 && params.expansion_add >= 1 && params.expansion_search >= 1,
            "index: connectivity must be at least 2 and the expansions at least 1, got {params:?}"
        );
        if params.quantization == Quantization::I8 && !metric.unit_rows() {
            bail!(
                "int8 index storage needs unit rows (--normalize-features, or SOLVER.DISTANCE_FUNC \
                 cosine): the squared Euclidean distance of raw embeddings depends on their norms, \
                 which int8 rows do not keep"
            );
        }
        let options = IndexOptions {
            dimensions: dim,
            metric: if metric.unit_rows() {
                MetricKind::Cos
            } else {
                MetricKind::L2sq
            },
            quantization: params.quantization.scalar_kind(),
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index =
            Index::new(&options).map_err(|e| usearch_error("cannot create an index", None, e))?;
        Ok(AnnIndex {
            index,
            sidecar: IndexSidecar {
                format: SIDECAR_FORMAT,
                library: format!("usearch {}", usearch::version()),
                metric,
                params,
                dim,
                rows: 0,
            },
            rescore: 0,
        })
    }

    /// Builds an index over the row-major `rows` (`dim` wide), keys 0, 1, ….
    pub fn build(
        rows: &[f32],
        dim: usize,
        metric: SearchMetric,
        params: IndexParams,
        progress: bool,
    ) -> Result<Self> {
        let mut index = AnnIndex::new(dim, metric, params)?;
        index.add(rows, progress)?;
        Ok(index)
    }

    /// Appends the row-major `rows` (keys continue from [`len`](Self::len)), in parallel.
    pub fn add(&mut self, rows: &[f32], progress: bool) -> Result<()> {
        let dim = self.sidecar.dim;
        ensure!(
            rows.len().is_multiple_of(dim),
            "index: the new rows are not {dim}-dimensional ({} values)",
            rows.len()
        );
        let n = rows.len() / dim;
        let first = self.sidecar.rows;
        self.index
            .reserve(first + n)
            .map_err(|e| usearch_error("cannot grow the index (read-only view?)", None, e))?;
        let bar = kiln::progress::bar(Some(n), "indexing", progress);
        let quant = self.sidecar.params.quantization;
        rows.par_chunks(dim)
            .enumerate()
            .try_for_each(|(i, row)| -> Result<()> {
                let key = (first + i) as u64;
                let added = match quant {
                    Quantization::I8 => self.index.add(key, &quantize_i8(row)),
                    _ => self.index.add(key, row),
                };
                added.map_err(|e| {
                    usearch_error(&format!("cannot index row {}", first + i), None, e)
                })?;
                bar.inc(1);
                Ok(())
            })?;
        bar.finish_and_clear();
        self.sidecar.rows = first + n;
        Ok(())
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.sidecar.rows
    }

    /// `true` when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.sidecar.rows == 0
    }

    /// The settings (`index.json`).
    pub fn sidecar(&self) -> &IndexSidecar {
        &self.sidecar
    }

    /// Bytes the index holds in memory (graph and vectors; a view maps its file instead).
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }

    /// Sets the search beam width `ef`.
    pub fn set_expansion_search(&mut self, ef: usize) {
        self.sidecar.params.expansion_search = ef.max(1);
        self.index.change_expansion_search(ef.max(1));
    }

    /// The `k` approximate nearest rows of `query`, nearest first, in this crate's distances.
    /// The search beam is `max(ef, k)`.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Match>> {
        ensure!(
            query.len() == self.sidecar.dim,
            "index search: the query has {} values, the index {} dimensions",
            query.len(),
            self.sidecar.dim
        );
        let k = k.min(self.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let found = match self.sidecar.params.quantization {
            Quantization::I8 => self.index.search(&quantize_i8(query), k),
            _ => self.index.search(query, k),
        };
        let found = found.map_err(|e| usearch_error("index search failed", None, e))?;
        let unit = self.sidecar.metric.unit_rows();
        let distance = self.sidecar.metric.distance;
        let mut out: Vec<Match> = found
            .keys
            .iter()
            .zip(&found.distances)
            .map(|(&key, &d)| Match {
                index: key as usize,
                distance: match (unit, distance) {
                    (true, DistanceFunc::Euclidean) => 2.0 * d,
                    (true, DistanceFunc::Cosine) => d.abs().max(crate::eval::retrieval::NORM_EPS),
                    (false, _) => d,
                },
            })
            .collect();
        out.sort_by(Match::order);
        Ok(out)
    }

    /// Candidates asked of the index by [`search_rescored`](Self::search_rescored) for `k`
    /// results: `max(2k, k + 8)`, or more when
    /// [`set_rescore_candidates`](Self::set_rescore_candidates) asks for more; at most the
    /// indexed rows.
    pub fn rescore_candidates(&self, k: usize) -> usize {
        k.saturating_mul(2)
            .max(k + 8)
            .max(self.rescore)
            .min(self.len())
    }

    /// Re-scores at least `n` candidates per query in
    /// [`search_rescored`](Self::search_rescored) (`get-similar --rescore`): with int8 or f16
    /// storage, true neighbours that the reduced precision ranks lower are then still found.
    /// The search beam is at least the candidate count.
    pub fn set_rescore_candidates(&mut self, n: usize) {
        self.rescore = n;
    }

    /// The `k` nearest rows of `query` with exact distances: the index's
    /// [`rescore_candidates`](Self::rescore_candidates) nearest rows re-scored against `rows`
    /// (the row-major f32 vectors the index was built from, at least [`len`](Self::len) rows)
    /// by `metric`, and cut to the `k` best. With f16 or int8 storage the index's own ranking
    /// of near ties is approximate; re-scoring a few more candidates than asked repairs it.
    /// This is what `get-similar` searches with.
    pub fn search_rescored(
        &self,
        query: &[f32],
        k: usize,
        rows: &[f32],
        metric: SearchMetric,
    ) -> Result<Vec<Match>> {
        let dim = self.sidecar.dim;
        ensure!(
            rows.len() >= self.len() * dim,
            "index re-scoring: {} rows given, the index holds {}",
            rows.len() / dim,
            self.len()
        );
        let mut top = TopK::new(k.min(self.len()));
        for m in self.search(query, self.rescore_candidates(k))? {
            let g = &rows[m.index * dim..(m.index + 1) * dim];
            top.push(Match {
                index: m.index,
                distance: metric.distance(query, g),
            });
        }
        Ok(top.into_sorted())
    }

    /// [`search`](Self::search) for every row of the row-major `queries`, in parallel.
    pub fn search_many(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Match>>> {
        queries
            .par_chunks(self.sidecar.dim)
            .map(|q| self.search(q, k))
            .collect()
    }

    /// Saves `index.usearch` and `index.json` into `dir`, each atomically (a temporary file
    /// renamed over the destination). Returns the index file's path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let path = dir.join(INDEX_FILE);
        let tmp = dir.join(format!(".{INDEX_FILE}.tmp-{}", std::process::id()));
        let tmp_str = tmp
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", tmp.display()))?;
        let saved = self
            .index
            .save(tmp_str)
            .map_err(|e| usearch_error("cannot write the index", Some(&path), e))
            .and_then(|()| {
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
            });
        if saved.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        saved?;
        kiln::io::write_json(dir.join(SIDECAR_FILE), &self.sidecar)?;
        Ok(path)
    }

    /// Opens the index saved in `dir` (`index.usearch` + `index.json`), into memory or, with
    /// `view`, memory-mapped (read-only). Errors name the file: missing, corrupt, or not what
    /// `index.json` says it is.
    pub fn open(dir: &Path, view: bool) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let sidecar_path = dir.join(SIDECAR_FILE);
        ensure!(path.is_file(), "there is no index {}", path.display());
        let sidecar: IndexSidecar = kiln::io::read_json(&sidecar_path).with_context(|| {
            format!("cannot read the index settings {}", sidecar_path.display())
        })?;
        ensure!(
            sidecar.format == SIDECAR_FORMAT,
            "{} has format {}, this build reads format {SIDECAR_FORMAT}",
            sidecar_path.display(),
            sidecar.format
        );
        let path_str = path
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
        let corrupt = |e| {
            anyhow::anyhow!(
                "the index {} is corrupt or not a usearch index ({e}): rebuild it with \
                 `reid index --gallery-data {}`",
                path.display(),
                dir.display()
            )
        };
        let meta = Index::metadata(path_str).map_err(corrupt)?;
        ensure!(
            meta.dimensions as usize == sidecar.dim,
            "the index {} has {} dimensions but {} says {}",
            path.display(),
            meta.dimensions,
            sidecar_path.display(),
            sidecar.dim
        );
        let index = if view {
            Index::restore_view(path_str)
        } else {
            Index::restore(path_str)
        }
        .map_err(corrupt)?;
        ensure!(
            index.size() == sidecar.rows,
            "the index {} holds {} rows but {} says {}",
            path.display(),
            index.size(),
            sidecar_path.display(),
            sidecar.rows
        );
        index.change_expansion_search(sidecar.params.expansion_search);
        Ok(AnnIndex {
            index,
            sidecar,
            rescore: 0,
        })
    }
}
