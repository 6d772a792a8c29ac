//! The kernels of the patched burn-flex (`vendor/burn-flex/FIX.md`), through Burn's API: new
//! buffers, `repeat_dim`, the vectorised `exp` / `sigmoid` / `tanh`, copies of strided views,
//! `cat`, element-wise ops on shared inputs and `Linear` gradients, against values computed
//! here (in `f64` where rounding matters).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::sigmoid;
use kiln::backend::{Autodiff, Flex};

type B = Flex;

/// Inputs over the whole range of `exp`, the overflow and underflow edges, and specials.
fn inputs() -> Vec<f32> {
    let mut xs: Vec<f32> = (0..200_003)
        .map(|i| -110.0 + 200.0 * (i as f32) / 200_003.0)
        .collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        88.72,
        88.73,
        -87.3,
        -87.4,
        -103.9,
        -104.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    xs
}

fn tensor(values: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &Default::default(),
    )
}

fn values(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Relative error within `rel` of the exact value; where that is below the smallest normal
/// `f32`, an absolute error within it.
fn assert_close(x: f32, got: f32, exact: f64, rel: f64, what: &str) {
    let min = f32::MIN_POSITIVE as f64;
    if exact.is_infinite() || exact > f32::MAX as f64 {
        assert_eq!(got, f32::INFINITY, "{what}({x})");
        return;
    }
    let err = (got as f64 - exact).abs();
    assert!(
        err <= rel * exact.abs() || (exact.abs() < min && err <= min),
        "{what}({x}) = {got}, exact {exact}"
    );
}

#[test]
fn exp_is_within_two_ulp_over_the_whole_range() {
    let xs = inputs();
    let got = values(tensor(&xs).exp());
    for (&x, &y) in xs.iter().zip(&got) {
        assert_close(x, y, (x as f64).exp(), 2.0 * f32::EPSILON as f64, "exp");
    }
    let nan = values(tensor(&[f32::NAN]).exp());
    assert!(nan[0].is_nan());
}

#[test]
fn sigmoid_is_within_four_epsilon() {
    let xs = inputs();
    let got = values(sigmoid(tensor(&xs)));
    for (&x, &y) in xs.iter().zip(&got) {
        let exact = 1.0 / (1.0 + (-(x as f64)).exp());
        assert_close(x, y, exact, 4.0 * f32::EPSILON as f64, "sigmoid");
    }
    let nan = values(sigmoid(tensor(&[f32::NAN])));
    assert!(nan[0].is_nan());
}

#[test]
fn tanh_is_within_four_epsilon() {
    let xs = inputs();
    let got = values(tensor(&xs).tanh());
    for (&x, &y) in xs.iter().zip(&got) {
        assert_close(x, y, (x as f64).tanh(), 4.0 * f32::EPSILON as f64, "tanh");
    }
    // Small inputs, where `tanh(x) ≈ x` and a formula through `exp` would lose every digit.
    let small: Vec<f32> = (1..2000).map(|i| i as f32 * 1e-6).collect();
    for (&x, &y) in small.iter().zip(&values(tensor(&small).tanh())) {
        assert_close(x, y, (x as f64).tanh(), 4.0 * f32::EPSILON as f64, "tanh");
    }
    let specials = values(tensor(&[f32::NAN, -0.0]).tanh());
    assert!(specials[0].is_nan());
    assert_eq!(specials[1].to_bits(), (-0.0f32).to_bits());
}

/// The kernels write in place only into a buffer nobody else holds: a clone, a transposed view
/// and a slice of a shared tensor keep their values, and the results are in logical order.
#[test]
fn in_place_kernels_leave_shared_and_strided_inputs_alone() {
    let device = Default::default();
    let data: Vec<f32> = (0..6 * 7).map(|i| i as f32 * 0.1 - 2.0).collect();
    let a = Tensor::<B, 2>::from_data(TensorData::new(data.clone(), [6, 7]), &device);
    let kept = a.clone();
    let e = a.clone().exp();
    let t = a.clone().transpose().exp(); // [7, 6], non-contiguous input
    let s = sigmoid(a.clone().slice([1..4, 2..5]));
    assert_eq!(values(kept.reshape([42])), data, "the input changed");
    let e = values(e.reshape([42]));
    let t: Vec<f32> = t.into_data().to_vec().unwrap();
    let s: Vec<f32> = s.into_data().to_vec().unwrap();
    for r in 0..6 {
        for c in 0..7 {
            let x = data[r * 7 + c] as f64;
            assert_close(
                x as f32,
                e[r * 7 + c],
                x.exp(),
                2.0 * f32::EPSILON as f64,
                "exp",
            );
            assert_eq!(t[c * 6 + r], e[r * 7 + c], "transposed exp at {r},{c}");
        }
    }
    for r in 0..3 {
        for c in 0..3 {
            let x = data[(r + 1) * 7 + c + 2] as f64;
            let exact = 1.0 / (1.0 + (-x).exp());
            assert_close(
                x as f32,
                s[r * 3 + c],
                exact,
                4.0 * f32::EPSILON as f64,
                "sigmoid",
            );
        }
    }
}

/// Gradients through the patched kernels (Burn's autodiff recomputes `exp` and `sigmoid` in the
/// backward pass): `d exp(x) = exp(x)`, `d σ(x) = σ(x)(1 − σ(x))`.
#[test]
fn gradients_use_the_same_kernels() {
    type Ad = Autodiff<Flex>;
    let device = Default::default();
    let xs: Vec<f32> = (0..1000).map(|i| -20.0 + i as f32 * 0.04).collect();
    let x =
        Tensor::<Ad, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).require_grad();
    let grads = (x.clone().exp().sum() + sigmoid(x.clone()).sum()).backward();
    let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
    for (&x, &g) in xs.iter().zip(&g) {
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        let exact = (x as f64).exp() + s * (1.0 - s);
        assert_close(x, g, exact, 8.0 * f32::EPSILON as f64, "d(exp + sigmoid)");
    }
}

