//! Broadcasting element-wise ops laid out for the CPU backend's fast kernels.
//!
//! burn-flex runs a broadcast `lhs ∘ rhs` with SIMD in two layouts only: `rhs` one row shared
//! by every row of `lhs` (`[m, n] ∘ [1, n]`), or one scalar per row of `lhs`
//! (`[m, n] ∘ [m, 1]`). Every other broadcast (`[B, H, T, T] + [1, 1, T, T]`,
//! `[B, T, d] · [1, T, 1]`, `[B, T, d] − [B, 1, d]`, ...) goes element by element through its
//! strided iterator, an order of magnitude slower (that iterator was 12% of a CNN-Transformer
//! step, these broadcasts and copies of permuted tensors). [`broadcast`] folds the dimensions
//! of a broadcast into one of the two fast layouts with reshapes (free on contiguous tensors),
//! repeating `rhs` where it must (see [`broadcast`]). The values, and under autodiff the
//! gradients, are those of the plain op on every backend.

use burn::prelude::*;

/// An element-wise binary op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `lhs + rhs`
    Add,
    /// `lhs − rhs`
    Sub,
    /// `lhs · rhs`
    Mul,
    /// `lhs / rhs`
    Div,
}

impl BinaryOp {
    fn apply<B: Backend, const D: usize>(
        self,
        lhs: Tensor<B, D>,
        rhs: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            Self::Add => lhs + rhs,
            Self::Sub => lhs - rhs,
            Self::Mul => lhs * rhs,
            Self::Div => lhs / rhs,
        }
    }
}

/// `lhs + rhs`, `rhs` broadcast to `lhs`'s shape (see [`broadcast`]).
pub fn add<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    broadcast(lhs, rhs, BinaryOp::Add)
}

/// `lhs − rhs`, `rhs` broadcast to `lhs`'s shape (see [`broadcast`]).
pub fn sub<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    broadcast(lhs, rhs, BinaryOp::Sub)
}

/// `lhs · rhs`, `rhs` broadcast to `lhs`'s shape (see [`broadcast`]).
pub fn mul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    broadcast(lhs, rhs, BinaryOp::Mul)
}

/// `lhs / rhs`, `rhs` broadcast to `lhs`'s shape (see [`broadcast`]).
pub fn div<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    broadcast(lhs, rhs, BinaryOp::Div)
}

/// A block of consecutive dimensions of `lhs` (size-1 dimensions dropped), with its number of
/// elements: `rhs` varies along it, or is broadcast along it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Varies(usize),
    Broadcast(usize),
}

/// The blocks of a broadcast, or `None` when `lhs` is itself broadcast along some dimension
/// (then the plain op is used).
fn blocks(lhs: &[usize], rhs: &[usize]) -> Option<Vec<Block>> {
    let mut out: Vec<Block> = Vec::new();
    for (&l, &r) in lhs.iter().zip(rhs) {
        if l == 1 {
            if r != 1 {
                return None;
            }
            continue;
        }
        let varies = match r {
            _ if r == l => true,
            1 => false,
            _ => return None,
        };
        match (out.last_mut(), varies) {
            (Some(Block::Varies(n)), true) | (Some(Block::Broadcast(n)), false) => *n *= l,
            (_, true) => out.push(Block::Varies(l)),
            (_, false) => out.push(Block::Broadcast(l)),
        }
    }
    Some(out)
}

