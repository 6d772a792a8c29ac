//! Out-of-fold (OOF) class probabilities of one base model, the input of the stacking
//! meta-learner (the reference's `pipelines/oof.py`,
//! <https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/pipelines/oof.py>).
//!
//! For every fold of a persisted fold set ([`crate::splits`]) a fresh [`Estimator`] is trained on
//! the fold's training rows and predicts the held-out rows; row `i` of the result is the
//! prediction of the one model that did not see window `i`. Columns follow the data's sorted
//! class order (`np.unique`), and every fold's model must report that same order.
//!
//! ```no_run
//! use kiln::backend::{Autodiff, Flex};
//! use moola::{Classifier, Estimator, data, oof, splits};
//!
//! let windows = data::read_any("data/processed/train.parquet".as_ref())?;
//! let y = data::LabelMap::fit(windows.require_labels()?).encode(windows.require_labels()?)?;
//! let (folds, _) = splits::get_or_create_folds(&y, 5, 1337, "artifacts/splits/v1".as_ref())?;
//! let result = oof::generate_oof(
//!     |_fold| {
//!         let clf = Classifier::<Autodiff<Flex>>::for_model("simple_lstm", Default::default())?;
//!         Ok(Box::new(clf) as Box<dyn Estimator>)
//!     },
//!     &windows,
//!     &folds,
//! )?;
//! oof::write_npy(&oof::oof_path("artifacts".as_ref(), "simple_lstm", 1337), &result.oof)?;
//! # anyhow::Ok(())
//! ```
//!
//! # The `.npy` file and concurrent writers
//!
//! [`write_npy`] stores the matrix as a float64 `[N, C]` numpy array at
//! `<artifacts>/oof/<model>/v1/seed_<seed>.npy` ([`oof_path`]). The bytes go to a uniquely named
//! temporary file in the same directory, which is then renamed over the destination
//! ([`crate::manifest::write_atomic`]). No lock file is used, by design: a rename within one
//! directory is atomic, so a reader (or the manifest) sees the previous complete file or the new
//! complete one, and two concurrent writers of the same file each rename a complete matrix of the
//! same model, seed and folds; the last rename wins and nothing is interleaved. A lock file would
//! add nothing to that guarantee, and a crashed run would leave a stale lock that blocks the
//! next one. (The reference's `.build.lock` is touched and removed around `np.save` but never
//! checked by anyone, so it excludes nothing either.)
//!
//! # Pre-trained encoders
//!
//! The reference can start SimpleLSTM from a pre-trained encoder, but its sequence "fit, load the
//! encoder, fit again" rebuilds the network on the second fit and so discards the encoder, and it
//! pops the encoder path inside the fold loop, so only the first fold would see it. Here the
//! encoder is part of the classifier's recipe ([`TrainConfig::encoder`](crate::train::TrainConfig)):
//! every fold's estimator loads it into the network it builds, then fits once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use kiln::metrics::{ClassificationReport, argmax};
use serde::Serialize;

use crate::Estimator;
use crate::data::{LabelMap, WindowSet};
use crate::splits::{Fold, validate_folds};

/// Held-out results of one fold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoldReport {
    /// 0-based fold.
    pub fold: usize,
    /// Number of folds.
    pub k: usize,
    /// Training rows.
    pub train_size: usize,
    /// Held-out rows.
    pub val_size: usize,
    /// Argmax accuracy on the held-out rows.
    pub accuracy: f64,
    /// Accuracy on the held-out rows of each class (recall), `None` for a class absent from them.
    pub per_class_accuracy: Vec<Option<f64>>,
}

