//! Data-parallel training across two processes on loopback (kiln's `ddp` strategy on
//! burn-collective), checked against one process trained on the full batch.
//!
//! The test re-runs its own binary as the two workers (`MOOLA_DDP_ROLE=worker`): each is one
//! flex device holding half of every global batch. Mean-all-reduced gradients make a step on two
//! half batches the step on the whole batch, so after the same optimiser steps both replicas
//! hold the single process's weights (up to float summation order). Dropout, augmentation and
//! mixup are off, and SimpleLSTM has no batch norm, so nothing else differs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use kiln::amp::{Precision, PrecisionSetting};
use kiln::backend::{Autodiff, Flex};
use kiln::dist::{Dist, DistConfig};
use moola::data::WindowSet;
use moola::model::{ModelSpec, SimpleLstmConfig};
use moola::train::{self, RunOptions, TrainConfig};

mod tiny;

type B = Autodiff<Flex>;

const ROLE: &str = "MOOLA_DDP_ROLE";

fn data() -> WindowSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/BasicMotions/BasicMotions_TRAIN.ts");
    moola::data::read_any(&path).unwrap()
}

fn spec() -> ModelSpec {
    ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.0,
    })
}

/// Per-replica batch `batch_size`, 2 epochs, no validation, augmentation or mixup.
fn recipe(batch_size: usize) -> TrainConfig {
    let mut c = TrainConfig::for_model("simple_lstm");
    c.n_epochs = 2;
    c.batch_size = batch_size;
    c.val_split = 0.0;
    c.mixup_alpha = 0.0;
    c.cutmix_prob = 0.0;
    c.temporal_aug.enabled = false;
    c.precision = PrecisionSetting::Fixed(Precision::F32);
    c
}

