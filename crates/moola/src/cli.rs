//! The `moola` command line (the reference's `python -m moola.cli` commands, with the Burn
//! re-implementation's additions).
//!
//! ```text
//! moola [--config-file F] [--device cpu|cuda|wgpu] <command> [args] [KEY VALUE ...]
//!   doctor     resolved configuration, paths, compiled backends, CUDA driver, wgpu adapters
//!   ingest     validate a data file and write the canonical parquet
//!   describe   print a model's architecture and parameter count
//!   train      fit a model, save it, report held-out metrics
//!   evaluate   stratified k-fold cross-validation → metrics.json, confusion_matrix.{csv,png},
//!              reliability.png
//!   oof        out-of-fold probabilities on persisted folds → oof/<model>/v1/seed_<seed>.npy
//!              (+ seed_<seed>_{confusion_matrix,reliability}.png)
//!   pretrain   self-supervised encoder pre-training (masked-lstm | ts-tcc) on unlabelled windows
//!   stack      random-forest stack on the OOF files → models/stack/{stack.json, metrics.json}
//!   audit      the stack's acceptance rule (exit 1 on fail)
//!   predict    CSV of predictions and per-class probabilities
//!   import     turn a reference PyTorch checkpoint into this project's format
//!   bench      one training step per model, side by side with PyTorch
//!   plot       training curves of run directories side by side → PNG
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln::backend::{BackendJob, DeviceKind, launch};
use kiln::metrics::ClassificationReport;
use serde::Serialize;

use crate::Classifier;
use crate::config::MoolaConfig;
use crate::data::{self, LabelMap, WindowSet};
use crate::model::{InnerWindow, ModelSpec};
pub use crate::pretrain::PretrainMethod;
use crate::train::{RunOptions, TrainConfig};

/// moola: classifiers of fixed-length OHLC windows (SimpleLSTM, CNN-Transformer, RWKV-TS) on Burn.
#[derive(Debug, Parser)]
#[command(name = "moola", version, about)]
pub struct Cli {
    /// YAML configuration merged over the defaults (then `KEY VALUE` overrides).
    #[arg(long, global = true)]
    pub config_file: Option<PathBuf>,
    /// The recipe preset (the same as the override `recipe <preset>`): `auto` (default: the
    /// small-data recipe up to `small_data.max_windows` training windows), `default`,
    /// `small_data` or `reference` (the reference's recipe exactly).
    #[arg(long, global = true, value_enum)]
    pub recipe: Option<crate::config::RecipePreset>,
    /// Input scaling of every model and of pre-training (overrides every `*.scaling` key):
    /// auto, none, zscore, relative_close, relative_open, log_returns.
    #[arg(long, global = true, value_enum)]
    pub scaling: Option<crate::scaling::InputScaling>,
    /// Device and progress options.
    #[command(flatten)]
    pub runtime: kiln::cli::RuntimeArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the resolved configuration, paths, backends and CUDA availability.
    Doctor(Overrides),
    /// Validate a data file (.parquet, .ts, .csv) and write the canonical nested parquet.
    Ingest(IngestArgs),
    /// Print a model's architecture and parameter count.
    Describe(DescribeArgs),
    /// Train a model, save it and report held-out metrics.
    Train(TrainArgs),
    /// Stratified k-fold cross-validation (fresh model per fold).
    Evaluate(EvaluateArgs),
    /// Out-of-fold probabilities for stacking, on folds persisted under the artifacts directory.
    Oof(OofArgs),
    /// Pre-train an encoder on unlabelled windows (masked BiLSTM autoencoder or TS-TCC).
    Pretrain(PretrainArgs),
    /// The reference's `pretrain-bilstm`: `pretrain --method masked-lstm`.
    #[command(name = "pretrain-bilstm", hide = true)]
    PretrainBilstm(PretrainArgs),
    /// The reference's `pretrain-tcc`: `pretrain --method ts-tcc`.
    #[command(name = "pretrain-tcc", hide = true)]
    PretrainTcc(PretrainArgs),
    /// Train the stacking meta-learner on the OOF probabilities of the base models.
    #[command(alias = "stack-train")]
    Stack(StackArgs),
    /// Check the stack against the acceptance rule (exit status 1 when it fails).
    Audit(AuditArgs),
    /// Predict labels and per-class probabilities into a CSV.
    Predict(PredictArgs),
    /// Convert a reference PyTorch checkpoint (`torch.save` dict) into this project's format.
    Import(ImportArgs),
    /// Time one training step per model at the reference batch size, next to PyTorch.
    Bench(crate::bench::BenchArgs),
    /// Accuracy of every model on every bundled data set over seeds, next to published
    /// results (the table of docs/moola-learning.md).
    BenchmarkData(crate::benchmark::BenchmarkDataArgs),
    /// Draw the training curves of one or more run directories (their metrics.csv) side by
    /// side into one PNG.
    Plot(PlotArgs),
}

/// `plot` arguments.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (each with the metrics.csv of a training run).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "curves.png")]
    pub out: PathBuf,
    /// The monitored metric whose best epoch is marked (default: val_loss, as moola's runs
    /// select by it, or train_loss for a run that did not validate).
    #[arg(long)]
    pub monitor: Option<String>,
    /// Whether the monitored metric improves downwards (min) or upwards (max).
    #[arg(long, default_value = "min")]
    pub mode: kiln::Mode,
}

pub use kiln::cli::Overrides;

/// `ingest` arguments.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Input file (.parquet, .ts or OHLC .csv).
    #[arg(long)]
    pub input: PathBuf,
    /// Output parquet (default: `<data_dir>/processed/train.parquet`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// `describe` arguments.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// simple_lstm, cnn_transformer or rwkv_ts.
    #[arg(long)]
    pub model: String,
    /// Number of classes.
    #[arg(long, default_value_t = 2)]
    pub n_classes: usize,
    /// Features per time step.
    #[arg(long, default_value_t = 4)]
    pub input_dim: usize,
    /// Sequence length.
    #[arg(long, default_value_t = InnerWindow::REFERENCE_LEN)]
    pub seq_len: usize,
    /// CNN-Transformer: include the pointer heads.
    #[arg(long)]
    pub pointers: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// Pointer-head policy of the CNN-Transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pointers {
    /// On when the data has expansion indices.
    Auto,
    /// Always (rows without valid expansions are dropped).
    On,
    /// Never.
    Off,
}

