//! The Lightning-like training loop.
//!
//! A [`Task`] is the LightningModule counterpart: it knows its data, how to compute a training
//! loss from a batch, and how to validate. The [`Trainer`] owns everything around that: epochs,
//! seeding, the optimisation step (through an [`Optimization`]), validation cadence, callbacks
//! (early stopping, checkpointing), the CSV metrics log, progress bars, and resuming a run from a
//! checkpoint. Models never re-implement any of this.
//!
//! ```text
//! for epoch in start..max_epochs
//!     seed backend + data streams from (seed, epoch)
//!     model = task.on_epoch_start(model)           // freeze / unfreeze schedules
//!     for batch in task.train_loader(epoch)
//!         out   = task.training_step(model, batch) // forward + loss
//!         model = optimization.step(model, out.loss)
//!     metrics = train means + task.validate(model.valid()) + lr
//!     callbacks → remember best / save checkpoints / stop
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::callbacks::{Actions, Callback, EpochEnd};
use crate::checkpoint::{
    CheckpointMeta, load_checked, read_checkpoint, record_from_bytes, record_to_bytes,
    write_checkpoint,
};
use crate::metric_log::{MetricLog, Row};
use crate::optim::Optimization;
use crate::{progress, seed};

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Full f32 (the only mode on CPU).
    #[default]
    F32,
    /// f32 master weights with f16 compute and dynamic loss scaling (PyTorch AMP, CUDA only).
    F16Mixed,
    /// f32 master weights with bf16 compute (CUDA only).
    Bf16Mixed,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "32" | "f32" | "32-true" => Ok(Self::F32),
            "16" | "16-mixed" | "f16-mixed" => Ok(Self::F16Mixed),
            "bf16" | "bf16-mixed" => Ok(Self::Bf16Mixed),
            _ => Err(format!(
                "unknown precision `{s}`: expected 32, 16-mixed or bf16-mixed"
            )),
        }
    }
}

/// How training is spread over devices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One device.
    #[default]
    SingleDevice,
    /// Data-parallel over several devices of one machine (gradient all-reduce).
    Ddp {
        /// Number of devices.
        devices: usize,
    },
}

/// Trainer settings (Lightning's `Trainer(...)` arguments).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// Number of epochs to train (a resumed run counts the epochs already done).
    pub max_epochs: usize,
    /// Seed of every random stream of the run.
    pub seed: u64,
    /// Validate after every N-th epoch (and after the last one).
    pub val_every_n_epochs: usize,
    /// Log an epoch summary every N epochs (the reference logs every `max(1, epochs/10)`).
    pub log_every_n_epochs: usize,
    /// Directory for `metrics.csv` and checkpoints; `None` keeps everything in memory.
    pub run_dir: Option<PathBuf>,
    /// Resume from this checkpoint.
    pub resume_from: Option<PathBuf>,
    /// Show progress bars (they are hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Numeric precision.
    pub precision: Precision,
    /// Device strategy.
    pub strategy: Strategy,
}

impl TrainerConfig {
    /// Defaults for `max_epochs` epochs.
    pub fn new(max_epochs: usize) -> Self {
        Self {
            max_epochs,
            seed: seed::DEFAULT_SEED,
            val_every_n_epochs: 1,
            log_every_n_epochs: (max_epochs / 10).max(1),
            run_dir: None,
            resume_from: None,
            progress: true,
            precision: Precision::F32,
            strategy: Strategy::SingleDevice,
        }
    }
}

/// Position of the loop, given to tasks.
#[derive(Debug, Clone, Copy)]
pub struct EpochInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// Total epochs of the run.
    pub max_epochs: usize,
    /// Optimiser steps taken before this call.
    pub global_step: usize,
    /// The run seed.
    pub seed: u64,
}

/// What a training step returns.
pub struct StepOutput<B: AutodiffBackend> {
    /// The loss to back-propagate.
    pub loss: Tensor<B, 1>,
    /// Number of samples in the batch (weights the epoch means).
    pub batch_size: usize,
    /// Extra per-batch values to average over the epoch (logged as `train_<name>`).
    pub logs: Vec<(String, f64)>,
}

/// An epoch's batches: an owned iterator plus its length for the progress bar.
pub struct Loader<T> {
    /// The batches; an `Err` item aborts training with that error.
    pub batches: Box<dyn Iterator<Item = Result<T>>>,
    /// Number of batches, when known.
    pub len: Option<usize>,
}

impl<T: 'static> Loader<T> {
    /// A loader over already materialised batches.
    pub fn from_vec(batches: Vec<T>) -> Self {
        let len = batches.len();
        Self {
            batches: Box::new(batches.into_iter().map(Ok)),
            len: Some(len),
        }
    }
}

/// The LightningModule counterpart: data, loss and validation of one training problem.
pub trait Task<B: AutodiffBackend> {
    /// The trained module.
    type Model: AutodiffModule<B>;
    /// One training batch.
    type Batch: 'static;

    /// The training batches of `epoch`; `seed` is this epoch's data seed.
    fn train_loader(&mut self, info: &EpochInfo, seed: u64) -> Result<Loader<Self::Batch>>;