/// What [`generate_oof`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct OofResult {
    /// The estimators' name ([`Estimator::name`] of the first fold's model).
    pub model: String,
    /// Class names in column order (sorted).
    pub classes: Vec<String>,
    /// `[N, C]` out-of-fold probabilities; row `i` = window `i` of the data.
    pub oof: Vec<Vec<f64>>,
    /// Per-fold results.
    pub folds: Vec<FoldReport>,
    /// Argmax accuracy of the OOF matrix against the labels.
    pub accuracy: f64,
    /// Per-class accuracy of the OOF matrix, `None` for a class without members.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Rows whose probabilities are all zero (an estimator that predicted nothing for them).
    pub zero_rows: Vec<usize>,
    /// Metrics of the OOF probabilities (macro/weighted P/R/F1, ECE, Brier, log-loss).
    pub report: ClassificationReport,
}

/// The rows every base model's OOF matrix covers, and how many were dropped. Like the reference,
/// which runs `validate_expansions` before `generate_oof` whatever the model, these are the rows
/// with valid expansion indices when the data has expansion columns and the reference's 105-bar
/// layout (see [`crate::data::validate_expansions`]), and all rows otherwise. Every model's OOF
/// command should select its rows with this function, so that the matrices of all base models
/// (deep and classical) line up row by row for the stacker.
pub fn oof_rows(data: WindowSet) -> Result<(WindowSet, usize)> {
    match (
        &data.expansion,
        crate::model::InnerWindow::default_for(data.seq_len),
    ) {
        (Some(_), Some(window)) => crate::data::validate_expansions(&data, window),
        _ => Ok((data, 0)),
    }
}

/// `<artifacts_dir>/oof/<model>/v1/seed_<seed>.npy`.
pub fn oof_path(artifacts_dir: &Path, model: &str, seed: u64) -> PathBuf {
    oof_dir(artifacts_dir, model).join(npy_name(seed))
}

/// `<artifacts_dir>/oof/<model>/v1`.
pub fn oof_dir(artifacts_dir: &Path, model: &str) -> PathBuf {
    artifacts_dir.join("oof").join(model).join("v1")
}

/// `seed_<seed>.npy`.
pub fn npy_name(seed: u64) -> String {
    format!("seed_{seed}.npy")
}

/// Accuracy per class of `pred` against `y`, `None` where a class has no member.
fn per_class_accuracy(y: &[usize], pred: &[usize], n_classes: usize) -> Vec<Option<f64>> {
    let mut hit = vec![0usize; n_classes];
    let mut total = vec![0usize; n_classes];
    for (&t, &p) in y.iter().zip(pred) {
        total[t] += 1;
        hit[t] += usize::from(t == p);
    }
    hit.iter()
        .zip(&total)
        .map(|(&h, &n)| (n > 0).then(|| h as f64 / n as f64))
        .collect()
}

fn accuracy(y: &[usize], pred: &[usize]) -> f64 {
    let hits = y.iter().zip(pred).filter(|(a, b)| a == b).count();
    hits as f64 / y.len().max(1) as f64
}

