//! Stratified k-fold splits, made once and persisted so that every base model of the OOF
//! pipeline (and a later stacker) sees the same folds (the reference's `utils/splits.py`,
//! <https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/utils/splits.py>).
//!
//! # Fold semantics
//!
//! [`make_folds`] follows scikit-learn's `StratifiedKFold(n_splits=k, shuffle=True,
//! random_state=seed)`: the class-sorted samples are dealt round-robin over the folds to get how
//! many members of each class every fold holds, then each class's fold assignments are shuffled.
//! Per class, fold sizes therefore differ by at most one. Which samples land in which fold is
//! drawn from kiln's seeded generator (the `cv_folds` stream of [`kiln::seed`]), so the folds
//! are reproducible for a seed but **not** index-for-index equal to scikit-learn's. `moola
//! evaluate` ([`crate::cv`]) draws its folds with the same function and stream, so `evaluate`
//! and `oof` agree on the folds for the same data, `k` and seed.
//!
//! # On disk
//!
//! A fold set is a directory (default `<artifacts_dir>/splits/v1`) of `fold_{i}.json` files, each
//! `{fold, seed, k, train_idx, val_idx, train_size, val_size}` with sorted indices, the reference's
//! layout. [`get_or_create_folds`] loads the set when `fold_0.json` exists and regenerates it
//! (with a logged warning saying why) when it was made for another `k` or seed, or for another
//! number of rows (an index `>= n`, or validation folds that cover fewer rows than `n`). A set
//! that is stale for none of these reasons but is inconsistent (a missing or unparsable file, a
//! row in two validation folds, a training part that is not the complement of the validation
//! part, wrong size fields) is an error naming the file: it was edited or damaged, and silently
//! replacing it would change the folds other models were trained on.
//!
//! The files key the folds by `(n, k, seed)` only, like the reference: a different data set with
//! the same number of rows reuses them. Delete the directory after changing the data.
//!
//! Every file is written atomically (a uniquely named temporary file in the same directory,
//! then a rename), so a reader never sees a half-written fold.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The seeded stream the folds are drawn from (shared with `moola evaluate`).
pub const FOLD_STREAM: &str = "cv_folds";

/// Default location of the fold files, relative to the artifacts directory.
pub const DEFAULT_SPLITS_SUBDIR: &str = "splits/v1";

/// One fold: the rows it trains on and the rows it holds out (both sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// 0-based fold index.
    pub fold: usize,
    /// Training rows.
    pub train_idx: Vec<usize>,
    /// Held-out (validation) rows.
    pub val_idx: Vec<usize>,
}

/// The JSON content of one `fold_{i}.json` (the reference's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldFile {
    /// 0-based fold index (equals the `i` of the file name).
    pub fold: usize,
    /// Seed the set was drawn with.
    pub seed: u64,
    /// Number of folds of the set.
    pub k: usize,
    /// Training rows.
    pub train_idx: Vec<usize>,
    /// Validation rows.
    pub val_idx: Vec<usize>,
    /// `train_idx.len()`.
    pub train_size: usize,
    /// `val_idx.len()`.
    pub val_size: usize,
}

/// Where [`get_or_create_folds`] got its folds from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldSource {
    /// Read from existing, valid files.
    Loaded,
    /// Made and written because no `fold_0.json` existed.
    Created,
    /// Made and written over a stale set; the reason is the logged message.
    Regenerated(String),
}

/// The path of fold `i` in `dir`.
pub fn fold_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("fold_{i}.json"))
}

/// Stratified, shuffled `k`-fold split of class indices `labels` (see the module docs for the
/// semantics). Fails when `k < 2` or when every class has fewer than `k` members.
pub fn make_folds(labels: &[usize], k: usize, seed: u64) -> Result<Vec<Fold>> {
    let mut rng = kiln::seed::rng(seed, FOLD_STREAM, 0);
    let pairs = kiln::data::stratified_kfold(labels, k, &mut rng)?;
    Ok(pairs
        .into_iter()
        .enumerate()
        .map(|(fold, (train_idx, val_idx))| Fold {
            fold,
            train_idx,
            val_idx,
        })
        .collect())
}

