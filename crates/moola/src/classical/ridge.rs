//! Ridge classification with the regularisation chosen by efficient leave-one-out
//! cross-validation: scikit-learn's `RidgeClassifierCV(alphas)` with its defaults
//! (`fit_intercept=True`, `scoring=None`, no sample or class weights), the classifier
//! MiniRocket is published with.
//!
//! The fit, as scikit-learn's `_RidgeGCV` in its Gram ("eigen") mode:
//!
//! 1. targets: one column per class with +1 for the class and −1 elsewhere (`LabelBinarizer`),
//!    a single column for two classes (+1 = the second class);
//! 2. `X` and the targets are centred on their column means (the intercept is not penalised);
//! 3. the Gram matrix `K = X Xᵀ` is decomposed once, `K = Q diag(λ) Qᵀ` ([`symmetric_eigen`]);
//! 4. for each α, with `G = (K + αI)⁻¹ = Q diag(1/(λ + α)) Qᵀ`: dual coefficients `c = G y`,
//!    the leave-one-out residuals `c / d` with `d = diag(G) − (G 1) / n` (the intercept's
//!    correction), and the score `−mean((c / d)²)` over every row and target;
//! 5. the first α with the best score wins (a later one must score strictly higher); the
//!    weights are `Xᵀ c` and the intercept `ȳ − x̄ · w`.
//!
//! Prediction is the class of the largest decision value (two classes: the second class when
//! the decision value is positive), as `RidgeClassifier.predict`. Probabilities, which ridge
//! does not define: a softmax of the decision values (two classes: of `(−s, s)`) times one
//! temperature, fitted by log-loss on the leave-one-out decision values of the chosen α; the
//! argmax is the prediction above.
//!
//! Cost: `O(n² p)` for the Gram matrix and `O(n³)` for its decomposition, for `n` training
//! windows and `p` features: meant for up to a few thousand windows (MiniRocket's authors move
//! to logistic regression beyond about 10,000).

use anyhow::{Result, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `numpy.logspace(-3, 3, 10)`: the α grid of MiniRocket's `RidgeClassifierCV` (computed as
/// NumPy does: `10^(i · step − 3)` with `step = 6 / 9`, the last exponent exactly 3).
pub fn default_alphas() -> Vec<f64> {
    let step = 6.0 / 9.0;
    (0..10)
        .map(|i| {
            let e = if i == 9 { 3.0 } else { i as f64 * step - 3.0 };
            10f64.powf(e)
        })
        .collect()
}

/// A fitted ridge classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgeFit {
    /// Number of classes.
    pub n_classes: usize,
    /// The chosen α.
    pub alpha: f64,
    /// Its leave-one-out score (negative mean squared error; scikit-learn's `best_score_`).
    pub best_score: f64,
    /// Weights, one row per target column (one for two classes), `p` values each.
    pub coef: Vec<Vec<f64>>,
    /// Intercept per target column.
    pub intercept: Vec<f64>,
    /// Softmax temperature of [`RidgeFit::predict_proba`].
    pub temperature: f64,
}

/// Symmetric eigendecomposition of the `n × n` row-major matrix `a` (only its values matter;
/// it must be symmetric): eigenvalues in ascending order and the eigenvectors as the rows of
/// the returned `n × n` matrix (row `k` belongs to eigenvalue `k`). Householder reduction to
/// tridiagonal form, then the implicit QL iteration (the EISPACK `tred2` / `tql2` pair).
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure!(a.len() == n * n, "a {n}×{n} matrix needs {} values", n * n);
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut v: Vec<Vec<f64>> = (0..n).map(|i| a[i * n..(i + 1) * n].to_vec()).collect();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tridiagonalize(&mut v, &mut d, &mut e);
    // Rows of `w` are the eigenvectors (columns of `v`): the rotations touch two rows.
    let mut w: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| v[i][j]).collect()).collect();
    ql_implicit(&mut d, &mut e, &mut w)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&i| d[i]).collect();
    let vectors = order.iter().flat_map(|&i| w[i].iter().copied()).collect();
    Ok((values, vectors))
}

