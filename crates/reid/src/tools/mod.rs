//! Inference tools of the `reid` CLI (the reference's `inference/` scripts and
//! `utils/visrank.py`): `create-embeddings`, `get-similar`,
//! `visrank` and `evaluate` on precomputed embeddings.
//!
//! Every tool reads the configuration like the other commands (`--config-file` plus yacs
//! `KEY VALUE` overrides); the model is `MODEL.PRETRAIN_PATH` (a `reid train` checkpoint or the
//! reference's Lightning `.ckpt`, see [`crate::infer::load_model`]), its architecture taken from
//! the checkpoint. Embeddings are the eval-mode post-BNNeck features (as in the reference),
//! computed on the inner (non-autodiff) backend of `--device`, with the test transform (`INPUT.SIZE_TEST`) in
//! batches of `TEST.IMS_PER_BATCH`.
//!
//! | command | reads | writes (under `OUTPUT_DIR`, `.` when empty) |
//! |---|---|---|
//! | [`create_embeddings`] | images under `DATASETS.ROOT_DIR` | `embeddings.npy`, `paths.npy` |
//! | [`get_similar`] | query images under `DATASETS.ROOT_DIR` (or `--query`, or `--query-embeddings`), `--gallery-data` | `results.json`, `results_indices.npy`, `results_distances.npy`, `query_embeddings.npy`, `query_paths.npy` |
//! | [`index`] | `--gallery-data` | `index.usearch`, `index.json` (in the gallery directory) |
//! | [`visrank`] | the dataset `DATASETS.NAMES` | `visrank/<query-stem>.png` |
//! | [`evaluate`] | `.npy` embeddings, pids, camids | `evaluation.json` (in `--out`) |
//!
//! Output files are plain NumPy arrays (`np.load` without `allow_pickle`, see [`npy`]), each
//! written atomically, and only after every computation succeeded: an empty directory, a
//! corrupt image or a mismatched array is an error naming the path, and leaves no output.
//!
//! **Deviation from the reference (`get_similar.py`).** The reference saves its results as one
//! pickled dict in `results.npy` (readable only with `allow_pickle=True`, and the script does
//! not run as shipped: it calls `run_inference` without the `use_cuda` argument that commit
//! `a1825b7` made mandatory). Here the same content is `results.json` (query path →
//! `{indices, paths, distances}`) plus the dense arrays `results_indices.npy` (int64 `[Q, k]`)
//! and `results_distances.npy` (float32 `[Q, k]`), row `i` for query `i` of `query_paths.npy`.

mod create;
mod evaluate;
pub mod npy;
mod similar;
mod visrank;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use kiln::DeviceKind;
use kiln::backend::{BackendJob, launch};

use crate::config::ReidConfig;
use crate::data::Sample;
use crate::infer::{Embedded, checkpoint_path, embed_samples, load_model};
use crate::search::{IndexParams, Quantization, SavedGallery, SearchMetric};
use kiln::cli::ConfigArgs;

pub use crate::search::Match;
pub use create::{CENTROID_LABEL_RULE, mean_by_label, parent_dir_label};
pub use evaluate::{DEFAULT_GALLERY_CAMID, DEFAULT_QUERY_CAMID, EvaluateInputs, evaluate_arrays};
pub use similar::rank_gallery;
pub use visrank::{
    VISRANK_BORDER, VISRANK_QUERY_EXTRA_SPACING, VISRANK_SPACING, canvas_size, tile_x,
    visrank_rankings, visualize, write_visrank, write_visrank_centroids,
};

/// Settings of the ANN index (`reid index`, `create-embeddings --build-index`).
#[derive(Debug, Clone, Args)]
pub struct IndexBuildArgs {
    /// Vector storage of the index: f32, f16 (half the memory) or i8 (a quarter; needs
    /// --normalize-features or the cosine distance).
    #[arg(long, default_value = "f32")]
    pub index_storage: Quantization,
    /// HNSW graph degree M.
    #[arg(long, default_value_t = 16)]
    pub connectivity: usize,
    /// HNSW beam width while building (ef_construction).
    #[arg(long, default_value_t = 128)]
    pub expansion_add: usize,
    /// HNSW beam width while searching (ef), saved with the index (get-similar --ef overrides).
    #[arg(long, default_value_t = 128)]
    pub expansion_search: usize,
}

