//! Side-by-side evaluation report: no centroids, centroid mode A and centroid mode B.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::centroids::{CentroidMode, evaluate_centroids};
use super::metrics::{EvalLabels, EvalMetrics, GalleryCamids, TOP_K};
use super::retrieval::{EmbeddingSet, RetrievalOptions, evaluate};

/// Metrics of the three evaluation protocols (a protocol that was not run is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Standard protocol: every gallery image, same-pid-same-camera removal.
    pub no_centroids: Option<EvalMetrics>,
    /// Mode A: one centroid per gallery identity, no camera filtering.
    pub centroids_a: Option<EvalMetrics>,
    /// Mode B: per-query-camera centroids with camera-set filtering.
    pub centroids_b: Option<EvalMetrics>,
    /// Whether mode B reproduced the reference's camera-id bug.
    pub centroids_b_bug_compat: bool,
}

impl EvalReport {
    /// Runs all three protocols on the same embeddings.
    pub fn compute(
        query: EmbeddingSet<'_>,
        gallery: EmbeddingSet<'_>,
        opts: &RetrievalOptions,
        bug_compat: bool,
    ) -> Result<Self> {
        query.validate("evaluation (query)")?;
        gallery.validate("evaluation (gallery)")?;
        let labels = EvalLabels {
            q_pids: query.pids,
            q_camids: query.camids,
            g_pids: gallery.pids,
            g_camids: GalleryCamids::Single(gallery.camids),
        };
        let no_centroids = evaluate(query.features, gallery.features, &labels, opts)
            .context("evaluation without centroids")?;
        let centroids_a = evaluate_centroids(query, gallery, CentroidMode::PerIdentity, opts)
            .context("centroid evaluation, mode A")?;
        let centroids_b =
            evaluate_centroids(query, gallery, CentroidMode::PerCamera { bug_compat }, opts)
                .context("centroid evaluation, mode B")?;
        Ok(EvalReport {
            no_centroids: Some(no_centroids),
            centroids_a: Some(centroids_a),
            centroids_b: Some(centroids_b),
            centroids_b_bug_compat: bug_compat,
        })
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        kiln::io::write_json(path, self)
            .with_context(|| format!("writing evaluation report {}", path.display()))
    }

    /// The report as a fixed-width text table (percentages).
    pub fn table(&self) -> String {
        let b_title = if self.centroids_b_bug_compat {
            "centroids B (bug-compat)"
        } else {
            "centroids B"
        };
        let columns = [
            ("no centroids", &self.no_centroids),
            ("centroids A", &self.centroids_a),
            (b_title, &self.centroids_b),
        ];
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let pct = |m: &Option<EvalMetrics>, f: &dyn Fn(&EvalMetrics) -> f64| {
            m.as_ref()
                .map_or_else(|| "-".to_string(), |m| format!("{:.2}", 100.0 * f(m)))
        };
        rows.push((
            "mAP".into(),
            columns.iter().map(|(_, m)| pct(m, &|m| m.map)).collect(),
        ));
        for k in TOP_K {
            rows.push((
                format!("Rank-{k}"),
                columns
                    .iter()
                    .map(|(_, m)| pct(m, &|m| m.top_k(k).unwrap_or(f64::NAN)))
                    .collect(),
            ));
        }
        let count = |m: &Option<EvalMetrics>, f: &dyn Fn(&EvalMetrics) -> usize| {
            m.as_ref()
                .map_or_else(|| "-".to_string(), |m| f(m).to_string())
        };
        rows.push((
            "valid queries".into(),
            columns
                .iter()
                .map(|(_, m)| count(m, &|m| m.num_valid_query))
                .collect(),
        ));
        rows.push((
            "gallery entries".into(),
            columns
                .iter()
                .map(|(_, m)| count(m, &|m| m.num_gallery))
                .collect(),
        ));

        let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0).max(6);
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(c, (title, _))| {
                rows.iter()
                    .map(|(_, v)| v[c].len())
                    .max()
                    .unwrap_or(0)
                    .max(title.len())
            })
            .collect();
        let mut out = String::new();
        let line = |label: &str, cells: Vec<&str>| {
            let mut s = format!("{label:<label_width$}");
            for (cell, w) in cells.iter().zip(&widths) {
                s.push_str(&format!(" | {cell:>w$}"));
            }
            s.push('\n');
            s
        };
        let header = line("metric", columns.iter().map(|(t, _)| *t).collect());
        out.push_str(&header);
        out.push_str(&"-".repeat(header.trim_end().len()));
        out.push('\n');
        for (label, cells) in &rows {
            out.push_str(&line(label, cells.iter().map(String::as_str).collect()));
        }
        out
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}
