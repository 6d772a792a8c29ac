//! Training and testing on kiln's Trainer, following the reference's training flow.
//!
//! * [`ReidTask`] is the LightningModule: P×K batches from the identity sampler, the
//!   base-model or CTL-model objective (the reference's `train_base_model.py` /
//!   `train_ctl_model.py` losses) on the pre-BN features, validation every
//!   `SOLVER.EVAL_PERIOD` epochs on query + gallery (mAP, Top-1/5/10/20/50).
//! * [`ReidOptimization`] is the reference's manual optimisation: Adam (β 0.9/0.999, ε 1e-8,
//!   coupled L2 weight decay `SOLVER.WEIGHT_DECAY`) on every parameter except the centres and
//!   the frozen BNNeck bias, SGD(`SOLVER.CENTER_LR`) on the centres with their gradient rescaled by
//!   `1 / SOLVER.CENTER_LOSS_WEIGHT`, and the per-epoch warm-up + multi-step schedule on
//!   the Adam rate only.
//! * [`fit`] wires them into a run directory (`<LOG_DIR>/<train_ctl_model|train_base_model>/
//!   version_N/` with `config.yaml`, `metrics.csv`, `checkpoints/{last,best-…}.ckpt` chosen by
//!   `SOLVER.MONITOR_METRIC_NAME`), resumes with `MODEL.RESUME_TRAINING` from
//!   `MODEL.PRETRAIN_PATH`, and ends with the reference's end-of-training test (the last-epoch
//!   model, all three protocols side by side).
//!
//! Metric names in `metrics.csv` map to the reference's logged scalars: `train_loss`
//! (`epoch_train_loss`), `train_dist_ap` / `train_dist_an` (`epoch_dist_ap` / `epoch_dist_an`),
//! `lr`, `train_l2_mean_centroid`, `train_query_xent`, `train_query_triplet`,
//! `train_query_center`, `train_centroid_triplet` (CTL only), and on validation epochs `mAP`,
//! `Top-1`, `Top-5`, `Top-10`, `Top-20`, `Top-50`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig, decay::WeightDecayConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln::backend::{BackendJob, DeviceKind, launch};
use kiln::callbacks::{Mode, ModelCheckpoint};
use kiln::checkpoint::{record_from_bytes, record_to_bytes};
use kiln::metric_log::Row;
use kiln::optim::{LrControl, Optimization, ScheduledLr, WarmupMultiStepLr, section};
use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};
use serde::Serialize;

use crate::config::ReidConfig;
use crate::data::{
    LoaderOptions, PkSampler, ReidDataset, Sample, TrainBatch, TrainLoader, TrainTransform,
    load_dataset,
};
use crate::eval::{EvalReport, Evaluator, embedding_set, evaluate_protocol, metrics_row};
use crate::infer::CheckpointTask;
use crate::loss::{LossConfig, LossInputs, base_model_loss, ctl_model_loss};
use crate::model::{ReidModel, ReidModelConfig, load_imagenet_weights};

/// The loss settings (margin, distance, term weights, K) of a configuration.
pub fn loss_config(cfg: &ReidConfig) -> Result<LossConfig> {
    Ok(LossConfig {
        margin: cfg.solver.margin as f32,
        distance: crate::infer::distance_func(cfg)?,
        center_loss_weight: cfg.solver.center_loss_weight as f32,
        query_xent_weight: cfg.solver.query_xent_weight as f32,
        query_contrastive_weight: cfg.solver.query_contrastive_weight as f32,
        centroid_contrastive_weight: cfg.solver.centroid_contrastive_weight as f32,
        num_instances: cfg.dataloader.num_instance,
        ..LossConfig::default()
    })
}

/// Which training step: the reference's two training scripts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Centroid triplet loss + the base losses (train_ctl_model.py).
    Ctl,
    /// Cross-entropy + triplet + center (train_base_model.py).
    Base,
}

