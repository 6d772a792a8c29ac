//! Behaviour of the Trainer on a tiny regression task: learning, checkpoints, exact resume,
//! early stopping with restore-best, and error paths.

mod common;

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln::amp::GradScaler;
use kiln::backend::{Autodiff, Flex};
use kiln::callbacks::{EarlyStopping, Mode, ModelCheckpoint};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{
    EpochInfo, Loader, Precision, StepOutput, Strategy, Task, Trainer, TrainerConfig,
};
use kiln::{data, seed};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    linear: Linear<B>,
    dropout: Dropout,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        kiln::checkpoint::materialize(Self {
            linear: LinearConfig::new(2, 1).init(device),
            dropout: DropoutConfig::new(0.2).init(),
        })
    }
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        kiln::amp::linear_layer(&self.linear, self.dropout.forward(x))
    }
    fn weights(&self) -> Vec<f32> {
        common::linear_weights(&self.linear)
    }
}

struct Regression {
    x: Vec<[f32; 2]>,
    y: Vec<f32>,
    /// When set, validate() reports these losses instead of the real one.
    scripted_val: Option<Vec<f64>>,
    /// When set, validate() also reports these as `val_acc`.
    scripted_acc: Option<Vec<f64>>,
    /// Weights seen at each validation.
    seen: Vec<Vec<f32>>,
}

impl Regression {
    fn new(n: usize, poison: bool) -> Self {
        use rand::Rng;
        let mut rng = seed::rng(5, "data", 0);
        let x: Vec<[f32; 2]> = (0..n)
            .map(|_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)])
            .collect();
        let mut y: Vec<f32> = x.iter().map(|v| 3.0 * v[0] - 2.0 * v[1] + 1.0).collect();
        if poison {
            y[3] = f32::NAN;
        }
        Self {
            x,
            y,
            scripted_val: None,
            scripted_acc: None,
            seen: Vec::new(),
        }
    }

    fn tensors<Bk: Backend>(
        &self,
        idx: &[usize],
        device: &Bk::Device,
    ) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
        let xs: Vec<f32> = idx.iter().flat_map(|&i| self.x[i]).collect();
        let ys: Vec<f32> = idx.iter().map(|&i| self.y[i]).collect();
        (
            Tensor::from_data(TensorData::new(xs, [idx.len(), 2]), device),
            Tensor::from_data(TensorData::new(ys, [idx.len(), 1]), device),
        )
    }
}

impl Task<B> for Regression {
    type Model = Net<B>;
    type Batch = Vec<usize>;

    fn train_loader(&mut self, _info: &EpochInfo, seed: u64) -> anyhow::Result<Loader<Vec<usize>>> {
        let mut rng = kiln::seed::rng(seed, "shuffle", 0);
        Ok(Loader::from_vec(data::batches(
            self.x.len(),
            8,
            true,
            false,
            &mut rng,
        )))
    }

    fn training_step(
        &mut self,
        model: &Net<B>,
        batch: Vec<usize>,
        _info: &EpochInfo,
    ) -> anyhow::Result<StepOutput<B>> {
        let (x, y) = self.tensors::<B>(&batch, &Default::default());
        let loss = (model.forward(x) - y).square().mean();
        Ok(StepOutput {
            loss,
            batch_size: batch.len(),
            logs: vec![],
        })
    }

    fn validate(&mut self, model: &Net<Flex>, info: &EpochInfo) -> anyhow::Result<Row> {
        self.seen.push(model.weights());
        let loss = match &self.scripted_val {
            Some(script) => script[info.epoch],
            None => {
                let idx: Vec<usize> = (0..self.x.len()).collect();
                let (x, y) = self.tensors::<Flex>(&idx, &Default::default());
                let l: f32 = (model.forward(x) - y).square().mean().into_scalar();
                f64::from(l)
            }
        };
        let mut row: Row = [("val_loss".to_string(), loss)].into();
        if let Some(acc) = &self.scripted_acc {
            row.insert("val_acc".into(), acc[info.epoch]);
        }
        Ok(row)
    }
}

fn optim() -> Standard<impl burn::optim::Optimizer<Net<B>, B>, ConstantLr> {
    Standard::new(
        AdamWConfig::new().with_epsilon(1e-8).init::<B, Net<B>>(),
        ConstantLr::new(0.05),
        Interval::Step,
    )
}

