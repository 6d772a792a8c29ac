//! The classifier training recipe (the `fit` loop the reference's SimpleLSTM, CNN-Transformer and
//! RWKV-TS share) as a kiln [`Task`].
//!
//! Per `fit`: labels mapped in sorted order, a stratified validation split (`val_split`, default
//! 15%), a freshly built network, AdamW (lr 5e-4, decoupled weight decay 1e-4, β 0.9/0.999,
//! ε 1e-8, no scheduler, no clipping), per batch temporal augmentation then mixup/CutMix, focal
//! loss γ = 2 with the mixup criterion (or the pointer multi-task loss with its progressive β),
//! validation on un-augmented batches (mean of per-batch losses), early stopping on `val_loss`
//! with best-weight restore. kiln's Trainer runs the loop; this module only says what a step is.
//!
//! ## Reference quirks and what this crate does
//! * Every `fit` rebuilds the network: reproduced (a `Classifier` is re-initialised on fit).
//! * Multi-task mode mixes the inputs but not the pointer/class targets: reproduced by default
//!   (`multitask_mix_inputs = true`); `false` trains the multi-task model on un-mixed inputs.
//! * Temporal-augmentation coin flips cover whole batches: reproduced by default;
//!   `temporal_aug.per_sample_flips = true` flips per sample.
//! * Early stopping counts epochs without a strict improvement (`score < best − 0`), like the
//!   reference's `EarlyStopping(delta = 0)`, and always restores the best weights.
//! * Randomness: every draw derives from `(seed, purpose, epoch/step)` (kiln's seeding), so a run
//!   is reproducible on CPU for a seed; NumPy/torch streams of the reference are not reproduced.

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln::amp::PrecisionSetting;
use kiln::callbacks::{EarlyStopping, Mode, ModelCheckpoint};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};
use serde::{Deserialize, Serialize};

use crate::augment::{TemporalAugment, mixup_cutmix};
use crate::data::{LabelMap, WindowSet, gather};
use crate::loss;
use crate::model::{InnerWindow, ModelSpec, Net};
/// Re-exported from [`crate::run`], where pre-training shares it.
pub use crate::run::RunOptions;
use crate::scaling::{DEFAULT_SCALING, InputScaling};

/// Training hyper-parameters of one model (the reference's constructor arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Maximum epochs.
    pub n_epochs: usize,
    /// Mini-batch size (the last partial batch is kept).
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Epochs without validation improvement before stopping.
    pub early_stopping_patience: usize,
    /// Stratified validation fraction (0 disables validation and early stopping).
    pub val_split: f64,
    /// Mixup Beta(α, α) parameter (≤ 0 disables mixup).
    pub mixup_alpha: f64,
    /// CutMix Beta parameter (the reference always uses 0.3).
    pub cutmix_alpha: f64,
    /// Probability of CutMix instead of mixup per batch.
    pub cutmix_prob: f64,
    /// Focal-loss γ.
    pub focal_gamma: f64,
    /// Optional per-class focal α (length = number of classes).
    pub focal_alpha: Option<Vec<f64>>,
    /// Temporal augmentation.
    pub temporal_aug: TemporalAugment,
    /// Progressive pointer weight: β = max · min(epoch / warmup, 1) (reference 0.1, 50).
    pub pointer_beta_max: f64,
    /// Epochs of the β ramp.
    pub pointer_beta_warmup_epochs: usize,
    /// Reference quirk (multi-task mixing): mix inputs in multi-task mode while the targets stay
    /// un-mixed.
    pub multitask_mix_inputs: bool,
    /// Numeric precision: `auto` (the reference's `use_amp=True`: `16-mixed` on CUDA, `32` on
    /// CPU), `32`, `16-mixed` or `bf16-mixed` (see `kiln::amp`).
    pub precision: PrecisionSetting,
    /// A pre-trained encoder to start from, and how it is unfrozen.
    pub encoder: EncoderTransfer,
    /// Per-window input transform (recorded in the saved model; `none` = the reference).
    pub scaling: InputScaling,
    /// Learning-rate schedule: `constant` (the reference) or `one_cycle` (peaking at
    /// `learning_rate`, over all the steps of `n_epochs` epochs).
    pub lr_schedule: LrSchedule,
    /// One-cycle: fraction of the steps rising to the peak (PyTorch's `pct_start`).
    pub warmup_fraction: f64,
    /// Epochs before early stopping may stop (0: from the first epoch, the reference).
    pub min_epochs: usize,
    /// Global gradient-norm clip (`None`: no clipping, the reference).
    pub grad_clip: Option<f64>,
    /// Seed of every random stream (set from the run configuration's top-level `seed`).
    #[serde(skip)]
    pub seed: u64,
}

/// Starting a classifier's encoder from a pre-trained one (the reference's
/// `load_pretrained_encoder` + `freeze_encoder` and its unfreeze schedules).
///
/// * SimpleLSTM takes the forward direction of a masked BiLSTM autoencoder's encoder
///   (`moola pretrain --method masked-lstm`); its `lstm.*` is frozen and unfrozen at epoch
///   `unfreeze_after` with the learning rate multiplied by `unfreeze_lr_factor`.
/// * The CNN-Transformer takes a TS-TCC encoder (`moola pretrain --method ts-tcc`), key for
///   key; it is frozen and unfrozen in stages at the epochs of `unfreeze_schedule`.
///
/// Unlike the reference, where a refit rebuilds the network and drops the loaded weights, the
/// encoder is loaded into every network `fit` builds (every fold of a cross-validation too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncoderTransfer {
    /// The encoder file (this project's, from `moola pretrain`); `None`: train from scratch.
    pub path: Option<std::path::PathBuf>,
    /// Freeze the loaded encoder at the start (the reference's `freeze_encoder=True`).
    pub freeze: bool,
    /// SimpleLSTM: the epoch at which the frozen LSTM becomes trainable (0: never; the
    /// reference's OOF pipeline uses 10).
    pub unfreeze_after: usize,
    /// SimpleLSTM: learning-rate multiplier applied when the LSTM is unfrozen (the reference's
    /// `MASKED_LSTM_UNFREEZE_LR_REDUCTION`, 0.3).
    pub unfreeze_lr_factor: f64,
    /// CNN-Transformer: the epochs of the three unfreeze stages (last transformer layer, all
    /// transformer layers, everything); the reference's 10, 20, 30.
    pub unfreeze_schedule: Vec<usize>,
}

impl EncoderTransfer {
    /// Fails when an encoder is named but its file (or model-file pair) does not exist, so that
    /// a run can refuse before it writes anything.
    pub fn check_exists(&self) -> Result<()> {
        if let Some(path) = &self.path
            && !path.is_file()
            && !kiln::artifact::paths(path).1.is_file()
        {
            bail!("the pre-trained encoder {} does not exist", path.display());
        }
        Ok(())
    }
}

