//! Cross-crate integration tests through the public library API only: what a project that
//! depends on `kiln`, `moola` and `reid` does.

use std::path::{Path, PathBuf};

use kiln::backend::{Autodiff, Flex};
use moola::Classifier;
use moola::data::{WindowSet, read_any};
use moola::model::{ModelSpec, SimpleLstmConfig};
use moola::train::TrainConfig;

type B = Autodiff<Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn basic_motions(split: &str) -> WindowSet {
    read_any(&root().join(format!("datasets/BasicMotions/BasicMotions_{split}.ts"))).unwrap()
}

#[test]
fn moola_train_save_load_gives_identical_probabilities() {
    let train = basic_motions("TRAIN");
    let test = basic_motions("TEST");
    let spec = ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.1,
    });
    let recipe = TrainConfig {
        n_epochs: 5,
        batch_size: 8,
        ..TrainConfig::for_model("simple_lstm")
    };
    let mut clf = Classifier::<B>::new(spec, recipe.clone(), Default::default()).with_seed(7);
    // The official test split doubles as the caller's validation set here.
    let report = clf.fit_with_validation(&train, &test).unwrap();
    assert_eq!(report.epochs, 5);
    assert!(report.best_val_loss.is_some());
    let proba = clf.predict_proba(&test).unwrap();
    let dir = tempfile::tempdir().unwrap();
    clf.save(&dir.path().join("model")).unwrap();
    let loaded =
        Classifier::<B>::load(&dir.path().join("model"), recipe, Default::default()).unwrap();
    assert_eq!(loaded.predict_proba(&test).unwrap(), proba);
    assert_eq!(loaded.predict(&test).unwrap(), clf.predict(&test).unwrap());
    for row in &proba {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{row:?}");
    }
}

#[test]
fn moola_imports_a_reference_checkpoint_and_predicts_like_pytorch() {
    let fixtures = root().join("crates/moola/tests/fixtures/parity");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("simple_lstm_1l.json")).unwrap())
            .unwrap();
    let device = Default::default();
    let (net, card) = moola::import::import_torch_checkpoint::<Flex>(
        &fixtures.join("simple_lstm_1l.pt"),
        &device,
    )
    .unwrap();
    let clf = Classifier::<B>::from_parts(net, card, device);
    let input = expected["input"].as_array().unwrap();
    let (n, t) = (input.len(), input[0].as_array().unwrap().len());
    let x: Vec<f32> = input
        .iter()
        .flat_map(|w| w.as_array().unwrap().iter())
        .flat_map(|bar| bar.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let windows = WindowSet {
        ids: (0..n).map(|i| i.to_string()).collect(),
        x,
        seq_len: t,
        n_features: 4,
        labels: None,
        expansion: None,
    };
    let proba = clf.predict_proba(&windows).unwrap();
    let want = expected["probs"].as_array().unwrap();
    for (row, w) in proba.iter().zip(want) {
        for (p, q) in row.iter().zip(w.as_array().unwrap()) {
            assert!((p - q.as_f64().unwrap()).abs() < 1e-5, "{p} vs {q}");
        }
    }
}

#[test]
fn reid_learner_trains_writes_a_checkpoint_and_embeds_like_it() {
    use reid::data::{SyntheticSpec, write_synthetic_market1501};
    use reid::{Learner, ReidConfig, StepKind};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_market1501(
        &data,
        &SyntheticSpec {
            train_ids: 4,
            train_per_camera: 3,
            distractors: 1,
            ..SyntheticSpec::default()
        },
        1,
    )
    .unwrap();
    let opts: Vec<String> = [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", data.to_str().unwrap()),
        ("INPUT.SIZE_TRAIN", "[32, 16]"),
        ("INPUT.SIZE_TEST", "[32, 16]"),
        ("SOLVER.IMS_PER_BATCH", "3"),
        ("SOLVER.MAX_EPOCHS", "2"),
        ("TEST.IMS_PER_BATCH", "8"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    let cfg = ReidConfig::load(None, &opts).unwrap();

    // Validation happens at construction.
    let mut bad = cfg.clone();
    bad.model.backbone_emb_size = 7;
    assert!(Learner::new(bad).is_err());

    let run = dir.path().join("run");
    let trained = Learner::new(cfg)
        .unwrap()
        .step(StepKind::Ctl)
        .seed(3)
        .run_dir(&run)
        .fit::<B>(&Default::default())
        .unwrap();
    assert_eq!(trained.report.epochs, 2);
    let map = trained.report.test.no_centroids.as_ref().unwrap().map;
    assert!((0.0..=1.0).contains(&map), "mAP {map}");
    assert!(run.join("test_report.json").exists());

    // The checkpoint on disk holds the model the learner returned.
    let ckpt = run.join("checkpoints/last.ckpt");
    let ckpt = if ckpt.exists() {
        ckpt
    } else {
        trained.report.best_checkpoint.clone().unwrap()
    };
    let loaded =
        reid::infer::load_model::<Flex>(Path::new(&ckpt), None, &Default::default()).unwrap();
    let x = burn::tensor::Tensor::<Flex, 4>::ones([2, 3, 32, 16], &Default::default());
    let a: Vec<f32> = trained.model.embed(x.clone()).into_data().to_vec().unwrap();
    let b: Vec<f32> = loaded.model.embed(x).into_data().to_vec().unwrap();
    assert_eq!(a, b);

    // The learner trained: the same run at a vanishing learning rate (0 is refused) ends at
    // other weights. A learner that dropped the learning rate would end at the same ones.
    let mut still = opts.clone();
    still.extend(["SOLVER.BASE_LR".to_string(), "1e-30".to_string()]);
    still.extend(["SOLVER.CENTER_LR".to_string(), "1e-30".to_string()]);
    let still = Learner::new(ReidConfig::load(None, &still).unwrap())
        .unwrap()
        .step(StepKind::Ctl)
        .seed(3)
        .run_dir(dir.path().join("still"))
        .fit::<B>(&Default::default())
        .unwrap();
    let conv = |m: &reid::ReidModel<Flex>| -> Vec<f32> {
        m.backbone
            .base
            .conv1
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap()
    };
    let (moved, kept) = (conv(&trained.model), conv(&still.model));
    let largest = moved
        .iter()
        .zip(&kept)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        largest > 1e-5,
        "two epochs moved the stem by only {largest}"
    );
}

/// The README's library program is the downstream example that `.ci/run` builds and runs outside
/// the workspace, character for character.
#[test]
fn the_readme_library_program_is_the_one_ci_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let program =
        std::fs::read_to_string(root().join("tests/downstream/examples/readme.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{program}```")),
        "README.md's library program differs from tests/downstream/examples/readme.rs"
    );
}
