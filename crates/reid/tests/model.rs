//! The reid model without fixtures: shapes, the stem-ReLU difference, initialisation, the frozen
//! BNNeck bias, and configuration errors. PyTorch parity is in `tests/import.rs`.

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use kiln::backend::{Autodiff, Flex};
use reid::model::import::torch_keys;
use reid::model::{Arch, FirstNorm, ReidModel, ReidModelConfig, ResNetConfig};

type B = Flex;
type AD = Autodiff<Flex>;

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn resnet50_layer4_map_is_2048x16x8_for_256x128_with_last_stride_1() {
    let device = Default::default();
    let net = ResNetConfig::new(Arch::ResNet50, 1)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 4>::random([1, 3, 256, 128], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(net.stem(x.clone()).dims(), [1, 64, 128, 64]);
    assert_eq!(net.forward(x).dims(), [1, 2048, 16, 8]);
    assert_eq!(net.last_stride(), 1);
    assert_eq!(net.feature_dim(), 2048);
}

#[test]
fn last_stride_2_halves_the_layer4_map_and_basic_blocks_give_512() {
    let device = Default::default();
    // Reduced width keeps this fast; the spatial arithmetic is the same as the full network's.
    let net = ResNetConfig::new(Arch::ResNet18, 2)
        .with_width(4)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 4>::random([2, 3, 256, 128], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(net.forward(x).dims(), [2, 32, 8, 4]);
    assert_eq!(net.last_stride(), 2);
    assert_eq!(Arch::ResNet18.feature_dim(64), 512);
    assert_eq!(Arch::ResNet34.feature_dim(64), 512);
    assert_eq!(Arch::ResNet101IbnA.feature_dim(64), 2048);
}

#[test]
fn plain_stem_has_no_relu_ibn_stem_has_one() {
    let device = Default::default();
    let x = Tensor::<B, 4>::random([2, 3, 32, 16], Distribution::Normal(0.0, 1.0), &device);
    for (arch, relu) in [(Arch::ResNet50, false), (Arch::ResNet50IbnA, true)] {
        let net = ResNetConfig::new(arch, 1)
            .with_width(8)
            .init::<B>(&device)
            .unwrap();
        // Eval-mode BN with running mean 0 / var 1 keeps the conv output's sign, and a random
        // conv of a random input has negative values.
        let stem = values(net.stem(x.clone()));
        let min = stem.iter().copied().fold(f32::INFINITY, f32::min);
        if relu {
            assert!(min >= 0.0, "{arch}: stem min {min}");
        } else {
            assert!(
                min < -0.1,
                "{arch}: no negative value before the max-pool (min {min})"
            );
        }
    }
}

#[test]
fn ibn_sits_in_bn1_of_layers_1_to_3_only() {
    let device = Default::default();
    let net = ResNetConfig::new(Arch::ResNet50IbnA, 1)
        .with_width(4)
        .init::<B>(&device)
        .unwrap();
    for (stage, layer) in [&net.layer1, &net.layer2, &net.layer3, &net.layer4]
        .iter()
        .enumerate()
    {
        for block in layer.iter() {
            match (&block.bn1, stage) {
                (FirstNorm::Ibn(ibn), 0..=2) => {
                    // floor(planes / 2) channels of instance norm.
                    assert_eq!(ibn.half, (4 << stage) / 2);
                }
                (FirstNorm::Batch(_), 3) => {}
                _ => panic!("stage {} has the wrong first norm", stage + 1),
            }
        }
    }
    assert!(net.fc.is_some(), "IBN keeps the unused fc");
    let plain = ResNetConfig::new(Arch::ResNet50, 1)
        .with_width(4)
        .init::<B>(&device)
        .unwrap();
    assert!(plain.fc.is_none());
}

#[test]
fn state_dict_keys_are_the_references() {
    let device = Default::default();
    let model = ReidModel::<B>::new(
        &ResNetConfig::new(Arch::ResNet50IbnA, 1)
            .with_width(4)
            .with_fc_classes(10),
        7,
        &device,
    )
    .unwrap();
    let keys: std::collections::BTreeMap<String, Vec<usize>> =
        torch_keys(&model).into_iter().collect();
    let expect = [
        ("backbone.base.conv1.weight", vec![4, 3, 7, 7]),
        ("backbone.base.bn1.running_var", vec![4]),
        ("backbone.base.layer1.0.bn1.IN.weight", vec![2]),
        ("backbone.base.layer1.0.bn1.BN.running_mean", vec![2]),
        (
            "backbone.base.layer1.0.downsample.0.weight",
            vec![16, 4, 1, 1],
        ),
        ("backbone.base.layer1.0.downsample.1.bias", vec![16]),
        ("backbone.base.layer3.5.conv3.weight", vec![64, 16, 1, 1]),
        ("backbone.base.layer4.0.bn1.weight", vec![32]),
        ("backbone.base.layer4.0.conv2.weight", vec![32, 32, 3, 3]),
        ("backbone.base.fc.weight", vec![10, 128]),
        ("backbone.base.fc.bias", vec![10]),
        ("bn.weight", vec![128]),
        ("bn.running_mean", vec![128]),
        ("fc_query.weight", vec![7, 128]),
        ("center_loss.centers", vec![7, 128]),
    ];
    for (key, shape) in expect {
        assert_eq!(keys.get(key), Some(&shape), "{key}");
    }
    assert!(!keys.contains_key("backbone.base.layer4.0.bn1.IN.weight"));
    assert!(!keys.contains_key("backbone.base.layer1.1.downsample.0.weight"));
    assert!(!keys.contains_key("fc_query.bias"));
    // 53 convs, 52 BN/IBN-BN + 1 stem BN (4 tensors each), 13 IN (2 each), fc (2),
    // BNNeck (4), classifier, centers.
    assert_eq!(keys.len(), 53 + 53 * 4 + 13 * 2 + 2 + 4 + 1 + 1);
}

#[test]
fn initialisation_matches_the_reference() {
    let _guard = kiln::seed::global_lock();
    let device = Default::default();
    B::seed(&device, 7);
    let model = ReidModelConfig::new("resnet50", 1, 2048, 751)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(model.emb_size(), 2048);
    assert_eq!(model.num_classes(), 751);
    // torchvision's resnet50 without fc has 23,508,032 parameters (+ BN running stats here:
    // 53,120 BN channels × 2).
    let backbone = model.backbone.num_params();
    assert_eq!(
        backbone,
        23_508_032 + 2 * 26_560,
        "backbone parameter count"
    );

    let (m, s) = mean_std(&values(model.fc_query.weight.val()));
    assert!(
        m.abs() < 1e-4 && (s - 0.001).abs() < 5e-5,
        "fc_query N(0, 0.001): {m} {s}"
    );
    let (m, s) = mean_std(&values(model.center_loss.centers.val()));
    assert!(
        m.abs() < 0.01 && (s - 1.0).abs() < 0.01,
        "centers N(0, 1): {m} {s}"
    );
    assert!(values(model.bn.weight.val()).iter().all(|&w| w == 1.0));
    assert!(values(model.bn.bias.val()).iter().all(|&b| b == 0.0));

    // Plain ResNet: PyTorch's default conv init U(±1/√fan_in), std = bound/√3.
    let w = values(model.backbone.base.layer3[0].conv2.weight.val()); // 256·3·3 fan-in
    let bound = 1.0 / (256.0f64 * 9.0).sqrt();
    let (_, s) = mean_std(&w);
    assert!(w.iter().all(|&x| (x as f64).abs() <= bound + 1e-7));
    assert!(
        (s - bound / 3f64.sqrt()).abs() < 0.03 * bound,
        "{s} vs {}",
        bound / 3f64.sqrt()
    );

    // IBN: N(0, √(2/(k·k·out))).
    let ibn = ResNetConfig::new(Arch::ResNet50IbnA, 1)
        .init::<B>(&device)
        .unwrap();
    let (m, s) = mean_std(&values(ibn.layer3[0].conv2.weight.val()));
    let want = (2.0f64 / (9.0 * 256.0)).sqrt();
    assert!(
        m.abs() < 1e-3 && (s - want).abs() < 0.02 * want,
        "{m} {s} vs {want}"
    );
    let FirstNorm::Ibn(first) = &ibn.layer1[0].bn1 else {
        panic!("layer1 must use IBN")
    };
    let gamma = values(first.instance_norm.gamma.as_ref().unwrap().val());
    assert!(gamma.iter().all(|&g| g == 1.0));
}

#[test]
fn bnneck_bias_is_frozen_and_gets_no_gradient() {
    let device = Default::default();
    let model = ReidModel::<AD>::new(
        &ResNetConfig::new(Arch::ResNet18, 1).with_width(2),
        3,
        &device,
    )
    .unwrap();
    assert_eq!(model.frozen_params(), vec![model.bn.bias.id]);
    let x = Tensor::<AD, 4>::random([4, 3, 32, 16], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward(x);
    assert_eq!(out.global_feat.dims(), [4, 16]);
    assert_eq!(out.logits.dims(), [4, 3]);
    let loss = out.logits.sum() + out.bn_feat.powf_scalar(2.0).sum() + out.global_feat.sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    assert!(
        grads.get::<Flex, 1>(model.bn.bias.id).is_none(),
        "frozen bias got a gradient"
    );
    assert!(grads.get::<Flex, 1>(model.bn.weight.id).is_some());
    assert!(grads.get::<Flex, 2>(model.fc_query.weight.id).is_some());
    assert!(
        grads
            .get::<Flex, 4>(model.backbone.base.conv1.weight.id)
            .is_some()
    );

    // Unfreezing everything and re-freezing restores it.
    let model = kiln::checkpoint::set_trainable(model, true).with_frozen_bnneck_bias();
    let out = model.forward(Tensor::random(
        [4, 3, 32, 16],
        Distribution::Default,
        &device,
    ));
    let grads = GradientsParams::from_grads(out.bn_feat.sum().backward(), &model);
    assert!(grads.get::<Flex, 1>(model.bn.bias.id).is_none());
}

/// The BatchNorm running statistics of the backbone and the BNNeck, by path, as the model
/// holds them (pending updates synced).
fn running_statistics(model: &ReidModel<AD>) -> Vec<(String, Vec<f32>)> {
    struct Running {
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl burn::module::ModuleVisitor<AD> for Running {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<AD, D>>) {
            let path = self.path.join(".");
            if path.ends_with("running_mean") || path.ends_with("running_var") {
                let v = param.val().inner().into_data().to_vec().unwrap();
                self.out.push((path, v));
            }
        }
    }
    let _ = model.clone().into_record(); // syncs the running statistics
    let mut v = Running {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// BatchNorm running statistics are buffers: after `set_trainable(true)` and a checkpoint
/// round trip none is trainable (every other tensor but the frozen BNNeck bias is), and an Adam
/// step with weight decay (the reference's optimiser) leaves them where the forward pass's
/// running update put them.
#[test]
fn batchnorm_running_statistics_are_never_trainable() {
    use kiln::checkpoint::{
        load_checked, param_shapes, record_from_bytes, record_to_bytes, set_trainable,
        trainable_paths,
    };
    let device = Default::default();
    let config = ResNetConfig::new(Arch::ResNet18, 1).with_width(2);
    let model = ReidModel::<AD>::new(&config, 3, &device).unwrap();
    let model = set_trainable(model, true).with_frozen_bnneck_bias();
    let bytes = record_to_bytes::<AD, _>(model.into_record()).unwrap();
    let record = record_from_bytes::<AD, _>(bytes, &device).unwrap();
    let fresh = ReidModel::<AD>::new(&config, 3, &device).unwrap();
    let model = load_checked(
        set_trainable(fresh, true).with_frozen_bnneck_bias(),
        record,
        "reid",
    )
    .unwrap();
    let trainable = trainable_paths::<AD, _>(&model);
    let before = running_statistics(&model);
    // 20 BatchNorms in a ResNet18 (stem, 2 per block, 3 downsamples) and the BNNeck.
    assert_eq!(before.len(), 2 * 21);
    assert_eq!(
        trainable.len(),
        param_shapes::<AD, _>(&model).len() - before.len() - 1,
        "{trainable:?}"
    );
    assert!(
        !trainable.iter().any(|p| p.contains("running")),
        "{trainable:?}"
    );

    let x = Tensor::<AD, 4>::random([4, 3, 32, 16], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward(x);
    let loss = out.logits.sum() + out.global_feat.powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let updated = running_statistics(&model);
    for ((path, a), (_, b)) in before.iter().zip(&updated) {
        assert_ne!(a, b, "{path}: the forward pass updates it");
    }
    let mut adam = burn::optim::AdamConfig::new()
        .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(5e-4)))
        .init::<AD, ReidModel<AD>>();
    let conv = values(model.backbone.base.conv1.weight.val().inner());
    let model = burn::optim::Optimizer::step(&mut adam, 1e-2, model, grads);
    assert_ne!(values(model.backbone.base.conv1.weight.val().inner()), conv);
    assert_eq!(
        running_statistics(&model),
        updated,
        "the optimiser step moved them"
    );
}

#[test]
fn embed_is_eval_mode_bnneck_of_the_pooled_feature() {
    let device = Default::default();
    let model = ReidModel::<AD>::new(
        &ResNetConfig::new(Arch::ResNet50IbnA, 1)
            .with_width(2)
            .with_fc_classes(3),
        3,
        &device,
    )
    .unwrap();
    // One training step's forward updates the running statistics; eval mode then uses them.
    let x = Tensor::<AD, 4>::random([4, 3, 32, 16], Distribution::Normal(0.0, 1.0), &device);
    let _ = model.forward(x);
    let eval = model.valid();
    let rm = values(eval.bn.running_mean.value());
    assert!(
        rm.iter().any(|&v| v != 0.0),
        "train-mode forward must update BNNeck statistics"
    );
    let x = Tensor::<B, 4>::random([2, 3, 32, 16], Distribution::Normal(0.0, 1.0), &device);
    let f = eval.forward_features(x.clone());
    let rv = values(eval.bn.running_var.value());
    let want: Vec<f32> = values(f)
        .chunks(eval.emb_size())
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(c, &v)| (v - rm[c]) / (rv[c] + 1e-5).sqrt())
                .collect::<Vec<_>>()
        })
        .collect();
    let got = values(eval.embed(x));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

#[test]
fn config_errors_are_clear() {
    let device = Default::default();
    let err = ReidModelConfig::new("resnet51", 1, 2048, 10)
        .init::<B>(&device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resnet51") && err.contains("resnet50_ibn_a"),
        "{err}"
    );
    let err = ReidModelConfig::new("resnet18", 1, 2048, 10)
        .init::<B>(&device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("BACKBONE_EMB_SIZE") && err.contains("512"),
        "{err}"
    );
    let err = ReidModelConfig::new("resnet50", 1, 512, 10)
        .backbone()
        .unwrap_err()
        .to_string();
    assert!(err.contains("2048"), "{err}");
    assert!(
        ReidModelConfig::new("resnet50", 0, 2048, 10)
            .backbone()
            .is_err()
    );
    let err = ReidModelConfig::new("resnet50", 1, 2048, 0)
        .backbone()
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_classes"), "{err}");
    assert_eq!(
        ReidModelConfig::new("resnet34", 2, 512, 5)
            .backbone()
            .unwrap()
            .arch,
        Arch::ResNet34
    );
}

/// One forward + backward of ResNet50 at 8×3×256×128 (the reference's input size; override with
/// `REID_BENCH_SHAPE=N,H,W`), timed on Flex (and ndarray with `--features ndarray`), plus an
/// eval-mode embedding pass with and without folded BatchNorm:
/// `cargo test -p reid --features ndarray --test model -- --ignored --nocapture bench`.
#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_resnet50_forward_backward() {
    fn run<Bk: burn::tensor::backend::AutodiffBackend>(name: &str, [n, h, w]: [usize; 3]) {
        let device = Default::default();
        let model = ReidModelConfig::new("resnet50", 1, 2048, 751)
            .init::<Bk>(&device)
            .unwrap();
        for round in 0..2 {
            let x = Tensor::<Bk, 4>::random([n, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            let t0 = std::time::Instant::now();
            let out = model.forward(x);
            let loss = out.logits.sum() + out.global_feat.sum();
            let _ = loss.clone().into_scalar();
            let t1 = std::time::Instant::now();
            let grads = loss.backward();
            let g = GradientsParams::from_grads(grads, &model);
            let t2 = std::time::Instant::now();
            println!(
                "{name} {n}x3x{h}x{w} round {round}: forward {:.2}s, backward {:.2}s ({} grads)",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                g.len()
            );
        }
        let eval = model.valid();
        let x = Tensor::<Bk::InnerBackend, 4>::random([n, 3, h, w], Distribution::Default, &device);
        let t0 = std::time::Instant::now();
        let _ = eval.embed(x.clone()).into_data();
        println!("{name}: eval embed {:.2}s", t0.elapsed().as_secs_f64());
        let eval = eval.with_folded_batchnorm(true);
        let t0 = std::time::Instant::now();
        let _ = eval.embed(x).into_data();
        println!(
            "{name}: eval embed, folded BN {:.2}s",
            t0.elapsed().as_secs_f64()
        );
    }
    let shape = std::env::var("REID_BENCH_SHAPE")
        .ok()
        .map(|s| {
            let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().unwrap()).collect();
            [v[0], v[1], v[2]]
        })
        .unwrap_or([8, 256, 128]);
    run::<AD>("flex", shape);
    #[cfg(feature = "ndarray")]
    run::<Autodiff<kiln::backend::NdArray>>("ndarray", shape);
}
