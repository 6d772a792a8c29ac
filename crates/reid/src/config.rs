//! The run configuration: every key of the reference's yacs `config/defaults.py`, with its default.
//!
//! [`ReidConfig`] mirrors the reference's `CfgNode` tree key for key: the sections `MODEL`,
//! `INPUT`, `DATASETS`, `DATALOADER`, `SOLVER` and `TEST`, plus the top-level keys `GPU_IDS`,
//! `LOG_DIR`, `USE_MIXED_PRECISION`, `OUTPUT_DIR`, `REPRODUCIBLE`, `REPRODUCIBLE_NUM_RUNS` and
//! `REPRODUCIBLE_SEED`. A run's configuration is built by [`ReidConfig::load`] through
//! [`kiln::config`], which keeps the yacs semantics of the reference:
//!
//! 1. the defaults below, then
//! 2. the YAML file (`--config-file`), then
//! 3. the `KEY VALUE` overrides (`SOLVER.BASE_LR 0.00035 DATASETS.NAMES 'dukemtmcreid'`).
//!
//! Every value given as a string is evaluated as a Python literal (so `market1501` and
//! `'market1501'` are the same string, `[0]` is a list, `1e-4` a float and `(40, 70)` a list),
//! keys the defaults do not have are errors naming the key, and a value whose type differs from
//! the default's is an error naming the key. A YAML file written for the original project
//! (`configs/256_resnet50.yml` and friends) therefore loads unchanged.
//!
//! Merging is purely syntactic, like yacs; [`ReidConfig::validate`] adds the semantic checks
//! (supported backbone, batch geometry, distance function...) and reports every problem with
//! the key it concerns.
//!
//! ## Keys the reference never reads
//!
//! `SOLVER.MOMENTUM`, `SOLVER.CLUSTER_MARGIN`, `SOLVER.WEIGHT_DECAY_BIAS`,
//! `SOLVER.CHECKPOINT_PERIOD` and `TEST.WEIGHT` have no reader in the reference. They are kept
//! here, accepted and ignored, so that configuration files written for the original project
//! still load. `SOLVER.USE_AUTOMATIC_OPTIM` selects a Lightning mode and is accepted with no
//! effect. `SOLVER.DIST_BACKEND` (`ddp`) with more than one `GPU_IDS` on `--device cuda` trains
//! data-parallel on those GPUs (kiln's `ddp` strategy), as the reference's Lightning accelerator
//! did; `USE_MIXED_PRECISION True` is `16-mixed` on CUDA and f32 on CPU (`--precision` overrides
//! both).
//!
//! ## Keys the reference does not have
//!
//! Re-ranking and query expansion (fast-reid's `TEST.RERANK` and `TEST.AQE`) are new keys in
//! the style of the reference's flat `TEST.*` section, all off by default so that a reference
//! configuration evaluates as before: `TEST.RERANK` (k-reciprocal re-ranking, with
//! `TEST.RERANK_K1` 20, `TEST.RERANK_K2` 6, `TEST.RERANK_LAMBDA` 0.3) and `TEST.AQE` (average
//! query expansion, with `TEST.AQE_K` 5, `TEST.AQE_ALPHA` 3.0); see [`crate::eval::rerank`].
//! A configuration that sets them does not load in the reference.
//!
//! ## Keys `run_main` overwrites
//!
//! The reference's training entry point (`utils/misc.py::run_main`) overwrites two keys after
//! loading, whatever the file and the command line said:
//!
//! * `DATALOADER.NUM_WORKERS = cpu_count() // len(GPU_IDS)`, see [`derived_num_workers`];
//! * `LOG_DIR = OUTPUT_DIR` when `OUTPUT_DIR` is set, else `logs/<DATASETS.NAMES>`, see
//!   [`ReidConfig::derived_log_dir`].
//!
//! [`ReidConfig::apply_run_main_overrides`] applies both; training entry points call it, so a
//! user-given `LOG_DIR` or `NUM_WORKERS` is ignored there exactly as in the reference.
//!
//! ## One K everywhere
//!
//! The reference's data module hard-codes K = 4 instances per identity and ignores
//! `DATALOADER.NUM_INSTANCE`, which only its CTL training step reads. This port uses
//! `DATALOADER.NUM_INSTANCE` everywhere (sampler and loss); the default 4 reproduces the
//! reference.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Backbone names the reference wires in `modelling/baseline.py`, with the embedding size each
/// produces (`MODEL.BACKBONE_EMB_SIZE` must match it).
pub const BACKBONES: &[(&str, usize)] = &[
    ("resnet18", 512),
    ("resnet34", 512),
    ("resnet50", 2048),
    ("resnet101", 2048),
    ("resnet152", 2048),
    ("resnet50_ibn_a", 2048),
    ("resnet101_ibn_a", 2048),
];

