//! Re-ranking and query expansion (`reid::eval::rerank`): parity with torchreid's published
//! `re_ranking` on the fixtures of `tools/parity/reid_rerank_fixtures.py`, average query
//! expansion by hand, and both inside evaluation with and without centroids.

use reid::eval::{
    AqeParams, EmbeddingSet, EvalLabels, EvalReport, FeatureMatrix, GalleryCamids, RerankParams,
    RetrievalOptions, average_query_expansion, distance_matrix, eval_func, evaluate, re_ranking,
};
use reid::loss::DistanceFunc;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    num_query: usize,
    num_gallery: usize,
    k1: usize,
    k2: usize,
    lambda: f32,
    q_g: Vec<f32>,
    q_q: Vec<f32>,
    g_g: Vec<f32>,
    expected: Vec<f64>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rerank/rerank.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn re_ranking_matches_torchreid_within_1e_5() {
    let fixture = fixture();
    assert_eq!(fixture.cases.len(), 5);
    for case in &fixture.cases {
        let params = RerankParams {
            k1: case.k1,
            k2: case.k2,
            lambda: case.lambda,
        };
        let got = re_ranking(
            &case.q_g,
            &case.q_q,
            &case.g_g,
            case.num_query,
            case.num_gallery,
            &params,
        )
        .unwrap();
        assert_eq!(got.len(), case.expected.len(), "{}", case.name);
        let worst = got
            .iter()
            .zip(&case.expected)
            .map(|(&g, &e)| (f64::from(g) - e).abs())
            .fold(0f64, f64::max);
        assert!(worst <= 1e-5, "{}: max |Δ| = {worst:e}", case.name);
        // Not vacuous: re-ranking changed the distances (except with lambda 1, where the
        // result is the row-scaled squared original).
        let changed = got
            .iter()
            .zip(&case.q_g)
            .any(|(&r, &o)| (r - o).abs() > 1e-3);
        assert!(changed, "{}", case.name);
    }
}

#[test]
fn re_ranking_rejects_bad_parameters_and_shapes() {
    let err = re_ranking(
        &[0.0; 2],
        &[0.0; 1],
        &[0.0; 4],
        1,
        2,
        &RerankParams {
            k1: 0,
            ..RerankParams::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("TEST.RERANK_K1"), "{err}");
    let err = re_ranking(
        &[0.0; 3],
        &[0.0; 1],
        &[0.0; 4],
        1,
        2,
        &RerankParams::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("distance matrices"), "{err}");
}

#[test]
fn average_query_expansion_by_hand() {
    // Three 2-d rows: a = (1, 0), b = (0.6, 0.8), c = (0, 2) (query a; gallery b, c).
    let q = FeatureMatrix::new(vec![1.0, 0.0], 2).unwrap();
    let g = FeatureMatrix::new(vec![0.6, 0.8, 0.0, 2.0], 2).unwrap();
    let (eq, eg) = average_query_expansion(&q, &g, &AqeParams { k: 2, alpha: 3.0 }).unwrap();
    // a's two nearest by cosine: a (1) and b (0.6): (a·1 + b·0.216) / 2.
    let want_a = [(1.0 + 0.6 * 0.216) / 2.0, (0.8 * 0.216) / 2.0];
    // c's: c (1) and b (0.8): (c + b·0.512) / 2.
    let want_c = [(0.6 * 0.512) / 2.0, (2.0 + 0.8 * 0.512) / 2.0];
    for (got, want) in [(eq.row(0), want_a), (eg.row(1), want_c)] {
        for (x, y) in got.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
    // k = 1 keeps every row as it is.
    let (eq, eg) = average_query_expansion(&q, &g, &AqeParams { k: 1, alpha: 3.0 }).unwrap();
    assert_eq!(eq, q);
    assert_eq!(eg, g);
}

/// Four identities in 6-d, two query and four gallery images each, cameras 0 / 1.
fn toy() -> (
    FeatureMatrix,
    FeatureMatrix,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
) {
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..6).map(|_| 2.0 * next()).collect())
        .collect();
    let mut sample = |pid: usize| -> Vec<f32> { centres[pid].iter().map(|c| c + next()).collect() };
    let (mut q, mut g) = (Vec::new(), Vec::new());
    let (mut qp, mut qc, mut gp, mut gc) = (vec![], vec![], vec![], vec![]);
    for pid in 0..4 {
        for _ in 0..2 {
            q.push(sample(pid));
            qp.push(pid as i64);
            qc.push(0);
        }
        for _ in 0..4 {
            g.push(sample(pid));
            gp.push(pid as i64);
            gc.push(1);
        }
    }
    (
        FeatureMatrix::from_rows(&q).unwrap(),
        FeatureMatrix::from_rows(&g).unwrap(),
        qp,
        qc,
        gp,
        gc,
    )
}

