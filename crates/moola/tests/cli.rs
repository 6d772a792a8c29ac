//! The `moola` binary end to end: ingest → train → predict → evaluate → resume, and its errors.

use std::path::Path;
use std::process::{Command, Output};

use moola::data::{FeatureLayout, WindowSet, write_parquet};

mod tiny;

fn moola(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moola"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("moola runs")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "moola failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected exit code 1: {out:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Width and height of a PNG file, after checking its signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// 40 labelled 105×4 windows (two trend classes) with expansion indices.
fn windows() -> WindowSet {
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut expansion = Vec::new();
    for i in 0..40usize {
        let drift = if i % 2 == 0 { 0.4f32 } else { -0.4 };
        let mut close = 0.0f32;
        for t in 0..105 {
            let open = close;
            close += drift + 0.1 * ((i * 7 + t * 3) % 5) as f32 - 0.2;
            x.extend([open, open.max(close) + 0.1, open.min(close) - 0.1, close]);
        }
        labels.push(
            if i % 2 == 0 {
                "consolidation"
            } else {
                "retracement"
            }
            .to_string(),
        );
        let s = 30 + (i % 20) as i64;
        expansion.push(Some((s, s + 10)));
    }
    WindowSet {
        ids: (0..40).map(|i| format!("win{i:02}")).collect(),
        x,
        seq_len: 105,
        n_features: 4,
        labels: Some(labels),
        expansion: Some(expansion),
    }
}

const TINY: &[&str] = &[
    "simple_lstm.model.hidden_size",
    "8",
    "simple_lstm.model.num_heads",
    "2",
    "simple_lstm.train.n_epochs",
    "3",
    "simple_lstm.train.batch_size",
    "16",
    "cv_folds",
    "2",
];

#[test]
fn ingest_train_predict_evaluate_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_parquet(&windows(), &root.join("raw.parquet"), FeatureLayout::Flat).unwrap();

    let out = ok(&moola(
        &[
            "ingest",
            "--input",
            "raw.parquet",
            "--output",
            "data/train.parquet",
        ],
        root,
    ));
    assert!(out.contains("40"), "{out}");
    assert!(root.join("data/train.parquet").exists());

    let mut args = vec![
        "--quiet",
        "train",
        "--model",
        "simple_lstm",
        "--data",
        "data/train.parquet",
        "--out",
        "run",
    ];
    args.extend_from_slice(TINY);
    let out = ok(&moola(&args, root));
    assert!(out.contains("test  (8 windows)"), "{out}");
    for f in [
        "model.mpk",
        "model.json",
        "report.json",
        "metrics.csv",
        "config.yaml",
        "checkpoints/last.ckpt",
    ] {
        assert!(root.join("run").join(f).exists(), "missing run/{f}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["test_metrics"]["n"], 8);
    assert_eq!(report["fit"]["epochs"], 3);
    let config = std::fs::read_to_string(root.join("run/config.yaml")).unwrap();
    assert!(config.contains("hidden_size: 8"), "{config}");
    // The run's TensorBoard events (3 epochs) and its training curves.
    let events = kiln::tensorboard::event_files(&root.join("run")).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let events = kiln::tensorboard::read_events(&events[0]).unwrap();
    let epoch_losses = events
        .iter()
        .filter(|e| e.scalars.iter().any(|(t, _)| t == "epoch/train_loss"))
        .count();
    assert_eq!(epoch_losses, 3);
    assert!(
        events
            .iter()
            .any(|e| e.scalars.iter().any(|(t, _)| t == "step/loss"))
    );
    assert_eq!(png_size(&root.join("run/curves.png")), (560, 680));

    let out = ok(&moola(
        &[
            "predict",
            "--model-path",
            "run/model",
            "--input",
            "data/train.parquet",
            "--output",
            "pred.csv",
        ],
        root,
    ));
    assert!(out.contains("wrote 40 predictions"), "{out}");
    let csv = std::fs::read_to_string(root.join("pred.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("window_id,prediction,prob_class_0,prob_class_1")
    );
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0], "win00");
    let p0: f64 = first[2].parse().unwrap();
    let p1: f64 = first[3].parse().unwrap();
    assert!((p0 + p1 - 1.0).abs() < 1e-5);
    assert_eq!(
        first[1],
        if p0 >= p1 {
            "consolidation"
        } else {
            "retracement"
        }
    );
    assert_eq!(csv.lines().count(), 41);

    let mut args = vec![
        "--quiet",
        "evaluate",
        "--model",
        "simple_lstm",
        "--data",
        "data/train.parquet",
        "--out",
        "cv",
    ];
    args.extend_from_slice(TINY);
    let out = ok(&moola(&args, root));
    assert!(out.contains("2-fold CV"), "{out}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("cv/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["fold_details"].as_array().unwrap().len(), 2);
    assert_eq!(metrics["oof"]["n"], 40);
    let cm = std::fs::read_to_string(root.join("cv/confusion_matrix.csv")).unwrap();
    assert!(
        cm.starts_with("true\\pred,consolidation,retracement\n"),
        "{cm}"
    );
    let counts: usize = cm
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').skip(1))
        .map(|v| v.parse::<usize>().unwrap())
        .sum();
    assert_eq!(counts, 40);
    png_size(&root.join("cv/confusion_matrix.png"));
    assert_eq!(png_size(&root.join("cv/reliability.png")), (620, 600));

    // Resume the first run to 5 epochs: metrics.csv continues at epoch 3.
    let mut args = vec![
        "--quiet",
        "train",
        "--model",
        "simple_lstm",
        "--data",
        "data/train.parquet",
        "--out",
        "run",
        "--resume",
        "run/checkpoints/last.ckpt",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["simple_lstm.train.n_epochs", "5"]);
    ok(&moola(&args, root));
    let rows = kiln::metric_log::read_csv(&root.join("run/metrics.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );

    // `plot` on two runs (the second a copy of the first's log), side by side.
    std::fs::create_dir_all(root.join("run2")).unwrap();
    std::fs::copy(root.join("run/metrics.csv"), root.join("run2/metrics.csv")).unwrap();
    let out = ok(&moola(&["plot", "run", "run2", "--out", "both.png"], root));
    assert!(out.contains("wrote both.png"), "{out}");
    assert_eq!(png_size(&root.join("both.png")), (1120, 680));
    // Bad input: a missing run directory, a log without the monitored column.
    let err = failed(&moola(&["plot", "run", "nope", "--out", "x.png"], root));
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::create_dir_all(root.join("bare")).unwrap();
    std::fs::write(root.join("bare/metrics.csv"), "epoch,train_loss\n0,1.5\n").unwrap();
    let err = failed(&moola(
        &["plot", "bare", "--monitor", "val_acc", "--out", "x.png"],
        root,
    ));
    assert!(
        err.contains("bare/metrics.csv") && err.contains("`val_acc`"),
        "{err}"
    );
    assert!(!root.join("x.png").exists());
}

#[test]
fn pointer_model_writes_pointer_columns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_parquet(&windows(), &root.join("w.parquet"), FeatureLayout::Nested).unwrap();
    let args = [
        "--quiet",
        "train",
        "--model",
        "cnn_transformer",
        "--data",
        "w.parquet",
        "--out",
        "run",
        "cnn_transformer.model.cnn_channels",
        "[8, 8, 8]",
        "cnn_transformer.model.transformer_heads",
        "2",
        "cnn_transformer.model.transformer_layers",
        "1",
        "cnn_transformer.train.n_epochs",
        "1",
    ];
    ok(&moola(&args, root));
    let card = std::fs::read_to_string(root.join("run/model.json")).unwrap();
    assert!(card.contains("\"predict_pointers\": true"), "{card}");
    ok(&moola(
        &[
            "predict",
            "--model-path",
            "run/model",
            "--input",
            "w.parquet",
            "--output",
            "p.csv",
        ],
        root,
    ));
    let csv = std::fs::read_to_string(root.join("p.csv")).unwrap();
    assert!(csv.starts_with(
        "window_id,prediction,prob_class_0,prob_class_1,expansion_start_pred,expansion_end_pred\n"
    ));
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let s: usize = cells[4].parse().unwrap();
        let e: usize = cells[5].parse().unwrap();
        assert!((30..75).contains(&s) && (30..75).contains(&e), "{line}");
    }
}

#[test]
fn describe_prints_reference_parameter_counts() {
    let dir = tempfile::tempdir().unwrap();
    for (model, count) in [
        ("simple_lstm", "36834"),
        ("cnn_transformer", "875938"),
        ("rwkv_ts", "857730"),
    ] {
        let out = ok(&moola(
            &[
                "describe",
                "--model",
                model,
                "--n-classes",
                "2",
                "--input-dim",
                "4",
            ],
            dir.path(),
        ));
        assert!(
            out.contains(&format!("{model}: {count} parameters")),
            "{out}"
        );
    }
}

#[test]
fn bench_times_the_requested_steps_and_skips_pytorch_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&moola(
        &[
            "bench",
            "--models",
            "simple_lstm",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--no-torch",
            "--json",
            "bench.json",
        ],
        dir.path(),
    ));
    assert!(out.contains("batch 8 × 105 × 4"), "{out}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 1, "one Burn row and no PyTorch row: {rows:?}");
    assert_eq!(rows[0]["model"], "simple_lstm");
    assert!(rows[0]["backend"].as_str().unwrap().starts_with("burn-"));
    let steps = rows[0]["steps_ms"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s.as_f64().unwrap() > 0.0));
}

