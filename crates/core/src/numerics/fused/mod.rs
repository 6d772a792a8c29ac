//! Fused kernels with their own backward pass, for the element-wise chains that dominate small
//! sequence models on CPU.
//!
//! Burn's autodiff records a LayerNorm as the nine tensor operations it is made of (two means, a
//! subtraction, a square, a square root, a division, the affine scale and shift), each with its
//! own backward step: on the `[512, 105, 128]` activations of a moola batch one LayerNorm forward
//! and backward took 128 ms on a 2-core machine against PyTorch's 16 ms for its fused
//! `native_layer_norm`. The RWKV token shift (`cat(state, x[:, :-1])` followed by
//! `x·μ + shifted·(1 − μ)`) took 101 ms against PyTorch's 37 ms. Each function here computes
//! the same numbers in one pass over the data forward and one pass backward.
//! [`conv2d`] is the same idea for convolutions: im2col + GEMM image by image in both
//! directions, where Burn's generic convolution backward went through layout conversions on one
//! thread (a ResNet50 training step on 2 cores: 15.3–15.9 s → 9.3–10.7 s).
//! [`conv2d_epilogue`] is its inference form with a BatchNorm, a residual and a ReLU applied to
//! each image's output while it is in cache, and [`relu`] is a ReLU whose backward step keeps
//! its output instead of its input, as PyTorch's in-place ReLU in effect does (a ResNet50
//! training step's peak memory 6.2 → 4.7 GiB).
//!
//! Model code stays backend-generic: every function takes `Tensor<B, D>` for any `B: Backend`.
//! On burn-flex with `f32` tensors it runs the fused kernels of this module: under autodiff
//! (`Autodiff<Flex>`, the default CPU training backend) as one recorded operation with its own
//! backward step, without autodiff (inference) the same forward kernel; on every other backend,
//! and for other float types, the composition of Burn tensor operations in the `*_reference`
//! function next to it, which is also what the tests compare the kernels against ([`calls`]
//! counts the kernel runs, so a test knows that its kernel side was not the composition too).
//! The backend is recognised by its type (`TypeId`), so no trait bound spreads into the models.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::ConvOptions;

use crate::numerics::ops;

/// A per-channel affine normalisation `(x − mean)·scale + beta` of `[N, C, ...]` activations
/// (a BatchNorm once its statistics are known), one value per channel in each field.
#[derive(Debug, Clone)]
pub struct ChannelNorm<B: Backend> {
    /// μ.
    pub mean: Tensor<B, 1>,
    /// `γ/√(σ² + ε)`.
    pub scale: Tensor<B, 1>,
    /// β.
    pub beta: Tensor<B, 1>,
}

impl<B: Backend> ChannelNorm<B> {
    /// Normalises `[N, C, S]`.
    pub fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, c, _] = x.dims();
        self.apply_centred(ops::sub(x, self.mean.clone().reshape([1, c, 1])))
    }

    /// `centred·scale + beta` on `centred = x − mean` `[N, C, S]`: two broadcast passes after
    /// the centring, through [`crate::numerics::ops`]. Folding μ into the shift (`x·a + b`) would save one
    /// more but loses precision when |μ| ≫ σ (raw prices).
    pub fn apply_centred(&self, centred: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, c, _] = centred.dims();
        ops::add(
            ops::mul(centred, self.scale.clone().reshape([1, c, 1])),
            self.beta.clone().reshape([1, c, 1]),
        )
    }
}

#[cfg(feature = "flex")]
mod flex;

/// The operations of this module that have a burn-flex kernel, for [`calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedOp {
    /// [`layer_norm`].
    LayerNorm,
    /// [`shift_lerp`].
    ShiftLerp,
    /// [`relu`] (under autodiff only).
    Relu,
    /// [`relu_square`].
    ReluSquare,
    /// [`sigmoid_gate`].
    SigmoidGate,
    /// [`lstm_cell`].
    LstmCell,
    /// [`batch_norm`].
    BatchNorm,
    /// [`conv2d`].
    Conv2d,
    /// [`conv2d_epilogue`] (without autodiff only).
    Conv2dEpilogue,
}

impl FusedOp {
    /// Every operation, in declaration order.
    pub const ALL: [FusedOp; 9] = [
        FusedOp::LayerNorm,
        FusedOp::ShiftLerp,
        FusedOp::Relu,
        FusedOp::ReluSquare,
        FusedOp::SigmoidGate,
        FusedOp::LstmCell,
        FusedOp::BatchNorm,
        FusedOp::Conv2d,
        FusedOp::Conv2dEpilogue,
    ];
}

/// One counter per [`FusedOp`], in declaration order.
static CALLS: [AtomicU64; FusedOp::ALL.len()] = [const { AtomicU64::new(0) }; FusedOp::ALL.len()];

/// How many times the burn-flex kernel of `op` has run in this process, on all threads (each
/// forward call counts once; its backward step is part of the same operation). It stays 0
/// without the `flex` feature, on other backends and for other float types, where the
/// functions run their `*_reference` composition instead: a test that compares a kernel with
/// its composition reads it before and after to know that the kernel side really ran.
pub fn calls(op: FusedOp) -> u64 {
    CALLS[op as usize].load(Ordering::Relaxed)
}

/// Counts one run of `op`'s burn-flex kernel (called by the kernels themselves).
#[cfg(feature = "flex")]
fn count(op: FusedOp) {
    CALLS[op as usize].fetch_add(1, Ordering::Relaxed);
}

/// LayerNorm over the last axis: `(x − mean) / sqrt(var + ε) · γ + β` with the biased
/// variance, as `torch.nn.functional.layer_norm`. `gamma` and `beta` have the size of the last
/// axis.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[
        x.dtype(),
        gamma.dtype(),
        beta.as_ref().map_or(gamma.dtype(), |b| b.dtype()),
    ]) {
        return flex::layer_norm(x, gamma, beta, epsilon);
    }
    layer_norm_reference(x, gamma, beta, epsilon)
}