/// `train` arguments.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// simple_lstm, cnn_transformer or rwkv_ts.
    #[arg(long)]
    pub model: String,
    /// Training data (.parquet, .ts, .csv); default `<data_dir>/processed/train.parquet`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out test data; without it a stratified `test_split` of the data is held out.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Output directory (default `<artifacts_dir>/models/<model>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume training from a checkpoint (e.g. `<out>/checkpoints/last.ckpt`).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// CNN-Transformer pointer heads.
    #[arg(long, value_enum, default_value = "auto")]
    pub pointers: Pointers,
    /// Start from a pre-trained encoder (`moola pretrain`; sets `<model>.train.encoder.path`).
    #[arg(
        long,
        visible_alias = "pretrained-encoder",
        alias = "load-pretrained-encoder"
    )]
    pub encoder: Option<PathBuf>,
    /// Freeze the loaded encoder at the start (default true; `<model>.train.encoder.freeze`).
    #[arg(long)]
    pub freeze_encoder: Option<bool>,
    #[command(flatten)]
    overrides: Overrides,
}

/// `pretrain` arguments (and the reference's `pretrain-bilstm` / `pretrain-tcc` flags).
#[derive(Debug, Clone, Args)]
pub struct PretrainArgs {
    /// masked-lstm or ts-tcc (implied by `pretrain-bilstm` / `pretrain-tcc`).
    #[arg(long, value_enum)]
    pub method: Option<PretrainMethod>,
    /// Unlabelled windows: .parquet, .ts or an OHLC .csv (every 105-bar window of every
    /// symbol); labels are ignored. Default `<data_dir>/processed/train.parquet`.
    #[arg(long, alias = "input")]
    pub data: Option<PathBuf>,
    /// Output directory: metrics.csv, history.json, checkpoints and `encoder.{mpk,json}`
    /// (default `<artifacts_dir>/encoders/<method>`).
    #[arg(long, alias = "output")]
    pub out: Option<PathBuf>,
    /// Maximum epochs (`pretrain.<method>.n_epochs`).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Early-stopping patience.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// masked-lstm: fraction of time steps masked.
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// masked-lstm: random, block or patch.
    #[arg(long)]
    pub mask_strategy: Option<crate::pretrain::masked_lstm::MaskStrategy>,
    /// masked-lstm: patch length of the patch strategy.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// masked-lstm: LSTM hidden size per direction.
    #[arg(long)]
    pub hidden_dim: Option<usize>,
    /// masked-lstm: multiply the data with the pre-training augmenter first.
    #[arg(long)]
    pub augment: bool,
    /// masked-lstm: augmented copies with `--augment`.
    #[arg(long, default_value_t = 4)]
    pub num_augmentations: usize,
    #[command(flatten)]
    overrides: Overrides,
}

/// `stack` arguments.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Seed of the OOF files to stack (default: the configuration's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Base models (default: every model with an OOF file for the seed).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Labelled data the OOF files were made from; default `<data_dir>/processed/train.parquet`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fold directory (default `<artifacts_dir>/splits/v1`).
    #[arg(long, alias = "split-dir")]
    pub splits_dir: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// `audit` arguments.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Compare the stack's macro F1 with the bases' weighted F1, as the reference does (default:
    /// macro against macro).
    #[arg(long)]
    pub reference_f1: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// `evaluate` arguments.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// simple_lstm, cnn_transformer or rwkv_ts.
    #[arg(long)]
    pub model: String,
    /// Labelled data; default `<data_dir>/processed/train.parquet`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory (default `<artifacts_dir>/models/<model>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CNN-Transformer pointer heads.
    #[arg(long, value_enum, default_value = "auto")]
    pub pointers: Pointers,
    #[command(flatten)]
    overrides: Overrides,
}

/// `oof` arguments (the reference's `oof --model --seed --load-pretrained-encoder`, plus the
/// fold count, the folds' and output's directories and the data file).
#[derive(Debug, Args)]
pub struct OofArgs {
    /// simple_lstm, cnn_transformer or rwkv_ts.
    #[arg(long)]
    pub model: String,
    /// Seed of the folds and of the models (default: the configuration's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of folds (default: the configuration's `cv_folds`).
    #[arg(long)]
    pub k: Option<usize>,
    /// Directory of the persisted `fold_{i}.json` files (default `<artifacts_dir>/splits/v1`).
    #[arg(long, alias = "split-dir")]
    pub splits_dir: Option<PathBuf>,
    /// Output directory of `seed_<seed>.npy` (default `<artifacts_dir>/oof/<model>/v1`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Labelled data; default `<data_dir>/processed/train.parquet`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CNN-Transformer pointer heads.
    #[arg(long, value_enum, default_value = "auto")]
    pub pointers: Pointers,
    /// Pre-trained encoder (`moola pretrain`) to start every fold's model from (sets
    /// `<model>.train.encoder.path`).
    #[arg(long, alias = "load-pretrained-encoder")]
    pub encoder: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// `predict` arguments.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Saved model (`<path>.mpk` + `<path>.json`), e.g. `artifacts/models/simple_lstm/model`.
    #[arg(long)]
    pub model_path: PathBuf,
    /// Windows to classify (.parquet, .ts, .csv).
    #[arg(long)]
    pub input: PathBuf,
    /// Output CSV.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

/// `import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Reference checkpoint (`torch.save` dict with `model_state_dict`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output model path (`<path>.mpk` + `<path>.json`).
    #[arg(long)]
    pub output: PathBuf,
    /// Sequence length the model will run on.
    #[arg(long, default_value_t = InnerWindow::REFERENCE_LEN)]
    pub seq_len: usize,
    /// Model name (detected from the checkpoint when omitted).
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    overrides: Overrides,
}

impl Command {
    fn overrides(&self) -> &[String] {
        match self {
            Command::Doctor(o) => &o.opts,
            Command::Ingest(a) => &a.overrides.opts,
            Command::Describe(a) => &a.overrides.opts,
            Command::Train(a) => &a.overrides.opts,
            Command::Evaluate(a) => &a.overrides.opts,
            Command::Oof(a) => &a.overrides.opts,
            Command::Pretrain(a) | Command::PretrainBilstm(a) | Command::PretrainTcc(a) => {
                &a.overrides.opts
            }
            Command::Stack(a) => &a.overrides.opts,
            Command::Audit(a) => &a.overrides.opts,
            Command::Predict(a) => &a.overrides.opts,
            Command::Import(a) => &a.overrides.opts,
            Command::Bench(a) => &a.overrides.opts,
            Command::BenchmarkData(a) => &a.overrides.opts,
            Command::Plot(_) => &[],
        }
    }
}