#[test]
fn bench_times_one_pretraining_epoch_of_each_pretrainer() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "bench",
        "--models",
        "",
        "--pretrain",
        "masked-lstm,ts-tcc",
        "--pretrain-windows",
        "20",
        "--pretrain-epochs",
        "3",
        "--no-torch",
        "--json",
        "bench.json",
        "pretrain.masked_lstm.hidden_dim",
        "4",
        "pretrain.masked_lstm.num_layers",
        "1",
        "pretrain.masked_lstm.batch_size",
        "8",
        "pretrain.ts_tcc.batch_size",
        "8",
    ];
    args.extend_from_slice(tiny::TS_TCC_ENCODER);
    let out = ok(&moola(&args, dir.path()));
    assert!(out.contains("one pre-training epoch"), "{out}");
    assert!(
        !out.contains("one training step"),
        "no classifier rows: {out}"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["pretrain:masked-lstm", "pretrain:ts-tcc"]);
    for r in &rows {
        // Three epochs, the first a warm-up: two timed epochs.
        let epochs = r["steps_ms"].as_array().unwrap();
        assert_eq!(epochs.len(), 2, "{r}");
        assert!(epochs.iter().all(|s| s.as_f64().unwrap() > 0.0), "{r}");
        assert!(r["final_loss"].as_f64().unwrap().is_finite(), "{r}");
    }
    // Too few windows for a validation split is a usage error, not a panic.
    let err = failed(&moola(
        &[
            "bench",
            "--models",
            "",
            "--pretrain",
            "ts-tcc",
            "--pretrain-windows",
            "3",
            "--no-torch",
        ],
        dir.path(),
    ));
    assert!(err.contains("--pretrain-windows 3"), "{err}");
}

