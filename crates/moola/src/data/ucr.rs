//! UCR/UEA time-series classification files in the sktime `.ts` text format.
//!
//! ```text
//! # comment
//! @problemName BasicMotions
//! @timeStamps false
//! @missing false
//! @univariate false
//! @dimensions 6
//! @equalLength true
//! @seriesLength 100
//! @classLabel true Standing Running Walking Badminton
//! @data
//! 0.07,0.08,...:0.3,0.4,...:...:Standing
//! ```
//!
//! Header keys are case-insensitive; unknown `@` keys are ignored with a warning. Each data row
//! is `dim1:dim2:...[:label]` with comma-separated values per dimension; `?` (or `NaN`) is a
//! missing value, read as NaN and kept (so [`super::WindowSet::check_finite`], which
//! [`super::read_any`] runs, reports it with its position). The output is time-major
//! `[N, T, F]` with `F` = number of dimensions; ids are the 0-based row numbers.
//!
//! Not supported (clear errors): time-stamped series (`@timeStamps true`) and regression targets
//! (`@targetLabel true`). Series of unequal length are rejected unless [`TsOptions`] asks for
//! padding to the longest series.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::WindowSet;

/// What to do with series of unequal length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VariableLength {
    /// Refuse them, naming the row and the lengths.
    #[default]
    Reject,
    /// Pad every series to the longest by repeating its last value.
    PadLast,
    /// Pad every series to the longest with zeros.
    PadZero,
}

/// Options of [`read_ts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TsOptions {
    /// Handling of series of unequal length (default: reject).
    pub variable_length: VariableLength,
}

#[derive(Default)]
struct Header {
    dimensions: Option<usize>,
    equal_length: Option<bool>,
    series_length: Option<usize>,
    class_labels: Option<Vec<String>>,
}

struct Row {
    line: usize,
    /// One series per dimension.
    series: Vec<Vec<f32>>,
    label: Option<String>,
}

fn parse_bool(value: &str, key: &str, at: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => bail!("{at}: @{key} must be true or false, got {value:?}"),
    }
}

fn parse_count(value: &str, key: &str, at: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&v| v > 0)
        .with_context(|| format!("{at}: @{key} must be a positive integer, got {value:?}"))
}

/// Reads a UCR/UEA `.ts` file; every error names the file and the line (and row for data).
pub fn read_ts(path: &Path, opts: &TsOptions) -> Result<WindowSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    parse_ts(text, &path.display().to_string(), opts)
}

fn parse_ts(text: &str, file: &str, opts: &TsOptions) -> Result<WindowSet> {
    let mut header = Header::default();
    let mut in_data = false;
    let mut rows: Vec<Row> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{file}: line {line_no}");
        if in_data {
            rows.push(parse_row(line, line_no, rows.len(), &header, file)?);
            continue;
        }
        let Some(directive) = line.strip_prefix('@') else {
            bail!("{at}: expected an @ header line before @data, got {line:?}");
        };
        let (key, value) = directive
            .split_once(char::is_whitespace)
            .map_or((directive, ""), |(k, v)| (k, v.trim()));
        match key.to_ascii_lowercase().as_str() {
            "data" => in_data = true,
            "univariate" => {
                if parse_bool(value, key, &at)? {
                    header.dimensions.get_or_insert(1);
                }
            }
            "problemname" | "missing" => {}
            "timestamps" => {
                if parse_bool(value, key, &at)? {
                    bail!("{at}: time-stamped series (@timeStamps true) are not supported");
                }
            }
            "dimension" | "dimensions" => {
                header.dimensions = Some(parse_count(value, key, &at)?);
            }
            "equallength" => header.equal_length = Some(parse_bool(value, key, &at)?),
            "serieslength" => header.series_length = Some(parse_count(value, key, &at)?),
            "classlabel" => {
                let mut words = value.split_whitespace();
                let enabled = parse_bool(words.next().unwrap_or(""), key, &at)?;
                if enabled {
                    let labels: Vec<String> = words.map(str::to_string).collect();
                    ensure!(
                        !labels.is_empty(),
                        "{at}: @classLabel true must list the class labels"
                    );
                    header.class_labels = Some(labels);
                }
            }
            "targetlabel" => {
                if parse_bool(value.split_whitespace().next().unwrap_or(""), key, &at)? {
                    bail!(
                        "{at}: regression targets (@targetLabel true) are not supported; moola \
                         needs class labels"
                    );
                }
            }
            _ => tracing::warn!("{at}: ignoring unknown header @{key}"),
        }
    }
    ensure!(in_data, "{file} has no @data line; is it a .ts file?");
    ensure!(!rows.is_empty(), "{file} has no data rows after @data");
    assemble(rows, &header, file, opts)
}