fn train(
    epochs: usize,
    run_dir: Option<&Path>,
    resume: Option<&Path>,
) -> (Vec<f32>, kiln::FitOutcome<Net<B>>) {
    let (w, out, _) = train_with(epochs, run_dir, resume, Precision::F32, None);
    (w, out)
}

fn train_with(
    epochs: usize,
    run_dir: Option<&Path>,
    resume: Option<&Path>,
    precision: Precision,
    scaler: Option<GradScaler>,
) -> (Vec<f32>, kiln::FitOutcome<Net<B>>, GradScaler) {
    let device = Default::default();
    seed::seed_backend::<B>(&device, 11, "init", 0);
    let model = Net::<B>::new(&device);
    let mut task = Regression::new(64, false);
    let mut cfg = TrainerConfig::new(epochs);
    cfg.seed = 11;
    cfg.run_dir = run_dir.map(Path::to_path_buf);
    cfg.resume_from = resume.map(Path::to_path_buf);
    cfg.progress = false;
    cfg.precision = precision;
    let mut trainer = Trainer::new(cfg)
        .with_callback(ModelCheckpoint::best("val_loss", Mode::Min, 2).with_every_n_epochs(2));
    if let Some(scaler) = scaler {
        trainer = trainer.with_grad_scaler(scaler);
    }
    let out = trainer
        .fit(&mut task, model, &mut optim(), &device)
        .unwrap();
    (out.model.weights(), out, trainer.grad_scaler().clone())
}

