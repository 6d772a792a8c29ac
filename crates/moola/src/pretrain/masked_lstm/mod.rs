//! Masked BiLSTM autoencoder pre-training (the reference's `MaskedLSTMPretrainer`,
//! [`masked_lstm_pretrain.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/pretraining/masked_lstm_pretrain.py)),
//! whose encoder initialises SimpleLSTM's LSTM.
//!
//! * [`model`]: [`BiLstmMaskedAutoencoder`], the masking strategies ([`apply_masking`]) and the
//!   loss ([`BiLstmMaskedAutoencoder::compute_loss`]);
//! * [`augment`]: [`TimeSeriesAugmenter`], which multiplies an unlabelled set beforehand;
//! * [`encoder`]: the encoder artefact ([`save_encoder`] / [`load_encoder`]) and the transfer
//!   into SimpleLSTM ([`load_pretrained_encoder`], [`freeze_encoder`], [`unfreeze_encoder`]);
//! * this module: [`pretrain`], the training run as a kiln [`Task`].
//!
//! ## The run
//! Seeded split: a permutation of the windows, the first `⌊N · val_split⌋` (10%) validate, the
//! rest train. A fresh autoencoder (input_dim = features of the data), AdamW (lr 1e-3, decoupled
//! weight decay 1e-4, β 0.9/0.999, ε 1e-8), cosine learning rate stepped once per epoch,
//! `lr_e = η_min + (lr₀ − η_min)(1 + cos(π e / n_epochs)) / 2` with η_min 1e-5, global-norm
//! gradient clipping at 1.0. Per training batch (default 512, shuffled, the last partial batch
//! kept): new masks (patch strategy, ratio 0.15, patch size 7), reconstruction, loss, step.
//! Validation draws fresh masks too. Early stopping on the mean validation loss (patience 10)
//! restores the best weights. The history has the reference's five lists, one value per epoch:
//! `train_loss`, `val_loss`, `train_recon`, `val_recon` and `learning_rate` (the rate after the
//! epoch's scheduler step, i.e. `lr_{e+1}`); it is returned and, with a run directory, written
//! to `history.json` next to kiln's `metrics.csv`.
//!
//! ## Differences from the reference
//! * Under `16-mixed`, the reference clips the *scaled* gradients (no `unscale_` before
//!   `clip_grad_norm_`), which makes its clip ineffective; kiln's stepper unscales first, so
//!   the clip works as intended (fixed).
//! * Training means are weighted by batch size (kiln's epoch means); the reference averages
//!   per-batch values. They differ only through the last, partial batch. Validation means are
//!   per-batch, like the reference.
//! * Randomness derives from `(seed, purpose, step)` (kiln's seeding): the split, the shuffling,
//!   the training masks (per optimiser step and replica) and the validation masks (per epoch) are
//!   reproducible for a seed; the reference's NumPy/torch streams are not reproduced.
//! * The mask token is about 0.02 while raw prices are large, so masked steps are trivially
//!   recognisable (a property of the reference's design, kept).

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln::amp::PrecisionSetting;
use kiln::callbacks::{EarlyStopping, Mode, ModelCheckpoint};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::{WindowSet, gather};
use crate::run::RunOptions;
use crate::scaling::{DEFAULT_SCALING, InputScaling};

pub mod augment;
pub mod encoder;
pub mod model;

pub use augment::TimeSeriesAugmenter;
pub use encoder::{
    ENCODER_CARD_FORMAT, EncoderCard, EncoderHyperparams, EncoderTrainingConfig, MaskedLstmEncoder,
    TransferReport, freeze_encoder, load_encoder, load_pretrained_encoder, save_encoder,
    transfer_encoder, unfreeze_encoder,
};
pub use model::{
    BiLstmMaskedAutoencoder, BiLstmMaskedAutoencoderConfig, LossValues, MaskStrategy, MaskedBatch,
    MaskedLoss, apply_masking, mask_positions, mask_with,
};

/// File name of the history JSON in a run directory.
pub const HISTORY_FILE: &str = "history.json";

