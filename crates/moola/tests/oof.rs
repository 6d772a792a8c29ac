//! Persisted folds, the OOF pipeline (with a fake, training-free estimator), the `.npy` output,
//! the artifacts manifest, and one tiny `moola oof` run end to end.

use std::cell::RefCell;
use std::path::Path;
use std::process::{Command, Output};
use std::rc::Rc;

use anyhow::Result;
use moola::data::{FeatureLayout, LabelMap, WindowSet, write_parquet};
use moola::oof::{generate_oof, generate_oof_with, read_npy, write_npy};
use moola::splits::{
    FoldFile, FoldSource, fold_path, get_or_create_folds, make_folds, validate_folds,
};
use moola::{Estimator, Fold};
use sha2::{Digest, Sha256};

/// `n` tiny windows (3 steps × 2 features) with imbalanced labels a/b/c.
fn tiny_set(n: usize) -> WindowSet {
    let labels: Vec<String> = (0..n)
        .map(|i| match i % 7 {
            0 | 3 => "b",
            5 => "c",
            _ => "a",
        })
        .map(String::from)
        .collect();
    WindowSet::new(
        (0..n).map(|i| format!("w{i}")).collect(),
        (0..n * 6).map(|v| v as f32).collect(),
        3,
        2,
        Some(labels),
        None,
    )
    .unwrap()
}

fn encoded(set: &WindowSet) -> Vec<usize> {
    let labels = set.labels.as_ref().unwrap();
    LabelMap::fit(labels).encode(labels).unwrap()
}

/// Predicts the class frequencies of its training set for every window: deterministic, no
/// training. Counts the rows it is asked to predict.
struct Frequencies {
    classes: Vec<String>,
    freq: Vec<f64>,
    predicted: Rc<RefCell<usize>>,
}

impl Frequencies {
    fn boxed(predicted: &Rc<RefCell<usize>>) -> Box<dyn Estimator> {
        Box::new(Frequencies {
            classes: Vec::new(),
            freq: Vec::new(),
            predicted: predicted.clone(),
        })
    }
}

impl Estimator for Frequencies {
    fn name(&self) -> String {
        "frequencies".into()
    }
    fn fit(&mut self, data: &WindowSet) -> Result<()> {
        let labels = data.require_labels()?;
        let map = LabelMap::fit(labels);
        let y = map.encode(labels)?;
        self.freq = vec![0.0; map.len()];
        for c in y {
            self.freq[c] += 1.0 / labels.len() as f64;
        }
        self.classes = map.classes().to_vec();
        Ok(())
    }
    fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        *self.predicted.borrow_mut() += data.len();
        Ok(vec![self.freq.clone(); data.len()])
    }
    fn classes(&self) -> Result<Vec<String>> {
        Ok(self.classes.clone())
    }
    fn save(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
}

#[test]
fn folds_are_stratified_partitions() {
    let set = tiny_set(53);
    let y = encoded(&set);
    for (k, seed) in [(2, 1), (3, 1337), (5, 7)] {
        let folds = make_folds(&y, k, seed).unwrap();
        assert_eq!(folds.len(), k);
        validate_folds(&folds, y.len(), |i| format!("fold {i}")).unwrap();
        let mut seen = vec![0usize; y.len()];
        for f in &folds {
            for &r in &f.val_idx {
                seen[r] += 1;
            }
            let mut all: Vec<usize> = f.train_idx.iter().chain(&f.val_idx).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..y.len()).collect::<Vec<_>>(), "train = complement");
        }
        assert!(seen.iter().all(|&s| s == 1), "every row in one val fold");
        for c in 0..3 {
            let counts: Vec<usize> = folds
                .iter()
                .map(|f| f.val_idx.iter().filter(|&&r| y[r] == c).count())
                .collect();
            let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            assert!(spread <= 1, "k={k} class {c}: {counts:?}");
        }
    }
}

