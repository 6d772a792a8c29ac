//! The P×K identity sampler (the reference's `RandomIdentitySampler` in
//! [`distributed_pids_sampler.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/datasets/samplers/distributed_pids_sampler.py) and its
//! per-identity dataset, with their *intended* semantics).
//!
//! Every batch holds P distinct identities × K images each, laid out pid-major: items
//! `b·K .. b·K+K` belong to the b-th identity of the batch. The centroid triplet loss relies on
//! this contiguous layout.
//!
//! One epoch, deterministic from `(seed, epoch)`:
//!
//! 1. Identities with fewer than 2 images are excluded. Every other identity's image list is
//!    shuffled once; with `n` images it gets `ceil(n'/K)` *occurrences*, where `n' = n − 1` when
//!    `n mod K == 1` and `n' = n` otherwise (n = 2..5 → 1, 6..9 → 2 for K = 4). Its j-th
//!    occurrence serves the j-th K-chunk of its shuffled list (so an identity with `n mod K == 1`
//!    leaves one image out of the epoch).
//! 2. Rounds: while at least `P·world_size` identities have occurrences left, draw
//!    `P·world_size` distinct ones uniformly among them and consume one occurrence of each. The
//!    leftover identities are discarded.
//! 3. The resulting list is split into `world_size` contiguous chunks (like `np.array_split`);
//!    rank `r` takes chunk `r`, trimmed to a multiple of P, and cuts it into batches of P
//!    identities. Every P-aligned window lies inside one round, so the identities of a batch are
//!    distinct, and ranks never share images.
//! 4. A chunk shorter than K is padded: with `use_resampling` by drawing the missing images with
//!    replacement from that chunk (the identity's images still unserved this epoch, which is the
//!    list the reference copies before popping); otherwise with *mock* items
//!    ([`PkItem::index`] = `None`: an all-zero normalised image, masked out of most losses).
//!
//! The reference instead pops from per-worker copies of the identity lists, so in practice its
//! consumption rarely carries across batches; this port implements the intended semantics
//! (each identity's images served without replacement across the epoch). Its generator is
//! Python's `random` seeded with the epoch, so its exact draws are not reproduced.

use anyhow::{Result, ensure};
use rand::Rng;
use rand::seq::SliceRandom;

/// One slot of a P×K batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkItem {
    /// Index into the training list; `None` for a mock (padding) item.
    pub index: Option<usize>,
    /// Training label (identity) of the slot.
    pub label: usize,
}

/// Occurrences per epoch of an identity with `n` images and K = `k`: `ceil(n'/k)` with
/// `n' = n − 1` when `n mod k == 1`, else `n`; 0 for `n < 2`.
pub fn occurrences_per_epoch(n: usize, k: usize) -> usize {
    if n < 2 || k == 0 {
        return 0;
    }
    let effective = if n % k == 1 { n - 1 } else { n };
    effective.div_ceil(k)
}

/// The P×K batch planner (see the module docs).
#[derive(Debug, Clone)]
pub struct PkSampler {
    train_by_pid: Vec<Vec<usize>>,
    p: usize,
    k: usize,
    use_resampling: bool,
    world_size: usize,
    rank: usize,
}

impl PkSampler {
    /// `train_by_pid[label]` lists the training indices of each identity
    /// ([`ReidDataset::train_by_pid`](super::ReidDataset::train_by_pid)); `p` identities
    /// (`SOLVER.IMS_PER_BATCH`) × `k` instances (`DATALOADER.NUM_INSTANCE`) per batch;
    /// `use_resampling` is `DATALOADER.USE_RESAMPLING`; this process is `rank` of `world_size`.
    ///
    /// Errors when P or K is 0, `rank >= world_size`, or fewer than `P·world_size` identities
    /// have at least 2 images (no batch could ever be formed).
    pub fn new(
        train_by_pid: Vec<Vec<usize>>,
        p: usize,
        k: usize,
        use_resampling: bool,
        world_size: usize,
        rank: usize,
    ) -> Result<Self> {
        ensure!(
            p >= 1,
            "SOLVER.IMS_PER_BATCH (identities per batch) must be at least 1"
        );
        ensure!(
            k >= 1,
            "DATALOADER.NUM_INSTANCE (images per identity) must be at least 1"
        );
        ensure!(
            world_size >= 1 && rank < world_size,
            "rank {rank} is not in a world of size {world_size}"
        );
        let eligible = train_by_pid.iter().filter(|l| l.len() >= 2).count();
        ensure!(
            eligible >= p * world_size,
            "only {eligible} training identities have at least 2 images, but a batch needs \
             SOLVER.IMS_PER_BATCH × world size = {p} × {world_size} = {} distinct identities",
            p * world_size
        );
        Ok(Self {
            train_by_pid,
            p,
            k,
            use_resampling,
            world_size,
            rank,
        })
    }