/// Householder reduction of the symmetric `v` to tridiagonal form: on return `d` holds the
/// diagonal, `e[1..]` the sub-diagonal and `v` the accumulated orthogonal transformation.
fn tridiagonalize(v: &mut [Vec<f64>], d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    d.copy_from_slice(&v[n - 1]);
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
                v[j][i] = 0.0;
            }
        } else {
            for dk in d[..i].iter_mut() {
                *dk /= scale;
                h += *dk * *dk;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            for j in 0..i {
                let f = d[j];
                v[j][i] = f;
                let mut g = e[j] + v[j][j] * f;
                for k in j + 1..i {
                    g += v[k][j] * d[k];
                    e[k] += v[k][j] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[k][j] -= f * e[k] + g * d[k];
                }
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[n - 1][i] = v[i][i];
        v[i][i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k][i + 1] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[k][i + 1] * v[k][j]).sum();
                for k in 0..=i {
                    v[k][j] -= g * d[k];
                }
            }
        }
        for row in v.iter_mut().take(i + 1) {
            row[i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[n - 1][j];
        v[n - 1][j] = 0.0;
    }
    v[n - 1][n - 1] = 1.0;
    e[0] = 0.0;
}

/// The implicit QL iteration on the tridiagonal (`d`, `e`), rotating the rows of `w`.
fn ql_implicit(d: &mut [f64], e: &mut [f64], w: &mut [Vec<f64>]) -> Result<()> {
    let n = d.len();
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n && e[m].abs() > eps * tst1 {
            m += 1;
        }
        // e[n - 1] is 0, so m < n here.
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                ensure!(iterations <= 60, "the eigendecomposition did not converge");
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for di in d[l + 2..].iter_mut() {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = w.split_at_mut(i + 1);
                    let (wi, wi1) = (&mut lo[i], &mut hi[0]);
                    for (a, b) in wi.iter_mut().zip(wi1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// `RidgeClassifierCV(alphas)` on the `n × p` row-major features `x` with class indices `y`
/// (`0..n_classes`, every class present). See the [module docs](self).
pub fn fit_ridge_classifier_cv(
    x: &[f64],
    n: usize,
    p: usize,
    y: &[usize],
    n_classes: usize,
    alphas: &[f64],
) -> Result<RidgeFit> {
    ensure!(x.len() == n * p, "{n} × {p} features need {} values", n * p);
    ensure!(y.len() == n, "{} labels for {n} rows", y.len());
    ensure!(n >= 2, "ridge needs at least 2 rows, got {n}");
    ensure!(n_classes >= 2, "ridge needs at least 2 classes");
    ensure!(!alphas.is_empty(), "no α to choose from");
    ensure!(
        alphas.iter().all(|a| *a > 0.0),
        "every α must be positive, got {alphas:?}"
    );
    ensure!(
        y.iter().all(|&c| c < n_classes),
        "a class index is ≥ {n_classes}"
    );
    let t = if n_classes == 2 { 1 } else { n_classes };
    // ±1 targets, centred.
    let mut targets = vec![vec![0.0; t]; n];
    for (row, &c) in targets.iter_mut().zip(y) {
        for (k, v) in row.iter_mut().enumerate() {
            let class = if t == 1 { 1 } else { k };
            *v = if c == class { 1.0 } else { -1.0 };
        }
    }
    let y_mean: Vec<f64> = (0..t)
        .map(|k| targets.iter().map(|r| r[k]).sum::<f64>() / n as f64)
        .collect();
    for row in &mut targets {
        for (v, m) in row.iter_mut().zip(&y_mean) {
            *v -= m;
        }
    }
    let mut x_mean = vec![0.0; p];
    for row in x.chunks(p) {
        for (m, v) in x_mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    x_mean.iter_mut().for_each(|m| *m /= n as f64);
    let xc: Vec<f64> = x
        .par_chunks(p)
        .flat_map_iter(|row| row.iter().zip(&x_mean).map(|(v, m)| v - m))
        .collect();
    // Gram matrix, rows in parallel.
    let gram: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let ri = &xc[i * p..(i + 1) * p];
            let xc = &xc;
            (0..n).map(move |j| {
                let rj = &xc[j * p..(j + 1) * p];
                ri.iter().zip(rj).map(|(a, b)| a * b).sum::<f64>()
            })
        })
        .collect();
    let (lambda, q) = symmetric_eigen(&gram, n)?;
    // Qᵀy (per eigenvector k: its dot with each target column) and Qᵀ1.
    let qt_y: Vec<Vec<f64>> = (0..n)
        .map(|k| {
            let qk = &q[k * n..(k + 1) * n];
            (0..t)
                .map(|c| qk.iter().zip(&targets).map(|(a, r)| a * r[c]).sum())
                .collect()
        })
        .collect();
    let qt_1: Vec<f64> = (0..n).map(|k| q[k * n..(k + 1) * n].iter().sum()).collect();
    // (score, α, dual coefficients, leave-one-out decision values) of the best α so far.
    type Best = (f64, f64, Vec<Vec<f64>>, Vec<Vec<f64>>);
    let mut best: Option<Best> = None;
    for &alpha in alphas {
        let dk: Vec<f64> = lambda.iter().map(|l| 1.0 / (l + alpha)).collect();
        // c = Q diag(D) Qᵀ y, G1 = Q diag(D) Qᵀ 1, diag(G).
        let mut c = vec![vec![0.0; t]; n];
        let mut g1 = vec![0.0; n];
        let mut diag = vec![0.0; n];
        for k in 0..n {
            let qk = &q[k * n..(k + 1) * n];
            for i in 0..n {
                let w = qk[i] * dk[k];
                for (ci, yk) in c[i].iter_mut().zip(&qt_y[k]) {
                    *ci += w * yk;
                }
                g1[i] += w * qt_1[k];
                diag[i] += w * qk[i];
            }
        }
        let mut sq = 0.0;
        let mut loo = vec![vec![0.0; t]; n];
        for i in 0..n {
            let di = diag[i] - g1[i] / n as f64;
            for k in 0..t {
                let e = c[i][k] / di;
                sq += e * e;
                // The leave-one-out decision value of row i.
                loo[i][k] = targets[i][k] - e + y_mean[k];
            }
        }
        let score = -sq / (n * t) as f64;
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, alpha, c, loo));
        }
    }
    let (best_score, alpha, c, loo) = best.expect("at least one α");
    let coef: Vec<Vec<f64>> = (0..t)
        .map(|k| {
            let mut w = vec![0.0; p];
            for (i, row) in xc.chunks(p).enumerate() {
                let ci = c[i][k];
                for (wj, v) in w.iter_mut().zip(row) {
                    *wj += ci * v;
                }
            }
            w
        })
        .collect();
    let intercept: Vec<f64> = (0..t)
        .map(|k| y_mean[k] - coef[k].iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>())
        .collect();
    let mut fit = RidgeFit {
        n_classes,
        alpha,
        best_score,
        coef,
        intercept,
        temperature: 1.0,
    };
    fit.temperature = fit_temperature(&fit, &loo, y);
    Ok(fit)
}