/// Pre-training hyper-parameters (the reference's constructor and `pretrain` arguments, with
/// its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskedLstmPretrainConfig {
    /// LSTM hidden size per direction.
    pub hidden_dim: usize,
    /// Stacked bidirectional layers.
    pub num_layers: usize,
    /// Dropout (between LSTM layers and in the decoder).
    pub dropout: f64,
    /// Fraction of steps (random, block) or patches (patch) to mask.
    pub mask_ratio: f64,
    /// Masking strategy.
    pub mask_strategy: MaskStrategy,
    /// Steps per patch of patch masking.
    pub patch_size: usize,
    /// Initial AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Mini-batch size (training and validation).
    pub batch_size: usize,
    /// Maximum epochs (also the cosine schedule's length).
    pub n_epochs: usize,
    /// Validation fraction (`⌊N · val_split⌋` windows; 0 trains without validation and early
    /// stopping).
    pub val_split: f64,
    /// Epochs without a validation improvement before stopping.
    pub patience: usize,
    /// Final learning rate of the cosine schedule.
    pub eta_min: f64,
    /// Maximum global gradient norm (0 disables clipping).
    pub grad_clip: f64,
    /// Numeric precision (`auto`: `16-mixed` on CUDA, `32` on CPU, like the reference).
    pub precision: PrecisionSetting,
    /// Per-window input transform of the pre-training windows (recorded in the encoder card; a
    /// classifier must scale its inputs the same way to use the encoder).
    pub scaling: InputScaling,
    /// Seed of every random stream.
    #[serde(skip)]
    pub seed: u64,
}

impl Default for MaskedLstmPretrainConfig {
    fn default() -> Self {
        Self {
            hidden_dim: 128,
            num_layers: 2,
            dropout: 0.2,
            mask_ratio: 0.15,
            mask_strategy: MaskStrategy::Patch,
            patch_size: 7,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            batch_size: 512,
            n_epochs: 50,
            val_split: 0.1,
            patience: 10,
            eta_min: 1e-5,
            grad_clip: 1.0,
            precision: PrecisionSetting::Auto,
            scaling: DEFAULT_SCALING,
            seed: kiln::seed::DEFAULT_SEED,
        }
    }
}

impl MaskedLstmPretrainConfig {
    /// The autoencoder for windows of `input_dim` features.
    pub fn model_config(&self, input_dim: usize) -> BiLstmMaskedAutoencoderConfig {
        BiLstmMaskedAutoencoderConfig {
            input_dim,
            hidden_dim: self.hidden_dim,
            num_layers: self.num_layers,
            dropout: self.dropout,
        }
    }

    /// The training configuration stored with the encoder.
    pub fn encoder_training_config(&self) -> EncoderTrainingConfig {
        EncoderTrainingConfig {
            mask_strategy: self.mask_strategy,
            mask_ratio: self.mask_ratio,
            patch_size: self.patch_size,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
        }
    }

    /// The learning rate of epoch `e` (0-based) of the cosine schedule; `e = n_epochs` gives
    /// `eta_min`.
    pub fn lr_at(&self, e: usize) -> f64 {
        let n = self.n_epochs.max(1) as f64;
        self.eta_min
            + (self.learning_rate - self.eta_min)
                * (1.0 + (std::f64::consts::PI * e as f64 / n).cos())
                / 2.0
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.model_config(1).validate()?;
        if self.batch_size == 0 || self.n_epochs == 0 {
            bail!(
                "batch_size ({}) and n_epochs ({}) must be at least 1",
                self.batch_size,
                self.n_epochs
            );
        }
        if !(0.0..=1.0).contains(&self.mask_ratio) {
            bail!("mask_ratio must be in [0, 1], got {}", self.mask_ratio);
        }
        if self.patch_size == 0 {
            bail!("patch_size must be at least 1");
        }
        if !(0.0..1.0).contains(&self.val_split) {
            bail!("val_split must be in [0, 1), got {}", self.val_split);
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            bail!(
                "learning_rate must be in (0, 1], got {}",
                self.learning_rate
            );
        }
        if !(0.0..=self.learning_rate).contains(&self.eta_min) {
            bail!(
                "eta_min must be in [0, learning_rate = {}], got {}",
                self.learning_rate,
                self.eta_min
            );
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            bail!(
                "grad_clip must be ≥ 0 (0 disables clipping), got {}",
                self.grad_clip
            );
        }
        Ok(())
    }
}