#[test]
fn learns_and_writes_run_files() {
    let _guard = seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let (w, out) = train(30, Some(dir.path()), None);
    let first = out.history[0].1["val_loss"];
    let last = out.history.last().unwrap().1["val_loss"];
    // The dropout shrinkage below leaves an eval-mode MSE of E[(0.6a - 0.4b)^2] = 0.52/3 = 0.17.
    assert!(first > 1.0 && last < 0.3, "val loss {first} -> {last}");
    // Least squares under inverted dropout (p = 0.2) on inputs uniform in [-1, 1] shrinks the
    // slopes of y = 3a - 2b + 1 by E[x]^2/E[x^2/(1-p)] = 1-p: expect (2.4, -1.6) and bias 1.
    assert!(
        (w[0] - 2.4).abs() < 0.2 && (w[1] + 1.6).abs() < 0.2 && (w[2] - 1.0).abs() < 0.2,
        "{w:?}"
    );

    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(
        csv.starts_with("epoch,epoch_seconds,lr,samples_per_second,train_loss,val_loss\n"),
        "{csv}"
    );
    // The learning rate of every epoch is logged, the first one included.
    let rows = kiln::metric_log::read_csv(&dir.path().join("metrics.csv")).unwrap();
    assert!(rows.iter().all(|(_, r)| r["lr"] == 0.05), "{csv}");
    assert_eq!(csv.lines().count(), 31);
    let ckpts: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(ckpts.contains(&"last.ckpt".to_string()));
    assert_eq!(
        ckpts.iter().filter(|n| n.starts_with("best-")).count(),
        2,
        "{ckpts:?}"
    );
    assert_eq!(
        ckpts.iter().filter(|n| n.starts_with("epoch=")).count(),
        15,
        "{ckpts:?}"
    );
    assert!(!ckpts.iter().any(|n| n.contains(".tmp")), "{ckpts:?}");

    // The TensorBoard event file: every optimiser step and every epoch.
    let files = kiln::tensorboard::event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = kiln::tensorboard::read_events(&files[0]).unwrap();
    assert_eq!(
        events[0].file_version.as_deref(),
        Some(kiln::tensorboard::FILE_VERSION)
    );
    let tagged = |tag: &str| -> Vec<(i64, f32)> {
        events
            .iter()
            .flat_map(|e| {
                e.scalars
                    .iter()
                    .filter(|(t, _)| t == tag)
                    .map(move |(_, v)| (e.step, *v))
            })
            .collect()
    };
    let steps = tagged("step/loss");
    let per_epoch = steps.len() / 30;
    assert!(
        per_epoch >= 1 && steps.len() == 30 * per_epoch,
        "{}",
        steps.len()
    );
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=steps.len() as i64).collect::<Vec<_>>()
    );
    assert!(tagged("step/lr").iter().all(|(_, v)| *v == 0.05));
    assert!(tagged("step/seconds").iter().all(|(_, v)| *v >= 0.0));
    assert!(tagged("step/loss_scale").is_empty());
    let val = tagged("epoch/val_loss");
    assert_eq!(val.len(), 30);
    assert_eq!(val[29].0, steps.len() as i64);
    assert_eq!(val[29].1, last as f32);
    // The training-curve picture.
    let png = std::fs::read(dir.path().join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn run_files_can_be_turned_off() {
    let _guard = seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let mut cfg = TrainerConfig::new(2);
    cfg.run_dir = Some(dir.path().to_path_buf());
    cfg.progress = false;
    cfg.tensorboard = false;
    cfg.curves = false;
    Trainer::new(cfg)
        .fit(
            &mut Regression::new(16, false),
            Net::<B>::new(&device),
            &mut optim(),
            &device,
        )
        .unwrap();
    assert!(dir.path().join("metrics.csv").exists());
    assert!(!dir.path().join("curves.png").exists());
    assert!(
        kiln::tensorboard::event_files(dir.path())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let _guard = seed::global_lock();
    let straight = tempfile::tempdir().unwrap();
    let (w_straight, out_straight) = train(6, Some(straight.path()), None);

    let split = tempfile::tempdir().unwrap();
    let (_, first_half) = train(3, Some(split.path()), None);
    assert_eq!(first_half.epochs_completed, 3);
    let last = split.path().join("checkpoints/last.ckpt");
    let (w_resumed, out_resumed) = train(6, Some(split.path()), Some(&last));

    assert_eq!(
        w_straight, w_resumed,
        "resumed weights differ from an uninterrupted run"
    );
    assert_eq!(out_resumed.history.len(), 6);
    for ((e1, r1), (e2, r2)) in out_straight.history.iter().zip(&out_resumed.history) {
        assert_eq!(e1, e2);
        assert_eq!(r1["train_loss"], r2["train_loss"], "epoch {e1}");
    }
    // The top-k list carried over: still exactly two best checkpoints on disk.
    let best = std::fs::read_dir(split.path().join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("best-")
        })
        .count();
    assert_eq!(best, 2);
}

#[test]
fn early_stopping_restores_best_weights() {
    let _guard = seed::global_lock();
    let device = Default::default();
    seed::seed_backend::<B>(&device, 1, "init", 0);
    let mut task = Regression::new(32, false);
    task.scripted_val = Some(vec![1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]);
    let mut cfg = TrainerConfig::new(8);
    cfg.progress = false;
    let mut trainer = Trainer::new(cfg).with_callback(EarlyStopping::new("val_loss", Mode::Min, 3));
    let out = trainer
        .fit(&mut task, Net::<B>::new(&device), &mut optim(), &device)
        .unwrap();
    assert!(out.stopped_early);
    assert_eq!(out.epochs_completed, 5); // epochs 2, 3, 4 without improvement
    assert!(out.restored_best);
    assert_eq!(
        out.model.weights(),
        task.seen[1],
        "weights of epoch 1 were not restored"
    );
    assert_ne!(task.seen[1], task.seen[4]);
}

#[test]
fn nan_loss_is_a_clear_error() {
    let _guard = seed::global_lock();
    let device = Default::default();
    let mut task = Regression::new(16, true);
    let mut cfg = TrainerConfig::new(2);
    cfg.progress = false;
    let err = Trainer::new(cfg)
        .fit(&mut task, Net::<B>::new(&device), &mut optim(), &device)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("NaN") && msg.contains("epoch 0"), "{msg}");
}

