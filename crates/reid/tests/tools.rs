//! The inference tools (`reid::tools`): create-embeddings, get-similar, visrank and evaluate,
//! run end to end on a tiny resnet18 checkpoint and 32×16 synthetic images, their `.npy` files
//! read back by an independent parser, numbers checked against `embed_batches`, brute-force
//! distances and `EvalReport::compute`, pictures checked pixel by pixel, and the error paths.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Tensor, TensorData};
use image::{Rgb, RgbImage};
use kiln::DeviceKind;
use kiln::backend::Flex;
use kiln::checkpoint::{CheckpointMeta, record_to_bytes, write_checkpoint};
use ndarray::{Array1, Array2};
use ndarray_npy::{read_npy, write_npy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reid::cli::Common;
use reid::data::{
    EvalLoader, LoaderOptions, Sample, SyntheticSpec, TestTransform, list_images, load_dataset,
    write_synthetic_market1501,
};
use reid::eval::{EmbeddingSet, EvalReport, FeatureMatrix, RetrievalOptions};
use reid::infer::{CheckpointTask, embed_batches, load_model};
use reid::loss::DistanceFunc;
use reid::model::ReidModelConfig;
use reid::tools::{self, canvas_size, tile_x};

const H: usize = 32;
const W: usize = 16;

/// A checkpoint and a synthetic Market1501 tree shared by the tests (read-only).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// A fresh model (its BNNeck: mean 0, variance 1, γ 1, β 0).
    checkpoint: PathBuf,
    /// The same weights with a BNNeck far from the identity ([`bn_mean`], [`bn_var`],
    /// [`bn_gamma`], [`bn_beta`]), where pre-BN features cannot pass for post-BN ones.
    bn_checkpoint: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        write_synthetic_market1501(&root, &SyntheticSpec::default(), 3).unwrap();
        let device = Default::default();
        let config = ReidModelConfig::new("resnet18", 1, 512, 4);
        let model = config.init::<Flex>(&device).unwrap();
        let meta = CheckpointMeta {
            epochs_completed: 1,
            global_step: 10,
            seed: 0,
            metrics: BTreeMap::new(),
            callbacks: Default::default(),
            task: serde_json::to_value(CheckpointTask {
                model: config,
                size_train: [H, W],
                step: "ctl".into(),
            })
            .unwrap(),
            sections: Vec::new(),
        };
        let checkpoint = dir.path().join("model.ckpt");
        let bytes = record_to_bytes::<Flex, _>(model.clone().into_record()).unwrap();
        write_checkpoint(&checkpoint, meta.clone(), vec![("model", bytes)]).unwrap();

        let mut model = model;
        let vector = |f: fn(usize) -> f64| {
            let v: Vec<f32> = (0..512).map(|j| f(j) as f32).collect();
            Tensor::<Flex, 1>::from_data(TensorData::new(v, [512]), &device)
        };
        model.bn.running_mean = RunningState::new(vector(bn_mean));
        model.bn.running_var = RunningState::new(vector(bn_var));
        model.bn.weight = Param::from_tensor(vector(bn_gamma));
        model.bn.bias = Param::from_tensor(vector(bn_beta));
        let bn_checkpoint = dir.path().join("model-bn.ckpt");
        let bytes = record_to_bytes::<Flex, _>(model.into_record()).unwrap();
        write_checkpoint(&bn_checkpoint, meta, vec![("model", bytes)]).unwrap();
        Fixture {
            _dir: dir,
            root,
            checkpoint,
            bn_checkpoint,
        }
    })
}

/// The `bn_checkpoint` BNNeck: running mean, running variance, γ and β of feature `j`.
fn bn_mean(j: usize) -> f64 {
    0.3 * (j as f64 * 0.37).sin()
}
fn bn_var(j: usize) -> f64 {
    0.25 + 0.3 * (j % 7) as f64
}
fn bn_gamma(j: usize) -> f64 {
    1.5 + (j as f64 * 0.11).cos()
}
fn bn_beta(j: usize) -> f64 {
    0.4 * (j as f64 * 0.23).cos()
}

/// Independent post-BN embeddings of `paths`: the checkpoint's pre-BN backbone features,
/// then eval-mode BatchNorm1d `(x − μ)/√(σ² + 1e-5)·γ + β` in f64 with the fixture's
/// BNNeck values (`bn_checkpoint`). Also returns the pre-BN features.
fn independent_post_bn(paths: &[PathBuf]) -> (Vec<f64>, Vec<f64>) {
    let device = Default::default();
    let loaded = load_model::<Flex>(&fixture().bn_checkpoint, None, &device).unwrap();
    let cfg =
        reid::config::ReidConfig::from_args(&common(Path::new("."), Path::new("."), &[])).unwrap();
    let samples: Vec<Sample> = paths
        .iter()
        .map(|p| Sample {
            path: p.clone(),
            pid: 0,
            camid: 0,
        })
        .collect();
    let loader = EvalLoader::new(
        Arc::from(samples),
        TestTransform::from_config(&cfg.input).unwrap(),
        4,
        &LoaderOptions {
            num_workers: 1,
            prefetch: 1,
        },
    )
    .unwrap();
    let mut pre = Vec::new();
    for batch in loader {
        let batch = batch.unwrap();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(batch.images, [batch.n, 3, batch.height, batch.width]),
            &device,
        );
        let f: Vec<f32> = loaded
            .model
            .forward_features(x)
            .into_data()
            .to_vec()
            .unwrap();
        pre.extend(f.into_iter().map(f64::from));
    }
    let post = pre
        .iter()
        .enumerate()
        .map(|(k, &x)| {
            let j = k % 512;
            (x - bn_mean(j)) / (bn_var(j) + 1e-5).sqrt() * bn_gamma(j) + bn_beta(j)
        })
        .collect();
    (post, pre)
}

fn gallery_dir() -> PathBuf {
    fixture().root.join("market1501/bounding_box_test")
}

fn query_dir() -> PathBuf {
    fixture().root.join("market1501/query")
}

/// `--config-file`-less configuration: the checkpoint, 32×16 test images, batches of 4.
fn common(root: &Path, out: &Path, extra: &[(&str, &str)]) -> Common {
    let mut opts: Vec<String> = vec![
        "MODEL.PRETRAIN_PATH".into(),
        fixture().checkpoint.display().to_string(),
        "DATASETS.ROOT_DIR".into(),
        root.display().to_string(),
        "OUTPUT_DIR".into(),
        out.display().to_string(),
        "INPUT.SIZE_TEST".into(),
        "[32, 16]".into(),
        "TEST.IMS_PER_BATCH".into(),
        "4".into(),
        "DATALOADER.NUM_WORKERS".into(),
        "1".into(),
    ];
    for (k, v) in extra {
        opts.push(k.to_string());
        opts.push(v.to_string());
    }
    Common {
        config_file: None,
        opts,
    }
}

fn index_args() -> tools::IndexBuildArgs {
    tools::IndexBuildArgs {
        index_storage: reid::search::Quantization::F32,
        connectivity: 16,
        expansion_add: 64,
        expansion_search: 64,
    }
}

