//! Retrieval at gallery scale (`reid::search`): exact search against brute force, the HNSW
//! index (round trip, recall, storages, additions, views), saved galleries and their errors.

use std::path::Path;

use reid::loss::DistanceFunc;
use reid::search::bench::SyntheticGallery;
use reid::search::index::{INDEX_FILE, SIDECAR_FILE};
use reid::search::{
    AnnIndex, ExactSearch, IndexParams, Match, Quantization, SavedGallery, SearchMetric,
    SearchMode, TopK, recall_at_k,
};
use reid::tools::npy;

const UNIT: SearchMetric = SearchMetric {
    normalize: true,
    distance: DistanceFunc::Euclidean,
};
const COSINE: SearchMetric = SearchMetric {
    normalize: false,
    distance: DistanceFunc::Cosine,
};
const RAW: SearchMetric = SearchMetric {
    normalize: false,
    distance: DistanceFunc::Euclidean,
};

fn clustered(rows: usize, queries: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    SyntheticGallery {
        dim,
        categories: 8,
        seed: 7,
        ..SyntheticGallery::default()
    }
    .generate(rows, queries)
}

/// Uniform noise in [-1, 1) with a varying scale per row (so norms differ).
fn noise(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows * dim)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            u * (1.0 + (i / dim % 5) as f32)
        })
        .collect()
}

fn brute(gallery: &[f32], q: &[f32], dim: usize, k: usize, metric: SearchMetric) -> Vec<Match> {
    let mut all: Vec<Match> = gallery
        .chunks(dim)
        .enumerate()
        .map(|(index, g)| Match {
            index,
            distance: metric.distance(q, g),
        })
        .collect();
    all.sort_by(Match::order);
    all.truncate(k);
    all
}

#[test]
fn exact_search_matches_brute_force_for_every_metric() {
    let dim = 24;
    let gallery = noise(700, dim, 1);
    let queries = noise(9, dim, 2);
    for metric in [UNIT, COSINE, RAW] {
        // Small blocks so that the streaming top-k merges across many blocks and workers.
        let exact = ExactSearch::new(&gallery, dim, metric)
            .unwrap()
            .block_rows(64);
        let found = exact.search(&queries, 15).unwrap();
        assert_eq!(found.len(), 9);
        for (qi, got) in found.iter().enumerate() {
            let want = brute(
                &gallery,
                &queries[qi * dim..(qi + 1) * dim],
                dim,
                15,
                metric,
            );
            let got_idx: Vec<usize> = got.iter().map(|m| m.index).collect();
            let want_idx: Vec<usize> = want.iter().map(|m| m.index).collect();
            assert_eq!(got_idx, want_idx, "{metric}: query {qi}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.distance - w.distance).abs() <= 1e-4 * (1.0 + w.distance.abs()),
                    "{metric}: {} vs {}",
                    g.distance,
                    w.distance
                );
            }
        }
    }
}

#[test]
fn exact_search_keeps_gallery_order_on_ties_and_caps_k() {
    let dim = 4;
    // Rows 0, 2 and 3 are the same vector; row 1 is farther.
    let gallery = vec![
        1.0, 0.0, 0.0, 0.0, //
        0.0, 1.0, 0.0, 0.0, //
        1.0, 0.0, 0.0, 0.0, //
        1.0, 0.0, 0.0, 0.0,
    ];
    let exact = ExactSearch::new(&gallery, dim, RAW).unwrap().block_rows(1);
    let found = exact.search(&[1.0, 0.0, 0.0, 0.0], 100).unwrap();
    let order: Vec<usize> = found[0].iter().map(|m| m.index).collect();
    assert_eq!(order, [0, 2, 3, 1]);
    // Filtering drops rows before taking k.
    let keep = |_q: usize, g: usize| g != 2;
    let found = exact
        .search_filtered(&[1.0, 0.0, 0.0, 0.0], 2, Some(&keep))
        .unwrap();
    assert_eq!(found[0].iter().map(|m| m.index).collect::<Vec<_>>(), [0, 3]);
}

#[test]
fn streaming_top_k_equals_a_full_sort() {
    let values = noise(1, 1000, 3);
    for k in [0, 1, 7, 64, 999, 5000] {
        let mut top = TopK::new(k);
        for (index, &distance) in values.iter().enumerate() {
            top.push(Match { index, distance });
        }
        let mut want: Vec<Match> = values
            .iter()
            .enumerate()
            .map(|(index, &distance)| Match { index, distance })
            .collect();
        want.sort_by(Match::order);
        want.truncate(k);
        assert_eq!(top.into_sorted(), want, "k = {k}");
    }
}

