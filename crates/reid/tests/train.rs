//! Training on kiln: the reference's optimiser semantics (Adam + SGD on the centres, manual
//! step, warm-up and multi-step schedule), a full tiny run with its files, the
//! test flow on the run's checkpoint, and error paths.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use kiln::backend::{Autodiff, Flex};
use kiln::optim::{LrControl, Optimization};
use reid::cli::StepKind;
use reid::config::ReidConfig;
use reid::data::load_dataset;
use reid::model::ReidModelConfig;
use reid::train::{FitOptions, fit, optimization};

mod common;

type B = Autodiff<Flex>;

fn values<const D: usize, Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// A small configuration on a synthetic Market1501 tree under `root`.
fn tiny_config(root: &Path) -> ReidConfig {
    common::tiny_ctl_config(root, &[])
}

/// The reference's Adam (`torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8,
/// weight_decay=WEIGHT_DECAY)`: coupled L2, the decay added to the gradient before the
/// moments), written independently in f64.
struct ReferenceAdam {
    lr: f64,
    weight_decay: f64,
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
    p: Vec<f64>,
}

impl ReferenceAdam {
    fn new(lr: f64, weight_decay: f64, p: &[f32]) -> Self {
        Self {
            lr,
            weight_decay,
            t: 0,
            m: vec![0.0; p.len()],
            v: vec![0.0; p.len()],
            p: p.iter().map(|&x| f64::from(x)).collect(),
        }
    }

