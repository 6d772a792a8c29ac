//! Classification metrics on host arrays (labels and probability rows).
//!
//! Definitions follow scikit-learn and moola's
//! [`utils/metrics/metrics.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/utils/metrics/metrics.py):
//! * precision/recall/F1 with `zero_division=0`; the macro and weighted averages run over the
//!   labels present in `y_true ∪ y_pred` (scikit-learn's default `labels=None`), weighted by true
//!   support;
//! * ECE with 10 equal-width bins, a sample in a bin when `lower < conf ≤ upper`, summed as
//!   `Σ (n_bin/N)·|mean conf − accuracy|` over non-empty bins;
//! * Brier score as the mean over all `N·C` cells of `(p − onehot)²` (moola's definition, which
//!   divides by `N·C`, not `N`);
//! * log-loss with probabilities clipped to `[ε, 1−ε]`, ε = f64 machine epsilon, rows renormalised.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one averaging mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1 score.
    pub f1: f64,
}

/// Every classification metric kiln reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of samples.
    pub n: usize,
    /// Fraction of correct argmax predictions.
    pub accuracy: f64,
    /// Unweighted mean over present labels.
    pub macro_avg: Prf,
    /// Support-weighted mean over present labels.
    pub weighted_avg: Prf,
    /// Per-class precision/recall/F1, by class index.
    pub per_class: Vec<Prf>,
    /// Per-class true counts.
    pub support: Vec<usize>,
    /// Expected calibration error (10 bins); `None` without probabilities.
    pub ece: Option<f64>,
    /// Brier score (mean over N·C); `None` without probabilities.
    pub brier: Option<f64>,
    /// Cross-entropy of the true class; `None` without probabilities.
    pub log_loss: Option<f64>,
    /// `confusion[true][pred]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Index of the largest value (first on ties, like `np.argmax`).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Fraction of equal entries.
pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> f64 {
    if y_true.is_empty() {
        return 0.0;
    }
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    hits as f64 / y_true.len() as f64
}

/// `confusion[true][pred]` for `n_classes` classes.
pub fn confusion_matrix(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; n_classes]; n_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        m[t][p] += 1;
    }
    m
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Per-class precision/recall/F1 from a confusion matrix.
pub fn per_class_prf(confusion: &[Vec<usize>]) -> Vec<Prf> {
    let c = confusion.len();
    (0..c)
        .map(|k| {
            let tp = confusion[k][k] as f64;
            let predicted: f64 = (0..c).map(|t| confusion[t][k] as f64).sum();
            let actual: f64 = confusion[k].iter().map(|&v| v as f64).sum();
            let precision = safe_div(tp, predicted);
            let recall = safe_div(tp, actual);
            Prf {
                precision,
                recall,
                f1: safe_div(2.0 * precision * recall, precision + recall),
            }
        })
        .collect()
}

/// Expected calibration error with `n_bins` equal-width bins (`lower < conf ≤ upper`).
pub fn ece(y_true: &[usize], proba: &[Vec<f64>], n_bins: usize) -> f64 {
    let n = y_true.len();
    if n == 0 {
        return 0.0;
    }
    let mut count = vec![0usize; n_bins];
    let mut conf_sum = vec![0.0; n_bins];
    let mut hit_sum = vec![0.0; n_bins];
    for (row, &t) in proba.iter().zip(y_true) {
        let pred = argmax(row);
        let conf = row[pred];
        // Bin b covers (b/n, (b+1)/n]; conf == 0 falls in no bin, like the reference.
        let Some(b) = (0..n_bins).find(|&b| {
            let lower = b as f64 / n_bins as f64;
            let upper = (b + 1) as f64 / n_bins as f64;
            conf > lower && conf <= upper
        }) else {
            continue;
        };
        count[b] += 1;
        conf_sum[b] += conf;
        hit_sum[b] += f64::from(u8::from(pred == t));
    }
    (0..n_bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let k = count[b] as f64;
            (k / n as f64) * (conf_sum[b] / k - hit_sum[b] / k).abs()
        })
        .sum()
}

