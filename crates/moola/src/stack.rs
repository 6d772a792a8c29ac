//! Stacking: a random-forest meta-learner on the base models' out-of-fold probabilities, and the
//! acceptance audit of the stack against the base models.
//!
//! The reference's `pipelines/stack_train.py` and `models/stack.py`
//! (<https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/pipelines/stack_train.py>):
//!
//! 1. inputs: the OOF matrices `[N, C]` of the base models ([`BaseOof`]; [`load_oof_bases`] reads
//!    whichever of [`STACK_BASE_MODELS`] exist under `<artifacts>/oof/<model>/v1/seed_<seed>.npy`);
//! 2. features ([`stack_features`]): the matrices side by side, `[N, M·C]`, then three
//!    meta-features per row ([`meta_features`]): the standard deviation across models of each
//!    model's largest probability, the entropy (natural log) of the models' mean probability
//!    vector (computed on `mean + 1e-10`, normalised, as `scipy.stats.entropy`), and the largest
//!    probability of any model;
//! 3. meta-learner: a random forest ([`crate::classical::forest`]) of 1000 trees, depth ≤ 12,
//!    √features per split, balanced-subsample class weights, seeded ([`StackConfig`]);
//! 4. cross-validation on the given folds (the base models' folds): per-fold accuracy and macro
//!    F1, the held-out probabilities pooled for ECE (10 bins) and log-loss
//!    ([`kiln::metrics`]);
//! 5. a final fit on every row ([`StackModel`], saved as JSON) and the report ([`StackReport`],
//!    the reference's `metrics.json`: model, seed, cv_folds, accuracy and f1 as means over folds,
//!    ece, logloss, fold_details).
//!
//! [`run_stack`] does it all from an artifacts directory; [`audit`] / [`audit_files`] judge the
//! result.
//!
//! # The acceptance audit
//!
//! The reference's `moola audit` accepts the stack when its F1 beats the best base model's F1 by
//! at least 2 percentage points, or when its ECE is at most 0.03 (an absolute bound, although
//! the reference's comment speaks of an improvement). It compares the stack's **macro** F1 with
//! the bases' `metrics.json` `f1`, which `evaluate` writes as **weighted** F1. Here both sides
//! are macro F1 by default ([`F1Comparison::MacroVsMacro`]);
//! [`F1Comparison::ReferenceWeighted`] reproduces the reference's comparison.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use kiln::metrics::{ClassificationReport, ece, log_loss};
use serde::{Deserialize, Serialize};

use crate::classical::forest::{ClassWeight, Forest, ForestParams, MaxFeatures};
use crate::data::LabelMap;

/// Base models the reference stacks, in column order (those with an OOF file are used).
pub const STACK_BASE_MODELS: [&str; 5] = ["logreg", "rf", "xgb", "rwkv_ts", "cnn_transformer"];

/// Number of meta-features appended to the stacked probabilities.
pub const N_META_FEATURES: usize = 3;

/// One base model's out-of-fold probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseOof {
    /// Model name (`logreg`, `rf`, …).
    pub name: String,
    /// `[N, C]` probabilities, columns in sorted-label order.
    pub proba: Vec<Vec<f64>>,
}

impl BaseOof {
    /// A named matrix.
    pub fn new(name: impl Into<String>, proba: Vec<Vec<f64>>) -> Self {
        Self {
            name: name.into(),
            proba,
        }
    }
}

/// Reads `<artifacts_dir>/oof/<model>/v1/seed_<seed>.npy` for each of `models` that exists (in
/// that order), like the reference; fails when none does.
pub fn load_oof_bases(artifacts_dir: &Path, seed: u64, models: &[&str]) -> Result<Vec<BaseOof>> {
    let mut bases = Vec::new();
    for &model in models {
        let path = crate::oof::oof_path(artifacts_dir, model, seed);
        if !path.exists() {
            tracing::warn!(
                "stack: skipping {model}, no OOF predictions at {}",
                path.display()
            );
            continue;
        }
        let a = crate::oof::read_npy(&path)?;
        let proba = a.outer_iter().map(|r| r.to_vec()).collect();
        tracing::info!("stack: loaded OOF {model} {:?}", a.dim());
        bases.push(BaseOof::new(model, proba));
    }
    if bases.is_empty() {
        bail!(
            "no OOF predictions for any of {models:?} under {} (seed {seed})",
            crate::oof::oof_dir(artifacts_dir, "<model>").display()
        );
    }
    Ok(bases)
}