/// The model configuration of a reid configuration and dataset.
pub fn model_config(cfg: &ReidConfig, num_classes: usize) -> ReidModelConfig {
    ReidModelConfig::new(
        cfg.model.name.clone(),
        cfg.model.last_stride,
        cfg.model.backbone_emb_size,
        num_classes,
    )
}

/// The learning-rate schedule of a configuration: per-epoch linear warm-up (with
/// `SOLVER.USE_WARMUP_LR`), then ×`SOLVER.GAMMA` at each epoch of `SOLVER.LR_STEPS`.
pub fn schedule(cfg: &ReidConfig) -> WarmupMultiStepLr {
    let warmup = if cfg.solver.use_warmup_lr {
        cfg.solver.warmup_epochs
    } else {
        0
    };
    WarmupMultiStepLr::new(
        cfg.solver.base_lr,
        warmup,
        cfg.solver.lr_steps.clone(),
        cfg.solver.gamma,
    )
}

/// The reference's manual optimisation: Adam on the network, SGD on the centres.
pub struct ReidOptimization<A, S> {
    adam: A,
    sgd: S,
    lr: ScheduledLr<WarmupMultiStepLr>,
    center_lr: f64,
    center_loss_weight: f64,
}

/// Builds the optimisation of a configuration for `ReidModel<B>`.
pub fn optimization<B: AutodiffBackend>(
    cfg: &ReidConfig,
) -> ReidOptimization<impl Optimizer<ReidModel<B>, B>, impl Optimizer<ReidModel<B>, B>> {
    let adam = AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.solver.weight_decay as f32)))
        .init::<B, ReidModel<B>>();
    let sgd = SgdConfig::new().init::<B, ReidModel<B>>();
    ReidOptimization {
        adam,
        sgd,
        lr: ScheduledLr::new(schedule(cfg)),
        center_lr: cfg.solver.center_lr,
        center_loss_weight: cfg.solver.center_loss_weight,
    }
}

impl<A, S> LrControl for ReidOptimization<A, S> {
    fn lr(&self) -> f64 {
        self.lr.lr()
    }
    fn scale_lr(&mut self, factor: f64) {
        self.lr.scale_lr(factor);
    }
}

impl<B, A, S> Optimization<B, ReidModel<B>> for ReidOptimization<A, S>
where
    B: AutodiffBackend,
    A: Optimizer<ReidModel<B>, B>,
    S: Optimizer<ReidModel<B>, B>,
{
    fn apply(&mut self, model: ReidModel<B>, mut grads: GradientsParams) -> Result<ReidModel<B>> {
        // The centres leave the main gradient set: they get their own SGD step, with the
        // gradient divided by CENTER_LOSS_WEIGHT.
        let id = model.center_loss.centers.id;
        let mut center_grads = GradientsParams::new();
        if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
            center_grads.register(id, g.mul_scalar(1.0 / self.center_loss_weight));
        }
        let model = self.adam.step(self.lr.lr(), model, grads);
        Ok(self.sgd.step(self.center_lr, model, center_grads))
    }

    fn on_epoch_start(&mut self, _epoch: usize) {
        self.lr.advance();
    }

    fn state(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut sections = vec![
            (
                "adam".into(),
                record_to_bytes::<B, _>(self.adam.to_record())?,
            ),
            ("sgd".into(), record_to_bytes::<B, _>(self.sgd.to_record())?),
        ];
        sections.extend(self.lr.state::<B>()?);
        Ok(sections)
    }

    fn load_state(
        &mut self,
        sections: &BTreeMap<String, Vec<u8>>,
        device: &B::Device,
    ) -> Result<()> {
        let rec = record_from_bytes::<B, A::Record>(section(sections, "adam")?, device)?;
        self.adam = self.adam.clone().load_record(rec);
        let rec = record_from_bytes::<B, S::Record>(section(sections, "sgd")?, device)?;
        self.sgd = self.sgd.clone().load_record(rec);
        self.lr.load_state::<B>(sections, device)
    }
}

