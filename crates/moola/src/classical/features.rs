//! Hand-made price-action features of OHLC windows, the input of the classical models.
//!
//! A re-implementation of the reference's `engineer_classical_features`
//! ([`features/price_action_features.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/features/price_action_features.py)).
//! Every window (`[T, 4]`, columns open, high, low, close) becomes one row of
//! [`FEATURE_NAMES`]`.len()` values, computed on a *region* of the window plus a little context
//! around it:
//!
//! * without expansion indices, the region is the inner window, bars `30..75`, the left context
//!   is bars `0..30` and the right context bars `75..T`;
//! * with expansion indices `(start, end)` (inclusive, absolute bars), the region is
//!   `start..=end`, the left context the (up to) 10 bars before `start` and the right context
//!   the (up to) 10 bars after `end`; an empty context is replaced by the region's first (left)
//!   or last (right) bar.
//!
//! Families, in column order (see [`FEATURE_NAMES`] for each column):
//!
//! | family | columns |
//! |---|---|
//! | market structure | peak / trough counts, higher-high / lower-low counts, close regression slope |
//! | liquidity zones | equal highs / lows (0.1 % tolerance), their ratio |
//! | fair value gaps | bullish / bearish three-candle gaps, their ratio |
//! | order blocks | candles before a strong (±2 %) candle: count, strength, distance |
//! | imbalance | mean body, upper-wick, lower-wick ratios, wick imbalance and dominance |
//! | geometry | close regression slope, R², mean curvature, angle |
//! | distance | distance to support and resistance, position in the range |
//! | candle patterns | doji, bullish / bearish engulfing, hammer, shooting star counts |
//! | Williams %R | over the last 10 bars of the region |
//! | buffer context | left momentum and volatility, left→region and region→right gaps, right momentum |
//!
//! Values are computed in `f64`; NaN becomes 0 and ±∞ becomes ±1e6, as the reference's
//! `np.nan_to_num(…, nan=0, posinf=1e6, neginf=-1e6)`.
//!
//! # Versions of the reference
//!
//! The reference changed this function over time. The default ([`FeatureVariant::WilliamsR`],
//! 37 columns) is the version with Williams %R(10) and the ±2 % strong-candle threshold of the
//! order blocks (the one the classical models' documentation describes). The squashed
//! `6ecdb28` version drops Williams %R for three "market regime" columns and lowers the
//! threshold to 0.05 % for one-minute crypto bars; [`FeatureOptions::reference_6ecdb28`] selects
//! it ([`FeatureVariant::MarketRegime`], 39 columns).