#[test]
fn folds_persist_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let splits = dir.path().join("splits/v1");
    let y = encoded(&tiny_set(40));
    let (made, source) = get_or_create_folds(&y, 4, 11, &splits).unwrap();
    assert_eq!(source, FoldSource::Created);
    for (i, f) in made.iter().enumerate() {
        let file: FoldFile =
            serde_json::from_slice(&std::fs::read(fold_path(&splits, i)).unwrap()).unwrap();
        assert_eq!((file.fold, file.seed, file.k), (i, 11, 4));
        assert_eq!(file.train_idx, f.train_idx);
        assert_eq!(file.val_idx, f.val_idx);
        assert_eq!(
            (file.train_size, file.val_size),
            (f.train_idx.len(), f.val_idx.len())
        );
    }
    // Only the four fold files, no temporary file left behind.
    assert_eq!(std::fs::read_dir(&splits).unwrap().count(), 4);
    let (loaded, source) = get_or_create_folds(&y, 4, 11, &splits).unwrap();
    assert_eq!(source, FoldSource::Loaded);
    assert_eq!(loaded, made);
    // Loaded folds win over what this call would draw: hand-made folds survive a reload.
    let custom = vec![
        Fold {
            fold: 0,
            train_idx: (20..40).collect(),
            val_idx: (0..20).collect(),
        },
        Fold {
            fold: 1,
            train_idx: (0..20).collect(),
            val_idx: (20..40).collect(),
        },
    ];
    moola::splits::write_folds(&splits, &custom, 11).unwrap();
    assert!(
        !fold_path(&splits, 2).exists(),
        "older fold files are removed"
    );
    let (loaded, source) = get_or_create_folds(&y, 2, 11, &splits).unwrap();
    assert_eq!((loaded, source), (custom, FoldSource::Loaded));
}

#[test]
fn stale_folds_are_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let splits = dir.path().join("splits");
    let (big, small) = (encoded(&tiny_set(40)), encoded(&tiny_set(25)));
    get_or_create_folds(&big, 5, 3, &splits).unwrap();

    // Fewer rows: the files hold indices >= 25.
    let (folds, source) = get_or_create_folds(&small, 5, 3, &splits).unwrap();
    let FoldSource::Regenerated(why) = source else {
        panic!("expected regeneration, got {source:?}")
    };
    assert!(why.contains("out of range"), "{why}");
    validate_folds(&folds, 25, |i| format!("fold {i}")).unwrap();
    assert_eq!(
        get_or_create_folds(&small, 5, 3, &splits).unwrap().1,
        FoldSource::Loaded
    );

    // Another k: fold_3/fold_4 of the old set go away.
    let (folds, source) = get_or_create_folds(&small, 3, 3, &splits).unwrap();
    assert!(matches!(source, FoldSource::Regenerated(ref w) if w.contains("k = 5")));
    assert_eq!(folds.len(), 3);
    assert!(!fold_path(&splits, 3).exists() && !fold_path(&splits, 4).exists());

    // Another seed.
    let (_, source) = get_or_create_folds(&small, 3, 4, &splits).unwrap();
    assert!(matches!(source, FoldSource::Regenerated(ref w) if w.contains("seed = 3")));

    // More rows than the folds cover.
    let (_, source) = get_or_create_folds(&big, 3, 4, &splits).unwrap();
    assert!(matches!(source, FoldSource::Regenerated(ref w) if w.contains("cover 25")));
}

