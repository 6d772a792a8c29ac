//! `reid bench`: one CTL training step (P×K batch, ResNet50 at 256×128 by default) and eval-mode
//! embedding throughput, next to the same work in PyTorch (`tools/bench/reid_step.py`, run when
//! `torch` imports). The ratio is Burn / PyTorch for the step time (lower is better) and
//! PyTorch / Burn for throughput, so 1.0 is parity and above 1 means Burn is slower in both.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::backend::{BackendJob, DeviceKind, launch};
use kiln::optim::Optimization;
use serde::{Deserialize, Serialize};

use crate::config::ReidConfig;
use crate::loss::{LossInputs, ctl_model_loss};
use crate::model::ModelConfig;
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
    #[command(flatten)]
    pub torch: kiln::bench::TorchSide,
}

/// One side's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Backend / framework.
    pub backend: String,
    /// Median training-step time (ms).
    pub step_ms: f64,
    /// All timed steps (ms).
    pub steps_ms: Vec<f64>,
    /// Eval-mode embedding throughput (images/s).
    pub embed_images_per_s: f64,
}

struct Job<'a> {
    args: &'a BenchArgs,
}

fn emb_size(name: &str) -> usize {
    if matches!(name, "resnet18" | "resnet34") {
        512
    } else {
        2048
    }
}

impl BackendJob for Job<'_> {
    type Output = (Vec<f64>, f64);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<(Vec<f64>, f64)> {
        let a = self.args;
        let mut cfg = ReidConfig::default();
        cfg.dataloader.num_instance = a.k;
        kiln::seed::seed_backend::<B>(&device, 0, "bench", 0);
        let mut model = ModelConfig::new(a.model.clone(), 1, emb_size(&a.model), a.num_classes)
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
        let mut times = Vec::new();
        for step in 0..a.warmup + a.steps {
            let started = Instant::now();
            let f = model.forward_features(x.clone());
            let inputs = LossInputs {
                features: f,
                labels: &labels,
                is_real: &is_real,
                centers: model.center_loss.centers.val(),
            };
            let terms = ctl_model_loss(&loss_cfg, inputs, |f| model.classify(model.bnneck(f)))?;
            model = optim.step(model, terms.total)?;
            B::sync(&device).map_err(|e| anyhow::anyhow!("backend error: {e:?}"))?;
            if step >= a.warmup {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            eprintln!(
                "  step {}: {:.0} ms",
                step,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        let eval = model.valid();
        let xe = Tensor::<B::InnerBackend, 4>::random(
            [a.embed_batch, 3, a.height, a.width],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let _ = eval.embed(xe.clone()).into_data(); // warm-up
        let started = Instant::now();
        for _ in 0..a.embed_batches {
            let _ = eval.embed(xe.clone()).into_data();
        }
        let rate = (a.embed_batch * a.embed_batches) as f64 / started.elapsed().as_secs_f64();
        Ok((times, rate))
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

/// Runs the benchmark and prints the comparison.
pub fn run(args: &BenchArgs, device: DeviceKind) -> Result<()> {
    eprintln!(
        "timing a CTL step of {} on {device}: P={} × K={} images of {}×{} ...",
        args.model, args.p, args.k, args.height, args.width
    );
    let (steps, rate) = launch(device, Job { args })?;
    let burn = BenchResult {
        backend: format!("burn-{}", device.resolve()),
        step_ms: kiln::bench::median(&steps),
        steps_ms: steps,
        embed_images_per_s: rate,
    };
    let torch = torch_side(args);
    println!(
        "CTL training step: {} P={} K={} {}×{} ({} CPU threads)",
        args.model,
        args.p,
        args.k,
        args.height,
        args.width,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<22} {:>14} {:>20}", "", "step (ms)", "embedding (img/s)");
    for r in std::iter::once(&burn).chain(torch.as_ref()) {
        println!(
            "{:<22} {:>14.0} {:>20.1}",
            r.backend, r.step_ms, r.embed_images_per_s
        );
    }
    if let Some(t) = &torch {
        println!(
            "{:<22} {:>13.2}x {:>19.2}x",
            "ratio burn/torch",
            burn.step_ms / t.step_ms,
            t.embed_images_per_s / burn.embed_images_per_s
        );
    }
    if let Some(path) = &args.torch.json {
        kiln::io::write_json(path, &serde_json::json!({ "burn": burn, "torch": torch }))?;
    }
    Ok(())
}
