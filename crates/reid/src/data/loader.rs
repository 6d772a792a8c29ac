//! Prefetching batch loaders: JPEG decoding and transforms run on worker threads, ahead of the
//! consumer, behind a bounded queue.
//!
//! A loader owns a producer thread that builds batches in order. Each batch's images are decoded
//! and transformed in parallel on a dedicated pool of `num_workers` threads, then the finished
//! batch is pushed into a bounded channel of `prefetch` slots; the training loop pops from it,
//! so it only waits when decoding is slower than the model. Dropping a loader stops its thread.
//!
//! Errors (a missing or corrupt image) arrive in order as an `Err` item naming the file; the
//! loader ends after it.
//!
//! Augmentation randomness is per sample: the generator of the item at position `i` of the
//! epoch is seeded from `(seed, epoch, i)`, so batches are identical whatever the number of
//! workers or their scheduling.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, bounded};
use rayon::prelude::*;

use super::images::load_rgb;
use super::sampler::{PkItem, PkSampler};
use super::transforms::{TestTransform, TrainTransform};
use super::{ReidDataset, Sample};
use crate::config::ReidConfig;

/// Worker threads and queue depth of a loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Decoding threads (at least 1).
    pub num_workers: usize,
    /// Finished batches buffered ahead of the consumer (at least 1).
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            num_workers: 2,
            prefetch: 2,
        }
    }
}

impl LoaderOptions {
    /// `DATALOADER.NUM_WORKERS` threads, 2 batches of prefetch.
    pub fn from_config(cfg: &ReidConfig) -> Self {
        Self {
            num_workers: cfg.dataloader.num_workers.max(1),
            prefetch: 2,
        }
    }
}

/// One P×K training batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    /// Images `[n, 3, height, width]`, row-major, normalised.
    pub images: Vec<f32>,
    /// Number of images (P·K).
    pub n: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Training labels, pid-major blocks of K.
    pub labels: Vec<i64>,
    /// Camera ids (a mock item takes the camera of its block's first image).
    pub camids: Vec<i64>,
    /// `false` for mock (padding) items, whose image is all zeros.
    pub is_real: Vec<bool>,
}

/// One evaluation batch (query then gallery order).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalBatch {
    /// Images `[n, 3, height, width]`, row-major, normalised.
    pub images: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Raw pids.
    pub pids: Vec<i64>,
    /// Camera ids.
    pub camids: Vec<i64>,
}

/// Ordered batches built on a background thread.
struct Prefetcher<T> {
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    total: usize,
    finished: bool,
}