/// Dataset names accepted by `DATASETS.NAMES` (the reference's `datasets/__init__.py`).
pub const DATASET_NAMES: &[&str] = &["market1501", "dukemtmcreid", "df1", "street2shop"];

/// The complete configuration tree (`config/defaults.py` of the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct ReidConfig {
    /// `MODEL.*`: backbone and retrieval mode.
    pub model: ModelConfig,
    /// `INPUT.*`: image sizes and augmentation.
    pub input: InputConfig,
    /// `DATASETS.*`: which dataset and where.
    pub datasets: DatasetsConfig,
    /// `DATALOADER.*`: workers and the P×K sampler.
    pub dataloader: DataloaderConfig,
    /// `SOLVER.*`: optimisation, losses and schedule.
    pub solver: SolverConfig,
    /// `TEST.*`: evaluation.
    pub test: TestConfig,
    /// `GPU_IDS` (default `[0]`): device ids; the reference passes them to Lightning's `gpus`.
    /// With more than one id and `--device cuda`, one data-parallel worker per GPU.
    pub gpu_ids: Vec<i64>,
    /// `LOG_DIR` (default `"logs"`): overwritten by `run_main`, see
    /// [`ReidConfig::derived_log_dir`].
    pub log_dir: String,
    /// `USE_MIXED_PRECISION` (default `True`): fp16 AMP in the reference; here `16-mixed` on CUDA
    /// (f32 on CPU, where the reference never ran AMP). `--precision` overrides it.
    pub use_mixed_precision: bool,
    /// `OUTPUT_DIR` (default `""`): log root override, also the visualisation output root.
    pub output_dir: String,
    /// `REPRODUCIBLE` (default `False`): seed every run.
    pub reproducible: bool,
    /// `REPRODUCIBLE_NUM_RUNS` (default `3`): number of full training runs launched back to back.
    pub reproducible_num_runs: usize,
    /// `REPRODUCIBLE_SEED` (default `0`): the first run's seed; runs use seed, seed + 1, ...
    pub reproducible_seed: u64,
}

/// `MODEL.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct ModelConfig {
    /// `MODEL.NAME` (default `"resnet50"`): backbone, one of [`BACKBONES`].
    pub name: String,
    /// `MODEL.BACKBONE_EMB_SIZE` (default `2048`): width of the BNNeck, classifier and centers;
    /// 512 for resnet18/34.
    pub backbone_emb_size: usize,
    /// `MODEL.LAST_STRIDE` (default `1`): stride of layer4's first block.
    pub last_stride: usize,
    /// `MODEL.PRETRAINED` (default `True`): load ImageNet weights into the backbone (unless
    /// resuming or testing).
    pub pretrained: bool,
    /// `MODEL.PRETRAIN_PATH` (default `""`): ImageNet weights when training; a trained
    /// checkpoint for `TEST.ONLY_TEST`, `RESUME_TRAINING` and inference.
    pub pretrain_path: String,
    /// `MODEL.USE_CENTROIDS` (default `False`): evaluate against gallery centroids.
    pub use_centroids: bool,
    /// `MODEL.KEEP_CAMID_CENTROIDS` (default `True`): per-query-camera centroids with camera
    /// filtering (centroid mode B).
    pub keep_camid_centroids: bool,
    /// `MODEL.RESUME_TRAINING` (default `False`): resume from `PRETRAIN_PATH`.
    pub resume_training: bool,
}

