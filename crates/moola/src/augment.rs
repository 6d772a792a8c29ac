//! Batch augmentation of the training recipe the reference's three classifiers share, on host
//! buffers.
//!
//! Batches are `[batch, time, features]` row-major `f32` buffers. Augmenting on the host keeps the
//! arithmetic exact and identical on every backend; the augmented batch is then uploaded once.
//!
//! * [`TemporalAugment`]: jitter, per-sample scaling, per-sample time warp, in that order, each
//!   behind one coin flip **per batch** like the reference (`torch.rand(1) < p`), a quirk.
//!   `per_sample_flips = true` flips a coin per sample instead (the fix; off by default).
//! * [`mixup_cutmix`]: with probability `cutmix_prob` time-axis CutMix (λ ~ Beta(α_c, α_c), a
//!   contiguous span copied from a permuted partner, λ reset to the kept fraction), otherwise
//!   mixup (λ ~ Beta(α, α), `x' = λx + (1 − λ)x[perm]`).

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Temporal augmentation settings (`TemporalAugmentation` of the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TemporalAugment {
    /// Apply any temporal augmentation at all.
    pub enabled: bool,
    /// Probability of the jitter step.
    pub jitter_prob: f64,
    /// Jitter noise σ.
    pub jitter_sigma: f64,
    /// Probability of the scaling step.
    pub scaling_prob: f64,
    /// Scaling σ (factor ~ N(1, σ²) per sample).
    pub scaling_sigma: f64,
    /// Probability of the time-warp step.
    pub time_warp_prob: f64,
    /// Time-warp knot σ.
    pub time_warp_sigma: f64,
    /// Flip coins per sample instead of per batch (fixes the reference quirk of batch-wide flips;
    /// off = reference).
    pub per_sample_flips: bool,
}

impl Default for TemporalAugment {
    fn default() -> Self {
        Self {
            enabled: true,
            jitter_prob: 0.5,
            jitter_sigma: 0.05,
            scaling_prob: 0.3,
            scaling_sigma: 0.1,
            time_warp_prob: 0.3,
            time_warp_sigma: 0.2,
            per_sample_flips: false,
        }
    }
}

/// `numpy.interp`: linear interpolation of `(xp, fp)` at `x`, clamped at the ends
/// (`xp` increasing).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    // First index with xp[i] > x.
    let i = xp.partition_point(|&v| v <= x);
    let (x0, x1) = (xp[i - 1], xp[i]);
    let (y0, y1) = (fp[i - 1], fp[i]);
    if x1 == x0 {
        return y1;
    }
    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
}

/// Time-warps one `[time, features]` sample in place with 4 inner knots (6 knot points).
pub fn time_warp(sample: &mut [f32], t: usize, f: usize, sigma: f64, rng: &mut impl Rng) {
    if t < 2 {
        return;
    }
    let normal = Normal::new(1.0, sigma).expect("valid sigma");
    let r: Vec<f64> = (0..6).map(|_| normal.sample(rng)).collect();
    let last = (t - 1) as f64;
    let kp: Vec<f64> = (0..6).map(|k| last * k as f64 / 5.0).collect();
    let mut wk = vec![0.0; 6];
    for k in 1..6 {
        wk[k] = wk[k - 1] + (kp[k] - kp[k - 1]) * r[k];
    }
    let end = wk[5];
    if end == 0.0 || !end.is_finite() {
        return;
    }
    for w in &mut wk {
        *w *= last / end;
    }
    let grid: Vec<f64> = (0..t).map(|i| i as f64).collect();
    let warped: Vec<f64> = grid.iter().map(|&i| interp(i, &kp, &wk)).collect();
    let original = sample.to_vec();
    let mut column = vec![0.0; t];
    for feat in 0..f {
        for (step, c) in column.iter_mut().enumerate() {
            *c = f64::from(original[step * f + feat]);
        }
        for (step, &w) in warped.iter().enumerate() {
            sample[step * f + feat] = interp(w, &grid, &column) as f32;
        }
    }
}

