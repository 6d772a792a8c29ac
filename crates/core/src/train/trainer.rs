//! The Lightning-like training loop.
//!
//! A [`Task`] is the LightningModule counterpart: it knows its data, how to compute a training
//! loss from a batch, and how to validate. The [`Trainer`] owns everything around that: epochs,
//! seeding, the optimisation step (through an [`Optimization`]), validation cadence, callbacks
//! (early stopping, checkpointing), the CSV metrics log, a TensorBoard event file and the
//! `curves.png` picture of the run ([`crate::train::tensorboard`], [`crate::train::plot`]), progress bars,
//! resuming a run from a checkpoint, mixed precision ([`crate::numerics::amp`]) and data parallelism ([`crate::dist`]). Models
//! never re-implement any of this.
//!
//! ```text
//! resume (model, optimiser, scaler, callbacks, task, position) if asked
//! ddp: peers agree on the configuration; every replica takes rank 0's weights
//! for epoch in start..max_epochs
//!     seed backend + data streams from (seed, epoch)
//!     model = task.on_epoch_start(model)           // freeze / unfreeze schedules
//!     for batch in task.train_loader(epoch)        // ddp: this rank's share of each batch
//!         out   = autocast(precision) { task.training_step(model, batch) }
//!         model = stepper.step(model, out.loss)    // scale, backward, all-reduce, unscale,
//!                                                  // skip on inf, optimisation, buffers
//!     metrics = train means (over all replicas) + lr
//!     rank 0: + task.validate(model.valid()), log, callbacks, checkpoints
//!     every replica follows rank 0's stop / remember-best decision
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::dist::Dist;
use crate::numerics::amp::GradScaler;
use crate::train::callbacks::{Actions, Callback, EpochEnd};
use crate::train::checkpoint::{
    CheckpointMeta, load_checked, read_checkpoint, record_from_bytes, record_to_bytes,
    write_checkpoint,
};
use crate::train::metric_log::{MetricLog, Row};
use crate::train::optim::Optimization;
use crate::train::step::{StepStatus, Stepper};
use crate::{dist::sync, seed, train::progress};

pub use crate::numerics::amp::Precision;

/// How training is spread over devices (Lightning's `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One device.
    #[default]
    SingleDevice,
    /// Data-parallel: one replica per device, gradients mean-all-reduced every step (give the
    /// trainer its worker handle with [`Trainer::with_dist`]).
    Ddp,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "single-device" | "single_device" | "single" | "auto" => Ok(Self::SingleDevice),
            "ddp" | "ddp_spawn" | "ddp-spawn" => Ok(Self::Ddp),
            _ => Err(format!(
                "unknown strategy `{s}`: expected single-device or ddp"
            )),
        }
    }
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
    /// Train on one device exactly as this many data-parallel ranks would (1: an ordinary run):
    /// every optimiser step forwards each rank's batch (its share of the global batch, drawn
    /// with its own random streams, see [`EpochInfo::rank`]) and back-propagates the mean of
    /// their losses, which is the gradient that data-parallel training all-reduces. A way to
    /// check a data-parallel run against one device, or to run a multi-device recipe's exact
    /// batches where there is only one device. Not combined with [`Strategy::Ddp`].
    #[serde(default = "one")]
    pub virtual_ranks: usize,
    /// When a diverging run stops with an error instead of training on.
    #[serde(default)]
    pub divergence: DivergenceCheck,
    /// Write a TensorBoard event file into the run directory (the
    /// [`TensorBoardLogger`](crate::train::tensorboard::TensorBoardLogger): per-step loss, learning
    /// rate, loss scale and step time, and every epoch's metrics). On by default; without a run
    /// directory nothing is written either way.
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Draw `curves.png` into the run directory when fitting ends (losses and the monitored
    /// metric per epoch, train and validation, the best epoch marked; see [`crate::train::plot`]). On
    /// by default.
    #[serde(default = "yes")]
    pub curves: bool,
}

fn yes() -> bool {
    true
}