#[test]
fn inconsistent_fold_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let splits = dir.path().join("splits");
    let y = encoded(&tiny_set(30));
    let (folds, _) = get_or_create_folds(&y, 3, 1, &splits).unwrap();

    // Fold 2 also holds a validation row of fold 1.
    let path = fold_path(&splits, 2);
    let mut file: FoldFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let stolen = folds[1].val_idx[0];
    file.val_idx.push(stolen);
    file.val_size += 1;
    file.train_idx.retain(|&r| r != stolen);
    file.train_size = file.train_idx.len();
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let err = format!("{:#}", get_or_create_folds(&y, 3, 1, &splits).unwrap_err());
    assert!(
        err.contains("fold_2.json") && err.contains("fold_1.json"),
        "{err}"
    );

    // Sizes that do not match the lists.
    file.val_size += 5;
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let err = format!("{:#}", get_or_create_folds(&y, 3, 1, &splits).unwrap_err());
    assert!(
        err.contains("fold_2.json") && err.contains("val_size"),
        "{err}"
    );

    // Not JSON.
    std::fs::write(&path, b"{oops").unwrap();
    let err = format!("{:#}", get_or_create_folds(&y, 3, 1, &splits).unwrap_err());
    assert!(err.contains("fold_2.json"), "{err}");

    // Missing.
    std::fs::remove_file(&path).unwrap();
    let err = format!("{:#}", get_or_create_folds(&y, 3, 1, &splits).unwrap_err());
    assert!(err.contains("fold_2.json"), "{err}");
}

#[test]
fn oof_fills_every_row_once_with_its_folds_model() {
    let set = tiny_set(47);
    let y = encoded(&set);
    let folds = make_folds(&y, 4, 9).unwrap();
    let predicted = Rc::new(RefCell::new(0));
    let mut built = Vec::new();
    let mut reported = Vec::new();
    let result = generate_oof_with(
        |fold| {
            built.push(fold);
            Ok(Frequencies::boxed(&predicted))
        },
        &set,
        &folds,
        |r| reported.push(r.clone()),
    )
    .unwrap();
    assert_eq!(built, [0, 1, 2, 3], "a fresh model per fold");
    assert_eq!(*predicted.borrow(), 47, "each row predicted exactly once");
    assert_eq!(result.model, "frequencies");
    assert_eq!(result.classes, ["a", "b", "c"]);
    assert_eq!(result.oof.len(), 47);
    assert!(result.zero_rows.is_empty());
    for f in &folds {
        // The row holds the class frequencies of the fold that held it out.
        let n = f.train_idx.len() as f64;
        let expect: Vec<f64> = (0..3)
            .map(|c| f.train_idx.iter().filter(|&&r| y[r] == c).count() as f64 / n)
            .collect();
        for &r in &f.val_idx {
            let row = &result.oof[r];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (a, b) in row.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }
    // Predicting the majority class: accuracy = share of "a", per class 1/0/0.
    let share_a = y.iter().filter(|&&c| c == 0).count() as f64 / 47.0;
    assert!((result.accuracy - share_a).abs() < 1e-12);
    assert_eq!(result.per_class_accuracy, [Some(1.0), Some(0.0), Some(0.0)]);
    assert_eq!(reported, result.folds);
    assert_eq!(reported.len(), 4);
    assert_eq!(
        reported.iter().map(|r| r.val_size).sum::<usize>(),
        47,
        "{reported:?}"
    );
}

#[test]
fn oof_rejects_a_fold_missing_a_class_and_bad_folds() {
    let set = tiny_set(21);
    let y = encoded(&set);
    // Fold 0 holds out every "c" (class 2), so its model never sees the class.
    let cs: Vec<usize> = (0..21).filter(|&r| y[r] == 2).collect();
    let rest: Vec<usize> = (0..21).filter(|&r| y[r] != 2).collect();
    let folds = vec![
        Fold {
            fold: 0,
            train_idx: rest.clone(),
            val_idx: cs.clone(),
        },
        Fold {
            fold: 1,
            train_idx: cs,
            val_idx: rest,
        },
    ];
    let predicted = Rc::new(RefCell::new(0));
    let err = generate_oof(|_| Ok(Frequencies::boxed(&predicted)), &set, &folds)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fold 0") && err.contains("lacks class"),
        "{err}"
    );

    // Folds that do not cover the rows.
    let mut folds = make_folds(&y, 3, 1).unwrap();
    folds[1].val_idx.pop();
    let err = generate_oof(|_| Ok(Frequencies::boxed(&predicted)), &set, &folds)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row") && err.contains("none of the folds"),
        "{err}"
    );
}

