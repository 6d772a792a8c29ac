//! A saved gallery directory, as `create-embeddings` writes it and `get-similar` searches it:
//!
//! | file | what |
//! |---|---|
//! | `embeddings.npy` | float32 `[N, dim]` (memory-mapped when it is little-endian C-order float32) |
//! | `paths.npy` | `N` unicode strings (image paths, or identities for a centroid gallery) |
//! | `index.usearch`, `index.json` | the HNSW index over the first `rows` rows (optional) |
//!
//! [`SavedGallery::search`] is the one search entry point: exact ([`ExactSearch`]) or through
//! the index ([`SearchMode`]). The index is asked for `max(2k, k + 8)` candidates (or more,
//! `get-similar --rescore`), which are re-scored with exact f32 distances from
//! `embeddings.npy` (only their rows are read) and cut to the `k` best
//! ([`AnnIndex::search_rescored`]), so the reported distances are the exact search's whatever
//! the index's storage, and rows appended after the index was built are searched exactly and
//! merged in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use rayon::prelude::*;

use super::index::{AnnIndex, INDEX_FILE, IndexParams};
use super::{ExactSearch, Match, SearchMetric, TopK};
use crate::eval::{AqeParams, RerankParams, re_ranking};
use crate::tools::npy;

/// Query expansion and re-ranking of a gallery search (`TEST.AQE`, `TEST.RERANK`).
///
/// At gallery scale neither can work on the full `(Q+G)²` problem as evaluation does, so:
///
/// * **AQE** expands the queries only: a query becomes the mean of itself (weight 1) and its
///   `k − 1` nearest gallery rows weighted by `cos^α`, and is searched again;
/// * **re-ranking** is local: each query's `max(k, rerank_candidates)` nearest rows are
///   re-ranked as a one-query problem (query–candidate and candidate–candidate distances,
///   the same algorithm as [`re_ranking`]), and the `k` best by re-ranked distance are
///   returned with that distance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PostProcess {
    /// Average query expansion.
    pub aqe: Option<AqeParams>,
    /// k-reciprocal re-ranking.
    pub rerank: Option<RerankParams>,
    /// Candidates per query for the re-ranking.
    pub rerank_candidates: usize,
}

/// File name of the embeddings in a gallery directory.
pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
/// File name of the paths in a gallery directory.
pub const PATHS_FILE: &str = "paths.npy";

/// How [`SavedGallery::search`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// The index when the gallery has one built for a compatible metric, else exact.
    #[default]
    Auto,
    /// Exact search (ignores the index).
    Exact,
    /// The index (an error when there is none or it does not fit the metric).
    Index,
}

enum Rows {
    Mapped {
        map: Mmap,
        offset: usize,
        len: usize,
    },
    Owned(Vec<f32>),
}

impl Rows {
    fn as_slice(&self) -> &[f32] {
        match self {
            Rows::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + len * 4])
            }
            Rows::Owned(v) => v,
        }
    }
}

/// Reads `embeddings.npy` without copying it when possible: a little-endian C-order float32
/// array is memory-mapped, anything else readable (float64, Fortran order) is converted into
/// memory. Returns the rows and `[rows, dim]`.
fn map_embeddings(path: &Path) -> Result<(Rows, [usize; 2])> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only; a file truncated underneath it by another process is the
    // usual hazard of memory-mapped input, documented for `get-similar`.
    let map =
        unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let header = npy::peek_header(&map, path)?;
    let plain = matches!(header.descr.as_str(), "<f4" | "=f4")
        && !header.fortran_order
        && header.shape.len() == 2
        && header.data_offset.is_multiple_of(4);
    if plain {
        let [rows, dim] = [header.shape[0], header.shape[1]];
        let len = rows * dim;
        ensure!(
            map.len() >= header.data_offset + len * 4,
            "{} is truncated: its header promises {} but the file has {} bytes",
            path.display(),
            header.describe(),
            map.len()
        );
        return Ok((
            Rows::Mapped {
                offset: header.data_offset,
                len,
                map,
            },
            [rows, dim],
        ));
    }
    drop(map);
    let (values, shape) = npy::read_f32_matrix(path)?;
    Ok((Rows::Owned(values), shape))
}

/// A gallery directory opened for search (see the module docs).
pub struct SavedGallery {
    dir: PathBuf,
    rows: Rows,
    num_rows: usize,
    dim: usize,
    paths: Vec<String>,
    index: Option<AnnIndex>,
}

