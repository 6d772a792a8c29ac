//! The training loop: the [`trainer::Trainer`] and its [`trainer::Task`], one optimiser step
//! ([`step`]) under an [`optim`] plan, the callbacks (early stopping, [`checkpoint`]s), and what a
//! run leaves behind: the CSV [`metric_log`], [`tensorboard`] event files, [`plot`]ted curves and
//! [`progress`] output.

pub mod callbacks;
pub mod checkpoint;
pub mod metric_log;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod step;
pub mod tensorboard;
pub mod trainer;