#[test]
fn oof_npy_reads_back_as_float64_matrix() {
    let set = tiny_set(30);
    let folds = make_folds(&encoded(&set), 3, 2).unwrap();
    let predicted = Rc::new(RefCell::new(0));
    let result = generate_oof(|_| Ok(Frequencies::boxed(&predicted)), &set, &folds).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = moola::oof::oof_path(dir.path(), "frequencies", 2);
    assert!(path.ends_with("oof/frequencies/v1/seed_2.npy"));
    write_npy(&path, &result.oof).unwrap();
    let back: ndarray::Array2<f64> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back.dim(), (30, 3));
    for (r, row) in result.oof.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            assert_eq!(back[[r, c]], *v);
        }
    }
    assert_eq!(read_npy(&path).unwrap(), back);
    // float64 on disk: reading it as float32 fails.
    assert!(ndarray_npy::read_npy::<_, ndarray::Array2<f32>>(&path).is_err());
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn concurrent_writers_of_one_npy_never_leave_a_partial_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oof/m/v1/seed_1.npy");
    let rows_a = vec![vec![0.25, 0.75]; 2000];
    let rows_b = vec![vec![0.5, 0.5]; 2000];
    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let writers: Vec<_> = [&rows_a, &rows_b]
            .into_iter()
            .map(|rows| {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_npy(path, rows).unwrap();
                    }
                })
            })
            .collect();
        // Once the first rename has put the file in place, every read must see a complete
        // file of one writer: a truncated or mixed file fails the test (it is not skipped).
        let reader = s.spawn(|| {
            while !path.exists() && !done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                let a = read_npy(&path).expect("a reader saw a partial file");
                assert_eq!(a.dim(), (2000, 2));
                let first = a[[0, 0]];
                assert!(a.column(0).iter().all(|&v| v == first), "mixed file");
                reads += 1;
            }
            reads
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(reads > 0, "the reader never saw the file");
    assert_eq!(read_npy(&path).unwrap().dim(), (2000, 2));
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn manifest_hashes_match_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let y = encoded(&tiny_set(20));
    get_or_create_folds(&y, 2, 1, &root.join("splits/v1")).unwrap();
    write_npy(&root.join("oof/m/v1/seed_1.npy"), &[vec![1.0, 0.0]]).unwrap();
    std::fs::write(root.join("notes.txt"), b"not hashed").unwrap();
    std::fs::write(root.join("manifest.json"), b"{}").unwrap();
    let (path, manifest) = moola::manifest::write_manifest(root, &["m".into()]).unwrap();
    assert_eq!(path, root.join("manifest.json"));
    let keys: Vec<&str> = manifest.artifacts.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "oof/m/v1/seed_1.npy",
            "splits/v1/fold_0.json",
            "splits/v1/fold_1.json"
        ]
    );
    for (rel, hash) in &manifest.artifacts {
        assert_eq!(
            hash,
            &sha256_hex(&std::fs::read(root.join(rel)).unwrap()),
            "{rel}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let created = json["created_at"].as_str().unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && &created[10..11] == "T",
        "{created}"
    );
    assert!(json["git_sha"].is_null() || json["git_sha"].as_str().unwrap().len() == 40);
    assert_eq!(json["models"], serde_json::json!(["m"]));
}

fn moola(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moola"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("moola runs")
}

/// 24 labelled 105×4 windows (two trend classes) with valid expansion indices, but rows 22 and
/// 23 have invalid ones (dropped by the reference's `validate_expansions`).
fn ohlc_windows() -> WindowSet {
    let n = 24usize;
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut expansion = Vec::new();
    for i in 0..n {
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
        let s = if i >= 22 { 80 } else { 30 + (i % 20) as i64 };
        expansion.push(Some((s, s + 10)));
    }
    WindowSet::new(
        (0..n).map(|i| format!("win{i:02}")).collect(),
        x,
        105,
        4,
        Some(labels),
        Some(expansion),
    )
    .unwrap()
}

