//! `moola bench`: the time of one training step of each model at the reference batch size,
//! next to the same step in PyTorch (`tools/bench/moola_step.py`, run when `torch` imports).
//!
//! A step is the full recipe step: temporal augmentation, mixup/CutMix, forward, focal loss
//! (multi-task loss for the pointer model), backward and the AdamW update, on a batch of
//! 105×4 raw-price windows (batch 512 by default). Timings are medians over `--steps` steps after
//! `--warmup` steps; the ratio is Burn time / PyTorch time (lower is better, 1.0 = parity).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::backend::{BackendJob, DeviceKind, launch};
use kiln::trainer::{EpochInfo, Task};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cli::Overrides;
use crate::config::MoolaConfig;
use crate::data::WindowSet;
use crate::model::{InnerWindow, ModelSpec};
use crate::train::Session;

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

struct TimeSteps {
    spec: ModelSpec,
    config: crate::train::TrainConfig,
    data: WindowSet,
    steps: usize,
    warmup: usize,
}

impl BackendJob for TimeSteps {
    type Output = Vec<f64>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<f64>> {
        let mut config = self.config;
        config.val_split = 0.0;
        config.batch_size = self.data.len();
        let Session {
            mut task,
            mut net,
            mut optim,
            ..
        } = Session::<B>::new(&self.spec, &config, &self.data, &device)?;
        let batch: Vec<usize> = (0..self.data.len()).collect();
        let mut times = Vec::new();
        for step in 0..self.warmup + self.steps {
            let info = EpochInfo {
                epoch: 0,
                max_epochs: 1,
                global_step: step,
                seed: config.seed,
            };
            let start = Instant::now();
            let out = task.training_step(&net, batch.clone(), &info)?;
            net = kiln::optim::Optimization::step(&mut optim, net, out.loss)?;
            // Wait for queued device work (asynchronous backends) before stopping the clock.
            B::sync(&device).map_err(|e| anyhow::anyhow!("backend error: {e:?}"))?;
            if step >= self.warmup {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(times)
    }
}

fn variants(
    cfg: &MoolaConfig,
    models: &[String],
) -> Result<Vec<(String, ModelSpec, crate::train::TrainConfig)>> {
    let mut out = Vec::new();
    for m in models {
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
pub fn run(cfg: &MoolaConfig, args: &BenchArgs, device: DeviceKind) -> Result<()> {
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
    for (name, spec, train) in variants(cfg, &args.models)? {
        for &d in &devices {
            let backend = format!("burn-{d}");
            eprintln!("timing {name} on {backend} ...");
            let steps = launch(
                d,
                TimeSteps {
                    spec: spec.clone(),
                    config: train.clone(),
                    data: data.clone(),
                    steps: args.steps,
                    warmup: args.warmup,
                },
            )?;
            rows.push(Timing {
                model: name.clone(),
                backend,
                median_ms: kiln::bench::median(&steps),
                steps_ms: steps,
            });
        }
    }
    let torch = torch_timings(args).unwrap_or_default();
    println!(
        "one training step, batch {} × 105 × 4, median of {} steps ({} CPU threads)",
        args.batch_size,
        args.steps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<26} {:<14} {:>12} {:>12} {:>10}",
        "model", "backend", "ms/step", "torch ms", "ratio"
    );
    for r in &rows {
        let t = torch
            .iter()
            .find(|t| t.model == r.model)
            .map(|t| t.median_ms);
        println!(
            "{:<26} {:<14} {:>12.1} {:>12} {:>10}",
            r.model,
            r.backend,
            r.median_ms,
            t.map_or("-".into(), |v| format!("{v:.1}")),
            t.map_or("-".into(), |v| format!("{:.2}x", r.median_ms / v)),
        );
    }
    if let Some(path) = &args.torch.json {
        let all: Vec<&Timing> = rows.iter().chain(&torch).collect();
        kiln::io::write_json(path, &all)?;
    }
    Ok(())
}
