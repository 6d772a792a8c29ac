//! Does self-supervised pre-training help when labels are scarce? Test accuracy of SimpleLSTM
//! and the CNN-Transformer trained on 10%, 25% and 100% of the training labels of the bundled
//! OHLC windows, each from scratch and from the matching pre-trained encoder (masked BiLSTM
//! autoencoder for SimpleLSTM, TS-TCC for the CNN-Transformer), mean over seeds.
//!
//! ```text
//! cargo run --release --example pretrain_transfer -- [--scaling zscore] [--recipe auto]
//!     [--epochs N] [--steps 1000] [--pretrain-epochs 5] [--stride 10] [--seeds 1,2,3] [--full]
//!     [--json out.json]
//! ```
//!
//! * Labelled set: `datasets/ohlc/windows.parquet` (453 windows, up/down), a stratified 20% test
//!   split (seed 1337), the label fractions drawn stratified from the rest per seed.
//! * Unlabelled set: every `--stride`-th 105-bar window of `datasets/ohlc/stocks_daily.csv`
//!   (all five tickers), labels never used.
//! * Sizes: reduced widths by default so that the whole grid runs in minutes on two cores
//!   (SimpleLSTM hidden 32; CNN-Transformer channels [16, 32, 32], 1 layer, 4 heads);
//!   `--full` uses the reference architectures (hours on a CPU).
//! * Input scaling (`--scaling`, default `zscore`, the default of new runs): the same for the
//!   pre-training windows and the classifier (an encoder records it, and a classifier refuses
//!   one pre-trained under another scaling); `--scaling none` is the reference's raw prices.
//! * Recipe (`--recipe`): `auto` (default; the small-data recipe for every label budget here,
//!   `--steps` optimiser steps), `default`, `small_data`, or `reference` (batch 64, `--epochs`,
//!   default 20). `--epochs` sets the epochs of any recipe.
//!
//! The encoder is frozen for the first half of the epochs, then unfrozen (SimpleLSTM with the
//! reference's learning-rate factor 0.3; the CNN-Transformer in three stages).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln::backend::Autodiff;
use kiln::backend::CpuBackend;
use moola::Classifier;
use moola::data::{LabelMap, OhlcOptions, WindowSet, read_any, windows_from_ohlc_csv};
use moola::model::{CnnTransformerConfig, ModelSpec, SimpleLstmConfig};
use moola::pretrain::{masked_lstm, ts_tcc};
use moola::scaling::InputScaling;
use moola::train::{EncoderTransfer, RunOptions, SmallData, TrainConfig};
use serde::Serialize;

type B = Autodiff<CpuBackend>;