impl Default for EncoderTransfer {
    fn default() -> Self {
        Self {
            path: None,
            freeze: true,
            unfreeze_after: 10,
            unfreeze_lr_factor: 0.3,
            unfreeze_schedule: vec![10, 20, 30],
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            n_epochs: 60,
            batch_size: 512,
            learning_rate: 5e-4,
            weight_decay: 1e-4,
            early_stopping_patience: 20,
            val_split: 0.15,
            mixup_alpha: 0.4,
            cutmix_alpha: 0.3,
            cutmix_prob: 0.5,
            focal_gamma: 2.0,
            focal_alpha: None,
            temporal_aug: TemporalAugment::default(),
            pointer_beta_max: 0.1,
            pointer_beta_warmup_epochs: 50,
            multitask_mix_inputs: true,
            precision: PrecisionSetting::Auto,
            encoder: EncoderTransfer::default(),
            scaling: DEFAULT_SCALING,
            lr_schedule: LrSchedule::Constant,
            warmup_fraction: 0.3,
            min_epochs: 0,
            grad_clip: None,
            seed: kiln::seed::DEFAULT_SEED,
        }
    }
}

impl TrainConfig {
    /// The recipe new runs of a model use on large data sets: the reference's
    /// hyper-parameters with the default input scaling ([`DEFAULT_SCALING`]). For a data set of
    /// known size, [`TrainConfig::for_data`] picks between this and the small-data recipe.
    pub fn for_model(name: &str) -> Self {
        Self {
            scaling: DEFAULT_SCALING,
            ..Self::reference(name)
        }
    }

    /// The reference recipe of a model, exactly: raw inputs, constant learning rate, the
    /// reference's constructor defaults (RWKV-TS: patience 30, mixup α 0.2, no temporal
    /// augmentation).
    pub fn reference(name: &str) -> Self {
        let shared = Self {
            scaling: InputScaling::None,
            ..Self::default()
        };
        match name {
            "rwkv_ts" => Self {
                early_stopping_patience: 30,
                mixup_alpha: 0.2,
                temporal_aug: TemporalAugment {
                    enabled: false,
                    ..TemporalAugment::default()
                },
                ..shared
            },
            _ => shared,
        }
    }

    /// The small-data recipe of a model for a training set of `n` windows (the windows handed
    /// to `fit`): [`SmallData::recipe`] with the default rule.
    pub fn small_data(name: &str, n: usize) -> Self {
        SmallData::default().recipe(name, n)
    }

    /// The recipe for a training set of `n` windows: [`TrainConfig::small_data`] when the
    /// default rule applies to `n` (at most [`SmallData::max_windows`]), otherwise
    /// [`TrainConfig::for_model`].
    pub fn for_data(name: &str, n: usize) -> Self {
        let rule = SmallData::default();
        if rule.applies(n) {
            rule.recipe(name, n)
        } else {
            Self::for_model(name)
        }
    }

    /// The recipe with `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if !(0.0..1.0).contains(&self.val_split) {
            bail!("val_split must be in [0, 1), got {}", self.val_split);
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            bail!("learning_rate must be positive, got {}", self.learning_rate);
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            bail!(
                "warmup_fraction must be in [0, 1), got {}",
                self.warmup_fraction
            );
        }
        let f = self.encoder.unfreeze_lr_factor;
        if f.is_nan() || f <= 0.0 {
            bail!("encoder.unfreeze_lr_factor must be positive, got {f}");
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            bail!("grad_clip must be positive (or None), got {c}");
        }
        Ok(())
    }

    /// How a fit of this recipe trains `n_train` windows on `world_size` data-parallel
    /// workers (each takes `batch_size` windows of every step): steps per epoch and the
    /// learning-rate schedule over the whole run.
    pub fn plan(&self, n_train: usize, world_size: usize) -> Plan {
        let global_batch = self.batch_size.max(1) * world_size.max(1);
        let steps_per_epoch = n_train.div_ceil(global_batch).max(1);
        let schedule = match self.lr_schedule {
            LrSchedule::Constant => Schedule::Constant {
                lr: self.learning_rate,
            },
            LrSchedule::OneCycle => Schedule::OneCycle(OneCycleLr::new(
                self.learning_rate,
                self.n_epochs * steps_per_epoch,
                self.warmup_fraction,
            )),
        };
        Plan {
            batch_size: self.batch_size,
            steps_per_epoch,
            epochs: self.n_epochs,
            schedule,
        }
    }
}

/// The learning-rate schedule of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// A constant rate (the reference: no scheduler).
    Constant,
    /// PyTorch's `OneCycleLR` peaking at the recipe's rate ([`OneCycleLr`]).
    OneCycle,
}

/// The small-data recipe: what a practitioner changes in the reference recipe (tuned for
/// thousands of windows, where a batch of 512 gives many optimiser steps per epoch) for a data
/// set of tens to hundreds of windows. [`SmallData::recipe`] turns the rule into a model's
/// [`TrainConfig`] for a training set of `n` windows:
///
/// * the batch is [`batch_size`](Self::batch_size), smaller for tiny sets so that an epoch has
///   at least [`min_batches_per_epoch`](Self::min_batches_per_epoch) optimiser steps;
/// * training lasts about [`steps`](Self::steps) optimiser steps (`n_epochs` follows from the
///   steps per epoch) on a one-cycle learning rate peaking at [`max_lr`](Self::max_lr), with
///   the gradient norm clipped at [`grad_clip`](Self::grad_clip);
/// * the loss is cross-entropy ([`focal_gamma`](Self::focal_gamma) 0) instead of the focal loss's
///   γ = 2, which down-weights the windows already classified well;
/// * mixup, CutMix and temporal augmentation are off unless [`augment`](Self::augment);
/// * the validation split is [`val_split`](Self::val_split); with one, early stopping counts
///   its patience and minimum training in optimiser steps ([`patience_steps`](Self::patience_steps),
///   [`min_steps`](Self::min_steps), turned into epochs for `n`) and restores the best
///   validation weights; without one the whole cycle runs on every window and the final
///   weights are kept;
/// * the input scaling is the default one ([`DEFAULT_SCALING`]).
///
/// The result is an ordinary recipe: any of its keys can still be set by hand. The command
/// line picks it by itself (`recipe auto`, the default) for training sets of at most
/// [`max_windows`](Self::max_windows) windows: where the reference's batch of 512 gives at most
/// two optimiser steps per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmallData {
    /// `recipe auto` uses the small-data recipe for training sets of at most this many
    /// windows.
    pub max_windows: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Fewest optimiser steps per epoch (the batch shrinks for tiny sets).
    pub min_batches_per_epoch: usize,
    /// Optimiser steps of a run (rounded up to whole epochs).
    pub steps: usize,
    /// Peak learning rate of the one-cycle schedule.
    pub max_lr: f64,
    /// Fraction of the steps spent rising to the peak.
    pub warmup_fraction: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Focal-loss γ (0: cross-entropy).
    pub focal_gamma: f64,
    /// Stratified validation fraction (0: no validation, the whole cycle on every window).
    pub val_split: f64,
    /// Early-stopping patience in optimiser steps (with a validation set).
    pub patience_steps: usize,
    /// Optimiser steps before early stopping may stop (with a validation set).
    pub min_steps: usize,
    /// Keep mixup, CutMix and temporal augmentation on.
    pub augment: bool,
}