/// The `moola` tool on `args` (the program name first), as the `moola` binary runs it: see
/// [`kiln::cli::run_tool`]. Returns the command's error; usage errors exit the process (status 2).
pub fn main_with(args: Vec<String>) -> Result<()> {
    kiln::cli::run_tool(args, run)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    // The global flags are overrides of their keys (after the command's own), so that a
    // configuration rebuilt for the data's size (`MoolaConfig::for_windows`) keeps them.
    let mut overrides = cli.command.overrides().to_vec();
    let mut set = |key: &str, value: String| overrides.extend([key.to_string(), value]);
    if let Some(preset) = cli.recipe {
        let name = serde_json::to_value(preset)?;
        set("recipe", name.as_str().unwrap_or_default().to_string());
    }
    if let Some(scaling) = cli.scaling {
        for key in crate::config::SCALING_KEYS {
            set(key, scaling.to_string());
        }
    }
    if let Some(p) = cli.runtime.precision {
        for model in crate::config::DEEP_MODELS {
            set(&format!("{model}.train.precision"), p.to_string());
        }
    }
    let cfg = MoolaConfig::load(cli.config_file.as_deref(), &overrides)?;
    let progress = cli.runtime.progress();
    let device = cli.runtime.device;
    let dist = cli.runtime.dist_config()?;
    if dist.is_some()
        && !matches!(
            cli.command,
            Command::Train(_)
                | Command::Bench(_)
                | Command::Pretrain(_)
                | Command::PretrainBilstm(_)
                | Command::PretrainTcc(_)
        )
    {
        bail!(
            "data-parallel training (--devices/--num-nodes/--strategy ddp) is available for \
             `train` and `pretrain`"
        );
    }
    let local_devices = cli.runtime.local_devices();
    let pretrain = |a: PretrainArgs, method: PretrainMethod, cfg: MoolaConfig| {
        kiln::backend::launch_workers(
            device,
            &local_devices,
            dist.clone(),
            PretrainJob {
                cfg,
                args: a,
                method,
                progress,
                virtual_ranks: cli.runtime.virtual_ranks,
            },
        )
    };
    match cli.command {
        Command::Doctor(_) => doctor(&cfg, device),
        Command::Plot(a) => {
            let monitor = a.monitor.as_deref().map(|m| (m, a.mode));
            kiln::plot::plot_runs(&a.runs, monitor, &a.out)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Ingest(a) => {
            let out = a
                .output
                .unwrap_or_else(|| cfg.paths.data_dir.join("processed/train.parquet"));
            let summary = data::ingest(&a.input, &out)?;
            println!("{summary}");
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Describe(a) => launch(device, Describe { cfg, args: a }),
        Command::Train(a) if crate::classical::CLASSICAL_MODELS.contains(&a.model.as_str()) => {
            if a.encoder.is_some() || a.resume.is_some() || dist.is_some() {
                bail!(
                    "--encoder, --resume and data-parallel flags apply to the deep models, not \
                     to {}",
                    a.model
                );
            }
            train_classical(&cfg, a)
        }
        Command::Train(a) => {
            // Refuse a missing encoder before anything is read or written.
            let (_, mut train) = cfg.model(&a.model)?;
            encoder_flags(&mut train, a.encoder.as_ref(), a.freeze_encoder);
            train.encoder.check_exists()?;
            kiln::backend::launch_workers(
                device,
                &local_devices,
                dist,
                TrainJob {
                    cfg,
                    args: a,
                    progress,
                    virtual_ranks: cli.runtime.virtual_ranks,
                },
            )
        }
        Command::Evaluate(a) => launch(
            device,
            EvaluateJob {
                cfg,
                args: a,
                progress,
            },
        ),
        Command::Oof(a) => launch(
            device,
            OofJob {
                cfg,
                args: a,
                progress,
            },
        ),
        Command::Pretrain(a) => {
            let method = a.method.context(
                "--method is required: masked-lstm (SimpleLSTM's encoder) or ts-tcc (the \
                 CNN-Transformer's)",
            )?;
            pretrain(a, method, cfg)
        }
        Command::PretrainBilstm(a) => pretrain(a, PretrainMethod::MaskedLstm, cfg),
        Command::PretrainTcc(a) => pretrain(a, PretrainMethod::TsTcc, cfg),
        Command::Stack(a) => stack(&cfg, a),
        Command::Audit(a) => audit(&cfg, a),
        Command::Predict(a) => launch(device, PredictJob { cfg, args: a }),
        Command::Import(a) => launch(device, ImportJob { args: a }),
        Command::Bench(a) => crate::bench::run(&cfg, &a, device, dist),
        Command::BenchmarkData(a) => launch(
            device,
            crate::benchmark::BenchmarkData {
                args: a,
                config_file: cli.config_file.clone(),
                overrides,
            },
        ),
    }
}

fn doctor(cfg: &MoolaConfig, device: DeviceKind) -> Result<()> {
    println!("moola {}", env!("CARGO_PKG_VERSION"));
    for line in kiln::backend::doctor_report(&device) {
        println!("{line}");
    }
    for (name, p) in [
        ("data_dir", &cfg.paths.data_dir),
        ("artifacts_dir", &cfg.paths.artifacts_dir),
    ] {
        println!(
            "{name}: {} ({})",
            p.display(),
            if p.exists() { "exists" } else { "missing" }
        );
    }
    println!("--- resolved configuration ---");
    print!("{}", serde_yaml::to_string(cfg)?);
    Ok(())
}

/// Applies the CNN-Transformer pointer policy: returns the spec to train and the data to use.
fn apply_pointer_policy(
    spec: ModelSpec,
    data: WindowSet,
    policy: Pointers,
) -> Result<(ModelSpec, WindowSet)> {
    let ModelSpec::CnnTransformer(mut c) = spec else {
        return Ok((spec, data));
    };
    let wanted = match policy {
        Pointers::On => true,
        Pointers::Off => false,
        Pointers::Auto => c.predict_pointers || data.expansion.is_some(),
    };
    c.predict_pointers = wanted;
    if !wanted {
        return Ok((ModelSpec::CnnTransformer(c), data));
    }
    let window = c
        .window
        .or(InnerWindow::default_for(data.seq_len))
        .with_context(|| {
            format!(
                "pointer heads need an inner window; the data has {} steps, set \
                 cnn_transformer.model.window for non-105-bar data",
                data.seq_len
            )
        })?;
    if data.expansion.is_none() {
        bail!("pointer heads need expansion_start/expansion_end columns in the data");
    }
    let (kept, _dropped) = data::validate_expansions(&data, window)?;
    tracing::info!("CNN-Transformer trains with start/end pointer heads (multi-task loss)");
    Ok((ModelSpec::CnnTransformer(c), kept))
}

struct Describe {
    cfg: MoolaConfig,
    args: DescribeArgs,
}

impl BackendJob for Describe {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let (mut spec, _) = self.cfg.model(&self.args.model)?;
        if let ModelSpec::CnnTransformer(c) = &mut spec {
            c.predict_pointers |= self.args.pointers;
        }
        let net = spec.init::<B::InnerBackend>(
            self.args.input_dim,
            self.args.n_classes,
            self.args.seq_len,
            &device,
        )?;
        println!("{net}");
        println!(
            "{}: {} parameters ({} classes, input dim {}, {} steps)",
            spec.name(),
            kiln::checkpoint::parameter_count(&net),
            self.args.n_classes,
            self.args.input_dim,
            self.args.seq_len
        );
        println!("hyper-parameters: {}", serde_json::to_string(&spec)?);
        Ok(())
    }
}

fn model_dir(cfg: &MoolaConfig, out: Option<PathBuf>, model: &str) -> PathBuf {
    out.unwrap_or_else(|| cfg.paths.artifacts_dir.join("models").join(model))
}

fn default_data(cfg: &MoolaConfig, data: Option<PathBuf>) -> PathBuf {
    data.unwrap_or_else(|| cfg.paths.data_dir.join("processed/train.parquet"))
}

/// The model's spec, and its labelled data with the pointer policy applied.
fn model_and_data(
    cfg: &MoolaConfig,
    model: &str,
    data: Option<PathBuf>,
    pointers: Pointers,
) -> Result<(ModelSpec, PathBuf, WindowSet)> {
    let (spec, _) = cfg.model(model)?;
    let data_path = default_data(cfg, data);
    let data = data::read_any(&data_path)?;
    let (spec, data) = apply_pointer_policy(spec, data, pointers)?;
    Ok((spec, data_path, data))
}

/// The `--encoder` / `--freeze-encoder` flags of a command, applied to a recipe.
fn encoder_flags(train: &mut TrainConfig, encoder: Option<&PathBuf>, freeze: Option<bool>) {
    if let Some(path) = encoder {
        train.encoder.path = Some(path.clone());
    }
    if let Some(freeze) = freeze {
        train.encoder.freeze = freeze;
    }
}

/// The recipe of `model` for training sets of `n` windows: the `recipe` preset resolved for
/// that size ([`MoolaConfig::for_windows`]), with the command's encoder flags.
fn recipe_for(
    cfg: &MoolaConfig,
    model: &str,
    n: usize,
    encoder: Option<&PathBuf>,
    freeze: Option<bool>,
) -> Result<TrainConfig> {
    let (_, mut train) = cfg.for_windows(n)?.model(model)?;
    encoder_flags(&mut train, encoder, freeze);
    Ok(train)
}

/// About how many windows each fold of a `k`-fold split of `n` trains on.
fn fold_train_size(n: usize, k: usize) -> usize {
    n - n / k.max(1)
}

/// One line saying how a recipe trains (printed by the training commands).
fn recipe_line(cfg: &MoolaConfig, train: &TrainConfig, n: usize) -> String {
    let preset = if cfg.uses_small_data(n) {
        format!("small-data recipe for {n} training windows")
    } else {
        serde_json::to_value(cfg.recipe)
            .ok()
            .and_then(|v| v.as_str().map(|s| format!("{s} recipe")))
            .unwrap_or_default()
    };
    let augment = if train.mixup_alpha > 0.0 || train.cutmix_prob > 0.0 {
        "mixup/CutMix"
    } else {
        "no mixup/CutMix"
    };
    format!(
        "{preset}: input scaling {}, batch {}, up to {} epochs, {} learning rate {}, {augment}, \
         {}temporal augmentation, validation split {}",
        train.scaling,
        train.batch_size,
        train.n_epochs,
        match train.lr_schedule {
            crate::train::LrSchedule::Constant => "constant",
            crate::train::LrSchedule::OneCycle => "one-cycle",
        },
        train.learning_rate,
        if train.temporal_aug.enabled {
            ""
        } else {
            "no "
        },
        train.val_split
    )
}

/// Encodes a labelled set with a trained label map.
fn encode(labels: &LabelMap, set: &WindowSet, what: &str) -> Result<Vec<usize>> {
    labels
        .encode(set.require_labels()?)
        .with_context(|| format!("{what} holds a label the model was not trained on"))
}

#[derive(Serialize)]
struct TrainReport<'a> {
    model: &'a str,
    data: String,
    test: String,
    fit: crate::classifier::FitReport,
    train: ClassificationReport,
    test_metrics: ClassificationReport,
}