fn parse_row(line: &str, line_no: usize, row: usize, header: &Header, file: &str) -> Result<Row> {
    let at = format!("{file}: line {line_no} (row {row})");
    ensure!(
        !line.contains('('),
        "{at}: time-stamped values `(t,v)` are not supported"
    );
    let mut parts: Vec<&str> = line.split(':').collect();
    let label = match &header.class_labels {
        Some(classes) => {
            ensure!(
                parts.len() >= 2,
                "{at}: expected `values:...:label`, found no `:` before a class label"
            );
            let label = parts.pop().unwrap_or_default().trim();
            ensure!(
                classes.iter().any(|c| c == label),
                "{at}: class label {label:?} is not declared in @classLabel {classes:?}"
            );
            Some(label.to_string())
        }
        None => None,
    };
    if let Some(dims) = header.dimensions {
        ensure!(
            parts.len() == dims,
            "{at}: {} dimension(s) but the header declares {dims}",
            parts.len()
        );
    }
    let series = parts
        .iter()
        .enumerate()
        .map(|(d, part)| {
            let part = part.trim();
            ensure!(!part.is_empty(), "{at}: dimension {d} has no values");
            part.split(',')
                .enumerate()
                .map(|(t, token)| {
                    let token = token.trim();
                    if token == "?" {
                        return Ok(f32::NAN);
                    }
                    token.parse::<f64>().map(|v| v as f32).map_err(|_| {
                        anyhow::anyhow!("{at}: dimension {d}, value {t}: {token:?} is not a number")
                    })
                })
                .collect()
        })
        .collect::<Result<Vec<Vec<f32>>>>()?;
    Ok(Row {
        line: line_no,
        series,
        label,
    })
}

fn assemble(rows: Vec<Row>, header: &Header, file: &str, opts: &TsOptions) -> Result<WindowSet> {
    let n_features = rows[0].series.len();
    let first_len = rows[0].series[0].len();
    let mut max_len = 0;
    for (r, row) in rows.iter().enumerate() {
        ensure!(
            row.series.len() == n_features,
            "{file}: line {} (row {r}): {} dimension(s) but row 0 has {n_features}",
            row.line,
            row.series.len()
        );
        for (d, s) in row.series.iter().enumerate() {
            max_len = max_len.max(s.len());
            if s.len() != first_len && opts.variable_length == VariableLength::Reject {
                bail!(
                    "{file}: line {} (row {r}): dimension {d} has {} values but row 0 has \
                     {first_len}; the series have unequal lengths (pad them with \
                     VariableLength::PadLast or PadZero)",
                    row.line,
                    s.len()
                );
            }
        }
    }
    if header.equal_length == Some(true)
        && let Some(declared) = header.series_length
    {
        ensure!(
            max_len == declared && first_len == declared,
            "{file}: @seriesLength declares {declared} values per series but the data has \
             {first_len}{}",
            if max_len == first_len {
                String::new()
            } else {
                format!(" to {max_len}")
            }
        );
    }

    let seq_len = max_len;
    let mut x = Vec::with_capacity(rows.len() * seq_len * n_features);
    for row in &rows {
        for t in 0..seq_len {
            for s in &row.series {
                x.push(match s.get(t) {
                    Some(&v) => v,
                    None => match opts.variable_length {
                        VariableLength::PadZero => 0.0,
                        _ => *s.last().expect("series are non-empty"),
                    },
                });
            }
        }
    }
    let ids = (0..rows.len()).map(|i| i.to_string()).collect();
    let labels = header.class_labels.as_ref().map(|_| {
        rows.iter()
            .map(|r| r.label.clone().unwrap_or_default())
            .collect()
    });
    WindowSet::new(ids, x, seq_len, n_features, labels, None)
}
