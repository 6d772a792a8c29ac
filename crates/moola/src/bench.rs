//! `moola bench`: the time of one training step of each model at the reference batch size,
//! next to the same step in PyTorch (`tools/bench/moola_step.py`, run when `torch` imports).
//!
//! A step is the full recipe step: temporal augmentation, mixup/CutMix, forward, focal loss
//! (multi-task loss for the pointer model), backward and the AdamW update, on a batch of
//! 105×4 raw-price windows (batch 512 by default). Timings are medians over `--steps` steps after
//! `--warmup` steps; the ratio is Burn time / PyTorch time (lower is better, 1.0 = parity).
//! `--precisions 32,16-mixed,bf16-mixed` times each mode (kiln's autocast and loss scaler) and
//! prints the loss after the timed steps next to f32's.
//!
//! `--pretrain masked-lstm,ts-tcc` also times one pre-training epoch of each pre-trainer (the
//! full loop of `moola pretrain`: masking or two augmented views, forward, loss, backward,
//! clipping, AdamW, and validation on 10% of the windows) on `--pretrain-windows` synthetic
//! windows, next to the same epoch in PyTorch (`tools/bench/moola_pretrain.py`). Epoch times
//! are kiln's `epoch_seconds`; the first epoch is a warm-up when `--pretrain-epochs` > 1.
//! `--models ''` skips the classifier steps.
//!
//! `--nodes 2` times data-parallel training: the same global batch in one process, then split
//! over two worker processes on 127.0.0.1 (kiln's `ddp` strategy on burn-collective), and prints
//! the samples/s of both side by side with the all-reduce share of the step time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::amp::{Precision, PrecisionSetting};
use kiln::backend::{DeviceKind, DistJob, launch_workers};
use kiln::dist::{Dist, DistConfig};
use kiln::step::Stepper;
use kiln::trainer::{EpochInfo, Task};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::MoolaConfig;
use crate::data::WindowSet;
use crate::model::{InnerWindow, ModelSpec};
use crate::pretrain::PretrainMethod;
use crate::train::Session;
use kiln::cli::Overrides;

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models to time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "simple_lstm,cnn_transformer,rwkv_ts"
    )]
    pub models: Vec<String>,
    /// Batch size (the reference's is 512).
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Timed steps per model (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also time every other compiled CPU backend (flex and ndarray).
    #[arg(long)]
    pub all_cpu_backends: bool,
    /// Precisions to time (default: each model's configured one on this device).
    #[arg(long, value_delimiter = ',')]
    pub precisions: Vec<Precision>,
    /// Also time data-parallel training over this many local worker processes (2 or more).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Also time one pre-training epoch of these pre-trainers (`masked-lstm`, `ts-tcc`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub pretrain: Vec<PretrainMethod>,
    /// Windows of the timed pre-training epochs (10% of them validate).
    #[arg(long, default_value_t = 1024)]
    pub pretrain_windows: usize,
    /// Pre-training epochs to run; the median of all but the first (a warm-up) is reported.
    #[arg(long, default_value_t = 2)]
    pub pretrain_epochs: usize,
    /// Internal: run as one data-parallel bench worker and write its timings here.
    #[arg(long, hide = true)]
    pub worker_json: Option<PathBuf>,
    #[command(flatten)]
    pub torch: kiln::bench::TorchSide,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// Model name (`cnn_transformer+pointers` for the multi-task variant).
    pub model: String,
    /// Backend / framework.
    pub backend: String,
    /// Median step time in milliseconds.
    pub median_ms: f64,
    /// All timed steps.
    pub steps_ms: Vec<f64>,
    /// Precision (`32`, `16-mixed`, `bf16-mixed`).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Loss of the last timed step (every step trains on the same batch).
    #[serde(default)]
    pub final_loss: Option<f64>,
    /// Median share of the step spent in gradient all-reduce and buffer broadcast (DDP).
    #[serde(default)]
    pub sync_share: Option<f64>,
    /// Peak resident memory of the whole process that measured this row (bytes).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

fn f32_name() -> String {
    "32".into()
}

/// What [`TimeSteps`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTimes {
    /// Step times (ms).
    pub steps_ms: Vec<f64>,
    /// All-reduce + broadcast time per step (ms).
    pub sync_ms: Vec<f64>,
    /// Loss of the last step.
    pub final_loss: f64,
}