#[test]
fn bench_times_precisions_and_two_data_parallel_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&moola(
        &[
            "bench",
            "--models",
            "simple_lstm",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--no-torch",
            "--precisions",
            "32,bf16-mixed",
            "--nodes",
            "2",
            "--json",
            "bench.json",
            "simple_lstm.model.hidden_size",
            "8",
        ],
        dir.path(),
    ));
    assert!(
        out.contains("data-parallel training over 2 processes"),
        "{out}"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    // One row per precision on one process, and the same on two processes.
    assert_eq!(rows.len(), 4, "{rows:?}");
    let precisions: Vec<&str> = rows
        .iter()
        .map(|r| r["precision"].as_str().unwrap())
        .collect();
    assert_eq!(precisions, ["32", "bf16-mixed", "32", "bf16-mixed"]);
    for r in &rows {
        assert!(r["final_loss"].as_f64().unwrap().is_finite(), "{r}");
    }
    for r in &rows[2..] {
        let share = r["sync_share"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&share) && share > 0.0, "{r}");
    }
}

#[test]
fn flags_may_follow_the_key_value_overrides() {
    let dir = tempfile::tempdir().unwrap();
    // The example: a flag after the pairs used to be read as a KEY.
    let err = failed(&moola(
        &[
            "train",
            "--model",
            "simple_lstm",
            "--data",
            "nowhere.parquet",
            "simple_lstm.train.batch_size",
            "0",
            "--quiet",
        ],
        dir.path(),
    ));
    assert!(!err.contains("odd number"), "{err}");
    assert!(
        err.contains("nowhere.parquet") || err.contains("batch_size"),
        "{err}"
    );
    // A flag with a value after the pairs reaches its command.
    let out = ok(&moola(
        &[
            "describe",
            "seed",
            "7",
            "--model",
            "rwkv_ts",
            "--n-classes",
            "3",
        ],
        dir.path(),
    ));
    assert!(
        out.contains("rwkv_ts:") && out.contains("3 classes"),
        "{out}"
    );
}