impl TemporalAugment {
    /// Augments a `[b, t, f]` batch in place.
    pub fn apply(&self, x: &mut [f32], b: usize, t: usize, f: usize, rng: &mut impl Rng) {
        if !self.enabled || b == 0 {
            return;
        }
        let per = t * f;
        // The reference draws one coin per op per batch; the fix draws one per op per sample.
        let coins = |p: f64, rng: &mut dyn rand::RngCore| -> Vec<bool> {
            if self.per_sample_flips {
                (0..b).map(|_| rng.random::<f64>() < p).collect()
            } else {
                vec![rng.random::<f64>() < p; b]
            }
        };
        let jitter = coins(self.jitter_prob, rng);
        if jitter.iter().any(|&c| c) {
            let noise = Normal::new(0.0, self.jitter_sigma).expect("valid sigma");
            for (i, sample) in x.chunks_mut(per).enumerate() {
                if jitter[i] {
                    for v in sample {
                        *v += noise.sample(rng) as f32;
                    }
                }
            }
        }
        let scale = coins(self.scaling_prob, rng);
        if scale.iter().any(|&c| c) {
            let factor = Normal::new(1.0, self.scaling_sigma).expect("valid sigma");
            for (i, sample) in x.chunks_mut(per).enumerate() {
                if scale[i] {
                    let s = factor.sample(rng) as f32;
                    for v in sample {
                        *v *= s;
                    }
                }
            }
        }
        let warp = coins(self.time_warp_prob, rng);
        if warp.iter().any(|&c| c) {
            for (i, sample) in x.chunks_mut(per).enumerate() {
                if warp[i] {
                    time_warp(sample, t, f, self.time_warp_sigma, rng);
                }
            }
        }
    }
}

/// A mixed batch: inputs, the partner permutation and the label weight λ.
#[derive(Debug, Clone)]
pub struct Mixed {
    /// Mixed inputs `[b, t, f]`.
    pub x: Vec<f32>,
    /// Partner of each sample (`y_b = y[perm]`).
    pub perm: Vec<usize>,
    /// Weight of the original labels.
    pub lambda: f64,
    /// True when CutMix (not mixup) was applied.
    pub cutmix: bool,
}

fn beta(alpha: f64, rng: &mut impl Rng) -> f64 {
    if alpha <= 0.0 {
        return 1.0;
    }
    Beta::new(alpha, alpha).expect("positive alpha").sample(rng)
}

