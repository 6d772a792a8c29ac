//! TS-TCC pre-training (the reference's `TSTCCPretrainer.pretrain`) as a kiln [`Task`].
//!
//! Per run: a shuffled, unstratified validation split (`val_split`, default 10%, seeded), a
//! freshly built [`TsTcc`] model, AdamW (lr 1e-4, decoupled weight decay 1e-4, β 0.9/0.999,
//! ε 1e-8, constant rate), global-norm gradient clipping at 1.0 (on unscaled gradients under
//! `16-mixed`, as the reference does), two independently augmented views of every batch (the
//! classifiers' [`TemporalAugment`] with jitter p 0.8 σ 0.03, scaling p 0.5 σ 0.1, time warp
//! p 0.5 σ 0.2, one coin per operation per batch), `info_nce_loss(model(v1), model(v2), 0.5)`,
//! validation on random views of the validation windows (mean of per-batch losses, eval mode),
//! and early stopping with patience 15 on `val_loss`.
//!
//! ## Reference quirks and what this crate does
//! * The reference keeps the **last** epoch's weights, although it tracks the best epoch. Here
//!   the best validation weights are restored by default (`restore_best = true`, the fix);
//!   `restore_best = false` keeps the last epoch's weights like the reference.
//! * `train_loss` is kiln's sample-weighted epoch mean; the reference averages per-batch means,
//!   which differs only through a short last batch.
//! * `best_epoch` is 0-based and 0 when there is no validation, as in the reference.
//! * Randomness: views derive from `(seed, "augment", step)` for training and
//!   `(seed, "val_augment", epoch)` for validation (kiln's seeding), so a run is reproducible
//!   on CPU for a seed; the reference's torch/NumPy streams are not reproduced.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln::amp::PrecisionSetting;
use kiln::callbacks::{EarlyStopping, Mode, ModelCheckpoint};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::loss::info_nce_loss;
use super::model::{TsTcc, TsTccConfig};
use crate::augment::TemporalAugment;
use crate::data::WindowSet;
use crate::run::RunOptions;
use crate::scaling::{DEFAULT_SCALING, InputScaling};

/// File name of the history JSON in a run directory.
pub const HISTORY_FILE: &str = "history.json";

/// The reference's view augmentation of TS-TCC (`TemporalAugmentation(jitter 0.8/σ0.03,
/// scaling 0.5/σ0.1, time_warp 0.5/σ0.2)`).
pub fn default_views() -> TemporalAugment {
    TemporalAugment {
        enabled: true,
        jitter_prob: 0.8,
        jitter_sigma: 0.03,
        scaling_prob: 0.5,
        scaling_sigma: 0.1,
        time_warp_prob: 0.5,
        time_warp_sigma: 0.2,
        per_sample_flips: false,
    }
}

/// Pre-training hyper-parameters (the reference `TSTCCPretrainer` constructor's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TsTccPretrainConfig {
    /// Model hyper-parameters.
    pub model: TsTccConfig,
    /// NT-Xent temperature τ.
    pub temperature: f64,
    /// Maximum epochs.
    pub n_epochs: usize,
    /// Mini-batch size (the last partial batch is kept).
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Shuffled, unstratified validation fraction (0 disables validation and early stopping).
    pub val_split: f64,
    /// Epochs without validation improvement before stopping.
    pub early_stopping_patience: usize,
    /// Augmentation of both views (training and validation).
    pub augment: TemporalAugment,
    /// Restore the best validation weights at the end (the fix); `false` keeps the last
    /// epoch's weights like the reference.
    pub restore_best: bool,
    /// Numeric precision: `auto` (the reference's `use_amp=True`: `16-mixed` on CUDA, `32` on
    /// CPU), `32`, `16-mixed` or `bf16-mixed` (see `kiln::amp`).
    pub precision: PrecisionSetting,
    /// Per-window input transform of the pre-training windows (recorded in the encoder card; a
    /// classifier must scale its inputs the same way to use the encoder).
    pub scaling: InputScaling,
    /// Seed of every random stream (set from the run configuration's top-level `seed`).
    #[serde(skip)]
    pub seed: u64,
}

