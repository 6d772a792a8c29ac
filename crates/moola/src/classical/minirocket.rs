//! MiniRocket (Dempster, Schmidt & Webb, "MINIROCKET: A Very Fast (Almost) Deterministic
//! Transform for Time Series Classification", KDD 2021) with a ridge classifier: the
//! `minirocket` model.
//!
//! # The transform
//!
//! * **Kernels**: the 84 kernels of length 9 whose weights are −1 everywhere except 2 at three
//!   of the nine positions ([`KERNEL_INDICES`]: the 3-subsets of 0..9 in lexicographic order).
//!   Each is computed as `−x` summed over the nine taps plus `3x` at the three chosen ones, with
//!   the nine shifted copies built once per dilation.
//! * **Dilations** ([`fit_dilations`]): `⌊2^e⌋` for `min(features / 84, 32)` exponents `e`
//!   spaced evenly in `[0, log2((T − 1) / 8)]`, repeats merged, features per dilation in
//!   proportion to the repeats, the remainder handed out from the smallest dilation up.
//! * **Biases** (fitted): for every dilation and kernel, the convolution output of one training
//!   window drawn at random, and its quantiles at `(k · φ) mod 1` (φ the golden ratio, `k` the
//!   feature's 1-based index; [`quantiles`]) with NumPy's linear interpolation.
//! * **Padding**: zero padding, on for every other (dilation, kernel) pair; without padding a
//!   feature only counts the positions where the kernel fits.
//! * **Feature**: PPV, the proportion of positive values of `convolution − bias`.
//! * **Several channels** (MiniRocket's multivariate variant): each (dilation, kernel) pair
//!   sums the convolution over a random subset of `⌊2^u⌋` channels, `u ~ U(0, log2(min(C, 9) + 1))`.
//!   On one channel this is the univariate transform.
//!
//! The defaults give `84 · ⌊10000 / 84⌋ = 9,996` features. The arithmetic is `f32` in the order
//! of the reference implementation (aeon's / the authors' NumPy code), so that given the same
//! fitted parameters the features agree (`tools/parity/minirocket_fixtures.py`, tested within
//! 1e-5); the random draws (which window fits each bias, which channels each kernel sees) come
//! from this crate's seeded generator, not NumPy's. The transform of a set runs in parallel
//! over windows.
//!
//! # The classifier
//!
//! As aeon's `MiniRocketClassifier`: the features are divided by their standard deviation over
//! the training windows (`StandardScaler(with_mean=False)`; a constant feature is left as it
//! is), then [`ridge`](super::ridge) (`RidgeClassifierCV(alphas=logspace(-3, 3, 10))`).
//! Before the transform each window goes through the model's input scaling
//! ([`crate::scaling`], `zscore` by default, recorded in the saved model; `none` is the
//! paper's setting, where the UCR series are already z-normalised).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rand::Rng;
use rand::seq::index::sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ridge::{RidgeFit, default_alphas, fit_ridge_classifier_cv};
use crate::Estimator;
use crate::data::{LabelMap, WindowSet};
use crate::scaling::{DEFAULT_SCALING, InputScaling};

/// Name of the MiniRocket model.
pub const MINIROCKET: &str = "minirocket";

/// Number of kernels.
pub const N_KERNELS: usize = 84;

/// Kernel length.
const KERNEL_LEN: usize = 9;

/// The positions of the weight 2 in each of the 84 kernels (the 3-subsets of 0..9 in
/// lexicographic order, `itertools.combinations(range(9), 3)`).
pub const KERNEL_INDICES: [[usize; 3]; N_KERNELS] = kernel_indices();

const fn kernel_indices() -> [[usize; 3]; N_KERNELS] {
    let mut out = [[0; 3]; N_KERNELS];
    let mut k = 0;
    let mut a = 0;
    while a < KERNEL_LEN {
        let mut b = a + 1;
        while b < KERNEL_LEN {
            let mut c = b + 1;
            while c < KERNEL_LEN {
                out[k] = [a, b, c];
                k += 1;
                c += 1;
            }
            b += 1;
        }
        a += 1;
    }
    out
}

