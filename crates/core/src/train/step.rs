//! One optimiser step under a precision and a data-parallel group.
//!
//! [`Stepper`] is the part of the [`Trainer`](crate::train::trainer::Trainer) loop between "the task
//! returned a loss" and "the weights are updated", usable on its own by custom loops and
//! benchmarks:
//!
//! 1. `16-mixed`: scale the loss ([`GradScaler`]);
//! 2. backward pass, gradients of every parameter;
//! 3. data-parallel: mean-all-reduce the gradients over the replicas ([`Dist`]);
//! 4. unscale, and check for inf/NaN (after the all-reduce, so every replica decides alike):
//!    a `16-mixed` step with inf/NaN gradients is skipped and the scale halved
//!    (`GradScaler.step` + `update`); in other modes such gradients are an error;
//! 5. the [`Optimization`] update (clipping, if any, sees unscaled gradients);
//! 6. data-parallel: rank 0's buffers (batch-norm running statistics) to every replica.
//!
//! The forward pass belongs inside [`Stepper::forward`], the autocast scope of the precision.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::dist::Dist;
use crate::dist::sync;
use crate::numerics::amp::{self, GradScaler, Precision};
use crate::train::optim::Optimization;

/// Backward, all-reduce, loss scaling and update of one step (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Stepper {
    precision: Precision,
    scaler: GradScaler,
    dist: Option<Dist>,
    sync_seconds: f64,
    check_replicas: bool,
    steps: u64,
}

/// What [`Stepper::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// The optimiser updated the weights.
    Applied,
    /// `16-mixed` found inf/NaN gradients: no update, the loss scale was halved.
    Skipped,
}

impl Stepper {
    /// A single-device stepper in `precision`.
    pub fn new(precision: Precision) -> Self {
        Self {
            precision,
            ..Self::default()
        }
    }

    /// Makes the steps those of one replica of a data-parallel run.
    pub fn with_dist(mut self, dist: Dist) -> Self {
        self.dist = Some(dist);
        self
    }

    /// After every step, checks that all replicas hold bit-identical weights (a hash of every
    /// parameter and buffer, compared across ranks): a debugging aid that costs one host copy of
    /// the model per step.
    pub fn with_replica_check(mut self, on: bool) -> Self {
        self.check_replicas = on;
        self
    }

    /// Replaces the loss scaler.
    pub fn with_scaler(mut self, scaler: GradScaler) -> Self {
        self.scaler = scaler;
        self
    }

    /// Changes the precision (the scaler keeps its state).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The data-parallel handle, if any.
    pub fn dist(&self) -> Option<&Dist> {
        self.dist.as_ref()
    }

    /// The loss scaler (meaningful under `16-mixed`).
    pub fn scaler(&self) -> &GradScaler {
        &self.scaler
    }

    /// Mutable loss scaler (to restore it from a checkpoint).
    pub fn scaler_mut(&mut self) -> &mut GradScaler {
        &mut self.scaler
    }

    /// Seconds spent in gradient all-reduces and buffer broadcasts so far.
    pub fn sync_seconds(&self) -> f64 {
        self.sync_seconds
    }

    /// Runs the forward pass `f` in the autocast scope of the precision.
    pub fn forward<R>(&self, f: impl FnOnce() -> R) -> R {
        amp::autocast(self.precision, f)
    }

    /// Back-propagates `loss` and updates `model` with `optim` (steps 1–6 of the module docs).
    pub fn step<B, M, O>(
        &mut self,
        model: M,
        loss: Tensor<B, 1>,
        optim: &mut O,
    ) -> Result<(M, StepStatus)>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimization<B, M>,
    {
        let scaling = self.precision.needs_scaler();
        let loss = if scaling {
            self.scaler.scale_loss(loss)
        } else {
            loss
        };
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(dist) = &self.dist {
            let started = Instant::now();
            dist.all_reduce_grads::<B, M>(&model, &mut grads)?;
            self.sync_seconds += started.elapsed().as_secs_f64();
        }
        // Single-device f32/bf16 runs rely on the caller's check of the loss value instead.
        let found_inf = if scaling {
            self.scaler.unscale::<B, M>(&model, &mut grads)
        } else if self.dist.is_some() {
            amp::has_non_finite::<B, M>(&model, &mut grads)
        } else {
            false
        };
        if found_inf {
            if !scaling {
                bail!(
                    "non-finite gradients: check the input data for NaN/inf values or lower the \
                     learning rate"
                );
            }
            self.scaler.update(true);
            tracing::warn!(
                "step skipped: inf/NaN gradients under precision {}; loss scale lowered to {:e}",
                self.precision,
                self.scaler.scale
            );
            return Ok((model, StepStatus::Skipped));
        }
        let mut model = optim.apply(model, grads)?;
        if scaling {
            self.scaler.update(false);
        }
        if let Some(dist) = &self.dist {
            // DDP's buffer broadcast: batch-norm running statistics follow rank 0.
            let started = Instant::now();
            model = sync::broadcast_module(dist, model, true)?;
            self.sync_seconds += started.elapsed().as_secs_f64();
        }
        self.steps += 1;
        if let (Some(dist), true) = (&self.dist, self.check_replicas) {
            let bytes = sync::weight_bytes(&model);
            let device = crate::dist::model_device::<B, M>(&model)?;
            dist.agree::<B::InnerBackend>(
                &format!("the weights after step {} (replicas diverged)", self.steps),
                &bytes,
                &device,
            )?;
        }
        Ok((model, StepStatus::Applied))
    }
}
