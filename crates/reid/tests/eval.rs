//! Evaluation (`reid::eval`) against values hand-computed with the reference's `eval_func` and
//! centroid rules, and an independent f64
//! pipeline; chunking and normalisation invariances; the report.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reid::eval::{
    CentroidMode, EmbeddingSet, EvalLabels, EvalMetrics, EvalReport, FeatureMatrix, GalleryCamids,
    RetrievalOptions, argsort, build_centroids, distance_matrix, eval_func, eval_rankings,
    evaluate, evaluate_centroids, query_outcome_from_distances, query_outcomes,
};
use reid::loss::DistanceFunc;

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: got {actual}, expected {expected}"
    );
}

fn assert_metrics(m: &EvalMetrics, map: f64, cmc: &[f64], valid: usize) {
    assert_close(m.map, map, "mAP");
    assert_eq!(m.cmc.len(), cmc.len(), "CMC length: {:?}", m.cmc);
    for (r, (&a, &e)) in m.cmc.iter().zip(cmc).enumerate() {
        assert_close(a, e, &format!("CMC[{r}]"));
    }
    assert_eq!(m.num_valid_query, valid, "valid queries");
    let at = |k: usize| cmc[(k - 1).min(cmc.len() - 1)];
    assert_close(m.top1, at(1), "top1");
    assert_close(m.top5, at(5), "top5");
    assert_close(m.top10, at(10), "top10");
    assert_close(m.top20, at(20), "top20");
    assert_close(m.top50, at(50), "top50");
}

// ---------------------------------------------------------------------------------------------
// eval_func: the hand-made 3-query × 8-gallery case

const G_PIDS: [i64; 8] = [1, 2, 1, 3, 1, 2, 4, 2];
const G_CAMS: [i64; 8] = [0, 1, 1, 0, 2, 0, 1, 2];
const Q_PIDS: [i64; 3] = [1, 2, 4];
const Q_CAMS: [i64; 3] = [0, 1, 1];

#[rustfmt::skip]
const DISTMAT: [f32; 24] = [
    // q0 (pid 1, cam 0): g0 is same pid + same camera → removed; ties g1/g3 and g2/g6.
    0.1, 0.3, 0.5, 0.3, 0.9, 0.2, 0.5, 1.0,
    // q1 (pid 2, cam 1): g1 removed; g0, g2, g5 tie at 0.4.
    0.4, 0.0, 0.4, 0.6, 0.7, 0.4, 0.8, 0.1,
    // q2 (pid 4, cam 1): its only gallery image g6 shares its camera → skipped.
    0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.5,
];

fn hand_labels() -> EvalLabels<'static> {
    EvalLabels {
        q_pids: &Q_PIDS,
        q_camids: &Q_CAMS,
        g_pids: &G_PIDS,
        g_camids: GalleryCamids::Single(&G_CAMS),
    }
}

#[test]
fn eval_func_hand_case_removal_skip_and_ties() {
    // q0 ordering (stable): g0 g5 g1 g3 g2 g6 g4 g7; without g0: g5 g1 g3 [g2] g6 [g4] g7.
    //   matches at kept positions 4 and 6: AP = (1/4 + 2/6)/2 = 7/24, first match at 4.
    // q1 ordering: g1 g7 g0 g2 g5 g3 g4 g6; without g1: [g7] g0 g2 [g5] g3 g4 g6.
    //   matches at 1 and 4: AP = (1/1 + 2/4)/2 = 3/4, first match at 1.
    // q2: skipped. mAP = (7/24 + 3/4)/2 = 25/48; gallery of 8 → CMC of 8 entries.
    let labels = hand_labels();
    let cmc = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0];
    let m = eval_func(&DISTMAT, &labels, 50).unwrap();
    assert_metrics(&m, 25.0 / 48.0, &cmc, 2);
    assert_eq!((m.num_query, m.num_gallery), (3, 8));

    // The same through explicit (stable-argsort) rankings and the literal `eval_func` walk.
    let rankings: Vec<Vec<usize>> = DISTMAT.chunks(8).map(argsort).collect();
    assert_eq!(rankings[0], vec![0, 5, 1, 3, 2, 6, 4, 7]);
    assert_eq!(eval_rankings(&rankings, &labels, 50).unwrap(), m);

    let q0 = query_outcome_from_distances(&DISTMAT[..8], 0, &labels).unwrap();
    assert_eq!((q0.first_match_rank, q0.num_relevant), (4, 2));
    assert_close(q0.average_precision, 7.0 / 24.0, "AP q0");
    assert!(query_outcome_from_distances(&DISTMAT[16..], 2, &labels).is_none());

    // max_rank below the gallery size truncates the CMC.
    let m3 = eval_func(&DISTMAT, &labels, 3).unwrap();
    assert_eq!(m3.cmc, vec![0.5, 0.5, 0.5]);
    assert_close(m3.map, 25.0 / 48.0, "mAP is not limited by max_rank");
    assert_close(m3.top5, 1.0, "top-k is not limited by max_rank");

    // Ties decide positions: ordering g6 before g2 (the other tie order) moves q0's first
    // match to kept position 5: AP = (1/5 + 2/6)/2 = 4/15.
    let mut swapped = rankings.clone();
    swapped[0] = vec![0, 5, 1, 3, 6, 2, 4, 7];
    let m = eval_rankings(&swapped, &labels, 50).unwrap();
    assert_metrics(
        &m,
        (4.0 / 15.0 + 0.75) / 2.0,
        &[0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0],
        2,
    );
}