/// Dilations and features per dilation for series of `seq_len` steps (the reference's
/// `_fit_dilations`); `n_features` below 84 counts as 84.
pub fn fit_dilations(
    seq_len: usize,
    n_features: usize,
    max_dilations_per_kernel: usize,
) -> (Vec<usize>, Vec<usize>) {
    let per_kernel = (n_features.max(N_KERNELS)) / N_KERNELS;
    let true_max = per_kernel.min(max_dilations_per_kernel).max(1);
    let multiplier = per_kernel as f64 / true_max as f64;
    let max_exponent = ((seq_len as f64 - 1.0) / (KERNEL_LEN as f64 - 1.0)).log2();
    // numpy.logspace(0, max_exponent, true_max, base=2).astype(int32): linspace then 2^x.
    let step = if true_max > 1 {
        max_exponent / (true_max - 1) as f64
    } else {
        0.0
    };
    let mut dilations: Vec<usize> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for i in 0..true_max {
        let e = if i + 1 == true_max && true_max > 1 {
            max_exponent
        } else {
            i as f64 * step
        };
        let d = 2f64.powf(e) as usize;
        match dilations.last() {
            Some(&last) if last == d => *counts.last_mut().expect("a count") += 1,
            _ => {
                dilations.push(d);
                counts.push(1);
            }
        }
    }
    let mut per_dilation: Vec<usize> = counts
        .iter()
        .map(|&c| (c as f64 * multiplier) as usize)
        .collect();
    let mut remainder = per_kernel - per_dilation.iter().sum::<usize>();
    let mut i = 0;
    while remainder > 0 {
        per_dilation[i] += 1;
        remainder -= 1;
        i = (i + 1) % per_dilation.len();
    }
    (dilations, per_dilation)
}

/// The bias quantiles `(k · φ) mod 1` for `k = 1..=n` (the reference's `_quantiles`), in
/// `f32`.
pub fn quantiles(n: usize) -> Vec<f32> {
    let phi = (5f64.sqrt() + 1.0) / 2.0;
    (1..=n).map(|k| ((k as f64 * phi) % 1.0) as f32).collect()
}

/// NumPy's `quantile(a, q)` (linear interpolation) of the unsorted `a`.
fn quantile_linear(sorted: &[f32], q: f32) -> f32 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let rank = f64::from(q) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = rank - lo as f64;
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    (a + (b - a) * frac) as f32
}

/// The fitted parameters of the transform (what the reference's `fit` returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniRocketParams {
    /// Channels of the windows it was fitted on.
    pub n_channels: usize,
    /// Steps of the windows it was fitted on.
    pub seq_len: usize,
    /// The dilations.
    pub dilations: Vec<usize>,
    /// Features of each kernel per dilation.
    pub features_per_dilation: Vec<usize>,
    /// Channels summed by each (dilation, kernel) pair, dilation-major.
    pub channels_per_combination: Vec<usize>,
    /// The channels themselves, concatenated in the same order.
    pub channel_indices: Vec<usize>,
    /// One bias per feature.
    pub biases: Vec<f32>,
}

/// Windows as `[n, channels, steps]` (channel-major per window, the reference's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Number of windows.
    pub n: usize,
    /// Channels per window.
    pub channels: usize,
    /// Steps per channel.
    pub len: usize,
    /// `n · channels · len` values.
    pub x: Vec<f32>,
}

impl Panel {
    /// The windows of a set (`[n, steps, features]`) as `[n, features, steps]`.
    pub fn from_windows(set: &WindowSet) -> Self {
        let (t, f) = (set.seq_len, set.n_features);
        let mut x = vec![0.0; set.x.len()];
        for (src, dst) in set.x.chunks(t * f).zip(x.chunks_mut(t * f)) {
            for s in 0..t {
                for c in 0..f {
                    dst[c * t + s] = src[s * f + c];
                }
            }
        }
        Self {
            n: set.len(),
            channels: f,
            len: t,
            x,
        }
    }

    fn window(&self, i: usize) -> &[f32] {
        let d = self.channels * self.len;
        &self.x[i * d..(i + 1) * d]
    }
}

/// The shifted copies of one window at one dilation: `alpha[c]` = Σ over the nine taps of
/// `−x[c]`, `gamma[g][c]` = `3x[c]` shifted to tap `g` (zero outside the series), built in the
/// reference's order of additions.
struct Shifted {
    alpha: Vec<f32>,
    gamma: Vec<f32>,
    channels: usize,
    len: usize,
}

