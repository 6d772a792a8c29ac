//! Input scaling as part of the model, the small-data recipe (one-cycle schedule, minimum
//! training, steps per epoch) and the encoder/scaling contract, end to end on tiny models.

use kiln::backend::{Autodiff, Flex};
use moola::Classifier;
use moola::data::WindowSet;
use moola::model::{ModelSpec, SimpleLstmConfig};
use moola::scaling::InputScaling;
use moola::train::{LrSchedule, OneCycleLr, SmallData, TrainConfig};

type B = Autodiff<Flex>;

/// OHLC-like windows at very different price levels: class "up" drifts up, "down" drifts down.
fn priced_windows(n: usize, t: usize, seed: u64) -> WindowSet {
    use rand::Rng;
    let mut rng = kiln::seed::rng(seed, "priced", 0);
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let up = i % 2 == 0;
        let level = 10.0f32 * (1 + i % 7) as f32 * (1 + i % 3) as f32;
        let mut close = level;
        for _ in 0..t {
            let open = close;
            let step = if up { 0.01 } else { -0.01 } + rng.random_range(-0.004..0.004);
            close = open * (1.0 + step);
            x.extend([
                open,
                open.max(close) * 1.002,
                open.min(close) * 0.998,
                close,
            ]);
        }
        labels.push(if up { "up" } else { "down" }.to_string());
    }
    WindowSet::new(
        (0..n).map(|i| format!("w{i}")).collect(),
        x,
        t,
        4,
        Some(labels),
        None,
    )
    .unwrap()
}

fn tiny_lstm() -> ModelSpec {
    ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 8,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.1,
    })
}

fn recipe(scaling: InputScaling, epochs: usize) -> TrainConfig {
    TrainConfig {
        n_epochs: epochs,
        batch_size: 8,
        val_split: 0.0,
        scaling,
        ..TrainConfig::reference("simple_lstm")
    }
}

/// Each window multiplied by its own positive factor (a price level change) and, for z-score,
/// shifted too.
fn rescaled(data: &WindowSet, shift: bool) -> WindowSet {
    let mut out = data.clone();
    let per = data.sample_len();
    for (i, w) in out.x.chunks_mut(per).enumerate() {
        let factor = 3.0 + i as f32;
        for v in w.iter_mut() {
            *v = *v * factor + if shift { 50.0 } else { 0.0 };
        }
    }
    out
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn the_scaling_is_recorded_and_applied_at_prediction() {
    let _guard = kiln::seed::global_lock();
    let data = priced_windows(16, 20, 1);
    for (scaling, shift) in [
        (InputScaling::Zscore, true),
        (InputScaling::RelativeClose, false),
        (InputScaling::LogReturns, false),
    ] {
        let mut clf = Classifier::<B>::new(tiny_lstm(), recipe(scaling, 2), Default::default());
        let report = clf.fit(&data).unwrap();
        assert_eq!(report.scaling, scaling);
        assert_eq!(clf.card().unwrap().scaling, scaling);
        // The transform removes each window's level (and offset for z-score): the predictions
        // of rescaled windows are the same, which they would not be on raw inputs.
        let p = clf.predict_proba(&data).unwrap();
        let q = clf.predict_proba(&rescaled(&data, shift)).unwrap();
        assert!(max_diff(&p, &q) < 1e-5, "{scaling}: {}", max_diff(&p, &q));
        // Saved and loaded, the model applies the same transform.
        let dir = tempfile::tempdir().unwrap();
        clf.save(&dir.path().join("m")).unwrap();
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("m.json")).unwrap()).unwrap();
        assert_eq!(card["scaling"], scaling.to_string());
        let loaded = Classifier::<B>::load(
            &dir.path().join("m"),
            TrainConfig::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(loaded.predict_proba(&data).unwrap(), p);
    }
    // Raw inputs: the same rescaling changes the predictions.
    let mut raw = Classifier::<B>::new(
        tiny_lstm(),
        recipe(InputScaling::None, 2),
        Default::default(),
    );
    raw.fit(&data).unwrap();
    let p = raw.predict_proba(&data).unwrap();
    assert!(max_diff(&p, &raw.predict_proba(&rescaled(&data, false)).unwrap()) > 1e-4);
}