impl Default for TsTccPretrainConfig {
    fn default() -> Self {
        Self {
            model: TsTccConfig::default(),
            temperature: 0.5,
            n_epochs: 100,
            batch_size: 512,
            learning_rate: 1e-4,
            weight_decay: 1e-4,
            grad_clip: Some(1.0),
            val_split: 0.1,
            early_stopping_patience: 15,
            augment: default_views(),
            restore_best: true,
            precision: PrecisionSetting::Auto,
            scaling: DEFAULT_SCALING,
            seed: kiln::seed::DEFAULT_SEED,
        }
    }
}

impl TsTccPretrainConfig {
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
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            bail!("temperature must be positive, got {}", self.temperature);
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            bail!("grad_clip must be positive, got {c}");
        }
        Ok(())
    }
}

/// The reference's history dict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainHistory {
    /// Mean training loss of every epoch.
    pub train_loss: Vec<f64>,
    /// Mean validation loss of every epoch (empty without validation).
    pub val_loss: Vec<f64>,
    /// 0-based epoch of the lowest validation loss (0 without validation).
    pub best_epoch: usize,
}

impl PretrainHistory {
    /// Builds the history from the trainer's per-epoch rows.
    pub fn from_rows(rows: &[(usize, Row)]) -> Self {
        let train_loss: Vec<f64> = rows
            .iter()
            .filter_map(|(_, r)| r.get("train_loss").copied())
            .collect();
        let val: Vec<(usize, f64)> = rows
            .iter()
            .filter_map(|(e, r)| r.get("val_loss").map(|&v| (*e, v)))
            .collect();
        let mut best: Option<(usize, f64)> = None;
        for &(epoch, v) in &val {
            if v.is_finite() && best.is_none_or(|(_, b)| v < b) {
                best = Some((epoch, v));
            }
        }
        Self {
            train_loss,
            val_loss: val.into_iter().map(|(_, v)| v).collect(),
            best_epoch: best.map_or(0, |(e, _)| e),
        }
    }
}

/// What a pre-training run produced.
pub struct Pretrained<B: AutodiffBackend> {
    /// The model (best validation weights unless `restore_best` is off or there is no
    /// validation); its `encoder` is what [`super::save_encoder`] writes.
    pub model: TsTcc<B>,
    /// Loss history and best epoch.
    pub history: PretrainHistory,
    /// kiln's per-epoch metrics rows (with `lr` and the timings `epoch_seconds`,
    /// `samples_per_second`).
    pub metrics: Vec<(usize, Row)>,
    /// Epochs run.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether the returned weights are the restored best ones.
    pub restored_best: bool,
    /// The input scaling the windows were pre-trained under (recorded in the encoder card).
    pub scaling: InputScaling,
}

impl<B: AutodiffBackend> Pretrained<B> {
    /// Saves the encoder with a card that records the input scaling of the pre-training.
    pub fn save_encoder(&self, path: &Path) -> Result<()> {
        let encoder = &self.model.encoder;
        let card = super::EncoderCard::describe(encoder).with_scaling(self.scaling);
        super::save_encoder_with_card(encoder, &card, path)
    }
}

/// The kiln task of TS-TCC pre-training.
pub struct TsTccTask<B: AutodiffBackend> {
    train: WindowSet,
    val: Option<WindowSet>,
    seq_len: usize,
    n_features: usize,
    config: TsTccPretrainConfig,
    device: B::Device,
}

impl<B: AutodiffBackend> TsTccTask<B> {
    /// Two independently augmented views of a `[b, t, f]` host batch.
    fn views(&self, x: &[f32], b: usize, rng: &mut impl rand::Rng) -> [Vec<f32>; 2] {
        let (t, f) = (self.seq_len, self.n_features);
        let mut view = || {
            let mut v = x.to_vec();
            self.config.augment.apply(&mut v, b, t, f, rng);
            v
        };
        let v1 = view();
        [v1, view()]
    }