#[test]
fn exact_search_rejects_bad_shapes() {
    assert!(ExactSearch::new(&[], 4, RAW).is_err());
    assert!(ExactSearch::new(&[1.0; 7], 4, RAW).is_err());
    let g = [1.0; 8];
    let exact = ExactSearch::new(&g, 4, RAW).unwrap();
    let err = exact.search(&[1.0; 3], 1).unwrap_err().to_string();
    assert!(err.contains("4-dimensional"), "{err}");
}

fn small_params(quantization: Quantization) -> IndexParams {
    IndexParams {
        connectivity: 16,
        expansion_add: 64,
        expansion_search: 64,
        quantization,
    }
}

/// A 3000-row clustered gallery, `queries` queries and their exact top 10 (unit rows).
fn clustered_with_truth(queries: usize, dim: usize) -> (Vec<f32>, Vec<f32>, Vec<Vec<Match>>) {
    let (gallery, queries) = clustered(3000, queries, dim);
    let truth = ExactSearch::new(&gallery, dim, UNIT)
        .unwrap()
        .search(&queries, 10)
        .unwrap();
    (gallery, queries, truth)
}

#[test]
fn index_recall_round_trip_and_views() {
    let dim = 32;
    let (gallery, queries, truth) = clustered_with_truth(50, dim);
    for quant in [Quantization::F32, Quantization::F16, Quantization::I8] {
        let index = AnnIndex::build(&gallery, dim, UNIT, small_params(quant), false).unwrap();
        assert_eq!(index.len(), 3000);
        let found = index.search_many(&queries, 10).unwrap();
        let recall = recall_at_k(&found, &truth, 10);
        assert!(recall >= 0.95, "{quant}: recall@10 {recall}");
        if quant == Quantization::F32 {
            // Distances are this crate's (2 − 2·cos on unit rows).
            for (f, t) in found.iter().zip(&truth) {
                if f[0].index == t[0].index {
                    assert!((f[0].distance - t[0].distance).abs() < 1e-4);
                }
            }
        }

        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        for view in [false, true] {
            let loaded = AnnIndex::open(dir.path(), view).unwrap();
            assert_eq!(loaded.sidecar(), index.sidecar());
            assert_eq!(
                loaded.search_many(&queries, 10).unwrap(),
                found,
                "{quant} view {view}"
            );
        }
    }
}

#[test]
fn rescored_index_search_gives_exact_distances_and_repairs_int8_ranking() {
    let dim = 32;
    let (gallery, queries, truth) = clustered_with_truth(60, dim);
    let mut index =
        AnnIndex::build(&gallery, dim, UNIT, small_params(Quantization::I8), false).unwrap();
    index.set_expansion_search(16);
    assert_eq!(index.rescore_candidates(10), 20);
    assert_eq!(index.rescore_candidates(2), 10);
    index.set_rescore_candidates(50);
    assert_eq!(index.rescore_candidates(10), 50);
    index.set_rescore_candidates(5);
    assert_eq!(index.rescore_candidates(10), 20);
    index.set_rescore_candidates(0);
    let raw = index.search_many(&queries, 10).unwrap();
    let rescored: Vec<Vec<Match>> = queries
        .chunks(dim)
        .map(|q| index.search_rescored(q, 10, &gallery, UNIT).unwrap())
        .collect();
    for (qi, got) in rescored.iter().enumerate() {
        let q = &queries[qi * dim..(qi + 1) * dim];
        assert_eq!(got.len(), 10);
        // Exact f32 distances, nearest first, every row among the index's 20 candidates.
        let candidates = index.search(q, 20).unwrap();
        for w in got.windows(2) {
            assert!(w[0].distance <= w[1].distance);
        }
        for m in got {
            let g = &gallery[m.index * dim..(m.index + 1) * dim];
            assert_eq!(m.distance, UNIT.distance(q, g));
            assert!(candidates.iter().any(|c| c.index == m.index));
        }
    }
    let (r_raw, r_rescored) = (
        recall_at_k(&raw, &truth, 10),
        recall_at_k(&rescored, &truth, 10),
    );
    assert!(
        r_rescored >= r_raw && r_rescored >= 0.97,
        "recall@10 raw {r_raw}, re-scored {r_rescored}"
    );
    // Fewer rows than the index holds cannot be re-scored.
    let err = index
        .search_rescored(&queries[..dim], 10, &gallery[..100 * dim], UNIT)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("100 rows given, the index holds 3000"),
        "{err}"
    );
}