fn weights<Bk: Backend, M: Module<Bk>>(m: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<Bk: Backend> ModuleVisitor<Bk> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
            self.0.extend(
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// A port that nothing listens on now, below the ephemeral range (for an orchestrator or a
/// node's data service; the default data port, orchestrator port + 1 + rank, could be taken).
fn free_port() -> u16 {
    kiln::dist::free_ports(1).unwrap()[0]
}

fn spawn_worker(rank: usize, port: u16, out: &Path) -> Child {
    spawn_worker_with(rank, port, out, &[])
}

fn spawn_worker_with(rank: usize, port: u16, out: &Path, env: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "--exact",
            "ddp_worker",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE, "worker")
        .env("MOOLA_DDP_RANK", rank.to_string())
        .env("MOOLA_DDP_PORT", port.to_string())
        .env("DDP_DATA_PORT", free_port().to_string())
        .env("MOOLA_DDP_OUT", out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait(mut child: Child, limit: Duration, what: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(status.success(), "{what} failed:\n{text}");
            return text;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worker body (runs only when re-executed by the test below).
#[test]
fn ddp_worker() {
    if std::env::var(ROLE).as_deref() != Ok("worker") {
        return;
    }
    let rank: usize = std::env::var("MOOLA_DDP_RANK").unwrap().parse().unwrap();
    let port: u16 = std::env::var("MOOLA_DDP_PORT").unwrap().parse().unwrap();
    let out = PathBuf::from(std::env::var("MOOLA_DDP_OUT").unwrap());
    let cfg = DistConfig {
        num_nodes: 2,
        node_rank: rank,
        devices_per_node: 1,
        orchestrator: format!("127.0.0.1:{port}"),
        start_orchestrator: true,
        data_port: 0,
        timeout_secs: 60.0,
    };
    let device = Default::default();
    let dist = Dist::init::<Flex>(&cfg, 0, &device).unwrap();
    // Optional: epochs, a run directory (rank 0 writes checkpoints there) and a resume point.
    let env = |k: &str| std::env::var(k).ok();
    let run = RunOptions {
        dist: Some(dist),
        run_dir: env("MOOLA_DDP_RUN_DIR").map(PathBuf::from),
        resume_from: env("MOOLA_DDP_RESUME").map(PathBuf::from),
        ..RunOptions::default()
    };
    let mut recipe = recipe(4);
    if let Some(e) = env("MOOLA_DDP_EPOCHS") {
        recipe.n_epochs = e.parse().unwrap();
    }
    let fitted = train::fit::<B>(&spec(), &recipe, &data(), &device, &run).unwrap();
    let w: Vec<u8> = weights(&fitted.net)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tag = env("MOOLA_DDP_TAG").unwrap_or_default();
    std::fs::write(out.join(format!("{tag}rank{rank}.bin")), w).unwrap();
    let loss = |e: usize| fitted.history[e].1["train_loss"];
    println!("rank {rank}: train_loss {} -> {}", loss(0), loss(1));
}

#[test]
fn two_processes_on_half_batches_match_one_process_on_the_full_batch() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let workers = [
        spawn_worker(0, port, dir.path()),
        spawn_worker(1, port, dir.path()),
    ];

    // Meanwhile: one process, the whole global batch (2 × 4).
    let device = Default::default();
    let single = train::fit::<B>(
        &spec(),
        &recipe(8),
        &data(),
        &device,
        &RunOptions::default(),
    )
    .unwrap();
    let expected = weights(&single.net);

    for (rank, child) in workers.into_iter().enumerate() {
        let log = wait(child, Duration::from_secs(300), &format!("rank {rank}"));
        assert!(log.contains(&format!("rank {rank}: train_loss")), "{log}");
    }
    let read = |rank: usize| -> Vec<f32> {
        std::fs::read(dir.path().join(format!("rank{rank}.bin")))
            .unwrap()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (w0, w1) = (read(0), read(1));
    assert_eq!(w0, w1, "the replicas diverged");
    assert_eq!(w0.len(), expected.len());
    // 5 batches × 2 epochs = 10 AdamW steps at the recipe's lr 5e-4. One tensor is set
    // apart: the attention's key bias (`in_proj_bias[E..2E]`) gets an exactly-zero gradient in
    // exact arithmetic (softmax ignores a shift shared by all keys of a query), so both runs
    // see only float noise there, which Adam's g/√v turns into ±lr-sized steps. It stays
    // within the 10 · lr such steps can move it.
    let e = 16;
    let mut off = 0;
    for (name, dims) in kiln::checkpoint::param_shapes(&single.net) {
        let n: usize = dims.iter().product();
        for i in 0..n {
            let d = (w0[off + i] - expected[off + i]).abs();
            let key_bias = name.ends_with("attention.in_proj_bias") && (e..2 * e).contains(&i);
            let tol = if key_bias { 10.0 * 5e-4 } else { 1e-5 };
            assert!(
                d <= tol,
                "{name}[{i}]: |w_ddp − w_single| = {d:e} > {tol:e}"
            );
        }
        off += n;
    }
    assert_ne!(w0, weights(&spec_init()), "no training happened");
}

fn spec_init() -> moola::model::Net<B> {
    // The initial weights of a fit (same seed and shapes as train::fit builds).
    let data = data();
    kiln::seed::seed_backend::<B>(&Default::default(), kiln::seed::DEFAULT_SEED, "init", 0);
    spec()
        .init::<B>(data.n_features, 4, data.seq_len, &Default::default())
        .unwrap()
}

/// `moola train` as node `rank` of a two-node run on 127.0.0.1:`port`.
fn cli_node(rank: usize, port: u16, out: &Path, extra: &[&str]) -> Child {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/BasicMotions");
    Command::new(env!("CARGO_BIN_EXE_moola"))
        .args(["train", "--model", "simple_lstm", "--quiet"])
        .arg("--data")
        .arg(data.join("BasicMotions_TRAIN.ts"))
        .arg("--test")
        .arg(data.join("BasicMotions_TEST.ts"))
        .arg("--out")
        .arg(out)
        .args(["--num-nodes", "2", "--node-rank", &rank.to_string()])
        .args(["--orchestrator", &format!("127.0.0.1:{port}")])
        .args(["--dist-timeout", "10"])
        .args(["--data-port", &free_port().to_string()])
        .args([
            "simple_lstm.model.hidden_size",
            "8",
            "simple_lstm.train.batch_size",
            "8",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not stop within {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_dead_peer_stops_the_other_node_with_an_error_and_a_readable_checkpoint() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let long = ["simple_lstm.train.n_epochs", "100000"];
    let rank0 = cli_node(0, port, dir.path(), &long);
    let mut rank1 = cli_node(1, port, dir.path(), &long);
    // Wait for rank 0's first checkpoint, then kill rank 1 mid-training.
    let ckpt_dir = dir.path().join("checkpoints");
    let started = Instant::now();
    let ckpt = loop {
        let found = std::fs::read_dir(&ckpt_dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let killed_at = Instant::now();
    let (ok, log) = finish(rank0, Duration::from_secs(90));
    assert!(!ok, "rank 0 went on without its peer:\n{log}");
    assert!(
        log.contains("error:") && (log.contains("peer") || log.contains("rank")),
        "{log}"
    );
    eprintln!(
        "rank 0 stopped {:.1} s after its peer died",
        killed_at.elapsed().as_secs_f64()
    );
    // Checkpoints are written atomically: the newest one is complete.
    let (meta, sections) = kiln::checkpoint::read_checkpoint(&ckpt).unwrap();
    assert!(meta.epochs_completed >= 1);
    assert!(sections.contains_key("model"));
}

#[test]
fn peers_with_different_configurations_refuse_to_train() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rank0 = cli_node(0, port, &dir.path().join("a"), &[]);
    let rank1 = cli_node(
        1,
        port,
        &dir.path().join("b"),
        &["simple_lstm.train.learning_rate", "0.1"],
    );
    for child in [rank0, rank1] {
        let (ok, log) = finish(child, Duration::from_secs(90));
        assert!(!ok, "{log}");
        assert!(
            log.contains("disagree on the training configuration"),
            "{log}"
        );
    }
}

fn read_weights(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Runs both ranks with `env` and waits for them.
fn run_pair(dir: &Path, env: &[(&str, String)]) {
    let port = free_port();
    let workers = [
        spawn_worker_with(0, port, dir, env),
        spawn_worker_with(1, port, dir, env),
    ];
    for (rank, child) in workers.into_iter().enumerate() {
        wait(child, Duration::from_secs(300), &format!("rank {rank}"));
    }
}

#[test]
fn a_resumed_two_process_run_continues_exactly() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    run_pair(
        dir.path(),
        &[
            ("MOOLA_DDP_EPOCHS", "4".into()),
            ("MOOLA_DDP_RUN_DIR", path("straight")),
            ("MOOLA_DDP_TAG", "straight-".into()),
        ],
    );
    run_pair(
        dir.path(),
        &[
            ("MOOLA_DDP_EPOCHS", "2".into()),
            ("MOOLA_DDP_RUN_DIR", path("split")),
            ("MOOLA_DDP_TAG", "first-".into()),
        ],
    );
    // Only rank 0 wrote the run directory.
    assert!(dir.path().join("split/checkpoints/last.ckpt").exists());
    run_pair(
        dir.path(),
        &[
            ("MOOLA_DDP_EPOCHS", "4".into()),
            ("MOOLA_DDP_RUN_DIR", path("split")),
            ("MOOLA_DDP_RESUME", path("split/checkpoints/last.ckpt")),
            ("MOOLA_DDP_TAG", "resumed-".into()),
        ],
    );
    let straight = read_weights(&dir.path().join("straight-rank0.bin"));
    for rank in 0..2 {
        let resumed = read_weights(&dir.path().join(format!("resumed-rank{rank}.bin")));
        assert_eq!(resumed, straight, "rank {rank}");
    }
    assert_ne!(
        read_weights(&dir.path().join("first-rank0.bin")),
        straight,
        "the resumed run trained"
    );
    let rows = kiln::metric_log::read_csv(&dir.path().join("split/metrics.csv")).unwrap();
    assert_eq!(rows.len(), 4);
}

/// `moola pretrain` (or its alias `pretrain-tcc`) as node `rank` of two on loopback.
fn pretrain_node(rank: usize, port: u16, out: &Path, method: &[&str], extra: &[&str]) -> Child {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/BasicMotions");
    Command::new(env!("CARGO_BIN_EXE_moola"))
        .args(method)
        .arg("--quiet")
        .arg("--data")
        .arg(data.join("BasicMotions_TRAIN.ts"))
        .arg("--out")
        .arg(out)
        .args(["--epochs", "2", "--batch-size", "8"])
        .args(["--num-nodes", "2", "--node-rank", &rank.to_string()])
        .args(["--orchestrator", &format!("127.0.0.1:{port}")])
        .args(["--dist-timeout", "10"])
        .args(["--data-port", &free_port().to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn both_pretrainers_run_data_parallel_and_rank_0_writes_the_encoder() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let cases: [(&[&str], &[&str], &str); 2] = [
        (
            &["pretrain", "--method", "masked-lstm", "--hidden-dim", "4"],
            &["pretrain.masked_lstm.num_layers", "1"],
            "masked",
        ),
        (&["pretrain-tcc"], tiny::TS_TCC_ENCODER, "tstcc"),
    ];
    for (method, extra, name) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(name);
        let port = free_port();
        let nodes = [
            pretrain_node(0, port, &out, method, extra),
            pretrain_node(1, port, &out, method, extra),
        ];
        for (rank, node) in nodes.into_iter().enumerate() {
            let (ok, log) = finish(node, Duration::from_secs(300));
            assert!(ok, "{name} rank {rank} failed:\n{log}");
            // Only rank 0 reports (and saves) the result; rank 1 was a worker of the same run.
            assert_eq!(
                log.contains("wrote "),
                rank == 0,
                "{name} rank {rank}:\n{log}"
            );
        }
        // Rank 0 wrote the run: its encoder, the history of both epochs and kiln's metrics.
        let history: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
        assert_eq!(
            history["train_loss"].as_array().unwrap().len(),
            2,
            "{name}: {history}"
        );
        let written: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            written.iter().any(|f| f.starts_with("encoder")),
            "{name}: no encoder in {written:?}"
        );
        assert!(written.iter().any(|f| f == "metrics.csv"), "{written:?}");
    }
}