#[test]
fn eval_func_respects_camera_sets() {
    // Camera sets: entry g0 of pid 1 seen from {0, 2}; the query (pid 1, cam 2) must drop it.
    let g_pids = [1, 1, 5];
    let sets = vec![vec![0, 2], vec![1], vec![2]];
    let labels = EvalLabels {
        q_pids: &[1],
        q_camids: &[2],
        g_pids: &g_pids,
        g_camids: GalleryCamids::Sets(&sets),
    };
    // Without removal g0 would be first; after it: g2 (pid 5) then g1 → rank 2.
    let m = eval_func(&[0.0, 0.2, 0.1], &labels, 50).unwrap();
    assert_metrics(&m, 0.5, &[0.0, 1.0, 1.0], 1);
}

#[test]
fn eval_func_errors() {
    let labels = hand_labels();
    assert!(eval_func(&DISTMAT[..23], &labels, 50).is_err());
    let only_q2 = EvalLabels {
        q_pids: &Q_PIDS[2..],
        q_camids: &Q_CAMS[2..],
        ..labels
    };
    let err = eval_func(&DISTMAT[16..], &only_q2, 50)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none of the 1 queries"), "{err}");
    let bad = vec![vec![0, 1, 2, 3, 4, 5, 6, 6]; 3];
    let err = eval_rankings(&bad, &labels, 50).unwrap_err().to_string();
    assert!(err.contains("not a permutation"), "{err}");
    let short_cams = EvalLabels {
        g_camids: GalleryCamids::Single(&G_CAMS[..7]),
        ..labels
    };
    assert!(eval_func(&DISTMAT, &short_cams, 50).is_err());
}

// ---------------------------------------------------------------------------------------------
// Centroid modes on a tiny 1-D case (feat_norm off, squared Euclidean = (a − b)²)

struct Tiny {
    q: FeatureMatrix,
    g: FeatureMatrix,
    q_pids: Vec<i64>,
    q_cams: Vec<i64>,
    g_pids: Vec<i64>,
    g_cams: Vec<i64>,
}

/// Queries (pid, cam, x): (1,0,2.5) (1,1,0.5) (2,0,5) (3,0,15) (3,1,30).
/// Gallery: (1,0,0) (1,1,1) (1,1,3) (2,1,10) (2,0,12) (9,0,5) (3,2,20) (3,2,22).
/// Every identity has two cameras; pid 9 is gallery-only; pid 3's two query cameras give the
/// same camera set {2}.
fn tiny() -> Tiny {
    Tiny {
        q: FeatureMatrix::new(vec![2.5, 0.5, 5.0, 15.0, 30.0], 1).unwrap(),
        g: FeatureMatrix::new(vec![0.0, 1.0, 3.0, 10.0, 12.0, 5.0, 20.0, 22.0], 1).unwrap(),
        q_pids: vec![1, 1, 2, 3, 3],
        q_cams: vec![0, 1, 0, 0, 1],
        g_pids: vec![1, 1, 1, 2, 2, 9, 3, 3],
        g_cams: vec![0, 1, 1, 1, 0, 0, 2, 2],
    }
}