fn create(root: &Path, out: &Path, subfolders: bool, extra: &[(&str, &str)]) -> anyhow::Result<()> {
    tools::create_embeddings(
        tools::CreateEmbeddingsArgs {
            images_in_subfolders: subfolders,
            append: false,
            build_index: false,
            normalize_features: false,
            index: index_args(),
            common: common(root, out, extra),
        },
        DeviceKind::Cpu,
        false,
    )
}

/// Reference embeddings: the checkpoint loaded independently, `embed_batches` over `paths`.
fn reference_embeddings(paths: &[PathBuf]) -> FeatureMatrix {
    reference_embeddings_of(
        paths
            .iter()
            .map(|p| Sample {
                path: p.clone(),
                pid: 0,
                camid: 0,
            })
            .collect(),
    )
}

fn reference_embeddings_of(samples: Vec<Sample>) -> FeatureMatrix {
    reference_embeddings_from(&fixture().checkpoint, samples)
}

fn reference_embeddings_from(checkpoint: &Path, samples: Vec<Sample>) -> FeatureMatrix {
    let device = Default::default();
    let loaded = load_model::<Flex>(checkpoint, None, &device).unwrap();
    let cfg =
        reid::config::ReidConfig::from_args(&common(Path::new("."), Path::new("."), &[])).unwrap();
    let transform = TestTransform::from_config(&cfg.input).unwrap();
    let loader = EvalLoader::new(
        Arc::from(samples),
        transform,
        4,
        &LoaderOptions {
            num_workers: 1,
            prefetch: 1,
        },
    )
    .unwrap();
    embed_batches(&loaded.model, loader, None, false, &device)
        .unwrap()
        .features
}

/// A `.npy` unicode array parsed by hand: checks the header (magic, version 1.0, 64-byte
/// alignment, `'<U{n}'`, shape) and decodes the UTF-32LE payload.
fn read_unicode_npy(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    assert_eq!(&bytes[6..8], &[1, 0], "format version 1.0");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data_start = 10 + header_len;
    assert_eq!(data_start % 64, 0, "data is 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..data_start]).unwrap();
    assert!(header.ends_with('\n'), "{header:?}");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap();
    assert!(descr.starts_with("<U"), "{header}");
    let width: usize = descr[2..].parse().unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let n: usize = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let data = &bytes[data_start..];
    assert_eq!(data.len(), n * width * 4, "payload size");
    let strings: Vec<String> = data
        .chunks(width * 4)
        .map(|item| {
            item.chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .take_while(|&c| c != 0)
                .map(|c| char::from_u32(c).unwrap())
                .collect()
        })
        .collect();
    let longest = strings.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    assert_eq!(width, longest.max(1), "width is the longest string");
    strings
}

fn matrix(m: &Array2<f32>) -> FeatureMatrix {
    FeatureMatrix::new(m.iter().copied().collect(), m.ncols()).unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn jpg_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    paths
}

// ---------------------------------------------------------------------------------------------
// create-embeddings

#[test]
fn create_embeddings_writes_post_bn_embeddings_and_unicode_paths() {
    let out = tempfile::tempdir().unwrap();
    let checkpoint = fixture().bn_checkpoint.display().to_string();
    create(
        &gallery_dir(),
        out.path(),
        false,
        &[("MODEL.PRETRAIN_PATH", &checkpoint)],
    )
    .unwrap();
    assert_eq!(file_names(out.path()), ["embeddings.npy", "paths.npy"]);

    let expected_paths = jpg_paths(&gallery_dir());
    assert_eq!(
        expected_paths.len(),
        SyntheticSpec::default().num_gallery() + 1
    ); // + junk
    let paths = read_unicode_npy(&out.path().join("paths.npy"));
    let expected: Vec<String> = expected_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(paths, expected);

    let emb: Array2<f32> = read_npy(out.path().join("embeddings.npy")).unwrap();
    assert_eq!(emb.dim(), (expected_paths.len(), 512));
    // The numbers, computed independently: backbone features through the checkpoint's
    // BNNeck (running statistics, γ and β) in f64.
    let (want, pre) = independent_post_bn(&expected_paths);
    assert_eq!(want.len(), emb.len());
    let moved = want
        .iter()
        .zip(&pre)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 0.1, "the BNNeck must change the features ({moved})");
    for (k, (&got, &want)) in emb.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= 1e-4 * want.abs().max(1.0),
            "image {}, feature {}: {got} vs post-BN {want} (pre-BN {})",
            k / 512,
            k % 512,
            pre[k]
        );
    }
    let samples = expected_paths
        .iter()
        .map(|p| Sample {
            path: p.clone(),
            pid: 0,
            camid: 0,
        })
        .collect();
    let reference = reference_embeddings_from(&fixture().bn_checkpoint, samples);
    assert_eq!(
        emb.as_slice().unwrap(),
        reference.as_slice(),
        "bit-identical to embed_batches"
    );
    // Not normalised: rows have different norms.
    let norms: Vec<f32> = emb.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
    assert!(norms.iter().any(|n| (n - 1.0).abs() > 1e-3), "{norms:?}");
}

#[test]
fn create_embeddings_of_a_single_file() {
    let out = tempfile::tempdir().unwrap();
    let image = jpg_paths(&query_dir())[0].clone();
    create(&image, out.path(), false, &[]).unwrap();
    let emb: Array2<f32> = read_npy(out.path().join("embeddings.npy")).unwrap();
    assert_eq!(emb.dim(), (1, 512));
    assert_eq!(
        read_unicode_npy(&out.path().join("paths.npy")),
        [image.display().to_string()]
    );
    let reference = reference_embeddings(std::slice::from_ref(&image));
    assert_eq!(emb.as_slice().unwrap(), reference.as_slice());
}

/// `classes/<name>/...` folders holding copies of the gallery images.
fn class_tree(dir: &Path) -> (PathBuf, Vec<(String, Vec<PathBuf>)>) {
    let root = dir.join("classes");
    let gallery = jpg_paths(&gallery_dir());
    let groups = [
        ("zeta", &gallery[0..3]),
        ("alpha", &gallery[3..5]),
        ("mid", &gallery[5..9]),
    ];
    let mut out = Vec::new();
    for (name, files) in groups {
        let class_dir = root.join(name);
        fs::create_dir_all(&class_dir).unwrap();
        let mut copies = Vec::new();
        for f in files {
            let to = class_dir.join(f.file_name().unwrap());
            fs::copy(f, &to).unwrap();
            copies.push(to);
        }
        out.push((name.to_string(), copies));
    }
    // ImageFolder order: classes sorted by name.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (root, out)
}

