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
//!
//! Tests that run the tools as child processes (a data-parallel run over two processes) check
//! them with [`assert_success`] and [`wait_success`].

use anyhow::{Context, Result, bail, ensure};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor};

/// Named parameter tensors, as [`crate::train::checkpoint::checkpoint_params`] reads them.
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
    /// Two units in the last place of the tensor's largest value: differences this small are
    /// f32 rounding of the stored weights whatever the movement, and always pass.
    pub ulp_floor: f32,
}

impl Drift {
    /// Whether the difference is within the tolerance (plus the rounding floor).
    pub fn passes(&self) -> bool {
        self.diff <= self.tolerance * self.moved + self.ulp_floor
    }
}

/// Two units in the last place of the largest magnitude in `v` (0 for an empty slice).
fn ulp_floor(v: &[f32]) -> f32 {
    let largest = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    2.0 * f32::EPSILON * largest
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
/// `tolerance(name)` times how far `want` moved from `start` (plus two units in the last place
/// of its largest value, the rounding of the stored weights) (the common initial weights, or
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
            ulp_floor: ulp_floor(b),
        };
        if row.moved.is_nan() || row.moved <= 0.0 {
            bail!("{name} did not move: comparing it would check nothing");
        }
        if !row.passes() {
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
    let bytes = crate::train::checkpoint::record_to_bytes::<A, _>(from.clone().into_record())?;
    let record = crate::train::checkpoint::record_from_bytes::<B, MB::Record>(bytes, device)?;
    crate::train::checkpoint::load_checked(into, record, "the transferred weights")
}

/// A module's tensors by path, as a checkpoint holds them (floats widened or narrowed to f32).
pub fn module_params<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<(String, Vec<f32>)>> {
    let bytes = crate::train::checkpoint::record_to_bytes::<B, _>(module.clone().into_record())?;
    crate::train::checkpoint::record_params(&bytes)
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

/// [`max_relative_diff`] with each tensor measured against at least `floor` times the largest
/// value of all of `want`: a tensor that is zero in exact arithmetic (the gradient of a conv bias
/// that a BatchNorm follows) holds float noise only, which differs between backends by more than
/// its own size.
pub fn max_relative_diff_floored(got: &Params, want: &Params, floor: f32) -> Result<Mismatch> {
    ensure!(
        got.len() == want.len(),
        "{} tensors against {}",
        got.len(),
        want.len()
    );
    let largest = want
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0f32, |m, x| m.max(x.abs()));
    let mut worst: Option<Mismatch> = None;
    for (a, b) in got.iter().zip(want) {
        let mut m = max_relative_diff(std::slice::from_ref(a), std::slice::from_ref(b))?;
        m.scale = m.scale.max(floor * largest);
        if worst.as_ref().is_none_or(|w| m.relative() > w.relative()) {
            worst = Some(m);
        }
    }
    worst.ok_or_else(|| anyhow::anyhow!("no tensors to compare"))
}