impl Tiny {
    fn query(&self) -> EmbeddingSet<'_> {
        EmbeddingSet {
            features: &self.q,
            pids: &self.q_pids,
            camids: &self.q_cams,
        }
    }
    fn gallery(&self) -> EmbeddingSet<'_> {
        EmbeddingSet {
            features: &self.g,
            pids: &self.g_pids,
            camids: &self.g_cams,
        }
    }
}

fn raw_opts() -> RetrievalOptions {
    RetrievalOptions {
        feat_norm: false,
        ..RetrievalOptions::default()
    }
}

#[test]
fn mode_b_corrected_centroids_by_hand() {
    let t = tiny();
    let c = build_centroids(
        t.query(),
        t.gallery(),
        CentroidMode::PerCamera { bug_compat: false },
    )
    .unwrap();
    // pid 1: camera 0 → images with camera ≠ 0 = g1, g2 (U = {1}); camera 1 → g0 (U = {0}).
    // pid 2: camera 0 → g3 (U = {1}). pid 3: cameras 0 and 1 both give g6, g7 (U = {2}) → one.
    // pid 9 has no query → no centroid.
    assert_eq!(c.pids, vec![1, 1, 2, 3]);
    assert_eq!(c.camid_sets, vec![vec![1], vec![0], vec![1], vec![2]]);
    assert_eq!(c.members, vec![vec![1, 2], vec![0], vec![3], vec![6, 7]]);
    assert_eq!(c.features.as_slice(), &[2.0, 0.0, 10.0, 21.0]);
    assert!(c.respect_camids);

    // Per query (removal of own-pid centroids whose U holds the query camera):
    //   q0 (1,c0) drops [0.0]; nearest is 2.0 → rank 1.     q1 (1,c1) drops 2.0; 0.0 → rank 1.
    //   q2 (2,c0) x=5: 2.0 (9), 0.0 (25), 10 (25, tie after index 1) → rank 3, AP 1/3.
    //   q3 (3,c0) x=15: 10 (25), 21 (36) → rank 2, AP 1/2.   q4 (3,c1) x=30: 21 → rank 1.
    let m = evaluate_centroids(
        t.query(),
        t.gallery(),
        CentroidMode::PerCamera { bug_compat: false },
        &raw_opts(),
    )
    .unwrap();
    assert_metrics(&m, (3.0 + 1.0 / 3.0 + 0.5) / 5.0, &[0.6, 0.8, 1.0, 1.0], 5);
    assert_eq!(m.num_gallery, 4);
}

#[test]
fn mode_b_bug_compat_reads_cameras_num_query_positions_earlier() {
    let t = tiny();
    let mode = CentroidMode::PerCamera { bug_compat: true };
    let c = build_centroids(t.query(), t.gallery(), mode).unwrap();
    // [query; gallery] cameras = [0 1 0 0 1 | 0 1 1 1 0 0 2 2]: gallery image j is given entry j,
    // i.e. g0..g7 → 0 1 0 0 1 0 1 1.
    // pid 1 (g0 0, g1 1, g2 0): camera 0 → g1 (U {1}); camera 1 → g0, g2 (U {0}).
    // pid 2 (g3 0, g4 1): camera 0 → g4 (U {1}).
    // pid 3 (g6 1, g7 1): camera 0 → g6, g7 (U {1}); camera 1 → nothing left → skipped.
    assert_eq!(c.pids, vec![1, 1, 2, 3]);
    assert_eq!(c.camid_sets, vec![vec![1], vec![0], vec![1], vec![1]]);
    assert_eq!(c.members, vec![vec![1], vec![0, 2], vec![4], vec![6, 7]]);
    assert_eq!(c.features.as_slice(), &[1.0, 1.5, 12.0, 21.0]);

    // q0 → 1.0 rank 1; q1 → 1.5 rank 1; q2 x=5: 1.5 (12.25), 1.0 (16), 12 (49) → rank 3;
    // q3 x=15: 12 (9), 21 (36) → rank 2; q4 (pid 3, camera 1): its only centroid has U {1}
    // → removed → the query is skipped.
    let m = evaluate_centroids(t.query(), t.gallery(), mode, &raw_opts()).unwrap();
    assert_metrics(&m, (2.0 + 1.0 / 3.0 + 0.5) / 4.0, &[0.5, 0.75, 1.0, 1.0], 4);
}

