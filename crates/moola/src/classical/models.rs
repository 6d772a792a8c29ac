//! The classical base models on [`features`](super::features): logistic regression, random
//! forest and gradient-boosted trees (the reference's `logreg`, `rf` and `xgb`), each an
//! [`Estimator`].
//!
//! | model | reference | here |
//! |---|---|---|
//! | [`LogReg`] (`logreg`) | `LogisticRegression(max_iter=1000)`: L2, C = 1, lbfgs | `linfa-logistic` (L-BFGS, `alpha = 1/C` on the summed log-loss, intercept not penalised): binomial for 2 classes, multinomial otherwise, as scikit-learn ≥ 1.5 |
//! | [`RandomForest`] (`rf`) | `RandomForestClassifier(1000 trees, max_depth None, balanced_subsample, oob_score)` | [`forest`](super::forest) |
//! | [`GradientBoosting`] (`xgb`) | `XGBClassifier(500 rounds, depth 6, lr 0.05, subsample 0.8, colsample_bytree 0.8, reg_lambda 1, hist)` | `forust-ml` (XGBoost-style histogram trees, 256 bins) |
//!
//! Differences that remain, by design or for lack of a crate option:
//!
//! * **`xgb` with more than two classes** is one-vs-rest (one binary booster per class, the
//!   sigmoid outputs normalised to sum 1) where XGBoost grows one softmax tree per class and
//!   round; `forust-ml` has no multi-class objective. Two classes (the reference's data set)
//!   are exactly XGBoost's `binary:logistic`.
//! * **`xgb` class balance**: the reference oversamples with SMOTE inside `fit` and falls back to
//!   balanced sample weights `n / (k · count_c)` without imblearn; here the fallback is what
//!   runs ([`BoostConfig::balanced_weights`]).
//! * Random streams differ from NumPy's / XGBoost's, so fits match in distribution, not bit for
//!   bit.
//! * LogReg sees unscaled features, as the reference does (no `StandardScaler`), so L-BFGS may
//!   stop at `max_iter` like scikit-learn's (which warns).
//!
//! Expansion indices: like the reference, `rf` and `xgb` compute the features on the expansion
//! region when the window set carries expansion columns ([`RfConfig::use_expansion`]), `logreg`
//! on the inner window. When used, every row must have its indices.
//!
//! Files: [`Estimator::save`] writes one JSON document `{"model": "<name>", …}` holding the
//! configuration, the class names and the fitted state; [`ClassicalModel::load`] reads any of
//! the three back, [`LogReg::load`] etc. a specific one. Probabilities after a round trip are
//! identical.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use forust_ml::{GradientBooster, Matrix};
use linfa::prelude::*;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::features::{FeatureOptions, engineer_classical_features_with};
use super::forest::{ClassWeight, Forest, ForestParams, MaxFeatures};
use super::minirocket::{MINIROCKET, MiniRocket, MiniRocketConfig};
use crate::Estimator;
use crate::data::{LabelMap, WindowSet};

/// Name of the logistic-regression model.
pub const LOGREG: &str = "logreg";
/// Name of the random-forest model.
pub const RF: &str = "rf";
/// Name of the gradient-boosted-trees model (the reference's XGBoost slot).
pub const XGB: &str = "xgb";
/// The classical model names: the reference's three in its order, then MiniRocket.
pub const CLASSICAL_MODELS: [&str; 4] = [LOGREG, RF, XGB, super::minirocket::MINIROCKET];

/// The reference's default seed.
const SEED: u64 = 1337;

