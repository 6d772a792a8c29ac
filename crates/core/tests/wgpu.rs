//! kiln on burn-wgpu (`--features wgpu`), against burn-flex: CI runs this on Mesa's lavapipe (a
//! software Vulkan device), so the cubecl code path that CUDA shares (fusion, autotuning, the
//! kernels' f16 variants) runs on every machine.
//!
//! * `--device wgpu` launches a job on an adapter; a bad adapter index is an error;
//! * `16-mixed` passes `check_backend` where the adapter has shader f16, `bf16-mixed` is refused
//!   (WGSL has no bf16), by `check_backend` and by the trainer before the first step;
//! * one SGD step (the loss-scaling tests' model and batch) in `32` and `16-mixed` lands on the
//!   weights flex's f32 step reaches: within 1e-5 of the update in `32`, 2e-3 in `16-mixed`;
//! * an injected inf gradient skips the `16-mixed` step and halves the scale;
//! * two in-process workers on the wgpu device all-reduce;
//! * weights saved on wgpu load on flex unchanged, and back;
//! * an LSTM recurrence, a pointwise convolution and the convolutions of the tier's networks
//!   (output, input and weight gradients) match flex: each found a burn-cubecl bug that kiln
//!   now works around (docs/gpu.md).

#![cfg(feature = "wgpu")]

mod common;

use burn::optim::SgdConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use common::Net;
use kiln::amp::{GradScaler, Precision};
use kiln::backend::{Autodiff, BackendJob, DeviceKind, DistJob, Flex, WgpuBackend, WgpuDevice};
use kiln::dist::{Dist, DistConfig, Reduce};
use kiln::optim::{Interval, Standard};
use kiln::step::{StepStatus, Stepper};

type W = Autodiff<WgpuBackend>;
type F = Autodiff<Flex>;

fn wgpu() -> WgpuDevice {
    WgpuDevice::DefaultDevice
}

fn f16_adapter() -> bool {
    kiln::backend::wgpu_adapters()
        .first()
        .is_some_and(|a| a.shader_f16)
}

/// `sin(i·step)` for `i` in `0..len`: deterministic test values in [-1, 1].
fn sines(len: usize, step: f32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * step).sin()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One SGD step of the loss-scaling tests' model on `device`; returns the new weights and the
/// step's status and loss scale.
fn sgd_step<B: AutodiffBackend>(
    precision: Precision,
    scale_targets: f32,
    device: &B::Device,
) -> (Vec<f32>, StepStatus, f64) {
    let mut optim = Standard::new(
        SgdConfig::new().init::<B, Net<B>>(),
        ConstantLr::new(0.1),
        Interval::Step,
    );
    // 2^10: the batch's scaled f16 gradients are finite (see `common::loss`).
    let mut stepper = Stepper::new(precision).with_scaler(GradScaler::new(1024.0));
    let model = Net::<B>::new(device);
    let l = stepper.forward(|| common::loss(&model, scale_targets, device));
    let (model, status) = stepper.step(model, l, &mut optim).unwrap();
    (model.weights(), status, stepper.scaler().scale)
}

#[test]
fn adapters_are_listed_and_a_job_runs_on_wgpu() {
    let adapters = kiln::backend::wgpu_adapters();
    assert!(
        !adapters.is_empty(),
        "no wgpu adapter: install a Vulkan driver"
    );
    for (i, a) in adapters.iter().enumerate() {
        eprintln!("wgpu:{i} {a}");
    }
    let report = kiln::backend::device_report().join("\n");
    assert!(report.contains("wgpu:0"), "{report}");

    struct Matmul;
    impl BackendJob for Matmul {
        type Output = (String, Vec<f32>);
        fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
            let a = Tensor::<B, 2>::from_data(
                TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
                &device,
            );
            let p = a.clone().matmul(a);
            Ok((B::name(&device), p.into_data().to_vec().unwrap()))
        }
    }
    for kind in [DeviceKind::Wgpu(None), DeviceKind::Wgpu(Some(0))] {
        let (name, p) = kiln::launch(kind, Matmul).unwrap();
        eprintln!("{kind}: backend {name}");
        assert_eq!(p, vec![7.0, 10.0, 15.0, 22.0], "{kind}");
    }
    let e = kiln::launch(DeviceKind::Wgpu(Some(99)), Matmul)
        .unwrap_err()
        .to_string();
    assert!(e.contains("wgpu adapter 99 requested"), "{e}");
}