/// [`layer_norm`] through Burn's own `layer_norm` operation (what `burn::nn::LayerNorm` runs).
pub fn layer_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        epsilon,
    )))
}

/// The RWKV token shift followed by its linear interpolation, for `x [B, T, d]`,
/// `first [B, 1, d]` and `mu [1, 1, d]`:
///
/// ```text
/// prev[:, 0] = first[:, 0],  prev[:, t] = x[:, t − 1]   (t ≥ 1)
/// out        = x · μ + prev · (1 − μ)
/// ```
///
/// # Panics
/// When the shapes do not fit together.
pub fn shift_lerp<B: Backend>(
    x: Tensor<B, 3>,
    first: Tensor<B, 3>,
    mu: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, _, d] = x.dims();
    assert_eq!(
        first.dims(),
        [batch, 1, d],
        "shift_lerp: `first` must be [batch, 1, d]"
    );
    assert_eq!(mu.dims(), [1, 1, d], "shift_lerp: `mu` must be [1, 1, d]");
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[x.dtype(), first.dtype(), mu.dtype()]) {
        return flex::shift_lerp(x, first, mu);
    }
    shift_lerp_reference(x, first, mu)
}

/// [`shift_lerp`] as Burn tensor operations (slice, `cat`, two products and a sum), the form of
/// the reference's PyTorch code.
pub fn shift_lerp_reference<B: Backend>(
    x: Tensor<B, 3>,
    first: Tensor<B, 3>,
    mu: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, steps, d] = x.dims();
    let prev = if steps == 1 {
        first
    } else {
        let head = x.clone().slice([0..batch, 0..steps - 1, 0..d]);
        Tensor::cat(vec![first, head], 1)
    };
    x * mu.clone() + prev * mu.neg().add_scalar(1.0)
}

/// ReLU, `max(x, 0)`, that keeps its **output** for the backward pass (`dx = dy·[y > 0]`).
///
/// Burn's autodiff `relu` keeps its input, so in a `conv → BatchNorm → ReLU → conv` chain the
/// BatchNorm's output stays alive until the backward pass next to the ReLU's output (which the
/// next convolution keeps anyway). PyTorch's in-place `ReLU(inplace=True)` overwrites that
/// tensor; keeping the output instead frees it the same way. On burn-flex under autodiff this is
/// its own operation; elsewhere Burn's `relu` (which burn-flex runs in place when it can).
pub fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if B::ad_enabled(&x.device()) && flex::handles::<B>(&[x.dtype()]) {
        return flex::relu(x);
    }
    burn::tensor::activation::relu(x)
}

/// Squared ReLU, `max(x, 0)²` (the activation of RWKV's channel mixing).
pub fn relu_square<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[x.dtype()]) {
        return flex::relu_square(x);
    }
    relu_square_reference(x)
}

/// [`relu_square`] as Burn's `relu` followed by `powi_scalar(2)`.
pub fn relu_square_reference<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::relu(x).powi_scalar(2)
}

/// The sigmoid gate `σ(r) · y` of RWKV's receptance (both inputs of one shape).
///
/// # Panics
/// When the shapes differ.
pub fn sigmoid_gate<B: Backend, const D: usize>(r: Tensor<B, D>, y: Tensor<B, D>) -> Tensor<B, D> {
    assert_eq!(
        r.dims(),
        y.dims(),
        "sigmoid_gate: r and y must have one shape"
    );
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[r.dtype(), y.dtype()]) {
        return flex::sigmoid_gate(r, y);
    }
    sigmoid_gate_reference(r, y)
}

/// [`sigmoid_gate`] as Burn's `sigmoid` and a product.
pub fn sigmoid_gate_reference<B: Backend, const D: usize>(
    r: Tensor<B, D>,
    y: Tensor<B, D>,
) -> Tensor<B, D> {
    burn::tensor::activation::sigmoid(r) * y
}

/// One LSTM cell step from the pre-activation gates `[B, 4H]` (PyTorch's order `i, f, g, o`)
/// and the cell state `c_prev [B, H]`: returns `(h, c)` with
/// `c = σ(f)·c_prev + σ(i)·tanh(g)` and `h = σ(o)·tanh(c)`.
///
/// # Panics
/// When the shapes do not fit together.
pub fn lstm_cell<B: Backend>(
    gates: Tensor<B, 2>,
    c_prev: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [batch, hidden] = c_prev.dims();
    assert_eq!(
        gates.dims(),
        [batch, 4 * hidden],
        "lstm_cell: gates must be [batch, 4·hidden] for a [batch, hidden] cell state"
    );
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[gates.dtype(), c_prev.dtype()]) {
        let hc = flex::lstm_cell(gates, c_prev);
        let h = hc.clone().slice([0..batch, 0..hidden]);
        let c = hc.slice([0..batch, hidden..2 * hidden]);
        return (h, c);
    }
    let device = c_prev.device();
    let (h, c) = lstm_cell_reference(gates, c_prev);
    // burn-fusion 0.21 (burn-cubecl-fusion, the stack burn-wgpu and burn-cuda share) computes a
    // recurrence wrongly when several steps are queued at once: the second step of
    // `gates = x_t·W_ihᵀ + h·W_hhᵀ; (h, c) = cell(gates, c)` differs from the first on by up
    // to 0.5 (found by the wgpu tier on lavapipe: `crates/moola/tests/wgpu.rs`, the masked
    // BiLSTM autoencoder; each op alone and one step alone are exact). Running the queue at
    // each step keeps every step exact; on a backend without fusion `sync` only waits.
    if let Err(e) = B::sync(&device) {
        tracing::warn!("cannot synchronise the device after an LSTM step: {e:?}");
    }
    (h, c)
}

