//! Mixed precision on the re-identification model: under kiln's autocast (every convolution and
//! the classifier in f16 / bf16; batch norm, instance norm, pooling and the BNNeck in f32) the
//! retrieval embedding and the identity logits agree with f32 within a stated tolerance, and do
//! change (so the policy is really applied).
//!
//! Eval mode, batch 2 of 64×32 ImageNet-normalised random images. Compared: max |Δ| relative to
//! the largest |value| of the f32 output. Tolerances 3e-2 (bf16) and 1e-2 (f16); measured on
//! burn-flex (embedding / logits): ResNet18 bf16 4.1e-3 / 4.0e-3, f16 3.5e-4 / 5.0e-4;
//! ResNet50-IBN-a bf16 7.3e-3 / 1.3e-2, f16 1.0e-3 / 1.1e-3.

use burn::tensor::{Distribution, Tensor};
use kiln::amp::{Precision, autocast};
use kiln::backend::Flex;
use reid::model::ReidModelConfig;

type B = Flex;

fn relative_diff(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
    let a: Vec<f32> = a.into_data().to_vec().unwrap();
    let b: Vec<f32> = b.into_data().to_vec().unwrap();
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, v| {
            if v.is_finite() {
                m.max(v)
            } else {
                f32::INFINITY
            }
        });
    d / scale
}

fn check(name: &str, emb: usize, bf16_tol: f32, f16_tol: f32) {
    let device = Default::default();
    kiln::seed::seed_backend::<B>(&device, 4, "init", 0);
    let model = ReidModelConfig::new(name, 1, emb, 10)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 4>::random([2, 3, 64, 32], Distribution::Normal(0.0, 1.0), &device);
    let full = model.forward(x.clone());
    for (precision, tol) in [
        (Precision::Bf16Mixed, bf16_tol),
        (Precision::F16Mixed, f16_tol),
    ] {
        let half = autocast(precision, || model.forward(x.clone()));
        for (what, a, b) in [
            ("embedding", full.bn_feat.clone(), half.bn_feat),
            ("logits", full.logits.clone(), half.logits),
        ] {
            let d = relative_diff(a, b);
            eprintln!("{name} {precision} {what}: max |Δ| / max |f32| = {d:e}");
            assert!(d <= tol, "{name} {precision} {what}: {d:e} > {tol:e}");
            assert!(
                d > 0.0,
                "{name} {precision} {what}: autocast changed nothing"
            );
        }
    }
}

#[test]
fn resnet18_half_forward_matches_f32() {
    check("resnet18", 512, 3e-2, 1e-2);
}

#[test]
fn resnet50_ibn_a_half_forward_matches_f32() {
    check("resnet50_ibn_a", 2048, 3e-2, 1e-2);
}
