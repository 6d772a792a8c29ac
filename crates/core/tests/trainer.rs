//! Behaviour of the Trainer on a tiny regression task: learning, checkpoints, exact resume,
//! early stopping with restore-best, and error paths.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln::callbacks::{EarlyStopping, Mode, ModelCheckpoint};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{EpochInfo, Loader, Precision, StepOutput, Task, Trainer, TrainerConfig};
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
        self.linear.forward(self.dropout.forward(x))
    }
    fn weights(&self) -> Vec<f32> {
        let mut w = self
            .linear
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        w.extend(
            self.linear
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        w
    }
}

struct Regression {
    x: Vec<[f32; 2]>,
    y: Vec<f32>,
    /// When set, validate() reports these losses instead of the real one.
    scripted_val: Option<Vec<f64>>,
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
        Ok([("val_loss".to_string(), loss)].into())
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
    let device = Default::default();
    seed::seed_backend::<B>(&device, 11, "init", 0);
    let model = Net::<B>::new(&device);
    let mut task = Regression::new(64, false);
    let mut cfg = TrainerConfig::new(epochs);
    cfg.seed = 11;
    cfg.run_dir = run_dir.map(Path::to_path_buf);
    cfg.resume_from = resume.map(Path::to_path_buf);
    cfg.progress = false;
    let mut trainer = Trainer::new(cfg)
        .with_callback(ModelCheckpoint::best("val_loss", Mode::Min, 2).with_every_n_epochs(2));
    let out = trainer
        .fit(&mut task, model, &mut optim(), &device)
        .unwrap();
    (out.model.weights(), out)
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
    cfg.precision = Precision::F16Mixed;
    let err = Trainer::new(cfg)
        .fit(
            &mut Regression::new(8, false),
            Net::<B>::new(&device),
            &mut optim(),
            &device,
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("mixed precision"), "{err}");

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