#[test]
fn unsupported_settings_and_bad_checkpoints_are_errors() {
    let _guard = seed::global_lock();
    let device = Default::default();
    let mut cfg = TrainerConfig::new(1);
    cfg.strategy = Strategy::Ddp;
    let err = Trainer::new(cfg)
        .fit(
            &mut Regression::new(8, false),
            Net::<B>::new(&device),
            &mut optim(),
            &device,
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("worker handle"), "{err}");

    // A checkpoint of another architecture names the mismatching parameter.
    #[derive(Module, Debug)]
    struct Wide<B: Backend> {
        linear: Linear<B>,
        dropout: Dropout,
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.ckpt");
    let wide = Wide::<B> {
        linear: LinearConfig::new(3, 1).init(&device),
        dropout: DropoutConfig::new(0.2).init(),
    };
    let meta = kiln::checkpoint::CheckpointMeta {
        epochs_completed: 1,
        global_step: 1,
        seed: 0,
        metrics: Default::default(),
        callbacks: Default::default(),
        task: serde_json::Value::Null,
        sections: vec![],
    };
    let bytes = kiln::checkpoint::record_to_bytes::<B, _>(wide.into_record()).unwrap();
    kiln::checkpoint::write_checkpoint(&path, meta, vec![("model", bytes)]).unwrap();
    let mut cfg = TrainerConfig::new(2);
    cfg.resume_from = Some(path);
    let err = Trainer::new(cfg)
        .fit(
            &mut Regression::new(8, false),
            Net::<B>::new(&device),
            &mut optim(),
            &device,
        )
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("linear.weight") && msg.contains("[3, 1]"),
        "{msg}"
    );

    // Missing checkpoint file.
    let mut cfg = TrainerConfig::new(2);
    cfg.resume_from = Some(dir.path().join("nope.ckpt"));
    let err = Trainer::new(cfg)
        .fit(
            &mut Regression::new(8, false),
            Net::<B>::new(&device),
            &mut optim(),
            &device,
        )
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("nope.ckpt"));
}

#[test]
fn module_files_round_trip_with_shape_checks() {
    let _guard = seed::global_lock();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.mpk");
    let net = Net::<Flex>::new(&device);
    kiln::checkpoint::save_module(&net, &path).unwrap();
    let back = kiln::checkpoint::load_module(Net::<Flex>::new(&device), &path, &device).unwrap();
    assert_eq!(back.weights(), net.weights());
    let _ = AutodiffModule::valid(&Net::<B>::new(&device));
}

#[test]
fn grad_scaler_follows_torch_semantics() {
    // torch.amp.GradScaler defaults: 2^16, ×2 after 2000 finite steps, ×0.5 on inf/NaN.
    let mut s = GradScaler::default();
    assert_eq!(s.scale, 65536.0);
    for _ in 0..1999 {
        s.update(false);
    }
    assert_eq!((s.scale, s.growth_tracker), (65536.0, 1999));
    s.update(false);
    assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
    s.update(false);
    s.update(true);
    assert_eq!(
        (s.scale, s.growth_tracker, s.skipped_steps),
        (65536.0, 0, 1)
    );
}

#[test]
fn forced_f16_overflow_skips_the_step_and_halves_the_scale() {
    let _guard = seed::global_lock();
    // With a scale of 2^24 the f16 gradients of the linear layer overflow (|g·scale| > 65504):
    // GradScaler skips those steps and halves the scale until they fit (2^15 at most).
    let device = Default::default();
    seed::seed_backend::<B>(&device, 11, "init", 0);
    let initial = Net::<B>::new(&device).weights();
    let mut cfg = TrainerConfig::new(1);
    cfg.seed = 11;
    cfg.progress = false;
    cfg.precision = Precision::F16Mixed;
    // One batch per epoch: after the first (skipped) step the weights must be untouched.
    let mut task = Regression::new(8, false);
    let mut trainer = Trainer::new(cfg.clone()).with_grad_scaler(GradScaler::new(2f64.powi(24)));
    seed::seed_backend::<B>(&device, 11, "init", 0);
    let out = trainer
        .fit(&mut task, Net::<B>::new(&device), &mut optim(), &device)
        .unwrap();
    assert_eq!(trainer.grad_scaler().skipped_steps, 1);
    assert_eq!(trainer.grad_scaler().scale, 2f64.powi(23));
    assert_eq!(
        out.model.weights(),
        initial,
        "a skipped step changed the weights"
    );
    let row = &out.history[0].1;
    assert_eq!(
        (row["loss_scale"], row["skipped_steps"]),
        (2f64.powi(23), 1.0)
    );

    // Over more steps the scale comes down to where the gradients fit, and training proceeds.
    let (w, out, scaler) = train_with(
        20,
        None,
        None,
        Precision::F16Mixed,
        Some(GradScaler::new(2f64.powi(24))),
    );
    assert!(
        (1..=10).contains(&scaler.skipped_steps),
        "{} skipped steps",
        scaler.skipped_steps
    );
    assert_eq!(scaler.scale, 2f64.powi(24 - scaler.skipped_steps as i32));
    assert!(scaler.scale <= 32768.0);
    let last = out.history.last().unwrap().1["val_loss"];
    assert!(last < 0.3, "val loss {last}, weights {w:?}");
}

