//! Concatenation operations for FlexTensor.

use alloc::vec::Vec;
use burn_backend::{DType, Element};
use burn_std::{Bytes, Shape, bf16, f16};

use crate::{FlexTensor, Layout};

/// Concatenate tensors along the given dimension.
pub fn cat(tensors: Vec<FlexTensor>, dim: usize) -> FlexTensor {
    assert!(!tensors.is_empty(), "cat: cannot concatenate empty list");
    if tensors.len() == 1 {
        return tensors.into_iter().next().unwrap();
    }

    let dtype = tensors[0].dtype();
    match dtype {
        DType::F32 => cat_impl::<f32>(tensors, dim),
        DType::F64 => cat_impl::<f64>(tensors, dim),
        DType::F16 => cat_impl::<f16>(tensors, dim),
        DType::BF16 => cat_impl::<bf16>(tensors, dim),
        DType::I64 => cat_impl::<i64>(tensors, dim),
        DType::I32 => cat_impl::<i32>(tensors, dim),
        DType::I16 => cat_impl::<i16>(tensors, dim),
        DType::I8 => cat_impl::<i8>(tensors, dim),
        DType::U64 => cat_impl::<u64>(tensors, dim),
        DType::U32 => cat_impl::<u32>(tensors, dim),
        DType::U16 => cat_impl::<u16>(tensors, dim),
        DType::U8 | DType::Bool(_) => cat_impl::<u8>(tensors, dim),
        _ => panic!("cat: unsupported dtype {:?}", dtype),
    }
}

fn cat_impl<E: Element + bytemuck::Pod>(tensors: Vec<FlexTensor>, dim: usize) -> FlexTensor {
    let dtype = tensors[0].dtype();
    let first_shape = tensors[0].layout().shape();
    let ndims = first_shape.num_dims();

    assert!(
        dim < ndims,
        "cat: dim {} out of bounds for {} dimensions",
        dim,
        ndims
    );

    // Compute output shape: sum along cat dim, others must match
    let mut out_dims = first_shape.to_vec();
    out_dims[dim] = 0;
    for t in &tensors {
        assert_eq!(
            t.dtype(),
            dtype,
            "cat: dtype mismatch: expected {:?}, got {:?}",
            dtype,
            t.dtype()
        );
        let s = t.layout().shape();
        assert_eq!(s.num_dims(), ndims, "cat: dimension count mismatch");
        for (d, out_d) in out_dims.iter_mut().enumerate() {
            if d == dim {
                *out_d += s[d];
            } else {
                assert_eq!(
                    s[d], first_shape[d],
                    "cat: shape mismatch at dim {d}: expected {}, got {}",
                    first_shape[d], s[d]
                );
            }
        }
    }

    let out_shape = Shape::from(out_dims.clone());
    let total_elements: usize = out_shape.num_elements();

    if total_elements == 0 {
        let bytes = Bytes::from_elems::<E>(Vec::new());
        return FlexTensor::new(bytes, Layout::contiguous(out_shape), dtype);
    }

    let mut output: Vec<E> = Vec::with_capacity(total_elements);

    // Fast path: dim 0, all contiguous
    if dim == 0
        && tensors
            .iter()
            .all(|t| t.layout().contiguous_offsets().is_some())
    {
        for t in &tensors {
            let (start, end) = t.layout().contiguous_offsets().unwrap();
            let data: &[E] = t.storage();
            output.extend_from_slice(&data[start..end]);
        }
    } else {
        // kiln patch (see FIX.md): each input's `[size(dim), inner...]` block of one outer
        // index is read in place when it is contiguous in storage (a contiguous tensor, or a
        // slice of one along `dim` or an outer dimension), and the outer blocks are copied on
        // all threads. Upstream copied every non-contiguous input whole first, then
        // concatenated on one thread.
        let inner_size: usize = out_dims[dim + 1..].iter().product();
        let row_len = out_dims[dim] * inner_size;

        let sources: Vec<FlexTensor> = tensors
            .into_iter()
            .map(|t| {
                if blocks_contiguous(t.layout(), dim) {
                    t
                } else {
                    t.to_contiguous()
                }
            })
            .collect();
        let fill_row = |outer: usize, row: &mut [core::mem::MaybeUninit<E>]| {
            let mut written = 0;
            for t in &sources {
                let layout = t.layout();
                let len = layout.shape()[dim] * inner_size;
                let mut start = layout.start_offset() as isize;
                let mut rest = outer;
                for d in (0..dim).rev() {
                    let size = layout.shape()[d];
                    start += (rest % size) as isize * layout.strides()[d];
                    rest /= size;
                }
                let data: &[E] = t.storage();
                let start = start as usize;
                for (slot, &x) in row[written..written + len]
                    .iter_mut()
                    .zip(&data[start..start + len])
                {
                    slot.write(x);
                }
                written += len;
            }
        };
        let rows = &mut output.spare_capacity_mut()[..total_elements];
        #[cfg(feature = "rayon")]
        let parallel = total_elements >= crate::ops::PARALLEL_THRESHOLD;
        #[cfg(not(feature = "rayon"))]
        let parallel = false;
        if parallel {
            #[cfg(feature = "rayon")]
            {
                use rayon::prelude::*;
                rows.par_chunks_mut(row_len)
                    .enumerate()
                    .for_each(|(outer, row)| fill_row(outer, row));
            }
        } else {
            for (outer, row) in rows.chunks_mut(row_len).enumerate() {
                fill_row(outer, row);
            }
        }
        // SAFETY: `fill_row` wrote all `row_len` elements of every row, and the rows tile
        // the first `total_elements` slots.
        unsafe { output.set_len(total_elements) };
    }

    let bytes = Bytes::from_elems(output);
    FlexTensor::new(bytes, Layout::contiguous(out_shape), dtype)
}

/// kiln patch (see FIX.md): whether every `[size(dim), inner...]` block of `layout` (one per
/// outer index) is one contiguous run of storage, with non-negative outer strides.
fn blocks_contiguous(layout: &Layout, dim: usize) -> bool {
    let shape = layout.shape();
    let strides = layout.strides();
    let mut expected = 1isize;
    for d in (dim..shape.num_dims()).rev() {
        if shape[d] != 1 && strides[d] != expected {
            return false;
        }
        expected *= shape[d] as isize;
    }
    strides[..dim].iter().all(|&s| s >= 0)
}
