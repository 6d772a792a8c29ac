//! Index plumbing shared by every task: stratified splits, k-fold, mini-batch order.
//!
//! The splits follow scikit-learn's algorithms (`train_test_split(stratify=...)` through
//! `StratifiedShuffleSplit`, and `StratifiedKFold(shuffle=True)`) in how many samples of each class
//! land on each side; which samples is drawn from kiln's own seeded generator, so indices are
//! reproducible for a seed but not identical to scikit-learn's.

use anyhow::{Result, bail};
use rand::Rng;
use rand::seq::SliceRandom;

fn class_members(labels: &[usize]) -> Vec<Vec<usize>> {
    let n_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut members = vec![Vec::new(); n_classes];
    for (i, &y) in labels.iter().enumerate() {
        members[y].push(i);
    }
    members
}

/// Splits `labels` into (train, test) index lists with `ceil(test_fraction·n)` test samples,
/// keeping class proportions. Both index lists are sorted.
pub fn stratified_split(
    labels: &[usize],
    test_fraction: f64,
    rng: &mut impl Rng,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = labels.len();
    if !(0.0..1.0).contains(&test_fraction) || test_fraction == 0.0 {
        bail!("test fraction must be in (0, 1), got {test_fraction}");
    }
    let members = class_members(labels);
    let present: Vec<&Vec<usize>> = members.iter().filter(|m| !m.is_empty()).collect();
    if let Some(small) = present.iter().map(|m| m.len()).min()
        && small < 2
    {
        bail!(
            "the least populated class has only {small} member; a stratified split needs at \
             least 2 per class"
        );
    }
    let n_test = (test_fraction * n as f64).ceil() as usize;
    let n_train = n - n_test;
    if n_test < present.len() || n_train < present.len() {
        bail!(
            "a stratified split of {n} samples into {n_train}/{n_test} cannot hold all {} classes \
             on both sides",
            present.len()
        );
    }
    let test_counts = approximate_mode(&members, n_test, rng);
    let mut train = Vec::with_capacity(n_train);
    let mut test = Vec::with_capacity(n_test);
    for (class, idx) in members.iter().enumerate() {
        let mut idx = idx.clone();
        idx.shuffle(rng);
        let k = test_counts[class];
        test.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// Allocates `total` draws across classes proportionally to their sizes, giving the remainder
/// to the classes with the largest fractional parts (scikit-learn's `_approximate_mode`).
fn approximate_mode(members: &[Vec<usize>], total: usize, rng: &mut impl Rng) -> Vec<usize> {
    let n: usize = members.iter().map(Vec::len).sum();
    let exact: Vec<f64> = members
        .iter()
        .map(|m| total as f64 * m.len() as f64 / n as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut remaining = total - counts.iter().sum::<usize>();
    // Random tie-breaking among equal fractional parts.
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.shuffle(rng);
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.partial_cmp(&fa).unwrap_or(std::cmp::Ordering::Equal)
    });
    for &c in &order {
        if remaining == 0 {
            break;
        }
        if counts[c] < members[c].len() {
            counts[c] += 1;
            remaining -= 1;
        }
    }
    counts
}

/// Stratified k-fold with shuffling: returns `k` (train, validation) pairs whose validation sets
/// partition `0..n`. Per-class fold sizes follow scikit-learn's `StratifiedKFold`.
pub fn stratified_kfold(
    labels: &[usize],
    k: usize,
    rng: &mut impl Rng,
) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    if k < 2 {
        bail!("k-fold needs at least 2 folds, got {k}");
    }
    let members = class_members(labels);
    let sizes: Vec<usize> = members.iter().map(Vec::len).filter(|&s| s > 0).collect();
    if sizes.iter().all(|&s| s < k) {
        bail!("{k} folds cannot be greater than the number of members in each class ({sizes:?})");
    }
    if let Some(&small) = sizes.iter().min()
        && small < k
    {
        tracing::warn!("the least populated class has only {small} members, fewer than {k} folds");
    }
    // Deal the class-sorted samples round-robin over folds to get per-class fold counts.
    let mut fold_of = vec![0usize; labels.len()];
    let mut position = 0usize;
    for idx in &members {
        let mut folds: Vec<usize> = (0..idx.len()).map(|j| (position + j) % k).collect();
        position += idx.len();
        folds.shuffle(rng);
        for (&i, &f) in idx.iter().zip(&folds) {
            fold_of[i] = f;
        }
    }
    Ok((0..k)
        .map(|f| {
            let (val, train): (Vec<usize>, Vec<usize>) =
                (0..labels.len()).partition(|&i| fold_of[i] == f);
            (train, val)
        })
        .collect())
}