#[test]
fn create_embeddings_centroids_are_plain_means_per_parent_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, classes) = class_tree(tmp.path());
    let out = tmp.path().join("out");
    create(&root, &out, true, &[("MODEL.USE_CENTROIDS", "True")]).unwrap();
    let labels = read_unicode_npy(&out.join("paths.npy"));
    assert_eq!(labels, ["alpha", "mid", "zeta"]);
    let emb: Array2<f32> = read_npy(out.join("embeddings.npy")).unwrap();
    assert_eq!(emb.dim(), (3, 512));
    for (row, (_, files)) in classes.iter().enumerate() {
        let members = reference_embeddings(files);
        for d in 0..512 {
            let mean: f64 = (0..members.rows())
                .map(|i| f64::from(members.row(i)[d]))
                .sum::<f64>()
                / members.rows() as f64;
            let got = f64::from(emb[[row, d]]);
            assert!(
                (got - mean).abs() <= 1e-5 * (1.0 + mean.abs()),
                "class {row} dim {d}: {got} vs {mean}"
            );
        }
    }

    // Without centroids, the same tree gives one row per image, in ImageFolder order.
    let out2 = tmp.path().join("out2");
    create(&root, &out2, true, &[]).unwrap();
    let paths = read_unicode_npy(&out2.join("paths.npy"));
    let expected: Vec<String> = classes
        .iter()
        .flat_map(|(_, files)| {
            let mut f = files.clone();
            f.sort();
            f
        })
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(paths, expected);
}

#[test]
fn mean_by_label_keeps_first_appearance_order() {
    let features = FeatureMatrix::new(
        vec![1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0, 5.0, 9.0],
        2,
    )
    .unwrap();
    let labels: Vec<String> = ["b", "a", "b", "a", "c"].map(String::from).to_vec();
    let (means, order) = tools::mean_by_label(&features, &labels).unwrap();
    assert_eq!(order, ["b", "a", "c"]);
    assert_eq!(means.as_slice(), &[2.0, 3.0, 20.0, 30.0, 5.0, 9.0]);
    assert!(tools::mean_by_label(&features, &labels[..2]).is_err());
    assert_eq!(
        tools::parent_dir_label(Path::new("/x/shoes/1.jpg")).unwrap(),
        "shoes"
    );
    assert!(tools::parent_dir_label(Path::new("1.jpg")).is_err());
}

// ---------------------------------------------------------------------------------------------
// Error paths: every one leaves the output directory empty.

fn assert_error_without_output(result: anyhow::Result<()>, out: &Path, needles: &[&str]) {
    let err = format!("{:#}", result.expect_err("the command must fail"));
    for needle in needles {
        assert!(
            err.contains(needle),
            "error {err:?} should mention {needle:?}"
        );
    }
    assert!(
        file_names(out).is_empty(),
        "partial output: {:?}",
        file_names(out)
    );
}

#[test]
fn errors_name_the_problem_and_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    // MODEL.PRETRAIN_PATH missing or wrong.
    let mut args = common(&gallery_dir(), &out, &[]);
    args.opts[1] = String::new();
    let r = tools::create_embeddings(
        tools::CreateEmbeddingsArgs {
            images_in_subfolders: false,
            append: false,
            build_index: false,
            normalize_features: false,
            index: index_args(),
            common: args,
        },
        DeviceKind::Cpu,
        false,
    );
    assert_error_without_output(r, &out, &["MODEL.PRETRAIN_PATH"]);
    let r = create(
        &gallery_dir(),
        &out,
        false,
        &[("MODEL.PRETRAIN_PATH", "/nonexistent/model.ckpt")],
    );
    assert_error_without_output(r, &out, &["MODEL.PRETRAIN_PATH", "/nonexistent/model.ckpt"]);

    // An empty directory.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let r = create(&empty, &out, false, &[]);
    assert_error_without_output(r, &out, &[&empty.display().to_string(), "no images"]);

    // A corrupt image among good ones (in the last batch).
    let mixed = tmp.path().join("mixed");
    fs::create_dir_all(&mixed).unwrap();
    for p in jpg_paths(&query_dir()) {
        fs::copy(&p, mixed.join(p.file_name().unwrap())).unwrap();
    }
    let corrupt = mixed.join("zz_corrupt.jpg");
    fs::write(&corrupt, b"\xff\xd8 this is not a JPEG").unwrap();
    let r = create(&mixed, &out, false, &[]);
    assert_error_without_output(r, &out, &[&corrupt.display().to_string()]);

    // get-similar with the same corrupt query set, and with a missing gallery.
    let gallery = tmp.path().join("gallery");
    create(&gallery_dir(), &gallery, false, &[]).unwrap();
    let r = similar(&mixed, &gallery, &out, 5, false, &[]);
    assert_error_without_output(r, &out, &[&corrupt.display().to_string()]);
    let r = similar(&query_dir(), &tmp.path().join("nope"), &out, 5, false, &[]);
    assert_error_without_output(r, &out, &["--gallery-data", "nope"]);
    // A gallery whose paths.npy does not match its embeddings.
    fs::write(
        gallery.join("paths.npy"),
        tools::npy::string_array_bytes(&["only-one".to_string()]),
    )
    .unwrap();
    let r = similar(&query_dir(), &gallery, &out, 5, false, &[]);
    assert_error_without_output(r, &out, &["embeddings.npy", "paths.npy", "1 entries"]);
}

// ---------------------------------------------------------------------------------------------
// get-similar

fn similar(
    queries: &Path,
    gallery: &Path,
    out: &Path,
    topk: usize,
    normalize: bool,
    extra: &[(&str, &str)],
) -> anyhow::Result<()> {
    tools::get_similar(
        similar_args(queries, gallery, out, topk, normalize, extra),
        DeviceKind::Cpu,
        false,
    )
}

fn similar_args(
    queries: &Path,
    gallery: &Path,
    out: &Path,
    topk: usize,
    normalize: bool,
    extra: &[(&str, &str)],
) -> tools::GetSimilarArgs {
    tools::GetSimilarArgs {
        gallery_data: gallery.to_path_buf(),
        normalize_features: normalize,
        topk,
        images_in_subfolders: false,
        query: Vec::new(),
        query_embeddings: None,
        query_names: None,
        exact: false,
        check_recall: None,
        ef: None,
        rescore: None,
        view: false,
        rerank_candidates: 100,
        common: common(queries, out, extra),
    }
}

/// Brute-force distance in f64.
fn brute_distance(q: &[f32], g: &[f32], distance: DistanceFunc, normalize: bool) -> f64 {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (nq, ng) = (norm(q).max(1e-12), norm(g).max(1e-12));
    match distance {
        DistanceFunc::Euclidean => {
            let (sq, sg) = if normalize { (nq, ng) } else { (1.0, 1.0) };
            q.iter()
                .zip(g)
                .map(|(&a, &b)| (f64::from(a) / sq - f64::from(b) / sg).powi(2))
                .sum()
        }
        DistanceFunc::Cosine => {
            let dot: f64 = q
                .iter()
                .zip(g)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            (1.0 - dot / (nq * ng)).abs().max(1e-12)
        }
    }
}

#[derive(serde::Deserialize)]
struct QueryResult {
    indices: Vec<usize>,
    paths: Vec<String>,
    distances: Vec<f32>,
}