use anyhow::{Result, bail, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::WindowSet;
use crate::model::InnerWindow;

/// Column names of the default variant ([`FeatureVariant::WilliamsR`]), in order.
pub const FEATURE_NAMES: [&str; 37] = [
    // Market structure: counts on highs (peaks) and lows (troughs) of the region.
    "num_peaks",    // bars whose high exceeds both neighbours' highs
    "num_troughs",  // bars whose low is below both neighbours' lows
    "higher_highs", // consecutive peaks where the later peak is higher
    "lower_lows",   // consecutive troughs where the later trough is lower
    "trend_slope",  // least-squares slope of close against bar index
    // Liquidity zones.
    "equal_highs",          // adjacent sorted highs within 0.1 % of each other
    "equal_lows",           // adjacent sorted lows within 0.1 % of each other
    "liquidity_pool_ratio", // equal_highs / (equal_lows + 1)
    // Fair value gaps (three-candle imbalances).
    "bullish_fvg", // high[t-1] < low[t+1]
    "bearish_fvg", // low[t-1] > high[t+1]
    "fvg_ratio",   // bullish_fvg / (bearish_fvg + 1)
    // Order blocks: the candle before a strong candle (|close/open - 1| above the threshold).
    "order_block_count",
    "order_block_strength", // sum of |return| of those preceding candles
    "order_block_distance", // (T-1-last block)/T, 1 without block
    // Imbalance (wick analysis), means over the region's candles; range = high - low + 1e-10.
    "avg_body_ratio",     // |close - open| / range
    "avg_upper_shadow",   // (high - max(open, close)) / range
    "avg_lower_shadow",   // (min(open, close) - low) / range
    "avg_imbalance",      // upper - lower shadow ratio
    "avg_wick_dominance", // max(upper, lower) shadow ratio
    // Geometry of the close series.
    "slope",         // least-squares slope (same value as trend_slope)
    "r_squared",     // squared correlation of close with bar index
    "avg_curvature", // mean |second central difference| (zero at the two ends of each pass)
    "price_angle",   // atan(slope) in degrees
    // Distance measures, at the last close.
    "dist_to_support",    // (close - min low) / (min low + 1e-10)
    "dist_to_resistance", // (max high - close) / (max high + 1e-10)
    "position_in_range",  // (close - min low) / (max high - min low + 1e-10)
    // Candle patterns (counts).
    "num_doji",          // body < 10 % of the range
    "bullish_engulfing", // up candle whose body engulfs the previous down candle's body
    "bearish_engulfing", // down candle whose body engulfs the previous up candle's body
    "num_hammer",        // lower shadow > 2 body and upper shadow < body
    "num_shooting_star", // upper shadow > 2 body and lower shadow < body
    // Williams %R over the last 10 bars: -100 (hh - close) / (hh - ll), -50 without range.
    "williams_r",
    // Buffer context.
    "left_return",        // relative change of close over the left context
    "left_volatility",    // population std of the left context's close-to-close returns
    "left_to_inner_gap",  // first region close vs last left close
    "right_return",       // relative change of close over the right context
    "inner_to_right_gap", // first right close vs last region close
];

/// The three columns that replace `williams_r` in [`FeatureVariant::MarketRegime`].
pub const MARKET_REGIME_NAMES: [&str; 3] = [
    "trend_strength",    // |r| of close against bar index
    "volatility_regime", // std of close returns / mean close
    "range_regime",      // (max high - min low) / mean close
];

/// Which version of the reference's feature set to compute (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureVariant {
    /// Williams %R(10) after the candle patterns: 37 columns ([`FEATURE_NAMES`]).
    #[default]
    WilliamsR,
    /// Trend strength, volatility regime and range regime instead of Williams %R: 39 columns.
    MarketRegime,
}

/// Options of [`engineer_classical_features_with`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureOptions {
    /// The feature-set version.
    pub variant: FeatureVariant,
    /// Relative body size (`|close/open - 1|`) above which a candle is "strong" for the order
    /// blocks: 0.02 (2 %, daily stock bars) by default, 0.0005 in the `6ecdb28` version.
    pub order_block_threshold: f64,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        Self {
            variant: FeatureVariant::WilliamsR,
            order_block_threshold: 0.02,
        }
    }
}

impl FeatureOptions {
    /// The squashed `6ecdb28` version: market-regime columns, 0.05 % order-block threshold.
    pub fn reference_6ecdb28() -> Self {
        Self {
            variant: FeatureVariant::MarketRegime,
            order_block_threshold: 0.0005,
        }
    }

    /// Column names of this variant, in order.
    pub fn feature_names(&self) -> Vec<&'static str> {
        match self.variant {
            FeatureVariant::WilliamsR => FEATURE_NAMES.to_vec(),
            FeatureVariant::MarketRegime => {
                let at = FEATURE_NAMES
                    .iter()
                    .position(|n| *n == "williams_r")
                    .expect("williams_r is a feature name");
                let mut names = FEATURE_NAMES[..at].to_vec();
                names.extend(MARKET_REGIME_NAMES);
                names.extend(&FEATURE_NAMES[at + 1..]);
                names
            }
        }
    }

    /// Number of columns of this variant.
    pub fn n_features(&self) -> usize {
        match self.variant {
            FeatureVariant::WilliamsR => FEATURE_NAMES.len(),
            FeatureVariant::MarketRegime => FEATURE_NAMES.len() + MARKET_REGIME_NAMES.len() - 1,
        }
    }
}

