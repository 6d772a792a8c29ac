//! The "COCO-ReID" fashion datasets, DF1 (DeepFashion consumer-to-shop) and Street2Shop
//! (the COCO-ReID loader of the reference's [`datasets/bases.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/datasets/bases.py); its
//! `df1.py` and `street2shop.py` are empty subclasses).
//!
//! Layout: pre-cropped images in `<images_root>/{train,query,gallery}/`, and three COCO-style
//! JSON files. The train file is given; the query and gallery files are derived from its path by
//! replacing **every** occurrence of `train` with `query` / `gallery`.
//!
//! From the JSON only `images[].{id, file_name}` and `annotations[].{image_id, pair_id}` are
//! read; every annotation becomes one sample `<split dir>/<file_name>` with pid = `pair_id`
//! (annotations whose `image_id` is not among `images[].id` are skipped). Rules:
//!
//! * camid = 1 when the lower-cased image directory path contains `gallery`, else 0;
//! * train: pair_ids with at most one image are dropped, the rest are relabelled 0..N−1 in
//!   ascending pair_id order; query and gallery keep the raw pair_ids (one shared id space);
//! * samples are emitted in ascending pair_id order, within a pair_id in annotation order;
//! * a negative pair_id is an error (the reference asserts `pair_id >= 0`).
//!
//! Deviation: the reference decides whether a directory is the train split by searching `train`
//! in its full path, so an images root containing `train` would relabel and filter the query
//! split too. Here the split is known from the directory being read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{ReidDataset, Sample};

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: i64,
    pair_id: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Query,
    Gallery,
}

/// Loads a COCO-ReID dataset (DF1 or Street2Shop): images under `images_root`, annotations in
/// `json_train` and the derived query / gallery files.
pub fn coco_reid(images_root: &Path, json_train: &Path) -> Result<ReidDataset> {
    let train_str = json_train.to_string_lossy();
    if !train_str.contains("train") {
        bail!(
            "the train annotation path {} must contain 'train' (the query and gallery files are \
             derived from it by replacing 'train')",
            json_train.display()
        );
    }
    let json_query = PathBuf::from(train_str.replace("train", "query"));
    let json_gallery = PathBuf::from(train_str.replace("train", "gallery"));
    let dirs = [
        images_root.join("train"),
        images_root.join("query"),
        images_root.join("gallery"),
    ];
    for dir in &dirs {
        if !dir.is_dir() {
            bail!(
                "COCO-ReID image directory {} does not exist (expected {}/{{train,query,gallery}})",
                dir.display(),
                images_root.display()
            );
        }
    }
    for json in [json_train, &json_query, &json_gallery] {
        if !json.is_file() {
            bail!(
                "COCO-ReID annotation file {} does not exist",
                json.display()
            );
        }
    }
    let train = process(&dirs[0], json_train, Split::Train)?;
    let query = process(&dirs[1], &json_query, Split::Query)?;
    let gallery = process(&dirs[2], &json_gallery, Split::Gallery)?;
    // Train pids are already relabelled 0..N-1 in ascending pair_id order.
    let num_classes = train
        .iter()
        .map(|s| s.pid)
        .max()
        .map_or(0, |m| m as usize + 1);
    Ok(ReidDataset {
        train,
        query,
        gallery,
        num_classes,
    })
}

fn process(images_dir: &Path, json_path: &Path, split: Split) -> Result<Vec<Sample>> {
    let coco: CocoFile = kiln::io::read_json(json_path).with_context(|| {
        format!(
            "{} must be a COCO-ReID file with images[].id/file_name and annotations[].image_id/pair_id",
            json_path.display()
        )
    })?;
    let camid = i64::from(
        images_dir
            .to_string_lossy()
            .to_lowercase()
            .contains("gallery"),
    );
    // Duplicate image ids: the last entry wins, as in the reference's dict.
    let file_of: HashMap<i64, &str> = coco
        .images
        .iter()
        .map(|img| (img.id, img.file_name.as_str()))
        .collect();
    let mut by_pair: BTreeMap<i64, Vec<PathBuf>> = BTreeMap::new();
    for (row, ann) in coco.annotations.iter().enumerate() {
        if ann.pair_id < 0 {
            bail!(
                "{}: annotations[{row}] has a negative pair_id {}",
                json_path.display(),
                ann.pair_id
            );
        }
        let files = by_pair.entry(ann.pair_id).or_default();
        if let Some(file) = file_of.get(&ann.image_id) {
            files.push(images_dir.join(file));
        }
    }
    if split == Split::Train {
        by_pair.retain(|_, files| files.len() > 1);
    }
    let mut samples = Vec::new();
    for (label, (pair_id, files)) in by_pair.into_iter().enumerate() {
        let pid = if split == Split::Train {
            label as i64
        } else {
            pair_id
        };
        samples.extend(files.into_iter().map(|path| Sample { path, pid, camid }));
    }
    if samples.is_empty() {
        bail!(
            "{} yields no samples for {}{}",
            json_path.display(),
            images_dir.display(),
            if split == Split::Train {
                " (train pair_ids with fewer than 2 images are dropped)"
            } else {
                ""
            }
        );
    }
    Ok(samples)
}