impl Default for SmallData {
    fn default() -> Self {
        Self {
            max_windows: 1024,
            batch_size: 32,
            min_batches_per_epoch: 4,
            steps: 1000,
            max_lr: 1e-3,
            warmup_fraction: 0.3,
            grad_clip: 1.0,
            focal_gamma: 0.0,
            val_split: 0.0,
            patience_steps: 300,
            min_steps: 300,
            augment: false,
        }
    }
}

impl SmallData {
    /// Whether `recipe auto` picks the small-data recipe for `n` training windows.
    pub fn applies(&self, n: usize) -> bool {
        n > 0 && n <= self.max_windows
    }

    /// The recipe of model `name` for `n` training windows (see the type's docs).
    pub fn recipe(&self, name: &str, n: usize) -> TrainConfig {
        let base = TrainConfig::for_model(name);
        let n_train = n - (n as f64 * self.val_split).round() as usize;
        let cap = n_train.max(1).div_ceil(self.min_batches_per_epoch.max(1));
        let batch_size = self.batch_size.min(cap).max(1);
        let steps_per_epoch = n_train.max(1).div_ceil(batch_size);
        let epochs = |steps: usize| steps.div_ceil(steps_per_epoch);
        let mut c = TrainConfig {
            n_epochs: epochs(self.steps).max(1),
            batch_size,
            learning_rate: self.max_lr,
            lr_schedule: LrSchedule::OneCycle,
            warmup_fraction: self.warmup_fraction,
            grad_clip: Some(self.grad_clip),
            focal_gamma: self.focal_gamma,
            val_split: self.val_split,
            early_stopping_patience: epochs(self.patience_steps).max(1),
            min_epochs: epochs(self.min_steps),
            ..base
        };
        if !self.augment {
            c.mixup_alpha = 0.0;
            c.cutmix_prob = 0.0;
            c.temporal_aug.enabled = false;
        }
        c
    }

    /// Checks the rule's settings.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.steps == 0 {
            bail!("small_data.batch_size and small_data.steps must be at least 1");
        }
        if self.max_lr.is_nan() || self.max_lr <= 0.0 {
            bail!("small_data.max_lr must be positive, got {}", self.max_lr);
        }
        if self.grad_clip.is_nan() || self.grad_clip <= 0.0 {
            bail!(
                "small_data.grad_clip must be positive, got {}",
                self.grad_clip
            );
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            bail!(
                "small_data.warmup_fraction must be in [0, 1), got {}",
                self.warmup_fraction
            );
        }
        if !(0.0..1.0).contains(&self.val_split) {
            bail!(
                "small_data.val_split must be in [0, 1), got {}",
                self.val_split
            );
        }
        Ok(())
    }
}

/// How one fit trains: see [`TrainConfig::plan`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Mini-batch size.
    pub batch_size: usize,
    /// Optimiser steps per epoch (one process).
    pub steps_per_epoch: usize,
    /// Epochs of the run (at most).
    pub epochs: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

/// A fit's learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The reference's constant rate.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// One-cycle.
    OneCycle(OneCycleLr),
}

impl burn::optim::lr_scheduler::LrScheduler for Schedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        match self {
            Schedule::Constant { lr } => *lr,
            Schedule::OneCycle(s) => s.step(),
        }
    }

    fn to_record<B: Backend>(&self) -> usize {
        match self {
            Schedule::Constant { .. } => 0,
            Schedule::OneCycle(s) => s.next_step,
        }
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        if let Schedule::OneCycle(s) = &mut self {
            s.next_step = record;
        }
        self
    }
}

/// PyTorch's `OneCycleLR` (cosine annealing, two phases, `div_factor` 25,
/// `final_div_factor` 1e4), stepped once per optimiser step: from `max_lr / 25` up to `max_lr`
/// over the first `warmup_fraction` of the steps, then down to `max_lr / 25 / 1e4`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OneCycleLr {
    /// Peak rate.
    pub max_lr: f64,
    /// Steps of the whole cycle.
    pub total_steps: usize,
    /// Fraction of the steps rising to the peak (PyTorch's `pct_start`).
    pub warmup_fraction: f64,
    next_step: usize,
}

impl OneCycleLr {
    /// Initial rate = `max_lr / DIV`.
    pub const DIV: f64 = 25.0;
    /// Final rate = initial / `FINAL_DIV`.
    pub const FINAL_DIV: f64 = 1e4;

    /// A cycle of `total_steps` steps.
    pub fn new(max_lr: f64, total_steps: usize, warmup_fraction: f64) -> Self {
        Self {
            max_lr,
            total_steps,
            warmup_fraction,
            next_step: 0,
        }
    }

    /// The rate of step `i` (0-based; steps past the end keep the final rate).
    pub fn lr_at(&self, i: usize) -> f64 {
        let initial = self.max_lr / Self::DIV;
        let last = initial / Self::FINAL_DIV;
        let cos = |start: f64, end: f64, pct: f64| {
            end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
        };
        let total = self.total_steps.max(2) as f64;
        let peak = self.warmup_fraction * total - 1.0;
        let end = total - 1.0;
        let i = (i as f64).min(end);
        if i <= peak {
            cos(
                initial,
                self.max_lr,
                if peak > 0.0 { i / peak } else { 1.0 },
            )
        } else {
            cos(self.max_lr, last, (i - peak) / (end - peak))
        }
    }

    fn step(&mut self) -> f64 {
        let lr = self.lr_at(self.next_step);
        self.next_step += 1;
        lr
    }
}

/// Early stopping that may not stop before `min_epochs` epochs (minimum training); the patience
/// counter and best-weight restore are [`EarlyStopping`]'s.
struct MinEpochsEarlyStopping {
    inner: EarlyStopping,
    min_epochs: usize,
}

impl kiln::callbacks::Callback for MinEpochsEarlyStopping {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn on_epoch_end(
        &mut self,
        ctx: &kiln::callbacks::EpochEnd<'_>,
        actions: &mut kiln::callbacks::Actions,
    ) -> Result<()> {
        let stop_before = actions.stop;
        self.inner.on_epoch_end(ctx, actions)?;
        if ctx.epoch + 1 < self.min_epochs {
            actions.stop = stop_before;
        }
        Ok(())
    }

    fn on_fit_end(&mut self, actions: &mut kiln::callbacks::Actions) {
        self.inner.on_fit_end(actions)
    }

    fn state(&self) -> serde_json::Value {
        self.inner.state()
    }