/// Brier score: mean over all N·C cells of `(p − onehot)²`.
pub fn brier(y_true: &[usize], proba: &[Vec<f64>]) -> f64 {
    let mut sum = 0.0;
    let mut cells = 0usize;
    for (row, &t) in proba.iter().zip(y_true) {
        for (k, &p) in row.iter().enumerate() {
            let target = if k == t { 1.0 } else { 0.0 };
            sum += (p - target).powi(2);
            cells += 1;
        }
    }
    safe_div(sum, cells as f64)
}

/// Mean negative log-probability of the true class (clipped and renormalised like scikit-learn).
pub fn log_loss(y_true: &[usize], proba: &[Vec<f64>]) -> f64 {
    let eps = f64::EPSILON;
    let mut total = 0.0;
    for (row, &t) in proba.iter().zip(y_true) {
        let clipped: Vec<f64> = row.iter().map(|p| p.clamp(eps, 1.0 - eps)).collect();
        let z: f64 = clipped.iter().sum();
        total -= (clipped[t] / z).ln();
    }
    safe_div(total, y_true.len() as f64)
}

fn averages(per_class: &[Prf], support: &[usize], present: &[bool]) -> (Prf, Prf) {
    let labels: Vec<usize> = (0..per_class.len()).filter(|&k| present[k]).collect();
    let n_labels = labels.len() as f64;
    let total: f64 = labels.iter().map(|&k| support[k] as f64).sum();
    let mut macro_avg = Prf {
        precision: 0.0,
        recall: 0.0,
        f1: 0.0,
    };
    let mut weighted = macro_avg;
    for &k in &labels {
        let p = per_class[k];
        macro_avg.precision += p.precision / n_labels;
        macro_avg.recall += p.recall / n_labels;
        macro_avg.f1 += p.f1 / n_labels;
        let w = safe_div(support[k] as f64, total);
        weighted.precision += w * p.precision;
        weighted.recall += w * p.recall;
        weighted.f1 += w * p.f1;
    }
    (macro_avg, weighted)
}