/// A labelled batch of raw-price-like windows (random walks around 20,000 like NQ futures).
pub fn synthetic_windows(n: usize, seed: u64) -> WindowSet {
    let mut rng = kiln::seed::rng(seed, "bench-data", 0);
    let (t, f) = (InnerWindow::REFERENCE_LEN, 4);
    let mut x = Vec::with_capacity(n * t * f);
    let mut labels = Vec::with_capacity(n);
    let mut expansion = Vec::with_capacity(n);
    for i in 0..n {
        let mut price = 19_800.0f32 + rng.random_range(-500.0..500.0);
        for _ in 0..t {
            let open = price;
            price += rng.random_range(-20.0..20.0);
            let high = open.max(price) + rng.random_range(0.0..5.0);
            let low = open.min(price) - rng.random_range(0.0..5.0);
            x.extend([open, high, low, price]);
        }
        labels.push(
            if i % 2 == 0 {
                "consolidation"
            } else {
                "retracement"
            }
            .to_string(),
        );
        let s = rng.random_range(30..60);
        expansion.push(Some((s as i64, (s + rng.random_range(1..15)) as i64)));
    }
    WindowSet {
        ids: (0..n).map(|i| i.to_string()).collect(),
        x,
        seq_len: t,
        n_features: f,
        labels: Some(labels),
        expansion: Some(expansion),
    }
}

#[derive(Clone)]
struct TimeSteps {
    spec: ModelSpec,
    config: crate::train::TrainConfig,
    data: WindowSet,
    steps: usize,
    warmup: usize,
    precision: Precision,
}

impl TimeSteps {
    fn new(
        spec: &ModelSpec,
        config: &crate::train::TrainConfig,
        data: &WindowSet,
        args: &BenchArgs,
        precision: Precision,
    ) -> Self {
        Self {
            spec: spec.clone(),
            config: config.clone(),
            data: data.clone(),
            steps: args.steps,
            warmup: args.warmup,
            precision,
        }
    }
}

impl DistJob for TimeSteps {
    type Output = StepTimes;
    fn run<B: AutodiffBackend>(self, device: B::Device, dist: Option<Dist>) -> Result<StepTimes> {
        let mut config = self.config;
        config.val_split = 0.0;
        config.batch_size = self.data.len();
        let Session {
            mut task,
            mut net,
            mut optim,
            ..
        } = Session::<B>::new(&self.spec, &config, &self.data, &device)?;
        let (rank, world_size) = dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world_size()));
        let mut stepper = Stepper::new(self.precision);
        if let Some(d) = dist {
            stepper = stepper.with_dist(d);
        }
        let batch: Vec<usize> = (0..self.data.len()).collect();
        let mut times = StepTimes {
            steps_ms: Vec::new(),
            sync_ms: Vec::new(),
            final_loss: f64::NAN,
        };
        for step in 0..self.warmup + self.steps {
            let info = EpochInfo {
                epoch: 0,
                max_epochs: 1,
                global_step: step,
                seed: config.seed,
                rank,
                world_size,
            };
            let start = Instant::now();
            let synced = stepper.sync_seconds();
            let out = stepper.forward(|| task.training_step(&net, batch.clone(), &info))?;
            let loss = out.loss.clone();
            (net, _) = stepper.step(net, out.loss, &mut optim)?;
            // Wait for queued device work (asynchronous backends) before stopping the clock.
            B::sync(&device).map_err(|e| anyhow::anyhow!("backend error: {e:?}"))?;
            if step >= self.warmup {
                times.steps_ms.push(start.elapsed().as_secs_f64() * 1e3);
                times.sync_ms.push((stepper.sync_seconds() - synced) * 1e3);
                times.final_loss = loss.into_scalar().elem::<f64>();
            }
        }
        Ok(times)
    }
}

/// One pre-training run of `epochs` epochs whose epoch times are the measurement.
#[derive(Clone)]
struct TimePretrain {
    method: PretrainMethod,
    config: MoolaConfig,
    data: WindowSet,
    epochs: usize,
    precision: Precision,
}

