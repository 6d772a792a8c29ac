//! MiniRocket and its ridge classifier against aeon's `MiniRocket` and scikit-learn's
//! `RidgeClassifierCV` (fixtures from `tools/parity/minirocket_fixtures.py`), and the
//! `minirocket` model end to end.

use std::path::Path;

use moola::Estimator;
use moola::classical::minirocket::{Panel, fit_dilations, quantiles};
use moola::classical::ridge::{default_alphas, fit_ridge_classifier_cv};
use moola::classical::{ClassicalModel, MiniRocket, MiniRocketConfig, MiniRocketParams};
use moola::data::{WindowSet, read_any};
use moola::scaling::InputScaling;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minirocket/minirocket.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Numbers written as float32 decimals: read back as the same `f32`.
fn f32s(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(f32s).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(f64s).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

/// A `[n, channels, len]` panel from nested lists.
fn panel(v: &Value) -> Panel {
    let a = v.as_array().unwrap();
    let channels = a[0].as_array().unwrap().len();
    let len = a[0][0].as_array().unwrap().len();
    Panel {
        n: a.len(),
        channels,
        len,
        x: f32s(v),
    }
}

fn params(case: &Value, panel: &Panel) -> MiniRocketParams {
    let p = &case["params"];
    MiniRocketParams {
        n_channels: panel.channels,
        seq_len: panel.len,
        dilations: usizes(&p["dilations"]),
        features_per_dilation: usizes(&p["features_per_dilation"]),
        channels_per_combination: usizes(&p["channels_per_combination"]),
        channel_indices: usizes(&p["channel_indices"]),
        biases: f32s(&p["biases"]),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn dilations_and_quantiles_match_aeon() {
    let fx = fixture();
    for case in fx["dilations"].as_array().unwrap() {
        let got = fit_dilations(
            case["seq_len"].as_u64().unwrap() as usize,
            case["n_features"].as_u64().unwrap() as usize,
            case["max_dilations_per_kernel"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            got,
            (
                usizes(&case["dilations"]),
                usizes(&case["features_per_dilation"])
            ),
            "{case}"
        );
    }
    assert_eq!(quantiles(20), f32s(&fx["quantiles"]));
}

fn check_transform(name: &str) {
    let fx = fixture();
    let case = &fx[name];
    let fit_panel = panel(&case["x_fit"]);
    let x = panel(&case["x"]);
    let want = params(case, &fit_panel);
    // The dilations follow from the length and feature count alone.
    let requested = case["n_features_requested"].as_u64().unwrap() as usize;
    assert_eq!(
        fit_dilations(fit_panel.len, requested, 32),
        (want.dilations.clone(), want.features_per_dilation.clone())
    );
    // Biases: every (dilation, kernel) pair draws window 0 of a one-window fit set, so given
    // aeon's channel combinations the biases are determined.
    let mut fitted = MiniRocketParams {
        biases: Vec::new(),
        ..want.clone()
    };
    let draws = vec![0; want.channels_per_combination.len()];
    fitted.fit_biases(&fit_panel, &draws).unwrap();
    let err = max_abs_diff(&fitted.biases, &want.biases);
    println!(
        "{name}: biases max error {err:e} over {}",
        want.biases.len()
    );
    assert!(err <= 1e-5, "{name}: biases differ by {err}");
    // Features of other windows, given aeon's parameters.
    let got = want.transform(&x).unwrap();
    let expected = f32s(&case["features"]);
    let err = max_abs_diff(&got, &expected);
    println!("{name}: features max error {err:e} over {}", expected.len());
    assert!(err <= 1e-5, "{name}: features differ by {err}");
    // And with the biases fitted here.
    assert!(max_abs_diff(&fitted.transform(&x).unwrap(), &expected) <= 1e-5);
}

#[test]
fn univariate_transform_matches_aeon() {
    check_transform("univariate");
}

#[test]
fn multivariate_transform_matches_aeon() {
    check_transform("multivariate");
}

fn check_ridge(name: &str) {
    let fx = fixture();
    let case = &fx[name];
    let rows = |v: &Value| -> (Vec<f64>, usize, usize) {
        let a = v.as_array().unwrap();
        let p = a[0].as_array().unwrap().len();
        (f32s(v).into_iter().map(f64::from).collect(), a.len(), p)
    };
    let (train, n, p) = rows(&case["features_train"]);
    let (test, _, _) = rows(&case["features_test"]);
    let y = usizes(&case["y_train"]);
    let n_classes = y.iter().max().unwrap() + 1;
    let scale = moola::classical::minirocket::column_scale(&train, n, p);
    for (a, b) in scale.iter().zip(f64s(&case["scale"])) {
        assert!(
            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
            "{name}: scale {a} vs {b}"
        );
    }
    let scaled = |x: &[f64]| -> Vec<f64> {
        x.chunks(p)
            .flat_map(|r| r.iter().zip(&scale).map(|(v, s)| v / s).collect::<Vec<_>>())
            .collect()
    };
    let fit =
        fit_ridge_classifier_cv(&scaled(&train), n, p, &y, n_classes, &default_alphas()).unwrap();
    let alpha = case["alpha"].as_f64().unwrap();
    assert!(
        (fit.alpha - alpha).abs() <= 1e-12 * alpha,
        "{name}: α {} vs {alpha}",
        fit.alpha
    );
    let score = case["best_score"].as_f64().unwrap();
    assert!(
        (fit.best_score - score).abs() <= 1e-8 * score.abs().max(1.0),
        "{name}: best score {} vs {score}",
        fit.best_score
    );
    let coef = f64s(&case["coef"]);
    let got_coef: Vec<f64> = fit.coef.iter().flatten().copied().collect();
    let largest = coef.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got_coef
        .iter()
        .zip(&coef)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("{name}: α {alpha}, coef max error {err:e} (largest |coef| {largest:e})");
    assert!(
        err <= 1e-7 * largest,
        "{name}: coefficients differ by {err}"
    );
    for (a, b) in fit.intercept.iter().zip(f64s(&case["intercept"])) {
        assert!(
            (a - b).abs() <= 1e-7 * b.abs().max(1.0),
            "{name}: intercept {a} vs {b}"
        );
    }
    let want_decision = f64s(&case["decision_test"]);
    let want_pred = usizes(&case["predict_test"]);
    let t = fit.coef.len();
    for (i, row) in scaled(&test).chunks(p).enumerate() {
        let d = fit.decision(row);
        for (k, v) in d.iter().enumerate() {
            let w = want_decision[i * t + k];
            assert!(
                (v - w).abs() <= 1e-7 * w.abs().max(1.0),
                "{name}: decision {v} vs {w}"
            );
        }
        assert_eq!(
            fit.predict_row(&d),
            want_pred[i],
            "{name}: prediction of row {i}"
        );
        let proba = fit.predict_proba_row(&d);
        assert_eq!(kiln::metrics::argmax(&proba), want_pred[i]);
        assert!((proba.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn binary_ridge_matches_scikit_learn() {
    check_ridge("ridge_binary");
}

#[test]
fn multiclass_ridge_matches_scikit_learn() {
    check_ridge("ridge_multiclass");
}

fn datasets() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// Every `step`-th window of a set.
fn every(set: &WindowSet, step: usize) -> WindowSet {
    set.select(&(0..set.len()).step_by(step).collect::<Vec<_>>())
}

#[test]
fn minirocket_learns_italy_power_demand_and_round_trips() {
    let dir = datasets().join("ItalyPowerDemand");
    let train = read_any(&dir.join("ItalyPowerDemand_TRAIN.ts")).unwrap();
    let test = every(&read_any(&dir.join("ItalyPowerDemand_TEST.ts")).unwrap(), 3);
    let mut model = MiniRocket::new(MiniRocketConfig {
        seed: 7,
        ..MiniRocketConfig::default()
    });
    model.fit(&train).unwrap();
    assert_eq!(model.params().unwrap().n_features(), 9_996);
    let proba = model.predict_proba(&test).unwrap();
    let classes = model.classes().unwrap();
    let truth = test.require_labels().unwrap();
    let hits = proba
        .iter()
        .zip(truth)
        .filter(|(p, t)| classes[kiln::metrics::argmax(p)] == **t)
        .count();
    let accuracy = hits as f64 / truth.len() as f64;
    println!(
        "ItalyPowerDemand, every 3rd test series: accuracy {accuracy:.4}, α {:?}",
        model.alpha()
    );
    // Published MiniRocket: 0.960 (mean of 30 resamples); a single fit lands nearby.
    assert!(accuracy >= 0.93, "accuracy {accuracy}");
    // Save / load through the classical model file gives the same probabilities.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("minirocket.json");
    model.save(&path).unwrap();
    let loaded = ClassicalModel::load(&path).unwrap();
    assert_eq!(loaded.name(), "minirocket");
    assert_eq!(loaded.predict_proba(&test).unwrap(), proba);
    assert_eq!(MiniRocket::load(&path).unwrap(), model);
    // The same seed refits the same model.
    let mut again = MiniRocket::new(model.config.clone());
    again.fit(&train).unwrap();
    assert_eq!(again, model);
}

#[test]
fn minirocket_on_multichannel_windows_applies_its_scaling() {
    let dir = datasets().join("BasicMotions");
    let train = read_any(&dir.join("BasicMotions_TRAIN.ts")).unwrap();
    let test = read_any(&dir.join("BasicMotions_TEST.ts")).unwrap();
    let mut model = MiniRocket::new(MiniRocketConfig {
        n_features: 2_000,
        scaling: InputScaling::Zscore,
        ..MiniRocketConfig::default()
    });
    model.fit(&train).unwrap();
    let params = model.params().unwrap();
    assert_eq!(params.n_channels, 6);
    assert!(params.channels_per_combination.iter().any(|&k| k > 1));
    // The recorded scaling is applied at prediction: z-scored windows do not depend on each
    // window's level and spread, so moving and stretching every window (each its own way)
    // leaves the decision values as they were.
    assert_eq!(model.scaling(), Some(InputScaling::Zscore));
    let mut moved = test.clone();
    let per = moved.sample_len();
    for (i, w) in moved.x.chunks_mut(per).enumerate() {
        let (a, b) = (2.0 + i as f32 * 0.25, 10.0 - i as f32);
        for v in w.iter_mut() {
            *v = *v * a + b;
        }
    }
    let (d, e) = (
        model.decision_function(&test).unwrap(),
        model.decision_function(&moved).unwrap(),
    );
    let diff = d
        .iter()
        .flatten()
        .zip(e.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-3, "decision values moved by {diff}");
    // `auto` keeps BasicMotions raw (its windows' levels are within their own variation).
    let mut auto = MiniRocket::new(MiniRocketConfig {
        n_features: 840,
        ..MiniRocketConfig::default()
    });
    auto.fit(&train).unwrap();
    assert_eq!(auto.scaling(), Some(InputScaling::None));
    // Windows of another shape are refused with the shapes named.
    let err = model
        .predict_proba(
            &read_any(&datasets().join("ItalyPowerDemand/ItalyPowerDemand_TEST.ts")).unwrap(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("fitted on 6×100"), "{err}");
}
