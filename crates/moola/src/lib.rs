//! # moola: classifiers of fixed-length OHLC market windows, on Burn
//!
//! A Rust re-implementation of HeinekenBottle/moola: the deep classifiers, their
//! self-supervised pre-training, the classical baselines and the out-of-fold stacking pipeline.
//!
//! The library in one screen:
//!
//! * [`Classifier`]: `new(spec, recipe, device)` / `for_model(name, device)`, `with_seed`,
//!   `with_callback`, `fit` / `fit_with_validation`, `predict`, `predict_proba`,
//!   `predict_with_pointers`, `save`, `load` (a model file or a training checkpoint);
//! * [`ModelSpec`]: SimpleLSTM, CNN-Transformer (with pointer heads) or RWKV-TS and their
//!   hyper-parameters; [`TrainConfig`]: the reference training recipe, precision and a
//!   pre-trained encoder ([`train::EncoderTransfer`]) included;
//! * [`pretrain::masked_lstm`] and [`pretrain::ts_tcc`]: `pretrain` an encoder on unlabelled
//!   windows, `save_encoder` / `load_encoder`, `load_pretrained_encoder` into SimpleLSTM / the
//!   CNN-Transformer;
//! * [`WindowSet`] and [`data::read_any`]: parquet, UCR `.ts` and OHLC CSV windows;
//! * [`Estimator`]: what the pipelines need of a model; [`classical`]: LogReg, random forest and
//!   boosted trees on price-action features;
//! * [`cv::cross_validate`], [`splits`] (persisted folds), [`generate_oof`] (out-of-fold
//!   probabilities), [`stack`] (the meta-learner and the acceptance audit), [`manifest`];
//! * [`import::import_torch_checkpoint`]: reference PyTorch checkpoints (through `kiln::torch`);
//! * [`MoolaConfig`]: the yacs-style run configuration of the command line.
//!
//! Modules, from data to command line: [`data`], [`augment`], [`nn`], [`model`], [`loss`],
//! [`train`] (the kiln task), [`classifier`], [`pretrain`], [`estimator`], [`classical`],
//! [`cv`], [`splits`], [`oof`], [`stack`], [`manifest`], [`import`], [`bench`], [`config`], and
//! [`cli`] on top, which nothing below imports.

pub mod augment;
pub mod bench;
pub mod benchmark;
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
pub mod run;
pub mod scaling;
pub mod splits;
pub mod stack;
pub mod train;

pub use classifier::{Classifier, FitReport};
pub use config::MoolaConfig;
pub use data::WindowSet;
pub use estimator::Estimator;
pub use model::ModelSpec;
pub use oof::{OofResult, generate_oof};
pub use scaling::InputScaling;
pub use splits::{Fold, get_or_create_folds};
pub use train::TrainConfig;