/// [`lstm_cell`] as Burn tensor operations (`sigmoid` of all gates, slices, `tanh`).
pub fn lstm_cell_reference<B: Backend>(
    gates: Tensor<B, 2>,
    c_prev: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    use burn::tensor::activation::{sigmoid, tanh};
    let [batch, hidden] = c_prev.dims();
    let act = sigmoid(gates.clone());
    let i = act.clone().slice([0..batch, 0..hidden]);
    let f = act.clone().slice([0..batch, hidden..2 * hidden]);
    let o = act.slice([0..batch, 3 * hidden..4 * hidden]);
    let g = tanh(gates.slice([0..batch, 2 * hidden..3 * hidden]));
    let c = f * c_prev + i * g;
    let h = o * tanh(c.clone());
    (h, c)
}

/// Training-mode BatchNorm of `x [N, C, S]` with the batch's own statistics:
/// `(x − mean)/sqrt(var + ε)·γ + β` per channel, with the biased variance (PyTorch's
/// `batch_norm` with `training=True`). Returns the output and the batch mean and biased
/// variance `[C]` (outside the graph), for the running statistics.
///
/// Burn records this as a dozen operations, several of which keep a copy of the activation
/// for their backward step; the fused operation keeps the input and two numbers per channel,
/// as PyTorch's `native_batch_norm` does.
///
/// # Panics
/// When γ or β do not have one value per channel.
pub fn batch_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>) {
    let [_, c, _] = x.dims();
    assert_eq!(
        gamma.dims(),
        [c],
        "batch_norm: gamma must have one value per channel"
    );
    assert_eq!(
        beta.dims(),
        [c],
        "batch_norm: beta must have one value per channel"
    );
    #[cfg(feature = "flex")]
    if flex::handles::<B>(&[x.dtype(), gamma.dtype(), beta.dtype()]) {
        let device = x.device();
        let (y, mean, var) = flex::batch_norm(x, gamma, beta, epsilon);
        let stat = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [c]), &device);
        return (y, stat(mean), stat(var));
    }
    batch_norm_reference(x, gamma, beta, epsilon)
}

/// [`batch_norm`] as Burn tensor operations (sums, a centring, a square, a square root and
/// the affine map, with the per-channel values broadcast by [`crate::numerics::ops`]).
pub fn batch_norm_reference<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>) {
    let [n, c, s] = x.dims();
    let m = (n * s) as f64;
    let mean = x.clone().sum_dim(2).sum_dim(0).div_scalar(m); // [1, C, 1]
    let centred = crate::numerics::ops::sub(x, mean.clone());
    let var = centred.clone().square().sum_dim(2).sum_dim(0).div_scalar(m); // biased
    let norm = ChannelNorm {
        mean: mean.clone().reshape([c]),
        scale: gamma / var.clone().reshape([c]).add_scalar(epsilon).sqrt(),
        beta,
    };
    let y = norm.apply_centred(centred);
    (y, mean.detach().reshape([c]), var.detach().reshape([c]))
}

/// 2-D convolution, `torch.nn.functional.conv2d` (NCHW, weight `[Co, Ci/groups, kh, kw]`,
/// symmetric padding).
///
/// On burn-flex, for one group, it runs im2col + GEMM image by image forward and backward
/// (see the burn-flex module); otherwise Burn's own `conv2d`.
///
/// # Panics
/// When the shapes do not fit together.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if options.groups == 1
        && flex::handles::<B>(&[
            x.dtype(),
            weight.dtype(),
            bias.as_ref().map_or(weight.dtype(), |b| b.dtype()),
        ])
    {
        return flex::conv2d(x, weight, bias, &options);
    }
    let [_, _, kh, kw] = weight.dims();
    if is_pointwise([kh, kw], &options) {
        // burn-cubecl 0.21's convolution (burn-wgpu, burn-cuda) gets some 1×1 convolutions
        // wrong: 8 → 32 channels on [8, 8, 16, 8] differs from burn-flex by the size of the
        // output (on [8, 8, 8, 4] it is exact; found by the wgpu tier in ResNet50-IBN-a's
        // downsample in evaluation), and the input gradient of every strided 1×1 convolution
        // tried (ResNet's stride-2 downsample: 4 → 8 channels on [8, 4, 8, 4], 8 → 16 on
        // [8, 8, 4, 2]) by the size of the gradient. As a (subsampling and a) matrix product it
        // is exact on every backend.
        return pointwise_conv2d(x, weight, bias, options.stride, Tensor::matmul);
    }
    conv2d_reference(x, weight, bias, options)
}

/// Whether a `kernel` convolution with `options` is pointwise: 1×1, unpadded, one group (any
/// stride: a strided one is a pointwise convolution of the subsampled input).
pub(crate) fn is_pointwise(kernel: [usize; 2], options: &ConvOptions<2>) -> bool {
    kernel == [1, 1] && options.padding == [0, 0] && options.groups == 1
}

