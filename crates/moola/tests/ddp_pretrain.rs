//! Data-parallel pre-training (masked BiLSTM and TS-TCC) as a user runs it, checked against one
//! device: two worker threads in one process (`--devices 0,1`) and two processes on loopback
//! (`--num-nodes 2`) must both end at the weights that one device reaches training as two
//! virtual ranks (`--virtual-ranks 2`: each step forwards both ranks' batches, with their own
//! masks and augmentations, and back-propagates the mean of their losses, the gradient that data
//! parallelism all-reduces). The pre-trainers' losses have batch-level terms (the masked
//! autoencoder's latent spread, TS-TCC's contrastive loss), so one device on the whole batch is
//! not the reference; the ranks' mean loss is.
//!
//! Every parameter tensor (encoder and heads, read from the run's checkpoint) is compared against
//! how far the reference moved it during its second epoch, and repeated two-thread runs must be
//! identical.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::testing::{assert_success, wait_success};

mod tiny;

/// The two pre-trainers with tiny models, and their `KEY VALUE` overrides.
fn methods() -> [(&'static str, Vec<&'static str>, Vec<&'static str>); 2] {
    [
        (
            "masked",
            vec!["pretrain", "--method", "masked-lstm", "--hidden-dim", "4"],
            vec!["pretrain.masked_lstm.num_layers", "1"],
        ),
        ("tstcc", vec!["pretrain-tcc"], tiny::TS_TCC_ENCODER.to_vec()),
    ]
}

fn pretrain(
    method: &[&str],
    out: &Path,
    epochs: usize,
    layout: &[&str],
    extra: &[&str],
) -> Command {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/BasicMotions/BasicMotions_TRAIN.ts");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moola"));
    cmd.args(method)
        .arg("--quiet")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", &epochs.to_string(), "--batch-size", "8"])
        .args(layout)
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

/// One pre-training run in this process's child; returns its run directory.
fn run(
    dir: &Path,
    name: &str,
    method: &[&str],
    extra: &[&str],
    epochs: usize,
    layout: &[&str],
) -> PathBuf {
    let out = dir.join(name);
    assert_success(
        &pretrain(method, &out, epochs, layout, extra)
            .output()
            .unwrap(),
        &format!("{name}: moola {method:?} {layout:?}"),
    );
    out
}

fn params(run: &Path) -> Vec<(String, Vec<f32>)> {
    kiln::checkpoint::checkpoint_params(run.join("checkpoints/last.ckpt")).unwrap()
}

/// The trained tensors, without BatchNorm running statistics: under data parallelism those
/// follow rank 0's share of each batch (DDP's buffer broadcast), on one device they see the
/// whole batch, so the two layouts differ there by design (PyTorch's DDP without
/// SyncBatchNorm does the same).
fn trained(params: &[(String, Vec<f32>)]) -> Vec<(String, Vec<f32>)> {
    params
        .iter()
        .filter(|(n, _)| !n.contains("running_"))
        .cloned()
        .collect()
}

/// Two processes (`--num-nodes 2`) on loopback; rank 0 writes the run.
fn run_two_processes(dir: &Path, name: &str, method: &[&str], extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let port = kiln::dist::free_ports(1).unwrap()[0].to_string();
    let nodes: Vec<Child> = (0..2)
        .map(|rank| {
            let data_port = kiln::dist::free_ports(1).unwrap()[0].to_string();
            let rank = rank.to_string();
            pretrain(
                method,
                &out,
                2,
                &[
                    "--num-nodes",
                    "2",
                    "--node-rank",
                    &rank,
                    "--orchestrator",
                    &format!("127.0.0.1:{port}"),
                    "--data-port",
                    &data_port,
                    "--dist-timeout",
                    "30",
                ],
                extra,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (rank, node) in nodes.into_iter().enumerate() {
        wait_success(
            node,
            Duration::from_secs(300),
            &format!("{name} rank {rank}"),
        );
    }
    out
}

/// Compares two runs from the common point `start`: every tensor within 1e-4 of its movement,
/// BatchNorm running statistics left out unless `buffers` (see [`trained`]); the attention key
/// bias, which training moves by float noise alone, within 1e-1 of its layer's query-bias
/// movement ([`kiln::testing::compare_attention_runs`]). Returns the largest ratio.
fn compare(
    got: &[(String, Vec<f32>)],
    want: &[(String, Vec<f32>)],
    start: &[(String, Vec<f32>)],
    buffers: bool,
) -> Result<f32, String> {
    let prep = |p: &[(String, Vec<f32>)]| if buffers { p.to_vec() } else { trained(p) };
    let rows = kiln::testing::compare_attention_runs(
        &prep(got),
        &prep(want),
        &prep(start),
        |_| 1e-4,
        1e-1,
    )
    .map_err(|e| format!("{e:#}"))?;
    Ok(rows.iter().map(|r| r.diff / r.moved).fold(0f32, f32::max))
}

#[test]
fn data_parallel_pretraining_matches_one_device_training_virtual_ranks() {
    for (name, method, extra) in methods() {
        let dir = tempfile::tempdir().unwrap();
        let virtual_ranks = params(&run(
            dir.path(),
            "v2",
            &method,
            &extra,
            2,
            &["--virtual-ranks", "2"],
        ));
        // Where the reference stood after its first epoch: every tensor must have moved since.
        let after_one = params(&run(
            dir.path(),
            "v1",
            &method,
            &extra,
            1,
            &["--virtual-ranks", "2"],
        ));
        let threads = params(&run(
            dir.path(),
            "t2",
            &method,
            &extra,
            2,
            &["--devices", "0,1"],
        ));
        let again = params(&run(
            dir.path(),
            "t2b",
            &method,
            &extra,
            2,
            &["--devices", "0,1"],
        ));
        for ((n, a), (_, b)) in threads.iter().zip(&again) {
            assert!(a == b, "{name}: two runs with one seed gave different {n}");
        }
        let processes = params(&run_two_processes(dir.path(), "p2", &method, &extra));
        for (layout, got) in [("two threads", &threads), ("two processes", &processes)] {
            let worst = compare(got, &virtual_ranks, &after_one, false)
                .unwrap_or_else(|e| panic!("{name}, {layout} vs one device: {e}"));
            println!(
                "{name}, {layout} vs --virtual-ranks 2: largest difference {worst:.1e} of the movement"
            );
        }
        // Threads and processes are the same data-parallel layout: every tensor agrees,
        // running statistics (rank 0's in both) included.
        let worst = compare(&processes, &threads, &after_one, true)
            .unwrap_or_else(|e| panic!("{name}, two processes vs two threads: {e}"));
        println!(
            "{name}, two processes vs two threads: largest difference {worst:.1e} of the movement"
        );
    }
}
