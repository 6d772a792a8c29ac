//! Post-processing of a ranking that re-id toolboxes ship, unknown to the reference:
//!
//! * [`re_ranking`]: k-reciprocal re-ranking (Zhong et al., "Re-ranking Person
//!   Re-identification with k-reciprocal Encoding", CVPR 2017), the algorithm of the paper
//!   authors' `re_ranking` that torchreid ships as `torchreid.utils.rerank.re_ranking`;
//!   parity with it is tested on fixtures it generated (`tools/parity/reid_rerank_fixtures.py`);
//! * [`average_query_expansion`]: α-weighted average query expansion (αQE, Radenović et al.),
//!   as fast-reid's `TEST.AQE` applies it to query and gallery features alike.
//!
//! Both are behind `TEST.*` keys (`TEST.RERANK`, `TEST.RERANK_K1`, `TEST.RERANK_K2`,
//! `TEST.RERANK_LAMBDA`, `TEST.AQE`, `TEST.AQE_K`, `TEST.AQE_ALPHA`) and compose with the
//! centroid modes: they act on whatever gallery a protocol ranks (images or centroids).
//!
//! **The re-ranking algorithm** on the `(Q+G) × (Q+G)` matrix `D` of original distances
//! (query and gallery together):
//!
//! 1. `O[i, j] = D[i, j]² / max_j D[i, j]²` (each row scaled by its largest entry);
//! 2. `R(i, k)`: the `k` first entries of row `i`'s ascending order, `i` itself first;
//! 3. the k-reciprocal set of `i`: the `j ∈ R(i, k1+1)` with `i ∈ R(j, k1+1)`; it is expanded
//!    by the half-size (`round(k1/2)`, half to even) reciprocal set of each member whose
//!    overlap with it is more than 2/3 of its own size;
//! 4. `V[i, j] = exp(−O[i, j]) / Σ exp(−O[i, ·])` over the expanded set (0 elsewhere), then,
//!    when `k2 > 1`, `V[i] ← mean of V[j]` over `j ∈ R(i, k2)` (local query expansion);
//! 5. Jaccard distance `J[q, g] = 1 − m / (2 − m)` with `m = Σ_l min(V[q, l], V[g, l])`;
//! 6. the result is `(1 − λ)·J + λ·O` on the query × gallery block.
//!
//! Only the `k1 + 1` (or `k2`) first entries of each row's order are kept, V is sparse, and the
//! Jaccard sums run over an inverted index, so memory is `O((Q+G)·k1 + Q·(Q+G))` and
//! the distance rows are computed (twice) in blocks; time is dominated by the `(Q+G)²`
//! distances.

use anyhow::{Result, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::retrieval::{FeatureMatrix, RetrievalOptions, distance_matrix};
use crate::search::exact::dot_products;

/// k-reciprocal re-ranking parameters (`TEST.RERANK_K1`, `TEST.RERANK_K2`,
/// `TEST.RERANK_LAMBDA`; the usual defaults 20, 6, 0.3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RerankParams {
    /// Size of the k-reciprocal neighbourhoods.
    pub k1: usize,
    /// Size of the local query expansion of the encodings (1 = none).
    pub k2: usize,
    /// Weight of the original distance in the result (`1 − λ` for the Jaccard distance).
    pub lambda: f32,
}