/// The temperature minimising the log-loss of `softmax(t · scores)` on the leave-one-out
/// decision values (golden-section search over `ln t` in [−7, 7]).
fn fit_temperature(fit: &RidgeFit, loo: &[Vec<f64>], y: &[usize]) -> f64 {
    let loss = |log_t: f64| -> f64 {
        let t = log_t.exp();
        loo.iter()
            .zip(y)
            .map(|(s, &c)| -fit.proba_row(s, t)[c].max(1e-300).ln())
            .sum()
    };
    let (mut a, mut b) = (-7.0f64, 7.0f64);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = b - phi * (b - a);
    let mut x2 = a + phi * (b - a);
    let (mut f1, mut f2) = (loss(x1), loss(x2));
    for _ in 0..80 {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - phi * (b - a);
            f1 = loss(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + phi * (b - a);
            f2 = loss(x2);
        }
    }
    ((a + b) / 2.0).exp()
}

impl RidgeFit {
    /// Decision values of one row of features (one per target column).
    pub fn decision(&self, row: &[f64]) -> Vec<f64> {
        self.coef
            .iter()
            .zip(&self.intercept)
            .map(|(w, b)| b + w.iter().zip(row).map(|(a, v)| a * v).sum::<f64>())
            .collect()
    }

    /// The predicted class of one row's decision values.
    pub fn predict_row(&self, scores: &[f64]) -> usize {
        if scores.len() == 1 {
            usize::from(scores[0] > 0.0)
        } else {
            kiln::metrics::argmax(scores)
        }
    }

