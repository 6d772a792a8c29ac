//! How a training step turns a loss into new weights.
//!
//! The [`Trainer`](crate::train::trainer::Trainer) owns the loop; an [`Optimization`] owns the optimiser
//! state and decides what one update is. [`Standard`] is Lightning's automatic optimisation (one
//! Burn optimiser, one Burn learning-rate scheduler stepped per batch or per epoch, optional
//! global-norm gradient clipping). Tasks with several optimisers or gradient surgery (reid's
//! centre-loss SGD) implement [`Optimization`] themselves: that is Lightning's manual optimisation.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::ElementConversion as _;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::train::checkpoint::{record_from_bytes, record_to_bytes};

/// Learning-rate control a task may use between epochs (e.g. when unfreezing an encoder).
pub trait LrControl {
    /// The learning rate the next update uses.
    fn lr(&self) -> f64;
    /// Multiplies the learning rate from now on.
    fn scale_lr(&mut self, factor: f64);
}

/// One optimisation policy: backward pass, gradient handling and parameter update.
pub trait Optimization<B: AutodiffBackend, M: AutodiffModule<B>>: LrControl {
    /// Applies one update from the gradients of the model's parameters (the trainer has already
    /// run the backward pass, all-reduced the gradients across replicas and unscaled them).
    fn apply(&mut self, model: M, grads: GradientsParams) -> Result<M>;
    /// Back-propagates `loss` and applies the update (single device, f32).
    fn step(&mut self, model: M, loss: Tensor<B, 1>) -> Result<M> {
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.apply(model, grads)
    }
    /// Called before the first batch of every epoch (0-based).
    fn on_epoch_start(&mut self, _epoch: usize) {}
    /// Called after the last batch of every epoch (0-based).
    fn on_epoch_end(&mut self, _epoch: usize) {}
    /// Serialises the optimiser and scheduler state as named byte sections.
    fn state(&self) -> Result<Vec<(String, Vec<u8>)>>;
    /// Restores the state written by [`Optimization::state`].
    fn load_state(
        &mut self,
        sections: &BTreeMap<String, Vec<u8>>,
        device: &B::Device,
    ) -> Result<()>;
}

/// When a learning-rate scheduler advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Interval {
    /// Once per optimiser step.
    Step,
    /// Once per epoch (at its start), like PyTorch's epoch schedulers.
    Epoch,
}

/// A Burn learning-rate scheduler with the bookkeeping every [`Optimization`] needs: the rate
/// in use, a multiplier set by [`LrControl::scale_lr`], and checkpointing of both.
#[derive(Clone)]
pub struct ScheduledLr<S> {
    scheduler: S,
    factor: f64,
    current: f64,
    started: bool,
}

impl<S: LrScheduler> ScheduledLr<S> {
    /// Wraps a scheduler that has not been stepped yet.
    pub fn new(scheduler: S) -> Self {
        Self {
            scheduler,
            factor: 1.0,
            current: 0.0,
            started: false,
        }
    }

    /// Steps the scheduler (once per optimiser step or per epoch, as the owner decides).
    pub fn advance(&mut self) {
        self.current = self.scheduler.step();
        self.started = true;
    }

    /// Whether [`ScheduledLr::advance`] has run.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The rate the next [`ScheduledLr::advance`] gives (times the multiplier), without stepping.
    pub fn next_lr(&self) -> f64 {
        self.scheduler.clone().step() * self.factor
    }

    /// Named byte sections: the scheduler record and the rate bookkeeping.
    pub fn state<B: Backend>(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let lr = [self.factor, self.current]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain([u8::from(self.started)])
            .collect();
        Ok(vec![
            (
                "scheduler".into(),
                record_to_bytes::<B, _>(self.scheduler.to_record::<B>())?,
            ),
            ("lr".into(), lr),
        ])
    }

