//! Input scaling: a per-window, per-channel transform applied to every window before a model
//! sees it, in training, validation, prediction, out-of-fold runs and pre-training alike.
//!
//! The reference feeds raw prices to its networks (`none` here). On the bundled OHLC windows
//! (prices from about 20 to 600) that leaves a network unable to learn a rule it could express
//! exactly, because each window lives at its own price level; see `docs/moola-learning.md`
//! for the measurements behind the default.
//!
//! | setting | transform of each window, per channel `c` and step `t` | needs |
//! |---|---|---|
//! | `auto` (the default of new runs) | `zscore` when the windows' levels differ by much more than their own variation ([`InputScaling::resolve`]), else `none`; decided once per fit from the training windows | |
//! | `none` | `x` (the reference) | |
//! | `zscore` | `(x[t, c] − mean_c) / std_c` over the window's steps (population std; a constant channel becomes 0) | |
//! | `relative_close` | `x[t, c] / close[0] − 1` for all four channels (a fraction: 0.01 is 1%) | OHLC windows (4 features: open, high, low, close), `close[0] > 0` |
//! | `relative_open` | `x[t, c] / open[0] − 1` | as `relative_close`, `open[0] > 0` |
//! | `log_returns` | `ln(x[t, c] / x[t − 1, c])`, 0 at `t = 0` | every value `> 0` |
//!
//! The setting is part of the model: a trained classifier records the resolved setting (never
//! `auto`) in its card
//! ([`ModelCard::scaling`](crate::model::ModelCard)), and `predict` and
//! [`Classifier::predict_proba`](crate::Classifier::predict_proba) apply the recorded transform;
//! a model file written before the setting existed, and a reference checkpoint brought in with
//! `moola import`, records `none`. A pre-trained encoder records the scaling of the windows it
//! was pre-trained on, and a classifier refuses an encoder pre-trained under another scaling.
//!
//! The transform works in `f64` and writes `f32`, window by window (in parallel), and never
//! looks at another window: the same window gives the same input whatever set it is in.

use anyhow::{Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::WindowSet;

/// A per-window, per-channel input transform (see the [module docs](self)).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum InputScaling {
    /// Raw values, as the reference feeds them (the default of files that predate the setting).
    #[default]
    None,
    /// `zscore` or `none`, chosen from the training windows ([`InputScaling::resolve`]).
    Auto,
    /// Z-score per window and channel.
    Zscore,
    /// OHLC: every price relative to the window's first close, minus 1.
    RelativeClose,
    /// OHLC: every price relative to the window's first open, minus 1.
    RelativeOpen,
    /// Per-channel log returns (0 at the first step).
    LogReturns,
}

/// The setting new runs use unless configured otherwise (chosen by measurement on the bundled
/// data sets; `docs/moola-learning.md`).
pub const DEFAULT_SCALING: InputScaling = InputScaling::Auto;

/// `auto` picks `zscore` when, for some channel, the spread of the windows' means exceeds this
/// many times the windows' typical (median) standard deviation. Measured on the bundled and
/// hold-out sets: OHLC price windows 29–30, BasicMotions ≤ 0.73, JapaneseVowels ≤ 2.5, the
/// z-normalised UCR sets 0.
pub const AUTO_LEVEL_RATIO: f64 = 5.0;

/// Features of an OHLC window, in the reference's order.
const OHLC_FEATURES: usize = 4;
const OPEN: usize = 0;
const CLOSE: usize = 3;

impl std::fmt::Display for InputScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Auto => "auto",
            Self::Zscore => "zscore",
            Self::RelativeClose => "relative_close",
            Self::RelativeOpen => "relative_open",
            Self::LogReturns => "log_returns",
        })
    }
}

