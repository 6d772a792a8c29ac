//! `moola benchmark-data`: accuracy of every model on every bundled data set, mean and spread
//! over seeds, next to published accuracies (the results table of `docs/moola-learning.md`).
//!
//! Rows are `model/recipe/scaling`:
//!
//! * the networks (`simple_lstm`, `cnn_transformer`, `rwkv_ts`) in the `reference` recipe and
//!   in the `small_data` recipe ([`crate::train::SmallData`]), each with raw inputs (`none`)
//!   and with the default input scaling (`zscore`), 12 rows;
//! * `minirocket` (MiniRocket + ridge, [`crate::classical::minirocket`]) with both scalings.
//!
//! Data sets and protocol:
//!
//! * `basic_motions`, `italy_power_demand`: fit on the official training split, accuracy on
//!   the official test split (`datasets/<Name>/<Name>_{TRAIN,TEST}.ts`);
//! * `ohlc`: out-of-fold accuracy of 5 stratified folds (drawn with the seed) over
//!   `datasets/ohlc/windows.parquet`, the CNN-Transformer with its pointer heads (the windows
//!   carry expansion indices, as `moola oof` does).
//!
//! A seed sets the model's initialisation, shuffling, validation split and draws, and the OHLC
//! folds. `KEY VALUE` overrides apply to every row (e.g. `rwkv_ts.model.readout mean`), then
//! the row's recipe and scaling. `--max-epochs` caps the reference recipe's epochs and
//! `--steps` sets the small-data recipe's steps, to bound the run time; the table states both.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::backend::BackendJob;
use serde::Serialize;

use crate::Estimator;
use crate::classifier::Classifier;
use crate::config::MoolaConfig;
use crate::data::{LabelMap, WindowSet, read_any};
use crate::model::ModelSpec;
use crate::run::RunOptions;
use kiln::cli::Overrides;

/// `benchmark-data` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchmarkDataArgs {
    /// Seeds (the table's spread is over these).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// Data sets: basic_motions, italy_power_demand, ohlc.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "basic_motions,italy_power_demand,ohlc"
    )]
    pub datasets: Vec<String>,
    /// Rows as `model/recipe/scaling` (recipe: reference or small_data, ignored for
    /// minirocket); default: all 14.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Directory holding the bundled data sets.
    #[arg(long, default_value = "datasets")]
    pub datasets_dir: PathBuf,
    /// Cap on the reference recipe's epochs (its own is 60).
    #[arg(long)]
    pub max_epochs: Option<usize>,
    /// Optimiser steps of the small-data recipe (`small_data.steps`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Folds of the OHLC out-of-fold accuracy.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Write every result (per seed, with times) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `KEY VALUE` overrides applied to every row.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Model name.
    pub model: String,
    /// `reference` or `small_data` (`-` for MiniRocket).
    pub recipe: String,
    /// Input scaling name.
    pub scaling: String,
}

impl Row {
    fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let (model, recipe, scaling) = match parts.as_slice() {
            [m, r, s] => (*m, *r, *s),
            [m, s] if *m == crate::classical::MINIROCKET => (*m, "-", *s),
            _ => bail!("a row is model/recipe/scaling (minirocket/scaling), got {s:?}"),
        };
        let is_deep = crate::config::DEEP_MODELS.contains(&model);
        if !is_deep && model != crate::classical::MINIROCKET {
            bail!("unknown model {model:?} in row {s:?}");
        }
        if is_deep && !["reference", "small_data"].contains(&recipe) {
            bail!("the recipe of row {s:?} must be reference or small_data");
        }
        let scaling: crate::scaling::InputScaling =
            serde_json::from_value(serde_json::Value::String(scaling.to_string()))
                .with_context(|| format!("unknown input scaling in row {s:?}"))?;
        Ok(Self {
            model: model.to_string(),
            recipe: if is_deep { recipe } else { "-" }.to_string(),
            scaling: scaling.to_string(),
        })
    }

    fn label(&self) -> String {
        if self.recipe == "-" {
            format!("{}/{}", self.model, self.scaling)
        } else {
            format!("{}/{}/{}", self.model, self.recipe, self.scaling)
        }
    }
}

/// Every row, in table order.
pub fn all_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for model in crate::config::DEEP_MODELS {
        for recipe in ["reference", "small_data"] {
            for scaling in ["none", "zscore"] {
                rows.push(Row {
                    model: model.into(),
                    recipe: recipe.into(),
                    scaling: scaling.into(),
                });
            }
        }
    }
    for scaling in ["none", "zscore"] {
        rows.push(Row {
            model: crate::classical::MINIROCKET.into(),
            recipe: "-".into(),
            scaling: scaling.into(),
        });
    }
    rows
}

/// A bundled data set and its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dataset {
    BasicMotions,
    ItalyPowerDemand,
    Ohlc,
}