/// The reference's `mixup_cutmix` on a `[b, t, f]` batch.
#[allow(clippy::too_many_arguments)]
pub fn mixup_cutmix(
    x: &[f32],
    b: usize,
    t: usize,
    f: usize,
    mixup_alpha: f64,
    cutmix_alpha: f64,
    cutmix_prob: f64,
    rng: &mut impl Rng,
) -> Mixed {
    let per = t * f;
    let use_cutmix = rng.random::<f64>() < cutmix_prob;
    let lambda = beta(
        if use_cutmix {
            cutmix_alpha
        } else {
            mixup_alpha
        },
        rng,
    );
    let mut perm: Vec<usize> = (0..b).collect();
    perm.shuffle(rng);
    if use_cutmix {
        let cut_len = (t as f64 * (1.0 - lambda)) as usize;
        let start = if cut_len == 0 {
            0
        } else {
            rng.random_range(0..=t - cut_len)
        };
        let mut out = x.to_vec();
        for (i, &p) in perm.iter().enumerate() {
            let dst = i * per + start * f;
            let src = p * per + start * f;
            out[dst..dst + cut_len * f].copy_from_slice(&x[src..src + cut_len * f]);
        }
        Mixed {
            x: out,
            perm,
            lambda: 1.0 - cut_len as f64 / t as f64,
            cutmix: true,
        }
    } else {
        let l = lambda as f32;
        let mut out = Vec::with_capacity(x.len());
        for (i, &p) in perm.iter().enumerate() {
            let a = &x[i * per..(i + 1) * per];
            let o = &x[p * per..(p + 1) * per];
            out.extend(a.iter().zip(o).map(|(&u, &v)| l * u + (1.0 - l) * v));
        }
        Mixed {
            x: out,
            perm,
            lambda,
            cutmix: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn interp_matches_numpy() {
        let xp = [0.0, 1.0, 3.0];
        let fp = [10.0, 20.0, 0.0];
        assert_eq!(interp(-1.0, &xp, &fp), 10.0);
        assert_eq!(interp(0.5, &xp, &fp), 15.0);
        assert_eq!(interp(2.0, &xp, &fp), 10.0);
        assert_eq!(interp(5.0, &xp, &fp), 0.0);
        assert_eq!(interp(1.0, &xp, &fp), 20.0);
    }

    #[test]
    fn time_warp_with_unit_knots_is_identity() {
        // σ = 0 → r = 1 → wk = kp → warped_t = t → every value unchanged.
        let mut rng = StdRng::seed_from_u64(0);
        let orig: Vec<f32> = (0..20).map(|v| v as f32 * 1.5).collect();
        let mut x = orig.clone();
        time_warp(&mut x, 10, 2, 0.0, &mut rng);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
        // A real warp keeps the end points (wk[0] = 0, wk[5] = T−1).
        let mut x = orig.clone();
        time_warp(&mut x, 10, 2, 0.3, &mut rng);
        assert_eq!(x[0], orig[0]);
        assert!((x[18] - orig[18]).abs() < 1e-4 && (x[19] - orig[19]).abs() < 1e-4);
    }

    /// The reference's `time_warp`, written out independently: knots at `k·(T−1)/5`, the
    /// warped knot positions the cumulative sum of `Δknot · r_k` (r_0 unused) rescaled to end at
    /// `T − 1`, each time step mapped through that piecewise-linear warp, then every feature
    /// linearly interpolated at the warped times.
    fn independent_time_warp(x: &[f32], t: usize, f: usize, r: &[f64]) -> Vec<f64> {
        let last = (t - 1) as f64;
        let knots: Vec<f64> = (0..6).map(|k| k as f64 * last / 5.0).collect();
        let mut warped_knots = vec![0.0f64];
        for k in 1..6 {
            let prev = warped_knots[k - 1];
            warped_knots.push(prev + (knots[k] - knots[k - 1]) * r[k]);
        }
        let scale = last / warped_knots[5];
        let warped_knots: Vec<f64> = warped_knots.iter().map(|w| w * scale).collect();
        let mut out = vec![0.0; t * f];
        for step in 0..t {
            let s = step as f64;
            // Segment of the knots holding `s`.
            let k = (0..5)
                .find(|&k| s >= knots[k] && s <= knots[k + 1])
                .unwrap();
            let frac = (s - knots[k]) / (knots[k + 1] - knots[k]);
            let w = warped_knots[k] + frac * (warped_knots[k + 1] - warped_knots[k]);
            let w = w.clamp(0.0, last);
            let lo = (w.floor() as usize).min(t - 1);
            let hi = (lo + 1).min(t - 1);
            let a = w - lo as f64;
            for feat in 0..f {
                let y0 = f64::from(x[lo * f + feat]);
                let y1 = f64::from(x[hi * f + feat]);
                out[step * f + feat] = y0 + a * (y1 - y0);
            }
        }
        out
    }

    #[test]
    fn time_warp_matches_an_independent_warp_at_every_step() {
        let (t, f) = (23, 3);
        // A non-linear series per feature, so that any misplaced sample shows.
        let orig: Vec<f32> = (0..t * f)
            .map(|i| {
                let (step, feat) = ((i / f) as f32, (i % f) as f32);
                (step * 0.7 + feat).sin() * (1.0 + feat) + 0.05 * step * step
            })
            .collect();
        let mut changed = 0;
        for seed in 0..20u64 {
            let sigma = 0.3;
            let mut rng = StdRng::seed_from_u64(seed);
            // The knot factors r ~ N(1, σ²) are the first six draws of the generator.
            let mut twin = rng.clone();
            let normal = Normal::new(1.0, sigma).unwrap();
            let r: Vec<f64> = (0..6).map(|_| normal.sample(&mut twin)).collect();
            let want = independent_time_warp(&orig, t, f, &r);
            let mut x = orig.clone();
            time_warp(&mut x, t, f, sigma, &mut rng);
            for (i, (&got, &want)) in x.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() < 1e-4,
                    "seed {seed}, step {}, feature {}: {got} vs {want}",
                    i / f,
                    i % f
                );
            }
            changed += usize::from(x.iter().zip(&orig).any(|(a, b)| (a - b).abs() > 1e-2));
        }
        assert_eq!(changed, 20, "σ = 0.3 warps must move the interior");
    }

    #[test]
    fn batch_coin_flips_cover_whole_batches() {
        let aug = TemporalAugment {
            jitter_prob: 0.0,
            scaling_prob: 1.0,
            time_warp_prob: 0.0,
            ..TemporalAugment::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut x = vec![1.0f32; 3 * 4 * 2];
        aug.apply(&mut x, 3, 4, 2, &mut rng);
        // Every sample scaled by its own factor: constant within a sample, different across.
        for s in x.chunks(8) {
            assert!(s.iter().all(|&v| v == s[0]));
        }
        assert_ne!(x[0], x[8]);
        let off = TemporalAugment {
            enabled: false,
            ..TemporalAugment::default()
        };
        let mut y = vec![1.0f32; 8];
        off.apply(&mut y, 1, 4, 2, &mut rng);
        assert!(y.iter().all(|&v| v == 1.0));
    }

    /// Runs `aug` over `batches` seeded batches of `b` samples (a ramp each, so every op changes
    /// it) and returns, per batch, which samples changed.
    fn changed_samples(aug: &TemporalAugment, batches: u64, b: usize) -> Vec<Vec<bool>> {
        let (t, f) = (12, 2);
        let orig: Vec<f32> = (0..b * t * f).map(|i| 1.0 + (i % (t * f)) as f32).collect();
        (0..batches)
            .map(|seed| {
                let mut rng = StdRng::seed_from_u64(1000 + seed);
                let mut x = orig.clone();
                aug.apply(&mut x, b, t, f, &mut rng);
                x.chunks(t * f)
                    .zip(orig.chunks(t * f))
                    .map(|(a, o)| a != o)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn batch_coin_flips_at_p_below_one_are_per_batch_and_at_rate_p() {
        let only = |op: usize, p: f64, per_sample_flips: bool| TemporalAugment {
            jitter_prob: if op == 0 { p } else { 0.0 },
            scaling_prob: if op == 1 { p } else { 0.0 },
            time_warp_prob: if op == 2 { p } else { 0.0 },
            per_sample_flips,
            ..TemporalAugment::default()
        };
        let n = 400;
        for op in 0..3 {
            for p in [0.5, 0.2] {
                // Reference quirk: one coin per op per batch, so a batch is all or nothing.
                let runs = changed_samples(&only(op, p, false), n, 5);
                for (i, run) in runs.iter().enumerate() {
                    assert!(
                        run.iter().all(|&c| c == run[0]),
                        "op {op}, p {p}, batch {i}: {run:?} is not all-or-nothing"
                    );
                }
                let rate = runs.iter().filter(|r| r[0]).count() as f64 / n as f64;
                // Binomial(400, p): σ ≤ 0.025, the bound is over 4σ.
                assert!(
                    (rate - p).abs() < 0.1,
                    "op {op}: {rate} of batches augmented at p = {p}"
                );
                // The fix: one coin per sample, so batches mix both and samples go at rate p.
                let runs = changed_samples(&only(op, p, true), n, 5);
                let mixed = runs.iter().filter(|r| r.iter().any(|&c| c != r[0])).count();
                assert!(
                    mixed > n as usize / 4,
                    "op {op}, p {p}: {mixed} mixed batches"
                );
                let rate = runs.iter().flatten().filter(|&&c| c).count() as f64 / (5 * n) as f64;
                assert!(
                    (rate - p).abs() < 0.05,
                    "op {op}: {rate} of samples augmented at p = {p} (per-sample flips)"
                );
            }
        }
    }

    /// `[b, t, f]` with every element distinct: `100·sample + 10·step + feature`.
    fn distinct_batch(b: usize, t: usize, f: usize) -> Vec<f32> {
        (0..b * t * f)
            .map(|i| (100 * (i / (t * f)) + 10 * ((i / f) % t) + i % f) as f32)
            .collect()
    }

    fn assert_permutation(perm: &[usize], b: usize) {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..b).collect::<Vec<_>>(), "{perm:?}");
    }

    #[test]
    fn mixup_mixes_every_element_with_its_permuted_partner() {
        let (b, t, f) = (6, 5, 2);
        let per = t * f;
        let x = distinct_batch(b, t, f);
        let mut non_involutions = 0;
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let m = mixup_cutmix(&x, b, t, f, 0.4, 0.3, 0.0, &mut rng);
            assert!(!m.cutmix);
            assert_permutation(&m.perm, b);
            assert!(m.lambda > 0.0 && m.lambda < 1.0, "{}", m.lambda);
            non_involutions += usize::from((0..b).any(|i| m.perm[m.perm[i]] != i));
            let l = m.lambda;
            for i in 0..b {
                for e in 0..per {
                    let own = f64::from(x[i * per + e]);
                    let other = f64::from(x[m.perm[i] * per + e]);
                    let want = l * own + (1.0 - l) * other;
                    let got = f64::from(m.x[i * per + e]);
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "seed {seed}, sample {i} (partner {}), element {e}: {got} vs {want}",
                        m.perm[i]
                    );
                }
            }
        }
        assert!(non_involutions > 20, "{non_involutions}");
    }

    #[test]
    fn cutmix_copies_one_span_from_the_permuted_partner() {
        let (b, t, f) = (6, 10, 2);
        let per = t * f;
        let x = distinct_batch(b, t, f);
        let mut starts = std::collections::BTreeSet::new();
        let mut non_involutions = 0;
        for seed in 0..60u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let m = mixup_cutmix(&x, b, t, f, 0.4, 1.0, 1.0, &mut rng);
            assert!(m.cutmix);
            assert_permutation(&m.perm, b);
            non_involutions += usize::from((0..b).any(|i| m.perm[m.perm[i]] != i));
            // λ is the kept fraction: the span is (1 − λ)·T steps long.
            let cut = (1.0 - m.lambda) * t as f64;
            assert!((cut - cut.round()).abs() < 1e-9, "λ {}", m.lambda);
            let cut = cut.round() as usize;
            // The span: the steps of a sample with a different partner that changed.
            let Some(i) = (0..b).find(|&i| m.perm[i] != i) else {
                continue;
            };
            let changed: Vec<usize> = (0..t)
                .filter(|&s| m.x[i * per + s * f] != x[i * per + s * f])
                .collect();
            assert_eq!(
                changed.len(),
                cut,
                "seed {seed}: {changed:?} vs λ {}",
                m.lambda
            );
            let start = changed.first().copied().unwrap_or(0);
            assert!(start + cut <= t);
            if cut > 0 {
                starts.insert(start);
            }
            for i in 0..b {
                for s in 0..t {
                    for k in 0..f {
                        let from = if (start..start + cut).contains(&s) {
                            m.perm[i]
                        } else {
                            i
                        };
                        assert_eq!(
                            m.x[i * per + s * f + k],
                            x[from * per + s * f + k],
                            "seed {seed}, sample {i} (partner {}), step {s}, feature {k}, \
                             span {start}..{}",
                            m.perm[i],
                            start + cut
                        );
                    }
                }
            }
        }
        assert!(non_involutions > 30, "{non_involutions}");
        assert!(starts.len() >= 3, "the span start varies: {starts:?}");
    }

    #[test]
    fn mixup_and_cutmix_by_construction() {
        let mut rng = StdRng::seed_from_u64(1);
        // Two samples of 4 steps × 1 feature: all 0s and all 1s.
        let x = [0.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let m = mixup_cutmix(&x, 2, 4, 1, 0.4, 0.3, 0.0, &mut rng);
        assert!(!m.cutmix);
        for i in 0..2 {
            let own = if i == 0 { 0.0 } else { 1.0 };
            let other = if m.perm[i] == 0 { 0.0 } else { 1.0 };
            let want = m.lambda * own + (1.0 - m.lambda) * other;
            assert!((f64::from(m.x[i * 4]) - want).abs() < 1e-6);
        }
        let m = mixup_cutmix(&x, 2, 4, 1, 0.4, 0.3, 1.0, &mut rng);
        assert!(m.cutmix);
        // λ is the kept fraction: count unchanged steps of sample 0 when its partner differs.
        if m.perm[0] == 1 {
            let kept = m.x[..4].iter().filter(|&&v| v == 0.0).count();
            assert!((m.lambda - kept as f64 / 4.0).abs() < 1e-12);
        }
        // α ≤ 0 disables mixing.
        let m = mixup_cutmix(&x, 2, 4, 1, 0.0, 0.3, 0.0, &mut rng);
        assert_eq!(m.lambda, 1.0);
        assert_eq!(m.x, x.to_vec());
    }
}