/// Checks that `folds` is a k-fold partition of `0..n`: folds numbered `0..k` in order, every
/// row in exactly one validation part, each training part the complement of its validation
/// part. `name(i)` names fold `i` in errors (a file path, or "fold i").
pub fn validate_folds(folds: &[Fold], n: usize, name: impl Fn(usize) -> String) -> Result<()> {
    ensure!(
        folds.len() >= 2,
        "a fold set needs at least 2 folds, got {}",
        folds.len()
    );
    let mut owner: Vec<Option<usize>> = vec![None; n];
    for (i, f) in folds.iter().enumerate() {
        ensure!(
            f.fold == i,
            "{}: holds fold {} at position {i}",
            name(i),
            f.fold
        );
        for &r in &f.val_idx {
            ensure!(
                r < n,
                "{}: validation index {r} is out of range (n = {n})",
                name(i)
            );
            if let Some(j) = owner[r] {
                bail!(
                    "{}: row {r} is also in the validation part of {}",
                    name(i),
                    name(j)
                );
            }
            owner[r] = Some(i);
        }
    }
    if let Some(r) = owner.iter().position(Option::is_none) {
        bail!(
            "row {r} of {n} is in the validation part of none of the folds {} .. {}",
            name(0),
            name(folds.len() - 1)
        );
    }
    for (i, f) in folds.iter().enumerate() {
        let mut seen = vec![false; n];
        for &r in &f.train_idx {
            ensure!(
                r < n,
                "{}: training index {r} is out of range (n = {n})",
                name(i)
            );
            ensure!(!seen[r], "{}: training row {r} appears twice", name(i));
            ensure!(
                owner[r] != Some(i),
                "{}: row {r} is in both its training and validation parts",
                name(i)
            );
            seen[r] = true;
        }
        ensure!(
            f.train_idx.len() + f.val_idx.len() == n,
            "{}: the training part ({} rows) is not the complement of the validation part ({} \
             rows) in {n} rows",
            name(i),
            f.train_idx.len(),
            f.val_idx.len()
        );
    }
    Ok(())
}

/// Writes `folds` (which must partition their rows, see [`validate_folds`]) as `fold_{i}.json`
/// files into `dir` (created when missing), each atomically, after removing any other
/// `fold_*.json` of an older set.
pub fn write_folds(dir: &Path, folds: &[Fold], seed: u64) -> Result<()> {
    let n = folds.iter().map(|f| f.val_idx.len()).sum();
    validate_folds(folds, n, |i| format!("fold {i}")).context("refusing to write invalid folds")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_fold_files(dir, folds.len())?;
    let k = folds.len();
    for f in folds {
        let file = FoldFile {
            fold: f.fold,
            seed,
            k,
            train_idx: f.train_idx.clone(),
            val_idx: f.val_idx.clone(),
            train_size: f.train_idx.len(),
            val_size: f.val_idx.len(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)?;
        bytes.push(b'\n');
        crate::manifest::write_atomic(&fold_path(dir, f.fold), &bytes)?;
    }
    Ok(())
}

/// Removes the `fold_{i}.json` files of `dir` with `i >= keep`.
fn remove_fold_files(dir: &Path, keep: usize) -> Result<()> {
    for i in fold_indices_on_disk(dir)?
        .into_iter()
        .filter(|&i| i >= keep)
    {
        let p = fold_path(dir, i);
        std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// The `i` of every `fold_{i}.json` in `dir`.
fn fold_indices_on_disk(dir: &Path) -> Result<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(i) = name
            .strip_prefix("fold_")
            .and_then(|s| s.strip_suffix(".json"))
            .and_then(|s| s.parse::<usize>().ok())
        {
            out.insert(i);
        }
    }
    Ok(out)
}

fn read_fold_file(path: &Path) -> Result<FoldFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a fold file ({{fold, seed, k, train_idx, val_idx, train_size, val_size}})",
            path.display()
        )
    })
}

/// A fold set read from disk, before it is checked against the data.
#[derive(Debug, Clone)]
pub struct StoredFolds {
    /// Seed recorded in the files.
    pub seed: u64,
    /// Number of folds recorded in the files.
    pub k: usize,
    /// The folds, in order.
    pub folds: Vec<Fold>,
}

/// Reads the set whose first file is `dir/fold_0.json`: `k` comes from that file, and every
/// `fold_{i}.json` for `i < k` must exist and agree on `k` and the seed, hold its own index and
/// consistent size fields. Errors name the file. Does not check the folds against a row count
/// (see [`validate_folds`]).
pub fn read_folds(dir: &Path) -> Result<StoredFolds> {
    let first = read_fold_file(&fold_path(dir, 0))?;
    ensure!(
        first.k >= 2,
        "{}: k = {} (a fold set needs at least 2 folds)",
        fold_path(dir, 0).display(),
        first.k
    );
    let mut folds = Vec::with_capacity(first.k);
    for i in 0..first.k {
        let path = fold_path(dir, i);
        let f = if i == 0 {
            first.clone()
        } else {
            read_fold_file(&path).with_context(|| {
                format!(
                    "fold_0.json announces k = {} folds in {}",
                    first.k,
                    dir.display()
                )
            })?
        };
        let p = path.display();
        ensure!(f.fold == i, "{p}: holds fold {} (expected {i})", f.fold);
        ensure!(
            f.k == first.k && f.seed == first.seed,
            "{p}: k = {}, seed = {} but fold_0.json says k = {}, seed = {}",
            f.k,
            f.seed,
            first.k,
            first.seed
        );
        ensure!(
            f.train_size == f.train_idx.len() && f.val_size == f.val_idx.len(),
            "{p}: train_size/val_size ({}/{}) do not match the index lists ({}/{})",
            f.train_size,
            f.val_size,
            f.train_idx.len(),
            f.val_idx.len()
        );
        folds.push(Fold {
            fold: i,
            train_idx: f.train_idx,
            val_idx: f.val_idx,
        });
    }
    let extra: Vec<usize> = fold_indices_on_disk(dir)?
        .into_iter()
        .filter(|&i| i >= first.k)
        .collect();
    if !extra.is_empty() {
        tracing::warn!(
            "{} holds fold files {extra:?} beyond k = {}; they are ignored",
            dir.display(),
            first.k
        );
    }
    Ok(StoredFolds {
        seed: first.seed,
        k: first.k,
        folds,
    })
}

