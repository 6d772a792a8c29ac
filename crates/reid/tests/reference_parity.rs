//! `reid::loss` and the CTL training step against fixtures written by the reference's **own**
//! code (`tools/parity/reid_reference_fixtures.py` imports `losses/triplet_loss.py`,
//! `losses/center_loss.py` and runs `CTLModel.training_step` of `train_ctl_model.py` from
//! mikwieczorek/centroids-reid at commit a1825b7; see `tools/parity/README.md`).
//!
//! Expected values are the reference's float64 results; every number is compared within a
//! relative tolerance of 1e-4: scalars as `|a − b| ≤ 1e-4 · max(1, |b|)` (loss values) and
//! arrays relative to their largest entry, `|a_i − b_i| ≤ 1e-4 · max_j |b_j|` (gradients are
//! often far below 1, where an absolute 1e-4 would accept anything).

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use kiln::backend::{Autodiff, Flex};
use kiln::optim::{LrControl, Optimization};
use reid::ReidConfig;
use reid::ReidModel;
use reid::loss::{
    CentroidTripletLoss, DistanceFunc, LABEL_SMOOTHING, LossInputs, TripletLoss, center_loss,
    cosine_dist, cross_entropy_label_smooth, ctl_model_loss, euclidean_dist,
};
use reid::model::{Arch, ResNetConfig};
use reid::train::{loss_config, optimization};
use serde::Deserialize;

type AD = Autodiff<Flex>;

const RTOL: f64 = 1e-4;
const COMMIT: &str = "a1825b7a92b2a8d5e223708c7c43ab58a46efbcf";

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/reference/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Deserialize)]
struct Reference {
    repo: String,
    commit: String,
}

fn check_reference(r: &Reference) {
    assert_eq!(r.repo, "mikwieczorek/centroids-reid");
    assert_eq!(
        r.commit, COMMIT,
        "fixtures made at another reference commit"
    );
}

// ---------------------------------------------------------------------------------------------
// Tensor helpers

fn matrix(rows: &[Vec<f64>]) -> Tensor<AD, 2> {
    let cols = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), cols]),
        &Default::default(),
    )
}

fn vector(values: &[f64]) -> Tensor<AD, 1> {
    let flat: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [values.len()]), &Default::default())
}

fn to_vec<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
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

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