/// The kiln task of a reid training run.
pub struct ReidTask<B: AutodiffBackend> {
    step: StepKind,
    train: Arc<[Sample]>,
    sampler: PkSampler,
    transform: TrainTransform,
    loader: LoaderOptions,
    loss: LossConfig,
    evaluator: Evaluator,
    use_centroids: bool,
    keep_camid_centroids: bool,
    bug_compat: bool,
    state: CheckpointTask,
    device: B::Device,
}

impl<B: AutodiffBackend> ReidTask<B> {
    /// The task of a configuration and its loaded dataset.
    pub fn new(
        cfg: &ReidConfig,
        dataset: &ReidDataset,
        step: StepKind,
        bug_compat: bool,
        progress: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let sampler = PkSampler::new(
            dataset.train_by_pid(),
            cfg.solver.ims_per_batch,
            cfg.dataloader.num_instance,
            cfg.dataloader.use_resampling,
            1,
            0,
        )?;
        Ok(Self {
            step,
            train: dataset.train.clone().into(),
            sampler,
            transform: TrainTransform::from_config(&cfg.input)?,
            loader: LoaderOptions::from_config(cfg),
            loss: loss_config(cfg)?,
            evaluator: Evaluator::new(cfg, dataset, progress)?,
            use_centroids: cfg.model.use_centroids,
            keep_camid_centroids: cfg.model.keep_camid_centroids,
            bug_compat,
            state: CheckpointTask {
                model: model_config(cfg, dataset.num_classes),
                size_train: cfg.input.size_train,
                step: format!("{step:?}").to_lowercase(),
            },
            device: device.clone(),
        })
    }

    /// This task as rank `rank` of `world_size` data-parallel replicas: the P×K sampler hands
    /// each rank its own contiguous share of every epoch's plan (equal batch counts).
    pub fn with_rank(mut self, rank: usize, world_size: usize) -> Result<Self> {
        if world_size > 1 {
            self.sampler = self.sampler.for_rank(rank, world_size)?;
        }
        Ok(self)
    }

    /// Number of P×K batches per epoch.
    pub fn batches_per_epoch(&self, seed: u64) -> usize {
        self.sampler.epoch(seed, 0).len()
    }
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

impl<B: AutodiffBackend> Task<B> for ReidTask<B> {
    type Model = ReidModel<B>;
    type Batch = TrainBatch;

    fn train_loader(&mut self, info: &EpochInfo, seed: u64) -> Result<Loader<TrainBatch>> {
        // The sampler is seeded per (run seed, epoch) like the reference's set_epoch; the image
        // augmentations per (this rank's data seed, epoch, position). A sampler made for one
        // replica serves virtual ranks (`kiln::TrainerConfig::virtual_ranks`) their shares.
        let batches = if info.world_size > 1 && self.sampler.world_size() == 1 {
            self.sampler
                .clone()
                .for_rank(info.rank, info.world_size)?
                .epoch(info.seed, info.epoch)
        } else {
            self.sampler.epoch(info.seed, info.epoch)
        };
        if batches.is_empty() {
            bail!(
                "the P×K sampler produced no batch: fewer identities with ≥ 2 images than \
                 SOLVER.IMS_PER_BATCH"
            );
        }
        Ok(TrainLoader::new(
            self.train.clone(),
            batches,
            self.transform.clone(),
            kiln::seed::rank_seed(seed, info.rank),
            info.epoch,
            &self.loader,
        )?
        .into_kiln())
    }

