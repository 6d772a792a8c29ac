//! Seeding that makes CPU runs reproducible.
//!
//! Randomness has two homes in a Burn program: the backend's generator (parameter init, dropout,
//! `Tensor::random`) and host-side generators (shuffling, augmentation draws, splits). kiln seeds
//! both from one user seed, and derives every stream from `(seed, purpose, epoch)` instead of
//! carrying generator state forward. A run resumed at epoch `e` therefore draws exactly what an
//! uninterrupted run draws at epoch `e`: the "RNG state" of a checkpoint is just the seed and the
//! epoch counter.
//!
//! Burn's backend generators are process-global (one per backend, shared by every thread and
//! device), and a data-parallel run trains one worker thread per device in one process. Left
//! alone, the workers would draw dropout masks and initial weights from the shared generator in
//! whatever order their threads get there, and the same seed would give a different model from
//! run to run. So kiln keeps the random draws of training off the shared generator:
//!
//! * each training thread has its own stream ([`seed_thread`], which the trainer calls at the
//!   start of every epoch with the run seed, the worker's rank and the epoch); dropout
//!   ([`crate::numerics::nn::Dropout`]) draws its mask seeds from it ([`next_seed`]), so a worker's masks
//!   depend on the seed, its rank and the epoch only;
//! * code that must use the backend generator itself (Burn's parameter initialisers) runs inside
//!   [`with_backend_seed`], which holds the generator for the whole draw, executes the queued
//!   work before letting go (lazy backends such as burn-fusion draw when they execute, not when
//!   the op is recorded), and so cannot interleave with another thread's draws.
//!
//! Tests that assert reproducibility of whole runs hold [`global_lock`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// The default seed of both reference projects' moola side (1337).
pub const DEFAULT_SEED: u64 = 1337;

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives an independent seed for a named stream, e.g. `derive(seed, "shuffle", epoch)`.
pub fn derive(seed: u64, stream: &str, index: u64) -> u64 {
    let mut h = splitmix(seed);
    for b in stream.bytes() {
        h = splitmix(h ^ u64::from(b));
    }
    splitmix(h ^ splitmix(index))
}

/// A host generator for a named stream.
pub fn rng(seed: u64, stream: &str, index: u64) -> StdRng {
    StdRng::seed_from_u64(derive(seed, stream, index))
}

/// The seed of data-parallel rank `rank`'s own random streams (dropout, augmentation, mixup):
/// the run seed itself for rank 0 (so a one-device run draws what rank 0 draws), a derived one
/// for the others. Shuffling and sharding, which every rank must agree on, use the run seed.
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        derive(seed, "rank", rank as u64)
    }
}

thread_local! {
    /// This thread's stream (see the module docs); `None` until [`seed_thread`].
    static THREAD_STREAM: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Starts this thread's random stream at `(seed, stream, index)`, e.g. `(rank seed, "epoch",
/// epoch)`. Later [`next_seed`] calls on this thread draw from it.
pub fn seed_thread(seed: u64, stream: &str, index: u64) {
    THREAD_STREAM.set(Some(rng(seed, stream, index)));
}

/// Runs `f` with `stream` as this thread's random stream, then gives the advanced stream back
/// (the trainer's virtual ranks each keep their own).
pub fn with_thread_stream<R>(stream: &mut StdRng, f: impl FnOnce() -> R) -> R {
    let previous = THREAD_STREAM.replace(Some(stream.clone()));
    let out = f();
    if let Some(advanced) = THREAD_STREAM.replace(previous) {
        *stream = advanced;
    }
    out
}

/// Forgets this thread's random stream ([`next_seed`] falls back to the backend generator).
pub fn clear_thread_stream() {
    THREAD_STREAM.set(None);
}

/// The next 64-bit seed of this thread's stream, or, on a thread that has none, one drawn from
/// the backend generator of `device` (under its lock).
pub fn next_seed<B: Backend>(device: &B::Device) -> u64 {
    if let Some(seed) = THREAD_STREAM.with_borrow_mut(|s| s.as_mut().map(|r| r.next_u64())) {
        return seed;
    }
    let _generator = backend_generator();
    backend_draw::<B>(device)
}

/// One 64-bit seed drawn from the backend's own generator: four 16-bit words, since a backend's
/// integers may be 32-bit and signed.
fn backend_draw<B: Backend>(device: &B::Device) -> u64 {
    use burn::tensor::{Distribution, Int, Tensor};
    let words: Vec<i64> =
        Tensor::<B, 1, Int>::random([4], Distribution::Uniform(0.0, 65_536.0), device)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
    words
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | (w as u64 & 0xFFFF))
}

