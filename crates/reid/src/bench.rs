//! `reid bench`: one CTL training step (P×K batch, ResNet50 at 256×128 by default) and eval-mode
//! embedding throughput, next to the same work in PyTorch (`tools/bench/reid_step.py`, run when
//! `torch` imports). The ratio is Burn / PyTorch for the step time (lower is better) and
//! PyTorch / Burn for throughput, so 1.0 is parity and above 1 means Burn is slower in both.
//!
//! `--precisions 32,16-mixed,bf16-mixed` times each mode: the forward pass and the loss run in
//! kiln's autocast scope, the update goes through [`Stepper`] (loss scaling and skipped steps
//! under `16-mixed`), and the embedding runs under autocast too. Every mode starts from the same
//! weights and trains on the same batch, so the loss of the last timed step (`final_loss`) is
//! comparable across modes. The PyTorch side is f32 and is matched to the `32` row.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::amp::Precision;
use kiln::backend::{BackendJob, DeviceKind, launch};
use kiln::optim::Optimization;
use kiln::step::{StepStatus, Stepper};
use serde::{Deserialize, Serialize};

use crate::config::ReidConfig;
use crate::loss::{LossInputs, ctl_model_loss};
use crate::model::ReidModelConfig;
use crate::train::{loss_config, optimization};

/// `reid bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backbone.
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Identities per batch.
    #[arg(long, default_value_t = 16)]
    pub p: usize,
    /// Images per identity.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Input height.
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    /// Input width.
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    /// Classifier size (Market1501 has 751 training identities).
    #[arg(long, default_value_t = 751)]
    pub num_classes: usize,
    /// Timed training steps (median reported).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Images per embedding batch.
    #[arg(long, default_value_t = 64)]
    pub embed_batch: usize,
    /// Timed embedding batches.
    #[arg(long, default_value_t = 2)]
    pub embed_batches: usize,
    /// Embed with the BatchNorms folded into the convolution weights
    /// (`ReidModel::with_folded_batchnorm`) instead of applied after each convolution.
    #[arg(long)]
    pub fold_batchnorm: bool,
    /// Precisions to time, e.g. `32,16-mixed,bf16-mixed` (empty: `32`).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub precisions: Vec<Precision>,
    #[command(flatten)]
    pub torch: kiln::bench::TorchSide,
}

/// One side's numbers (one row per precision on the Burn side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Backend / framework.
    pub backend: String,
    /// Precision (`32`, `16-mixed`, `bf16-mixed`).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Median training-step time (ms).
    pub step_ms: f64,
    /// All timed steps (ms).
    pub steps_ms: Vec<f64>,
    /// Loss of the last timed step (every step trains on the same batch).
    #[serde(default)]
    pub final_loss: Option<f64>,
    /// Steps (warm-up included) that `16-mixed` skipped for inf/NaN gradients.
    #[serde(default)]
    pub skipped_steps: usize,
    /// Eval-mode embedding throughput (images/s).
    pub embed_images_per_s: f64,
    /// Peak resident memory of the measuring process so far (bytes).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

fn f32_name() -> String {
    "32".into()
}

/// What one precision's run measured.
struct Measured {
    steps_ms: Vec<f64>,
    final_loss: f64,
    skipped: usize,
    embed_images_per_s: f64,
}

struct Job<'a> {
    args: &'a BenchArgs,
    precision: Precision,
}

fn emb_size(name: &str) -> usize {
    if matches!(name, "resnet18" | "resnet34") {
        512
    } else {
        2048
    }
}

impl BackendJob for Job<'_> {
    type Output = Measured;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Measured> {
        let a = self.args;
        kiln::amp::check_backend::<B::InnerBackend>(self.precision, &device)?;
        let mut cfg = ReidConfig::default();
        cfg.dataloader.num_instance = a.k;
        kiln::seed::seed_backend::<B>(&device, 0, "bench", 0);
        let mut model = ReidModelConfig::new(a.model.clone(), 1, emb_size(&a.model), a.num_classes)
            .init::<B>(&device)?;
        let n = a.p * a.k;
        let x = Tensor::<B, 4>::random(
            [n, 3, a.height, a.width],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels: Vec<usize> = (0..n).map(|i| i / a.k).collect();
        let is_real = vec![true; n];
        let loss_cfg = loss_config(&cfg)?;
        let mut optim = optimization::<B>(&cfg);
        optim.on_epoch_start(20);
        let mut stepper = Stepper::new(self.precision);
        let mut out = Measured {
            steps_ms: Vec::new(),
            final_loss: f64::NAN,
            skipped: 0,
            embed_images_per_s: f64::NAN,
        };
        let total = a.warmup + a.steps;
        for step in 0..total {
            let started = Instant::now();
            let terms = stepper.forward(|| {
                let f = model.forward_features(x.clone());
                let inputs = LossInputs {
                    features: f,
                    labels: &labels,
                    is_real: &is_real,
                    centers: model.center_loss.centers.val(),
                };
                ctl_model_loss(&loss_cfg, inputs, |f| model.classify(model.bnneck(f)))
            })?;
            let loss = terms.total;
            let status;
            (model, status) = stepper.step(model, loss.clone(), &mut optim)?;
            // Wait for queued device work (asynchronous backends) before stopping the clock.
            B::sync(&device).map_err(|e| anyhow::anyhow!("backend error: {e:?}"))?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if status == StepStatus::Skipped {
                out.skipped += 1;
            }
            if step >= a.warmup {
                out.steps_ms.push(ms);
            }
            if step + 1 == total {
                out.final_loss = loss.into_scalar().elem::<f64>();
            }
            eprintln!("  [{}] step {step}: {ms:.0} ms", self.precision);
        }
        let eval = model.valid().with_folded_batchnorm(a.fold_batchnorm);
        let xe = Tensor::<B::InnerBackend, 4>::random(
            [a.embed_batch, 3, a.height, a.width],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let embed = || kiln::amp::autocast(self.precision, || eval.embed(xe.clone()).into_data());
        let _ = embed(); // warm-up
        let started = Instant::now();
        for _ in 0..a.embed_batches {
            let _ = embed();
        }
        out.embed_images_per_s =
            (a.embed_batch * a.embed_batches) as f64 / started.elapsed().as_secs_f64();
        Ok(out)
    }
}

fn torch_side(args: &BenchArgs) -> Option<BenchResult> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/reid_step.py");
    args.torch.run(
        &script,
        &[
            ("--model", args.model.clone()),
            ("--p", args.p.to_string()),
            ("--k", args.k.to_string()),
            ("--height", args.height.to_string()),
            ("--width", args.width.to_string()),
            ("--num-classes", args.num_classes.to_string()),
            ("--steps", args.steps.to_string()),
            ("--warmup", args.warmup.to_string()),
            ("--embed-batch", args.embed_batch.to_string()),
            ("--embed-batches", args.embed_batches.to_string()),
        ],
    )
}