impl DistJob for TimePretrain {
    type Output = StepTimes;
    fn run<B: AutodiffBackend>(self, device: B::Device, _dist: Option<Dist>) -> Result<StepTimes> {
        let run = crate::run::RunOptions::default();
        let precision = PrecisionSetting::Fixed(self.precision);
        let (rows, final_loss) = match self.method {
            PretrainMethod::MaskedLstm => {
                let mut c = self.config.pretrain.masked_lstm.clone();
                c.n_epochs = self.epochs;
                c.patience = self.epochs + 1;
                c.precision = precision;
                c.seed = self.config.seed;
                let out =
                    crate::pretrain::masked_lstm::pretrain::<B>(&c, &self.data, &device, &run)?;
                let last = out.history.train_loss.last().copied();
                (out.metrics, last)
            }
            PretrainMethod::TsTcc => {
                let mut c = self.config.pretrain.ts_tcc.clone();
                c.n_epochs = self.epochs;
                c.early_stopping_patience = self.epochs + 1;
                c.precision = precision;
                c.seed = self.config.seed;
                let out = crate::pretrain::ts_tcc::pretrain::<B>(&c, &self.data, &device, &run)?;
                let last = out.history.train_loss.last().copied();
                (out.metrics, last)
            }
        };
        let seconds: Vec<f64> = rows
            .iter()
            .filter_map(|(_, r)| r.get("epoch_seconds").copied())
            .collect();
        // The first epoch warms allocators and caches up, unless it is the only one.
        let timed = if seconds.len() > 1 {
            &seconds[1..]
        } else {
            &seconds[..]
        };
        Ok(StepTimes {
            steps_ms: timed.iter().map(|s| s * 1e3).collect(),
            sync_ms: vec![0.0; timed.len()],
            final_loss: final_loss.unwrap_or(f64::NAN),
        })
    }
}

/// A pre-trainer's configured precision and batch size (the PyTorch side uses the same batch).
fn pretrain_settings(cfg: &MoolaConfig, method: PretrainMethod) -> (PrecisionSetting, usize) {
    match method {
        PretrainMethod::MaskedLstm => (
            cfg.pretrain.masked_lstm.precision,
            cfg.pretrain.masked_lstm.batch_size,
        ),
        PretrainMethod::TsTcc => (
            cfg.pretrain.ts_tcc.precision,
            cfg.pretrain.ts_tcc.batch_size,
        ),
    }
}

/// Rejects `--pretrain-*` values that cannot be timed (before any timing starts).
fn check_pretrain_args(args: &BenchArgs) -> Result<()> {
    if args.pretrain.is_empty() {
        return Ok(());
    }
    if args.pretrain_windows < 20 {
        bail!(
            "--pretrain-windows {} is too few (10% validate; at least 20)",
            args.pretrain_windows
        );
    }
    if args.pretrain_epochs == 0 {
        bail!("--pretrain-epochs must be at least 1");
    }
    Ok(())
}

/// Times one pre-training epoch of every `--pretrain` method, both sides.
fn time_pretrainers(
    cfg: &MoolaConfig,
    args: &BenchArgs,
    device: DeviceKind,
) -> Result<(Vec<Timing>, Vec<Timing>)> {
    let data = synthetic_windows(args.pretrain_windows, cfg.seed);
    let mut rows = Vec::new();
    let mut torch = Vec::new();
    for &method in &args.pretrain {
        let (precision, batch_size) = pretrain_settings(cfg, method);
        let precision = precision.resolve(device);
        eprintln!(
            "timing {} pre-training epochs of {method} on burn-{} ({} windows) ...",
            args.pretrain_epochs,
            device.resolve(),
            args.pretrain_windows
        );
        let job = TimePretrain {
            method,
            config: cfg.clone(),
            data: data.clone(),
            epochs: args.pretrain_epochs,
            precision,
        };
        rows.push(time_model(
            &format!("pretrain:{method}"),
            device,
            (job, precision),
            None,
        )?);
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/moola_pretrain.py");
        torch.extend(
            args.torch
                .run::<Vec<Timing>>(
                    &script,
                    &[
                        ("--methods", method.to_string()),
                        ("--windows", args.pretrain_windows.to_string()),
                        ("--epochs", args.pretrain_epochs.to_string()),
                        ("--batch-size", batch_size.to_string()),
                    ],
                )
                .unwrap_or_default(),
        );
    }
    Ok((rows, torch))
}

fn variants(
    cfg: &MoolaConfig,
    models: &[String],
) -> Result<Vec<(String, ModelSpec, crate::train::TrainConfig)>> {
    let mut out = Vec::new();
    for m in models.iter().filter(|m| !m.is_empty()) {
        let (name, pointers) = match m.strip_suffix("+pointers") {
            Some(base) => (base, true),
            None => (m.as_str(), false),
        };
        let (mut spec, train) = cfg.model(name)?;
        if let ModelSpec::CnnTransformer(c) = &mut spec {
            c.predict_pointers = pointers;
        }
        out.push((m.clone(), spec, train));
    }
    Ok(out)
}

fn torch_timings(args: &BenchArgs) -> Option<Vec<Timing>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/moola_step.py");
    args.torch.run(
        &script,
        &[
            ("--models", args.models.join(",")),
            ("--batch-size", args.batch_size.to_string()),
            ("--steps", args.steps.to_string()),
            ("--warmup", args.warmup.to_string()),
        ],
    )
}