#[test]
fn bench_search_keeps_its_indexes_under_dir_and_reuses_them() {
    use reid::search::bench::{BenchSearchArgs, run};
    let dir = tempfile::tempdir().unwrap();
    let args = |reuse: bool, connectivity: usize| BenchSearchArgs {
        rows: vec![600],
        dim: 16,
        quantization: vec![Quantization::I8],
        connectivity,
        expansion_add: 32,
        ef: vec![16],
        k: 5,
        queries: 12,
        exact_single: 2,
        rescore: vec![0, 40],
        dir: Some(dir.path().to_path_buf()),
        reuse,
        seed: 3,
        json: None,
    };
    let first = run(&args(false, 8)).unwrap();
    // exact, then the index's own answer and the two re-scored ones.
    assert_eq!(first.len(), 4);
    assert!(
        first[2].method.ends_with("re-score of 13"),
        "{}",
        first[2].method
    );
    assert!(
        first[3].method.ends_with("re-score of 40"),
        "{}",
        first[3].method
    );
    let kept = dir.path().join("bench-600-i8");
    assert!(kept.join(INDEX_FILE).is_file() && kept.join("bench.json").is_file());
    let again = run(&args(true, 8)).unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(
            (a.build_s, a.recall, a.disk_bytes),
            (b.build_s, b.recall, b.disk_bytes)
        );
    }
    // Other build parameters: the kept index is not used, a new one replaces it.
    run(&args(true, 4)).unwrap();
    let stamp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("bench.json")).unwrap()).unwrap();
    assert_eq!(stamp["connectivity"], 4);
}

#[test]
fn index_additions_extend_it_and_find_the_new_rows() {
    let dim = 16;
    let (gallery, _) = clustered(1200, 1, dim);
    let (first, rest) = gallery.split_at(1000 * dim);
    let mut index =
        AnnIndex::build(first, dim, COSINE, small_params(Quantization::F32), false).unwrap();
    index.add(rest, false).unwrap();
    assert_eq!(index.len(), 1200);
    for row in [1000, 1100, 1199] {
        let q = &gallery[row * dim..(row + 1) * dim];
        let top = index.search(q, 1).unwrap();
        assert_eq!(top[0].index, row);
        assert!(top[0].distance < 1e-4);
    }
}

#[test]
fn int8_storage_needs_unit_rows() {
    let err = AnnIndex::new(8, RAW, small_params(Quantization::I8))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("int8") && err.contains("--normalize-features"),
        "{err}"
    );
    assert!(AnnIndex::new(8, COSINE, small_params(Quantization::I8)).is_ok());
}

fn write_gallery(dir: &Path, rows: &[f32], dim: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let n = rows.len() / dim;
    kiln::io::write_atomic(
        dir.join("embeddings.npy"),
        &npy::f32_matrix_bytes(rows, n, dim).unwrap(),
    )
    .unwrap();
    let paths: Vec<String> = (0..n).map(|i| format!("img_{i}.jpg")).collect();
    kiln::io::write_atomic(dir.join("paths.npy"), &npy::string_array_bytes(&paths)).unwrap();
}

