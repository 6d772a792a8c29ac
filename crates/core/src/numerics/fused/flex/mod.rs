//! The burn-flex side of [`super`]: `f32` kernels on contiguous host buffers, multi-threaded
//! with rayon, and the `Autodiff<Flex>` operations that record them with their own backward
//! step (the backend-extension pattern of Burn's `custom-cubecl-kernel` example, on the CPU).
//!
//! Each operation is one function for both backends: its inputs become [`Input`]s (contiguous
//! values, plus the graph tensor under autodiff), the kernel computes the output, and
//! [`finish`] returns it, recorded with the backward state on `Autodiff<Flex>`.

use std::any::{Any, TypeId};
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorPrimitive};
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use burn_flex::ops::fast_exp::{sigmoid_in_place, tanh_in_place};
use rayon::prelude::*;

mod conv;

/// The default CPU training backend.
type Ad = Autodiff<Flex>;

/// Rows (LayerNorm) or sequences (token shift) per rayon task.
const ROWS_PER_TASK: usize = 64;
const SEQS_PER_TASK: usize = 4;
/// Accumulator lanes of the row sums (independent partial sums the compiler can vectorise).
const LANES: usize = 16;

fn same<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `t` as the type `U`, which the caller has checked with [`same`] to be `T` itself.
fn cast<T: 'static, U: 'static>(t: T) -> U {
    match (Box::new(t) as Box<dyn Any>).downcast::<U>() {
        Ok(u) => *u,
        Err(_) => unreachable!("fused: cast between different types"),
    }
}

/// Whether the kernels of this module run for backend `B` and tensors of `dtypes`: `B` is
/// `Flex` or `Autodiff<Flex>` and every tensor is `f32`.
pub(super) fn handles<B: Backend>(dtypes: &[DType]) -> bool {
    (same::<B, Ad>() || same::<B, Flex>()) && dtypes.iter().all(|d| *d == DType::F32)
}

/// An input of a fused operation: its values as a contiguous tensor and, on `Autodiff<Flex>`,
/// the graph tensor it came from.
struct Input {
    values: FlexTensor,
    graph: Option<FloatTensor<Ad>>,
}

impl Input {
    /// `t` of backend `B`, which [`handles`] has accepted.
    fn new<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        if same::<B, Ad>() {
            let t = cast::<_, Tensor<Ad, D>>(t).into_primitive().tensor();
            Self {
                values: t.primitive.to_contiguous(),
                graph: Some(t),
            }
        } else {
            Self {
                values: cast::<_, Tensor<Flex, D>>(t)
                    .into_primitive()
                    .tensor()
                    .to_contiguous(),
                graph: None,
            }
        }
    }

    fn values(&self) -> &[f32] {
        values(&self.values)
    }

    fn shape(&self) -> &Shape {
        self.values.layout().shape()
    }
}

/// The output `out` of `op` applied to `inputs`, as a tensor of `B`: on `Autodiff<Flex>`
/// recorded on the graph with the inputs as parents, keeping the backward state
/// `state(contiguous inputs)` when a parent is tracked.
fn finish<B: Backend, const D: usize, Op: Backward<Flex, N>, const N: usize>(
    op: Op,
    inputs: [Input; N],
    out: FlexTensor,
    state: impl FnOnce([FlexTensor; N]) -> Op::State,
) -> Tensor<B, D> {
    if !same::<B, Ad>() {
        return cast(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(
            out,
        )));
    }
    let nodes = inputs.each_ref().map(|i| {
        i.graph
            .as_ref()
            .expect("fused: an autodiff input has its graph tensor")
            .node
            .clone()
    });
    // The inputs' graph tensors (and with them their reference-count tokens) stay alive until
    // the step is registered: Burn 0.21's `backward()` on another thread sweeps graph nodes that
    // no live tensor references, and could otherwise take this step's parents in between
    // (tracel-ai/burn#5573).
    let (values, graphs): (Vec<_>, Vec<_>) =
        inputs.into_iter().map(|i| (i.values, i.graph)).unzip();
    let values: [FlexTensor; N] = values
        .try_into()
        .unwrap_or_else(|_| unreachable!("fused: N inputs give N values"));
    let out = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(values), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    drop(graphs);
    cast(Tensor::<Ad, D>::from_primitive(TensorPrimitive::Float(out)))
}

/// The values of a contiguous `f32` tensor.
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused: a contiguous f32 tensor (checked by the caller)")
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// An output buffer that the kernels write completely before it is read.
fn uninit(n: usize) -> Box<[MaybeUninit<f32>]> {
    Box::new_uninit_slice(n)
}

/// # Safety
/// Every element of `v` has been written.
unsafe fn init(v: Box<[MaybeUninit<f32>]>) -> Vec<f32> {
    // SAFETY: guaranteed by the caller.
    unsafe { v.assume_init() }.into_vec()
}