#[test]
fn mode_a_one_centroid_per_gallery_identity() {
    let t = tiny();
    let c = build_centroids(t.query(), t.gallery(), CentroidMode::PerIdentity).unwrap();
    assert_eq!(c.pids, vec![1, 2, 3, 9]);
    assert_eq!(
        c.members,
        vec![vec![0, 1, 2], vec![3, 4], vec![6, 7], vec![5]]
    );
    let f = c.features.as_slice();
    assert!(
        (f[0] - 4.0 / 3.0).abs() < 1e-6 && f[1..] == [11.0, 21.0, 5.0],
        "{f:?}"
    );
    assert!(!c.respect_camids);
    // No camera filtering; pid 9 stays as a distractor (it is what pushes q2 to rank 3).
    let m = evaluate_centroids(
        t.query(),
        t.gallery(),
        CentroidMode::PerIdentity,
        &raw_opts(),
    )
    .unwrap();
    assert_metrics(&m, (3.0 + 1.0 / 3.0 + 0.5) / 5.0, &[0.6, 0.8, 1.0, 1.0], 5);
}

#[test]
fn centroids_average_raw_embeddings_before_normalisation() {
    // pid 1 has images (10, 0) and (0, 1): its centroid is the raw mean (5, 0.5), normalised
    // only afterwards. pid 2 has one image (1, 0.3).
    let g = FeatureMatrix::new(vec![10.0, 0.0, 0.0, 1.0, 1.0, 0.3], 2).unwrap();
    let q = FeatureMatrix::new(vec![1.0, 0.1, 0.1, 1.0], 2).unwrap();
    let (gp, gc) = (vec![1, 1, 2], vec![1, 1, 1]);
    let (qp, qc) = (vec![1, 1], vec![0, 0]);
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
    let c = build_centroids(query, gallery, CentroidMode::PerIdentity).unwrap();
    assert_eq!(c.features.as_slice(), &[5.0, 0.5, 1.0, 0.3]);
    // q0 (1, 0.1) is parallel to (5, 0.5) → rank 1. q1 (0.1, 1): cos to (5, 0.5) ≈ 0.198 and
    // to (1, 0.3) ≈ 0.381 → rank 2. (Averaging normalised images instead would give the
    // direction (1, 1), cos ≈ 0.774, and rank 1.)
    let m = evaluate_centroids(
        query,
        gallery,
        CentroidMode::PerIdentity,
        &RetrievalOptions::default(),
    )
    .unwrap();
    assert_metrics(&m, 0.75, &[0.5, 1.0], 2);
}

// ---------------------------------------------------------------------------------------------
// Pipeline invariances against an independent f64 implementation

struct Random {
    q: FeatureMatrix,
    g: FeatureMatrix,
    q_pids: Vec<i64>,
    q_cams: Vec<i64>,
    g_pids: Vec<i64>,
    g_cams: Vec<i64>,
}

fn random_case(seed: u64, nq: usize, ng: usize, dim: usize, ids: i64) -> Random {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows =
        |n: usize| -> Vec<f32> { (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let q = FeatureMatrix::new(rows(nq), dim).unwrap();
    let g = FeatureMatrix::new(rows(ng), dim).unwrap();
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut labels =
        |n: usize, hi: i64| -> Vec<i64> { (0..n).map(|_| rng.random_range(0..hi)).collect() };
    Random {
        // Queries also draw two identities the gallery never has: those are skipped.
        q_pids: labels(nq, ids + 2),
        q_cams: labels(nq, 3),
        g_pids: labels(ng, ids),
        g_cams: labels(ng, 3),
        q,
        g,
    }
}

impl Random {
    fn labels(&self) -> EvalLabels<'_> {
        EvalLabels {
            q_pids: &self.q_pids,
            q_camids: &self.q_cams,
            g_pids: &self.g_pids,
            g_camids: GalleryCamids::Single(&self.g_cams),
        }
    }
}

/// f64 distances, straight from the definitions.
fn f64_distances(q: &FeatureMatrix, g: &FeatureMatrix, opts: &RetrievalOptions) -> Vec<Vec<f64>> {
    let prep = |m: &FeatureMatrix, norm: bool| -> Vec<Vec<f64>> {
        (0..m.rows())
            .map(|i| {
                let r: Vec<f64> = m.row(i).iter().map(|&v| f64::from(v)).collect();
                let n = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                if norm {
                    r.iter().map(|v| v / n).collect()
                } else {
                    r
                }
            })
            .collect()
    };
    let (qs, gs) = (prep(q, opts.feat_norm), prep(g, opts.feat_norm));
    qs.iter()
        .map(|a| {
            gs.iter()
                .map(|b| match opts.distance {
                    DistanceFunc::Euclidean => a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum(),
                    DistanceFunc::Cosine => {
                        let na = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                        let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                        let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb);
                        (1.0 - cos).abs().max(1e-12)
                    }
                })
                .collect()
        })
        .collect()
}