#[derive(Clone)]
struct TrainJob {
    cfg: MoolaConfig,
    args: TrainArgs,
    progress: bool,
    virtual_ranks: usize,
}

impl kiln::backend::DistJob for TrainJob {
    type Output = ();
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        dist: Option<kiln::dist::Dist>,
    ) -> Result<()> {
        let TrainJob {
            cfg,
            args,
            progress,
            virtual_ranks,
        } = self;
        // Data-parallel workers other than rank 0 train and write nothing.
        let main = dist.as_ref().is_none_or(kiln::dist::Dist::is_main);
        let (spec, data_path, data) =
            model_and_data(&cfg, &args.model, args.data.clone(), args.pointers)?;
        let (train_set, test_set, test_name) = split_for_training(&cfg, &data_path, data, &args)?;
        let (_, test_set) = apply_pointer_policy(spec.clone(), test_set, args.pointers)?;
        // The recipe for this training set's size, with the encoder flags (written to
        // config.yaml as trained).
        let n = train_set.len();
        let mut cfg = cfg.for_windows(n)?;
        encoder_flags(
            cfg.train_mut(&args.model)?,
            args.encoder.as_ref(),
            args.freeze_encoder,
        );
        let (_, train_cfg) = cfg.model(&args.model)?;
        let out = model_dir(&cfg, args.out, &args.model);
        // A run that fails before its first checkpoint leaves no directory behind.
        let new_dir = main
            .then(|| kiln::trainer::RunDirGuard::new(&out))
            .flatten();
        if main {
            println!("{}", recipe_line(&cfg, &train_cfg, n));
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            kiln::config::dump_yaml(&cfg, out.join("config.yaml"))?;
        }
        let mut clf = Classifier::<B>::new(spec, train_cfg, device).with_run_options(RunOptions {
            run_dir: Some(out.clone()),
            resume_from: args.resume,
            progress,
            dist,
            virtual_ranks,
            divergence: cfg.divergence,
            ..RunOptions::default()
        });
        let fit = clf.fit(&train_set)?;
        if let Some(new_dir) = new_dir {
            new_dir.keep();
        }
        if !main {
            return Ok(());
        }
        let model_path = out.join("model");
        clf.save(&model_path)?;
        let labels = clf.labels()?;
        let train_metrics = ClassificationReport::from_probabilities(
            &encode(&labels, &train_set, "the training data")?,
            &clf.predict_proba(&train_set)?,
        )?;
        let test_metrics = ClassificationReport::from_probabilities(
            &encode(&labels, &test_set, "the test data")?,
            &clf.predict_proba(&test_set)?,
        )?;
        println!(
            "{}: {} epochs{}, {} parameters",
            args.model,
            fit.epochs,
            if fit.stopped_early {
                " (early stopped)"
            } else {
                ""
            },
            fit.num_params
        );
        println!(
            "train ({} windows): {}",
            train_set.len(),
            train_metrics.summary()
        );
        println!(
            "test  ({} windows): {}",
            test_set.len(),
            test_metrics.summary()
        );
        let report = TrainReport {
            model: &args.model,
            data: data_path.display().to_string(),
            test: test_name,
            fit,
            train: train_metrics,
            test_metrics,
        };
        kiln::io::write_json(out.join("report.json"), &report)?;
        println!(
            "saved {} and {}",
            model_path.with_extension("mpk").display(),
            out.join("report.json").display()
        );
        Ok(())
    }
}

