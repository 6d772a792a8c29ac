//! A run that diverges stops with an error naming the step and the loss (a non-finite loss in
//! f32 and bf16, an exploding loss in any precision), keeps its last good checkpoint readable,
//! and a run directory it created without getting to a checkpoint is removed again.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::SgdConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln::amp::Precision;
use kiln::backend::{Autodiff, Flex};
use kiln::callbacks::ModelCheckpoint;
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::trainer::{DivergenceCheck, EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    linear: Linear<B>,
}

fn net<B: Backend>(device: &B::Device) -> Net<B> {
    Net {
        linear: Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.5f32], [1, 1]),
                device,
            )),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.0f32], [1]),
                device,
            ))),
        },
    }
}

/// Ten steps per epoch of a squared error whose size is scripted by the optimiser step: the
/// loss is multiplied by `scale(step)` (1-based).
struct Scripted {
    scale: fn(usize) -> f32,
}

impl Task<B> for Scripted {
    type Model = Net<B>;
    type Batch = ();

    fn train_loader(&mut self, _info: &EpochInfo, _seed: u64) -> anyhow::Result<Loader<()>> {
        Ok(Loader::from_vec(vec![(); 10]))
    }

    fn training_step(
        &mut self,
        model: &Net<B>,
        _batch: (),
        info: &EpochInfo,
    ) -> anyhow::Result<StepOutput<B>> {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0], [2, 1]), &device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(vec![2.0f32, 3.0], [2, 1]), &device);
        let err = kiln::amp::linear_layer(&model.linear, x).cast(burn::tensor::FloatDType::F32) - y;
        let loss = err
            .square()
            .mean()
            .mul_scalar((self.scale)(info.global_step + 1));
        Ok(StepOutput {
            loss,
            batch_size: 2,
            logs: vec![],
        })
    }

    fn validate(&mut self, _model: &Net<Flex>, _info: &EpochInfo) -> anyhow::Result<Row> {
        Ok(Row::new())
    }
}

fn fit(
    scale: fn(usize) -> f32,
    precision: Precision,
    divergence: DivergenceCheck,
    run_dir: Option<&std::path::Path>,
) -> anyhow::Result<kiln::FitOutcome<Net<B>>> {
    let device = Default::default();
    let mut cfg = TrainerConfig::new(3);
    cfg.progress = false;
    cfg.precision = precision;
    cfg.divergence = divergence;
    cfg.run_dir = run_dir.map(std::path::Path::to_path_buf);
    let mut optim = Standard::new(
        SgdConfig::new().init::<B, Net<B>>(),
        ConstantLr::new(1e-3),
        Interval::Step,
    );
    Trainer::new(cfg)
        .with_callback(ModelCheckpoint::last_only())
        .fit(&mut Scripted { scale }, net(&device), &mut optim, &device)
}

fn explodes_at_step_15(step: usize) -> f32 {
    if step >= 15 { 1e6 } else { 1.0 }
}

fn nan_at_step_15(step: usize) -> f32 {
    if step >= 15 { f32::NAN } else { 1.0 }
}

#[test]
fn an_exploding_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for precision in [Precision::F32, Precision::Bf16Mixed, Precision::F16Mixed] {
        let run = dir.path().join(format!("{precision}"));
        let e = fit(
            explodes_at_step_15,
            precision,
            DivergenceCheck::default(),
            Some(&run),
        )
        .err()
        .unwrap_or_else(|| panic!("{precision}: the exploding run finished"));
        let msg = format!("{e:#}");
        assert!(
            msg.contains("exploded")
                && msg.contains("optimiser step 15")
                && msg.contains("epoch 1, batch 4"),
            "{precision}: {msg}"
        );
        // The last checkpoint (after the first epoch, 10 steps) is intact.
        let (meta, _) =
            kiln::checkpoint::read_checkpoint(run.join("checkpoints/last.ckpt")).unwrap();
        assert_eq!(
            (meta.epochs_completed, meta.global_step),
            (1, 10),
            "{precision}"
        );
    }
    // Turned off (both checks: the exploded weights soon give an inf loss), the run trains on.
    let off = DivergenceCheck {
        terminate_on_nan: false,
        factor: 0.0,
    };
    let out = fit(explodes_at_step_15, Precision::F32, off, None).unwrap();
    assert_eq!(out.epochs_completed, 3);
    // A loss that only wanders within the factor does not stop a run.
    fit(
        |s| 1.0 + (s % 7) as f32 * 10.0,
        Precision::F32,
        DivergenceCheck::default(),
        None,
    )
    .unwrap();
}

#[test]
fn a_non_finite_loss_stops_f32_and_bf16_runs_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    for precision in [Precision::F32, Precision::Bf16Mixed] {
        let run = dir.path().join(format!("{precision}"));
        let e = fit(
            nan_at_step_15,
            precision,
            DivergenceCheck::default(),
            Some(&run),
        )
        .err()
        .unwrap_or_else(|| panic!("{precision}: the NaN run finished"));
        let msg = format!("{e:#}");
        assert!(
            msg.contains("NaN") && msg.contains("optimiser step 15"),
            "{precision}: {msg}"
        );
        let (meta, _) =
            kiln::checkpoint::read_checkpoint(run.join("checkpoints/last.ckpt")).unwrap();
        assert_eq!(meta.epochs_completed, 1, "{precision}");
    }
    // terminate_on_nan off: the run goes on (with NaN weights, as asked).
    let off = DivergenceCheck {
        terminate_on_nan: false,
        factor: 0.0,
    };
    assert!(fit(nan_at_step_15, Precision::F32, off, None).is_ok());
    // 16-mixed's scaler skips such steps instead (16 of them here; it stops a run only after 50
    // in a row).
    let out = fit(
        nan_at_step_15,
        Precision::F16Mixed,
        DivergenceCheck::default(),
        None,
    )
    .unwrap();
    let skipped: f64 = out
        .history
        .iter()
        .map(|(_, row)| row["skipped_steps"])
        .sum();
    assert!(skipped >= 16.0, "{skipped} skipped steps");
}

#[test]
fn a_run_directory_the_failed_run_created_is_removed_and_an_existing_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Fails at step 3, before the first checkpoint: its new directories are gone.
    let new = dir.path().join("runs/new");
    let early = |s: usize| if s >= 3 { f32::NAN } else { 1.0 };
    assert!(
        fit(
            early,
            Precision::F32,
            DivergenceCheck::default(),
            Some(&new)
        )
        .is_err()
    );
    assert!(
        !dir.path().join("runs").exists(),
        "the failed run left its directory"
    );
    // A directory that existed is left, with what it held.
    let existing = dir.path().join("mine");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("notes.txt"), "keep me").unwrap();
    assert!(
        fit(
            early,
            Precision::F32,
            DivergenceCheck::default(),
            Some(&existing)
        )
        .is_err()
    );
    assert!(existing.join("notes.txt").exists());
    // A run that failed after a checkpoint keeps its directory (the checkpoint is the point).
    let later = dir.path().join("later");
    assert!(
        fit(
            nan_at_step_15,
            Precision::F32,
            DivergenceCheck::default(),
            Some(&later)
        )
        .is_err()
    );
    assert!(later.join("checkpoints/last.ckpt").exists());
}
