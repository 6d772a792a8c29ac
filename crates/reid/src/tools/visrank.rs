//! Ranked-result pictures (the reference's [`utils/visrank.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/utils/visrank.py)).
//!
//! One PNG per query, `<out_dir>/visrank/<query-stem>.png`, on a white canvas of one row:
//!
//! ```text
//! [query] <8+2 px> [rank 1] <2 px> [rank 2] <2 px> ... [rank TOPK]
//! ```
//!
//! Every tile is `INPUT.SIZE_TEST` (`H × W`): the image resized to `(H − 6) × (W − 6)` inside a
//! 3-px frame, black for the query, green (`#00FF00`) for a gallery entry of the query's
//! identity and red (`#FF0000`) otherwise. The canvas is
//! `(TOPK + 1)·W + TOPK·2 + 8` pixels wide and `H` high; tile `r` (0 = the query) starts at
//! `x = r·W + r·2 + 8·[r > 0]` ([`tile_x`]). Slots without an entry (a gallery smaller than
//! `TOPK`) stay white. The gallery entries are the first `TEST.VISUALIZE_TOPK` of the ranking
//! that evaluation keeps: entries of the query's identity seen from the query's camera (in
//! centroid mode B: whose camera set holds the query's camera) are skipped. At most
//! `TEST.VISUALIZE_MAX_NUMBER` queries are drawn, in query order.
//!
//! Centroid mode (`MODEL.USE_CENTROIDS`): the gallery is the centroid gallery of evaluation
//! (mode B with `MODEL.KEEP_CAMID_CENTROIDS`, else mode A) and each centroid is pictured by one
//! of its member images, drawn with a generator seeded from 0 and the centroid's index.
//!
//! Deviations from the reference: the border is drawn around the image resized into the tile
//! (torchreid-style code resizes, pads, and resizes again, blurring the frame), mode A centroid
//! pictures work (the reference asserts on them), the member image of a centroid is not
//! Python's `random.seed(0)` draw, and the gallery camera ids are the right ones (the reference's
//! [`visrank.py:91`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/utils/visrank.py#L91) has the same camera-id offset bug as its centroid
//! evaluation, which indexes the query+gallery camera array with gallery indices; centroid mode B
//! here follows
//! `bug_compat` like evaluation). Two queries with the same file stem get `<stem>_<index>.png`.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use image::{ImageFormat, Rgb, RgbImage};
use kiln::DeviceKind;
use rand::Rng;
use rayon::prelude::*;

use super::{embed_with_checkpoint, output_dir, rank_gallery};
use crate::config::ReidConfig;
use crate::data::{Sample, load_dataset, load_rgb, resize_rgb};
use crate::eval::{
    CentroidGallery, CentroidMode, EmbeddingSet, EvalLabels, FeatureMatrix, GalleryCamids,
    RetrievalOptions, build_centroids,
};

/// Frame width of every tile, in pixels.
pub const VISRANK_BORDER: usize = 3;
/// Space between two tiles, in pixels.
pub const VISRANK_SPACING: usize = 2;
/// Extra space after the query tile, in pixels.
pub const VISRANK_QUERY_EXTRA_SPACING: usize = 8;