const TINY: &[&str] = &[
    "simple_lstm.model.hidden_size",
    "8",
    "simple_lstm.model.num_heads",
    "2",
    "simple_lstm.train.n_epochs",
    "1",
    "simple_lstm.train.batch_size",
    "16",
    "paths.artifacts_dir",
    "art",
];

#[test]
fn cli_oof_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_parquet(
        &ohlc_windows(),
        &root.join("w.parquet"),
        FeatureLayout::Nested,
    )
    .unwrap();

    // Errors: nothing is written.
    for (args, needle) in [
        (
            vec!["oof", "--model", "simple_lstm", "--data", "missing.parquet"],
            "missing.parquet",
        ),
        (
            vec!["oof", "--model", "nope", "--data", "w.parquet"],
            "nope",
        ),
        (
            vec![
                "oof",
                "--model",
                "simple_lstm",
                "--data",
                "w.parquet",
                "--load-pretrained-encoder",
                "enc.pt",
            ],
            "enc.pt",
        ),
    ] {
        let mut args = args;
        args.extend_from_slice(TINY);
        let out = moola(&args, root);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!root.join("art").exists(), "errors leave no output");

    let mut args = vec![
        "--quiet",
        "oof",
        "--model",
        "simple_lstm",
        "--data",
        "w.parquet",
        "--k",
        "2",
        "--seed",
        "5",
    ];
    args.extend_from_slice(TINY);
    let out = moola(&args, root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("folds: wrote 2"), "{stdout}");
    assert!(
        stdout.contains("fold 1/2:") && stdout.contains("fold 2/2:"),
        "{stdout}"
    );

    let art = root.join("art");
    let npy = art.join("oof/simple_lstm/v1/seed_5.npy");
    let oof: ndarray::Array2<f64> = ndarray_npy::read_npy(&npy).unwrap();
    // validate_expansions drops the two rows with invalid expansion indices.
    assert_eq!(oof.dim(), (22, 2));
    for row in oof.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-4, "{row}");
    }
    let fold0: FoldFile =
        serde_json::from_slice(&std::fs::read(art.join("splits/v1/fold_0.json")).unwrap()).unwrap();
    assert_eq!(
        (fold0.k, fold0.seed, fold0.train_size + fold0.val_size),
        (2, 5, 22)
    );

    let manifest: moola::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(art.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.models, ["simple_lstm"]);
    for rel in [
        "oof/simple_lstm/v1/seed_5.npy",
        "oof/simple_lstm/v1/seed_5.json",
        "splits/v1/fold_0.json",
        "splits/v1/fold_1.json",
    ] {
        let bytes = std::fs::read(art.join(rel)).unwrap();
        assert_eq!(manifest.artifacts[rel], sha256_hex(&bytes), "{rel}");
    }
    assert_eq!(manifest.artifacts.len(), 4, "{:?}", manifest.artifacts);

    // A bad fold file: a clear error, and the OOF matrix is left as it was.
    let before = std::fs::read(&npy).unwrap();
    std::fs::write(art.join("splits/v1/fold_1.json"), b"[]").unwrap();
    let out = moola(&args, root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("fold_1.json"), "{err}");
    assert_eq!(std::fs::read(&npy).unwrap(), before);
}

/// Classification metrics recomputed here from labels and probability rows, independently of
/// `kiln::metrics`: scikit-learn's definitions (argmax with the first index on ties, P/R/F1 with
/// zero_division=0, macro and weighted averages over the labels present in y_true ∪ y_pred,
/// log-loss with probabilities clipped to [ε, 1−ε] and renormalised) and moola's ECE (10 bins,
/// `lower < conf ≤ upper`) and Brier score (mean over N·C cells).
#[derive(Debug)]
struct Recomputed {
    accuracy: f64,
    macro_avg: [f64; 3],
    weighted_avg: [f64; 3],
    per_class: Vec<[f64; 3]>,
    support: Vec<usize>,
    confusion: Vec<Vec<usize>>,
    ece: f64,
    brier: f64,
    log_loss: f64,
}