#[derive(Serialize)]
struct CvMetrics<'a> {
    model: &'a str,
    data: String,
    seed: u64,
    cv_folds: usize,
    /// Mean over folds (weighted P/R/F1 like the reference's `evaluate`).
    accuracy: f64,
    precision: f64,
    recall: f64,
    f1: f64,
    fold_details: Vec<crate::cv::FoldDetail>,
    /// Metrics of the pooled out-of-fold probabilities (macro/weighted, ECE, Brier, log-loss).
    oof: ClassificationReport,
    classes: Vec<String>,
    timestamp_unix: u64,
}

struct EvaluateJob {
    cfg: MoolaConfig,
    args: EvaluateArgs,
    progress: bool,
}

impl BackendJob for EvaluateJob {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let EvaluateJob {
            cfg,
            args,
            progress,
        } = self;
        let (spec, data_path, data) = model_and_data(&cfg, &args.model, args.data, args.pointers)?;
        let n = fold_train_size(data.len(), cfg.cv_folds);
        let train_cfg = recipe_for(&cfg, &args.model, n, None, None)?;
        println!("{}", recipe_line(&cfg, &train_cfg, n));
        let cv = crate::cv::cross_validate::<B>(
            &spec,
            &train_cfg,
            &data,
            cfg.cv_folds,
            cfg.seed,
            &device,
            progress,
        )?;
        let metrics = CvMetrics {
            model: &args.model,
            data: data_path.display().to_string(),
            seed: cfg.seed,
            cv_folds: cfg.cv_folds,
            accuracy: cv.mean(|d| d.accuracy),
            precision: cv.mean(|d| d.precision),
            recall: cv.mean(|d| d.recall),
            f1: cv.mean(|d| d.f1),
            classes: cv.classes.clone(),
            oof: cv.oof_report.clone(),
            fold_details: cv.folds.clone(),
            timestamp_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let (oof, classes) = (cv.oof, cv.classes);
        let out = model_dir(&cfg, args.out, &args.model);
        let y = LabelMap::from_classes(classes.clone())?.encode(data.require_labels()?)?;
        kiln::plot::classification_pictures(
            &out,
            "",
            &format!("{} {}-fold CV, out-of-fold", args.model, cfg.cv_folds),
            &classes,
            &y,
            &oof,
        )?;
        kiln::io::write_json(out.join("metrics.json"), &metrics)?;
        kiln::io::write_atomic(
            out.join("confusion_matrix.csv"),
            metrics.oof.confusion_csv(&classes).as_bytes(),
        )?;
        write_proba_csv(
            &out.join("oof_probabilities.csv"),
            &data,
            &oof,
            &classes,
            None,
        )?;
        println!(
            "{} {}-fold CV: accuracy {:.4} | weighted P/R/F1 {:.4}/{:.4}/{:.4} (means over folds)",
            args.model,
            cfg.cv_folds,
            metrics.accuracy,
            metrics.precision,
            metrics.recall,
            metrics.f1
        );
        println!("out-of-fold: {}", metrics.oof.summary());
        println!(
            "wrote {}/{{metrics.json, confusion_matrix.csv, oof_probabilities.csv, \
             confusion_matrix.png, reliability.png}}",
            out.display()
        );
        Ok(())
    }
}

struct OofJob {
    cfg: MoolaConfig,
    args: OofArgs,
    progress: bool,
}

