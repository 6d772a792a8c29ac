//! The reid model on burn-wgpu (`--features wgpu`; CI runs this on Mesa's lavapipe) against the
//! same weights on burn-flex, at tiny sizes: ResNet18 and ResNet50-IBN-a at base width 4 and 8,
//! each with the BNNeck, classifier and centers, on 8 images of 32×16 (2 identities × 4).
//!
//! Weights are initialised on flex and copied to wgpu through the checkpoint format
//! (`kiln::testing::transfer`); differences are per tensor, relative to the flex tensor's largest
//! value (`kiln::testing::max_relative_diff`). Tolerances:
//!
//! * evaluation forward in f32 (pre-BN feature, BNNeck feature, logits): 1e-3 (ResNet18's
//!   logits differ by 2e-7, ResNet50-IBN-a's on 64×32 images by 3e-6);
//! * the same under `16-mixed` autocast, wgpu against flex: 1e-2 (ResNet50-IBN-a: 3e-2);
//! * one CTL training step in f32 (batch statistics, SGD lr 0.1): loss 1e-4, gradients 1e-3,
//!   updated weights and BatchNorm running statistics 1e-4 (ResNet50-IBN-a, whose step is
//!   ill-conditioned at these sizes: twice the gradients' own sensitivity to a 1e-6 nudge of
//!   the input, see the test).

#![cfg(feature = "wgpu")]

use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use kiln::amp::{Precision, autocast};
use kiln::backend::{Autodiff, Flex, WgpuBackend, WgpuDevice};
use kiln::testing::{Mismatch, max_relative_diff};
use reid::loss::objective::{LossConfig, LossInputs, ctl_model_loss};
use reid::model::{Arch, ReidModel, ResNetConfig};

const N: usize = 8;
const H: usize = 32;
const W: usize = 16;
const CLASSES: usize = 2;

type Outputs = Vec<(String, Vec<f32>)>;

fn wgpu() -> WgpuDevice {
    WgpuDevice::DefaultDevice
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(burn::tensor::FloatDType::F32)
        .into_data()
        .to_vec()
        .unwrap()
}

/// Deterministic images `[8, 3, 32, 16]` with values of a normalised photo's size.
/// A batch `[N, 3, H·scale, W·scale]`.
fn images<B: Backend>(scale: usize, device: &B::Device) -> Tensor<B, 4> {
    let (h, w) = (H * scale, W * scale);
    let v: Vec<f32> = (0..N * 3 * h * w)
        .map(|i| {
            let x = i as f32 * 0.37;
            x.sin() + 0.5 * (0.11 * x).cos() + 0.2 * ((i * 7919) % 17) as f32 / 17.0
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [N, 3, h, w]), device)
}

/// The networks, each with the image scale its forward test uses: IBN-a's instance norms
/// normalise each channel over its own feature map, which on 32×16 images is 2×1 values in
/// layer 3, where `(x − mean)/σ` of two values turns f16 rounding into 6e-2 of the output; on
/// 64×32 images it is a 4×2 map per channel.
fn configs() -> Vec<(&'static str, ResNetConfig, usize)> {
    vec![
        (
            "resnet18 (width 4)",
            ResNetConfig::new(Arch::ResNet18, 1).with_width(4),
            1,
        ),
        (
            "resnet50_ibn_a (width 8)",
            ResNetConfig::new(Arch::ResNet50IbnA, 1).with_width(8),
            2,
        ),
    ]
}

fn pair<F: Backend, G: Backend>(
    config: &ResNetConfig,
    flex: &F::Device,
    wgpu: &G::Device,
) -> (ReidModel<F>, ReidModel<G>) {
    // Seeded under kiln's generator lock: tests running at the same time draw the same weights.
    let f =
        kiln::seed::init_module::<F, _, _>(flex, 5, || ReidModel::<F>::new(config, CLASSES, flex))
            .unwrap();
    let g = ReidModel::<G>::new(config, CLASSES, wgpu).unwrap();
    let g = kiln::testing::transfer(&f, g, wgpu).unwrap();
    (f, g)
}

fn outputs<B: Backend>(model: &ReidModel<B>, x: Tensor<B, 4>) -> Outputs {
    let out = model.forward(x);
    vec![
        ("global_feat".into(), values(out.global_feat)),
        ("bn_feat".into(), values(out.bn_feat)),
        ("logits".into(), values(out.logits)),
    ]
}

/// The tensor furthest from flex's, each measured against at least 1e-4 of the largest value
/// (`kiln::testing::max_relative_diff_floored`).
fn floored_diff(got: &Outputs, want: &Outputs) -> Mismatch {
    kiln::testing::max_relative_diff_floored(got, want, 1e-4).unwrap()
}

fn check(name: &str, what: &str, m: &Mismatch, tol: f32) {
    eprintln!("{name} {what}: {m}");
    assert!(
        m.relative() <= tol,
        "{name} {what}: {m} > tolerance {tol:e}"
    );
}

/// One network's f32 and (where the adapter has f16) `16-mixed` forward against flex.
fn forward_matches_flex(name: &str, config: &ResNetConfig, scale: usize, f16_tolerance: f32) {
    let f16 = kiln::amp::check_backend::<WgpuBackend>(Precision::F16Mixed, &wgpu()).is_ok();
    let (f, g) = pair::<Flex, WgpuBackend>(config, &Default::default(), &wgpu());
    let want = outputs(&f, images(scale, &Default::default()));
    let got = outputs(&g, images(scale, &wgpu()));
    check(name, "f32 forward", &floored_diff(&got, &want), 1e-3);
    if f16 {
        let want = autocast(Precision::F16Mixed, || {
            outputs(&f, images(scale, &Default::default()))
        });
        let got = autocast(Precision::F16Mixed, || outputs(&g, images(scale, &wgpu())));
        check(
            name,
            "16-mixed forward",
            &floored_diff(&got, &want),
            f16_tolerance,
        );
    }
}