    fn training_step(
        &mut self,
        model: &ReidModel<B>,
        batch: TrainBatch,
        _info: &EpochInfo,
    ) -> Result<StepOutput<B>> {
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(batch.images, [batch.n, 3, batch.height, batch.width]),
            &self.device,
        );
        let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
        let features = model.forward_features(x);
        let inputs = LossInputs {
            features,
            labels: &labels,
            is_real: &batch.is_real,
            centers: model.center_loss.centers.val(),
        };
        let classify = |f: Tensor<B, 2>| model.classify(model.bnneck(f));
        let terms = match self.step {
            StepKind::Ctl => ctl_model_loss(&self.loss, inputs, classify)?,
            StepKind::Base => base_model_loss(&self.loss, inputs, classify)?,
        };
        let mut logs = vec![
            ("query_xent".to_string(), scalar(terms.id.clone())),
            ("query_triplet".to_string(), scalar(terms.triplet.clone())),
            ("query_center".to_string(), scalar(terms.center.clone())),
            ("dist_ap".to_string(), scalar(terms.dist_ap.clone())),
            ("dist_an".to_string(), scalar(terms.dist_an.clone())),
        ];
        if let Some(ctl) = &terms.centroid_triplet {
            logs.push(("centroid_triplet".to_string(), scalar(ctl.clone())));
        }
        if let Some(diag) = &terms.ctl {
            let l2 = scalar(diag.l2_mean_centroid.clone());
            if l2.is_finite() {
                logs.push(("l2_mean_centroid".to_string(), l2));
            }
        }
        Ok(StepOutput {
            loss: terms.total,
            batch_size: batch.n,
            logs,
        })
    }

    fn validate(&mut self, model: &ReidModel<B::InnerBackend>, _info: &EpochInfo) -> Result<Row> {
        let (query, gallery) = self.evaluator.embed(model, &self.device)?;
        let m = evaluate_protocol(
            &query,
            &gallery,
            self.use_centroids,
            self.keep_camid_centroids,
            self.bug_compat,
            self.evaluator.options(),
        )?;
        Ok(metrics_row(&m))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }
}

/// Where a run writes: `<LOG_DIR>/<script>/version_N` (Lightning's layout), or the directory of
/// the checkpoint being resumed.
pub fn run_dir(cfg: &ReidConfig, step: StepKind, resume: Option<&Path>) -> Result<PathBuf> {
    if let Some(ckpt) = resume {
        // `<run>/checkpoints/last.ckpt` → `<run>`.
        let parent = ckpt.parent().unwrap_or(Path::new("."));
        let run = if parent.file_name().is_some_and(|n| n == "checkpoints") {
            parent.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            parent.to_path_buf()
        };
        return Ok(run);
    }
    let script = match step {
        StepKind::Ctl => "train_ctl_model",
        StepKind::Base => "train_base_model",
    };
    let root = PathBuf::from(cfg.derived_log_dir()).join(script);
    let mut n = 0;
    while root.join(format!("version_{n}")).exists() {
        n += 1;
    }
    Ok(root.join(format!("version_{n}")))
}

/// The result of one training run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The run's seed.
    pub seed: u64,
    /// Epochs completed.
    pub epochs: usize,
    /// The untrained model's metrics (before the first epoch), when measured.
    pub before: Option<EvalReport>,
    /// The end-of-training test with the last-epoch model (as in the reference): all three
    /// protocols.
    pub test: EvalReport,
    /// The best checkpoint by the monitored metric, if any.
    pub best_checkpoint: Option<PathBuf>,
}

/// Options of [`fit`] beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Reproduce the reference's centroid-B camera-id bug.
    pub bug_compat: bool,
    /// Progress bars.
    pub progress: bool,
    /// Also evaluate the untrained model (all three protocols) before training.
    pub evaluate_before: bool,
    /// Run directory (default: [`run_dir`]).
    pub run_dir: Option<PathBuf>,
    /// Numeric precision; `None` follows `USE_MIXED_PRECISION` (`True`: `16-mixed` on CUDA,
    /// `32` on CPU, as the reference's AMP only ran on GPUs).
    pub precision: Option<kiln::amp::Precision>,
    /// This worker's handle in a data-parallel run (`None`: one device). Each rank samples its
    /// own share of every epoch's P×K plan; only rank 0 writes the run directory.
    pub dist: Option<kiln::dist::Dist>,
    /// Data-parallel debugging aid: check after every step that the replicas hold bit-identical
    /// weights.
    pub check_replicas: bool,
    /// Write nothing: no run directory, checkpoints or reports (the library's default through
    /// [`crate::Learner`]; the `RunSummary`'s `run_dir` is then empty).
    pub in_memory: bool,
    /// Train as this many data-parallel ranks would, on one device (0 or 1: an ordinary run;
    /// see `kiln::TrainerConfig::virtual_ranks`).
    pub virtual_ranks: usize,
}