/// `INPUT.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct InputConfig {
    /// `INPUT.SIZE_TRAIN` (default `[256, 128]`): training image size `[H, W]`.
    pub size_train: [usize; 2],
    /// `INPUT.SIZE_TEST` (default `[256, 128]`): evaluation image size `[H, W]`.
    pub size_test: [usize; 2],
    /// `INPUT.PROB` (default `0.5`): horizontal-flip probability.
    pub prob: f64,
    /// `INPUT.RE_PROB` (default `0.5`): random-erasing probability.
    pub re_prob: f64,
    /// `INPUT.PIXEL_MEAN` (default `[0.485, 0.456, 0.406]`): normalisation mean, also the
    /// random-erasing fill value.
    pub pixel_mean: [f64; 3],
    /// `INPUT.PIXEL_STD` (default `[0.229, 0.224, 0.225]`): normalisation std.
    pub pixel_std: [f64; 3],
    /// `INPUT.PADDING` (default `10`): zero padding before the random crop.
    pub padding: usize,
}

/// `DATASETS.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct DatasetsConfig {
    /// `DATASETS.NAMES` (default `"market1501"`): a single dataset name, one of
    /// [`DATASET_NAMES`].
    pub names: String,
    /// `DATASETS.ROOT_DIR` (default `"/home/data"`): data root. Market1501 lives in
    /// `<ROOT_DIR>/market1501`, DukeMTMC-reID in `<ROOT_DIR>/DukeMTMC-reID`, the COCO-ReID
    /// datasets' images in `<ROOT_DIR>/{train,query,gallery}`. The inference tools read an image
    /// or an image directory from it.
    pub root_dir: String,
    /// `DATASETS.JSON_TRAIN_PATH` (default `""`): COCO-ReID train annotations; the query and
    /// gallery files are derived from it by replacing every `train` with `query` / `gallery`.
    pub json_train_path: String,
}

/// `DATALOADER.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct DataloaderConfig {
    /// `DATALOADER.NUM_WORKERS` (default `6`): image decoding threads; overwritten by `run_main`
    /// (see [`derived_num_workers`]).
    pub num_workers: usize,
    /// `DATALOADER.SAMPLER` (default `"random_identity"`): the only sampler.
    pub sampler: String,
    /// `DATALOADER.NUM_INSTANCE` (default `4`): K, images per identity in a batch.
    pub num_instance: usize,
    /// `DATALOADER.DROP_LAST` (default `True`): the P×K sampler only emits full batches, so this
    /// has no effect.
    pub drop_last: bool,
    /// `DATALOADER.USE_RESAMPLING` (default `True`): pad identities with fewer than K images left
    /// by drawing with replacement (`True`) or with masked all-zero "mock" images (`False`).
    pub use_resampling: bool,
}

