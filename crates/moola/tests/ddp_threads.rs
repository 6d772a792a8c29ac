//! In-process data parallelism, as a user runs it: `moola train --devices 0,1` (two worker
//! threads in one process, one CPU device each, gradients mean-all-reduced every step).
//!
//! * With every regulariser of the recipe on (dropout, mixup, CutMix, temporal augmentation),
//!   repeated runs with one seed give bit-identical models: each worker draws from its own
//!   random streams, seeded from the run seed and its rank (`kiln::seed`), not from the backend's
//!   process-wide generator in whatever order the threads get there.
//! * With the regularisers on, two workers give the model that one device trains as two virtual
//!   ranks (`--virtual-ranks 2`: each step forwards both ranks' batches with their random
//!   streams and back-propagates the mean loss); with them off, the model that one device trains
//!   on the whole batch. Both within a tolerance far below how far training moved each
//!   parameter tensor.
//!
//! Each run is its own `moola` process (the collectives' in-process state is per process).

use std::path::Path;
use std::process::{Command, Output};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use kiln::backend::Flex;
use moola::model::{ModelSpec, SimpleLstmConfig};

const DATA: &str = "../../datasets/BasicMotions/BasicMotions_TRAIN.ts";

/// A SimpleLSTM small enough for a test (hidden 16, two heads), 3 epochs, seed 3, no validation
/// split (so no early stopping or best-epoch choice between nearly equal validation losses).
const TINY: &[&str] = &[
    "simple_lstm.train.val_split",
    "0.0",
    "simple_lstm.model.hidden_size",
    "16",
    "simple_lstm.model.num_heads",
    "2",
    "simple_lstm.train.n_epochs",
    "3",
    "seed",
    "3",
];

/// Every regulariser of the recipe off (the reference's defaults turn them on).
const NO_REGULARISERS: &[&str] = &[
    "simple_lstm.model.dropout",
    "0.0",
    "simple_lstm.train.mixup_alpha",
    "0.0",
    "simple_lstm.train.cutmix_prob",
    "0.0",
    "simple_lstm.train.temporal_aug.enabled",
    "False",
];

fn moola(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moola"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("moola runs")
}

/// `moola train` on BasicMotions into `<dir>/<name>`; returns the saved model's file.
/// `devices` is `--devices` (`"0,1"`: two workers) or, with a `v` prefix, `--virtual-ranks`.
fn train(
    dir: &Path,
    name: &str,
    devices: &str,
    batch: usize,
    extra: &[&str],
) -> std::path::PathBuf {
    train_on("cpu", dir, name, devices, batch, extra)
}

/// [`train`] on `--device device`.
fn train_on(
    device: &str,
    dir: &Path,
    name: &str,
    devices: &str,
    batch: usize,
    extra: &[&str],
) -> std::path::PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join(DATA);
    let batch = batch.to_string();
    let layout = match devices.strip_prefix('v') {
        Some(ranks) => ["--virtual-ranks", ranks],
        None => ["--devices", devices],
    };
    let mut args = vec![
        "--quiet",
        "--device",
        device,
        layout[0],
        layout[1],
        "train",
        "--model",
        "simple_lstm",
        "--data",
        data.to_str().unwrap(),
        "--out",
        name,
        "simple_lstm.train.batch_size",
        &batch,
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    let out = moola(&args, dir);
    assert!(
        out.status.success(),
        "moola train --devices {devices} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(name).join("model")
}

/// Named parameter tensors of a module, in visiting order.
fn params<Bk: Backend, M: Module<Bk>>(m: &M) -> Vec<(String, Vec<f32>)> {
    struct Collect(Vec<Vec<f32>>);
    impl<Bk: Backend> ModuleVisitor<Bk> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
            self.0.push(
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
    kiln::checkpoint::param_shapes::<Bk, M>(m)
        .into_iter()
        .map(|(name, _)| name)
        .zip(c.0)
        .collect()
}

fn saved(model: &Path) -> Vec<(String, Vec<f32>)> {
    let (net, _) = moola::model::load::<Flex>(model, &Default::default()).unwrap();
    params::<Flex, _>(&net)
}

#[test]
fn two_worker_threads_repeat_exactly_with_every_regulariser_on() {
    let dir = tempfile::tempdir().unwrap();
    let regularised = ["simple_lstm.model.dropout", "0.3"];
    let runs: Vec<_> = (0..3)
        .map(|i| {
            saved(&train(
                dir.path(),
                &format!("run{i}"),
                "0,1",
                8,
                &regularised,
            ))
        })
        .collect();
    for run in &runs[1..] {
        for ((name, a), (_, b)) in runs[0].iter().zip(run) {
            assert!(a == b, "two runs with one seed gave different {name}");
        }
    }
    // The regularisers did draw: without them the model is another one.
    let plain = saved(&train(dir.path(), "plain", "0,1", 8, NO_REGULARISERS));
    assert!(plain != runs[0], "the regularisers changed nothing");
}

/// The initial weights of the runs below: the CLI's network (BasicMotions: 6 channels, 4
/// classes, 100 steps) initialised as `moola train` does with seed 3.
fn initial() -> Vec<(String, Vec<f32>)> {
    initial_on::<Flex>(&Default::default())
}

/// [`initial`] as `moola train` initialises them on backend `Bk`.
fn initial_on<Bk: Backend>(device: &Bk::Device) -> Vec<(String, Vec<f32>)> {
    let spec = ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 16,
        num_heads: 2,
        ..SimpleLstmConfig::default()
    });
    let net =
        kiln::seed::init_module::<Bk, _, _>(device, 3, || spec.init(6, 4, 100, device)).unwrap();
    params::<Bk, _>(&net)
}