fn check_similar_run(
    out: &Path,
    gallery_dir: &Path,
    k: usize,
    distance: DistanceFunc,
    normalize: bool,
) -> Array2<i64> {
    let q_emb: Array2<f32> = read_npy(out.join("query_embeddings.npy")).unwrap();
    let q_paths = read_unicode_npy(&out.join("query_paths.npy"));
    let g_emb: Array2<f32> = read_npy(gallery_dir.join("embeddings.npy")).unwrap();
    let g_paths = read_unicode_npy(&gallery_dir.join("paths.npy"));
    let indices: Array2<i64> = read_npy(out.join("results_indices.npy")).unwrap();
    let distances: Array2<f32> = read_npy(out.join("results_distances.npy")).unwrap();
    let results: BTreeMap<String, QueryResult> =
        kiln::io::read_json(out.join("results.json")).unwrap();

    let expected_q: Vec<String> = jpg_paths(&query_dir())
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(q_paths, expected_q);
    assert_eq!(q_emb.dim(), (expected_q.len(), 512));
    let reference = reference_embeddings(&jpg_paths(&query_dir()));
    assert_eq!(q_emb.as_slice().unwrap(), reference.as_slice());
    assert_eq!(indices.dim(), (q_paths.len(), k));
    assert_eq!(distances.dim(), (q_paths.len(), k));
    assert_eq!(results.len(), q_paths.len());

    let num_g = g_emb.nrows();
    for (qi, qpath) in q_paths.iter().enumerate() {
        let q = q_emb.row(qi).to_vec();
        let brute: Vec<f64> = (0..num_g)
            .map(|g| brute_distance(&q, &g_emb.row(g).to_vec(), distance, normalize))
            .collect();
        let row_d = distances.row(qi);
        let row_i = indices.row(qi);
        for j in 0..k {
            let g = row_i[j] as usize;
            let tol = 1e-4 * (1.0 + brute[g].abs());
            assert!(
                (f64::from(row_d[j]) - brute[g]).abs() <= tol,
                "query {qi} rank {j}: {} vs brute force {}",
                row_d[j],
                brute[g]
            );
            if j > 0 {
                assert!(
                    row_d[j] >= row_d[j - 1],
                    "query {qi}: distances not ascending"
                );
            }
        }
        // Nothing left out is closer than the last kept entry.
        let kept: std::collections::HashSet<usize> = row_i.iter().map(|&g| g as usize).collect();
        assert_eq!(kept.len(), k, "indices are distinct");
        let worst = brute[row_i[k - 1] as usize];
        for g in (0..num_g).filter(|g| !kept.contains(g)) {
            assert!(
                brute[g] >= worst - 1e-4,
                "query {qi}: gallery {g} was left out"
            );
        }
        // results.json agrees with the arrays.
        let r = &results[qpath];
        assert_eq!(
            r.indices,
            row_i.iter().map(|&g| g as usize).collect::<Vec<_>>()
        );
        assert_eq!(r.distances, row_d.to_vec());
        let expect_paths: Vec<String> = r.indices.iter().map(|&g| g_paths[g].clone()).collect();
        assert_eq!(r.paths, expect_paths);
    }
    indices
}

#[test]
fn get_similar_ranks_like_brute_force_and_truncates() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    create(&gallery_dir(), &gallery, false, &[]).unwrap();
    let num_g = jpg_paths(&gallery_dir()).len();

    // Euclidean (squared), normalised, all entries.
    let all = tmp.path().join("all");
    similar(&query_dir(), &gallery, &all, 0, true, &[]).unwrap();
    assert_eq!(
        file_names(&all),
        [
            "query_embeddings.npy",
            "query_paths.npy",
            "results.json",
            "results_distances.npy",
            "results_indices.npy"
        ]
    );
    let full = check_similar_run(&all, &gallery, num_g, DistanceFunc::Euclidean, true);

    // Top-5 is the first 5 columns of the full ranking.
    let top = tmp.path().join("top");
    similar(&query_dir(), &gallery, &top, 5, true, &[]).unwrap();
    let top5 = check_similar_run(&top, &gallery, 5, DistanceFunc::Euclidean, true);
    assert_eq!(top5, full.slice(ndarray::s![.., ..5]).to_owned());

    // A top-k larger than the gallery keeps the whole gallery.
    let big = tmp.path().join("big");
    similar(&query_dir(), &gallery, &big, 1000, false, &[]).unwrap();
    check_similar_run(&big, &gallery, num_g, DistanceFunc::Euclidean, false);

    // Cosine distance from the configuration.
    let cos = tmp.path().join("cos");
    similar(
        &query_dir(),
        &gallery,
        &cos,
        4,
        false,
        &[("SOLVER.DISTANCE_FUNC", "cosine")],
    )
    .unwrap();
    check_similar_run(&cos, &gallery, 4, DistanceFunc::Cosine, false);
}

#[test]
fn get_similar_against_a_centroid_gallery_reports_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = class_tree(tmp.path());
    let gallery = tmp.path().join("gallery");
    create(&root, &gallery, true, &[("MODEL.USE_CENTROIDS", "True")]).unwrap();
    let out = tmp.path().join("out");
    similar(&query_dir(), &gallery, &out, 2, true, &[]).unwrap();
    let results: BTreeMap<String, QueryResult> =
        kiln::io::read_json(out.join("results.json")).unwrap();
    for r in results.values() {
        assert_eq!(r.paths.len(), 2);
        assert!(
            r.paths
                .iter()
                .all(|p| ["alpha", "mid", "zeta"].contains(&p.as_str()))
        );
    }
    check_similar_run(&out, &gallery, 2, DistanceFunc::Euclidean, true);
}

// ---------------------------------------------------------------------------------------------
// visrank

fn pixel(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
    img.get_pixel(x as u32, y as u32).0
}

fn assert_colour_near(actual: [u8; 3], expected: [u8; 3], what: &str) {
    let close = actual
        .iter()
        .zip(expected)
        .all(|(&a, e)| (i16::from(a) - i16::from(e)).abs() <= 2);
    assert!(close, "{what}: {actual:?} vs {expected:?}");
}

/// Checks the frame of tile `rank` and the background around it.
fn assert_tile(img: &RgbImage, rank: usize, frame: [u8; 3], inside: Option<[u8; 3]>) {
    let x0 = tile_x(rank, W);
    for (x, y) in [
        (x0, 0),
        (x0 + W - 1, H - 1),
        (x0 + 2, H / 2),
        (x0 + W - 3, 2),
        (x0 + W / 2, H - 3),
    ] {
        assert_eq!(pixel(img, x, y), frame, "rank {rank} frame at ({x}, {y})");
    }
    if let Some(colour) = inside {
        for (x, y) in [(x0 + 3, 3), (x0 + W / 2, H / 2), (x0 + W - 4, H - 4)] {
            assert_colour_near(
                pixel(img, x, y),
                colour,
                &format!("rank {rank} at ({x}, {y})"),
            );
        }
    }
}

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];
const RED: [u8; 3] = [255, 0, 0];

