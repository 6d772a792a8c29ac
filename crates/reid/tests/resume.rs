//! Exact resume: a CTL run stopped after 2 epochs and resumed from its checkpoint for a third
//! one ends bit-identical to 3 uninterrupted epochs (weights, center-loss centres, the model's
//! Adam and the centres' SGD states, the learning-rate schedule, the checkpoint header and every
//! row of `metrics.csv`), and two runs with the same seed are bit-identical.
//!
//! The checkpoints are compared tensor by tensor through kiln's checkpoint reader, with every
//! optimiser entry matched to its parameter by path (parameter ids differ between a fresh and a
//! resumed model, and Burn keys optimiser states by id in a hash map, so raw section bytes are
//! not comparable).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, Optimizer, Sgd};
use burn::record::Record;
use burn::tensor::{Bool, Int, Tensor};
use kiln::backend::{Autodiff, Flex};
use kiln::checkpoint::{CheckpointMeta, load_checked, read_checkpoint, record_from_bytes};
use reid::cli::StepKind;
use reid::config::ReidConfig;
use reid::data::{ReidDataset, load_dataset};
use reid::infer::CheckpointTask;
use reid::model::ReidModel;
use reid::train::{FitOptions, RunSummary, fit};

mod common;

type B = Autodiff<Flex>;
type AdamRecord = <OptimizerAdaptor<Adam, ReidModel<B>, B> as Optimizer<ReidModel<B>, B>>::Record;
type SgdRecord =
    <OptimizerAdaptor<Sgd<Flex>, ReidModel<B>, B> as Optimizer<ReidModel<B>, B>>::Record;

/// Metrics that measure wall-clock time, not training.
const TIMING: [&str; 2] = ["epoch_seconds", "samples_per_second"];

/// The tiny CTL setup of `tests/train.rs` (resnet18 at 32×16 on a synthetic Market1501),
/// validating every epoch so that every metrics row carries mAP / CMC.
fn tiny_config(root: &Path, epochs: usize) -> ReidConfig {
    common::tiny_ctl_config(root, &[("SOLVER.MAX_EPOCHS", &epochs.to_string())])
}

fn train(
    cfg: &ReidConfig,
    dataset: &ReidDataset,
    seed: u64,
    run_dir: Option<PathBuf>,
) -> RunSummary {
    let options = FitOptions {
        run_dir,
        ..FitOptions::default()
    };
    fit::<B>(
        cfg,
        dataset,
        StepKind::Ctl,
        seed,
        &options,
        &Default::default(),
    )
    .unwrap()
}