/// `SOLVER.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct SolverConfig {
    /// `SOLVER.OPTIMIZER_NAME` (default `"Adam"`): only Adam is implemented.
    pub optimizer_name: String,
    /// `SOLVER.MAX_EPOCHS` (default `120`).
    pub max_epochs: usize,
    /// `SOLVER.BASE_LR` (default `1e-4`): Adam learning rate.
    pub base_lr: f64,
    /// `SOLVER.MOMENTUM` (default `0.9`): unused by the reference; accepted and ignored.
    pub momentum: f64,
    /// `SOLVER.MARGIN` (default `0.5`): triplet margin (query triplet and CTL).
    pub margin: f64,
    /// `SOLVER.DISTANCE_FUNC` (default `"euclidean"`): `euclidean` or `cosine`, for the training
    /// triplets and for evaluation.
    pub distance_func: String,
    /// `SOLVER.CLUSTER_MARGIN` (default `0.3`): unused by the reference; accepted and ignored.
    pub cluster_margin: f64,
    /// `SOLVER.CENTER_LR` (default `0.5`): SGD learning rate of the center-loss centers.
    pub center_lr: f64,
    /// `SOLVER.CENTER_LOSS_WEIGHT` (default `0.0005`): center-loss weight; the centers' gradient
    /// is rescaled by its inverse.
    pub center_loss_weight: f64,
    /// `SOLVER.WEIGHT_DECAY` (default `0.0005`): Adam L2 weight decay.
    pub weight_decay: f64,
    /// `SOLVER.WEIGHT_DECAY_BIAS` (default `0.0005`): unused by the reference; accepted and
    /// ignored.
    pub weight_decay_bias: f64,
    /// `SOLVER.LR_SCHEDULER_NAME` (default `"multistep_lr"`): the only working scheduler.
    pub lr_scheduler_name: String,
    /// `SOLVER.GAMMA` (default `0.1`): MultiStepLR factor.
    pub gamma: f64,
    /// `SOLVER.LR_STEPS` (default `(40, 70)`): MultiStepLR milestones in epochs.
    pub lr_steps: Vec<usize>,
    /// `SOLVER.USE_WARMUP_LR` (default `True`): linear warm-up.
    pub use_warmup_lr: bool,
    /// `SOLVER.WARMUP_EPOCHS` (default `10`).
    pub warmup_epochs: usize,
    /// `SOLVER.MONITOR_METRIC_NAME` (default `"mAP"`): metric the best checkpoint is chosen on.
    pub monitor_metric_name: String,
    /// `SOLVER.MONITOR_METRIC_MODE` (default `"max"`).
    pub monitor_metric_mode: String,
    /// `SOLVER.CHECKPOINT_PERIOD` (default `50`): unused by the reference; accepted and ignored.
    pub checkpoint_period: usize,
    /// `SOLVER.EVAL_PERIOD` (default `5`): validate every this many epochs.
    pub eval_period: usize,
    /// `SOLVER.IMS_PER_BATCH` (default `64`): despite the name, the number of identities P per
    /// batch (per device); a batch holds P × `DATALOADER.NUM_INSTANCE` images.
    pub ims_per_batch: usize,
    /// `SOLVER.DIST_BACKEND` (default `"ddp"`): Lightning accelerator; `ddp*` with several
    /// `GPU_IDS` trains data-parallel on CUDA.
    pub dist_backend: String,
    /// `SOLVER.QUERY_XENT_WEIGHT` (default `1.0`): weight of the ID cross-entropy.
    pub query_xent_weight: f64,
    /// `SOLVER.QUERY_CONTRASTIVE_WEIGHT` (default `1.0`): weight of the batch-hard triplet.
    pub query_contrastive_weight: f64,
    /// `SOLVER.CENTROID_CONTRASTIVE_WEIGHT` (default `1.0`): weight of the centroid triplet loss.
    pub centroid_contrastive_weight: f64,
    /// `SOLVER.USE_AUTOMATIC_OPTIM` (default `False`): Lightning optimisation mode; no effect
    /// here (the port always steps manually, like the reference's training steps).
    pub use_automatic_optim: bool,
    /// `SOLVER.TERMINATE_ON_NAN` (default `True`; not in the reference): a non-finite training
    /// loss stops the run with an error naming the step (see `kiln::trainer::DivergenceCheck`).
    pub terminate_on_nan: bool,
    /// `SOLVER.DIVERGENCE_FACTOR` (default `1e4`; not in the reference): a training loss above
    /// this many times its lowest running mean stops the run with an error; `0` turns it off.
    pub divergence_factor: f64,
}