/// The model names with an OOF directory under `<artifacts_dir>/oof`, and `model`, sorted.
fn oof_models(artifacts_dir: &Path, model: &str) -> Vec<String> {
    let mut models: Vec<String> = std::fs::read_dir(artifacts_dir.join("oof"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    models.push(model.to_string());
    models.sort();
    models.dedup();
    models
}

impl BackendJob for OofJob {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let OofJob {
            mut cfg,
            args,
            progress,
        } = self;
        if let Some(seed) = args.seed {
            cfg.seed = seed;
        }
        let (seed, k) = (cfg.seed, args.k.unwrap_or(cfg.cv_folds));
        if k < 2 {
            bail!("--k must be at least 2, got {k}");
        }
        // A deep model (with its spec and recipe) or a classical baseline.
        let classical = crate::classical::CLASSICAL_MODELS.contains(&args.model.as_str());
        let deep = if classical {
            if args.encoder.is_some() {
                bail!(
                    "--encoder applies to the deep models, not to {}",
                    args.model
                );
            }
            None
        } else {
            let (spec, mut train_cfg) = cfg.model(&args.model)?;
            if let Some(path) = &args.encoder {
                train_cfg.encoder.path = Some(path.clone());
            }
            train_cfg.encoder.check_exists()?;
            Some((spec, train_cfg))
        };
        let data_path = default_data(&cfg, args.data);
        let all = data::read_any(&data_path)?;
        let (data, dropped) = crate::oof::oof_rows(all)?;
        if dropped > 0 {
            println!(
                "validate_expansions: {dropped} of {} windows dropped (invalid expansion indices)",
                data.len() + dropped
            );
        }
        let (deep, data) = match deep {
            Some((spec, _)) => {
                let (spec, data) = apply_pointer_policy(spec, data, args.pointers)?;
                // The recipe for the folds' training sets (the seed is this run's).
                let n = fold_train_size(data.len(), k);
                let train_cfg =
                    recipe_for(&cfg, &args.model, n, args.encoder.as_ref(), None)?.with_seed(seed);
                println!("{}", recipe_line(&cfg, &train_cfg, n));
                (Some((spec, train_cfg)), data)
            }
            None => (None, data),
        };
        let labels = LabelMap::fit(data.require_labels()?);
        let y = labels.encode(data.require_labels()?)?;
        let artifacts = cfg.paths.artifacts_dir.clone();
        let splits_dir = args
            .splits_dir
            .unwrap_or_else(|| artifacts.join(crate::splits::DEFAULT_SPLITS_SUBDIR));
        let (folds, source) = crate::splits::get_or_create_folds(&y, k, seed, &splits_dir)?;
        match &source {
            crate::splits::FoldSource::Loaded => {
                println!("folds: loaded {k} from {}", splits_dir.display());
            }
            crate::splits::FoldSource::Created => {
                println!("folds: wrote {k} to {}", splits_dir.display());
            }
            crate::splits::FoldSource::Regenerated(why) => println!("folds: {why}"),
        }
        let out_path = args
            .out
            .unwrap_or_else(|| crate::oof::oof_dir(&artifacts, &args.model))
            .join(crate::oof::npy_name(seed));
        println!(
            "{} OOF: {} windows, {} classes {:?}, {k} folds, seed {seed}",
            args.model,
            data.len(),
            labels.len(),
            labels.classes()
        );
        let classes = labels.classes().to_vec();
        let result = crate::oof::generate_oof_with(
            |_fold| match &deep {
                Some((spec, train_cfg)) => {
                    let clf = Classifier::<B>::new(spec.clone(), train_cfg.clone(), device.clone())
                        .with_run_options(RunOptions {
                            progress,
                            divergence: cfg.divergence,
                            ..RunOptions::default()
                        });
                    Ok(Box::new(clf) as Box<dyn crate::Estimator>)
                }
                None => Ok(Box::new(cfg.classical(&args.model)?) as Box<dyn crate::Estimator>),
            },
            &data,
            &folds,
            |r| {
                println!(
                    "fold {}/{}: {} train / {} validation | accuracy {:.4} | per class: {}",
                    r.fold + 1,
                    r.k,
                    r.train_size,
                    r.val_size,
                    r.accuracy,
                    crate::oof::format_per_class(&classes, &r.per_class_accuracy)
                );
            },
        )?;
        crate::oof::write_npy(&out_path, &result.oof)?;
        // The pictures beside the matrix: seed_<seed>_{confusion_matrix,reliability}.png.
        let stem = out_path
            .file_stem()
            .map_or_else(String::new, |s| format!("{}_", s.to_string_lossy()));
        let pictures = kiln::plot::classification_pictures(
            out_path.parent().unwrap_or(Path::new(".")),
            &stem,
            &format!("{} out-of-fold, seed {seed}", args.model),
            &result.classes,
            &y,
            &result.oof,
        )?;
        // The pooled OOF metrics next to the matrix (what `audit` compares the stack with).
        kiln::io::write_json(
            out_path.with_extension("json"),
            &serde_json::json!({
                "model": args.model,
                "seed": seed,
                "accuracy": result.accuracy,
                "report": result.report,
            }),
        )?;
        if !result.zero_rows.is_empty() {
            println!(
                "warning: {} rows have all-zero probabilities",
                result.zero_rows.len()
            );
        }
        println!(
            "out-of-fold accuracy {:.4} (per class: {})",
            result.accuracy,
            crate::oof::format_per_class(&result.classes, &result.per_class_accuracy)
        );
        println!("out-of-fold: {}", result.report.summary());
        println!(
            "wrote {} (float64 [{}, {}], columns {:?}), {} and {}",
            out_path.display(),
            result.oof.len(),
            result.classes.len(),
            result.classes,
            pictures[0].display(),
            pictures[1].display()
        );
        let (manifest_path, manifest) =
            crate::manifest::write_manifest(&artifacts, &oof_models(&artifacts, &args.model))?;
        println!(
            "wrote {} ({} artifacts hashed)",
            manifest_path.display(),
            manifest.artifacts.len()
        );
        Ok(())
    }
}

/// Writes `window_id,prediction,prob_class_0..` (+ pointer bars) atomically.
fn write_proba_csv(
    path: &Path,
    data: &WindowSet,
    proba: &[Vec<f64>],
    classes: &[String],
    pointers: Option<(&[usize], &[usize])>,
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["window_id".to_string(), "prediction".to_string()];
    header.extend((0..classes.len()).map(|k| format!("prob_class_{k}")));
    if pointers.is_some() {
        header.extend([
            "expansion_start_pred".to_string(),
            "expansion_end_pred".to_string(),
        ]);
    }
    w.write_record(&header)?;
    for (i, p) in proba.iter().enumerate() {
        let mut row = vec![
            data.ids[i].clone(),
            classes[kiln::metrics::argmax(p)].clone(),
        ];
        row.extend(p.iter().map(|v| format!("{v:.6}")));
        if let Some((s, e)) = pointers {
            row.extend([s[i].to_string(), e[i].to_string()]);
        }
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().context("cannot encode CSV")?;
    kiln::io::write_atomic(path, &bytes)
}

struct PredictJob {
    cfg: MoolaConfig,
    args: PredictArgs,
}

/// The JSON file of a saved classical model at `path` (the file itself or `<path>.json`), or
/// `None` when `path` is a deep model (its JSON sidecar is a model card with a `format` tag).
fn classical_model_file(path: &Path) -> Option<PathBuf> {
    let file = if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        crate::model::model_paths(path).1
    };
    let text = std::fs::read(&file).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let obj = value.as_object()?;
    (obj.contains_key("model") && !obj.contains_key("format")).then_some(file)
}

/// `moola predict` with a classical model file.
fn predict_classical(file: &Path, args: &PredictArgs) -> Result<()> {
    use crate::Estimator;
    let model = crate::classical::ClassicalModel::load(file)?;
    let data = data::read_any(&args.input)?;
    let proba = model.predict_proba(&data)?;
    let classes = model.classes()?;
    write_proba_csv(&args.output, &data, &proba, &classes, None)?;
    println!(
        "wrote {} predictions of {} ({}) to {}",
        data.len(),
        model.name(),
        file.display(),
        args.output.display()
    );
    println!("columns prob_class_k follow the class order {classes:?}");
    if data.labels.is_some() {
        let labels = LabelMap::from_classes(classes)?;
        let y = encode(&labels, &data, "the input")?;
        println!(
            "input is labelled: {}",
            ClassificationReport::from_probabilities(&y, &proba)?.summary()
        );
    }
    Ok(())
}

/// `moola train` with a classical model (`logreg`, `rf`, `xgb`, `minirocket`): fit on the
/// data (less the test split), save `<out>/model.json`, report train and test metrics.
fn train_classical(cfg: &MoolaConfig, args: TrainArgs) -> Result<()> {
    use crate::Estimator;
    let data_path = default_data(cfg, args.data.clone());
    let data = data::read_any(&data_path)?;
    let (train_set, test_set, test_name) = split_for_training(cfg, &data_path, data, &args)?;
    let mut model = cfg.classical(&args.model)?;
    let started = std::time::Instant::now();
    model.fit(&train_set)?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let out = model_dir(cfg, args.out, &args.model);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    kiln::config::dump_yaml(cfg, out.join("config.yaml"))?;
    let model_path = out.join("model.json");
    model.save(&model_path)?;
    let labels = LabelMap::from_classes(model.classes()?)?;
    let train_metrics = ClassificationReport::from_probabilities(
        &encode(&labels, &train_set, "the training data")?,
        &model.predict_proba(&train_set)?,
    )?;
    let test_metrics = ClassificationReport::from_probabilities(
        &encode(&labels, &test_set, "the test data")?,
        &model.predict_proba(&test_set)?,
    )?;
    println!(
        "{}: fitted on {} windows in {fit_seconds:.2} s",
        args.model,
        train_set.len()
    );
    println!(
        "train ({} windows): {}",
        train_set.len(),
        train_metrics.summary()
    );
    println!(
        "test  ({} windows): {}",
        test_set.len(),
        test_metrics.summary()
    );
    kiln::io::write_json(
        out.join("report.json"),
        &serde_json::json!({
            "model": args.model,
            "data": data_path.display().to_string(),
            "test": test_name,
            "fit_seconds": fit_seconds,
            "train": train_metrics,
            "test_metrics": test_metrics,
        }),
    )?;
    println!(
        "saved {} and {}",
        model_path.display(),
        out.join("report.json").display()
    );
    Ok(())
}

/// The training and test sets of `train`: the `--test` file, or a stratified `test_split` of
/// the data.
fn split_for_training(
    cfg: &MoolaConfig,
    data_path: &Path,
    data: WindowSet,
    args: &TrainArgs,
) -> Result<(WindowSet, WindowSet, String)> {
    Ok(match &args.test {
        Some(p) => (data, data::read_any(p)?, p.display().to_string()),
        None => {
            let y = LabelMap::fit(data.require_labels()?).encode(data.require_labels()?)?;
            let mut rng = kiln::seed::rng(cfg.seed, "test_split", 0);
            let (tr, te) = kiln::data::stratified_split(&y, cfg.test_split, &mut rng)?;
            (
                data.select(&tr),
                data.select(&te),
                format!(
                    "{} ({:.0}% stratified hold-out)",
                    data_path.display(),
                    cfg.test_split * 100.0
                ),
            )
        }
    })
}

impl BackendJob for PredictJob {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let _ = &self.cfg;
        if let Some(file) = classical_model_file(&self.args.model_path) {
            return predict_classical(&file, &self.args);
        }
        let clf = Classifier::<B>::load(&self.args.model_path, Default::default(), device)?;
        let data = data::read_any(&self.args.input)?;
        let card = clf.card().context("loaded model has no card")?.clone();
        let has_pointers = matches!(&card.spec, ModelSpec::CnnTransformer(c) if c.predict_pointers);
        let (proba, pointers) = if has_pointers {
            let p = clf.predict_with_pointers(&data)?;
            let abs = |v: &[usize]| v.iter().map(|r| r + p.window.start).collect::<Vec<_>>();
            (
                p.probabilities.clone(),
                Some((abs(&p.start_predictions), abs(&p.end_predictions))),
            )
        } else {
            (clf.predict_proba(&data)?, None)
        };
        write_proba_csv(
            &self.args.output,
            &data,
            &proba,
            &card.classes,
            pointers.as_ref().map(|(s, e)| (s.as_slice(), e.as_slice())),
        )?;
        println!(
            "wrote {} predictions to {}",
            data.len(),
            self.args.output.display()
        );
        println!(
            "columns prob_class_k follow the class order {:?}",
            card.classes
        );
        if data.labels.is_some() {
            let labels = clf.labels()?;
            let y = encode(&labels, &data, "the input")?;
            println!(
                "input is labelled: {}",
                ClassificationReport::from_probabilities(&y, &proba)?.summary()
            );
        }
        Ok(())
    }
}

