//! Comparison helpers shared by the PyTorch parity tests (`pretrain_parity.rs`,
//! `reference_parity.rs`).

use burn::prelude::*;

/// Tolerance of every parity comparison: absolute, relative above 1 in magnitude.
pub const TOLERANCE: f64 = 1e-4;

/// A `[b, t, f]` tensor from a fixture's nested lists.
pub fn tensor3<B: Backend>(v: &[Vec<Vec<f32>>], device: &B::Device) -> Tensor<B, 3> {
    let (b, t, f) = (v.len(), v[0].len(), v[0][0].len());
    let flat: Vec<f32> = v.iter().flatten().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t, f]), device)
}

/// The values of a tensor, widened to f64.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    let v: Vec<f32> = t.into_data().to_vec().unwrap();
    v.into_iter().map(f64::from).collect()
}

/// A one-element tensor as f64.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

/// The largest error of `got` against `want` (absolute, relative above 1 in magnitude).
pub fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "number of values");
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Asserts `got` is within [`TOLERANCE`] of `want` (printing the error) and returns the error.
pub fn check(what: &str, got: &[f64], want: &[f64]) -> f64 {
    let err = max_err(got, want);
    println!("{what}: max error {err:.3e} over {} values", want.len());
    assert!(
        err <= TOLERANCE,
        "{what}: max error {err:e} > {TOLERANCE:e}\n got {got:?}\nwant {want:?}"
    );
    err
}