/// The three meta-features of one row from each model's probability vector: std (population)
/// across models of each model's max probability; entropy (natural log) of the mean vector plus
/// 1e-10, normalised; max over models of the max probability.
pub fn meta_features(rows: &[&[f64]]) -> [f64; 3] {
    let m = rows.len() as f64;
    let maxes: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    let mean_max = maxes.iter().sum::<f64>() / m;
    let std = (maxes.iter().map(|v| (v - mean_max).powi(2)).sum::<f64>() / m).sqrt();
    let c = rows[0].len();
    let shifted: Vec<f64> = (0..c)
        .map(|k| rows.iter().map(|r| r[k]).sum::<f64>() / m + 1e-10)
        .collect();
    let z: f64 = shifted.iter().sum();
    let entropy = -shifted
        .iter()
        .map(|p| p / z)
        .filter(|&q| q > 0.0)
        .map(|q| q * q.ln())
        .sum::<f64>();
    let max_conf = maxes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [std, entropy, max_conf]
}

/// Checks the matrices' shapes and returns `(N, C)`.
fn check_bases(bases: &[BaseOof]) -> Result<(usize, usize)> {
    ensure!(!bases.is_empty(), "stacking needs at least one base model");
    let n = bases[0].proba.len();
    ensure!(n > 0, "base model {} has no rows", bases[0].name);
    let c = bases[0].proba[0].len();
    for b in bases {
        ensure!(
            b.proba.len() == n,
            "base model {} has {} rows, {} has {n}",
            b.name,
            b.proba.len(),
            bases[0].name
        );
        if let Some((i, r)) = b.proba.iter().enumerate().find(|(_, r)| r.len() != c) {
            bail!(
                "base model {} row {i} has {} columns, expected {c}",
                b.name,
                r.len()
            );
        }
        if let Some(i) = b
            .proba
            .iter()
            .position(|r| r.iter().any(|p| !p.is_finite()))
        {
            bail!("base model {} row {i} has a non-finite probability", b.name);
        }
    }
    Ok((n, c))
}

/// `[N, M·C + 3]`: the matrices side by side, then [`meta_features`].
pub fn stack_features(bases: &[BaseOof]) -> Result<Vec<Vec<f64>>> {
    let (n, c) = check_bases(bases)?;
    Ok((0..n)
        .map(|i| {
            let rows: Vec<&[f64]> = bases.iter().map(|b| b.proba[i].as_slice()).collect();
            let mut f = Vec::with_capacity(bases.len() * c + N_META_FEATURES);
            for r in &rows {
                f.extend_from_slice(r);
            }
            f.extend(meta_features(&rows));
            f
        })
        .collect())
}

/// Hyper-parameters of the meta-learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackConfig {
    /// Forest: 1000 trees, max depth 12, √features, balanced-subsample, seed 1337.
    pub forest: ForestParams,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            forest: ForestParams {
                n_trees: 1000,
                max_depth: Some(12),
                min_samples_split: 2,
                max_features: MaxFeatures::Sqrt,
                class_weight: ClassWeight::BalancedSubsample,
                bootstrap: true,
                oob_score: false,
                seed: 1337,
            },
        }
    }
}

impl StackConfig {
    /// The reference's meta-learner with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let mut c = Self::default();
        c.forest.seed = seed;
        c
    }
}

/// Held-out metrics of one fold of the meta-learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackFold {
    /// 0-based fold.
    pub fold: usize,
    /// Argmax accuracy on the held-out rows.
    pub accuracy: f64,
    /// Macro F1 on the held-out rows.
    pub f1: f64,
    /// Training rows.
    #[serde(default)]
    pub train_size: usize,
    /// Held-out rows.
    #[serde(default)]
    pub val_size: usize,
}