    fn load_state(&mut self, state: serde_json::Value) -> Result<()> {
        self.inner.load_state(state)
    }
}

/// Labels, pointer targets and the shape of a labelled set, ready for training.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Class index of each row.
    pub y: Vec<usize>,
    /// Pointer targets relative to the inner window, when the model predicts pointers.
    pub pointers: Option<Vec<(usize, usize)>>,
    /// The label map.
    pub labels: LabelMap,
    /// The inner window the pointers refer to.
    pub window: Option<InnerWindow>,
}

/// Checks a labelled set against a model spec and computes targets.
pub fn prepare(spec: &ModelSpec, data: &WindowSet, labels: Option<&LabelMap>) -> Result<Prepared> {
    let raw = data.require_labels()?;
    data.check_finite()?;
    let labels = match labels {
        Some(l) => l.clone(),
        None => LabelMap::fit(raw),
    };
    let y = labels.encode(raw)?;
    let (pointers, window) = match spec {
        ModelSpec::CnnTransformer(c) if c.predict_pointers => {
            let window = c
                .window
                .or(InnerWindow::default_for(data.seq_len))
                .context("pointer heads need an inner window for this sequence length")?;
            let exp = data.expansion.as_ref().context(
                "the CNN-Transformer with pointer heads needs expansion_start/expansion_end",
            )?;
            let last = window.len() as i64 - 1;
            let ptr = exp
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let (s, e) = e.with_context(|| {
                        format!("window {} has no expansion indices", data.ids[i])
                    })?;
                    // The reference converts with clip(idx − 30, 0, 44).
                    let rel = |v: i64| (v - window.start as i64).clamp(0, last) as usize;
                    Ok((rel(s), rel(e)))
                })
                .collect::<Result<Vec<_>>>()?;
            (Some(ptr), Some(window))
        }
        _ => {
            if data.expansion.is_some() {
                tracing::debug!("expansion indices ignored: the model has no pointer heads");
            }
            (None, None)
        }
    };
    Ok(Prepared {
        y,
        pointers,
        labels,
        window,
    })
}

/// One labelled split held on the host.
#[derive(Debug, Clone)]
struct Split {
    x: Vec<f32>,
    y: Vec<usize>,
    pointers: Option<Vec<(usize, usize)>>,
}

impl Split {
    fn take(data: &WindowSet, prep: &Prepared, idx: &[usize]) -> Self {
        let per = data.seq_len * data.n_features;
        let mut x = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            x.extend_from_slice(data.sample(i));
        }
        Self {
            x,
            y: idx.iter().map(|&i| prep.y[i]).collect(),
            pointers: prep
                .pointers
                .as_ref()
                .map(|p| idx.iter().map(|&i| p[i]).collect()),
        }
    }

    fn len(&self) -> usize {
        self.y.len()
    }
}

/// The kiln task of one classifier fit.
pub struct ClassifierTask<B: AutodiffBackend> {
    train: Split,
    val: Option<Split>,
    seq_len: usize,
    n_features: usize,
    config: TrainConfig,
    focal_alpha: Option<Vec<f32>>,
    device: B::Device,
    /// The card of the network being trained, stored as the task state of every checkpoint so
    /// that a checkpoint loads like a saved model ([`kiln::artifact`]).
    card: crate::model::ModelCard,
}