#[test]
fn errors_exit_non_zero_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let err = failed(&moola(
        &[
            "train",
            "--model",
            "simple_lstm",
            "--data",
            "missing.parquet",
            "--out",
            "run",
        ],
        root,
    ));
    assert!(err.contains("missing.parquet"), "{err}");
    assert!(!root.join("run").exists());

    let err = failed(&moola(
        &[
            "train",
            "--model",
            "simple_lstm",
            "--data",
            "x.parquet",
            "simple_lstm.train.n_epoch",
            "3",
        ],
        root,
    ));
    assert!(err.contains("simple_lstm.train.n_epoch"), "{err}");

    let err = failed(&moola(
        &["train", "--model", "lstm9000", "--data", "x.parquet"],
        root,
    ));
    assert!(err.contains("lstm9000"), "{err}");

    std::fs::write(root.join("garbage.parquet"), b"not parquet").unwrap();
    let err = failed(&moola(
        &[
            "predict",
            "--model-path",
            "nope/model",
            "--input",
            "garbage.parquet",
            "--output",
            "out.csv",
        ],
        root,
    ));
    assert!(err.contains("nope/model"), "{err}");
    assert!(!root.join("out.csv").exists());

    let err = failed(&moola(
        &["--device", "cuda", "describe", "--model", "simple_lstm"],
        root,
    ));
    assert!(err.to_lowercase().contains("cuda"), "{err}");

    let err = failed(&moola(
        &["import", "--checkpoint", "none.pt", "--output", "m"],
        root,
    ));
    assert!(err.contains("none.pt"), "{err}");
    assert!(!root.join("m.mpk").exists());
}

#[test]
fn pretrain_then_train_from_the_encoder_then_stack_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_parquet(&windows(), &root.join("w.parquet"), FeatureLayout::Flat).unwrap();
    let arts = ["paths.artifacts_dir", "art"];

    // No method: a clear error.
    let err = failed(&moola(&["pretrain", "--data", "w.parquet"], root));
    assert!(err.contains("--method"), "{err}");

    // Masked-LSTM pre-training (the reference's `pretrain-bilstm` flags).
    let mut args = vec![
        "--quiet",
        "pretrain-bilstm",
        "--input",
        "w.parquet",
        "--output",
        "enc",
        "--epochs",
        "2",
        "--hidden-dim",
        "8",
        "--batch-size",
        "16",
        "--mask-strategy",
        "block",
        "pretrain.masked_lstm.num_layers",
        "1",
    ];
    args.extend_from_slice(&arts);
    let out = ok(&moola(&args, root));
    assert!(out.contains("2 epochs"), "{out}");
    for f in ["encoder.mpk", "encoder.json", "history.json", "metrics.csv"] {
        assert!(root.join("enc").join(f).exists(), "missing enc/{f}\n{out}");
    }
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("enc/history.json")).unwrap()).unwrap();
    assert_eq!(history["train_loss"].as_array().unwrap().len(), 2);

    // SimpleLSTM from that encoder; a missing encoder fails before anything is written.
    let mut args = vec![
        "--quiet",
        "train",
        "--model",
        "simple_lstm",
        "--data",
        "w.parquet",
        "--out",
        "run",
        "--encoder",
        "missing",
    ];
    args.extend_from_slice(TINY);
    let err = failed(&moola(&args, root));
    assert!(
        err.contains("missing") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!root.join("run").exists());
    let at = args.iter().position(|a| *a == "missing").unwrap();
    args[at] = "enc/encoder";
    ok(&moola(&args, root));
    let config = std::fs::read_to_string(root.join("run/config.yaml")).unwrap();
    assert!(config.contains("enc/encoder"), "{config}");

    // TS-TCC through `pretrain --method ts-tcc`, tiny encoder.
    let mut args = vec![
        "--quiet",
        "pretrain",
        "--method",
        "ts-tcc",
        "--data",
        "w.parquet",
        "--out",
        "tcc",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "pretrain.ts_tcc.model.cnn_channels",
        "[4, 8]",
        "pretrain.ts_tcc.model.cnn_kernels",
        "[3, 5]",
        "pretrain.ts_tcc.model.transformer_layers",
        "1",
        "pretrain.ts_tcc.model.transformer_heads",
        "2",
    ];
    args.extend_from_slice(&arts);
    ok(&moola(&args, root));
    assert!(root.join("tcc/encoder.mpk").exists());
    // Masked-LSTM options do not apply to TS-TCC.
    let err = failed(&moola(
        &["pretrain-tcc", "--data", "w.parquet", "--mask-ratio", "0.2"],
        root,
    ));
    assert!(err.contains("masked-lstm"), "{err}");

    // Two classical bases, the stack on their OOF files, the audit.
    for model in ["logreg", "xgb"] {
        let mut args = vec!["--quiet", "oof", "--model", model, "--data", "w.parquet"];
        args.extend_from_slice(&["cv_folds", "2"]);
        args.extend_from_slice(&arts);
        let out = ok(&moola(&args, root));
        assert!(out.contains("out-of-fold accuracy"), "{out}");
        let report = root.join(format!("art/oof/{model}/v1/seed_1337.json"));
        assert!(report.exists(), "{out}");
        for picture in ["confusion_matrix", "reliability"] {
            png_size(&root.join(format!("art/oof/{model}/v1/seed_1337_{picture}.png")));
        }
    }
    let mut args = vec!["--quiet", "stack", "--data", "w.parquet"];
    args.extend_from_slice(&arts);
    let out = ok(&moola(&args, root));
    assert!(
        out.contains("stacking 2 base models (logreg, xgb)"),
        "{out}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("art/models/stack/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["cv_folds"], 2, "{metrics}");
    let mut args = vec!["--quiet", "audit"];
    args.extend_from_slice(&arts);
    let audit = moola(&args, root);
    let text = String::from_utf8_lossy(&audit.stdout);
    // The verdict decides the exit status; the table names the rule either way.
    assert!(text.contains("ECE"), "{text}");
    assert_eq!(
        audit.status.success(),
        !String::from_utf8_lossy(&audit.stderr).contains("fails the acceptance rule"),
        "{audit:?}"
    );
}