fn f64_rankings(d: &[Vec<f64>]) -> Vec<Vec<usize>> {
    d.iter()
        .map(|row| {
            let mut o: Vec<usize> = (0..row.len()).collect();
            o.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            o
        })
        .collect()
}

#[test]
fn chunked_evaluation_equals_unchunked_and_f64_reference() {
    let r = random_case(21, 37, 53, 8, 6);
    let labels = r.labels();
    for (feat_norm, distance) in [
        (true, DistanceFunc::Euclidean),
        (false, DistanceFunc::Euclidean),
        (true, DistanceFunc::Cosine),
    ] {
        let base = RetrievalOptions {
            feat_norm,
            distance,
            ..RetrievalOptions::default()
        };
        let full = distance_matrix(&r.q, &r.g, &base).unwrap();
        let expected_d = f64_distances(&r.q, &r.g, &base);
        for (a, e) in full.iter().zip(expected_d.iter().flatten()) {
            assert!(
                (f64::from(*a) - e).abs() < 1e-5 * (1.0 + e.abs()),
                "{a} vs {e}"
            );
        }
        let unchunked = eval_func(&full, &labels, 50).unwrap();
        let reference = eval_rankings(&f64_rankings(&expected_d), &labels, 50).unwrap();
        assert_eq!(
            unchunked, reference,
            "f32 pipeline vs f64 reference ({feat_norm}, {distance})"
        );
        assert!(unchunked.num_valid_query > 20 && unchunked.num_valid_query < 37);
        for chunk in [1, 5, 36, 37, 100, 0] {
            let opts = RetrievalOptions {
                query_chunk: chunk,
                ..base.clone()
            };
            let m = evaluate(&r.q, &r.g, &labels, &opts).unwrap();
            assert_eq!(m, unchunked, "query_chunk {chunk}");
        }
        // A tiny byte budget forces one-row blocks.
        let opts = RetrievalOptions {
            block_budget: 1,
            ..base.clone()
        };
        assert_eq!(opts.chunk_rows(53), 1);
        assert_eq!(evaluate(&r.q, &r.g, &labels, &opts).unwrap(), unchunked);
    }
}

#[test]
fn normalised_euclidean_and_cosine_rank_identically() {
    let r = random_case(5, 29, 41, 6, 5);
    let labels = r.labels();
    let opts = |feat_norm, distance| RetrievalOptions {
        feat_norm,
        distance,
        ..RetrievalOptions::default()
    };
    let euclid = query_outcomes(&r.q, &r.g, &labels, &opts(true, DistanceFunc::Euclidean)).unwrap();
    let cosine = query_outcomes(&r.q, &r.g, &labels, &opts(true, DistanceFunc::Cosine)).unwrap();
    let cosine_raw =
        query_outcomes(&r.q, &r.g, &labels, &opts(false, DistanceFunc::Cosine)).unwrap();
    assert_eq!(euclid, cosine);
    assert_eq!(cosine, cosine_raw);
    // Without normalisation the squared Euclidean ranking differs on this data.
    let raw = query_outcomes(&r.q, &r.g, &labels, &opts(false, DistanceFunc::Euclidean)).unwrap();
    assert_ne!(raw, euclid);

    // Rescaling rows does not change normalised results.
    let scale = |m: &FeatureMatrix| {
        let dim = m.dim();
        let v: Vec<f32> = m
            .as_slice()
            .chunks(dim)
            .enumerate()
            .flat_map(|(i, row)| row.iter().map(move |&x| x * (1.0 + i as f32 * 0.37)))
            .collect();
        FeatureMatrix::new(v, dim).unwrap()
    };
    let scaled = query_outcomes(
        &scale(&r.q),
        &scale(&r.g),
        &labels,
        &opts(true, DistanceFunc::Euclidean),
    )
    .unwrap();
    assert_eq!(scaled, euclid);
}

