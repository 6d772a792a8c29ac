//! Datasets, the P×K identity sampler, image transforms and the prefetching loaders.
//!
//! * [`ReidDataset`]: the train / query / gallery lists of one dataset ([`market1501`],
//!   [`dukemtmc`], [`coco_reid`] for DF1 and Street2Shop; [`load_dataset`] dispatches on
//!   `DATASETS.NAMES`).
//! * [`PkSampler`]: the P identities × K instances batch plan of one epoch (the reference's
//!   `RandomIdentitySampler`).
//! * [`TrainTransform`] / [`TestTransform`]: resize, flip, pad + crop, normalise, random erasing
//!   (the reference's `datasets/transforms`).
//! * [`TrainLoader`] / [`EvalLoader`]: decode and transform on worker threads behind a bounded
//!   prefetch queue, yielding [`TrainBatch`] / [`EvalBatch`].
//! * [`list_images`]: the reference inference tools' image listing.
//! * [`write_synthetic_market1501`] and [`convert_fashion_mnist`]: test data and the bundled
//!   Fashion-MNIST retrieval set (`datasets/fashion-mnist-reid`).

mod coco;
mod fashion;
mod images;
mod loader;
mod market;
mod sampler;
mod synthetic;
mod transforms;

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::config::ReidConfig;

pub use coco::coco_reid;
pub use fashion::{
    ConvertSummary, FashionSpec, IdxImages, convert_fashion_mnist, read_idx_images, read_idx_labels,
};
pub use images::{IMAGE_EXTENSIONS, ListedImage, list_images, load_rgb};
pub use loader::{EvalBatch, EvalLoader, LoaderOptions, TrainBatch, TrainLoader};
pub use market::{dukemtmc, market1501, parse_market_name};
pub use sampler::{PkItem, PkSampler, occurrences_per_epoch};
pub use synthetic::{SyntheticSpec, write_synthetic_market1501};
pub use transforms::{
    AugmentParams, EraseRect, RandomErasing, TestTransform, TrainTransform, erase_size,
    normalize_into, resize_rgb,
};

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Image file.
    pub path: PathBuf,
    /// Identity: the relabelled class index `0..num_classes` in `train`, the raw pid in `query`
    /// and `gallery`.
    pub pid: i64,
    /// Camera: 0-based for Market1501 / DukeMTMC-reID (file camera − 1); 0 for COCO query and
    /// train images, 1 for COCO gallery images.
    pub camid: i64,
}

impl Sample {
    /// An image with no identity or camera (pid 0, camid 0), for embedding tools.
    pub fn unlabelled(path: PathBuf) -> Self {
        Self {
            path,
            pid: 0,
            camid: 0,
        }
    }
}

/// The three splits of a retrieval dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReidDataset {
    /// Training images; pids relabelled `0..num_classes` in ascending order of the raw pid.
    pub train: Vec<Sample>,
    /// Query images (raw pids).
    pub query: Vec<Sample>,
    /// Gallery images (raw pids).
    pub gallery: Vec<Sample>,
    /// Number of distinct training identities.
    pub num_classes: usize,
}

impl ReidDataset {
    /// Number of query images (the first `num_query` rows of [`ReidDataset::val`]).
    pub fn num_query(&self) -> usize {
        self.query.len()
    }

    /// The evaluation list: query images first, then gallery images (the reference's order).
    pub fn val(&self) -> Vec<Sample> {
        self.query
            .iter()
            .chain(self.gallery.iter())
            .cloned()
            .collect()
    }

    /// For every training label `0..num_classes`, the indices into `train` of its images, in
    /// `train` order.
    pub fn train_by_pid(&self) -> Vec<Vec<usize>> {
        let mut by_pid = vec![Vec::new(); self.num_classes];
        for (index, sample) in self.train.iter().enumerate() {
            // Labels are 0..num_classes by construction; skip anything else defensively.
            if let Some(list) = usize::try_from(sample.pid)
                .ok()
                .and_then(|pid| by_pid.get_mut(pid))
            {
                list.push(index);
            }
        }
        by_pid
    }

    /// One-line statistics (identities / images / cameras per split), for logs.
    pub fn summary(&self) -> String {
        fn stats(samples: &[Sample]) -> (usize, usize, usize) {
            let mut pids: Vec<i64> = samples.iter().map(|s| s.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            let mut cams: Vec<i64> = samples.iter().map(|s| s.camid).collect();
            cams.sort_unstable();
            cams.dedup();
            (pids.len(), samples.len(), cams.len())
        }
        let (tp, ti, tc) = stats(&self.train);
        let (qp, qi, qc) = stats(&self.query);
        let (gp, gi, gc) = stats(&self.gallery);
        format!(
            "train: {tp} ids / {ti} images / {tc} cameras; query: {qp} ids / {qi} images / {qc} \
             cameras; gallery: {gp} ids / {gi} images / {gc} cameras"
        )
    }
}

/// Loads the dataset named by `DATASETS.NAMES` from `DATASETS.ROOT_DIR` (and
/// `DATASETS.JSON_TRAIN_PATH` for the COCO-ReID datasets `df1` and `street2shop`).
pub fn load_dataset(cfg: &ReidConfig) -> Result<ReidDataset> {
    let root = cfg.root_dir();
    match cfg.datasets.names.as_str() {
        "market1501" => market1501(&root),
        "dukemtmcreid" => dukemtmc(&root),
        "df1" | "street2shop" => {
            if cfg.datasets.json_train_path.is_empty() {
                bail!(
                    "DATASETS.JSON_TRAIN_PATH must name the train annotation file for dataset {}",
                    cfg.datasets.names
                );
            }
            coco_reid(&root, std::path::Path::new(&cfg.datasets.json_train_path))
        }
        other => bail!(
            "unknown dataset DATASETS.NAMES = '{other}'; expected one of {}",
            crate::config::DATASET_NAMES.join(", ")
        ),
    }
}

/// Relabels training samples in ascending order of their raw pid; returns the number of classes.
fn relabel_ascending(train: &mut [Sample]) -> usize {
    let mut pids: Vec<i64> = train.iter().map(|s| s.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for sample in train.iter_mut() {
        // `pids` holds every pid of `train`, so the search always succeeds.
        let label = pids.binary_search(&sample.pid).unwrap_or_default();
        sample.pid = label as i64;
    }
    pids.len()
}