struct ImportJob {
    args: ImportArgs,
}

impl BackendJob for ImportJob {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let options = crate::import::ImportOptions {
            model: self.args.model.clone(),
            seq_len: self.args.seq_len,
        };
        let (net, card) = crate::import::import_torch_checkpoint_with::<B::InnerBackend>(
            &self.args.checkpoint,
            &options,
            &device,
        )?;
        crate::model::save(&net, &card, &self.args.output)?;
        println!(
            "imported {} ({}, {} classes {:?}, input dim {}, {} parameters) -> {}",
            self.args.checkpoint.display(),
            card.spec.name(),
            card.n_classes,
            card.classes,
            card.input_dim,
            kiln::checkpoint::parameter_count(&net),
            crate::model::model_paths(&self.args.output).0.display()
        );
        Ok(())
    }
}

#[derive(Clone)]
struct PretrainJob {
    cfg: MoolaConfig,
    args: PretrainArgs,
    method: PretrainMethod,
    progress: bool,
    virtual_ranks: usize,
}

impl kiln::backend::DistJob for PretrainJob {
    type Output = ();
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        dist: Option<kiln::dist::Dist>,
    ) -> Result<()> {
        use crate::pretrain::{masked_lstm, ts_tcc};
        let PretrainJob {
            cfg,
            args,
            method,
            progress,
            virtual_ranks,
        } = self;
        let name = match method {
            PretrainMethod::MaskedLstm => "masked_lstm",
            PretrainMethod::TsTcc => "ts_tcc",
        };
        if method == PretrainMethod::TsTcc
            && (args.mask_ratio.is_some()
                || args.mask_strategy.is_some()
                || args.patch_size.is_some()
                || args.hidden_dim.is_some()
                || args.augment)
        {
            bail!(
                "--mask-ratio, --mask-strategy, --patch-size, --hidden-dim and --augment are masked-lstm options"
            );
        }
        let data_path = default_data(&cfg, args.data);
        let mut data = data::read_any(&data_path)?;
        let out = args
            .out
            .unwrap_or_else(|| cfg.paths.artifacts_dir.join("encoders").join(name));
        // Data-parallel workers other than rank 0 train and write nothing.
        let main = dist.as_ref().is_none_or(kiln::dist::Dist::is_main);
        // A run that fails before its first checkpoint leaves no directory behind (the guard
        // drops with this function: a finished run has its checkpoints, and is kept).
        let _new_dir = main
            .then(|| kiln::trainer::RunDirGuard::new(&out))
            .flatten();
        if main {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            kiln::config::dump_yaml(&cfg, out.join("config.yaml"))?;
        }
        let run = RunOptions {
            run_dir: Some(out.clone()),
            progress,
            dist,
            virtual_ranks,
            divergence: cfg.divergence,
            ..RunOptions::default()
        };
        let encoder_path = out.join("encoder");
        match method {
            PretrainMethod::MaskedLstm => {
                let mut c = cfg.pretrain.masked_lstm.clone();
                c.seed = cfg.seed;
                c.n_epochs = args.epochs.unwrap_or(c.n_epochs);
                c.patience = args.patience.unwrap_or(c.patience);
                c.batch_size = args.batch_size.unwrap_or(c.batch_size);
                c.mask_ratio = args.mask_ratio.unwrap_or(c.mask_ratio);
                c.mask_strategy = args.mask_strategy.unwrap_or(c.mask_strategy);
                c.patch_size = args.patch_size.unwrap_or(c.patch_size);
                c.hidden_dim = args.hidden_dim.unwrap_or(c.hidden_dim);
                if args.augment {
                    let mut rng = kiln::seed::rng(cfg.seed, "pretrain_augment", 0);
                    data = masked_lstm::TimeSeriesAugmenter::default().augment_dataset(
                        &data,
                        args.num_augmentations,
                        &mut rng,
                    );
                }
                println!(
                    "masked-lstm pre-training on {} windows of {}×{} from {}",
                    data.len(),
                    data.seq_len,
                    data.n_features,
                    data_path.display()
                );
                let done = masked_lstm::pretrain::<B>(&c, &data, &device, &run)?;
                if !main {
                    return Ok(());
                }
                done.save_encoder(&encoder_path)?;
                let best = done.history.best().map_or_else(
                    || "no validation".to_string(),
                    |(e, v)| format!("best val loss {v:.5} at epoch {e}"),
                );
                println!(
                    "{} epochs{}, {best}",
                    done.epochs,
                    if done.stopped_early {
                        " (early stop)"
                    } else {
                        ""
                    }
                );
            }
            PretrainMethod::TsTcc => {
                let mut c = cfg.pretrain.ts_tcc.clone();
                c.seed = cfg.seed;
                c.n_epochs = args.epochs.unwrap_or(c.n_epochs);
                c.early_stopping_patience = args.patience.unwrap_or(c.early_stopping_patience);
                c.batch_size = args.batch_size.unwrap_or(c.batch_size);
                println!(
                    "ts-tcc pre-training on {} windows of {}×{} from {}",
                    data.len(),
                    data.seq_len,
                    data.n_features,
                    data_path.display()
                );
                let done = ts_tcc::pretrain::<B>(&c, &data, &device, &run)?;
                if !main {
                    return Ok(());
                }
                done.save_encoder(&encoder_path)?;
                let best = done
                    .history
                    .val_loss
                    .get(done.history.best_epoch)
                    .map_or_else(
                        || "no validation".to_string(),
                        |v| {
                            format!(
                                "best val loss {v:.5} at epoch {}{}",
                                done.history.best_epoch,
                                if done.restored_best {
                                    " (restored)"
                                } else {
                                    ""
                                }
                            )
                        },
                    );
                println!(
                    "{} epochs{}, {best}",
                    done.epochs,
                    if done.stopped_early {
                        " (early stop)"
                    } else {
                        ""
                    }
                );
            }
        }
        println!(
            "wrote {}.{{mpk,json}} and {}/history.json",
            encoder_path.display(),
            out.display()
        );
        Ok(())
    }
}