#[test]
fn sixteen_mixed_runs_where_the_adapter_has_f16_and_bf16_is_refused() {
    let device = wgpu();
    let f16 = kiln::amp::check_backend::<WgpuBackend>(Precision::F16Mixed, &device);
    assert_eq!(f16.is_ok(), f16_adapter(), "{f16:?}");
    kiln::amp::check_backend::<WgpuBackend>(Precision::F32, &device).unwrap();
    let e = kiln::amp::check_backend::<WgpuBackend>(Precision::Bf16Mixed, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16-mixed") && e.contains("BF16"), "{e}");
    // The device is still usable after the refusal.
    let (w, status, _) = sgd_step::<W>(Precision::F32, 1.0, &device);
    assert_eq!(status, StepStatus::Applied);
    assert!(w.iter().all(|v| v.is_finite()));
}

#[test]
fn the_trainer_refuses_bf16_on_wgpu_before_the_first_step() {
    use kiln::metric_log::Row;
    use kiln::trainer::{EpochInfo, Loader, StepOutput, Task, Trainer, TrainerConfig};
    struct Never;
    impl Task<W> for Never {
        type Model = Net<W>;
        type Batch = ();
        fn train_loader(&mut self, _: &EpochInfo, _: u64) -> anyhow::Result<Loader<()>> {
            Ok(Loader::from_vec(vec![()]))
        }
        fn training_step(
            &mut self,
            _: &Net<W>,
            _: (),
            _: &EpochInfo,
        ) -> anyhow::Result<StepOutput<W>> {
            unreachable!("the trainer must refuse before training")
        }
        fn validate(&mut self, _: &Net<WgpuBackend>, _: &EpochInfo) -> anyhow::Result<Row> {
            Ok(Row::new())
        }
    }
    let device = wgpu();
    let mut cfg = TrainerConfig::new(1);
    cfg.progress = false;
    cfg.precision = Precision::Bf16Mixed;
    let e = Trainer::new(cfg)
        .fit(
            &mut Never,
            Net::<W>::new(&device),
            &mut Standard::new(
                SgdConfig::new().init::<W, Net<W>>(),
                ConstantLr::new(0.1),
                Interval::Step,
            ),
            &device,
        )
        .err()
        .expect("bf16-mixed on wgpu must be refused")
        .to_string();
    assert!(e.contains("bf16-mixed"), "{e}");
}

#[test]
fn an_sgd_step_on_wgpu_lands_on_the_flex_f32_step() {
    let initial = Net::<Flex>::new(&Default::default()).weights();
    let (flex, _, _) = sgd_step::<F>(Precision::F32, 1.0, &Default::default());
    let update = max_abs_diff(&flex, &initial);
    assert!(update > 0.02, "the step moved the weights by only {update}");
    let mut precisions = vec![(Precision::F32, 1e-5)];
    if f16_adapter() {
        precisions.push((Precision::F16Mixed, 2e-3));
    }
    for (precision, tol) in precisions {
        let (w, status, _) = sgd_step::<W>(precision, 1.0, &wgpu());
        assert_eq!(status, StepStatus::Applied);
        let diff = max_abs_diff(&w, &flex);
        eprintln!(
            "{precision}: wgpu step vs flex f32 step: max |Δw| = {diff:e} ({:.1e} of the update)",
            diff / update
        );
        assert!(
            diff <= tol * update,
            "{precision}: wgpu differs from flex by {diff} (update {update})"
        );
    }
}

#[test]
fn an_inf_gradient_skips_the_16_mixed_step_on_wgpu() {
    if !f16_adapter() {
        eprintln!("skipped: the adapter has no shader f16");
        return;
    }
    let device = wgpu();
    let initial = Net::<W>::new(&device).weights();
    // Targets of 1e6 make the scaled f16 gradients overflow.
    let (w, status, scale) = sgd_step::<W>(Precision::F16Mixed, 1e6, &device);
    assert_eq!(status, StepStatus::Skipped);
    assert_eq!(w, initial, "a skipped step changed the weights");
    assert_eq!(scale, 512.0);
}

#[derive(Clone)]
struct AllReduce;

impl DistJob for AllReduce {
    type Output = Vec<f32>;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        dist: Option<Dist>,
    ) -> anyhow::Result<Vec<f32>> {
        let dist = dist.expect("a data-parallel run");
        let r = dist.rank() as f32;
        let t = Tensor::<B::InnerBackend, 1>::from_data(
            TensorData::new(vec![r, 10.0 + r, -r], [3]),
            &device,
        );
        let out = dist.all_reduce(t, Reduce::Sum)?;
        let v = out.into_data().to_vec().unwrap();
        dist.finish()?;
        Ok(v)
    }
}

