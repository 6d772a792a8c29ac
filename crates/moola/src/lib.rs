//! # moola: classifiers of fixed-length OHLC market windows, on Burn
//!
//! A Rust re-implementation of the deep-learning core of HeinekenBottle/moola.
//!
//! The library in one screen:
//!
//! * [`Classifier`]: `new(spec, recipe, device)`, `with_seed`, `fit` / `fit_with_validation`,
//!   `predict`, `predict_proba`, `predict_with_pointers`, `save`, `load`;
//! * [`ModelSpec`]: SimpleLSTM, CNN-Transformer (with pointer heads) or RWKV-TS and their
//!   hyper-parameters; [`TrainConfig`]: the reference training recipe, precision included;
//! * [`WindowSet`] and [`data::read_any`]: parquet, UCR `.ts` and OHLC CSV windows;
//! * [`cv::cross_validate`]: stratified k-fold with out-of-fold probabilities;
//! * [`import::import_torch_checkpoint`]: reference PyTorch checkpoints;
//! * [`MoolaConfig`]: the yacs-style run configuration of the command line.
//!
//! Modules, from data to command line: [`data`], [`augment`], [`nn`], [`model`], [`loss`],
//! [`train`] (the kiln task), [`classifier`], [`cv`], [`import`], [`bench`], [`config`], and
//! [`cli`] on top, which nothing below imports.

pub mod augment;
pub mod bench;
pub mod classical;
pub mod classifier;
pub mod cli;
pub mod config;
pub mod cv;
pub mod data;
pub mod estimator;
pub mod import;
pub mod loss;
pub mod manifest;
pub mod model;
pub mod nn;
pub mod oof;
pub mod pretrain;
pub mod splits;
pub mod stack;
pub mod train;

pub use classifier::{Classifier, FitReport};
pub use config::MoolaConfig;
pub use data::WindowSet;
pub use estimator::Estimator;
pub use model::ModelSpec;
pub use oof::{OofResult, generate_oof};
pub use splits::{Fold, get_or_create_folds};
pub use train::TrainConfig;
