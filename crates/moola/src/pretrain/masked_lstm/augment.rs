//! The pre-training augmenter (the reference's
//! [`TimeSeriesAugmenter`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/pretraining/data_augmentation.py)),
//! which multiplies an unlabelled set before masked pre-training:
//! `augment_dataset(X, k) = [X, aug_1(X), …, aug_k(X)]`.
//!
//! Each augmented copy applies, in this order, each behind a coin flip:
//! 1. **time warp** (p 0.5): per sample, `w = cumsum(N(0, σ²) draws, T of them)`, shifted to
//!    start at 0, scaled so that `w[T−1] = T − 1`, clipped to `[0, T−1]`; every feature is then
//!    re-sampled at `w` with a cubic interpolating spline (SciPy's `interp1d(kind="cubic",
//!    fill_value="extrapolate")`, i.e. not-a-knot end conditions). The warp is a random-walk
//!    re-indexing that need not be monotone, and since the walk is rescaled by its own end point
//!    σ has no effect on it (both as in the reference).
//! 2. **jitter** (p 0.5): `x + N(0, 1) · σ · std_f`, with `std_f` the population std of feature
//!    `f` over the whole copy (all samples and steps).
//! 3. **volatility scaling** (p 0.3, 4-feature OHLC only): per sample `s ~ U(0.85, 1.15)`; high
//!    and low are scaled about `mid = (H + L) / 2`, then `H = max(H, O, C)`, `L = min(L, O, C)`.
//!
//! **Coin flips.** The reference flips each coin once per *whole augmented copy* of the data set,
//! so a copy is either entirely warped or not at all (a quirk). That is the default here too,
//! like the batch-wide flips of [`crate::augment::TemporalAugment`];
//! `per_sample_flips = true` flips each coin per sample (the fix: the same expected fraction of
//! augmented samples, without all-or-nothing copies).
//!
//! Augmenting happens before the train/validation split in the reference's command line, so
//! copies of validation windows can land in the training split; [`super::pretrain`] does not
//! augment by itself and leaves that choice to the caller.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::data::WindowSet;

/// Settings of the pre-training augmenter (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeSeriesAugmenter {
    /// Probability of the time warp.
    pub time_warp_prob: f64,
    /// Step σ of the warp's random walk (no effect after the rescaling, kept for fidelity).
    pub time_warp_sigma: f64,
    /// Probability of the jitter.
    pub jitter_prob: f64,
    /// Jitter noise in units of each feature's std.
    pub jitter_sigma: f64,
    /// Probability of the volatility scaling.
    pub volatility_scale_prob: f64,
    /// Range of the volatility factor.
    pub volatility_scale_range: (f64, f64),
    /// Flip each coin per sample instead of once per augmented copy (the reference quirk;
    /// off = reference).
    pub per_sample_flips: bool,
}

impl Default for TimeSeriesAugmenter {
    fn default() -> Self {
        Self {
            time_warp_prob: 0.5,
            time_warp_sigma: 0.12,
            jitter_prob: 0.5,
            jitter_sigma: 0.05,
            volatility_scale_prob: 0.3,
            volatility_scale_range: (0.85, 1.15),
            per_sample_flips: false,
        }
    }
}

