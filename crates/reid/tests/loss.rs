//! Losses of `reid::loss` against hand-computed values, an independent f64 brute force (values
//! and finite-difference gradients) and PyTorch (`tools/parity/reid_losses.py`).

use std::cell::Cell;

use burn::tensor::{Tensor, TensorData};
use kiln::backend::{Autodiff, Flex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reid::loss::{
    CentroidTripletLoss, DistanceFunc, LossConfig, LossInputs, TripletLoss, base_model_loss,
    center_loss, cosine_dist, cross_entropy_label_smooth, ctl_model_loss, ctl_rounds,
    euclidean_dist,
};
use serde::Deserialize;

type B = Flex;
type AD = Autodiff<Flex>;

fn matrix<Bk: burn::tensor::backend::Backend>(rows: &[Vec<f64>]) -> Tensor<Bk, 2> {
    let cols = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), cols]),
        &Default::default(),
    )
}

fn to_vec<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn scalar<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 1>) -> f64 {
    let v = to_vec(t);
    assert_eq!(v.len(), 1);
    v[0]
}

fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    let err = (actual - expected).abs();
    assert!(
        err <= tol * (1.0 + expected.abs()),
        "{what}: got {actual}, expected {expected} (|err| = {err:e})"
    );
}

/// Element-wise `|actual − expected| ≤ rtol·|expected| + atol`: for arrays whose entries are
/// small, where a tolerance of the form `tol·(1 + |e|)` would accept anything.
fn assert_all_close_rel(actual: &[f64], expected: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        assert!(
            err <= rtol * e.abs() + atol,
            "{what}[{i}]: got {a}, expected {e} (|err| = {err:e}, relative {:e})",
            err / e.abs()
        );
    }
}

fn assert_all_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert_close(a, e, tol, &format!("{what}[{i}]"));
    }
}

// ---------------------------------------------------------------------------------------------
// Independent f64 brute force, written from the reference's definitions of the losses (not from the crate's code).

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn bf_dist(a: &[f64], b: &[f64], func: DistanceFunc) -> f64 {
    match func {
        DistanceFunc::Euclidean => (dot(a, a) + dot(b, b) - 2.0 * dot(a, b)).max(1e-12).sqrt(),
        DistanceFunc::Cosine => {
            let na = dot(a, a).sqrt().max(1e-12);
            let nb = dot(b, b).sqrt().max(1e-12);
            (1.0 - dot(a, b) / (na * nb)).abs().max(1e-12)
        }
    }
}

/// Batch-hard triplet: for every kept anchor, hardest positive (self included) and hardest
/// negative; mean hinge with the margin. Returns (loss, d_ap, d_an) over kept anchors.
fn bf_triplet(
    x: &[Vec<f64>],
    labels: &[usize],
    mask: Option<&[bool]>,
    margin: f64,
    func: DistanceFunc,
) -> (f64, Vec<f64>, Vec<f64>) {
    let (mut aps, mut ans) = (Vec::new(), Vec::new());
    for i in 0..x.len() {
        if mask.is_some_and(|m| !m[i]) {
            continue;
        }
        let mut ap = f64::NEG_INFINITY;
        let mut an = f64::INFINITY;
        for j in 0..x.len() {
            let d = bf_dist(&x[i], &x[j], func);
            if labels[i] == labels[j] {
                ap = ap.max(d);
            } else {
                an = an.min(d);
            }
        }
        aps.push(ap);
        ans.push(an);
    }
    let loss = aps
        .iter()
        .zip(&ans)
        .map(|(ap, an)| (ap - an + margin).max(0.0))
        .sum::<f64>()
        / aps.len() as f64;
    (loss, aps, ans)
}

struct BfCtl {
    loss: f64,
    rounds_used: usize,
    ap_mean: f64,
    an_mean: f64,
    norm_mean: f64,
}