/// The graph ids of an operation's parents (`None` for an untracked one).
fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    ops.parents.each_ref().map(|p| p.as_ref().map(|n| n.id))
}

/// Adds the gradient `values` (of `shape`) to a tracked parent's.
fn register(grads: &mut Gradients, parent: Option<NodeId>, values: Vec<f32>, shape: &Shape) {
    if let Some(id) = parent {
        grads.register::<Flex>(id, tensor(values, shape.clone()));
    }
}

/// Element-wise sum of per-task partial vectors, in task order. The tasks are fixed-size
/// chunks, so the result does not depend on the thread count or on scheduling: runs are
/// reproducible (a `fold`/`reduce` would sum in whatever order work-stealing split the range).
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// `Σ a·b` in [`LANES`] partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; LANES];
    for (ca, cb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b·c` in [`LANES`] partial sums.
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .map(|((x, y), z)| x * y * z)
    .sum();
    let mut acc = [0f32; LANES];
    for ((ca, cb), cc) in ca.zip(cb).zip(cc) {
        for (((s, x), y), z) in acc.iter_mut().zip(ca).zip(cb).zip(cc) {
            *s += x * y * z;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Mean and `1/sqrt(var + ε)` of one row (biased variance, two passes).
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mean = (acc.iter().sum::<f32>() + tail) / n;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `y = (x − mean)·rstd·γ + β` row by row; returns `y`, the means and the `rstd`s.
fn layer_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let (mut y, mut mean, mut rstd) = (uninit(x.len()), uninit(rows), uninit(rows));
    x.par_chunks(ROWS_PER_TASK * d)
        .zip(y.par_chunks_mut(ROWS_PER_TASK * d))
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(((x, y), mean), rstd)| {
            for (((x, y), m), r) in x
                .chunks_exact(d)
                .zip(y.chunks_exact_mut(d))
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
            {
                let (mu, rs) = row_stats(x, eps);
                for (((y, x), g), b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                    y.write((x - mu) * rs * g + b);
                }
                m.write(mu);
                r.write(rs);
            }
        });
    // SAFETY: the chunks cover every row and every element of every row.
    unsafe { (init(y), init(mean), init(rstd)) }
}

/// Gradients of [`layer_norm_forward`] for the upstream gradient `g`:
///
/// ```text
/// x̂ = (x − mean)·rstd,  ĝ = g·γ
/// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),  dγ = Σ_rows g·x̂,  dβ = Σ_rows g
/// ```
fn layer_norm_backward(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let n = d as f32;
    let mut dx = uninit(x.len());
    let params = x
        .par_chunks(ROWS_PER_TASK * d)
        .zip(g.par_chunks(ROWS_PER_TASK * d))
        .zip(dx.par_chunks_mut(ROWS_PER_TASK * d))
        .zip(mean.par_chunks(ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .map(|((((x, g), dx), mean), rstd)| {
            let mut acc = vec![0f32; 2 * d];
            let (dgamma, dbeta) = acc.split_at_mut(d);
            for ((((x, g), dx), &mu), &rs) in x
                .chunks_exact(d)
                .zip(g.chunks_exact(d))
                .zip(dx.chunks_exact_mut(d))
                .zip(mean)
                .zip(rstd)
            {
                // Σ ĝ and Σ ĝ·x̂ = rstd·(Σ g·γ·x − mean·Σ ĝ), as PyTorch's CPU kernel sums them.
                let s1 = dot(g, gamma);
                let a = s1 / n;
                let b = rs * (dot3(g, gamma, x) - mu * s1) / n;
                for ((((dx, x), g), gm), (dg, db)) in dx
                    .iter_mut()
                    .zip(x)
                    .zip(g)
                    .zip(gamma)
                    .zip(dgamma.iter_mut().zip(dbeta.iter_mut()))
                {
                    let xhat = (x - mu) * rs;
                    dx.write(rs * (g * gm - a - xhat * b));
                    *dg += g * xhat;
                    *db += g;
                }
            }
            acc
        })
        .collect::<Vec<_>>();
    let params = sum_in_order(params, 2 * d);
    let (dgamma, dbeta) = params.split_at(d);
    // SAFETY: the chunks cover every row and every element of every row.
    (unsafe { init(dx) }, dgamma.to_vec(), dbeta.to_vec())
}

/// LayerNorm and training-mode BatchNorm share their saved state (the input, γ and two
/// statistics per normalised group) and their gradient bookkeeping; only the kernels differ.
#[derive(Debug)]
enum NormOp {
    /// Over the last axis; statistics per row.
    Layer,
    /// Over the batch and spatial axes of `[N, C, S]`; statistics per channel.
    Batch,
}

#[derive(Debug, Clone)]
struct NormState {
    /// The contiguous input.
    x: FlexTensor,
    gamma: FlexTensor,
    /// Per-group mean and `1/sqrt(var + ε)`.
    stats: Arc<(Vec<f32>, Vec<f32>)>,
}

impl Backward<Flex, 3> for NormOp {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let s = ops.state;
        let shape = s.x.layout().shape().clone();
        let (x, g, gamma) = (values(&s.x), values(&grad), values(&s.gamma));
        let (mean, rstd) = (&s.stats.0, &s.stats.1);
        let (dx, dgamma, dbeta) = match self {
            NormOp::Layer => layer_norm_backward(x, g, gamma, mean, rstd),
            NormOp::Batch => {
                batch_norm_backward(x, g, [shape[0], shape[1], shape[2]], gamma, mean, rstd)
            }
        };
        let params = Shape::new([dgamma.len()]);
        register(grads, node_x, dx, &shape);
        register(grads, node_gamma, dgamma, &params);
        register(grads, node_beta, dbeta, &params);
    }
}

/// [`super::layer_norm`] (on a backend that [`handles`] accepted).
pub(super) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    super::count(super::FusedOp::LayerNorm);
    let [d] = gamma.dims();
    assert_eq!(
        x.dims()[D - 1],
        d,
        "layer_norm: the last axis of the input must have gamma's size"
    );
    let beta = beta.unwrap_or_else(|| Tensor::zeros([d], &gamma.device()));
    let inputs = [Input::new(x), Input::new(gamma), Input::new(beta)];
    let [x, gamma, beta] = &inputs;
    let (y, mean, rstd) =
        layer_norm_forward(x.values(), gamma.values(), beta.values(), epsilon as f32);
    let y = tensor(y, x.shape().clone());
    finish(NormOp::Layer, inputs, y, |[x, gamma, _]| NormState {
        x,
        gamma,
        stats: Arc::new((mean, rstd)),
    })
}

// ---------------------------------------------------------------------------------------------
// Token shift + interpolation

/// `out[b, t] = x[b, t]·μ + prev[b, t]·(1 − μ)`, `prev[b, 0] = first[b]`, `prev[b, t] = x[b, t−1]`.
fn shift_lerp_forward(x: &[f32], first: &[f32], mu: &[f32], steps: usize) -> Vec<f32> {
    let d = mu.len();
    let seq = steps * d;
    let omu: Vec<f32> = mu.iter().map(|m| 1.0 - m).collect();
    let mut out = uninit(x.len());
    out.par_chunks_mut(seq)
        .zip(x.par_chunks(seq))
        .zip(first.par_chunks(d))
        .for_each(|((out, x), first)| {
            for (t, (o, xt)) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let prev = if t == 0 {
                    first
                } else {
                    &x[(t - 1) * d..t * d]
                };
                for ((((o, xv), p), m), om) in o.iter_mut().zip(xt).zip(prev).zip(mu).zip(&omu) {
                    o.write(xv * m + p * om);
                }
            }
        });
    // SAFETY: the chunks cover every step of every sequence.
    unsafe { init(out) }
}

