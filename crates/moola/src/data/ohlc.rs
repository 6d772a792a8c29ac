//! Sliding OHLC windows over a CSV file of bars.
//!
//! Columns are matched case-insensitively: `open`, `high`, `low`, `close` (required), `symbol`
//! or `ticker` (optional), `date`, `datetime`, `timestamp` or `time` (optional); other columns are
//! ignored. Bars are grouped by symbol (symbols in order of first appearance, bars in file order
//! within a symbol); a window never crosses symbols. Windows of `window` bars start every `stride`
//! bars from each symbol's first bar; a symbol with fewer than `window` bars gives none.
//!
//! Window ids are `"<symbol>:<date of the first bar>"`; without a date column the first bar's
//! index within its symbol replaces the date, and without a symbol column the file stem is the
//! symbol. Features are `[open, high, low, close]` per bar, raw prices (no normalisation, like
//! the reference). The set is unlabeled.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::WindowSet;

/// Options of [`windows_from_ohlc_csv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OhlcOptions {
    /// Bars per window (default 105, the reference's window).
    pub window: usize,
    /// Bars between the starts of consecutive windows of one symbol (default 1: every window).
    pub stride: usize,
    /// Keep only this symbol (exact match); `None` keeps all.
    pub symbol: Option<String>,
}

impl Default for OhlcOptions {
    fn default() -> Self {
        Self {
            window: 105,
            stride: 1,
            symbol: None,
        }
    }
}

const PRICE_COLUMNS: [&str; 4] = ["open", "high", "low", "close"];
const SYMBOL_COLUMNS: [&str; 2] = ["symbol", "ticker"];
const DATE_COLUMNS: [&str; 4] = ["date", "datetime", "timestamp", "time"];

struct Series {
    symbol: String,
    dates: Vec<String>,
    bars: Vec<[f32; 4]>,
}

/// Reads OHLC bars from a CSV file and slices them into windows (see the module docs).
pub fn windows_from_ohlc_csv(path: &Path, opts: &OhlcOptions) -> Result<WindowSet> {
    let file = path.display().to_string();
    ensure!(
        opts.window > 0 && opts.stride > 0,
        "OHLC window ({}) and stride ({}) must be positive",
        opts.window,
        opts.stride
    );
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot open {file}"))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{file}: cannot read the CSV header"))?
        .clone();
    let find = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let mut price_idx = [0usize; 4];
    for (slot, name) in price_idx.iter_mut().zip(PRICE_COLUMNS) {
        *slot = find(&[name]).with_context(|| {
            format!(
                "{file} has no `{name}` column (columns matched case-insensitively; found: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })?;
    }
    let symbol_idx = find(&SYMBOL_COLUMNS);
    let date_idx = find(&DATE_COLUMNS);
    if let Some(wanted) = &opts.symbol {
        ensure!(
            symbol_idx.is_some(),
            "{file} has no symbol/ticker column, so symbol {wanted:?} cannot be selected"
        );
    }
    let default_symbol = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    let mut series: Vec<Series> = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{file}: malformed CSV record"))?;
        let line = record.position().map_or(0, |p| p.line());
        let symbol = symbol_idx.map_or(default_symbol.as_str(), |i| &record[i]);
        if opts.symbol.as_deref().is_some_and(|s| s != symbol) {
            continue;
        }
        let mut bar = [0f32; 4];
        for (value, (&i, name)) in bar.iter_mut().zip(price_idx.iter().zip(PRICE_COLUMNS)) {
            let cell = record.get(i).unwrap_or("");
            *value = cell.parse::<f64>().map(|v| v as f32).map_err(|_| {
                anyhow::anyhow!("{file}: line {line}: `{name}` = {cell:?} is not a number")
            })?;
        }
        let idx = match series.iter().rposition(|s| s.symbol == symbol) {
            Some(idx) => idx,
            None => {
                series.push(Series {
                    symbol: symbol.to_string(),
                    dates: Vec::new(),
                    bars: Vec::new(),
                });
                series.len() - 1
            }
        };
        let s = &mut series[idx];
        s.dates.push(
            date_idx
                .and_then(|i| record.get(i))
                .map(str::to_string)
                .unwrap_or_else(|| s.bars.len().to_string()),
        );
        s.bars.push(bar);
    }
    if let Some(wanted) = &opts.symbol {
        ensure!(
            !series.is_empty(),
            "{file} has no bars for symbol {wanted:?}"
        );
    }
    ensure!(!series.is_empty(), "{file} has no bars");

    let mut ids = Vec::new();
    let mut x = Vec::new();
    for s in &series {
        if s.bars.len() < opts.window {
            tracing::warn!(
                "{file}: symbol {:?} has {} bars, fewer than one window of {}; skipped",
                s.symbol,
                s.bars.len(),
                opts.window
            );
            continue;
        }
        for start in (0..=s.bars.len() - opts.window).step_by(opts.stride) {
            ids.push(format!("{}:{}", s.symbol, s.dates[start]));
            for bar in &s.bars[start..start + opts.window] {
                x.extend_from_slice(bar);
            }
        }
    }
    if ids.is_empty() {
        bail!(
            "{file}: no symbol has the {} bars one window needs (longest: {})",
            opts.window,
            series.iter().map(|s| s.bars.len()).max().unwrap_or(0)
        );
    }
    WindowSet::new(ids, x, opts.window, 4, None, None)
}
