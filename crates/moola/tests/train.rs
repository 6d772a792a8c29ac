//! The training recipe and the Classifier API end to end, on small models and data.

use kiln::backend::{Autodiff, Flex};
use moola::Classifier;
use moola::data::WindowSet;
use moola::model::{CnnTransformerConfig, InnerWindow, ModelSpec, RwkvTsConfig, SimpleLstmConfig};
use moola::train::TrainConfig;
use rand::Rng;

type B = Autodiff<Flex>;

/// Windows whose close drifts up (label "up") or down ("down") from 0, with noise.
/// `expansion` marks the steepest 5-bar stretch inside 30..75.
fn trend_windows(n: usize, t: usize, seed: u64) -> WindowSet {
    let mut rng = kiln::seed::rng(seed, "trend", 0);
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut expansion = Vec::new();
    for i in 0..n {
        let up = i % 2 == 0;
        let drift = if up { 0.5 } else { -0.5 };
        let burst = rng.random_range(30..(t.min(75) - 6).max(31)) as i64;
        let mut close = 0.0f32;
        for step in 0..t {
            let open = close;
            let kick = if (burst..burst + 5).contains(&(step as i64)) {
                3.0 * drift
            } else {
                0.0
            };
            close += drift + kick + rng.random_range(-0.3..0.3);
            x.extend([open, open.max(close) + 0.2, open.min(close) - 0.2, close]);
        }
        labels.push(if up { "up" } else { "down" }.to_string());
        expansion.push(Some((burst, burst + 4)));
    }
    WindowSet {
        ids: (0..n).map(|i| format!("w{i}")).collect(),
        x,
        seq_len: t,
        n_features: 4,
        labels: Some(labels),
        expansion: Some(expansion),
    }
}

fn quick(epochs: usize) -> TrainConfig {
    TrainConfig {
        n_epochs: epochs,
        batch_size: 16,
        learning_rate: 5e-3,
        early_stopping_patience: 100,
        ..TrainConfig::default()
    }
}

fn tiny_lstm() -> ModelSpec {
    ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 8,
        num_layers: 1,
        num_heads: 2,
        dropout: 0.1,
    })
}

fn tiny_cnnt(pointers: bool) -> ModelSpec {
    ModelSpec::CnnTransformer(CnnTransformerConfig {
        cnn_channels: vec![8, 8, 8],
        cnn_kernels: vec![3, 5],
        transformer_layers: 1,
        transformer_heads: 2,
        dropout: 0.1,
        predict_pointers: pointers,
        window: None,
    })
}

fn tiny_rwkv() -> ModelSpec {
    ModelSpec::RwkvTs(RwkvTsConfig {
        d_model: 8,
        n_layers: 2,
        readout: moola::model::Readout::Mean,
        ..RwkvTsConfig::default()
    })
}