/// `moola stack`: the stacking meta-learner on the OOF files of one seed.
fn stack(cfg: &MoolaConfig, args: StackArgs) -> Result<()> {
    let seed = args.seed.unwrap_or(cfg.seed);
    let artifacts = &cfg.paths.artifacts_dir;
    let data_path = default_data(cfg, args.data);
    // The rows the OOF files hold (the OOF pipeline drops windows with invalid expansions).
    let (data, _) = crate::oof::oof_rows(data::read_any(&data_path)?)?;
    let labels = data.require_labels()?.to_vec();
    let y = LabelMap::fit(&labels).encode(&labels)?;
    let splits_dir = args
        .splits_dir
        .unwrap_or_else(|| artifacts.join(crate::splits::DEFAULT_SPLITS_SUBDIR));
    let stored = crate::splits::read_folds(&splits_dir).with_context(|| {
        format!(
            "the stack needs the folds of the OOF files: run `moola oof` first (no folds in {})",
            splits_dir.display()
        )
    })?;
    let folds = stored.folds;
    crate::splits::validate_folds(&folds, y.len(), |i| {
        crate::splits::fold_path(&splits_dir, i)
            .display()
            .to_string()
    })
    .context("the folds do not match the data: were the OOF files made from another file?")?;
    let pairs: Vec<(Vec<usize>, Vec<usize>)> = folds
        .iter()
        .map(|f| (f.train_idx.clone(), f.val_idx.clone()))
        .collect();
    let models: Vec<&str> = if args.models.is_empty() {
        crate::stack::STACK_BASE_MODELS.to_vec()
    } else {
        args.models.iter().map(String::as_str).collect()
    };
    let bases = crate::stack::load_oof_bases(artifacts, seed, &models)?;
    if bases.is_empty() {
        bail!(
            "no OOF files for seed {seed} under {}: run `moola oof --model M` for the base models",
            artifacts.join("oof").display()
        );
    }
    println!(
        "stacking {} base models ({}) on {} windows, {} folds, seed {seed}",
        bases.len(),
        bases
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        labels.len(),
        pairs.len()
    );
    let config = crate::stack::StackConfig::with_seed(seed);
    let (model, report) = crate::stack::train_stack(&bases, &labels, &pairs, &config)?;
    let dir = crate::stack::stack_dir(artifacts);
    model.save(&dir.join("stack.json"))?;
    kiln::io::write_json(dir.join("metrics.json"), &report)?;
    println!(
        "stack: accuracy {:.4}, macro F1 {:.4} (means over folds), ECE {:.4}, log-loss {:.4}",
        report.accuracy, report.f1, report.ece, report.logloss
    );
    let names: Vec<String> = bases.iter().map(|b| b.name.clone()).collect();
    let (manifest_path, _) = crate::manifest::write_manifest(artifacts, &names)?;
    println!(
        "wrote {}/{{stack.json, metrics.json}} and {}",
        dir.display(),
        manifest_path.display()
    );
    Ok(())
}

/// `moola audit`: the acceptance rule on `models/stack/metrics.json`; exit status 1 on failure.
fn audit(cfg: &MoolaConfig, args: AuditArgs) -> Result<()> {
    let artifacts = &cfg.paths.artifacts_dir;
    let stack_metrics = crate::stack::stack_dir(artifacts).join("metrics.json");
    if !stack_metrics.is_file() {
        bail!(
            "no stack metrics at {}: run `moola stack` first",
            stack_metrics.display()
        );
    }
    let options = crate::stack::AuditOptions {
        comparison: if args.reference_f1 {
            crate::stack::F1Comparison::ReferenceWeighted
        } else {
            crate::stack::F1Comparison::MacroVsMacro
        },
        ..Default::default()
    };
    let verdict = crate::stack::audit_files(
        &stack_metrics,
        &crate::stack::base_metrics_paths(artifacts, cfg.seed),
        &options,
    )?;
    println!("{verdict}");
    if !verdict.passed {
        bail!("the stack fails the acceptance rule");
    }
    Ok(())
}