#[test]
fn two_in_process_workers_all_reduce_on_wgpu() {
    let ports = kiln::dist::free_ports(2).unwrap();
    let cfg = DistConfig {
        devices_per_node: 2,
        orchestrator: format!("127.0.0.1:{}", ports[0]),
        data_port: ports[1],
        timeout_secs: 60.0,
        ..DistConfig::default()
    };
    let out =
        kiln::backend::launch_workers(DeviceKind::Wgpu(None), &[], Some(cfg), AllReduce).unwrap();
    assert_eq!(out, vec![1.0, 21.0, -1.0]);
}

/// Every float of a module, in visiting order.
fn values<B: Backend, M: burn::module::Module<B>>(m: &M) -> Vec<f32> {
    let bytes = kiln::checkpoint::record_to_bytes::<B, _>(m.clone().into_record()).unwrap();
    kiln::checkpoint::record_params(&bytes)
        .unwrap()
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect()
}

#[test]
fn weights_saved_on_wgpu_load_on_flex_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let device = wgpu();
    // Weights trained on wgpu, so that they are not the constructor's.
    let mut optim = Standard::new(
        SgdConfig::new().init::<W, Net<W>>(),
        ConstantLr::new(0.1),
        Interval::Step,
    );
    let mut stepper = Stepper::new(Precision::F32);
    let model = Net::<W>::new(&device);
    let l = common::loss(&model, 1.0, &device);
    let (model, _) = stepper.step(model, l, &mut optim).unwrap();
    let trained = values::<W, _>(&model);

    let on_wgpu = dir.path().join("wgpu.mpk");
    kiln::checkpoint::save_module(&model, &on_wgpu).unwrap();
    let flex = kiln::checkpoint::load_module(
        Net::<F>::new(&Default::default()),
        &on_wgpu,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(values::<F, _>(&flex), trained);
    assert_eq!(flex.weights(), model.weights());

    let on_flex = dir.path().join("flex.mpk");
    kiln::checkpoint::save_module(&flex, &on_flex).unwrap();
    let back = kiln::checkpoint::load_module(Net::<W>::new(&device), &on_flex, &device).unwrap();
    assert_eq!(back.weights(), model.weights());
}

/// Six steps of `gates = x_t·W_ihᵀ + h·W_hhᵀ; (h, c) = lstm_cell(gates, c)` from a sliced
/// `[4, 6, 4]` input, as moola's LSTM runs them.
fn lstm_recurrence<B: Backend>(device: &B::Device) -> Vec<Vec<f32>> {
    let data = |shape: [usize; 2], k: f32| {
        Tensor::<B, 2>::from_data(
            TensorData::new(sines(shape[0] * shape[1], k), shape),
            device,
        )
    };
    let x = data([4, 24], 0.37).reshape([4, 6, 4]);
    let w_ih = data([32, 4], 0.71).transpose();
    let w_hh = data([32, 8], 0.29).transpose();
    let mut h = Tensor::<B, 2>::zeros([4, 8], device);
    let mut c = Tensor::<B, 2>::zeros([4, 8], device);
    let mut out = Vec::new();
    for x_t in x.chunk(6, 1) {
        let gates = x_t.reshape([4, 4]).matmul(w_ih.clone()) + h.matmul(w_hh.clone());
        (h, c) = kiln::fused::lstm_cell(gates, c);
        out.push(h.clone().into_data().to_vec::<f32>().unwrap());
    }
    out
}

/// burn-fusion 0.21 computed this recurrence wrongly from its second step on (by up to 0.5) when
/// the steps were queued together; `kiln::fused::lstm_cell` runs the queue at each step.
#[test]
fn an_lstm_recurrence_on_wgpu_matches_flex_at_every_step() {
    let want = lstm_recurrence::<Flex>(&Default::default());
    let got = lstm_recurrence::<WgpuBackend>(&wgpu());
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-5, "step {step}: wgpu differs from flex by {d}");
    }
}