fn recompute(y: &[usize], proba: &[Vec<f64>]) -> Recomputed {
    let (n, c) = (y.len(), proba[0].len());
    assert_eq!(proba.len(), n);
    let pred: Vec<usize> = proba
        .iter()
        .map(|row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            row.iter().position(|&p| p == max).unwrap()
        })
        .collect();
    let mut confusion = vec![vec![0usize; c]; c];
    for (&t, &p) in y.iter().zip(&pred) {
        confusion[t][p] += 1;
    }
    let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    let per_class: Vec<[f64; 3]> = (0..c)
        .map(|k| {
            let tp = confusion[k][k] as f64;
            let predicted = (0..c).map(|t| confusion[t][k]).sum::<usize>() as f64;
            let actual = confusion[k].iter().sum::<usize>() as f64;
            let (p, r) = (div(tp, predicted), div(tp, actual));
            [p, r, div(2.0 * p * r, p + r)]
        })
        .collect();
    let support: Vec<usize> = (0..c)
        .map(|k| y.iter().filter(|&&t| t == k).count())
        .collect();
    let present: Vec<usize> = (0..c)
        .filter(|&k| y.contains(&k) || pred.contains(&k))
        .collect();
    let total: usize = present.iter().map(|&k| support[k]).sum();
    let mut macro_avg = [0.0; 3];
    let mut weighted_avg = [0.0; 3];
    for &k in &present {
        for m in 0..3 {
            macro_avg[m] += per_class[k][m] / present.len() as f64;
            weighted_avg[m] += per_class[k][m] * support[k] as f64 / total as f64;
        }
    }
    let accuracy = y.iter().zip(&pred).filter(|(t, p)| t == p).count() as f64 / n as f64;
    let mut ece = 0.0;
    for b in 0..10 {
        let (lower, upper) = (b as f64 / 10.0, (b + 1) as f64 / 10.0);
        let members: Vec<usize> = (0..n)
            .filter(|&i| proba[i][pred[i]] > lower && proba[i][pred[i]] <= upper)
            .collect();
        if members.is_empty() {
            continue;
        }
        let m = members.len() as f64;
        let conf = members.iter().map(|&i| proba[i][pred[i]]).sum::<f64>() / m;
        let hits = members.iter().filter(|&&i| pred[i] == y[i]).count() as f64 / m;
        ece += m / n as f64 * (conf - hits).abs();
    }
    let brier = (0..n)
        .flat_map(|i| (0..c).map(move |k| (i, k)))
        .map(|(i, k)| (proba[i][k] - f64::from(u8::from(k == y[i]))).powi(2))
        .sum::<f64>()
        / (n * c) as f64;
    let eps = f64::EPSILON;
    let log_loss = (0..n)
        .map(|i| {
            let clipped: Vec<f64> = proba[i].iter().map(|p| p.clamp(eps, 1.0 - eps)).collect();
            -(clipped[y[i]] / clipped.iter().sum::<f64>()).ln()
        })
        .sum::<f64>()
        / n as f64;
    Recomputed {
        accuracy,
        macro_avg,
        weighted_avg,
        per_class,
        support,
        confusion,
        ece,
        brier,
        log_loss,
    }
}

/// A recipe that trains the tiny SimpleLSTM to confidences spread over several bins in a few epochs,
/// over- and under-confident in different bins (so that ECE depends on the binning). On the
/// reference recipe (raw inputs, constant learning rate): the small-data recipe that `auto`
/// picks for a set this size trains it to other confidences.
const CONFIDENT: &[&str] = &[
    "recipe",
    "reference",
    "simple_lstm.train.n_epochs",
    "8",
    "simple_lstm.train.learning_rate",
    "0.05",
    "simple_lstm.train.mixup_alpha",
    "0.0",
    "simple_lstm.train.temporal_aug.enabled",
    "False",
];