#[test]
fn reid_forward_on_wgpu_matches_flex() {
    let (name, config, scale) = &configs()[0];
    forward_matches_flex(name, config, *scale, 1e-2);
}

/// On 64×32 images: burn-cubecl's convolution got the 1×1 downsample of the first bottleneck
/// wrong there (by the size of its output; on 32×16 it was exact), now a matrix product.
#[test]
fn resnet50_ibn_a_forward_on_wgpu_matches_flex() {
    let (name, config, scale) = &configs()[1];
    // Under 16-mixed: 3e-2. The instance norms divide by the spread of 8 values per channel in
    // layer 3, which multiplies f16's rounding (measured with these seeded weights: 2.3e-2;
    // 5.8e-2 on 32×16 images, where it is 2 values; 4.7e-2 with another draw of weights; in f32
    // the same network matches to 3e-6).
    forward_matches_flex(name, config, *scale, 3e-2);
}

/// One CTL step with SGD: (loss, gradients, updated weights and running statistics).
fn ctl_step<B: AutodiffBackend>(model: ReidModel<B>, x: Tensor<B, 4>) -> (f32, Outputs, Outputs) {
    let labels = [0usize, 0, 0, 0, 1, 1, 1, 1];
    let is_real = [true; N];
    let features = model.forward_features(x);
    let inputs = LossInputs {
        features,
        labels: &labels,
        is_real: &is_real,
        centers: model.center_loss.centers.val(),
    };
    let classify = |f: Tensor<B, 2>| model.classify(model.bnneck(f));
    let loss = ctl_model_loss(&LossConfig::default(), inputs, classify)
        .unwrap()
        .total;
    let value = values(loss.clone())[0];
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let g = kiln::testing::gradients(&model, &grads);
    let mut optim = SgdConfig::new().init::<B, ReidModel<B>>();
    let model = optim.step(0.1, model, grads);
    (value, g, kiln::testing::module_params(&model).unwrap())
}

/// `x` with every value moved by a relative 1e-6 or less.
fn nudged<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let n = x.shape().num_elements();
    let v: Vec<f32> = (0..n)
        .map(|i| 1.0 + 1e-6 * (1.3 * i as f32).sin())
        .collect();
    let factor = Tensor::<B, 4>::from_data(TensorData::new(v, x.dims()), &x.device());
    x * factor
}

/// The gradients must match flex's to 1e-3, or, where the step itself is ill-conditioned, to
/// twice what nudging flex's input by 1e-6 (relative) does to flex's own gradients.
///
/// ResNet18 is well-conditioned here (a nudge moves its gradients by about 1e-5), and the test
/// found burn-cubecl's wrong input gradient of strided 1×1 convolutions (ResNet's downsample):
/// every gradient below layer 3 was off by up to 1.4× its size. ResNet50-IBN-a's step is not:
/// at these sizes its instance norms see 8 values per channel and a nudge of 1e-6 moves its
/// gradients by 0.2–0.3 of their size (with the CTL's hardest-pair mining or with the
/// cross-entropy alone), more than wgpu and flex differ by (0.12); its loss must still agree to
/// 1e-4. `REID_WGPU_VERBOSE=1` prints each tensor's difference.
#[test]
fn reid_ctl_training_step_on_wgpu_matches_flex() {
    let flex = Default::default();
    for (name, config, scale) in configs() {
        let (f, g) = pair::<Autodiff<Flex>, Autodiff<WgpuBackend>>(&config, &flex, &wgpu());
        let (loss_f, grads_f, weights_f) = ctl_step(f.clone(), images(scale, &flex));
        let (_, grads_nudged, _) = ctl_step(f, nudged(images(scale, &flex)));
        let (loss_g, grads_g, weights_g) = ctl_step(g, images(scale, &wgpu()));
        if std::env::var_os("REID_WGPU_VERBOSE").is_some() {
            for (a, b) in grads_g.iter().zip(&grads_f) {
                let m = max_relative_diff(std::slice::from_ref(a), std::slice::from_ref(b));
                eprintln!("{name} gradient {}", m.unwrap());
            }
        }
        let loss = Mismatch {
            name: "loss".into(),
            diff: (loss_g - loss_f).abs(),
            scale: loss_f.abs(),
        };
        check(name, "step loss", &loss, 1e-4);
        assert!(!grads_f.is_empty(), "{name}: no gradients");
        let sensitivity = floored_diff(&grads_nudged, &grads_f);
        eprintln!("{name} step gradients, flex with its input nudged by 1e-6: {sensitivity}");
        // An ill-conditioned step's weights differ as its gradients do (some start at zero).
        let nudge = 2.0 * sensitivity.relative();
        let (grad_tol, weight_tol) = if nudge > 1e-3 {
            (nudge, nudge)
        } else {
            (1e-3, 1e-4)
        };
        check(
            name,
            "step gradients",
            &floored_diff(&grads_g, &grads_f),
            grad_tol,
        );
        check(
            name,
            "step weights",
            &floored_diff(&weights_g, &weights_f),
            weight_tol,
        );
    }
}