/// Predicted probabilities of a saved model on a set, through the library.
fn probabilities(model: &Path, data: &WindowSet) -> Vec<Vec<f64>> {
    type B = kiln::backend::Autodiff<kiln::backend::Flex>;
    let clf = moola::Classifier::<B>::load(model, Default::default(), Default::default())
        .expect("the saved model loads");
    clf.predict_proba(data).expect("the saved model predicts")
}

/// Every float parameter of a saved model, by path, in visiting order.
fn weights(model: &Path) -> Vec<(String, Vec<f32>)> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Tensor, backend::Backend};
    type B = kiln::backend::Flex;
    struct Collect(Vec<String>, Vec<(String, Vec<f32>)>);
    impl<Bk: Backend> ModuleVisitor<Bk> for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            let values = param.val().into_data().convert::<f32>().to_vec().unwrap();
            self.1.push((self.0.join("."), values));
        }
    }
    let (net, _) = moola::model::load::<B>(model, &Default::default()).unwrap();
    let mut v = Collect(Vec::new(), Vec::new());
    net.visit(&mut v);
    assert!(!v.1.is_empty());
    v.1
}

/// `metrics.csv` rows without the wall-clock columns.
fn loss_rows(path: &Path) -> Vec<(usize, Vec<(String, f64)>)> {
    kiln::metric_log::read_csv(path)
        .unwrap()
        .into_iter()
        .map(|(e, row)| {
            let kept = row
                .into_iter()
                .filter(|(k, _)| k != "epoch_seconds" && k != "samples_per_second")
                .collect();
            (e, kept)
        })
        .collect()
}