/// The features of every window with the default options ([`FeatureOptions::default`]).
///
/// `expansion`: one `(start, end)` pair per window (inclusive, absolute bars), or `None` for
/// the inner window `30..75`. Returns `[N, 37]` rows.
pub fn engineer_classical_features(
    set: &WindowSet,
    expansion: Option<&[(i64, i64)]>,
) -> Result<Vec<Vec<f64>>> {
    engineer_classical_features_with(set, expansion, &FeatureOptions::default())
}

/// The features of every window (see the module docs); rows in window order.
///
/// Fails unless the windows have 4 features (OHLC) and more than 75 steps, or when an expansion
/// pair does not satisfy `0 ≤ start ≤ end < T`.
pub fn engineer_classical_features_with(
    set: &WindowSet,
    expansion: Option<&[(i64, i64)]>,
    options: &FeatureOptions,
) -> Result<Vec<Vec<f64>>> {
    ensure!(
        set.n_features == 4,
        "classical features need OHLC windows (4 features per step), got {}",
        set.n_features
    );
    let inner = InnerWindow::REFERENCE;
    ensure!(
        set.seq_len > inner.end,
        "classical features need windows longer than {} steps (inner window {}..{} plus a right \
         buffer), got {}",
        inner.end,
        inner.start,
        inner.end,
        set.seq_len
    );
    if let Some(e) = expansion {
        ensure!(
            e.len() == set.len(),
            "{} expansion pairs for {} windows",
            e.len(),
            set.len()
        );
        for (row, &(s, t)) in e.iter().enumerate() {
            if !(0 <= s && s <= t && (t as usize) < set.seq_len) {
                bail!(
                    "window {:?} (row {row}): expansion ({s}, {t}) is not within 0 ≤ start ≤ end < {}",
                    set.ids[row],
                    set.seq_len
                );
            }
        }
    }
    Ok((0..set.len())
        .into_par_iter()
        .map(|i| {
            let bars = Ohlc::from_sample(set.sample(i));
            let regions = match expansion {
                Some(e) => Regions::expansion(&bars, e[i].0 as usize, e[i].1 as usize),
                None => Regions::inner(&bars, inner),
            };
            row_features(&regions, options)
        })
        .collect())
}

/// Column-wise OHLC of a slice of bars.
#[derive(Debug, Clone, Default)]
struct Ohlc {
    o: Vec<f64>,
    h: Vec<f64>,
    l: Vec<f64>,
    c: Vec<f64>,
}

impl Ohlc {
    fn from_sample(sample: &[f32]) -> Self {
        let mut bars = Ohlc::default();
        for bar in sample.chunks_exact(4) {
            bars.o.push(f64::from(bar[0]));
            bars.h.push(f64::from(bar[1]));
            bars.l.push(f64::from(bar[2]));
            bars.c.push(f64::from(bar[3]));
        }
        bars
    }

    fn slice(&self, r: std::ops::Range<usize>) -> Self {
        Ohlc {
            o: self.o[r.clone()].to_vec(),
            h: self.h[r.clone()].to_vec(),
            l: self.l[r.clone()].to_vec(),
            c: self.c[r].to_vec(),
        }
    }

    fn len(&self) -> usize {
        self.c.len()
    }
}

/// The region the features describe and its left / right context.
struct Regions {
    region: Ohlc,
    left: Ohlc,
    right: Ohlc,
}

impl Regions {
    fn inner(bars: &Ohlc, inner: InnerWindow) -> Self {
        Regions {
            left: bars.slice(0..inner.start),
            region: bars.slice(inner.start..inner.end),
            right: bars.slice(inner.end..bars.len()),
        }
    }

    fn expansion(bars: &Ohlc, start: usize, end: usize) -> Self {
        let t = bars.len();
        let left = start.saturating_sub(10)..start;
        let right = (end + 1).min(t)..(end + 11).min(t);
        Regions {
            region: bars.slice(start..end + 1),
            left: if left.is_empty() {
                bars.slice(start..start + 1)
            } else {
                bars.slice(left)
            },
            right: if right.is_empty() {
                bars.slice(end..end + 1)
            } else {
                bars.slice(right)
            },
        }
    }
}