#[test]
fn squared_euclidean_distance_values() {
    let q = FeatureMatrix::new(vec![0.0, 0.0, 3.0, 4.0], 2).unwrap();
    let g = FeatureMatrix::new(vec![0.0, 0.0, 1.0, 0.0, 3.0, 4.0], 2).unwrap();
    let d = distance_matrix(&q, &g, &raw_opts()).unwrap();
    assert_eq!(d, vec![0.0, 1.0, 25.0, 25.0, 20.0, 0.0]);
    let m = FeatureMatrix::new(vec![3.0, 4.0, 0.0, 0.0], 2)
        .unwrap()
        .l2_normalized();
    assert_eq!(m.as_slice(), &[0.6, 0.8, 0.0, 0.0]);
    assert!(FeatureMatrix::new(vec![1.0, 2.0, 3.0], 2).is_err());
    let other = FeatureMatrix::new(vec![1.0, 2.0, 3.0], 3).unwrap();
    assert!(distance_matrix(&q, &other, &raw_opts()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Report

#[test]
fn report_side_by_side_json_and_table() {
    let t = tiny();
    let report = EvalReport::compute(t.query(), t.gallery(), &raw_opts(), true).unwrap();
    let b = report.centroids_b.as_ref().unwrap();
    assert_close(b.map, (2.0 + 1.0 / 3.0 + 0.5) / 4.0, "bug-compat B mAP");
    let a = report.centroids_a.as_ref().unwrap();
    assert_close(a.map, (3.0 + 1.0 / 3.0 + 0.5) / 5.0, "A mAP");
    let labels = EvalLabels {
        q_pids: &t.q_pids,
        q_camids: &t.q_cams,
        g_pids: &t.g_pids,
        g_camids: GalleryCamids::Single(&t.g_cams),
    };
    assert_eq!(
        report.no_centroids.as_ref().unwrap(),
        &evaluate(&t.q, &t.g, &labels, &raw_opts()).unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.json");
    report.write_json(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"mAP\""), "{text}");
    let back: EvalReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);

    let table = report.to_string();
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("no centroids") && lines[0].contains("centroids B (bug-compat)"));
    let map_line = lines.iter().find(|l| l.starts_with("mAP")).unwrap();
    assert!(
        map_line.contains(&format!("{:.2}", 100.0 * b.map)),
        "{map_line}"
    );
    assert!(lines.iter().any(|l| l.starts_with("Rank-50")));
    let valid = lines
        .iter()
        .find(|l| l.starts_with("valid queries"))
        .unwrap();
    assert!(valid.trim_end().ends_with('4'), "{valid}");
}

// ---------------------------------------------------------------------------------------------
// Benchmark (run by hand): Market-sized random evaluation.
//   cargo test -p reid --test eval -- --ignored --nocapture market_sized

#[test]
#[ignore = "benchmark: 3,368 × 15,913 × 2048, run by hand"]
fn market_sized_benchmark() {
    let (nq, ng, dim) = (3368, 15913, 2048);
    let r = random_case(2024, nq, ng, dim, 750);
    let opts = RetrievalOptions::default();
    let start = Instant::now();
    let m = evaluate(&r.q, &r.g, &r.labels(), &opts).unwrap();
    let elapsed = start.elapsed();
    let inputs = (nq + ng) * dim * 4;
    println!(
        "evaluate {nq} x {ng} x {dim}: {:.2} s on {} threads; mAP {:.4}, valid {}",
        elapsed.as_secs_f64(),
        rayon::current_num_threads(),
        m.map,
        m.num_valid_query
    );
    println!(
        "memory: inputs {:.0} MiB + normalised copies {:.0} MiB + distance blocks {:.0} MiB ({} rows each)",
        inputs as f64 / 1048576.0,
        inputs as f64 / 1048576.0,
        opts.peak_block_bytes(nq, ng) as f64 / 1048576.0,
        opts.chunk_rows(ng)
    );
}