#[test]
fn write_visrank_draws_the_kept_ranking_with_coloured_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let colour = |i: usize| [(20 * i) as u8, 90, (200 - 15 * i) as u8];
    let sample = |name: &str, i: usize, pid: i64, camid: i64| {
        let path = tmp.path().join(format!("{name}.png"));
        // Odd sizes: every tile is resized to SIZE_TEST.
        RgbImage::from_pixel(23, 41, Rgb(colour(i)))
            .save(&path)
            .unwrap();
        Sample { path, pid, camid }
    };
    let query = vec![
        sample("q0", 0, 7, 0),
        sample("q1", 1, 8, 1),
        sample("q2", 2, 9, 0),
    ];
    let gallery = vec![
        sample("g0", 3, 7, 0), // same pid and camera as q0: skipped for q0
        sample("g1", 4, 7, 1),
        sample("g2", 5, 8, 0),
        sample("g3", 6, 9, 1),
    ];
    let rankings = vec![vec![0, 2, 1, 3], vec![2, 1]];
    let mut cfg = reid::config::ReidConfig::from_args(&common(
        tmp.path(),
        tmp.path(),
        &[("TEST.VISUALIZE_TOPK", "3")],
    ))
    .unwrap();
    let out = tmp.path().join("out");
    let n = tools::write_visrank(&query, &gallery, &rankings, &cfg, &out, false).unwrap();
    assert_eq!(n, 2, "one picture per ranking");
    assert_eq!(file_names(&out.join("visrank")), ["q0.png", "q1.png"]);

    let img = image::open(out.join("visrank/q0.png")).unwrap().to_rgb8();
    let [cw, ch] = canvas_size([H, W], 3);
    assert_eq!((cw, ch), (4 * W + 3 * 2 + 8, H));
    assert_eq!((img.width() as usize, img.height() as usize), (cw, ch));
    assert_tile(&img, 0, BLACK, Some(colour(0)));
    assert_tile(&img, 1, RED, Some(colour(5))); // g2 (pid 8)
    assert_tile(&img, 2, GREEN, Some(colour(4))); // g1 (pid 7, other camera)
    assert_tile(&img, 3, RED, Some(colour(6))); // g3
    // White gaps: 10 px after the query, 2 px between gallery tiles.
    for x in (W..W + 10).chain(tile_x(1, W) + W..tile_x(2, W)) {
        assert_eq!(pixel(&img, x, H / 2), WHITE, "gap column {x}");
    }

    // q1's ranking has two entries: the third slot stays white.
    let img = image::open(out.join("visrank/q1.png")).unwrap().to_rgb8();
    assert_tile(&img, 1, GREEN, Some(colour(5))); // g2: pid 8, camera 0 ≠ 1
    assert_tile(&img, 2, RED, Some(colour(4)));
    let x3 = tile_x(3, W);
    assert_eq!(pixel(&img, x3, 0), WHITE);
    assert_eq!(pixel(&img, x3 + W / 2, H / 2), WHITE);

    // VISUALIZE_MAX_NUMBER limits the pictures; bad rankings are errors.
    cfg.test.visualize_max_number = 1;
    let out2 = tmp.path().join("out2");
    assert_eq!(
        tools::write_visrank(&query, &gallery, &rankings, &cfg, &out2, false).unwrap(),
        1
    );
    assert!(tools::write_visrank(&query, &gallery, &[vec![4]], &cfg, &out2, false).is_err());
}

/// Expected frames of the first `n` queries: the first `topk` gallery entries by brute-force
/// normalised squared distance, same pid and camera skipped.
fn expected_frames(n: usize, topk: usize) -> Vec<(PathBuf, Vec<bool>)> {
    let cfg =
        reid::config::ReidConfig::from_args(&common(&fixture().root, Path::new("."), &[])).unwrap();
    let ds = load_dataset(&cfg).unwrap();
    let emb = reference_embeddings_of(ds.val());
    let nq = ds.num_query();
    (0..n)
        .map(|q| {
            let qs = &ds.query[q];
            let mut order: Vec<(f64, usize)> = ds
                .gallery
                .iter()
                .enumerate()
                .filter(|(_, g)| !(g.pid == qs.pid && g.camid == qs.camid))
                .map(|(g, _)| {
                    (
                        brute_distance(emb.row(q), emb.row(nq + g), DistanceFunc::Euclidean, true),
                        g,
                    )
                })
                .collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0));
            let same: Vec<bool> = order
                .iter()
                .take(topk)
                .map(|&(_, g)| ds.gallery[g].pid == qs.pid)
                .collect();
            (qs.path.clone(), same)
        })
        .collect()
}