/// When a diverging run stops (Lightning's `detect_anomaly` / terminate-on-NaN, and an
/// exploding loss): with an error that names the optimiser step and the loss, before that step
/// is applied, so the checkpoints written before it stay the run's last. Tools expose both as
/// configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DivergenceCheck {
    /// Stop when the training loss becomes non-finite (outside `16-mixed`'s skip-and-halve
    /// rule, which stops after too many consecutive skips instead). Off: such steps are applied
    /// as they come.
    pub terminate_on_nan: bool,
    /// Stop when a step's (finite) training loss exceeds this many times the lowest running
    /// mean of the loss so far (an exponential mean, α 0.1, checked from the 11th step). 0 (or
    /// any value that is not a finite positive number) turns the check off. The default, 1e4,
    /// is far outside the noise of any healthy run. The check applies while the running mean is
    /// positive.
    pub factor: f64,
}

impl Default for DivergenceCheck {
    fn default() -> Self {
        Self {
            terminate_on_nan: true,
            factor: DIVERGENCE_FACTOR,
        }
    }
}

impl DivergenceCheck {
    fn factor(&self) -> Option<f64> {
        (self.factor.is_finite() && self.factor > 0.0).then_some(self.factor)
    }
}

/// Default of [`DivergenceCheck::factor`].
pub const DIVERGENCE_FACTOR: f64 = 1e4;

/// Steps before the divergence check starts comparing (the running mean needs a start).
const DIVERGENCE_WARMUP_STEPS: usize = 10;

fn one() -> usize {
    1
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
            virtual_ranks: 1,
            divergence: DivergenceCheck::default(),
            tensorboard: true,
            curves: true,
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
    /// This replica's rank in a data-parallel run (0 otherwise): tasks shard their batches by it.
    pub rank: usize,
    /// Replicas of a data-parallel run (1 otherwise).
    pub world_size: usize,
}

impl EpochInfo {
    /// The seed of this replica's own random streams (augmentation, mixup, masking): the run
    /// seed on rank 0 and on one device, a seed derived from it and the rank on the others (see
    /// [`crate::seed::rank_seed`]). What every replica must draw alike (shuffling, sharding)
    /// uses [`EpochInfo::seed`].
    pub fn stream_seed(&self) -> u64 {
        seed::rank_seed(self.seed, self.rank)
    }
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

impl Loader<Vec<usize>> {
    /// This rank's shuffled index batches of an epoch over `n` samples (`batch_size` per rank;
    /// with `labels`, every global batch has the same class mix on each rank): see
    /// [`distributed_batches`](crate::data::distributed_batches). `seed` is the epoch's data seed
    /// [`Task::train_loader`] receives.
    pub fn shuffled(
        n: usize,
        batch_size: usize,
        labels: Option<&[usize]>,
        info: &EpochInfo,
        seed: u64,
    ) -> Self {
        let mut rng = crate::seed::rng(seed, "shuffle", 0);
        Self::from_vec(crate::data::distributed_batches(
            n,
            batch_size,
            labels,
            info.rank,
            info.world_size,
            &mut rng,
        ))
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
        _lr: &mut dyn crate::train::optim::LrControl,
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
    /// The callbacks every run with a run directory gets (the TensorBoard logger), made afresh
    /// by each fit on rank 0; they keep no checkpoint state.
    builtin: Vec<Box<dyn Callback>>,
    stepper: Stepper,
    fingerprint: String,
    divergence: DivergenceWatch,
}

/// The running mean of the training loss and its lowest value, for
/// [`DivergenceCheck::factor`].
#[derive(Debug, Clone, Default)]
struct DivergenceWatch {
    steps: usize,
    mean: Option<f64>,
    lowest: f64,
}

impl DivergenceWatch {
    /// Takes a step's loss; returns the lowest running mean when the loss exceeds `factor`
    /// times it (after the warm-up steps, and while the running mean is positive).
    fn observe(&mut self, loss: f64, factor: f64) -> Option<f64> {
        if !loss.is_finite() {
            return None;
        }
        self.steps += 1;
        if self.steps > DIVERGENCE_WARMUP_STEPS && self.lowest > 0.0 && loss > factor * self.lowest
        {
            return Some(self.lowest);
        }
        let mean = self.mean.map_or(loss, |m| 0.9 * m + 0.1 * loss);
        self.mean = Some(mean);
        self.lowest = if self.steps == 1 {
            mean
        } else {
            self.lowest.min(mean)
        };
        None
    }
}

/// Consecutive skipped (non-finite) `16-mixed` steps after which training stops: by then the
/// loss scale has been halved this many times and the problem is not the scale.
const MAX_CONSECUTIVE_SKIPS: usize = 50;

/// State carried from resume into the epoch loop.
struct Progress<M> {
    seed: u64,
    start_epoch: usize,
    global_step: usize,
    best_model: Option<M>,
}

/// What one training epoch produced.
struct EpochResult {
    metrics: Row,
    global_step: usize,
}

impl Trainer {
    /// A trainer with no callbacks.
    pub fn new(config: TrainerConfig) -> Self {
        Self {
            config,
            callbacks: Vec::new(),
            builtin: Vec::new(),
            stepper: Stepper::default(),
            fingerprint: String::new(),
            divergence: DivergenceWatch::default(),
        }
    }