#[test]
fn resumed_training_gives_the_uninterrupted_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let set = windows();
    write_parquet(&set, &root.join("w.parquet"), FeatureLayout::Flat).unwrap();
    let train = |out: &str, epochs: &str, resume: Option<&str>| {
        let mut args = vec![
            "--quiet",
            "train",
            "--model",
            "simple_lstm",
            "--data",
            "w.parquet",
            "--out",
            out,
        ];
        if let Some(ckpt) = resume {
            args.extend_from_slice(&["--resume", ckpt]);
        }
        args.extend_from_slice(TINY);
        // A one-cycle schedule (the small-data recipe's) spans the run's epochs, so a run
        // extended on resume would follow another schedule: a constant rate here.
        args.extend_from_slice(&[
            "simple_lstm.train.n_epochs",
            epochs,
            "simple_lstm.train.lr_schedule",
            "constant",
        ]);
        ok(&moola(&args, root))
    };
    train("full", "5", None);
    train("split", "2", None);
    let halfway = probabilities(&root.join("split/model"), &set);
    let first_rows = kiln::metric_log::read_csv(&root.join("split/metrics.csv")).unwrap();
    train("split", "5", Some("split/checkpoints/last.ckpt"));
    // It did resume: the first two epochs' rows (their timings included) were not re-run.
    let rows = kiln::metric_log::read_csv(&root.join("split/metrics.csv")).unwrap();
    assert_eq!(
        rows[..2],
        first_rows[..],
        "the first two epochs were trained again"
    );

    // The same final model: bit-equal probabilities and weight files.
    let full = probabilities(&root.join("full/model"), &set);
    let resumed = probabilities(&root.join("split/model"), &set);
    assert_eq!(full, resumed, "the resumed run predicts differently");
    assert_ne!(full, halfway, "5 epochs should differ from 2");
    // The weight files hold the same tensors (their random parameter ids differ).
    let (full, resumed) = (
        weights(&root.join("full/model")),
        weights(&root.join("split/model")),
    );
    assert_eq!(full.len(), resumed.len());
    for ((name, a), (_, b)) in full.iter().zip(&resumed) {
        assert!(a == b, "the resumed run saved another `{name}`");
    }

    // The same training curve, epoch by epoch (validation losses included).
    let full_rows = loss_rows(&root.join("full/metrics.csv"));
    assert_eq!(full_rows.len(), 5);
    assert_eq!(full_rows, loss_rows(&root.join("split/metrics.csv")));
    let report = |run: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join(run).join("report.json")).unwrap()).unwrap()
    };
    let (full, resumed) = (report("full"), report("split"));
    assert_eq!(full["fit"], resumed["fit"]);
    assert_eq!(full["test_metrics"], resumed["test_metrics"]);

    // The run's config.yaml reloads to the configuration the command line gave, resolved for
    // the 32 training windows (the small-data recipe of `recipe auto`).
    let mut given: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    given.extend(
        [
            "simple_lstm.train.n_epochs",
            "5",
            "simple_lstm.train.lr_schedule",
            "constant",
        ]
        .map(String::from),
    );
    let expected = moola::MoolaConfig::load(None, &given)
        .unwrap()
        .for_windows(32)
        .unwrap();
    let dumped = moola::MoolaConfig::load(Some(&root.join("split/config.yaml")), &[]).unwrap();
    assert_eq!(dumped, expected);
}

/// A bundled data set's file.
fn bundled(name: &str, split: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../datasets/{name}/{name}_{split}.ts"))
        .display()
        .to_string()
}

/// The accuracy printed on the `test  (...)` line of `train`.
fn test_accuracy(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("test  ("))
        .unwrap_or_else(|| panic!("no test line in {out}"));
    let at = line.find("accuracy ").unwrap() + "accuracy ".len();
    line[at..at + 6].parse().unwrap()
}

