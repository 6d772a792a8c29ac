//! Mixed precision: the counterpart of `torch.autocast` + `torch.amp.GradScaler`.
//!
//! Burn has no autocast, so kiln provides the three pieces PyTorch AMP is made of:
//!
//! 1. **f32 master weights.** Parameters and optimiser state stay in f32; nothing here changes a
//!    module's dtype. Burn's `cast` is differentiable, so the gradient of a half-precision op
//!    arrives on the f32 parameter in f32.
//! 2. **An op policy** ([`autocast`] + the op functions of this module). Inside an `autocast`
//!    scope with [`Precision::F16Mixed`] or [`Precision::Bf16Mixed`], the ops that PyTorch's
//!    autocast runs in "lower precision" cast their inputs (activations *and* weights) to f16 /
//!    bf16, compute there, and cast the result back to f32 at once:
//!
//!    | runs in f16 / bf16 (this module) | stays f32 (everything else) |
//!    |---|---|
//!    | [`linear`], [`linear_layer`] (all `nn.Linear`, attention in/out projections) | softmax, log-softmax, cross-entropy, focal loss |
//!    | [`matmul`] (attention scores `QKᵀ` and context `PV`, LSTM gate matmuls, RWKV projections) | layer norm, batch norm (statistics and running buffers), instance norm |
//!    | [`conv1d_layer`], [`conv2d_layer`] (every convolution) | exp, log, pow, reductions (sum/mean), distance matrices of the triplet / centroid losses |
//!
//!    Outside a scope (or with [`Precision::F32`]) the functions are the plain f32 ops, so a
//!    model written against them is unchanged in f32. The numerical effect per op is PyTorch's
//!    (inputs rounded to half, the product rounded to half); the difference is that PyTorch
//!    keeps the half output and runs the following element-wise ops in half too, whereas here
//!    every other op sees f32. That costs activation memory, not accuracy.
//! 3. **Dynamic loss scaling** ([`GradScaler`]) for `16-mixed`, with `torch.amp.GradScaler`'s
//!    semantics and defaults: the loss is multiplied by the scale (init 2¹⁶) before the
//!    backward pass; gradients are unscaled *before* clipping or the optimiser; a step whose
//!    gradients hold any inf/NaN is skipped and the scale halved; after 2000 consecutive finite
//!    steps the scale doubles. The scaler's state goes into checkpoints, so resume stays exact.
//!    Clipping (`Standard::with_clip_norm`) always sees unscaled gradients, because the
//!    [`Stepper`](crate::train::step::Stepper) unscales before the optimisation runs. The reference's
//!    masked-BiLSTM pre-trainer clips the *scaled* gradients (`clip_grad_norm_` before
//!    `scaler.unscale_`), so its clip threshold is effectively divided by the loss scale; a loop
//!    on kiln cannot make that mistake, which fixes it.
//!    `bf16-mixed` has f32's exponent range and needs no scaler (as in Lightning).
//!
//! The scope is thread-local, so every data-parallel worker thread has its own. The
//! [`Trainer`](crate::train::trainer::Trainer) opens it around `training_step` and `validate`.
//!
//! Backends: CUDA and burn-flex (the CPU default) compute in f16 and bf16; burn-wgpu in f16 where
//! the adapter has shader f16 (Mesa's lavapipe does), never in bf16 (WGSL has no bf16). A backend
//! that cannot is refused by [`check_backend`] with an error naming the mode and the backend.

use std::cell::Cell;
use std::fmt;

use anyhow::Result;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{Linear, PaddingConfig1d, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, ElementConversion, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// Numeric precision of training, in Lightning's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Full f32 (`32`, `32-true`).
    #[default]
    F32,
    /// f32 master weights, f16 compute for the autocast ops, dynamic loss scaling (`16-mixed`).
    F16Mixed,
    /// f32 master weights, bf16 compute for the autocast ops, no scaler (`bf16-mixed`).
    Bf16Mixed,
}

impl Precision {
    /// The half dtype of the autocast ops (`None` for f32).
    pub fn lower_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16Mixed => Some(FloatDType::F16),
            Self::Bf16Mixed => Some(FloatDType::BF16),
        }
    }

    /// Lightning's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "32",
            Self::F16Mixed => "16-mixed",
            Self::Bf16Mixed => "bf16-mixed",
        }
    }

    /// Whether the mode scales the loss (only `16-mixed`).
    pub fn needs_scaler(self) -> bool {
        self == Self::F16Mixed
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "32" | "f32" | "32-true" | "fp32" => Ok(Self::F32),
            "16" | "16-mixed" | "f16-mixed" | "fp16" | "f16" => Ok(Self::F16Mixed),
            "bf16" | "bf16-mixed" => Ok(Self::Bf16Mixed),
            _ => Err(format!(
                "unknown precision `{s}`: expected 32, 16-mixed or bf16-mixed"
            )),
        }
    }
}