#[test]
fn mixed_precision_trains_like_f32_and_resumes_exactly() {
    let _guard = seed::global_lock();
    let (w32, out32, _) = train_with(30, None, None, Precision::F32, None);
    for precision in [Precision::Bf16Mixed, Precision::F16Mixed] {
        let (w, out, _) = train_with(30, None, None, precision, None);
        let (a, b) = (
            out32.history.last().unwrap().1["val_loss"],
            out.history.last().unwrap().1["val_loss"],
        );
        assert!((a - b).abs() < 0.05, "{precision}: val loss {b} vs f32 {a}");
        for (x, y) in w.iter().zip(&w32) {
            assert!((x - y).abs() < 0.1, "{precision}: {w:?} vs f32 {w32:?}");
        }
        // bf16 rounds the 8-bit mantissa: the weights are not the f32 ones.
        assert_ne!(w, w32, "{precision} computed in f32");
    }
    // 16-mixed resume: the scaler state travels in the checkpoint.
    let straight = tempfile::tempdir().unwrap();
    let scaler = GradScaler {
        growth_interval: 3,
        ..GradScaler::default()
    };
    let (w_straight, _, s_straight) = train_with(
        6,
        Some(straight.path()),
        None,
        Precision::F16Mixed,
        Some(scaler.clone()),
    );
    let split = tempfile::tempdir().unwrap();
    train_with(
        3,
        Some(split.path()),
        None,
        Precision::F16Mixed,
        Some(scaler.clone()),
    );
    let last = split.path().join("checkpoints/last.ckpt");
    let (w_resumed, _, s_resumed) = train_with(
        6,
        Some(split.path()),
        Some(&last),
        Precision::F16Mixed,
        Some(GradScaler::default()),
    );
    assert_eq!(w_resumed, w_straight);
    assert_eq!(s_resumed, s_straight);
    // The loss scale of every step is in the TensorBoard file (the resumed fit wrote a second
    // file beside the first).
    let files = kiln::tensorboard::event_files(split.path()).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let scales: Vec<f32> = kiln::tensorboard::read_events(&files[1])
        .unwrap()
        .iter()
        .flat_map(|e| e.scalars.clone())
        .filter(|(t, _)| t == "step/loss_scale")
        .map(|(_, v)| v)
        .collect();
    assert!(!scales.is_empty());
    assert_eq!(*scales.last().unwrap() as f64, s_resumed.scale);
    // With growth every 3 steps the scale reaches 2^17, where these O(1) gradients overflow
    // f16 (> 65504): the grow → skip → back-off cycle ran, and resumed in step.
    assert!(s_straight.skipped_steps >= 1, "{s_straight:?}");
    assert!(
        [65536.0, 131072.0].contains(&s_straight.scale),
        "{s_straight:?}"
    );
}

/// AdamW that records the learning rate of every update it applies.
#[derive(Clone)]
struct LrProbe<O> {
    inner: O,
    seen: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
}

impl<O: burn::optim::Optimizer<Net<B>, B>> burn::optim::Optimizer<Net<B>, B> for LrProbe<O> {
    type Record = O::Record;
    fn step(&mut self, lr: f64, module: Net<B>, grads: burn::optim::GradientsParams) -> Net<B> {
        self.seen.lock().unwrap().push(lr);
        self.inner.step(lr, module, grads)
    }
    fn step_multi(
        &mut self,
        lr: f64,
        module: Net<B>,
        grads: burn::optim::MultiGradientsParams,
    ) -> Net<B> {
        self.seen.lock().unwrap().push(lr);
        self.inner.step_multi(lr, module, grads)
    }
    fn to_record(&self) -> Self::Record {
        self.inner.to_record()
    }
    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_record(record),
            seen: self.seen,
        }
    }
}

/// What a scheduled run did: final weights, epoch metrics, and the rate of every update.
struct Scheduled {
    weights: Vec<f32>,
    history: Vec<(usize, Row)>,
    step_lrs: Vec<f64>,
}

/// 64 samples in batches of 8: this many optimiser steps per epoch.
const STEPS_PER_EPOCH: usize = 8;