/// Runs the benchmark and prints the table.
pub fn run(
    cfg: &MoolaConfig,
    args: &BenchArgs,
    device: DeviceKind,
    dist: Option<DistConfig>,
) -> Result<()> {
    if let Some(path) = &args.worker_json {
        return run_worker(cfg, args, device, dist, path);
    }
    if dist.is_some() {
        bail!("bench runs its own workers: use --nodes N instead of --num-nodes/--devices");
    }
    check_pretrain_args(args)?;
    let variants = variants(cfg, &args.models)?;
    let classifiers = !variants.is_empty();
    let data = synthetic_windows(args.batch_size, cfg.seed);
    let mut devices = vec![device.resolve()];
    if args.all_cpu_backends {
        for d in [DeviceKind::Flex, DeviceKind::NdArray] {
            let name = d.to_string();
            if kiln::backend::compiled_backends().contains(&name.as_str()) && !devices.contains(&d)
            {
                devices.push(d);
            }
        }
    }
    let mut rows: Vec<Timing> = Vec::new();
    for (name, spec, train) in variants {
        for precision in precisions(args, &train, device) {
            for &d in &devices {
                eprintln!("timing {name} on burn-{d} in precision {precision} ...");
                let job = TimeSteps::new(&spec, &train, &data, args, precision);
                rows.push(time_model(&name, d, (job, precision), None)?);
            }
        }
    }
    let mut torch = if classifiers {
        torch_timings(args).unwrap_or_default()
    } else {
        Vec::new()
    };
    if !args.pretrain.is_empty() {
        let (burn_rows, torch_rows) = time_pretrainers(cfg, args, device)?;
        rows.extend(burn_rows);
        torch.extend(torch_rows);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if classifiers {
        println!(
            "one training step, batch {} × 105 × 4, median of {} steps ({threads} CPU threads)",
            args.batch_size, args.steps,
        );
    }
    if !args.pretrain.is_empty() {
        println!(
            "pretrain:* rows: one pre-training epoch (ms/epoch) over {} windows, validation \
             included ({threads} CPU threads)",
            args.pretrain_windows
        );
    }
    println!(
        "{:<26} {:<14} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "model", "backend", "precision", "loss", "ms/step", "torch ms", "ratio"
    );
    for r in &rows {
        let t = torch
            .iter()
            .find(|t| t.model == r.model && t.precision == r.precision)
            .map(|t| t.median_ms);
        println!(
            "{:<26} {:<14} {:>10} {:>10} {:>12.1} {:>12} {:>10}",
            r.model,
            r.backend,
            r.precision,
            r.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.median_ms,
            t.map_or("-".into(), |v| format!("{v:.1}")),
            t.map_or("-".into(), |v| format!("{:.2}x", r.median_ms / v)),
        );
    }
    // Each PyTorch script runs its models in one process: the peak is the largest reported.
    let torch_peak = torch.iter().filter_map(|r| r.peak_rss_bytes).max();
    println!("{}", kiln::bench::peak_memory_line(torch_peak));
    if args.nodes > 1 {
        rows.extend(run_nodes(args, &rows)?);
    }
    if let Some(path) = &args.torch.json {
        let all: Vec<&Timing> = rows.iter().chain(&torch).collect();
        kiln::io::write_json(path, &all)?;
    }
    Ok(())
}

/// Runs `job` on `device` (as one data-parallel worker with `dist`) and summarises its timings.
fn time_model<J: DistJob<Output = StepTimes>>(
    name: &str,
    device: DeviceKind,
    (job, precision): (J, Precision),
    dist: Option<DistConfig>,
) -> Result<Timing> {
    let parallel = dist.is_some();
    let times = launch_workers(device, &[], dist, job)?;
    let share: Vec<f64> = times
        .steps_ms
        .iter()
        .zip(&times.sync_ms)
        .map(|(t, s)| s / t.max(1e-9))
        .collect();
    Ok(Timing {
        model: name.to_string(),
        backend: format!("burn-{}", device.resolve()),
        median_ms: kiln::bench::median(&times.steps_ms),
        steps_ms: times.steps_ms,
        precision: precision.to_string(),
        final_loss: Some(times.final_loss),
        sync_share: parallel.then(|| kiln::bench::median(&share)),
        peak_rss_bytes: kiln::bench::peak_rss_bytes(),
    })
}

/// The precisions to time for a model.
fn precisions(
    args: &BenchArgs,
    train: &crate::train::TrainConfig,
    device: DeviceKind,
) -> Vec<Precision> {
    if args.precisions.is_empty() {
        vec![train.precision.resolve(device)]
    } else {
        args.precisions.clone()
    }
}

/// A data-parallel bench worker: times its share of the global batch and writes JSON.
fn run_worker(
    cfg: &MoolaConfig,
    args: &BenchArgs,
    device: DeviceKind,
    dist: Option<DistConfig>,
    path: &Path,
) -> Result<()> {
    let dist = dist.context("a bench worker needs --num-nodes/--node-rank")?;
    let global = synthetic_windows(args.batch_size, cfg.seed);
    let world = dist.world_size();
    // This rank's contiguous share of the global batch.
    let rank = dist.node_rank;
    let per = args.batch_size / world;
    let data = global.select(&(rank * per..(rank + 1) * per).collect::<Vec<_>>());
    let mut out = Vec::new();
    for (name, spec, train) in variants(cfg, &args.models)? {
        for precision in precisions(args, &train, device) {
            let job = TimeSteps::new(&spec, &train, &data, args, precision);
            out.push(time_model(
                &name,
                device,
                (job, precision),
                Some(dist.clone()),
            )?);
        }
    }
    kiln::io::write_json(path, &out)
}

/// Spawns `args.nodes` bench workers on 127.0.0.1 and prints their throughput next to the
/// single-process rows.
fn run_nodes(args: &BenchArgs, single: &[Timing]) -> Result<Vec<Timing>> {
    if !args.batch_size.is_multiple_of(args.nodes) {
        bail!(
            "--batch-size {} does not split evenly over --nodes {}",
            args.batch_size,
            args.nodes
        );
    }
    let dir = tempfile::tempdir()?;
    // The orchestrator's port, then one data port per worker.
    let ports = kiln::dist::free_ports(args.nodes + 1)?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for rank in 0..args.nodes {
        let json = dir.path().join(format!("rank{rank}.json"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("bench")
            .args(["--models", &args.models.join(",")])
            .args(["--batch-size", &args.batch_size.to_string()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--num-nodes", &args.nodes.to_string()])
            .args(["--node-rank", &rank.to_string()])
            .args(["--orchestrator", &format!("127.0.0.1:{}", ports[0])])
            .args(["--data-port", &ports[rank + 1].to_string()])
            .arg("--no-torch")
            .arg("--quiet")
            .arg("--worker-json")
            .arg(&json)
            .stdout(std::process::Stdio::null());
        if !args.precisions.is_empty() {
            let p: Vec<String> = args.precisions.iter().map(|p| p.to_string()).collect();
            cmd.args(["--precisions", &p.join(",")]);
        }
        cmd.args(&args.overrides.opts);
        eprintln!("starting bench worker {rank}/{} ...", args.nodes);
        children.push((json, cmd.spawn().context("cannot start a bench worker")?));
    }
    let mut per_rank: Vec<Vec<Timing>> = Vec::new();
    for (rank, (json, mut child)) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            bail!("bench worker {rank} failed ({status})");
        }
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("bench worker {rank} wrote no timings"))?;
        per_rank.push(serde_json::from_str(&text)?);
    }
    println!(
        "\ndata-parallel training over {} processes on 127.0.0.1 (global batch {}, {} per process)",
        args.nodes,
        args.batch_size,
        args.batch_size / args.nodes
    );
    println!(
        "{:<26} {:>10} {:>16} {:>16} {:>9} {:>16}",
        "model",
        "precision",
        "1 proc samples/s",
        format!("{} proc samples/s", args.nodes),
        "speed-up",
        "all-reduce share"
    );
    let mut out = Vec::new();
    for (i, t0) in per_rank[0].iter().enumerate() {
        // The global step ends when the slowest rank ends.
        let step = per_rank
            .iter()
            .map(|r| r[i].median_ms)
            .fold(0.0f64, f64::max);
        let share = per_rank
            .iter()
            .filter_map(|r| r[i].sync_share)
            .fold(0.0f64, f64::max);
        let one = single
            .iter()
            .find(|s| s.model == t0.model && s.precision == t0.precision)
            .map(|s| args.batch_size as f64 / (s.median_ms / 1e3));
        let many = args.batch_size as f64 / (step / 1e3);
        println!(
            "{:<26} {:>10} {:>16} {:>16.1} {:>9} {:>15.1}%",
            t0.model,
            t0.precision,
            one.map_or("-".into(), |v| format!("{v:.1}")),
            many,
            one.map_or("-".into(), |v| format!("{:.2}x", many / v)),
            share * 100.0
        );
        let mut row = t0.clone();
        row.backend = format!("{} ×{}", row.backend, args.nodes);
        row.median_ms = step;
        row.sync_share = Some(share);
        out.push(row);
    }
    Ok(out)
}