/// New buffers start at zero and `repeat_dim` copies blocks in order (patch 1 changed how both
/// allocate).
#[test]
fn zeros_and_repeat_dim() {
    let device = Default::default();
    let z: Vec<f32> = Tensor::<B, 2>::zeros([33, 17], &device)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(z.iter().all(|&v| v == 0.0));
    let a = Tensor::<B, 3>::from_data(
        TensorData::new((0..6).map(|i| i as f32).collect::<Vec<_>>(), [2, 3, 1]),
        &device,
    );
    let r: Vec<f32> = a.clone().repeat_dim(1, 2).into_data().to_vec().unwrap();
    assert_eq!(r, [0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]);
    let r: Vec<f32> = a.repeat_dim(2, 3).into_data().to_vec().unwrap();
    assert_eq!(
        r,
        [
            0., 0., 0., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 5., 5., 5.
        ]
    );
    let i: Vec<i64> = Tensor::<B, 1, Int>::from_data(TensorData::from([7i64, -2]), &device)
        .repeat_dim(0, 2)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    assert_eq!(i, [7, -2, 7, -2]);
}

/// `0, 1, 2, ...` (mod 1000, so every value is exact in `f32`) as a tensor of `shape`.
fn iota<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 - 500.0).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn flat<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Row-major strides of `shape`.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// `src` (row-major, `shape`) permuted by `axes`, by index arithmetic.
fn permuted(src: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let strides = strides_of(shape);
    let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let out_strides = strides_of(&out_shape);
    (0..src.len())
        .map(|i| {
            let index: usize = axes
                .iter()
                .enumerate()
                .map(|(d, &a)| (i / out_strides[d]) % out_shape[d] * strides[a])
                .sum();
            src[index]
        })
        .collect()
}

/// Copies of permuted and sliced views (patch 5: blocked, multi-threaded copies), above and
/// below the size where they go parallel, against index arithmetic.
#[test]
fn strided_copies_match_index_arithmetic() {
    for shape in [[8, 60, 30, 20], [3, 4, 5, 2]] {
        let src = flat(iota(shape));
        for axes in [[2, 0, 3, 1], [1, 0, 2, 3], [0, 1, 3, 2], [3, 2, 1, 0]] {
            let got = flat(iota(shape).permute(axes));
            assert_eq!(
                got,
                permuted(&src, &shape, &axes),
                "{shape:?} permuted {axes:?}"
            );
            // An element-wise op on the view (it used to walk it element by element).
            let doubled = flat(iota(shape).permute(axes) * 2.0);
            let want: Vec<f32> = permuted(&src, &shape, &axes)
                .iter()
                .map(|v| v * 2.0)
                .collect();
            assert_eq!(doubled, want, "{shape:?} permuted {axes:?}, times 2");
        }
        let [a, b, c, d] = shape;
        let got = flat(iota(shape).slice([0..a, 1..b, 0..c, 1..d]) + 1.0);
        let strides = strides_of(&shape);
        let mut want = Vec::new();
        for i in 0..a {
            for j in 1..b {
                for k in 0..c {
                    for l in 1..d {
                        want.push(src[i * strides[0] + j * strides[1] + k * strides[2] + l] + 1.0);
                    }
                }
            }
        }
        assert_eq!(got, want, "{shape:?} sliced, plus 1");
    }
}