/// `op(lhs, rhs)` with `rhs` (each dimension 1 or equal to `lhs`'s) broadcast to `lhs`'s shape,
/// computed in a layout burn-flex runs with SIMD (see the module docs):
///
/// * `[1, n]`-like `rhs` (varies along trailing dimensions): `[m, n] ∘ [1, n]`;
/// * `[m, 1]`-like `rhs` (varies along leading dimensions): `[m, n] ∘ [m, 1]`;
/// * `[1, n, 1]`-like: `rhs` repeated `m` times, then `[m·n, k] ∘ [m·n, 1]`;
/// * anything else: `rhs` repeated to `lhs`'s shape, then a same-shape op.
///
/// When `lhs` is broadcast itself (a size-1 dimension where `rhs`'s is larger), this is the
/// plain op.
pub fn broadcast<B: Backend, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
    op: BinaryOp,
) -> Tensor<B, D> {
    use Block::{Broadcast, Varies};
    let dims = lhs.dims();
    let Some(blocks) = blocks(&dims, &rhs.dims()) else {
        return op.apply(lhs, rhs);
    };
    let two_d = |lhs: Tensor<B, D>, rhs: Tensor<B, 2>, rows: usize, cols: usize| {
        op.apply(lhs.reshape([rows, cols]), rhs).reshape(dims)
    };
    match blocks.as_slice() {
        // Same shape, or a single value.
        [] | [_] => op.apply(lhs, rhs),
        [Broadcast(m), Varies(n)] => two_d(lhs, rhs.reshape([1, *n]), *m, *n),
        [Varies(m), Broadcast(n)] => two_d(lhs, rhs.reshape([*m, 1]), *m, *n),
        [Broadcast(m), Varies(n), Broadcast(k)] => {
            let rows = rhs.reshape([1, *n]).repeat_dim(0, *m).reshape([m * n, 1]);
            two_d(lhs, rows, m * n, *k)
        }
        _ => {
            let mut rhs = rhs;
            for (d, (&l, r)) in dims.iter().zip(rhs.dims()).enumerate() {
                if l != r {
                    rhs = rhs.repeat_dim(d, l);
                }
            }
            op.apply(lhs, rhs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    #[test]
    fn blocks_fold_dimensions() {
        use Block::{Broadcast, Varies};
        assert_eq!(
            blocks(&[4, 2, 5, 5], &[1, 1, 5, 5]),
            Some(vec![Broadcast(8), Varies(25)])
        );
        assert_eq!(
            blocks(&[4, 7, 3], &[1, 7, 1]),
            Some(vec![Broadcast(4), Varies(7), Broadcast(3)])
        );
        assert_eq!(
            blocks(&[4, 1, 7, 3], &[4, 1, 1, 1]),
            Some(vec![Varies(4), Broadcast(21)])
        );
        assert_eq!(
            blocks(&[4, 7, 3], &[4, 1, 3]),
            Some(vec![Varies(4), Broadcast(7), Varies(3)])
        );
        assert_eq!(blocks(&[4, 1, 3], &[4, 5, 3]), None);
    }

    /// Every layout (each of the four folds and the plain fallback), each op: values and both
    /// gradients equal those of Burn's own broadcasting op (also on burn-ndarray when it is built in).
    #[test]
    fn matches_the_plain_broadcast_with_gradients() {
        let cases: [([usize; 4], [usize; 4]); 7] = [
            ([3, 2, 5, 5], [1, 1, 5, 5]), // shared row
            ([3, 2, 5, 4], [3, 2, 1, 1]), // scalar per row
            ([3, 6, 4, 1], [1, 6, 1, 1]), // middle block
            ([3, 6, 4, 2], [3, 1, 4, 1]), // general
            ([3, 6, 4, 2], [3, 6, 4, 2]), // same shape
            ([3, 6, 4, 2], [1, 1, 1, 1]), // one value
            ([3, 1, 4, 2], [3, 5, 4, 2]), // lhs broadcast: plain op
        ];
        let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
        for (l, r) in cases {
            for op in ops {
                check::<Ad>(l, r, op);
                #[cfg(feature = "ndarray")]
                check::<Autodiff<crate::backend::NdArray>>(l, r, op);
            }
        }
    }

    fn check<B: burn::tensor::backend::AutodiffBackend>(
        l: [usize; 4],
        r: [usize; 4],
        op: BinaryOp,
    ) {
        let device = Default::default();
        // Divisors away from 0.
        let draw = |shape: [usize; 4]| {
            Tensor::<B, 4>::random(shape, Distribution::Uniform(0.5, 2.0), &device)
        };
        let (a, b) = (draw(l), draw(r));
        let run = |fast: bool| {
            let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
            let y = if fast {
                broadcast(a.clone(), b.clone(), op)
            } else {
                op.apply(a.clone(), b.clone())
            };
            // A weighted sum, so that every output element has its own gradient.
            let n = y.shape().num_elements();
            let w = Tensor::<B, 1, Int>::arange(0..n as i64, &device)
                .float()
                .div_scalar(n as f64)
                .reshape(y.dims());
            let grads = (y.clone() * w).sum().backward();
            (
                y.inner(),
                a.grad(&grads).map(|g| g.into_data()),
                b.grad(&grads).map(|g| g.into_data()),
            )
        };
        let (y_fast, ga_fast, gb_fast) = run(true);
        let (y_ref, ga_ref, gb_ref) = run(false);
        let tol = Tolerance::<f32>::rel_abs(1e-5, 1e-5);
        let ctx = format!("{l:?} {op:?} {r:?} on {}", B::name(&device));
        assert_eq!(y_fast.dims(), y_ref.dims(), "{ctx}");
        y_fast
            .into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), tol);
        let (ga_fast, ga_ref) = (ga_fast.expect(&ctx), ga_ref.expect(&ctx));
        ga_fast.assert_approx_eq::<f32>(&ga_ref, tol);
        let (gb_fast, gb_ref) = (gb_fast.expect(&ctx), gb_ref.expect(&ctx));
        assert_eq!(gb_fast.shape, gb_ref.shape, "{ctx}");
        gb_fast.assert_approx_eq::<f32>(&gb_ref, tol);
    }
}