/// A 1×1 convolution, 8 → 32 channels on `[8, 8, 16, 8]`, through `kiln::fused::conv2d`.
fn pointwise_conv<B: Backend>(device: &B::Device) -> Vec<f32> {
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(sines(8 * 8 * 16 * 8, 0.37), [8, 8, 16, 8]),
        device,
    );
    let w = Tensor::<B, 4>::from_data(TensorData::new(sines(32 * 8, 0.71), [32, 8, 1, 1]), device);
    let b = Tensor::<B, 1>::from_data(TensorData::new(sines(32, 0.13), [32]), device);
    let options = burn::tensor::ops::ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    kiln::fused::conv2d(x, w, Some(b), options)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// burn-cubecl 0.21's convolution got this 1×1 convolution wrong by the size of its output;
/// `kiln::fused::conv2d` runs pointwise convolutions as matrix products off flex.
#[test]
fn a_pointwise_convolution_on_wgpu_matches_flex() {
    let want = pointwise_conv::<Flex>(&Default::default());
    let got = pointwise_conv::<WgpuBackend>(&wgpu());
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-5, "wgpu differs from flex by {d}");
}

/// `(y, ∂/∂x, ∂/∂w)` of `sum(conv2d(x, w) ⊙ r)` for input `x` `[n, ci, h, w]`, a `k×k` kernel
/// to `co` channels with `stride` and `pad`, through `kiln::fused::conv2d`.
fn conv_grads<B: AutodiffBackend>(
    [n, ci, h, w]: [usize; 4],
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> [Vec<f32>; 3] {
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(sines(n * ci * h * w, 0.37), [n, ci, h, w]),
        device,
    )
    .require_grad();
    let wt = Tensor::<B, 4>::from_data(
        TensorData::new(sines(co * ci * k * k, 0.71), [co, ci, k, k]),
        device,
    )
    .require_grad();
    let options = burn::tensor::ops::ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
    let y = kiln::fused::conv2d(x.clone(), wt.clone(), None, options);
    let r = Tensor::<B, 4>::from_data(
        TensorData::new(sines(y.shape().num_elements(), 0.53), y.dims()),
        device,
    );
    let grads = (y.clone() * r).sum().backward();
    let v = |t: Tensor<B::InnerBackend, 4>| t.into_data().to_vec::<f32>().unwrap();
    [
        v(y.inner()),
        v(x.grad(&grads).unwrap()),
        v(wt.grad(&grads).unwrap()),
    ]
}

/// burn-cubecl 0.21 got the input gradient of every strided 1×1 convolution (ResNet's
/// downsample) wrong by the gradient's size; `kiln::fused::conv2d` runs them as a subsampling
/// and a matrix product off flex. The other cases are the 3×3 and 7×7 convolutions of
/// ResNet18 at the reid tier's sizes, which Burn's convolution computes right.
#[test]
fn convolution_gradients_on_wgpu_match_flex() {
    let cases = [
        ([8, 8, 4, 2], 16, 3, 2, 1),
        ([8, 8, 4, 2], 16, 1, 2, 0),
        ([8, 4, 8, 4], 8, 3, 2, 1),
        ([8, 4, 8, 4], 8, 1, 2, 0),
        ([8, 4, 8, 4], 4, 3, 1, 1),
        ([8, 16, 2, 1], 16, 3, 1, 1),
        ([8, 3, 32, 16], 4, 7, 2, 3),
    ];
    let mut failed = Vec::new();
    for (shape, co, k, stride, pad) in cases {
        let want = conv_grads::<F>(shape, co, k, stride, pad, &Default::default());
        let got = conv_grads::<W>(shape, co, k, stride, pad, &wgpu());
        for (what, (g, w)) in ["output", "input gradient", "weight gradient"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(g, w);
            eprintln!(
                "{shape:?} → {co}, {k}×{k} stride {stride} pad {pad}: {what} differs by {d:.2e} of {scale:.2e}"
            );
            if d > 1e-4 * scale.max(1.0) {
                failed.push(format!(
                    "{shape:?} → {co}, {k}×{k} stride {stride}: {what} {d:.2e}"
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
