//! Seeding that makes CPU runs reproducible.
//!
//! Randomness has two homes in a Burn program: the backend's generator (parameter init, dropout,
//! `Tensor::random`) and host-side generators (shuffling, augmentation draws, splits). kiln seeds
//! both from one user seed, and derives every stream from `(seed, purpose, epoch)` instead of
//! carrying generator state forward. A run resumed at epoch `e` therefore draws exactly what an
//! uninterrupted run draws at epoch `e`: the "RNG state" of a checkpoint is just the seed and the
//! epoch counter.
//!
//! The backend generator is process-global on the CPU backends, so two trainings running in the
//! same process at the same time share it. Tests that assert reproducibility hold [`global_lock`].

use std::sync::{Mutex, MutexGuard};

use burn::tensor::backend::Backend;
use rand::SeedableRng;
use rand::rngs::StdRng;

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

/// Seeds the backend generator for a named stream (parameter init, dropout of one epoch...).
pub fn seed_backend<B: Backend>(device: &B::Device, seed: u64, stream: &str, index: u64) {
    B::seed(device, derive(seed, stream, index));
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
