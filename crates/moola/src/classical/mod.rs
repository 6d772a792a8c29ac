//! Classical baselines of the reference: hand-made price-action features and three models on
//! them (logistic regression, random forest, gradient-boosted trees), and MiniRocket with a
//! ridge classifier on the raw windows, each an [`Estimator`](crate::Estimator) for `train`,
//! `predict`, the out-of-fold and stacking pipelines.
//!
//! * [`features`]: `engineer_classical_features` and the feature names;
//! * [`forest`]: a scikit-learn-style random forest (class weights, √features per split,
//!   out-of-bag estimates), used by [`models::RandomForest`] and by the stacking meta-learner;
//! * [`models`]: [`LogReg`], [`RandomForest`], [`GradientBoosting`] and [`ClassicalModel`]
//!   (by name / from a file);
//! * [`minirocket`]: the MiniRocket transform ([`MiniRocketParams`]) and [`MiniRocket`], the
//!   transform + ridge classifier (`minirocket`);
//! * [`ridge`]: `RidgeClassifierCV` (α by efficient leave-one-out) and its eigensolver.
//!
//! ```no_run
//! use moola::Estimator;
//! use moola::classical::ClassicalModel;
//!
//! let windows = moola::data::read_any("datasets/ohlc/windows.parquet".as_ref())?;
//! let mut model = ClassicalModel::from_name("rf", 1337)?;
//! model.fit(&windows)?;
//! let proba = model.predict_proba(&windows)?;
//! model.save("artifacts/models/rf/model.json".as_ref())?;
//! # let _ = proba;
//! # anyhow::Ok(())
//! ```
//!
//! # Which crates, and why
//!
//! * **Logistic regression: `linfa-logistic`.** Pure Rust (ndarray + argmin L-BFGS, no BLAS),
//!   the same objective as scikit-learn's lbfgs solver (summed log-loss + `alpha/2 · ‖w‖²` with
//!   the intercept unpenalised, so `alpha = 1/C`), binomial and multinomial. `smartcore`'s
//!   logistic regression gives the same predictions but took about 3× longer.
//! * **Gradient-boosted trees: `forust-ml`.** An XGBoost-style histogram booster with every
//!   option of the reference's `XGBClassifier` (rounds, depth, learning rate, row `subsample`,
//!   `colsample_bytree`, L2 `reg_lambda`, `min_child_weight`, 256 bins, sample weights, seed),
//!   light dependencies (rand, rayon, serde) and serde support for saving. It lacks a
//!   multi-class objective, hence one-vs-rest above two classes (see [`models`]).
//!   `perpetual` has no learning rate / depth / round settings (it tunes itself from a
//!   "budget"), `gbdt` is unmaintained and exact-greedy.
//! * **Random forest: no crate.** None offers what the reference relies on: `smartcore`'s
//!   forest has no sample or class weights (so no `balanced_subsample`), votes with one-hot
//!   leaves and keeps its weighted weak learner private; `linfa-trees` weighs samples but draws
//!   no features per split (no `max_features="sqrt"`) and stores no class distribution in its
//!   leaves; `linfa-ensemble` only bags whole trees. [`forest`] is a small (~300 lines) CART
//!   forest with exactly the scikit-learn options used here, and serves the stacking
//!   meta-learner (`max_depth` 12) too.
//!
//! Measured on the bundled `datasets/ohlc/windows.parquet` (453 windows, classes down/up, the
//! 37 inner-window features, 5 folds, release build, 2 cores):
//!
//! | model | accuracy | 5-fold time |
//! |---|---|---|
//! | [`forest`], 1000 trees, balanced subsample | 0.912 | 1.8 s |
//! | `smartcore` random forest, 1000 trees, √features, no class weights | 0.890 | 4.2 s |
//! | `linfa-logistic`, C = 1, 1000 iterations | 0.896 | 0.3 s |
//! | `smartcore` logistic regression, alpha = 1 | 0.896 | 1.0 s |
//!
//! With the models' own settings (`rf` and `xgb` on the expansion regions) the out-of-fold
//! accuracy is 0.903 (`logreg`), 1.000 (`rf`, 0.5 s for 5 folds, debug-profile test build) and
//! 1.000 (`xgb`, 0.4 s); see
//! the ignored `measure_on_bundled_windows` test. `linfa`, `linfa-logistic` and `forust-ml` add
//! about 45 s to a cold debug build on 2 cores.

pub mod features;
pub mod forest;
pub mod minirocket;
pub mod models;
pub mod ridge;

pub use features::{
    FEATURE_NAMES, FeatureOptions, FeatureVariant, engineer_classical_features,
    engineer_classical_features_with,
};
pub use forest::{ClassWeight, Forest, ForestParams, MaxFeatures};
pub use minirocket::{MINIROCKET, MiniRocket, MiniRocketConfig, MiniRocketParams};
pub use models::{
    BoostConfig, CLASSICAL_MODELS, ClassicalModel, GradientBoosting, LogReg, LogRegConfig,
    RandomForest, RfConfig,
};