/// The metrics tell averaging modes and binnings apart: some errors, macro ≠ weighted ≠ micro
/// F1, and confidences in at least three ECE bins.
fn assert_informative(r: &Recomputed, proba: &[Vec<f64>]) {
    let mut bins: Vec<i64> = proba
        .iter()
        .map(|row| (row.iter().copied().fold(0.0, f64::max) * 10.0).ceil() as i64)
        .collect();
    bins.sort_unstable();
    bins.dedup();
    assert!(bins.len() >= 3, "confidence bins {bins:?}");
    let [micro, macro_f1, weighted] = [r.accuracy, r.macro_avg[2], r.weighted_avg[2]];
    assert!(micro < 1.0, "{r:?}");
    assert!(
        (macro_f1 - micro).abs() > 1e-3
            && (weighted - micro).abs() > 1e-3
            && (macro_f1 - weighted).abs() > 1e-3,
        "{r:?}"
    );
}

fn assert_close(what: &str, reported: &serde_json::Value, expected: f64, tol: f64) {
    let got = reported
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {reported}"));
    assert!(
        (got - expected).abs() <= tol,
        "{what}: reported {got}, recomputed {expected}"
    );
}

/// Checks a serialised `ClassificationReport` against the recomputed metrics: counts exactly,
/// P/R/F1 and accuracy within `tol`, the probability-based metrics within `prob_tol`.
fn check_report(report: &serde_json::Value, r: &Recomputed, tol: f64, prob_tol: f64) {
    assert_eq!(report["n"], r.support.iter().sum::<usize>());
    assert_eq!(report["support"], serde_json::json!(r.support));
    assert_eq!(report["confusion"], serde_json::json!(r.confusion));
    assert_close("accuracy", &report["accuracy"], r.accuracy, tol);
    for (m, name) in ["precision", "recall", "f1"].iter().enumerate() {
        assert_close(
            &format!("macro {name}"),
            &report["macro_avg"][name],
            r.macro_avg[m],
            tol,
        );
        assert_close(
            &format!("weighted {name}"),
            &report["weighted_avg"][name],
            r.weighted_avg[m],
            tol,
        );
        for (k, prf) in r.per_class.iter().enumerate() {
            assert_close(
                &format!("class {k} {name}"),
                &report["per_class"][k][name],
                prf[m],
                tol,
            );
        }
    }
    assert_close("ECE", &report["ece"], r.ece, prob_tol);
    assert_close("Brier", &report["brier"], r.brier, prob_tol);
    assert_close("log-loss", &report["log_loss"], r.log_loss, prob_tol);
}

/// 30 OHLC windows whose labels a model cannot all get right: two trend classes with every
/// sixth up-trend labelled as a down-trend, and a small third class of down-trends (10/4/16
/// windows), so that accuracy, macro and weighted averages all differ.
fn noisy_windows() -> WindowSet {
    let n = 30usize;
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let up = i % 2 == 0;
        let drift = if up { 0.4f32 } else { -0.4 };
        let mut close = 0.0f32;
        for t in 0..105 {
            let open = close;
            close += drift + 0.1 * ((i * 7 + t * 3) % 5) as f32 - 0.2;
            x.extend([open, open.max(close) + 0.1, open.min(close) - 0.1, close]);
        }
        let label = if i % 8 == 3 {
            "expansion"
        } else if up && i % 6 != 0 {
            "consolidation"
        } else {
            "retracement"
        };
        labels.push(label.to_string());
    }
    WindowSet::new(
        (0..n).map(|i| format!("win{i:02}")).collect(),
        x,
        105,
        4,
        Some(labels),
        None,
    )
    .unwrap()
}

fn encode_sorted(labels: &[String]) -> (Vec<String>, Vec<usize>) {
    let mut classes = labels.to_vec();
    classes.sort();
    classes.dedup();
    let y = labels
        .iter()
        .map(|l| classes.iter().position(|c| c == l).unwrap())
        .collect();
    (classes, y)
}

