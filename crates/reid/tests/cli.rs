//! The `reid` binary: exit codes and usage errors (each names the key, file or path at fault,
//! without a Rust panic, and leaves no run directory behind), `--help`, a successful tiny run,
//! and the reference's spellings of the flags (`--config_file`, `--gallery_data`, ...).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::{CommandFactory, Parser};
use reid::cli::{Cli, Command as Sub};

mod common;

fn reid(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reid"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("reid runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The run failed with exit code `code`, its standard error names every one of `names`, and it
/// holds no panic.
fn fails(out: &Output, code: i32, names: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code}:\nstdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked at"), "a panic:\n{err}");
    for name in names {
        assert!(err.contains(name), "stderr does not name `{name}`:\n{err}");
    }
    err
}

/// Every file under `dir` (relative paths), empty when it does not exist.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A synthetic Market1501 under `root` and the `KEY VALUE` pairs of a tiny resnet18 CTL run on
/// it writing to `<root>/out`.
fn tiny(root: &Path) -> Vec<String> {
    let out = root.join("out").display().to_string();
    common::tiny_ctl_pairs(
        root,
        &[
            ("SOLVER.MAX_EPOCHS", "1"),
            ("USE_MIXED_PRECISION", "False"),
            ("OUTPUT_DIR", &out),
        ],
    )
}

/// `reid --quiet train <pairs...> <extra...>`.
fn train(root: &Path, pairs: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = vec!["--quiet", "train"];
    args.extend(pairs.iter().map(String::as_str));
    args.extend(extra);
    reid(&args, root)
}

#[test]
fn help_and_version_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["train", "--help"], &["help", "test"]] {
        let out = reid(args, dir.path());
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}:\n{text}");
    }
    let top = String::from_utf8_lossy(&reid(&["--help"], dir.path()).stdout).into_owned();
    for sub in [
        "train",
        "test",
        "create-embeddings",
        "get-similar",
        "evaluate",
    ] {
        assert!(top.contains(sub), "--help lists no `{sub}`:\n{top}");
    }
    let train =
        String::from_utf8_lossy(&reid(&["train", "--help"], dir.path()).stdout).into_owned();
    assert!(train.contains("--config-file"), "{train}");
    assert!(reid(&["--version"], dir.path()).status.success());
    assert!(files_under(dir.path()).is_empty(), "--help wrote files");
}

#[test]
fn unknown_subcommands_and_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    fails(&reid(&[], cwd), 2, &["Usage"]);
    fails(&reid(&["frobnicate"], cwd), 2, &["frobnicate"]);
    fails(&reid(&["--bogus", "train"], cwd), 2, &["--bogus"]);
    fails(
        &reid(&["train", "--model", "huge"], cwd),
        2,
        &["huge", "--model"],
    );
    fails(&reid(&["--device", "tpu", "train"], cwd), 2, &["tpu"]);
    // After the subcommand, among the yacs overrides (no key starts with `--`), as in moola.
    fails(&reid(&["train", "--bogus"], cwd), 2, &["--bogus"]);
    fails(&reid(&["train", "--bogus", "1"], cwd), 2, &["--bogus"]);
    fails(
        &reid(
            &["train_ctl_model", "SOLVER.BASE_LR", "1", "--bogus=2"],
            cwd,
        ),
        2,
        &["--bogus=2"],
    );
    assert!(files_under(cwd).is_empty(), "{:?}", files_under(cwd));
}