/// The features of `set` for a model: on the expansion regions when `use_expansion` and the set
/// has expansion columns, on the inner window otherwise.
fn features_of(
    set: &WindowSet,
    use_expansion: bool,
    options: &FeatureOptions,
) -> Result<Vec<Vec<f64>>> {
    let expansion = match (&set.expansion, use_expansion) {
        (Some(e), true) => Some(
            e.iter()
                .enumerate()
                .map(|(row, pair)| {
                    pair.with_context(|| {
                        format!(
                            "window {:?} (row {row}) has no expansion indices, but the model \
                             computes its features on the expansion region",
                            set.ids[row]
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        _ => None,
    };
    engineer_classical_features_with(set, expansion.as_deref(), options)
}

/// Features, class indices and the label map of a labelled training set (≥ 2 classes).
fn training_data(
    set: &WindowSet,
    use_expansion: bool,
    options: &FeatureOptions,
) -> Result<(Vec<Vec<f64>>, Vec<usize>, LabelMap)> {
    let labels = set.require_labels()?;
    ensure!(!set.is_empty(), "cannot fit on an empty window set");
    let map = LabelMap::fit(labels);
    ensure!(
        map.len() >= 2,
        "a classifier needs at least two classes, the training set has {:?}",
        map.classes()
    );
    let y = map.encode(labels)?;
    Ok((features_of(set, use_expansion, options)?, y, map))
}

fn not_fitted(name: &str) -> anyhow::Error {
    anyhow::anyhow!("the {name} model is not fitted")
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn to_array(x: &[Vec<f64>]) -> Array2<f64> {
    let cols = x.first().map_or(0, Vec::len);
    Array2::from_shape_fn((x.len(), cols), |(i, j)| x[i][j])
}

// ---------------------------------------------------------------------------------------------
// Logistic regression
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of [`LogReg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRegConfig {
    /// Inverse L2 strength (scikit-learn's `C`), 1.
    pub c: f64,
    /// L-BFGS iterations, 1000.
    pub max_iter: u64,
    /// Gradient tolerance, 1e-4 (scikit-learn's `tol`).
    pub tol: f64,
    /// Features on the expansion region when the set has one; `false` (the reference's LogReg
    /// ignores the indices).
    pub use_expansion: bool,
    /// Feature-set options.
    pub features: FeatureOptions,
    /// Seed (unused: the solver is deterministic; kept for the pipelines' bookkeeping).
    pub seed: u64,
}

impl Default for LogRegConfig {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
            use_expansion: false,
            features: FeatureOptions::default(),
            seed: SEED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LinearFit {
    classes: Vec<String>,
    /// Binary: one row, the logit of class 1. Otherwise one row per class (softmax).
    weights: Vec<Vec<f64>>,
    intercept: Vec<f64>,
}

impl LinearFit {
    fn proba(&self, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let logit = |k: usize, row: &[f64]| {
            self.intercept[k]
                + self.weights[k]
                    .iter()
                    .zip(row)
                    .map(|(w, v)| w * v)
                    .sum::<f64>()
        };
        x.iter()
            .map(|row| {
                if self.weights.len() == 1 {
                    let p = sigmoid(logit(0, row));
                    vec![1.0 - p, p]
                } else {
                    let z: Vec<f64> = (0..self.weights.len()).map(|k| logit(k, row)).collect();
                    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.iter().map(|v| v / s).collect()
                }
            })
            .collect()
    }
}

/// L2-regularised logistic regression on the classical features (`logreg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogReg {
    /// Hyper-parameters.
    pub config: LogRegConfig,
    fit: Option<LinearFit>,
}

impl LogReg {
    /// An unfitted model.
    pub fn new(config: LogRegConfig) -> Self {
        Self { config, fit: None }
    }

    /// Reads a model written by [`Estimator::save`].
    pub fn load(path: &Path) -> Result<Self> {
        match ClassicalModel::load(path)? {
            ClassicalModel::LogReg(m) => Ok(m),
            other => bail!(
                "{} holds a {} model, not {LOGREG}",
                path.display(),
                other.name()
            ),
        }
    }
}

impl Default for LogReg {
    fn default() -> Self {
        Self::new(LogRegConfig::default())
    }
}

impl Estimator for LogReg {
    fn name(&self) -> String {
        LOGREG.into()
    }

    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        let cfg = &self.config;
        ensure!(cfg.c > 0.0, "C must be positive, got {}", cfg.c);
        let (x, y, map) = training_data(data, cfg.use_expansion, &cfg.features)?;
        let xa = to_array(&x);
        let alpha = 1.0 / cfg.c;
        let fit = if map.len() == 2 {
            let ds = Dataset::new(xa, Array1::from(y));
            let m = LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(cfg.max_iter)
                .gradient_tolerance(cfg.tol)
                .fit(&ds)
                .context("fitting the logistic regression")?;
            // linfa's "positive" class is the larger one; store the logit of class 1.
            let sign = if m.labels().pos.class == 1 { 1.0 } else { -1.0 };
            LinearFit {
                classes: map.classes().to_vec(),
                weights: vec![m.params().iter().map(|w| sign * w).collect()],
                intercept: vec![sign * m.intercept()],
            }
        } else {
            let ds = Dataset::new(xa, Array1::from(y));
            let m = MultiLogisticRegression::default()
                .alpha(alpha)
                .max_iterations(cfg.max_iter)
                .gradient_tolerance(cfg.tol)
                .fit(&ds)
                .context("fitting the multinomial logistic regression")?;
            let params = m.params(); // [features, classes]
            LinearFit {
                classes: map.classes().to_vec(),
                weights: (0..params.ncols())
                    .map(|k| params.column(k).to_vec())
                    .collect(),
                intercept: m.intercept().to_vec(),
            }
        };
        self.fit = Some(fit);
        Ok(())
    }

    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let fit = self.fit.as_ref().ok_or_else(|| not_fitted(LOGREG))?;
        let x = features_of(data, self.config.use_expansion, &self.config.features)?;
        Ok(fit.proba(&x))
    }

    fn classes(&self) -> Result<Vec<String>> {
        Ok(self
            .fit
            .as_ref()
            .ok_or_else(|| not_fitted(LOGREG))?
            .classes
            .clone())
    }

    fn save(&self, path: &Path) -> Result<()> {
        save_json(path, &SavedRef::Logreg(self))
    }
}

// ---------------------------------------------------------------------------------------------
// Random forest
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of [`RandomForest`] (the reference's values by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfConfig {
    /// Forest hyper-parameters: 1000 trees, unlimited depth, `min_samples_split` 2, √features
    /// per split, balanced-subsample class weights, OOB score, seed 1337.
    pub forest: ForestParams,
    /// Features on the expansion region when the set has one; `true`.
    pub use_expansion: bool,
    /// Feature-set options.
    pub features: FeatureOptions,
}

impl Default for RfConfig {
    fn default() -> Self {
        Self {
            forest: ForestParams {
                n_trees: 1000,
                max_depth: None,
                min_samples_split: 2,
                max_features: MaxFeatures::Sqrt,
                class_weight: ClassWeight::BalancedSubsample,
                bootstrap: true,
                oob_score: true,
                seed: SEED,
            },
            use_expansion: true,
            features: FeatureOptions::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ForestFit {
    classes: Vec<String>,
    forest: Forest,
    oob_score: Option<f64>,
}

/// Random forest on the classical features (`rf`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomForest {
    /// Hyper-parameters.
    pub config: RfConfig,
    fit: Option<ForestFit>,
}

impl RandomForest {
    /// An unfitted model.
    pub fn new(config: RfConfig) -> Self {
        Self { config, fit: None }
    }

    /// Out-of-bag accuracy of the last fit (scikit-learn's `oob_score_`), when computed.
    pub fn oob_score(&self) -> Option<f64> {
        self.fit.as_ref()?.oob_score
    }

    /// Reads a model written by [`Estimator::save`].
    pub fn load(path: &Path) -> Result<Self> {
        match ClassicalModel::load(path)? {
            ClassicalModel::RandomForest(m) => Ok(m),
            other => bail!(
                "{} holds a {} model, not {RF}",
                path.display(),
                other.name()
            ),
        }
    }
}

impl Default for RandomForest {
    fn default() -> Self {
        Self::new(RfConfig::default())
    }
}

impl Estimator for RandomForest {
    fn name(&self) -> String {
        RF.into()
    }

    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        let cfg = &self.config;
        let (x, y, map) = training_data(data, cfg.use_expansion, &cfg.features)?;
        let forest = Forest::fit(&x, &y, map.len(), &cfg.forest)?;
        let oob_score = forest.oob_score(&y);
        if let Some(s) = oob_score {
            tracing::info!("rf: out-of-bag accuracy {s:.4}");
        }
        self.fit = Some(ForestFit {
            classes: map.classes().to_vec(),
            forest,
            oob_score,
        });
        Ok(())
    }

    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let fit = self.fit.as_ref().ok_or_else(|| not_fitted(RF))?;
        let x = features_of(data, self.config.use_expansion, &self.config.features)?;
        fit.forest.predict_proba(&x)
    }

    fn classes(&self) -> Result<Vec<String>> {
        Ok(self
            .fit
            .as_ref()
            .ok_or_else(|| not_fitted(RF))?
            .classes
            .clone())
    }

    fn save(&self, path: &Path) -> Result<()> {
        save_json(path, &SavedRef::Rf(self))
    }
}

// ---------------------------------------------------------------------------------------------
// Gradient-boosted trees
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of [`GradientBoosting`] (the reference's XGBoost values by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoostConfig {
    /// Boosting rounds (`n_estimators`), 500.
    pub n_rounds: usize,
    /// Maximum tree depth, 6.
    pub max_depth: usize,
    /// Shrinkage, 0.05.
    pub learning_rate: f32,
    /// Row fraction sampled per round, 0.8.
    pub subsample: f32,
    /// Feature fraction sampled per tree, 0.8.
    pub colsample_bytree: f64,
    /// L2 penalty on leaf weights, 1.
    pub reg_lambda: f32,
    /// Minimum hessian sum in a child (XGBoost's `min_child_weight`), 1.
    pub min_child_weight: f32,
    /// Histogram bins per feature (XGBoost's `max_bin`), 256.
    pub max_bin: u16,
    /// Sample weights `n / (k · count_c)` (the reference's fallback when SMOTE is unavailable);
    /// `true`.
    pub balanced_weights: bool,
    /// Seed, 1337.
    pub seed: u64,
    /// Features on the expansion region when the set has one; `true`.
    pub use_expansion: bool,
    /// Feature-set options.
    pub features: FeatureOptions,
}

impl Default for BoostConfig {
    fn default() -> Self {
        Self {
            n_rounds: 500,
            max_depth: 6,
            learning_rate: 0.05,
            subsample: 0.8,
            colsample_bytree: 0.8,
            reg_lambda: 1.0,
            min_child_weight: 1.0,
            max_bin: 256,
            balanced_weights: true,
            seed: SEED,
            use_expansion: true,
            features: FeatureOptions::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct BoostFit {
    classes: Vec<String>,
    /// Two classes: one booster for class 1. More: one booster per class (one-vs-rest).
    boosters: Vec<GradientBooster>,
}

/// Gradient-boosted trees on the classical features (`xgb`).
#[derive(Serialize, Deserialize)]
pub struct GradientBoosting {
    /// Hyper-parameters.
    pub config: BoostConfig,
    fit: Option<BoostFit>,
}

impl fmt::Debug for GradientBoosting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GradientBoosting")
            .field("config", &self.config)
            .field(
                "boosters",
                &self.fit.as_ref().map_or(0, |fit| fit.boosters.len()),
            )
            .finish()
    }
}

impl GradientBoosting {
    /// An unfitted model.
    pub fn new(config: BoostConfig) -> Self {
        Self { config, fit: None }
    }

    /// Reads a model written by [`Estimator::save`].
    pub fn load(path: &Path) -> Result<Self> {
        match ClassicalModel::load(path)? {
            ClassicalModel::GradientBoosting(m) => Ok(m),
            other => bail!(
                "{} holds a {} model, not {XGB}",
                path.display(),
                other.name()
            ),
        }
    }

    fn booster(&self, seed: u64) -> Result<GradientBooster> {
        let c = &self.config;
        let mut b = GradientBooster::default()
            .set_iterations(c.n_rounds)
            .set_learning_rate(c.learning_rate)
            .set_max_depth(c.max_depth)
            .set_l2(c.reg_lambda)
            .set_min_leaf_weight(c.min_child_weight)
            .set_nbins(c.max_bin)
            .set_subsample(c.subsample)
            .set_colsample_bytree(c.colsample_bytree)
            .set_seed(seed)
            .set_parallel(false);
        if c.subsample < 1.0 {
            b = b.set_sample_method(forust_ml::sampler::SampleMethod::Random);
        }
        Ok(b)
    }
}

impl Default for GradientBoosting {
    fn default() -> Self {
        Self::new(BoostConfig::default())
    }
}

impl Estimator for GradientBoosting {
    fn name(&self) -> String {
        XGB.into()
    }

    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        let cfg = &self.config;
        ensure!(
            cfg.subsample > 0.0 && cfg.subsample <= 1.0,
            "subsample must be in (0, 1], got {}",
            cfg.subsample
        );
        ensure!(
            cfg.colsample_bytree > 0.0 && cfg.colsample_bytree <= 1.0,
            "colsample_bytree must be in (0, 1], got {}",
            cfg.colsample_bytree
        );
        let (x, y, map) = training_data(data, cfg.use_expansion, &cfg.features)?;
        let (n, cols) = (x.len(), x[0].len());
        let column_major: Vec<f64> = (0..cols)
            .flat_map(|j| x.iter().map(move |r| r[j]))
            .collect();
        let matrix = Matrix::new(&column_major, n, cols);
        let k = map.len();
        let weights: Vec<f64> = if cfg.balanced_weights {
            let mut count = vec![0usize; k];
            for &c in &y {
                count[c] += 1;
            }
            y.iter()
                .map(|&c| n as f64 / (k as f64 * count[c] as f64))
                .collect()
        } else {
            vec![1.0; n]
        };
        let targets: Vec<usize> = if k == 2 { vec![1] } else { (0..k).collect() };
        let mut boosters = Vec::with_capacity(targets.len());
        for (i, &target) in targets.iter().enumerate() {
            let yt: Vec<f64> = y
                .iter()
                .map(|&c| f64::from(u8::from(c == target)))
                .collect();
            let mut b = self.booster(cfg.seed.wrapping_add(i as u64))?;
            b.fit(&matrix, &yt, &weights, None)
                .map_err(|e| anyhow::anyhow!("fitting the gradient-boosted trees: {e}"))?;
            boosters.push(b);
        }
        self.fit = Some(BoostFit {
            classes: map.classes().to_vec(),
            boosters,
        });
        Ok(())
    }

    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let fit = self.fit.as_ref().ok_or_else(|| not_fitted(XGB))?;
        let x = features_of(data, self.config.use_expansion, &self.config.features)?;
        let n = x.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let cols = x[0].len();
        let column_major: Vec<f64> = (0..cols)
            .flat_map(|j| x.iter().map(move |r| r[j]))
            .collect();
        let matrix = Matrix::new(&column_major, n, cols);
        let scores: Vec<Vec<f64>> = fit
            .boosters
            .iter()
            .map(|b| b.predict(&matrix, false).into_iter().map(sigmoid).collect())
            .collect();
        Ok((0..n)
            .map(|i| {
                if scores.len() == 1 {
                    vec![1.0 - scores[0][i], scores[0][i]]
                } else {
                    let s: f64 = scores.iter().map(|p| p[i]).sum();
                    scores.iter().map(|p| p[i] / s).collect()
                }
            })
            .collect())
    }

    fn classes(&self) -> Result<Vec<String>> {
        Ok(self
            .fit
            .as_ref()
            .ok_or_else(|| not_fitted(XGB))?
            .classes
            .clone())
    }

    fn save(&self, path: &Path) -> Result<()> {
        save_json(path, &SavedRef::Xgb(self))
    }
}

// ---------------------------------------------------------------------------------------------
// Any classical model
// ---------------------------------------------------------------------------------------------

/// One of the classical models, chosen by name or read from a file.
#[derive(Debug)]
pub enum ClassicalModel {
    /// `logreg`.
    LogReg(LogReg),
    /// `rf`.
    RandomForest(RandomForest),
    /// `xgb`.
    GradientBoosting(GradientBoosting),
    /// `minirocket`.
    MiniRocket(MiniRocket),
}

#[derive(Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub(super) enum SavedRef<'a> {
    Logreg(&'a LogReg),
    Rf(&'a RandomForest),
    Xgb(&'a GradientBoosting),
    Minirocket(&'a MiniRocket),
}

#[derive(Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
enum Saved {
    Logreg(LogReg),
    Rf(RandomForest),
    Xgb(GradientBoosting),
    Minirocket(MiniRocket),
}

pub(super) fn save_json(path: &Path, model: &SavedRef<'_>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec(model)?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

impl ClassicalModel {
    /// An unfitted model with the reference's hyper-parameters: `logreg`, `rf` or `xgb`
    /// (`gbt` is accepted for `xgb`), or `minirocket` with the paper's, with `seed`.
    pub fn from_name(name: &str, seed: u64) -> Result<Self> {
        Ok(match name {
            LOGREG => ClassicalModel::LogReg(LogReg::new(LogRegConfig {
                seed,
                ..LogRegConfig::default()
            })),
            RF => {
                let mut config = RfConfig::default();
                config.forest.seed = seed;
                ClassicalModel::RandomForest(RandomForest::new(config))
            }
            XGB | "gbt" => ClassicalModel::GradientBoosting(GradientBoosting::new(BoostConfig {
                seed,
                ..BoostConfig::default()
            })),
            MINIROCKET => ClassicalModel::MiniRocket(MiniRocket::new(MiniRocketConfig {
                seed,
                ..MiniRocketConfig::default()
            })),
            other => {
                bail!("unknown classical model {other:?}; expected one of {CLASSICAL_MODELS:?}")
            }
        })
    }

    /// Reads any classical model written by [`Estimator::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let saved: Saved = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a saved classical model", path.display()))?;
        Ok(match saved {
            Saved::Logreg(m) => ClassicalModel::LogReg(m),
            Saved::Rf(m) => ClassicalModel::RandomForest(m),
            Saved::Xgb(m) => ClassicalModel::GradientBoosting(m),
            Saved::Minirocket(m) => ClassicalModel::MiniRocket(m),
        })
    }

    fn inner(&self) -> &dyn Estimator {
        match self {
            ClassicalModel::LogReg(m) => m,
            ClassicalModel::RandomForest(m) => m,
            ClassicalModel::GradientBoosting(m) => m,
            ClassicalModel::MiniRocket(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Estimator {
        match self {
            ClassicalModel::LogReg(m) => m,
            ClassicalModel::RandomForest(m) => m,
            ClassicalModel::GradientBoosting(m) => m,
            ClassicalModel::MiniRocket(m) => m,
        }
    }
}

impl Estimator for ClassicalModel {
    fn name(&self) -> String {
        self.inner().name()
    }
    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        self.inner_mut().fit(data)
    }
    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        self.inner().predict_proba(data)
    }
    fn classes(&self) -> Result<Vec<String>> {
        self.inner().classes()
    }
    fn save(&self, path: &Path) -> Result<()> {
        self.inner().save(path)
    }
}
