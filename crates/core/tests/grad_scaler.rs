//! Each rule of `16-mixed`'s loss scaling (PyTorch's `GradScaler`), tested so that breaking that
//! rule alone fails a test: with plain SGD, whose update is proportional to the gradient (Adam's
//! `m/√v` hides a constant factor on every gradient), and with gradient clipping below the
//! gradient norm.

mod common;

use burn::optim::SgdConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::Tensor;
use common::Net;
use kiln::amp::{GradScaler, Precision};
use kiln::backend::{Autodiff, Flex};
use kiln::metric_log::Row;
use kiln::optim::{Interval, Standard};
use kiln::step::{StepStatus, Stepper};
use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};

type B = Autodiff<Flex>;

/// [`common::loss`] on the default device.
fn loss(model: &Net<B>, scale_targets: f32) -> Tensor<B, 1> {
    common::loss(model, scale_targets, &Default::default())
}

type Sgd =
    Standard<burn::optim::adaptor::OptimizerAdaptor<burn::optim::Sgd<Flex>, Net<B>, B>, ConstantLr>;

fn sgd(lr: f64) -> Sgd {
    Standard::new(
        SgdConfig::new().init::<B, Net<B>>(),
        ConstantLr::new(lr),
        Interval::Step,
    )
}

/// The loss scale of the single-step tests: 2^10, where the batch's scaled f16 gradients are
/// finite (at the default 2^16 the first step overflows and is skipped, as in PyTorch), yet an
/// update left scaled would still be a thousand times too large.
const SCALE: f64 = 1024.0;

