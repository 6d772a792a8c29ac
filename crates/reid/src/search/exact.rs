//! Exact k-nearest-neighbour search: blocked matrix products with a streaming top-k.
//!
//! Queries are taken [`QUERY_BLOCK`] at a time; the gallery is cut into blocks of
//! [`ExactSearch::block_rows`] rows that rayon spreads over the cores. For each (query block,
//! gallery block) pair one SGEMM of the `gemm` crate (AVX2 / AVX-512 kernels picked at run
//! time) gives the dot products, which become distances through the rows' norms
//! ([`SearchMetric::distance_from_dot`]) and go straight into one [`TopK`] per query; only the
//! `k` best per query and per worker survive a block. Memory is therefore the gallery itself
//! (borrowed, e.g. a memory-mapped `embeddings.npy`), its norms (4 bytes a row) and one
//! `QUERY_BLOCK × block_rows` f32 buffer per worker, at any gallery size.

use anyhow::{Result, ensure};
use rayon::prelude::*;

use super::{Match, SearchMetric, row_norms};

/// Queries per matrix product.
pub const QUERY_BLOCK: usize = 256;

/// The `k` smallest [`Match`]es of a stream ([`Match::order`]: distance, then gallery row).
///
/// Pushes are amortised O(1): candidates accumulate in a buffer that is cut back to the `k`
/// best (a linear-time selection) whenever it holds `2k`, and anything worse than the current
/// `k`-th best is dropped on arrival.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    buf: Vec<Match>,
    bound: Option<Match>,
}

impl TopK {
    /// An empty top-`k` (`usize::MAX` keeps everything).
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            buf: Vec::new(),
            bound: None,
        }
    }

    /// Offers one candidate.
    #[inline]
    pub fn push(&mut self, m: Match) {
        if self.k == 0 {
            return;
        }
        if let Some(bound) = &self.bound
            && Match::order(&m, bound) != std::cmp::Ordering::Less
        {
            return;
        }
        self.buf.push(m);
        if self.buf.len() >= self.k.saturating_mul(2).max(64) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, Match::order);
            self.buf.truncate(self.k);
            self.bound = self.buf.iter().copied().max_by(Match::order);
        }
    }

    /// Adds every candidate of `other`.
    pub fn merge(&mut self, other: TopK) {
        for m in other.buf {
            self.push(m);
        }
    }

    /// The `k` best, best first.
    pub fn into_sorted(mut self) -> Vec<Match> {
        self.prune();
        self.buf.sort_unstable_by(Match::order);
        self.buf
    }
}

/// Brute-force search over a row-major gallery (see the module docs).
pub struct ExactSearch<'a> {
    gallery: &'a [f32],
    dim: usize,
    norms: Vec<f32>,
    metric: SearchMetric,
    block_rows: usize,
}

impl<'a> ExactSearch<'a> {
    /// Prepares `gallery` (`rows · dim` values, row-major; at least one row): computes the row
    /// norms once.
    pub fn new(gallery: &'a [f32], dim: usize, metric: SearchMetric) -> Result<Self> {
        ensure!(dim > 0, "exact search: the embedding dimension is 0");
        ensure!(
            gallery.len().is_multiple_of(dim),
            "exact search: {} values are not a whole number of {dim}-dimensional rows",
            gallery.len()
        );
        ensure!(!gallery.is_empty(), "exact search: the gallery is empty");
        Ok(ExactSearch {
            gallery,
            dim,
            norms: row_norms(gallery, dim),
            metric,
            block_rows: 2048,
        })
    }

    /// Gallery rows per block (default 2048).
    pub fn block_rows(mut self, rows: usize) -> Self {
        self.block_rows = rows.max(1);
        self
    }

    /// Number of gallery rows.
    pub fn rows(&self) -> usize {
        self.norms.len()
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The metric.
    pub fn metric(&self) -> SearchMetric {
        self.metric
    }

    /// The `k` nearest gallery rows of every query (`queries`: row-major, `dim` wide), nearest
    /// first; ties keep gallery order. `k` larger than the gallery keeps every row.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Match>>> {
        self.search_filtered(queries, k, None)
    }

    /// [`search`](Self::search) keeping only the gallery rows `g` with `keep(q, g)` (`q` the
    /// query's row in `queries`), so that every query gets `k` kept rows when there are that
    /// many.
    pub fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(usize, usize) -> bool + Sync)>,
    ) -> Result<Vec<Vec<Match>>> {
        ensure!(
            queries.len().is_multiple_of(self.dim),
            "exact search: the queries are not {}-dimensional rows ({} values)",
            self.dim,
            queries.len()
        );
        let k = k.min(self.rows());
        let mut out = Vec::with_capacity(queries.len() / self.dim);
        for (b, block) in queries.chunks(QUERY_BLOCK * self.dim).enumerate() {
            out.extend(self.search_block(block, b * QUERY_BLOCK, k, keep));
        }
        Ok(out)
    }

    fn search_block(
        &self,
        queries: &[f32],
        first: usize,
        k: usize,
        keep: Option<&(dyn Fn(usize, usize) -> bool + Sync)>,
    ) -> Vec<Vec<Match>> {
        let dim = self.dim;
        let nq = queries.len() / dim;
        let q_norms = row_norms(queries, dim);
        let num_g = self.rows();
        let blocks: Vec<usize> = (0..num_g).step_by(self.block_rows).collect();
        let tops = blocks
            .into_par_iter()
            .fold(
                || (vec![TopK::new(k); nq], Vec::<f32>::new()),
                |(mut tops, mut dots), start| {
                    let end = (start + self.block_rows).min(num_g);
                    let gb = end - start;
                    dots.resize(nq * gb, 0.0);
                    dot_products(
                        queries,
                        &self.gallery[start * dim..end * dim],
                        dim,
                        &mut dots,
                    );
                    for (qi, (row, top)) in dots.chunks(gb).zip(tops.iter_mut()).enumerate() {
                        for (j, &dot) in row.iter().enumerate() {
                            let g = start + j;
                            if keep.is_some_and(|f| !f(first + qi, g)) {
                                continue;
                            }
                            let distance =
                                self.metric
                                    .distance_from_dot(dot, q_norms[qi], self.norms[g]);
                            top.push(Match { index: g, distance });
                        }
                    }
                    (tops, dots)
                },
            )
            .map(|(tops, _)| tops)
            .reduce(
                || vec![TopK::new(k); nq],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        x.merge(y);
                    }
                    a
                },
            );
        tops.into_iter().map(TopK::into_sorted).collect()
    }
}

/// `out[i · gb + j] = q_i · g_j` for the row-major `queries` (`nq × dim`) and `gallery`
/// (`gb × dim`), one single-threaded SGEMM (the caller parallelises over blocks).
pub fn dot_products(queries: &[f32], gallery: &[f32], dim: usize, out: &mut [f32]) {
    let nq = queries.len() / dim;
    let gb = gallery.len() / dim;
    assert_eq!(out.len(), nq * gb, "dot_products: output buffer size");
    assert!(
        queries.len() == nq * dim && gallery.len() == gb * dim,
        "dot_products: ragged rows"
    );
    if nq == 0 || gb == 0 {
        return;
    }
    // SAFETY: the three matrices are exactly `nq × gb`, `nq × dim` and `dim × gb` with the
    // strides given (checked above), and `out` is not aliased.
    unsafe {
        gemm::gemm(
            nq,
            gb,
            dim,
            out.as_mut_ptr(),
            1,
            gb as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            gallery.as_ptr(),
            dim as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