impl InputScaling {
    /// True for `none`.
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }

    /// The concrete setting for a training set: `auto` becomes `zscore` or `none` by the
    /// level ratio of `data` ([`level_ratio`], [`AUTO_LEVEL_RATIO`]); any other setting is
    /// returned as it is.
    pub fn resolve(self, data: &WindowSet) -> InputScaling {
        if self != Self::Auto {
            return self;
        }
        if level_ratio(data) > AUTO_LEVEL_RATIO {
            Self::Zscore
        } else {
            Self::None
        }
    }

    /// Checks that windows of `n_features` channels can take this transform.
    pub fn check_shape(&self, n_features: usize) -> Result<()> {
        if matches!(self, Self::RelativeClose | Self::RelativeOpen) && n_features != OHLC_FEATURES {
            bail!(
                "input scaling `{self}` needs OHLC windows (4 features: open, high, low, close), \
                 the data has {n_features} feature(s); use `zscore` or `log_returns`"
            );
        }
        Ok(())
    }

    /// The transformed copy of `data` (ids, labels and expansion columns unchanged). Errors name
    /// the window, step and feature that cannot be transformed (a non-positive price for the
    /// relative and log-return settings).
    pub fn apply(&self, data: &WindowSet) -> Result<WindowSet> {
        let mut out = data.clone();
        self.apply_in_place(&mut out.x, data.seq_len, data.n_features, &data.ids)?;
        Ok(out)
    }

    /// Transforms a `[n, seq_len, n_features]` buffer in place; `ids` name the windows in
    /// errors.
    pub fn apply_in_place(
        &self,
        x: &mut [f32],
        seq_len: usize,
        n_features: usize,
        ids: &[String],
    ) -> Result<()> {
        if self.is_none() {
            return Ok(());
        }
        if *self == Self::Auto {
            bail!(
                "input scaling `auto` must be resolved on the training windows first \
                 (InputScaling::resolve)"
            );
        }
        self.check_shape(n_features)?;
        let per = seq_len * n_features;
        if per == 0 {
            return Ok(());
        }
        x.par_chunks_mut(per).enumerate().try_for_each(|(row, w)| {
            self.window(w, seq_len, n_features).map_err(|(t, f, v)| {
                let id = ids.get(row).map_or_else(|| row.to_string(), Clone::clone);
                anyhow::anyhow!(
                    "input scaling `{self}`: window {id:?} (row {row}) has the value {v} at \
                         time step {t}, feature {f}; this scaling needs positive prices (use \
                         `zscore`)"
                )
            })
        })
    }

    /// One window in place; on failure the offending (step, feature, value).
    fn window(&self, w: &mut [f32], t: usize, f: usize) -> Result<(), (usize, usize, f32)> {
        let at = |w: &[f32], step: usize, c: usize| f64::from(w[step * f + c]);
        match self {
            Self::None | Self::Auto => {}
            Self::Zscore => {
                for c in 0..f {
                    let mean = (0..t).map(|s| at(w, s, c)).sum::<f64>() / t as f64;
                    let var = (0..t).map(|s| (at(w, s, c) - mean).powi(2)).sum::<f64>() / t as f64;
                    let std = var.sqrt();
                    // A constant channel (up to rounding) carries no shape: all zeros.
                    let scale = if std > 1e-12 * mean.abs().max(1.0) {
                        1.0 / std
                    } else {
                        0.0
                    };
                    for s in 0..t {
                        w[s * f + c] = ((at(w, s, c) - mean) * scale) as f32;
                    }
                }
            }
            Self::RelativeClose | Self::RelativeOpen => {
                let c0 = if *self == Self::RelativeClose {
                    CLOSE
                } else {
                    OPEN
                };
                let base = at(w, 0, c0);
                if base.is_nan() || base <= 0.0 {
                    return Err((0, c0, base as f32));
                }
                for v in w.iter_mut() {
                    *v = (f64::from(*v) / base - 1.0) as f32;
                }
            }
            Self::LogReturns => {
                if let Some(i) = w.iter().position(|v| v.is_nan() || *v <= 0.0) {
                    return Err((i / f, i % f, w[i]));
                }
                for c in 0..f {
                    let mut prev = at(w, 0, c);
                    w[c] = 0.0;
                    for s in 1..t {
                        let v = at(w, s, c);
                        w[s * f + c] = (v / prev).ln() as f32;
                        prev = v;
                    }
                }
            }
        }
        Ok(())
    }
}