static BACKEND_GENERATOR: Mutex<()> = Mutex::new(());

fn backend_generator() -> MutexGuard<'static, ()> {
    BACKEND_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `draw` (e.g. a model's initialisation) with the backend generator seeded at `(seed,
/// stream, index)` and held by this thread until the work is executed (`B::sync`), so that no
/// other thread's draws interleave with it: the same seed gives the same draws whatever the
/// other workers of the process do.
pub fn with_backend_seed<B: Backend, R>(
    device: &B::Device,
    seed: u64,
    stream: &str,
    index: u64,
    draw: impl FnOnce() -> R,
) -> R {
    let _generator = backend_generator();
    B::seed(device, derive(seed, stream, index));
    let out = draw();
    // Lazy backends (burn-fusion) draw when the recorded ops run: run them now.
    if let Err(e) = B::sync(device) {
        tracing::warn!("cannot synchronise the device after seeded draws: {e:?}");
    }
    out
}

/// Builds a model with the backend generator at `(seed, "init", 0)` and initialises every
/// parameter before letting the generator go ([`crate::train::checkpoint::materialize`]: Burn
/// initialises parameters lazily, on first use, which would draw outside [`with_backend_seed`]).
pub fn init_module<B: Backend, M: burn::module::Module<B>, E>(
    device: &B::Device,
    seed: u64,
    build: impl FnOnce() -> Result<M, E>,
) -> Result<M, E> {
    with_backend_seed::<B, _>(device, seed, "init", 0, || {
        build().map(crate::train::checkpoint::materialize::<B, M>)
    })
}

/// Seeds the backend generator for a named stream. Prefer [`with_backend_seed`] (which keeps
/// other threads from drawing before the draws are done) or [`seed_thread`] (per-thread).
pub fn seed_backend<B: Backend>(device: &B::Device, seed: u64, stream: &str, index: u64) {
    let _generator = backend_generator();
    B::seed(device, derive(seed, stream, index));
}

static CONCURRENT_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Marks the calling thread as one of several training workers of this process until the
/// guard drops (`kiln::backend::launch_workers` does this for each worker thread).
pub fn worker_guard() -> WorkerGuard {
    CONCURRENT_WORKERS.fetch_add(1, Ordering::SeqCst);
    WorkerGuard(())
}

/// See [`worker_guard`].
pub struct WorkerGuard(());

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        CONCURRENT_WORKERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True while training workers share this process (an in-process data-parallel run): random
/// draws must then not come from a backend's process-wide generator.
pub fn workers_share_process() -> bool {
    CONCURRENT_WORKERS.load(Ordering::SeqCst) > 0
}

static GLOBAL: Mutex<()> = Mutex::new(());

/// Serialises code that relies on the process-global backend generator (reproducibility tests).
pub fn global_lock() -> MutexGuard<'static, ()> {
    GLOBAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn derived_streams_are_stable_and_distinct() {
        assert_eq!(derive(1, "a", 0), derive(1, "a", 0));
        assert_ne!(derive(1, "a", 0), derive(1, "a", 1));
        assert_ne!(derive(1, "a", 0), derive(1, "b", 0));
        assert_ne!(derive(1, "a", 0), derive(2, "a", 0));
        let a: u64 = rng(7, "x", 3).random();
        let b: u64 = rng(7, "x", 3).random();
        assert_eq!(a, b);
    }
}
