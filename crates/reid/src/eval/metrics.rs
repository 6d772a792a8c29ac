//! CMC / mAP exactly as the reference's
//! [`utils/eval_reid.py::eval_func`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/utils/eval_reid.py#L25).
//!
//! Per query, over the gallery ordered by ascending distance:
//!
//! 1. remove the entries with the query's pid **and** camera (with camera *sets*, i.e. the
//!    reference's `respect_camids=True`: the query camera ∈ the entry's set);
//! 2. `matches = (g_pid == q_pid)` over the kept ordering; a query without any match is
//!    **skipped** (it counts in neither CMC nor mAP);
//! 3. CMC = cumsum of matches clipped at 1, first `max_rank` entries (fewer when the gallery is
//!    smaller than `max_rank`);
//! 4. AP = `(1/num_rel) · Σ_{k: match_k} (#matches in the top k) / k`;
//! 5. top-k flags (k ∈ {1, 5, 10, 20, 50}): any match in the first k kept entries.
//!
//! mAP is the mean AP over valid queries, CMC and top-k the mean over valid queries.
//!
//! Only two numbers per query are needed for all of that: the 1-based rank of its first match
//! and its AP. [`query_outcome_from_distances`] gets both from a distance row without sorting
//! it: the matches are sorted, and every kept non-match is placed among them by binary search,
//! which gives the exact position of every match in the full ordering in `O(G log M)`.
//!
//! **Ties.** The ordering is a *stable* sort by distance: equal distances keep gallery order
//! (lower index first), and NaN sorts after everything (`f32::total_cmp`). The reference uses
//! NumPy's default quicksort, whose order among ties is unspecified, so on exact ties its
//! numbers may differ from these (and from run to run of its own).

use anyhow::{Result, bail, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// The ranks reported as `Top-k` / `Rank-k`.
pub const TOP_K: [usize; 5] = [1, 5, 10, 20, 50];

/// `max_rank` of the reference.
pub const DEFAULT_MAX_RANK: usize = 50;

/// Camera ids of the gallery entries.
#[derive(Debug, Clone, Copy)]
pub enum GalleryCamids<'a> {
    /// One camera per gallery image (`respect_camids=False`): an entry is removed when its pid
    /// and camera both equal the query's.
    Single(&'a [i64]),
    /// A camera set per gallery entry (centroid mode B, `respect_camids=True`): an entry is
    /// removed when its pid equals the query's and the query camera is in its set.
    Sets(&'a [Vec<i64>]),
}

impl GalleryCamids<'_> {
    /// Number of gallery entries described.
    pub fn len(&self) -> usize {
        match self {
            GalleryCamids::Single(c) => c.len(),
            GalleryCamids::Sets(c) => c.len(),
        }
    }

    /// `true` when no entry is described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether gallery entry `g` is seen from camera `cam`.
    pub fn contains(&self, g: usize, cam: i64) -> bool {
        match self {
            GalleryCamids::Single(c) => c[g] == cam,
            GalleryCamids::Sets(c) => c[g].contains(&cam),
        }
    }

    /// The reference's `respect_camids` flag.
    pub fn respect_camids(&self) -> bool {
        matches!(self, GalleryCamids::Sets(_))
    }
}

/// Identity and camera labels of a query/gallery evaluation.
#[derive(Debug, Clone, Copy)]
pub struct EvalLabels<'a> {
    /// Query pids.
    pub q_pids: &'a [i64],
    /// Query cameras.
    pub q_camids: &'a [i64],
    /// Gallery pids.
    pub g_pids: &'a [i64],
    /// Gallery cameras (single or sets).
    pub g_camids: GalleryCamids<'a>,
}