impl Shifted {
    fn new(window: &[f32], channels: usize, len: usize, dilation: usize) -> Self {
        let padding = (KERNEL_LEN - 1) * dilation / 2;
        let mut alpha = vec![0.0f32; channels * len];
        let mut gamma = vec![0.0f32; KERNEL_LEN * channels * len];
        for c in 0..channels {
            let x = &window[c * len..(c + 1) * len];
            let a = &mut alpha[c * len..(c + 1) * len];
            for (ai, xi) in a.iter_mut().zip(x) {
                *ai = -xi;
            }
            let g = |tap: usize| (tap * channels + c) * len;
            let mid = g(KERNEL_LEN / 2);
            for (s, xi) in x.iter().enumerate() {
                gamma[mid + s] = xi + xi + xi;
            }
            // Taps before the centre: C[-end:] += A[:end], end growing by the dilation.
            let mut end = len - padding;
            for tap in 0..KERNEL_LEN / 2 {
                let shift = len - end;
                for s in shift..len {
                    a[s] += -x[s - shift];
                    gamma[g(tap) + s] = x[s - shift] + x[s - shift] + x[s - shift];
                }
                end += dilation;
            }
            // Taps after the centre: C[:-start] += A[start:].
            let mut start = dilation;
            for tap in KERNEL_LEN / 2 + 1..KERNEL_LEN {
                for s in 0..len - start {
                    a[s] += -x[s + start];
                    gamma[g(tap) + s] = x[s + start] + x[s + start] + x[s + start];
                }
                start += dilation;
            }
        }
        Self {
            alpha,
            gamma,
            channels,
            len,
        }
    }

    /// The convolution of kernel `k`, summed over `channels`, into `out`.
    fn convolve(&self, k: usize, channels: &[usize], out: &mut [f32]) {
        let [i0, i1, i2] = KERNEL_INDICES[k];
        let len = self.len;
        let g = |tap: usize, c: usize| (tap * self.channels + c) * len;
        out.fill(0.0);
        for (n, &c) in channels.iter().enumerate() {
            let a = &self.alpha[c * len..(c + 1) * len];
            let (g0, g1, g2) = (
                &self.gamma[g(i0, c)..g(i0, c) + len],
                &self.gamma[g(i1, c)..g(i1, c) + len],
                &self.gamma[g(i2, c)..g(i2, c) + len],
            );
            for s in 0..len {
                let v = a[s] + g0[s] + g1[s] + g2[s];
                out[s] = if n == 0 { v } else { out[s] + v };
            }
        }
    }
}

impl MiniRocketParams {
    /// Number of features the transform produces.
    pub fn n_features(&self) -> usize {
        N_KERNELS * self.features_per_dilation.iter().sum::<usize>()
    }

    /// The (dilation, kernel) pairs' channel lists, dilation-major.
    fn combinations(&self) -> Vec<&[usize]> {
        let mut out = Vec::with_capacity(self.channels_per_combination.len());
        let mut start = 0;
        for &k in &self.channels_per_combination {
            out.push(&self.channel_indices[start..start + k]);
            start += k;
        }
        out
    }

    /// Checks the parameters' internal consistency.
    pub fn validate(&self) -> Result<()> {
        let combos = self.dilations.len() * N_KERNELS;
        ensure!(
            self.dilations.len() == self.features_per_dilation.len(),
            "{} dilations but {} feature counts",
            self.dilations.len(),
            self.features_per_dilation.len()
        );
        ensure!(
            self.channels_per_combination.len() == combos,
            "{} channel counts for {combos} (dilation, kernel) pairs",
            self.channels_per_combination.len()
        );
        ensure!(
            self.channels_per_combination.iter().sum::<usize>() == self.channel_indices.len(),
            "channel counts and channel indices disagree"
        );
        ensure!(
            self.channel_indices.iter().all(|&c| c < self.n_channels)
                && self.channels_per_combination.iter().all(|&k| k >= 1),
            "a channel index is out of range (the windows have {} channels)",
            self.n_channels
        );
        ensure!(
            self.biases.len() == self.n_features(),
            "{} biases for {} features",
            self.biases.len(),
            self.n_features()
        );
        ensure!(
            self.dilations
                .iter()
                .all(|&d| d >= 1 && (KERNEL_LEN - 1) * d / 2 * 2 < self.seq_len),
            "a dilation does not fit series of {} steps",
            self.seq_len
        );
        Ok(())
    }

