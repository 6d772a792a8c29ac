//! # kiln: a Lightning-like trainer for Burn
//!
//! Shared plumbing of the workspace's model crates (`moola`, `reid`):
//!
//! * [`trainer`]: the [`Trainer`](trainer::Trainer) loop over a [`Task`](trainer::Task), with
//!   [`callbacks`] (early stopping with restore-best, checkpointing best-k / last / every N),
//!   resume from a checkpoint, a CSV metrics log, progress bars, and the `precision` and
//!   `strategy` settings;
//! * [`amp`]: mixed precision (`16-mixed`, `bf16-mixed`): the autocast op policy and the
//!   dynamic loss scaler;
//! * [`torch`]: PyTorch `torch.save` files (every format) and their strict, by-name loading into
//!   any Burn module under a per-model key rule; [`pickle`]: its tolerant unpickler, which
//!   executes nothing (Lightning checkpoints with yacs `CfgNode`s, `Counter`s, NumPy scalars and
//!   other objects burn-store refuses);
//! * [`dist`] and [`sync`]: data-parallel training over devices and nodes on burn-collective
//!   (gradient all-reduce, rank-0 weight and buffer broadcast);
//! * [`optim`]: automatic ([`Standard`](optim::Standard)) and manual optimisation policies on
//!   Burn's optimisers and learning-rate schedulers;
//! * [`checkpoint`]: atomic model files (Burn records) and checkpoint files, with shape checks;
//!   [`artifact`]: the one convention for a model on disk (a card to build it + its weights, in
//!   a model file pair or a training checkpoint);
//! * [`config`]: the yacs-style configuration (typed defaults, YAML, `KEY VALUE` overrides) on
//!   figment;
//! * [`backend`]: `--device cpu|cuda` → a concrete Burn backend, with a clear error when CUDA is
//!   missing;
//! * [`metrics`]: classification metrics (accuracy, P/R/F1, ECE, Brier, log-loss, confusion);
//! * [`data`]: stratified splits, k-fold, batching; [`seed`]: reproducible seeding;
//!   [`io`]: atomic writes; [`progress`]: progress bars and logging; [`alloc`]: allocator
//!   tuning for training processes; [`ops`]: broadcasting element-wise ops laid out for the
//!   CPU backend's fast kernels; [`fused`]: LayerNorm, BatchNorm, LSTM cell, RWKV, ReLU and 2-D
//!   convolution kernels as single autodiff operations with their own backward on burn-flex,
//!   and the inference convolution with its BatchNorm, residual and ReLU in one pass;
//!   [`nn`]: Dropout, BatchNorm and LayerNorm with PyTorch's numbers, and the
//!   convolution + BatchNorm (+ residual + ReLU) unit of a ResNet.

/// The Burn release kiln is built on (0.21.0, without its `autodiff` and `flex` backends, which
/// come patched from [`backend`]), so that dependents use the same one without pinning it.
pub use burn;

pub mod alloc;
pub mod amp;
pub mod artifact;
pub mod backend;
pub mod bench;
pub mod callbacks;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod fused;
pub mod io;
pub mod literal;
pub mod metric_log;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod pickle;
pub mod plot;
pub mod progress;
pub mod seed;
pub mod step;
pub mod sync;
pub mod tensorboard;
pub mod testing;
pub mod torch;
pub mod trainer;

pub use amp::{GradScaler, autocast};
pub use backend::{BackendJob, DeviceKind, launch};
pub use callbacks::{Callback, EarlyStopping, Mode, ModelCheckpoint};
pub use optim::{Interval, LrControl, Optimization, Standard};
pub use tensorboard::TensorBoardLogger;
pub use trainer::{
    EpochInfo, FitOutcome, Loader, Precision, StepOutput, Strategy, Task, Trainer, TrainerConfig,
};
