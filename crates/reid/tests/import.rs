//! Weight import and PyTorch parity against the fixtures of `tools/parity/reid_fixtures.py`
//! (reduced-width reference models with random weights and perturbed BatchNorm statistics; see
//! the script's docstring). Eval-mode outputs must match PyTorch within 1e-4.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use kiln::backend::{Autodiff, Flex};
use ndarray::ArrayD;
use reid::model::{
    Arch, ReaderKind, ReidModel, ResNetConfig, load_imagenet_weights, load_reference_checkpoint,
    load_reference_checkpoint_into,
};

type B = Flex;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn npy(path: &Path) -> ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor4(a: &ArrayD<f32>) -> Tensor<B, 4> {
    let shape: [usize; 4] = a.shape().try_into().unwrap();
    let data = TensorData::new(a.iter().copied().collect::<Vec<_>>(), shape);
    Tensor::from_data(data, &Default::default())
}

/// Max |got − want| over all elements, asserting equal shapes.
fn max_abs_diff(got: Tensor<B, 2>, want: &ArrayD<f32>) -> f32 {
    assert_eq!(got.dims().to_vec(), want.shape().to_vec());
    let got: Vec<f32> = got.into_data().to_vec().unwrap();
    got.iter()
        .zip(want.iter())
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

fn input() -> Tensor<B, 4> {
    tensor4(&npy(&fixture("input.npy")))
}

fn small(arch: Arch, width: usize, last_stride: usize, fc_classes: usize) -> ResNetConfig {
    ResNetConfig::new(arch, last_stride)
        .with_width(width)
        .with_fc_classes(fc_classes)
}

fn check_features(model: &ReidModel<B>, stem: &str) {
    let feat = model.forward_features(input());
    let diff = max_abs_diff(feat, &npy(&fixture(&format!("{stem}_feat.npy"))));
    println!("{stem}: pre-BN feature max |diff| = {diff:.3e}");
    assert!(
        diff < TOL,
        "{stem}: pre-BN features differ from PyTorch by {diff}"
    );
}

fn check_embeddings(model: &ReidModel<B>, stem: &str) {
    check_features(model, stem);
    let emb = model.embed(input());
    let diff = max_abs_diff(emb, &npy(&fixture(&format!("{stem}_emb.npy"))));
    println!("{stem}: post-BN embedding max |diff| = {diff:.3e}");
    assert!(
        diff < TOL,
        "{stem}: embeddings differ from PyTorch by {diff}"
    );
}

#[test]
fn torchvision_style_legacy_pth_into_plain_resnet50() {
    let device = Default::default();
    let model = ReidModel::<B>::new(&small(Arch::ResNet50, 2, 1, 1000), 5, &device).unwrap();
    let (model, summary) = load_imagenet_weights(model, fixture("r50w2_plain.pth")).unwrap();
    assert_eq!(summary.reader, ReaderKind::BurnStore);
    assert_eq!(summary.skipped, vec!["fc.bias", "fc.weight"]);
    assert_eq!(
        summary.ignored.len(),
        53,
        "one num_batches_tracked per BatchNorm"
    );
    // 53 convs + 53 BatchNorms × 4 tensors; the head stays at its init.
    assert_eq!(summary.loaded, 53 + 53 * 4);
    assert!(summary.untouched.contains(&"fc_query.weight".to_string()));
    check_features(&model, "r50w2_plain");
}

#[test]
fn ibn_pth_into_resnet50_ibn_a() {
    let device = Default::default();
    let model = ReidModel::<B>::new(&small(Arch::ResNet50IbnA, 2, 1, 10), 5, &device).unwrap();
    let (model, summary) = load_imagenet_weights(model, fixture("r50w2_ibn.pth")).unwrap();
    assert_eq!(summary.reader, ReaderKind::BurnStore);
    assert_eq!(summary.skipped, vec!["fc.bias", "fc.weight"]);
    // The reference never loads the IBN fc: it keeps its init.
    assert!(
        summary
            .untouched
            .contains(&"backbone.base.fc.weight".to_string())
    );
    // 53 convs, 40 BatchNorms + 13 IBN-BNs (4 tensors), 13 instance norms (2 tensors).
    assert_eq!(summary.loaded, 53 + 53 * 4 + 13 * 2);
    check_features(&model, "r50w2_ibn");
}

#[test]
fn lightning_checkpoints_build_the_right_model_and_match_pytorch() {
    let device = Default::default();
    for (stem, arch, last_stride, classes, reader) in [
        ("r50w2_plain", Arch::ResNet50, 1, 5, ReaderKind::ZipPickle),
        ("r50w2_ibn", Arch::ResNet50IbnA, 1, 5, ReaderKind::ZipPickle),
        ("r18w2_plain", Arch::ResNet18, 2, 4, ReaderKind::BurnStore),
    ] {
        let (model, info) =
            load_reference_checkpoint::<B>(fixture(&format!("{stem}.ckpt")), &device).unwrap();
        assert_eq!(info.arch, arch, "{stem}");
        assert_eq!(info.width, 2, "{stem}");
        assert_eq!(info.last_stride, last_stride, "{stem}: MODEL.LAST_STRIDE");
        assert_eq!(info.num_classes, classes, "{stem}");
        assert_eq!(info.summary.reader, reader, "{stem}");
        assert_eq!(
            info.hparams.model_name.as_deref(),
            Some(arch.name()),
            "{stem}"
        );
        assert_eq!(info.hparams.num_classes, Some(classes), "{stem}");
        assert_eq!(info.hparams.emb_size, Some(info.emb_size), "{stem}");
        assert!(
            info.summary.untouched.is_empty(),
            "{stem}: every parameter is filled"
        );
        assert_eq!(model.backbone.base.last_stride(), last_stride);
        check_embeddings(&model, stem);
    }
    let (_, info) = load_reference_checkpoint::<B>(fixture("r50w2_ibn.ckpt"), &device).unwrap();
    assert_eq!((info.epoch, info.global_step), (Some(119), Some(1234)));
}

#[test]
fn checkpoint_into_a_configured_model_keeps_the_bnneck_bias_frozen() {
    type AD = Autodiff<Flex>;
    let device = Default::default();
    let model = ReidModel::<AD>::new(&small(Arch::ResNet50IbnA, 2, 1, 10), 5, &device).unwrap();
    let (model, info) = load_reference_checkpoint_into(model, fixture("r50w2_ibn.ckpt")).unwrap();
    assert_eq!(info.summary.loaded, 53 + 53 * 4 + 13 * 2 + 2 + 4 + 1 + 1);
    // The eval model matches PyTorch (checked before any training-mode forward, which would
    // update the running statistics).
    check_embeddings(&model.valid(), "r50w2_ibn");
    // The loaded (non-zero) bias is still excluded from training.
    let bias: Vec<f32> = model.bn.bias.val().into_data().to_vec().unwrap();
    assert!(bias.iter().any(|&b| b != 0.0));
    let x = Tensor::<AD, 4>::random([2, 3, 64, 32], burn::tensor::Distribution::Default, &device);
    let grads = GradientsParams::from_grads(model.embed(x).sum().backward(), &model);
    assert!(grads.get::<Flex, 1>(model.bn.bias.id).is_none());
    assert!(grads.get::<Flex, 1>(model.bn.weight.id).is_some());
}

#[test]
fn wrong_architecture_errors_name_keys_and_shapes() {
    let device = Default::default();
    // Plain weights into an IBN network: the IBN keys are missing, the plain bn1 keys unexpected.
    let ibn = ReidModel::<B>::new(&small(Arch::ResNet50IbnA, 2, 1, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_imagenet_weights(ibn, fixture("r50w2_plain.pth")).unwrap_err()
    );
    assert!(err.contains("r50w2_plain.pth"), "{err}");
    assert!(err.contains("missing from the file (78)"), "{err}");
    assert!(
        err.contains("backbone.base.layer1.0.bn1.IN.weight"),
        "{err}"
    );
    assert!(err.contains("unexpected in the file (52)"), "{err}");
    assert!(err.contains("layer1.0.bn1.running_mean"), "{err}");

    // Another width: every tensor has the wrong shape, and the message says which.
    let wide = ReidModel::<B>::new(&small(Arch::ResNet50, 4, 1, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_imagenet_weights(wide, fixture("r50w2_plain.pth")).unwrap_err()
    );
    assert!(
        err.contains(
            "`backbone.base.conv1.weight` is [2, 3, 7, 7] in the file but [4, 3, 7, 7] in the model"
        ),
        "{err}"
    );

    // Another depth: the extra blocks are missing.
    let deep = ReidModel::<B>::new(&small(Arch::ResNet101, 2, 1, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_imagenet_weights(deep, fixture("r50w2_plain.pth")).unwrap_err()
    );
    assert!(
        err.contains("missing from the file (255): backbone.base.layer3.6.conv1.weight"),
        "{err}"
    );
    assert!(!err.contains("unexpected"), "{err}");

    // A Lightning checkpoint is not an ImageNet file: like the reference's KeyError, the head
    // keys are unexpected (fc_query is skipped by the `fc` rule).
    let plain = ReidModel::<B>::new(&small(Arch::ResNet50, 2, 1, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_imagenet_weights(plain, fixture("r50w2_plain.ckpt")).unwrap_err()
    );
    assert!(
        err.contains("unexpected in the file (5): bn.bias, bn.running_mean"),
        "{err}"
    );
    assert!(err.contains("center_loss.centers"), "{err}");
}

#[test]
fn checkpoint_hyper_parameters_are_checked_against_the_model() {
    let device = Default::default();
    // MODEL.NAME contradicts the model.
    let ibn = ReidModel::<B>::new(&small(Arch::ResNet50IbnA, 2, 1, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_reference_checkpoint_into(ibn, fixture("r50w2_plain.ckpt")).unwrap_err()
    );
    assert!(
        err.contains("wrong architecture") && err.contains("MODEL.NAME = resnet50"),
        "{err}"
    );
    // num_classes contradicts the model.
    let six = ReidModel::<B>::new(&small(Arch::ResNet50, 2, 1, 10), 6, &device).unwrap();
    let err = format!(
        "{:#}",
        load_reference_checkpoint_into(six, fixture("r50w2_plain.ckpt")).unwrap_err()
    );
    assert!(
        err.contains("num_classes = 5") && err.contains("6 classes"),
        "{err}"
    );
    // MODEL.LAST_STRIDE contradicts the model.
    let stride2 = ReidModel::<B>::new(&small(Arch::ResNet50, 2, 2, 10), 5, &device).unwrap();
    let err = format!(
        "{:#}",
        load_reference_checkpoint_into(stride2, fixture("r50w2_plain.ckpt")).unwrap_err()
    );
    assert!(err.contains("MODEL.LAST_STRIDE = 1"), "{err}");
}

#[test]
fn unreadable_files_are_errors() {
    let device = Default::default();
    let err = format!(
        "{:#}",
        load_reference_checkpoint::<B>(fixture("nope.ckpt"), &device).unwrap_err()
    );
    assert!(
        err.contains("nope.ckpt") && err.contains("does not exist"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pth");
    std::fs::write(&garbage, b"this is not a pickle").unwrap();
    let err = format!(
        "{:#}",
        load_reference_checkpoint::<B>(&garbage, &device).unwrap_err()
    );
    assert!(
        err.contains("garbage.pth") && err.contains("cannot read"),
        "{err}"
    );

    // A backbone-only file is not a reference checkpoint.
    let err = format!(
        "{:#}",
        load_reference_checkpoint::<B>(fixture("r50w2_ibn.pth"), &device).unwrap_err()
    );
    assert!(
        err.contains("not a centroids-reid checkpoint")
            && err.contains("backbone.base.conv1.weight"),
        "{err}"
    );

    // A truncated checkpoint.
    let bytes = std::fs::read(fixture("r50w2_ibn.ckpt")).unwrap();
    let cut = dir.path().join("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_reference_checkpoint::<B>(&cut, &device).is_err());
}

#[test]
fn folded_batchnorm_evaluation_equals_the_exact_one_up_to_rounding() {
    let device = Default::default();
    for stem in ["r50w2_plain", "r50w2_ibn"] {
        let (model, _) =
            load_reference_checkpoint::<B>(fixture(&format!("{stem}.ckpt")), &device).unwrap();
        let exact: Vec<f32> = model.embed(input()).into_data().to_vec().unwrap();
        let folded_model = model.with_folded_batchnorm(true);
        let folded = folded_model.embed(input());
        let want = npy(&fixture(&format!("{stem}_emb.npy")));
        let diff = max_abs_diff(folded.clone(), &want);
        println!("{stem}: folded-BN embedding max |diff| = {diff:.3e}");
        assert!(diff < 3e-4, "{stem}: folded BatchNorm is off by {diff}");
        let folded: Vec<f32> = folded.into_data().to_vec().unwrap();
        assert!(
            exact.iter().zip(&folded).any(|(a, b)| a != b),
            "{stem}: folding must change the computation (it did not run)"
        );
    }
    // Training (autodiff) never folds: batch statistics are used either way.
    type AD = Autodiff<Flex>;
    let model = ReidModel::<AD>::new(&small(Arch::ResNet50, 2, 1, 10), 3, &device).unwrap();
    let x = Tensor::<AD, 4>::random([2, 3, 64, 32], burn::tensor::Distribution::Default, &device);
    let a: Vec<f32> = model
        .forward_features(x.clone())
        .into_data()
        .to_vec()
        .unwrap();
    let model = model.with_folded_batchnorm(true);
    let b: Vec<f32> = model.forward_features(x).into_data().to_vec().unwrap();
    assert_eq!(a, b);
}

/// Full-size ResNet50 / ResNet50-IBN-a parity (fixtures of ~100 MB, not committed):
/// `/work/venv/bin/python tools/parity/reid_fixtures.py --full DIR`, then
/// `REID_FULL_PARITY_DIR=DIR cargo test -p reid --test import -- --ignored --nocapture full`.
///
/// The 2048-d outputs reach |x| ≈ 60, where float32 rounding through 50 layers is itself about
/// 1e-4 (PyTorch's float32 forward is 9.9e-5 away from the float64 expectation for ResNet50), so
/// the tolerance is 1e-4 relative to the output scale.
#[test]
#[ignore = "needs REID_FULL_PARITY_DIR (full-size fixtures)"]
fn full_resnet50_parity() {
    let dir =
        PathBuf::from(std::env::var("REID_FULL_PARITY_DIR").expect("set REID_FULL_PARITY_DIR"));
    let device = Default::default();
    let x = tensor4(&npy(&dir.join("input.npy")));
    for (stem, arch) in [
        ("resnet50", Arch::ResNet50),
        ("resnet50_ibn_a", Arch::ResNet50IbnA),
    ] {
        let (model, info) =
            load_reference_checkpoint::<B>(dir.join(format!("{stem}.ckpt")), &device).unwrap();
        assert_eq!(
            (info.arch, info.width, info.emb_size, info.num_classes),
            (arch, 64, 2048, 751)
        );
        assert_eq!(
            model.backbone.base.forward(x.clone()).dims(),
            [2, 2048, 16, 8]
        );
        let want_feat = npy(&dir.join(format!("{stem}_feat.npy")));
        let want_emb = npy(&dir.join(format!("{stem}_emb.npy")));
        let scale = want_emb.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let feat = max_abs_diff(model.forward_features(x.clone()), &want_feat);
        let emb = max_abs_diff(model.embed(x.clone()), &want_emb);
        let model = model.with_folded_batchnorm(true);
        let folded = max_abs_diff(model.embed(x.clone()), &want_emb);
        println!(
            "{stem}: max |diff| pre-BN {feat:.3e}, post-BN {emb:.3e}, post-BN folded {folded:.3e} \
             (max |embedding| {scale:.1}; {:?} reader)",
            info.summary.reader
        );
        for d in [feat, emb, folded] {
            assert!(d < TOL * scale, "{stem}: {d} exceeds {}", TOL * scale);
        }
    }
}