impl IndexBuildArgs {
    /// The index parameters.
    pub fn params(&self) -> IndexParams {
        IndexParams {
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            quantization: self.index_storage,
        }
    }
}

/// `reid index`: builds the ANN index of a saved gallery (`index.usearch` and `index.json`
/// beside `embeddings.npy`), or extends it with the rows added since (`--add`).
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Directory with the gallery's `embeddings.npy` and `paths.npy` (create-embeddings output).
    #[arg(long, alias = "gallery_data", value_name = "DIR")]
    pub gallery_data: PathBuf,
    /// Index L2-normalised embeddings (the get-similar flag the index will serve).
    #[arg(long, alias = "normalize_features")]
    pub normalize_features: bool,
    /// Add the rows of embeddings.npy that the existing index does not cover yet, instead of
    /// rebuilding it.
    #[arg(long)]
    pub add: bool,
    #[command(flatten)]
    pub build: IndexBuildArgs,
    #[command(flatten)]
    pub common: ConfigArgs,
}

/// `reid create-embeddings` (the reference's `create_embeddings.py`): embeds every image under
/// `DATASETS.ROOT_DIR` into `<OUTPUT_DIR>/embeddings.npy` (float32 `[N, emb]`, post-BN, not normalised) and
/// `<OUTPUT_DIR>/paths.npy` (unicode strings). With `MODEL.USE_CENTROIDS True`: one row per
/// identity (the image's parent directory name), the plain mean of its images, in order of
/// first appearance, and `paths.npy` holds the identities.
#[derive(Debug, Args)]
pub struct CreateEmbeddingsArgs {
    /// Images are in class sub-folders of DATASETS.ROOT_DIR (torchvision ImageFolder layout)
    /// instead of directly inside it.
    #[arg(long, alias = "images_in_subfolders")]
    pub images_in_subfolders: bool,
    /// Append the new embeddings to those already in OUTPUT_DIR (and extend its index, when it
    /// has one) instead of replacing them.
    #[arg(long)]
    pub append: bool,
    /// Also build the ANN index (index.usearch) beside embeddings.npy.
    #[arg(long)]
    pub build_index: bool,
    /// Index L2-normalised embeddings (with --build-index; get-similar --normalize-features).
    #[arg(long, alias = "normalize_features")]
    pub normalize_features: bool,
    #[command(flatten)]
    pub index: IndexBuildArgs,
    #[command(flatten)]
    pub common: ConfigArgs,
}