    /// Restores [`ScheduledLr::state`].
    pub fn load_state<B: Backend>(
        &mut self,
        sections: &BTreeMap<String, Vec<u8>>,
        device: &B::Device,
    ) -> Result<()> {
        let record = record_from_bytes::<B, S::Record<B>>(section(sections, "scheduler")?, device)
            .context("scheduler state does not match this scheduler")?;
        self.scheduler = self.scheduler.clone().load_record::<B>(record);
        let lr = section(sections, "lr")?;
        anyhow::ensure!(lr.len() == 17, "malformed learning-rate section");
        self.factor = f64::from_le_bytes(lr[0..8].try_into().expect("8 bytes"));
        self.current = f64::from_le_bytes(lr[8..16].try_into().expect("8 bytes"));
        self.started = lr[16] != 0;
        Ok(())
    }
}

impl<S: LrScheduler> LrControl for ScheduledLr<S> {
    fn lr(&self) -> f64 {
        if self.started {
            self.current * self.factor
        } else {
            // Before the first step: the rate the first step will use.
            self.next_lr()
        }
    }
    fn scale_lr(&mut self, factor: f64) {
        self.factor *= factor;
    }
}

/// A named section of an optimiser's checkpoint state.
pub fn section(sections: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Vec<u8>> {
    sections
        .get(name)
        .cloned()
        .with_context(|| format!("checkpoint has no optimiser section `{name}`"))
}

/// Automatic optimisation: one optimiser and one scheduler.
pub struct Standard<O, S> {
    optim: O,
    lr: ScheduledLr<S>,
    interval: Interval,
    clip_norm: Option<f64>,
}

impl<O, S: LrScheduler> Standard<O, S> {
    /// Combines an optimiser and a scheduler.
    pub fn new(optim: O, scheduler: S, interval: Interval) -> Self {
        Self {
            optim,
            lr: ScheduledLr::new(scheduler),
            interval,
            clip_norm: None,
        }
    }

    /// Clips the global gradient norm (over all parameters) to `max_norm`, like
    /// `torch.nn.utils.clip_grad_norm_`.
    pub fn with_clip_norm(mut self, max_norm: f64) -> Self {
        self.clip_norm = Some(max_norm);
        self
    }
}

impl<O, S: LrScheduler> LrControl for Standard<O, S> {
    fn lr(&self) -> f64 {
        match self.interval {
            // Every update advances the scheduler first: the next one uses its next value, not
            // the value of the update before (the trainer logs this as the epoch's `lr`).
            Interval::Step => self.lr.next_lr(),
            Interval::Epoch => self.lr.lr(),
        }
    }
    fn scale_lr(&mut self, factor: f64) {
        self.lr.scale_lr(factor);
    }
}

impl<B, M, O, S> Optimization<B, M> for Standard<O, S>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    S: LrScheduler,
{
    fn apply(&mut self, model: M, mut grads: GradientsParams) -> Result<M> {
        if self.interval == Interval::Step || !self.lr.started() {
            self.lr.advance();
        }
        if let Some(max_norm) = self.clip_norm {
            clip_grad_norm::<B, M>(&model, &mut grads, max_norm);
        }
        Ok(self.optim.step(self.lr.lr(), model, grads))
    }

    fn on_epoch_start(&mut self, _epoch: usize) {
        if self.interval == Interval::Epoch {
            self.lr.advance();
        }
    }

    fn state(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut sections = vec![(
            "optimizer".into(),
            record_to_bytes::<B, _>(self.optim.to_record())?,
        )];
        sections.extend(self.lr.state::<B>()?);
        Ok(sections)
    }

    fn load_state(
        &mut self,
        sections: &BTreeMap<String, Vec<u8>>,
        device: &B::Device,
    ) -> Result<()> {
        let record = record_from_bytes::<B, O::Record>(section(sections, "optimizer")?, device)
            .context("optimiser state does not match this optimiser")?;
        self.optim = self.optim.clone().load_record(record);
        self.lr.load_state::<B>(sections, device)
    }
}

/// Ids of a module's float parameters.
pub fn float_param_ids<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (PyTorch's `clip_grad_norm_`, with its `1e-6` in the denominator).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    struct Visit<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        sq: Option<Tensor<B::InnerBackend, 1>>,
        scale: Option<f64>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Visit<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            match self.scale {
                None => {
                    if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                        let s = g.square().sum();
                        self.sq = Some(match self.sq.take() {
                            Some(acc) => acc + s,
                            None => s,
                        });
                    }
                }
                Some(scale) => {
                    if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                        self.grads.register(param.id, g.mul_scalar(scale));
                    }
                }
            }
        }
    }
    let mut v = Visit::<B> {
        grads,
        sq: None,
        scale: None,
    };
    model.visit(&mut v);
    let Some(sq) = v.sq.take() else {
        return 0.0;
    };
    let norm = f64::from(sq.into_scalar().elem::<f32>()).sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        v.scale = Some(coef);
        model.visit(&mut v);
    }
    norm
}