    /// Draws the channel combinations (the multivariate variant; on one channel every
    /// combination is channel 0) for the given dilations.
    pub fn draw_channels(
        n_channels: usize,
        n_dilations: usize,
        rng: &mut impl Rng,
    ) -> (Vec<usize>, Vec<usize>) {
        let max_exponent = ((n_channels.min(9) + 1) as f64).log2();
        let combos = n_dilations * N_KERNELS;
        let per: Vec<usize> = (0..combos)
            .map(|_| {
                let k = 2f64.powf(rng.random_range(0.0..max_exponent)) as usize;
                k.clamp(1, n_channels)
            })
            .collect();
        let indices = per
            .iter()
            .flat_map(|&k| sample(rng, n_channels, k).into_vec())
            .collect();
        (per, indices)
    }

    /// Fits the transform on `panel` (the reference's `fit`): dilations for its length,
    /// channel combinations and biases from windows drawn with `rng`.
    pub fn fit(
        panel: &Panel,
        n_features: usize,
        max_dilations_per_kernel: usize,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        ensure!(
            panel.n > 0,
            "MiniRocket needs at least one window to fit on"
        );
        ensure!(
            panel.len >= KERNEL_LEN,
            "MiniRocket needs series of at least {KERNEL_LEN} steps, got {} (pad shorter ones)",
            panel.len
        );
        ensure!(
            max_dilations_per_kernel >= 1,
            "max_dilations_per_kernel must be ≥ 1"
        );
        let (dilations, features_per_dilation) =
            fit_dilations(panel.len, n_features, max_dilations_per_kernel);
        let (channels_per_combination, channel_indices) =
            Self::draw_channels(panel.channels, dilations.len(), rng);
        let mut params = Self {
            n_channels: panel.channels,
            seq_len: panel.len,
            dilations,
            features_per_dilation,
            channels_per_combination,
            channel_indices,
            biases: Vec::new(),
        };
        let draws: Vec<usize> = (0..params.channels_per_combination.len())
            .map(|_| rng.random_range(0..panel.n))
            .collect();
        params.fit_biases(panel, &draws)?;
        Ok(params)
    }

    /// Fits the biases given the dilations and channel combinations: the (dilation, kernel)
    /// pair `j` takes its quantiles from window `windows[j]` of `panel`.
    pub fn fit_biases(&mut self, panel: &Panel, windows: &[usize]) -> Result<()> {
        ensure!(
            (panel.channels, panel.len) == (self.n_channels, self.seq_len),
            "the windows are {}×{}, the transform is for {}×{}",
            panel.channels,
            panel.len,
            self.n_channels,
            self.seq_len
        );
        let combos = self.combinations();
        ensure!(
            windows.len() == combos.len() && windows.iter().all(|&w| w < panel.n),
            "one window index per (dilation, kernel) pair is needed"
        );
        let q = quantiles(self.n_features());
        let mut biases = Vec::with_capacity(q.len());
        let mut conv = vec![0.0f32; self.seq_len];
        let mut combo = 0;
        for (&dilation, &per) in self.dilations.iter().zip(&self.features_per_dilation) {
            for k in 0..N_KERNELS {
                let window = panel.window(windows[combo]);
                let shifted = Shifted::new(window, panel.channels, panel.len, dilation);
                shifted.convolve(k, combos[combo], &mut conv);
                let mut sorted = conv.clone();
                sorted.sort_by(f32::total_cmp);
                let start = biases.len();
                biases.extend(
                    q[start..start + per]
                        .iter()
                        .map(|&qq| quantile_linear(&sorted, qq)),
                );
                combo += 1;
            }
        }
        self.biases = biases;
        self.validate()
    }

    /// The features of every window of `panel`, `[n, n_features]` row-major (windows in
    /// parallel).
    pub fn transform(&self, panel: &Panel) -> Result<Vec<f32>> {
        self.validate()?;
        ensure!(
            (panel.channels, panel.len) == (self.n_channels, self.seq_len),
            "the windows are {} channels × {} steps, the MiniRocket transform was fitted on {}×{}",
            panel.channels,
            panel.len,
            self.n_channels,
            self.seq_len
        );
        let nf = self.n_features();
        let combos = self.combinations();
        let mut out = vec![0.0f32; panel.n * nf];
        out.par_chunks_mut(nf.max(1))
            .enumerate()
            .for_each(|(i, row)| self.transform_window(panel.window(i), &combos, row));
        Ok(out)
    }