    /// Forward pass and loss of one batch.
    fn training_step(
        &mut self,
        model: &Self::Model,
        batch: Self::Batch,
        info: &EpochInfo,
    ) -> Result<StepOutput<B>>;

    /// Validation metrics of the current weights (e.g. `val_loss`, `val_acc`, `mAP`).
    fn validate(
        &mut self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
        info: &EpochInfo,
    ) -> Result<Row>;

    /// Called before each epoch; may change the model (freezing) or the learning rate.
    fn on_epoch_start(
        &mut self,
        model: Self::Model,
        _info: &EpochInfo,
        _lr: &mut dyn crate::optim::LrControl,
    ) -> Result<Self::Model> {
        Ok(model)
    }

    /// Task state saved in checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores [`Task::state`] on resume.
    fn load_state(&mut self, _state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The result of [`Trainer::fit`].
pub struct FitOutcome<M> {
    /// Final weights (the best ones when a callback restored them).
    pub model: M,
    /// Metrics of every epoch of the run (resumed runs include the earlier epochs).
    pub history: Vec<(usize, Row)>,
    /// Epochs completed in total.
    pub epochs_completed: usize,
    /// True when a callback stopped training before `max_epochs`.
    pub stopped_early: bool,
    /// True when the final weights are a restored best snapshot.
    pub restored_best: bool,
}

/// Runs [`Task`]s.
pub struct Trainer {
    config: TrainerConfig,
    callbacks: Vec<Box<dyn Callback>>,
}

impl Trainer {
    /// A trainer with no callbacks.
    pub fn new(config: TrainerConfig) -> Self {
        Self {
            config,
            callbacks: Vec::new(),
        }
    }

    /// Adds a callback.
    pub fn with_callback(mut self, callback: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The callbacks, e.g. to read the best checkpoint path after fitting.
    pub fn callbacks(&self) -> &[Box<dyn Callback>] {
        &self.callbacks
    }

    fn check_supported(&self) -> Result<()> {
        if self.config.precision != Precision::F32 {
            bail!(
                "precision {:?} is not available yet: mixed precision (f32 masters, half compute, \
                 loss scaling) is tracked in its own issue; use precision 32",
                self.config.precision
            );
        }
        if self.config.strategy != Strategy::SingleDevice {
            bail!(
                "strategy {:?} is not available yet: data-parallel training is tracked in its own \
                 issue; use the single-device strategy",
                self.config.strategy
            );
        }
        if self.config.val_every_n_epochs == 0 {
            bail!("val_every_n_epochs must be at least 1");
        }
        Ok(())
    }

    /// Trains `model` on `task` with `optim`. Resumes when the config names a checkpoint.
    pub fn fit<B, T, O>(
        &mut self,
        task: &mut T,
        mut model: T::Model,
        optim: &mut O,
        device: &B::Device,
    ) -> Result<FitOutcome<T::Model>>
    where
        B: AutodiffBackend,
        T: Task<B>,
        O: Optimization<B, T::Model>,
    {
        self.check_supported()?;
        let cfg = self.config.clone();
        let mut seed = cfg.seed;
        let mut start_epoch = 0;
        let mut global_step = 0;
        let mut best_model: Option<T::Model> = None;

        if let Some(path) = &cfg.resume_from {
            let (meta, sections) = read_checkpoint(path)?;
            let what = format!("checkpoint {}", path.display());
            let bytes = sections
                .get("model")
                .cloned()
                .with_context(|| format!("{what} has no model section"))?;
            let record = record_from_bytes::<B, _>(bytes, device)
                .with_context(|| format!("{what} does not hold weights of this model"))?;
            model = load_checked(model, record, &what)?;
            if let Some(bytes) = sections.get("best_model").cloned() {
                let record = record_from_bytes::<B, _>(bytes, device)?;
                best_model = Some(load_checked(model.clone(), record, &what)?);
            }
            optim
                .load_state(&sections, device)
                .with_context(|| format!("cannot restore the optimiser from {what}"))?;
            for cb in &mut self.callbacks {
                if let Some(state) = meta.callbacks.get(&cb.name()) {
                    cb.load_state(state.clone()).with_context(|| {
                        format!("cannot restore callback {} from {what}", cb.name())
                    })?;
                }
            }
            task.load_state(meta.task.clone())?;
            if meta.seed != seed {
                tracing::warn!(
                    "resuming with the checkpoint's seed {} (the configuration says {seed})",
                    meta.seed
                );
                seed = meta.seed;
            }
            start_epoch = meta.epochs_completed;
            global_step = meta.global_step;
            tracing::info!(
                "resumed from {} after {} epochs ({} steps)",
                path.display(),
                start_epoch,
                global_step
            );
        }

        let mut log = match &cfg.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create run directory {}", dir.display()))?;
                let path = dir.join("metrics.csv");
                if cfg.resume_from.is_some() {
                    MetricLog::resume(path, start_epoch)?
                } else {
                    MetricLog::create(path)
                }
            }
            None => MetricLog::in_memory(),
        };

        let mut stopped_early = false;
        let mut epochs_completed = start_epoch;
        for epoch in start_epoch..cfg.max_epochs {
            let info = EpochInfo {
                epoch,
                max_epochs: cfg.max_epochs,
                global_step,
                seed,
            };
            seed::seed_backend::<B>(device, seed, "epoch", epoch as u64);
            model = task.on_epoch_start(model, &info, optim)?;
            optim.on_epoch_start(epoch);
            let lr = optim.lr();

            let started = Instant::now();
            let loader = task.train_loader(&info, seed::derive(seed, "data", epoch as u64))?;
            let bar = progress::bar(
                loader.len,
                &format!("epoch {}/{}", epoch + 1, cfg.max_epochs),
                cfg.progress,
            );
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            let mut seen = 0usize;
            for (b, batch) in loader.batches.enumerate() {
                let batch = batch.with_context(|| format!("loading batch {b} of epoch {epoch}"))?;
                let step_info = EpochInfo {
                    global_step,
                    ..info
                };
                let out = task.training_step(&model, batch, &step_info)?;
                let loss: f64 = out.loss.clone().into_scalar().elem();
                if !loss.is_finite() {
                    bail!(
                        "the training loss became {loss} at epoch {epoch}, batch {b}: check the \
                         input data for NaN/inf values or lower the learning rate"
                    );
                }
                model = optim.step(model, out.loss)?;
                global_step += 1;
                let n = out.batch_size as f64;
                seen += out.batch_size;
                *sums.entry("loss".into()).or_default() += loss * n;
                for (name, v) in out.logs {
                    *sums.entry(name).or_default() += v * n;
                }
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {loss:.4} | {rate:.1} samples/s"));
                bar.inc(1);
            }
            bar.finish_and_clear();
            if seen == 0 {
                bail!("epoch {epoch} had no training batches: the training set is empty");
            }
            optim.on_epoch_end(epoch);

            let mut metrics: Row = sums
                .into_iter()
                .map(|(k, v)| (format!("train_{k}"), v / seen as f64))
                .collect();
            metrics.insert("lr".into(), lr);
            let last = epoch + 1 == cfg.max_epochs;
            if (epoch + 1).is_multiple_of(cfg.val_every_n_epochs) || last {
                let val = task.validate(&model.valid(), &info)?;
                metrics.extend(val);
            }
            let seconds = started.elapsed().as_secs_f64();
            metrics.insert("epoch_seconds".into(), seconds);
            metrics.insert("samples_per_second".into(), seen as f64 / seconds.max(1e-9));
            log.log(epoch, metrics.clone())?;
            epochs_completed = epoch + 1;

            if (epoch + 1).is_multiple_of(cfg.log_every_n_epochs.max(1)) || last {
                tracing::info!(
                    "epoch {}/{}: {}",
                    epoch + 1,
                    cfg.max_epochs,
                    format_row(&metrics)
                );
            }

            let mut actions = Actions::default();
            let ctx = EpochEnd {
                epoch,
                metrics: &metrics,
                run_dir: cfg.run_dir.as_deref(),
            };
            for cb in &mut self.callbacks {
                cb.on_epoch_end(&ctx, &mut actions)?;
            }
            if actions.remember_best {
                best_model = Some(model.clone());
            }
            if !actions.save.is_empty() {
                let meta = CheckpointMeta {
                    epochs_completed,
                    global_step,
                    seed,
                    metrics: metrics.clone(),
                    callbacks: self
                        .callbacks
                        .iter()
                        .map(|c| (c.name(), c.state()))
                        .collect(),
                    task: task.state(),
                    sections: Vec::new(),
                };
                let mut sections = vec![(
                    "model".to_string(),
                    record_to_bytes::<B, _>(model.clone().into_record())?,
                )];
                if let Some(best) = &best_model {
                    sections.push((
                        "best_model".into(),
                        record_to_bytes::<B, _>(best.clone().into_record())?,
                    ));
                }
                sections.extend(optim.state()?);
                let sections: Vec<(&str, Vec<u8>)> = sections
                    .iter()
                    .map(|(n, b)| (n.as_str(), b.clone()))
                    .collect();
                for path in &actions.save {
                    write_checkpoint(path, meta.clone(), sections.clone())?;
                }
            }
            for path in &actions.delete {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!("cannot delete old checkpoint {}: {e}", path.display());
                }
            }
            if actions.stop {
                stopped_early = epoch + 1 < cfg.max_epochs;
                break;
            }
        }

        let mut actions = Actions::default();
        for cb in &mut self.callbacks {
            cb.on_fit_end(&mut actions);
        }
        let mut restored_best = false;
        if actions.restore_best
            && let Some(best) = best_model
        {
            model = best;
            restored_best = true;
        }
        Ok(FitOutcome {
            model,
            history: log.rows().to_vec(),
            epochs_completed,
            stopped_early,
            restored_best,
        })
    }
}

/// `name value` pairs of a metrics row, for log lines.
pub fn format_row(row: &Row) -> String {
    row.iter()
        .map(|(k, v)| {
            if k == "lr" {
                format!("{k} {v:.3e}")
            } else {
                format!("{k} {v:.4}")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}