    /// Adds a callback.
    pub fn with_callback(mut self, callback: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Makes this trainer one worker of a data-parallel run (sets the `ddp` strategy). Every
    /// worker must run the same task configuration on its own shard: see [`EpochInfo::rank`].
    pub fn with_dist(mut self, dist: Dist) -> Self {
        self.config.strategy = Strategy::Ddp;
        self.stepper = self.stepper.with_dist(dist);
        self
    }

    /// Checks after every step that all data-parallel replicas hold bit-identical weights (see
    /// [`Stepper::with_replica_check`]).
    pub fn with_replica_check(mut self, on: bool) -> Self {
        self.stepper = self.stepper.with_replica_check(on);
        self
    }

    /// Replaces the `16-mixed` loss scaler (e.g. another initial scale).
    pub fn with_grad_scaler(mut self, scaler: GradScaler) -> Self {
        self.stepper = self.stepper.with_scaler(scaler);
        self
    }

    /// Text that every worker of a data-parallel run must share (e.g. the task's configuration);
    /// a mismatch between peers is an error at the start of [`Trainer::fit`].
    pub fn with_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = fingerprint.into();
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

    /// The loss scaler (its scale and skipped-step count after a `16-mixed` fit).
    pub fn grad_scaler(&self) -> &GradScaler {
        self.stepper.scaler()
    }

    fn dist(&self) -> Option<&Dist> {
        self.stepper.dist()
    }

    fn is_main(&self) -> bool {
        self.dist().is_none_or(Dist::is_main)
    }

    fn check_supported<B: AutodiffBackend>(&self, device: &B::Device) -> Result<()> {
        if self.config.val_every_n_epochs == 0 {
            bail!("val_every_n_epochs must be at least 1");
        }
        if self.config.virtual_ranks == 0 {
            bail!("virtual_ranks must be at least 1");
        }
        if self.config.virtual_ranks > 1 && self.dist().is_some() {
            bail!(
                "virtual ranks ({}) emulate data parallelism on one device: they cannot be \
                 combined with a data-parallel run",
                self.config.virtual_ranks
            );
        }
        if self.config.strategy == Strategy::Ddp && self.dist().is_none() {
            bail!(
                "strategy ddp needs a worker handle (Trainer::with_dist): launch the run through \
                 kiln::dist"
            );
        }
        crate::numerics::amp::check_backend::<B>(self.config.precision, device)
    }

    /// Trains `model` on `task` with `optim`. Resumes when the config names a checkpoint.
    pub fn fit<B, T, O>(
        &mut self,
        task: &mut T,
        model: T::Model,
        optim: &mut O,
        device: &B::Device,
    ) -> Result<FitOutcome<T::Model>>
    where
        B: AutodiffBackend,
        T: Task<B>,
        O: Optimization<B, T::Model>,
    {
        self.check_supported::<B>(device)?;
        let cfg = self.config.clone();
        self.divergence = DivergenceWatch::default();
        // A run directory this fit creates is removed again if it fails before its first
        // checkpoint (a resumed or caller-made directory is left alone).
        let new_dir = match (&cfg.run_dir, self.is_main()) {
            (Some(dir), true) => RunDirGuard::new(dir),
            _ => None,
        };
        self.stepper.set_precision(cfg.precision);
        let (mut model, progress) = self.resume(task, model, optim, device)?;
        let Progress {
            seed,
            start_epoch,
            mut global_step,
            mut best_model,
        } = progress;
        if let Some(dist) = self.dist() {
            let fingerprint = format!(
                "{}|{}|{}|{}|{}|{}|{:?}|{}",
                dist.world_size(),
                cfg.max_epochs,
                seed,
                start_epoch,
                global_step,
                cfg.precision,
                crate::train::checkpoint::param_shapes(&model),
                self.fingerprint
            );
            dist.agree::<B::InnerBackend>(
                "the training configuration (world size, epochs, seed, resume point, precision, \
                 model shapes, task settings)",
                fingerprint.as_bytes(),
                device,
            )?;
            // DDP's construction-time broadcast: every replica starts from rank 0's weights.
            model = sync::broadcast_module(dist, model, false)?;
        }

        let mut log = match (&cfg.run_dir, self.is_main()) {
            (Some(dir), true) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create run directory {}", dir.display()))?;
                let path = dir.join("metrics.csv");
                if cfg.resume_from.is_some() {
                    MetricLog::resume(path, start_epoch)?
                } else {
                    MetricLog::create(path)
                }
            }
            _ => MetricLog::in_memory(),
        };
        self.builtin.clear();
        if let (Some(dir), true, true) = (&cfg.run_dir, self.is_main(), cfg.tensorboard) {
            self.builtin
                .push(Box::new(crate::train::tensorboard::TensorBoardLogger::new(
                    dir,
                )));
        }

        let mut stopped_early = false;
        let mut epochs_completed = start_epoch;
        for epoch in start_epoch..cfg.max_epochs {
            let info = EpochInfo {
                epoch,
                max_epochs: cfg.max_epochs,
                global_step,
                seed,
                rank: self.dist().map_or(0, Dist::rank),
                world_size: self.dist().map_or(1, Dist::world_size),
            };
            // This worker's own random streams for the epoch (dropout; see `kiln::seed`).
            let stream_seed = info.stream_seed();
            seed::seed_thread(stream_seed, "epoch", epoch as u64);
            seed::seed_backend::<B>(device, stream_seed, "epoch", epoch as u64);
            model = task.on_epoch_start(model, &info, optim)?;
            optim.on_epoch_start(epoch);
            let lr = optim.lr();
            let started = Instant::now();
            let (next, result) = self.train_epoch(task, model, optim, &info, device)?;
            model = next;
            global_step = result.global_step;
            optim.on_epoch_end(epoch);

            let mut metrics = result.metrics;
            metrics.insert("lr".into(), lr);
            let last = epoch + 1 == cfg.max_epochs;
            if self.is_main() && ((epoch + 1).is_multiple_of(cfg.val_every_n_epochs) || last) {
                let val = crate::numerics::amp::autocast(cfg.precision, || {
                    task.validate(&model.valid(), &info)
                })?;
                metrics.extend(val);
            }
            let seconds = started.elapsed().as_secs_f64();
            metrics.insert("epoch_seconds".into(), seconds);
            let seen = metrics.remove("samples").unwrap_or(0.0);
            metrics.insert("samples_per_second".into(), seen / seconds.max(1e-9));
            epochs_completed = epoch + 1;

            // Every replica keeps its history; only rank 0's log has a file (and validation).
            log.log(epoch, metrics.clone())?;
            let mut actions = Actions::default();
            if self.is_main() {
                if (epoch + 1).is_multiple_of(cfg.log_every_n_epochs.max(1)) || last {
                    tracing::info!(
                        "epoch {}/{}: {}",
                        epoch + 1,
                        cfg.max_epochs,
                        format_row(&metrics)
                    );
                }
                let ctx = EpochEnd {
                    epoch,
                    global_step,
                    metrics: &metrics,
                    run_dir: cfg.run_dir.as_deref(),
                };
                for cb in self.builtin.iter_mut().chain(&mut self.callbacks) {
                    cb.on_epoch_end(&ctx, &mut actions)?;
                }
            }
            // Rank 0 decides; every replica follows (they hold identical weights).
            let [stop, remember] =
                self.decide::<B>([actions.stop, actions.remember_best], device)?;
            if remember {
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
                let sections = self.checkpoint_sections::<B, T, O>(&model, &best_model, optim)?;
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
            if stop {
                stopped_early = epoch + 1 < cfg.max_epochs;
                break;
            }
        }

        let mut actions = Actions::default();
        if self.is_main() {
            for cb in self.builtin.iter_mut().chain(&mut self.callbacks) {
                cb.on_fit_end(&mut actions);
            }
        }
        let [restore, _] = self.decide::<B>([actions.restore_best, false], device)?;
        let mut restored_best = false;
        if restore && let Some(best) = best_model {
            model = best;
            restored_best = true;
        }
        if let Some(new_dir) = new_dir {
            new_dir.keep();
        }
        if let (Some(dir), true, true) = (&cfg.run_dir, self.is_main(), cfg.curves) {
            self.write_curves(dir, log.rows());
        }
        Ok(FitOutcome {
            model,
            history: log.rows().to_vec(),
            epochs_completed,
            stopped_early,
            restored_best,
        })
    }

    /// Draws `curves.png` of the run (a failure is a warning: the run itself succeeded). The best
    /// epoch is the first callback monitor's (where the run logged it), else
    /// [`crate::train::plot::default_monitor`]'s.
    fn write_curves(&self, dir: &std::path::Path, rows: &[(usize, Row)]) {
        let has = |c: &str| rows.iter().any(|(_, r)| r.contains_key(c));
        let monitor = self
            .callbacks
            .iter()
            .find_map(|c| c.monitor())
            .filter(|(m, _)| has(m))
            .unwrap_or_else(|| crate::train::plot::default_monitor(rows));
        match crate::train::plot::write_run_curves(dir, rows.to_vec(), &monitor.0, monitor.1) {
            Ok(path) => tracing::debug!("wrote {}", path.display()),
            Err(e) => tracing::warn!("no training-curve picture: {e:#}"),
        }
    }

    /// Restores model, optimiser, callbacks, task, scaler and position from the configured
    /// checkpoint (or starts fresh).
    fn resume<B, T, O>(
        &mut self,
        task: &mut T,
        mut model: T::Model,
        optim: &mut O,
        device: &B::Device,
    ) -> Result<(T::Model, Progress<T::Model>)>
    where
        B: AutodiffBackend,
        T: Task<B>,
        O: Optimization<B, T::Model>,
    {
        let mut progress = Progress {
            seed: self.config.seed,
            start_epoch: 0,
            global_step: 0,
            best_model: None,
        };
        let Some(path) = self.config.resume_from.clone() else {
            return Ok((model, progress));
        };
        let (meta, sections) = read_checkpoint(&path)?;
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
            progress.best_model = Some(load_checked(model.clone(), record, &what)?);
        }
        optim
            .load_state(&sections, device)
            .with_context(|| format!("cannot restore the optimiser from {what}"))?;
        if let Some(bytes) = sections.get(SCALER_SECTION) {
            *self.stepper.scaler_mut() = serde_json::from_slice(bytes)
                .with_context(|| format!("malformed loss-scaler state in {what}"))?;
        }
        for cb in &mut self.callbacks {
            if let Some(state) = meta.callbacks.get(&cb.name()) {
                cb.load_state(state.clone()).with_context(|| {
                    format!("cannot restore callback {} from {what}", cb.name())
                })?;
            }
        }
        task.load_state(meta.task.clone())?;
        if meta.seed != progress.seed {
            tracing::warn!(
                "resuming with the checkpoint's seed {} (the configuration says {})",
                meta.seed,
                progress.seed
            );
            progress.seed = meta.seed;
        }
        progress.start_epoch = meta.epochs_completed;
        progress.global_step = meta.global_step;
        tracing::info!(
            "resumed from {} after {} epochs ({} steps)",
            path.display(),
            progress.start_epoch,
            progress.global_step
        );
        Ok((model, progress))
    }