    fn transform_window(&self, window: &[f32], combos: &[&[usize]], row: &mut [f32]) {
        let len = self.seq_len;
        let mut conv = vec![0.0f32; len];
        let mut f = 0;
        let mut combo = 0;
        for (j, (&dilation, &per)) in self
            .dilations
            .iter()
            .zip(&self.features_per_dilation)
            .enumerate()
        {
            let padding = (KERNEL_LEN - 1) * dilation / 2;
            let shifted = Shifted::new(window, self.n_channels, len, dilation);
            for k in 0..N_KERNELS {
                shifted.convolve(k, combos[combo], &mut conv);
                // Every other pair is computed without padding: only where the kernel fits.
                let span = if (j % 2 + k) % 2 == 0 {
                    &conv[..]
                } else {
                    &conv[padding..len - padding]
                };
                for &b in &self.biases[f..f + per] {
                    let positive = span.iter().filter(|&&v| v > b).count();
                    row[f] = (positive as f64 / span.len() as f64) as f32;
                    f += 1;
                }
                combo += 1;
            }
        }
    }
}

/// Hyper-parameters of [`MiniRocket`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiniRocketConfig {
    /// Features requested (rounded down to a multiple of 84; the paper's 10,000 gives 9,996).
    pub n_features: usize,
    /// Most dilations per kernel (32).
    pub max_dilations_per_kernel: usize,
    /// Ridge α grid (`numpy.logspace(-3, 3, 10)`).
    pub alphas: Vec<f64>,
    /// Divide the features by their training standard deviation before the ridge (aeon's
    /// `StandardScaler(with_mean=False)`).
    pub standardize: bool,
    /// Per-window input transform before the kernels (recorded in the saved model).
    pub scaling: InputScaling,
    /// Seed of the random draws (channels, bias windows).
    pub seed: u64,
}