fn train_scheduled<S: burn::optim::lr_scheduler::LrScheduler>(
    scheduler: S,
    interval: Interval,
    epochs: usize,
    run_dir: &Path,
    resume: bool,
) -> Scheduled {
    let device = Default::default();
    seed::seed_backend::<B>(&device, 11, "init", 0);
    let model = Net::<B>::new(&device);
    let mut task = Regression::new(64, false);
    let mut cfg = TrainerConfig::new(epochs);
    cfg.seed = 11;
    cfg.run_dir = Some(run_dir.to_path_buf());
    cfg.resume_from = resume.then(|| run_dir.join("checkpoints/last.ckpt"));
    cfg.progress = false;
    let seen = std::sync::Arc::default();
    let probe = LrProbe {
        inner: AdamWConfig::new().with_epsilon(1e-8).init::<B, Net<B>>(),
        seen: std::sync::Arc::clone(&seen),
    };
    let mut optim = Standard::new(probe, scheduler, interval);
    let out = Trainer::new(cfg)
        .with_callback(ModelCheckpoint::last_only())
        .fit(&mut task, model, &mut optim, &device)
        .unwrap();
    let step_lrs = seen.lock().unwrap().clone();
    Scheduled {
        weights: out.model.weights(),
        history: out.history,
        step_lrs,
    }
}

/// Runs `epochs` epochs straight, and `split` epochs then a resume to `epochs`; checks that both
/// give the same weights, the same update-by-update learning rates, and the same logged ones.
fn check_scheduled_resume<S: burn::optim::lr_scheduler::LrScheduler>(
    make: impl Fn() -> S,
    interval: Interval,
    epochs: usize,
    split: usize,
) -> Vec<f64> {
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = train_scheduled(make(), interval, epochs, straight_dir.path(), false);
    let split_dir = tempfile::tempdir().unwrap();
    let first = train_scheduled(make(), interval, split, split_dir.path(), false);
    let second = train_scheduled(make(), interval, epochs, split_dir.path(), true);

    assert_eq!(straight.step_lrs.len(), epochs * STEPS_PER_EPOCH);
    assert_eq!(first.step_lrs.len(), split * STEPS_PER_EPOCH);
    assert_eq!(
        second.step_lrs.len(),
        (epochs - split) * STEPS_PER_EPOCH,
        "the resumed run re-ran epochs"
    );
    let resumed_lrs: Vec<f64> = first
        .step_lrs
        .iter()
        .chain(&second.step_lrs)
        .copied()
        .collect();
    assert_eq!(
        resumed_lrs, straight.step_lrs,
        "{interval:?}: the learning rates after resuming are not the uninterrupted run's"
    );
    assert_eq!(
        second.weights, straight.weights,
        "{interval:?}: resumed weights differ from an uninterrupted run"
    );
    // metrics.csv: the same rows (the resumed run's earlier epochs are read back from it), and
    // the `lr` of an epoch is the rate of its first update.
    assert_eq!(second.history.len(), epochs);
    for ((e1, r1), (e2, r2)) in straight.history.iter().zip(&second.history) {
        assert_eq!(e1, e2);
        for key in ["lr", "train_loss", "val_loss"] {
            assert_eq!(r1[key], r2[key], "{interval:?}: `{key}` of epoch {e1}");
        }
        assert_eq!(
            r1["lr"],
            straight.step_lrs[e1 * STEPS_PER_EPOCH],
            "{interval:?}: logged lr of epoch {e1} is not the rate its first step used"
        );
    }
    straight.step_lrs
}