/// Splits each packed attention in-projection bias (a tensor named `…in_proj_bias`, PyTorch's
/// `[q; k; v]` layout) into its three parts, `…in_proj_bias[q]`, `[k]` and `[v]`, so that a
/// comparison can treat the key bias apart: its gradient is zero in exact arithmetic (a softmax
/// ignores a shift shared by all keys of a query), so training moves it by float noise alone,
/// which Adam's `g/√v` turns into steps of up to the learning rate.
pub fn split_in_proj_bias(params: &Params) -> Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::with_capacity(params.len() + 2);
    for (name, v) in params {
        if name.ends_with("in_proj_bias") {
            ensure!(
                v.len() % 3 == 0,
                "{name} holds {} values, not three equal parts",
                v.len()
            );
            for (part, chunk) in ["q", "k", "v"].iter().zip(v.chunks(v.len() / 3)) {
                out.push((format!("{name}[{part}]"), chunk.to_vec()));
            }
        } else {
            out.push((name.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// [`compare_runs`] for networks with attention: packed in-projection biases are split
/// ([`split_in_proj_bias`]), every tensor but the key biases is held to `tolerance(name)` of
/// its own movement, and each key bias, which training moves by float noise alone, to
/// `key_tolerance` of the movement of its layer's query bias (noise, small against what
/// training did to the layer). The key rows' `moved` is that query movement.
pub fn compare_attention_runs(
    got: &Params,
    want: &Params,
    start: &Params,
    tolerance: impl Fn(&str) -> f32,
    key_tolerance: f32,
) -> Result<Vec<Drift>> {
    let is_key = |n: &str| n.ends_with("in_proj_bias[k]");
    let (got, want, start) = (
        split_in_proj_bias(got)?,
        split_in_proj_bias(want)?,
        split_in_proj_bias(start)?,
    );
    let others = |p: &Params| -> Vec<(String, Vec<f32>)> {
        p.iter().filter(|(n, _)| !is_key(n)).cloned().collect()
    };
    let mut rows = compare_runs(&others(&got), &others(&want), &others(&start), tolerance)?;
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        if !is_key(name) {
            continue;
        }
        let query = name.replace("[k]", "[q]");
        let moved = rows
            .iter()
            .find(|r| r.name == query)
            .map(|r| r.moved)
            .with_context(|| format!("no {query} next to {name}"))?;
        let row = Drift {
            name: name.clone(),
            moved,
            diff: max_abs(a, b),
            tolerance: key_tolerance,
            ulp_floor: ulp_floor(b),
        };
        if !row.passes() {
            bail!("the runs differ: {row} (the movement of {query})");
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Largest absolute difference of two equally long slices; NaN when either holds one
/// (`f32::max` would drop it, and a NaN weight would compare as equal).
fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| {
            if m.is_nan() || d.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// Panics, printing the process's stdout and stderr, unless it exited successfully.
///
/// # Panics
/// When the process failed.
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a child process (polling, so that a hang is reported rather than waited on forever)
/// and [`assert_success`]es it.
///
/// # Panics
/// When the child runs past `limit` (it is killed) or fails.
pub fn wait_success(mut child: std::process::Child, limit: std::time::Duration, what: &str) {
    let started = std::time::Instant::now();
    while child.try_wait().expect("a child process to poll").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not stop within {limit:?} (a hang)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_success(&child.wait_with_output().expect("its output"), what);
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
        assert!(
            compare_runs(
                &p(&[1.0, f32::NAN]),
                &p(&[1.0, 1.0]),
                &p(&[0.0, 0.0]),
                |_| 1.0
            )
            .is_err()
        );
    }

    #[test]
    fn packed_biases_split_into_query_key_value() {
        let params = vec![
            (
                "a.in_proj_bias".to_string(),
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ),
            ("a.out_proj.bias".to_string(), vec![7.0]),
        ];
        let split = split_in_proj_bias(&params).unwrap();
        let names: Vec<&str> = split.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.in_proj_bias[q]",
                "a.in_proj_bias[k]",
                "a.in_proj_bias[v]",
                "a.out_proj.bias"
            ]
        );
        assert_eq!(split[1].1, [3.0, 4.0]);
        assert!(split_in_proj_bias(&[("in_proj_bias".to_string(), vec![1.0])]).is_err());
    }

    #[test]
    fn key_biases_are_measured_against_the_query_movement() {
        let run = |k: f32| vec![("in_proj_bias".to_string(), vec![1.0, 0.0 + k, 2.0])];
        let start = run(0.0);
        let want = vec![("in_proj_bias".to_string(), vec![2.0, 0.001, 2.5])];
        let rows = compare_attention_runs(&want, &want, &start, |_| 1e-4, 1e-2).unwrap();
        assert_eq!(rows[2].name, "in_proj_bias[k]");
        assert_eq!(rows[2].moved, 1.0);
        // 0.009 off the key bias is within 1e-2 of the query's movement 1; 0.02 is not.
        let mut got = want.clone();
        got[0].1[1] += 0.009;
        assert!(compare_attention_runs(&got, &want, &start, |_| 1e-4, 1e-2).is_ok());
        got[0].1[1] += 0.011;
        let e = compare_attention_runs(&got, &want, &start, |_| 1e-4, 1e-2).unwrap_err();
        assert!(e.to_string().contains("in_proj_bias[k]"), "{e}");
    }

    #[test]
    fn a_floored_comparison_measures_small_tensors_against_the_largest_value() {
        let t = |name: &str, v: Vec<f32>| (name.to_string(), v);
        let want = vec![t("w", vec![10.0, -2.0]), t("bias", vec![1e-6])];
        let got = vec![t("w", vec![10.01, -2.0]), t("bias", vec![3e-6])];
        // Unfloored, the bias (noise of size 1e-6) differs by twice its size.
        assert_eq!(max_relative_diff(&got, &want).unwrap().name, "bias");
        // Floored at 1e-3 of the largest value (10), it differs by 2e-6 / 1e-2; w by 1e-3.
        let m = max_relative_diff_floored(&got, &want, 1e-3).unwrap();
        assert_eq!(m.name, "w");
        assert!((m.relative() - 1e-3).abs() < 1e-6, "{m}");
        assert!(max_relative_diff_floored(&got[..1], &want, 1e-3).is_err());
    }
}