#[test]
fn configuration_errors_name_the_key_or_file_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out_dir = cwd.join("out");
    let out = out_dir.display().to_string();
    let o = out.as_str();
    let no_output = || assert!(files_under(cwd).is_empty(), "{:?}", files_under(cwd));

    // Overrides: unknown key, malformed value, a key without value, a failed semantic check.
    fails(
        &reid(&["train", "OUTPUT_DIR", o, "SOLVER.BASE_LRR", "1"], cwd),
        1,
        &["SOLVER.BASE_LRR"],
    );
    fails(
        &reid(&["train", "OUTPUT_DIR", o, "SOLVER.BASE_LR", "fast"], cwd),
        1,
        &["SOLVER.BASE_LR", "fast"],
    );
    fails(
        &reid(&["test", "OUTPUT_DIR", o, "MODEL.NAME"], cwd),
        1,
        &["MODEL.NAME"],
    );
    fails(
        &reid(
            &["train", "OUTPUT_DIR", o, "SOLVER.IMS_PER_BATCH", "0"],
            cwd,
        ),
        1,
        &["SOLVER.IMS_PER_BATCH"],
    );
    no_output();

    // Config files: missing, malformed YAML, unknown key, wrong type.
    let missing = cwd.join("configs/nope.yml");
    fails(
        &reid(
            &["train", "--config-file", &missing.display().to_string()],
            cwd,
        ),
        1,
        &["configs/nope.yml"],
    );
    let write = |name: &str, text: &str| -> String {
        let p = cwd.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bad_yaml = write("bad.yml", "SOLVER:\n  BASE_LR: [0.1\n  MAX_EPOCHS: 3\n");
    fails(
        &reid(&["train", "--config-file", &bad_yaml, "OUTPUT_DIR", o], cwd),
        1,
        &["bad.yml"],
    );
    let unknown = write("unknown.yml", "SOLVER:\n  MAX_EPOCH: 3\n");
    fails(
        &reid(&["train", "--config-file", &unknown, "OUTPUT_DIR", o], cwd),
        1,
        &["SOLVER.MAX_EPOCH", "unknown.yml"],
    );
    let wrong_type = write("type.yml", "SOLVER:\n  MAX_EPOCHS: many\n");
    fails(
        &reid(
            &["train", "--config-file", &wrong_type, "OUTPUT_DIR", o],
            cwd,
        ),
        1,
        &["SOLVER.MAX_EPOCHS", "type.yml"],
    );
    for f in ["bad.yml", "unknown.yml", "type.yml"] {
        std::fs::remove_file(cwd.join(f)).unwrap();
    }
    no_output();

    // Missing inputs: the dataset directory, the model to test.
    let nowhere = cwd.join("nowhere").display().to_string();
    for sub in ["train", "test"] {
        let mut args = vec![sub, "OUTPUT_DIR", o, "DATASETS.ROOT_DIR", &nowhere];
        if sub == "test" {
            args.extend(["MODEL.PRETRAIN_PATH", "missing.ckpt"]);
        }
        let err = fails(&reid(&args, cwd), 1, &[]);
        assert!(
            err.contains(&nowhere) || err.contains("missing.ckpt"),
            "{sub}: {err}"
        );
    }
    fails(
        &reid(&["test", "OUTPUT_DIR", o, "MODEL.PRETRAIN_PATH", ""], cwd),
        1,
        &["MODEL.PRETRAIN_PATH"],
    );
    no_output();
}

#[test]
fn failed_training_runs_leave_no_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pairs = tiny(root);
    let out_dir = root.join("out");
    let with = |extra: &[&str]| -> Vec<String> {
        let mut p = pairs.clone();
        p.extend(extra.iter().map(|s| s.to_string()));
        p
    };

    // ImageNet weights asked for (MODEL.PRETRAINED True, the default) but absent.
    let weights = root.join("models/resnet18.pth").display().to_string();
    let out = train(
        root,
        &with(&["MODEL.PRETRAINED", "True", "MODEL.PRETRAIN_PATH", &weights]),
        &[],
    );
    fails(&out, 1, &["MODEL.PRETRAIN_PATH", &weights]);
    assert!(
        files_under(&out_dir).is_empty(),
        "{:?}",
        files_under(&out_dir)
    );

    // Resuming from a checkpoint that does not exist.
    let ckpt = root.join("runs/last.ckpt").display().to_string();
    let out = train(
        root,
        &with(&[
            "MODEL.RESUME_TRAINING",
            "True",
            "MODEL.PRETRAIN_PATH",
            &ckpt,
        ]),
        &[],
    );
    fails(&out, 1, &[&ckpt]);
    assert!(
        files_under(&out_dir).is_empty(),
        "{:?}",
        files_under(&out_dir)
    );
    assert!(!root.join("runs").exists());

    // A corrupt training image met in the first batch.
    let train_dir = root.join("market1501/bounding_box_train");
    let victim = std::fs::read_dir(&train_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, b"\xff\xd8 not a jpeg").unwrap();
    let out = train(root, &pairs, &[]);
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    fails(&out, 1, &[&name]);
    assert!(
        files_under(&out_dir).is_empty(),
        "{:?}",
        files_under(&out_dir)
    );
    std::fs::write(&victim, original).unwrap();
}

