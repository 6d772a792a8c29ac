//! Quickstart: train and evaluate on the real data bundled in `datasets/`, print the metrics.
//!
//! ```text
//! cargo run --release --example quickstart            # everything
//! cargo run --release --example quickstart -- moola   # only the moola classifiers
//! cargo run --release --example quickstart -- reid    # only the reid CTL model
//! ```
//!
//! moola: SimpleLSTM, CNN-Transformer and RWKV-TS on the UCR BasicMotions set (40 train / 40 test
//! multivariate accelerometer series, 4 classes), with the reference recipe adapted to the tiny
//! set (batch 8, up to 150 epochs, early stopping on a 15% validation split), then tested on the
//! official test split.
//!
//! reid: the CTL model (centroid triplet + triplet + center + label-smoothed CE, P×K sampling
//! with mock padding) with a small backbone (ResNet18, 512-d) at a small input size (32×32),
//! trained from scratch for a few minutes on the bundled Fashion-MNIST retrieval set (10
//! classes as identities, Market1501 layout), evaluated before and after training with and
//! without gallery centroids. Models and reports go to `artifacts/quickstart/`.

use std::path::Path;

use anyhow::Result;
use kiln::backend::Autodiff;
use kiln::backend::CpuBackend;
use kiln::metrics::ClassificationReport;
use moola::Classifier;
use moola::config::MoolaConfig;
use moola::data::{LabelMap, read_any};

type B = Autodiff<CpuBackend>;

fn moola_quickstart(out: &Path) -> Result<()> {
    let train = read_any(Path::new("datasets/BasicMotions/BasicMotions_TRAIN.ts"))?;
    let test = read_any(Path::new("datasets/BasicMotions/BasicMotions_TEST.ts"))?;
    println!(
        "== moola on BasicMotions: {} train / {} test windows of {}×{}",
        train.len(),
        test.len(),
        train.seq_len,
        train.n_features
    );
    let mut overrides = Vec::new();
    for m in ["simple_lstm", "cnn_transformer", "rwkv_ts"] {
        for (k, v) in [("batch_size", "8"), ("n_epochs", "150")] {
            overrides.push(format!("{m}.train.{k}"));
            overrides.push(v.to_string());
        }
    }
    // The reference RWKV-TS classifies from its last step, whose receptive field is the last
    // 9 steps; on whole-series tasks the mean readout (an option of this port) is the fair one.
    overrides.extend(["rwkv_ts.model.readout".to_string(), "mean".to_string()]);
    let cfg = MoolaConfig::load(None, &overrides)?;
    let mut rows = Vec::new();
    for name in ["simple_lstm", "cnn_transformer", "rwkv_ts"] {
        let (spec, recipe) = cfg.model(name)?;
        let started = std::time::Instant::now();
        let mut clf = Classifier::<B>::new(spec, recipe, Default::default());
        let fit = clf.fit(&train)?;
        let labels: LabelMap = clf.labels()?;
        let y = labels.encode(test.require_labels()?)?;
        let report = ClassificationReport::from_probabilities(&y, &clf.predict_proba(&test)?)?;
        clf.save(&out.join(name))?;
        kiln::io::write_json(out.join(format!("{name}_test_metrics.json")), &report)?;
        println!(
            "{name:<16} {:>7} params  {:>3} epochs  {:>5.1} s  test: {}",
            fit.num_params,
            fit.epochs,
            started.elapsed().as_secs_f64(),
            report.summary()
        );
        rows.push((name, report.accuracy));
    }
    println!(
        "BasicMotions test accuracy: {}",
        rows.iter()
            .map(|(n, a)| format!("{n} {a:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn reid_quickstart(out: &Path) -> Result<()> {
    use reid::cli::StepKind;
    use reid::config::ReidConfig;
    use reid::train::{FitOptions, fit};

    let opts: Vec<String> = [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.NAMES", "market1501"),
        ("DATASETS.ROOT_DIR", "datasets/fashion-mnist-reid"),
        ("INPUT.SIZE_TRAIN", "[32, 32]"),
        ("INPUT.SIZE_TEST", "[32, 32]"),
        // 10 px of padding is a third of a 32-px image: shift by at most 4 instead.
        ("INPUT.PADDING", "4"),
        ("SOLVER.IMS_PER_BATCH", "8"),
        ("SOLVER.BASE_LR", "1e-3"),
        ("SOLVER.MAX_EPOCHS", "8"),
        ("SOLVER.WARMUP_EPOCHS", "1"),
        ("SOLVER.LR_STEPS", "[6]"),
        ("SOLVER.EVAL_PERIOD", "4"),
        ("DATALOADER.USE_RESAMPLING", "False"),
        ("OUTPUT_DIR", &out.join("reid").display().to_string()),
        ("REPRODUCIBLE", "True"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    let cfg = ReidConfig::load(Some(Path::new("configs/256_resnet50.yml")), &opts)?;
    cfg.validate()?;
    let dataset = reid::data::load_dataset(&cfg)?;
    println!(
        "== reid (CTL model, ResNet18, 32×32) on Fashion-MNIST-as-identities: {}",
        dataset.summary()
    );
    let options = FitOptions {
        evaluate_before: true,
        ..FitOptions::default()
    };
    let started = std::time::Instant::now();
    let run = fit::<B>(
        &cfg,
        &dataset,
        StepKind::Ctl,
        cfg.reproducible_seed,
        &options,
        &Default::default(),
    )?;
    let before = run.before.as_ref().expect("evaluated before training");
    println!("untrained model:\n{}", before.table());
    println!(
        "after {} epochs ({:.0} s):\n{}",
        run.epochs,
        started.elapsed().as_secs_f64(),
        run.test.table()
    );
    let (b, a) = (
        before.no_centroids.as_ref().expect("metrics"),
        run.test.no_centroids.as_ref().expect("metrics"),
    );
    println!(
        "mAP {:.1} → {:.1}, R1 {:.1} → {:.1} (no centroids); run directory {}",
        100.0 * b.map,
        100.0 * a.map,
        100.0 * b.top1,
        100.0 * a.top1,
        run.run_dir.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    kiln::alloc::retain_freed_memory();
    kiln::progress::init_logging("warn");
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let out = Path::new("artifacts/quickstart");
    std::fs::create_dir_all(out)?;
    if which == "all" || which == "moola" {
        moola_quickstart(out)?;
    }
    if which == "all" || which == "reid" {
        reid_quickstart(out)?;
    }
    Ok(())
}
