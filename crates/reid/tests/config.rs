//! ReidConfig: defaults of the reference's config/defaults.py, the shipped yml files, yacs
//! override semantics, and error paths.

use std::path::{Path, PathBuf};

use reid::config::{ReidConfig, derived_num_workers};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ov(pairs: &[&str]) -> Vec<String> {
    pairs.iter().map(|s| s.to_string()).collect()
}

fn load_yaml(text: &str) -> anyhow::Result<ReidConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("user.yml");
    std::fs::write(&path, text)?;
    ReidConfig::load(Some(&path), &[])
}

fn err_of(result: anyhow::Result<ReidConfig>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

#[test]
fn defaults_match_the_reference() {
    let cfg = ReidConfig::load(None, &[]).unwrap();
    assert_eq!(cfg, ReidConfig::default());
    // Values of the reference's config/defaults.py.
    assert_eq!(cfg.model.name, "resnet50");
    assert_eq!(cfg.model.backbone_emb_size, 2048);
    assert_eq!(cfg.model.last_stride, 1);
    assert!(cfg.model.pretrained);
    assert_eq!(cfg.model.pretrain_path, "");
    assert!(!cfg.model.use_centroids);
    assert!(cfg.model.keep_camid_centroids);
    assert_eq!(cfg.input.size_train, [256, 128]);
    assert_eq!(cfg.input.size_test, [256, 128]);
    assert_eq!(cfg.input.prob, 0.5);
    assert_eq!(cfg.input.re_prob, 0.5);
    assert_eq!(cfg.input.pixel_mean, [0.485, 0.456, 0.406]);
    assert_eq!(cfg.input.pixel_std, [0.229, 0.224, 0.225]);
    assert_eq!(cfg.input.padding, 10);
    assert_eq!(cfg.datasets.names, "market1501");
    assert_eq!(cfg.datasets.root_dir, "/home/data");
    assert_eq!(cfg.datasets.json_train_path, "");
    assert_eq!(cfg.dataloader.num_workers, 6);
    assert_eq!(cfg.dataloader.sampler, "random_identity");
    assert_eq!(cfg.dataloader.num_instance, 4);
    assert!(cfg.dataloader.drop_last);
    assert!(cfg.dataloader.use_resampling);
    assert_eq!(cfg.solver.optimizer_name, "Adam");
    assert_eq!(cfg.solver.max_epochs, 120);
    assert_eq!(cfg.solver.base_lr, 1e-4);
    assert_eq!(cfg.solver.momentum, 0.9);
    assert_eq!(cfg.solver.margin, 0.5);
    assert_eq!(cfg.solver.distance_func, "euclidean");
    assert_eq!(cfg.solver.cluster_margin, 0.3);
    assert_eq!(cfg.solver.center_lr, 0.5);
    assert_eq!(cfg.solver.center_loss_weight, 0.0005);
    assert_eq!(cfg.solver.weight_decay, 0.0005);
    assert_eq!(cfg.solver.weight_decay_bias, 0.0005);
    assert_eq!(cfg.solver.lr_scheduler_name, "multistep_lr");
    assert_eq!(cfg.solver.gamma, 0.1);
    assert_eq!(cfg.solver.lr_steps, vec![40, 70]);
    assert!(cfg.solver.use_warmup_lr);
    assert_eq!(cfg.solver.warmup_epochs, 10);
    assert_eq!(cfg.solver.monitor_metric_name, "mAP");
    assert_eq!(cfg.solver.monitor_metric_mode, "max");
    assert_eq!(cfg.solver.checkpoint_period, 50);
    assert_eq!(cfg.solver.eval_period, 5);
    assert_eq!(cfg.solver.ims_per_batch, 64);
    assert_eq!(cfg.solver.dist_backend, "ddp");
    assert_eq!(cfg.solver.query_xent_weight, 1.0);
    assert_eq!(cfg.solver.query_contrastive_weight, 1.0);
    assert_eq!(cfg.solver.centroid_contrastive_weight, 1.0);
    assert!(!cfg.solver.use_automatic_optim);
    assert_eq!(cfg.test.ims_per_batch, 128);
    assert_eq!(cfg.test.weight, "");
    assert!(cfg.test.feat_norm);
    assert!(!cfg.test.only_test);
    assert_eq!(cfg.test.visualize, "no");
    assert_eq!(cfg.test.visualize_topk, 10);
    assert_eq!(cfg.test.visualize_max_number, 1_000_000);
    assert_eq!(cfg.gpu_ids, vec![0]);
    assert_eq!(cfg.log_dir, "logs");
    assert!(cfg.use_mixed_precision);
    assert_eq!(cfg.output_dir, "");
    assert!(!cfg.reproducible);
    assert_eq!(cfg.reproducible_num_runs, 3);
    assert_eq!(cfg.reproducible_seed, 0);
    cfg.validate().unwrap();
}

#[test]
fn shipped_configs_load_with_the_reference_values() {
    let small = ReidConfig::load(Some(&repo_root().join("configs/256_resnet50.yml")), &[]).unwrap();
    let mut expected = ReidConfig::default();
    expected.model.pretrain_path = "./models/resnet50-19c8e357.pth".into();
    expected.solver.eval_period = 40;
    assert_eq!(small, expected);
    small.validate().unwrap();

    let large = ReidConfig::load(
        Some(&repo_root().join("configs/320_resnet50_ibn_a.yml")),
        &[],
    )
    .unwrap();
    expected.model.name = "resnet50_ibn_a".into();
    expected.model.pretrain_path = "./models/r50_ibn_a.pth".into();
    expected.input.size_train = [320, 320];
    expected.input.size_test = [320, 320];
    assert_eq!(large, expected);
    large.validate().unwrap();
}

/// A yml for the original project listing every key, in the reference's formatting: quoted
/// strings, Python booleans, a tuple written as a string, exponent floats.
const EVERY_KEY_YML: &str = r#"
MODEL:
  NAME: 'resnet50_ibn_a'
  BACKBONE_EMB_SIZE: 2048
  LAST_STRIDE: 1
  PRETRAINED: False
  PRETRAIN_PATH: "logs/market1501/epoch=119.ckpt"
  USE_CENTROIDS: True
  KEEP_CAMID_CENTROIDS: False
  RESUME_TRAINING: False
INPUT:
  SIZE_TRAIN: [320, 320]
  SIZE_TEST: (320, 320)
  PROB: 0.5
  RE_PROB: 0.0
  PIXEL_MEAN: [0.5, 0.5, 0.5]
  PIXEL_STD: [0.5, 0.5, 0.5]
  PADDING: 4
DATASETS:
  NAMES: 'df1'
  ROOT_DIR: '/data/df1/128_256_images/'
  JSON_TRAIN_PATH: "/data/df1/train_128_256.json"
DATALOADER:
  NUM_WORKERS: 8
  SAMPLER: 'random_identity'
  NUM_INSTANCE: 4
  DROP_LAST: True
  USE_RESAMPLING: False
SOLVER:
  OPTIMIZER_NAME: "Adam"
  MAX_EPOCHS: 60
  BASE_LR: 3.5e-4
  MOMENTUM: 0.9
  MARGIN: 0.3
  DISTANCE_FUNC: 'cosine'
  CLUSTER_MARGIN: 0.3
  CENTER_LR: 0.5
  CENTER_LOSS_WEIGHT: 0.0005
  WEIGHT_DECAY: 0.0005
  WEIGHT_DECAY_BIAS: 0.0005
  LR_SCHEDULER_NAME: 'multistep_lr'
  GAMMA: 0.1
  LR_STEPS: (20, 40)
  USE_WARMUP_LR: True
  WARMUP_EPOCHS: 5
  MONITOR_METRIC_NAME: "mAP"
  MONITOR_METRIC_MODE: "max"
  CHECKPOINT_PERIOD: 50
  EVAL_PERIOD: 10
  IMS_PER_BATCH: 48
  DIST_BACKEND: "ddp"
  QUERY_XENT_WEIGHT: 1.0
  QUERY_CONTRASTIVE_WEIGHT: 1.0
  CENTROID_CONTRASTIVE_WEIGHT: 0.5
  USE_AUTOMATIC_OPTIM: False
TEST:
  IMS_PER_BATCH: 256
  WEIGHT: ''
  FEAT_NORM: True
  ONLY_TEST: False
  VISUALIZE: "yes"
  VISUALIZE_TOPK: 5
  VISUALIZE_MAX_NUMBER: 100
GPU_IDS: [0, 1]
LOG_DIR: "logs"
USE_MIXED_PRECISION: False
OUTPUT_DIR: "runs/df1"
REPRODUCIBLE: True
REPRODUCIBLE_NUM_RUNS: 1
REPRODUCIBLE_SEED: 42
"#;

#[test]
fn a_reference_yml_with_every_key_loads_unchanged() {
    let cfg = load_yaml(EVERY_KEY_YML).unwrap();
    assert_eq!(cfg.model.name, "resnet50_ibn_a");
    assert!(!cfg.model.pretrained);
    assert_eq!(cfg.model.pretrain_path, "logs/market1501/epoch=119.ckpt");
    assert!(cfg.model.use_centroids);
    assert!(!cfg.model.keep_camid_centroids);
    assert_eq!(cfg.input.size_train, [320, 320]);
    assert_eq!(cfg.input.size_test, [320, 320], "a tuple string is a list");
    assert_eq!(cfg.input.re_prob, 0.0);
    assert_eq!(cfg.input.pixel_mean, [0.5; 3]);
    assert_eq!(cfg.input.padding, 4);
    assert_eq!(cfg.datasets.names, "df1");
    assert_eq!(cfg.datasets.root_dir, "/data/df1/128_256_images/");
    assert_eq!(cfg.datasets.json_train_path, "/data/df1/train_128_256.json");
    assert_eq!(cfg.dataloader.num_workers, 8);
    assert!(!cfg.dataloader.use_resampling);
    assert_eq!(cfg.solver.max_epochs, 60);
    assert_eq!(cfg.solver.base_lr, 3.5e-4);
    assert_eq!(cfg.solver.margin, 0.3);
    assert_eq!(cfg.solver.distance_func, "cosine");
    assert_eq!(cfg.solver.lr_steps, vec![20, 40]);
    assert_eq!(cfg.solver.warmup_epochs, 5);
    assert_eq!(cfg.solver.eval_period, 10);
    assert_eq!(cfg.solver.ims_per_batch, 48);
    assert_eq!(cfg.solver.centroid_contrastive_weight, 0.5);
    assert_eq!(cfg.test.ims_per_batch, 256);
    assert_eq!(cfg.test.visualize, "yes");
    assert_eq!(cfg.test.visualize_topk, 5);
    assert_eq!(cfg.test.visualize_max_number, 100);
    assert_eq!(cfg.gpu_ids, vec![0, 1]);
    assert!(!cfg.use_mixed_precision);
    assert_eq!(cfg.output_dir, "runs/df1");
    assert!(cfg.reproducible);
    assert_eq!(cfg.reproducible_num_runs, 1);
    assert_eq!(cfg.reproducible_seed, 42);
    cfg.validate().unwrap();

    // What we write loads back identically.
    let dir = tempfile::tempdir().unwrap();
    let dumped = dir.path().join("config.yaml");
    cfg.save(&dumped).unwrap();
    assert_eq!(ReidConfig::load(Some(&dumped), &[]).unwrap(), cfg);
}

#[test]
fn command_line_overrides_follow_yacs() {
    for names in ["dukemtmcreid", "'dukemtmcreid'", "\"dukemtmcreid\""] {
        let cfg = ReidConfig::load(None, &ov(&["DATASETS.NAMES", names])).unwrap();
        assert_eq!(cfg.datasets.names, "dukemtmcreid", "{names}");
    }
    let cfg = ReidConfig::load(
        Some(&repo_root().join("configs/256_resnet50.yml")),
        &ov(&[
            "SOLVER.IMS_PER_BATCH",
            "16",
            "SOLVER.BASE_LR",
            "3.5e-4",
            "DATALOADER.USE_RESAMPLING",
            "False",
            "USE_MIXED_PRECISION",
            "False",
            "GPU_IDS",
            "[0]",
            "SOLVER.LR_STEPS",
            "(30, 60)",
            "INPUT.SIZE_TRAIN",
            "[64, 32]",
            "INPUT.PIXEL_MEAN",
            "[0, 0.5, 1]",
            "DATASETS.ROOT_DIR",
            "/data/reid",
            "OUTPUT_DIR",
            "''",
            "TEST.VISUALIZE",
            "yes",
            "REPRODUCIBLE_SEED",
            "7",
            "SOLVER.EVAL_PERIOD",
            "1",
        ]),
    )
    .unwrap();
    assert_eq!(cfg.solver.ims_per_batch, 16);
    assert_eq!(cfg.solver.base_lr, 3.5e-4);
    assert!(!cfg.dataloader.use_resampling);
    assert!(!cfg.use_mixed_precision);
    assert_eq!(cfg.gpu_ids, vec![0]);
    assert_eq!(cfg.solver.lr_steps, vec![30, 60]);
    assert_eq!(cfg.input.size_train, [64, 32]);
    assert_eq!(cfg.input.pixel_mean, [0.0, 0.5, 1.0]);
    assert_eq!(cfg.datasets.root_dir, "/data/reid");
    assert_eq!(cfg.output_dir, "");
    assert_eq!(cfg.test.visualize, "yes");
    assert_eq!(cfg.reproducible_seed, 7);
    // The command line wins over the file (EVAL_PERIOD 40 in the yml).
    assert_eq!(cfg.solver.eval_period, 1);
    // Keys neither the file nor the command line touched keep their defaults.
    assert_eq!(cfg.solver.center_lr, 0.5);
    assert_eq!(cfg.train_batch_images(), 64);
    cfg.validate().unwrap();
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let msg = err_of(ReidConfig::load(None, &ov(&["SOLVER.BASE_LRX", "0.1"])));
    assert!(msg.contains("SOLVER.BASE_LRX"), "{msg}");
    let msg = err_of(ReidConfig::load(None, &ov(&["MODEL.NECK", "bnneck"])));
    assert!(msg.contains("MODEL.NECK"), "{msg}");
    let msg = err_of(load_yaml("TEST:\n  NECK_FEAT: 'after'\n"));
    assert!(
        msg.contains("TEST.NECK_FEAT") && msg.contains("user.yml"),
        "{msg}"
    );
    let msg = err_of(load_yaml("SEED: 3\n"));
    assert!(msg.contains("SEED"), "{msg}");
}

#[test]
fn type_mismatches_are_errors_naming_the_key() {
    for (key, value) in [
        ("SOLVER.MAX_EPOCHS", "1.5"),
        ("SOLVER.BASE_LR", "fast"),
        ("MODEL.PRETRAINED", "yes"),
        ("TEST.VISUALIZE", "True"),
        ("GPU_IDS", "0"),
        ("SOLVER.LR_STEPS", "[40.5, 70]"),
        ("DATASETS.NAMES", "['market1501']"),
        ("INPUT", "3"),
    ] {
        let msg = err_of(ReidConfig::load(None, &ov(&[key, value])));
        assert!(msg.contains(key), "{key} {value}: {msg}");
    }
    // Shapes and ranges the typed fields enforce.
    for (key, value) in [
        ("INPUT.SIZE_TRAIN", "[256]"),
        ("INPUT.PIXEL_MEAN", "[0.5, 0.5]"),
        ("SOLVER.MAX_EPOCHS", "-3"),
    ] {
        let msg = err_of(ReidConfig::load(None, &ov(&[key, value])));
        assert!(msg.contains(key), "{key} {value}: {msg}");
    }
    let msg = err_of(ReidConfig::load(None, &ov(&["SOLVER.BASE_LR"])));
    assert!(msg.contains("pairs"), "{msg}");
    let msg = err_of(load_yaml("SOLVER: [1, 2\n"));
    assert!(msg.contains("user.yml"), "{msg}");
}

#[test]
fn validate_reports_every_problem_with_its_key() {
    let check = |pairs: &[&str], key: &str| {
        let cfg = ReidConfig::load(None, &ov(pairs)).unwrap();
        let msg = format!("{:#}", cfg.validate().expect_err(key));
        assert!(msg.contains(key), "{pairs:?}: {msg}");
    };
    check(&["MODEL.NAME", "resnet9"], "MODEL.NAME");
    check(&["MODEL.NAME", "resnet18"], "MODEL.BACKBONE_EMB_SIZE");
    check(&["MODEL.LAST_STRIDE", "3"], "MODEL.LAST_STRIDE");
    check(&["SOLVER.IMS_PER_BATCH", "1"], "SOLVER.IMS_PER_BATCH");
    check(&["DATALOADER.NUM_INSTANCE", "1"], "DATALOADER.NUM_INSTANCE");
    check(
        &["SOLVER.DISTANCE_FUNC", "manhattan"],
        "SOLVER.DISTANCE_FUNC",
    );
    check(&["SOLVER.OPTIMIZER_NAME", "SGD"], "SOLVER.OPTIMIZER_NAME");
    check(
        &["SOLVER.LR_SCHEDULER_NAME", "cosine_annealing"],
        "SOLVER.LR_SCHEDULER_NAME",
    );
    check(&["SOLVER.LR_STEPS", "[70, 40]"], "SOLVER.LR_STEPS");
    check(
        &["SOLVER.CENTER_LOSS_WEIGHT", "0.0"],
        "SOLVER.CENTER_LOSS_WEIGHT",
    );
    check(&["DATASETS.NAMES", "cuhk03"], "DATASETS.NAMES");
    check(&["DATASETS.NAMES", "df1"], "DATASETS.JSON_TRAIN_PATH");
    check(&["DATALOADER.SAMPLER", "softmax"], "DATALOADER.SAMPLER");
    check(&["INPUT.PROB", "1.5"], "INPUT.PROB");
    check(&["INPUT.SIZE_TEST", "[0, 128]"], "INPUT.SIZE_TEST");
    check(&["INPUT.PIXEL_STD", "[0.2, 0.0, 0.2]"], "INPUT.PIXEL_STD");
    check(&["TEST.VISUALIZE", "maybe"], "TEST.VISUALIZE");
    check(&["TEST.IMS_PER_BATCH", "0"], "TEST.IMS_PER_BATCH");

    // resnet18 with its 512-d embedding is fine.
    let ok = ReidConfig::load(
        None,
        &ov(&["MODEL.NAME", "resnet18", "MODEL.BACKBONE_EMB_SIZE", "512"]),
    )
    .unwrap();
    ok.validate().unwrap();

    // Several problems: one error listing all of them.
    let cfg = ReidConfig::load(
        None,
        &ov(&["SOLVER.IMS_PER_BATCH", "0", "SOLVER.DISTANCE_FUNC", "l1"]),
    )
    .unwrap();
    let msg = format!("{:#}", cfg.validate().unwrap_err());
    assert!(
        msg.contains("SOLVER.IMS_PER_BATCH") && msg.contains("SOLVER.DISTANCE_FUNC"),
        "{msg}"
    );
}

#[test]
fn run_main_overwrites_log_dir_and_workers() {
    assert_eq!(derived_num_workers(16, &[0]), 16);
    assert_eq!(derived_num_workers(16, &[0, 1]), 8);
    assert_eq!(derived_num_workers(6, &[0, 1, 2, 3]), 1);
    assert_eq!(derived_num_workers(2, &[0, 1, 2, 3]), 1, "never 0");
    assert_eq!(derived_num_workers(8, &[]), 8, "no device ids: a CPU run");

    let mut cfg = ReidConfig::load(
        None,
        &ov(&[
            "DATASETS.NAMES",
            "dukemtmcreid",
            "LOG_DIR",
            "ignored",
            "GPU_IDS",
            "[0, 1]",
        ]),
    )
    .unwrap();
    assert_eq!(cfg.derived_log_dir(), "logs/dukemtmcreid");
    cfg.apply_run_main_overrides(12);
    assert_eq!(cfg.log_dir, "logs/dukemtmcreid");
    assert_eq!(cfg.dataloader.num_workers, 6);

    let mut cfg = ReidConfig::load(None, &ov(&["OUTPUT_DIR", "runs/exp1"])).unwrap();
    cfg.apply_run_main_overrides(4);
    assert_eq!(cfg.log_dir, "runs/exp1");
    assert_eq!(cfg.dataloader.num_workers, 4);
}