fn accuracy(clf: &Classifier<B>, data: &WindowSet) -> f64 {
    let pred = clf.predict(data).unwrap();
    let truth = data.labels.as_ref().unwrap();
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

#[test]
fn every_model_learns_a_separable_task() {
    let _guard = kiln::seed::global_lock();
    let train = trend_windows(48, 40, 1);
    let test = trend_windows(32, 40, 2);
    for (spec, epochs) in [(tiny_lstm(), 25), (tiny_cnnt(false), 15), (tiny_rwkv(), 25)] {
        let mut clf = Classifier::<B>::new(spec.clone(), quick(epochs), Default::default());
        let report = clf.fit(&train).unwrap();
        assert!(report.num_params > 0);
        let acc = accuracy(&clf, &test);
        eprintln!("{}: test accuracy {acc}", spec.name());
        assert!(
            acc >= 0.9,
            "{} reached only {acc} on a separable task",
            spec.name()
        );
        let proba = clf.predict_proba(&test).unwrap();
        for row in &proba {
            assert_eq!(row.len(), 2);
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}

#[test]
fn fits_are_reproducible_for_a_seed_and_differ_across_seeds() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(24, 30, 3);
    let run = |seed: u64| {
        let mut cfg = quick(3);
        cfg.seed = seed;
        let mut clf = Classifier::<B>::new(tiny_lstm(), cfg, Default::default());
        clf.fit(&data).unwrap();
        clf.predict_proba(&data).unwrap()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, different probabilities");
    assert_ne!(a, run(8));
}

#[test]
fn save_and_load_give_the_same_predictions() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(24, 30, 4);
    let mut clf = Classifier::<B>::new(tiny_cnnt(false), quick(2), Default::default());
    clf.fit(&data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    clf.save(&path).unwrap();
    assert!(dir.path().join("model.mpk").exists() && dir.path().join("model.json").exists());
    let loaded = Classifier::<B>::load(&path, TrainConfig::default(), Default::default()).unwrap();
    assert_eq!(
        clf.predict_proba(&data).unwrap(),
        loaded.predict_proba(&data).unwrap()
    );
    assert_eq!(loaded.card().unwrap().classes, vec!["down", "up"]);
    assert_eq!(loaded.card().unwrap().seq_len, 30);

    // A sidecar that points at another architecture is refused with the parameter's name.
    let card_path = dir.path().join("model.json");
    let text = std::fs::read_to_string(&card_path)
        .unwrap()
        .replace("\"transformer_heads\": 2", "\"transformer_heads\": 1");
    let text = text.replace(
        "[\n      8,\n      8,\n      8\n    ]",
        "[\n      8,\n      8,\n      16\n    ]",
    );
    std::fs::write(&card_path, text).unwrap();
    let err = Classifier::<B>::load(&path, TrainConfig::default(), Default::default())
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("another architecture"),
        "{err:#}"
    );
}

#[test]
fn pointer_model_trains_and_predicts_pointers() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(32, InnerWindow::REFERENCE_LEN, 5);
    let mut clf = Classifier::<B>::new(tiny_cnnt(true), quick(4), Default::default());
    clf.fit(&data).unwrap();
    let p = clf.predict_with_pointers(&data).unwrap();
    assert_eq!(p.window, InnerWindow::REFERENCE);
    assert_eq!(p.start_probabilities.len(), 32);
    assert_eq!(p.start_probabilities[0].len(), 45);
    assert!(
        p.start_predictions
            .iter()
            .chain(&p.end_predictions)
            .all(|&i| i < 45)
    );
    assert!(
        p.start_probabilities
            .iter()
            .flatten()
            .all(|&v| (0.0..=1.0).contains(&v))
    );
    // Pointer heads need expansions.
    let mut bare = data.clone();
    bare.expansion = None;
    let err = Classifier::<B>::new(tiny_cnnt(true), quick(1), Default::default())
        .fit(&bare)
        .unwrap_err();
    assert!(err.to_string().contains("expansion"), "{err}");
    // A model without pointer heads refuses predict_with_pointers.
    let mut plain = Classifier::<B>::new(tiny_lstm(), quick(1), Default::default());
    plain.fit(&data).unwrap();
    assert!(plain.predict_with_pointers(&data).is_err());
}

#[test]
fn bad_input_is_a_clear_error() {
    let data = trend_windows(24, 30, 6);
    let clf = Classifier::<B>::new(tiny_lstm(), quick(1), Default::default());
    let err = clf.predict(&data).unwrap_err().to_string();
    assert!(err.contains("not fitted"), "{err}");

    let mut poisoned = data.clone();
    poisoned.x[4 * 30 * 3 + 5] = f32::NAN;
    let err = Classifier::<B>::new(tiny_lstm(), quick(1), Default::default())
        .fit(&poisoned)
        .unwrap_err();
    assert!(format!("{err:#}").contains("w3"), "{err:#}");

    let mut one_class = data.clone();
    one_class.labels = Some(vec!["up".to_string(); 24]);
    let err = Classifier::<B>::new(tiny_lstm(), quick(1), Default::default())
        .fit(&one_class)
        .unwrap_err();
    assert!(err.to_string().contains("2 classes"), "{err}");

    let mut cfg = quick(1);
    cfg.focal_alpha = Some(vec![1.0, 2.0, 3.0]);
    let err = Classifier::<B>::new(tiny_lstm(), cfg, Default::default())
        .fit(&data)
        .unwrap_err();
    assert!(err.to_string().contains("focal_alpha"), "{err}");

    let _guard = kiln::seed::global_lock();
    let mut clf = Classifier::<B>::new(tiny_lstm(), quick(1), Default::default());
    clf.fit(&data).unwrap();
    let longer = trend_windows(4, 31, 7);
    let err = clf.predict(&longer).unwrap_err().to_string();
    assert!(err.contains("30 steps"), "{err}");
}

/// A caller's callback that records each epoch's `val_loss`.
struct ValLossRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
}

impl kiln::callbacks::Callback for ValLossRecorder {
    fn name(&self) -> String {
        "val_loss_recorder".into()
    }
    fn on_epoch_end(
        &mut self,
        ctx: &kiln::callbacks::EpochEnd<'_>,
        _actions: &mut kiln::callbacks::Actions,
    ) -> anyhow::Result<()> {
        let loss = ctx.metrics.get("val_loss").copied().unwrap_or(f64::NAN);
        self.seen.lock().unwrap().push(loss);
        Ok(())
    }
}

/// The recipe's validation loss of a fitted classifier's network on `val`: the mean over
/// batches of `batch_size` of the focal loss (γ 2, no α) on un-augmented windows.
fn validation_loss(clf: &Classifier<B>, val: &WindowSet, batch_size: usize) -> f64 {
    type Inner = Flex;
    let net = clf.net().unwrap();
    let classes = &clf.card().unwrap().classes;
    let device = Default::default();
    let (t, f) = (val.seq_len, val.n_features);
    let labels = val.labels.as_ref().unwrap();
    let idx: Vec<usize> = (0..val.len()).collect();
    let mut sum = 0.0;
    let mut batches = 0;
    for chunk in idx.chunks(batch_size) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| val.x[i * t * f..(i + 1) * t * f].iter().copied())
            .collect();
        let input = burn::tensor::Tensor::<Inner, 3>::from_data(
            burn::tensor::TensorData::new(x, [chunk.len(), t, f]),
            &device,
        );
        let y: Vec<i64> = chunk
            .iter()
            .map(|&i| classes.iter().position(|c| *c == labels[i]).unwrap() as i64)
            .collect();
        let targets = burn::tensor::Tensor::<Inner, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(y, [chunk.len()]),
            &device,
        );
        let logits = net.forward(input).logits;
        let loss = moola::loss::focal_loss(logits, targets, 2.0, None);
        sum += f64::from(loss.into_scalar());
        batches += 1;
    }
    sum / f64::from(batches)
}