/// A 1×1, unpadded convolution `W [Co, Ci, 1, 1] · x [N, Ci, H, W] (+ b)` with `stride`, as
/// the batched matrix product `matmul` computes (plain, or [`crate::numerics::amp`]'s under
/// autocast) on every `stride`-th row and column of `x`; the bias is added in the product's
/// dtype.
pub fn pointwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 2],
    matmul: impl FnOnce(Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 4> {
    let x = if stride == [1, 1] {
        x
    } else {
        let [sh, sw] = stride.map(|s| s as isize);
        x.slice(burn::tensor::s![.., .., ..;sh, ..;sw])
    };
    let [n, c_in, height, width] = x.dims();
    let [c_out, ..] = weight.dims();
    let y = matmul(
        weight.reshape([1, c_out, c_in]),
        x.reshape([n, c_in, height * width]),
    );
    let y = match bias {
        Some(b) => {
            let dtype = y.dtype();
            ops::add(y, b.cast(dtype).reshape([1, c_out, 1]))
        }
        None => y,
    };
    y.reshape([n, c_out, height, width])
}

/// [`conv2d`] through Burn's own `conv2d` operation.
pub fn conv2d_reference<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// What [`conv2d_epilogue`] applies to a convolution's output, in this order: a per-channel
/// normalisation (a BatchNorm with running statistics), a residual added element-wise, ReLU.
#[derive(Debug, Clone)]
pub struct Epilogue<B: Backend> {
    /// `(y − mean)·scale + beta` per output channel.
    pub norm: Option<ChannelNorm<B>>,
    /// Added to the (normalised) output; of the output's shape.
    pub residual: Option<Tensor<B, 4>>,
    /// `max(·, 0)` last.
    pub relu: bool,
}

/// Inference: `relu(norm(conv2d(x, weight, bias)) + residual)`, each step as [`Epilogue`] asks.
///
/// On burn-flex without autodiff, for one group in `f32`, the steps run right after each
/// image's GEMM while its output is in cache (see the burn-flex module), instead of one pass
/// over the whole activation per step, and a pointwise convolution multiplies the image
/// itself. Each step rounds as its tensor operation does, so the result equals
/// [`conv2d_epilogue_reference`] bit for bit when the convolutions agree. Elsewhere (autodiff
/// included) it is that composition.
///
/// # Panics
/// When the shapes do not fit together.
pub fn conv2d_epilogue<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
    then: Epilogue<B>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if options.groups == 1 && !B::ad_enabled(&x.device()) {
        let mut dtypes = vec![x.dtype(), weight.dtype()];
        dtypes.extend(bias.iter().map(|b| b.dtype()));
        if let Some(n) = &then.norm {
            dtypes.extend([n.mean.dtype(), n.scale.dtype(), n.beta.dtype()]);
        }
        dtypes.extend(then.residual.iter().map(|r| r.dtype()));
        if flex::handles::<B>(&dtypes) {
            return flex::conv2d_epilogue(x, weight, bias, &options, then);
        }
    }
    conv2d_epilogue_reference(x, weight, bias, options, then)
}

/// [`conv2d_epilogue`] as [`conv2d`] followed by Burn tensor operations.
pub fn conv2d_epilogue_reference<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
    then: Epilogue<B>,
) -> Tensor<B, 4> {
    let mut y = conv2d(x, weight, bias, options);
    if let Some(norm) = then.norm {
        let dims = y.dims();
        y = norm
            .apply(y.reshape([dims[0], dims[1], dims[2] * dims[3]]))
            .reshape(dims);
    }
    if let Some(r) = then.residual {
        y = y + r;
    }
    if then.relu { relu(y) } else { y }
}