impl FitOptions {
    fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(kiln::dist::Dist::is_main)
    }

    /// Whether this process writes the run's files.
    fn writes(&self) -> bool {
        self.is_main() && !self.in_memory
    }
}

/// The precision of a run: the explicit choice, else `USE_MIXED_PRECISION` on this backend.
pub fn precision_for<B: burn::tensor::backend::Backend>(
    cfg: &ReidConfig,
    explicit: Option<kiln::amp::Precision>,
    device: &B::Device,
) -> kiln::amp::Precision {
    use kiln::amp::{Precision, PrecisionSetting};
    match explicit {
        Some(p) => p,
        None if cfg.use_mixed_precision => PrecisionSetting::Auto.resolve_for::<B>(device),
        None => Precision::F32,
    }
}

/// Trains one run of `cfg` with `seed` and tests the last-epoch model (as the reference does).
pub fn fit<B: AutodiffBackend>(
    cfg: &ReidConfig,
    dataset: &ReidDataset,
    step: StepKind,
    seed: u64,
    options: &FitOptions,
    device: &B::Device,
) -> Result<RunSummary> {
    fit_model::<B>(cfg, dataset, step, seed, options, device).map(|(summary, _)| summary)
}

/// [`fit`], also returning the trained (last-epoch) model.
pub fn fit_model<B: AutodiffBackend>(
    cfg: &ReidConfig,
    dataset: &ReidDataset,
    step: StepKind,
    seed: u64,
    options: &FitOptions,
    device: &B::Device,
) -> Result<(RunSummary, ReidModel<B>)> {
    let resume = cfg
        .model
        .resume_training
        .then(|| PathBuf::from(&cfg.model.pretrain_path));
    if let Some(p) = &resume {
        if cfg.model.pretrain_path.is_empty() {
            bail!("MODEL.RESUME_TRAINING is True but MODEL.PRETRAIN_PATH is empty");
        }
        if !crate::infer::is_kiln_checkpoint(p)? {
            bail!(
                "MODEL.PRETRAIN_PATH {} is not a checkpoint of this project; only runs of \
                 `reid train` can be resumed (a reference .ckpt can be evaluated with `reid test`)",
                p.display()
            );
        }
    }
    let main = options.writes();
    let dir = match &options.run_dir {
        _ if options.in_memory => PathBuf::new(),
        Some(d) => d.clone(),
        None if main => run_dir(cfg, step, resume.as_deref())?,
        // Other ranks never write; the path only keeps the summary's shape.
        None => PathBuf::from(cfg.derived_log_dir()),
    };
    // A run that fails before its first checkpoint leaves nothing behind.
    let new_dir = if main {
        kiln::trainer::RunDirGuard::new(&dir)
    } else {
        None
    };
    if main {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create run directory {}", dir.display()))?;
        cfg.save(dir.join("config.yaml"))?;
    }

    let mconf = model_config(cfg, dataset.num_classes);
    let mut model = kiln::seed::init_module(device, seed, || mconf.init::<B>(device))?;
    if cfg.model.pretrained && resume.is_none() && !cfg.test.only_test {
        let path = PathBuf::from(&cfg.model.pretrain_path);
        if cfg.model.pretrain_path.is_empty() || !path.exists() {
            bail!(
                "MODEL.PRETRAINED is True but MODEL.PRETRAIN_PATH `{}` does not exist: download the \
                 ImageNet weights there, or train from scratch with `MODEL.PRETRAINED False`",
                cfg.model.pretrain_path
            );
        }
        let (loaded, summary) = load_imagenet_weights(model, &path)?;
        tracing::info!("ImageNet weights from {}: {:?}", path.display(), summary);
        model = loaded.with_frozen_bnneck_bias();
    }
    let (rank, world_size) = options
        .dist
        .as_ref()
        .map_or((0, 1), |d| (d.rank(), d.world_size()));
    let mut task = ReidTask::<B>::new(
        cfg,
        dataset,
        step,
        options.bug_compat,
        options.progress && main,
        device,
    )?
    .with_rank(rank, world_size)?;
    let evaluator = task.evaluator.clone();
    let before = if options.evaluate_before && resume.is_none() {
        let (q, g) = evaluator.embed(&model.valid(), device)?;
        Some(EvalReport::compute(
            embedding_set(&q),
            embedding_set(&g),
            evaluator.options(),
            options.bug_compat,
        )?)
    } else {
        None
    };
    tracing::info!(
        "training {} ({:?} step) on {}: {} identities, {} batches of {}×{} per epoch, seed {seed}",
        mconf.name,
        step,
        cfg.datasets.names,
        dataset.num_classes,
        task.batches_per_epoch(seed),
        cfg.solver.ims_per_batch,
        cfg.dataloader.num_instance
    );

    let mut tc = TrainerConfig::new(cfg.solver.max_epochs);
    tc.seed = seed;
    tc.val_every_n_epochs = cfg.solver.eval_period.max(1);
    tc.log_every_n_epochs = 1;
    tc.run_dir = (!options.in_memory).then(|| dir.clone());
    tc.resume_from = resume;
    tc.progress = options.progress;
    tc.precision = precision_for::<B>(cfg, options.precision, device);
    tc.virtual_ranks = options.virtual_ranks.max(1);
    tc.divergence = kiln::trainer::DivergenceCheck {
        terminate_on_nan: cfg.solver.terminate_on_nan,
        factor: cfg.solver.divergence_factor,
    };
    let mode = match cfg.solver.monitor_metric_mode.as_str() {
        "min" => Mode::Min,
        _ => Mode::Max,
    };
    let mut trainer = Trainer::new(tc);
    if !options.in_memory {
        trainer = trainer.with_callback(ModelCheckpoint::best(
            cfg.solver.monitor_metric_name.clone(),
            mode,
            1,
        ));
    }
    if let Some(dist) = &options.dist {
        trainer = trainer
            .with_dist(dist.clone())
            .with_fingerprint(serde_yaml::to_string(cfg)?)
            .with_replica_check(options.check_replicas);
    }
    let mut optim = optimization::<B>(cfg);
    let outcome = trainer.fit(&mut task, model, &mut optim, device)?;
    if let Some(new_dir) = new_dir {
        new_dir.keep();
    }
    let best_checkpoint = (!options.in_memory)
        .then(|| std::fs::read_dir(dir.join("checkpoints")).ok())
        .flatten()
        .and_then(|entries| {
            entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("best-"))
            })
        });

    // Like the reference after `fit`: test the last-epoch model with centroids flipped; report
    // all protocols.
    let (q, g) = evaluator.embed(&outcome.model.valid(), device)?;
    let test = EvalReport::compute(
        embedding_set(&q),
        embedding_set(&g),
        evaluator.options(),
        options.bug_compat,
    )?;
    let summary = RunSummary {
        run_dir: dir.clone(),
        seed,
        epochs: outcome.epochs_completed,
        before,
        test,
        best_checkpoint,
    };
    if main {
        kiln::io::write_json(dir.join("test_report.json"), &summary)?;
    }
    Ok((summary, outcome.model))
}