const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREEN: Rgb<u8> = Rgb([0, 255, 0]);
const RED: Rgb<u8> = Rgb([255, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// `[width, height]` of a picture with `topk` gallery tiles of `[h, w]` (`INPUT.SIZE_TEST`).
pub fn canvas_size([h, w]: [usize; 2], topk: usize) -> [usize; 2] {
    [
        (topk + 1) * w + topk * VISRANK_SPACING + VISRANK_QUERY_EXTRA_SPACING,
        h,
    ]
}

/// Left edge of tile `rank` (0 = the query) for tiles `width` pixels wide.
pub fn tile_x(rank: usize, width: usize) -> usize {
    if rank == 0 {
        0
    } else {
        rank * width + rank * VISRANK_SPACING + VISRANK_QUERY_EXTRA_SPACING
    }
}

/// One picture to draw: the query image and its ranked gallery images.
struct Row<'a> {
    query: &'a Path,
    /// Gallery image and whether it shows the query's identity.
    entries: Vec<(&'a Path, bool)>,
    file: PathBuf,
}

/// Draws `image` resized into a `[h, w]` tile with a frame of `colour` at `x`.
fn draw_tile(
    canvas: &mut RgbImage,
    image: &Path,
    colour: Rgb<u8>,
    x: usize,
    [h, w]: [usize; 2],
) -> Result<()> {
    let b = VISRANK_BORDER;
    let picture = resize_rgb(&load_rgb(image)?, [h - 2 * b, w - 2 * b]);
    for ty in 0..h {
        for tx in 0..w {
            let inside = (b..h - b).contains(&ty) && (b..w - b).contains(&tx);
            let px = if inside {
                *picture.get_pixel((tx - b) as u32, (ty - b) as u32)
            } else {
                colour
            };
            canvas.put_pixel((x + tx) as u32, ty as u32, px);
        }
    }
    Ok(())
}

fn draw_row(row: &Row<'_>, size: [usize; 2], topk: usize) -> Result<RgbImage> {
    let [cw, ch] = canvas_size(size, topk);
    let mut canvas = RgbImage::from_pixel(cw as u32, ch as u32, WHITE);
    draw_tile(&mut canvas, row.query, BLACK, 0, size)?;
    for (r, &(image, same_pid)) in row.entries.iter().take(topk).enumerate() {
        let colour = if same_pid { GREEN } else { RED };
        draw_tile(&mut canvas, image, colour, tile_x(r + 1, size[1]), size)?;
    }
    Ok(canvas)
}

/// File names `<stem>.png` in `dir`, `<stem>_<q>.png` for a repeated stem.
fn picture_files(query: &[Sample], dir: &Path) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    query
        .iter()
        .enumerate()
        .map(|(q, s)| {
            let stem = s.path.file_stem().map_or_else(
                || format!("query_{q}"),
                |n| n.to_string_lossy().into_owned(),
            );
            let name = if seen.insert(stem.clone()) {
                format!("{stem}.png")
            } else {
                format!("{stem}_{q}.png")
            };
            dir.join(name)
        })
        .collect()
}

/// The rows of the first `min(rankings.len(), TEST.VISUALIZE_MAX_NUMBER)` queries, each with the
/// first `TEST.VISUALIZE_TOPK` of the `(image, same identity)` entries that `entries` yields for
/// the query and its ranking, drawn into `<out_dir>/visrank/`.
fn draw_rankings<'a, I>(
    query: &'a [Sample],
    rankings: &'a [Vec<usize>],
    cfg: &ReidConfig,
    out_dir: &Path,
    progress: bool,
    entries: impl Fn(&'a Sample, &'a [usize]) -> I,
) -> Result<usize>
where
    I: Iterator<Item = (&'a Path, bool)>,
{
    let n = rankings.len().min(cfg.test.visualize_max_number);
    let files = picture_files(&query[..n], &out_dir.join("visrank"));
    let rows = rankings[..n]
        .iter()
        .zip(query)
        .zip(files)
        .map(|((ranking, q), file)| Row {
            query: &q.path,
            entries: entries(q, ranking).take(cfg.test.visualize_topk).collect(),
            file,
        })
        .collect();
    draw_all(rows, cfg, progress)
}

/// Draws the rows (in parallel) and writes each PNG atomically; returns the number written.
fn draw_all(rows: Vec<Row<'_>>, cfg: &ReidConfig, progress: bool) -> Result<usize> {
    let size = cfg.input.size_test;
    ensure!(
        size[0] > 2 * VISRANK_BORDER && size[1] > 2 * VISRANK_BORDER,
        "INPUT.SIZE_TEST {size:?} is too small to draw ranked results (needs more than {} px)",
        2 * VISRANK_BORDER
    );
    let topk = cfg.test.visualize_topk;
    let bar = kiln::progress::bar(Some(rows.len()), "visrank", progress);
    rows.par_iter()
        .map(|row| -> Result<()> {
            let canvas = draw_row(row, size, topk)?;
            let mut bytes = Vec::new();
            canvas
                .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
                .with_context(|| format!("cannot encode {}", row.file.display()))?;
            kiln::io::write_atomic(&row.file, &bytes)?;
            bar.inc(1);
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    bar.finish_and_clear();
    Ok(rows.len())
}

fn check_rankings(query: &[Sample], rankings: &[Vec<usize>], gallery_len: usize) -> Result<()> {
    ensure!(
        rankings.len() <= query.len(),
        "{} rankings for {} queries",
        rankings.len(),
        query.len()
    );
    for (q, ranking) in rankings.iter().enumerate() {
        if let Some(&g) = ranking.iter().find(|&&g| g >= gallery_len) {
            anyhow::bail!("the ranking of query {q} refers to gallery entry {g} of {gallery_len}");
        }
    }
    Ok(())
}

/// Writes `<out_dir>/visrank/<query-stem>.png` for the first `min(rankings.len(),
/// TEST.VISUALIZE_MAX_NUMBER)` queries (see the module docs); returns the number of pictures.
///
/// `rankings[q]` lists gallery indices by ascending distance for `query[q]`; it may be a prefix
/// of the full ordering (e.g. from [`visrank_rankings`]). Entries of the query's pid **and**
/// camera are skipped, then the first `TEST.VISUALIZE_TOPK` are drawn.
pub fn write_visrank(
    query: &[Sample],
    gallery: &[Sample],
    rankings: &[Vec<usize>],
    cfg: &ReidConfig,
    out_dir: &Path,
    progress: bool,
) -> Result<usize> {
    check_rankings(query, rankings, gallery.len())?;
    draw_rankings(query, rankings, cfg, out_dir, progress, |q, ranking| {
        ranking
            .iter()
            .map(|&g| &gallery[g])
            .filter(move |g| !(g.pid == q.pid && g.camid == q.camid))
            .map(move |g| (g.path.as_path(), g.pid == q.pid))
    })
}

/// The member image that pictures each centroid: one drawn per centroid from a generator seeded
/// with 0 and the centroid's index.
fn centroid_pictures<'a>(gallery: &'a [Sample], centroids: &CentroidGallery) -> Vec<&'a Path> {
    centroids
        .members
        .iter()
        .enumerate()
        .map(|(c, members)| {
            let mut rng = kiln::seed::rng(0, "visrank-centroid", c as u64);
            let pick = members[rng.random_range(0..members.len())];
            gallery[pick].path.as_path()
        })
        .collect()
}

/// [`write_visrank`] for a centroid gallery: `rankings[q]` lists centroid indices; each centroid
/// is pictured by one of its member images of `gallery`. In mode B (`respect_camids`) the
/// centroids of the query's pid whose camera set holds the query's camera are skipped; mode A
/// skips nothing.
pub fn write_visrank_centroids(
    query: &[Sample],
    gallery: &[Sample],
    centroids: &CentroidGallery,
    rankings: &[Vec<usize>],
    cfg: &ReidConfig,
    out_dir: &Path,
    progress: bool,
) -> Result<usize> {
    check_rankings(query, rankings, centroids.len())?;
    if let Some(bad) = centroids
        .members
        .iter()
        .flatten()
        .find(|&&g| g >= gallery.len())
    {
        anyhow::bail!(
            "a centroid refers to gallery image {bad}, but the gallery has {}",
            gallery.len()
        );
    }
    ensure!(
        centroids.members.iter().all(|m| !m.is_empty()),
        "a centroid has no member image"
    );
    let pictures = &centroid_pictures(gallery, centroids);
    draw_rankings(query, rankings, cfg, out_dir, progress, |q, ranking| {
        ranking
            .iter()
            .filter(move |&&c| {
                !(centroids.respect_camids
                    && centroids.pids[c] == q.pid
                    && centroids.camid_sets[c].contains(&q.camid))
            })
            .map(move |&c| (pictures[c], centroids.pids[c] == q.pid))
    })
}

/// The first `topk` gallery entries that evaluation keeps for each query (see
/// [`rank_gallery`]), as indices: the input of [`write_visrank`].
pub fn visrank_rankings(
    query: &FeatureMatrix,
    gallery: &FeatureMatrix,
    labels: &EvalLabels<'_>,
    opts: &RetrievalOptions,
    topk: usize,
) -> Result<Vec<Vec<usize>>> {
    Ok(indices(rank_gallery(
        query,
        gallery,
        opts,
        topk,
        Some(labels),
    )?))
}

fn indices(ranked: Vec<Vec<super::Match>>) -> Vec<Vec<usize>> {
    ranked
        .into_iter()
        .map(|matches| matches.into_iter().map(|m| m.index).collect())
        .collect()
}

/// The first `n` rows of `features`.
fn head_rows(features: &FeatureMatrix, n: usize) -> Result<FeatureMatrix> {
    let dim = features.dim();
    FeatureMatrix::new(features.as_slice()[..n * dim].to_vec(), dim)
}

/// Ranks and draws in one call (what `reid test` does with `TEST.VISUALIZE yes`): ranks the
/// first `TEST.VISUALIZE_MAX_NUMBER` queries against the gallery with evaluation's options
/// (`TEST.FEAT_NORM`, `SOLVER.DISTANCE_FUNC`), or against the centroid gallery with
/// `MODEL.USE_CENTROIDS` (mode B when `MODEL.KEEP_CAMID_CENTROIDS`, with `bug_compat`, else
/// mode A), and writes the pictures into `<out_dir>/visrank/`. `query_features` and
/// `gallery_features` are the un-normalised embeddings of `query` and `gallery`, row for row.
#[allow(clippy::too_many_arguments)]
pub fn visualize(
    query: &[Sample],
    gallery: &[Sample],
    query_features: &FeatureMatrix,
    gallery_features: &FeatureMatrix,
    cfg: &ReidConfig,
    bug_compat: bool,
    out_dir: &Path,
    progress: bool,
) -> Result<usize> {
    ensure!(
        query.len() == query_features.rows() && gallery.len() == gallery_features.rows(),
        "visrank: {} query / {} gallery images but {} / {} embeddings",
        query.len(),
        gallery.len(),
        query_features.rows(),
        gallery_features.rows()
    );
    let opts = crate::infer::retrieval_options(cfg)?;
    let topk = cfg.test.visualize_topk;
    let n = query.len().min(cfg.test.visualize_max_number);
    let q_pids: Vec<i64> = query.iter().map(|s| s.pid).collect();
    let q_camids: Vec<i64> = query.iter().map(|s| s.camid).collect();
    let g_pids: Vec<i64> = gallery.iter().map(|s| s.pid).collect();
    let g_camids: Vec<i64> = gallery.iter().map(|s| s.camid).collect();
    let shown = head_rows(query_features, n)?;
    if cfg.model.use_centroids {
        let mode = if cfg.model.keep_camid_centroids {
            CentroidMode::PerCamera { bug_compat }
        } else {
            CentroidMode::PerIdentity
        };
        let centroids = build_centroids(
            EmbeddingSet {
                features: query_features,
                pids: &q_pids,
                camids: &q_camids,
            },
            EmbeddingSet {
                features: gallery_features,
                pids: &g_pids,
                camids: &g_camids,
            },
            mode,
        )?;
        ensure!(
            !centroids.is_empty(),
            "visrank: the centroid gallery ({mode:?}) is empty (no gallery identity has a query \
             image seen from another camera)"
        );
        let rankings = if centroids.respect_camids {
            let labels = EvalLabels {
                q_pids: &q_pids,
                q_camids: &q_camids,
                g_pids: &centroids.pids,
                g_camids: GalleryCamids::Sets(&centroids.camid_sets),
            };
            visrank_rankings(&shown, &centroids.features, &labels, &opts, topk)?
        } else {
            // Mode A removes nothing (queries and centroids get different dummy cameras).
            indices(rank_gallery(
                &shown,
                &centroids.features,
                &opts,
                topk,
                None,
            )?)
        };
        write_visrank_centroids(
            query, gallery, &centroids, &rankings, cfg, out_dir, progress,
        )
    } else {
        let labels = EvalLabels {
            q_pids: &q_pids,
            q_camids: &q_camids,
            g_pids: &g_pids,
            g_camids: GalleryCamids::Single(&g_camids),
        };
        let rankings = visrank_rankings(&shown, gallery_features, &labels, &opts, topk)?;
        write_visrank(query, gallery, &rankings, cfg, out_dir, progress)
    }
}

pub(super) fn run(
    cfg: &ReidConfig,
    bug_compat: bool,
    device: DeviceKind,
    progress: bool,
) -> Result<()> {
    crate::infer::checkpoint_path(cfg)?;
    let dataset = load_dataset(cfg)?;
    tracing::info!("{}", dataset.summary());
    ensure!(
        !dataset.query.is_empty() && !dataset.gallery.is_empty(),
        "dataset {} under {} has no query or no gallery image",
        cfg.datasets.names,
        cfg.root_dir().display()
    );
    let embedded = embed_with_checkpoint(cfg, dataset.val(), device, progress)?;
    let num_query = dataset.num_query();
    let dim = embedded.features.dim();
    let (q, g) = embedded.features.as_slice().split_at(num_query * dim);
    let query_features = FeatureMatrix::new(q.to_vec(), dim)?;
    let gallery_features = FeatureMatrix::new(g.to_vec(), dim)?;
    let out = output_dir(cfg);
    let written = visualize(
        &dataset.query,
        &dataset.gallery,
        &query_features,
        &gallery_features,
        cfg,
        bug_compat,
        &out,
        progress,
    )?;
    println!(
        "{written} ranked-result pictures → {}",
        out.join("visrank").display()
    );
    Ok(())
}