fn int_tensor<B: Backend>(
    v: impl IntoIterator<Item = usize>,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = v.into_iter().map(|i| i as i64).collect();
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

/// Loss of one batch under the recipe (shared by training and validation).
#[allow(clippy::too_many_arguments)]
fn batch_loss<B: Backend>(
    out: crate::model::ModelOutput<B>,
    y_a: Tensor<B, 1, Int>,
    y_b: Tensor<B, 1, Int>,
    lambda: f64,
    pointers: Option<(Tensor<B, 1, Int>, Tensor<B, 1, Int>)>,
    config: &TrainConfig,
    focal_alpha: Option<&Tensor<B, 1>>,
    epoch: usize,
) -> Result<Tensor<B, 1>> {
    match (out.pointers, pointers) {
        (Some((start, end)), Some((ts, te))) => {
            let (alpha, beta) = loss::progressive_weights(
                epoch,
                config.pointer_beta_max,
                config.pointer_beta_warmup_epochs,
            );
            Ok(loss::multitask_loss(
                out.logits, y_a, start, end, ts, te, alpha, beta,
            ))
        }
        (None, None) => {
            let logits = out.logits;
            let gamma = config.focal_gamma;
            Ok(loss::mixed(
                |t| loss::focal_loss(logits.clone(), t, gamma, focal_alpha),
                y_a,
                y_b,
                lambda,
            ))
        }
        _ => bail!("pointer targets and pointer heads do not match"),
    }
}

impl<B: AutodiffBackend> ClassifierTask<B> {
    fn alpha<Bk: Backend>(&self, device: &Bk::Device) -> Option<Tensor<Bk, 1>> {
        self.focal_alpha
            .as_ref()
            .map(|a| Tensor::from_data(TensorData::new(a.clone(), [a.len()]), device))
    }
}

impl<B: AutodiffBackend> Task<B> for ClassifierTask<B> {
    type Model = Net<B>;
    type Batch = Vec<usize>;

    fn train_loader(&mut self, info: &EpochInfo, seed: u64) -> Result<Loader<Vec<usize>>> {
        // Every rank shuffles with the same seed and takes its class-balanced part of each
        // global batch (`batch_size` per rank); one rank is the plain shuffled batching.
        Ok(Loader::shuffled(
            self.train.len(),
            self.config.batch_size,
            Some(&self.train.y),
            info,
            seed,
        ))
    }

    fn training_step(
        &mut self,
        model: &Net<B>,
        idx: Vec<usize>,
        info: &EpochInfo,
    ) -> Result<StepOutput<B>> {
        let (t, f) = (self.seq_len, self.n_features);
        let b = idx.len();
        let mut rng = kiln::seed::rng(info.stream_seed(), "augment", info.global_step as u64);
        let mut x = gather(&self.train.x, t * f, &idx);
        self.config.temporal_aug.apply(&mut x, b, t, f, &mut rng);
        let mixed = mixup_cutmix(
            &x,
            b,
            t,
            f,
            self.config.mixup_alpha,
            self.config.cutmix_alpha,
            self.config.cutmix_prob,
            &mut rng,
        );
        let y: Vec<usize> = idx.iter().map(|&i| self.train.y[i]).collect();
        let pointer_mode = self.train.pointers.is_some();
        // Single task: mixed inputs and the mixup criterion. Multi-task (a reference quirk): the
        // reference mixes the inputs but keeps the original targets.
        let (input, lambda, y_b) = if pointer_mode {
            let input = if self.config.multitask_mix_inputs {
                mixed.x
            } else {
                x
            };
            (input, 1.0, y.clone())
        } else {
            let y_b = mixed.perm.iter().map(|&p| y[p]).collect();
            (mixed.x, mixed.lambda, y_b)
        };
        let device = &self.device;
        let input = Tensor::<B, 3>::from_data(TensorData::new(input, [b, t, f]), device);
        let pointers = self.train.pointers.as_ref().map(|p| {
            (
                int_tensor::<B>(idx.iter().map(|&i| p[i].0), device),
                int_tensor::<B>(idx.iter().map(|&i| p[i].1), device),
            )
        });
        let out = model.forward(input);
        let logits = out.logits.clone();
        let alpha = self.alpha::<B>(device);
        let loss = batch_loss(
            out,
            int_tensor::<B>(y.iter().copied(), device),
            int_tensor::<B>(y_b, device),
            lambda,
            pointers,
            &self.config,
            alpha.as_ref(),
            info.epoch,
        )?;
        // Training accuracy against the original labels, like the reference.
        let pred = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap_or_default();
        let hits = pred
            .iter()
            .zip(&y)
            .filter(|(p, y)| **p as usize == **y)
            .count();
        Ok(StepOutput {
            loss,
            batch_size: b,
            logs: vec![("acc".into(), hits as f64 / b as f64)],
        })
    }

    fn validate(&mut self, model: &Net<B::InnerBackend>, info: &EpochInfo) -> Result<Row> {
        let Some(val) = &self.val else {
            return Ok(Row::new());
        };
        let (t, f) = (self.seq_len, self.n_features);
        let device = &self.device;
        let alpha = self.alpha::<B::InnerBackend>(device);
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        let mut hits = 0usize;
        for chunk in (0..val.len())
            .collect::<Vec<_>>()
            .chunks(self.config.batch_size)
        {
            let b = chunk.len();
            let x = gather(&val.x, t * f, chunk);
            let input =
                Tensor::<B::InnerBackend, 3>::from_data(TensorData::new(x, [b, t, f]), device);
            let out = model.forward(input);
            let pred: Vec<i64> = out
                .logits
                .clone()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec()
                .unwrap_or_default();
            hits += chunk
                .iter()
                .zip(&pred)
                .filter(|(i, p)| val.y[**i] == **p as usize)
                .count();
            let y = int_tensor::<B::InnerBackend>(chunk.iter().map(|&i| val.y[i]), device);
            let pointers = val.pointers.as_ref().map(|p| {
                (
                    int_tensor::<B::InnerBackend>(chunk.iter().map(|&i| p[i].0), device),
                    int_tensor::<B::InnerBackend>(chunk.iter().map(|&i| p[i].1), device),
                )
            });
            let l = batch_loss(
                out,
                y.clone(),
                y,
                1.0,
                pointers,
                &self.config,
                alpha.as_ref(),
                info.epoch,
            )?;
            loss_sum += f64::from(l.into_scalar().elem::<f32>());
            batches += 1;
        }
        Ok([
            ("val_loss".to_string(), loss_sum / batches.max(1) as f64),
            ("val_acc".to_string(), hits as f64 / val.len().max(1) as f64),
        ]
        .into())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.card).unwrap_or(serde_json::Value::Null)
    }

    fn on_epoch_start(
        &mut self,
        net: Net<B>,
        info: &EpochInfo,
        lr: &mut dyn kiln::optim::LrControl,
    ) -> Result<Net<B>> {
        let transfer = &self.config.encoder;
        if transfer.path.is_none() || !transfer.freeze {
            return Ok(net);
        }
        // Trainability follows from the epoch alone, so a resumed run sets it right too (the
        // learning-rate factor is part of the optimiser's checkpoint).
        Ok(match net {
            Net::SimpleLstm(m) => {
                let open = transfer.unfreeze_after > 0 && info.epoch >= transfer.unfreeze_after;
                if transfer.unfreeze_after > 0 && info.epoch == transfer.unfreeze_after {
                    tracing::info!(
                        "epoch {}: unfreezing the pre-trained LSTM, learning rate × {}",
                        info.epoch,
                        transfer.unfreeze_lr_factor
                    );
                    lr.scale_lr(transfer.unfreeze_lr_factor);
                }
                Net::SimpleLstm(if open {
                    crate::pretrain::masked_lstm::unfreeze_encoder(m)
                } else {
                    crate::pretrain::masked_lstm::freeze_encoder(m)
                })
            }
            Net::CnnTransformer(m) => {
                let stage_epochs = &transfer.unfreeze_schedule;
                let stage = stage_epochs.iter().filter(|&&e| info.epoch >= e).count();
                if stage_epochs.contains(&info.epoch) {
                    tracing::info!(
                        "epoch {}: unfreezing stage {stage} of the pre-trained encoder",
                        info.epoch
                    );
                }
                let mut m = crate::pretrain::ts_tcc::freeze_encoder(m);
                for s in 1..=stage.min(3) {
                    m = crate::pretrain::ts_tcc::unfreeze_encoder_gradual(m, s)?;
                }
                Net::CnnTransformer(m)
            }
            other => other,
        })
    }
}

/// Loads the pre-trained encoder of `transfer` (if any) into a freshly built network.
fn transfer_encoder<B: AutodiffBackend>(
    net: Net<B>,
    transfer: &EncoderTransfer,
    scaling: InputScaling,
    device: &B::Device,
) -> Result<Net<B>> {
    let Some(path) = &transfer.path else {
        return Ok(net);
    };
    let what = || {
        format!(
            "cannot start from the pre-trained encoder {}",
            path.display()
        )
    };
    match net {
        Net::SimpleLstm(m) => {
            let (encoder, card) =
                crate::pretrain::masked_lstm::load_encoder::<B>(path, device).with_context(what)?;
            check_encoder_scaling(card.scaling, scaling).with_context(what)?;
            let (m, report) =
                crate::pretrain::masked_lstm::transfer_encoder(m, &encoder, transfer.freeze)
                    .with_context(what)?;
            tracing::info!(
                "pre-trained encoder {}: {} tensors copied, {} skipped{}",
                path.display(),
                report.copied.len(),
                report.skipped.len(),
                if report.frozen { ", LSTM frozen" } else { "" }
            );
            Ok(Net::SimpleLstm(m))
        }
        Net::CnnTransformer(m) => {
            let (encoder, card) =
                crate::pretrain::ts_tcc::load_encoder::<B>(path, device).with_context(what)?;
            check_encoder_scaling(card.scaling, scaling).with_context(what)?;
            let m = crate::pretrain::ts_tcc::load_pretrained_encoder(m, &encoder, transfer.freeze)
                .with_context(what)?;
            tracing::info!(
                "pre-trained TS-TCC encoder {}{}",
                path.display(),
                if transfer.freeze { ", frozen" } else { "" }
            );
            Ok(Net::CnnTransformer(m))
        }
        Net::RwkvTs(_) => bail!("{}: RWKV-TS has no pre-trained encoder", what()),
    }
}