#[derive(Clone)]
struct TrainJob {
    cfg: ReidConfig,
    step: StepKind,
    options: FitOptions,
}

impl kiln::backend::DistJob for TrainJob {
    type Output = Vec<RunSummary>;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        dist: Option<kiln::dist::Dist>,
    ) -> Result<Vec<RunSummary>> {
        let options = FitOptions {
            dist,
            ..self.options
        };
        let main = options.is_main();
        let dataset = load_dataset(&self.cfg)?;
        if main {
            println!("{}", dataset.summary());
        }
        let runs = self.cfg.reproducible_num_runs.max(1);
        let mut out = Vec::new();
        for run in 0..runs {
            let seed = if self.cfg.reproducible || options.dist.is_some() {
                // Data-parallel replicas must share the seed: non-reproducible runs use the
                // reproducible seed too.
                self.cfg.reproducible_seed + run as u64
            } else {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(run as u64, |d| d.as_nanos() as u64)
            };
            if main {
                println!("run {}/{runs} (seed {seed})", run + 1);
            }
            let summary = fit::<B>(&self.cfg, &dataset, self.step, seed, &options, &device)?;
            if main {
                if let Some(before) = &summary.before {
                    println!("untrained model:\n{}", before.table());
                }
                println!(
                    "after {} epochs (last-epoch model):\n{}",
                    summary.epochs,
                    summary.test.table()
                );
                println!("run directory: {}", summary.run_dir.display());
            }
            out.push(summary);
        }
        Ok(out)
    }
}

