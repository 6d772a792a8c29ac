//! Repeat a tensor along a dimension.

use alloc::vec::Vec;
use burn_std::Shape;

use crate::{FlexTensor, Layout};

/// Repeat `tensor` along `dim` by `times`.
pub fn repeat_dim(tensor: FlexTensor, dim: usize, times: usize) -> FlexTensor {
    if times == 1 {
        return tensor;
    }

    let ndims = tensor.layout().num_dims();
    assert!(
        dim < ndims,
        "repeat_dim: dim {} out of bounds for tensor with {} dimensions",
        dim,
        ndims
    );

    let tensor = tensor.to_contiguous();
    let shape = tensor.layout().shape().clone();
    let dtype = tensor.dtype();
    let elem_size = crate::tensor::dtype_size(dtype);

    let mut new_dims: Vec<usize> = shape.iter().cloned().collect();
    new_dims[dim] *= times;
    let new_shape = Shape::from(new_dims);

    let src: &[u8] = tensor.bytes();
    let n = new_shape.num_elements() * elem_size;
    // kiln patch (see FIX.md): write into a buffer with the element's alignment instead of a
    // `Vec<u8>` that `Bytes::from_bytes_vec` would re-allocate and copy.
    let mut dst = crate::tensor::zeroed_bytes(n, elem_size);
    let mut written = 0;

    let inner: usize = shape.iter().skip(dim + 1).product();
    let dim_size = shape[dim];
    let chunk_bytes = dim_size * inner * elem_size;
    let outer: usize = shape.iter().take(dim).product();

    // kiln patch (see FIX.md): each outer block is filled by doubling (copy the chunk once,
    // then copy what is written so far), `log2(times)` copies instead of `times`; upstream made
    // one `copy_from_slice` per repeat, which for a short chunk (repeating the last dimension
    // of `[.., 1]`) meant one tiny memcpy per output element.
    let block = chunk_bytes * times;
    for o in 0..outer {
        let start = o * chunk_bytes;
        let out = &mut dst[written..written + block];
        out[..chunk_bytes].copy_from_slice(&src[start..start + chunk_bytes]);
        let mut filled = chunk_bytes;
        while filled < block {
            let len = filled.min(block - filled);
            out.copy_within(..len, filled);
            filled += len;
        }
        written += block;
    }

    debug_assert_eq!(written, n);
    FlexTensor::new(dst, Layout::contiguous(new_shape), dtype)
}
