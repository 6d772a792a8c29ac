//! Checks for training code: whether two runs reached the same weights, measured against how
//! far training moved them.
//!
//! Two data-parallel layouts, or a data-parallel run and one device, should end at the same
//! weights up to float summation order. A plain tolerance says little on its own: a tensor that
//! training hardly moved matches within any tolerance. [`compare_runs`] therefore measures each
//! tensor's difference against its own movement, and refuses a tensor that did not move.
//!
//! Comparing backends (a model on burn-wgpu against the same weights on burn-flex) needs the same
//! weights on both: [`transfer`] copies them through the checkpoint format, [`module_params`] and
//! [`gradients`] read a module's values and gradients by parameter path, and
//! [`max_relative_diff`] finds the tensor that differs most.

use anyhow::{Result, bail, ensure};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor};

/// Named parameter tensors, as [`crate::checkpoint::checkpoint_params`] reads them.
pub type Params = [(String, Vec<f32>)];

/// How one tensor of two runs compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The tensor's path.
    pub name: String,
    /// Largest absolute change of the reference run from its starting point.
    pub moved: f32,
    /// Largest absolute difference between the two runs.
    pub diff: f32,
    /// The tolerance applied, as a fraction of `moved`.
    pub tolerance: f32,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{}: moved {:.3e}, differs by {:.3e} ({:.1e} of the movement, tolerance {:.0e})",
            self.name,
            self.moved,
            self.diff,
            self.diff / self.moved,
            self.tolerance
        )
    }
}

/// Compares `got` with the reference run `want`, tensor by tensor: each must differ by at most
/// `tolerance(name)` times how far `want` moved from `start` (the common initial weights, or
/// the reference run at an earlier point). An error names the first tensor that did not move
/// (the comparison would not check it) or that differs by more; the `Ok` rows say how close
/// every tensor came.
pub fn compare_runs(
    got: &Params,
    want: &Params,
    start: &Params,
    tolerance: impl Fn(&str) -> f32,
) -> Result<Vec<Drift>> {
    ensure!(
        got.len() == want.len() && want.len() == start.len(),
        "the runs hold {}, {} and {} parameter tensors",
        got.len(),
        want.len(),
        start.len()
    );
    let max_abs = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let mut rows = Vec::with_capacity(got.len());
    for (((name, a), (name_b, b)), (_, s)) in got.iter().zip(want).zip(start) {
        ensure!(
            name == name_b && a.len() == b.len() && b.len() == s.len(),
            "tensor {name} ({} values) does not match {name_b} ({} values)",
            a.len(),
            b.len()
        );
        let row = Drift {
            name: name.clone(),
            moved: max_abs(b, s),
            diff: max_abs(a, b),
            tolerance: tolerance(name),
        };
        if !(row.moved > 0.0) {
            bail!("{name} did not move: comparing it would check nothing");
        }
        if !(row.diff <= row.tolerance * row.moved) {
            bail!("the runs differ: {row}");
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `into` (a module of backend `B`) with the weights of `from` (the same architecture on backend
/// `A`), copied through the checkpoint format, shapes checked.
pub fn transfer<A: Backend, B: Backend, MA: Module<A>, MB: Module<B>>(
    from: &MA,
    into: MB,
    device: &B::Device,
) -> Result<MB> {
    let bytes = crate::checkpoint::record_to_bytes::<A, _>(from.clone().into_record())?;
    let record = crate::checkpoint::record_from_bytes::<B, MB::Record>(bytes, device)?;
    crate::checkpoint::load_checked(into, record, "the transferred weights")
}

/// A module's tensors by path, as a checkpoint holds them (floats widened or narrowed to f32).
pub fn module_params<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<(String, Vec<f32>)>> {
    let bytes = crate::checkpoint::record_to_bytes::<B, _>(module.clone().into_record())?;
    crate::checkpoint::record_params(&bytes)
}

/// The gradient of every float parameter of `model` that has one in `grads`, by path.
pub fn gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let values = g.cast(FloatDType::F32).into_data().to_vec::<f32>();
                self.out
                    .push((self.path.join("."), values.unwrap_or_default()));
            }
        }
    }
    let mut c = Collect {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// How far one tensor of two runs is apart, relative to the reference's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The tensor's path.
    pub name: String,
    /// Largest absolute difference.
    pub diff: f32,
    /// Largest absolute value of the reference tensor.
    pub scale: f32,
}

impl Mismatch {
    /// `diff / scale` (`diff` itself for an all-zero reference; infinite for a NaN).
    pub fn relative(&self) -> f32 {
        let r = if self.scale > 0.0 {
            self.diff / self.scale
        } else {
            self.diff
        };
        if r.is_nan() { f32::INFINITY } else { r }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{}: max |Δ| {:.3e} of max |x| {:.3e} ({:.1e} relative)",
            self.name,
            self.diff,
            self.scale,
            self.relative()
        )
    }
}

/// The tensor of `got` furthest from `want` relative to its size (see [`Mismatch::relative`]).
/// An error when the two hold different tensors.
pub fn max_relative_diff(got: &Params, want: &Params) -> Result<Mismatch> {
    ensure!(
        got.len() == want.len(),
        "{} tensors against {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<Mismatch> = None;
    for ((name, a), (name_b, b)) in got.iter().zip(want) {
        ensure!(
            name == name_b && a.len() == b.len(),
            "tensor {name} ({} values) does not match {name_b} ({} values)",
            a.len(),
            b.len()
        );
        let m = Mismatch {
            name: name.clone(),
            diff: a
                .iter()
                .zip(b)
                .map(|(x, y)| {
                    let d = (x - y).abs();
                    if d.is_nan() { f32::INFINITY } else { d }
                })
                .fold(0f32, f32::max),
            scale: b.iter().map(|x| x.abs()).fold(0f32, f32::max),
        };
        if worst.as_ref().is_none_or(|w| m.relative() > w.relative()) {
            worst = Some(m);
        }
    }
    worst.ok_or_else(|| anyhow::anyhow!("no tensors to compare"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[f32]) -> Vec<(String, Vec<f32>)> {
        vec![("w".into(), v.to_vec())]
    }

    #[test]
    fn differences_are_measured_against_the_movement() {
        let rows = compare_runs(&p(&[1.001, 2.0]), &p(&[1.0, 2.0]), &p(&[0.0, 2.0]), |_| {
            1e-2
        })
        .unwrap();
        assert_eq!(rows[0].moved, 1.0);
        assert!((rows[0].diff - 0.001).abs() < 1e-6);
        let e = compare_runs(&p(&[1.1, 2.0]), &p(&[1.0, 2.0]), &p(&[0.0, 2.0]), |_| 1e-2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("w: moved"), "{e}");
        let e = compare_runs(&p(&[1.0]), &p(&[1.0]), &p(&[1.0]), |_| 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not move"), "{e}");
        assert!(compare_runs(&p(&[f32::NAN]), &p(&[1.0]), &p(&[0.0]), |_| 1.0).is_err());
    }
}