/// `np.nan_to_num(v, nan=0, posinf=1e6, neginf=-1e6)`.
fn clean(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else if v == f64::INFINITY {
        1e6
    } else if v == f64::NEG_INFINITY {
        -1e6
    } else {
        v
    }
}

fn row_features(r: &Regions, options: &FeatureOptions) -> Vec<f64> {
    let Ohlc { o, h, l, c } = &r.region;
    let mut f = Vec::with_capacity(options.n_features());
    market_structure(h, l, c, &mut f);
    liquidity_zones(h, l, &mut f);
    fair_value_gaps(h, l, &mut f);
    order_blocks(o, c, options.order_block_threshold, &mut f);
    imbalance(o, h, l, c, &mut f);
    geometry(c, &mut f);
    distances(h, l, c, &mut f);
    candle_patterns(o, h, l, c, &mut f);
    match options.variant {
        FeatureVariant::WilliamsR => f.push(williams_r(h, l, c, 10)),
        FeatureVariant::MarketRegime => market_regime(h, l, c, &mut f),
    }
    buffer_context(&r.left.c, c, &r.right.c, &mut f);
    debug_assert_eq!(f.len(), options.n_features());
    f.into_iter().map(clean).collect()
}

/// `scipy.stats.linregress(arange(T), y)`: `(slope, r)`, with `r = 0` when either series is
/// constant and `r` clipped to `[-1, 1]`; `(0, 0)` for fewer than two points.
pub fn linregress(y: &[f64]) -> (f64, f64) {
    let n = y.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let nf = n as f64;
    let xm = (nf - 1.0) / 2.0;
    let ym = y.iter().sum::<f64>() / nf;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (i, &v) in y.iter().enumerate() {
        let dx = i as f64 - xm;
        let dy = v - ym;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let den = (sxx * syy).sqrt();
    let r = if den == 0.0 {
        0.0
    } else {
        (sxy / den).clamp(-1.0, 1.0)
    };
    (slope, r)
}

fn count(it: impl Iterator<Item = bool>) -> f64 {
    it.filter(|&b| b).count() as f64
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    s / n as f64
}

/// Population standard deviation (`np.std`); NaN for an empty slice, like numpy.
fn std(v: &[f64]) -> f64 {
    let m = mean(v.iter().copied());
    mean(v.iter().map(|x| (x - m).powi(2))).sqrt()
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn market_structure(h: &[f64], l: &[f64], c: &[f64], f: &mut Vec<f64>) {
    let t = h.len();
    let interior = 1..t.saturating_sub(1);
    let peaks: Vec<usize> = interior
        .clone()
        .filter(|&i| h[i] > h[i - 1] && h[i] > h[i + 1])
        .collect();
    let troughs: Vec<usize> = interior
        .filter(|&i| l[i] < l[i - 1] && l[i] < l[i + 1])
        .collect();
    f.push(peaks.len() as f64);
    f.push(troughs.len() as f64);
    f.push(count(peaks.windows(2).map(|w| h[w[1]] > h[w[0]])));
    f.push(count(troughs.windows(2).map(|w| l[w[1]] < l[w[0]])));
    f.push(linregress(c).0);
}

/// Adjacent pairs of `sorted` whose relative difference is below 0.1 %.
fn near_equal(sorted: &[f64]) -> f64 {
    count(
        sorted
            .windows(2)
            .map(|w| ((w[1] - w[0]) / (w[0] + 1e-10)).abs() < 0.001),
    )
}

fn liquidity_zones(h: &[f64], l: &[f64], f: &mut Vec<f64>) {
    let mut hs = h.to_vec();
    hs.sort_by(|a, b| b.total_cmp(a));
    let mut ls = l.to_vec();
    ls.sort_by(f64::total_cmp);
    let (eh, el) = (near_equal(&hs), near_equal(&ls));
    f.extend([eh, el, eh / (el + 1.0)]);
}

fn fair_value_gaps(h: &[f64], l: &[f64], f: &mut Vec<f64>) {
    let t = h.len();
    let interior = 1..t.saturating_sub(1);
    let bull = count(interior.clone().map(|i| h[i - 1] < l[i + 1]));
    let bear = count(interior.map(|i| l[i - 1] > h[i + 1]));
    f.extend([bull, bear, bull / (bear + 1.0)]);
}

fn order_blocks(o: &[f64], c: &[f64], threshold: f64, f: &mut Vec<f64>) {
    let t = o.len();
    let ret: Vec<f64> = o
        .iter()
        .zip(c)
        .map(|(o, c)| (c - o) / (o + 1e-10))
        .collect();
    let (mut n, mut strength, mut last) = (0.0, 0.0, None);
    for i in 1..t {
        if ret[i] > threshold || ret[i] < -threshold {
            n += 1.0;
            strength += ret[i - 1].abs();
            last = Some(i - 1);
        }
    }
    let distance = last.map_or(1.0, |b| (t - 1 - b) as f64 / t as f64);
    f.extend([n, strength, distance]);
}

/// Body, upper- and lower-shadow ratios of each candle (range = high - low + 1e-10).
fn shadow_ratios(o: &[f64], h: &[f64], l: &[f64], c: &[f64]) -> Vec<(f64, f64, f64)> {
    (0..o.len())
        .map(|i| {
            let range = h[i] - l[i] + 1e-10;
            (
                (c[i] - o[i]).abs() / range,
                (h[i] - o[i].max(c[i])) / range,
                (o[i].min(c[i]) - l[i]) / range,
            )
        })
        .collect()
}

fn imbalance(o: &[f64], h: &[f64], l: &[f64], c: &[f64], f: &mut Vec<f64>) {
    let r = shadow_ratios(o, h, l, c);
    f.push(mean(r.iter().map(|x| x.0)));
    f.push(mean(r.iter().map(|x| x.1)));
    f.push(mean(r.iter().map(|x| x.2)));
    f.push(mean(r.iter().map(|x| x.1 - x.2)));
    f.push(mean(r.iter().map(|x| x.1.max(x.2))));
}

/// Mean absolute second derivative by two passes of central differences, each pass zero at
/// both ends (the reference's curvature).
fn curvature(c: &[f64]) -> f64 {
    let t = c.len();
    let central = |v: &[f64]| {
        let mut d = vec![0.0; t];
        for i in 1..t.saturating_sub(1) {
            d[i] = (v[i + 1] - v[i - 1]) / 2.0;
        }
        d
    };
    let second = central(&central(c));
    mean(second.iter().map(|v| v.abs()))
}

fn geometry(c: &[f64], f: &mut Vec<f64>) {
    let (slope, r) = linregress(c);
    f.extend([slope, r * r, curvature(c), slope.atan().to_degrees()]);
}

fn distances(h: &[f64], l: &[f64], c: &[f64], f: &mut Vec<f64>) {
    let (support, resistance) = (min(l), max(h));
    let close = c[c.len() - 1];
    f.push((close - support) / (support + 1e-10));
    f.push((resistance - close) / (resistance + 1e-10));
    f.push((close - support) / (resistance - support + 1e-10));
}

fn candle_patterns(o: &[f64], h: &[f64], l: &[f64], c: &[f64], f: &mut Vec<f64>) {
    let t = o.len();
    let body: Vec<f64> = (0..t).map(|i| (c[i] - o[i]).abs()).collect();
    let upper: Vec<f64> = (0..t).map(|i| h[i] - o[i].max(c[i])).collect();
    let lower: Vec<f64> = (0..t).map(|i| o[i].min(c[i]) - l[i]).collect();
    f.push(count((0..t).map(|i| body[i] / (h[i] - l[i] + 1e-10) < 0.1)));
    let up = |i: usize| c[i] > o[i];
    let down = |i: usize| c[i] < o[i];
    f.push(count((1..t).map(|i| {
        up(i) && down(i - 1) && o[i] < c[i - 1] && c[i] > o[i - 1]
    })));
    f.push(count((1..t).map(|i| {
        down(i) && up(i - 1) && o[i] > c[i - 1] && c[i] < o[i - 1]
    })));
    f.push(count(
        (0..t).map(|i| lower[i] > 2.0 * body[i] && upper[i] < body[i]),
    ));
    f.push(count(
        (0..t).map(|i| upper[i] > 2.0 * body[i] && lower[i] < body[i]),
    ));
}

/// Williams %R of the last close over the last `period` bars; 0 when the region is shorter.
pub fn williams_r(h: &[f64], l: &[f64], c: &[f64], period: usize) -> f64 {
    let t = h.len();
    if t < period {
        return 0.0;
    }
    let (hh, ll) = (max(&h[t - period..]), min(&l[t - period..]));
    if hh > ll {
        (hh - c[t - 1]) / (hh - ll) * -100.0
    } else {
        -50.0
    }
}

fn market_regime(h: &[f64], l: &[f64], c: &[f64], f: &mut Vec<f64>) {
    let t = c.len();
    let mean_c = mean(c.iter().copied());
    if t > 1 {
        f.push(linregress(c).1.abs());
        let returns: Vec<f64> = c
            .windows(2)
            .map(|w| (w[1] - w[0]) / (w[0] + 1e-8))
            .collect();
        f.push(std(&returns) / (mean_c + 1e-8));
    } else {
        f.extend([0.0, 0.0]);
    }
    f.push(if mean_c > 0.0 {
        (max(h) - min(l)) / mean_c
    } else {
        0.0
    });
}

fn buffer_context(left: &[f64], c: &[f64], right: &[f64], f: &mut Vec<f64>) {
    let (l0, l1) = (left[0], left[left.len() - 1]);
    let (r0, r1) = (right[0], right[right.len() - 1]);
    let left_returns: Vec<f64> = left
        .windows(2)
        .map(|w| (w[1] - w[0]) / (w[0] + 1e-10))
        .collect();
    f.push((l1 - l0) / (l0 + 1e-10));
    f.push(std(&left_returns));
    f.push((c[0] - l1) / (l1 + 1e-10));
    f.push((r1 - r0) / (r0 + 1e-10));
    f.push((r0 - c[c.len() - 1]) / (c[c.len() - 1] + 1e-10));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 105-bar window of flat candles at `price` (open = close, high/low ± 1 %).
    fn flat(price: f64) -> Vec<[f64; 4]> {
        vec![[price, price * 1.01, price * 0.99, price]; 105]
    }

    fn set_of(bars: &[[f64; 4]]) -> WindowSet {
        let x = bars.iter().flatten().map(|&v| v as f32).collect();
        WindowSet::new(vec!["w".into()], x, bars.len(), 4, None, None).unwrap()
    }

    fn features(bars: &[[f64; 4]]) -> Vec<f64> {
        engineer_classical_features(&set_of(bars), None)
            .unwrap()
            .remove(0)
    }

    fn get(row: &[f64], name: &str) -> f64 {
        row[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn names_match_columns() {
        let row = features(&flat(100.0));
        assert_eq!(row.len(), FEATURE_NAMES.len());
        let regime = FeatureOptions::reference_6ecdb28();
        assert_eq!(regime.feature_names().len(), regime.n_features());
        let rows = engineer_classical_features_with(&set_of(&flat(100.0)), None, &regime).unwrap();
        assert_eq!(rows[0].len(), 39);
    }

    #[test]
    fn linregress_matches_closed_form() {
        let (s, r) = linregress(&[1.0, 3.0, 5.0, 7.0]);
        assert!((s - 2.0).abs() < 1e-12 && (r - 1.0).abs() < 1e-12);
        assert_eq!(linregress(&[4.0, 4.0, 4.0]), (0.0, 0.0));
        let (s, r) = linregress(&[3.0, 1.0]);
        assert!((s + 2.0).abs() < 1e-12 && (r + 1.0).abs() < 1e-12);
    }

    #[test]
    fn market_structure_counts_peaks_and_trend() {
        let mut bars = flat(100.0);
        // Two peaks in the inner window, the second higher; one trough.
        bars[40][1] = 105.0;
        bars[50][1] = 106.0;
        bars[45][2] = 95.0;
        let row = features(&bars);
        assert_eq!(get(&row, "num_peaks"), 2.0);
        assert_eq!(get(&row, "higher_highs"), 1.0);
        assert_eq!(get(&row, "num_troughs"), 1.0);
        assert_eq!(get(&row, "lower_lows"), 0.0);
        assert_eq!(get(&row, "trend_slope"), 0.0);
    }

    #[test]
    fn monotone_close_has_unit_r2_and_known_slope() {
        let bars: Vec<[f64; 4]> = (0..105)
            .map(|i| {
                let p = 100.0 + 0.5 * i as f64;
                [p, p + 1.0, p - 1.0, p]
            })
            .collect();
        let row = features(&bars);
        assert!((get(&row, "slope") - 0.5).abs() < 1e-4);
        assert!((get(&row, "trend_slope") - 0.5).abs() < 1e-4);
        assert!((get(&row, "r_squared") - 1.0).abs() < 1e-9);
        assert!((get(&row, "price_angle") - 0.5f64.atan().to_degrees()).abs() < 1e-3);
        // Linear: second differences vanish except next to the ends, where the zero-padded
        // first pass leaves ±0.25: mean 0.5 / 45.
        assert!((get(&row, "avg_curvature") - 0.5 / 45.0).abs() < 1e-9);
    }

    #[test]
    fn one_bullish_fair_value_gap() {
        let mut bars = flat(100.0);
        // Bars 50..: price jumps to 110, so high[49] (101) < low[51] (108.9): one bullish gap at
        // t = 50 (bar 50 itself is the middle candle).
        for bar in bars.iter_mut().skip(50) {
            *bar = [110.0, 111.1, 108.9, 110.0];
        }
        bars[50] = [101.0, 109.0, 100.5, 109.0];
        let row = features(&bars);
        assert_eq!(get(&row, "bullish_fvg"), 1.0);
        assert_eq!(get(&row, "bearish_fvg"), 0.0);
        assert_eq!(get(&row, "fvg_ratio"), 1.0);
    }

    #[test]
    fn equal_highs_and_lows_within_tolerance() {
        let mut bars = flat(100.0);
        // Spread the inner highs/lows by 1 % each, then make two highs and two lows equal.
        for (k, bar) in bars[30..75].iter_mut().enumerate() {
            let p = 100.0 * 1.01f64.powi(k as i32);
            *bar = [p, p * 1.005, p * 0.995, p];
        }
        bars[60][1] = bars[61][1] * 0.9995; // within 0.1 % of the next high
        let row = features(&bars);
        assert_eq!(get(&row, "equal_highs"), 1.0);
        assert_eq!(get(&row, "equal_lows"), 0.0);
        assert_eq!(get(&row, "liquidity_pool_ratio"), 1.0);
    }

    #[test]
    fn order_blocks_two_percent() {
        let mut bars = flat(100.0);
        bars[40] = [100.0, 103.5, 99.5, 103.0]; // +3 %: bar 39 is a block
        bars[60] = [100.0, 100.5, 98.0, 98.5]; // -1.5 %: below the threshold
        let row = features(&bars);
        assert_eq!(get(&row, "order_block_count"), 1.0);
        assert_eq!(get(&row, "order_block_strength"), 0.0);
        // Region index of bar 39 is 9: (45 - 1 - 9) / 45.
        assert!((get(&row, "order_block_distance") - 35.0 / 45.0).abs() < 1e-12);
        let lenient = FeatureOptions {
            order_block_threshold: 0.0005,
            ..FeatureOptions::default()
        };
        let row = engineer_classical_features_with(&set_of(&bars), None, &lenient).unwrap();
        assert_eq!(get(&row[0], "order_block_count"), 2.0);
    }

    #[test]
    fn candle_patterns_doji_hammer_star_engulfing() {
        let mut bars = flat(100.0);
        // All flat candles are doji (body 0). Make the rest non-doji first.
        for bar in bars[30..75].iter_mut() {
            *bar = [100.0, 101.0, 99.0, 100.8];
        }
        bars[35] = [100.0, 101.0, 99.0, 100.02]; // doji (body 1 % of the range)
        bars[40] = [100.0, 100.35, 98.0, 100.3]; // hammer: lower 2.0 > 0.6, upper 0.05 < 0.3
        bars[45] = [100.0, 102.0, 99.95, 100.3]; // shooting star: upper 1.7, lower 0.05
        bars[50] = [100.6, 100.7, 99.9, 100.0]; // down candle
        bars[51] = [99.9, 101.0, 99.8, 100.8]; // engulfs it: bullish engulfing
        let row = features(&bars);
        assert_eq!(get(&row, "num_doji"), 1.0);
        assert_eq!(get(&row, "num_hammer"), 1.0);
        assert_eq!(get(&row, "num_shooting_star"), 1.0);
        assert_eq!(get(&row, "bullish_engulfing"), 1.0);
        // Bar 52 (up, 100 → 100.8) after the up bar 51: no engulfing.
        assert_eq!(get(&row, "bearish_engulfing"), 0.0);
    }

    #[test]
    fn wick_ratios_distance_and_williams() {
        let mut bars = vec![[100.0, 102.0, 99.0, 101.0]; 105];
        bars[74] = [100.0, 102.0, 99.0, 100.0];
        let row = features(&bars);
        let range = 3.0 + 1e-10;
        assert!((get(&row, "avg_upper_shadow") - (44.0 / range + 2.0 / range) / 45.0).abs() < 1e-9);
        assert!((get(&row, "avg_lower_shadow") - 1.0 / range).abs() < 1e-9);
        // Williams %R on the last 10 bars: hh 102, ll 99, close 100.
        assert!((get(&row, "williams_r") + 100.0 * 2.0 / 3.0).abs() < 1e-9);
        assert!((get(&row, "dist_to_support") - 1.0 / 99.0).abs() < 1e-9);
        assert!((get(&row, "dist_to_resistance") - 2.0 / 102.0).abs() < 1e-9);
        assert!((get(&row, "position_in_range") - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn buffer_context_and_expansion_regions() {
        let bars: Vec<[f64; 4]> = (0..105)
            .map(|i| {
                let p = 100.0 + i as f64;
                [p, p + 1.0, p - 1.0, p]
            })
            .collect();
        let row = features(&bars);
        // Left buffer closes 100..=129, region starts at 130, right buffer 175..=204.
        assert!((get(&row, "left_return") - 29.0 / 100.0).abs() < 1e-9);
        assert!((get(&row, "left_to_inner_gap") - 1.0 / 129.0).abs() < 1e-9);
        assert!((get(&row, "right_return") - 29.0 / 175.0).abs() < 1e-9);
        assert!((get(&row, "inner_to_right_gap") - 1.0 / 174.0).abs() < 1e-9);
        // Expansion at the very start: the left context is the first bar itself.
        let set = set_of(&bars);
        let row = &engineer_classical_features(&set, Some(&[(0, 20)])).unwrap()[0];
        assert_eq!(get(row, "left_return"), 0.0);
        assert_eq!(get(row, "left_volatility"), 0.0); // NaN std of no return → 0
        assert!((get(row, "right_return") - 9.0 / 121.0).abs() < 1e-9);
        assert!(engineer_classical_features(&set, Some(&[(20, 10)])).is_err());
        assert!(engineer_classical_features(&set, Some(&[(20, 105)])).is_err());
    }

    #[test]
    fn non_finite_values_are_cleaned() {
        assert_eq!(clean(f64::NAN), 0.0);
        assert_eq!(clean(f64::INFINITY), 1e6);
        assert_eq!(clean(f64::NEG_INFINITY), -1e6);
        // Zero prices: relative measures divide by 1e-10, nothing is NaN.
        let row = features(&vec![[0.0; 4]; 105]);
        assert!(row.iter().all(|v| v.is_finite()));
    }
}