/// `TEST.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub struct TestConfig {
    /// `TEST.IMS_PER_BATCH` (default `128`): evaluation batch size (images).
    pub ims_per_batch: usize,
    /// `TEST.WEIGHT` (default `""`): unused by the reference; accepted and ignored.
    pub weight: String,
    /// `TEST.FEAT_NORM` (default `True`): L2-normalise embeddings before distances.
    pub feat_norm: bool,
    /// `TEST.ONLY_TEST` (default `False`): evaluate the checkpoint in `MODEL.PRETRAIN_PATH`.
    pub only_test: bool,
    /// `TEST.VISUALIZE` (default `"no"`): `"yes"` writes ranked-result pictures.
    pub visualize: String,
    /// `TEST.VISUALIZE_TOPK` (default `10`).
    pub visualize_topk: usize,
    /// `TEST.VISUALIZE_MAX_NUMBER` (default `1000000`): most queries pictured.
    pub visualize_max_number: usize,
    /// `TEST.RERANK` (default `False`; **not in the reference**, fast-reid's `TEST.RERANK.ENABLED`):
    /// k-reciprocal re-ranking of every protocol's distances (`test`, `evaluate`, `get-similar`).
    pub rerank: bool,
    /// `TEST.RERANK_K1` (default `20`; not in the reference): k-reciprocal neighbourhood size.
    pub rerank_k1: usize,
    /// `TEST.RERANK_K2` (default `6`; not in the reference): local query expansion size.
    pub rerank_k2: usize,
    /// `TEST.RERANK_LAMBDA` (default `0.3`; not in the reference): weight of the original distance.
    pub rerank_lambda: f64,
    /// `TEST.AQE` (default `False`; **not in the reference**, fast-reid's `TEST.AQE.ENABLED`):
    /// α-weighted average query expansion before the distances.
    pub aqe: bool,
    /// `TEST.AQE_K` (default `5`; not in the reference): neighbours averaged (self included).
    pub aqe_k: usize,
    /// `TEST.AQE_ALPHA` (default `3.0`; not in the reference): similarity-weight exponent.
    pub aqe_alpha: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "resnet50".into(),
            backbone_emb_size: 2048,
            last_stride: 1,
            pretrained: true,
            pretrain_path: String::new(),
            use_centroids: false,
            keep_camid_centroids: true,
            resume_training: false,
        }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            size_train: [256, 128],
            size_test: [256, 128],
            prob: 0.5,
            re_prob: 0.5,
            pixel_mean: [0.485, 0.456, 0.406],
            pixel_std: [0.229, 0.224, 0.225],
            padding: 10,
        }
    }
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            names: "market1501".into(),
            root_dir: "/home/data".into(),
            json_train_path: String::new(),
        }
    }
}

impl Default for DataloaderConfig {
    fn default() -> Self {
        Self {
            num_workers: 6,
            sampler: "random_identity".into(),
            num_instance: 4,
            drop_last: true,
            use_resampling: true,
        }
    }
}

impl Default for SolverConfig {
    fn default() -> Self {
        Self {
            optimizer_name: "Adam".into(),
            max_epochs: 120,
            base_lr: 1e-4,
            momentum: 0.9,
            margin: 0.5,
            distance_func: "euclidean".into(),
            cluster_margin: 0.3,
            center_lr: 0.5,
            center_loss_weight: 0.0005,
            weight_decay: 0.0005,
            weight_decay_bias: 0.0005,
            lr_scheduler_name: "multistep_lr".into(),
            gamma: 0.1,
            lr_steps: vec![40, 70],
            use_warmup_lr: true,
            warmup_epochs: 10,
            monitor_metric_name: "mAP".into(),
            monitor_metric_mode: "max".into(),
            checkpoint_period: 50,
            eval_period: 5,
            ims_per_batch: 64,
            dist_backend: "ddp".into(),
            query_xent_weight: 1.0,
            query_contrastive_weight: 1.0,
            centroid_contrastive_weight: 1.0,
            use_automatic_optim: false,
            terminate_on_nan: true,
            divergence_factor: kiln::trainer::DIVERGENCE_FACTOR,
        }
    }
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            ims_per_batch: 128,
            weight: String::new(),
            feat_norm: true,
            only_test: false,
            visualize: "no".into(),
            visualize_topk: 10,
            visualize_max_number: 1_000_000,
            rerank: false,
            rerank_k1: 20,
            rerank_k2: 6,
            rerank_lambda: 0.3,
            aqe: false,
            aqe_k: 5,
            aqe_alpha: 3.0,
        }
    }
}