impl Dataset {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "basic_motions" => Self::BasicMotions,
            "italy_power_demand" => Self::ItalyPowerDemand,
            "ohlc" => Self::Ohlc,
            other => bail!(
                "unknown data set {other:?}: expected basic_motions, italy_power_demand or ohlc"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::BasicMotions => "basic_motions",
            Self::ItalyPowerDemand => "italy_power_demand",
            Self::Ohlc => "ohlc",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::BasicMotions => "BasicMotions (test)",
            Self::ItalyPowerDemand => "ItalyPowerDemand (test)",
            Self::Ohlc => "OHLC windows (5-fold OOF)",
        }
    }

    /// Published accuracies (test split) for the table's footer.
    fn published(self) -> &'static str {
        match self {
            Self::BasicMotions => "1.00 (ROCKET, MiniRocket, InceptionTime, HIVE-COTE 2)",
            Self::ItalyPowerDemand => {
                "InceptionTime 0.965, ROCKET 0.970, MiniRocket 0.960 (mean of 30 resamples), \
                 HIVE-COTE 2 0.970"
            }
            Self::Ohlc => "none (this project's set; rf / xgb on hand-made features: 1.000)",
        }
    }
}

/// The data of one data set: (train, test) or the whole labelled set for out-of-fold.
enum Loaded {
    Split(WindowSet, WindowSet),
    Folds(WindowSet),
}

