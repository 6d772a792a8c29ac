//! What every moola model offers the pipelines (out-of-fold predictions, stacking): fit on a
//! labelled set, class probabilities with columns in sorted-label order, save and load. Deep
//! [`Classifier`](crate::Classifier)s and the classical baselines implement it, so the pipelines
//! are written once.

use std::path::Path;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

use crate::Classifier;
use crate::data::WindowSet;

/// A probabilistic classifier of windows.
pub trait Estimator {
    /// The model's name (`simple_lstm`, `logreg`, ...), as the pipelines' file layout uses it.
    fn name(&self) -> String;
    /// Trains from scratch on a labelled set (a previous fit is discarded).
    fn fit(&mut self, data: &WindowSet) -> Result<()>;
    /// Class probabilities `[n, classes]`; rows sum to 1, columns in [`classes`](Self::classes)
    /// order.
    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>>;
    /// Class names in column order (sorted, as [`LabelMap`](crate::data::LabelMap) orders them);
    /// an error before `fit`.
    fn classes(&self) -> Result<Vec<String>>;
    /// Writes the fitted model to `path`.
    fn save(&self, path: &Path) -> Result<()>;
}

impl<B: AutodiffBackend> Estimator for Classifier<B> {
    fn name(&self) -> String {
        self.spec().name().to_string()
    }
    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        Classifier::fit(self, data).map(|_| ())
    }
    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        Classifier::predict_proba(self, data)
    }
    fn classes(&self) -> Result<Vec<String>> {
        Ok(self.labels()?.classes().to_vec())
    }
    fn save(&self, path: &Path) -> Result<()> {
        Classifier::save(self, path)
    }
}
