//! Trainer callbacks: early stopping and model checkpointing (and the TensorBoard logger of
//! [`crate::train::tensorboard`]).
//!
//! Callbacks are plain state machines over epoch metrics. They do not touch the model; they ask
//! the trainer for what they need through [`Actions`] (remember these weights as the best, write
//! a checkpoint here, delete that one, stop). Their state is saved in every checkpoint, so a
//! resumed run's patience counter and top-k list carry on where they were.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::train::metric_log::Row;

/// Whether a monitored metric improves downwards or upwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Lower is better (losses).
    Min,
    /// Higher is better (accuracy, mAP).
    Max,
}

impl Mode {
    /// True when `a` is better than `b` by more than `delta`.
    pub fn better(self, a: f64, b: f64, delta: f64) -> bool {
        match self {
            Mode::Min => a < b - delta,
            Mode::Max => a > b + delta,
        }
    }

    /// The worst possible value.
    pub fn worst(self) -> f64 {
        match self {
            Mode::Min => f64::INFINITY,
            Mode::Max => f64::NEG_INFINITY,
        }
    }
}

/// What callbacks ask the trainer to do after an epoch.
#[derive(Debug, Default)]
pub struct Actions {
    /// Stop training after this epoch.
    pub stop: bool,
    /// Keep a copy of the current weights as "best" (for restore-best).
    pub remember_best: bool,
    /// Replace the model by the remembered best weights (end of fit).
    pub restore_best: bool,
    /// Write a full checkpoint to each path.
    pub save: Vec<PathBuf>,
    /// Delete each path (an evicted top-k checkpoint).
    pub delete: Vec<PathBuf>,
}

/// What a callback sees at the end of an epoch.
pub struct EpochEnd<'a> {
    /// 0-based epoch that just ended.
    pub epoch: usize,
    /// Optimiser steps taken so far (the last step of this epoch).
    pub global_step: usize,
    /// Its metrics (training averages, validation results, learning rate).
    pub metrics: &'a Row,
    /// The run directory, when the run writes files.
    pub run_dir: Option<&'a Path>,
}

/// What a callback sees after every optimiser step (on rank 0 of a data-parallel run).
pub struct StepEnd<'a> {
    /// 0-based epoch of the step.
    pub epoch: usize,
    /// Optimiser steps taken, this one included (1 after the first step).
    pub global_step: usize,
    /// The step's training loss (mean over the virtual ranks; this replica's in a data-parallel
    /// run), before loss scaling.
    pub loss: f64,
    /// The learning rate the step was taken with.
    pub lr: f64,
    /// The `16-mixed` loss scale after the step (`None` under other precisions).
    pub loss_scale: Option<f64>,
    /// Wall-clock seconds of the step: data loading, forward, backward and optimiser update.
    pub seconds: f64,
    /// The task's per-batch values ([`StepOutput::logs`](crate::train::trainer::StepOutput::logs)).
    pub logs: &'a [(String, f64)],
}

/// A trainer callback.
pub trait Callback: Send {
    /// A unique name, used as the key of its state in checkpoints.
    fn name(&self) -> String;
    /// Called after every optimiser step.
    fn on_train_step(&mut self, _ctx: &StepEnd<'_>) -> Result<()> {
        Ok(())
    }
    /// Called after every epoch.
    fn on_epoch_end(&mut self, _ctx: &EpochEnd<'_>, _actions: &mut Actions) -> Result<()> {
        Ok(())
    }
    /// Called once when fitting ends (normally or stopped early).
    fn on_fit_end(&mut self, _actions: &mut Actions) {}
    /// The metric this callback selects by and its direction, if any (the trainer marks the
    /// best epoch of the first callback's monitor in `curves.png`).
    fn monitor(&self) -> Option<(String, Mode)> {
        None
    }
    /// State to save in checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores [`Callback::state`].
    fn load_state(&mut self, _state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

impl Callback for Box<dyn Callback> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn on_train_step(&mut self, ctx: &StepEnd<'_>) -> Result<()> {
        (**self).on_train_step(ctx)
    }
    fn on_epoch_end(&mut self, ctx: &EpochEnd<'_>, actions: &mut Actions) -> Result<()> {
        (**self).on_epoch_end(ctx, actions)
    }
    fn on_fit_end(&mut self, actions: &mut Actions) {
        (**self).on_fit_end(actions)
    }
    fn monitor(&self) -> Option<(String, Mode)> {
        (**self).monitor()
    }
    fn state(&self) -> serde_json::Value {
        (**self).state()
    }
    fn load_state(&mut self, state: serde_json::Value) -> Result<()> {
        (**self).load_state(state)
    }
}

/// Builds a fresh [`Callback`] for every fit of a run that may fit several times (one per
/// cross-validation fold, a refit after resume): a recipe's way to take callbacks from its caller.
#[derive(Clone)]
pub struct CallbackFactory(std::sync::Arc<dyn Fn() -> Box<dyn Callback> + Send + Sync>);

impl CallbackFactory {
    /// A factory calling `make` once per fit.
    pub fn new<C: Callback + 'static>(make: impl Fn() -> C + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(move || Box::new(make())))
    }