impl Default for MiniRocketConfig {
    fn default() -> Self {
        Self {
            n_features: 10_000,
            max_dilations_per_kernel: 32,
            alphas: default_alphas(),
            standardize: true,
            scaling: DEFAULT_SCALING,
            seed: kiln::seed::DEFAULT_SEED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MiniRocketFit {
    classes: Vec<String>,
    /// The input scaling applied before the transform (`auto` resolved at fit).
    #[serde(default)]
    scaling: InputScaling,
    params: MiniRocketParams,
    /// Per-feature divisor (1 for constant features or without standardisation).
    scale: Vec<f64>,
    ridge: RidgeFit,
}

/// MiniRocket + ridge (`minirocket`), an [`Estimator`] like the other classical models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniRocket {
    /// Hyper-parameters.
    pub config: MiniRocketConfig,
    fit: Option<MiniRocketFit>,
}

impl MiniRocket {
    /// An unfitted model.
    pub fn new(config: MiniRocketConfig) -> Self {
        Self { config, fit: None }
    }

    /// The fitted transform, once fitted.
    pub fn params(&self) -> Option<&MiniRocketParams> {
        self.fit.as_ref().map(|f| &f.params)
    }

    /// The ridge α chosen by leave-one-out, once fitted.
    pub fn alpha(&self) -> Option<f64> {
        self.fit.as_ref().map(|f| f.ridge.alpha)
    }

    /// Reads a model written by [`Estimator::save`].
    pub fn load(path: &Path) -> Result<Self> {
        match super::ClassicalModel::load(path)? {
            super::ClassicalModel::MiniRocket(m) => Ok(m),
            other => bail!(
                "{} holds a {} model, not {MINIROCKET}",
                path.display(),
                other.name()
            ),
        }
    }

    fn panel(data: &WindowSet, scaling: InputScaling) -> Result<Panel> {
        data.check_finite()?;
        Ok(Panel::from_windows(&scaling.apply(data)?))
    }

    /// The input scaling the fitted model applies (`auto` resolved on its training windows).
    pub fn scaling(&self) -> Option<InputScaling> {
        self.fit.as_ref().map(|f| f.scaling)
    }

    /// The ridge's decision values of every window (one column for two classes, else one
    /// per class).
    pub fn decision_function(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let fit = self
            .fit
            .as_ref()
            .context("the minirocket model is not fitted")?;
        let features = fit.params.transform(&Self::panel(data, fit.scaling)?)?;
        let nf = fit.params.n_features();
        Ok(features
            .par_chunks(nf)
            .map(|row| {
                let x: Vec<f64> = row
                    .iter()
                    .zip(&fit.scale)
                    .map(|(v, s)| f64::from(*v) / s)
                    .collect();
                fit.ridge.decision(&x)
            })
            .collect())
    }
}

impl Default for MiniRocket {
    fn default() -> Self {
        Self::new(MiniRocketConfig::default())
    }
}

/// Population standard deviation of every column of an `n × p` matrix, 1 where it is 0
/// (scikit-learn's `StandardScaler(with_mean=False).scale_`).
pub fn column_scale(x: &[f64], n: usize, p: usize) -> Vec<f64> {
    (0..p)
        .into_par_iter()
        .map(|j| {
            let mean = (0..n).map(|i| x[i * p + j]).sum::<f64>() / n as f64;
            let var = (0..n).map(|i| (x[i * p + j] - mean).powi(2)).sum::<f64>() / n as f64;
            let s = var.sqrt();
            // scikit-learn's `_handle_zeros_in_scale`: (near-)constant columns keep scale 1.
            if s < 10.0 * f64::EPSILON * mean.abs().max(1.0) {
                1.0
            } else {
                s
            }
        })
        .collect()
}

impl Estimator for MiniRocket {
    fn name(&self) -> String {
        MINIROCKET.into()
    }

    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        let labels = data.require_labels()?;
        ensure!(!data.is_empty(), "cannot fit on an empty window set");
        let map = LabelMap::fit(labels);
        ensure!(
            map.len() >= 2,
            "a classifier needs at least two classes, the training set has {:?}",
            map.classes()
        );
        let y = map.encode(labels)?;
        let cfg = &self.config;
        let scaling = cfg.scaling.resolve(data);
        let panel = Self::panel(data, scaling)?;
        let mut rng = kiln::seed::rng(cfg.seed, "minirocket", 0);
        let params = MiniRocketParams::fit(
            &panel,
            cfg.n_features,
            cfg.max_dilations_per_kernel,
            &mut rng,
        )?;
        let features = params.transform(&panel)?;
        let (n, p) = (panel.n, params.n_features());
        let mut x: Vec<f64> = features.iter().map(|&v| f64::from(v)).collect();
        let scale = if cfg.standardize {
            column_scale(&x, n, p)
        } else {
            vec![1.0; p]
        };
        x.par_chunks_mut(p).for_each(|row| {
            for (v, s) in row.iter_mut().zip(&scale) {
                *v /= s;
            }
        });
        let ridge = fit_ridge_classifier_cv(&x, n, p, &y, map.len(), &cfg.alphas)
            .context("fitting the ridge classifier on the MiniRocket features")?;
        tracing::info!(
            "minirocket: {p} features, {} dilations, ridge α {}",
            params.dilations.len(),
            ridge.alpha
        );
        self.fit = Some(MiniRocketFit {
            classes: map.classes().to_vec(),
            scaling,
            params,
            scale,
            ridge,
        });
        Ok(())
    }

    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let fit = self
            .fit
            .as_ref()
            .context("the minirocket model is not fitted")?;
        Ok(self
            .decision_function(data)?
            .iter()
            .map(|s| fit.ridge.predict_proba_row(s))
            .collect())
    }

    fn classes(&self) -> Result<Vec<String>> {
        Ok(self
            .fit
            .as_ref()
            .context("the minirocket model is not fitted")?
            .classes
            .clone())
    }