    /// Class probabilities of one row's decision values at temperature `t`.
    fn proba_row(&self, scores: &[f64], t: f64) -> Vec<f64> {
        let z: Vec<f64> = if scores.len() == 1 {
            vec![-t * scores[0], t * scores[0]]
        } else {
            scores.iter().map(|s| t * s).collect()
        };
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let total: f64 = e.iter().sum();
        e.iter().map(|v| v / total).collect()
    }

    /// Class probabilities of one row's decision values (the fitted temperature).
    pub fn predict_proba_row(&self, scores: &[f64]) -> Vec<f64> {
        self.proba_row(scores, self.temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize, m: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * k];
        for i in 0..n {
            for j in 0..k {
                out[i * k + j] = (0..m).map(|l| a[i * m + l] * b[l * k + j]).sum();
            }
        }
        out
    }

    fn check_eigen(a: &[f64], n: usize) {
        let (values, vectors) = symmetric_eigen(a, n).unwrap();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
        let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for k in 0..n {
            let v = &vectors[k * n..(k + 1) * n];
            let av = matmul(a, v, n, n, 1);
            for i in 0..n {
                assert!(
                    (av[i] - values[k] * v[i]).abs() < 1e-9 * scale * n as f64,
                    "A v != λ v for eigenvalue {k} of {n}×{n}"
                );
            }
            for j in 0..n {
                let dot: f64 = v
                    .iter()
                    .zip(&vectors[j * n..(j + 1) * n])
                    .map(|(a, b)| a * b)
                    .sum();
                let want = if j == k { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-10, "vectors {k}, {j}: {dot}");
            }
        }
    }