impl Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A precision name as text: YAML and the `KEY VALUE` parser read `32` and `16` as integers.
fn name_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Str(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Int(i) => i.to_string(),
        Raw::Str(s) => s,
    })
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        name_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A configured precision that may be left to the device: `auto` is `16-mixed` on CUDA and `32`
/// on CPU, the meaning of the references' `use_amp=True` / `USE_MIXED_PRECISION True` (AMP only
/// ever ran on CUDA there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionSetting {
    /// `16-mixed` on CUDA, `32` elsewhere.
    #[default]
    Auto,
    /// This mode on every device.
    Fixed(Precision),
}

impl PrecisionSetting {
    /// The mode used on `device`.
    pub fn resolve(self, device: crate::backend::DeviceKind) -> Precision {
        match self {
            Self::Fixed(p) => p,
            Self::Auto if matches!(device, crate::backend::DeviceKind::Cuda(_)) => {
                Precision::F16Mixed
            }
            Self::Auto => Precision::F32,
        }
    }

    /// The mode used on `device` of backend `B` (`auto`: `16-mixed` when `B` is a CUDA backend).
    pub fn resolve_for<B: Backend>(self, device: &B::Device) -> Precision {
        match self {
            Self::Fixed(p) => p,
            Self::Auto if B::name(device).to_ascii_lowercase().contains("cuda") => {
                Precision::F16Mixed
            }
            Self::Auto => Precision::F32,
        }
    }
}

impl fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(p) => p.fmt(f),
        }
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(Self::Auto)
        } else {
            s.parse::<Precision>()
                .map(Self::Fixed)
                .map_err(|e| e.replace("expected 32", "expected auto, 32"))
        }
    }
}

impl Serialize for PrecisionSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PrecisionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        name_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

thread_local! {
    static LOWER: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Restores the previous autocast state when dropped (also on panic).
struct Scope(Option<FloatDType>);

impl Drop for Scope {
    fn drop(&mut self) {
        LOWER.with(|l| l.set(self.0));
    }
}

/// Runs `f` with the autocast policy of `precision` on this thread (`torch.autocast`).
/// Scopes nest; the previous state is restored afterwards.
pub fn autocast<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    let _scope = Scope(LOWER.with(|l| l.replace(precision.lower_dtype())));
    f()
}

/// The half dtype of the current autocast scope on this thread, if any.
pub fn current() -> Option<FloatDType> {
    LOWER.with(Cell::get)
}

fn half<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    t.cast(dtype)
}

fn back<B: Backend, const D: usize>(t: Tensor<B, D>, to: DType) -> Tensor<B, D> {
    match to {
        DType::F64 => t.cast(FloatDType::F64),
        DType::F16 => t.cast(FloatDType::F16),
        DType::BF16 => t.cast(FloatDType::BF16),
        _ => t.cast(FloatDType::F32),
    }
}

/// `t` in the half dtype of the current scope (unchanged outside one). For loops that reuse a
/// weight many times (an LSTM's per-step matmuls): cast it once, and the op functions' own casts
/// of it are then free.
pub fn lower<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        Some(h) => half(t, h),
        None => t,
    }
}

/// Matrix product under the autocast policy.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        None => a.matmul(b),
        Some(h) => {
            let out = a.dtype();
            back(half(a, h).matmul(half(b, h)), out)
        }
    }
}

/// `x · w + b` with Burn's weight layout `w [in, out]`, under the autocast policy.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    match current() {
        None => burn::tensor::module::linear(x, weight, bias),
        Some(h) => {
            let out = x.dtype();
            let y =
                burn::tensor::module::linear(half(x, h), half(weight, h), bias.map(|b| half(b, h)));
            back(y, out)
        }
    }
}

/// [`burn::nn::Linear::forward`] under the autocast policy.
pub fn linear_layer<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(Param::val))
}

/// `(start, end)` padding of a "same" convolution, as burn-nn computes it (the odd pad at the
/// end).
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