    fn save(&self, path: &Path) -> Result<()> {
        super::models::save_json(path, &super::models::SavedRef::Minirocket(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_84_kernels_are_the_3_subsets_of_9() {
        assert_eq!(KERNEL_INDICES[0], [0, 1, 2]);
        assert_eq!(KERNEL_INDICES[1], [0, 1, 3]);
        assert_eq!(KERNEL_INDICES[83], [6, 7, 8]);
        let mut all: Vec<[usize; 3]> = KERNEL_INDICES.to_vec();
        all.dedup();
        assert_eq!(all.len(), 84);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn dilations_by_hand() {
        // Length 9: log2(8/8) = 0, a single dilation 1 with all 119 features.
        assert_eq!(fit_dilations(9, 10_000, 32), (vec![1], vec![119]));
        // 840 features = 10 per kernel over 10 exponents in [0, log2(29/8)] for length 30:
        // 2^(i·0.2065): 1, 1.15, 1.33, 1.53, 1.77, 2.04, 2.35, 2.71, 3.12, 3.625.
        assert_eq!(fit_dilations(30, 840, 32), (vec![1, 2, 3], vec![5, 3, 2]));
        // Fewer than 84 features count as 84: one per kernel.
        assert_eq!(fit_dilations(100, 10, 32), (vec![1], vec![1]));
        let q = quantiles(3);
        assert!((q[0] - 0.618_034).abs() < 1e-6 && (q[1] - 0.236_068).abs() < 1e-6);
    }

    /// The convolution by its definition: weights −1 except 2 at three taps, dilated, zero
    /// padding, centred.
    fn convolve_by_definition(x: &[f32], d: usize, k: usize) -> Vec<f64> {
        let len = x.len() as i64;
        (0..len)
            .map(|t| {
                (0..9)
                    .map(|tap| {
                        let w = if KERNEL_INDICES[k].contains(&tap) {
                            2.0
                        } else {
                            -1.0
                        };
                        let s = t + (tap as i64 - 4) * d as i64;
                        if (0..len).contains(&s) {
                            w * f64::from(x[s as usize])
                        } else {
                            0.0
                        }
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn the_shifted_sums_are_the_dilated_convolution() {
        let x: Vec<f32> = (0..23).map(|i| ((i * 7 % 11) as f32) - 4.5).collect();
        for d in [1, 2] {
            let shifted = Shifted::new(&x, 1, x.len(), d);
            let mut out = vec![0.0; x.len()];
            for k in [0, 17, 83] {
                shifted.convolve(k, &[0], &mut out);
                let want = convolve_by_definition(&x, d, k);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-4,
                        "d {d} k {k}: {out:?} {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ppv_features_by_hand_on_a_tiny_transform() {
        // One dilation, one feature per kernel, all biases 0: the feature of kernel k is the
        // share of positive outputs (padded for even k, unpadded for odd k at dilation index 0).
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
        let params = MiniRocketParams {
            n_channels: 1,
            seq_len: 12,
            dilations: vec![1],
            features_per_dilation: vec![1],
            channels_per_combination: vec![1; 84],
            channel_indices: vec![0; 84],
            biases: vec![0.0; 84],
        };
        let panel = Panel {
            n: 1,
            channels: 1,
            len: 12,
            x: x.clone(),
        };
        let features = params.transform(&panel).unwrap();
        for k in [0, 1, 40, 83] {
            let conv = convolve_by_definition(&x, 1, k);
            let span = if k % 2 == 0 { &conv[..] } else { &conv[4..8] };
            let want = span.iter().filter(|v| **v > 0.0).count() as f32 / span.len() as f32;
            assert_eq!(features[k], want, "kernel {k}");
        }
    }

    #[test]
    fn channel_draws_stay_in_range() {
        let mut rng = kiln::seed::rng(1, "channels", 0);
        let (per, idx) = MiniRocketParams::draw_channels(4, 3, &mut rng);
        assert_eq!(per.len(), 3 * 84);
        assert!(per.iter().all(|&k| (1..=4).contains(&k)));
        assert_eq!(idx.len(), per.iter().sum::<usize>());
        let mut start = 0;
        for &k in &per {
            let mut c = idx[start..start + k].to_vec();
            c.sort();
            c.dedup();
            assert_eq!(c.len(), k, "channels of one combination are distinct");
            start += k;
        }
        let (per, idx) = MiniRocketParams::draw_channels(1, 2, &mut rng);
        assert!(per.iter().all(|&k| k == 1) && idx.iter().all(|&c| c == 0));
    }

    #[test]
    fn short_series_and_mismatched_windows_are_errors() {
        let panel = Panel {
            n: 1,
            channels: 1,
            len: 8,
            x: vec![0.0; 8],
        };
        let mut rng = kiln::seed::rng(1, "x", 0);
        let err = MiniRocketParams::fit(&panel, 10_000, 32, &mut rng).unwrap_err();
        assert!(err.to_string().contains("at least 9 steps"), "{err}");
        let panel = Panel {
            n: 2,
            channels: 1,
            len: 20,
            x: (0..40).map(|i| i as f32).collect(),
        };
        let params = MiniRocketParams::fit(&panel, 840, 32, &mut rng).unwrap();
        let other = Panel {
            n: 1,
            channels: 2,
            len: 20,
            x: vec![0.0; 40],
        };
        assert!(params.transform(&other).is_err());
    }
}