    /// The same sampler as rank `rank` of `world_size` (the checks of [`PkSampler::new`] apply).
    pub fn for_rank(self, rank: usize, world_size: usize) -> Result<Self> {
        Self::new(
            self.train_by_pid,
            self.p,
            self.k,
            self.use_resampling,
            world_size,
            rank,
        )
    }

    /// The number of data-parallel ranks this sampler shares each epoch's plan with.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Identities per batch (P).
    pub fn p(&self) -> usize {
        self.p
    }

    /// Images per identity (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Items per batch (P·K).
    pub fn batch_size(&self) -> usize {
        self.p * self.k
    }

    /// The batches of `epoch` for this rank; each is P·K items, pid-major. Deterministic from
    /// `(seed, epoch)`; every rank computes the same global plan and takes its own chunk.
    pub fn epoch(&self, seed: u64, epoch: usize) -> Vec<Vec<PkItem>> {
        let mut rng = kiln::seed::rng(seed, "reid-pk-sampler", epoch as u64);

        // 1. Shuffle each eligible identity once; count its occurrences.
        let mut shuffled: Vec<Vec<usize>> = Vec::with_capacity(self.train_by_pid.len());
        let mut remaining: Vec<usize> = Vec::with_capacity(self.train_by_pid.len());
        for images in &self.train_by_pid {
            let occ = occurrences_per_epoch(images.len(), self.k);
            let mut list = images.clone();
            if occ > 0 {
                list.shuffle(&mut rng);
            }
            shuffled.push(list);
            remaining.push(occ);
        }

        // 2. Rounds of P·world_size distinct identities.
        let per_round = self.p * self.world_size;
        let mut available: Vec<usize> =
            (0..remaining.len()).filter(|&l| remaining[l] > 0).collect();
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (label, occurrence number)
        while available.len() >= per_round {
            let picks = rand::seq::index::sample(&mut rng, available.len(), per_round);
            for pos in picks.iter() {
                let label = available[pos];
                let used = occurrences_per_epoch(self.train_by_pid[label].len(), self.k)
                    - remaining[label];
                plan.push((label, used));
                remaining[label] -= 1;
            }
            available.retain(|&l| remaining[l] > 0);
        }

        // 3. This rank's contiguous chunk (np.array_split), trimmed to a multiple of P.
        let total = plan.len();
        let base = total / self.world_size;
        let extra = total % self.world_size;
        let start = self.rank * base + self.rank.min(extra);
        let len = base + usize::from(self.rank < extra);
        let len = len - len % self.p;
        let mine = &plan[start..start + len];

        // 4. Materialise the K-chunks. Padding draws use a generator per rank so ranks stay
        //    independent of each other's chunk sizes.
        let mut pad_rng = kiln::seed::rng(
            seed,
            "reid-pk-sampler-pad",
            ((epoch as u64) << 16) | self.rank as u64,
        );
        mine.chunks(self.p)
            .map(|batch| {
                let mut items = Vec::with_capacity(self.p * self.k);
                for &(label, occurrence) in batch {
                    self.push_chunk(
                        &mut items,
                        &shuffled[label],
                        label,
                        occurrence,
                        &mut pad_rng,
                    );
                }
                items
            })
            .collect()
    }

    fn push_chunk<R: Rng>(
        &self,
        items: &mut Vec<PkItem>,
        shuffled: &[usize],
        label: usize,
        occurrence: usize,
        rng: &mut R,
    ) {
        let start = occurrence * self.k;
        let end = (start + self.k).min(shuffled.len());
        let chunk = &shuffled[start..end];
        items.extend(chunk.iter().map(|&i| PkItem {
            index: Some(i),
            label,
        }));
        for _ in chunk.len()..self.k {
            let index = if self.use_resampling {
                Some(chunk[rng.random_range(0..chunk.len())])
            } else {
                None
            };
            items.push(PkItem { index, label });
        }
    }
}
