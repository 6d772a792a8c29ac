//! The kernels of the patched burn-flex (`vendor/burn-flex/FIX.md`), through Burn's API: new
//! buffers, `repeat_dim`, and the vectorised `exp` / `sigmoid`, against values computed here
//! in `f64`.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::sigmoid;

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