/// Epoch-indexed linear warm-up followed by multi-step decay (centroids-reid's schedule):
/// `lr(e) = base · w(e) · γ^{#milestones ≤ e}` with `w(e) = min(1, (e+1)/warmup)` while
/// `e < warmup` (and warm-up on), else 1. Step it once per epoch ([`Interval::Epoch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupMultiStepLr {
    /// Base learning rate.
    pub base_lr: f64,
    /// Warm-up epochs (0 disables warm-up).
    pub warmup_epochs: usize,
    /// Epochs at which the rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Decay factor.
    pub gamma: f64,
    next_epoch: usize,
}

impl WarmupMultiStepLr {
    /// A schedule starting at epoch 0.
    pub fn new(base_lr: f64, warmup_epochs: usize, milestones: Vec<usize>, gamma: f64) -> Self {
        Self {
            base_lr,
            warmup_epochs,
            milestones,
            gamma,
            next_epoch: 0,
        }
    }

    /// The rate of epoch `e` (0-based).
    pub fn lr_at(&self, e: usize) -> f64 {
        let decays = self.milestones.iter().filter(|&&m| e >= m).count();
        let warm = if e < self.warmup_epochs {
            (e + 1) as f64 / self.warmup_epochs as f64
        } else {
            1.0
        };
        self.base_lr * warm * self.gamma.powi(decays as i32)
    }
}

impl LrScheduler for WarmupMultiStepLr {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        let lr = self.lr_at(self.next_epoch);
        self.next_epoch += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.next_epoch
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.next_epoch = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_multistep_matches_the_reference_table() {
        // BASE_LR 3.5e-4, warm-up 10, steps (40, 70), gamma 0.1 (centroids-reid, Market/Duke).
        let mut s = WarmupMultiStepLr::new(3.5e-4, 10, vec![40, 70], 0.1);
        let lrs: Vec<f64> = (0..120).map(|_| s.step()).collect();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-15, "{a} {b}");
        close(lrs[0], 3.5e-5);
        close(lrs[4], 3.5e-4 * 0.5);
        close(lrs[9], 3.5e-4);
        close(lrs[10], 3.5e-4);
        close(lrs[39], 3.5e-4);
        close(lrs[40], 3.5e-5);
        close(lrs[69], 3.5e-5);
        close(lrs[70], 3.5e-6);
        close(lrs[119], 3.5e-6);
        // Resuming continues the sequence.
        let mut a = WarmupMultiStepLr::new(1.0, 2, vec![3], 0.5);
        a.step();
        a.step();
        let rec = a.to_record::<crate::backend::Flex>();
        let mut b =
            WarmupMultiStepLr::new(1.0, 2, vec![3], 0.5).load_record::<crate::backend::Flex>(rec);
        assert_eq!(a.step(), b.step());
        assert_eq!(b.step(), 0.5);
    }
}