/// Second derivatives of the not-a-knot cubic spline through `(i, y[i])`, `i = 0..n`, `n ≥ 4`.
fn not_a_knot_moments(y: &[f64]) -> Vec<f64> {
    let n = y.len();
    let d = |i: usize| y[i + 1] - 2.0 * y[i] + y[i - 1];
    let mut m = vec![0.0; n];
    // With unit spacing, not-a-knot at x₁ (M₀ − 2M₁ + M₂ = 0) turns the first interior equation
    // M₀ + 4M₁ + M₂ = 6d₁ into M₁ = d₁; likewise M_{n−2} = d_{n−2}.
    m[1] = d(1);
    m[n - 2] = d(n - 2);
    // Interior rows i = 2..=n−3: M_{i−1} + 4M_i + M_{i+1} = 6d_i (Thomas algorithm).
    if n > 4 {
        let lo = 2;
        let hi = n - 3;
        let len = hi - lo + 1;
        let mut c = vec![0.0; len]; // modified super-diagonal
        let mut r = vec![0.0; len]; // modified right-hand side
        for k in 0..len {
            let i = lo + k;
            let mut rhs = 6.0 * d(i);
            if i == lo {
                rhs -= m[1];
            }
            if i == hi {
                rhs -= m[n - 2];
            }
            let (prev_c, prev_r) = if k == 0 {
                (0.0, 0.0)
            } else {
                (c[k - 1], r[k - 1])
            };
            let denom = 4.0 - prev_c;
            c[k] = 1.0 / denom;
            r[k] = (rhs - prev_r) / denom;
        }
        for k in (0..len).rev() {
            let next = if k + 1 < len { m[lo + k + 1] } else { 0.0 };
            m[lo + k] = r[k] - c[k] * next;
        }
    }
    m[0] = 2.0 * m[1] - m[2];
    m[n - 1] = 2.0 * m[n - 2] - m[n - 3];
    m
}

/// SciPy's `interp1d(arange(n), y, kind="cubic", fill_value="extrapolate")` evaluated at each
/// of `at`: the not-a-knot cubic spline through `(i, y[i])`, extended beyond the ends by its
/// first and last cubic pieces. Fewer than 4 points (where SciPy refuses a cubic) fall back to
/// linear interpolation and extrapolation (a constant for one point).
pub fn cubic_interp(y: &[f64], at: &[f64]) -> Vec<f64> {
    let n = y.len();
    if n == 0 {
        return vec![f64::NAN; at.len()];
    }
    if n == 1 {
        return vec![y[0]; at.len()];
    }
    let last = n - 2; // index of the last interval
    let interval = |x: f64| -> (usize, f64) {
        let i = if x.is_nan() {
            0
        } else {
            (x.floor().max(0.0) as usize).min(last)
        };
        (i, x - i as f64)
    };
    if n < 4 {
        return at
            .iter()
            .map(|&x| {
                let (i, u) = interval(x);
                y[i] + (y[i + 1] - y[i]) * u
            })
            .collect();
    }
    let m = not_a_knot_moments(y);
    at.iter()
        .map(|&x| {
            let (i, u) = interval(x);
            let v = 1.0 - u;
            m[i] * v * v * v / 6.0
                + m[i + 1] * u * u * u / 6.0
                + (y[i] - m[i] / 6.0) * v
                + (y[i + 1] - m[i + 1] / 6.0) * u
        })
        .collect()
}

/// The random-walk warp of one sample: `t` positions in `[0, t−1]` (identity when the walk ends
/// where it started, where the reference would divide by zero).
pub fn warp_path(t: usize, sigma: f64, rng: &mut impl Rng) -> Vec<f64> {
    let mut walk = Vec::with_capacity(t);
    let mut acc = 0.0;
    for _ in 0..t {
        let z: f64 = StandardNormal.sample(rng);
        acc += z * sigma;
        walk.push(acc);
    }
    let grid = || (0..t).map(|i| i as f64).collect::<Vec<_>>();
    if t < 2 {
        return grid();
    }
    let first = walk[0];
    let end = walk[t - 1] - first;
    if end == 0.0 || !end.is_finite() {
        return grid();
    }
    let top = (t - 1) as f64;
    walk.iter()
        .map(|&w| ((w - first) / end * top).clamp(0.0, top))
        .collect()
}

/// Time-warps one `[t, f]` sample in place (see the module docs).
pub fn time_warp(sample: &mut [f32], t: usize, f: usize, sigma: f64, rng: &mut impl Rng) {
    let path = warp_path(t, sigma, rng);
    let mut column = vec![0.0; t];
    for feat in 0..f {
        for (step, c) in column.iter_mut().enumerate() {
            *c = f64::from(sample[step * f + feat]);
        }
        for (step, v) in cubic_interp(&column, &path).into_iter().enumerate() {
            sample[step * f + feat] = v as f32;
        }
    }
}