    /// A fresh callback.
    pub fn build(&self) -> Box<dyn Callback> {
        (self.0)()
    }
}

impl std::fmt::Debug for CallbackFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallbackFactory({})", self.build().name())
    }
}

/// Stops training when a monitored metric has not improved for `patience` epochs, and optionally
/// restores the best weights at the end (moola's `EarlyStopping` with `load_best_model`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Metric name, e.g. `val_loss`.
    pub monitor: String,
    /// Improvement direction.
    pub mode: Mode,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Minimum change that counts as an improvement.
    pub min_delta: f64,
    /// Restore the best weights when fitting ends (stopped early or not).
    pub restore_best: bool,
    best: Option<f64>,
    best_epoch: Option<usize>,
    wait: usize,
    stopped_epoch: Option<usize>,
}

impl EarlyStopping {
    /// Early stopping on `monitor`.
    pub fn new(monitor: impl Into<String>, mode: Mode, patience: usize) -> Self {
        Self {
            monitor: monitor.into(),
            mode,
            patience,
            min_delta: 0.0,
            restore_best: true,
            best: None,
            best_epoch: None,
            wait: 0,
            stopped_epoch: None,
        }
    }

    /// Sets the minimum improvement.
    pub fn with_min_delta(mut self, delta: f64) -> Self {
        self.min_delta = delta;
        self
    }

    /// Turns best-weight restoring on or off.
    pub fn with_restore_best(mut self, restore: bool) -> Self {
        self.restore_best = restore;
        self
    }

    /// The best value and its epoch so far.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best_epoch.zip(self.best)
    }

    /// The epoch at which training was stopped, if it was.
    pub fn stopped_epoch(&self) -> Option<usize> {
        self.stopped_epoch
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> String {
        format!("early_stopping[{}]", self.monitor)
    }

    fn on_epoch_end(&mut self, ctx: &EpochEnd<'_>, actions: &mut Actions) -> Result<()> {
        let Some(&value) = ctx.metrics.get(&self.monitor) else {
            return Ok(()); // no validation this epoch
        };
        let best = self.best.unwrap_or(self.mode.worst());
        if value.is_finite() && self.mode.better(value, best, self.min_delta) {
            self.best = Some(value);
            self.best_epoch = Some(ctx.epoch);
            self.wait = 0;
            actions.remember_best |= self.restore_best;
        } else {
            self.wait += 1;
            if self.wait >= self.patience {
                self.stopped_epoch = Some(ctx.epoch);
                actions.stop = true;
                tracing::info!(
                    "early stopping at epoch {}: {} did not improve for {} epochs (best {:.6} at epoch {})",
                    ctx.epoch,
                    self.monitor,
                    self.wait,
                    best,
                    self.best_epoch.map_or(-1, |e| e as i64)
                );
            }
        }
        Ok(())
    }

    fn on_fit_end(&mut self, actions: &mut Actions) {
        actions.restore_best |= self.restore_best && self.best.is_some();
    }

    fn monitor(&self) -> Option<(String, Mode)> {
        Some((self.monitor.clone(), self.mode))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn load_state(&mut self, state: serde_json::Value) -> Result<()> {
        let saved: EarlyStopping = serde_json::from_value(state)?;
        self.best = saved.best;
        self.best_epoch = saved.best_epoch;
        self.wait = saved.wait;
        self.stopped_epoch = saved.stopped_epoch;
        Ok(())
    }
}

/// A checkpoint kept for its monitored score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// Score of the monitored metric.
    pub score: f64,
    /// Epoch it was taken at.
    pub epoch: usize,
    /// File path.
    pub path: PathBuf,
}

/// Writes checkpoints: best-k by a monitored metric, last, and every N epochs
/// (Lightning's `ModelCheckpoint`). Files go to `<run_dir>/checkpoints` unless `dir` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCheckpoint {
    /// Target directory (default: `<run_dir>/checkpoints`).
    pub dir: Option<PathBuf>,
    /// Metric for best-k selection; `None` disables it.
    pub monitor: Option<String>,
    /// Improvement direction of `monitor`.
    pub mode: Mode,
    /// How many best checkpoints to keep (0 disables best-k).
    pub save_top_k: usize,
    /// Keep `last.ckpt` up to date after every epoch.
    pub save_last: bool,
    /// Also write `epoch=NNN.ckpt` every N epochs.
    pub every_n_epochs: Option<usize>,
    kept: Vec<Kept>,
}

