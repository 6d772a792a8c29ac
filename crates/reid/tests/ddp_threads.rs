//! Data-parallel CTL training as a user runs it (`reid train`), checked against one device: two
//! worker threads in one process (`--devices 0,1`) and two processes on loopback
//! (`--num-nodes 2`) must both end at the weights that one device reaches training as two
//! virtual ranks (`--virtual-ranks 2`: each step forwards both ranks' P×K batches and
//! back-propagates the mean of their losses, the gradient that data parallelism all-reduces).
//! Batch norm and the in-batch triplet and centroid losses make one big batch a different
//! objective (as in PyTorch's DDP), so the ranks' mean loss is the reference. Batch-norm running
//! statistics follow rank 0 under data parallelism and both ranks' batches with virtual ranks,
//! so they are left out; every trained tensor is compared against how far the reference moved it
//! during its second epoch, and repeated two-thread runs must be identical.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::testing::{assert_success, wait_success};
use reid::data::{SyntheticSpec, write_synthetic_market1501};

fn reid_train(data: &Path, logs: &Path, epochs: usize, layout: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reid"));
    cmd.arg("--quiet").arg("train").args(layout);
    let epochs = epochs.to_string();
    for (k, v) in [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", &data.display().to_string()),
        ("INPUT.SIZE_TRAIN", "[32, 16]"),
        ("INPUT.SIZE_TEST", "[32, 16]"),
        ("SOLVER.IMS_PER_BATCH", "3"),
        ("SOLVER.MAX_EPOCHS", &epochs),
        ("SOLVER.EVAL_PERIOD", "10"),
        ("SOLVER.BASE_LR", "3.5e-4"),
        ("SOLVER.USE_WARMUP_LR", "False"),
        ("TEST.IMS_PER_BATCH", "8"),
        ("DATALOADER.USE_RESAMPLING", "False"),
        ("DATALOADER.NUM_WORKERS", "0"),
        ("OUTPUT_DIR", &logs.display().to_string()),
        ("REPRODUCIBLE", "True"),
        ("REPRODUCIBLE_NUM_RUNS", "1"),
    ] {
        cmd.args([k, v]);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// The trained tensors of the run's last checkpoint: batch-norm running statistics (rank 0's
/// under data parallelism, by design) and the BNNeck bias (frozen, as in the reference; that it
/// stays put is tested in `model.rs`) left out.
fn params(logs: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = logs.join("train_ctl_model/version_0/checkpoints/last.ckpt");
    kiln::checkpoint::checkpoint_params(&ckpt)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.contains("running_") && name != "bn.bias")
        .collect()
}

fn run(data: &Path, dir: &Path, name: &str, epochs: usize, layout: &[&str]) -> PathBuf {
    let logs = dir.join(name);
    assert_success(
        &reid_train(data, &logs, epochs, layout).output().unwrap(),
        &format!("reid train {layout:?}"),
    );
    logs
}

#[test]
fn data_parallel_ctl_training_matches_one_device_training_virtual_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_market1501(
        &data,
        &SyntheticSpec {
            train_ids: 8,
            train_per_camera: 3,
            distractors: 1,
            ..SyntheticSpec::default()
        },
        1,
    )
    .unwrap();
    let virtual_ranks = params(&run(&data, dir.path(), "v2", 2, &["--virtual-ranks", "2"]));
    let after_one = params(&run(&data, dir.path(), "v1", 1, &["--virtual-ranks", "2"]));
    let threads = params(&run(&data, dir.path(), "t2", 2, &["--devices", "0,1"]));
    let again = params(&run(&data, dir.path(), "t2b", 2, &["--devices", "0,1"]));
    for ((n, a), (_, b)) in threads.iter().zip(&again) {
        assert!(a == b, "two runs with one seed gave different {n}");
    }

    let logs = dir.path().join("p2");
    let port = kiln::dist::free_ports(1).unwrap()[0].to_string();
    let nodes: Vec<Child> = (0..2)
        .map(|rank| {
            let data_port = kiln::dist::free_ports(1).unwrap()[0].to_string();
            let rank = rank.to_string();
            reid_train(
                &data,
                &logs,
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
                    "60",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (rank, node) in nodes.into_iter().enumerate() {
        wait_success(node, Duration::from_secs(600), &format!("rank {rank}"));
    }
    let processes = params(&logs);

    // 1e-3 of each tensor's movement: the gradients are summed in another order (an
    // all-reduce of two rank gradients against one backward pass of the two ranks' mean loss),
    // and Adam's g/√v turns the last-bit differences of 20-odd layers of small gradients into
    // up to ~1e-4 of the movement after two epochs (a rank that trained on the other's share
    // would be off by the whole movement).
    for (layout, got) in [("two threads", &threads), ("two processes", &processes)] {
        let rows = kiln::testing::compare_runs(got, &virtual_ranks, &after_one, |_| 1e-3)
            .unwrap_or_else(|e| panic!("{layout} vs one device: {e:#}"));
        let worst = rows.iter().map(|r| r.diff / r.moved).fold(0f32, f32::max);
        println!(
            "{layout} vs --virtual-ranks 2: {} tensors, largest difference {worst:.1e} of the movement",
            rows.len()
        );
    }
}