/// Gradients of [`shift_lerp_forward`] for the upstream gradient `g`:
///
/// ```text
/// dx[b, t] = g[b, t]·μ + g[b, t+1]·(1 − μ)  (the second term for t < T−1)
/// dfirst[b] = g[b, 0]·(1 − μ),  dμ = Σ_{b,t} g[b, t]·(x[b, t] − prev[b, t])
/// ```
fn shift_lerp_backward(
    x: &[f32],
    first: &[f32],
    mu: &[f32],
    g: &[f32],
    steps: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = mu.len();
    let seq = steps * d;
    let omu: Vec<f32> = mu.iter().map(|m| 1.0 - m).collect();
    let (mut dx, mut dfirst) = (uninit(x.len()), uninit(first.len()));
    let dmu = dx
        .par_chunks_mut(SEQS_PER_TASK * seq)
        .zip(dfirst.par_chunks_mut(SEQS_PER_TASK * d))
        .zip(x.par_chunks(SEQS_PER_TASK * seq))
        .zip(g.par_chunks(SEQS_PER_TASK * seq))
        .zip(first.par_chunks(SEQS_PER_TASK * d))
        .map(|((((dx, dfirst), x), g), first)| {
            let mut dmu = vec![0f32; d];
            for ((((dx, df), x), g), first) in dx
                .chunks_exact_mut(seq)
                .zip(dfirst.chunks_exact_mut(d))
                .zip(x.chunks_exact(seq))
                .zip(g.chunks_exact(seq))
                .zip(first.chunks_exact(d))
            {
                for t in 0..steps {
                    let row = t * d..(t + 1) * d;
                    let (gt, xt) = (&g[row.clone()], &x[row.clone()]);
                    let prev = if t == 0 {
                        first
                    } else {
                        &x[(t - 1) * d..t * d]
                    };
                    for (((dm, gv), xv), p) in dmu.iter_mut().zip(gt).zip(xt).zip(prev) {
                        *dm += gv * (xv - p);
                    }
                    let dxt = &mut dx[row];
                    if t + 1 < steps {
                        let next = &g[(t + 1) * d..(t + 2) * d];
                        for ((((o, gv), nv), m), om) in
                            dxt.iter_mut().zip(gt).zip(next).zip(mu).zip(&omu)
                        {
                            o.write(gv * m + nv * om);
                        }
                    } else {
                        for ((o, gv), m) in dxt.iter_mut().zip(gt).zip(mu) {
                            o.write(gv * m);
                        }
                    }
                }
                for ((o, gv), om) in df.iter_mut().zip(&g[..d]).zip(&omu) {
                    o.write(gv * om);
                }
            }
            dmu
        })
        .collect::<Vec<_>>();
    let dmu = sum_in_order(dmu, d);
    // SAFETY: the chunks cover every step of every sequence and every `first` row.
    unsafe { (init(dx), init(dfirst), dmu) }
}