    /// One epoch of optimiser steps; returns the model and the epoch's training means (over all
    /// replicas in a data-parallel run) plus `samples`.
    fn train_epoch<B, T, O>(
        &mut self,
        task: &mut T,
        mut model: T::Model,
        optim: &mut O,
        info: &EpochInfo,
        device: &B::Device,
    ) -> Result<(T::Model, EpochResult)>
    where
        B: AutodiffBackend,
        T: Task<B>,
        O: Optimization<B, T::Model>,
    {
        let cfg = self.config.clone();
        let epoch = info.epoch;
        let started = Instant::now();
        // One loader per (virtual) rank; without virtual ranks, just this replica's.
        let ranks = cfg.virtual_ranks.max(1);
        let infos: Vec<EpochInfo> = if ranks == 1 {
            vec![*info]
        } else {
            (0..ranks)
                .map(|rank| EpochInfo {
                    rank,
                    world_size: ranks,
                    ..*info
                })
                .collect()
        };
        let data_seed = seed::derive(info.seed, "data", epoch as u64);
        let mut loaders = infos
            .iter()
            .map(|i| task.train_loader(i, data_seed))
            .collect::<Result<Vec<_>>>()?;
        // Each virtual rank's own random stream, swapped in around its forward pass (a real
        // replica's thread was seeded with it at the epoch start).
        let mut streams: Vec<_> = infos
            .iter()
            .map(|i| seed::rng(i.stream_seed(), "epoch", epoch as u64))
            .collect();
        let bar = progress::bar(
            loaders[0].len,
            &format!("epoch {}/{}", epoch + 1, cfg.max_epochs),
            cfg.progress && self.is_main(),
        );
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut seen = 0usize;
        let mut global_step = info.global_step;
        let mut skipped = 0usize;
        let mut consecutive_skips = 0usize;
        for b in 0.. {
            let step_started = Instant::now();
            let batches: Vec<_> = loaders.iter_mut().map(|l| l.batches.next()).collect();
            if batches.iter().all(Option::is_none) {
                break;
            }
            if batches.iter().any(Option::is_none) {
                bail!(
                    "the virtual ranks' loaders have different numbers of batches in epoch {epoch}"
                );
            }
            let mut outs = Vec::with_capacity(ranks);
            for ((batch, rank_info), stream) in batches.into_iter().zip(&infos).zip(&mut streams) {
                let batch = batch
                    .expect("checked above")
                    .with_context(|| format!("loading batch {b} of epoch {epoch}"))?;
                let step_info = EpochInfo {
                    global_step,
                    ..*rank_info
                };
                let out = if ranks == 1 {
                    self.stepper
                        .forward(|| task.training_step(&model, batch, &step_info))?
                } else {
                    seed::with_thread_stream(stream, || {
                        self.stepper
                            .forward(|| task.training_step(&model, batch, &step_info))
                    })?
                };
                outs.push(out);
            }
            let mut losses = Vec::with_capacity(ranks);
            for out in &outs {
                let loss: f64 = out.loss.clone().into_scalar().elem();
                // Data-parallel replicas decide on the all-reduced gradients instead (the
                // stepper's check), so that all of them stop at the same step.
                if !loss.is_finite()
                    && cfg.divergence.terminate_on_nan
                    && !cfg.precision.needs_scaler()
                    && self.dist().is_none()
                {
                    bail!(
                        "the training loss became {loss} at epoch {epoch}, batch {b} (optimiser \
                         step {}): check the input data for NaN/inf values or lower the learning \
                         rate; the checkpoints written before this step are kept",
                        global_step + 1
                    );
                }
                losses.push(loss);
            }
            if let Some(factor) = cfg.divergence.factor() {
                // The step's mean loss over every (virtual or real) replica, so that all
                // replicas decide alike.
                let mut total = vec![losses.iter().sum::<f64>(), losses.len() as f64];
                if let Some(dist) = self.dist() {
                    total = dist.all_reduce_f64::<B::InnerBackend>(&total, device)?;
                }
                let mean = total[0] / total[1];
                if let Some(lowest) = self.divergence.observe(mean, factor) {
                    bail!(
                        "the training loss exploded to {mean:.4e} at epoch {epoch}, batch {b} \
                         (optimiser step {}), over {factor:e} times its lowest running mean \
                         {lowest:.4e}: the run diverged. Lower the learning rate or check the \
                         data; the checkpoints written before this step are kept (the \
                         divergence factor setting turns this check off)",
                        global_step + 1
                    );
                }
            }
            let losses_mean = losses.iter().sum::<f64>() / ranks as f64;
            let loss = outs
                .iter()
                .map(|o| o.loss.clone())
                .reduce(|a, b| a + b)
                .expect("at least one rank");
            let loss = if ranks == 1 {
                loss
            } else {
                loss.div_scalar(ranks as f64)
            };
            let step_lr = optim.lr();
            let status;
            (model, status) = self.stepper.step(model, loss, optim).with_context(|| {
                format!(
                    "optimiser step {} (epoch {epoch}, batch {b})",
                    global_step + 1
                )
            })?;
            global_step += 1;
            if status == StepStatus::Applied {
                consecutive_skips = 0;
            } else {
                skipped += 1;
                consecutive_skips += 1;
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                    bail!(
                        "{consecutive_skips} consecutive steps had inf/NaN gradients under \
                         precision {} (loss scale now {:e}), the last at epoch {epoch}, batch {b} \
                         (optimiser step {global_step}, loss {:e}): the model diverged; check the \
                         data or lower the learning rate; the checkpoints written before are kept",
                        cfg.precision,
                        self.stepper.scaler().scale,
                        losses_mean
                    );
                }
            }
            let shown = losses_mean;
            if !self.builtin.is_empty() || !self.callbacks.is_empty() {
                // The step's per-batch logs, weighted by batch size over the virtual ranks.
                let mut logs: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
                for out in &outs {
                    for (name, v) in &out.logs {
                        let e = logs.entry(name.as_str()).or_default();
                        e.0 += v * out.batch_size as f64;
                        e.1 += out.batch_size as f64;
                    }
                }
                let logs: Vec<(String, f64)> = logs
                    .into_iter()
                    .map(|(k, (sum, n))| (k.to_string(), sum / n.max(1e-12)))
                    .collect();
                let ctx = crate::train::callbacks::StepEnd {
                    epoch,
                    global_step,
                    loss: losses_mean,
                    lr: step_lr,
                    loss_scale: cfg
                        .precision
                        .needs_scaler()
                        .then(|| self.stepper.scaler().scale),
                    seconds: step_started.elapsed().as_secs_f64(),
                    logs: &logs,
                };
                if self.is_main() {
                    for cb in self.builtin.iter_mut().chain(&mut self.callbacks) {
                        cb.on_train_step(&ctx)?;
                    }
                }
            }
            for (out, loss) in outs.into_iter().zip(losses) {
                let n = out.batch_size as f64;
                seen += out.batch_size;
                if loss.is_finite() {
                    *sums.entry("loss".into()).or_default() += loss * n;
                }
                for (name, v) in out.logs {
                    *sums.entry(name).or_default() += v * n;
                }
            }
            let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {shown:.4} | {rate:.1} samples/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut totals: Vec<f64> = sums.values().copied().collect();
        totals.push(seen as f64);
        totals.push(skipped as f64);
        if let Some(dist) = self.dist() {
            totals = dist.all_reduce_f64::<B::InnerBackend>(&totals, device)?;
        }
        let skipped = totals.pop().unwrap_or(0.0);
        let seen = totals.pop().unwrap_or(0.0);
        if seen == 0.0 {
            bail!("epoch {epoch} had no training batches: the training set is empty");
        }
        let mut metrics: Row = sums
            .keys()
            .zip(totals)
            .map(|(k, v)| (format!("train_{k}"), v / seen))
            .collect();
        metrics.insert("samples".into(), seen);
        if cfg.precision.needs_scaler() {
            metrics.insert("loss_scale".into(), self.stepper.scaler().scale);
            metrics.insert("skipped_steps".into(), skipped);
        }
        Ok((
            model,
            EpochResult {
                metrics,
                global_step,
            },
        ))
    }