impl Default for ReidConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            input: InputConfig::default(),
            datasets: DatasetsConfig::default(),
            dataloader: DataloaderConfig::default(),
            solver: SolverConfig::default(),
            test: TestConfig::default(),
            gpu_ids: vec![0],
            log_dir: "logs".into(),
            use_mixed_precision: true,
            output_dir: String::new(),
            reproducible: false,
            reproducible_num_runs: 3,
            reproducible_seed: 0,
        }
    }
}

/// `cpu_count() // len(GPU_IDS)`, the value `run_main` writes into `DATALOADER.NUM_WORKERS`.
///
/// `cpus` is the number of logical CPUs (see [`available_cpus`]). With no device ids (a CPU
/// run, which would divide by zero in the reference) the divisor is 1; the result is at least 1.
pub fn derived_num_workers(cpus: usize, gpu_ids: &[i64]) -> usize {
    (cpus / gpu_ids.len().max(1)).max(1)
}

/// The number of logical CPUs available to this process (1 when it cannot be determined).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ReidConfig {
    /// Loads and validates the configuration of a command line's `--config-file` and
    /// `KEY VALUE` arguments.
    pub fn from_args(args: &kiln::cli::ConfigArgs) -> Result<Self> {
        let cfg = Self::load(args.config_file.as_deref(), &args.opts)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ReidConfig {
    /// Defaults, then `config_file` (YAML), then `KEY VALUE` overrides, with yacs semantics.
    ///
    /// Errors name the offending key and where it came from (the file or the command line):
    /// unknown keys, type mismatches, malformed YAML, an odd number of override items. No
    /// semantic checks happen here; call [`ReidConfig::validate`] for those.
    pub fn load(config_file: Option<&Path>, opts: &[String]) -> Result<ReidConfig> {
        kiln::config::load(config_file, opts)
    }

    /// Writes the configuration as YAML (atomically), e.g. into a run directory. The file loads
    /// back with [`ReidConfig::load`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        kiln::config::dump_yaml(self, path)
    }

    /// `LOG_DIR` as `run_main` sets it: `OUTPUT_DIR` when non-empty, else `logs/<DATASETS.NAMES>`.
    pub fn derived_log_dir(&self) -> String {
        if self.output_dir.is_empty() {
            format!("logs/{}", self.datasets.names)
        } else {
            self.output_dir.clone()
        }
    }

    /// Applies the two overwrites of the reference's `run_main`: `LOG_DIR` (see
    /// [`ReidConfig::derived_log_dir`]) and `DATALOADER.NUM_WORKERS` (see
    /// [`derived_num_workers`], with `cpus` logical CPUs).
    pub fn apply_run_main_overrides(&mut self, cpus: usize) {
        self.log_dir = self.derived_log_dir();
        self.dataloader.num_workers = derived_num_workers(cpus, &self.gpu_ids);
    }

    /// `DATASETS.ROOT_DIR` as a path.
    pub fn root_dir(&self) -> PathBuf {
        PathBuf::from(&self.datasets.root_dir)
    }

    /// Images per training batch: P (`SOLVER.IMS_PER_BATCH`) × K (`DATALOADER.NUM_INSTANCE`).
    pub fn train_batch_images(&self) -> usize {
        self.solver.ims_per_batch * self.dataloader.num_instance
    }

    /// Semantic checks of the merged configuration. Every problem found is reported in one
    /// error, one line per key, each naming the key and the accepted values.
    pub fn validate(&self) -> Result<()> {
        let mut problems: Vec<String> = Vec::new();
        let mut check = |ok: bool, key: &str, msg: String| {
            if !ok {
                problems.push(format!("{key}: {msg}"));
            }
        };

        // MODEL
        let m = &self.model;
        match BACKBONES.iter().find(|(name, _)| *name == m.name) {
            None => check(
                false,
                "MODEL.NAME",
                format!(
                    "unknown backbone '{}'; expected one of {}",
                    m.name,
                    BACKBONES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some((name, emb)) => check(
                m.backbone_emb_size == *emb,
                "MODEL.BACKBONE_EMB_SIZE",
                format!(
                    "is {} but backbone {name} produces {emb}-dimensional features",
                    m.backbone_emb_size
                ),
            ),
        }
        check(
            matches!(m.last_stride, 1 | 2),
            "MODEL.LAST_STRIDE",
            format!("must be 1 or 2, got {}", m.last_stride),
        );

        // INPUT
        let i = &self.input;
        for (key, size) in [
            ("INPUT.SIZE_TRAIN", i.size_train),
            ("INPUT.SIZE_TEST", i.size_test),
        ] {
            check(
                size[0] > 0 && size[1] > 0,
                key,
                format!("must be a positive [H, W], got {size:?}"),
            );
        }
        for (key, p) in [("INPUT.PROB", i.prob), ("INPUT.RE_PROB", i.re_prob)] {
            check(
                (0.0..=1.0).contains(&p),
                key,
                format!("must be a probability in [0, 1], got {p}"),
            );
        }
        check(
            i.pixel_mean.iter().all(|v| v.is_finite()),
            "INPUT.PIXEL_MEAN",
            format!("must be finite, got {:?}", i.pixel_mean),
        );
        check(
            i.pixel_std.iter().all(|v| v.is_finite() && *v > 0.0),
            "INPUT.PIXEL_STD",
            format!("must be positive, got {:?}", i.pixel_std),
        );

        // DATASETS
        let d = &self.datasets;
        check(
            DATASET_NAMES.contains(&d.names.as_str()),
            "DATASETS.NAMES",
            format!(
                "unknown dataset '{}'; expected one of {}",
                d.names,
                DATASET_NAMES.join(", ")
            ),
        );
        if matches!(d.names.as_str(), "df1" | "street2shop") {
            check(
                d.json_train_path.contains("train"),
                "DATASETS.JSON_TRAIN_PATH",
                format!(
                    "{} needs the train annotation file, whose path must contain 'train' (the \
                     query/gallery files are derived by replacing it); got '{}'",
                    d.names, d.json_train_path
                ),
            );
        }

        // DATALOADER
        let l = &self.dataloader;
        check(
            l.sampler == "random_identity",
            "DATALOADER.SAMPLER",
            format!("only 'random_identity' exists, got '{}'", l.sampler),
        );
        check(
            l.num_instance >= 2,
            "DATALOADER.NUM_INSTANCE",
            format!(
                "K must be at least 2 (positives are needed within a batch), got {}",
                l.num_instance
            ),
        );

        // SOLVER
        let s = &self.solver;
        check(
            s.optimizer_name == "Adam",
            "SOLVER.OPTIMIZER_NAME",
            format!("only 'Adam' is implemented, got '{}'", s.optimizer_name),
        );
        check(
            s.max_epochs >= 1,
            "SOLVER.MAX_EPOCHS",
            "must be at least 1".into(),
        );
        for (key, v) in [
            ("SOLVER.BASE_LR", s.base_lr),
            ("SOLVER.CENTER_LR", s.center_lr),
        ] {
            check(
                v.is_finite() && v > 0.0,
                key,
                format!("must be positive, got {v}"),
            );
        }
        check(
            s.center_loss_weight.is_finite() && s.center_loss_weight > 0.0,
            "SOLVER.CENTER_LOSS_WEIGHT",
            format!(
                "must be positive (the centers' gradient is divided by it), got {}",
                s.center_loss_weight
            ),
        );
        for (key, v) in [
            ("SOLVER.MARGIN", s.margin),
            ("SOLVER.WEIGHT_DECAY", s.weight_decay),
            ("SOLVER.GAMMA", s.gamma),
            ("SOLVER.QUERY_XENT_WEIGHT", s.query_xent_weight),
            (
                "SOLVER.QUERY_CONTRASTIVE_WEIGHT",
                s.query_contrastive_weight,
            ),
            (
                "SOLVER.CENTROID_CONTRASTIVE_WEIGHT",
                s.centroid_contrastive_weight,
            ),
        ] {
            check(
                v.is_finite() && v >= 0.0,
                key,
                format!("must be non-negative, got {v}"),
            );
        }
        check(
            matches!(s.distance_func.as_str(), "euclidean" | "cosine"),
            "SOLVER.DISTANCE_FUNC",
            format!("must be 'euclidean' or 'cosine', got '{}'", s.distance_func),
        );
        check(
            s.lr_scheduler_name == "multistep_lr",
            "SOLVER.LR_SCHEDULER_NAME",
            format!(
                "only 'multistep_lr' works (the reference's 'cosine_annealing' reads an undefined \
                 key), got '{}'",
                s.lr_scheduler_name
            ),
        );
        check(
            s.lr_steps.windows(2).all(|w| w[0] < w[1]),
            "SOLVER.LR_STEPS",
            format!(
                "milestones must be strictly increasing, got {:?}",
                s.lr_steps
            ),
        );
        check(
            matches!(s.monitor_metric_mode.as_str(), "max" | "min" | "auto"),
            "SOLVER.MONITOR_METRIC_MODE",
            format!(
                "must be 'max', 'min' or 'auto', got '{}'",
                s.monitor_metric_mode
            ),
        );
        check(
            s.eval_period >= 1,
            "SOLVER.EVAL_PERIOD",
            "must be at least 1".into(),
        );
        check(
            s.ims_per_batch >= 2,
            "SOLVER.IMS_PER_BATCH",
            format!(
                "P (identities per batch) must be at least 2 (negatives are needed), got {}",
                s.ims_per_batch
            ),
        );

        // TEST
        let t = &self.test;
        check(
            t.ims_per_batch >= 1,
            "TEST.IMS_PER_BATCH",
            "must be at least 1".into(),
        );
        check(
            matches!(t.visualize.as_str(), "yes" | "no"),
            "TEST.VISUALIZE",
            format!("must be 'yes' or 'no', got '{}'", t.visualize),
        );
        check(
            t.rerank_k1 >= 1,
            "TEST.RERANK_K1",
            format!("must be at least 1, got {}", t.rerank_k1),
        );
        check(
            t.rerank_k2 >= 1,
            "TEST.RERANK_K2",
            format!(
                "must be at least 1 (1 = no local expansion), got {}",
                t.rerank_k2
            ),
        );
        check(
            (0.0..=1.0).contains(&t.rerank_lambda),
            "TEST.RERANK_LAMBDA",
            format!("must be in [0, 1], got {}", t.rerank_lambda),
        );
        check(
            t.aqe_k >= 1,
            "TEST.AQE_K",
            format!("must be at least 1, got {}", t.aqe_k),
        );
        check(
            t.aqe_alpha.is_finite(),
            "TEST.AQE_ALPHA",
            format!("must be finite, got {}", t.aqe_alpha),
        );

        // Top level
        check(
            self.reproducible_num_runs >= 1,
            "REPRODUCIBLE_NUM_RUNS",
            "must be at least 1".into(),
        );

        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }
}