impl ClassificationReport {
    /// Metrics from hard predictions only (no calibration metrics).
    pub fn from_predictions(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> Result<Self> {
        if y_true.len() != y_pred.len() {
            bail!("{} labels but {} predictions", y_true.len(), y_pred.len());
        }
        if let Some(&bad) = y_true.iter().chain(y_pred).find(|&&v| v >= n_classes) {
            bail!("class index {bad} is out of range for {n_classes} classes");
        }
        let confusion = confusion_matrix(y_true, y_pred, n_classes);
        let per_class = per_class_prf(&confusion);
        let support: Vec<usize> = confusion.iter().map(|r| r.iter().sum()).collect();
        let present: Vec<bool> = (0..n_classes)
            .map(|k| support[k] > 0 || confusion.iter().any(|r| r[k] > 0))
            .collect();
        let (macro_avg, weighted_avg) = averages(&per_class, &support, &present);
        Ok(Self {
            n: y_true.len(),
            accuracy: accuracy(y_true, y_pred),
            macro_avg,
            weighted_avg,
            per_class,
            support,
            ece: None,
            brier: None,
            log_loss: None,
            confusion,
        })
    }

    /// Metrics from probability rows (`proba[i]` sums to 1 over the classes).
    pub fn from_probabilities(y_true: &[usize], proba: &[Vec<f64>]) -> Result<Self> {
        let Some(first) = proba.first() else {
            bail!("no predictions to evaluate");
        };
        let n_classes = first.len();
        for (i, row) in proba.iter().enumerate() {
            if row.len() != n_classes {
                bail!(
                    "probability row {i} has {} columns, expected {n_classes}",
                    row.len()
                );
            }
            if row.iter().any(|p| !p.is_finite()) {
                bail!("probability row {i} contains a non-finite value: {row:?}");
            }
        }
        let y_pred: Vec<usize> = proba.iter().map(|r| argmax(r)).collect();
        let mut report = Self::from_predictions(y_true, &y_pred, n_classes)?;
        report.ece = Some(ece(y_true, proba, 10));
        report.brier = Some(brier(y_true, proba));
        report.log_loss = Some(log_loss(y_true, proba));
        Ok(report)
    }

    /// A short multi-line summary for terminals.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "accuracy {:.4} | macro P/R/F1 {:.4}/{:.4}/{:.4} | weighted P/R/F1 {:.4}/{:.4}/{:.4}",
            self.accuracy,
            self.macro_avg.precision,
            self.macro_avg.recall,
            self.macro_avg.f1,
            self.weighted_avg.precision,
            self.weighted_avg.recall,
            self.weighted_avg.f1
        );
        if let (Some(e), Some(b), Some(l)) = (self.ece, self.brier, self.log_loss) {
            s.push_str(&format!(" | ECE {e:.4} | Brier {b:.4} | log-loss {l:.4}"));
        }
        s
    }

    /// The confusion matrix as CSV with class names as header and first column.
    pub fn confusion_csv(&self, class_names: &[String]) -> String {
        let mut out = String::from("true\\pred");
        for name in class_names {
            out.push(',');
            out.push_str(name);
        }
        out.push('\n');
        for (name, row) in class_names.iter().zip(&self.confusion) {
            out.push_str(name);
            for v in row {
                out.push_str(&format!(",{v}"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn prf_matches_sklearn_by_hand() {
        // y_true = [0,0,1,1,2], y_pred = [0,1,1,1,0]
        // class 0: tp 1, pred 2, true 2 -> P .5 R .5 F .5
        // class 1: tp 2, pred 3, true 2 -> P 2/3 R 1 F .8
        // class 2: tp 0, pred 0, true 1 -> P 0 R 0 F 0
        let r =
            ClassificationReport::from_predictions(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3).unwrap();
        close(r.accuracy, 0.6);
        close(r.macro_avg.precision, (0.5 + 2.0 / 3.0) / 3.0);
        close(r.macro_avg.recall, 0.5);
        close(r.macro_avg.f1, 1.3 / 3.0);
        close(r.weighted_avg.f1, (2.0 * 0.5 + 2.0 * 0.8) / 5.0);
        close(r.weighted_avg.recall, 0.6);
        assert_eq!(
            r.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
    }

    #[test]
    fn absent_labels_do_not_enter_the_macro_average() {
        // Class 2 appears in neither y_true nor y_pred: sklearn averages over {0, 1}.
        let r = ClassificationReport::from_predictions(&[0, 1], &[0, 1], 3).unwrap();
        close(r.macro_avg.f1, 1.0);
    }

    #[test]
    fn calibration_metrics_by_hand() {
        let y = [0, 1, 1];
        let p = vec![vec![0.9, 0.1], vec![0.4, 0.6], vec![0.7, 0.3]];
        // ECE: conf .9 (hit) in bin (.8,.9]; .6 (hit) in (.5,.6]; .7 (miss) in (.6,.7].
        // = 1/3*|.9-1| + 1/3*|.6-1| + 1/3*|.7-0| = (0.1+0.4+0.7)/3
        close(ece(&y, &p, 10), 1.2 / 3.0);
        // Brier over N*C = 6 cells: (.01+.01) + (.16+.16) + (.49+.49) = 1.32
        close(brier(&y, &p), 1.32 / 6.0);
        close(
            log_loss(&y, &p),
            -(0.9f64.ln() + 0.6f64.ln() + 0.3f64.ln()) / 3.0,
        );
    }

    #[test]
    fn ece_bin_edges_are_left_open() {
        // conf exactly 0.5 belongs to the (0.4, 0.5] bin, not (0.5, 0.6].
        let y = [0];
        let p = vec![vec![0.5, 0.5]];
        close(ece(&y, &p, 10), 0.5);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(ClassificationReport::from_predictions(&[0, 3], &[0, 1], 2).is_err());
        assert!(ClassificationReport::from_probabilities(&[0], &[vec![f64::NAN, 1.0]]).is_err());
        assert!(ClassificationReport::from_probabilities(&[0], &[]).is_err());
    }
}
