//! Backend operations implementations.

use alloc::borrow::Cow;
use burn_backend::DType;
use burn_std::{bf16, f16};

use crate::FlexTensor;

/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "64")]
pub(crate) const INDEX_DTYPE: DType = DType::I64;
/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "32")]
pub(crate) const INDEX_DTYPE: DType = DType::I32;

/// Minimum total element count for rayon fan-out on per-row or per-chunk loops.
/// Below this, task-dispatch overhead dominates the per-unit work.
#[cfg(feature = "rayon")]
pub(crate) const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// Elements per rayon task of [`par_map`] and [`par_zip_map`].
#[cfg(feature = "rayon")]
const PAR_MAP_CHUNK: usize = 1 << 14;

/// kiln patch (see FIX.md): `src.map(f)` into a new vector, split over rayon's threads above
/// [`PARALLEL_THRESHOLD`] elements. Upstream's allocating paths (an op on a tensor that autodiff
/// also keeps for the backward pass, so it cannot be updated in place) ran on one thread.
pub(crate) fn par_map<E, R, F>(src: &[E], f: F) -> alloc::vec::Vec<R>
where
    E: Copy + Sync,
    R: Send,
    F: Fn(E) -> R + Sync,
{
    #[cfg(feature = "rayon")]
    if src.len() >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        let mut out = alloc::vec::Vec::with_capacity(src.len());
        out.spare_capacity_mut()[..src.len()]
            .par_chunks_mut(PAR_MAP_CHUNK)
            .zip(src.par_chunks(PAR_MAP_CHUNK))
            .for_each(|(out, src)| {
                for (slot, &x) in out.iter_mut().zip(src) {
                    slot.write(f(x));
                }
            });
        // SAFETY: every one of the first `src.len()` slots was written above.
        unsafe { out.set_len(src.len()) };
        return out;
    }
    src.iter().map(|&x| f(x)).collect()
}

/// kiln patch (see FIX.md): `zip(a, b).map(f)` into a new vector, like [`par_map`].
pub(crate) fn par_zip_map<A, B, R, F>(a: &[A], b: &[B], f: F) -> alloc::vec::Vec<R>
where
    A: Copy + Sync,
    B: Copy + Sync,
    R: Send,
    F: Fn(A, B) -> R + Sync,
{
    let len = a.len().min(b.len());
    #[cfg(feature = "rayon")]
    if len >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        let mut out = alloc::vec::Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(PAR_MAP_CHUNK)
            .zip(a[..len].par_chunks(PAR_MAP_CHUNK))
            .zip(b[..len].par_chunks(PAR_MAP_CHUNK))
            .for_each(|((out, a), b)| {
                for ((slot, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    slot.write(f(x, y));
                }
            });
        // SAFETY: every one of the first `len` slots was written above.
        unsafe { out.set_len(len) };
        return out;
    }
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// kiln patch (see FIX.md): `x = f(x)` over `dst`, split like [`par_map`].
pub(crate) fn par_update<E, F>(dst: &mut [E], f: F)
where
    E: Copy + Send,
    F: Fn(E) -> E + Sync,
{
    #[cfg(feature = "rayon")]
    if dst.len() >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        dst.par_chunks_mut(PAR_MAP_CHUNK).for_each(|chunk| {
            for x in chunk {
                *x = f(*x);
            }
        });
        return;
    }
    for x in dst {
        *x = f(*x);
    }
}

/// kiln patch (see FIX.md): `x = f(x, y)` over `dst` and `src`, split like [`par_map`].
pub(crate) fn par_zip_update<E, F>(dst: &mut [E], src: &[E], f: F)
where
    E: Copy + Send + Sync,
    F: Fn(E, E) -> E + Sync,
{
    #[cfg(feature = "rayon")]
    if dst.len() >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        dst.par_chunks_mut(PAR_MAP_CHUNK)
            .zip(src.par_chunks(PAR_MAP_CHUNK))
            .for_each(|(dst, src)| {
                for (x, &y) in dst.iter_mut().zip(src) {
                    *x = f(*x, y);
                }
            });
        return;
    }
    for (x, &y) in dst.iter_mut().zip(src) {
        *x = f(*x, y);
    }
}

/// Wrapper for raw mutable pointers that can be sent across rayon threads.
///
/// # Safety
///
/// The caller must ensure:
/// - The pointer remains valid for the lifetime of all uses
/// - No two threads write to the same offset
/// - No references to the underlying data exist during writes
#[cfg(feature = "rayon")]
pub(crate) struct SendMutPtr<T>(*mut T);

#[cfg(feature = "rayon")]
unsafe impl<T> Send for SendMutPtr<T> {}
#[cfg(feature = "rayon")]
unsafe impl<T> Sync for SendMutPtr<T> {}

#[cfg(feature = "rayon")]
impl<T> SendMutPtr<T> {
    pub(crate) fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// Write `val` at the given element offset.
    ///
    /// # Safety
    /// Offset must be in bounds and no other thread may write to the same offset.
    pub(crate) unsafe fn write(&self, offset: usize, val: T) {
        unsafe { self.0.add(offset).write(val) }
    }

    /// Returns the raw pointer offset by `offset` elements.
    ///
    /// # Safety
    /// Offset must be in bounds.
    pub(crate) unsafe fn ptr_add(&self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// Read a float tensor's storage as f32 values, regardless of source dtype.
/// Returns a borrowed slice for F32 (zero-copy) and an owned Vec for other
/// float dtypes (F64, F16, BF16).
///
/// Returns elements in underlying buffer order. Callers needing logical
/// iteration order must call `to_contiguous()` first.
///
/// # Panics
/// Panics if the tensor's dtype is not one of F32, F64, F16, or BF16.
pub(crate) fn float_storage_as_f32(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.dtype() {
        DType::F32 => Cow::Borrowed(tensor.storage::<f32>()),
        DType::F64 => Cow::Owned(tensor.storage::<f64>().iter().map(|&x| x as f32).collect()),
        DType::F16 => Cow::Owned(
            tensor
                .storage::<f16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        DType::BF16 => Cow::Owned(
            tensor
                .storage::<bf16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        other => panic!("float_storage_as_f32: unsupported dtype {:?}", other),
    }
}

pub mod activation;
pub mod attention;
pub mod binary;
mod bool;
pub mod cat;
pub mod comparison;
#[macro_use]
mod conv_common;
pub mod conv;
pub mod conv_transpose;
pub mod cumulative;
pub mod deform_conv;
pub mod expand;
pub mod fast_exp;
pub mod fft;
pub mod flip;
mod float;
pub mod gather_scatter;
pub mod grid_sample;
mod int;
pub mod interpolate;
pub mod mask;
pub mod matmul;
mod module;
pub mod pool;
mod qtensor;
pub mod reduce;
pub mod repeat_dim;
pub mod slice;
pub mod sort;
mod transaction;
pub mod unary;
pub mod unfold;