impl EvalLabels<'_> {
    /// Number of queries.
    pub fn num_query(&self) -> usize {
        self.q_pids.len()
    }

    /// Number of gallery entries.
    pub fn num_gallery(&self) -> usize {
        self.g_pids.len()
    }

    /// Checks that the label arrays agree in length and the gallery is not empty.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.q_camids.len() == self.q_pids.len(),
            "evaluation labels: {} query pids but {} query camids",
            self.q_pids.len(),
            self.q_camids.len()
        );
        ensure!(
            self.g_camids.len() == self.g_pids.len(),
            "evaluation labels: {} gallery pids but {} gallery camids",
            self.g_pids.len(),
            self.g_camids.len()
        );
        ensure!(!self.g_pids.is_empty(), "evaluation labels: empty gallery");
        Ok(())
    }

    /// Whether gallery entry `g` is removed from query `q`'s ordering (same pid, same camera).
    pub fn is_removed(&self, q: usize, g: usize) -> bool {
        self.g_pids[g] == self.q_pids[q] && self.g_camids.contains(g, self.q_camids[q])
    }

    /// Whether gallery entry `g` is a (kept or removed) match of query `q`.
    pub fn same_pid(&self, q: usize, g: usize) -> bool {
        self.g_pids[g] == self.q_pids[q]
    }
}

/// What one valid query contributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryOutcome {
    /// 1-based position of the first match in the kept ordering.
    pub first_match_rank: usize,
    /// Average precision.
    pub average_precision: f64,
    /// Number of kept matches (`num_rel`).
    pub num_relevant: usize,
}

/// Evaluation metrics (fractions in `[0, 1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean average precision over valid queries.
    #[serde(rename = "mAP")]
    pub map: f64,
    /// Rank-1.
    pub top1: f64,
    /// Rank-5.
    pub top5: f64,
    /// Rank-10.
    pub top10: f64,
    /// Rank-20.
    pub top20: f64,
    /// Rank-50.
    pub top50: f64,
    /// CMC curve, `cmc[r]` = fraction of valid queries with a match in the first `r + 1`.
    pub cmc: Vec<f64>,
    /// Number of queries given.
    pub num_query: usize,
    /// Number of queries with at least one valid match (the others are skipped).
    pub num_valid_query: usize,
    /// Number of gallery entries (images or centroids).
    pub num_gallery: usize,
}

impl EvalMetrics {
    /// The top-k value for one of [`TOP_K`].
    pub fn top_k(&self, k: usize) -> Option<f64> {
        match k {
            1 => Some(self.top1),
            5 => Some(self.top5),
            10 => Some(self.top10),
            20 => Some(self.top20),
            50 => Some(self.top50),
            _ => None,
        }
    }
}

/// The outcome of query `q` given its gallery ordering (a permutation of `0..G`).
///
/// This follows the reference's `eval_func` literally (remove, match, cumulative precision).
/// `None` when the query has no kept match. Errors if `order` is not a permutation of the gallery indices.
pub fn query_outcome_from_ranking(
    order: &[usize],
    q: usize,
    labels: &EvalLabels<'_>,
) -> Result<Option<QueryOutcome>> {
    let num_g = labels.num_gallery();
    ensure!(
        order.len() == num_g,
        "ranking of query {q} has {} entries for a gallery of {num_g}",
        order.len()
    );
    let mut seen = vec![false; num_g];
    for &g in order {
        ensure!(
            g < num_g && !std::mem::replace(&mut seen[g], true),
            "ranking of query {q} is not a permutation of 0..{num_g} (entry {g})"
        );
    }
    let mut kept_position = 0usize;
    let mut hits = 0usize;
    let mut first = None;
    let mut precision_sum = 0f64;
    for &g in order {
        if labels.is_removed(q, g) {
            continue;
        }
        kept_position += 1;
        if labels.same_pid(q, g) {
            hits += 1;
            first.get_or_insert(kept_position);
            precision_sum += hits as f64 / kept_position as f64;
        }
    }
    Ok(first.map(|first_match_rank| QueryOutcome {
        first_match_rank,
        average_precision: precision_sum / hits as f64,
        num_relevant: hits,
    }))
}