#[test]
fn a_tiny_run_with_the_reference_spellings_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pairs = tiny(root);
    // The reference's `--config_file=...`, given after the overrides as its READMEs do, with a
    // flag after them too; the file sets the epochs, the command line the rest.
    let cfg = root.join("tiny.yml");
    std::fs::write(&cfg, "SOLVER:\n  MAX_EPOCHS: 1\n  EVAL_PERIOD: 1\n").unwrap();
    let flag = format!("--config_file={}", cfg.display());
    let out = train(root, &pairs, &[&flag, "--model", "base"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = files_under(&root.join("out"));
    for f in [
        "train_base_model/version_0/config.yaml",
        "train_base_model/version_0/metrics.csv",
        "train_base_model/version_0/test_report.json",
        "train_base_model/version_0/checkpoints/last.ckpt",
    ] {
        assert!(files.contains(&f.to_string()), "no {f} in {files:?}");
    }
    // The run's TensorBoard events and training curves.
    let run = root.join("out/train_base_model/version_0");
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("train_base_model/version_0/events.out.tfevents.")),
        "{files:?}"
    );
    let png =
        |p: &Path| image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(png(&run.join("curves.png")), (560, 680));
    // `reid test` of its checkpoint draws the CMC curves beside test_report.json.
    let mut test: Vec<&str> = vec!["--quiet", "test"];
    test.extend(pairs.iter().map(String::as_str));
    let ckpt = run.join("checkpoints/last.ckpt").display().to_string();
    test.extend(["MODEL.PRETRAIN_PATH", &ckpt]);
    let out = reid(&test, root);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(png(&root.join("out/test_cmc.png")), (720, 500));
    // `reid plot` on two runs (the monitor, mAP, from the first one's config.yaml), and its
    // errors.
    let both = root.join("both.png");
    let run_s = run.display().to_string();
    let out = reid(
        &["plot", &run_s, &run_s, "--out", &both.display().to_string()],
        root,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(png(&both), (1120, 680));
    fails(
        &reid(&["plot", &run_s, "no-such-run", "--out", "x.png"], root),
        1,
        &["no-such-run", "does not exist"],
    );
    fails(
        &reid(
            &["plot", &run_s, "--monitor", "Rank-99", "--out", "x.png"],
            root,
        ),
        1,
        &["metrics.csv", "`Rank-99`"],
    );
    // Resuming from a copy of that checkpoint kept outside its run (`models/last.ckpt`: the run
    // directory is then `models/`), when the resumed run fails before its first checkpoint
    // (here a corrupt image), leaves that directory and the checkpoint alone.
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let kept = models.join("last.ckpt");
    std::fs::copy(
        root.join("out/train_base_model/version_0/checkpoints/last.ckpt"),
        &kept,
    )
    .unwrap();
    std::fs::write(models.join("notes.txt"), "mine").unwrap();
    let victim = std::fs::read_dir(root.join("market1501/bounding_box_train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, b"\xff\xd8 not a jpeg").unwrap();
    let mut resume = pairs.clone();
    for (k, v) in [
        ("MODEL.RESUME_TRAINING", "True"),
        ("MODEL.PRETRAIN_PATH", &kept.display().to_string()),
        ("SOLVER.MAX_EPOCHS", "2"),
    ] {
        resume.extend([k.to_string(), v.to_string()]);
    }
    let out = train(root, &resume, &["--model", "base"]);
    fails(&out, 1, &[&victim.file_name().unwrap().to_string_lossy()]);
    assert!(kept.is_file(), "the resumed checkpoint was deleted");
    assert!(
        models.join("notes.txt").is_file(),
        "its directory was deleted"
    );
    std::fs::write(&victim, original).unwrap();

    // `--config_file <path>` (two words) and the `--config-file` spelling read the same file.
    for spelling in ["--config_file", "--config-file"] {
        let bad = root.join("bad.yml");
        std::fs::write(&bad, "SOLVER:\n  NOT_A_KEY: 1\n").unwrap();
        let out = reid(
            &[
                "train",
                spelling,
                &bad.display().to_string(),
                "OUTPUT_DIR",
                "x",
            ],
            root,
        );
        fails(&out, 1, &["SOLVER.NOT_A_KEY", "bad.yml"]);
    }
}

fn parse(line: &[&str]) -> Cli {
    let mut args = vec!["reid".to_string()];
    args.extend(line.iter().map(|s| s.to_string()));
    let args = kiln::cli::hoist_flags(&Cli::command(), args);
    Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn the_reference_flag_spellings_parse_as_their_flags() {
    // inference/create_embeddings.py and get_similar.py spell their flags with underscores.
    let cli = parse(&[
        "create-embeddings",
        "--config_file",
        "c.yml",
        "--images_in_subfolders",
        "MODEL.PRETRAIN_PATH",
        "m.ckpt",
    ]);
    let Sub::CreateEmbeddings(a) = cli.command else {
        panic!("not create-embeddings")
    };
    assert!(a.images_in_subfolders);
    assert_eq!(a.common.config_file, Some(PathBuf::from("c.yml")));
    assert_eq!(a.common.opts, ["MODEL.PRETRAIN_PATH", "m.ckpt"]);

    // Flags after the overrides, `=` or not.
    let cli = parse(&[
        "get-similar",
        "DATASETS.ROOT_DIR",
        "q",
        "--config_file=c.yml",
        "--gallery_data",
        "g",
        "--normalize_features",
        "--images_in_subfolders",
        "--topk",
        "5",
    ]);
    let Sub::GetSimilar(a) = cli.command else {
        panic!("not get-similar")
    };
    assert_eq!(a.gallery_data, PathBuf::from("g"));
    assert!(a.normalize_features && a.images_in_subfolders);
    assert_eq!(a.topk, 5);
    assert_eq!(a.common.config_file, Some(PathBuf::from("c.yml")));
    assert_eq!(a.common.opts, ["DATASETS.ROOT_DIR", "q"]);

    // The binary takes them too: it gets as far as the gallery directory.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.ckpt");
    std::fs::write(&model, b"not used").unwrap();
    let out = reid(
        &[
            "get-similar",
            "MODEL.PRETRAIN_PATH",
            &model.display().to_string(),
            "--gallery_data",
            "no-gallery",
            "--normalize_features",
        ],
        dir.path(),
    );
    fails(&out, 1, &["no-gallery"]);
}

#[test]
fn the_reference_script_names_are_subcommands() {
    let cli = parse(&["train_ctl_model", "SOLVER.MAX_EPOCHS", "2"]);
    let Sub::Train(a) = cli.command else {
        panic!("not train")
    };
    assert_eq!(a.model, reid::StepKind::Ctl);
    assert_eq!(a.common.opts, ["SOLVER.MAX_EPOCHS", "2"]);
    let cli = parse(&["create_embeddings", "--images_in_subfolders"]);
    assert!(matches!(cli.command, Sub::CreateEmbeddings(_)));
    let cli = parse(&["get_similar", "--gallery-data", "g", "--exact"]);
    assert!(matches!(cli.command, Sub::GetSimilar(_)));
    // train_base_model is `train --model base`.
    let args = reid::cli::script_names(
        ["reid", "train_base_model", "SOLVER.MAX_EPOCHS", "2"]
            .map(String::from)
            .to_vec(),
    );
    let cli = Cli::try_parse_from(kiln::cli::hoist_flags(&Cli::command(), args)).unwrap();
    let Sub::Train(a) = cli.command else {
        panic!("not train")
    };
    assert_eq!(a.model, reid::StepKind::Base);
    assert_eq!(a.common.opts, ["SOLVER.MAX_EPOCHS", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = reid(&["train_base_model", "--help"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--model"));
}