#[test]
fn resume_with_a_changing_learning_rate_continues_the_schedule() {
    let _guard = seed::global_lock();
    use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;

    // Per-step cosine annealing from 0.05 to 0.001 over the 48 steps of 6 epochs, interrupted
    // mid-schedule after 3 epochs.
    let (max, min, iters) = (0.05, 0.001, 6 * STEPS_PER_EPOCH - 1);
    let cosine = || {
        CosineAnnealingLrSchedulerConfig::new(max, iters)
            .with_min_lr(min)
            .init()
            .unwrap()
    };
    let lrs = check_scheduled_resume(cosine, Interval::Step, 6, 3);
    for (i, lr) in lrs.iter().enumerate() {
        let expected = min
            + 0.5 * (max - min) * (1.0 + (i as f64 / iters as f64 * std::f64::consts::PI).cos());
        assert!(
            (lr - expected).abs() < 1e-12,
            "step {i}: {lr} vs {expected}"
        );
    }
    assert_eq!((lrs[0], *lrs.last().unwrap()), (max, min));

    // Per-epoch warm-up then step decay (γ = 0.5 at epochs 2 and 4), interrupted after 3 epochs.
    let multistep = || kiln::optim::WarmupMultiStepLr::new(0.04, 2, vec![2, 4], 0.5);
    let lrs = check_scheduled_resume(multistep, Interval::Epoch, 6, 3);
    let per_epoch: Vec<f64> = lrs.chunks(STEPS_PER_EPOCH).map(|c| c[0]).collect();
    assert_eq!(per_epoch, [0.02, 0.04, 0.02, 0.02, 0.01, 0.01]);
    for chunk in lrs.chunks(STEPS_PER_EPOCH) {
        assert!(chunk.iter().all(|&lr| lr == chunk[0]), "{chunk:?}");
    }
}

/// The `best-*` checkpoint files of a directory.
fn best_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("best-"))
        .collect();
    names.sort();
    names
}

/// The epoch count, metrics and weights stored in a checkpoint.
fn checkpoint_weights(path: &Path) -> (usize, Row, Vec<f32>) {
    let device = Default::default();
    let (meta, sections) = kiln::checkpoint::read_checkpoint(path).unwrap();
    let record =
        kiln::checkpoint::record_from_bytes::<B, _>(sections["model"].clone(), &device).unwrap();
    let net = kiln::checkpoint::load_checked(Net::<B>::new(&device), record, "best").unwrap();
    (meta.epochs_completed, meta.metrics, net.weights())
}

/// Non-monotonic validation losses: the lowest is epoch 3, then 5 and 1.
const SCRIPTED_LOSS: [f64; 6] = [0.9, 0.4, 0.7, 0.3, 0.5, 0.35];
/// Non-monotonic validation accuracies: the highest is epoch 1, then 3.
const SCRIPTED_ACC: [f64; 6] = [0.2, 0.9, 0.5, 0.8, 0.7, 0.1];

/// Fits with the scripted validation metrics and the given checkpoint callbacks; returns the
/// weights seen at every validation.
fn fit_scripted(
    epochs: usize,
    run_dir: &Path,
    resume: bool,
    checkpoints: Vec<ModelCheckpoint>,
) -> Vec<Vec<f32>> {
    let device = Default::default();
    seed::seed_backend::<B>(&device, 3, "init", 0);
    let mut task = Regression::new(32, false);
    task.scripted_val = Some(SCRIPTED_LOSS.to_vec());
    task.scripted_acc = Some(SCRIPTED_ACC.to_vec());
    let mut cfg = TrainerConfig::new(epochs);
    cfg.seed = 3;
    cfg.progress = false;
    cfg.run_dir = Some(run_dir.to_path_buf());
    cfg.resume_from = resume.then(|| run_dir.join("checkpoints/last.ckpt"));
    let mut trainer = Trainer::new(cfg);
    for cb in checkpoints {
        trainer = trainer.with_callback(cb);
    }
    trainer
        .fit(&mut task, Net::<B>::new(&device), &mut optim(), &device)
        .unwrap();
    task.seen
}