impl Default for RerankParams {
    fn default() -> Self {
        RerankParams {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

/// Average query expansion parameters (`TEST.AQE_K`, `TEST.AQE_ALPHA`; fast-reid's defaults
/// 5 and 3.0, one round).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AqeParams {
    /// Neighbours averaged (the row itself included, as its own nearest neighbour).
    pub k: usize,
    /// Exponent of the cosine-similarity weights.
    pub alpha: f32,
}

impl Default for AqeParams {
    fn default() -> Self {
        AqeParams { k: 5, alpha: 3.0 }
    }
}

/// NumPy's `np.around` (half to even) of `x / 2`, as `int`.
fn half_k(k1: usize) -> usize {
    let h = k1 as f64 / 2.0;
    let r = h.round();
    if (h - h.trunc() - 0.5).abs() < f64::EPSILON && (r as usize) % 2 == 1 {
        r as usize - 1
    } else {
        r as usize
    }
}

/// The `n` first entries of the ascending order of `row` (ties by index).
fn first_n(row: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(row.len());
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let order = |a: &u32, b: &u32| row[*a as usize].total_cmp(&row[*b as usize]).then(a.cmp(b));
    if n < idx.len() && n > 0 {
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx
}

/// Rows of the scaled distance `O` (step 1) in blocks: `rows(start, end, out)` must fill
/// `out` (`(end − start) × N`, row-major) with the **original** distances of rows
/// `start..end` to all `N = Q + G` items (query first).
type RowFn<'a> = dyn Fn(usize, usize, &mut [f32]) + Sync + 'a;

const ROW_BLOCK: usize = 128;

fn scaled_blocks(n: usize, rows: &RowFn<'_>, mut each: impl FnMut(usize, &[f32]) + Send) {
    let starts: Vec<usize> = (0..n).step_by(ROW_BLOCK).collect();
    // Blocks are computed in parallel, then handed over in order.
    for group in starts.chunks(rayon::current_num_threads().max(1) * 2) {
        let blocks: Vec<(usize, Vec<f32>)> = group
            .par_iter()
            .map(|&start| {
                let end = (start + ROW_BLOCK).min(n);
                let mut block = vec![0f32; (end - start) * n];
                rows(start, end, &mut block);
                for row in block.chunks_mut(n) {
                    row.iter_mut().for_each(|d| *d *= *d);
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &d| m.max(d));
                    row.iter_mut().for_each(|d| *d /= max);
                }
                (start, block)
            })
            .collect();
        for (start, block) in blocks {
            for (i, row) in block.chunks(n).enumerate() {
                each(start + i, row);
            }
        }
    }
}

/// k-reciprocal re-ranking on distance rows given by `rows` (see [`RowFn`]); returns the
/// re-ranked `Q × G` distances, row-major.
pub fn re_rank_rows(
    num_query: usize,
    num_gallery: usize,
    params: &RerankParams,
    rows: &RowFn<'_>,
) -> Result<Vec<f32>> {
    ensure!(
        params.k1 >= 1 && params.k2 >= 1,
        "re-ranking: k1 and k2 must be at least 1 (TEST.RERANK_K1 {}, TEST.RERANK_K2 {})",
        params.k1,
        params.k2
    );
    ensure!(
        (0.0..=1.0).contains(&params.lambda),
        "re-ranking: lambda must be in [0, 1] (TEST.RERANK_LAMBDA {})",
        params.lambda
    );
    ensure!(num_gallery > 0, "re-ranking: empty gallery");
    let n = num_query + num_gallery;
    let keep = (params.k1 + 1).max(params.k2);
    // Pass 1: the order prefixes of every row, and the query rows of O.
    let mut rank: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut query_rows = vec![0f32; num_query * n];
    scaled_blocks(n, rows, |i, row| {
        rank[i] = first_n(row, keep);
        if i < num_query {
            query_rows[i * n..(i + 1) * n].copy_from_slice(row);
        }
    });
    let k1 = params.k1 + 1;
    let half = half_k(params.k1) + 1;
    let reciprocal = |i: usize, k: usize| -> Vec<u32> {
        rank[i][..k.min(rank[i].len())]
            .iter()
            .copied()
            .filter(|&f| rank[f as usize][..k.min(rank[f as usize].len())].contains(&(i as u32)))
            .collect()
    };
    let expansions: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let base = reciprocal(i, k1);
            let mut expanded = base.clone();
            for &c in &base {
                let cand = reciprocal(c as usize, half);
                let mut uniq = cand.clone();
                uniq.sort_unstable();
                uniq.dedup();
                let overlap = uniq.iter().filter(|x| base.contains(x)).count();
                if overlap as f64 > 2.0 / 3.0 * cand.len() as f64 {
                    expanded.extend(cand);
                }
            }
            expanded.sort_unstable();
            expanded.dedup();
            expanded
        })
        .collect();
    // Pass 2: the weights, from the rows of O again.
    let mut v: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    scaled_blocks(n, rows, |i, row| {
        let weights: Vec<f32> = expansions[i]
            .iter()
            .map(|&j| (-row[j as usize]).exp())
            .collect();
        let sum: f32 = weights.iter().sum();
        v[i] = expansions[i]
            .iter()
            .zip(weights)
            .map(|(&j, w)| (j, w / sum))
            .collect();
    });
    if params.k2 != 1 {
        let k2 = params.k2;
        v = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut acc: std::collections::BTreeMap<u32, f32> = Default::default();
                for &r in &rank[i][..k2.min(rank[i].len())] {
                    for &(j, w) in &v[r as usize] {
                        *acc.entry(j).or_insert(0.0) += w;
                    }
                }
                acc.into_iter()
                    .map(|(j, w)| (j, w / k2 as f32))
                    .filter(|&(_, w)| w != 0.0)
                    .collect()
            })
            .collect();
    }
    // Inverted index over the gallery rows: column l → (gallery row, V value).
    let mut inverted: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for (g, row) in v.iter().enumerate().skip(num_query) {
        for &(l, w) in row {
            inverted[l as usize].push(((g - num_query) as u32, w));
        }
    }
    let lambda = params.lambda;
    let out: Vec<f32> = (0..num_query)
        .into_par_iter()
        .flat_map_iter(|q| {
            let mut min_sum = vec![0f32; num_gallery];
            for &(l, w) in &v[q] {
                for &(g, wg) in &inverted[l as usize] {
                    min_sum[g as usize] += w.min(wg);
                }
            }
            let original = &query_rows[q * n + num_query..(q + 1) * n];
            min_sum
                .into_iter()
                .zip(original)
                .map(move |(m, &o)| (1.0 - m / (2.0 - m)) * (1.0 - lambda) + o * lambda)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(out)
}

/// k-reciprocal re-ranking of the row-major distance matrices `q_g` (`Q × G`), `q_q`
/// (`Q × Q`) and `g_g` (`G × G`), as torchreid's `re_ranking(q_g_dist, q_q_dist, g_g_dist,
/// k1, k2, lambda_value)`. Returns the re-ranked `Q × G` distances.
pub fn re_ranking(
    q_g: &[f32],
    q_q: &[f32],
    g_g: &[f32],
    num_query: usize,
    num_gallery: usize,
    params: &RerankParams,
) -> Result<Vec<f32>> {
    let (nq, ng) = (num_query, num_gallery);
    ensure!(
        q_g.len() == nq * ng && q_q.len() == nq * nq && g_g.len() == ng * ng,
        "re-ranking: distance matrices of {} / {} / {} entries for {nq} queries and {ng} gallery \
         entries",
        q_g.len(),
        q_q.len(),
        g_g.len()
    );
    let n = nq + ng;
    let rows = |start: usize, end: usize, out: &mut [f32]| {
        for (i, row) in (start..end).zip(out.chunks_mut(n)) {
            if i < nq {
                row[..nq].copy_from_slice(&q_q[i * nq..(i + 1) * nq]);
                row[nq..].copy_from_slice(&q_g[i * ng..(i + 1) * ng]);
            } else {
                let g = i - nq;
                for (q, d) in row[..nq].iter_mut().enumerate() {
                    *d = q_g[q * ng + g];
                }
                row[nq..].copy_from_slice(&g_g[g * ng..(g + 1) * ng]);
            }
        }
    };
    re_rank_rows(nq, ng, params, &rows)
}

/// k-reciprocal re-ranking of `query` against `gallery` under evaluation's distance `opts`
/// (normalisation and `SOLVER.DISTANCE_FUNC`); returns the re-ranked `Q × G` distances.
pub fn re_rank_features(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    opts: &RetrievalOptions,
    params: &RerankParams,
) -> Result<Vec<f32>> {
    ensure!(
        query.dim() == gallery.dim(),
        "re-ranking: query embeddings have dimension {} but gallery embeddings {}",
        query.dim(),
        gallery.dim()
    );
    let dim = query.dim();
    let mut all = query.as_slice().to_vec();
    all.extend_from_slice(gallery.as_slice());
    let all = FeatureMatrix::new(all, dim)?;
    let n = all.rows();
    let rows = |start: usize, end: usize, out: &mut [f32]| {
        let block = FeatureMatrix::new(all.as_slice()[start * dim..end * dim].to_vec(), dim)
            .expect("whole rows");
        let d = distance_matrix(&block, &all, opts).expect("same dimension, non-empty");
        out.copy_from_slice(&d[..(end - start) * n]);
    };
    re_rank_rows(query.rows(), gallery.rows(), params, &rows)
}

/// α-weighted average query expansion of query and gallery together (fast-reid's `aqe`, one
/// round): every row becomes the mean, over its `k` nearest rows of `[query; gallery]` by
/// cosine similarity (itself included), of those rows weighted by `similarity^α`. Returns
/// the expanded query and gallery (not normalised; evaluation normalises as configured).
pub fn average_query_expansion(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    params: &AqeParams,
) -> Result<(FeatureMatrix, FeatureMatrix)> {
    ensure!(
        params.k >= 1,
        "query expansion: TEST.AQE_K must be at least 1"
    );
    ensure!(
        query.dim() == gallery.dim(),
        "query expansion: query embeddings have dimension {} but gallery embeddings {}",
        query.dim(),
        gallery.dim()
    );
    let dim = query.dim();
    let mut raw = query.as_slice().to_vec();
    raw.extend_from_slice(gallery.as_slice());
    let all = FeatureMatrix::new(raw, dim)?;
    let unit = all.l2_normalized();
    let n = all.rows();
    let k = params.k.min(n);
    let expanded: Vec<f32> = (0..n)
        .step_by(ROW_BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(|start| {
            let end = (start + ROW_BLOCK).min(n);
            let mut sims = vec![0f32; (end - start) * n];
            dot_products(
                &unit.as_slice()[start * dim..end * dim],
                unit.as_slice(),
                dim,
                &mut sims,
            );
            let mut out = vec![0f32; (end - start) * dim];
            for (row, acc) in sims.chunks(n).zip(out.chunks_mut(dim)) {
                let neg: Vec<f32> = row.iter().map(|s| -s).collect();
                for j in first_n(&neg, k) {
                    let w = row[j as usize].powf(params.alpha);
                    for (a, &x) in acc.iter_mut().zip(all.row(j as usize)) {
                        *a += x * w;
                    }
                }
                acc.iter_mut().for_each(|a| *a /= k as f32);
            }
            out
        })
        .collect();
    let (q, g) = expanded.split_at(query.rows() * dim);
    Ok((
        FeatureMatrix::new(q.to_vec(), dim)?,
        FeatureMatrix::new(g.to_vec(), dim)?,
    ))
}