// The tests compare the burn-flex kernels with the Burn compositions, so they need the kernels:
// without the `flex` feature both sides would be the composition.
#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type AD = Autodiff<Flex>;

    /// Runs `f` and checks that it ran the burn-flex kernel of `op` at least `times` times, so
    /// that a comparison with the composition cannot be the composition against itself (tests
    /// running at the same time can only add to the count, never hide a fallback).
    fn on_kernel<T>(op: FusedOp, times: u64, f: impl FnOnce() -> T) -> T {
        let before = calls(op);
        let out = f();
        let ran = calls(op) - before;
        assert!(
            ran >= times,
            "{op:?}: the burn-flex kernel ran {ran} times, expected at least {times} \
             (the fused path fell back to the composition)"
        );
        out
    }

    fn close<const D: usize>(a: Tensor<AD, D>, b: Tensor<AD, D>, what: &str) {
        let (a, b) = (a.into_data(), b.into_data());
        assert_eq!(a.shape, b.shape, "{what}: shape");
        a.assert_approx_eq::<f32>(&b, Tolerance::absolute(2e-5).set_relative(1e-4));
    }

    /// Forward values and the gradients of all three inputs against Burn's own composition,
    /// for several shapes (rows that do not fill a task, d not a multiple of the vector width,
    /// and no β).
    #[test]
    fn layer_norm_matches_burn() {
        let dev = Default::default();
        for &(rows, d, with_beta) in &[(7, 5, true), (3 * 64 + 5, 128, true), (33, 40, false)] {
            let x0 = Tensor::<AD, 3>::random([rows, 1, d], Distribution::Normal(0.3, 2.0), &dev)
                .reshape([1, rows, d]);
            let g0 = Tensor::<AD, 1>::random([d], Distribution::Normal(1.0, 0.5), &dev);
            let b0 = Tensor::<AD, 1>::random([d], Distribution::Normal(0.0, 0.5), &dev);
            let up = Tensor::<AD, 3>::random([1, rows, d], Distribution::Normal(0.0, 1.0), &dev);
            let run = |fused: bool| {
                let (x, g, b) = (
                    x0.clone().require_grad(),
                    g0.clone().require_grad(),
                    b0.clone().require_grad(),
                );
                let beta = with_beta.then(|| b.clone());
                let y = if fused {
                    layer_norm(x.clone(), g.clone(), beta, 1e-5)
                } else {
                    layer_norm_reference(x.clone(), g.clone(), beta, 1e-5)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                let gb = b.grad(&grads).map(Tensor::<AD, 1>::from_inner);
                (
                    y,
                    Tensor::<AD, 3>::from_inner(x.grad(&grads).unwrap()),
                    Tensor::<AD, 1>::from_inner(g.grad(&grads).unwrap()),
                    gb,
                )
            };
            let (y, dx, dg, db) = on_kernel(FusedOp::LayerNorm, 1, || run(true));
            let (yr, dxr, dgr, dbr) = run(false);
            let what = format!("rows {rows}, d {d}");
            close(y, yr, &format!("{what}: output"));
            close(dx, dxr, &format!("{what}: d/dx"));
            close(dg, dgr, &format!("{what}: d/dgamma"));
            assert_eq!(db.is_some(), with_beta, "{what}: beta gradient presence");
            if let (Some(db), Some(dbr)) = (db, dbr) {
                close(db, dbr, &format!("{what}: d/dbeta"));
            }
        }
    }

    /// Without autodiff (inference on `Flex`) the same kernel against burn-flex's own
    /// LayerNorm, on a strided input.
    #[test]
    fn layer_norm_inference_matches_burn() {
        let dev = Default::default();
        let x = Tensor::<Flex, 3>::random([6, 130, 48], Distribution::Normal(-1.0, 3.0), &dev)
            .swap_dims(0, 1);
        let g = Tensor::<Flex, 1>::random([48], Distribution::Normal(1.0, 0.5), &dev);
        let b = Tensor::<Flex, 1>::random([48], Distribution::Normal(0.0, 0.5), &dev);
        let fused = on_kernel(FusedOp::LayerNorm, 1, || {
            layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-5).into_data()
        });
        let burn = layer_norm_reference(x, g, Some(b), 1e-5).into_data();
        assert_eq!(fused.shape, burn.shape);
        fused.assert_approx_eq::<f32>(&burn, Tolerance::absolute(2e-5).set_relative(1e-4));
    }

    /// The ReLU that keeps its output: the same values and input gradient as Burn's `relu`,
    /// bit for bit, over more than one task of elements, with exact zeros (gradient 0 there, as
    /// Burn's) and the gradient flowing through a second use of the output.
    #[test]
    fn relu_matches_burn() {
        let dev = Default::default();
        let x0 = Tensor::<AD, 3>::random([2, 3, 11_001], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = x0.clone().mask_fill(x0.abs().lower_elem(0.05), 0.0);
        let up = Tensor::<AD, 3>::random([2, 3, 11_001], Distribution::Normal(0.0, 1.0), &dev);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused {
                relu(x.clone())
            } else {
                burn::tensor::activation::relu(x.clone())
            };
            let grads = (y.clone() * up.clone() + y.clone().exp()).sum().backward();
            (y.into_data(), x.grad(&grads).unwrap().into_data())
        };
        let ((y, dx), (yr, dxr)) = (on_kernel(FusedOp::Relu, 1, || run(true)), run(false));
        assert_eq!(y, yr, "output");
        assert_eq!(dx, dxr, "d/dx");
    }

    /// Output, batch statistics and the gradients of x, γ and β against the composition, for
    /// channels of different means and scales, rows shorter than a SIMD block and one value per
    /// row.
    #[test]
    fn batch_norm_matches_composition() {
        let dev = Default::default();
        for &[n, c, s] in &[[3, 5, 7], [17, 4, 33], [6, 3, 1]] {
            let x0 = Tensor::<AD, 3>::random([n, c, s], Distribution::Normal(0.0, 1.0), &dev)
                .mul(
                    Tensor::<AD, 1, Int>::arange(1..c as i64 + 1, &dev)
                        .float()
                        .reshape([1, c, 1]),
                )
                .add_scalar(3.0);
            let g0 = Tensor::<AD, 1>::random([c], Distribution::Normal(1.0, 0.5), &dev);
            let b0 = Tensor::<AD, 1>::random([c], Distribution::Normal(0.0, 0.5), &dev);
            let up = Tensor::<AD, 3>::random([n, c, s], Distribution::Normal(0.0, 1.0), &dev);
            let run = |fused: bool| {
                let (x, g, b) = (
                    x0.clone().require_grad(),
                    g0.clone().require_grad(),
                    b0.clone().require_grad(),
                );
                let (y, mean, var) = if fused {
                    batch_norm(x.clone(), g.clone(), b.clone(), 1e-5)
                } else {
                    batch_norm_reference(x.clone(), g.clone(), b.clone(), 1e-5)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                let d1 = |t: &Tensor<AD, 1>| Tensor::<AD, 1>::from_inner(t.grad(&grads).unwrap());
                let dx = Tensor::<AD, 3>::from_inner(x.grad(&grads).unwrap());
                (y, dx, d1(&g), d1(&b), mean, var)
            };
            let (a, r) = (on_kernel(FusedOp::BatchNorm, 1, || run(true)), run(false));
            let what = format!("[{n}, {c}, {s}]");
            close(a.0, r.0, &format!("{what}: output"));
            close(a.1, r.1, &format!("{what}: d/dx"));
            close(a.2, r.2, &format!("{what}: d/dgamma"));
            close(a.3, r.3, &format!("{what}: d/dbeta"));
            close(a.4, r.4, &format!("{what}: mean"));
            close(a.5, r.5, &format!("{what}: var"));
        }
    }

    /// A hand-computed row: x = [1, 2, 3, 6], mean 3, biased var 3.5.
    #[test]
    fn layer_norm_by_hand() {
        let dev = Default::default();
        let x = Tensor::<AD, 2>::from_floats([[1.0, 2.0, 3.0, 6.0]], &dev);
        let g = Tensor::<AD, 1>::from_floats([1.0, 2.0, 1.0, 1.0], &dev);
        let b = Tensor::<AD, 1>::from_floats([0.0, 0.0, 0.5, 0.0], &dev);
        let y = on_kernel(FusedOp::LayerNorm, 1, || layer_norm(x, g, Some(b), 0.0)).into_data();
        let s = 3.5f32.sqrt();
        let want = [-2.0 / s, -2.0 / s, 0.5, 3.0 / s];
        y.assert_approx_eq::<f32>(
            &TensorData::new(want.to_vec(), [1, 4]),
            Tolerance::absolute(1e-6),
        );
    }

    /// Forward values and gradients of `x`, `first` and `mu` against the slice/cat composition,
    /// including a single step (only `first` feeds `prev`).
    #[test]
    fn shift_lerp_matches_composition() {
        let dev = Default::default();
        for &(batch, steps, d) in &[(3, 6, 5), (2, 1, 4), (5, 105, 33)] {
            let x0 =
                Tensor::<AD, 3>::random([batch, steps, d], Distribution::Normal(0.0, 1.0), &dev);
            let f0 = Tensor::<AD, 3>::random([batch, 1, d], Distribution::Normal(0.0, 1.0), &dev);
            let m0 = Tensor::<AD, 3>::random([1, 1, d], Distribution::Normal(0.0, 1.0), &dev);
            let up =
                Tensor::<AD, 3>::random([batch, steps, d], Distribution::Normal(0.0, 1.0), &dev);
            let run = |fused: bool| {
                let (x, f, m) = (
                    x0.clone().require_grad(),
                    f0.clone().require_grad(),
                    m0.clone().require_grad(),
                );
                let y = if fused {
                    shift_lerp(x.clone(), f.clone(), m.clone())
                } else {
                    shift_lerp_reference(x.clone(), f.clone(), m.clone())
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                let g = |t: &Tensor<AD, 3>| Tensor::<AD, 3>::from_inner(t.grad(&grads).unwrap());
                (y, g(&x), g(&f), g(&m))
            };
            let (a, b) = (on_kernel(FusedOp::ShiftLerp, 1, || run(true)), run(false));
            let what = format!("[{batch}, {steps}, {d}]");
            close(a.0, b.0, &format!("{what}: output"));
            close(a.1, b.1, &format!("{what}: d/dx"));
            close(a.2, b.2, &format!("{what}: d/dfirst"));
            close(a.3, b.3, &format!("{what}: d/dmu"));
        }
    }

    /// By hand: x = [[1], [2], [4]] over three steps, first = [10], μ = 0.25.
    #[test]
    fn shift_lerp_by_hand() {
        let dev = Default::default();
        let x = Tensor::<Flex, 3>::from_floats([[[1.0], [2.0], [4.0]]], &dev);
        let f = Tensor::<Flex, 3>::from_floats([[[10.0]]], &dev);
        let m = Tensor::<Flex, 3>::from_floats([[[0.25]]], &dev);
        // 0.25·x + 0.75·prev with prev = [10, 1, 2].
        let want = [0.25 + 7.5, 0.5 + 0.75, 1.0 + 1.5];
        let y = on_kernel(FusedOp::ShiftLerp, 1, || shift_lerp(x, f, m));
        y.into_data().assert_approx_eq::<f32>(
            &TensorData::new(want.to_vec(), [1, 3, 1]),
            Tolerance::absolute(1e-6),
        );
    }

    /// Strided (permuted) inputs take the same path and give the same numbers.
    #[test]
    fn shift_lerp_reads_strided_input() {
        let dev = Default::default();
        let x = Tensor::<AD, 3>::random([4, 3, 2], Distribution::Normal(0.0, 1.0), &dev);
        let xt = x.clone().swap_dims(0, 1); // [3, 4, 2], not contiguous
        let f = Tensor::<AD, 3>::random([3, 1, 2], Distribution::Normal(0.0, 1.0), &dev);
        let m = Tensor::<AD, 3>::random([1, 1, 2], Distribution::Normal(0.0, 1.0), &dev);
        let fused = on_kernel(FusedOp::ShiftLerp, 1, || {
            shift_lerp(xt.clone(), f.clone(), m.clone())
        });
        close(fused, shift_lerp_reference(xt, f, m), "strided");
    }

    /// Values and gradient against `relu` then `powi_scalar(2)`, with exact zeros and
    /// negative inputs.
    #[test]
    fn relu_square_matches_composition() {
        let dev = Default::default();
        let x0 = Tensor::<AD, 2>::random([37, 70], Distribution::Normal(0.0, 1.0), &dev)
            .slice([0..37, 0..65])
            .mask_fill(
                Tensor::<AD, 2>::random([37, 65], Distribution::Uniform(0.0, 1.0), &dev)
                    .lower_elem(0.1),
                0.0,
            );
        let up = Tensor::<AD, 2>::random([37, 65], Distribution::Normal(0.0, 1.0), &dev);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused {
                relu_square(x.clone())
            } else {
                relu_square_reference(x.clone())
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            (y, Tensor::<AD, 2>::from_inner(x.grad(&grads).unwrap()))
        };
        let (a, b) = (on_kernel(FusedOp::ReluSquare, 1, || run(true)), run(false));
        close(a.0, b.0, "relu²");
        close(a.1, b.1, "d relu²/dx");
        let by_hand = on_kernel(FusedOp::ReluSquare, 1, || {
            relu_square(Tensor::<Flex, 1>::from_floats([-2.0, 0.0, 0.5, 3.0], &dev))
        });
        by_hand.into_data().assert_approx_eq::<f32>(
            &TensorData::from([0.0f32, 0.0, 0.25, 9.0]),
            Tolerance::absolute(1e-7),
        );
    }

    /// Values and both gradients against `sigmoid(r) * y`, over more elements than one
    /// task and a tail shorter than a block, with large |r| (saturated σ).
    #[test]
    fn sigmoid_gate_matches_composition() {
        let dev = Default::default();
        let shape = [3, 70_001];
        let r0 = Tensor::<AD, 2>::random(shape, Distribution::Normal(0.0, 6.0), &dev);
        let y0 = Tensor::<AD, 2>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let up = Tensor::<AD, 2>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let run = |fused: bool| {
            let (r, y) = (r0.clone().require_grad(), y0.clone().require_grad());
            let out = if fused {
                sigmoid_gate(r.clone(), y.clone())
            } else {
                sigmoid_gate_reference(r.clone(), y.clone())
            };
            let grads = (out.clone() * up.clone()).sum().backward();
            let g = |t: &Tensor<AD, 2>| Tensor::<AD, 2>::from_inner(t.grad(&grads).unwrap());
            (out, g(&r), g(&y))
        };
        let (a, b) = (on_kernel(FusedOp::SigmoidGate, 1, || run(true)), run(false));
        close(a.0, b.0, "σ(r)·y");
        close(a.1, b.1, "d/dr");
        close(a.2, b.2, "d/dy");
    }

    /// Two chained steps (the second reads the first's `h` and `c`, as in a sequence) against
    /// the composition: values and the gradients of both gate inputs and the initial state.
    #[test]
    fn lstm_cell_matches_composition() {
        let dev = Default::default();
        let (batch, hidden) = (37, 20);
        let g1 = Tensor::<AD, 2>::random([batch, 4 * hidden], Distribution::Normal(0.0, 2.0), &dev);
        let g2 = Tensor::<AD, 2>::random([batch, 4 * hidden], Distribution::Normal(0.0, 2.0), &dev);
        let c0 = Tensor::<AD, 2>::random([batch, hidden], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<AD, 2>::random([hidden, 4 * hidden], Distribution::Normal(0.0, 0.3), &dev);
        let up = Tensor::<AD, 2>::random([batch, hidden], Distribution::Normal(0.0, 1.0), &dev);
        let run = |fused: bool| {
            let cell = if fused {
                lstm_cell::<AD>
            } else {
                lstm_cell_reference::<AD>
            };
            let (g1, g2, c0) = (
                g1.clone().require_grad(),
                g2.clone().require_grad(),
                c0.clone().require_grad(),
            );
            let (h1, c1) = cell(g1.clone(), c0.clone());
            let (h2, c2) = cell(g2.clone() + h1.clone().matmul(w.clone()), c1);
            let loss =
                (h2.clone() * up.clone()).sum() + (c2.clone() * up.clone()).sum().mul_scalar(0.5);
            let grads = loss.backward();
            let g = |t: &Tensor<AD, 2>| Tensor::<AD, 2>::from_inner(t.grad(&grads).unwrap());
            (h1, h2, c2, g(&g1), g(&g2), g(&c0))
        };
        let (a, b) = (on_kernel(FusedOp::LstmCell, 2, || run(true)), run(false));
        close(a.0, b.0, "h1");
        close(a.1, b.1, "h2");
        close(a.2, b.2, "c2");
        close(a.3, b.3, "d/dgates1");
        close(a.4, b.4, "d/dgates2");
        close(a.5, b.5, "d/dc0");
    }

    /// A convolution of the tests: `(n, ci, h, w, co, [kh, kw], stride, padding, dilation)`.
    type ConvCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
    );

    /// Random input `[n, ci, h, w]`, weight, bias and the options of `case`.
    fn conv_inputs<B: Backend>(
        &(n, ci, h, w, co, k, stride, padding, dilation): &ConvCase,
        dev: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>, ConvOptions<2>) {
        let x = Tensor::random([n, ci, h, w], Distribution::Normal(0.0, 1.0), dev);
        let wt = Tensor::random([co, ci, k[0], k[1]], Distribution::Normal(0.0, 0.5), dev);
        let b = Tensor::random([co], Distribution::Normal(0.0, 0.5), dev);
        (x, wt, b, ConvOptions::new(stride, padding, dilation, 1))
    }

    /// Forward values and the gradients of input, weight and bias against Burn's convolution,
    /// over the geometries of a ResNet (3×3 padded, strided 3×3, strided 1×1, the 7×7 stem)
    /// and odd ones (non-square kernel, unequal strides and dilations, no bias), with batches
    /// that take the per-image path and ones that take the multi-threaded-GEMM path.
    #[test]
    fn conv2d_matches_burn() {
        let dev = Default::default();
        let cases: [(ConvCase, bool); 6] = [
            ((9, 5, 9, 7, 4, [3, 3], [1, 1], [1, 1], [1, 1]), true),
            ((1, 5, 9, 7, 6, [3, 3], [2, 2], [1, 1], [1, 1]), true),
            ((5, 6, 8, 9, 3, [1, 1], [2, 2], [0, 0], [1, 1]), false),
            ((2, 3, 15, 12, 4, [7, 7], [2, 2], [3, 3], [1, 1]), false),
            ((17, 3, 10, 11, 5, [3, 2], [2, 1], [0, 1], [2, 1]), true),
            ((4, 2, 6, 6, 3, [2, 3], [1, 3], [2, 0], [1, 2]), true),
        ];
        for (case, with_bias) in cases {
            let (n, ci, h, w, co, k, stride, padding, dilation) = case;
            let (x0, w0, b0, options) = conv_inputs::<AD>(&case, &dev);
            let run = |fused: bool| {
                let (x, wt, b) = (
                    x0.clone().require_grad(),
                    w0.clone().require_grad(),
                    b0.clone().require_grad(),
                );
                let bias = with_bias.then(|| b.clone());
                let y = if fused {
                    conv2d(x.clone(), wt.clone(), bias, options.clone())
                } else {
                    conv2d_reference(x.clone(), wt.clone(), bias, options.clone())
                };
                // A fixed, position-dependent upstream gradient.
                let up = Tensor::<AD, 1, Int>::arange(0..y.shape().num_elements() as i64, &dev)
                    .float()
                    .mul_scalar(0.37)
                    .sin()
                    .reshape(y.shape());
                let grads = (y.clone() * up).sum().backward();
                let db = b.grad(&grads).map(Tensor::<AD, 1>::from_inner);
                (
                    y,
                    Tensor::<AD, 4>::from_inner(x.grad(&grads).unwrap()),
                    Tensor::<AD, 4>::from_inner(wt.grad(&grads).unwrap()),
                    db,
                )
            };
            let (y, dx, dw, db) = on_kernel(FusedOp::Conv2d, 1, || run(true));
            let (yr, dxr, dwr, dbr) = run(false);
            let what = format!(
                "n {n}, ci {ci}, {h}×{w}, co {co}, k {k:?}, stride {stride:?}, padding {padding:?}, dilation {dilation:?}"
            );
            close(y, yr, &format!("{what}: output"));
            close(dx, dxr, &format!("{what}: d/dx"));
            close(dw, dwr, &format!("{what}: d/dweight"));
            assert_eq!(db.is_some(), with_bias, "{what}: bias gradient presence");
            if let (Some(db), Some(dbr)) = (db, dbr) {
                close(db, dbr, &format!("{what}: d/dbias"));
            }
        }
    }

    /// The inference convolution with its epilogue: bit for bit the composition of the same
    /// convolution with the separate operations (every combination of bias, normalisation,
    /// residual and ReLU; pointwise convolutions without im2col, on one image and on several),
    /// and within rounding of Burn's own convolution followed by the same operations.
    #[test]
    fn conv2d_epilogue_matches_composition() {
        let dev = Default::default();
        let cases: [ConvCase; 5] = [
            (9, 5, 9, 7, 4, [3, 3], [1, 1], [1, 1], [1, 1]),
            (1, 6, 8, 9, 3, [1, 1], [1, 1], [0, 0], [1, 1]),
            (5, 6, 8, 9, 3, [1, 1], [1, 1], [0, 0], [1, 1]),
            (5, 6, 8, 9, 3, [1, 1], [2, 2], [0, 0], [1, 1]),
            (2, 3, 15, 12, 4, [7, 7], [2, 2], [3, 3], [1, 1]),
        ];
        for case in cases {
            let (n, ci, _, _, co, k, stride, _, _) = case;
            let (x, wt, b, options) = conv_inputs::<Flex>(&case, &dev);
            let norm = ChannelNorm {
                mean: Tensor::random([co], Distribution::Normal(0.5, 1.0), &dev),
                scale: Tensor::random([co], Distribution::Normal(1.0, 0.5), &dev),
                beta: Tensor::random([co], Distribution::Normal(0.0, 0.5), &dev),
            };
            let out = conv2d(x.clone(), wt.clone(), None, options.clone()).dims();
            let r = Tensor::<Flex, 4>::random(out, Distribution::Normal(0.0, 1.0), &dev);
            for mask in 0..16 {
                let [with_bias, with_norm, with_residual, with_relu] =
                    [1, 2, 4, 8].map(|bit| mask & bit != 0);
                let then = Epilogue {
                    norm: with_norm.then(|| norm.clone()),
                    residual: with_residual.then(|| r.clone()),
                    relu: with_relu,
                };
                let bias = with_bias.then(|| b.clone());
                let what = format!("n {n}, ci {ci}, k {k:?}, stride {stride:?}, mask {mask:04b}");
                let fused = on_kernel(FusedOp::Conv2dEpilogue, 1, || {
                    conv2d_epilogue(
                        x.clone(),
                        wt.clone(),
                        bias.clone(),
                        options.clone(),
                        then.clone(),
                    )
                })
                .into_data();
                let composed = conv2d_epilogue_reference(
                    x.clone(),
                    wt.clone(),
                    bias.clone(),
                    options.clone(),
                    then.clone(),
                )
                .into_data();
                assert_eq!(fused, composed, "{what}: against the composition");
                // Burn's convolution, then the same steps.
                let mut y = conv2d_reference(x.clone(), wt.clone(), bias, options.clone());
                if let Some(norm) = then.norm {
                    y = norm
                        .apply(y.reshape([out[0], out[1], out[2] * out[3]]))
                        .reshape(out);
                }
                if let Some(r) = then.residual {
                    y = y + r;
                }
                if then.relu {
                    y = burn::tensor::activation::relu(y);
                }
                fused.assert_approx_eq::<f32>(
                    &y.into_data(),
                    Tolerance::absolute(2e-5).set_relative(1e-4),
                );
            }
        }
    }

    /// By hand: a 3×3 image of 1..9, a 2×2 kernel of ones, stride 1, padding 1 (so the
    /// corners see one pixel), bias 0.5, and without autodiff.
    #[test]
    fn conv2d_by_hand() {
        let dev = Default::default();
        let x = Tensor::<Flex, 1>::from_floats([1., 2., 3., 4., 5., 6., 7., 8., 9.], &dev)
            .reshape([1, 1, 3, 3]);
        let w = Tensor::<Flex, 4>::ones([1, 1, 2, 2], &dev);
        let b = Tensor::<Flex, 1>::from_floats([0.5], &dev);
        let y = on_kernel(FusedOp::Conv2d, 1, || {
            conv2d(x, w, Some(b), ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
        });
        let want = [
            1.0, 3.0, 5.0, 3.0, //
            5.0, 12.0, 16.0, 9.0, //
            11.0, 24.0, 28.0, 15.0, //
            7.0, 15.0, 17.0, 9.0,
        ]
        .map(|v: f32| v + 0.5);
        y.into_data().assert_approx_eq::<f32>(
            &TensorData::new(want.to_vec(), [1, 1, 4, 4]),
            Tolerance::absolute(1e-6),
        );
    }
}