/// Every float/int/bool parameter of a module: path → (id, shape, raw bytes).
fn tensors<M: Module<Flex>>(module: &M) -> BTreeMap<String, (ParamId, Vec<usize>, Vec<u8>)> {
    struct Collect {
        path: Vec<String>,
        out: BTreeMap<String, (ParamId, Vec<usize>, Vec<u8>)>,
    }
    impl Collect {
        fn push<const D: usize, K>(&mut self, id: ParamId, t: Tensor<Flex, D, K>)
        where
            K: burn::tensor::TensorKind<Flex> + burn::tensor::BasicOps<Flex>,
        {
            let dims = t.dims().to_vec();
            let data = t.into_data();
            self.out
                .insert(self.path.join("."), (id, dims, data.as_bytes().to_vec()));
        }
    }
    impl ModuleVisitor<Flex> for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
            self.push(param.id, param.val());
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<Flex, D, Int>>) {
            self.push(param.id, param.val());
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<Flex, D, Bool>>) {
            self.push(param.id, param.val());
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// What a checkpoint holds, in a form two runs can be compared by: every entry is a parameter
/// path (or section name) and the exact bytes of its value.
struct Snapshot {
    /// `model.<param>`, `adam.<param>`, `sgd.<param>`, `section.<name>` → bytes.
    entries: BTreeMap<String, Vec<u8>>,
    /// The header with the timing metrics removed and the run directory replaced by `<run>`.
    header: serde_json::Value,
}

/// Re-keys an optimiser record (`ParamId` → per-parameter state) by parameter path, each state
/// encoded on its own (a state holds tensors and counters only, so its bytes are canonical).
fn optimiser_entries<R: Record<B>>(
    prefix: &str,
    record: impl IntoIterator<Item = (ParamId, R)>,
    path_of: &HashMap<ParamId, String>,
    entries: &mut BTreeMap<String, Vec<u8>>,
) {
    for (id, state) in record {
        let path = path_of
            .get(&id)
            .unwrap_or_else(|| panic!("{prefix} holds a state for unknown parameter {id}"));
        let bytes = kiln::checkpoint::record_to_bytes::<B, _>(state).unwrap();
        entries.insert(format!("{prefix}.{path}"), bytes);
    }
}

fn snapshot(ckpt: &Path, run_dir: &Path) -> Snapshot {
    let device = Default::default();
    let (meta, sections) = read_checkpoint(ckpt).unwrap();
    let task: CheckpointTask = serde_json::from_value(meta.task.clone()).unwrap();
    let record = record_from_bytes::<Flex, <ReidModel<Flex> as Module<Flex>>::Record>(
        sections["model"].clone(),
        &device,
    )
    .unwrap();
    let model = load_checked(
        task.model.init::<Flex>(&device).unwrap(),
        record,
        "checkpoint",
    )
    .unwrap();
    let params = tensors(&model);
    let path_of: HashMap<ParamId, String> = params
        .iter()
        .map(|(p, (id, _, _))| (*id, p.clone()))
        .collect();
    let mut entries = BTreeMap::new();
    for (path, (_, dims, bytes)) in params {
        let mut value = format!("{dims:?}").into_bytes();
        value.extend(bytes);
        entries.insert(format!("model.{path}"), value);
    }
    let adam: AdamRecord = record_from_bytes::<B, _>(sections["adam"].clone(), &device).unwrap();
    optimiser_entries("adam", adam, &path_of, &mut entries);
    let sgd: SgdRecord = record_from_bytes::<B, _>(sections["sgd"].clone(), &device).unwrap();
    optimiser_entries("sgd", sgd, &path_of, &mut entries);
    for (name, bytes) in &sections {
        if !["model", "adam", "sgd"].contains(&name.as_str()) {
            entries.insert(format!("section.{name}"), bytes.clone());
        }
    }
    Snapshot {
        entries,
        header: header(meta, run_dir),
    }
}

fn header(mut meta: CheckpointMeta, run_dir: &Path) -> serde_json::Value {
    for t in TIMING {
        meta.metrics.remove(t);
    }
    meta.sections.clear(); // the sections are compared entry by entry
    let text = serde_json::to_string(&meta)
        .unwrap()
        .replace(&run_dir.display().to_string(), "<run>");
    serde_json::from_str(&text).unwrap()
}

/// The differences between two snapshots, one line each (empty when bit-identical).
fn differences(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a.entries.keys().chain(b.entries.keys()).collect();
    for key in keys {
        match (a.entries.get(key), b.entries.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => out.push(format!("{key} differs")),
            (Some(_), None) => out.push(format!("{key} only in the first")),
            (None, Some(_)) => out.push(format!("{key} only in the second")),
            (None, None) => unreachable!(),
        }
    }
    // Weights first, then the optimisers, then the other sections.
    let rank = |d: &String| {
        ["model.", "sgd.", "adam.", "section."]
            .iter()
            .position(|p| d.starts_with(p))
    };
    out.sort_by_key(rank);
    if a.header != b.header {
        out.push(format!(
            "checkpoint headers differ:\n  {}\n  {}",
            a.header, b.header
        ));
    }
    out
}

/// The metrics rows of a run without the timing columns, values written exactly (`{:?}` of an
/// f64 is its shortest round-trip form).
fn metric_rows(run_dir: &Path) -> Vec<(usize, BTreeMap<String, String>)> {
    kiln::metric_log::read_csv(&run_dir.join("metrics.csv"))
        .unwrap()
        .into_iter()
        .map(|(epoch, row)| {
            let row = row
                .into_iter()
                .filter(|(k, _)| !TIMING.contains(&k.as_str()))
                .map(|(k, v)| (k, format!("{v:?}")))
                .collect();
            (epoch, row)
        })
        .collect()
}

/// The checkpoint files of a run, by name.
fn checkpoint_names(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_identical(what: &str, a: &Snapshot, b: &Snapshot) {
    let diff = differences(a, b);
    assert!(
        diff.is_empty(),
        "{what}: {} differences, first ones:\n{}",
        diff.len(),
        diff.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn resumed_ctl_run_is_bit_identical_to_an_uninterrupted_one() {
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let seed = 11;
    let cfg3 = tiny_config(dir.path(), 3);
    let dataset = load_dataset(&cfg3).unwrap();

    // 3 uninterrupted epochs.
    let full_dir = dir.path().join("full");
    let full = train(&cfg3, &dataset, seed, Some(full_dir.clone()));
    assert_eq!(full.epochs, 3);

    // 2 epochs, then resumed (MODEL.RESUME_TRAINING + MODEL.PRETRAIN_PATH, as `reid train`
    // does) for the third one in the same run directory.
    let part_dir = dir.path().join("part");
    let two = train(
        &tiny_config(dir.path(), 2),
        &dataset,
        seed,
        Some(part_dir.clone()),
    );
    assert_eq!(two.epochs, 2);
    let last = part_dir.join("checkpoints/last.ckpt");
    let after_two = snapshot(&last, &part_dir);
    let mut resume = cfg3.clone();
    resume.model.resume_training = true;
    resume.model.pretrain_path = last.display().to_string();
    let resumed = train(&resume, &dataset, seed, None);
    assert_eq!(
        resumed.run_dir, part_dir,
        "a resumed run continues its directory"
    );
    assert_eq!(resumed.epochs, 3);

    // Weights, centres, both optimisers, the schedule and the header: bit-identical.
    let want = snapshot(&full_dir.join("checkpoints/last.ckpt"), &full_dir);
    let got = snapshot(&last, &part_dir);
    for key in [
        "model.center_loss.centers",
        "adam.fc_query.weight",
        "adam.backbone.base.conv1.weight",
        "sgd.center_loss.centers",
        "section.lr",
        "section.scheduler",
    ] {
        assert!(want.entries.contains_key(key), "the snapshot lacks {key}");
    }
    assert_eq!(want.header["epochs_completed"], 3);
    // The centres are stepped by SGD alone, everything else by Adam (the frozen BNNeck bias by
    // neither).
    let keys = |prefix: &str| -> Vec<&str> {
        want.entries
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .collect()
    };
    assert_eq!(keys("sgd."), ["center_loss.centers"]);
    assert!(!keys("adam.").contains(&"center_loss.centers"));
    assert!(!keys("adam.").contains(&"bn.bias"));
    assert!(keys("adam.").contains(&"bn.weight"));
    assert_identical("resumed vs uninterrupted last.ckpt", &got, &want);
    // The comparison is not vacuous: the 2-epoch state differs from the 3-epoch one in the
    // weights, the centres and the Adam moments.
    let diff = differences(&after_two, &want);
    for key in [
        "model.center_loss.centers",
        "model.fc_query.weight",
        "adam.fc_query.weight",
        "section.lr",
    ] {
        assert!(
            diff.iter().any(|d| d.starts_with(key)),
            "{key} did not change in epoch 3: {diff:?}"
        );
    }

    // The best-by-mAP checkpoints are the same files with the same contents.
    assert_eq!(checkpoint_names(&part_dir), checkpoint_names(&full_dir));
    for name in checkpoint_names(&full_dir) {
        assert_identical(
            &name,
            &snapshot(&part_dir.join("checkpoints").join(&name), &part_dir),
            &snapshot(&full_dir.join("checkpoints").join(&name), &full_dir),
        );
    }

    // Every metrics row (epochs 0, 1 from the first process, 2 from the resumed one).
    let rows = metric_rows(&full_dir);
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(rows.iter().all(|(_, r)| r.contains_key("mAP")));
    assert_eq!(metric_rows(&part_dir), rows);

    // And the end-of-training test of the last-epoch model.
    assert_eq!(resumed.test, full.test);
}

#[test]
fn two_runs_with_the_same_seed_are_bit_identical() {
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    // One epoch each (two optimiser steps, a validation, the checkpoints): later epochs' streams
    // are covered by the resume test, whose two fresh runs share epochs 0 and 1.
    let cfg = tiny_config(dir.path(), 1);
    let dataset = load_dataset(&cfg).unwrap();
    let runs: Vec<(PathBuf, RunSummary)> = [("a", 5), ("b", 5), ("c", 6)]
        .into_iter()
        .map(|(name, seed)| {
            let run = dir.path().join(name);
            let summary = train(&cfg, &dataset, seed, Some(run.clone()));
            (run, summary)
        })
        .collect();
    let snap = |(run, _): &(PathBuf, RunSummary)| snapshot(&run.join("checkpoints/last.ckpt"), run);
    let (a, b, c) = (snap(&runs[0]), snap(&runs[1]), snap(&runs[2]));
    assert_identical("two runs with seed 5", &a, &b);
    assert_eq!(metric_rows(&runs[0].0), metric_rows(&runs[1].0));
    assert_eq!(checkpoint_names(&runs[0].0), checkpoint_names(&runs[1].0));
    assert_eq!(runs[0].1.test, runs[1].1.test);
    // Another seed is another run: other initial weights and centres.
    let diff = differences(&a, &c);
    for key in [
        "model.center_loss.centers",
        "model.backbone.base.conv1.weight",
    ] {
        assert!(
            diff.iter().any(|d| d.starts_with(key)),
            "seeds 5 and 6 gave the same {key}"
        );
    }
}