/// Why a stored set cannot serve `n` rows with `k` folds and `seed`, if it is stale.
fn staleness(stored: &StoredFolds, n: usize, k: usize, seed: u64) -> Option<String> {
    if stored.k != k || stored.seed != seed {
        return Some(format!(
            "they were made with k = {}, seed = {} but k = {k}, seed = {seed} is requested",
            stored.k, stored.seed
        ));
    }
    let max = stored
        .folds
        .iter()
        .flat_map(|f| f.train_idx.iter().chain(&f.val_idx))
        .copied()
        .max();
    if let Some(max) = max
        && max >= n
    {
        return Some(format!(
            "they hold index {max}, out of range for the {n} rows of the data"
        ));
    }
    let covered: usize = stored.folds.iter().map(|f| f.val_idx.len()).sum();
    if covered < n {
        return Some(format!(
            "their validation folds cover {covered} rows but the data has {n}"
        ));
    }
    None
}

/// The reference's `get_or_create_splits`: loads the fold set in `dir` when `fold_0.json`
/// exists, regenerates it (logging why) when it is stale for `labels.len()` rows, `k` and
/// `seed`, and otherwise makes and writes a new one. A loaded set is validated
/// ([`validate_folds`]); an inconsistent one is an error naming the file.
pub fn get_or_create_folds(
    labels: &[usize],
    k: usize,
    seed: u64,
    dir: &Path,
) -> Result<(Vec<Fold>, FoldSource)> {
    let n = labels.len();
    let source = if fold_path(dir, 0).exists() {
        let stored = read_folds(dir)?;
        match staleness(&stored, n, k, seed) {
            None => {
                validate_folds(&stored.folds, n, |i| {
                    fold_path(dir, i).display().to_string()
                })?;
                tracing::info!(
                    "loaded {} folds (seed {seed}) from {}",
                    stored.k,
                    dir.display()
                );
                return Ok((stored.folds, FoldSource::Loaded));
            }
            Some(why) => {
                let msg = format!(
                    "regenerating the fold files in {}: {why} (OOF matrices made on the \
                     previous folds no longer match them)",
                    dir.display()
                );
                tracing::warn!("{msg}");
                FoldSource::Regenerated(msg)
            }
        }
    } else {
        FoldSource::Created
    };
    let folds = make_folds(labels, k, seed)?;
    write_folds(dir, &folds, seed)?;
    if source == FoldSource::Created {
        tracing::info!(
            "wrote {k} stratified folds (seed {seed}) to {}",
            dir.display()
        );
    }
    Ok((folds, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<usize> {
        (0..23)
            .map(|i| usize::from(i % 3 == 0) + usize::from(i % 5 == 0))
            .collect()
    }

    #[test]
    fn folds_partition_and_are_stratified() {
        let y = labels();
        let folds = make_folds(&y, 4, 7).unwrap();
        validate_folds(&folds, y.len(), |i| format!("fold {i}")).unwrap();
        for c in 0..3 {
            let counts: Vec<usize> = folds
                .iter()
                .map(|f| f.val_idx.iter().filter(|&&r| y[r] == c).count())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "class {c}: {counts:?}");
        }
        assert_eq!(make_folds(&y, 4, 7).unwrap(), folds);
        assert_ne!(make_folds(&y, 4, 8).unwrap(), folds);
    }

    #[test]
    fn validation_names_the_culprit() {
        let y = labels();
        let mut folds = make_folds(&y, 3, 1).unwrap();
        let r = folds[1].val_idx[0];
        folds[2].val_idx.push(r);
        let err = validate_folds(&folds, y.len(), |i| format!("F{i}")).unwrap_err();
        assert!(
            err.to_string().contains("F2") && err.to_string().contains("F1"),
            "{err}"
        );

        let mut folds = make_folds(&y, 3, 1).unwrap();
        folds[0].train_idx.pop();
        let err = validate_folds(&folds, y.len(), |i| format!("F{i}")).unwrap_err();
        assert!(err.to_string().contains("F0"), "{err}");
    }

    #[test]
    fn staleness_reasons() {
        let y = labels();
        let stored = StoredFolds {
            seed: 5,
            k: 3,
            folds: make_folds(&y, 3, 5).unwrap(),
        };
        assert_eq!(staleness(&stored, y.len(), 3, 5), None);
        assert!(staleness(&stored, y.len(), 4, 5).unwrap().contains("k = 3"));
        assert!(
            staleness(&stored, y.len(), 3, 6)
                .unwrap()
                .contains("seed = 5")
        );
        assert!(
            staleness(&stored, 10, 3, 5)
                .unwrap()
                .contains("out of range")
        );
        assert!(staleness(&stored, 30, 3, 5).unwrap().contains("cover 23"));
    }
}