/// The CTL as the reference's training step defines it: K rounds; in round i every class whose
/// i-th instance is real contributes that instance as query and the mean of its other real instances as centroid;
/// rounds with ≤ 1 class are skipped; batch-hard over [queries; centroids]; mean over rounds.
fn bf_ctl(
    x: &[Vec<f64>],
    labels: &[usize],
    is_real: &[bool],
    k: usize,
    margin: f64,
    func: DistanceFunc,
) -> BfCtl {
    let p = x.len() / k;
    let (mut losses, mut aps, mut ans, mut norms) = (vec![], vec![], vec![], vec![]);
    for i in 0..k {
        let mut queries = vec![];
        let mut centroids = vec![];
        let mut labs = vec![];
        for c in 0..p {
            if !is_real[c * k + i] {
                continue;
            }
            let others: Vec<&Vec<f64>> = (0..k)
                .filter(|&s| s != i && is_real[c * k + s])
                .map(|s| &x[c * k + s])
                .collect();
            if others.is_empty() {
                continue;
            }
            let mut mean = vec![0.0; x[0].len()];
            for o in &others {
                for (m, v) in mean.iter_mut().zip(o.iter()) {
                    *m += v / others.len() as f64;
                }
            }
            queries.push(x[c * k + i].clone());
            centroids.push(mean);
            labs.push(labels[c * k]);
        }
        if labs.len() <= 1 {
            continue;
        }
        norms
            .push(centroids.iter().map(|c| dot(c, c).sqrt()).sum::<f64>() / centroids.len() as f64);
        let all: Vec<Vec<f64>> = queries.into_iter().chain(centroids).collect();
        let all_labels: Vec<usize> = labs.iter().chain(&labs).copied().collect();
        let (loss, ap, an) = bf_triplet(&all, &all_labels, None, margin, func);
        losses.push(loss);
        aps.push(ap.iter().sum::<f64>() / ap.len() as f64);
        ans.push(an.iter().sum::<f64>() / an.len() as f64);
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    BfCtl {
        loss: if losses.is_empty() {
            0.0
        } else {
            mean(&losses)
        },
        rounds_used: losses.len(),
        ap_mean: mean(&aps),
        an_mean: mean(&ans),
        norm_mean: mean(&norms),
    }
}

/// Central finite differences of `f` at `x`.
fn fd_grad(x: &[Vec<f64>], f: impl Fn(&[Vec<f64>]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut grad = Vec::new();
    for i in 0..x.len() {
        for j in 0..x[i].len() {
            let mut plus = x.to_vec();
            plus[i][j] += h;
            let mut minus = x.to_vec();
            minus[i][j] -= h;
            grad.push((f(&plus) - f(&minus)) / (2.0 * h));
        }
    }
    grad
}

fn random_rows(rng: &mut StdRng, n: usize, d: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Distances

#[test]
fn euclidean_distance_is_non_squared_with_floor() {
    let x = matrix::<B>(&[vec![0.0, 0.0], vec![3.0, 4.0]]);
    let y = matrix::<B>(&[vec![0.0, 0.0], vec![1.0, 0.0]]);
    let d = to_vec(euclidean_dist(x, y));
    // sqrt(clamp(0, 1e-12)) = 1e-6; |(3,4)| = 5; |(2,4)| = sqrt(20).
    assert_all_close(&d, &[1e-6, 1.0, 5.0, 20f64.sqrt()], 1e-6, "euclidean");
}

#[test]
fn cosine_distance_hand_values_and_zero_rows() {
    let x = matrix::<B>(&[vec![1.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0]]);
    let y = matrix::<B>(&[vec![2.0, 0.0], vec![0.0, 3.0]]);
    let d = to_vec(cosine_dist(x, y));
    let s = 1.0 - 0.5f64.sqrt();
    // Identical direction → floor 1e-12; orthogonal → 1; the zero row has cos 0 → 1.
    assert_all_close(&d, &[1e-12, 1.0, s, s, 1.0, 1.0], 1e-6, "cosine");
    assert!(
        d[0] > 0.0 && d[0] < 1e-9,
        "floor keeps identical directions at 1e-12: {}",
        d[0]
    );

    // The norm floor keeps the gradient finite for an all-zero row.
    let x = matrix::<AD>(&[vec![0.0, 0.0], vec![1.0, 2.0]]).require_grad();
    let grads = cosine_dist(x.clone(), x.clone()).sum().backward();
    let g = to_vec(x.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn distance_func_parses_config_spelling() {
    assert_eq!(
        "euclidean".parse::<DistanceFunc>().unwrap(),
        DistanceFunc::Euclidean
    );
    assert_eq!(
        " Cosine ".parse::<DistanceFunc>().unwrap(),
        DistanceFunc::Cosine
    );
    let err = "manhattan".parse::<DistanceFunc>().unwrap_err().to_string();
    assert!(err.contains("manhattan"), "{err}");
    assert_eq!(DistanceFunc::Cosine.to_string(), "cosine");
}

// ---------------------------------------------------------------------------------------------
// Batch-hard triplet

#[test]
fn triplet_hand_computed_loss_distances_and_gradient() {
    // 1-D features 0, 1, 3, 7 with labels 0, 0, 1, 1: distances are |a − b|.
    // d_ap = [1, 1, 4, 4], d_an = [3, 2, 2, 6]; hinge(·+0.5) = [0, 0, 2.5, 0] → 0.625.
    let x = matrix::<AD>(&[vec![0.0], vec![1.0], vec![3.0], vec![7.0]]).require_grad();
    let labels = [0, 0, 1, 1];
    let out = TripletLoss::default()
        .forward(x.clone(), &labels, None)
        .unwrap();
    assert_all_close(
        &to_vec(out.dist_ap.clone()),
        &[1.0, 1.0, 4.0, 4.0],
        1e-5,
        "d_ap",
    );
    assert_all_close(
        &to_vec(out.dist_an.clone()),
        &[3.0, 2.0, 2.0, 6.0],
        1e-5,
        "d_an",
    );
    assert_close(scalar(out.loss.clone()), 0.625, 1e-6, "loss");
    // Only anchor 2 is active: (d(2,3) − d(2,1) + 0.5)/4 → ∂/∂x = [0, 1/4, −1/2, 1/4].
    let grads = out.loss.backward();
    let g = to_vec(x.grad(&grads).unwrap());
    assert_all_close(&g, &[0.0, 0.25, -0.5, 0.25], 1e-5, "grad");

    // Anchor mask after mining: the masked sample still serves as a negative/positive.
    let x = matrix::<B>(&[vec![0.0], vec![1.0], vec![3.0], vec![7.0]]);
    let out = TripletLoss::default()
        .forward(x.clone(), &labels, Some(&[true, true, true, false]))
        .unwrap();
    assert_close(scalar(out.loss), 2.5 / 3.0, 1e-6, "masked loss");
    let out = TripletLoss::default()
        .forward(x.clone(), &labels, Some(&[false, true, false, true]))
        .unwrap();
    assert_close(scalar(out.loss), 0.0, 1e-6, "masked loss, inactive anchors");
    assert_all_close(&to_vec(out.dist_an), &[2.0, 6.0], 1e-5, "masked d_an");

    // Margin 2: hinge = [0, 1, 4, 0] → 1.25.
    let out = TripletLoss::new(2.0, DistanceFunc::Euclidean)
        .forward(x, &labels, None)
        .unwrap();
    assert_close(scalar(out.loss), 1.25, 1e-6, "margin 2");
}

#[test]
fn triplet_hardest_positive_includes_self() {
    // Label 0 occurs once: its only positive is itself at sqrt(1e-12) = 1e-6,
    // so its term is 1e-6 − 0.2 + 0.5. Labels 1: d_ap = 2.8, d_an = 0.2 / 3 → terms 3.1, 0.3.
    let x = matrix::<B>(&[vec![0.0], vec![0.2], vec![3.0]]);
    let out = TripletLoss::default().forward(x, &[0, 1, 1], None).unwrap();
    assert_all_close(&to_vec(out.dist_ap), &[1e-6, 2.8, 2.8], 1e-5, "d_ap");
    assert_close(scalar(out.loss), (0.300001 + 3.1 + 0.3) / 3.0, 1e-5, "loss");
}

#[test]
fn triplet_matches_brute_force_with_unequal_label_counts() {
    let mut rng = StdRng::seed_from_u64(11);
    let x = random_rows(&mut rng, 9, 4);
    let labels = [0, 0, 0, 0, 1, 1, 2, 2, 2];
    let mask = [true, false, true, true, true, true, false, true, true];
    for func in [DistanceFunc::Euclidean, DistanceFunc::Cosine] {
        let loss_fn = TripletLoss::new(0.5, func);
        let xt = matrix::<AD>(&x).require_grad();
        let out = loss_fn.forward(xt.clone(), &labels, Some(&mask)).unwrap();
        let (bf_loss, bf_ap, bf_an) = bf_triplet(&x, &labels, Some(&mask), 0.5, func);
        assert!(
            bf_loss > 0.05,
            "the case must exercise the hinge ({bf_loss})"
        );
        assert_close(
            scalar(out.loss.clone()),
            bf_loss,
            1e-5,
            &format!("{func} loss"),
        );
        assert_all_close(&to_vec(out.dist_ap), &bf_ap, 1e-5, &format!("{func} d_ap"));
        assert_all_close(&to_vec(out.dist_an), &bf_an, 1e-5, &format!("{func} d_an"));
        let grads = out.loss.backward();
        let g = to_vec(xt.grad(&grads).unwrap());
        let fd = fd_grad(&x, |x| bf_triplet(x, &labels, Some(&mask), 0.5, func).0);
        assert_all_close(&g, &fd, 2e-4, &format!("{func} gradient"));
    }
}

#[test]
fn triplet_rejects_degenerate_batches() {
    let x = matrix::<B>(&[vec![0.0], vec![1.0]]);
    let err = TripletLoss::default()
        .forward(x.clone(), &[3, 3], None)
        .unwrap_err();
    assert!(
        err.to_string().contains("no anchor has a negative"),
        "{err}"
    );
    let err = TripletLoss::default()
        .forward(x.clone(), &[0], None)
        .unwrap_err();
    assert!(err.to_string().contains("labels"), "{err}");
    let err = TripletLoss::default()
        .forward(x, &[0, 1], Some(&[false, false]))
        .unwrap_err();
    assert!(err.to_string().contains("keeps none"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Center loss and CE

#[test]
fn center_loss_hand_values_and_gradients() {
    // ‖(1,0)−(0,0)‖² = 1, ‖(0,2)−(1,1)‖² = 2, ‖(1,1)−(0,0)‖² = 2 → (5 + 3·1e-12)/3.
    let x = matrix::<AD>(&[vec![1.0, 0.0], vec![0.0, 2.0], vec![1.0, 1.0]]).require_grad();
    let c = matrix::<AD>(&[vec![0.0, 0.0], vec![1.0, 1.0]]).require_grad();
    let loss = center_loss(x.clone(), &[0, 1, 0], c.clone()).unwrap();
    assert_close(scalar(loss.clone()), 5.0 / 3.0, 1e-6, "center loss");
    let grads = loss.backward();
    // ∂/∂x_i = 2(x_i − c_{y_i})/B; ∂/∂c_j = −Σ_{i: y_i = j} 2(x_i − c_j)/B.
    let gx = to_vec(x.grad(&grads).unwrap());
    assert_all_close(
        &gx,
        &[2.0 / 3.0, 0.0, -2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0],
        1e-5,
        "∂x",
    );
    let gc = to_vec(c.grad(&grads).unwrap());
    assert_all_close(
        &gc,
        &[-4.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0, -2.0 / 3.0],
        1e-5,
        "∂c",
    );
}

#[test]
fn center_loss_reproduces_the_clamp_quirk() {
    // A feature exactly on its center: the on-label entry (0) and the 3 masked off-label zeros
    // are each clamped to 1e-12, so the loss is 4e-12 rather than 0.
    let x = matrix::<B>(&[vec![1.0, 0.0]]);
    let c = matrix::<B>(&[
        vec![1.0, 0.0],
        vec![5.0, 5.0],
        vec![-1.0, 2.0],
        vec![0.0, 3.0],
    ]);
    let loss = scalar(center_loss(x, &[0], c).unwrap());
    assert!((loss - 4e-12).abs() < 1e-15, "{loss:e}");
}

#[test]
fn center_loss_rejects_bad_inputs() {
    let x = matrix::<B>(&[vec![1.0, 0.0]]);
    let c = matrix::<B>(&[vec![1.0, 0.0]]);
    let err = center_loss(x.clone(), &[1], c.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 1 at row 0"), "{err}");
    let c3 = matrix::<B>(&[vec![1.0, 0.0, 0.0]]);
    assert!(center_loss(x, &[0], c3).is_err());
}

#[test]
fn cross_entropy_label_smoothing_matches_hand_computation() {
    let logits: [Vec<f64>; 3] = [
        vec![1.0, 2.0, 3.0],
        vec![0.0, 0.0, 0.0],
        vec![-1.0, 0.5, 2.0],
    ];
    let labels = [2usize, 0, 1];
    // Independent formula: loss_b = −(1−ε)·logp[y] − (ε/C)·Σ_c logp[c].
    let eps = 0.1;
    let expected: f64 = logits
        .iter()
        .zip(&labels)
        .map(|(z, &y)| {
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            let logp: Vec<f64> = z.iter().map(|v| v - lse).collect();
            -(1.0 - eps) * logp[y] - eps / 3.0 * logp.iter().sum::<f64>()
        })
        .sum::<f64>()
        / 3.0;
    let got = scalar(cross_entropy_label_smooth(matrix::<B>(&logits), &labels, 0.1).unwrap());
    assert_close(got, expected, 1e-6, "CE-LS");
    // First two rows by hand: 0.50760596 and ln 3.
    let got2 =
        scalar(cross_entropy_label_smooth(matrix::<B>(&logits[..2]), &labels[..2], 0.1).unwrap());
    assert_close(
        got2,
        (0.507_605_96 + 3f64.ln()) / 2.0,
        1e-6,
        "CE-LS by hand",
    );

    let err = cross_entropy_label_smooth(matrix::<B>(&logits), &[0, 3, 1], 0.1).unwrap_err();
    assert!(err.to_string().contains("label 3 at row 1"), "{err}");
    assert!(cross_entropy_label_smooth(matrix::<B>(&logits), &[0, 1], 0.1).is_err());
}

// ---------------------------------------------------------------------------------------------
// Centroid triplet loss

/// P = 3, K = 4; class 1 (rows 4..8) carries two mocks at instances 2 and 3.
fn ctl_case(seed: u64) -> (Vec<Vec<f64>>, Vec<usize>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = random_rows(&mut rng, 12, 3);
    let labels = vec![7, 7, 7, 7, 2, 2, 2, 2, 9, 9, 9, 9];
    let mut is_real = vec![true; 12];
    is_real[6] = false;
    is_real[7] = false;
    (x, labels, is_real)
}

#[test]
fn ctl_round_membership_with_mocks() {
    let (_, labels, is_real) = ctl_case(1);
    let rounds = ctl_rounds(&labels, &is_real, 4).unwrap();
    assert_eq!(rounds.len(), 4);
    // Rounds 0–1: all three classes; class 1's centroid has a single member.
    assert_eq!(rounds[0].classes, vec![0, 1, 2]);
    assert_eq!(rounds[0].queries, vec![0, 4, 8]);
    assert_eq!(
        rounds[0].centroid_members,
        vec![vec![1, 2, 3], vec![5], vec![9, 10, 11]]
    );
    assert_eq!(rounds[1].queries, vec![1, 5, 9]);
    assert_eq!(
        rounds[1].centroid_members,
        vec![vec![0, 2, 3], vec![4], vec![8, 10, 11]]
    );
    // Rounds 2–3: class 1 has neither query nor centroid.
    assert_eq!(rounds[2].classes, vec![0, 2]);
    assert_eq!(rounds[2].queries, vec![2, 10]);
    assert_eq!(
        rounds[2].centroid_members,
        vec![vec![0, 1, 3], vec![8, 9, 11]]
    );
    assert_eq!(rounds[3].queries, vec![3, 11]);
    assert_eq!(
        rounds[3].centroid_members,
        vec![vec![0, 1, 2], vec![8, 9, 10]]
    );
    assert!(rounds.iter().all(|r| !r.skipped));
}

#[test]
fn ctl_matches_brute_force_loss_diagnostics_and_gradient() {
    let (x, labels, is_real) = ctl_case(5);
    for func in [DistanceFunc::Euclidean, DistanceFunc::Cosine] {
        let ctl = CentroidTripletLoss {
            margin: 0.5,
            distance: func,
            num_instances: 4,
        };
        let xt = matrix::<AD>(&x).require_grad();
        let out = ctl.forward(xt.clone(), &labels, &is_real).unwrap();
        let bf = bf_ctl(&x, &labels, &is_real, 4, 0.5, func);
        assert_eq!(bf.rounds_used, 4);
        assert!(
            bf.loss > 0.05,
            "the case must exercise the hinge ({})",
            bf.loss
        );
        assert_close(
            scalar(out.loss.clone()),
            bf.loss,
            1e-5,
            &format!("{func} CTL"),
        );
        assert_close(scalar(out.dist_ap_mean), bf.ap_mean, 1e-5, "CTL d_ap mean");
        assert_close(scalar(out.dist_an_mean), bf.an_mean, 1e-5, "CTL d_an mean");
        assert_close(
            scalar(out.l2_mean_centroid),
            bf.norm_mean,
            1e-5,
            "l2_mean_centroid",
        );

        let grads = out.loss.backward();
        let g = to_vec(xt.grad(&grads).unwrap());
        let fd = fd_grad(&x, |x| bf_ctl(x, &labels, &is_real, 4, 0.5, func).loss);
        assert_all_close(&g, &fd, 2e-4, &format!("{func} CTL gradient"));
        // Mock rows take no part in the CTL.
        assert!(
            g[6 * 3..8 * 3].iter().all(|&v| v == 0.0),
            "{:?}",
            &g[18..24]
        );
        // Gradients flow through the centroids: row 1 is never a query in round 0 but is a
        // centroid member there; some entries of every real row must be non-zero.
        for row in (0..12).filter(|&r| is_real[r]) {
            assert!(
                g[row * 3..row * 3 + 3].iter().any(|&v| v != 0.0),
                "row {row}"
            );
        }
    }
}

#[test]
fn ctl_skips_rounds_with_at_most_one_class() {
    // P = 2, K = 4, class 1's instances 2 and 3 are mocks: rounds 2 and 3 keep only class 0.
    let mut rng = StdRng::seed_from_u64(3);
    let x = random_rows(&mut rng, 8, 3);
    let labels = vec![0, 0, 0, 0, 1, 1, 1, 1];
    let is_real = vec![true, true, true, true, true, true, false, false];
    let rounds = ctl_rounds(&labels, &is_real, 4).unwrap();
    let skipped: Vec<bool> = rounds.iter().map(|r| r.skipped).collect();
    assert_eq!(skipped, vec![false, false, true, true]);
    assert_eq!(rounds[2].classes, vec![0]);

    let out = CentroidTripletLoss::default()
        .forward(matrix::<B>(&x), &labels, &is_real)
        .unwrap();
    let bf = bf_ctl(&x, &labels, &is_real, 4, 0.5, DistanceFunc::Euclidean);
    assert_eq!(bf.rounds_used, 2);
    assert_close(
        scalar(out.loss),
        bf.loss,
        1e-5,
        "CTL over the two valid rounds",
    );

    // A single class: every round is skipped, the loss is 0 and the diagnostics NaN.
    let out = CentroidTripletLoss::default()
        .forward(matrix::<B>(&x[..4]), &labels[..4], &is_real[..4])
        .unwrap();
    assert_eq!(scalar(out.loss), 0.0);
    assert!(scalar(out.dist_ap_mean).is_nan());
    assert!(out.rounds.iter().all(|r| r.skipped));
}

#[test]
fn ctl_rejects_batches_that_are_not_pk_blocks() {
    let x = matrix::<B>(&random_rows(&mut StdRng::seed_from_u64(0), 8, 2));
    let real = vec![true; 8];
    let ctl = CentroidTripletLoss::default();
    let err = ctl
        .forward(x.clone(), &[0, 0, 0, 1, 1, 1, 1, 1], &real)
        .unwrap_err();
    assert!(err.to_string().contains("block 0"), "{err}");
    let err = ctl
        .forward(x.clone(), &[4, 4, 4, 4, 4, 4, 4, 4], &real)
        .unwrap_err();
    assert!(err.to_string().contains("distinct"), "{err}");
    let err = ctl
        .forward(x.clone(), &[0, 0, 0, 0, 1, 1], &real[..6])
        .unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
    let x6 = matrix::<B>(&random_rows(&mut StdRng::seed_from_u64(0), 6, 2));
    let err = ctl
        .forward(x6, &[0, 0, 0, 0, 1, 1], &real[..6])
        .unwrap_err();
    assert!(err.to_string().contains("whole number of blocks"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Objectives

#[test]
fn ctl_objective_uses_real_rows_for_center_and_id() {
    let (x, labels, is_real) = ctl_case(9);
    let centers = random_rows(&mut StdRng::seed_from_u64(2), 10, 3);
    let w = random_rows(&mut StdRng::seed_from_u64(4), 10, 3);
    let cfg = LossConfig::default();
    let rows_seen = Cell::new(0usize);
    let terms = ctl_model_loss(
        &cfg,
        LossInputs {
            features: matrix::<B>(&x),
            labels: &labels,
            is_real: &is_real,
            centers: matrix::<B>(&centers),
        },
        |f| {
            rows_seen.set(f.dims()[0]);
            f.matmul(matrix::<B>(&w).transpose())
        },
    )
    .unwrap();
    assert_eq!(rows_seen.get(), 10, "classify sees the 10 real rows only");

    let real: Vec<usize> = (0..12).filter(|&i| is_real[i]).collect();
    let xr: Vec<Vec<f64>> = real.iter().map(|&i| x[i].clone()).collect();
    let yr: Vec<usize> = real.iter().map(|&i| labels[i]).collect();
    let center = scalar(center_loss(matrix::<B>(&xr), &yr, matrix::<B>(&centers)).unwrap());
    assert_close(
        scalar(terms.center.clone()),
        5e-4 * center,
        1e-6,
        "center over real rows",
    );
    let logits: Vec<Vec<f64>> = xr
        .iter()
        .map(|r| w.iter().map(|wc| dot(r, wc)).collect())
        .collect();
    let id = scalar(cross_entropy_label_smooth(matrix::<B>(&logits), &yr, 0.1).unwrap());
    assert_close(scalar(terms.id.clone()), id, 1e-5, "ID over real rows");
    let (tri, _, _) = bf_triplet(&x, &labels, Some(&is_real), 0.5, DistanceFunc::Euclidean);
    assert_close(scalar(terms.triplet.clone()), tri, 1e-5, "query triplet");
    let bf = bf_ctl(&x, &labels, &is_real, 4, 0.5, DistanceFunc::Euclidean);
    let ctl = scalar(terms.centroid_triplet.clone().unwrap());
    assert_close(ctl, bf.loss, 1e-5, "CTL term");
    assert_close(
        scalar(terms.total),
        bf.loss + 5e-4 * center + id + tri,
        1e-5,
        "total",
    );
    assert_eq!(terms.ctl.unwrap().rounds.len(), 4);
}

#[derive(Deserialize)]
struct Fixture {
    k: usize,
    labels: Vec<usize>,
    is_real: Vec<bool>,
    features: Vec<Vec<f64>>,
    centers: Vec<Vec<f64>>,
    classifier: Vec<Vec<f64>>,
    euclidean: FixtureRun,
    cosine: FixtureRun,
}

#[derive(Deserialize)]
struct FixtureRun {
    ctl_model: FixtureCtl,
    base_model: FixtureBase,
}

#[derive(Deserialize)]
struct FixtureCtl {
    triplet: f64,
    dist_ap: Vec<f64>,
    dist_an: Vec<f64>,
    center: f64,
    id: f64,
    centroid_triplet: f64,
    ctl_dist_ap_mean: f64,
    ctl_dist_an_mean: f64,
    l2_mean_centroid: f64,
    total: f64,
    grad_features: Vec<Vec<f64>>,
    grad_centers: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct FixtureBase {
    triplet: f64,
    center: f64,
    id: f64,
    total: f64,
    grad_features: Vec<Vec<f64>>,
    grad_centers: Vec<Vec<f64>>,
}

#[test]
fn objectives_match_pytorch_reference_reimplementation() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/losses/ctl_batch.json"
    );
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let classify = |f: Tensor<AD, 2>| f.matmul(matrix::<AD>(&fx.classifier).transpose());
    let flat = |m: &[Vec<f64>]| m.iter().flatten().copied().collect::<Vec<f64>>();
    for (func, run) in [
        (DistanceFunc::Euclidean, &fx.euclidean),
        (DistanceFunc::Cosine, &fx.cosine),
    ] {
        let cfg = LossConfig {
            distance: func,
            num_instances: fx.k,
            ..LossConfig::default()
        };
        // CTL model.
        let x = matrix::<AD>(&fx.features).require_grad();
        let c = matrix::<AD>(&fx.centers).require_grad();
        let inputs = LossInputs {
            features: x.clone(),
            labels: &fx.labels,
            is_real: &fx.is_real,
            centers: c.clone(),
        };
        let t = ctl_model_loss(&cfg, inputs, classify).unwrap();
        let e = &run.ctl_model;
        let tag = |s: &str| format!("{func} CTL model: {s}");
        assert_close(scalar(t.triplet.clone()), e.triplet, 1e-5, &tag("triplet"));
        assert_close(scalar(t.center.clone()), e.center, 1e-5, &tag("center"));
        assert_close(scalar(t.id.clone()), e.id, 1e-5, &tag("id"));
        let ctl = t.centroid_triplet.clone().unwrap();
        assert_close(scalar(ctl), e.centroid_triplet, 1e-5, &tag("CTL"));
        let diag = t.ctl.clone().unwrap();
        assert_close(
            scalar(diag.dist_ap),
            e.ctl_dist_ap_mean,
            1e-5,
            &tag("CTL d_ap"),
        );
        assert_close(
            scalar(diag.dist_an),
            e.ctl_dist_an_mean,
            1e-5,
            &tag("CTL d_an"),
        );
        assert_close(
            scalar(diag.l2_mean_centroid),
            e.l2_mean_centroid,
            1e-5,
            &tag("l2"),
        );
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert_close(
            scalar(t.dist_ap.clone()),
            mean(&e.dist_ap),
            1e-5,
            &tag("d_ap"),
        );
        assert_close(
            scalar(t.dist_an.clone()),
            mean(&e.dist_an),
            1e-5,
            &tag("d_an"),
        );
        assert_close(scalar(t.total.clone()), e.total, 1e-5, &tag("total"));
        let grads = t.total.backward();
        let gx = to_vec(x.grad(&grads).unwrap());
        assert_all_close(&gx, &flat(&e.grad_features), 1e-4, &tag("∂features"));
        let gc = to_vec(c.grad(&grads).unwrap());
        // The entries are ~1e-5..1e-3: relative to each entry (f32 has ~1e-7), and an
        // absolute floor far below the smallest non-zero one for the exact zeros.
        assert_all_close_rel(&gc, &flat(&e.grad_centers), 1e-4, 1e-10, &tag("∂centers"));

        // Base model on the same batch.
        let x = matrix::<AD>(&fx.features).require_grad();
        let c = matrix::<AD>(&fx.centers).require_grad();
        let inputs = LossInputs {
            features: x.clone(),
            labels: &fx.labels,
            is_real: &fx.is_real,
            centers: c.clone(),
        };
        let t = base_model_loss(&cfg, inputs, classify).unwrap();
        let e = &run.base_model;
        let tag = |s: &str| format!("{func} base model: {s}");
        assert!(t.centroid_triplet.is_none() && t.ctl.is_none());
        assert_close(scalar(t.triplet.clone()), e.triplet, 1e-5, &tag("triplet"));
        assert_close(scalar(t.center.clone()), e.center, 1e-5, &tag("center"));
        assert_close(scalar(t.id.clone()), e.id, 1e-5, &tag("id"));
        assert_close(scalar(t.total.clone()), e.total, 1e-5, &tag("total"));
        let grads = t.total.backward();
        let gx = to_vec(x.grad(&grads).unwrap());
        assert_all_close(&gx, &flat(&e.grad_features), 1e-4, &tag("∂features"));
        let gc = to_vec(c.grad(&grads).unwrap());
        // The entries are ~1e-5..1e-3: relative to each entry (f32 has ~1e-7), and an
        // absolute floor far below the smallest non-zero one for the exact zeros.
        assert_all_close_rel(&gc, &flat(&e.grad_centers), 1e-4, 1e-10, &tag("∂centers"));
    }
}