/// Scales the high–low spread of one `[t, 4]` OHLC sample about its mid by `scale`, then
/// restores `H ≥ max(O, C)` and `L ≤ min(O, C)`.
pub fn volatility_scale(sample: &mut [f32], scale: f64) {
    for bar in sample.chunks_mut(4) {
        let (o, h, l, c) = (
            f64::from(bar[0]),
            f64::from(bar[1]),
            f64::from(bar[2]),
            f64::from(bar[3]),
        );
        let mid = (h + l) / 2.0;
        let h2 = mid + (h - mid) * scale;
        let l2 = mid + (l - mid) * scale;
        bar[1] = h2.max(o.max(c)) as f32;
        bar[2] = l2.min(o.min(c)) as f32;
    }
}

/// Population std over all samples and steps of each feature of a `[n, t, f]` buffer.
fn feature_std(x: &[f32], f: usize) -> Vec<f64> {
    let rows = (x.len() / f.max(1)) as f64;
    let mut sum = vec![0.0; f];
    for row in x.chunks(f) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / rows.max(1.0)).collect();
    let mut sq = vec![0.0; f];
    for row in x.chunks(f) {
        for ((s, &v), m) in sq.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    sq.iter().map(|s| (s / rows.max(1.0)).sqrt()).collect()
}

impl TimeSeriesAugmenter {
    /// One coin per sample, or the same coin for all of them (the reference).
    fn coins(&self, p: f64, n: usize, rng: &mut impl Rng) -> Vec<bool> {
        if self.per_sample_flips {
            (0..n).map(|_| rng.random::<f64>() < p).collect()
        } else {
            vec![rng.random::<f64>() < p; n]
        }
    }

    /// One augmented copy of a `[n, t, f]` buffer (the reference's `apply_augmentation`).
    pub fn augment(&self, x: &[f32], n: usize, t: usize, f: usize, rng: &mut impl Rng) -> Vec<f32> {
        let per = t * f;
        assert_eq!(x.len(), n * per, "buffer is not [{n}, {t}, {f}]");
        let mut out = x.to_vec();
        if n == 0 || per == 0 {
            return out;
        }
        let warp = self.coins(self.time_warp_prob, n, rng);
        for (sample, _) in out.chunks_mut(per).zip(&warp).filter(|(_, c)| **c) {
            time_warp(sample, t, f, self.time_warp_sigma, rng);
        }
        let jitter = self.coins(self.jitter_prob, n, rng);
        if jitter.iter().any(|&c| c) {
            let std = feature_std(&out, f);
            for (sample, _) in out.chunks_mut(per).zip(&jitter).filter(|(_, c)| **c) {
                for row in sample.chunks_mut(f) {
                    for (v, s) in row.iter_mut().zip(&std) {
                        let z: f64 = StandardNormal.sample(rng);
                        *v = (f64::from(*v) + z * self.jitter_sigma * s) as f32;
                    }
                }
            }
        }
        if f == 4 {
            let scale = self.coins(self.volatility_scale_prob, n, rng);
            let (lo, hi) = self.volatility_scale_range;
            for (sample, _) in out.chunks_mut(per).zip(&scale).filter(|(_, c)| **c) {
                let s = if hi > lo {
                    rng.random_range(lo..hi)
                } else {
                    lo
                };
                volatility_scale(sample, s);
            }
        }
        out
    }

