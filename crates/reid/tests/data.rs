//! Data pipeline: dataset parsing (Market1501 / DukeMTMC-reID / COCO-ReID), the P×K sampler,
//! transforms, loaders, image listing, the synthetic generator, the Fashion-MNIST converter and
//! the bundled fashion set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use reid::config::{InputConfig, ReidConfig};
use reid::data::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn synthetic(spec: &SyntheticSpec) -> (tempfile::TempDir, ReidDataset) {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_market1501(dir.path(), spec, 7).unwrap();
    let ds = market1501(dir.path()).unwrap();
    (dir, ds)
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn write_jpeg(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

fn err_string<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Market1501 / DukeMTMC-reID parsing

#[test]
fn market_parsing_drops_junk_relabels_ascending_and_keeps_raw_eval_pids() {
    let spec = SyntheticSpec::default();
    let (_dir, ds) = synthetic(&spec);
    assert_eq!(
        ds.train.len(),
        spec.num_train(),
        "junk pid -1 dropped from train"
    );
    assert_eq!(ds.query.len(), spec.num_query());
    assert_eq!(
        ds.gallery.len(),
        spec.num_gallery(),
        "junk dropped, pid 0 kept"
    );
    assert_eq!(ds.num_classes, spec.train_ids);
    assert_eq!(ds.num_query(), spec.num_query());

    // Train: raw pid (from the file name) → its rank among the train pids; camid = cam - 1.
    let train_pids = spec.train_pids();
    for s in &ds.train {
        let (raw, cam) = parse_market_name(&file_name(&s.path)).unwrap();
        let rank = train_pids.iter().position(|&p| p == raw).unwrap();
        assert_eq!(s.pid, rank as i64, "{}", s.path.display());
        assert_eq!(s.camid, cam - 1);
    }
    // Query / gallery keep raw pids; pid 0 distractors are ordinary gallery entries.
    let test_pids: BTreeSet<i64> = spec.test_pids().into_iter().collect();
    for s in ds.query.iter().chain(&ds.gallery) {
        let (raw, cam) = parse_market_name(&file_name(&s.path)).unwrap();
        assert_eq!(s.pid, raw);
        assert_eq!(s.camid, cam - 1);
        assert!(s.pid == 0 || test_pids.contains(&s.pid));
        assert!((0..spec.cameras as i64).contains(&s.camid));
    }
    assert_eq!(
        ds.gallery.iter().filter(|s| s.pid == 0).count(),
        spec.distractors
    );
    assert!(ds.gallery.iter().all(|s| s.pid != -1));
    // Files sorted by name within each split.
    for split in [&ds.train, &ds.query, &ds.gallery] {
        let names: Vec<String> = split.iter().map(|s| file_name(&s.path)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
    // val = query then gallery.
    let val = ds.val();
    assert_eq!(val.len(), ds.query.len() + ds.gallery.len());
    assert_eq!(&val[..ds.num_query()], &ds.query[..]);
    assert_eq!(&val[ds.num_query()..], &ds.gallery[..]);
    // train_by_pid: every label with its own indices, all indices covered once.
    let by_pid = ds.train_by_pid();
    assert_eq!(by_pid.len(), ds.num_classes);
    let mut seen = BTreeSet::new();
    for (label, indices) in by_pid.iter().enumerate() {
        assert_eq!(indices.len(), spec.cameras * spec.train_per_camera);
        for &i in indices {
            assert_eq!(ds.train[i].pid, label as i64);
            assert!(seen.insert(i));
        }
    }
    assert_eq!(seen.len(), ds.train.len());
}

#[test]
fn regex_applies_to_the_file_name_only() {
    // The whole path contains `12_c3`, which the reference's path-wide search would pick up.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("12_c3");
    let spec = SyntheticSpec::default();
    write_synthetic_market1501(&root, &spec, 1).unwrap();
    let ds = market1501(&root).unwrap();
    let query_pids: BTreeSet<i64> = ds.query.iter().map(|s| s.pid).collect();
    assert_eq!(query_pids, spec.test_pids().into_iter().collect());
    assert!(ds.query.iter().all(|s| s.camid < spec.cameras as i64));

    assert_eq!(
        parse_market_name("0002_c1s1_000451_03.jpg").unwrap(),
        (2, 1)
    );
    assert_eq!(parse_market_name("-1_c3s2_000001_00.jpg").unwrap(), (-1, 3));
    assert_eq!(
        parse_market_name("0512_c6s1_000001_00.jpg").unwrap(),
        (512, 6)
    );
    assert!(parse_market_name("person.jpg").is_err());
    assert!(
        parse_market_name("1-2_c1s1.jpg").is_err(),
        "'1-2' is not an integer"
    );
}

#[test]
fn market_errors_name_the_offending_directory_or_file() {
    let spec = SyntheticSpec::default();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_synthetic_market1501(root, &spec, 3).unwrap();
    let base = root.join("market1501");

    // Non-jpg files and hidden files are ignored.
    fs::write(base.join("query/notes.txt"), "x").unwrap();
    fs::write(base.join("query/0100_c1s1_000001_00.png"), "x").unwrap();
    fs::write(base.join("query/.0100_c1s1_000002_00.jpg"), "x").unwrap();
    assert_eq!(market1501(root).unwrap().query.len(), spec.num_query());

    // An unparsable name.
    let bad = base.join("query/person.jpg");
    fs::write(&bad, "x").unwrap();
    let msg = err_string(market1501(root));
    assert!(msg.contains("person.jpg"), "{msg}");
    fs::remove_file(&bad).unwrap();

    // pid and camera ranges.
    let bad = base.join("bounding_box_test/1502_c1s1_000001_00.jpg");
    fs::write(&bad, "x").unwrap();
    let msg = err_string(market1501(root));
    assert!(
        msg.contains("1502_c1s1_000001_00.jpg") && msg.contains("1501"),
        "{msg}"
    );
    fs::remove_file(&bad).unwrap();
    let bad = base.join("bounding_box_train/0002_c7s1_000001_00.jpg");
    fs::write(&bad, "x").unwrap();
    let msg = err_string(market1501(root));
    assert!(
        msg.contains("0002_c7s1_000001_00.jpg") && msg.contains("camera 7"),
        "{msg}"
    );
    fs::remove_file(&bad).unwrap();

    // A split holding only junk is empty.
    let query = base.join("query");
    fs::remove_dir_all(&query).unwrap();
    fs::create_dir(&query).unwrap();
    fs::write(query.join("-1_c1s1_000001_00.jpg"), "x").unwrap();
    let msg = err_string(market1501(root));
    assert!(
        msg.contains("query") && msg.contains("no usable images"),
        "{msg}"
    );

    // A missing directory is named.
    fs::remove_dir_all(&query).unwrap();
    let msg = err_string(market1501(root));
    assert!(msg.contains(&query.display().to_string()), "{msg}");
    let msg = err_string(market1501(&root.join("nowhere")));
    assert!(msg.contains("nowhere"), "{msg}");
}

#[test]
fn dukemtmc_keeps_every_pid_and_allows_eight_cameras() {
    let spec = SyntheticSpec::default();
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_market1501(dir.path(), &spec, 5).unwrap();
    fs::rename(
        dir.path().join("market1501"),
        dir.path().join("DukeMTMC-reID"),
    )
    .unwrap();
    let duke = dir.path().join("DukeMTMC-reID");
    fs::copy(
        duke.join("bounding_box_train")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        duke.join("bounding_box_train/0002_c8s1_009999_00.jpg"),
    )
    .unwrap();
    let ds = dukemtmc(dir.path()).unwrap();
    // No junk filtering for Duke: the -1 file is a training identity (label 0, smallest pid).
    assert_eq!(ds.num_classes, spec.train_ids + 1);
    assert_eq!(ds.train.len(), spec.num_train() + 2);
    assert!(ds.train.iter().any(|s| s.camid == 7));
    assert_eq!(ds.gallery.len(), spec.num_gallery() + 1);
    assert!(ds.gallery.iter().any(|s| s.pid == -1));
    fs::write(duke.join("query/0100_c9s1_000001_00.jpg"), "x").unwrap();
    let msg = err_string(dukemtmc(dir.path()));
    assert!(msg.contains("0100_c9s1_000001_00.jpg"), "{msg}");
    // Market1501 is not there.
    let msg = err_string(market1501(dir.path()));
    assert!(msg.contains("market1501"), "{msg}");
}

#[test]
fn load_dataset_dispatches_on_names() {
    let spec = SyntheticSpec::default();
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_market1501(dir.path(), &spec, 9).unwrap();
    let root = dir.path().display().to_string();
    let cfg = ReidConfig::load(None, &["DATASETS.ROOT_DIR".into(), root.clone()]).unwrap();
    assert_eq!(load_dataset(&cfg).unwrap().train.len(), spec.num_train());
    let cfg = ReidConfig::load(
        None,
        &[
            "DATASETS.NAMES".into(),
            "viper".into(),
            "DATASETS.ROOT_DIR".into(),
            root,
        ],
    )
    .unwrap();
    let msg = err_string(load_dataset(&cfg));
    assert!(
        msg.contains("DATASETS.NAMES") && msg.contains("viper"),
        "{msg}"
    );
    let cfg = ReidConfig::load(None, &["DATASETS.NAMES".into(), "df1".into()]).unwrap();
    assert!(err_string(load_dataset(&cfg)).contains("DATASETS.JSON_TRAIN_PATH"));
}

// ---------------------------------------------------------------------------------------------
// COCO-ReID

fn coco_json(images: &[(i64, &str)], annotations: &[(i64, i64)]) -> String {
    let images: Vec<_> = images
        .iter()
        .map(|(id, f)| serde_json::json!({"id": id, "file_name": f, "width": 8, "height": 16}))
        .collect();
    let annotations: Vec<_> = annotations
        .iter()
        .enumerate()
        .map(|(i, (image_id, pair_id))| {
            serde_json::json!({"id": i, "image_id": image_id, "pair_id": pair_id,
                               "source": "user", "bbox": [0, 0, 8, 16], "category_id": 1})
        })
        .collect();
    serde_json::json!({"images": images, "annotations": annotations, "categories": []}).to_string()
}

#[test]
fn coco_reid_parsing_follows_the_reference_rules() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    // Every "train" in the path is replaced, the directory name included.
    let ann = dir.path().join("ann_train");
    let ann_q = dir.path().join("ann_query");
    let ann_g = dir.path().join("ann_gallery");
    for d in [&ann, &ann_q, &ann_g] {
        fs::create_dir_all(d).unwrap();
    }
    // Train: pair 7 has 3 images, pair 3 has 2, pair 5 has 1 (dropped), pair 9 has 2
    // annotations but one points to a missing image (so 1 image: dropped).
    fs::write(
        ann.join("train_128.json"),
        coco_json(
            &[
                (1, "a.jpg"),
                (2, "b.jpg"),
                (3, "c.jpg"),
                (4, "d.jpg"),
                (5, "e.jpg"),
                (6, "f.jpg"),
                (7, "g.jpg"),
            ],
            &[
                (1, 7),
                (4, 3),
                (2, 7),
                (6, 5),
                (5, 3),
                (3, 7),
                (7, 9),
                (99, 9),
            ],
        ),
    )
    .unwrap();
    fs::write(
        ann_q.join("query_128.json"),
        coco_json(&[(10, "q1.jpg"), (11, "q2.jpg")], &[(11, 40), (10, 12)]),
    )
    .unwrap();
    fs::write(
        ann_g.join("gallery_128.json"),
        coco_json(
            &[(20, "g1.jpg"), (21, "g2.jpg"), (22, "g3.jpg")],
            &[(20, 40), (21, 12), (22, 77)],
        ),
    )
    .unwrap();
    for (split, names) in [
        ("train", vec!["a", "b", "c", "d", "e", "f", "g"]),
        ("query", vec!["q1", "q2"]),
        ("gallery", vec!["g1", "g2", "g3"]),
    ] {
        for (i, n) in names.iter().enumerate() {
            let img = RgbImage::from_pixel(8, 16, Rgb([10 * i as u8, 50, 200]));
            write_jpeg(&images.join(split).join(format!("{n}.jpg")), &img);
        }
    }
    let ds = coco_reid(&images, &ann.join("train_128.json")).unwrap();
    let rows = |v: &[Sample]| -> Vec<(String, i64, i64)> {
        v.iter()
            .map(|s| {
                let parent = file_name(s.path.parent().unwrap());
                (format!("{parent}/{}", file_name(&s.path)), s.pid, s.camid)
            })
            .collect()
    };
    // Ascending pair_id order, relabelled 0.., annotation order within a pair; camid 0.
    assert_eq!(
        rows(&ds.train),
        vec![
            ("train/d.jpg".into(), 0, 0),
            ("train/e.jpg".into(), 0, 0),
            ("train/a.jpg".into(), 1, 0),
            ("train/b.jpg".into(), 1, 0),
            ("train/c.jpg".into(), 1, 0),
        ]
    );
    assert_eq!(ds.num_classes, 2);
    // Query: raw pair_ids, ascending, camid 0. Gallery: camid 1.
    assert_eq!(
        rows(&ds.query),
        vec![
            ("query/q1.jpg".into(), 12, 0),
            ("query/q2.jpg".into(), 40, 0)
        ]
    );
    assert_eq!(
        rows(&ds.gallery),
        vec![
            ("gallery/g2.jpg".into(), 12, 1),
            ("gallery/g1.jpg".into(), 40, 1),
            ("gallery/g3.jpg".into(), 77, 1),
        ]
    );
    // The paths resolve: the evaluation loader decodes all of them.
    let transform = TestTransform::from_config(&InputConfig {
        size_test: [16, 8],
        ..InputConfig::default()
    })
    .unwrap();
    let batches: Vec<EvalBatch> =
        EvalLoader::for_dataset(&ds, transform, 2, &LoaderOptions::default())
            .unwrap()
            .collect::<anyhow::Result<_>>()
            .unwrap();
    let pids: Vec<i64> = batches.iter().flat_map(|b| b.pids.clone()).collect();
    assert_eq!(pids, vec![12, 40, 12, 40, 77]);

    // camid 1 whenever the lower-cased image directory contains "gallery" (reference quirk).
    let odd_root = dir.path().join("MyGalleryData");
    for split in ["train", "query", "gallery"] {
        fs::create_dir_all(odd_root.join(split)).unwrap();
    }
    let odd = coco_reid(&odd_root, &ann.join("train_128.json")).unwrap();
    assert!(odd.train.iter().chain(&odd.query).all(|s| s.camid == 1));

    // Errors: missing derived json, missing image dir, negative pair_id, path without "train".
    fs::remove_file(ann_g.join("gallery_128.json")).unwrap();
    let msg = err_string(coco_reid(&images, &ann.join("train_128.json")));
    assert!(msg.contains("gallery_128.json"), "{msg}");
    let msg = err_string(coco_reid(
        &dir.path().join("nope"),
        &ann.join("train_128.json"),
    ));
    assert!(msg.contains("nope"), "{msg}");
    fs::write(
        ann_g.join("gallery_128.json"),
        coco_json(&[(1, "g1.jpg")], &[(1, -4)]),
    )
    .unwrap();
    let msg = err_string(coco_reid(&images, &ann.join("train_128.json")));
    assert!(
        msg.contains("gallery_128.json") && msg.contains("-4"),
        "{msg}"
    );
    fs::write(ann_g.join("gallery_128.json"), "{\"images\": []}").unwrap();
    let msg = err_string(coco_reid(&images, &ann.join("train_128.json")));
    assert!(msg.contains("gallery_128.json"), "{msg}");
    let msg = err_string(coco_reid(&images, Path::new("/data/annotations.json")));
    assert!(msg.contains("train"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// P×K sampler

/// Identities with n = 2..=9 images (labels 0..=7), plus a single-image identity (label 8).
fn sizes_2_to_9() -> Vec<Vec<usize>> {
    let mut by_pid = Vec::new();
    let mut next = 0;
    for n in (2..=9).chain([1]) {
        by_pid.push((next..next + n).collect());
        next += n;
    }
    by_pid
}

fn label_of_index(by_pid: &[Vec<usize>]) -> BTreeMap<usize, usize> {
    by_pid
        .iter()
        .enumerate()
        .flat_map(|(l, v)| v.iter().map(move |&i| (i, l)))
        .collect()
}

#[test]
fn occurrence_rule_matches_the_reference() {
    let got: Vec<usize> = (2..=9).map(|n| occurrences_per_epoch(n, 4)).collect();
    assert_eq!(got, vec![1, 1, 1, 1, 2, 2, 2, 2]);
    assert_eq!(occurrences_per_epoch(1, 4), 0);
    assert_eq!(occurrences_per_epoch(0, 4), 0);
    assert_eq!(occurrences_per_epoch(13, 4), 3);
    assert_eq!(occurrences_per_epoch(14, 4), 4);
    assert_eq!(occurrences_per_epoch(3, 2), 1);
    assert_eq!(occurrences_per_epoch(4, 2), 2);
}

#[test]
fn sampler_serves_every_occurrence_once_with_p_1() {
    let by_pid = sizes_2_to_9();
    let sampler = PkSampler::new(by_pid.clone(), 1, 4, false, 1, 0).unwrap();
    let labels = label_of_index(&by_pid);
    for epoch in 0..5 {
        let batches = sampler.epoch(11, epoch);
        let mut count = vec![0usize; by_pid.len()];
        let mut used = BTreeSet::new();
        for batch in &batches {
            assert_eq!(batch.len(), 4);
            let label = batch[0].label;
            count[label] += 1;
            assert!(batch.iter().all(|it| it.label == label));
            // Real items first, then mocks.
            let real = batch.iter().take_while(|it| it.index.is_some()).count();
            assert!(batch[real..].iter().all(|it| it.index.is_none()));
            for it in batch.iter().filter_map(|it| it.index) {
                assert_eq!(labels[&it], label);
                assert!(used.insert(it), "image {it} served twice in epoch {epoch}");
            }
        }
        let expected: Vec<usize> = by_pid
            .iter()
            .map(|v| occurrences_per_epoch(v.len(), 4))
            .collect();
        assert_eq!(count, expected, "epoch {epoch}");
        // Mocks: n=2 → 2, n=3 → 1, n=6 → 2, n=7 → 1 (one chunk each short); n=5, 9 drop one image.
        let mocks = batches
            .iter()
            .flatten()
            .filter(|it| it.index.is_none())
            .count();
        assert_eq!(mocks, 2 + 1 + 2 + 1);
        assert_eq!(used.len(), 2 + 3 + 4 + 4 + 6 + 7 + 8 + 8);
    }
}

#[test]
fn sampler_batches_hold_distinct_pids_in_contiguous_blocks() {
    let by_pid = sizes_2_to_9();
    let sampler = PkSampler::new(by_pid.clone(), 3, 4, false, 1, 0).unwrap();
    let total_occ: usize = by_pid
        .iter()
        .map(|v| occurrences_per_epoch(v.len(), 4))
        .sum();
    for epoch in 0..20 {
        let batches = sampler.epoch(5, epoch);
        assert!(!batches.is_empty());
        let mut count = vec![0usize; by_pid.len()];
        for batch in &batches {
            assert_eq!(batch.len(), 12);
            let block_labels: Vec<usize> = batch.chunks(4).map(|b| b[0].label).collect();
            for (b, block) in batch.chunks(4).enumerate() {
                assert!(block.iter().all(|it| it.label == block_labels[b]));
            }
            let distinct: BTreeSet<_> = block_labels.iter().collect();
            assert_eq!(distinct.len(), 3, "distinct pids per batch");
            for l in block_labels {
                count[l] += 1;
            }
        }
        assert_eq!(count[8], 0, "single-image identities are excluded");
        // Rounds stop when fewer than P identities have occurrences left.
        let left: Vec<usize> = by_pid
            .iter()
            .enumerate()
            .map(|(l, v)| occurrences_per_epoch(v.len(), 4) - count[l])
            .collect();
        assert!(left.iter().filter(|&&x| x > 0).count() < 3, "{left:?}");
        assert_eq!(batches.len() * 3 + left.iter().sum::<usize>(), total_occ);
    }
}

#[test]
fn sampler_is_deterministic_per_seed_and_epoch() {
    let sampler = PkSampler::new(sizes_2_to_9(), 2, 4, true, 1, 0).unwrap();
    assert_eq!(sampler.epoch(3, 4), sampler.epoch(3, 4));
    assert_ne!(sampler.epoch(3, 4), sampler.epoch(3, 5));
    assert_ne!(sampler.epoch(3, 4), sampler.epoch(4, 4));
    let clone = PkSampler::new(sizes_2_to_9(), 2, 4, true, 1, 0).unwrap();
    assert_eq!(sampler.epoch(3, 4), clone.epoch(3, 4));
}

#[test]
fn sampler_resampling_pads_from_the_identity_chunk() {
    let by_pid = sizes_2_to_9();
    let labels = label_of_index(&by_pid);
    let k = 4;
    let sampler = PkSampler::new(by_pid.clone(), 1, k, true, 1, 0).unwrap();
    // The K-chunks of an identity with n images, in serving order (n mod 4 == 1 leaves one
    // image out; a single image is no identity).
    let chunk_sizes = |n: usize| -> Vec<usize> {
        match n {
            2 => vec![2],
            3 => vec![3],
            4 | 5 => vec![4],
            6 => vec![4, 2],
            7 => vec![4, 3],
            8 | 9 => vec![4, 4],
            _ => vec![],
        }
    };
    let (mut pads, mut pads_not_first) = (0, 0);
    for epoch in 0..10 {
        let batches = sampler.epoch(1, epoch);
        let mut by_label: BTreeMap<usize, Vec<Vec<usize>>> = BTreeMap::new();
        for batch in &batches {
            assert_eq!(batch.len(), k);
            assert!(
                batch.iter().all(|it| it.index.is_some()),
                "no mocks when resampling"
            );
            let idx: Vec<usize> = batch.iter().map(|it| it.index.unwrap()).collect();
            assert!(idx.iter().all(|i| labels[i] == batch[0].label));
            assert!(batch.iter().all(|it| it.label == batch[0].label));
            by_label.entry(batch[0].label).or_default().push(idx);
        }
        for (label, images) in by_pid.iter().enumerate() {
            let n = images.len();
            let served = by_label.remove(&label).unwrap_or_default();
            let want = chunk_sizes(n);
            assert_eq!(
                served.len(),
                want.len(),
                "epoch {epoch}: identity with {n} images served {served:?}"
            );
            let mut seen = BTreeSet::new();
            for (idx, &size) in served.iter().zip(&want) {
                // The chunk: `size` distinct images, leading the batch, none served before.
                let chunk = &idx[..size];
                let distinct: BTreeSet<usize> = chunk.iter().copied().collect();
                assert_eq!(distinct.len(), size, "epoch {epoch}, n {n}: {idx:?}");
                assert!(
                    distinct.is_disjoint(&seen),
                    "epoch {epoch}, n {n}: {idx:?} repeats images of an earlier chunk {seen:?}"
                );
                seen.extend(distinct.iter().copied());
                // Its padding: K − size draws from that chunk only.
                for &pad in &idx[size..] {
                    assert!(
                        distinct.contains(&pad),
                        "epoch {epoch}, n {n}: padding {pad} of {idx:?} is not from its chunk \
                         {distinct:?}"
                    );
                    pads += 1;
                    pads_not_first += usize::from(pad != chunk[0]);
                }
            }
            // Every image served once, but the one left out when n mod K == 1.
            assert_eq!(seen.len(), want.iter().sum::<usize>());
            assert!(seen.iter().all(|i| images.contains(i)));
        }
        assert!(by_label.is_empty(), "{by_label:?}");
    }
    // n = 2, 3, 6, 7 pad (2 + 1 + 2 + 1) slots per epoch, drawn with replacement.
    assert_eq!(pads, 60);
    assert!(
        pads_not_first > 10 && pads_not_first < 55,
        "padding draws vary over the chunk: {pads_not_first} of {pads} not its first image"
    );
}

#[test]
fn sampler_splits_the_plan_between_ranks() {
    // 12 identities of 4 images: one occurrence each; P = 2, world size 2 → 3 rounds of 4
    // distinct identities, every occurrence served.
    let by_pid: Vec<Vec<usize>> = (0..12).map(|l| (l * 4..l * 4 + 4).collect()).collect();
    let r0 = PkSampler::new(by_pid.clone(), 2, 4, false, 2, 0)
        .unwrap()
        .epoch(9, 3);
    let r1 = PkSampler::new(by_pid.clone(), 2, 4, false, 2, 1)
        .unwrap()
        .epoch(9, 3);
    assert_eq!((r0.len(), r1.len()), (3, 3));
    let images = |bs: &[Vec<PkItem>]| -> BTreeSet<usize> {
        bs.iter().flatten().filter_map(|it| it.index).collect()
    };
    let (a, b) = (images(&r0), images(&r1));
    assert!(a.is_disjoint(&b), "ranks never share images");
    assert_eq!(a.len() + b.len(), 48);
    // Each identity (one occurrence) is served exactly once, by one of the ranks.
    let mut served: Vec<usize> = r0
        .iter()
        .chain(&r1)
        .flat_map(|b| b.chunks(4).map(|c| c[0].label))
        .collect();
    served.sort_unstable();
    assert_eq!(served, (0..12).collect::<Vec<_>>());
    // 24 occurrences of 8-image identities: leftovers (< P·world size identities) are dropped.
    let by_pid8: Vec<Vec<usize>> = (0..12).map(|l| (l * 8..l * 8 + 8).collect()).collect();
    for epoch in 0..10 {
        let r0 = PkSampler::new(by_pid8.clone(), 2, 4, false, 2, 0)
            .unwrap()
            .epoch(9, epoch);
        let r1 = PkSampler::new(by_pid8.clone(), 2, 4, false, 2, 1)
            .unwrap()
            .epoch(9, epoch);
        assert_eq!(r0.len(), r1.len());
        // At most 3 identities with at most 2 occurrences each are left over.
        let served = (r0.len() + r1.len()) * 2;
        assert!((24 - 3 * 2..=24).contains(&served), "{served}");
        assert!(images(&r0).is_disjoint(&images(&r1)));
    }
    for batch in r0.iter().chain(&r1) {
        assert_ne!(batch[0].label, batch[4].label);
    }
    // Rank out of range, too few identities.
    assert!(PkSampler::new(by_pid.clone(), 2, 4, false, 2, 2).is_err());
    let msg = format!(
        "{:#}",
        PkSampler::new(by_pid, 7, 4, false, 2, 0).unwrap_err()
    );
    assert!(msg.contains("SOLVER.IMS_PER_BATCH"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Transforms

fn plain_input(size: [usize; 2]) -> InputConfig {
    InputConfig {
        size_train: size,
        size_test: size,
        prob: 0.5,
        re_prob: 0.0,
        pixel_mean: [0.0; 3],
        pixel_std: [1.0; 3],
        padding: 1,
    }
}

#[test]
fn normalisation_by_hand() {
    let mut img = RgbImage::new(2, 1);
    img.put_pixel(0, 0, Rgb([255, 0, 51]));
    img.put_pixel(1, 0, Rgb([0, 128, 255]));
    let mut out = vec![0.0; 6];
    normalize_into(&img, [0.5, 0.25, 0.2], [0.5, 0.25, 0.1], &mut out);
    let expected = [
        1.0,
        -1.0, // R plane
        -1.0,
        (128.0 / 255.0 - 0.25) / 0.25, // G plane
        0.0,
        8.0, // B plane
    ];
    for (got, want) in out.iter().zip(expected) {
        assert!((got - want).abs() < 1e-5, "{out:?}");
    }
    // The test transform of an image already of the target size is exactly that.
    let t = TestTransform {
        size: [1, 2],
        mean: [0.5, 0.25, 0.2],
        std: [0.5, 0.25, 0.1],
    };
    assert_eq!(t.apply(&img), out);
    // Resizing a constant image keeps it constant; the output has the target shape.
    let flat = RgbImage::from_pixel(37, 23, Rgb([100, 150, 200]));
    let resized = resize_rgb(&flat, [16, 8]);
    assert_eq!((resized.width(), resized.height()), (8, 16));
    assert!(resized.pixels().all(|p| p.0 == [100, 150, 200]));
}

#[test]
fn flip_pad_and_crop_by_hand() {
    // 2×3 image, pixel (y, x) has value 10·(3y + x + 1) in every channel.
    let img = RgbImage::from_fn(3, 2, |x, y| {
        let v = (10 * (3 * y + x + 1)) as u8;
        Rgb([v, v, v])
    });
    let t = TrainTransform::from_config(&plain_input([2, 3])).unwrap();
    let v = |val: u32| val as f32 / 255.0;
    let at = |out: &[f32], c: usize, y: usize, x: usize| out[c * 6 + y * 3 + x];

    // No flip, crop at (top 0, left 2) of the 1-padded 4×5 image: source (y - 1, x + 1).
    let params = AugmentParams {
        flip: false,
        top: 0,
        left: 2,
        erase: None,
    };
    let out = t.apply_with(&img, &params);
    for c in 0..3 {
        assert_eq!(
            [at(&out, c, 0, 0), at(&out, c, 0, 1), at(&out, c, 0, 2)],
            [0.0; 3]
        );
        assert_eq!(
            [at(&out, c, 1, 0), at(&out, c, 1, 1), at(&out, c, 1, 2)],
            [v(20), v(30), 0.0]
        );
    }
    // Flip first: flipped (y, x) = (y, 2 - x); source (y - 1, 2 - (x + 1)).
    let params = AugmentParams {
        flip: true,
        top: 0,
        left: 2,
        erase: None,
    };
    let out = t.apply_with(&img, &params);
    assert_eq!(
        [at(&out, 0, 1, 0), at(&out, 0, 1, 1), at(&out, 0, 1, 2)],
        [v(20), v(10), 0.0]
    );
    // Centre crop (top = left = padding) is the identity; bottom-right corner shifts up-left.
    let params = AugmentParams {
        flip: false,
        top: 1,
        left: 1,
        erase: None,
    };
    let out = t.apply_with(&img, &params);
    let mut plain = vec![0.0; 18];
    normalize_into(&img, [0.0; 3], [1.0; 3], &mut plain);
    assert_eq!(out, plain);
    let params = AugmentParams {
        flip: false,
        top: 2,
        left: 2,
        erase: None,
    };
    let out = t.apply_with(&img, &params);
    assert_eq!(
        [at(&out, 1, 0, 0), at(&out, 1, 0, 1), at(&out, 1, 0, 2)],
        [v(50), v(60), 0.0]
    );
    assert_eq!(
        [at(&out, 1, 1, 0), at(&out, 1, 1, 1), at(&out, 1, 1, 2)],
        [0.0; 3]
    );

    // Padding pixels are zeros *before* normalisation: (0 - mean) / std afterwards.
    let mut cfg = plain_input([2, 3]);
    cfg.pixel_mean = [0.485, 0.456, 0.406];
    cfg.pixel_std = [0.229, 0.224, 0.225];
    let t = TrainTransform::from_config(&cfg).unwrap();
    let out = t.apply_with(
        &img,
        &AugmentParams {
            flip: false,
            top: 0,
            left: 0,
            erase: None,
        },
    );
    for c in 0..3 {
        let want = (0.0 - cfg.pixel_mean[c] as f32) / cfg.pixel_std[c] as f32;
        assert_eq!(at(&out, c, 0, 0), want);
    }
}

#[test]
fn erasing_geometry_and_fill_by_hand() {
    // target = 0.21 · 256 · 128 = 6881.28; aspect 2: sqrt(13762.56) = 117.31, sqrt(3440.64) = 58.66.
    assert_eq!(erase_size(0.21, 2.0, 256, 128), (117, 59));
    // Python rounds halves to even: sqrt(6.25) = 2.5 → 2, sqrt(12.25) = 3.5 → 4.
    assert_eq!(erase_size(0.0625, 1.0, 10, 10), (2, 2));
    assert_eq!(erase_size(0.1225, 1.0, 10, 10), (4, 4));

    // The fill is PIXEL_MEAN written into the normalised tensor.
    let mut cfg = plain_input([4, 5]);
    cfg.pixel_mean = [0.485, 0.456, 0.406];
    cfg.pixel_std = [0.229, 0.224, 0.225];
    let t = TrainTransform::from_config(&cfg).unwrap();
    let white = RgbImage::from_pixel(5, 4, Rgb([255, 255, 255]));
    let rect = EraseRect {
        top: 1,
        left: 2,
        height: 2,
        width: 3,
    };
    let out = t.apply_with(
        &white,
        &AugmentParams {
            flip: false,
            top: 1,
            left: 1,
            erase: Some(rect),
        },
    );
    for c in 0..3 {
        let mean = cfg.pixel_mean[c] as f32;
        let white_value = (1.0 - mean) / cfg.pixel_std[c] as f32;
        for y in 0..4 {
            for x in 0..5 {
                let inside = (1..3).contains(&y) && (2..5).contains(&x);
                let want = if inside { mean } else { white_value };
                assert_eq!(out[c * 20 + y * 5 + x], want, "c{c} y{y} x{x}");
            }
        }
    }
}

/// An RNG replaying a fixed list of u64 words (then repeating the last one).
struct Scripted(Vec<u64>, usize);

impl RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        let v = self.0[self.1.min(self.0.len() - 1)];
        self.1 += 1;
        v
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// The u64 word rand turns into the f64 `u` (53-bit mantissa construction).
fn word_for(u: f64) -> u64 {
    ((u * (1u64 << 53) as f64) as u64) << 11
}

#[test]
fn random_erasing_draws_follow_the_reference_formula() {
    let erasing = RandomErasing::new(0.5, [0.485, 0.456, 0.406]);
    // u = 0.7 >= p: no erasing, nothing else drawn.
    assert_eq!(
        erasing.draw(256, 128, &mut Scripted(vec![word_for(0.7)], 0)),
        None
    );
    // u = 0.1 < p; attempt 1: area u = 1.0 - eps (0.4 of the image), aspect u → 1/0.3 = 3.33:
    // h = round(sqrt(0.4·100·3.33)) = 12 ≥ 10 rejected. Attempt 2: area u = 0.5 → 0.21,
    // aspect u = 0.5 → 0.3 + 1.5167 = 1.8167: target 21, h = round(6.18) = 6,
    // w = round(3.40) = 3; then top and left drawn from 0..=4 and 0..=7.
    let mut rng = Scripted(
        vec![
            word_for(0.1),
            word_for(0.999_999),
            word_for(0.999_999),
            word_for(0.5),
            word_for(0.5),
            0,
            u64::MAX,
        ],
        0,
    );
    let rect = erasing.draw(10, 10, &mut rng).unwrap();
    assert_eq!((rect.height, rect.width), (6, 3));
    assert_eq!(rect.top, 0, "a zero word gives the range start");
    assert_eq!(
        rect.left, 7,
        "the largest word gives the inclusive range end"
    );

    // With a real generator: every rectangle fits, and the draws equal an independent replay.
    let mut rng = StdRng::seed_from_u64(42);
    let mut replay = StdRng::seed_from_u64(42);
    let always = RandomErasing::new(1.0, [0.0; 3]);
    for _ in 0..200 {
        let got = always.draw(16, 8, &mut rng);
        let _skip: f64 = replay.random();
        let mut want = None;
        for _ in 0..100 {
            let area = 0.02 + 0.38 * replay.random::<f64>();
            let aspect = 0.3 + (1.0 / 0.3 - 0.3) * replay.random::<f64>();
            let (h, w) = erase_size(area, aspect, 16, 8);
            if w < 8 && h < 16 {
                let top = replay.random_range(0..=16 - h);
                let left = replay.random_range(0..=8 - w);
                want = Some(EraseRect {
                    top,
                    left,
                    height: h,
                    width: w,
                });
                break;
            }
        }
        assert_eq!(got, want);
        if let Some(r) = got {
            assert!(r.top + r.height <= 16 && r.left + r.width <= 8);
        }
    }
}

#[test]
fn train_draws_cover_inclusive_ranges_and_respect_probabilities() {
    let mut cfg = plain_input([8, 6]);
    cfg.padding = 3;
    cfg.prob = 0.5;
    cfg.re_prob = 0.5;
    let t = TrainTransform::from_config(&cfg).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let (mut flips, mut erased) = (0, 0);
    let (mut tops, mut lefts) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..2000 {
        let p = t.draw(&mut rng);
        flips += usize::from(p.flip);
        erased += usize::from(p.erase.is_some());
        tops.insert(p.top);
        lefts.insert(p.left);
    }
    assert_eq!(tops, (0..=6).collect(), "top uniform over 0..=2·padding");
    assert_eq!(lefts, (0..=6).collect());
    assert!((850..1150).contains(&flips), "{flips}");
    assert!((700..1150).contains(&erased), "{erased}");

    cfg.prob = 0.0;
    cfg.re_prob = 0.0;
    let never = TrainTransform::from_config(&cfg).unwrap();
    cfg.prob = 1.0;
    let always_flip = TrainTransform::from_config(&cfg).unwrap();
    for _ in 0..100 {
        let p = never.draw(&mut rng);
        assert!(!p.flip && p.erase.is_none());
        assert!(always_flip.draw(&mut rng).flip);
    }

    // apply = apply_with(draw) on the same stream.
    let img = RgbImage::from_fn(13, 9, |x, y| Rgb([(x * 19) as u8, (y * 27) as u8, 7]));
    let a = t.apply(&img, &mut StdRng::seed_from_u64(5));
    let params = t.draw(&mut StdRng::seed_from_u64(5));
    assert_eq!(a, t.apply_with(&img, &params));
    assert_eq!(a.len(), t.output_len());

    // Degenerate settings are errors naming the key.
    let msg = err_string(TrainTransform::from_config(&plain_input([0, 8])));
    assert!(msg.contains("INPUT.SIZE_TRAIN"), "{msg}");
    let mut bad = plain_input([8, 8]);
    bad.pixel_std = [1.0, 0.0, 1.0];
    assert!(err_string(TestTransform::from_config(&bad)).contains("INPUT.PIXEL_STD"));
}

// ---------------------------------------------------------------------------------------------
// Loaders

#[test]
fn eval_loader_keeps_query_then_gallery_order() {
    let spec = SyntheticSpec::default();
    let (_dir, ds) = synthetic(&spec);
    let cfg = InputConfig {
        size_test: [24, 12],
        ..InputConfig::default()
    };
    let transform = TestTransform::from_config(&cfg).unwrap();
    let options = LoaderOptions {
        num_workers: 3,
        prefetch: 1,
    };
    let loader = EvalLoader::for_dataset(&ds, transform.clone(), 4, &options).unwrap();
    let val = ds.val();
    assert_eq!(loader.num_batches(), val.len().div_ceil(4));
    let batches: Vec<EvalBatch> = loader.collect::<anyhow::Result<_>>().unwrap();
    let mut row = 0;
    for (b, batch) in batches.iter().enumerate() {
        let expected_n = if b + 1 == batches.len() {
            val.len() - 4 * b
        } else {
            4
        };
        assert_eq!(batch.n, expected_n);
        assert_eq!((batch.height, batch.width), (24, 12));
        assert_eq!(batch.images.len(), batch.n * 3 * 24 * 12);
        for i in 0..batch.n {
            let s = &val[row];
            assert_eq!(batch.pids[i], s.pid);
            assert_eq!(batch.camids[i], s.camid);
            let want = transform.apply(&load_rgb(&s.path).unwrap());
            assert_eq!(
                &batch.images[i * want.len()..(i + 1) * want.len()],
                &want[..]
            );
            row += 1;
        }
    }
    assert_eq!(row, val.len());
}

#[test]
fn train_loader_builds_pk_batches_with_mocks_independent_of_workers() {
    let spec = SyntheticSpec {
        train_ids: 4,
        cameras: 1,
        train_per_camera: 3,
        ..SyntheticSpec::default()
    };
    let (_dir, ds) = synthetic(&spec);
    let sampler = PkSampler::new(ds.train_by_pid(), 2, 4, false, 1, 0).unwrap();
    let input = InputConfig {
        size_train: [16, 8],
        padding: 2,
        ..InputConfig::default()
    };
    let transform = TrainTransform::from_config(&input).unwrap();
    let run = |workers: usize| -> Vec<TrainBatch> {
        let options = LoaderOptions {
            num_workers: workers,
            prefetch: 2,
        };
        TrainLoader::for_epoch(&ds, &sampler, transform.clone(), 21, 2, &options)
            .unwrap()
            .collect::<anyhow::Result<_>>()
            .unwrap()
    };
    let one = run(1);
    assert_eq!(
        one,
        run(4),
        "identical batches whatever the number of workers"
    );
    let plan = sampler.epoch(21, 2);
    assert_eq!(one.len(), plan.len());
    assert_eq!(one.len(), 2, "4 identities × 1 occurrence / P = 2");
    let len = 3 * 16 * 8;
    for (batch, items) in one.iter().zip(&plan) {
        assert_eq!(batch.n, 8);
        assert_eq!((batch.height, batch.width), (16, 8));
        for (i, item) in items.iter().enumerate() {
            assert_eq!(batch.labels[i], item.label as i64);
            assert_eq!(batch.is_real[i], item.index.is_some());
            let image = &batch.images[i * len..(i + 1) * len];
            match item.index {
                None => {
                    assert!(image.iter().all(|&v| v == 0.0), "mock images are all zeros");
                    assert_eq!(batch.camids[i], batch.camids[i - 1]);
                }
                Some(idx) => {
                    assert_eq!(batch.camids[i], ds.train[idx].camid);
                    assert!(image.iter().any(|&v| v != 0.0));
                }
            }
        }
        // Each identity has 3 images: 3 real + 1 mock per block.
        assert_eq!(batch.is_real.iter().filter(|r| !**r).count(), 2);
    }
    // A different epoch augments differently.
    let other: Vec<TrainBatch> =
        TrainLoader::for_epoch(&ds, &sampler, transform, 21, 3, &LoaderOptions::default())
            .unwrap()
            .collect::<anyhow::Result<_>>()
            .unwrap();
    assert_ne!(one, other);
}

#[test]
fn loaders_report_a_corrupt_jpeg_by_name() {
    let spec = SyntheticSpec::default();
    let (dir, ds) = synthetic(&spec);
    let victim = ds.gallery[1].path.clone();
    let mut f = fs::File::create(&victim).unwrap();
    f.write_all(b"\xff\xd8\xff\xe0 this is not really a JPEG")
        .unwrap();
    drop(f);
    let transform = TestTransform::from_config(&InputConfig::default()).unwrap();
    let mut loader = EvalLoader::for_dataset(&ds, transform, 2, &LoaderOptions::default()).unwrap();
    let mut results = Vec::new();
    for r in loader.by_ref() {
        results.push(r);
    }
    let failed = results.iter().position(|r| r.is_err()).expect("an error");
    assert_eq!(failed, results.len() - 1, "the loader ends after the error");
    let msg = format!("{:#}", results.pop().unwrap().unwrap_err());
    assert!(msg.contains(&file_name(&victim)), "{msg}");
    assert!(loader.next().is_none());

    // Same through the training loader, e.g. a truncated file in the train split.
    let victim = ds.train[0].path.clone();
    let bytes = fs::read(&victim).unwrap();
    fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let sampler = PkSampler::new(ds.train_by_pid(), 4, 4, true, 1, 0).unwrap();
    let input = InputConfig {
        size_train: [16, 8],
        ..InputConfig::default()
    };
    let loader = TrainLoader::for_epoch(
        &ds,
        &sampler,
        TrainTransform::from_config(&input).unwrap(),
        0,
        0,
        &LoaderOptions::default(),
    )
    .unwrap()
    .into_kiln();
    assert_eq!(loader.len, Some(1));
    let results: Vec<_> = loader.batches.collect();
    assert_eq!(results.len(), 1);
    let msg = format!("{:#}", results.into_iter().next().unwrap().unwrap_err());
    assert!(msg.contains(&file_name(&victim)), "{msg}");
    drop(dir);
}

#[test]
fn loaders_are_owned_send_iterators() {
    fn owned_send_iterator<T, I>()
    where
        I: Iterator<Item = anyhow::Result<T>> + Send + 'static,
    {
    }
    owned_send_iterator::<TrainBatch, TrainLoader>();
    owned_send_iterator::<EvalBatch, EvalLoader>();
}

#[test]
fn dropping_a_loader_early_stops_it() {
    let (_dir, ds) = synthetic(&SyntheticSpec::default());
    let transform = TestTransform::from_config(&InputConfig::default()).unwrap();
    let options = LoaderOptions {
        num_workers: 1,
        prefetch: 1,
    };
    let mut loader = EvalLoader::for_dataset(&ds, transform, 1, &options).unwrap();
    assert!(loader.next().unwrap().is_ok());
    drop(loader); // must not hang
    let shared: Arc<[Sample]> = ds.train.clone().into();
    let t = TrainTransform::from_config(&InputConfig::default()).unwrap();
    let bad = vec![vec![PkItem {
        index: Some(shared.len()),
        label: 0,
    }]];
    assert!(TrainLoader::new(shared, bad, t, 0, 0, &options).is_err());
}

// ---------------------------------------------------------------------------------------------
// Image listing (inference tools)

#[test]
fn list_images_direct_children_or_class_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = RgbImage::from_pixel(4, 4, Rgb([1, 2, 3]));
    write_jpeg(&root.join("b.jpg"), &img);
    img.save(root.join("A.PNG")).unwrap();
    fs::write(root.join("notes.txt"), "x").unwrap();
    fs::write(root.join(".hidden.jpg"), "x").unwrap();
    write_jpeg(&root.join("cats/z.jpg"), &img);
    write_jpeg(&root.join("cats/deep/a.jpeg"), &img);
    fs::create_dir_all(root.join("ants")).unwrap();
    fs::write(root.join("ants/x.webp"), b"not an image").unwrap();
    let flat = list_images(root, false).unwrap();
    let names: Vec<String> = flat.iter().map(|l| file_name(&l.path)).collect();
    assert_eq!(names, vec!["A.PNG", "b.jpg"]);
    assert!(flat.iter().all(|l| l.class.is_none()));

    let nested = list_images(root, true).unwrap();
    let got: Vec<(String, String)> = nested
        .iter()
        .map(|l| (l.class.clone().unwrap(), file_name(&l.path)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ants".to_string(), "x.webp".to_string()),
            ("cats".to_string(), "a.jpeg".to_string()),
            ("cats".to_string(), "z.jpg".to_string()),
        ]
    );
    // A single image file; errors for a missing path and an image-less directory.
    assert_eq!(list_images(&root.join("b.jpg"), false).unwrap().len(), 1);
    assert!(err_string(list_images(&root.join("missing"), false)).contains("missing"));
    fs::create_dir(root.join("empty")).unwrap();
    assert!(err_string(list_images(&root.join("empty"), false)).contains("no images"));
    // Listed but undecodable in this build: the error names the file.
    let msg = err_string(load_rgb(&root.join("ants/x.webp")));
    assert!(msg.contains("x.webp"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST: converter and the bundled set

fn write_idx(path: &Path, magic: u32, dims: &[u32], data: &[u8], gz: bool) {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gz {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).unwrap();
        bytes = enc.finish().unwrap();
    }
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn convert_fashion_mnist_applies_the_documented_rule() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pkg/usr/share/datasets/fashion-mnist");
    // 3 classes; train file: 12 images (labels cycle 0,1,2), test file: 9 images.
    // Image i is uniform grey 20·i + 5 (so the pixel value identifies the source index).
    let make = |n: usize| -> (Vec<u8>, Vec<u8>) {
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        let pixels: Vec<u8> = (0..n)
            .flat_map(|i| vec![(20 * i + 5) as u8; 4 * 4])
            .collect();
        (labels, pixels)
    };
    let (train_labels, train_pixels) = make(12);
    let (test_labels, test_pixels) = make(9);
    write_idx(
        &src.join("train-images-idx3-ubyte.gz"),
        0x803,
        &[12, 4, 4],
        &train_pixels,
        true,
    );
    write_idx(
        &src.join("train-labels-idx1-ubyte.gz"),
        0x801,
        &[12],
        &train_labels,
        true,
    );
    write_idx(
        &src.join("t10k-images-idx3-ubyte"),
        0x803,
        &[9, 4, 4],
        &test_pixels,
        false,
    );
    write_idx(
        &src.join("t10k-labels-idx1-ubyte"),
        0x801,
        &[9],
        &test_labels,
        false,
    );
    let spec = FashionSpec {
        train_per_class: 2,
        query_per_class: 1,
        gallery_from_train_per_class: 1,
        gallery_from_test_per_class: 2,
        jpeg_quality: 95,
    };
    let out = dir.path().join("out");
    let summary = convert_fashion_mnist(&dir.path().join("pkg"), &out, &spec).unwrap();
    assert_eq!(
        (
            summary.classes,
            summary.train,
            summary.query,
            summary.gallery
        ),
        (3, 6, 3, 9)
    );
    assert_eq!(summary.sources.len(), 4);
    let names = |split: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(out.join("market1501").join(split))
            .unwrap()
            .map(|e| file_name(&e.unwrap().path()))
            .collect();
        v.sort();
        v
    };
    // Class c = indices c, c+3, c+6, c+9 in each file; pid = c + 1.
    assert_eq!(
        names("bounding_box_train"),
        vec![
            "0001_c1s1_000000_00.jpg",
            "0001_c1s1_000003_00.jpg",
            "0002_c1s1_000001_00.jpg",
            "0002_c1s1_000004_00.jpg",
            "0003_c1s1_000002_00.jpg",
            "0003_c1s1_000005_00.jpg",
        ]
    );
    assert_eq!(
        names("query"),
        vec![
            "0001_c2s1_000000_00.jpg",
            "0002_c2s1_000001_00.jpg",
            "0003_c2s1_000002_00.jpg"
        ]
    );
    assert_eq!(
        names("bounding_box_test"),
        vec![
            "0001_c1s1_000006_00.jpg",
            "0001_c2s1_000003_00.jpg",
            "0001_c2s1_000006_00.jpg",
            "0002_c1s1_000007_00.jpg",
            "0002_c2s1_000004_00.jpg",
            "0002_c2s1_000007_00.jpg",
            "0003_c1s1_000008_00.jpg",
            "0003_c2s1_000005_00.jpg",
            "0003_c2s1_000008_00.jpg",
        ]
    );
    // Pixels survive (uniform grey encodes almost exactly), as 3-channel images.
    let img = load_rgb(&out.join("market1501/bounding_box_train/0002_c1s1_000004_00.jpg")).unwrap();
    assert_eq!((img.width(), img.height()), (4, 4));
    assert!(
        img.pixels()
            .all(|p| p.0.iter().all(|&v| (i32::from(v) - 85).abs() <= 1))
    );
    let ds = market1501(&out).unwrap();
    assert_eq!(ds.num_classes, 3);
    assert!(ds.query.iter().all(|s| s.camid == 1));

    // Re-running replaces the set; no staging directory is left behind.
    convert_fashion_mnist(&dir.path().join("pkg"), &out, &spec).unwrap();
    let entries: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .collect();
    assert_eq!(entries, vec!["market1501"]);

    // Not enough images of a class; a missing file; a wrong magic number.
    let greedy = FashionSpec {
        train_per_class: 4,
        ..spec.clone()
    };
    let msg = err_string(convert_fashion_mnist(
        &dir.path().join("pkg"),
        &dir.path().join("o2"),
        &greedy,
    ));
    assert!(
        msg.contains("class 0") && msg.contains("train-labels"),
        "{msg}"
    );
    assert!(!dir.path().join("o2/market1501").exists());
    let msg = err_string(convert_fashion_mnist(
        dir.path().join("out").as_path(),
        &dir.path().join("o3"),
        &spec,
    ));
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    write_idx(
        &src.join("t10k-labels-idx1-ubyte"),
        0x803,
        &[9],
        &test_labels,
        false,
    );
    let msg = err_string(convert_fashion_mnist(
        &dir.path().join("pkg"),
        &dir.path().join("o4"),
        &spec,
    ));
    assert!(
        msg.contains("t10k-labels-idx1-ubyte") && msg.contains("magic"),
        "{msg}"
    );
}

#[test]
fn bundled_fashion_set_loads_with_the_documented_counts() {
    let ds = market1501(&repo_root().join("datasets/fashion-mnist-reid")).unwrap();
    assert_eq!(
        (ds.train.len(), ds.query.len(), ds.gallery.len()),
        (1000, 100, 400)
    );
    assert_eq!(ds.num_classes, 10);
    assert!(ds.train_by_pid().iter().all(|v| v.len() == 100));
    assert!(ds.train.iter().all(|s| s.camid == 0));
    assert!(ds.query.iter().all(|s| s.camid == 1));
    let mut per_pid: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &ds.query {
        *per_pid.entry(s.pid).or_default() += 1;
    }
    assert_eq!(per_pid, (1..=10).map(|p| (p, 10)).collect());
    let mut gallery: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for s in &ds.gallery {
        *gallery.entry((s.pid, s.camid)).or_default() += 1;
    }
    assert_eq!(
        gallery,
        (1..=10)
            .flat_map(|p| [((p, 0), 20), ((p, 1), 20)])
            .collect()
    );
    // The first image of both Fashion-MNIST files is an ankle boot (class 9, pid 10).
    let first = ds
        .train
        .iter()
        .find(|s| file_name(&s.path) == "0010_c1s1_000000_00.jpg")
        .unwrap();
    assert_eq!(first.pid, 9, "relabelled pid 10 → label 9");
    assert!(
        ds.query
            .iter()
            .any(|s| file_name(&s.path) == "0010_c2s1_000000_00.jpg")
    );
    let img = load_rgb(&first.path).unwrap();
    assert_eq!((img.width(), img.height()), (28, 28));
    // A P×K plan over it works with the quickstart-sized batch.
    let sampler = PkSampler::new(ds.train_by_pid(), 8, 4, false, 1, 0).unwrap();
    let plan = sampler.epoch(0, 0);
    // 25 occurrences × 10 classes, consumed in rounds of 8 distinct classes until fewer than 8
    // classes have occurrences left.
    assert!((25..=250 / 8).contains(&plan.len()), "{}", plan.len());
    assert!(plan.iter().all(|b| b.len() == 32));
}

// ---------------------------------------------------------------------------------------------
// P×K sampler: the reference's semantics over many epochs

/// `count` must lie within 5 binomial standard deviations of `trials · p`.
fn assert_binomial(what: &str, count: usize, trials: usize, p: f64) {
    let mean = trials as f64 * p;
    let sd = (trials as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - mean).abs() <= 5.0 * sd,
        "{what}: {count} of {trials}, expected {mean:.1} ± 5·{sd:.1}"
    );
}

/// The identities of each P-block of a plan, in order.
fn block_labels(batches: &[Vec<PkItem>], k: usize) -> Vec<usize> {
    batches
        .iter()
        .flat_map(|b| b.chunks(k).map(|c| c[0].label))
        .collect()
}

#[test]
fn sampler_leaves_out_a_uniformly_drawn_remainder_of_identities() {
    // The reference serves every identity each epoch except the fewer than P·world_size whose
    // occurrences are left when a full round can no longer be drawn, and which those are is
    // uniform: `random.sample` over the available pids. 10 identities of one occurrence (4
    // images) with P = 3: 3 rounds serve 9, exactly one is left out per epoch, each with
    // probability 1/10.
    let by_pid: Vec<Vec<usize>> = (0..10).map(|l| (l * 4..l * 4 + 4).collect()).collect();
    let sampler = PkSampler::new(by_pid, 3, 4, false, 1, 0).unwrap();
    let epochs = 3000;
    let mut left_out = [0usize; 10];
    for epoch in 0..epochs {
        let served = block_labels(&sampler.epoch(21, epoch), 4);
        assert_eq!(served.len(), 9, "epoch {epoch}");
        let missing: Vec<usize> = (0..10).filter(|l| !served.contains(l)).collect();
        assert_eq!(missing.len(), 1, "epoch {epoch}: {served:?}");
        left_out[missing[0]] += 1;
    }
    for (label, &n) in left_out.iter().enumerate() {
        assert_binomial(&format!("identity {label} left out"), n, epochs, 0.1);
    }
}

#[test]
fn sampler_draws_identities_uniformly_whatever_their_image_count() {
    // Each round draws uniformly among the identities with occurrences left, not in proportion
    // to their occurrences: in the first batch of an epoch every identity appears with
    // probability P/N, whether it has 2 images (1 occurrence) or 12 (3 occurrences).
    let sizes = [2, 12, 2, 12, 2, 12, 2, 12];
    let mut by_pid = Vec::new();
    let mut next = 0;
    for n in sizes {
        by_pid.push((next..next + n).collect::<Vec<usize>>());
        next += n;
    }
    let (p, k) = (2, 4);
    let sampler = PkSampler::new(by_pid, p, k, false, 1, 0).unwrap();
    let epochs = 3000;
    let mut first_batch = [0usize; 8];
    let mut first_slot = [0usize; 8];
    for epoch in 0..epochs {
        let plan = sampler.epoch(4, epoch);
        let labels = block_labels(&plan[..1], k);
        assert_eq!(labels.len(), p);
        for &l in &labels {
            first_batch[l] += 1;
        }
        first_slot[labels[0]] += 1;
    }
    for label in 0..8 {
        let what = format!("identity {label} ({} images)", sizes[label]);
        assert_binomial(
            &format!("{what} in the first batch"),
            first_batch[label],
            epochs,
            0.25,
        );
        // The order within a batch is random too (the reference keeps `random.sample`'s order).
        assert_binomial(
            &format!("{what} first in it"),
            first_slot[label],
            epochs,
            0.125,
        );
    }
}

#[test]
fn sampler_reshuffles_the_instance_chunks_of_every_identity_each_epoch() {
    // Each epoch shuffles every identity's images anew (the reference shuffles the remaining
    // list before each pop): the split of an 8-image identity into two K = 4 chunks, and the
    // order inside a chunk, change from epoch to epoch, uniformly: two given images share a
    // chunk with probability 3/7.
    let by_pid: Vec<Vec<usize>> = (0..3).map(|l| (l * 8..l * 8 + 8).collect()).collect();
    let sampler = PkSampler::new(by_pid.clone(), 1, 4, false, 1, 0).unwrap();
    // The chunks of identity 0 in serving order (P = 1: one chunk per batch).
    let chunks_of = |seed: u64, epoch: usize| -> Vec<Vec<usize>> {
        sampler
            .epoch(seed, epoch)
            .iter()
            .filter(|b| b[0].label == 0)
            .map(|b| b.iter().map(|it| it.index.unwrap()).collect())
            .collect()
    };
    // Same seed and epoch: the same chunks; another epoch or seed: others.
    assert_eq!(chunks_of(8, 3), chunks_of(8, 3));
    assert_eq!(
        chunks_of(8, 3),
        PkSampler::new(by_pid.clone(), 1, 4, false, 1, 0)
            .unwrap()
            .epoch(8, 3)
            .iter()
            .filter(|b| b[0].label == 0)
            .map(|b| b.iter().map(|it| it.index.unwrap()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    let epochs = 2000;
    let mut partitions = BTreeSet::new();
    let mut orders = BTreeSet::new();
    let mut together = [[0usize; 8]; 8];
    let mut changed = 0;
    let mut previous: Option<Vec<Vec<usize>>> = None;
    for epoch in 0..epochs {
        let chunks = chunks_of(8, epoch);
        assert_eq!(chunks.len(), 2);
        let mut split: Vec<BTreeSet<usize>> =
            chunks.iter().map(|c| c.iter().copied().collect()).collect();
        assert_eq!(split[0].len() + split[1].len(), 8, "{chunks:?}");
        split.sort();
        partitions.insert(split);
        orders.insert(chunks[0].clone());
        for c in &chunks {
            for &a in c {
                for &b in c {
                    together[a][b] += 1;
                }
            }
        }
        changed += usize::from(previous.as_ref().is_some_and(|p| *p != chunks));
        previous = Some(chunks);
    }
    // 35 ways to split 8 images into two sets of 4; all of them turn up.
    assert_eq!(partitions.len(), 35);
    assert!(orders.len() > 1000, "{} first-chunk orders", orders.len());
    assert!(
        changed > epochs - 10,
        "only {changed} epochs changed the chunks"
    );
    for (a, row) in together.iter().enumerate() {
        for (b, &count) in row.iter().enumerate().skip(a + 1) {
            assert_binomial(
                &format!("images {a} and {b} in one chunk"),
                count,
                epochs,
                3.0 / 7.0,
            );
        }
    }
    assert_ne!(chunks_of(8, 3), chunks_of(9, 3));
}

#[test]
fn sampler_drops_the_single_leftover_image_when_n_mod_k_is_1() {
    // n mod K == 1: the identity gets ceil((n − 1)/K) full chunks and its one remaining image
    // sits this epoch out (the reference pops K at a time from its shuffled list and never
    // serves a lone last image): no mock and no resampled padding, with either padding mode,
    // and the image left out is drawn uniformly anew each epoch.
    for k in [2usize, 3, 4] {
        for n in [k + 1, 2 * k + 1, 3 * k + 1] {
            let images: Vec<usize> = (0..n).collect();
            // A second identity of K images so that P = 1 batches have company.
            let by_pid = vec![images.clone(), (n..n + k).collect()];
            for resampling in [false, true] {
                let sampler = PkSampler::new(by_pid.clone(), 1, k, resampling, 1, 0).unwrap();
                let epochs = 1000;
                let mut left_out = vec![0usize; n];
                for epoch in 0..epochs {
                    let plan = sampler.epoch(2, epoch);
                    let chunks: Vec<&Vec<PkItem>> =
                        plan.iter().filter(|b| b[0].label == 0).collect();
                    assert_eq!(chunks.len(), (n - 1) / k, "K {k}, n {n}");
                    let served: BTreeSet<usize> = chunks
                        .iter()
                        .flat_map(|c| c.iter())
                        .map(|it| it.index.expect("no mock for a full chunk"))
                        .collect();
                    assert_eq!(
                        served.len(),
                        n - 1,
                        "K {k}, n {n}, epoch {epoch}: every chunk full and distinct: {chunks:?}"
                    );
                    let missing = images.iter().find(|i| !served.contains(i)).unwrap();
                    left_out[*missing] += 1;
                }
                for (i, &c) in left_out.iter().enumerate() {
                    assert_binomial(
                        &format!("K {k}, n {n}: image {i} left out"),
                        c,
                        epochs,
                        1.0 / n as f64,
                    );
                }
            }
        }
    }
    // n mod K == 2..K−1 is padded instead (n = 6, K = 4: a full chunk and a chunk of 2 plus 2
    // mocks), and a single image (n mod K == 1 with n = 1) is no identity at all.
    let sampler = PkSampler::new(vec![(0..6).collect(), vec![6]], 1, 4, false, 1, 0).unwrap();
    let plan = sampler.epoch(0, 0);
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().flatten().all(|it| it.label == 0));
    let mocks = plan
        .iter()
        .flatten()
        .filter(|it| it.index.is_none())
        .count();
    assert_eq!(mocks, 2);
}