/// `reid get-similar` (the reference's `get_similar.py`): the top-k gallery entries of each
/// query image.
///
/// Queries are the images under `DATASETS.ROOT_DIR` (the reference's way), or the images and
/// directories of `--query` (no dataset layout, no ROOT_DIR), or the rows of
/// `--query-embeddings` (no model at all). The gallery's index is used when it has one that
/// fits the distance (`--exact` forces exact search).
#[derive(Debug, Args)]
pub struct GetSimilarArgs {
    /// Directory with the gallery's `embeddings.npy` and `paths.npy` (create-embeddings output).
    #[arg(long, alias = "gallery_data", value_name = "DIR")]
    pub gallery_data: PathBuf,
    /// L2-normalise query and gallery embeddings before the distances.
    #[arg(long, alias = "normalize_features")]
    pub normalize_features: bool,
    /// Gallery entries kept per query (0 = all).
    #[arg(long, default_value_t = 100)]
    pub topk: usize,
    /// Query images are in class sub-folders of DATASETS.ROOT_DIR (ImageFolder layout).
    #[arg(long, alias = "images_in_subfolders")]
    pub images_in_subfolders: bool,
    /// Query images or directories of images (instead of DATASETS.ROOT_DIR).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub query: Vec<PathBuf>,
    /// Precomputed query embeddings, float32 `[Q, dim]` (no model needed).
    #[arg(long, value_name = "NPY", conflicts_with = "query")]
    pub query_embeddings: Option<PathBuf>,
    /// Names of the --query-embeddings rows (a string array `[Q]`; default `<file>#<row>`).
    #[arg(long, value_name = "NPY", requires = "query_embeddings")]
    pub query_names: Option<PathBuf>,
    /// Exact search even when the gallery has an index.
    #[arg(long)]
    pub exact: bool,
    /// Sample N queries, search them with the index and exactly, and print recall@k.
    #[arg(long, value_name = "N")]
    pub check_recall: Option<usize>,
    /// Index search beam width ef (default: the one saved with the index).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Index candidates per query re-scored with the exact f32 distances (default and least:
    /// max(2·topk, topk + 8)); more finds neighbours that int8 or f16 storage ranks too low.
    #[arg(long, value_name = "N")]
    pub rescore: Option<usize>,
    /// Memory-map the index instead of reading it into memory.
    #[arg(long)]
    pub view: bool,
    /// With TEST.RERANK: gallery candidates per query that are re-ranked.
    #[arg(long, default_value_t = 100)]
    pub rerank_candidates: usize,
    #[command(flatten)]
    pub common: ConfigArgs,
}

/// `reid visrank` (the reference's `utils/visrank.py`): ranked-result pictures of the dataset
/// `DATASETS.NAMES`.
#[derive(Debug, Args)]
pub struct VisrankArgs {
    /// In centroid mode B (MODEL.USE_CENTROIDS with MODEL.KEEP_CAMID_CENTROIDS), reproduce the
    /// reference's gallery camera-id offset (issues #21, #41).
    #[arg(long)]
    pub camid_bug_compat: bool,
    #[command(flatten)]
    pub common: ConfigArgs,
}

/// `reid evaluate`: mAP / CMC of precomputed embeddings under the three protocols.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Query embeddings, float32 (or float64) `[Q, dim]`.
    #[arg(long, value_name = "NPY")]
    pub query_embeddings: PathBuf,
    /// Gallery embeddings, float32 (or float64) `[G, dim]`.
    #[arg(long, value_name = "NPY")]
    pub gallery_embeddings: PathBuf,
    /// Query identities, integer `[Q]`.
    #[arg(long, value_name = "NPY")]
    pub query_pids: PathBuf,
    /// Gallery identities, integer `[G]`.
    #[arg(long, value_name = "NPY")]
    pub gallery_pids: PathBuf,
    /// Query cameras, integer `[Q]` (default: all 0, the fashion datasets' convention).
    #[arg(long, value_name = "NPY")]
    pub query_camids: Option<PathBuf>,
    /// Gallery cameras, integer `[G]` (default: all 1, the fashion datasets' convention).
    #[arg(long, value_name = "NPY")]
    pub gallery_camids: Option<PathBuf>,
    /// Centroid mode B with the reference's camera-id bug (the published numbers).
    #[arg(long)]
    pub camid_bug_compat: bool,
    /// Directory of `evaluation.json` (default: OUTPUT_DIR, or `.` when that is empty).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub common: ConfigArgs,
}

/// Runs `create-embeddings`.
pub fn create_embeddings(
    args: CreateEmbeddingsArgs,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    let cfg = ReidConfig::from_args(&args.common)?;
    create::run(&cfg, &args, device, progress)
}