/// [`burn::nn::conv::Conv1d::forward`] under the autocast policy.
pub fn conv1d_layer<B: Backend>(layer: &Conv1d<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let Some(h) = current() else {
        return layer.forward(x);
    };
    let (left, right) = match layer.padding {
        PaddingConfig1d::Valid => (0, 0),
        PaddingConfig1d::Same => same_padding(layer.kernel_size, layer.stride, x.dims()[2]),
        PaddingConfig1d::Explicit(left, right) => (left, right),
    };
    let (x, [pad]) = pad_unevenly(x, [(left, right)]);
    let options = ConvOptions::new([layer.stride], [pad], [layer.dilation], layer.groups);
    let out = x.dtype();
    let y = burn::tensor::module::conv1d(
        half(x, h),
        half(layer.weight.val(), h),
        layer.bias.as_ref().map(|b| half(b.val(), h)),
        options,
    );
    back(y, out)
}

/// Uneven padding (a causal convolution's `k − 1` on the left, "same" with an even kernel) is
/// applied to `x` here, in its own dtype, as zeros; returns the padded input and the symmetric
/// padding left for the convolution. burn-flex's half-precision convolutions mishandle
/// asymmetric padding.
fn pad_unevenly<B: Backend, const D: usize, const N: usize>(
    x: Tensor<B, D>,
    pads: [(usize, usize); N],
) -> (Tensor<B, D>, [usize; N]) {
    if pads.iter().all(|(a, b)| a == b) {
        return (x, pads.map(|(a, _)| a));
    }
    (x.pad(pads, PadMode::Constant(0.0)), [0; N])
}

/// [`burn::nn::conv::Conv2d::forward`] under the autocast policy.
///
/// A pointwise convolution (1×1 kernel, no padding, one group: two thirds of a ResNet50
/// bottleneck's work, and its strided downsample) runs as a batched matrix product
/// `W [Co, Ci] · x [N, Ci, H·W]` (of the subsampled `x` when strided).
/// Its gradients are then plain matrix products too (`dW = Σₙ dYₙ·xₙᵀ`), whereas Burn's generic
/// convolution backward computes `dW` as a convolution with batch and channels swapped, which
/// for a 1×1 kernel degenerates into one matrix-vector product per input channel.
pub fn conv2d_layer<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let (x, options) = layer_input(layer, x);
    conv2d(
        x,
        layer.weight.val(),
        layer.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// `x` with `layer`'s uneven padding applied, and the options of the convolution left to run
/// on it (symmetric padding).
pub(crate) fn layer_input<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
) -> (Tensor<B, 4>, ConvOptions<2>) {
    let [_, _, height, width] = x.dims();
    let (x, padding) = pad_unevenly(x, layer_padding(layer, height, width));
    let options = ConvOptions::new(layer.stride, padding, layer.dilation, layer.groups);
    (x, options)
}

/// `[(top, bottom), (left, right)]` padding of `layer` on a `height × width` input.
fn layer_padding<B: Backend>(
    layer: &Conv2d<B>,
    height: usize,
    width: usize,
) -> [(usize, usize); 2] {
    match layer.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => [
            same_padding(layer.kernel_size[0], layer.stride[0], height),
            same_padding(layer.kernel_size[1], layer.stride[1], width),
        ],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
    }
}

/// `conv2d(x, weight, bias, options)` with explicit weights (e.g. BatchNorm folded into them)
/// and symmetric padding, on the same paths as [`conv2d_layer`]: a pointwise convolution as a
/// matrix product, the rest through Burn's convolution in the autocast dtype, or in full
/// precision through [`crate::numerics::fused::conv2d`] (im2col + GEMM per image on burn-flex).
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = weight.dims();
    if crate::numerics::fused::is_pointwise([kh, kw], &options) {
        return crate::numerics::fused::pointwise_conv2d(x, weight, bias, options.stride, matmul);
    }
    match current() {
        None => crate::numerics::fused::conv2d(x, weight, bias, options),
        Some(h) => {
            let out = x.dtype();
            let y = burn::tensor::module::conv2d(
                half(x, h),
                half(weight, h),
                bias.map(|b| half(b, h)),
                options,
            );
            back(y, out)
        }
    }
}