#[derive(Debug)]
struct ShiftLerpOp;

impl Backward<Flex, 3> for ShiftLerpOp {
    /// The contiguous `x`, `first` and `mu`.
    type State = [FlexTensor; 3];

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_first, node_mu] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [x, first, mu] = ops.state;
        let steps = x.layout().shape()[1];
        let (dx, dfirst, dmu) = shift_lerp_backward(
            values(&x),
            values(&first),
            values(&mu),
            values(&grad),
            steps,
        );
        register(grads, node_x, dx, x.layout().shape());
        register(grads, node_first, dfirst, first.layout().shape());
        register(grads, node_mu, dmu, mu.layout().shape());
    }
}

/// [`super::shift_lerp`] (on a backend that [`handles`] accepted, shapes checked).
pub(super) fn shift_lerp<B: Backend>(
    x: Tensor<B, 3>,
    first: Tensor<B, 3>,
    mu: Tensor<B, 3>,
) -> Tensor<B, 3> {
    super::count(super::FusedOp::ShiftLerp);
    let inputs = [Input::new(x), Input::new(first), Input::new(mu)];
    let [x, first, mu] = &inputs;
    let shape = x.shape().clone();
    let out = shift_lerp_forward(x.values(), first.values(), mu.values(), shape[1]);
    finish(ShiftLerpOp, inputs, tensor(out, shape), |s| s)
}

// ---------------------------------------------------------------------------------------------
// Squared ReLU

/// Elements per rayon task of the element-wise kernels.
const ELEMS_PER_TASK: usize = 1 << 16;

/// `f(x)` element by element, in parallel chunks.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = uninit(x.len());
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                o.write(f(v));
            }
        });
    // SAFETY: the chunks cover every element.
    unsafe { init(out) }
}

/// `f(a, b)` element by element, in parallel chunks.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(
        a.len(),
        b.len(),
        "fused: element-wise operands differ in size"
    );
    let mut out = uninit(a.len());
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(a.par_chunks(ELEMS_PER_TASK))
        .zip(b.par_chunks(ELEMS_PER_TASK))
        .for_each(|((o, a), b)| {
            for ((o, &u), &v) in o.iter_mut().zip(a).zip(b) {
                o.write(f(u, v));
            }
        });
    // SAFETY: the chunks cover every element.
    unsafe { init(out) }
}

fn relu_square_forward(x: &[f32]) -> Vec<f32> {
    map1(x, |v| {
        let r = v.max(0.0);
        r * r
    })
}

/// `dx = g · 2·max(x, 0)`.
fn relu_square_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    map2(x, g, |v, gv| gv * 2.0 * v.max(0.0))
}

#[derive(Debug)]
struct ReluSquareOp;

impl Backward<Flex, 1> for ReluSquareOp {
    /// The contiguous input.
    type State = [FlexTensor; 1];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [x] = ops.state;
        let dx = relu_square_backward(values(&x), values(&grad));
        register(grads, node_x, dx, x.layout().shape());
    }
}

/// [`super::relu_square`] (on a backend that [`handles`] accepted).
pub(super) fn relu_square<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    super::count(super::FusedOp::ReluSquare);
    let x = Input::new(x);
    let out = tensor(relu_square_forward(x.values()), x.shape().clone());
    finish(ReluSquareOp, [x], out, |s| s)
}

// ---------------------------------------------------------------------------------------------
// ReLU keeping its output

#[derive(Debug)]
struct ReluOp;

impl Backward<Flex, 1> for ReluOp {
    /// The output `y`: `y > 0` exactly where `x > 0`.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let y = ops.state;
        let dx = map2(
            values(&y),
            values(&grad),
            |y, g| if y > 0.0 { g } else { 0.0 },
        );
        register(grads, node_x, dx, y.layout().shape());
    }
}