    /// `[x, aug_1(x), …, aug_k(x)]` of a `[n, t, f]` buffer: `(k + 1) · n` samples.
    pub fn augment_buffer(
        &self,
        x: &[f32],
        n: usize,
        t: usize,
        f: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len() * (k + 1));
        out.extend_from_slice(x);
        for _ in 0..k {
            out.extend(self.augment(x, n, t, f, rng));
        }
        out
    }

    /// The reference's `augment_dataset(X, k)` on a window set: the originals followed by `k`
    /// augmented copies. Copy `j` (1-based) gets the ids `<id>#aug<j>` and the original labels;
    /// expansion indices are dropped (a warped copy no longer matches them).
    pub fn augment_dataset(&self, data: &WindowSet, k: usize, rng: &mut impl Rng) -> WindowSet {
        let (n, t, f) = (data.len(), data.seq_len, data.n_features);
        let x = self.augment_buffer(&data.x, n, t, f, k, rng);
        let mut ids = data.ids.clone();
        for j in 1..=k {
            ids.extend(data.ids.iter().map(|id| format!("{id}#aug{j}")));
        }
        let labels = data
            .labels
            .as_ref()
            .map(|l| (0..=k).flat_map(|_| l.iter().cloned()).collect());
        WindowSet {
            ids,
            x,
            seq_len: t,
            n_features: f,
            labels,
            expansion: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn cubic_interp_is_the_not_a_knot_spline() {
        // A not-a-knot spline reproduces any cubic exactly, inside and (extrapolating) outside.
        let p = |x: f64| 0.5 * x * x * x - 2.0 * x * x + x - 3.0;
        for n in [4, 5, 6, 11] {
            let y: Vec<f64> = (0..n).map(|i| p(i as f64)).collect();
            let at = [-1.5, 0.0, 0.3, 1.0, 2.71, (n - 1) as f64, n as f64 + 0.5];
            for (x, v) in at.iter().zip(cubic_interp(&y, &at)) {
                assert!(
                    (v - p(*x)).abs() < 1e-9 * (1.0 + p(*x).abs()),
                    "n {n} x {x}: {v} vs {}",
                    p(*x)
                );
            }
        }
        // Through the data points, with continuous first derivatives at the knots.
        let y = [3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0, 6.0];
        let knots: Vec<f64> = (0..8).map(|i| i as f64).collect();
        for (a, b) in cubic_interp(&y, &knots).iter().zip(&y) {
            assert!((a - b).abs() < 1e-12);
        }
        let e = 1e-6;
        for k in 1..7 {
            let k = k as f64;
            let v = cubic_interp(&y, &[k - 2.0 * e, k - e, k + e, k + 2.0 * e]);
            let left = (v[1] - v[0]) / e;
            let right = (v[3] - v[2]) / e;
            assert!((left - right).abs() < 1e-3, "kink at {k}: {left} {right}");
        }
        // Too few points for a cubic: linear.
        assert_eq!(cubic_interp(&[0.0, 2.0, 4.0], &[0.5, 3.0]), vec![1.0, 6.0]);
        assert_eq!(cubic_interp(&[7.0], &[3.0]), vec![7.0]);
    }

    #[test]
    fn warp_paths_start_at_zero_end_at_t_minus_1_and_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..50 {
            let w = warp_path(105, 0.12, &mut rng);
            assert_eq!(w[0], 0.0);
            assert!(w.iter().all(|&v| (0.0..=104.0).contains(&v)));
            // Rescaled by its own end point, the walk always ends at T−1 (whatever its sign).
            assert_eq!(w[104], 104.0);
        }
        assert_eq!(warp_path(1, 0.1, &mut rng), vec![0.0]);
    }

    fn ohlc(n: usize, t: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut x = Vec::new();
        for _ in 0..n {
            let mut close = 100.0f32;
            for _ in 0..t {
                let open = close;
                close += rng.random_range(-1.0..1.0);
                x.extend([open, open.max(close) + 0.5, open.min(close) - 0.5, close]);
            }
        }
        x
    }

    #[test]
    fn volatility_scaling_keeps_ohlc_consistent() {
        let mut x = ohlc(1, 30, 1);
        let orig = x.clone();
        volatility_scale(&mut x, 1.15);
        for (bar, o) in x.chunks(4).zip(orig.chunks(4)) {
            assert!(bar[1] >= bar[0].max(bar[3]) && bar[2] <= bar[0].min(bar[3]));
            assert_eq!((bar[0], bar[3]), (o[0], o[3]));
            // Wider spread about the same mid.
            assert!(bar[1] - bar[2] >= o[1] - o[2]);
        }
        let mut y = orig.clone();
        volatility_scale(&mut y, 0.5);
        for bar in y.chunks(4) {
            assert!(bar[1] >= bar[0].max(bar[3]) && bar[2] <= bar[0].min(bar[3]));
        }
    }

    fn changed(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).any(|(x, y)| x != y)
    }

    #[test]
    fn augment_dataset_appends_k_copies() {
        let (n, t, f) = (6, 20, 4);
        let x = ohlc(n, t, 2);
        let data = WindowSet::new(
            (0..n).map(|i| format!("w{i}")).collect(),
            x.clone(),
            t,
            f,
            Some(vec!["a".into(); n]),
            None,
        )
        .unwrap();
        let aug = TimeSeriesAugmenter {
            time_warp_prob: 1.0,
            ..TimeSeriesAugmenter::default()
        };
        let out = aug.augment_dataset(&data, 3, &mut StdRng::seed_from_u64(3));
        assert_eq!(out.len(), 4 * n);
        assert_eq!(&out.x[..x.len()], &x[..]);
        assert_eq!(out.ids[n], "w0#aug1");
        assert_eq!(out.labels.as_ref().unwrap().len(), 4 * n);
        assert!(out.duplicate_id().is_none());
        for i in n..4 * n {
            assert!(
                changed(out.sample(i), data.sample(i % n)),
                "sample {i} not warped"
            );
        }
    }

    /// Which samples of each of `copies` augmented copies changed, with only jitter on.
    fn jittered(per_sample_flips: bool, copies: usize) -> Vec<Vec<bool>> {
        let (n, t, f) = (8, 10, 4);
        let x = ohlc(n, t, 4);
        let aug = TimeSeriesAugmenter {
            time_warp_prob: 0.0,
            jitter_prob: 0.5,
            volatility_scale_prob: 0.0,
            per_sample_flips,
            ..TimeSeriesAugmenter::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        (0..copies)
            .map(|_| {
                let y = aug.augment(&x, n, t, f, &mut rng);
                (0..n)
                    .map(|i| {
                        changed(
                            &y[i * t * f..(i + 1) * t * f],
                            &x[i * t * f..(i + 1) * t * f],
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn coin_flips_cover_whole_copies_unless_per_sample() {
        // Reference: each copy is jittered entirely or not at all.
        let copies = jittered(false, 12);
        assert!(copies.iter().all(|c| c.iter().all(|&v| v == c[0])));
        assert!(copies.iter().any(|c| c[0]) && copies.iter().any(|c| !c[0]));
        // Per-sample flips: mixed copies.
        let copies = jittered(true, 12);
        assert!(
            copies
                .iter()
                .any(|c| c.iter().any(|&v| v) && c.iter().any(|&v| !v))
        );
    }

    #[test]
    fn jitter_noise_scales_with_each_feature_std() {
        // Feature 0 varies (std ≈ 29), feature 1 is constant (std 0: no noise at all).
        let (n, t, f) = (4, 25, 2);
        let x: Vec<f32> = (0..n * t).flat_map(|i| [i as f32, 5.0]).collect();
        let aug = TimeSeriesAugmenter {
            time_warp_prob: 0.0,
            jitter_prob: 1.0,
            jitter_sigma: 0.05,
            ..TimeSeriesAugmenter::default()
        };
        let y = aug.augment(&x, n, t, f, &mut StdRng::seed_from_u64(6));
        let noise: Vec<f64> = y
            .chunks(2)
            .zip(x.chunks(2))
            .map(|(a, b)| f64::from(a[0] - b[0]))
            .collect();
        assert!(y.chunks(2).all(|r| r[1] == 5.0));
        let sd = (noise.iter().map(|v| v * v).sum::<f64>() / noise.len() as f64).sqrt();
        let want = 0.05 * feature_std(&x, 2)[0];
        assert!((sd / want - 1.0).abs() < 0.2, "{sd} vs {want}");
    }
}