/// The reference's history: one value per epoch in each list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainHistory {
    /// Mean training loss.
    pub train_loss: Vec<f64>,
    /// Mean validation loss (empty without validation).
    pub val_loss: Vec<f64>,
    /// Mean training reconstruction loss.
    pub train_recon: Vec<f64>,
    /// Mean validation reconstruction loss (empty without validation).
    pub val_recon: Vec<f64>,
    /// Learning rate after each epoch's scheduler step.
    pub learning_rate: Vec<f64>,
}

impl PretrainHistory {
    /// The epoch (0-based) and value of the lowest validation loss (the first one on ties, as
    /// early stopping counts only strict improvements).
    pub fn best(&self) -> Option<(usize, f64)> {
        self.val_loss
            .iter()
            .enumerate()
            .fold(None, |best, (e, &v)| match best {
                Some((_, b)) if v >= b || v.is_nan() => best,
                _ if v.is_nan() => best,
                _ => Some((e, v)),
            })
    }
}

/// The kiln task of one pre-training run.
pub struct MaskedLstmPretrainTask<B: AutodiffBackend> {
    train: Vec<f32>,
    val: Vec<f32>,
    seq_len: usize,
    n_features: usize,
    config: MaskedLstmPretrainConfig,
    device: B::Device,
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

impl<B: AutodiffBackend> MaskedLstmPretrainTask<B> {
    /// A task over training and validation windows `[n, seq_len, n_features]` (row-major).
    pub fn new(
        train: Vec<f32>,
        val: Vec<f32>,
        seq_len: usize,
        n_features: usize,
        config: MaskedLstmPretrainConfig,
        device: B::Device,
    ) -> Self {
        Self {
            train,
            val,
            seq_len,
            n_features,
            config,
            device,
        }
    }

    fn per(&self) -> usize {
        self.seq_len * self.n_features
    }

    fn n_train(&self) -> usize {
        self.train.len() / self.per().max(1)
    }

    fn n_val(&self) -> usize {
        self.val.len() / self.per().max(1)
    }

    fn mask<Bk: Backend>(
        &self,
        x: Tensor<Bk, 3>,
        token: Tensor<Bk, 3>,
        rng: &mut impl rand::Rng,
    ) -> MaskedBatch<Bk> {
        apply_masking(
            x,
            token,
            self.config.mask_strategy,
            self.config.mask_ratio,
            self.config.patch_size,
            rng,
        )
    }
}

impl<B: AutodiffBackend> Task<B> for MaskedLstmPretrainTask<B> {
    type Model = BiLstmMaskedAutoencoder<B>;
    type Batch = Vec<usize>;

    fn train_loader(&mut self, info: &EpochInfo, seed: u64) -> Result<Loader<Vec<usize>>> {
        Ok(Loader::shuffled(
            self.n_train(),
            self.config.batch_size,
            None,
            info,
            seed,
        ))
    }