/// An encoder pre-trained on windows scaled one way does not fit a classifier that scales
/// them another way.
fn check_encoder_scaling(encoder: InputScaling, classifier: InputScaling) -> Result<()> {
    if encoder != classifier {
        bail!(
            "the encoder was pre-trained on windows with input scaling `{encoder}`, the \
             classifier scales its inputs `{classifier}`: train with `<model>.train.scaling \
             {encoder}` or pre-train with `pretrain.<method>.scaling {classifier}`"
        );
    }
    Ok(())
}

/// What a fit produced.
pub struct Fitted<B: AutodiffBackend> {
    /// The trained network (best validation weights when validation ran).
    pub net: Net<B>,
    /// Label map and pointer window.
    pub prepared: Prepared,
    /// Per-epoch metrics.
    pub history: Vec<(usize, Row)>,
    /// Epochs run.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// How the run trained (steps per epoch, schedule).
    pub plan: Plan,
    /// The input scaling it trained with (`auto` resolved).
    pub scaling: InputScaling,
}

/// Everything one training run needs: the task, a fresh network and its optimiser (internal:
/// the optimiser adaptor type is Burn plumbing, not API).
pub(crate) struct Session<B: AutodiffBackend> {
    /// The kiln task (data, recipe).
    pub(crate) task: ClassifierTask<B>,
    /// The freshly initialised network.
    pub(crate) net: Net<B>,
    /// AdamW with the plan's learning-rate schedule.
    pub(crate) optim:
        Standard<burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Net<B>, B>, Schedule>,
    /// Labels and pointer targets.
    pub(crate) prepared: Prepared,
    /// How the run trains.
    pub(crate) plan: Plan,
}

impl<B: AutodiffBackend> Session<B> {
    /// Validates the inputs, splits off the validation set and builds the network.
    pub(crate) fn new(
        spec: &ModelSpec,
        config: &TrainConfig,
        data: &WindowSet,
        device: &B::Device,
    ) -> Result<Self> {
        Self::with_validation(spec, config, data, None, 1, device)
    }

    /// [`Session::new`] with a caller-supplied validation set instead of the `val_split` of
    /// `data` (all of `data` trains; `validation` must be labelled with the training labels).
    pub(crate) fn with_validation(
        spec: &ModelSpec,
        config: &TrainConfig,
        data: &WindowSet,
        validation: Option<&WindowSet>,
        world_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        if data.is_empty() {
            bail!("cannot train on an empty data set");
        }
        let prep = prepare(spec, data, None)?;
        let n_classes = prep.labels.len();
        if n_classes < 2 {
            bail!(
                "training needs at least 2 classes, found {:?}",
                prep.labels.classes()
            );
        }
        let focal_alpha = match &config.focal_alpha {
            Some(a) if a.len() != n_classes => bail!(
                "focal_alpha has {} weights for {n_classes} classes {:?}",
                a.len(),
                prep.labels.classes()
            ),
            Some(a) => Some(a.iter().map(|&v| v as f32).collect()),
            None => None,
        };
        let all: Vec<usize> = (0..data.len()).collect();
        let (train_idx, val_idx) = if validation.is_some() {
            (all, Vec::new())
        } else if config.val_split > 0.0 {
            let mut rng = kiln::seed::rng(config.seed, "val_split", 0);
            kiln::data::stratified_split(&prep.y, config.val_split, &mut rng).context(
                "cannot make the stratified validation split (set val_split 0 to skip it)",
            )?
        } else {
            (all, Vec::new())
        };
        let plan = config.plan(train_idx.len(), world_size);
        // `auto` is decided once, on the windows of this fit (validation included).
        let scaling = config.scaling.resolve(data);
        tracing::info!(
            "fitting {} on {} windows ({} train / {} validation), {} classes {:?}, shape {}×{}, \
             input scaling {}, batch {}, {} epochs of {} steps, {} learning rate {}",
            spec.name(),
            data.len(),
            train_idx.len(),
            validation.map_or(val_idx.len(), WindowSet::len),
            n_classes,
            prep.labels.classes(),
            data.seq_len,
            data.n_features,
            scaling,
            plan.batch_size,
            plan.epochs,
            plan.steps_per_epoch,
            match config.lr_schedule {
                LrSchedule::Constant => "constant",
                LrSchedule::OneCycle => "one-cycle",
            },
            config.learning_rate
        );
        let scaled = scaling.apply(data)?;
        let scaled_val = validation.map(|v| scaling.apply(v)).transpose()?;
        let net: Net<B> = kiln::seed::init_module(device, config.seed, || {
            spec.init(data.n_features, n_classes, data.seq_len, device)
        })?;
        let net = transfer_encoder(net, &config.encoder, scaling, device)?;
        tracing::info!("{} parameters", kiln::checkpoint::parameter_count(&net));
        let val = match (validation, &scaled_val) {
            (Some(v), Some(sv)) => {
                let vprep = prepare(spec, v, Some(&prep.labels))
                    .context("the validation set does not fit the training set")?;
                if (v.seq_len, v.n_features) != (data.seq_len, data.n_features) {
                    bail!(
                        "the validation windows are {}×{}, the training windows {}×{}",
                        v.seq_len,
                        v.n_features,
                        data.seq_len,
                        data.n_features
                    );
                }
                let idx: Vec<usize> = (0..v.len()).collect();
                (!v.is_empty()).then(|| Split::take(sv, &vprep, &idx))
            }
            _ => (!val_idx.is_empty()).then(|| Split::take(&scaled, &prep, &val_idx)),
        };
        let task = ClassifierTask::<B> {
            train: Split::take(&scaled, &prep, &train_idx),
            val,
            seq_len: data.seq_len,
            n_features: data.n_features,
            config: config.clone(),
            focal_alpha,
            device: device.clone(),
            card: crate::model::ModelCard::new(
                spec,
                data.n_features,
                data.seq_len,
                prep.labels.classes().to_vec(),
            )
            .with_scaling(scaling),
        };
        let optim = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, Net<B>>();
        let mut optim = Standard::new(optim, plan.schedule.clone(), Interval::Step);
        if let Some(c) = config.grad_clip {
            optim = optim.with_clip_norm(c);
        }
        Ok(Self {
            task,
            net,
            optim,
            prepared: prep,
            plan,
        })
    }
}