/// The stack's `metrics.json` (the reference's fields first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackReport {
    /// `"stack"`.
    pub model: String,
    /// Seed of the meta-learner.
    pub seed: u64,
    /// Number of folds.
    pub cv_folds: usize,
    /// Mean over folds of the held-out accuracy.
    pub accuracy: f64,
    /// Mean over folds of the held-out macro F1.
    pub f1: f64,
    /// ECE (10 bins) of the pooled held-out probabilities.
    pub ece: f64,
    /// Log-loss of the pooled held-out probabilities.
    pub logloss: f64,
    /// Per-fold metrics.
    pub fold_details: Vec<StackFold>,
    /// Base models, in column order.
    #[serde(default)]
    pub base_models: Vec<String>,
    /// Class names, in column order.
    #[serde(default)]
    pub classes: Vec<String>,
}

/// A fitted meta-learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackModel {
    config: StackConfig,
    base_models: Vec<String>,
    classes: Vec<String>,
    forest: Forest,
}

impl StackModel {
    /// Stack probabilities `[N, C]` from the base models' probabilities, which must be the
    /// models the stack was fitted on, in the same order.
    pub fn predict_proba(&self, bases: &[BaseOof]) -> Result<Vec<Vec<f64>>> {
        let names: Vec<&str> = bases.iter().map(|b| b.name.as_str()).collect();
        ensure!(
            names == self.base_models,
            "the stack was fitted on {:?}, got {names:?}",
            self.base_models
        );
        let (_, c) = check_bases(bases)?;
        ensure!(
            c == self.classes.len(),
            "{c} probability columns, the stack has {} classes",
            self.classes.len()
        );
        self.forest.predict_proba(&stack_features(bases)?)
    }

    /// Base models in column order.
    pub fn base_models(&self) -> &[String] {
        &self.base_models
    }