#[test]
fn visrank_command_draws_the_evaluation_ranking() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let extra = [
        ("TEST.VISUALIZE_TOPK", "4"),
        ("TEST.VISUALIZE_MAX_NUMBER", "3"),
    ];
    tools::visrank(
        tools::VisrankArgs {
            camid_bug_compat: false,
            common: common(&fixture().root, &out, &extra),
        },
        DeviceKind::Cpu,
        false,
    )
    .unwrap();
    let expected = expected_frames(3, 4);
    let mut names: Vec<String> = expected
        .iter()
        .map(|(p, _)| format!("{}.png", p.file_stem().unwrap().to_string_lossy()))
        .collect();
    names.sort();
    assert_eq!(file_names(&out.join("visrank")), names);
    for (path, frames) in &expected {
        let stem = path.file_stem().unwrap().to_string_lossy();
        let img = image::open(out.join(format!("visrank/{stem}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            (img.width() as usize, img.height() as usize),
            (5 * W + 4 * 2 + 8, H)
        );
        assert_tile(&img, 0, BLACK, None);
        assert_eq!(frames.len(), 4);
        for (r, &same) in frames.iter().enumerate() {
            assert_tile(&img, r + 1, if same { GREEN } else { RED }, None);
        }
    }

    // Centroid modes A and B draw the same number of pictures of the same size.
    for keep in ["False", "True"] {
        let out = tmp.path().join(format!("centroids-{keep}"));
        let mut extra = extra.to_vec();
        extra.push(("MODEL.USE_CENTROIDS", "True"));
        extra.push(("MODEL.KEEP_CAMID_CENTROIDS", keep));
        tools::visrank(
            tools::VisrankArgs {
                camid_bug_compat: false,
                common: common(&fixture().root, &out, &extra),
            },
            DeviceKind::Cpu,
            false,
        )
        .unwrap();
        let files = file_names(&out.join("visrank"));
        assert_eq!(files, names, "centroid mode (KEEP_CAMID_CENTROIDS {keep})");
        let img = image::open(out.join("visrank").join(&files[0]))
            .unwrap()
            .to_rgb8();
        assert_eq!(img.width() as usize, 5 * W + 4 * 2 + 8);
        // Mode A has a centroid per gallery identity (3 + distractor pid 0): 4 tiles drawn,
        // exactly one of them green (the query's identity has one centroid).
        if keep == "False" {
            let greens = (1..=4)
                .filter(|&r| pixel(&img, tile_x(r, W), 0) == GREEN)
                .count();
            assert_eq!(greens, 1);
            assert!((1..=4).all(|r| [GREEN, RED].contains(&pixel(&img, tile_x(r, W), 0))));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// evaluate

struct EvalFiles {
    q_emb: PathBuf,
    g_emb: PathBuf,
    q_pids: PathBuf,
    g_pids: PathBuf,
    q_cams: PathBuf,
    g_cams: PathBuf,
}

fn eval_args(
    f: &EvalFiles,
    out: &Path,
    bug_compat: bool,
    extra: &[(&str, &str)],
) -> tools::EvaluateArgs {
    let mut opts = Vec::new();
    for (k, v) in extra {
        opts.push(k.to_string());
        opts.push(v.to_string());
    }
    tools::EvaluateArgs {
        query_embeddings: f.q_emb.clone(),
        gallery_embeddings: f.g_emb.clone(),
        query_pids: f.q_pids.clone(),
        gallery_pids: f.g_pids.clone(),
        query_camids: Some(f.q_cams.clone()),
        gallery_camids: Some(f.g_cams.clone()),
        camid_bug_compat: bug_compat,
        out: Some(out.to_path_buf()),
        common: Common {
            config_file: None,
            opts,
        },
    }
}

/// `report` after the same JSON round trip as `evaluation.json` (serde_json's float parsing
/// may differ from the printed value in the last bit; printing is exact).
fn via_json(report: &EvalReport) -> EvalReport {
    serde_json::from_str(&serde_json::to_string(report).unwrap()).unwrap()
}

#[test]
fn evaluate_matches_eval_report_on_the_same_arrays() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let (nq, ng, dim) = (12, 40, 8);
    let q_pids: Vec<i64> = (0..nq).map(|i| (i % 6) as i64).collect();
    let g_pids: Vec<i64> = (0..ng).map(|i| (i % 8) as i64).collect();
    let q_cams: Vec<i64> = (0..nq).map(|_| rng.random_range(0..3)).collect();
    let g_cams: Vec<i64> = (0..ng).map(|_| rng.random_range(0..3)).collect();
    // Embeddings clustered by pid so that the metrics are not trivial.
    let centers: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut emb = |pids: &[i64]| {
        let values: Vec<f32> = pids
            .iter()
            .flat_map(|&p| {
                centers[p as usize]
                    .iter()
                    .map(|c| c + rng.random_range(-0.8f32..0.8))
                    .collect::<Vec<_>>()
            })
            .collect();
        Array2::from_shape_vec((pids.len(), dim), values).unwrap()
    };
    let (q_emb, g_emb) = (emb(&q_pids), emb(&g_pids));
    let files = EvalFiles {
        q_emb: tmp.path().join("q.npy"),
        g_emb: tmp.path().join("g.npy"),
        q_pids: tmp.path().join("qp.npy"),
        g_pids: tmp.path().join("gp.npy"),
        q_cams: tmp.path().join("qc.npy"),
        g_cams: tmp.path().join("gc.npy"),
    };
    write_npy(&files.q_emb, &q_emb).unwrap();
    // float64 gallery embeddings are accepted (converted to float32).
    write_npy(&files.g_emb, &g_emb.mapv(f64::from)).unwrap();
    // int32 and int64 ids.
    let i32s = |v: &[i64]| Array1::from_iter(v.iter().map(|&x| x as i32));
    write_npy(&files.q_pids, &i32s(&q_pids)).unwrap();
    write_npy(&files.g_pids, &Array1::from_vec(g_pids.clone())).unwrap();
    write_npy(&files.q_cams, &Array1::from_vec(q_cams.clone())).unwrap();
    write_npy(&files.g_cams, &i32s(&g_cams)).unwrap();

    let (qf, gf) = (matrix(&q_emb), matrix(&g_emb));
    let expected = |opts: &RetrievalOptions, bug: bool| {
        EvalReport::compute(
            EmbeddingSet {
                features: &qf,
                pids: &q_pids,
                camids: &q_cams,
            },
            EmbeddingSet {
                features: &gf,
                pids: &g_pids,
                camids: &g_cams,
            },
            opts,
            bug,
        )
        .unwrap()
    };

    for (bug, extra, opts) in [
        (false, vec![], RetrievalOptions::default()),
        (
            true,
            vec![("TEST.FEAT_NORM", "False")],
            RetrievalOptions {
                feat_norm: false,
                ..Default::default()
            },
        ),
        (
            false,
            vec![("SOLVER.DISTANCE_FUNC", "cosine")],
            RetrievalOptions {
                distance: DistanceFunc::Cosine,
                ..Default::default()
            },
        ),
    ] {
        let out = tmp.path().join(format!("out-{bug}-{}", extra.len()));
        tools::evaluate(eval_args(&files, &out, bug, &extra)).unwrap();
        let got: EvalReport = kiln::io::read_json(out.join("evaluation.json")).unwrap();
        let want = expected(&opts, bug);
        assert_eq!(got, via_json(&want), "{extra:?} bug_compat {bug}");
        assert!(want.no_centroids.as_ref().unwrap().map > 0.0);
    }
    // The feature-normalisation setting changes the numbers (the test above is not vacuous).
    assert_ne!(
        expected(&RetrievalOptions::default(), false),
        expected(
            &RetrievalOptions {
                feat_norm: false,
                ..Default::default()
            },
            false
        )
    );

    // Without camera files: queries camera 0, gallery camera 1.
    let out = tmp.path().join("nocams");
    let mut args = eval_args(&files, &out, false, &[]);
    args.query_camids = None;
    args.gallery_camids = None;
    tools::evaluate(args).unwrap();
    let got: EvalReport = kiln::io::read_json(out.join("evaluation.json")).unwrap();
    let want = EvalReport::compute(
        EmbeddingSet {
            features: &qf,
            pids: &q_pids,
            camids: &vec![0; nq],
        },
        EmbeddingSet {
            features: &gf,
            pids: &g_pids,
            camids: &vec![1; ng],
        },
        &RetrievalOptions::default(),
        false,
    )
    .unwrap();
    assert_eq!(got, via_json(&want));
}

#[test]
fn evaluate_rejects_mismatched_arrays_naming_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |n: &str| tmp.path().join(n);
    write_npy(path("q.npy"), &Array2::<f32>::zeros((3, 4))).unwrap();
    write_npy(path("g.npy"), &Array2::<f32>::ones((5, 4))).unwrap();
    write_npy(path("g6.npy"), &Array2::<f32>::ones((5, 6))).unwrap();
    write_npy(path("qp.npy"), &Array1::<i64>::zeros(3)).unwrap();
    write_npy(path("qp2.npy"), &Array1::<i64>::zeros(2)).unwrap();
    write_npy(path("gp.npy"), &Array1::<i32>::zeros(5)).unwrap();
    write_npy(path("gpf.npy"), &Array1::<f32>::zeros(5)).unwrap();
    write_npy(path("qc.npy"), &Array1::<i64>::zeros(3)).unwrap();
    write_npy(path("gc.npy"), &Array1::<i64>::ones(5)).unwrap();
    let files = |q_pids: &str, g_emb: &str, g_pids: &str| EvalFiles {
        q_emb: path("q.npy"),
        g_emb: path(g_emb),
        q_pids: path(q_pids),
        g_pids: path(g_pids),
        q_cams: path("qc.npy"),
        g_cams: path("gc.npy"),
    };
    let out = path("out");
    let cases = [
        (
            files("qp2.npy", "g.npy", "gp.npy"),
            vec!["qp2.npy", "q.npy", "2 entries", "3 rows"],
        ),
        (
            files("qp.npy", "g6.npy", "gp.npy"),
            vec!["q.npy", "g6.npy", "dimension 4", "dimension 6"],
        ),
        (
            files("qp.npy", "g.npy", "gpf.npy"),
            vec!["gpf.npy", "float32", "integer"],
        ),
        (files("qp.npy", "qp.npy", "gp.npy"), vec!["qp.npy", "2-D"]),
    ];
    for (f, needles) in cases {
        let r = tools::evaluate(eval_args(&f, &out, false, &[]));
        assert_error_without_output(r, &out, &needles);
    }
    // A missing file.
    let mut f = files("qp.npy", "g.npy", "gp.npy");
    f.q_cams = path("missing.npy");
    assert_error_without_output(
        tools::evaluate(eval_args(&f, &out, false, &[])),
        &out,
        &["missing.npy"],
    );
    // The same arrays are fine.
    tools::evaluate(eval_args(
        &files("qp.npy", "g.npy", "gp.npy"),
        &out,
        false,
        &[],
    ))
    .unwrap();
    assert_eq!(file_names(&out), ["evaluation.json"]);
}

#[test]
fn listing_matches_what_create_embeddings_embeds() {
    // The reference's listing rule the tools rely on: direct children with image extensions.
    let listed: Vec<PathBuf> = list_images(&gallery_dir(), false)
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(listed, jpg_paths(&gallery_dir()));
}

// ---------------------------------------------------------------------------------------------
// retrieval at scale: queries from any image or from embeddings, the index, post-processing

fn read_results(out: &Path) -> (Array2<i64>, Array2<f32>, BTreeMap<String, QueryResult>) {
    (
        read_npy(out.join("results_indices.npy")).unwrap(),
        read_npy(out.join("results_distances.npy")).unwrap(),
        kiln::io::read_json(out.join("results.json")).unwrap(),
    )
}

#[test]
fn get_similar_from_files_directories_and_embeddings_gives_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    create(&gallery_dir(), &gallery, false, &[]).unwrap();
    let base = tmp.path().join("base");
    similar(&query_dir(), &gallery, &base, 5, true, &[]).unwrap();
    let (bi, bd, _) = read_results(&base);
    let base_q: Array2<f32> = read_npy(base.join("query_embeddings.npy")).unwrap();

    // --query with the image files, then with the directory: DATASETS.ROOT_DIR is not read.
    for (name, query) in [
        ("files", jpg_paths(&query_dir())),
        ("dir", vec![query_dir()]),
    ] {
        let out = tmp.path().join(name);
        let mut args = similar_args(Path::new("/nonexistent"), &gallery, &out, 5, true, &[]);
        args.query = query;
        tools::get_similar(args, DeviceKind::Cpu, false).unwrap();
        let (i, d, _) = read_results(&out);
        assert_eq!((i, d), (bi.clone(), bd.clone()), "{name}");
        check_similar_run(&out, &gallery, 5, DistanceFunc::Euclidean, true);
    }

    // --query-embeddings with their names, and no model at all.
    let out = tmp.path().join("emb");
    let mut args = similar_args(Path::new("/nonexistent"), &gallery, &out, 5, true, &[]);
    args.common.opts[1] = String::new(); // MODEL.PRETRAIN_PATH ""
    args.query_embeddings = Some(base.join("query_embeddings.npy"));
    args.query_names = Some(base.join("query_paths.npy"));
    tools::get_similar(args, DeviceKind::Cpu, false).unwrap();
    check_similar_run(&out, &gallery, 5, DistanceFunc::Euclidean, true);
    let q: Array2<f32> = read_npy(out.join("query_embeddings.npy")).unwrap();
    assert_eq!(q, base_q);
    assert_eq!(
        fs::read(out.join("results.json")).unwrap(),
        fs::read(base.join("results.json")).unwrap()
    );

    // Without names, rows are called `<file>#<row>`.
    let out = tmp.path().join("unnamed");
    let mut args = similar_args(Path::new("/nonexistent"), &gallery, &out, 2, false, &[]);
    args.query_embeddings = Some(base.join("query_embeddings.npy"));
    tools::get_similar(args, DeviceKind::Cpu, false).unwrap();
    let names = read_unicode_npy(&out.join("query_paths.npy"));
    assert_eq!(
        names[1],
        format!("{}#1", base.join("query_embeddings.npy").display())
    );
}

fn index_cmd(gallery: &Path, normalize: bool, storage: &str, add: bool) -> anyhow::Result<()> {
    let mut build = index_args();
    build.index_storage = storage.parse().unwrap();
    tools::index(
        tools::IndexArgs {
            gallery_data: gallery.to_path_buf(),
            normalize_features: normalize,
            add,
            build,
            common: Common {
                config_file: None,
                opts: Vec::new(),
            },
        },
        false,
    )
}

#[test]
fn get_similar_searches_the_index_built_by_create_embeddings_or_reid_index() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    let args = tools::CreateEmbeddingsArgs {
        images_in_subfolders: false,
        append: false,
        build_index: true,
        normalize_features: true,
        index: index_args(),
        common: common(&gallery_dir(), &gallery, &[]),
    };
    tools::create_embeddings(args, DeviceKind::Cpu, false).unwrap();
    assert!(gallery.join("index.usearch").is_file());
    let sidecar: reid::search::IndexSidecar =
        kiln::io::read_json(gallery.join("index.json")).unwrap();
    assert!(sidecar.metric.normalize);
    assert_eq!(sidecar.rows, jpg_paths(&gallery_dir()).len());

    // On a gallery this small the HNSW search is exact: index, view and --exact agree.
    let exact = tmp.path().join("exact");
    let mut a = similar_args(&query_dir(), &gallery, &exact, 4, true, &[]);
    a.exact = true;
    tools::get_similar(a, DeviceKind::Cpu, false).unwrap();
    for view in [false, true] {
        let out = tmp.path().join(format!("index-{view}"));
        let mut a = similar_args(&query_dir(), &gallery, &out, 4, true, &[]);
        a.view = view;
        a.ef = Some(32);
        // More re-scored candidates than the gallery has rows: capped, same answer.
        a.rescore = view.then_some(500);
        a.check_recall = Some(3);
        tools::get_similar(a, DeviceKind::Cpu, false).unwrap();
        assert_eq!(read_results(&out).0, read_results(&exact).0);
        check_similar_run(&out, &gallery, 4, DistanceFunc::Euclidean, true);
    }

    // `reid index`: int8 storage needs unit rows; with them it serves the cosine distance too.
    let err = format!("{:#}", index_cmd(&gallery, false, "i8", false).unwrap_err());
    assert!(err.contains("int8"), "{err}");
    index_cmd(&gallery, true, "i8", false).unwrap();
    let out = tmp.path().join("i8");
    let cos = [("SOLVER.DISTANCE_FUNC", "cosine")];
    similar(&query_dir(), &gallery, &out, 3, false, &cos).unwrap();
    check_similar_run(&out, &gallery, 3, DistanceFunc::Cosine, false);
    // --check-recall without an index is an error that says so.
    fs::remove_file(gallery.join("index.usearch")).unwrap();
    let out = tmp.path().join("noindex");
    let mut a = similar_args(&query_dir(), &gallery, &out, 3, true, &[]);
    a.check_recall = Some(2);
    let r = tools::get_similar(a, DeviceKind::Cpu, false);
    assert_error_without_output(r, &out, &["no index"]);
}

