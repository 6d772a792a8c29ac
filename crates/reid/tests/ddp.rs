//! Data-parallel CTL training across two processes on loopback.
//!
//! The test re-runs its own binary as two workers (`REID_DDP_ROLE=worker`), each one flex device
//! sampling its own share of every epoch's P×K plan. Batch norm and the in-batch centroids make
//! two half batches differ from one big batch (as in PyTorch's DDP), so the checks are that the
//! loss goes down and that both replicas hold bit-identical weights after every step (the
//! trainer's replica check hashes all weights and buffers after each step and compares them
//! across ranks), and that only rank 0 writes a run directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::backend::{Autodiff, Flex};
use kiln::dist::{Dist, DistConfig};
use reid::cli::StepKind;
use reid::config::ReidConfig;
use reid::data::{SyntheticSpec, load_dataset, write_synthetic_market1501};
use reid::train::{FitOptions, fit};

type B = Autodiff<Flex>;

const ROLE: &str = "REID_DDP_ROLE";

fn write_data(root: &Path) {
    write_synthetic_market1501(
        root,
        &SyntheticSpec {
            train_ids: 8,
            train_per_camera: 3,
            distractors: 1,
            ..SyntheticSpec::default()
        },
        1,
    )
    .unwrap();
}

fn config(root: &Path, logs: &Path) -> ReidConfig {
    let opts: Vec<String> = [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", &root.display().to_string()),
        ("INPUT.SIZE_TRAIN", "[32, 16]"),
        ("INPUT.SIZE_TEST", "[32, 16]"),
        ("SOLVER.IMS_PER_BATCH", "3"),
        ("SOLVER.MAX_EPOCHS", "6"),
        ("SOLVER.EVAL_PERIOD", "6"),
        ("SOLVER.BASE_LR", "1e-3"),
        ("SOLVER.USE_WARMUP_LR", "False"),
        ("TEST.IMS_PER_BATCH", "8"),
        ("DATALOADER.USE_RESAMPLING", "False"),
        ("DATALOADER.NUM_WORKERS", "0"),
        ("OUTPUT_DIR", &logs.display().to_string()),
        ("REPRODUCIBLE", "True"),
        ("REPRODUCIBLE_NUM_RUNS", "1"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    let cfg = ReidConfig::load(None, &opts).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn spawn_worker(rank: usize, port: u16, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ddp_worker",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE, "worker")
        .env("REID_DDP_RANK", rank.to_string())
        .env("REID_DDP_PORT", port.to_string())
        .env("DDP_DATA_PORT", free_data_port().to_string())
        .env("REID_DDP_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The worker body (runs only when re-executed by the test below).
#[test]
fn ddp_worker() {
    if std::env::var(ROLE).as_deref() != Ok("worker") {
        return;
    }
    let rank: usize = std::env::var("REID_DDP_RANK").unwrap().parse().unwrap();
    let port: u16 = std::env::var("REID_DDP_PORT").unwrap().parse().unwrap();
    let dir = PathBuf::from(std::env::var("REID_DDP_DIR").unwrap());
    // Both ranks must run the same configuration (the trainer checks a fingerprint of it).
    let cfg = config(&dir.join("data"), &dir.join("logs"));
    let dataset = load_dataset(&cfg).unwrap();
    let device = Default::default();
    let dist = Dist::init::<Flex>(
        &DistConfig {
            num_nodes: 2,
            node_rank: rank,
            devices_per_node: 1,
            orchestrator: format!("127.0.0.1:{port}"),
            start_orchestrator: true,
            data_port: std::env::var("DDP_DATA_PORT").unwrap().parse().unwrap(),
            timeout_secs: 60.0,
        },
        0,
        &device,
    )
    .unwrap();
    let options = FitOptions {
        dist: Some(dist),
        check_replicas: true,
        ..FitOptions::default()
    };
    let summary = fit::<B>(&cfg, &dataset, StepKind::Ctl, 0, &options, &device).unwrap();
    println!("rank {rank} done after {} epochs", summary.epochs);
}

#[test]
fn two_process_ctl_training_lowers_the_loss_with_identical_replicas() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_data(&dir.path().join("data"));
    let port = kiln::dist::free_ports(1).unwrap()[0];
    let workers = [
        spawn_worker(0, port, dir.path()),
        spawn_worker(1, port, dir.path()),
    ];
    for (rank, mut child) in workers.into_iter().enumerate() {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                let log = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(status.success(), "rank {rank} failed:\n{log}");
                assert!(
                    log.contains(&format!("rank {rank} done after 6 epochs")),
                    "{log}"
                );
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                panic!("rank {rank} did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Only rank 0 wrote a run directory, with the usual files.
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("logs/train_ctl_model"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert!(run.join("test_report.json").exists());
    let rows = kiln::metric_log::read_csv(&run.join("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 6);
    let loss = |e: usize| rows[e].1["train_loss"];
    assert!(loss(5) < loss(0), "train loss {} -> {}", loss(0), loss(5));
    assert!(rows[5].1.contains_key("mAP"), "{:?}", rows[5].1);
}

/// A port that is free now, for a node's data service (the default, orchestrator port + 1 +
/// rank, could be taken on a busy machine).
fn free_data_port() -> u16 {
    kiln::dist::free_ports(1).unwrap()[0]
}