/// Mini-batches of `0..n` (shuffled when asked), keeping a last partial batch unless `drop_last`.
pub fn batches(
    n: usize,
    batch_size: usize,
    shuffle: bool,
    drop_last: bool,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(rng);
    }
    order
        .chunks(batch_size.max(1))
        .filter(|c| !drop_last || c.len() == batch_size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// One rank's mini-batches of an epoch in a data-parallel run (`DistributedSampler` semantics,
/// stratified within each global batch).
///
/// All ranks draw the same shuffled order of `0..n` (same `rng` state), cut it into global batches
/// of `batch_size · world_size`, and rank `r` takes every `world_size`-th sample of each global
/// batch starting at `r`; with `labels`, a global batch is first sorted by class (stably), so
/// every rank gets the same class mix. The union of the ranks' `k`-th batches is exactly the
/// `k`-th batch of a single process with batch size `batch_size · world_size`, and each rank
/// has the same number of batches: a short last global batch is padded with samples from the
/// start of the order (as `DistributedSampler` pads) so it splits evenly.
/// With `world_size == 1` this is [`batches`] with `shuffle = true`, `drop_last = false`.
pub fn distributed_batches(
    n: usize,
    batch_size: usize,
    labels: Option<&[usize]>,
    rank: usize,
    world_size: usize,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let world = world_size.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    if world == 1 {
        return order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
    }
    let global = batch_size.max(1) * world;
    let mut out = Vec::new();
    for chunk in order.chunks(global) {
        let mut chunk = chunk.to_vec();
        let mut k = 0;
        while !chunk.len().is_multiple_of(world) {
            chunk.push(order[k % n]);
            k += 1;
        }
        if let Some(labels) = labels {
            chunk.sort_by_key(|&i| labels[i]);
        }
        out.push(chunk.into_iter().skip(rank).step_by(world).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;

    #[test]
    fn stratified_split_keeps_proportions() {
        // 65 / 50 like moola's binary set; 15% test -> ceil(17.25) = 18 test samples.
        let labels: Vec<usize> = (0..115).map(|i| usize::from(i >= 65)).collect();
        let (train, test) = stratified_split(&labels, 0.15, &mut seed::rng(1, "t", 0)).unwrap();
        assert_eq!(test.len(), 18);
        assert_eq!(train.len(), 97);
        let test_pos = test.iter().filter(|&&i| labels[i] == 1).count();
        // 18 * 50/115 = 7.83 -> 7 or 8
        assert!((7..=8).contains(&test_pos));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..115).collect::<Vec<_>>());
        // Reproducible for a seed.
        let again = stratified_split(&labels, 0.15, &mut seed::rng(1, "t", 0)).unwrap();
        assert_eq!(again.1, test);
    }

    #[test]
    fn stratified_split_rejects_singleton_class() {
        let labels = vec![0, 0, 0, 1];
        assert!(stratified_split(&labels, 0.5, &mut seed::rng(1, "t", 0)).is_err());
    }

    #[test]
    fn kfold_partitions_and_stratifies() {
        let labels: Vec<usize> = (0..23).map(|i| i % 3).collect();
        let folds = stratified_kfold(&labels, 5, &mut seed::rng(3, "k", 0)).unwrap();
        let mut seen = [0; 23];
        for (train, val) in &folds {
            assert_eq!(train.len() + val.len(), 23);
            for &i in val {
                seen[i] += 1;
            }
            for c in 0..3 {
                let in_val = val.iter().filter(|&&i| labels[i] == c).count();
                assert!(
                    (1..=2).contains(&in_val),
                    "class {c} has {in_val} in a fold"
                );
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        assert!(stratified_kfold(&[0, 1, 0, 1], 5, &mut seed::rng(0, "k", 0)).is_err());
    }

    #[test]
    fn batches_cover_everything() {
        let b = batches(10, 4, true, false, &mut seed::rng(0, "b", 0));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let b = batches(10, 4, false, true, &mut seed::rng(0, "b", 0));
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn distributed_batches_partition_the_single_process_batches() {
        let labels: Vec<usize> = (0..23).map(|i| i % 3).collect();
        let single = distributed_batches(23, 8, None, 0, 1, &mut seed::rng(5, "d", 0));
        assert_eq!(
            single,
            batches(23, 8, true, false, &mut seed::rng(5, "d", 0))
        );
        let ranks: Vec<Vec<Vec<usize>>> = (0..2)
            .map(|r| distributed_batches(23, 4, Some(&labels), r, 2, &mut seed::rng(5, "d", 0)))
            .collect();
        assert_eq!(ranks[0].len(), single.len());
        assert_eq!(ranks[1].len(), single.len());
        for (k, batch) in single.iter().enumerate() {
            let mut union: Vec<usize> = ranks[0][k].iter().chain(&ranks[1][k]).copied().collect();
            union.sort_unstable();
            let mut want = batch.clone();
            if want.len() % 2 == 1 {
                // The short last batch is padded with the first sample of the order.
                want.push(single[0][0]);
            }
            want.sort_unstable();
            assert_eq!(union, want, "batch {k}");
            assert_eq!(ranks[0][k].len(), ranks[1][k].len());
            // Stratified: each rank's class counts differ by at most one.
            for c in 0..3 {
                let count = |r: usize| ranks[r][k].iter().filter(|&&i| labels[i] == c).count();
                assert!(count(0).abs_diff(count(1)) <= 1, "batch {k} class {c}");
            }
        }
    }
}