/// Orders `(distance, index)` keys: ascending distance, ties by index, NaN last.
fn key_cmp(a: (f32, usize), b: (f32, usize)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// The outcome of query `q` from its distance row to every gallery entry (length G).
///
/// Equal to [`query_outcome_from_ranking`] on the stable ascending argsort of `row`, without
/// sorting the row. `None` when the query has no kept match.
pub fn query_outcome_from_distances(
    row: &[f32],
    q: usize,
    labels: &EvalLabels<'_>,
) -> Option<QueryOutcome> {
    let q_pid = labels.q_pids[q];
    let mut matches: Vec<(f32, usize)> = row
        .iter()
        .enumerate()
        .filter(|&(g, _)| labels.g_pids[g] == q_pid && !labels.is_removed(q, g))
        .map(|(g, &d)| (d, g))
        .collect();
    if matches.is_empty() {
        return None;
    }
    matches.sort_unstable_by(|&a, &b| key_cmp(a, b));
    // before[j] = number of kept non-matches ordered between match j−1 and match j.
    let mut before = vec![0usize; matches.len() + 1];
    for (g, &d) in row.iter().enumerate() {
        if labels.g_pids[g] == q_pid {
            continue; // a match or a removed entry
        }
        let slot = matches.partition_point(|&m| key_cmp(m, (d, g)) == Ordering::Less);
        before[slot] += 1;
    }
    let mut non_matches_ahead = 0usize;
    let mut precision_sum = 0f64;
    let mut first_match_rank = 0usize;
    for (j, &gap) in before[..matches.len()].iter().enumerate() {
        non_matches_ahead += gap;
        let rank = j + 1 + non_matches_ahead;
        if j == 0 {
            first_match_rank = rank;
        }
        precision_sum += (j + 1) as f64 / rank as f64;
    }
    Some(QueryOutcome {
        first_match_rank,
        average_precision: precision_sum / matches.len() as f64,
        num_relevant: matches.len(),
    })
}

/// CMC, mAP and top-k over the per-query outcomes (`None` = skipped query).
///
/// The CMC has `min(max_rank, num_gallery)` entries. Errors when no query is valid (the
/// reference asserts "all query identities do not appear in gallery") or `max_rank == 0`.
pub fn aggregate(
    outcomes: &[Option<QueryOutcome>],
    num_gallery: usize,
    max_rank: usize,
) -> Result<EvalMetrics> {
    ensure!(max_rank > 0, "evaluation: max_rank must be positive");
    let valid: Vec<&QueryOutcome> = outcomes.iter().flatten().collect();
    if valid.is_empty() {
        bail!(
            "evaluation: none of the {} queries has a valid match in the gallery of {num_gallery} \
             (all query identities are missing or removed by the same-camera rule)",
            outcomes.len()
        );
    }
    let n = valid.len() as f64;
    let hit_rate = |k: usize| valid.iter().filter(|o| o.first_match_rank <= k).count() as f64 / n;
    let ranks = max_rank.min(num_gallery);
    Ok(EvalMetrics {
        map: valid.iter().map(|o| o.average_precision).sum::<f64>() / n,
        top1: hit_rate(1),
        top5: hit_rate(5),
        top10: hit_rate(10),
        top20: hit_rate(20),
        top50: hit_rate(50),
        cmc: (1..=ranks).map(hit_rate).collect(),
        num_query: outcomes.len(),
        num_valid_query: valid.len(),
        num_gallery,
    })
}

/// `eval_func` on a row-major `Q × G` distance matrix (rows evaluated in parallel).
pub fn eval_func(distmat: &[f32], labels: &EvalLabels<'_>, max_rank: usize) -> Result<EvalMetrics> {
    labels.validate()?;
    let (num_q, num_g) = (labels.num_query(), labels.num_gallery());
    ensure!(
        distmat.len() == num_q * num_g,
        "eval_func: distance matrix has {} entries, expected {num_q} × {num_g}",
        distmat.len()
    );
    let outcomes: Vec<Option<QueryOutcome>> = distmat
        .par_chunks(num_g)
        .enumerate()
        .map(|(q, row)| query_outcome_from_distances(row, q, labels))
        .collect();
    aggregate(&outcomes, num_g, max_rank)
}

/// `eval_func` on explicit per-query gallery orderings (each a permutation of `0..G`).
pub fn eval_rankings(
    rankings: &[Vec<usize>],
    labels: &EvalLabels<'_>,
    max_rank: usize,
) -> Result<EvalMetrics> {
    labels.validate()?;
    ensure!(
        rankings.len() == labels.num_query(),
        "eval_rankings: {} rankings for {} queries",
        rankings.len(),
        labels.num_query()
    );
    let outcomes = rankings
        .iter()
        .enumerate()
        .map(|(q, order)| query_outcome_from_ranking(order, q, labels))
        .collect::<Result<Vec<_>>>()?;
    aggregate(&outcomes, labels.num_gallery(), max_rank)
}

/// Stable ascending argsort of a distance row (ties by index, NaN last).
pub fn argsort(row: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
    order
}