    /// Rank 0's decision flags, shared with every replica (identity without data parallelism).
    fn decide<B: AutodiffBackend>(
        &self,
        flags: [bool; 2],
        device: &B::Device,
    ) -> Result<[bool; 2]> {
        let Some(dist) = self.dist() else {
            return Ok(flags);
        };
        let mine: Vec<f64> = if dist.is_main() {
            flags.iter().map(|&f| f64::from(u8::from(f))).collect()
        } else {
            vec![0.0; 2]
        };
        let all = dist.all_reduce_f64::<B::InnerBackend>(&mine, device)?;
        Ok([all[0] > 0.5, all[1] > 0.5])
    }

    /// The byte sections of a checkpoint: weights, best weights, optimiser and scaler state.
    fn checkpoint_sections<B, T, O>(
        &self,
        model: &T::Model,
        best_model: &Option<T::Model>,
        optim: &O,
    ) -> Result<Vec<(String, Vec<u8>)>>
    where
        B: AutodiffBackend,
        T: Task<B>,
        O: Optimization<B, T::Model>,
    {
        let mut sections = vec![(
            "model".to_string(),
            record_to_bytes::<B, _>(model.clone().into_record())?,
        )];
        if let Some(best) = best_model {
            sections.push((
                "best_model".into(),
                record_to_bytes::<B, _>(best.clone().into_record())?,
            ));
        }
        sections.extend(optim.state()?);
        if self.config.precision.needs_scaler() {
            sections.push((
                SCALER_SECTION.into(),
                serde_json::to_vec(self.stepper.scaler())?,
            ));
        }
        Ok(sections)
    }
}

/// A run directory that a failed run should not leave behind.
///
/// Armed for a directory that does not exist yet (call [`RunDirGuard::new`] before creating
/// it): when the guard is dropped without [`RunDirGuard::keep`] and the directory holds no
/// `checkpoints/` yet, the directory is removed, with the parents the run created if they are
/// left empty. A directory that existed before (a resumed run's, one a caller made) is never
/// touched. [`Trainer::fit`] guards the `run_dir` it creates; a tool that writes into its run
/// directory before training (a `config.yaml`) arms one itself.
#[derive(Debug)]
pub struct RunDirGuard {
    dir: PathBuf,
    /// The outermost directory this run created (`dir` or one of its parents).
    created: PathBuf,
    armed: bool,
}

impl RunDirGuard {
    /// Guards `dir` if it does not exist yet; `None` when it does.
    pub fn new(dir: &std::path::Path) -> Option<Self> {
        let mut created = None;
        for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if ancestor.exists() {
                break;
            }
            created = Some(ancestor.to_path_buf());
        }
        created.map(|created| Self {
            dir: dir.to_path_buf(),
            created,
            armed: true,
        })
    }

    /// The run succeeded: keep the directory.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for RunDirGuard {
    fn drop(&mut self) {
        if !self.armed || self.dir.join("checkpoints").exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for parent in self.dir.ancestors().skip(1) {
            if !parent.starts_with(&self.created) || std::fs::remove_dir(parent).is_err() {
                break;
            }
        }
    }
}

/// Checkpoint section holding the [`GradScaler`] state.
const SCALER_SECTION: &str = "grad_scaler";

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
