//! moola's data contract: parquet windows, UCR/UEA `.ts` files, OHLC CSV slicing.
//!
//! Every reader produces a [`WindowSet`]: `N` samples of `seq_len × n_features` values stored
//! sample-major, then time, then feature (the reference's `[N, T, F]` array, timestep-major), with
//! one string id per sample, optional string labels and optional expansion indices.
//!
//! * [`read_parquet`] / [`write_parquet`]: the reference's parquet contract:
//!   `window_id`, `label`, `features` (nested `T × F` or flat, timestep-major), optional
//!   `expansion_start` / `expansion_end`.
//! * [`read_ts`]: UCR/UEA time-series classification files in the sktime `.ts` format.
//! * [`windows_from_ohlc_csv`]: sliding windows over OHLC bars from a CSV file.
//! * [`read_any`] picks the reader by extension; [`ingest`] is `moola ingest`.
//!
//! Class labels map to indices in `np.unique` order (byte order of the label strings) through
//! [`LabelMap`]; [`validate_expansions`] is the reference's `validate_expansions` filter.
//!
//! Values are kept as read: the raw readers ([`read_parquet`], [`read_ts`]) keep NaN (a `?` in a
//! `.ts` file) and infinities so that callers can inspect them, while [`read_any`] and [`ingest`],
//! the entry points of the CLI, reject them through [`WindowSet::check_finite`]. Nothing is
//! normalised (the reference feeds raw prices to its networks).

mod ohlc;
mod parquet;
mod ucr;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::model::InnerWindow;

pub use self::ohlc::{OhlcOptions, windows_from_ohlc_csv};
pub use self::parquet::{FeatureLayout, read_parquet, write_parquet};
pub use self::ucr::{TsOptions, VariableLength, read_ts};

/// A set of fixed-shape multivariate windows (the reference's `X`, `y` and expansion arrays).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSet {
    /// One id per sample (`window_id` as a string).
    pub ids: Vec<String>,
    /// `n · seq_len · n_features` values: sample-major, then time, then feature.
    pub x: Vec<f32>,
    /// Time steps per sample.
    pub seq_len: usize,
    /// Features per time step.
    pub n_features: usize,
    /// Class label per sample; `None` for unlabeled sets (prediction input, pretraining windows).
    pub labels: Option<Vec<String>>,
    /// `(expansion_start, expansion_end)` per sample, absolute bar indices; `None` when the source
    /// has no expansion columns. A row without (complete) annotations holds `None`.
    pub expansion: Option<Vec<Option<(i64, i64)>>>,
}

impl WindowSet {
    /// Builds a set, checking that every column has one entry per id and that `x` holds
    /// `ids.len() · seq_len · n_features` values.
    pub fn new(
        ids: Vec<String>,
        x: Vec<f32>,
        seq_len: usize,
        n_features: usize,
        labels: Option<Vec<String>>,
        expansion: Option<Vec<Option<(i64, i64)>>>,
    ) -> Result<Self> {
        let n = ids.len();
        ensure!(
            seq_len > 0 && n_features > 0,
            "a window set needs seq_len > 0 and n_features > 0, got {seq_len} × {n_features}"
        );
        ensure!(
            x.len() == n * seq_len * n_features,
            "x holds {} values but {n} samples of {seq_len} × {n_features} need {}",
            x.len(),
            n * seq_len * n_features
        );
        if let Some(labels) = &labels {
            ensure!(labels.len() == n, "{} labels for {n} samples", labels.len());
        }
        if let Some(expansion) = &expansion {
            ensure!(
                expansion.len() == n,
                "{} expansion entries for {n} samples",
                expansion.len()
            );
        }
        Ok(Self {
            ids,
            x,
            seq_len,
            n_features,
            labels,
            expansion,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the set holds no sample.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Values per sample (`seq_len · n_features`).
    pub fn sample_len(&self) -> usize {
        self.seq_len * self.n_features
    }

    /// The `seq_len · n_features` values of sample `i`, time-major.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let d = self.sample_len();
        &self.x[i * d..(i + 1) * d]
    }

    /// The samples at `idx` (in that order, repeats allowed), with every column.
    ///
    /// # Panics
    /// When an index is out of range (indices come from the caller's own splits).
    pub fn select(&self, idx: &[usize]) -> WindowSet {
        let mut x = Vec::with_capacity(idx.len() * self.sample_len());
        for &i in idx {
            x.extend_from_slice(self.sample(i));
        }
        WindowSet {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            x,
            seq_len: self.seq_len,
            n_features: self.n_features,
            labels: self
                .labels
                .as_ref()
                .map(|l| idx.iter().map(|&i| l[i].clone()).collect()),
            expansion: self
                .expansion
                .as_ref()
                .map(|e| idx.iter().map(|&i| e[i]).collect()),
        }
    }

    /// Fails on the first NaN or infinite value, naming the window, the time step and the
    /// feature (and how many values are not finite in all).
    pub fn check_finite(&self) -> Result<()> {
        let Some(first) = self.x.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let d = self.sample_len();
        let (row, within) = (first / d, first % d);
        let (t, f) = (within / self.n_features, within % self.n_features);
        let total = self.x.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "window {:?} (row {row}) has a non-finite value {} at time step {t}, feature {f} \
             ({total} non-finite value(s) in the set)",
            self.ids[row],
            self.x[first]
        )
    }

    /// The labels, or an error saying that the set is unlabeled.
    pub fn require_labels(&self) -> Result<&[String]> {
        self.labels.as_deref().context(
            "the window set has no labels (no `label` column / class labels); this step needs \
             labelled windows",
        )
    }

    /// The first index of every duplicated window id, as `(id, first row, repeated row)`.
    pub fn duplicate_id(&self) -> Option<(&str, usize, usize)> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(self.len());
        for (i, id) in self.ids.iter().enumerate() {
            if let Some(&first) = seen.get(id.as_str()) {
                return Some((id, first, i));
            }
            seen.insert(id, i);
        }
        None
    }
}