/// Checks that backend `B` can run `precision` on `device`: a small cast, matmul and
/// convolution in the half dtype must run and keep that dtype. The error names the mode and the
/// backend.
pub fn check_backend<B: Backend>(precision: Precision, device: &B::Device) -> Result<()> {
    let Some(h) = precision.lower_dtype() else {
        return Ok(());
    };
    let refused = || {
        anyhow::anyhow!(
            "precision {precision} needs {h:?} arithmetic, which the {} backend does not provide; \
             use precision 32 here, or the flex (CPU) or cuda backend",
            B::name(device)
        )
    };
    // A backend that says it lacks the type is refused without trying: a GPU backend (burn-wgpu
    // asked for bf16) fails the probe by panicking on its device thread, which can leave the
    // device's stream unusable for the rest of the process.
    if !B::supports_dtype(device, DType::from(h)) {
        return Err(refused());
    }
    let probe = {
        let device = device.clone();
        move || -> bool {
            let a = Tensor::<B, 2>::ones([4, 4], &device).cast(h);
            let p = a.clone().matmul(a.clone());
            let x = a.reshape([1, 2, 8]);
            let w = Tensor::<B, 3>::ones([2, 2, 3], &device).cast(h);
            let c = burn::tensor::module::conv1d(
                x,
                w,
                None,
                burn::tensor::ops::ConvOptions::new([1], [1], [1], 1),
            );
            let ok_dtype = p.dtype() == DType::from(h) && c.dtype() == DType::from(h);
            let sum: f32 = p.cast(FloatDType::F32).sum().into_scalar().elem();
            ok_dtype && (sum - 64.0).abs() < 1e-3
        }
    };
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe));
    std::panic::set_hook(previous);
    match result {
        Ok(true) => Ok(()),
        _ => Err(refused()),
    }
}

/// Dynamic loss scaling with the semantics and defaults of `torch.amp.GradScaler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    /// Current scale.
    pub scale: f64,
    /// Multiplier after `growth_interval` finite steps (2).
    pub growth_factor: f64,
    /// Multiplier after a step with inf/NaN gradients (0.5).
    pub backoff_factor: f64,
    /// Consecutive finite steps before growing (2000).
    pub growth_interval: u64,
    /// Finite steps since the last growth or back-off.
    pub growth_tracker: u64,
    /// Steps skipped so far because of inf/NaN gradients.
    pub skipped_steps: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self::new(65536.0)
    }
}

impl GradScaler {
    /// A scaler with `torch.amp.GradScaler`'s defaults and initial scale `init_scale`.
    pub fn new(init_scale: f64) -> Self {
        Self {
            scale: init_scale,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
            skipped_steps: 0,
        }
    }

    /// The loss to back-propagate: `loss · scale`.
    pub fn scale_loss<B: Backend>(&self, loss: Tensor<B, 1>) -> Tensor<B, 1> {
        loss.mul_scalar(self.scale)
    }

    /// Divides every gradient of `model` by the scale (the reciprocal is rounded to f32, as in
    /// PyTorch) and returns whether any gradient holds an inf or NaN.
    pub fn unscale<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
    ) -> bool {
        let inv = f64::from((1.0 / self.scale) as f32);
        scale_and_check::<B, M>(model, grads, Some(inv))
    }

    /// Updates the scale after a step (`GradScaler.update`).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            self.skipped_steps += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

/// Whether any gradient of `model` holds an inf or NaN (one host read for all parameters).
pub fn has_non_finite<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
) -> bool {
    scale_and_check::<B, M>(model, grads, None)
}