struct Args {
    epochs: Option<usize>,
    steps: Option<usize>,
    scaling: InputScaling,
    recipe: String,
    pretrain_epochs: usize,
    stride: usize,
    seeds: Vec<u64>,
    full: bool,
    json: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        epochs: None,
        steps: None,
        scaling: moola::scaling::DEFAULT_SCALING,
        recipe: "auto".to_string(),
        pretrain_epochs: 5,
        stride: 10,
        seeds: vec![1, 2, 3],
        full: false,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = Some(value()?.parse()?),
            "--steps" => a.steps = Some(value()?.parse()?),
            "--scaling" => {
                a.scaling = serde_json::from_value(serde_json::Value::String(value()?)).context(
                    "--scaling: none, zscore, relative_close, relative_open, log_returns",
                )?
            }
            "--recipe" => a.recipe = value()?,
            "--pretrain-epochs" => a.pretrain_epochs = value()?.parse()?,
            "--stride" => a.stride = value()?.parse()?,
            "--seeds" => {
                a.seeds = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--full" => a.full = true,
            "--json" => a.json = Some(value()?.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[derive(Serialize)]
struct Row {
    model: String,
    fraction: f64,
    encoder: bool,
    accuracies: Vec<f64>,
    mean: f64,
}

fn accuracy(clf: &Classifier<B>, test: &WindowSet) -> Result<f64> {
    let predicted = clf.predict(test)?;
    let truth = test.require_labels()?;
    let hits = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    Ok(hits as f64 / truth.len() as f64)
}

/// A stratified `fraction` of `set` (all of it at 1.0).
fn subsample(set: &WindowSet, fraction: f64, seed: u64) -> Result<WindowSet> {
    if fraction >= 1.0 {
        return Ok(set.clone());
    }
    let labels = set.require_labels()?;
    let y = LabelMap::fit(labels).encode(labels)?;
    let mut rng = kiln::seed::rng(seed, "label_fraction", 0);
    let (_, keep) = kiln::data::stratified_split(&y, fraction, &mut rng)?;
    Ok(set.select(&keep))
}

fn main() -> Result<()> {
    kiln::alloc::retain_freed_memory();
    kiln::progress::init_logging("warn");
    let a = args()?;
    let device = Default::default();
    let labelled = read_any(Path::new("datasets/ohlc/windows.parquet"))?;
    let y = {
        let l = labelled.require_labels()?;
        LabelMap::fit(l).encode(l)?
    };
    let mut rng = kiln::seed::rng(1337, "test_split", 0);
    let (train_idx, test_idx) = kiln::data::stratified_split(&y, 0.2, &mut rng)?;
    let (train, test) = (labelled.select(&train_idx), labelled.select(&test_idx));
    let unlabelled = windows_from_ohlc_csv(
        Path::new("datasets/ohlc/stocks_daily.csv"),
        &OhlcOptions {
            stride: a.stride,
            ..OhlcOptions::default()
        },
    )?;
    println!(
        "labelled: {} train / {} test windows; unlabelled: {} windows (stride {}); input \
         scaling {}, recipe {}",
        train.len(),
        test.len(),
        unlabelled.len(),
        a.stride,
        a.scaling,
        a.recipe
    );

    let lstm = if a.full {
        SimpleLstmConfig::default()
    } else {
        SimpleLstmConfig {
            hidden_size: 32,
            ..SimpleLstmConfig::default()
        }
    };
    let cnnt = if a.full {
        CnnTransformerConfig::default()
    } else {
        CnnTransformerConfig {
            cnn_channels: vec![16, 32, 32],
            transformer_layers: 1,
            ..CnnTransformerConfig::default()
        }
    };
    let dir = tempfile_dir()?;

    // Pre-training, once per model (seed 1337).
    let started = std::time::Instant::now();
    let masked = masked_lstm::pretrain::<B>(
        &masked_lstm::MaskedLstmPretrainConfig {
            hidden_dim: lstm.hidden_size,
            n_epochs: a.pretrain_epochs,
            batch_size: 128,
            scaling: a.scaling,
            ..Default::default()
        },
        &unlabelled,
        &device,
        &RunOptions::default(),
    )?;
    let lstm_encoder = dir.join("masked_lstm");
    masked.save_encoder(&lstm_encoder)?;
    println!(
        "masked-LSTM pre-training: {} epochs in {:.1} s",
        masked.epochs,
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let tcc = ts_tcc::pretrain::<B>(
        &ts_tcc::TsTccPretrainConfig {
            model: ts_tcc::TsTccConfig::from_classifier(&cnnt),
            n_epochs: a.pretrain_epochs,
            batch_size: 128,
            scaling: a.scaling,
            ..Default::default()
        },
        &unlabelled,
        &device,
        &RunOptions::default(),
    )?;
    let cnnt_encoder = dir.join("ts_tcc");
    tcc.save_encoder(&cnnt_encoder)?;
    println!(
        "TS-TCC pre-training: {} epochs in {:.1} s",
        tcc.epochs,
        started.elapsed().as_secs_f64()
    );

    let models = [
        ("simple_lstm", ModelSpec::SimpleLstm(lstm), lstm_encoder),
        (
            "cnn_transformer",
            ModelSpec::CnnTransformer(cnnt),
            cnnt_encoder,
        ),
    ];
    let mut rows = Vec::new();
    println!(
        "\n{:<16} {:>8} {:>8} {:>9}   per seed",
        "model", "labels", "encoder", "test acc"
    );
    for (name, spec, encoder) in &models {
        for fraction in [0.1, 0.25, 1.0] {
            for with_encoder in [false, true] {
                let mut accuracies = Vec::new();
                for &seed in &a.seeds {
                    let labelled = subsample(&train, fraction, seed)?;
                    let mut recipe = recipe_for(&a, name, labelled.len())?;
                    let half = recipe.n_epochs / 2;
                    recipe.seed = seed;
                    recipe.scaling = a.scaling;
                    recipe.encoder = EncoderTransfer {
                        path: with_encoder.then(|| encoder.clone()),
                        unfreeze_after: half,
                        unfreeze_schedule: vec![half, half, half],
                        ..EncoderTransfer::default()
                    };
                    let mut clf = Classifier::<B>::new(spec.clone(), recipe, device);
                    clf.fit(&labelled)?;
                    accuracies.push(accuracy(&clf, &test)?);
                }
                let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
                println!(
                    "{name:<16} {:>7.0}% {:>8} {mean:>9.3}   {}",
                    fraction * 100.0,
                    if with_encoder { "yes" } else { "no" },
                    accuracies
                        .iter()
                        .map(|v| format!("{v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                rows.push(Row {
                    model: name.to_string(),
                    fraction,
                    encoder: with_encoder,
                    accuracies,
                    mean,
                });
            }
        }
    }
    if let Some(path) = a.json {
        kiln::io::write_json(&path, &rows)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The recipe of `name` for `n` labelled windows under `--recipe`, `--epochs` and `--steps`.
fn recipe_for(a: &Args, name: &str, n: usize) -> Result<TrainConfig> {
    let rule = SmallData {
        steps: a.steps.unwrap_or(SmallData::default().steps),
        ..SmallData::default()
    };
    let mut recipe = match a.recipe.as_str() {
        "auto" if rule.applies(n) => rule.recipe(name, n),
        "auto" | "default" => TrainConfig::for_model(name),
        "small_data" => rule.recipe(name, n),
        "reference" => TrainConfig {
            n_epochs: 20,
            batch_size: 64,
            early_stopping_patience: 20,
            ..TrainConfig::reference(name)
        },
        other => bail!("--recipe: auto, default, small_data or reference, not {other}"),
    };
    if let Some(e) = a.epochs {
        recipe.n_epochs = e;
        recipe.early_stopping_patience = e;
    }
    Ok(recipe)
}

/// A scratch directory for the encoders, removed at exit by the OS's temp cleaning.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pretrain_transfer_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