    /// Class names in column order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The meta-learner's hyper-parameters.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Writes the model as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// Reads a model written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a saved stack model", path.display()))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Cross-validates the meta-learner on `folds` (`(train rows, held-out rows)`, the base
/// models' folds), then fits it on every row. `labels[i]` is the class of row `i` of every
/// base matrix; columns follow the sorted labels.
pub fn train_stack(
    bases: &[BaseOof],
    labels: &[String],
    folds: &[(Vec<usize>, Vec<usize>)],
    config: &StackConfig,
) -> Result<(StackModel, StackReport)> {
    let (n, c) = check_bases(bases)?;
    ensure!(
        labels.len() == n,
        "{} labels for {n} OOF rows",
        labels.len()
    );
    let map = LabelMap::fit(labels);
    ensure!(
        map.len() == c,
        "the labels have {} classes {:?} but the OOF matrices {c} columns",
        map.len(),
        map.classes()
    );
    ensure!(map.len() >= 2, "stacking needs at least two classes");
    ensure!(!folds.is_empty(), "stacking needs at least one fold");
    let y = map.encode(labels)?;
    let x = stack_features(bases)?;
    let mut seen = vec![false; n];
    for (f, (train, val)) in folds.iter().enumerate() {
        ensure!(
            !train.is_empty() && !val.is_empty(),
            "fold {f} has an empty part"
        );
        if let Some(&i) = train.iter().chain(val).find(|&&i| i >= n) {
            bail!("fold {f} names row {i}, but there are {n} rows");
        }
        for &i in val {
            ensure!(!seen[i], "row {i} is held out by more than one fold");
            seen[i] = true;
        }
    }
    let select = |idx: &[usize]| -> (Vec<Vec<f64>>, Vec<usize>) {
        (
            idx.iter().map(|&i| x[i].clone()).collect(),
            idx.iter().map(|&i| y[i]).collect(),
        )
    };
    let mut fold_details = Vec::with_capacity(folds.len());
    let (mut pooled_y, mut pooled_p) = (Vec::new(), Vec::new());
    for (f, (train, val)) in folds.iter().enumerate() {
        let (xt, yt) = select(train);
        let (xv, yv) = select(val);
        let forest = Forest::fit(&xt, &yt, c, &config.forest)?;
        let proba = forest.predict_proba(&xv)?;
        let rep = ClassificationReport::from_probabilities(&yv, &proba)?;
        tracing::info!(
            "stack fold {}/{}: accuracy {:.3} macro F1 {:.3}",
            f + 1,
            folds.len(),
            rep.accuracy,
            rep.macro_avg.f1
        );
        fold_details.push(StackFold {
            fold: f,
            accuracy: rep.accuracy,
            f1: rep.macro_avg.f1,
            train_size: train.len(),
            val_size: val.len(),
        });
        pooled_y.extend(yv);
        pooled_p.extend(proba);
    }
    let k = fold_details.len() as f64;
    let report = StackReport {
        model: "stack".into(),
        seed: config.forest.seed,
        cv_folds: folds.len(),
        accuracy: fold_details.iter().map(|d| d.accuracy).sum::<f64>() / k,
        f1: fold_details.iter().map(|d| d.f1).sum::<f64>() / k,
        ece: ece(&pooled_y, &pooled_p, 10),
        logloss: log_loss(&pooled_y, &pooled_p),
        fold_details,
        base_models: bases.iter().map(|b| b.name.clone()).collect(),
        classes: map.classes().to_vec(),
    };
    let forest = Forest::fit(&x, &y, c, &config.forest)?;
    let model = StackModel {
        config: config.clone(),
        base_models: report.base_models.clone(),
        classes: report.classes.clone(),
        forest,
    };
    Ok((model, report))
}

/// Where [`run_stack`] writes: `<artifacts_dir>/models/stack/{stack.json, metrics.json}`.
pub fn stack_dir(artifacts_dir: &Path) -> PathBuf {
    artifacts_dir.join("models").join("stack")
}

/// The reference's `train_stack` from files: loads the OOF matrices of [`STACK_BASE_MODELS`]
/// for `seed` under `artifacts_dir`, trains ([`train_stack`] with [`StackConfig::with_seed`]
/// unless `config` is given), and writes `stack.json` and `metrics.json` to [`stack_dir`].
pub fn run_stack(
    artifacts_dir: &Path,
    seed: u64,
    labels: &[String],
    folds: &[(Vec<usize>, Vec<usize>)],
    config: Option<&StackConfig>,
) -> Result<(StackModel, StackReport)> {
    let bases = load_oof_bases(artifacts_dir, seed, &STACK_BASE_MODELS)?;
    let config = config
        .cloned()
        .unwrap_or_else(|| StackConfig::with_seed(seed));
    let (model, report) = train_stack(&bases, labels, folds, &config)?;
    let dir = stack_dir(artifacts_dir);
    model.save(&dir.join("stack.json"))?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("writing {}", dir.join("metrics.json").display()))?;
    Ok((model, report))
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

/// Which F1 of the base models the stack's macro F1 is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum F1Comparison {
    /// The bases' macro F1 (like with like).
    #[default]
    MacroVsMacro,
    /// The bases' weighted F1, as the reference's audit reads it from `evaluate`'s
    /// `metrics.json`.
    ReferenceWeighted,
}

/// Thresholds and mode of [`audit`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AuditOptions {
    /// Base F1 to compare with.
    pub comparison: F1Comparison,
    /// Minimum F1 gain over the best base model, in percentage points: 2.0.
    pub min_f1_gain_pp: f64,
    /// Maximum stack ECE: 0.03.
    pub max_ece: f64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            comparison: F1Comparison::MacroVsMacro,
            min_f1_gain_pp: 2.0,
            max_ece: 0.03,
        }
    }
}

/// A base model's F1 scores for the audit (`None` where unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseScore {
    /// Model name.
    pub model: String,
    /// Macro F1.
    pub macro_f1: Option<f64>,
    /// Weighted F1.
    pub weighted_f1: Option<f64>,
}

impl BaseScore {
    /// Both F1 scores from a classification report.
    pub fn from_report(model: impl Into<String>, report: &ClassificationReport) -> Self {
        Self {
            model: model.into(),
            macro_f1: Some(report.macro_avg.f1),
            weighted_f1: Some(report.weighted_avg.f1),
        }
    }