/// Optionally multiplies every gradient by `factor`, and counts non-finite gradient entries.
fn scale_and_check<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: Option<f64>,
) -> bool {
    struct Visit<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        factor: Option<f64>,
        bad: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Visit<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(mut g) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
                return;
            };
            if let Some(f) = self.factor {
                g = g.mul_scalar(f);
            }
            let n = g
                .clone()
                .is_finite()
                .bool_not()
                .float()
                .sum()
                .cast(FloatDType::F32);
            self.bad = Some(match self.bad.take() {
                Some(acc) => acc + n,
                None => n,
            });
            self.grads.register(param.id, g);
        }
    }
    let mut v = Visit::<B> {
        grads,
        factor,
        bad: None,
    };
    model.visit(&mut v);
    v.bad
        .map(|b| b.into_scalar().elem::<f32>() != 0.0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Flex;
    use burn::nn::conv::{Conv1dConfig, Conv2dConfig};
    use burn::tensor::Distribution;

    fn max_rel_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let a: Vec<f32> = a.into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
            / scale
    }

    #[test]
    fn convolutions_with_uneven_padding_run_in_half_precision() {
        let device = Default::default();
        // Causal 1-D (k − 1 zeros on the left) and "same" 2-D with an even kernel.
        let conv1 = Conv1dConfig::new(3, 4, 3)
            .with_padding(PaddingConfig1d::Explicit(2, 0))
            .init::<Flex>(&device);
        let conv2 = Conv2dConfig::new([3, 4], [2, 2])
            .with_padding(PaddingConfig2d::Same)
            .init::<Flex>(&device);
        let x1 = Tensor::<Flex, 3>::random([2, 3, 9], Distribution::Normal(0.0, 1.0), &device);
        let x2 = Tensor::<Flex, 4>::random([2, 3, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        for precision in [Precision::Bf16Mixed, Precision::F16Mixed] {
            let (y1, y2) = autocast(precision, || {
                (
                    conv1d_layer(&conv1, x1.clone()),
                    conv2d_layer(&conv2, x2.clone()),
                )
            });
            assert_eq!(y1.dims(), [2, 4, 9]);
            assert_eq!(y2.dims(), [2, 4, 5, 6]);
            assert_eq!(y1.dtype(), DType::F32);
            let d1 = max_rel_diff(conv1.forward(x1.clone()), y1);
            let d2 = max_rel_diff(conv2.forward(x2.clone()), y2);
            assert!(d1 > 0.0 && d1 < 2e-2, "{precision} conv1d: {d1}");
            assert!(d2 > 0.0 && d2 < 2e-2, "{precision} conv2d: {d2}");
        }
    }

    /// Whether [`conv2d_layer`] takes the matrix-product path for `conv` on a 4×6 input.
    fn layer_is_pointwise<B: Backend>(conv: &Conv2d<B>) -> bool {
        let [_, channels, ..] = conv.weight.dims();
        let x = Tensor::<B, 4>::zeros([1, channels, 4, 6], &conv.weight.device());
        let (_, options) = layer_input(conv, x);
        crate::numerics::fused::is_pointwise(conv.kernel_size, &options)
    }

    #[test]
    fn pointwise_convolutions_equal_burns_convolution_with_gradients() {
        use crate::backend::Autodiff;
        type AD = Autodiff<Flex>;
        let device = Default::default();
        for (bias, padding, stride, out) in [
            (true, PaddingConfig2d::Valid, [1, 1], [5, 6]),
            (false, PaddingConfig2d::Explicit(0, 0, 0, 0), [1, 1], [5, 6]),
            (true, PaddingConfig2d::Same, [1, 1], [5, 6]),
            // A strided one subsamples rows 0, 2, 4 and columns 0, 3 of the 5×6 input.
            (true, PaddingConfig2d::Valid, [2, 3], [3, 2]),
        ] {
            let conv = Conv2dConfig::new([5, 7], [1, 1])
                .with_bias(bias)
                .with_padding(padding)
                .with_stride(stride)
                .init::<AD>(&device);
            assert!(layer_is_pointwise(&conv));
            let x = Tensor::<AD, 4>::random([3, 5, 5, 6], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let g = Tensor::<AD, 4>::random(
                [3, 7, out[0], out[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let fast = conv2d_layer(&conv, x.clone());
            let reference = conv.forward(x.clone());
            let gf = (fast.clone() * g.clone()).sum().backward();
            let gr = (reference.clone() * g).sum().backward();
            assert!(max_rel_diff(fast.inner(), reference.inner()) < 1e-6);
            let dx = |gr: &<AD as burn::tensor::backend::AutodiffBackend>::Gradients| {
                x.grad(gr).unwrap()
            };
            assert!(max_rel_diff(dx(&gf), dx(&gr)) < 1e-6);
            let dw = conv.weight.grad(&gf).unwrap();
            assert!(max_rel_diff(dw, conv.weight.grad(&gr).unwrap()) < 1e-6);
            if let Some(b) = &conv.bias {
                assert!(max_rel_diff(b.grad(&gf).unwrap(), b.grad(&gr).unwrap()) < 1e-6);
            }
        }
        // Padded or 3×3 convolutions keep Burn's path.
        for (kernel, padding) in [
            ([1, 1], PaddingConfig2d::Explicit(1, 1, 1, 1)),
            ([3, 3], PaddingConfig2d::Valid),
        ] {
            let conv = Conv2dConfig::new([5, 7], kernel)
                .with_padding(padding)
                .init::<Flex>(&device);
            assert!(!layer_is_pointwise(&conv));
        }
        // Under bf16 autocast: within bf16 rounding of the f32 result.
        let conv = Conv2dConfig::new([8, 4], [1, 1]).init::<Flex>(&device);
        let x = Tensor::<Flex, 4>::random([2, 8, 3, 5], Distribution::Normal(0.0, 1.0), &device);
        let full = conv.forward(x.clone());
        let half = autocast(Precision::Bf16Mixed, || conv2d_layer(&conv, x));
        assert_eq!(half.dtype(), full.dtype());
        assert!(max_rel_diff(half, full) < 2e-2);
    }
}
