//! Checks for training code: whether two runs reached the same weights, measured against how
//! far training moved them.
//!
//! Two data-parallel layouts, or a data-parallel run and one device, should end at the same
//! weights up to float summation order. A plain tolerance says little on its own: a tensor that
//! training hardly moved matches within any tolerance. [`compare_runs`] therefore measures each
//! tensor's difference against its own movement, and refuses a tensor that did not move.

use anyhow::{Result, bail, ensure};

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
