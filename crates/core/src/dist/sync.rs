//! Keeping data-parallel replicas identical: rank 0's weights and buffers to every replica.
//!
//! PyTorch's `DistributedDataParallel` broadcasts rank 0's parameters and buffers when it wraps
//! a module, and rank 0's buffers (batch-norm running statistics) before every forward pass.
//! [`broadcast_module`] does both jobs with one all-reduce of a flattened buffer: rank 0
//! contributes its values and every other rank zeros, so the sum is rank 0's values exactly
//! (`x + 0 = x` in floating point). Burn's collectives have no cross-node broadcast, but they
//! have all-reduce.

use anyhow::{Result, ensure};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::dist::{Dist, Reduce};

/// Replaces the float parameters of `model` by rank 0's (all of them, or with `buffers_only`
/// those that take no gradient: running statistics and frozen tensors).
pub fn broadcast_module<B: AutodiffBackend, M: AutodiffModule<B>>(
    dist: &Dist,
    model: M,
    buffers_only: bool,
) -> Result<M> {
    // Running statistics keep per-thread pending updates until synced; recording syncs them.
    let _ = model.clone().into_record();

    struct Collect<B: AutodiffBackend> {
        buffers_only: bool,
        parts: Vec<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if self.buffers_only && value.is_require_grad() {
                return;
            }
            let n = value.shape().num_elements();
            self.parts.push(value.inner().reshape([n]));
        }
    }
    let mut collect = Collect::<B> {
        buffers_only,
        parts: Vec::new(),
    };
    model.visit(&mut collect);
    if collect.parts.is_empty() {
        return Ok(model);
    }
    let flat = Tensor::cat(collect.parts, 0);
    let total = flat.dims()[0];
    let flat = if dist.is_main() {
        flat
    } else {
        flat.zeros_like()
    };
    let flat = dist.all_reduce::<B::InnerBackend>(flat, Reduce::Sum)?;
    ensure!(
        flat.dims()[0] == total,
        "broadcast of the model returned {} values for {total}",
        flat.dims()[0]
    );

    struct Assign<B: AutodiffBackend> {
        buffers_only: bool,
        flat: Tensor<B::InnerBackend, 1>,
        offset: usize,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Assign<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let buffers_only = self.buffers_only;
            let mut next = None;
            let param = param.map(|value| {
                let require_grad = value.is_require_grad();
                if buffers_only && require_grad {
                    return value;
                }
                let shape = value.shape();
                let n = shape.num_elements();
                let part = self.flat.clone().narrow(0, self.offset, n).reshape(shape);
                next = Some(self.offset + n);
                Tensor::from_inner(part).set_require_grad(require_grad)
            });
            if let Some(o) = next {
                self.offset = o;
            }
            param
        }
    }
    let mut assign = Assign::<B> {
        buffers_only,
        flat,
        offset: 0,
    };
    let model = model.map(&mut assign);
    ensure!(
        assign.offset == total,
        "model broadcast consumed {} of {total} values",
        assign.offset
    );
    Ok(model)
}

/// The bytes of every float parameter and buffer of `model` (visit order, little-endian f32),
/// e.g. to compare replicas bit for bit.
pub fn weight_bytes<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<u8> {
    let _ = model.clone().into_record();
    struct Bytes(Vec<u8>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Bytes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().inner().into_data().convert::<f32>();
            if let Ok(values) = data.to_vec::<f32>() {
                self.0.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
    }
    let mut b = Bytes(Vec::new());
    model.visit(&mut b);
    b.0
}