impl ModelCheckpoint {
    /// Keeps the best `top_k` checkpoints by `monitor`, and `last.ckpt`.
    pub fn best(monitor: impl Into<String>, mode: Mode, top_k: usize) -> Self {
        Self {
            dir: None,
            monitor: Some(monitor.into()),
            mode,
            save_top_k: top_k,
            save_last: true,
            every_n_epochs: None,
            kept: Vec::new(),
        }
    }

    /// Only `last.ckpt`.
    pub fn last_only() -> Self {
        Self {
            dir: None,
            monitor: None,
            mode: Mode::Min,
            save_top_k: 0,
            save_last: true,
            every_n_epochs: None,
            kept: Vec::new(),
        }
    }

    /// Also writes a checkpoint every `n` epochs.
    pub fn with_every_n_epochs(mut self, n: usize) -> Self {
        self.every_n_epochs = Some(n.max(1));
        self
    }

    /// Sets the target directory.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The best checkpoint so far.
    pub fn best_path(&self) -> Option<&Path> {
        self.kept.first().map(|k| k.path.as_path())
    }

    /// The kept best-k checkpoints, best first.
    pub fn kept(&self) -> &[Kept] {
        &self.kept
    }

    fn target_dir(&self, run_dir: Option<&Path>) -> Option<PathBuf> {
        self.dir
            .clone()
            .or_else(|| run_dir.map(|d| d.join("checkpoints")))
    }
}