#[test]
fn two_worker_threads_match_one_device_training_two_virtual_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let regularised = ["simple_lstm.model.dropout", "0.3"];
    let two = saved(&train(dir.path(), "two", "0,1", 4, &regularised));
    let virtual_ranks = saved(&train(dir.path(), "virtual", "v2", 4, &regularised));
    // The same split of the global batch: every tensor, the attention key bias included, within
    // 1e-4 of its own movement.
    let parts = |p: &[(String, Vec<f32>)]| kiln::testing::split_in_proj_bias(p).unwrap();
    let rows = kiln::testing::compare_runs(
        &parts(&two),
        &parts(&virtual_ranks),
        &parts(&initial()),
        |_| 1e-4,
    )
    .unwrap();
    report(&rows);
}

#[test]
fn two_worker_threads_on_half_batches_match_one_device_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let two = saved(&train(dir.path(), "two", "0,1", 4, NO_REGULARISERS));
    let one = saved(&train(dir.path(), "one", "0", 8, NO_REGULARISERS));
    // Half batches against the whole batch: summation order differs, so the attention key
    // bias, which training moves by float noise alone, is held to 1e-2 of its layer's
    // query-bias movement, every other tensor to 1e-4 of its own.
    let rows =
        kiln::testing::compare_attention_runs(&two, &one, &initial(), |_| 1e-4, 1e-2).unwrap();
    report(&rows);
}

/// Prints every tensor's difference against its movement, and the largest ratio.
fn report(rows: &[kiln::testing::Drift]) {
    for row in rows {
        println!("{row}");
    }
    let worst = rows.iter().map(|r| r.diff / r.moved).fold(0f32, f32::max);
    println!("largest difference / movement: {worst:e}");
}

/// Two worker threads on one wgpu adapter (`--device wgpu --devices 0,0`) train the model one
/// wgpu device trains as two virtual ranks, one epoch; the model saved on wgpu is read on flex.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_two_worker_threads_match_two_virtual_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let one_epoch = [NO_REGULARISERS, &["simple_lstm.train.n_epochs", "1"]].concat();
    let two = saved(&train_on("wgpu", dir.path(), "two", "0,0", 4, &one_epoch));
    let virtual_ranks = saved(&train_on(
        "wgpu",
        dir.path(),
        "virtual",
        "v2",
        4,
        &one_epoch,
    ));
    let init = initial_on::<kiln::backend::WgpuBackend>(&Default::default());
    // The same split of the global batch on the same device: every tensor within 1e-3 of its
    // own movement; the key bias (which moves by float noise alone, see above) within 1e-1 of the
    // query bias's movement.
    let rows =
        kiln::testing::compare_attention_runs(&two, &virtual_ranks, &init, |_| 1e-3, 1e-1).unwrap();
    report(&rows);
}