impl SavedGallery {
    /// Opens `dir`: maps `embeddings.npy`, reads `paths.npy` and, when present, the index
    /// (memory-mapped with `view`). Errors name the file: a missing directory or file, an
    /// empty gallery, paths and embeddings of different lengths, a corrupt index or one that
    /// does not match the embeddings.
    pub fn open(dir: &Path, view: bool) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "gallery {} is not a directory (expected the output of create-embeddings: \
                 {EMBEDDINGS_FILE} and {PATHS_FILE})",
                dir.display()
            );
        }
        let emb_path = dir.join(EMBEDDINGS_FILE);
        let paths_path = dir.join(PATHS_FILE);
        ensure!(
            emb_path.is_file(),
            "gallery {}: there is no {}",
            dir.display(),
            emb_path.display()
        );
        let (rows, [num_rows, dim]) = map_embeddings(&emb_path)?;
        ensure!(
            num_rows > 0 && dim > 0,
            "the gallery {} is empty (shape [{num_rows}, {dim}]): nothing to search",
            emb_path.display()
        );
        let paths = npy::read_string_array(&paths_path)?;
        ensure!(
            paths.len() == num_rows,
            "{} has {num_rows} rows but {} has {} entries",
            emb_path.display(),
            paths_path.display(),
            paths.len()
        );
        let index = if dir.join(INDEX_FILE).exists() {
            let index = AnnIndex::open(dir, view)?;
            let s = index.sidecar();
            ensure!(
                s.dim == dim,
                "the index {} is {}-dimensional but {} holds {dim}-dimensional rows: rebuild it \
                 with `reid index --gallery-data {}`",
                dir.join(INDEX_FILE).display(),
                s.dim,
                emb_path.display(),
                dir.display()
            );
            ensure!(
                s.rows <= num_rows,
                "the index {} holds {} rows but {} only {num_rows}: rebuild it with `reid index \
                 --gallery-data {}`",
                dir.join(INDEX_FILE).display(),
                s.rows,
                emb_path.display(),
                dir.display()
            );
            Some(index)
        } else {
            None
        };
        Ok(SavedGallery {
            dir: dir.to_path_buf(),
            rows,
            num_rows,
            dim,
            paths,
            index,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of gallery rows.
    pub fn len(&self) -> usize {
        self.num_rows
    }

    /// `true` for an empty gallery (never: [`open`](Self::open) refuses one).
    pub fn is_empty(&self) -> bool {
        self.num_rows == 0
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The embeddings, row-major.
    pub fn embeddings(&self) -> &[f32] {
        self.rows.as_slice()
    }

    /// The path (or identity) of every row.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The index, when the gallery has one.
    pub fn index(&self) -> Option<&AnnIndex> {
        self.index.as_ref()
    }

    /// The index, for changing its search beam.
    pub fn index_mut(&mut self) -> Option<&mut AnnIndex> {
        self.index.as_mut()
    }

    /// Builds (or rebuilds) the index over every row and saves it into the directory.
    pub fn build_index(
        &mut self,
        metric: SearchMetric,
        params: IndexParams,
        progress: bool,
    ) -> Result<PathBuf> {
        let index = AnnIndex::build(self.embeddings(), self.dim, metric, params, progress)?;
        let path = index.save(&self.dir)?;
        self.index = Some(index);
        Ok(path)
    }

    /// Adds the rows the index does not cover yet (embeddings appended since it was built) and
    /// saves it. Returns how many rows were added. The index must have been opened into memory
    /// (not as a view).
    pub fn update_index(&mut self, progress: bool) -> Result<usize> {
        let dim = self.dim;
        let data = self.rows.as_slice();
        let index = self
            .index
            .as_mut()
            .with_context(|| format!("gallery {} has no index to update", self.dir.display()))?;
        let start = index.len();
        index.add(&data[start * dim..], progress)?;
        index.save(&self.dir)?;
        Ok(self.num_rows - start)
    }

    /// Whether the index can serve `metric` (it ranks unit rows, or raw rows, the same way).
    pub fn index_fits(&self, metric: SearchMetric) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| i.sidecar().metric.unit_rows() == metric.unit_rows())
    }

    /// The `k` nearest rows of every query (row-major `queries`, `dim` wide), nearest first.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        metric: SearchMetric,
        mode: SearchMode,
    ) -> Result<Vec<Vec<Match>>> {
        ensure!(
            queries.len().is_multiple_of(self.dim),
            "the queries are not {}-dimensional like the gallery {}",
            self.dim,
            self.dir.join(EMBEDDINGS_FILE).display()
        );
        let use_index = match mode {
            SearchMode::Exact => false,
            SearchMode::Auto => self.index_fits(metric),
            SearchMode::Index => {
                let index = self.index.as_ref().with_context(|| {
                    format!(
                        "gallery {} has no index: build one with `reid index --gallery-data {}` \
                         (or search with --exact)",
                        self.dir.display(),
                        self.dir.display()
                    )
                })?;
                ensure!(
                    self.index_fits(metric),
                    "the index {} was built for the {} distance and cannot rank by {metric}: \
                     rebuild it, or search with --exact",
                    self.dir.join(INDEX_FILE).display(),
                    index.sidecar().metric
                );
                true
            }
        };
        if !use_index {
            return ExactSearch::new(self.embeddings(), self.dim, metric)?.search(queries, k);
        }
        let index = self.index.as_ref().expect("checked above");
        let covered = index.len();
        let k = k.min(self.num_rows);
        let data = self.embeddings();
        let dim = self.dim;
        let mut found: Vec<Vec<Match>> = queries
            .par_chunks(dim)
            .map(|q| index.search_rescored(q, k, data, metric))
            .collect::<Result<_>>()?;
        if covered < self.num_rows {
            // Rows appended after the index was built: exact search over them, merged in.
            let tail = ExactSearch::new(&data[covered * dim..], dim, metric)?.search(queries, k)?;
            for (f, t) in found.iter_mut().zip(tail) {
                let mut top = TopK::new(k);
                f.drain(..).for_each(|m| top.push(m));
                t.into_iter().for_each(|m| {
                    top.push(Match {
                        index: covered + m.index,
                        distance: m.distance,
                    })
                });
                *f = top.into_sorted();
            }
        }
        Ok(found)
    }
}