/// How much the windows' levels differ relative to their own variation: over channels, the
/// largest ratio of the standard deviation across windows of the window means to the median
/// of the windows' standard deviations (0 for fewer than two windows or constant data).
pub fn level_ratio(data: &WindowSet) -> f64 {
    let (t, f, n) = (data.seq_len, data.n_features, data.len());
    if n < 2 || t == 0 {
        return 0.0;
    }
    (0..f)
        .map(|c| {
            let mut means = Vec::with_capacity(n);
            let mut stds = Vec::with_capacity(n);
            for w in data.x.chunks(t * f) {
                let m = (0..t).map(|s| f64::from(w[s * f + c])).sum::<f64>() / t as f64;
                let v = (0..t)
                    .map(|s| (f64::from(w[s * f + c]) - m).powi(2))
                    .sum::<f64>()
                    / t as f64;
                means.push(m);
                stds.push(v.sqrt());
            }
            let mm = means.iter().sum::<f64>() / n as f64;
            let spread = (means.iter().map(|m| (m - mm).powi(2)).sum::<f64>() / n as f64).sqrt();
            stds.sort_by(f64::total_cmp);
            let typical = if n % 2 == 1 {
                stds[n / 2]
            } else {
                (stds[n / 2 - 1] + stds[n / 2]) / 2.0
            };
            if spread == 0.0 {
                0.0
            } else {
                spread / typical.max(f64::MIN_POSITIVE)
            }
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(x: Vec<f32>, t: usize, f: usize) -> WindowSet {
        let n = x.len() / (t * f);
        WindowSet::new(
            (0..n).map(|i| format!("w{i}")).collect(),
            x,
            t,
            f,
            None,
            None,
        )
        .unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn zscore_is_per_window_and_channel() {
        // One window, 4 steps, 2 channels: channel 0 = 1, 2, 3, 4; channel 1 constant 5.
        // mean 2.5, population std sqrt(1.25).
        let x = vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0];
        let out = InputScaling::Zscore.apply(&set(x, 4, 2)).unwrap();
        let s = 1.25f64.sqrt();
        close(
            &out.x,
            &[-1.5 / s, 0.0, -0.5 / s, 0.0, 0.5 / s, 0.0, 1.5 / s, 0.0],
        );
        // A second window at another level and scale gives the same values (per window).
        let x2 = vec![
            1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0, 100.0, -7.0, 300.0, -7.0, 500.0, -7.0, 700.0,
            -7.0,
        ];
        let out2 = InputScaling::Zscore.apply(&set(x2, 4, 2)).unwrap();
        close(
            &out2.x[8..],
            &out.x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
    }

    #[test]
    fn relative_and_log_returns_by_hand() {
        // Two OHLC bars: (10, 12, 9, 11), (11, 13, 10, 12.1).
        let x = vec![10.0, 12.0, 9.0, 11.0, 11.0, 13.0, 10.0, 12.1];
        let data = set(x, 2, 4);
        let rc = InputScaling::RelativeClose.apply(&data).unwrap();
        close(
            &rc.x,
            &[
                10.0 / 11.0 - 1.0,
                12.0 / 11.0 - 1.0,
                9.0 / 11.0 - 1.0,
                0.0,
                0.0,
                13.0 / 11.0 - 1.0,
                10.0 / 11.0 - 1.0,
                0.1,
            ],
        );
        let ro = InputScaling::RelativeOpen.apply(&data).unwrap();
        close(&ro.x, &[0.0, 0.2, -0.1, 0.1, 0.1, 0.3, 0.0, 0.21]);
        let lr = InputScaling::LogReturns.apply(&data).unwrap();
        close(
            &lr.x,
            &[
                0.0,
                0.0,
                0.0,
                0.0,
                1.1f64.ln(),
                (13.0f64 / 12.0).ln(),
                (10.0f64 / 9.0).ln(),
                1.1f64.ln(),
            ],
        );
        // `none` is the identity.
        assert_eq!(InputScaling::None.apply(&data).unwrap(), data);
    }

    #[test]
    fn bad_inputs_name_the_window() {
        let data = set(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2);
        let err = InputScaling::RelativeClose.apply(&data).unwrap_err();
        assert!(err.to_string().contains("OHLC") && err.to_string().contains("2 feature"));
        let data = set(vec![1.0, 2.0, 0.5, -4.0, 5.0, 6.0], 3, 2);
        let err = InputScaling::LogReturns
            .apply(&data)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"w0\"") && err.contains("time step 1") && err.contains("feature 1"),
            "{err}"
        );
        let ohlc = set(vec![1.0, 2.0, 0.5, 0.0, 1.0, 2.0, 0.5, 1.0], 2, 4);
        let err = InputScaling::RelativeClose
            .apply(&ohlc)
            .unwrap_err()
            .to_string();
        assert!(err.contains("feature 3"), "{err}");
        assert!(InputScaling::RelativeOpen.apply(&ohlc).is_ok());
    }

    #[test]
    fn auto_removes_levels_that_dwarf_the_windows_variation() {
        // Three windows of 4 steps: within-window std 1 (values m−1, m+1, m−1, m+1), means
        // 0, 10, 20: spread sqrt(200/3) ≈ 8.16 ≥ 5 → zscore.
        let w = |m: f32| [m - 1.0, m + 1.0, m - 1.0, m + 1.0];
        let levels = set([w(0.0), w(10.0), w(20.0)].concat(), 4, 1);
        assert!((level_ratio(&levels) - (200.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(InputScaling::Auto.resolve(&levels), InputScaling::Zscore);
        // Means 0, 2, 4: ratio 1.63 → none.
        let close = set([w(0.0), w(2.0), w(4.0)].concat(), 4, 1);
        assert_eq!(InputScaling::Auto.resolve(&close), InputScaling::None);
        // Explicit settings are kept; `auto` cannot be applied unresolved.
        assert_eq!(InputScaling::None.resolve(&levels), InputScaling::None);
        assert!(InputScaling::Auto.apply(&levels).is_err());
        // One window, or all-constant windows: nothing to compare.
        assert_eq!(level_ratio(&set(w(5.0).to_vec(), 4, 1)), 0.0);
        assert_eq!(level_ratio(&set(vec![3.0; 8], 4, 1)), 0.0);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for s in [
            InputScaling::None,
            InputScaling::Auto,
            InputScaling::Zscore,
            InputScaling::RelativeClose,
            InputScaling::RelativeOpen,
            InputScaling::LogReturns,
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(text, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<InputScaling>(&text).unwrap(), s);
        }
    }
}