/// Class label ↔ index mapping in `np.unique` order (labels sorted by their bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    classes: Vec<String>,
}

impl LabelMap {
    /// The sorted distinct labels, like `np.unique(y)`.
    pub fn fit(labels: &[String]) -> LabelMap {
        let mut classes = labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        LabelMap { classes }
    }

    /// A map from a saved class list, which must be strictly increasing (sorted and unique).
    pub fn from_classes(classes: Vec<String>) -> Result<LabelMap> {
        if let Some(w) = classes.windows(2).find(|w| w[0] >= w[1]) {
            bail!(
                "class list must be sorted and unique (np.unique order): {:?} is followed by {:?}",
                w[0],
                w[1]
            );
        }
        Ok(LabelMap { classes })
    }

    /// The classes, index order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when there is no class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Index of `label`, if it is a known class.
    pub fn index(&self, label: &str) -> Option<usize> {
        self.classes
            .binary_search_by(|c| c.as_str().cmp(label))
            .ok()
    }

    /// The class at `index`.
    pub fn label(&self, index: usize) -> Option<&str> {
        self.classes.get(index).map(String::as_str)
    }

    /// Class indices of `labels`; an unknown label is an error naming it and its row.
    pub fn encode(&self, labels: &[String]) -> Result<Vec<usize>> {
        labels
            .iter()
            .enumerate()
            .map(|(row, label)| {
                self.index(label).with_context(|| {
                    format!(
                        "unknown label {label:?} at row {row}; known classes: {:?}",
                        self.classes
                    )
                })
            })
            .collect()
    }
}

/// The reference's `validate_expansions`: keeps the rows whose `expansion_start < expansion_end`
/// and both lie in `[window.start, window.end - 1]` (the reference's `[30, 74]`), and returns the
/// kept set with the number of dropped rows. Rows without expansion indices are dropped.
///
/// Fails when the set has no expansion columns or the window does not fit the sequence.
pub fn validate_expansions(set: &WindowSet, window: InnerWindow) -> Result<(WindowSet, usize)> {
    let expansion = set.expansion.as_ref().context(
        "the window set has no expansion_start/expansion_end columns; validate_expansions needs \
         them",
    )?;
    ensure!(
        !window.is_empty() && window.end <= set.seq_len,
        "inner window {}..{} does not fit sequences of {} steps",
        window.start,
        window.end,
        set.seq_len
    );
    let (lo, hi) = (window.start as i64, window.end as i64 - 1);
    let keep: Vec<usize> = expansion
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Some((s, t)) if s < t && lo <= *s && *t <= hi))
        .map(|(i, _)| i)
        .collect();
    let dropped = set.len() - keep.len();
    tracing::info!(
        "validate_expansions: kept {}/{} samples with expansion_start < expansion_end in \
         [{lo}, {hi}] ({dropped} dropped)",
        keep.len(),
        set.len()
    );
    Ok((set.select(&keep), dropped))
}