/// [`super::relu`] (on `Autodiff<Flex>`, which [`handles`] accepted).
pub(super) fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    super::count(super::FusedOp::Relu);
    let x = Input::new(x);
    let y = tensor(map1(x.values(), |v| v.max(0.0)), x.shape().clone());
    let saved = y.clone();
    finish(ReluOp, [x], y, |_| saved)
}

// ---------------------------------------------------------------------------------------------
// Sigmoid gate

/// Elements per stack block of the gate kernels (σ is computed into it with burn-flex's
/// vectorised sigmoid).
const GATE_BLOCK: usize = 1024;

fn sigmoid_gate_forward(r: &[f32], y: &[f32]) -> Vec<f32> {
    let mut out = uninit(r.len());
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(r.par_chunks(ELEMS_PER_TASK))
        .zip(y.par_chunks(ELEMS_PER_TASK))
        .for_each(|((o, r), y)| {
            let mut s = [0f32; GATE_BLOCK];
            for ((o, r), y) in o
                .chunks_mut(GATE_BLOCK)
                .zip(r.chunks(GATE_BLOCK))
                .zip(y.chunks(GATE_BLOCK))
            {
                let s = &mut s[..r.len()];
                s.copy_from_slice(r);
                sigmoid_in_place(s);
                for ((o, s), y) in o.iter_mut().zip(s.iter()).zip(y) {
                    o.write(s * y);
                }
            }
        });
    // SAFETY: the chunks cover every element.
    unsafe { init(out) }
}

/// `dr = g·y·σ(r)·(1 − σ(r))`, `dy = g·σ(r)`.
fn sigmoid_gate_backward(r: &[f32], y: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dr, mut dy) = (uninit(r.len()), uninit(r.len()));
    dr.par_chunks_mut(ELEMS_PER_TASK)
        .zip(dy.par_chunks_mut(ELEMS_PER_TASK))
        .zip(r.par_chunks(ELEMS_PER_TASK))
        .zip(
            y.par_chunks(ELEMS_PER_TASK)
                .zip(g.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(((dr, dy), r), (y, g))| {
            let mut s = [0f32; GATE_BLOCK];
            for ((((dr, dy), r), y), g) in dr
                .chunks_mut(GATE_BLOCK)
                .zip(dy.chunks_mut(GATE_BLOCK))
                .zip(r.chunks(GATE_BLOCK))
                .zip(y.chunks(GATE_BLOCK))
                .zip(g.chunks(GATE_BLOCK))
            {
                let s = &mut s[..r.len()];
                s.copy_from_slice(r);
                sigmoid_in_place(s);
                for ((((dr, dy), s), y), g) in
                    dr.iter_mut().zip(dy.iter_mut()).zip(s.iter()).zip(y).zip(g)
                {
                    dr.write(g * y * s * (1.0 - s));
                    dy.write(g * s);
                }
            }
        });
    // SAFETY: the chunks cover every element of both outputs.
    unsafe { (init(dr), init(dy)) }
}

#[derive(Debug)]
struct SigmoidGateOp;

impl Backward<Flex, 2> for SigmoidGateOp {
    /// The contiguous gate input `r` and gated value `y`.
    type State = [FlexTensor; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_r, node_y] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [r, y] = ops.state;
        let (dr, dy) = sigmoid_gate_backward(values(&r), values(&y), values(&grad));
        let shape = r.layout().shape().clone();
        register(grads, node_r, dr, &shape);
        register(grads, node_y, dy, &shape);
    }
}

/// [`super::sigmoid_gate`] (on a backend that [`handles`] accepted, shapes checked).
pub(super) fn sigmoid_gate<B: Backend, const D: usize>(
    r: Tensor<B, D>,
    y: Tensor<B, D>,
) -> Tensor<B, D> {
    super::count(super::FusedOp::SigmoidGate);
    let inputs = [Input::new(r), Input::new(y)];
    let [r, y] = &inputs;
    let out = tensor(
        sigmoid_gate_forward(r.values(), y.values()),
        r.shape().clone(),
    );
    finish(SigmoidGateOp, inputs, out, |s| s)
}

// ---------------------------------------------------------------------------------------------
// LSTM cell

/// Batch rows per rayon task of the LSTM cell.
const CELL_ROWS_PER_TASK: usize = 16;

/// The activations of one row of gates `[i | f | g | o]`: σ, σ, tanh, σ, in place.
fn cell_activations(act: &mut [f32], hidden: usize) {
    sigmoid_in_place(&mut act[..2 * hidden]);
    tanh_in_place(&mut act[2 * hidden..3 * hidden]);
    sigmoid_in_place(&mut act[3 * hidden..]);
}