/// The data-parallel layout of a run: explicit `--devices`/`--num-nodes` flags, else
/// `GPU_IDS` with `SOLVER.DIST_BACKEND ddp` on CUDA (the reference's Lightning `gpus` +
/// `accelerator`).
pub fn parallel_layout(
    cfg: &ReidConfig,
    runtime: &kiln::cli::RuntimeArgs,
) -> Result<(Vec<usize>, Option<kiln::dist::DistConfig>)> {
    let mut runtime = runtime.clone();
    let from_config = runtime.devices.is_empty()
        && matches!(runtime.device, DeviceKind::Cuda(_))
        && cfg.gpu_ids.len() > 1
        && cfg
            .solver
            .dist_backend
            .to_ascii_lowercase()
            .starts_with("ddp");
    if from_config {
        runtime.devices = cfg
            .gpu_ids
            .iter()
            .map(|&i| usize::try_from(i).with_context(|| format!("GPU_IDS holds {i}")))
            .collect::<Result<_>>()?;
    }
    let dist = runtime.dist_config()?;
    Ok((runtime.local_devices(), dist))
}

/// `reid train`: `REPRODUCIBLE_NUM_RUNS` runs, each trained and tested.
pub fn run_train(
    cfg: ReidConfig,
    step: StepKind,
    device: DeviceKind,
    options: FitOptions,
) -> Result<Vec<RunSummary>> {
    run_train_parallel(cfg, step, device, options, &[], None)
}

/// [`run_train`] as one node of a data-parallel run (`dist`) with this node's `devices`, one
/// worker per device (see [`parallel_layout`]).
pub fn run_train_parallel(
    cfg: ReidConfig,
    step: StepKind,
    device: DeviceKind,
    options: FitOptions,
    devices: &[usize],
    dist: Option<kiln::dist::DistConfig>,
) -> Result<Vec<RunSummary>> {
    if cfg.test.only_test {
        // The reference's training scripts only test when TEST.ONLY_TEST is set.
        run_test(cfg, device, options.bug_compat, options.progress)?;
        return Ok(Vec::new());
    }
    if cfg.use_mixed_precision
        && options.precision.is_none()
        && !matches!(device, DeviceKind::Cuda(_))
    {
        tracing::info!(
            "USE_MIXED_PRECISION True means 16-mixed on CUDA: training in f32 on CPU \
             (--precision bf16-mixed or 16-mixed forces a mode)"
        );
    }
    let job = TrainJob { cfg, step, options };
    kiln::backend::launch_workers(device, devices, dist, job)
}

struct TestJob {
    cfg: ReidConfig,
    bug_compat: bool,
    progress: bool,
}