/// Reads any supported input by extension: `.parquet`/`.pq` ([`read_parquet`]), `.ts`
/// ([`read_ts`], equal-length series only) or `.csv` ([`windows_from_ohlc_csv`] with the default
/// [`OhlcOptions`]: 105-bar windows, stride 1). Non-finite values are rejected
/// ([`WindowSet::check_finite`]). Used by `moola ingest`, `train` and `predict`.
pub fn read_any(path: &Path) -> Result<WindowSet> {
    if !path.exists() {
        bail!("input file {} does not exist", path.display());
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let set = match ext.as_str() {
        "parquet" | "pq" => read_parquet(path)?,
        "ts" => read_ts(path, &TsOptions::default())?,
        "csv" => windows_from_ohlc_csv(path, &OhlcOptions::default())?,
        _ => bail!(
            "{}: unsupported input type {:?}; expected .parquet, .ts (UCR/UEA) or .csv (OHLC bars)",
            path.display(),
            ext
        ),
    };
    set.check_finite()
        .with_context(|| format!("{} holds values that are not finite", path.display()))?;
    Ok(set)
}

/// What `moola ingest` found and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSummary {
    /// The file read.
    pub input: PathBuf,
    /// The canonical parquet written.
    pub output: PathBuf,
    /// Number of windows.
    pub rows: usize,
    /// Time steps per window.
    pub seq_len: usize,
    /// Features per time step.
    pub n_features: usize,
    /// `(class, count)` in class-index order; `None` for an unlabeled set.
    pub classes: Option<Vec<(String, usize)>>,
    /// Rows with both expansion indices; `None` without expansion columns.
    pub with_expansion: Option<usize>,
    /// Rows that pass [`validate_expansions`] with the reference inner window (only for
    /// 105-step windows with expansion columns).
    pub valid_expansion: Option<usize>,
}

impl fmt::Display for IngestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ingested {} -> {}",
            self.input.display(),
            self.output.display()
        )?;
        writeln!(
            f,
            "  rows: {}, shape per row: {} × {}",
            self.rows, self.seq_len, self.n_features
        )?;
        match &self.classes {
            Some(classes) => {
                let list: Vec<String> = classes
                    .iter()
                    .enumerate()
                    .map(|(i, (c, n))| format!("{i}={c} ({n})"))
                    .collect();
                writeln!(f, "  classes: {}", list.join(", "))?;
            }
            None => writeln!(f, "  classes: none (unlabeled)")?,
        }
        match (self.with_expansion, self.valid_expansion) {
            (Some(with), Some(valid)) => write!(
                f,
                "  expansions: {with} rows annotated, {valid} pass validate_expansions"
            ),
            (Some(with), None) => write!(f, "  expansions: {with} rows annotated"),
            _ => write!(f, "  expansions: none"),
        }
    }
}

/// `moola ingest`: reads `input` ([`read_any`]), validates it (schema, shapes, finite values,
/// unique window ids, expansion indices) and writes the canonical nested-layout parquet to `out`
/// atomically. Rows are written as read: the expansion filter is applied by the steps that need
/// it, like the reference.
pub fn ingest(input: &Path, out: &Path) -> Result<IngestSummary> {
    let set = read_any(input)?;
    if let Some((id, first, again)) = set.duplicate_id() {
        bail!(
            "{}: window_id {id:?} appears at rows {first} and {again}; window ids must be unique",
            input.display()
        );
    }
    let classes = set.labels.as_ref().map(|labels| {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for label in labels {
            *counts.entry(label).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect::<Vec<_>>()
    });
    let with_expansion = set
        .expansion
        .as_ref()
        .map(|e| e.iter().filter(|e| e.is_some()).count());
    let valid_expansion = match (&set.expansion, InnerWindow::default_for(set.seq_len)) {
        (Some(_), Some(window)) => Some(set.len() - validate_expansions(&set, window)?.1),
        _ => None,
    };
    write_parquet(&set, out, FeatureLayout::Nested)?;
    Ok(IngestSummary {
        input: input.to_path_buf(),
        output: out.to_path_buf(),
        rows: set.len(),
        seq_len: set.seq_len,
        n_features: set.n_features,
        classes,
        with_expansion,
        valid_expansion,
    })
}

/// Shape of a flat row of `d` values, the reference's rule: `[d / 4, 4]` when `d % 4 == 0`
/// (timestep-major OHLC), else `[1, d]`.
pub fn flat_shape(d: usize) -> (usize, usize) {
    if d.is_multiple_of(4) {
        (d / 4, 4)
    } else {
        (1, d)
    }
}

/// The rows `idx` of a row-major buffer with `per` values per row, concatenated.
pub(crate) fn gather(x: &[f32], per: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        out.extend_from_slice(&x[i * per..(i + 1) * per]);
    }
    out
}