fn transpose(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    (0..rows[0].len())
        .map(|j| rows.iter().map(|r| r[j]).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparisons

/// `|a − b| ≤ 1e-4 · max(1, |b|)`.
fn assert_scalar(actual: f64, expected: f64, what: &str) {
    let err = (actual - expected).abs();
    assert!(
        err <= RTOL * expected.abs().max(1.0),
        "{what}: got {actual}, reference {expected} (|err| = {err:e})"
    );
}

/// `|a − b| ≤ 1e-4 · |b|` (plus 1e-30 for exact zeros), for scalars far below 1.
fn assert_scalar_rel(actual: f64, expected: f64, what: &str) {
    let err = (actual - expected).abs();
    assert!(
        err <= RTOL * expected.abs() + 1e-30,
        "{what}: got {actual}, reference {expected} (|err| = {err:e})"
    );
}

/// Element-wise `|a_i − b_i| ≤ 1e-4 · max_j |b_j|` (relative to the array's scale).
fn assert_array(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    let tol = RTOL * scale + 1e-30;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        assert!(
            err <= tol,
            "{what}[{i}]: got {a}, reference {e} (|err| = {err:e}, tolerance {tol:e} = 1e-4 × max |ref|)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// losses.json: the loss modules of losses/triplet_loss.py and losses/center_loss.py

#[derive(Deserialize)]
struct Batch {
    features: Vec<Vec<f64>>,
    labels: Vec<usize>,
    is_real: Vec<bool>,
    num_instances: usize,
}

#[derive(Deserialize)]
struct TripletCase {
    distance: String,
    anchor_mask: bool,
    margin: f64,
    loss: f64,
    dist_ap: Vec<f64>,
    dist_an: Vec<f64>,
    grad_features: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct CenterCase {
    loss: f64,
    grad_features: Vec<Vec<f64>>,
    grad_centers: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct CrossEntropyCase {
    epsilon: f64,
    loss: f64,
    grad_logits: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct LossesFixture {
    schema: u32,
    reference: Reference,
    batch: Batch,
    centers: Vec<Vec<f64>>,
    logits: Vec<Vec<f64>>,
    euclidean_dist: Vec<Vec<f64>>,
    cosine_dist: Vec<Vec<f64>>,
    triplet: Vec<TripletCase>,
    center: CenterCase,
    cross_entropy: CrossEntropyCase,
    f32_max_abs_diff: std::collections::BTreeMap<String, f64>,
}

fn losses_fixture() -> LossesFixture {
    let fx: LossesFixture = fixture("losses.json");
    assert_eq!(fx.schema, 1);
    check_reference(&fx.reference);
    assert_eq!(fx.batch.labels.len(), fx.batch.num_instances * 3);
    fx
}

#[test]
fn pairwise_distances_match_reference() {
    let fx = losses_fixture();
    let x = matrix(&fx.batch.features);
    let n = fx.batch.labels.len();

    // The Euclidean distance between identical rows (the diagonal, and the two mocks, which
    // share one feature vector) is sqrt(clamp(cancellation noise, 1e-12)): 1e-6 in float64 but
    // up to ~1e-3 in float32 for PyTorch itself (recorded in the fixture). Between distinct rows
    // the usual tolerance applies; between identical rows, the port must stay within 4× PyTorch's
    // own float32 deviation.
    let got = to_vec(euclidean_dist(x.clone(), x.clone()));
    let expected = flat(&fx.euclidean_dist);
    let noise_tol = 4.0 * fx.f32_max_abs_diff["euclidean_dist_identical_rows"];
    let rows = &fx.batch.features;
    let mut identical_pairs = 0;
    for i in 0..n {
        for j in 0..n {
            let (a, e) = (got[i * n + j], expected[i * n + j]);
            if rows[i] == rows[j] {
                identical_pairs += 1;
                assert!(
                    (a - e).abs() <= noise_tol,
                    "euclidean_dist[{i},{j}] (identical rows): got {a}, reference {e} \
                     (tolerance {noise_tol:e})"
                );
            } else {
                assert_scalar(a, e, &format!("euclidean_dist[{i},{j}]"));
            }
        }
    }
    assert_eq!(
        identical_pairs,
        n + 2,
        "the diagonal and the two mock pairs"
    );
    let got = to_vec(cosine_dist(x.clone(), x));
    assert_array(&got, &flat(&fx.cosine_dist), "cosine_dist");
}

#[test]
fn batch_hard_triplet_matches_reference() {
    let fx = losses_fixture();
    assert_eq!(fx.triplet.len(), 3);
    for case in &fx.triplet {
        let tag = format!(
            "triplet ({}, anchor mask {})",
            case.distance, case.anchor_mask
        );
        let distance: DistanceFunc = case.distance.parse().unwrap();
        let loss_fn = TripletLoss::new(case.margin as f32, distance);
        let x = matrix(&fx.batch.features).require_grad();
        let mask = case.anchor_mask.then_some(fx.batch.is_real.as_slice());
        let out = loss_fn.forward(x.clone(), &fx.batch.labels, mask).unwrap();
        assert_scalar(scalar(out.loss.clone()), case.loss, &format!("{tag}: loss"));
        assert_array(
            &to_vec(out.dist_ap),
            &case.dist_ap,
            &format!("{tag}: dist_ap"),
        );
        assert_array(
            &to_vec(out.dist_an),
            &case.dist_an,
            &format!("{tag}: dist_an"),
        );
        let grads = out.loss.backward();
        assert_array(
            &to_vec(x.grad(&grads).unwrap()),
            &flat(&case.grad_features),
            &format!("{tag}: ∂features"),
        );
    }
}

#[test]
fn center_loss_matches_reference() {
    let fx = losses_fixture();
    let x = matrix(&fx.batch.features).require_grad();
    let c = matrix(&fx.centers).require_grad();
    let loss = center_loss(x.clone(), &fx.batch.labels, c.clone()).unwrap();
    assert_scalar(scalar(loss.clone()), fx.center.loss, "center loss");
    let grads = loss.backward();
    assert_array(
        &to_vec(x.grad(&grads).unwrap()),
        &flat(&fx.center.grad_features),
        "center loss ∂features",
    );
    assert_array(
        &to_vec(c.grad(&grads).unwrap()),
        &flat(&fx.center.grad_centers),
        "center loss ∂centers",
    );
}

#[test]
fn label_smoothed_cross_entropy_matches_reference() {
    let fx = losses_fixture();
    assert_eq!(fx.cross_entropy.epsilon as f32, LABEL_SMOOTHING);
    let z = matrix(&fx.logits).require_grad();
    let loss = cross_entropy_label_smooth(z.clone(), &fx.batch.labels, LABEL_SMOOTHING).unwrap();
    assert_scalar(scalar(loss.clone()), fx.cross_entropy.loss, "CE loss");
    let grads = loss.backward();
    assert_array(
        &to_vec(z.grad(&grads).unwrap()),
        &flat(&fx.cross_entropy.grad_logits),
        "CE ∂logits",
    );
}

// ---------------------------------------------------------------------------------------------
// ctl_step.json: CTLModel.training_step of train_ctl_model.py on fixed backbone features

#[derive(Deserialize)]
struct Hparams {
    margin: f64,
    distance_func: String,
    label_smoothing: f64,
    center_loss_weight: f64,
    center_lr: f64,
    base_lr: f64,
    use_warmup_lr: bool,
    warmup_epochs: usize,
    weight_decay: f64,
    optimizer: String,
    query_xent_weight: f64,
    query_contrastive_weight: f64,
    centroid_contrastive_weight: f64,
    num_instance: usize,
    num_classes: usize,
    epoch: usize,
    adam_lr_used: f64,
    bn_momentum: f64,
    bn_eps: f64,
}

#[derive(Deserialize)]
struct StepInputs {
    features: Vec<Vec<f64>>,
    labels: Vec<usize>,
    is_real: Vec<bool>,
    bn_weight: Vec<f64>,
    bn_bias: Vec<f64>,
    /// PyTorch layout `[num_classes, dim]`.
    fc_weight: Vec<Vec<f64>>,
    centers: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct StepLosses {
    query_xent: f64,
    query_triplet: f64,
    query_center: f64,
    centroid_triplet: f64,
    total: f64,
}

#[derive(Deserialize)]
struct StepLog {
    step_dist_ap: f64,
    step_dist_an: f64,
    l2_mean_centroid: f64,
}

#[derive(Deserialize)]
struct Round {
    labels: Vec<usize>,
}

#[derive(Deserialize)]
struct StepGrads {
    features: Vec<Vec<f64>>,
    bn_weight: Vec<f64>,
    bn_bias_has_grad: bool,
    fc_weight: Vec<Vec<f64>>,
    centers: Vec<Vec<f64>>,
    centers_scaled: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct AfterStep {
    bn_weight: Vec<f64>,
    fc_weight: Vec<Vec<f64>>,
    centers: Vec<Vec<f64>>,
    bn_running_mean: Vec<f64>,
    bn_running_var: Vec<f64>,
}

#[derive(Deserialize)]
struct StepCase {
    name: String,
    hparams: Hparams,
    inputs: StepInputs,
    losses: StepLosses,
    log: StepLog,
    rounds: Vec<Round>,
    grads: StepGrads,
    after_step: AfterStep,
}

#[derive(Deserialize)]
struct StepFixture {
    schema: u32,
    reference: Reference,
    cases: Vec<StepCase>,
}

fn step_fixture() -> StepFixture {
    let fx: StepFixture = fixture("ctl_step.json");
    assert_eq!(fx.schema, 1);
    check_reference(&fx.reference);
    let names: Vec<&str> = fx.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["mocks_euclidean", "all_real_cosine", "centroid_term_only"]
    );
    fx
}

/// The reid configuration of a fixture case (the reference's defaults with its overrides).
fn reid_config(hp: &Hparams) -> ReidConfig {
    let mut cfg = ReidConfig::default();
    let s = &mut cfg.solver;
    s.margin = hp.margin;
    s.distance_func = hp.distance_func.clone();
    s.center_loss_weight = hp.center_loss_weight;
    s.center_lr = hp.center_lr;
    s.base_lr = hp.base_lr;
    s.use_warmup_lr = hp.use_warmup_lr;
    s.warmup_epochs = hp.warmup_epochs;
    s.weight_decay = hp.weight_decay;
    s.optimizer_name = hp.optimizer.clone();
    s.query_xent_weight = hp.query_xent_weight;
    s.query_contrastive_weight = hp.query_contrastive_weight;
    s.centroid_contrastive_weight = hp.centroid_contrastive_weight;
    cfg.dataloader.num_instance = hp.num_instance;
    cfg
}

/// A ReidModel whose BNNeck, classifier and centres hold the fixture's parameters (the backbone,
/// a width-1 ResNet18 with 8-d features, is not used: the step starts from fixed features).
fn step_model(case: &StepCase) -> ReidModel<AD> {
    let dim = case.inputs.features[0].len();
    let backbone = ResNetConfig::new(Arch::ResNet18, 1).with_width(1);
    assert_eq!(backbone.feature_dim(), dim);
    let mut model =
        ReidModel::<AD>::new(&backbone, case.hparams.num_classes, &Default::default()).unwrap();
    assert_eq!(model.bn.momentum, case.hparams.bn_momentum);
    assert_eq!(model.bn.epsilon, case.hparams.bn_eps);
    // The BNNeck bias is frozen at zero in both.
    assert!(case.inputs.bn_bias.iter().all(|&b| b == 0.0));
    assert_eq!(to_vec(model.bn.bias.val()), case.inputs.bn_bias);
    model.bn.weight = Param::from_tensor(vector(&case.inputs.bn_weight));
    // Burn's Linear weight is [in, out]; PyTorch's is [out, in].
    model.fc_query.weight = Param::from_tensor(matrix(&transpose(&case.inputs.fc_weight)));
    model.center_loss.centers = Param::from_tensor(matrix(&case.inputs.centers));
    model
}

/// One CTL training step on the fixture's features: the objective of `ReidTask::training_step`
/// (`ctl_model_loss` with `model.classify(model.bnneck(·))`), the backward pass and the
/// reference's optimisation (`reid::train::optimization`: Adam + SGD on the centres).
fn run_step_case(case: &StepCase) {
    let tag = |what: &str| format!("{}: {what}", case.name);
    let hp = &case.hparams;
    assert_eq!(hp.label_smoothing as f32, LABEL_SMOOTHING);
    assert_eq!(hp.epoch, 0);
    let cfg = reid_config(hp);
    let loss_cfg = loss_config(&cfg).unwrap();
    let mut model = step_model(case);
    let before_bn = case.inputs.bn_weight.clone();
    let before_fc = flat(&transpose(&case.inputs.fc_weight));
    let before_centers = flat(&case.inputs.centers);

    let x = matrix(&case.inputs.features).require_grad();
    let inputs = LossInputs {
        features: x.clone(),
        labels: &case.inputs.labels,
        is_real: &case.inputs.is_real,
        centers: model.center_loss.centers.val(),
    };
    let terms = ctl_model_loss(&loss_cfg, inputs, |f| model.classify(model.bnneck(f))).unwrap();

    // Loss terms, as the reference logs them (each already weighted).
    let l = &case.losses;
    assert_scalar(scalar(terms.id.clone()), l.query_xent, &tag("query_xent"));
    assert_scalar(
        scalar(terms.triplet.clone()),
        l.query_triplet,
        &tag("query_triplet"),
    );
    assert_scalar_rel(
        scalar(terms.center.clone()),
        l.query_center,
        &tag("query_center"),
    );
    assert_scalar(
        scalar(terms.centroid_triplet.clone().unwrap()),
        l.centroid_triplet,
        &tag("centroid_triplet"),
    );
    assert_scalar(scalar(terms.total.clone()), l.total, &tag("total"));

    // CTL diagnostics and round membership (labels of queries then centroids per round).
    let diag = terms.ctl.as_ref().unwrap();
    assert_scalar(
        scalar(diag.dist_ap.clone()),
        case.log.step_dist_ap,
        &tag("step_dist_ap"),
    );
    assert_scalar(
        scalar(diag.dist_an.clone()),
        case.log.step_dist_an,
        &tag("step_dist_an"),
    );
    assert_scalar(
        scalar(diag.l2_mean_centroid.clone()),
        case.log.l2_mean_centroid,
        &tag("l2_mean_centroid"),
    );
    let k = hp.num_instance;
    let rounds: Vec<Vec<usize>> = diag
        .rounds
        .iter()
        .filter(|r| !r.skipped)
        .map(|r| {
            let ys: Vec<usize> = r
                .classes
                .iter()
                .map(|&c| case.inputs.labels[c * k])
                .collect();
            [ys.clone(), ys].concat()
        })
        .collect();
    let expected: Vec<Vec<usize>> = case.rounds.iter().map(|r| r.labels.clone()).collect();
    assert_eq!(rounds, expected, "{}", tag("CTL rounds (labels of X)"));

    // Gradients of the total.
    let grads = terms.total.backward();
    let g = &case.grads;
    assert_array(
        &to_vec(x.grad(&grads).unwrap()),
        &flat(&g.features),
        &tag("∂features"),
    );
    assert_array(
        &to_vec(model.bn.weight.val().grad(&grads).unwrap()),
        &g.bn_weight,
        &tag("∂bn.weight"),
    );
    assert_eq!(
        model.bn.bias.val().grad(&grads).is_some(),
        g.bn_bias_has_grad,
        "{}",
        tag("bn.bias gradient presence")
    );
    assert_array(
        &to_vec(model.fc_query.weight.val().grad(&grads).unwrap()),
        &flat(&transpose(&g.fc_weight)),
        &tag("∂fc_query.weight"),
    );
    let grad_centers = to_vec(model.center_loss.centers.val().grad(&grads).unwrap());
    assert_array(&grad_centers, &flat(&g.centers), &tag("∂centers"));
    let scaled: Vec<f64> = grad_centers
        .iter()
        .map(|v| v / hp.center_loss_weight)
        .collect();
    assert_array(&scaled, &flat(&g.centers_scaled), &tag("∂centers / w_cen"));

    // BNNeck running statistics after the training-mode forward on the real rows.
    let a = &case.after_step;
    assert_array(
        &to_vec(model.bn.running_mean.value_sync()),
        &a.bn_running_mean,
        &tag("bn.running_mean"),
    );
    assert_array(
        &to_vec(model.bn.running_var.value_sync()),
        &a.bn_running_var,
        &tag("bn.running_var"),
    );

    // One optimisation step: warmed-up Adam on BNNeck weight and classifier, SGD(CENTER_LR) on
    // the centres with their gradient divided by CENTER_LOSS_WEIGHT.
    let grads = GradientsParams::from_grads(grads, &model);
    let mut optim = optimization::<AD>(&cfg);
    Optimization::<AD, ReidModel<AD>>::on_epoch_start(&mut optim, hp.epoch);
    assert_scalar_rel(optim.lr(), hp.adam_lr_used, &tag("Adam learning rate"));
    model = optim.apply(model, grads).unwrap();

    let check_step = |after: Vec<f64>, before: &[f64], expected: &[f64], what: &str| {
        for (i, (&a, &e)) in after.iter().zip(expected).enumerate() {
            assert_scalar(a, e, &tag(&format!("{what}[{i}] after the step")));
        }
        let delta = |v: &[f64]| -> Vec<f64> { v.iter().zip(before).map(|(a, b)| a - b).collect() };
        assert_array(
            &delta(&after),
            &delta(expected),
            &tag(&format!("{what} update")),
        );
    };
    check_step(
        to_vec(model.bn.weight.val()),
        &before_bn,
        &a.bn_weight,
        "bn.weight",
    );
    check_step(
        to_vec(model.fc_query.weight.val()),
        &before_fc,
        &flat(&transpose(&a.fc_weight)),
        "fc_query.weight",
    );
    check_step(
        to_vec(model.center_loss.centers.val()),
        &before_centers,
        &flat(&a.centers),
        "centers",
    );
}

#[test]
fn ctl_training_step_matches_reference() {
    for case in &step_fixture().cases {
        run_step_case(case);
    }
}

/// The centroid triplet loss on its own: the value of every case, and its gradient from the
/// case whose other loss weights are zero (the centre term there carries weight 1e-12).
#[test]
fn centroid_triplet_loss_matches_reference() {
    let fx = step_fixture();
    for case in &fx.cases {
        let hp = &case.hparams;
        let ctl = CentroidTripletLoss {
            margin: hp.margin as f32,
            distance: hp.distance_func.parse().unwrap(),
            num_instances: hp.num_instance,
        };
        let x = matrix(&case.inputs.features).require_grad();
        let out = ctl
            .forward(x.clone(), &case.inputs.labels, &case.inputs.is_real)
            .unwrap();
        let weighted = scalar(out.loss.clone()) * hp.centroid_contrastive_weight;
        assert_scalar(
            weighted,
            case.losses.centroid_triplet,
            &format!("{}: centroid triplet loss", case.name),
        );
        assert_scalar(
            scalar(out.l2_mean_centroid),
            case.log.l2_mean_centroid,
            &format!("{}: l2_mean_centroid", case.name),
        );
        if case.name == "centroid_term_only" {
            assert_eq!(hp.query_xent_weight, 0.0);
            assert_eq!(hp.query_contrastive_weight, 0.0);
            assert!(hp.center_loss_weight <= 1e-12);
            let grads = out.loss.backward();
            assert_array(
                &to_vec(x.grad(&grads).unwrap()),
                &flat(&case.grads.features),
                "centroid triplet loss ∂features",
            );
        }
    }
}