#[test]
fn oof_report_matches_the_npy_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let set = noisy_windows();
    write_parquet(&set, &root.join("w.parquet"), FeatureLayout::Flat).unwrap();
    let mut args = vec![
        "--quiet",
        "oof",
        "--model",
        "simple_lstm",
        "--data",
        "w.parquet",
        "--k",
        "3",
        "--seed",
        "9",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(CONFIDENT);
    let out = moola(&args, root);
    assert!(out.status.success(), "{out:?}");

    let art = root.join("art/oof/simple_lstm/v1");
    let oof = read_npy(&art.join("seed_9.npy")).unwrap();
    let proba: Vec<Vec<f64>> = oof.rows().into_iter().map(|r| r.to_vec()).collect();
    let (_, y) = encode_sorted(set.labels.as_ref().unwrap());
    let r = recompute(&y, &proba);
    assert_informative(&r, &proba);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(art.join("seed_9.json")).unwrap()).unwrap();
    assert_close("accuracy", &json["accuracy"], r.accuracy, 1e-12);
    check_report(&json["report"], &r, 1e-12, 1e-12);
}

#[test]
fn evaluate_metrics_match_its_out_of_fold_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let set = noisy_windows();
    write_parquet(&set, &root.join("w.parquet"), FeatureLayout::Flat).unwrap();
    let mut args = vec![
        "--quiet",
        "evaluate",
        "--model",
        "simple_lstm",
        "--data",
        "w.parquet",
        "--out",
        "cv",
        "cv_folds",
        "3",
        "seed",
        "9",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(CONFIDENT);
    let out = moola(&args, root);
    assert!(out.status.success(), "{out:?}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("cv/metrics.json")).unwrap()).unwrap();

    // The probabilities it wrote (6 decimals), row i = window i.
    let mut csv = csv::Reader::from_path(root.join("cv/oof_probabilities.csv")).unwrap();
    let (classes, y) = encode_sorted(set.labels.as_ref().unwrap());
    assert_eq!(metrics["classes"], serde_json::json!(classes));
    let mut proba = Vec::new();
    for (i, rec) in csv.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(&rec[0], set.ids[i]);
        let row: Vec<f64> = (0..classes.len())
            .map(|k| rec[2 + k].parse().unwrap())
            .collect();
        proba.push(row);
    }
    assert_eq!(proba.len(), set.len());
    // The rounding to 6 decimals moves each probability by at most 5e-7.
    let r = recompute(&y, &proba);
    assert_informative(&r, &proba);
    check_report(&metrics["oof"], &r, 1e-12, 1e-5);

    // The per-fold metrics on each fold's held-out rows, and their means.
    let folds = moola::splits::make_folds(&y, 3, 9).unwrap();
    let details = metrics["fold_details"].as_array().unwrap();
    assert_eq!(details.len(), 3);
    let mut means = [0.0; 4];
    for (fold, detail) in folds.iter().zip(details) {
        assert_eq!(detail["val_size"], fold.val_idx.len());
        let yv: Vec<usize> = fold.val_idx.iter().map(|&i| y[i]).collect();
        let pv: Vec<Vec<f64>> = fold.val_idx.iter().map(|&i| proba[i].clone()).collect();
        let r = recompute(&yv, &pv);
        let values = [
            r.accuracy,
            r.weighted_avg[0],
            r.weighted_avg[1],
            r.weighted_avg[2],
        ];
        for ((name, v), mean) in ["accuracy", "precision", "recall", "f1"]
            .iter()
            .zip(values)
            .zip(&mut means)
        {
            assert_close(
                &format!("fold {} {name}", fold.fold),
                &detail[name],
                v,
                1e-12,
            );
            *mean += v / 3.0;
        }
    }
    for (name, mean) in ["accuracy", "precision", "recall", "f1"].iter().zip(means) {
        assert_close(&format!("mean {name}"), &metrics[name], mean, 1e-12);
    }
}
