//! kiln patch (see FIX.md): vectorised, multi-threaded `exp` and `sigmoid` for `f32`.
//!
//! Upstream maps `f32::exp` (a libm call per element, with a slow errno path for every
//! underflowing input) over the tensor on one thread. Training an LSTM or an attention layer
//! spends a fifth of its time there: sigmoid gates, and the `exp` of the composed softmax,
//! which autodiff evaluates again in the backward pass.
//!
//! [`exp`] is the Cephes `expf` scheme: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6
//! polynomial for `e^r`, and `2^n` applied as two exact power-of-two factors so that results
//! down to the subnormal range come out right. It is branch-free, so the loops below compile to
//! SIMD code (AVX2 + FMA when the CPU has them, detected at run time). Its error is within
//! 2 ulp of the correctly rounded result over the whole range (tested against `f64::exp`);
//! it returns `inf` above `ln(f32::MAX)`, `0` below `−103.98` and NaN for NaN, like libm.

#[cfg(feature = "rayon")]
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `e^x` for one `f32` (see the module docs).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| ≤ 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAX: f32 = 88.722_84; // ln(f32::MAX)
    const MIN: f32 = -103.972_08; // ln of the smallest subnormal
    let xc = x.clamp(MIN, MAX);
    let n = (xc * LOG2E).round_ties_even();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1)
        * r2
        + r
        + 1.0;
    // 2^n as 2^a · 2^b with a, b in [−75, 64]: both factors are normal numbers.
    let n = n as i32;
    let a = n >> 1;
    let b = n - a;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * pow2(a) * pow2(b);
    if x > MAX {
        f32::INFINITY
    } else if x < MIN {
        0.0
    } else {
        y
    }
}

/// `1 / (1 + e^−x)` for one `f32`, with [`exp`]: within 4 ε relative of the exact value; `0`
/// where that is below the smallest normal `f32` (x < −87.3; upstream returns a subnormal).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x)` for one `f32`: for `|x| < 0.625` the odd polynomial of Cephes `tanhf`, else
/// `±(1 − 2 / (e^{2|x|} + 1))` with [`exp`] (`|x|` clamped to 12, where `tanh` rounds to ±1).
/// Branch-free like [`exp`]; within 4 ε relative of the exact value (tested against
/// `f64::tanh`); NaN for NaN.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let s = x * x;
    let small = (((((-5.704_988_7e-3 * s + 2.063_908_9e-2) * s - 5.373_971_6e-2) * s
        + 1.333_144_2e-1)
        * s
        - 3.333_328_2e-1)
        * s
        * x
        + x)
        .copysign(x); // −0 for −0
    let e = exp(2.0 * a.min(12.0));
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    let y = if a < 0.625 { small } else { large };
    if x.is_nan() { x } else { y }
}

macro_rules! slice_kernel {
    ($name:ident, $avx2:ident, $op:path) => {
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2(values: &mut [f32]) {
            for v in values.iter_mut() {
                *v = $op(*v);
            }
        }

        /// Applies the op to every element, in place.
        fn $name(values: &mut [f32]) {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function was compiled for.
                unsafe { $avx2(values) };
                return;
            }
            for v in values.iter_mut() {
                *v = $op(*v);
            }
        }
    };
}

slice_kernel!(exp_slice, exp_slice_avx2, exp);
slice_kernel!(sigmoid_slice, sigmoid_slice_avx2, sigmoid);
slice_kernel!(tanh_slice, tanh_slice_avx2, tanh);

/// Runs `kernel` over `values` in parallel chunks (one chunk on small inputs).
fn run(values: &mut [f32], kernel: fn(&mut [f32])) {
    #[cfg(feature = "rayon")]
    if values.len() > 2 * CHUNK {
        values.par_chunks_mut(CHUNK).for_each(kernel);
        return;
    }
    kernel(values)
}

/// `e^x` over a slice, in place.
pub fn exp_in_place(values: &mut [f32]) {
    run(values, exp_slice)
}

/// The logistic sigmoid over a slice, in place.
pub fn sigmoid_in_place(values: &mut [f32]) {
    run(values, sigmoid_slice)
}

/// `tanh` over a slice, in place.
pub fn tanh_in_place(values: &mut [f32]) {
    run(values, tanh_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        // Every 97th f32 bit pattern from −104 to 89, plus the edges.
        let mut x = -104.0f32;
        let mut worst = 0;
        while x < 89.0 {
            let exact = (x as f64).exp() as f32;
            let got = exp(x);
            if exact.is_normal() {
                let e = ulps(got, exact);
                assert!(e <= 2, "exp({x}) = {got}, exact {exact} ({e} ulp)");
                worst = worst.max(e);
            } else {
                // Subnormal or out of range: absolute error below the smallest normal.
                assert!(
                    (got - exact).abs() <= f32::MIN_POSITIVE || got == exact,
                    "exp({x}) = {got}, exact {exact}"
                );
            }
            x = if x < 0.0 {
                f32::from_bits(x.to_bits() - 97)
            } else {
                f32::from_bits(x.to_bits() + 97)
            };
            if x == -0.0 || (x < 0.0 && x > -1e-30) {
                x = 0.0;
            }
        }
        assert!(worst <= 2);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-104.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_four_epsilon_of_the_exact_value() {
        // Every 61st f32 bit pattern of |x| from 1e-30 to 20, both signs, plus specials.
        let mut a = 1e-30f32;
        while a < 20.0 {
            for x in [a, -a] {
                let exact = (x as f64).tanh();
                let got = tanh(x) as f64;
                assert!(
                    (got - exact).abs() <= 4.0 * f32::EPSILON as f64 * exact.abs(),
                    "tanh({x}) = {got}, exact {exact}"
                );
            }
            a = f32::from_bits(a.to_bits() + 61);
        }
        assert_eq!(tanh(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        let mut t = [0.3f32, -2.0, 40.0, f32::NAN];
        tanh_in_place(&mut t);
        assert_eq!(&t[..3], &[tanh(0.3), tanh(-2.0), 1.0]);
        assert!(t[3].is_nan());
    }

    #[test]
    fn slices_match_the_scalar_function_on_every_path() {
        let values: Vec<f32> = (0..3 * CHUNK + 5)
            .map(|i| ((i as f32) * 0.618_034).sin() * 120.0)
            .collect();
        let mut e = values.clone();
        exp_in_place(&mut e);
        let mut s = values.clone();
        sigmoid_in_place(&mut s);
        for ((&x, &ex), &sx) in values.iter().zip(&e).zip(&s) {
            assert_eq!(ex.to_bits(), exp(x).to_bits(), "exp({x})");
            assert_eq!(sx.to_bits(), sigmoid(x).to_bits(), "sigmoid({x})");
            // Relative error within 4 ε; below the smallest normal f32 (x < −87.3, where
            // e^−x overflows and the result is 0), absolute error within it.
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            let err = (sx as f64 - exact).abs();
            let min = f32::MIN_POSITIVE as f64;
            assert!(
                err <= 4.0 * f32::EPSILON as f64 * exact || (exact < min && err <= min),
                "sigmoid({x}) = {sx}, exact {exact}"
            );
        }
    }
}