/// `c = σ(f)·c_prev + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`, row by row; the output rows are
/// `[h | c]`.
fn lstm_cell_forward(gates: &[f32], c_prev: &[f32], hidden: usize) -> Vec<f32> {
    let mut out = uninit(c_prev.len() * 2);
    out.par_chunks_mut(CELL_ROWS_PER_TASK * 2 * hidden)
        .zip(gates.par_chunks(CELL_ROWS_PER_TASK * 4 * hidden))
        .zip(c_prev.par_chunks(CELL_ROWS_PER_TASK * hidden))
        .for_each(|((out, gates), c_prev)| {
            let mut act = vec![0f32; 4 * hidden];
            let mut tc = vec![0f32; hidden];
            for ((out, gates), cp) in out
                .chunks_exact_mut(2 * hidden)
                .zip(gates.chunks_exact(4 * hidden))
                .zip(c_prev.chunks_exact(hidden))
            {
                act.copy_from_slice(gates);
                cell_activations(&mut act, hidden);
                let (i, rest) = act.split_at(hidden);
                let (f, rest) = rest.split_at(hidden);
                let (g, o) = rest.split_at(hidden);
                let (out_h, out_c) = out.split_at_mut(hidden);
                for (((((oc, t), i), f), g), cp) in out_c
                    .iter_mut()
                    .zip(tc.iter_mut())
                    .zip(i)
                    .zip(f)
                    .zip(g)
                    .zip(cp)
                {
                    let c = f * cp + i * g;
                    oc.write(c);
                    *t = c;
                }
                tanh_in_place(&mut tc);
                for ((oh, o), t) in out_h.iter_mut().zip(o).zip(&tc) {
                    oh.write(o * t);
                }
            }
        });
    // SAFETY: the chunks cover both halves of every output row.
    unsafe { init(out) }
}

/// Gradients of [`lstm_cell_forward`] for the upstream gradient `[dh | dc]`:
///
/// ```text
/// dc' = dc + dh·σ(o)·(1 − tanh²c)
/// di = dc'·tanh(g)·σ(i)(1 − σ(i)),  df = dc'·c_prev·σ(f)(1 − σ(f))
/// dg = dc'·σ(i)·(1 − tanh²g),       do = dh·tanh(c)·σ(o)(1 − σ(o)),  dc_prev = dc'·σ(f)
/// ```
fn lstm_cell_backward(
    gates: &[f32],
    c_prev: &[f32],
    out: &[f32],
    grad: &[f32],
    hidden: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (mut dgates, mut dc_prev) = (uninit(gates.len()), uninit(c_prev.len()));
    let h2 = 2 * hidden;
    dgates
        .par_chunks_mut(CELL_ROWS_PER_TASK * 4 * hidden)
        .zip(dc_prev.par_chunks_mut(CELL_ROWS_PER_TASK * hidden))
        .zip(gates.par_chunks(CELL_ROWS_PER_TASK * 4 * hidden))
        .zip(c_prev.par_chunks(CELL_ROWS_PER_TASK * hidden))
        .zip(
            out.par_chunks(CELL_ROWS_PER_TASK * h2)
                .zip(grad.par_chunks(CELL_ROWS_PER_TASK * h2)),
        )
        .for_each(|((((dgates, dc_prev), gates), c_prev), (out, grad))| {
            let mut act = vec![0f32; 4 * hidden];
            let mut tc = vec![0f32; hidden];
            for (((((dg_row, dcp), gates), cp), out), grad) in dgates
                .chunks_exact_mut(4 * hidden)
                .zip(dc_prev.chunks_exact_mut(hidden))
                .zip(gates.chunks_exact(4 * hidden))
                .zip(c_prev.chunks_exact(hidden))
                .zip(out.chunks_exact(h2))
                .zip(grad.chunks_exact(h2))
            {
                act.copy_from_slice(gates);
                cell_activations(&mut act, hidden);
                tc.copy_from_slice(&out[hidden..]);
                tanh_in_place(&mut tc);
                let (dh, dc) = grad.split_at(hidden);
                let (d_i, rest) = dg_row.split_at_mut(hidden);
                let (d_f, rest) = rest.split_at_mut(hidden);
                let (d_g, d_o) = rest.split_at_mut(hidden);
                for j in 0..hidden {
                    let (si, sf, tg, so) = (
                        act[j],
                        act[hidden + j],
                        act[2 * hidden + j],
                        act[3 * hidden + j],
                    );
                    let t = tc[j];
                    let dct = dc[j] + dh[j] * so * (1.0 - t * t);
                    d_o[j].write(dh[j] * t * so * (1.0 - so));
                    d_i[j].write(dct * tg * si * (1.0 - si));
                    d_f[j].write(dct * cp[j] * sf * (1.0 - sf));
                    d_g[j].write(dct * si * (1.0 - tg * tg));
                    dcp[j].write(dct * sf);
                }
            }
        });
    // SAFETY: the chunks cover every row of both outputs, and each row loop writes all four
    // gate blocks and the state.
    unsafe { (init(dgates), init(dc_prev)) }
}

#[derive(Debug)]
struct LstmCellOp;

#[derive(Debug, Clone)]
struct LstmCellState {
    gates: FlexTensor,
    c_prev: FlexTensor,
    /// The `[h | c]` output.
    out: FlexTensor,
}