/// `cat` of a slice and a contiguous tensor along an inner dimension, and of a transposed
/// view (patch 5: blocks read in place, copied on all threads).
#[test]
fn cat_of_views_matches_index_arithmetic() {
    let device = Default::default();
    for [n, t, d] in [[16, 60, 300], [2, 5, 3]] {
        let x = iota([n, t, d]);
        let state = Tensor::<B, 3>::ones([n, 1, d], &device) * 7.0;
        // The token shift of RWKV: cat(state, x[:, :t-1]).
        let got = flat(Tensor::cat(
            vec![state, x.clone().slice([0..n, 0..t - 1, 0..d])],
            1,
        ));
        let src = flat(x.clone());
        let mut want = Vec::new();
        for i in 0..n {
            want.extend(std::iter::repeat_n(7.0, d));
            want.extend_from_slice(&src[i * t * d..i * t * d + (t - 1) * d]);
        }
        assert_eq!(got, want, "[{n}, {t}, {d}] shifted");

        // Along the last dimension, with a transposed input (copied first).
        let xt = x.clone().swap_dims(1, 2); // [n, d, t]
        let got = flat(Tensor::cat(vec![xt.clone(), xt.clone()], 2));
        let tr = permuted(&src, &[n, t, d], &[0, 2, 1]);
        let mut want = Vec::new();
        for row in tr.chunks(t) {
            want.extend_from_slice(row);
            want.extend_from_slice(row);
        }
        assert_eq!(
            got, want,
            "[{n}, {d}, {t}] doubled along the last dimension"
        );
    }
}

/// Binary, scalar and unary ops on inputs that stay alive (as autodiff keeps them), so that
/// they cannot be updated in place (patch 5: multi-threaded allocating paths), above and below
/// the parallel size; the inputs are left unchanged.
#[test]
fn ops_on_shared_inputs() {
    for n in [300_000, 1000] {
        let a = iota([n]);
        let b = iota([n]).flip([0]);
        let av = flat(a.clone());
        let bv = flat(b.clone());
        let cases: Vec<(&str, Tensor<B, 1>, Vec<f32>)> = vec![
            (
                "a + b",
                a.clone() + b.clone(),
                av.iter().zip(&bv).map(|(x, y)| x + y).collect(),
            ),
            (
                "a / b",
                a.clone() / b.clone(),
                av.iter().zip(&bv).map(|(x, y)| x / y).collect(),
            ),
            (
                "a * 2.5",
                a.clone() * 2.5,
                av.iter().map(|x| x * 2.5).collect(),
            ),
            ("-a", a.clone().neg(), av.iter().map(|x| -x).collect()),
            (
                "relu(b)",
                burn::tensor::activation::relu(b.clone()),
                bv.iter().map(|x| x.max(0.0)).collect(),
            ),
            (
                "max(a, b)",
                a.clone().max_pair(b.clone()),
                av.iter().zip(&bv).map(|(x, y)| x.max(*y)).collect(),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(flat(got), want, "{what}, {n} elements");
        }
        assert_eq!(flat(a), av, "a changed");
        assert_eq!(flat(b), bv, "b changed");
    }
}

/// A `Linear`'s weight and bias gradients on a batch of sequences (patch 4: one product over
/// all rows), contiguous and transposed input, against sums computed here.
#[test]
fn linear_gradients_sum_over_every_row() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let (n, t, i, o) = (4, 5, 3, 2);
    let xs: Vec<f32> = (0..n * t * i).map(|k| (k as f32 * 0.37).sin()).collect();
    let ws: Vec<f32> = (0..i * o).map(|k| (k as f32 * 0.61).cos()).collect();
    let cs: Vec<f32> = (0..n * t * o).map(|k| (k as f32 * 0.23).cos()).collect();
    for transposed in [false, true] {
        let x = if transposed {
            // The same values, stored [t, n, i] and viewed as [n, t, i].
            let stored = permuted(&xs, &[n, t, i], &[1, 0, 2]);
            Tensor::<A, 3>::from_data(TensorData::new(stored, [t, n, i]), &device).swap_dims(0, 1)
        } else {
            Tensor::<A, 3>::from_data(TensorData::new(xs.clone(), [n, t, i]), &device)
        };
        let w =
            Tensor::<A, 2>::from_data(TensorData::new(ws.clone(), [i, o]), &device).require_grad();
        let b = Tensor::<A, 1>::zeros([o], &device).require_grad();
        let c = Tensor::<A, 3>::from_data(TensorData::new(cs.clone(), [n, t, o]), &device);
        let y = burn::tensor::module::linear(x, w.clone(), Some(b.clone()));
        let grads = (y * c).sum().backward();
        let dw: Vec<f32> = w.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let db: Vec<f32> = b.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (p, q) in (0..i).flat_map(|p| (0..o).map(move |q| (p, q))) {
            let want: f64 = (0..n * t)
                .map(|r| xs[r * i + p] as f64 * cs[r * o + q] as f64)
                .sum();
            assert!((dw[p * o + q] as f64 - want).abs() < 1e-5, "dW[{p}][{q}]");
        }
        for q in 0..o {
            let want: f64 = (0..n * t).map(|r| cs[r * o + q] as f64).sum();
            assert!((db[q] as f64 - want).abs() < 1e-5, "db[{q}]");
        }
    }
}