#[test]
fn early_stopping_stops_and_restores() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(40, 30, 8);
    let val = trend_windows(24, 30, 11);
    let mut cfg = quick(200);
    cfg.early_stopping_patience = 3;
    cfg.learning_rate = 5e-2;
    assert_eq!((cfg.focal_gamma, cfg.focal_alpha.as_ref()), (2.0, None));
    let batch_size = cfg.batch_size;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = seen.clone();
    let mut clf =
        Classifier::<B>::new(tiny_lstm(), cfg, Default::default()).with_callback(move || {
            ValLossRecorder {
                seen: shared.clone(),
            }
        });
    let report = clf.fit_with_validation(&data, &val).unwrap();
    assert!(report.stopped_early && report.epochs < 200, "{report:?}");
    let best = report.best_val_loss.unwrap();
    let history = seen.lock().unwrap().clone();
    assert_eq!(history.len(), report.epochs, "{history:?}");
    let best_epoch = history
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(e, _)| e)
        .unwrap();
    assert_eq!(history[best_epoch], best, "{history:?}");
    // Patience 3: the run ends three epochs after its best one, whose loss it did not reach again.
    assert_eq!(best_epoch + 4, report.epochs, "{history:?}");
    let last = *history.last().unwrap();
    assert!((last - best).abs() > 1e-6 * best.abs(), "{history:?}");

    // The returned network is the best epoch's: its validation loss is the best one, not the last.
    let got = validation_loss(&clf, &val, batch_size);
    assert!(
        (got - best).abs() <= 1e-5 * best.abs(),
        "the returned model's val_loss {got} is not the best {best} (last epoch {last}; \
         history {history:?})"
    );
}

#[test]
fn for_model_takes_the_reference_spec_and_recipe_by_name() {
    let clf = Classifier::<B>::for_model("rwkv_ts", Default::default()).unwrap();
    assert_eq!(clf.spec(), &ModelSpec::from_name("rwkv_ts").unwrap());
    assert_eq!(clf.config(), &TrainConfig::for_model("rwkv_ts"));
    let err = Classifier::<B>::for_model("resnet", Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("resnet"), "{err}");
}

/// A caller's callback: records the epochs and training losses it sees, stops after `stop_after`.
struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, f64)>>>,
    stop_after: usize,
}

impl kiln::callbacks::Callback for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn on_epoch_end(
        &mut self,
        ctx: &kiln::callbacks::EpochEnd<'_>,
        actions: &mut kiln::callbacks::Actions,
    ) -> anyhow::Result<()> {
        let loss = ctx.metrics.get("train_loss").copied().unwrap_or(f64::NAN);
        let mut seen = self.seen.lock().unwrap();
        seen.push((ctx.epoch, loss));
        actions.stop |= seen.len() >= self.stop_after;
        Ok(())
    }
}

#[test]
fn callbacks_of_the_caller_see_every_epoch_and_can_stop_each_fit() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(24, 30, 9);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = seen.clone();
    let mut clf = Classifier::<B>::new(tiny_lstm(), quick(10), Default::default())
        .with_callback(move || Recorder {
            seen: shared.clone(),
            stop_after: 3,
        })
        // Replacing the run options keeps the callback.
        .with_run_options(moola::train::RunOptions::default());
    let report = clf.fit(&data).unwrap();
    assert_eq!(report.epochs, 3, "{report:?}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(seen.iter().all(|(_, l)| l.is_finite()), "{seen:?}");
    }
    // A second fit gets a fresh callback (its count starts again at zero).
    seen.lock().unwrap().clear();
    assert_eq!(clf.fit(&data).unwrap().epochs, 3);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn a_training_checkpoint_loads_like_a_saved_model() {
    let _guard = kiln::seed::global_lock();
    let data = trend_windows(24, 30, 5);
    let mut cfg = quick(2);
    cfg.val_split = 0.0; // the last checkpoint then holds the final weights
    let dir = tempfile::tempdir().unwrap();
    let mut clf = Classifier::<B>::new(tiny_lstm(), cfg, Default::default()).with_run_options(
        moola::train::RunOptions {
            run_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    );
    clf.fit(&data).unwrap();
    let ckpt = walk(dir.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "last.ckpt"))
        .expect("a last.ckpt in the run directory");
    let loaded = Classifier::<B>::load(&ckpt, TrainConfig::default(), Default::default()).unwrap();
    assert_eq!(loaded.card(), clf.card());
    assert_eq!(
        loaded.predict_proba(&data).unwrap(),
        clf.predict_proba(&data).unwrap()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
