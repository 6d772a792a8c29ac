//! The per-run CSV metrics log (`metrics.csv`), Lightning's `CSVLogger` counterpart.
//!
//! One row per epoch, one column per metric name ever logged (empty where an epoch did not log
//! it, e.g. validation metrics on epochs without validation). The whole file is rewritten
//! atomically after every epoch, so it is always complete and parseable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Metrics of one epoch.
pub type Row = BTreeMap<String, f64>;

/// An epoch-indexed metrics table backed by a CSV file.
#[derive(Debug, Default)]
pub struct MetricLog {
    path: Option<PathBuf>,
    rows: Vec<(usize, Row)>,
}

impl MetricLog {
    /// A log that is only kept in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A log written to `path`, starting empty (an existing file is replaced on first write).
    pub fn create(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            rows: Vec::new(),
        }
    }

    /// Re-opens the log of a run being resumed, keeping the rows of epochs before `epoch`.
    pub fn resume(path: impl Into<PathBuf>, epoch: usize) -> Result<Self> {
        let path = path.into();
        let mut rows = Vec::new();
        if path.exists() {
            for (e, row) in read_csv(&path)? {
                if e < epoch {
                    rows.push((e, row));
                }
            }
        }
        Ok(Self {
            path: Some(path),
            rows,
        })
    }

    /// Appends one epoch's metrics and rewrites the file.
    pub fn log(&mut self, epoch: usize, row: Row) -> Result<()> {
        self.rows.push((epoch, row));
        self.flush()
    }

    /// All rows, in epoch order.
    pub fn rows(&self) -> &[(usize, Row)] {
        &self.rows
    }

    fn flush(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let columns: BTreeSet<&String> = self.rows.iter().flat_map(|(_, r)| r.keys()).collect();
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["epoch".to_string()];
        header.extend(columns.iter().map(|c| c.to_string()));
        w.write_record(&header)?;
        for (epoch, row) in &self.rows {
            let mut rec = vec![epoch.to_string()];
            rec.extend(
                columns
                    .iter()
                    .map(|c| row.get(*c).map(|v| format!("{v}")).unwrap_or_default()),
            );
            w.write_record(&rec)?;
        }
        let bytes = w.into_inner().context("cannot encode metrics CSV")?;
        crate::files::io::write_atomic(path, &bytes)
    }
}

/// Reads a metrics CSV written by [`MetricLog`].
pub fn read_csv(path: &Path) -> Result<Vec<(usize, Row)>> {
    let mut r = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read metrics log {}", path.display()))?;
    let header: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: bad row {}", path.display(), i + 2))?;
        let epoch: usize = rec
            .get(0)
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{}: bad epoch in row {}", path.display(), i + 2))?;
        let mut row = Row::new();
        for (name, cell) in header.iter().zip(rec.iter()).skip(1) {
            if !cell.is_empty() {
                let v: f64 = cell.parse().with_context(|| {
                    format!(
                        "{}: bad value `{cell}` for {name} in row {}",
                        path.display(),
                        i + 2
                    )
                })?;
                row.insert(name.clone(), v);
            }
        }
        out.push((epoch, row));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_columns_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let mut log = MetricLog::create(&path);
        log.log(0, [("train_loss".to_string(), 1.5)].into())
            .unwrap();
        log.log(
            1,
            [
                ("train_loss".to_string(), 1.0),
                ("val_acc".to_string(), 0.5),
            ]
            .into(),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "epoch,train_loss,val_acc\n0,1.5,\n1,1,0.5\n");
        let resumed = MetricLog::resume(&path, 1).unwrap();
        assert_eq!(resumed.rows().len(), 1);
        assert_eq!(resumed.rows()[0].1["train_loss"], 1.5);
    }
}