impl BackendJob for TestJob {
    type Output = EvalReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<EvalReport> {
        let cfg = &self.cfg;
        if cfg.model.pretrain_path.is_empty() {
            bail!(
                "set MODEL.PRETRAIN_PATH to the checkpoint to test (a `reid train` .ckpt or a reference .ckpt)"
            );
        }
        let dataset = load_dataset(cfg)?;
        let loaded = crate::infer::load_model::<B::InnerBackend>(
            Path::new(&cfg.model.pretrain_path),
            None,
            &device,
        )?;
        println!("model: {} ({})", loaded.source, loaded.config.name);
        let evaluator = Evaluator::new(cfg, &dataset, self.progress)?;
        let (q, g) = evaluator.embed(&loaded.model, &device)?;
        let report = EvalReport::compute(
            embedding_set(&q),
            embedding_set(&g),
            evaluator.options(),
            self.bug_compat,
        )?;
        let out = if cfg.output_dir.is_empty() {
            PathBuf::from(cfg.derived_log_dir())
        } else {
            PathBuf::from(&cfg.output_dir)
        };
        report.write_json(out.join("test_report.json"))?;
        println!("{}", report.table());
        println!("wrote {}", out.join("test_report.json").display());
        let cmc = out.join(TEST_CMC_FILE);
        write_cmc_picture(&report, &format!("CMC of {}", loaded.source), &cmc)?;
        println!("wrote {}", cmc.display());
        if cfg.test.visualize.eq_ignore_ascii_case("yes") {
            let vis_root = crate::tools::output_dir(cfg);
            let n = crate::tools::visualize(
                &dataset.query,
                &dataset.gallery,
                &q.features,
                &g.features,
                cfg,
                self.bug_compat,
                &vis_root,
                self.progress,
            )?;
            println!(
                "wrote {n} ranked-result pictures to {}",
                vis_root.join("visrank").display()
            );
        }
        Ok(report)
    }
}

/// The CMC picture `reid test` writes beside `test_report.json`.
pub const TEST_CMC_FILE: &str = "test_cmc.png";

/// Draws the CMC curves (rank-k accuracy, k = 1..max rank) of every protocol of `report`.
pub fn write_cmc_picture(report: &EvalReport, title: &str, path: &Path) -> Result<()> {
    let curves: Vec<(String, Vec<f64>)> = [
        ("no centroids", &report.no_centroids),
        ("centroids A", &report.centroids_a),
        ("centroids B", &report.centroids_b),
    ]
    .into_iter()
    .filter_map(|(name, m)| m.as_ref().map(|m| (name.to_string(), m.cmc.clone())))
    .collect();
    kiln::plot::cmc_curves(&curves, title, path)
}

/// `reid test` (TEST.ONLY_TEST): evaluate `MODEL.PRETRAIN_PATH` with all three protocols (the
/// configured `USE_CENTROIDS` and its flip are both among them).
pub fn run_test(
    cfg: ReidConfig,
    device: DeviceKind,
    bug_compat: bool,
    progress: bool,
) -> Result<EvalReport> {
    launch(
        device,
        TestJob {
            cfg,
            bug_compat,
            progress,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_the_config() {
        let mut cfg = ReidConfig::default();
        cfg.solver.base_lr = 3.5e-4;
        let s = schedule(&cfg);
        assert!((s.lr_at(0) - 3.5e-5).abs() < 1e-15);
        assert!((s.lr_at(45) - 3.5e-5).abs() < 1e-15);
        cfg.solver.use_warmup_lr = false;
        assert!((schedule(&cfg).lr_at(0) - 3.5e-4).abs() < 1e-15);
    }

    #[test]
    fn run_dirs_follow_lightning_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ReidConfig {
            output_dir: dir.path().display().to_string(),
            ..ReidConfig::default()
        };
        let first = run_dir(&cfg, StepKind::Ctl, None).unwrap();
        assert!(first.ends_with("train_ctl_model/version_0"));
        std::fs::create_dir_all(&first).unwrap();
        assert!(
            run_dir(&cfg, StepKind::Ctl, None)
                .unwrap()
                .ends_with("version_1")
        );
        let ckpt = first.join("checkpoints/last.ckpt");
        assert_eq!(run_dir(&cfg, StepKind::Ctl, Some(&ckpt)).unwrap(), first);
    }
}