impl Backward<Flex, 2> for LstmCellOp {
    type State = LstmCellState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gates, node_c] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let s = ops.state;
        let hidden = s.c_prev.layout().shape()[1];
        let (dgates, dc_prev) = lstm_cell_backward(
            values(&s.gates),
            values(&s.c_prev),
            values(&s.out),
            values(&grad),
            hidden,
        );
        register(grads, node_gates, dgates, s.gates.layout().shape());
        register(grads, node_c, dc_prev, s.c_prev.layout().shape());
    }
}

/// [`super::lstm_cell`] (on a backend that [`handles`] accepted, shapes checked): the
/// `[h | c]` rows `[B, 2H]`.
pub(super) fn lstm_cell<B: Backend>(gates: Tensor<B, 2>, c_prev: Tensor<B, 2>) -> Tensor<B, 2> {
    super::count(super::FusedOp::LstmCell);
    let inputs = [Input::new(gates), Input::new(c_prev)];
    let [gates, c_prev] = &inputs;
    let [batch, hidden] = [c_prev.shape()[0], c_prev.shape()[1]];
    let out = tensor(
        lstm_cell_forward(gates.values(), c_prev.values(), hidden),
        Shape::new([batch, 2 * hidden]),
    );
    let kept = out.clone();
    finish(LstmCellOp, inputs, out, |[gates, c_prev]| LstmCellState {
        gates,
        c_prev,
        out: kept,
    })
}

// ---------------------------------------------------------------------------------------------
// Convolution

#[derive(Debug)]
struct Conv2dOp {
    geometry: conv::Geometry,
}

impl Backward<Flex, 3> for Conv2dOp {
    /// The contiguous input and weight.
    type State = [FlexTensor; 2];

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = parent_ids(&ops);
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [x, w] = ops.state;
        let wanted = [node_x.is_some(), node_w.is_some(), node_b.is_some()];
        let [dx, dw, db] = conv::backward(
            &self.geometry,
            values(&x),
            values(&w),
            values(&grad),
            wanted,
        );
        let bias_shape = Shape::new([w.layout().shape()[0]]);
        for (node, grad, shape) in [
            (node_x, dx, x.layout().shape()),
            (node_w, dw, w.layout().shape()),
            (node_b, db, &bias_shape),
        ] {
            if let Some(grad) = grad {
                register(grads, node, grad, shape);
            }
        }
    }
}

/// [`super::conv2d`] (on a backend that [`handles`] accepted, one group).
pub(super) fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: &burn::tensor::ops::ConvOptions<2>,
) -> Tensor<B, 4> {
    super::count(super::FusedOp::Conv2d);
    let geometry = conv::Geometry::new(x.dims(), weight.dims(), options);
    let [co, ..] = weight.dims();
    let bias = bias.unwrap_or_else(|| Tensor::zeros([co], &weight.device()));
    assert_eq!(
        bias.dims(),
        [co],
        "conv2d: the bias must have one value per output channel"
    );
    let inputs = [Input::new(x), Input::new(weight), Input::new(bias)];
    let [x, w, b] = &inputs;
    let then = conv::Epilogue {
        bias: Some(b.values()),
        ..Default::default()
    };
    let y = conv::forward(&geometry, x.values(), w.values(), &then);
    let y = tensor(y, Shape::new(geometry.out_shape()));
    finish(Conv2dOp { geometry }, inputs, y, |[x, w, _]| [x, w])
}

/// [`super::conv2d_epilogue`] (inference on `Flex`, which [`handles`] accepted, one group).
pub(super) fn conv2d_epilogue<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: &burn::tensor::ops::ConvOptions<2>,
    then: super::Epilogue<B>,
) -> Tensor<B, 4> {
    super::count(super::FusedOp::Conv2dEpilogue);
    let geometry = conv::Geometry::new(x.dims(), weight.dims(), options);
    let (x, w) = (Input::new(x), Input::new(weight));
    let bias = bias.map(Input::new);
    let norm = then.norm.map(|n| [n.mean, n.scale, n.beta].map(Input::new));
    let residual = then.residual.map(|r| {
        assert_eq!(
            r.dims(),
            geometry.out_shape(),
            "conv2d: the residual must have the output's shape"
        );
        Input::new(r)
    });
    let epilogue = conv::Epilogue {
        bias: bias.as_ref().map(Input::values),
        norm: norm.as_ref().map(|n| n.each_ref().map(Input::values)),
        residual: residual.as_ref().map(Input::values),
        relu: then.relu,
    };
    let y = conv::forward(&geometry, x.values(), w.values(), &epilogue);
    let y = tensor(y, Shape::new(geometry.out_shape()));
    cast(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(y)))
}

// ---------------------------------------------------------------------------------------------
// BatchNorm (training: batch statistics)