    #[test]
    fn eigen_of_small_matrices_by_hand() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, vectors (1, −1)/√2 and (1, 1)/√2.
        let (values, vectors) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!((values[0] - 1.0).abs() < 1e-14 && (values[1] - 3.0).abs() < 1e-14);
        assert!((vectors[0] * vectors[1] + 0.5).abs() < 1e-14);
        assert!((vectors[2] * vectors[3] - 0.5).abs() < 1e-14);
        // 1×1, a diagonal matrix out of order and a repeated eigenvalue.
        assert_eq!(symmetric_eigen(&[4.0], 1).unwrap(), (vec![4.0], vec![1.0]));
        let diag = [3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 2.0];
        assert_eq!(symmetric_eigen(&diag, 3).unwrap().0, vec![-1.0, 2.0, 3.0]);
        check_eigen(&diag, 3);
        let mut eye = vec![0.0; 16];
        (0..4).for_each(|i| eye[i * 5] = 1.0);
        check_eigen(&eye, 4);
    }

    #[test]
    fn eigen_of_random_symmetric_and_gram_matrices() {
        let mut rng = kiln::seed::rng(3, "eigen", 0);
        use rand::Rng;
        for n in [3, 7, 40] {
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v: f64 = rng.random_range(-1.0..1.0);
                    a[i * n + j] = v;
                    a[j * n + i] = v;
                }
            }
            check_eigen(&a, n);
            // A rank-deficient Gram matrix (rank 3) of the size ridge sees.
            let x: Vec<f64> = (0..n * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut xt = vec![0.0; 3 * n];
            for i in 0..n {
                for j in 0..3 {
                    xt[j * n + i] = x[i * 3 + j];
                }
            }
            check_eigen(&matmul(&x, &xt, n, 3, n), n);
        }
    }

    /// Leave-one-out by brute force: refit ridge (with an unpenalised intercept) without each
    /// row in turn, by solving the normal equations of the centred problem.
    #[allow(clippy::needless_range_loop)]
    fn brute_force_loo_mse(x: &[f64], n: usize, p: usize, t: &[Vec<f64>], alpha: f64) -> f64 {
        let mut total = 0.0;
        for out in 0..n {
            let rows: Vec<usize> = (0..n).filter(|&i| i != out).collect();
            let m = rows.len() as f64;
            let xm: Vec<f64> = (0..p)
                .map(|j| rows.iter().map(|&i| x[i * p + j]).sum::<f64>() / m)
                .collect();
            for k in 0..t[0].len() {
                let ym = rows.iter().map(|&i| t[i][k]).sum::<f64>() / m;
                // (XᵀX + αI) w = Xᵀ y on the centred rows, by Gaussian elimination.
                let mut a = vec![vec![0.0; p + 1]; p];
                for r in 0..p {
                    for c in 0..p {
                        a[r][c] = rows
                            .iter()
                            .map(|&i| (x[i * p + r] - xm[r]) * (x[i * p + c] - xm[c]))
                            .sum::<f64>()
                            + if r == c { alpha } else { 0.0 };
                    }
                    a[r][p] = rows
                        .iter()
                        .map(|&i| (x[i * p + r] - xm[r]) * (t[i][k] - ym))
                        .sum();
                }
                for col in 0..p {
                    let piv = (col..p)
                        .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
                        .unwrap();
                    a.swap(col, piv);
                    for r in 0..p {
                        if r != col {
                            let f = a[r][col] / a[col][col];
                            for c in col..=p {
                                a[r][c] -= f * a[col][c];
                            }
                        }
                    }
                }
                let w: Vec<f64> = (0..p).map(|j| a[j][p] / a[j][j]).collect();
                let pred = ym + (0..p).map(|j| w[j] * (x[out * p + j] - xm[j])).sum::<f64>();
                total += (t[out][k] - pred).powi(2);
            }
        }
        total / (n * t[0].len()) as f64
    }

    #[test]
    fn the_efficient_loo_score_is_brute_force_leave_one_out() {
        use rand::Rng;
        let mut rng = kiln::seed::rng(5, "ridge", 0);
        let (n, p) = (9, 4);
        let x: Vec<f64> = (0..n * p).map(|_| rng.random_range(-2.0..2.0)).collect();
        for (y, k) in [
            (vec![0, 1, 0, 1, 1, 0, 0, 1, 1], 2),
            (vec![0, 1, 2, 0, 1, 2, 2, 1, 0], 3),
        ] {
            for alpha in [0.01, 1.0, 30.0] {
                let fit = fit_ridge_classifier_cv(&x, n, p, &y, k, &[alpha]).unwrap();
                let t = if k == 2 { 1 } else { k };
                let targets: Vec<Vec<f64>> = y
                    .iter()
                    .map(|&c| {
                        (0..t)
                            .map(|j| {
                                let class = if t == 1 { 1 } else { j };
                                if c == class { 1.0 } else { -1.0 }
                            })
                            .collect()
                    })
                    .collect();
                let want = -brute_force_loo_mse(&x, n, p, &targets, alpha);
                assert!(
                    (fit.best_score - want).abs() < 1e-9,
                    "{k} classes, α {alpha}: {} vs {want}",
                    fit.best_score
                );
            }
            // The grid picks the α with the best score, the first one on ties.
            let alphas = default_alphas();
            let fit = fit_ridge_classifier_cv(&x, n, p, &y, k, &alphas).unwrap();
            let scores: Vec<f64> = alphas
                .iter()
                .map(|&a| {
                    fit_ridge_classifier_cv(&x, n, p, &y, k, &[a])
                        .unwrap()
                        .best_score
                })
                .collect();
            let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let first = scores.iter().position(|&s| s == best).unwrap();
            assert_eq!(fit.alpha, alphas[first]);
        }
    }

    #[test]
    fn alphas_are_numpy_logspace() {
        let a = default_alphas();
        assert_eq!(a.len(), 10);
        assert!((a[0] - 1e-3).abs() < 1e-18 && (a[9] - 1e3).abs() < 1e-9);
        assert!((a[1] - 0.004641588833612777).abs() < 1e-15);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(fit_ridge_classifier_cv(&[1.0, 2.0], 2, 1, &[0, 1], 2, &[0.0]).is_err());
        assert!(fit_ridge_classifier_cv(&[1.0], 1, 1, &[0], 2, &[1.0]).is_err());
        assert!(fit_ridge_classifier_cv(&[1.0, 2.0], 2, 1, &[0, 2], 2, &[1.0]).is_err());
    }
}