impl Callback for ModelCheckpoint {
    /// `model_checkpoint[...]` with the configuration in the brackets, so that two checkpoint
    /// callbacks of one run keep their own state in a checkpoint (the top-k lists differ), e.g.
    /// `model_checkpoint[monitor=val_loss,mode=min,top_k=1,last]`. Checkpoints written when
    /// every one was `model_checkpoint` resume through that key
    /// ([`CallbackStates::get`](crate::train::checkpoint::CallbackStates::get)).
    fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(monitor) = &self.monitor {
            let mode = match self.mode {
                Mode::Min => "min",
                Mode::Max => "max",
            };
            parts.push(format!(
                "monitor={monitor},mode={mode},top_k={}",
                self.save_top_k
            ));
        }
        if self.save_last {
            parts.push("last".to_string());
        }
        if let Some(n) = self.every_n_epochs {
            parts.push(format!("every_n_epochs={n}"));
        }
        if let Some(dir) = &self.dir {
            parts.push(format!("dir={}", dir.display()));
        }
        format!("model_checkpoint[{}]", parts.join(","))
    }

    fn on_epoch_end(&mut self, ctx: &EpochEnd<'_>, actions: &mut Actions) -> Result<()> {
        let Some(dir) = self.target_dir(ctx.run_dir) else {
            return Ok(()); // in-memory run: nothing to write
        };
        if self.save_last {
            actions.save.push(dir.join("last.ckpt"));
        }
        if let Some(n) = self.every_n_epochs
            && (ctx.epoch + 1).is_multiple_of(n)
        {
            actions
                .save
                .push(dir.join(format!("epoch={:03}.ckpt", ctx.epoch)));
        }
        if let Some(monitor) = &self.monitor
            && self.save_top_k > 0
            && let Some(&score) = ctx.metrics.get(monitor)
            && score.is_finite()
        {
            let qualifies = self.kept.len() < self.save_top_k
                || self
                    .kept
                    .last()
                    .is_some_and(|worst| self.mode.better(score, worst.score, 0.0));
            if qualifies {
                let path = dir.join(format!(
                    "best-epoch={:03}-{}={:.6}.ckpt",
                    ctx.epoch,
                    monitor.replace('/', "_"),
                    score
                ));
                actions.save.push(path.clone());
                self.kept.push(Kept {
                    score,
                    epoch: ctx.epoch,
                    path,
                });
                let mode = self.mode;
                self.kept.sort_by(|a, b| {
                    if mode.better(a.score, b.score, 0.0) {
                        std::cmp::Ordering::Less
                    } else if mode.better(b.score, a.score, 0.0) {
                        std::cmp::Ordering::Greater
                    } else {
                        a.epoch.cmp(&b.epoch)
                    }
                });
                while self.kept.len() > self.save_top_k {
                    let evicted = self.kept.pop().expect("non-empty");
                    actions.delete.push(evicted.path);
                }
            }
        }
        Ok(())
    }

    fn monitor(&self) -> Option<(String, Mode)> {
        self.monitor.clone().map(|m| (m, self.mode))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.kept).unwrap_or_default()
    }

    fn load_state(&mut self, state: serde_json::Value) -> Result<()> {
        self.kept = serde_json::from_value(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(epoch: usize, metrics: &Row) -> EpochEnd<'_> {
        EpochEnd {
            epoch,
            global_step: epoch,
            metrics,
            run_dir: Some(Path::new("/run")),
        }
    }

    #[test]
    fn early_stopping_counts_patience_and_restores() {
        let mut es = EarlyStopping::new("val_loss", Mode::Min, 2);
        let losses = [1.0, 0.8, 0.9, 0.8, 0.7];
        let mut stopped_at = None;
        for (e, l) in losses.iter().enumerate() {
            let m: Row = [("val_loss".to_string(), *l)].into();
            let mut a = Actions::default();
            es.on_epoch_end(&end(e, &m), &mut a).unwrap();
            assert_eq!(a.remember_best, e <= 1, "epoch {e}");
            if a.stop {
                stopped_at = Some(e);
                break;
            }
        }
        // 0.9 and then 0.8 (not < 0.8) are two epochs without improvement.
        assert_eq!(stopped_at, Some(3));
        assert_eq!(es.best(), Some((1, 0.8)));
        let mut a = Actions::default();
        es.on_fit_end(&mut a);
        assert!(a.restore_best);
    }

    #[test]
    fn early_stopping_state_round_trips() {
        let mut es = EarlyStopping::new("val_loss", Mode::Min, 3);
        let m: Row = [("val_loss".to_string(), 0.5)].into();
        es.on_epoch_end(&end(0, &m), &mut Actions::default())
            .unwrap();
        let m: Row = [("val_loss".to_string(), 0.6)].into();
        es.on_epoch_end(&end(1, &m), &mut Actions::default())
            .unwrap();
        let mut fresh = EarlyStopping::new("val_loss", Mode::Min, 3);
        fresh.load_state(es.state()).unwrap();
        assert_eq!(fresh.best(), Some((0, 0.5)));
        assert_eq!(fresh.wait, 1);
    }

    #[test]
    fn checkpoint_keeps_top_k_and_evicts() {
        let mut cb = ModelCheckpoint::best("mAP", Mode::Max, 2).with_every_n_epochs(2);
        let scores = [0.1, 0.3, 0.2, 0.4];
        let mut deleted = Vec::new();
        for (e, s) in scores.iter().enumerate() {
            let m: Row = [("mAP".to_string(), *s)].into();
            let mut a = Actions::default();
            cb.on_epoch_end(&end(e, &m), &mut a).unwrap();
            assert!(
                a.save
                    .contains(&PathBuf::from("/run/checkpoints/last.ckpt"))
            );
            assert_eq!(
                a.save
                    .iter()
                    .any(|p| p.to_string_lossy().contains(&format!("epoch={e:03}.ckpt"))),
                e % 2 == 1
            );
            deleted.extend(a.delete);
        }
        let kept: Vec<usize> = cb.kept().iter().map(|k| k.epoch).collect();
        assert_eq!(kept, vec![3, 1]);
        assert_eq!(deleted.len(), 2, "{deleted:?}"); // epochs 0 and 2 evicted
        assert!(
            cb.best_path()
                .unwrap()
                .to_string_lossy()
                .contains("best-epoch=003")
        );
    }

    /// Checkpoint callbacks of different configurations have different names (their states
    /// are keyed by name in a checkpoint).
    #[test]
    fn checkpoint_names_carry_the_configuration() {
        let names = [
            ModelCheckpoint::best("val_loss", Mode::Min, 1),
            ModelCheckpoint::best("val_loss", Mode::Max, 1),
            ModelCheckpoint::best("val_loss", Mode::Min, 2),
            ModelCheckpoint::best("val_acc", Mode::Min, 1),
            ModelCheckpoint::best("val_loss", Mode::Min, 1).with_dir("/elsewhere"),
            ModelCheckpoint::best("val_loss", Mode::Min, 1).with_every_n_epochs(5),
            ModelCheckpoint::last_only(),
        ]
        .map(|cb| cb.name());
        assert_eq!(
            names[0],
            "model_checkpoint[monitor=val_loss,mode=min,top_k=1,last]"
        );
        assert_eq!(names[6], "model_checkpoint[last]");
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
    }
}
