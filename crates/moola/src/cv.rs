//! Stratified k-fold cross-validation of a classifier (the reference's `evaluate`): a fresh
//! network per fold, out-of-fold probabilities for every window, per-fold and pooled metrics.
//!
//! ```no_run
//! use kiln::backend::{Autodiff, Flex};
//! use moola::{cv, data, model::ModelSpec, train::TrainConfig};
//!
//! let windows = data::read_any("datasets/ohlc/windows.parquet".as_ref())?;
//! let result = cv::cross_validate::<Autodiff<Flex>>(
//!     &ModelSpec::from_name("simple_lstm")?,
//!     &TrainConfig::for_model("simple_lstm"),
//!     &windows,
//!     5,
//!     1337,
//!     &Default::default(),
//!     false,
//! )?;
//! println!("{}", result.oof_report.summary());
//! # anyhow::Ok(())
//! ```

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use kiln::metrics::ClassificationReport;
use serde::Serialize;

use crate::Classifier;
use crate::data::{LabelMap, WindowSet};
use crate::model::ModelSpec;
use crate::train::{RunOptions, TrainConfig};

/// Metrics of one fold's held-out part.
#[derive(Debug, Clone, Serialize)]
pub struct FoldDetail {
    /// 0-based fold.
    pub fold: usize,
    /// Training windows of the fold.
    pub train_size: usize,
    /// Held-out windows of the fold.
    pub val_size: usize,
    /// Accuracy on the held-out part.
    pub accuracy: f64,
    /// Weighted precision (the reference's `evaluate` averages these over folds).
    pub precision: f64,
    /// Weighted recall.
    pub recall: f64,
    /// Weighted F1.
    pub f1: f64,
}

/// What [`cross_validate`] returns.
#[derive(Debug, Clone)]
pub struct CvResult {
    /// Class names in label-index order.
    pub classes: Vec<String>,
    /// Out-of-fold class probabilities of every window (row `i` = window `i`).
    pub oof: Vec<Vec<f64>>,
    /// Metrics of the pooled out-of-fold probabilities (macro/weighted, ECE, Brier, log-loss).
    pub oof_report: ClassificationReport,
    /// Per-fold metrics.
    pub folds: Vec<FoldDetail>,
}

impl CvResult {
    /// Mean of a per-fold metric.
    pub fn mean(&self, metric: fn(&FoldDetail) -> f64) -> f64 {
        self.folds.iter().map(metric).sum::<f64>() / self.folds.len().max(1) as f64
    }
}

/// Stratified `k`-fold cross-validation of `spec` trained with `config` on `data` (seeded by
/// `seed`): every fold trains a fresh classifier on the other folds. The folds are
/// [`crate::splits::make_folds`]'s, the same ones `moola oof` persists for the same rows, `k` and
/// seed; they are drawn in memory here, not read from or written to disk.
pub fn cross_validate<B: AutodiffBackend>(
    spec: &ModelSpec,
    config: &TrainConfig,
    data: &WindowSet,
    k: usize,
    seed: u64,
    device: &B::Device,
    progress: bool,
) -> Result<CvResult> {
    let labels = LabelMap::fit(data.require_labels()?);
    let y = labels.encode(data.require_labels()?)?;
    let folds: Vec<(Vec<usize>, Vec<usize>)> = crate::splits::make_folds(&y, k, seed)?
        .into_iter()
        .map(|f| (f.train_idx, f.val_idx))
        .collect();
    let mut oof = vec![Vec::new(); data.len()];
    let mut details = Vec::new();
    for (k, (tr, va)) in folds.iter().enumerate() {
        tracing::info!(
            "fold {}/{}: {} train / {} validation",
            k + 1,
            folds.len(),
            tr.len(),
            va.len()
        );
        let mut clf = Classifier::<B>::new(spec.clone(), config.clone(), device.clone())
            .with_run_options(RunOptions {
                progress,
                ..RunOptions::default()
            });
        let train_set = data.select(tr);
        clf.fit(&train_set)?;
        let fold_labels = clf.labels()?;
        if fold_labels.classes() != labels.classes() {
            bail!("fold {k} lacks a class in its training part; use fewer folds");
        }
        let proba = clf.predict_proba(&data.select(va))?;
        let yv: Vec<usize> = va.iter().map(|&i| y[i]).collect();
        let rep = ClassificationReport::from_probabilities(&yv, &proba)?;
        tracing::info!("fold {}: {}", k + 1, rep.summary());
        for (&i, p) in va.iter().zip(proba) {
            oof[i] = p;
        }
        details.push(FoldDetail {
            fold: k,
            train_size: tr.len(),
            val_size: va.len(),
            accuracy: rep.accuracy,
            precision: rep.weighted_avg.precision,
            recall: rep.weighted_avg.recall,
            f1: rep.weighted_avg.f1,
        });
    }
    let oof_report = ClassificationReport::from_probabilities(&y, &oof)?;
    Ok(CvResult {
        classes: labels.classes().to_vec(),
        oof,
        oof_report,
        folds: details,
    })
}