/// Builds a fresh network from `spec` and trains it on `data` with the recipe (the small-data
/// rule and the input scaling applied).
pub fn fit<B: AutodiffBackend>(
    spec: &ModelSpec,
    config: &TrainConfig,
    data: &WindowSet,
    device: &B::Device,
    run: &RunOptions,
) -> Result<Fitted<B>> {
    let Session {
        mut task,
        net,
        mut optim,
        prepared,
        plan,
    } = Session::with_validation(
        spec,
        config,
        data,
        run.validation.as_ref(),
        // Virtual ranks split each global batch like replicas do: the plan counts them.
        run.dist.as_ref().map_or(1, kiln::dist::Dist::world_size) * run.virtual_ranks.max(1),
        device,
    )?;
    let mut tc = TrainerConfig::new(plan.epochs);
    tc.seed = config.seed;
    tc.run_dir = run.run_dir.clone();
    tc.resume_from = run.resume_from.clone();
    tc.progress = run.progress;
    tc.precision = config.precision.resolve_for::<B>(device);
    tc.virtual_ranks = run.virtual_ranks.max(1);
    tc.divergence = run.divergence;
    let mut trainer = Trainer::new(tc);
    if let Some(dist) = &run.dist {
        let fingerprint = serde_json::to_string(&(spec, config, data.len(), data.seq_len))?;
        trainer = trainer
            .with_dist(dist.clone())
            .with_fingerprint(fingerprint);
    }
    if task.val.is_some() {
        let stopping = EarlyStopping::new("val_loss", Mode::Min, config.early_stopping_patience);
        trainer = if config.min_epochs > 0 {
            trainer.with_callback(MinEpochsEarlyStopping {
                inner: stopping,
                min_epochs: config.min_epochs,
            })
        } else {
            trainer.with_callback(stopping)
        };
        if run.run_dir.is_some() {
            trainer = trainer.with_callback(ModelCheckpoint::best("val_loss", Mode::Min, 1));
        }
    } else if run.run_dir.is_some() {
        trainer = trainer.with_callback(ModelCheckpoint::last_only());
    }
    for make in &run.callbacks {
        trainer = trainer.with_callback(make.build());
    }
    let outcome = trainer.fit(&mut task, net, &mut optim, device)?;
    Ok(Fitted {
        net: outcome.model,
        prepared,
        history: outcome.history,
        epochs: outcome.epochs_completed,
        stopped_early: outcome.stopped_early,
        plan,
        scaling: task.card.scaling,
    })
}

/// Host copies of a network's outputs: class logits and optional (start, end) pointer logits.
pub type HostOutputs = (Vec<Vec<f32>>, Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>);

/// Runs the network in eval mode over a set in batches; returns logits and pointer logits on the host.
pub fn infer<B: Backend>(
    net: &Net<B>,
    data: &WindowSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<HostOutputs> {
    data.check_finite()?;
    let (t, f) = (data.seq_len, data.n_features);
    let mut logits = Vec::with_capacity(data.len());
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut has_pointers = false;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let x = gather(&data.x, t * f, chunk);
        let input = Tensor::<B, 3>::from_data(TensorData::new(x, [chunk.len(), t, f]), device);
        let out = net.forward(input);
        logits.extend(rows(out.logits)?);
        if let Some((s, e)) = out.pointers {
            has_pointers = true;
            starts.extend(rows(s)?);
            ends.extend(rows(e)?);
        }
    }
    Ok((logits, has_pointers.then_some((starts, ends))))
}

fn rows<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
    let [_, c] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("cannot read model output: {e:?}"))?;
    Ok(v.chunks(c).map(<[f32]>::to_vec).collect())
}

