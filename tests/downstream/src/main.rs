//! A user's program on kiln, moola and reid, built outside their workspace.
//!
//! `kiln-downstream` (or `kiln-downstream check`) trains a moola classifier and a reid model for
//! a couple of steps, saves, loads and predicts, and checks what comes back; it exits non-zero
//! when a check fails. `kiln-downstream moola ARGS...` and `kiln-downstream reid ARGS...` run the
//! two command-line tools from this build (e.g. their `bench` commands, to compare this build's
//! speed with the workspace's own binaries).
//!
//! Run from anywhere; the bundled data sets are found next to this crate (`../../datasets`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use kiln::backend::{Autodiff, CpuBackend};
use kiln::burn::tensor::{Distribution, Tensor};
use moola::Classifier;
use moola::data::read_any;
use moola::model::{ModelSpec, SimpleLstmConfig};
use moola::train::TrainConfig;
use reid::data::{SyntheticSpec, write_synthetic_market1501};
use reid::{Learner, ReidConfig, StepKind};

type B = Autodiff<CpuBackend>;

fn main() {
    kiln::cli::reset_sigpipe();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        None | Some("check") => check(),
        // The two tools exactly as their own binaries run them.
        Some("moola") => moola::cli::main_with(args[1..].to_vec()),
        Some("reid") => reid::cli::main_with(args[1..].to_vec()),
        Some(other) => Err(anyhow::anyhow!(
            "unknown command `{other}`: expected check, moola or reid"
        )),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn datasets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn check() -> Result<()> {
    kiln::progress::init_logging("warn");
    let scratch = std::env::temp_dir().join(format!("kiln-downstream-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = check_backend()
        .and_then(|()| check_moola(&scratch))
        .and_then(|()| check_reid(&scratch));
    std::fs::remove_dir_all(&scratch).ok();
    result?;
    println!("downstream: all checks passed");
    Ok(())
}

/// The CPU backend this crate gets through kiln is kiln's patched burn-flex, not the crates.io
/// release: its vectorised sigmoid returns an exact 0 far below zero, where upstream's libm
/// path returns a subnormal (vendor/burn-flex/FIX.md, patch 2).
fn check_backend() -> Result<()> {
    let device = Default::default();
    let x = Tensor::<CpuBackend, 1>::from_floats([-100.0, 0.0, 100.0], &device);
    let y: Vec<f32> = kiln::burn::tensor::activation::sigmoid(x)
        .into_data()
        .to_vec()
        .unwrap();
    ensure!(
        y == [0.0, 0.5, 1.0],
        "the CPU backend is not kiln's burn-flex: sigmoid([-100, 0, 100]) = {y:?}"
    );
    println!("backend: kiln's burn-flex fork (sigmoid signature {y:?})");
    Ok(())
}

/// A SimpleLSTM on BasicMotions: two epochs, save, load, predict.
fn check_moola(scratch: &Path) -> Result<()> {
    let dir = datasets().join("BasicMotions");
    let train = read_any(&dir.join("BasicMotions_TRAIN.ts"))?;
    let test = read_any(&dir.join("BasicMotions_TEST.ts"))?;
    let spec = ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.1,
    });
    let recipe = TrainConfig {
        n_epochs: 2,
        batch_size: 16,
        ..TrainConfig::for_model("simple_lstm")
    };
    let fit = |seed| -> Result<(Classifier<B>, Vec<Vec<f64>>)> {
        let mut clf =
            Classifier::<B>::new(spec.clone(), recipe.clone(), Default::default()).with_seed(seed);
        let report = clf.fit_with_validation(&train, &test)?;
        ensure!(
            report.epochs == 2,
            "moola trained {} epochs, not 2",
            report.epochs
        );
        let proba = clf.predict_proba(&test)?;
        Ok((clf, proba))
    };
    let (clf, proba) = fit(7)?;
    ensure!(
        proba.len() == test.len(),
        "moola: {} predictions",
        proba.len()
    );
    for (i, row) in proba.iter().enumerate() {
        ensure!(
            row.len() == 4 && (row.iter().sum::<f64>() - 1.0).abs() < 1e-6,
            "moola: probabilities of series {i} are {row:?}"
        );
    }
    // Same seed, same model; another seed, another one.
    ensure!(
        fit(7)?.1 == proba,
        "moola: the same seed gave another model"
    );
    ensure!(
        fit(8)?.1 != proba,
        "moola: seeds 7 and 8 gave the same model"
    );

    let path = scratch.join("moola/model");
    clf.save(&path)?;
    let loaded = Classifier::<B>::load(&path, recipe, Default::default())?;
    ensure!(
        loaded.predict_proba(&test)? == proba,
        "moola: the loaded model predicts other probabilities"
    );
    let labels = loaded.predict(&test)?;
    let y = test.require_labels()?;
    let accuracy =
        labels.iter().zip(y).filter(|(p, t)| p == t).count() as f64 / labels.len() as f64;
    println!(
        "moola: SimpleLSTM, 2 epochs on BasicMotions, saved and loaded: test accuracy {accuracy:.3}"
    );
    Ok(())
}

/// A ResNet18 CTL run on a synthetic Market1501 tree: one epoch, the checkpoint loaded back.
fn check_reid(scratch: &Path) -> Result<()> {
    let root = scratch.join("market");
    write_synthetic_market1501(
        &root,
        &SyntheticSpec {
            train_ids: 4,
            train_per_camera: 2,
            ..SyntheticSpec::default()
        },
        1,
    )?;
    let opts: Vec<String> = [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", &root.display().to_string()),
        ("INPUT.SIZE_TRAIN", "[32, 16]"),
        ("INPUT.SIZE_TEST", "[32, 16]"),
        ("SOLVER.IMS_PER_BATCH", "4"),
        ("SOLVER.MAX_EPOCHS", "1"),
        ("SOLVER.BASE_LR", "3.5e-4"),
        ("TEST.IMS_PER_BATCH", "8"),
        ("DATALOADER.USE_RESAMPLING", "False"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    let run = scratch.join("reid-run");
    let trained = Learner::new(ReidConfig::load(None, &opts)?)?
        .step(StepKind::Ctl)
        .seed(7)
        .run_dir(&run)
        .fit::<B>(&Default::default())?;
    let test = trained
        .report
        .test
        .no_centroids
        .clone()
        .context("reid: the run reported no test")?;
    ensure!(
        trained.report.epochs == 1 && (0.0..=1.0).contains(&test.map) && test.num_query > 0,
        "reid: epochs {}, mAP {}, {} queries",
        trained.report.epochs,
        test.map,
        test.num_query
    );

    let ckpt = run.join("checkpoints/last.ckpt");
    let loaded = reid::infer::load_model::<CpuBackend>(&ckpt, None, &Default::default())?;
    let x =
        Tensor::<CpuBackend, 4>::random([3, 3, 32, 16], Distribution::Default, &Default::default());
    let a: Vec<f32> = trained.model.embed(x.clone()).into_data().to_vec().unwrap();
    let b: Vec<f32> = loaded.model.embed(x).into_data().to_vec().unwrap();
    ensure!(
        a.len() == 3 * 512 && a == b,
        "reid: the checkpoint's model embeds differently from the trained one"
    );
    println!(
        "reid: ResNet18 CTL, 1 epoch on a synthetic Market1501, checkpoint reloaded: mAP {:.3}",
        test.map
    );
    Ok(())
}