#[test]
fn saved_gallery_searches_with_its_index_and_merges_rows_added_since() {
    let dim = 32;
    let (gallery, queries) = clustered(2000, 20, dim);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    write_gallery(&dir, &gallery[..1500 * dim], dim);
    let mut saved = SavedGallery::open(&dir, false).unwrap();
    assert!(saved.index().is_none());
    let err = saved
        .search(&queries, 5, UNIT, SearchMode::Index)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no index") && err.contains("reid index"),
        "{err}"
    );
    saved
        .build_index(UNIT, small_params(Quantization::F16), false)
        .unwrap();
    assert!(dir.join(INDEX_FILE).is_file() && dir.join(SIDECAR_FILE).is_file());

    // 500 more rows appended after the index was built: searched exactly and merged.
    write_gallery(&dir, &gallery, dim);
    let saved = SavedGallery::open(&dir, true).unwrap();
    assert_eq!(saved.index().unwrap().len(), 1500);
    let exact = saved.search(&queries, 10, UNIT, SearchMode::Exact).unwrap();
    let approx = saved.search(&queries, 10, UNIT, SearchMode::Index).unwrap();
    assert!(recall_at_k(&approx, &exact, 10) >= 0.95);
    assert!(exact.iter().flatten().any(|m| m.index >= 1500));
    // Index candidates are re-scored with exact distances.
    for (a, e) in approx.iter().zip(&exact) {
        for m in a {
            if let Some(x) = e.iter().find(|x| x.index == m.index) {
                assert!((m.distance - x.distance).abs() < 1e-5);
            }
        }
    }
    // Cosine ranks unit rows like the index; raw Euclidean does not fit it: Auto falls back.
    assert!(saved.index_fits(COSINE) && !saved.index_fits(RAW));
    let auto = saved.search(&queries, 3, RAW, SearchMode::Auto).unwrap();
    let want = saved.search(&queries, 3, RAW, SearchMode::Exact).unwrap();
    assert_eq!(auto, want);
    let err = saved
        .search(&queries, 3, RAW, SearchMode::Index)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot rank by"), "{err}");

    // `update_index` adds the 500 rows.
    let mut saved = SavedGallery::open(&dir, false).unwrap();
    assert_eq!(saved.update_index(false).unwrap(), 500);
    assert_eq!(
        SavedGallery::open(&dir, false)
            .unwrap()
            .index()
            .unwrap()
            .len(),
        2000
    );
}

#[test]
fn saved_gallery_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dim = 8;
    let rows = noise(50, dim, 5);

    // Empty gallery.
    let empty = tmp.path().join("empty");
    write_gallery(&empty, &[], dim);
    let err = SavedGallery::open(&empty, false).err().unwrap().to_string();
    assert!(
        err.contains("empty") && err.contains(&empty.join("embeddings.npy").display().to_string()),
        "{err}"
    );

    // Missing directory and missing file.
    let err = SavedGallery::open(&tmp.path().join("nope"), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let err = format!("{:#}", SavedGallery::open(&bare, false).err().unwrap());
    assert!(err.contains("embeddings.npy"), "{err}");

    // Corrupt index.
    let corrupt = tmp.path().join("corrupt");
    write_gallery(&corrupt, &rows, dim);
    let mut g = SavedGallery::open(&corrupt, false).unwrap();
    g.build_index(RAW, small_params(Quantization::F32), false)
        .unwrap();
    let index_path = corrupt.join(INDEX_FILE);
    let bytes = std::fs::read(&index_path).unwrap();
    std::fs::write(&index_path, &bytes[..bytes.len() / 3]).unwrap();
    let err = format!("{:#}", SavedGallery::open(&corrupt, false).err().unwrap());
    assert!(
        err.contains(&index_path.display().to_string()) && err.contains("rebuild"),
        "{err}"
    );
    std::fs::write(&index_path, b"not an index at all").unwrap();
    let err = format!("{:#}", SavedGallery::open(&corrupt, true).err().unwrap());
    assert!(err.contains(&index_path.display().to_string()), "{err}");

    // An index of another dimension than the embeddings.
    let other = tmp.path().join("other");
    write_gallery(&other, &noise(50, 4, 6), 4);
    let mut g = SavedGallery::open(&other, false).unwrap();
    g.build_index(RAW, small_params(Quantization::F32), false)
        .unwrap();
    write_gallery(&other, &rows, dim);
    let err = format!("{:#}", SavedGallery::open(&other, false).err().unwrap());
    assert!(
        err.contains("4-dimensional") && err.contains("8-dimensional"),
        "{err}"
    );

    // Queries of the wrong dimension.
    let g = SavedGallery::open(&corrupt.with_file_name("empty2"), false);
    assert!(g.is_err());
    let good = tmp.path().join("good");
    write_gallery(&good, &rows, dim);
    let g = SavedGallery::open(&good, false).unwrap();
    let err = g
        .search(&[0.0; 5], 1, RAW, SearchMode::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("8-dimensional"), "{err}");
}

#[test]
fn recall_counts_the_exact_neighbours_found() {
    let m = |index| Match {
        index,
        distance: 0.0,
    };
    let exact = vec![vec![m(1), m(2)], vec![m(3), m(4)]];
    let approx = vec![vec![m(2), m(9)], vec![m(3), m(4)]];
    assert!((recall_at_k(&approx, &exact, 2) - 0.75).abs() < 1e-12);
    assert!((recall_at_k(&approx, &exact, 1) - 0.5).abs() < 1e-12);
}