    fn training_step(
        &mut self,
        model: &BiLstmMaskedAutoencoder<B>,
        idx: Vec<usize>,
        info: &EpochInfo,
    ) -> Result<StepOutput<B>> {
        let (t, f, b) = (self.seq_len, self.n_features, idx.len());
        let x = gather(&self.train, self.per(), &idx);
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [b, t, f]), &self.device);
        // One mask stream per optimiser step and replica.
        let index = info.global_step * info.world_size.max(1) + info.rank;
        let mut rng = kiln::seed::rng(info.seed, "mask", index as u64);
        let masked = self.mask(x.clone(), model.mask_token.val(), &mut rng);
        let reconstruction = model.forward(masked.x_masked);
        let loss = model.compute_loss(reconstruction, x, masked.mask);
        Ok(StepOutput {
            logs: vec![
                ("recon".into(), scalar(loss.reconstruction)),
                ("latent_std".into(), scalar(loss.latent_std)),
            ],
            loss: loss.total,
            batch_size: b,
        })
    }

    fn validate(
        &mut self,
        model: &BiLstmMaskedAutoencoder<B::InnerBackend>,
        info: &EpochInfo,
    ) -> Result<Row> {
        let n = self.n_val();
        if n == 0 {
            return Ok(Row::new());
        }
        let (t, f) = (self.seq_len, self.n_features);
        // Fresh masks every epoch, like the reference.
        let mut rng = kiln::seed::rng(info.seed, "val_mask", info.epoch as u64);
        let (mut total, mut recon, mut latent, mut batches) = (0.0, 0.0, 0.0, 0usize);
        let idx: Vec<usize> = (0..n).collect();
        for chunk in idx.chunks(self.config.batch_size.max(1)) {
            let b = chunk.len();
            let x = gather(&self.val, self.per(), chunk);
            let x = Tensor::<B::InnerBackend, 3>::from_data(
                TensorData::new(x, [b, t, f]),
                &self.device,
            );
            let masked = self.mask(x.clone(), model.mask_token.val(), &mut rng);
            let reconstruction = model.forward(masked.x_masked);
            let v = model.compute_loss(reconstruction, x, masked.mask).values();
            total += v.total;
            recon += v.reconstruction;
            latent += v.latent_std;
            batches += 1;
        }
        let k = batches as f64;
        Ok([
            ("val_loss".to_string(), total / k),
            ("val_recon".to_string(), recon / k),
            ("val_latent_std".to_string(), latent / k),
        ]
        .into())
    }
}

/// What a pre-training run produced.
pub struct Pretrained<B: AutodiffBackend> {
    /// The autoencoder (best validation weights when validation ran).
    pub model: BiLstmMaskedAutoencoder<B>,
    /// The reference's five-list history.
    pub history: PretrainHistory,
    /// kiln's per-epoch metrics rows (with `lr`, timings, `train_latent_std`, `val_latent_std`).
    pub metrics: Vec<(usize, Row)>,
    /// Epochs run.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The encoder card (architecture and pre-training configuration).
    pub card: EncoderCard,
}

impl<B: AutodiffBackend> Pretrained<B> {
    /// The trained encoder, on the inner (non-autodiff) backend.
    pub fn encoder(&self) -> MaskedLstmEncoder<B::InnerBackend> {
        MaskedLstmEncoder::from_autoencoder(&self.model.valid())
    }

    /// Saves the encoder (`<path>.mpk` + `<path>.json`), the reference's `save_encoder`.
    pub fn save_encoder(&self, path: &std::path::Path) -> Result<()> {
        save_encoder(&self.encoder(), &self.card, path)
    }
}