    // Written out index by index, as the formulas are.
    #[allow(clippy::needless_range_loop)]
    fn step(&mut self, grad: &[f32]) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        for i in 0..self.p.len() {
            let g = f64::from(grad[i]) + self.weight_decay * self.p[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let m_hat = self.m[i] / (1.0 - b1.powi(self.t));
            let v_hat = self.v[i] / (1.0 - b2.powi(self.t));
            self.p[i] -= self.lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

#[test]
fn one_step_follows_the_reference_optimisers() {
    let _guard = kiln::seed::global_lock();
    let device = Default::default();
    let mut cfg = ReidConfig::default();
    cfg.solver.base_lr = 1e-2;
    assert_eq!(cfg.solver.weight_decay, 5e-4);
    assert_eq!(cfg.solver.center_lr, 0.5);
    assert_eq!(cfg.solver.center_loss_weight, 5e-4);
    let mut model = ReidModelConfig::new("resnet18", 1, 512, 3)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 4>::random([2, 3, 32, 16], burn::tensor::Distribution::Default, &device);
    // A loss that touches the backbone, the BNNeck, the classifier and the centres. Only the
    // logits of classes 0 and 1 enter it, so the classifier column of class 2 (`fc_query.weight`
    // is `[512, 3]`) gets an exactly zero gradient: Adam moves it through the weight decay
    // alone, which tells coupled L2 (≈ lr·sign(p) per step), decoupled AdamW (lr·wd·p) and no
    // decay (not at all) apart. Centre row 2 also gets a zero gradient and plain SGD must
    // leave it where it is.
    let loss_of = |m: &reid::model::ReidModel<B>| {
        let f = m.forward_features(x.clone());
        let logits = m.classify(m.bnneck(f.clone()));
        let centers = m.center_loss.centers.val();
        let center_term = (f - centers.slice([0..2, 0..512]))
            .square()
            .sum()
            .mul_scalar(5e-4);
        logits.slice([0..2, 0..2]).square().mean() + center_term
    };

    let before_bias = values(model.bn.bias.val());
    let mut adam = ReferenceAdam::new(1e-3, 5e-4, &values(model.fc_query.weight.val()));
    let mut centers: Vec<f64> = values(model.center_loss.centers.val())
        .into_iter()
        .map(f64::from)
        .collect();
    let zero_grad_fc: Vec<usize> = (0..512).map(|row| row * 3 + 2).collect();
    let mut optim = optimization::<B>(&cfg);
    optim.on_epoch_start(0);
    // Epoch 0 of the warm-up: BASE_LR · 1/10.
    assert!((LrControl::lr(&optim) - 1e-3).abs() < 1e-12);
    for step in 1..=3 {
        // Expected gradients, from an independent forward/backward pass of the same loss on
        // the current parameters.
        let grads = loss_of(&model).backward();
        let g_centers = values(model.center_loss.centers.val().grad(&grads).unwrap());
        let g_fc = values(model.fc_query.weight.val().grad(&grads).unwrap());
        assert!(
            model.bn.bias.val().grad(&grads).is_none(),
            "the BNNeck bias must get no gradient"
        );
        assert!(zero_grad_fc.iter().all(|&i| g_fc[i] == 0.0));
        assert!(g_centers[2 * 512..].iter().all(|&g| g == 0.0));
        assert!(g_fc.iter().filter(|g| **g != 0.0).count() >= 1000);
        let fc_before = values(model.fc_query.weight.val());

        let loss = loss_of(&model);
        model = optim.step(model, loss).unwrap();
        adam.step(&g_fc);
        // Centres: plain SGD with lr 0.5 on the gradient rescaled by 1 / 5e-4.
        for (c, g) in centers.iter_mut().zip(&g_centers) {
            *c -= 0.5 * f64::from(*g) / 5e-4;
        }

        let after_centers = values(model.center_loss.centers.val());
        for (i, (&got, &want)) in after_centers.iter().zip(&centers).enumerate() {
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * want.abs().max(1.0),
                "step {step}, centre {i}: {got} vs {want}"
            );
        }
        // Classifier: every entry follows the reference Adam with coupled L2.
        let after_fc = values(model.fc_query.weight.val());
        for (i, (&got, &want)) in after_fc.iter().zip(&adam.p).enumerate() {
            assert!(
                (f64::from(got) - want).abs() < 5e-7,
                "step {step}, fc {i} (gradient {}): {got} vs {want} (was {})",
                g_fc[i],
                fc_before[i]
            );
        }
        if step == 1 {
            // The zero-gradient entries: Adam's first step on g' = wd·p is
            // lr·g'/(|g'| + ε) ≈ lr·sign(p) (AdamW: lr·wd·p; no decay: 0).
            for &i in &zero_grad_fc {
                let moved = f64::from(after_fc[i]) - f64::from(fc_before[i]);
                let g = 5e-4 * f64::from(fc_before[i]);
                let want = -1e-3 * g / (g.abs() + 1e-8);
                assert!(
                    (moved - want).abs() < 1e-6,
                    "fc {i} has no gradient; coupled L2 moves it by {want}, it moved by {moved}"
                );
            }
        }
        // The frozen BNNeck bias did not move (no decay either).
        assert_eq!(values(model.bn.bias.val()), before_bias);
    }
}

#[test]
fn optimiser_state_round_trips() {
    let _guard = kiln::seed::global_lock();
    let device = Default::default();
    let cfg = ReidConfig::default();
    let model = ReidModelConfig::new("resnet18", 1, 512, 2)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 4>::random([2, 3, 32, 16], burn::tensor::Distribution::Default, &device);
    let loss = |m: &reid::model::ReidModel<B>| {
        m.classify(m.bnneck(m.forward_features(x.clone())))
            .square()
            .mean()
    };
    let mut a = optimization::<B>(&cfg);
    a.on_epoch_start(0);
    a.on_epoch_start(1);
    let model = a.step(model.clone(), loss(&model)).unwrap();
    let sections: BTreeMap<String, Vec<u8>> = a.state().unwrap().into_iter().collect();
    let mut b = optimization::<B>(&cfg);
    b.load_state(&sections, &device).unwrap();
    assert_eq!(LrControl::lr(&a), LrControl::lr(&b));
    let ma = a.step(model.clone(), loss(&model)).unwrap();
    let mb = b.step(model.clone(), loss(&model)).unwrap();
    assert_eq!(
        values(ma.fc_query.weight.val()),
        values(mb.fc_query.weight.val())
    );
    a.on_epoch_start(2);
    b.on_epoch_start(2);
    assert_eq!(LrControl::lr(&a), LrControl::lr(&b));
}

#[test]
fn a_tiny_ctl_run_writes_its_files_and_tests_like_reid_test() {
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let dataset = load_dataset(&cfg).unwrap();
    let device = Default::default();
    let options = FitOptions {
        evaluate_before: true,
        ..FitOptions::default()
    };
    let summary = fit::<B>(&cfg, &dataset, StepKind::Ctl, 0, &options, &device).unwrap();
    assert_eq!(summary.epochs, 2);
    let run = &summary.run_dir;
    assert!(
        run.ends_with("train_ctl_model/version_0"),
        "{}",
        run.display()
    );
    for f in [
        "config.yaml",
        "metrics.csv",
        "test_report.json",
        "checkpoints/last.ckpt",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let best = summary
        .best_checkpoint
        .clone()
        .expect("a best-by-mAP checkpoint");
    assert!(best.to_string_lossy().contains("mAP"));
    let rows = kiln::metric_log::read_csv(&run.join("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 2);
    for key in [
        "train_loss",
        "train_dist_ap",
        "train_dist_an",
        "lr",
        "train_l2_mean_centroid",
        "train_query_xent",
        "train_query_triplet",
        "train_query_center",
        "train_centroid_triplet",
        "mAP",
        "Top-1",
        "Top-5",
        "Top-10",
        "Top-20",
        "Top-50",
    ] {
        assert!(rows[1].1.contains_key(key), "metrics.csv lacks {key}");
    }
    // Warm-up: epoch 0 runs at BASE_LR/10, epoch 1 at 2·BASE_LR/10.
    assert!((rows[0].1["lr"] - 3.5e-5).abs() < 1e-12 && (rows[1].1["lr"] - 7e-5).abs() < 1e-12);
    assert!(summary.before.is_some());
    let test = summary.test.no_centroids.clone().unwrap();
    assert!((0.0..=1.0).contains(&test.map) && test.num_query > 0);
    let b = summary.test.centroids_b.clone().unwrap();
    let a = summary.test.centroids_a.clone().unwrap();
    // Mode A: one centroid per gallery pid (3 identities + the pid-0 distractor). Mode B: per
    // identity one centroid per query camera (2 cameras → 2 each), the distractor dropped.
    assert_eq!((a.num_gallery, b.num_gallery), (4, 6));

    // `reid test` on the last checkpoint reproduces the final test of the run.
    let mut test_cfg = cfg.clone();
    test_cfg.model.pretrain_path = run.join("checkpoints/last.ckpt").display().to_string();
    test_cfg.output_dir = dir.path().join("test").display().to_string();
    let report =
        reid::train::run_test(test_cfg.clone(), kiln::DeviceKind::Cpu, false, false).unwrap();
    assert_eq!(report, summary.test);
    assert!(dir.path().join("test/test_report.json").exists());

    // A checkpoint of the wrong architecture is a clear error.
    let err = reid::infer::load_model::<Flex>(
        &run.join("checkpoints/last.ckpt"),
        Some(&ReidModelConfig::new("resnet50", 1, 2048, 4)),
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("resnet18") && err.to_string().contains("resnet50"),
        "{err}"
    );

    // Resuming continues the same run directory to more epochs.
    let mut resume_cfg = cfg.clone();
    resume_cfg.solver.max_epochs = 3;
    resume_cfg.model.resume_training = true;
    resume_cfg.model.pretrain_path = run.join("checkpoints/last.ckpt").display().to_string();
    let resumed = fit::<B>(
        &resume_cfg,
        &dataset,
        StepKind::Ctl,
        0,
        &FitOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!(&resumed.run_dir, run);
    assert_eq!(resumed.epochs, 3);
    let rows = kiln::metric_log::read_csv(&run.join("metrics.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let _ = AutodiffModule::valid(
        &ReidModelConfig::new("resnet18", 1, 512, 2)
            .init::<B>(&device)
            .unwrap(),
    );
}

#[test]
fn configuration_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path());
    let dataset = load_dataset(&cfg).unwrap();
    cfg.model.pretrained = true;
    cfg.model.pretrain_path = "./models/resnet50-19c8e357.pth".into();
    let err = fit::<B>(
        &cfg,
        &dataset,
        StepKind::Base,
        0,
        &FitOptions::default(),
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("MODEL.PRETRAIN_PATH"), "{err}");

    let mut cfg = tiny_config(dir.path());
    cfg.datasets.root_dir = dir.path().join("nowhere").display().to_string();
    let err = load_dataset(&cfg).err().unwrap();
    assert!(format!("{err:#}").contains("nowhere"), "{err:#}");

    // A corrupt JPEG met during training: the error names it and the run leaves no directory.
    let cfg = tiny_config(dir.path());
    let train_dir = dir.path().join("market1501/bounding_box_train");
    let victim = std::fs::read_dir(&train_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, b"\xff\xd8 not really a jpeg").unwrap();
    let dataset = load_dataset(&cfg).unwrap();
    let err = fit::<B>(
        &cfg,
        &dataset,
        StepKind::Ctl,
        0,
        &FitOptions::default(),
        &Default::default(),
    )
    .err()
    .unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(format!("{err:#}").contains(&name), "{err:#}");
    assert!(!dir.path().join("logs/train_ctl_model/version_0").exists());

    let err =
        ReidConfig::load(None, &["SOLVER.BASE_LRR".to_string(), "1".to_string()]).unwrap_err();
    assert!(err.to_string().contains("SOLVER.BASE_LRR"), "{err}");

    let _ = TensorData::new(vec![0.0f32], [1]);
}

#[test]
fn reproducible_runs_use_consecutive_seeds_and_their_own_directories() {
    let _guard = kiln::seed::global_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path());
    cfg.solver.max_epochs = 1;
    cfg.reproducible_num_runs = 2;
    cfg.reproducible_seed = 5;
    let runs = reid::train::run_train(
        cfg,
        StepKind::Base,
        kiln::DeviceKind::Cpu,
        FitOptions::default(),
    )
    .unwrap();
    assert_eq!(runs.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![5, 6]);
    assert!(runs[0].run_dir.ends_with("train_base_model/version_0"));
    assert!(runs[1].run_dir.ends_with("train_base_model/version_1"));
    // The base model logs no centroid-triplet term.
    let rows = kiln::metric_log::read_csv(&runs[0].run_dir.join("metrics.csv")).unwrap();
    assert!(
        !rows[0].1.contains_key("train_centroid_triplet")
            && rows[0].1.contains_key("train_query_xent")
    );
}

#[test]
fn bench_times_a_ctl_step_for_any_k_and_writes_json() {
    // K = 2 (not the config default of 4) catches a loss built for the wrong block size.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = reid::bench::BenchArgs {
        model: "resnet18".into(),
        p: 2,
        k: 2,
        height: 32,
        width: 32,
        num_classes: 5,
        steps: 2,
        warmup: 0,
        embed_batch: 3,
        embed_batches: 1,
        fold_batchnorm: false,
        precisions: vec![kiln::amp::Precision::F32, kiln::amp::Precision::Bf16Mixed],
        torch: kiln::bench::TorchSide {
            no_torch: true,
            json: Some(json.clone()),
            ..Default::default()
        },
    };
    reid::bench::run(&args, kiln::DeviceKind::Cpu).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["torch"].is_null(), "{report}");
    let steps = report["burn"]["steps_ms"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s.as_f64().unwrap() > 0.0));
    assert!(report["burn"]["embed_images_per_s"].as_f64().unwrap() > 0.0);
}