/// The precisions to time (`32` when none is given), without repeats.
fn precisions(args: &BenchArgs) -> Vec<Precision> {
    let mut out: Vec<Precision> = Vec::new();
    for &p in &args.precisions {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(Precision::F32);
    }
    out
}

/// Runs the benchmark and prints the comparison. A precision that fails (e.g. one the backend
/// cannot run) is reported and the others still run; the result is then an error naming it.
pub fn run(args: &BenchArgs, device: DeviceKind) -> Result<()> {
    let mut rows: Vec<BenchResult> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for precision in precisions(args) {
        eprintln!(
            "timing a CTL step of {} on {device} in precision {precision}: P={} × K={} images of \
             {}×{} ...",
            args.model, args.p, args.k, args.height, args.width
        );
        match launch(device, Job { args, precision }) {
            Ok(m) => rows.push(BenchResult {
                backend: format!("burn-{}", device.resolve()),
                precision: precision.to_string(),
                step_ms: kiln::bench::median(&m.steps_ms),
                steps_ms: m.steps_ms,
                final_loss: Some(m.final_loss),
                skipped_steps: m.skipped,
                embed_images_per_s: m.embed_images_per_s,
                peak_rss_bytes: kiln::bench::peak_rss_bytes(),
            }),
            Err(e) => {
                eprintln!("precision {precision} failed: {e:#}");
                failed.push(format!("{precision} ({e:#})"));
            }
        }
    }
    let torch = torch_side(args);
    println!(
        "CTL training step: {} P={} K={} {}×{}, median of {} steps ({} CPU threads)",
        args.model,
        args.p,
        args.k,
        args.height,
        args.width,
        args.steps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // speed-up: the `32` step time over this row's.
    println!(
        "{:<18} {:>10} {:>11} {:>10} {:>9} {:>18} {:>8}",
        "", "precision", "final loss", "step (ms)", "speed-up", "embedding (img/s)", "skipped"
    );
    let f32_row = rows.iter().find(|r| r.precision == "32").cloned();
    for r in rows.iter().chain(torch.as_ref()) {
        let speedup = f32_row
            .as_ref()
            .filter(|_| r.backend.starts_with("burn"))
            .map_or("-".into(), |f| format!("{:.2}x", f.step_ms / r.step_ms));
        println!(
            "{:<18} {:>10} {:>11} {:>10.1} {:>9} {:>18.1} {:>8}",
            r.backend,
            r.precision,
            r.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.step_ms,
            speedup,
            r.embed_images_per_s,
            r.skipped_steps
        );
    }
    if let (Some(b), Some(t)) = (&f32_row, &torch) {
        println!(
            "{:<18} {:>10} {:>11} {:>9.2}x {:>9} {:>17.2}x",
            "ratio burn/torch",
            "32",
            "",
            b.step_ms / t.step_ms,
            "",
            t.embed_images_per_s / b.embed_images_per_s
        );
    }
    println!(
        "{}",
        kiln::bench::peak_memory_line(torch.as_ref().and_then(|t| t.peak_rss_bytes))
    );
    if let Some(path) = &args.torch.json {
        // `burn` keeps the shape of older reports (the `32` row, else the first one); `runs`
        // holds every precision.
        let burn = f32_row.as_ref().or(rows.first());
        kiln::io::write_json(
            path,
            &serde_json::json!({ "burn": burn, "runs": rows, "torch": torch }),
        )?;
    }
    if !failed.is_empty() {
        bail!("reid bench: precision {} failed", failed.join("; "));
    }
    Ok(())
}