#[test]
fn best_checkpoints_hold_the_best_epochs_by_the_monitor_mode() {
    let _guard = seed::global_lock();
    // Neither the best loss nor the best accuracy is at the last epoch.
    let dir = tempfile::tempdir().unwrap();
    let (min_dir, max_dir) = (dir.path().join("min"), dir.path().join("max"));
    let seen = fit_scripted(
        6,
        dir.path(),
        false,
        vec![
            ModelCheckpoint::best("val_loss", Mode::Min, 1).with_dir(&min_dir),
            ModelCheckpoint::best("val_acc", Mode::Max, 2).with_dir(&max_dir),
        ],
    );
    assert_eq!(seen.len(), 6);
    for e in 1..6 {
        assert_ne!(seen[e], seen[e - 1], "the weights must change every epoch");
    }

    let best = best_files(&min_dir);
    assert_eq!(best, ["best-epoch=003-val_loss=0.300000.ckpt"], "{best:?}");
    let (epochs, metrics, weights) = checkpoint_weights(&min_dir.join(&best[0]));
    assert_eq!((epochs, metrics["val_loss"]), (4, 0.3));
    assert_eq!(
        weights, seen[3],
        "the min-mode best checkpoint holds other weights"
    );

    let best = best_files(&max_dir);
    assert_eq!(
        best,
        [
            "best-epoch=001-val_acc=0.900000.ckpt",
            "best-epoch=003-val_acc=0.800000.ckpt"
        ],
        "{best:?}"
    );
    for (file, epoch) in best.iter().zip([1, 3]) {
        let (epochs, metrics, weights) = checkpoint_weights(&max_dir.join(file));
        assert_eq!(epochs, epoch + 1);
        assert_eq!(metrics["val_acc"], SCRIPTED_ACC[epoch]);
        assert_eq!(weights, seen[epoch], "{file} holds other weights");
    }
    // last.ckpt is the last epoch's, not a best one.
    let (epochs, _, weights) = checkpoint_weights(&min_dir.join("last.ckpt"));
    assert_eq!((epochs, &weights), (6, &seen[5]));

    // Across a resume: after 2 epochs the best is epoch 1; the resumed run replaces it by epoch
    // 3 (deleting epoch 1's file) and keeps it against epoch 5's 0.35.
    let split = tempfile::tempdir().unwrap();
    let ckpt = || ModelCheckpoint::best("val_loss", Mode::Min, 1);
    fit_scripted(2, split.path(), false, vec![ckpt()]);
    let dir = split.path().join("checkpoints");
    assert_eq!(best_files(&dir), ["best-epoch=001-val_loss=0.400000.ckpt"]);
    fit_scripted(6, split.path(), true, vec![ckpt()]);
    let best = best_files(&dir);
    assert_eq!(best, ["best-epoch=003-val_loss=0.300000.ckpt"], "{best:?}");
    let (epochs, _, weights) = checkpoint_weights(&dir.join(&best[0]));
    assert_eq!((epochs, &weights), (4, &seen[3]));
}

/// Two checkpoint callbacks of one run keep their own top-k lists across a resume (as in the
/// uninterrupted run above), and a checkpoint from when every checkpoint callback saved its
/// state under the one key `model_checkpoint` still resumes with its list.
#[test]
fn checkpoint_callbacks_keep_their_own_state_across_a_resume() {
    let _guard = seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let max_dir = dir.path().join("max");
    let both = || {
        vec![
            ModelCheckpoint::best("val_loss", Mode::Min, 1),
            ModelCheckpoint::best("val_acc", Mode::Max, 2).with_dir(&max_dir),
        ]
    };
    fit_scripted(2, dir.path(), false, both());
    fit_scripted(6, dir.path(), true, both());
    let best = best_files(&dir.path().join("checkpoints"));
    assert_eq!(best, ["best-epoch=003-val_loss=0.300000.ckpt"], "{best:?}");
    let best = best_files(&max_dir);
    assert_eq!(
        best,
        [
            "best-epoch=001-val_acc=0.900000.ckpt",
            "best-epoch=003-val_acc=0.800000.ckpt"
        ],
        "{best:?}"
    );

    // The old key: last.ckpt of a 2-epoch run rewritten with its one state under
    // `model_checkpoint`. The resumed run knows epoch 1's 0.4, so epoch 2's 0.7 is no best
    // and epoch 3's 0.3 replaces epoch 1's file.
    let old = tempfile::tempdir().unwrap();
    let one = || vec![ModelCheckpoint::best("val_loss", Mode::Min, 1)];
    fit_scripted(2, old.path(), false, one());
    let last = old.path().join("checkpoints/last.ckpt");
    let (mut meta, sections) = kiln::checkpoint::read_checkpoint(&last).unwrap();
    assert_eq!(meta.callbacks.len(), 1);
    let state = meta.callbacks.values().next().unwrap().clone();
    meta.callbacks = [("model_checkpoint".to_string(), state)]
        .into_iter()
        .collect();
    let sections = sections
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.clone()))
        .collect();
    kiln::checkpoint::write_checkpoint(&last, meta, sections).unwrap();
    fit_scripted(6, old.path(), true, one());
    let best = best_files(&old.path().join("checkpoints"));
    assert_eq!(best, ["best-epoch=003-val_loss=0.300000.ckpt"], "{best:?}");
}