    fn loss<Bk: Backend>(
        &self,
        model: &TsTcc<Bk>,
        views: [Vec<f32>; 2],
        b: usize,
        device: &Bk::Device,
    ) -> Tensor<Bk, 1> {
        let shape = [b, self.seq_len, self.n_features];
        let [z1, z2] = views.map(|v| {
            model.forward(Tensor::<Bk, 3>::from_data(
                TensorData::new(v, shape),
                device,
            ))
        });
        info_nce_loss(z1, z2, self.config.temperature)
    }
}

impl<B: AutodiffBackend> Task<B> for TsTccTask<B> {
    type Model = TsTcc<B>;
    type Batch = Vec<usize>;

    fn train_loader(&mut self, info: &EpochInfo, seed: u64) -> Result<Loader<Vec<usize>>> {
        Ok(Loader::shuffled(
            self.train.len(),
            self.config.batch_size,
            None,
            info,
            seed,
        ))
    }

    fn training_step(
        &mut self,
        model: &TsTcc<B>,
        idx: Vec<usize>,
        info: &EpochInfo,
    ) -> Result<StepOutput<B>> {
        let b = idx.len();
        let mut rng = kiln::seed::rng(info.stream_seed(), "augment", info.global_step as u64);
        let x = self.train.select(&idx).x;
        let views = self.views(&x, b, &mut rng);
        let loss = self.loss(model, views, b, &self.device);
        Ok(StepOutput {
            loss,
            batch_size: b,
            logs: Vec::new(),
        })
    }

    fn validate(&mut self, model: &TsTcc<B::InnerBackend>, info: &EpochInfo) -> Result<Row> {
        let Some(val) = &self.val else {
            return Ok(Row::new());
        };
        let n = val.len();
        let mut rng = kiln::seed::rng(info.seed, "val_augment", info.epoch as u64);
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        for chunk in (0..n).collect::<Vec<_>>().chunks(self.config.batch_size) {
            let x = val.select(chunk).x;
            let views = self.views(&x, chunk.len(), &mut rng);
            let l = self.loss(model, views, chunk.len(), &self.device);
            loss_sum += f64::from(l.into_scalar().elem::<f32>());
            batches += 1;
        }
        Ok([("val_loss".to_string(), loss_sum / batches.max(1) as f64)].into())
    }
}

/// The reference's `train_test_split(test_size=val_split, random_state=seed)` without
/// stratification: a seeded permutation, the first `ceil(val_split · n)` indices validate.
pub fn shuffled_split(n: usize, val_split: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..n).collect();
    if val_split <= 0.0 {
        return Ok((order, Vec::new()));
    }
    let n_val = (val_split * n as f64).ceil() as usize;
    if n_val == 0 || n_val >= n {
        bail!(
            "cannot split {n} windows into training and {:.0}% validation (set val_split 0 to \
             skip validation)",
            val_split * 100.0
        );
    }
    order.shuffle(&mut kiln::seed::rng(seed, "val_split", 0));
    let val = order[..n_val].to_vec();
    let train = order[n_val..].to_vec();
    Ok((train, val))
}