#[test]
fn evaluation_with_re_ranking_is_eval_func_on_the_re_ranked_matrix() {
    let (q, g, qp, qc, gp, gc) = toy();
    let labels = EvalLabels {
        q_pids: &qp,
        q_camids: &qc,
        g_pids: &gp,
        g_camids: GalleryCamids::Single(&gc),
    };
    let params = RerankParams {
        k1: 4,
        k2: 2,
        lambda: 0.3,
    };
    for distance in [DistanceFunc::Euclidean, DistanceFunc::Cosine] {
        let base = RetrievalOptions {
            distance,
            ..RetrievalOptions::default()
        };
        let opts = RetrievalOptions {
            rerank: Some(params),
            ..base.clone()
        };
        let got = evaluate(&q, &g, &labels, &opts).unwrap();
        // By hand: the three matrices of the configured distance, re-ranked, then eval_func.
        let q_g = distance_matrix(&q, &g, &base).unwrap();
        let q_q = distance_matrix(&q, &q, &base).unwrap();
        let g_g = distance_matrix(&g, &g, &base).unwrap();
        let re = re_ranking(&q_g, &q_q, &g_g, q.rows(), g.rows(), &params).unwrap();
        let want = eval_func(&re, &labels, base.max_rank).unwrap();
        assert_eq!(got, want, "{distance}");
        let plain = evaluate(&q, &g, &labels, &base).unwrap();
        assert!(got.map > 0.5 && plain.map > 0.5);
    }
}

#[test]
fn re_ranking_and_expansion_compose_with_the_centroid_modes() {
    let (q, g, qp, qc, gp, gc) = toy();
    let query = EmbeddingSet {
        features: &q,
        pids: &qp,
        camids: &qc,
    };
    let gallery = EmbeddingSet {
        features: &g,
        pids: &gp,
        camids: &gc,
    };
    let plain = EvalReport::compute(query, gallery, &RetrievalOptions::default(), false).unwrap();
    let opts = RetrievalOptions {
        rerank: Some(RerankParams {
            k1: 3,
            k2: 2,
            lambda: 0.3,
        }),
        aqe: Some(AqeParams::default()),
        ..RetrievalOptions::default()
    };
    let post = EvalReport::compute(query, gallery, &opts, false).unwrap();
    for (a, b) in [
        (&plain.no_centroids, &post.no_centroids),
        (&plain.centroids_a, &post.centroids_a),
        (&plain.centroids_b, &post.centroids_b),
    ] {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.num_gallery, b.num_gallery);
        assert!(b.map > 0.0 && b.map <= 1.0);
    }
    // The centroid galleries have 4 entries: re-ranking ran on them (k1 3 fits).
    assert_eq!(post.centroids_a.as_ref().unwrap().num_gallery, 4);
    // Re-ranking alone on mode A is eval_func on the re-ranked centroid distances.
    let rr = RetrievalOptions {
        aqe: None,
        ..opts.clone()
    };
    let got =
        reid::eval::evaluate_centroids(query, gallery, reid::eval::CentroidMode::PerIdentity, &rr)
            .unwrap();
    let centroids = reid::eval::centroids_per_identity(gallery).unwrap();
    let base = RetrievalOptions::default();
    let c = &centroids.features;
    let re = re_ranking(
        &distance_matrix(&q, c, &base).unwrap(),
        &distance_matrix(&q, &q, &base).unwrap(),
        &distance_matrix(c, c, &base).unwrap(),
        q.rows(),
        c.rows(),
        &rr.rerank.unwrap(),
    )
    .unwrap();
    let (q0, c1) = (vec![0i64; q.rows()], vec![1i64; c.rows()]);
    let labels = EvalLabels {
        q_pids: &qp,
        q_camids: &q0,
        g_pids: &centroids.pids,
        g_camids: GalleryCamids::Single(&c1),
    };
    assert_eq!(got, eval_func(&re, &labels, base.max_rank).unwrap());
}