/// Formats per-class accuracies as `name 0.500, other 0.750` (`n/a` for absent classes).
pub fn format_per_class(classes: &[String], acc: &[Option<f64>]) -> String {
    classes
        .iter()
        .zip(acc)
        .map(|(c, a)| match a {
            Some(a) => format!("{c} {a:.4}"),
            None => format!("{c} n/a"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`generate_oof_with`] without a per-fold callback.
pub fn generate_oof<F>(make: F, data: &WindowSet, folds: &[Fold]) -> Result<OofResult>
where
    F: FnMut(usize) -> Result<Box<dyn Estimator>>,
{
    generate_oof_with(make, data, folds, |_| {})
}

/// Out-of-fold probabilities of the labelled `data` over `folds` (which must partition the
/// rows, see [`validate_folds`]). For fold `i`, `make(i)` builds a fresh estimator, which is fit
/// on the fold's training rows and predicts its held-out rows into the OOF matrix. Fold accuracy
/// and per-class accuracy are logged and handed to `on_fold` after each fold; all-zero rows are
/// warned about. No file is written (see [`write_npy`]).
///
/// Errors: invalid folds; an estimator whose classes differ from the data's sorted classes
/// (typically a fold whose training part lacks a class: use fewer folds); probabilities of the
/// wrong shape or not finite.
pub fn generate_oof_with<F>(
    mut make: F,
    data: &WindowSet,
    folds: &[Fold],
    mut on_fold: impl FnMut(&FoldReport),
) -> Result<OofResult>
where
    F: FnMut(usize) -> Result<Box<dyn Estimator>>,
{
    let labels = LabelMap::fit(data.require_labels()?);
    let y = labels.encode(data.require_labels()?)?;
    let (n, n_classes, k) = (data.len(), labels.len(), folds.len());
    validate_folds(folds, n, |i| format!("fold {i}"))?;
    let classes = labels.classes().to_vec();
    let mut oof = vec![vec![0.0f64; n_classes]; n];
    let mut filled = vec![false; n];
    let mut model = None;
    let mut reports = Vec::with_capacity(k);
    for f in folds {
        let i = f.fold;
        tracing::info!(
            "fold {}/{k}: {} train / {} validation",
            i + 1,
            f.train_idx.len(),
            f.val_idx.len()
        );
        let mut est = make(i).with_context(|| format!("fold {i}: cannot build the model"))?;
        let name = est.name();
        est.fit(&data.select(&f.train_idx))
            .with_context(|| format!("fold {i}: fitting {name} failed"))?;
        let est_classes = est.classes()?;
        if est_classes != classes {
            let missing: Vec<&String> = classes
                .iter()
                .filter(|c| !est_classes.contains(c))
                .collect();
            if missing.is_empty() {
                bail!(
                    "fold {i}: {name} orders its classes {est_classes:?}, not like the data's \
                     sorted classes {classes:?}"
                );
            }
            bail!(
                "fold {i}: the training part lacks class(es) {missing:?}, so {name}'s columns \
                 {est_classes:?} do not match the data's classes {classes:?}; use fewer folds"
            );
        }
        let proba = est
            .predict_proba(&data.select(&f.val_idx))
            .with_context(|| format!("fold {i}: predicting with {name} failed"))?;
        ensure!(
            proba.len() == f.val_idx.len(),
            "fold {i}: {name} returned {} probability rows for {} windows",
            proba.len(),
            f.val_idx.len()
        );
        for (&row, p) in f.val_idx.iter().zip(proba) {
            ensure!(
                p.len() == n_classes,
                "fold {i}: {name} returned {} columns for {n_classes} classes",
                p.len()
            );
            ensure!(
                p.iter().all(|v| v.is_finite() && *v >= 0.0),
                "fold {i}: {name} returned an invalid probability row for window {:?}: {p:?}",
                data.ids[row]
            );
            let sum: f64 = p.iter().sum();
            if (sum - 1.0).abs() > 1e-3 && sum > 0.0 {
                tracing::warn!(
                    "fold {i}: probabilities of window {:?} sum to {sum}",
                    data.ids[row]
                );
            }
            ensure!(!filled[row], "row {row} is predicted by two folds");
            filled[row] = true;
            oof[row] = p;
        }
        let yv: Vec<usize> = f.val_idx.iter().map(|&r| y[r]).collect();
        let pv: Vec<usize> = f.val_idx.iter().map(|&r| argmax(&oof[r])).collect();
        let report = FoldReport {
            fold: i,
            k,
            train_size: f.train_idx.len(),
            val_size: f.val_idx.len(),
            accuracy: accuracy(&yv, &pv),
            per_class_accuracy: per_class_accuracy(&yv, &pv, n_classes),
        };
        tracing::info!(
            "fold {}/{k} accuracy {:.4} (per class: {})",
            i + 1,
            report.accuracy,
            format_per_class(&classes, &report.per_class_accuracy)
        );
        on_fold(&report);
        reports.push(report);
        model.get_or_insert(name);
    }
    debug_assert!(filled.iter().all(|&f| f), "validated folds cover every row");
    let zero_rows: Vec<usize> = (0..n)
        .filter(|&r| oof[r].iter().all(|&v| v == 0.0))
        .collect();
    if zero_rows.is_empty() {
        tracing::info!("all {n} rows have non-zero OOF predictions");
    } else {
        tracing::warn!(
            "{} of {n} OOF rows are all zero (first: row {})",
            zero_rows.len(),
            zero_rows[0]
        );
    }
    let pred: Vec<usize> = oof.iter().map(|p| argmax(p)).collect();
    let acc = accuracy(&y, &pred);
    let per_class = per_class_accuracy(&y, &pred, n_classes);
    tracing::info!(
        "overall OOF accuracy {acc:.4} (per class: {})",
        format_per_class(&classes, &per_class)
    );
    let report = ClassificationReport::from_probabilities(&y, &oof)?;
    Ok(OofResult {
        model: model.unwrap_or_default(),
        classes,
        oof,
        folds: reports,
        accuracy: acc,
        per_class_accuracy: per_class,
        zero_rows,
        report,
    })
}

/// The `.npy` bytes (float64, C order, `[rows.len(), C]`) of a probability matrix.
pub fn npy_bytes(rows: &[Vec<f64>]) -> Result<Vec<u8>> {
    use ndarray_npy::WriteNpyExt;
    let c = rows.first().map_or(0, Vec::len);
    ensure!(
        rows.iter().all(|r| r.len() == c),
        "ragged probability matrix: rows of different lengths"
    );
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let array = ndarray::Array2::from_shape_vec((rows.len(), c), flat)?;
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .context("cannot encode the .npy file")?;
    Ok(bytes)
}

/// Writes a probability matrix as a float64 `[N, C]` `.npy` file, atomically (see the module
/// docs on concurrent writers).
pub fn write_npy(path: &Path, rows: &[Vec<f64>]) -> Result<()> {
    crate::manifest::write_atomic(path, &npy_bytes(rows)?)
}

/// Reads a float64 `[N, C]` `.npy` file (an OOF matrix) back.
pub fn read_npy(path: &Path) -> Result<ndarray::Array2<f64>> {
    ndarray_npy::read_npy(path)
        .with_context(|| format!("{} is not a float64 2-D .npy file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_and_accuracy() {
        let y = [0, 0, 1, 1, 1];
        let p = [0, 1, 1, 1, 0];
        assert!((accuracy(&y, &p) - 0.6).abs() < 1e-12);
        assert_eq!(
            per_class_accuracy(&y, &p, 3),
            vec![Some(0.5), Some(2.0 / 3.0), None]
        );
    }

    #[test]
    fn npy_round_trip_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/seed_1.npy");
        let rows = vec![vec![0.25, 0.75], vec![1.0, 0.0], vec![0.5, 0.5]];
        write_npy(&path, &rows).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header = String::from_utf8_lossy(&bytes[10..80]);
        assert!(header.contains("'descr': '<f8'"), "{header}");
        assert!(header.contains("'shape': (3, 2)"), "{header}");
        let back = read_npy(&path).unwrap();
        assert_eq!(back.dim(), (3, 2));
        assert_eq!(back[[0, 1]], 0.75);
        assert!(npy_bytes(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }

    #[test]
    fn oof_rows_follow_validate_expansions() {
        let n = 4;
        let set = WindowSet::new(
            (0..n).map(|i| format!("w{i}")).collect(),
            vec![0.0; n * 105 * 4],
            105,
            4,
            Some(vec!["a".into(); n]),
            Some(vec![Some((30, 40)), Some((50, 40)), None, Some((31, 74))]),
        )
        .unwrap();
        let (kept, dropped) = oof_rows(set.clone()).unwrap();
        assert_eq!(
            (kept.ids.as_slice(), dropped),
            (&["w0".to_string(), "w3".into()][..], 2)
        );
        let unannotated = WindowSet {
            expansion: None,
            ..set
        };
        assert_eq!(oof_rows(unannotated).unwrap().1, 0);
    }
}