/// Softmax of one row of logits, in f64.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// The inner (eval) network of a trained autodiff network.
pub fn eval_net<B: AutodiffBackend>(net: &Net<B>) -> Net<B::InnerBackend> {
    net.valid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CnnTransformerConfig;
    use kiln::backend::{Autodiff, Flex};

    type AD = Autodiff<Flex>;

    const T: usize = 24;
    const WINDOW: InnerWindow = InnerWindow { start: 6, end: 18 };

    /// `n` labelled windows `[T, 4]` of smooth deterministic values (labels `down`, `up`
    /// alternating), with expansions in and around [`WINDOW`] (those before it clip to 0).
    fn windows(n: usize, phase: f32) -> WindowSet {
        let x = (0..n * T * 4)
            .map(|i| (i as f32 * 0.37 + phase).sin() + (i / (T * 4)) as f32 * 0.1)
            .collect();
        let labels = (0..n).map(|i| ["down", "up"][i % 2].to_string()).collect();
        let expansion = (0..n)
            .map(|i| Some((2 + 3 * (i % 5) as i64, 5 + 3 * (i % 5) as i64)))
            .collect();
        let ids = (0..n).map(|i| format!("w{i}")).collect();
        WindowSet::new(ids, x, T, 4, Some(labels), Some(expansion)).unwrap()
    }

    fn pointer_spec() -> ModelSpec {
        ModelSpec::CnnTransformer(CnnTransformerConfig {
            cnn_channels: vec![4, 4, 8],
            cnn_kernels: vec![3, 5],
            transformer_layers: 1,
            transformer_heads: 2,
            dropout: 0.0,
            predict_pointers: true,
            window: Some(WINDOW),
        })
    }

    /// β ramps over 4 epochs to 0.6 (not the reference's 0.1 over 50); mixup only, no temporal
    /// augmentation; every validation window in one batch.
    fn recipe(multitask_mix_inputs: bool) -> TrainConfig {
        TrainConfig {
            batch_size: 16,
            pointer_beta_max: 0.6,
            pointer_beta_warmup_epochs: 4,
            multitask_mix_inputs,
            mixup_alpha: 1.0,
            cutmix_prob: 0.0,
            temporal_aug: crate::augment::TemporalAugment {
                enabled: false,
                ..Default::default()
            },
            // The hand computations below see the raw windows.
            scaling: InputScaling::None,
            ..TrainConfig::default()
        }
    }

    fn info(epoch: usize, global_step: usize) -> EpochInfo {
        EpochInfo {
            epoch,
            max_epochs: 10,
            global_step,
            seed: 5,
            rank: 0,
            world_size: 1,
        }
    }

    /// `CE(class) + β·(BCE(start) + BCE(end))` in f64 from host logits: CE through
    /// log-sum-exp, the BCEs as `softplus(z) − z·t` against one-hot targets, all means.
    fn multitask_by_hand(
        logits: &[Vec<f32>],
        starts: &[Vec<f32>],
        ends: &[Vec<f32>],
        labels: &[usize],
        pointers: &[(usize, usize)],
        beta: f64,
    ) -> f64 {
        let n = logits.len() as f64;
        let ce: f64 = logits
            .iter()
            .zip(labels)
            .map(|(row, &y)| {
                let max = row.iter().fold(f64::MIN, |m, &v| m.max(f64::from(v)));
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (f64::from(v) - max).exp())
                        .sum::<f64>()
                        .ln();
                lse - f64::from(row[y])
            })
            .sum::<f64>()
            / n;
        let bce = |rows: &[Vec<f32>], target: &dyn Fn(usize) -> usize| {
            let mut sum = 0.0;
            let mut count = 0.0;
            for (i, row) in rows.iter().enumerate() {
                for (j, &z) in row.iter().enumerate() {
                    let z = f64::from(z);
                    let t = if j == target(i) { 1.0 } else { 0.0 };
                    sum += z.max(0.0) + (-z.abs()).exp().ln_1p() - z * t;
                    count += 1.0;
                }
            }
            sum / count
        };
        ce + beta * (bce(starts, &|i| pointers[i].0) + bce(ends, &|i| pointers[i].1))
    }

    /// Pointer targets of [`windows`] by hand: the expansion relative to the window start,
    /// clipped to the window.
    fn targets(set: &WindowSet, rows: &[usize]) -> (Vec<usize>, Vec<(usize, usize)>) {
        let labels = rows.iter().map(|&i| i % 2).collect();
        let rel = |v: i64| (v - WINDOW.start as i64).clamp(0, (WINDOW.len() - 1) as i64) as usize;
        let exp = set.expansion.as_ref().unwrap();
        let ptr = rows
            .iter()
            .map(|&i| {
                let (s, e) = exp[i].unwrap();
                (rel(s), rel(e))
            })
            .collect();
        (labels, ptr)
    }

    /// The network's outputs on `x` (`[rows, T, 4]`), on the host.
    fn outputs<Bk: Backend>(net: &Net<Bk>, x: Vec<f32>, rows: usize) -> HostOutputs {
        let input =
            Tensor::<Bk, 3>::from_data(TensorData::new(x, [rows, T, 4]), &Default::default());
        let out = net.forward(input);
        let (s, e) = out.pointers.expect("pointer heads");
        (
            super::rows(out.logits).unwrap(),
            Some((super::rows(s).unwrap(), super::rows(e).unwrap())),
        )
    }

    /// The validation loss is the class loss plus the pointer loss weighted by
    /// `β = pointer_beta_max · min(epoch / pointer_beta_warmup_epochs, 1)`, computed here.
    #[test]
    fn validation_loss_weights_the_pointer_loss_by_the_ramp() {
        let device = Default::default();
        let (train, val) = (windows(16, 0.0), windows(12, 1.3));
        let mut session = Session::<AD>::with_validation(
            &pointer_spec(),
            &recipe(true),
            &train,
            Some(&val),
            1,
            &device,
        )
        .unwrap();
        assert_eq!(session.prepared.labels.classes(), ["down", "up"]);
        let net = session.net.valid();
        let (logits, pointers) = outputs(&net, val.x.clone(), val.len());
        let (starts, ends) = pointers.unwrap();
        let (labels, ptr) = targets(&val, &(0..val.len()).collect::<Vec<_>>());
        for (epoch, beta) in [(0, 0.0), (1, 0.15), (2, 0.3), (3, 0.45), (4, 0.6), (9, 0.6)] {
            let got = session.task.validate(&net, &info(epoch, 0)).unwrap()["val_loss"];
            let want = multitask_by_hand(&logits, &starts, &ends, &labels, &ptr, beta);
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "epoch {epoch}: val_loss {got}, by hand {want} (β {beta})"
            );
        }
        // The pointer term is not negligible: β 0.6 against β 0 moves the loss.
        let none = multitask_by_hand(&logits, &starts, &ends, &labels, &ptr, 0.0);
        let full = multitask_by_hand(&logits, &starts, &ends, &labels, &ptr, 0.6);
        assert!(full - none > 0.1, "{none} {full}");
    }

    /// A training step's loss: with `multitask_mix_inputs` the network sees the mixup of the
    /// batch (the draw of the step's augmentation stream) and the loss keeps the un-mixed class
    /// and pointer targets; without it the network sees the batch itself.
    #[test]
    fn training_loss_mixes_the_inputs_but_not_the_targets() {
        let device = Default::default();
        let train = windows(16, 0.0);
        let rows: Vec<usize> = vec![3, 0, 7, 12, 5, 10, 1, 14];
        let (labels, ptr) = targets(&train, &rows);
        let (epoch, step) = (3, 17);
        let beta = 0.6 * 3.0 / 4.0;
        let x = gather(&train.x, T * 4, &rows);
        for mix in [false, true] {
            let mut config = recipe(mix);
            config.val_split = 0.0;
            let mut session =
                Session::<AD>::new(&pointer_spec(), &config, &train, &device).unwrap();
            let got = session
                .task
                .training_step(&session.net, rows.clone(), &info(epoch, step))
                .unwrap()
                .loss
                .into_scalar()
                .elem::<f64>();
            let seen = if mix {
                let mut rng =
                    kiln::seed::rng(info(epoch, step).stream_seed(), "augment", step as u64);
                let mixed = mixup_cutmix(&x, rows.len(), T, 4, 1.0, 0.3, 0.0, &mut rng);
                assert!(mixed.lambda < 0.99 && mixed.x != x, "λ {}", mixed.lambda);
                mixed.x
            } else {
                x.clone()
            };
            let (logits, pointers) = outputs(&session.net, seen, rows.len());
            let (starts, ends) = pointers.unwrap();
            let want = multitask_by_hand(&logits, &starts, &ends, &labels, &ptr, beta);
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "mix {mix}: loss {got}, by hand {want}"
            );
        }
    }

    /// A frozen pre-trained LSTM opens at epoch `unfreeze_after` (not one epoch earlier or
    /// later) and stays open, and the learning rate is multiplied by `unfreeze_lr_factor` then,
    /// once; the attention and head train throughout.
    #[test]
    fn the_encoder_unfreezes_at_its_epoch_with_the_lr_factor() {
        struct Lr(Vec<f64>);
        impl kiln::optim::LrControl for Lr {
            fn lr(&self) -> f64 {
                1.0
            }
            fn scale_lr(&mut self, factor: f64) {
                self.0.push(factor);
            }
        }
        let device = Default::default();
        let spec = ModelSpec::SimpleLstm(crate::model::SimpleLstmConfig {
            hidden_size: 8,
            num_heads: 2,
            dropout: 0.0,
            ..Default::default()
        });
        let mut config = recipe(false);
        config.val_split = 0.0;
        let mut session = Session::<AD>::new(&spec, &config, &windows(8, 0.0), &device).unwrap();
        // The encoder itself is loaded when the session is built; the schedule needs only its
        // configuration.
        session.task.config.encoder = EncoderTransfer {
            path: Some("encoder.mpk".into()),
            freeze: true,
            unfreeze_after: 3,
            unfreeze_lr_factor: 0.3,
            ..EncoderTransfer::default()
        };
        let mut net = session.net;
        for epoch in 0..6 {
            let mut lr = Lr(Vec::new());
            net = session
                .task
                .on_epoch_start(net, &info(epoch, 0), &mut lr)
                .unwrap();
            let trainable = kiln::checkpoint::trainable_paths::<AD, _>(&net);
            let lstm = trainable.iter().filter(|p| p.contains("lstm")).count();
            let rest = trainable.len() - lstm;
            assert_eq!(lstm > 0, epoch >= 3, "epoch {epoch}: {trainable:?}");
            assert!(rest > 0, "epoch {epoch}: {trainable:?}");
            let want: &[f64] = if epoch == 3 { &[0.3] } else { &[] };
            assert_eq!(lr.0, want, "epoch {epoch}");
        }
    }
}