#[test]
fn create_embeddings_appends_and_extends_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let images = jpg_paths(&gallery_dir());
    let (first, second) = images.split_at(images.len() / 2);
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, files) in [(&a_dir, first), (&b_dir, second)] {
        fs::create_dir_all(dir).unwrap();
        for f in files {
            fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let gallery = tmp.path().join("gallery");
    let run = |root: &Path, append: bool, build_index: bool| {
        tools::create_embeddings(
            tools::CreateEmbeddingsArgs {
                images_in_subfolders: false,
                append,
                build_index,
                normalize_features: true,
                index: index_args(),
                common: common(root, &gallery, &[]),
            },
            DeviceKind::Cpu,
            false,
        )
    };
    run(&a_dir, false, true).unwrap();
    run(&b_dir, true, false).unwrap();
    let emb: Array2<f32> = read_npy(gallery.join("embeddings.npy")).unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(second);
    assert_eq!(
        emb.as_slice().unwrap(),
        reference_embeddings(&all).as_slice()
    );
    let paths = read_unicode_npy(&gallery.join("paths.npy"));
    assert_eq!(paths.len(), images.len());
    assert!(paths[first.len()].starts_with(&b_dir.display().to_string()));
    let sidecar: reid::search::IndexSidecar =
        kiln::io::read_json(gallery.join("index.json")).unwrap();
    assert_eq!(sidecar.rows, images.len());
    // Replacing the embeddings drops the index that no longer matches them.
    run(&a_dir, false, false).unwrap();
    assert!(!gallery.join("index.usearch").exists());
}

#[test]
fn get_similar_rejects_mismatched_empty_and_corrupt_galleries() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A gallery of 8-d rows against the 512-d model.
    let small = tmp.path().join("small");
    fs::create_dir_all(&small).unwrap();
    write_npy(small.join("embeddings.npy"), &Array2::<f32>::zeros((3, 8))).unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("g{i}")).collect();
    fs::write(
        small.join("paths.npy"),
        tools::npy::string_array_bytes(&names),
    )
    .unwrap();
    let r = similar(&query_dir(), &small, &out, 2, true, &[]);
    assert_error_without_output(
        r,
        &out,
        &[
            "dimension 512",
            "8-dimensional",
            &small.join("embeddings.npy").display().to_string(),
        ],
    );
    // Query embeddings of another dimension (no model).
    let q = tmp.path().join("q.npy");
    write_npy(&q, &Array2::<f32>::zeros((2, 5))).unwrap();
    let mut a = similar_args(&query_dir(), &small, &out, 2, true, &[]);
    a.query_embeddings = Some(q.clone());
    let r = tools::get_similar(a, DeviceKind::Cpu, false);
    assert_error_without_output(r, &out, &["dimension 5", &q.display().to_string()]);

    // An empty gallery.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    write_npy(
        empty.join("embeddings.npy"),
        &Array2::<f32>::zeros((0, 512)),
    )
    .unwrap();
    fs::write(empty.join("paths.npy"), tools::npy::string_array_bytes(&[])).unwrap();
    let r = similar(&query_dir(), &empty, &out, 2, true, &[]);
    assert_error_without_output(
        r,
        &out,
        &["empty", &empty.join("embeddings.npy").display().to_string()],
    );

    // A corrupt index.
    let gallery = tmp.path().join("gallery");
    create(&gallery_dir(), &gallery, false, &[]).unwrap();
    index_cmd(&gallery, true, "f32", false).unwrap();
    fs::write(gallery.join("index.usearch"), b"garbage").unwrap();
    let r = similar(&query_dir(), &gallery, &out, 2, true, &[]);
    assert_error_without_output(
        r,
        &out,
        &[
            "corrupt",
            &gallery.join("index.usearch").display().to_string(),
        ],
    );
}