    /// Reads a base model's `metrics.json`:
    ///
    /// * macro F1: top-level `macro_f1`, else `macro_avg.f1` of the embedded classification
    ///   report (`oof` as `moola evaluate` writes it, or `report` as the OOF pipeline does, or
    ///   the document itself);
    /// * weighted F1: top-level `f1` (`evaluate`'s mean over folds, what the reference's audit
    ///   reads), else the report's `weighted_avg.f1`.
    pub fn from_metrics_json(model: impl Into<String>, path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let report = ["oof", "report"]
            .iter()
            .find_map(|k| v.get(k).filter(|r| r.get("macro_avg").is_some()))
            .or_else(|| v.get("macro_avg").map(|_| &v));
        let avg = |which: &str| {
            report
                .and_then(|r| r.get(which))
                .and_then(|a| a.get("f1"))
                .and_then(serde_json::Value::as_f64)
        };
        let score = Self {
            model: model.into(),
            macro_f1: v
                .get("macro_f1")
                .and_then(serde_json::Value::as_f64)
                .or_else(|| avg("macro_avg")),
            weighted_f1: v
                .get("f1")
                .and_then(serde_json::Value::as_f64)
                .or_else(|| avg("weighted_avg")),
        };
        ensure!(
            score.macro_f1.is_some() || score.weighted_f1.is_some(),
            "{} holds no F1 score (neither `f1`, `macro_f1` nor a classification report)",
            path.display()
        );
        Ok(score)
    }

    fn f1(&self, comparison: F1Comparison) -> Option<f64> {
        match comparison {
            F1Comparison::MacroVsMacro => self.macro_f1,
            F1Comparison::ReferenceWeighted => self.weighted_f1,
        }
    }
}

/// The audit's outcome; [`Display`](fmt::Display) renders a pass/fail table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditVerdict {
    /// Accepted by either criterion.
    pub passed: bool,
    /// The F1-gain criterion holds.
    pub passed_by_f1: bool,
    /// The ECE criterion holds.
    pub passed_by_ece: bool,
    /// The stack's macro F1.
    pub stack_f1: f64,
    /// The stack's ECE.
    pub stack_ece: f64,
    /// The best base model and its F1 (of the compared kind); `None` without any base score
    /// (the reference then compares with 0).
    pub best_base: Option<(String, f64)>,
    /// `(stack F1 − best base F1) · 100`.
    pub f1_gain_pp: f64,
    /// The base scores considered.
    pub bases: Vec<BaseScore>,
    /// Thresholds and mode used.
    pub options: AuditOptions,
}

/// The acceptance rule: `(stack macro F1 − best base F1) · 100 ≥ min_f1_gain_pp` or
/// `stack ECE ≤ max_ece`. Bases without an F1 of the compared kind are skipped.
pub fn audit(stack: &StackReport, bases: &[BaseScore], options: &AuditOptions) -> AuditVerdict {
    let best_base = bases
        .iter()
        .filter_map(|b| b.f1(options.comparison).map(|f| (b.model.clone(), f)))
        .fold(None::<(String, f64)>, |best, (m, f)| match best {
            Some((_, bf)) if bf >= f => best,
            _ => Some((m, f)),
        });
    let f1_gain_pp = (stack.f1 - best_base.as_ref().map_or(0.0, |b| b.1)) * 100.0;
    // A tolerance of 1e-9 pp keeps e.g. 0.62 − 0.60 (1.9999999999999 pp) at 2 pp.
    let passed_by_f1 = f1_gain_pp >= options.min_f1_gain_pp - 1e-9;
    let passed_by_ece = stack.ece <= options.max_ece;
    AuditVerdict {
        passed: passed_by_f1 || passed_by_ece,
        passed_by_f1,
        passed_by_ece,
        stack_f1: stack.f1,
        stack_ece: stack.ece,
        best_base,
        f1_gain_pp,
        bases: bases.to_vec(),
        options: *options,
    }
}