#[test]
fn minirocket_trains_predicts_and_stacks_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (train, test) = (
        bundled("ItalyPowerDemand", "TRAIN"),
        bundled("ItalyPowerDemand", "TEST"),
    );
    let out = ok(&moola(
        &[
            "--quiet",
            "train",
            "--model",
            "minirocket",
            "--data",
            &train,
            "--test",
            &test,
            "--out",
            "mr",
        ],
        root,
    ));
    assert!(out.contains("test  (1029 windows)"), "{out}");
    assert!(test_accuracy(&out) >= 0.93, "{out}");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("mr/model.json")).unwrap()).unwrap();
    assert_eq!(model["model"], "minirocket");
    // `predict` takes the classical model file with or without its extension.
    for path in ["mr/model", "mr/model.json"] {
        let out = ok(&moola(
            &[
                "--quiet",
                "predict",
                "--model-path",
                path,
                "--input",
                &test,
                "--output",
                "p.csv",
            ],
            root,
        ));
        assert!(out.contains("input is labelled: accuracy"), "{out}");
        let csv = std::fs::read_to_string(root.join("p.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1030);
        assert!(csv.starts_with("window_id,prediction,prob_class_0,prob_class_1"));
    }
    // Out-of-fold MiniRocket next to a tiny SimpleLSTM, then the stack of the two.
    let arts = ["paths.artifacts_dir", "art", "cv_folds", "3"];
    for model in ["minirocket", "simple_lstm"] {
        let mut args = vec!["--quiet", "oof", "--model", model, "--data", &train];
        args.extend_from_slice(&arts);
        args.extend_from_slice(TINY);
        let out = ok(&moola(&args, root));
        assert!(out.contains("out-of-fold accuracy"), "{out}");
    }
    let mut args = vec![
        "--quiet",
        "stack",
        "--data",
        &train,
        "--models",
        "minirocket,simple_lstm",
    ];
    args.extend_from_slice(&arts);
    let out = ok(&moola(&args, root));
    assert!(
        out.contains("stacking 2 base models (minirocket, simple_lstm)"),
        "{out}"
    );
    // Classical models take no encoder.
    let err = failed(&moola(
        &[
            "train",
            "--model",
            "minirocket",
            "--data",
            &train,
            "--encoder",
            "enc",
        ],
        root,
    ));
    assert!(err.contains("--encoder"), "{err}");
}

#[test]
fn recipe_and_scaling_flags_reach_the_saved_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_parquet(&windows(), &root.join("w.parquet"), FeatureLayout::Flat).unwrap();
    let train = |extra: &[&str], out: &str| {
        let mut args = vec![
            "--quiet",
            "train",
            "--model",
            "simple_lstm",
            "--data",
            "w.parquet",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(TINY);
        let stdout = ok(&moola(&args, root));
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(out).join("model.json")).unwrap())
                .unwrap();
        let config = std::fs::read_to_string(root.join(out).join("config.yaml")).unwrap();
        (stdout, card, config)
    };
    // The default: `auto` on 32 training windows is the small-data recipe; the windows'
    // levels are close, so `auto` scaling keeps them raw.
    let (out, card, config) = train(&[], "auto");
    assert!(
        out.contains("small-data recipe for 32 training windows"),
        "{out}"
    );
    assert_eq!(card["scaling"], "none");
    assert!(config.contains("lr_schedule: one_cycle"), "{config}");
    // `--scaling` and `--recipe reference`.
    let (out, card, config) = train(&["--scaling", "zscore"], "z");
    assert!(out.contains("input scaling zscore"), "{out}");
    assert_eq!(card["scaling"], "zscore");
    assert!(config.contains("scaling: zscore"), "{config}");
    let (out, card, config) = train(&["--recipe", "reference"], "ref");
    assert!(
        out.contains("reference recipe: input scaling none"),
        "{out}"
    );
    assert_eq!(card["scaling"], "none");
    assert!(config.contains("lr_schedule: constant"), "{config}");
    // A scaling that does not fit the data is an error naming it, before any output.
    let err = failed(&moola(
        &[
            "--scaling",
            "relative_open",
            "train",
            "--model",
            "simple_lstm",
            "--data",
            &bundled("BasicMotions", "TRAIN"),
            "--out",
            "bad",
        ],
        root,
    ));
    assert!(
        err.contains("relative_open") && err.contains("OHLC"),
        "{err}"
    );
    let err = failed(&moola(
        &["--quiet", "doctor", "simple_lstm.train.scaling", "minmax"],
        root,
    ));
    assert!(err.contains("simple_lstm.train.scaling"), "{err}");
}

#[test]
fn benchmark_data_prints_the_table_and_refuses_unknown_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    let datasets = datasets.display().to_string();
    let out = ok(&moola(
        &[
            "--quiet",
            "benchmark-data",
            "--datasets",
            "italy_power_demand",
            "--rows",
            "minirocket/none",
            "--seeds",
            "1,2",
            "--datasets-dir",
            &datasets,
            "--json",
            "b.json",
            "minirocket.n_features",
            "840",
        ],
        root,
    ));
    assert!(out.contains("| minirocket | - | none |"), "{out}");
    assert!(out.contains("MiniRocket 0.960"), "{out}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("b.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["accuracy"].as_f64().unwrap() > 0.9, "{r}");
    }
    let err = failed(&moola(
        &["benchmark-data", "--rows", "simple_lstm/fast/none"],
        root,
    ));
    assert!(err.contains("simple_lstm/fast/none"), "{err}");
}
