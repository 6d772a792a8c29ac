//! # kiln: a Lightning-like trainer for Burn
//!
//! Shared plumbing of the workspace's model crates (`moola`, `reid`), one folder per concept:
//!
//! * [`train`], the training loop: the [`Trainer`](trainer::Trainer) over a
//!   [`Task`](trainer::Task), one optimiser [`step`] under an [`optim`] policy (automatic
//!   [`Standard`](optim::Standard) or manual, on Burn's optimisers and schedulers), [`callbacks`]
//!   (early stopping with restore-best, checkpointing best-k / last / every N, divergence checks),
//!   [`checkpoint`] files with exact resume, the CSV [`metric_log`], [`tensorboard`] event files,
//!   [`plot`]ted curves and [`progress`] bars;
//! * [`numerics`], layers and numerics from the bottom up: [`ops`] (broadcasting element-wise ops
//!   laid out for the CPU backend's fast kernels), the [`fused`] kernels with their own backward
//!   on burn-flex (LayerNorm, BatchNorm, LSTM cell, RWKV, ReLU, 2-D convolution, and the inference
//!   convolution with its BatchNorm, residual and ReLU in one pass), [`amp`] mixed precision
//!   (`16-mixed`, `bf16-mixed`: the autocast op policy and the dynamic loss scaler) and [`nn`]
//!   (Dropout, BatchNorm and LayerNorm with PyTorch's numbers, the convolution + BatchNorm unit of
//!   a ResNet);
//! * [`dist`]: data-parallel training over devices and nodes on burn-collective (gradient
//!   all-reduce) and [`sync`] (rank-0 weight and buffer broadcast);
//! * [`files`]: atomic writes ([`io`]), the one convention for a model on disk ([`artifact`]: a
//!   card to build it + its weights), PyTorch `torch.save` files and their strict, by-name loading
//!   into any Burn module ([`torch`]) on a [`pickle`] reader that executes nothing;
//! * [`config`]: the yacs-style configuration (typed defaults, YAML, `KEY VALUE` overrides) on
//!   figment, Python [`literal`]s as yacs reads them, and the runtime flags every tool shares
//!   ([`cli`]);
//! * [`backend`]: `--device cpu|ndarray|flex|cuda|wgpu` → a concrete Burn backend, with a clear
//!   error when it is missing; [`metrics`]: classification metrics (accuracy, P/R/F1, ECE,
//!   Brier, log-loss, confusion); [`data`]: stratified splits, k-fold, batching; [`seed`]:
//!   reproducible seeding and per-rank random streams; [`alloc`]: allocator tuning for training
//!   processes; [`bench`]: timing helpers; [`testing`]: comparing runs and backends in tests.
//!
//! The modules of each folder are also re-exported at the crate root (`kiln::trainer`,
//! `kiln::amp`, ...), the paths code written before the folders were made uses.

/// The Burn release kiln is built on (0.21.0, without its `autodiff` and `flex` backends, which
/// come patched from [`backend`]), so that dependents use the same one without pinning it.
pub use burn;

pub mod alloc;
pub mod backend;
pub mod bench;
pub mod config;
pub mod data;
pub mod dist;
pub mod files;
pub mod metrics;
pub mod numerics;
pub mod seed;
pub mod testing;
pub mod train;

pub use config::{cli, literal};
pub use dist::sync;
pub use files::{artifact, io, pickle, torch};
pub use numerics::{amp, fused, nn, ops};
pub use train::{
    callbacks, checkpoint, metric_log, optim, plot, progress, step, tensorboard, trainer,
};

pub use amp::{GradScaler, autocast};
pub use backend::{BackendJob, DeviceKind, launch};
pub use callbacks::{Callback, EarlyStopping, Mode, ModelCheckpoint};
pub use optim::{Interval, LrControl, Optimization, Standard};
pub use tensorboard::TensorBoardLogger;
pub use trainer::{
    EpochInfo, FitOutcome, Loader, Precision, StepOutput, Strategy, Task, Trainer, TrainerConfig,
};