#[test]
fn get_similar_re_ranks_and_expands_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    create(&gallery_dir(), &gallery, false, &[]).unwrap();
    let num_g = jpg_paths(&gallery_dir()).len();
    let plain = tmp.path().join("plain");
    similar(&query_dir(), &gallery, &plain, 0, true, &[]).unwrap();
    let (plain_i, plain_d, _) = read_results(&plain);
    let rerank = tmp.path().join("rerank");
    let keys = [
        ("TEST.RERANK", "True"),
        ("TEST.RERANK_K1", "4"),
        ("TEST.RERANK_K2", "2"),
    ];
    similar(&query_dir(), &gallery, &rerank, 5, true, &keys).unwrap();
    let (ri, rd, _) = read_results(&rerank);
    assert_eq!(ri.dim(), (plain_i.nrows(), 5));
    for q in 0..ri.nrows() {
        let row: Vec<f32> = rd.row(q).to_vec();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "ascending");
        assert!(row.iter().all(|d| (0.0..=1.0).contains(d)), "{row:?}");
    }
    // The distances are the re-ranked ones, not the plain ones.
    assert_ne!(rd, plain_d.slice(ndarray::s![.., ..5]).to_owned());
    let aqe = tmp.path().join("aqe");
    similar(
        &query_dir(),
        &gallery,
        &aqe,
        num_g,
        true,
        &[("TEST.AQE", "True")],
    )
    .unwrap();
    let (ai, _, _) = read_results(&aqe);
    assert_eq!(ai.dim(), plain_i.dim());
}

#[test]
fn get_similar_takes_several_query_paths_before_the_key_value_pairs() {
    use clap::{CommandFactory, Parser};
    let words = [
        "reid",
        "get-similar",
        "--gallery-data",
        "g",
        "--query",
        "a.jpg",
        "b.jpg",
        "dir/",
        "MODEL.PRETRAIN_PATH",
        "m.ckpt",
        "OUTPUT_DIR",
        "out",
        "--exact",
    ];
    let args = kiln::cli::hoist_flags(
        &reid::cli::Cli::command(),
        words.iter().map(|w| w.to_string()).collect(),
    );
    let cli = reid::cli::Cli::try_parse_from(args).unwrap();
    let reid::cli::Command::GetSimilar(mut a) = cli.command else {
        panic!("not get-similar")
    };
    assert!(a.exact);
    a.collect_query_paths();
    assert_eq!(
        a.query,
        [
            PathBuf::from("a.jpg"),
            PathBuf::from("b.jpg"),
            PathBuf::from("dir/")
        ]
    );
    assert_eq!(
        a.common.opts,
        ["MODEL.PRETRAIN_PATH", "m.ckpt", "OUTPUT_DIR", "out"]
    );
}