impl<T: Send + 'static> Prefetcher<T> {
    fn spawn<J, F>(jobs: Vec<J>, options: &LoaderOptions, build: F) -> Result<Self>
    where
        J: Send + 'static,
        F: Fn(J) -> Result<T> + Send + Sync + 'static,
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.num_workers.max(1))
            .thread_name(|i| format!("reid-loader-{i}"))
            .build()
            .context("cannot start the data loader's worker threads")?;
        let (tx, rx) = bounded(options.prefetch.max(1));
        let total = jobs.len();
        let handle = std::thread::Builder::new()
            .name("reid-loader".into())
            .spawn(move || {
                for job in jobs {
                    let batch = pool.install(|| build(job));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .context("cannot start the data loader thread")?;
        Ok(Self {
            rx: Some(rx),
            handle: Some(handle),
            remaining: total,
            total,
            finished: false,
        })
    }

    /// At most the batches not yet received (a failure ends the stream early).
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.finished { 0 } else { self.remaining };
        (0, Some(left))
    }

    fn next_batch(&mut self) -> Option<Result<T>> {
        if self.finished {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(item) => {
                self.remaining = self.remaining.saturating_sub(1);
                if item.is_err() || self.remaining == 0 {
                    self.finished = true;
                }
                Some(item)
            }
            Err(_) => {
                // The producer stopped early without sending an error: it panicked.
                self.finished = true;
                if self.remaining == 0 {
                    return None;
                }
                let reason = match self.handle.take().map(JoinHandle::join) {
                    Some(Err(panic)) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into()),
                    _ => "the loader thread ended".into(),
                };
                Some(Err(anyhow!(
                    "data loader stopped after {} of {} batches: {reason}",
                    self.total - self.remaining,
                    self.total
                )))
            }
        }
    }
}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Closing the channel makes a producer blocked on `send` stop.
        drop(self.rx.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The training batches of one epoch: an owned, `Send` iterator of `Result<TrainBatch>`.
pub struct TrainLoader {
    inner: Prefetcher<TrainBatch>,
}

struct TrainJob {
    position: usize,
    items: Vec<PkItem>,
}

impl TrainLoader {
    /// Loads `batches` (from [`PkSampler::epoch`]) of `train` (the dataset's train list).
    ///
    /// Every real item is decoded and goes through `transform` with a generator seeded from
    /// `(seed, epoch, position in the epoch)`; mock items become all-zero images with
    /// `is_real = false`.
    pub fn new(
        train: Arc<[Sample]>,
        batches: Vec<Vec<PkItem>>,
        transform: TrainTransform,
        seed: u64,
        epoch: usize,
        options: &LoaderOptions,
    ) -> Result<Self> {
        for (b, batch) in batches.iter().enumerate() {
            for item in batch {
                if let Some(i) = item.index
                    && i >= train.len()
                {
                    anyhow::bail!(
                        "batch {b} refers to training image {i}, but the train split has {} images",
                        train.len()
                    );
                }
            }
        }
        let mut position = 0;
        let jobs: Vec<TrainJob> = batches
            .into_iter()
            .map(|items| {
                let job = TrainJob { position, items };
                position += job.items.len();
                job
            })
            .collect();
        let augment_seed = kiln::seed::derive(seed, "reid-augment", epoch as u64);
        let transform = Arc::new(transform);
        let inner = Prefetcher::spawn(jobs, options, move |job: TrainJob| {
            build_train_batch(&train, &job, &transform, augment_seed)
        })?;
        Ok(Self { inner })
    }

    /// The loader of `epoch`: plans the epoch with `sampler` and loads `dataset.train`.
    pub fn for_epoch(
        dataset: &ReidDataset,
        sampler: &PkSampler,
        transform: TrainTransform,
        seed: u64,
        epoch: usize,
        options: &LoaderOptions,
    ) -> Result<Self> {
        let batches = sampler.epoch(seed, epoch);
        Self::new(
            dataset.train.clone().into(),
            batches,
            transform,
            seed,
            epoch,
            options,
        )
    }

    /// Total number of batches of the epoch.
    pub fn num_batches(&self) -> usize {
        self.inner.total
    }

    /// As a [`kiln::trainer::Loader`].
    pub fn into_kiln(self) -> kiln::trainer::Loader<TrainBatch> {
        let len = Some(self.num_batches());
        kiln::trainer::Loader {
            batches: Box::new(self),
            len,
        }
    }
}

impl Iterator for TrainLoader {
    type Item = Result<TrainBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_batch()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

fn build_train_batch(
    train: &[Sample],
    job: &TrainJob,
    transform: &TrainTransform,
    augment_seed: u64,
) -> Result<TrainBatch> {
    let [height, width] = transform.size;
    let len = transform.output_len();
    let n = job.items.len();
    let mut images = vec![0.0f32; n * len];
    let results: Vec<Result<()>> = images
        .par_chunks_mut(len)
        .zip(job.items.par_iter())
        .enumerate()
        .map(|(slot, (out, item))| {
            let Some(index) = item.index else {
                return Ok(()); // mock: stays all zeros
            };
            let sample = &train[index];
            let img = load_rgb(&sample.path)?;
            let mut rng = kiln::seed::rng(augment_seed, "sample", (job.position + slot) as u64);
            out.copy_from_slice(&transform.apply(&img, &mut rng));
            Ok(())
        })
        .collect();
    results.into_iter().collect::<Result<()>>()?;

    let mut labels = Vec::with_capacity(n);
    let mut camids = Vec::with_capacity(n);
    let mut is_real = Vec::with_capacity(n);
    let mut block_camid = 0;
    let mut block_label = None;
    for item in &job.items {
        if block_label != Some(item.label) {
            block_label = Some(item.label);
            block_camid = item.index.map_or(0, |i| train[i].camid);
        }
        labels.push(item.label as i64);
        camids.push(item.index.map_or(block_camid, |i| train[i].camid));
        is_real.push(item.index.is_some());
    }
    Ok(TrainBatch {
        images,
        n,
        height,
        width,
        labels,
        camids,
        is_real,
    })
}

/// Evaluation batches over a fixed list (query then gallery), in order.
pub struct EvalLoader {
    inner: Prefetcher<EvalBatch>,
}

impl EvalLoader {
    /// Batches of `batch_size` consecutive samples (`TEST.IMS_PER_BATCH`), transformed with
    /// `transform`; the last batch may be shorter.
    pub fn new(
        samples: Arc<[Sample]>,
        transform: TestTransform,
        batch_size: usize,
        options: &LoaderOptions,
    ) -> Result<Self> {
        anyhow::ensure!(batch_size >= 1, "TEST.IMS_PER_BATCH must be at least 1");
        let jobs: Vec<std::ops::Range<usize>> = (0..samples.len())
            .step_by(batch_size)
            .map(|start| start..(start + batch_size).min(samples.len()))
            .collect();
        let transform = Arc::new(transform);
        let inner = Prefetcher::spawn(jobs, options, move |range: std::ops::Range<usize>| {
            build_eval_batch(&samples[range], &transform)
        })?;
        Ok(Self { inner })
    }

    /// The evaluation loader of a dataset: [`ReidDataset::val`] with `TEST.IMS_PER_BATCH`.
    pub fn for_dataset(
        dataset: &ReidDataset,
        transform: TestTransform,
        batch_size: usize,
        options: &LoaderOptions,
    ) -> Result<Self> {
        Self::new(dataset.val().into(), transform, batch_size, options)
    }

    /// Total number of batches.
    pub fn num_batches(&self) -> usize {
        self.inner.total
    }
}

impl Iterator for EvalLoader {
    type Item = Result<EvalBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_batch()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

fn build_eval_batch(samples: &[Sample], transform: &TestTransform) -> Result<EvalBatch> {
    let [height, width] = transform.size;
    let len = transform.output_len();
    let n = samples.len();
    let mut images = vec![0.0f32; n * len];
    let results: Vec<Result<()>> = images
        .par_chunks_mut(len)
        .zip(samples.par_iter())
        .map(|(out, sample)| {
            let img = load_rgb(&sample.path)?;
            out.copy_from_slice(&transform.apply(&img));
            Ok(())
        })
        .collect();
    results.into_iter().collect::<Result<()>>()?;
    Ok(EvalBatch {
        images,
        n,
        height,
        width,
        pids: samples.iter().map(|s| s.pid).collect(),
        camids: samples.iter().map(|s| s.camid).collect(),
    })
}
