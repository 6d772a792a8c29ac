//! Regression test for <https://github.com/tracel-ai/burn/issues/5573>: a `backward()` on one
//! thread could free the graph steps of a graph that another thread was still building, so a
//! parameter silently got no (or a partial) gradient.
//!
//! Burn 0.21's `float_cat` moved each input's node and primitive out of the tensor and so dropped
//! its reference-count token before registering its own step. In that window the graph of an input
//! that no live tensor referenced any more looked orphaned, and the sweep that every `backward()`
//! runs over all graphs (`cleanup_orphaned_entries`) freed its steps. The window opens for a
//! parameter-like leaf reused across rounds: after the first backward pass the leaf's own step is
//! consumed, so each round's first operation on it starts a new graph that holds only that round's
//! intermediates. kiln's fork of burn-autodiff (`vendor/burn-autodiff/FIX.md`) keeps the inputs'
//! tokens until the step is registered, as upstream did in tracel-ai/burn#5647.
//!
//! Victim threads reuse one leaf each and, round after round, put it through a few operations and
//! a `Tensor::cat`, run `backward()` and check the leaf's gradient exactly; sweeper threads run
//! small unrelated backward passes meanwhile. Without the fix most runs fail within a second or
//! two (see the FIX.md for the numbers); with it the test always passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use burn::tensor::{Distribution, Tensor};
use kiln::backend::{Autodiff, Flex};

type B = Autodiff<Flex>;

/// Side of the square inputs of `cat`: the larger, the longer the copy inside `float_cat`, during
/// which the inputs were unprotected.
const SIZE: usize = 128;
/// Rounds per victim thread (a victim stops at its first wrong gradient).
const ROUNDS: usize = 2000;
const VICTIMS: usize = 2;
const SWEEPERS: usize = 2;

/// The gradient of `loss` below with respect to the leaf: `3 · 2` through `x`, `3 · (−1)`
/// through `y`; exact in `f32`.
const EXPECTED_GRAD: f32 = 3.0;

/// One victim: `Err` describes the first round whose leaf gradient was missing or wrong.
fn victim(id: usize, failed: &AtomicBool) -> Result<(), String> {
    let device = Default::default();
    let leaf = Tensor::<B, 2>::random([SIZE, SIZE], Distribution::Normal(0.0, 0.5), &device)
        .require_grad();

    for round in 0..ROUNDS {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        // From the second round on, each of these starts a new graph (the leaf's step was consumed
        // by the previous backward pass), which `cat` then consumes.
        let x = leaf.clone().mul_scalar(2.0).add_scalar(1.0);
        let y = leaf.clone().neg();
        let loss = Tensor::cat(vec![x, y], 0).mul_scalar(3.0).sum();
        let grads = loss.backward();

        let Some(grad) = leaf.grad(&grads) else {
            return Err(format!(
                "victim {id}, round {round}: the leaf got no gradient"
            ));
        };
        let grad = grad.into_data().to_vec::<f32>().unwrap();
        if let Some(wrong) = grad.iter().find(|&&g| g != EXPECTED_GRAD) {
            return Err(format!(
                "victim {id}, round {round}: leaf gradient {wrong}, expected {EXPECTED_GRAD}"
            ));
        }
    }
    Ok(())
}

/// Unrelated small backward passes, each of which sweeps every graph for orphans.
fn sweeper(done: &AtomicBool) {
    let device = Default::default();
    while !done.load(Ordering::Relaxed) {
        let t = Tensor::<B, 1>::ones([4], &device).require_grad();
        let _ = t.mul_scalar(2.0).sum().backward();
    }
}

#[test]
fn concurrent_backward_keeps_reused_leaf_gradient() {
    let failed = AtomicBool::new(false);
    let done = AtomicBool::new(false);

    let errors: Vec<String> = thread::scope(|s| {
        for _ in 0..SWEEPERS {
            s.spawn(|| sweeper(&done));
        }
        let victims: Vec<_> = (0..VICTIMS)
            .map(|id| {
                let failed = &failed;
                s.spawn(move || {
                    let result = victim(id, failed);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        let results: Vec<_> = victims.into_iter().map(|v| v.join()).collect();
        done.store(true, Ordering::Relaxed);
        results
            .into_iter()
            .filter_map(|r| match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a victim thread panicked".to_string()),
            })
            .collect()
    });

    assert!(
        errors.is_empty(),
        "a concurrent backward() freed graph steps still in use (tracel-ai/burn#5573):\n{}",
        errors.join("\n")
    );
}