/// Runs `index`.
pub fn index(args: IndexArgs, progress: bool) -> Result<()> {
    let cfg = ReidConfig::from_args(&args.common)?;
    let metric = SearchMetric {
        normalize: args.normalize_features,
        distance: crate::infer::distance_func(&cfg)?,
    };
    let mut gallery = SavedGallery::open(&args.gallery_data, false)?;
    let started = std::time::Instant::now();
    if args.add {
        let added = gallery.update_index(progress)?;
        println!(
            "added {added} rows to the index of {} ({} rows now) in {:.1?}",
            args.gallery_data.display(),
            gallery.len(),
            started.elapsed()
        );
    } else {
        let path = gallery.build_index(metric, args.build.params(), progress)?;
        println!(
            "indexed {} rows ({metric}, {} storage) in {:.1?} → {}",
            gallery.len(),
            args.build.index_storage,
            started.elapsed(),
            path.display()
        );
    }
    Ok(())
}

/// Whether a command-line word is a yacs key (`SOLVER.BASE_LR`, `OUTPUT_DIR`): upper-case
/// letters, digits, `_` and `.`, starting with a letter.
fn looks_like_key(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

impl GetSimilarArgs {
    /// `--query a.jpg b.jpg dir/ KEY VALUE ...`: the command line's trailing `KEY VALUE` pairs
    /// start at the first free word, so the query paths after the first land in front of them;
    /// this moves every word before the first yacs key (see [`looks_like_key`]) into `query`.
    /// Called by [`get_similar`].
    pub fn collect_query_paths(&mut self) {
        if self.query.is_empty() {
            return;
        }
        let n = self
            .common
            .opts
            .iter()
            .take_while(|w| !looks_like_key(w))
            .count();
        self.query
            .extend(self.common.opts.drain(..n).map(PathBuf::from));
    }
}

/// Runs `get-similar`.
pub fn get_similar(mut args: GetSimilarArgs, device: DeviceKind, progress: bool) -> Result<()> {
    args.collect_query_paths();
    let cfg = ReidConfig::from_args(&args.common)?;
    similar::run(&cfg, &args, device, progress)
}

/// Runs `visrank`.
pub fn visrank(args: VisrankArgs, device: DeviceKind, progress: bool) -> Result<()> {
    let cfg = ReidConfig::from_args(&args.common)?;
    visrank::run(&cfg, args.camid_bug_compat, device, progress)
}

/// Runs `evaluate`.
pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    let cfg = ReidConfig::from_args(&args.common)?;
    evaluate::run(&cfg, &args)
}

/// `OUTPUT_DIR`, or `.` when it is empty (the reference joins the empty string).
pub fn output_dir(cfg: &ReidConfig) -> PathBuf {
    if cfg.output_dir.trim().is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(&cfg.output_dir)
    }
}

/// Loads the checkpoint and embeds `samples` on the inner backend of `device`.
struct EmbedJob<'a> {
    checkpoint: &'a Path,
    samples: Vec<Sample>,
    cfg: &'a ReidConfig,
    progress: bool,
}

impl BackendJob for EmbedJob<'_> {
    type Output = Embedded;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Embedded> {
        let loaded = load_model::<B::InnerBackend>(self.checkpoint, None, &device)?;
        if loaded.config.name != self.cfg.model.name {
            tracing::info!(
                "using the checkpoint's architecture {} (MODEL.NAME is {})",
                loaded.config.name,
                self.cfg.model.name
            );
        }
        tracing::info!("model: {}", loaded.source);
        embed_samples(
            &loaded.model,
            self.samples,
            self.cfg,
            self.progress,
            &device,
        )
    }
}

/// Embeds `samples` with the model of `MODEL.PRETRAIN_PATH` on `device` (eval mode).
pub fn embed_with_checkpoint(
    cfg: &ReidConfig,
    samples: Vec<Sample>,
    device: DeviceKind,
    progress: bool,
) -> Result<Embedded> {
    let checkpoint = checkpoint_path(cfg)?;
    launch(
        device,
        EmbedJob {
            checkpoint: &checkpoint,
            samples,
            cfg,
            progress,
        },
    )
}

/// Writes every `(path, bytes)` atomically, in order. Called once everything is computed, so a
/// failure before this point leaves no output.
fn write_outputs(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    for (path, bytes) in files {
        kiln::io::write_atomic(path, bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A path as the string stored in `paths.npy` / `results.json`.
fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