/// Pre-trains a fresh masked autoencoder on the windows of `data` (labels are ignored).
///
/// `run` is used as by the classifiers' fit: a run directory (kiln's `metrics.csv` and
/// checkpoints, plus [`HISTORY_FILE`]), resuming, progress bars, a data-parallel worker handle,
/// and an explicit validation set (instead of the `val_split` of `data`).
pub fn pretrain<B: AutodiffBackend>(
    config: &MaskedLstmPretrainConfig,
    data: &WindowSet,
    device: &B::Device,
    run: &RunOptions,
) -> Result<Pretrained<B>> {
    config.validate()?;
    if data.is_empty() {
        bail!("cannot pre-train on an empty data set");
    }
    data.check_finite()?;
    let scaling = config.scaling.resolve(data);
    let scaled = scaling.apply(data)?;
    let data = &scaled;
    let (t, f) = (data.seq_len, data.n_features);
    let n = data.len();
    let (train_idx, val_x) = match &run.validation {
        Some(v) => {
            if (v.seq_len, v.n_features) != (t, f) {
                bail!(
                    "the validation windows are {}×{}, the training windows {t}×{f}",
                    v.seq_len,
                    v.n_features
                );
            }
            v.check_finite()
                .context("the validation set is not usable")?;
            ((0..n).collect::<Vec<_>>(), scaling.apply(v)?.x)
        }
        None => {
            let val_size = (n as f64 * config.val_split) as usize;
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut kiln::seed::rng(config.seed, "val_split", 0));
            let val_x = gather(&data.x, t * f, &perm[..val_size]);
            (perm[val_size..].to_vec(), val_x)
        }
    };
    if train_idx.is_empty() {
        bail!("no windows left for training after the validation split ({n} windows)");
    }
    let n_val = val_x.len() / (t * f);
    let model_config = config.model_config(f);
    tracing::info!(
        "masked LSTM pre-training on {n} windows ({} train / {n_val} validation), shape {t}×{f}, \
         {} masking (ratio {}, patch {}), batch {}, {} epochs",
        train_idx.len(),
        config.mask_strategy,
        config.mask_ratio,
        config.patch_size,
        config.batch_size,
        config.n_epochs
    );
    let model = kiln::seed::init_module(device, config.seed, || {
        anyhow::Ok(model_config.init::<B>(device))
    })?;
    tracing::info!("{} parameters", kiln::checkpoint::parameter_count(&model));
    let mut task = MaskedLstmPretrainTask::<B>::new(
        gather(&data.x, t * f, &train_idx),
        val_x,
        t,
        f,
        config.clone(),
        device.clone(),
    );
    let adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, BiLstmMaskedAutoencoder<B>>();
    let schedule = CosineAnnealingLrSchedulerConfig::new(config.learning_rate, config.n_epochs)
        .with_min_lr(config.eta_min)
        .init()
        .map_err(|e| anyhow::anyhow!("cosine schedule: {e}"))?;
    let mut optim = Standard::new(adamw, schedule, Interval::Epoch);
    if config.grad_clip > 0.0 {
        optim = optim.with_clip_norm(config.grad_clip);
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
        let fingerprint = serde_json::to_string(&(config, n, t, f, n_val))?;
        trainer = trainer
            .with_dist(dist.clone())
            .with_fingerprint(fingerprint);
    }
    if n_val > 0 {
        trainer = trainer.with_callback(EarlyStopping::new("val_loss", Mode::Min, config.patience));
        if run.run_dir.is_some() {
            trainer = trainer.with_callback(ModelCheckpoint::best("val_loss", Mode::Min, 1));
        }
    } else {
        tracing::warn!(
            "no validation windows: pre-training runs all epochs without early stopping"
        );
        if run.run_dir.is_some() {
            trainer = trainer.with_callback(ModelCheckpoint::last_only());
        }
    }
    let outcome = trainer.fit(&mut task, model, &mut optim, device)?;
    let mut history = PretrainHistory::default();
    for (epoch, row) in &outcome.history {
        let get = |k: &str| row.get(k).copied();
        history
            .train_loss
            .push(get("train_loss").unwrap_or(f64::NAN));
        history
            .train_recon
            .push(get("train_recon").unwrap_or(f64::NAN));
        if let Some(v) = get("val_loss") {
            history.val_loss.push(v);
        }
        if let Some(v) = get("val_recon") {
            history.val_recon.push(v);
        }
        history.learning_rate.push(config.lr_at(epoch + 1));
    }
    if let Some((epoch, loss)) = history.best() {
        tracing::info!(
            "pre-training done after {} epochs{}: best val loss {loss:.4} at epoch {}",
            outcome.epochs_completed,
            if outcome.stopped_early {
                " (early stop)"
            } else {
                ""
            },
            epoch + 1
        );
    }
    let is_main = run.dist.as_ref().is_none_or(kiln::dist::Dist::is_main);
    if let (Some(dir), true) = (&run.run_dir, is_main) {
        kiln::io::write_json(dir.join(HISTORY_FILE), &history)?;
    }
    Ok(Pretrained {
        model: outcome.model,
        history,
        metrics: outcome.history,
        epochs: outcome.epochs_completed,
        stopped_early: outcome.stopped_early,
        card: EncoderCard {
            scaling,
            ..EncoderCard::new(
                EncoderHyperparams::from(&model_config),
                Some(config.encoder_training_config()),
            )
        },
    })
}