/// One optimiser step from the same weights on the same batch; returns the new weights.
fn one_step(precision: Precision, mut optim: Sgd) -> Vec<f32> {
    let device = Default::default();
    let mut stepper = Stepper::new(precision).with_scaler(GradScaler::new(SCALE));
    let model = Net::<B>::new(&device);
    let l = stepper.forward(|| loss(&model, 1.0));
    let (model, status) = stepper.step(model, l, &mut optim).unwrap();
    assert_eq!(status, StepStatus::Applied);
    model.weights()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_16_mixed_sgd_step_is_the_f32_step_the_gradients_are_unscaled_first() {
    let initial = Net::<B>::new(&Default::default()).weights();
    let f32_step = one_step(Precision::F32, sgd(0.1));
    let mixed = one_step(Precision::F16Mixed, sgd(0.1));
    let update = max_abs_diff(&f32_step, &initial);
    let diff = max_abs_diff(&mixed, &f32_step);
    // The update is O(0.1); f16 rounding of the forward pass moves it by ~1e-3 of that. A
    // gradient left scaled by 2^16 would move the weights by thousands.
    assert!(update > 0.05, "the step moved the weights by only {update}");
    assert!(
        diff < 2e-3 * update,
        "16-mixed SGD step differs from the f32 step by {diff} (update {update})"
    );
}

#[test]
fn clipping_under_16_mixed_sees_the_unscaled_gradients() {
    // A global-norm clip far below the gradient norm: both runs must take the same clipped
    // step. Clipping the scaled gradients (then unscaling) would shrink the step 2^16-fold.
    let initial = Net::<B>::new(&Default::default()).weights();
    let f32_step = one_step(Precision::F32, sgd(1.0).with_clip_norm(0.01));
    let mixed = one_step(Precision::F16Mixed, sgd(1.0).with_clip_norm(0.01));
    let update: f32 = f32_step
        .iter()
        .zip(&initial)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    // lr 1 × a gradient clipped to norm 0.01.
    assert!((update - 0.01).abs() < 1e-4, "clipped update norm {update}");
    let diff = max_abs_diff(&mixed, &f32_step);
    assert!(
        diff < 1e-2 * update,
        "16-mixed + clip differs from 32 + clip by {diff} (update {update})"
    );
}

#[test]
fn an_inf_gradient_skips_the_step_and_halves_the_scale() {
    let device = Default::default();
    let mut stepper = Stepper::new(Precision::F16Mixed).with_scaler(GradScaler::new(SCALE));
    let model = Net::<B>::new(&device);
    let initial = model.weights();
    let mut optim = sgd(0.1);
    // Targets of 1e6 make the scaled f16 gradients overflow.
    let l = stepper.forward(|| loss(&model, 1e6));
    let (model, status) = stepper.step(model, l, &mut optim).unwrap();
    assert_eq!(status, StepStatus::Skipped);
    assert_eq!(
        model.weights(),
        initial,
        "a skipped step changed the weights"
    );
    assert_eq!(stepper.scaler().scale, SCALE / 2.0);
    assert_eq!(stepper.scaler().skipped_steps, 1);
    // The next finite step is applied at the halved scale.
    let l = stepper.forward(|| loss(&model, 1.0));
    let (model, status) = stepper.step(model, l, &mut optim).unwrap();
    assert_eq!(status, StepStatus::Applied);
    assert_ne!(model.weights(), initial);
    assert_eq!(stepper.scaler().growth_tracker, 1);
}

/// Four batches of the fixed batch per epoch.
struct Fixed;

impl Task<B> for Fixed {
    type Model = Net<B>;
    type Batch = ();

    fn train_loader(&mut self, _info: &EpochInfo, _seed: u64) -> anyhow::Result<Loader<()>> {
        Ok(Loader::from_vec(vec![(); 4]))
    }

    fn training_step(
        &mut self,
        model: &Net<B>,
        _batch: (),
        _info: &EpochInfo,
    ) -> anyhow::Result<StepOutput<B>> {
        Ok(StepOutput {
            loss: loss(model, 1.0),
            batch_size: 3,
            logs: vec![],
        })
    }

    fn validate(&mut self, _model: &Net<Flex>, _info: &EpochInfo) -> anyhow::Result<Row> {
        Ok(Row::new())
    }
}

#[test]
fn the_trainer_grows_the_scale_after_each_growth_interval_of_finite_steps() {
    let device = Default::default();
    let mut cfg = TrainerConfig::new(2);
    cfg.progress = false;
    cfg.precision = Precision::F16Mixed;
    let scaler = GradScaler {
        growth_interval: 3,
        ..GradScaler::new(1.0)
    };
    let mut trainer = Trainer::new(cfg).with_grad_scaler(scaler);
    let out = trainer
        .fit(&mut Fixed, Net::<B>::new(&device), &mut sgd(0.01), &device)
        .unwrap();
    // 8 finite steps at interval 3: doubled after steps 3 and 6, two steps counted since.
    let s = trainer.grad_scaler();
    assert_eq!((s.scale, s.growth_tracker, s.skipped_steps), (4.0, 2, 0));
    // The epoch rows log the scale the epoch ended with.
    assert_eq!(out.history[0].1["loss_scale"], 2.0);
    assert_eq!(out.history[1].1["loss_scale"], 4.0);
}

#[test]
fn a_backend_without_the_half_type_is_refused_naming_mode_and_backend() {
    use burn::backend::NdArray;
    let flex = Default::default();
    kiln::amp::check_backend::<Flex>(Precision::F16Mixed, &flex).unwrap();
    kiln::amp::check_backend::<Flex>(Precision::Bf16Mixed, &flex).unwrap();
    // burn-ndarray computes in f32/f64 only.
    let nd = Default::default();
    kiln::amp::check_backend::<NdArray>(Precision::F32, &nd).unwrap();
    for (precision, name) in [
        (Precision::F16Mixed, "16-mixed"),
        (Precision::Bf16Mixed, "bf16-mixed"),
    ] {
        let e = kiln::amp::check_backend::<NdArray>(precision, &nd)
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains("ndarray"), "{e}");
    }
    // The trainer asks before the first step.
    let mut cfg = TrainerConfig::new(1);
    cfg.progress = false;
    cfg.precision = Precision::F16Mixed;
    let e = Trainer::new(cfg)
        .fit(
            &mut NdFixed,
            Net::<Autodiff<NdArray>>::new(&nd),
            &mut Standard::new(
                SgdConfig::new().init::<Autodiff<NdArray>, Net<Autodiff<NdArray>>>(),
                ConstantLr::new(0.1),
                Interval::Step,
            ),
            &nd,
        )
        .err()
        .expect("16-mixed on ndarray must be refused")
        .to_string();
    assert!(e.contains("16-mixed") && e.contains("ndarray"), "{e}");
}

/// [`Fixed`] on burn-ndarray.
struct NdFixed;

impl Task<Autodiff<burn::backend::NdArray>> for NdFixed {
    type Model = Net<Autodiff<burn::backend::NdArray>>;
    type Batch = ();

    fn train_loader(&mut self, _info: &EpochInfo, _seed: u64) -> anyhow::Result<Loader<()>> {
        Ok(Loader::from_vec(vec![()]))
    }

    fn training_step(
        &mut self,
        _model: &Self::Model,
        _batch: (),
        _info: &EpochInfo,
    ) -> anyhow::Result<StepOutput<Autodiff<burn::backend::NdArray>>> {
        unreachable!("the trainer must refuse before training")
    }

    fn validate(
        &mut self,
        _model: &Net<burn::backend::NdArray>,
        _info: &EpochInfo,
    ) -> anyhow::Result<Row> {
        Ok(Row::new())
    }
}