#[test]
fn a_card_without_the_field_loads_as_raw_inputs() {
    let _guard = kiln::seed::global_lock();
    let data = priced_windows(12, 16, 2);
    let mut clf = Classifier::<B>::new(
        tiny_lstm(),
        recipe(InputScaling::Zscore, 1),
        Default::default(),
    );
    clf.fit(&data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    clf.save(&path).unwrap();
    // An older card: no `scaling` key.
    let card_path = dir.path().join("m.json");
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
    card.as_object_mut().unwrap().remove("scaling");
    std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
    let old = Classifier::<B>::load(&path, TrainConfig::default(), Default::default()).unwrap();
    assert_eq!(old.card().unwrap().scaling, InputScaling::None);
    // It feeds the windows as they are: what the z-scored model gives on z-scored windows.
    let scaled = InputScaling::Zscore.apply(&data).unwrap();
    assert_eq!(
        old.predict_proba(&scaled).unwrap(),
        clf.predict_proba(&data).unwrap()
    );
    // A scaling that cannot apply to the data is an error naming it.
    let mut bad = Classifier::<B>::new(
        tiny_lstm(),
        recipe(InputScaling::LogReturns, 1),
        Default::default(),
    );
    let mut negative = data.clone();
    negative.x[5] = -1.0;
    let err = bad.fit(&negative).unwrap_err().to_string();
    assert!(
        err.contains("log_returns") && err.contains("\"w0\""),
        "{err}"
    );
}

#[test]
fn one_cycle_follows_pytorch_by_hand() {
    // max 1.0, 10 steps, 30% warm-up: the peak is at step 2 (0.3 · 10 − 1); PyTorch's
    // OneCycleLR gives 1/25 at step 0, 0.52 at step 1 (cosine half-way from 0.04 to 1), 1 at
    // step 2, then cosine down to 0.04 / 1e4 at step 9.
    let s = OneCycleLr::new(1.0, 10, 0.3);
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    close(s.lr_at(0), 0.04);
    close(s.lr_at(1), 0.52);
    close(s.lr_at(2), 1.0);
    // Step 5: (5 − 2) / 7 of the way down.
    let pct = 3.0 / 7.0;
    close(
        s.lr_at(5),
        4e-6 + (1.0 - 4e-6) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0),
    );
    close(s.lr_at(9), 4e-6);
    close(s.lr_at(50), 4e-6);
}

#[test]
fn the_small_data_recipe_counts_steps() {
    // 40 windows, no validation: batch min(32, ⌈40/4⌉) = 10, 4 steps per epoch; 1000 steps =
    // 250 epochs; patience and minimum 300 steps = 75 epochs.
    let r = TrainConfig::small_data("simple_lstm", 40);
    assert_eq!((r.batch_size, r.n_epochs), (10, 250));
    assert_eq!((r.early_stopping_patience, r.min_epochs), (75, 75));
    assert_eq!(r.lr_schedule, LrSchedule::OneCycle);
    assert_eq!(r.learning_rate, 1e-3);
    assert_eq!((r.grad_clip, r.focal_gamma), (Some(1.0), 0.0));
    assert_eq!((r.mixup_alpha, r.cutmix_prob), (0.0, 0.0));
    assert!(!r.temporal_aug.enabled);
    assert_eq!(r.scaling, moola::scaling::DEFAULT_SCALING);
    // 362 windows with a 20% validation split: 290 train, batch 32, 10 steps per epoch.
    let rule = SmallData {
        val_split: 0.2,
        ..SmallData::default()
    };
    let r = rule.recipe("rwkv_ts", 362);
    assert_eq!((r.batch_size, r.n_epochs, r.val_split), (32, 100, 0.2));
    assert_eq!((r.early_stopping_patience, r.min_epochs), (30, 30));
    let plan = r.plan(290, 1);
    assert_eq!((plan.steps_per_epoch, plan.epochs), (10, 100));
    // Two data-parallel workers take two batches per step.
    assert_eq!(r.plan(290, 2).steps_per_epoch, 5);
    // for_data: small sets get the rule, large ones the default recipe.
    assert_eq!(
        TrainConfig::for_data("rwkv_ts", 5000),
        TrainConfig::for_model("rwkv_ts")
    );
    assert_eq!(
        TrainConfig::for_data("rwkv_ts", 100),
        TrainConfig::small_data("rwkv_ts", 100)
    );
}

#[test]
fn early_stopping_waits_for_the_minimum_training() {
    let _guard = kiln::seed::global_lock();
    let data = priced_windows(20, 12, 3);
    // A learning rate too small to move the validation loss: without a minimum, patience 1
    // stops after the second epoch; with `min_epochs` 6 it stops at the sixth.
    let run = |min_epochs: usize| {
        let cfg = TrainConfig {
            n_epochs: 30,
            batch_size: 8,
            learning_rate: 1e-20,
            val_split: 0.25,
            early_stopping_patience: 1,
            min_epochs,
            mixup_alpha: 0.0,
            cutmix_prob: 0.0,
            ..TrainConfig::for_model("simple_lstm")
        };
        let mut clf = Classifier::<B>::new(tiny_lstm(), cfg, Default::default());
        clf.fit(&data).unwrap()
    };
    let plain = run(0);
    assert!(plain.stopped_early && plain.epochs == 2, "{plain:?}");
    let held = run(6);
    assert!(held.stopped_early && held.epochs == 6, "{held:?}");
}

#[test]
fn one_cycle_training_reaches_its_steps_and_learns() {
    let _guard = kiln::seed::global_lock();
    let train = priced_windows(40, 24, 4);
    let test = priced_windows(20, 24, 5);
    let rule = SmallData {
        steps: 120,
        ..SmallData::default()
    };
    let cfg = rule.recipe("simple_lstm", train.len());
    let mut clf = Classifier::<B>::new(tiny_lstm(), cfg.clone(), Default::default());
    let report = clf.fit(&train).unwrap();
    assert_eq!(report.plan.batch_size, 10);
    assert_eq!(report.epochs, 30, "120 steps of 4 per epoch");
    assert!(!report.stopped_early);
    let pred = clf.predict(&test).unwrap();
    let truth = test.require_labels().unwrap();
    let acc = pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64;
    assert!(acc >= 0.9, "accuracy {acc}");
}