/// `Σ a·(b − mu)` in [`LANES`] partial sums (`a = b` gives the squared deviations).
fn dot_centred(a: &[f32], b: &[f32], mu: f32) -> f32 {
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * (y - mu))
        .sum();
    let mut acc = [0f32; LANES];
    for (ca, cb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * (y - mu);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ x` of one row in [`LANES`] partial sums.
fn row_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The rows `[S]` of channel `ch` in a contiguous `[N, C, S]` buffer.
fn channel_rows(x: &[f32], [_, c, s]: [usize; 3], ch: usize) -> impl Iterator<Item = &[f32]> {
    x.chunks_exact(s).skip(ch).step_by(c)
}

/// Per-channel mean and biased variance of `x [N, C, S]`: row sums in f32 lanes, channel totals
/// in f64, two passes.
fn batch_norm_stats(x: &[f32], dims: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let [n, c, s] = dims;
    let m = (n * s) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let total = |f: &dyn Fn(&[f32]) -> f32| {
                channel_rows(x, dims, ch)
                    .map(|r| f64::from(f(r)))
                    .sum::<f64>()
            };
            let mean = (total(&row_sum) / m) as f32;
            let var = (total(&|r| dot_centred(r, r, mean)) / m) as f32;
            (mean, var)
        })
        .unzip()
}

/// `y = (x − mean)·(γ·rstd) + β` for every `[S]` row of `x [N, C, S]`.
fn batch_norm_forward(
    x: &[f32],
    [_, c, s]: [usize; 3],
    mean: &[f32],
    scale: &[f32],
    beta: &[f32],
) -> Vec<f32> {
    let mut y = uninit(x.len());
    y.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(row, (y, x))| {
            let ch = row % c;
            let (mu, a, b) = (mean[ch], scale[ch], beta[ch]);
            for (y, x) in y.iter_mut().zip(x) {
                y.write((x - mu) * a + b);
            }
        });
    // SAFETY: the rows cover every element.
    unsafe { init(y) }
}

/// Gradients of [`batch_norm_forward`] with batch statistics, for the upstream gradient `g`
/// (`M = N·S` values per channel):
///
/// ```text
/// s1 = Σ g,  s2 = Σ g·(x − mean)                       (per channel)
/// dβ = s1,  dγ = s2·rstd
/// dx = γ·rstd·(g − s1/M − (x − mean)·rstd²·s2/M)
/// ```
fn batch_norm_backward(
    x: &[f32],
    g: &[f32],
    dims: [usize; 3],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [n, c, s] = dims;
    let m = (n * s) as f32;
    let (s1, s2): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = channel_rows(x, dims, ch).zip(channel_rows(g, dims, ch));
            let (mut s1, mut s2) = (0f64, 0f64);
            for (x, g) in rows {
                s1 += f64::from(row_sum(g));
                s2 += f64::from(dot_centred(g, x, mean[ch]));
            }
            (s1 as f32, s2 as f32)
        })
        .unzip();
    let mut dx = uninit(x.len());
    dx.par_chunks_mut(s)
        .zip(x.par_chunks(s).zip(g.par_chunks(s)))
        .enumerate()
        .for_each(|(row, (dx, (x, g)))| {
            let ch = row % c;
            let (mu, r) = (mean[ch], rstd[ch]);
            let a = gamma[ch] * r;
            let (b, k) = (s1[ch] / m, r * r * s2[ch] / m);
            for ((dx, x), g) in dx.iter_mut().zip(x).zip(g) {
                dx.write(a * (g - b - (x - mu) * k));
            }
        });
    let dgamma = s2.iter().zip(rstd).map(|(s2, r)| s2 * r).collect();
    // SAFETY: the rows cover every element.
    (unsafe { init(dx) }, dgamma, s1)
}

/// [`super::batch_norm`] (on a backend that [`handles`] accepted, shapes checked).
pub(super) fn batch_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 3>, Vec<f32>, Vec<f32>) {
    super::count(super::FusedOp::BatchNorm);
    let inputs = [Input::new(x), Input::new(gamma), Input::new(beta)];
    let [x, gamma, beta] = &inputs;
    let shape = x.shape().clone();
    let dims = [shape[0], shape[1], shape[2]];
    let (mean, var) = batch_norm_stats(x.values(), dims);
    let rstd: Vec<f32> = var
        .iter()
        .map(|v| 1.0 / (v + epsilon as f32).sqrt())
        .collect();
    let scale: Vec<f32> = rstd
        .iter()
        .zip(gamma.values())
        .map(|(r, g)| r * g)
        .collect();
    let y = batch_norm_forward(x.values(), dims, &mean, &scale, beta.values());
    let stats = Arc::new((mean.clone(), rstd));
    let y = finish(NormOp::Batch, inputs, tensor(y, shape), |[x, gamma, _]| {
        NormState { x, gamma, stats }
    });
    (y, mean, var)
}