impl SavedGallery {
    /// [`search`](Self::search) followed by the post-processing of `post` (see
    /// [`PostProcess`]).
    pub fn search_post(
        &self,
        queries: &[f32],
        k: usize,
        metric: SearchMetric,
        mode: SearchMode,
        post: &PostProcess,
    ) -> Result<Vec<Vec<Match>>> {
        let dim = self.dim;
        let data = self.embeddings();
        let expanded;
        let queries = match &post.aqe {
            Some(aqe) if aqe.k > 1 => {
                let near = self.search(queries, aqe.k - 1, metric, mode)?;
                expanded = queries
                    .par_chunks(dim)
                    .zip(&near)
                    .flat_map_iter(|(q, found)| {
                        let mut acc = q.to_vec();
                        let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                        for m in found {
                            let g = &data[m.index * dim..(m.index + 1) * dim];
                            let gn = g.iter().map(|v| v * v).sum::<f32>().sqrt();
                            let dot: f32 = q.iter().zip(g).map(|(a, b)| a * b).sum();
                            let cos = dot / (qn.max(1e-12) * gn.max(1e-12));
                            let w = cos.powf(aqe.alpha);
                            acc.iter_mut().zip(g).for_each(|(a, &x)| *a += w * x);
                        }
                        let n = (found.len() + 1) as f32;
                        acc.into_iter().map(move |a| a / n)
                    })
                    .collect::<Vec<f32>>();
                &expanded[..]
            }
            _ => queries,
        };
        let Some(params) = &post.rerank else {
            return self.search(queries, k, metric, mode);
        };
        let n = k.max(post.rerank_candidates).min(self.num_rows);
        let candidates = self.search(queries, n, metric, mode)?;
        queries
            .par_chunks(dim)
            .zip(candidates)
            .map(|(q, found)| -> Result<Vec<Match>> {
                let rows: Vec<&[f32]> = found
                    .iter()
                    .map(|m| &data[m.index * dim..(m.index + 1) * dim])
                    .collect();
                let q_g: Vec<f32> = rows.iter().map(|g| metric.distance(q, g)).collect();
                let q_q = vec![metric.distance(q, q)];
                let g_g: Vec<f32> = rows
                    .iter()
                    .flat_map(|a| rows.iter().map(|b| metric.distance(a, b)))
                    .collect();
                let re = re_ranking(&q_g, &q_q, &g_g, 1, rows.len(), params)?;
                let mut top = TopK::new(k);
                for (m, d) in found.iter().zip(re) {
                    top.push(Match {
                        index: m.index,
                        distance: d,
                    });
                }
                Ok(top.into_sorted())
            })
            .collect()
    }
}

/// Recall@k of `approx` against `exact` (one ranked list per query): the mean over queries of
/// the fraction of the exact top-`k` rows found in the approximate top-`k`.
pub fn recall_at_k(approx: &[Vec<Match>], exact: &[Vec<Match>], k: usize) -> f64 {
    let per_query: Vec<f64> = approx
        .iter()
        .zip(exact)
        .filter(|(_, e)| !e.is_empty() && k > 0)
        .map(|(a, e)| {
            let truth: std::collections::HashSet<usize> =
                e.iter().take(k).map(|m| m.index).collect();
            let hits = a
                .iter()
                .take(k)
                .filter(|m| truth.contains(&m.index))
                .count();
            hits as f64 / truth.len() as f64
        })
        .collect();
    if per_query.is_empty() {
        return 1.0;
    }
    per_query.iter().sum::<f64>() / per_query.len() as f64
}