fn load(dir: &std::path::Path, d: Dataset) -> Result<Loaded> {
    let ucr = |name: &str| -> Result<Loaded> {
        let base = dir.join(name);
        Ok(Loaded::Split(
            read_any(&base.join(format!("{name}_TRAIN.ts")))?,
            read_any(&base.join(format!("{name}_TEST.ts")))?,
        ))
    };
    match d {
        Dataset::BasicMotions => ucr("BasicMotions"),
        Dataset::ItalyPowerDemand => ucr("ItalyPowerDemand"),
        Dataset::Ohlc => Ok(Loaded::Folds(
            crate::oof::oof_rows(read_any(&dir.join("ohlc/windows.parquet"))?)?.0,
        )),
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Data set.
    pub dataset: String,
    /// Row label `model/recipe/scaling`.
    pub row: String,
    /// Seed.
    pub seed: u64,
    /// Test or out-of-fold accuracy.
    pub accuracy: f64,
    /// Wall time of the fit(s) and predictions, seconds.
    pub seconds: f64,
}

/// The `benchmark-data` job.
pub struct BenchmarkData {
    /// Arguments.
    pub args: BenchmarkDataArgs,
    /// `--config-file`, under every row.
    pub config_file: Option<PathBuf>,
    /// The command line's overrides (its `KEY VALUE` pairs and global flags), under every row.
    pub overrides: Vec<String>,
}

/// The configuration of a row for a training set of `n` windows.
fn row_config(
    row: &Row,
    file: Option<&std::path::Path>,
    base: &[String],
    args: &BenchmarkDataArgs,
    seed: u64,
    n: usize,
) -> Result<MoolaConfig> {
    let mut ov: Vec<String> = base.to_vec();
    let mut set = |k: &str, v: String| ov.extend([k.to_string(), v]);
    set("seed", seed.to_string());
    if row.recipe != "-" {
        set("recipe", row.recipe.clone());
        set(&format!("{}.train.scaling", row.model), row.scaling.clone());
        if let Some(s) = args.steps {
            set("small_data.steps", s.to_string());
        }
    } else {
        set("minirocket.scaling", row.scaling.clone());
    }
    let cfg = MoolaConfig::load(file, &ov)?.for_windows(n)?;
    if row.recipe == "reference"
        && let Some(cap) = args.max_epochs
    {
        // The cap applies over the config (not as an override, to keep a user's smaller value).
        let mut cfg = cfg;
        let t = cfg.train_mut(&row.model)?;
        t.n_epochs = t.n_epochs.min(cap);
        return Ok(cfg);
    }
    Ok(cfg)
}

/// A fresh estimator of a row.
fn estimator<B: AutodiffBackend>(
    row: &Row,
    cfg: &MoolaConfig,
    data: &WindowSet,
    device: &B::Device,
) -> Result<Box<dyn Estimator>> {
    if row.recipe == "-" {
        return Ok(Box::new(cfg.classical(&row.model)?));
    }
    let (mut spec, train) = cfg.model(&row.model)?;
    if let ModelSpec::CnnTransformer(c) = &mut spec {
        c.predict_pointers = data.expansion.is_some()
            && crate::model::InnerWindow::default_for(data.seq_len).is_some();
    }
    Ok(Box::new(
        Classifier::<B>::new(spec, train, device.clone()).with_run_options(RunOptions::default()),
    ))
}

fn accuracy(model: &dyn Estimator, test: &WindowSet) -> Result<f64> {
    let proba = model.predict_proba(test)?;
    let classes = model.classes()?;
    let truth = test.require_labels()?;
    let hits = proba
        .iter()
        .zip(truth)
        .filter(|(p, t)| classes[kiln::metrics::argmax(p)] == **t)
        .count();
    Ok(hits as f64 / truth.len().max(1) as f64)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

impl BackendJob for BenchmarkData {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        if args.seeds.is_empty() {
            bail!("--seeds needs at least one seed");
        }
        let rows = if args.rows.is_empty() {
            all_rows()
        } else {
            args.rows
                .iter()
                .map(|r| Row::parse(r))
                .collect::<Result<_>>()?
        };
        let datasets: Vec<Dataset> = args
            .datasets
            .iter()
            .map(|d| Dataset::parse(d))
            .collect::<Result<_>>()?;
        let base = self.overrides;
        let file = self.config_file.as_deref();
        let started = Instant::now();
        let mut results: Vec<Measurement> = Vec::new();
        for &d in &datasets {
            let loaded = load(&args.datasets_dir, d).with_context(|| {
                format!("loading {} from {}", d.name(), args.datasets_dir.display())
            })?;
            for row in &rows {
                for &seed in &args.seeds {
                    let t0 = Instant::now();
                    let acc = match &loaded {
                        Loaded::Split(train, test) => {
                            let cfg = row_config(row, file, &base, &args, seed, train.len())?;
                            let mut m = estimator::<B>(row, &cfg, train, &device)?;
                            m.fit(train)?;
                            accuracy(m.as_ref(), test)?
                        }
                        Loaded::Folds(all) => {
                            let labels = all.require_labels()?;
                            let y = LabelMap::fit(labels).encode(labels)?;
                            let folds = crate::splits::make_folds(&y, args.folds, seed)?;
                            let n = all.len() - all.len() / args.folds.max(1);
                            let cfg = row_config(row, file, &base, &args, seed, n)?;
                            crate::oof::generate_oof(
                                |_| estimator::<B>(row, &cfg, all, &device),
                                all,
                                &folds,
                            )?
                            .accuracy
                        }
                    };
                    let seconds = t0.elapsed().as_secs_f64();
                    println!(
                        "{:<20} {:<34} seed {seed}: accuracy {acc:.4} ({seconds:.1} s)",
                        d.name(),
                        row.label()
                    );
                    results.push(Measurement {
                        dataset: d.name().into(),
                        row: row.label(),
                        seed,
                        accuracy: acc,
                        seconds,
                    });
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        print_table(&rows, &datasets, &results, &args, wall);
        if let Some(path) = &args.json {
            kiln::io::write_json(
                path,
                &serde_json::json!({
                    "seeds": args.seeds,
                    "max_epochs": args.max_epochs,
                    "steps": args.steps,
                    "folds": args.folds,
                    "overrides": base,
                    "wall_seconds": wall,
                    "results": results,
                }),
            )?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn print_table(
    rows: &[Row],
    datasets: &[Dataset],
    results: &[Measurement],
    args: &BenchmarkDataArgs,
    wall: f64,
) {
    println!();
    println!(
        "accuracy, mean ± standard deviation over seeds {:?}; reference recipe epochs {}; \
         small-data steps {}",
        args.seeds,
        args.max_epochs
            .map_or("as configured (60)".to_string(), |m| format!(
                "capped at {m}"
            )),
        args.steps
            .map_or("as configured (1000)".to_string(), |s| s.to_string())
    );
    println!();
    let mut header = "| model | recipe | scaling |".to_string();
    let mut rule = "|---|---|---|".to_string();
    for d in datasets {
        header.push_str(&format!(" {} |", d.title()));
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for row in rows {
        let mut line = format!("| {} | {} | {} |", row.model, row.recipe, row.scaling);
        for d in datasets {
            let v: Vec<f64> = results
                .iter()
                .filter(|m| m.dataset == d.name() && m.row == row.label())
                .map(|m| m.accuracy)
                .collect();
            let secs: f64 = results
                .iter()
                .filter(|m| m.dataset == d.name() && m.row == row.label())
                .map(|m| m.seconds)
                .sum::<f64>()
                / v.len().max(1) as f64;
            if v.is_empty() {
                line.push_str(" – |");
            } else {
                let (mean, std) = mean_std(&v);
                line.push_str(&format!(" {mean:.3} ± {std:.3} ({secs:.0} s) |"));
            }
        }
        println!("{line}");
    }
    println!();
    for d in datasets {
        println!("published, {}: {}", d.title(), d.published());
    }
    println!(
        "wall time {:.0} s ({:.1} min); per cell: mean seconds per seed",
        wall,
        wall / 60.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_name_errors() {
        assert_eq!(all_rows().len(), 14);
        let r = Row::parse("rwkv_ts/small_data/zscore").unwrap();
        assert_eq!(r.label(), "rwkv_ts/small_data/zscore");
        assert_eq!(
            Row::parse("minirocket/none").unwrap().label(),
            "minirocket/none"
        );
        for bad in [
            "lstm/reference/none",
            "simple_lstm/fast/none",
            "simple_lstm/reference/z",
        ] {
            assert!(Row::parse(bad).is_err(), "{bad}");
        }
        assert!(Dataset::parse("gunpoint").is_err());
        let (m, s) = mean_std(&[0.5, 1.0, 0.75]);
        assert!((m - 0.75).abs() < 1e-12 && (s - 0.25).abs() < 1e-12);
    }
}