/// Pre-trains a fresh TS-TCC model on the windows of `data` (labels, if any, are ignored).
/// `run` is the classifiers' run options: run directory (`metrics.csv`, checkpoints and
/// [`HISTORY_FILE`]), resume, progress bars, data-parallel handle and an explicit validation
/// set (instead of `val_split`).
pub fn pretrain<B: AutodiffBackend>(
    config: &TsTccPretrainConfig,
    data: &WindowSet,
    device: &B::Device,
    run: &RunOptions,
) -> Result<Pretrained<B>> {
    config.validate()?;
    if data.is_empty() {
        bail!("cannot pre-train on an empty data set");
    }
    data.check_finite()?;
    config.model.validate(data.n_features, data.seq_len)?;
    let scaling = config.scaling.resolve(data);
    let scaled = scaling.apply(data)?;
    let data = &scaled;
    let (train_idx, val_idx) = match &run.validation {
        Some(_) => ((0..data.len()).collect(), Vec::new()),
        None => shuffled_split(data.len(), config.val_split, config.seed)?,
    };
    let val = match &run.validation {
        Some(v) => {
            if (v.seq_len, v.n_features) != (data.seq_len, data.n_features) {
                bail!(
                    "the validation windows are {}×{}, the training windows {}×{}",
                    v.seq_len,
                    v.n_features,
                    data.seq_len,
                    data.n_features
                );
            }
            v.check_finite()?;
            (!v.is_empty()).then(|| scaling.apply(v)).transpose()?
        }
        None => (!val_idx.is_empty()).then(|| data.select(&val_idx)),
    };
    tracing::info!(
        "TS-TCC pre-training on {} windows ({} train / {} validation), shape {}×{}",
        data.len(),
        train_idx.len(),
        val.as_ref().map_or(0, WindowSet::len),
        data.seq_len,
        data.n_features
    );
    let model: TsTcc<B> = kiln::seed::init_module(device, config.seed, || {
        config.model.init(data.n_features, device)
    })?;
    tracing::info!(
        "{} parameters",
        kiln::checkpoint::parameter_count::<B, _>(&model)
    );
    let has_val = val.is_some();
    let mut task = TsTccTask::<B> {
        train: data.select(&train_idx),
        val,
        seq_len: data.seq_len,
        n_features: data.n_features,
        config: config.clone(),
        device: device.clone(),
    };
    let optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, TsTcc<B>>();
    let mut optim = Standard::new(optim, ConstantLr::new(config.learning_rate), Interval::Step);
    if let Some(c) = config.grad_clip {
        optim = optim.with_clip_norm(c);
    }
    let mut tc = TrainerConfig::new(config.n_epochs);
    tc.seed = config.seed;
    tc.run_dir = run.run_dir.clone();
    tc.resume_from = run.resume_from.clone();
    tc.progress = run.progress;
    tc.precision = config.precision.resolve_for::<B>(device);
    tc.virtual_ranks = run.virtual_ranks.max(1);
    tc.divergence = run.divergence;
    let mut trainer = Trainer::new(tc);
    if let Some(dist) = &run.dist {
        let fingerprint = serde_json::to_string(&(config, data.len(), data.seq_len))?;
        trainer = trainer
            .with_dist(dist.clone())
            .with_fingerprint(fingerprint);
    }
    if has_val {
        trainer = trainer.with_callback(
            EarlyStopping::new("val_loss", Mode::Min, config.early_stopping_patience)
                .with_restore_best(config.restore_best),
        );
        if run.run_dir.is_some() {
            trainer = trainer.with_callback(ModelCheckpoint::best("val_loss", Mode::Min, 1));
        }
    } else if run.run_dir.is_some() {
        trainer = trainer.with_callback(ModelCheckpoint::last_only());
    }
    let outcome = trainer.fit(&mut task, model, &mut optim, device)?;
    let history = PretrainHistory::from_rows(&outcome.history);
    if let Some(dir) = &run.run_dir
        && run.dist.as_ref().is_none_or(kiln::dist::Dist::is_main)
    {
        write_history(&history, &dir.join(HISTORY_FILE))?;
    }
    tracing::info!(
        "TS-TCC pre-training done after {} epochs; best epoch {} (val loss {:?}); {} weights",
        outcome.epochs_completed,
        history.best_epoch + 1,
        history.val_loss.get(history.best_epoch),
        if outcome.restored_best {
            "best"
        } else {
            "last"
        }
    );
    Ok(Pretrained {
        model: outcome.model,
        history,
        metrics: outcome.history,
        epochs: outcome.epochs_completed,
        stopped_early: outcome.stopped_early,
        restored_best: outcome.restored_best,
        scaling,
    })
}

/// Writes a history as JSON (atomically).
pub fn write_history(history: &PretrainHistory, path: &Path) -> Result<()> {
    kiln::io::write_json(path, history)
        .with_context(|| format!("cannot write the pre-training history {}", path.display()))
}