/// [`audit`] from files: the stack's `metrics.json` ([`StackReport`]) and each base model's
/// `metrics.json` ([`BaseScore::from_metrics_json`]); a missing base file is skipped, like the
/// reference.
pub fn audit_files(
    stack_metrics: &Path,
    base_metrics: &[(String, PathBuf)],
    options: &AuditOptions,
) -> Result<AuditVerdict> {
    let text = std::fs::read_to_string(stack_metrics)
        .with_context(|| format!("reading {}", stack_metrics.display()))?;
    let stack: StackReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a stack metrics file", stack_metrics.display()))?;
    let mut bases = Vec::new();
    for (model, path) in base_metrics {
        if path.exists() {
            bases.push(BaseScore::from_metrics_json(model.clone(), path)?);
        } else {
            tracing::warn!("audit: no metrics for {model} at {}", path.display());
        }
    }
    Ok(audit(&stack, &bases, options))
}

/// The metrics file of each of [`STACK_BASE_MODELS`] for [`audit_files`]: `moola oof`'s report
/// `<artifacts_dir>/oof/<model>/v1/seed_<seed>.json` when there is one, else the reference's
/// layout `<artifacts_dir>/models/<model>/metrics.json`.
pub fn base_metrics_paths(artifacts_dir: &Path, seed: u64) -> Vec<(String, PathBuf)> {
    STACK_BASE_MODELS
        .iter()
        .map(|m| {
            // The pooled OOF report `moola oof` writes next to the matrix the stack was trained
            // on; else `evaluate`'s metrics.json (the file the reference's audit reads).
            let oof = crate::oof::oof_path(artifacts_dir, m, seed).with_extension("json");
            let path = if oof.is_file() {
                oof
            } else {
                artifacts_dir.join("models").join(m).join("metrics.json")
            };
            (m.to_string(), path)
        })
        .collect()
}

fn mark(ok: bool) -> &'static str {
    if ok { "PASS" } else { "fail" }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

impl fmt::Display for AuditVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.options.comparison {
            F1Comparison::MacroVsMacro => "stack macro F1 vs base macro F1",
            F1Comparison::ReferenceWeighted => {
                "stack macro F1 vs base weighted F1 (the reference's comparison)"
            }
        };
        writeln!(f, "stack acceptance audit ({kind})")?;
        writeln!(
            f,
            "{:<18} {:>10} {:>12}",
            "model", "macro F1", "weighted F1"
        )?;
        for b in &self.bases {
            writeln!(
                f,
                "{:<18} {:>10} {:>12}",
                b.model,
                opt(b.macro_f1),
                opt(b.weighted_f1)
            )?;
        }
        writeln!(f, "{:<18} {:>10.4} {:>12}", "stack", self.stack_f1, "-")?;
        let best = self
            .best_base
            .as_ref()
            .map_or_else(|| "none (0)".to_string(), |(m, v)| format!("{m} ({v:.4})"));
        writeln!(f, "best base: {best}")?;
        writeln!(
            f,
            "{:<28} {:>10} {:>12} {:>6}",
            "criterion", "value", "threshold", "result"
        )?;
        writeln!(
            f,
            "{:<28} {:>+10.2} {:>12} {:>6}",
            "F1 gain over best base (pp)",
            self.f1_gain_pp,
            format!(">= {:.2}", self.options.min_f1_gain_pp),
            mark(self.passed_by_f1)
        )?;
        writeln!(
            f,
            "{:<28} {:>10.4} {:>12} {:>6}",
            "stack ECE",
            self.stack_ece,
            format!("<= {:.4}", self.options.max_ece),
            mark(self.passed_by_ece)
        )?;
        let how = match (self.passed_by_f1, self.passed_by_ece) {
            (true, true) => " (F1 gain and ECE)",
            (true, false) => " (F1 gain)",
            (false, true) => " (ECE)",
            (false, false) => "",
        };
        write!(
            f,
            "verdict: {}{how}",
            if self.passed { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_features_by_hand() {
        let a = [0.8, 0.2];
        let b = [0.6, 0.4];
        let [std, ent, max] = meta_features(&[&a, &b]);
        assert!((std - 0.1).abs() < 1e-12);
        assert!((max - 0.8).abs() < 1e-12);
        // mean (0.7, 0.3) + 1e-10, normalised.
        let (p, q) = ((0.7 + 1e-10) / (1.0 + 2e-10), (0.3 + 1e-10) / (1.0 + 2e-10));
        let h = -(p * f64::ln(p) + q * f64::ln(q));
        assert!((ent - h).abs() < 1e-12);
    }
}
