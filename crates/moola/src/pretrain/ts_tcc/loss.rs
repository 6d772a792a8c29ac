//! The NT-Xent ("InfoNCE") loss of the reference's TS-TCC.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Value written on the diagonal of the similarity matrix (the reference's FP16-safe stand-in
/// for `−∞`: `exp(−100)` is 0 in any float format).
pub const SELF_SIMILARITY_FILL: f32 = -100.0;

/// `x / max(‖x‖₂, 1e-12)` per row (`torch.nn.functional.normalize(x, dim=1)`).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// NT-Xent over two views of a batch (`info_nce_loss(z1, z2, temperature)` of the reference):
///
/// * `z1`, `z2` `[B, D]` are L2-normalised and stacked to `z = [z1; z2]` `[2B, D]`;
/// * `S = z·zᵀ / τ`, with the diagonal (self-similarity) set to −100;
/// * row `i`'s positive is `i + B` for `i < B` and `i − B` otherwise;
/// * the loss is the mean cross-entropy of the `2B` rows.
///
/// Returns a `[1]` tensor. Everything here runs in the embeddings' dtype (f32 under kiln's
/// autocast, whose half-precision ops return f32): like the cross-entropy and the distance
/// matrices of the other losses, the similarity matrix is not an autocast op.
///
/// # Panics
/// When the shapes of `z1` and `z2` differ or the batch is empty.
pub fn info_nce_loss<B: Backend>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [b, d] = z1.dims();
    assert_eq!(
        [b, d],
        z2.dims(),
        "info_nce_loss: the two views have different shapes"
    );
    assert!(b > 0, "info_nce_loss: empty batch");
    let device = z1.device();
    let n = 2 * b;
    let z = Tensor::cat(vec![l2_normalize(z1), l2_normalize(z2)], 0);
    let sim = z.clone().matmul(z.transpose()).div_scalar(temperature);
    let eye = Tensor::<B, 2, Int>::eye(n, &device).equal_elem(1);
    let sim = sim.mask_fill(eye, SELF_SIMILARITY_FILL);
    let positives: Vec<i64> = (0..n).map(|i| ((i + b) % n) as i64).collect();
    let positives = Tensor::<B, 2, Int>::from_data(TensorData::new(positives, [n, 1]), &device);
    let log_p = log_softmax(sim, 1).gather(1, positives);
    log_p.mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::backend::Flex;

    type B = Flex;

    /// The loss written out with plain loops in f64.
    fn reference(z1: &[Vec<f64>], z2: &[Vec<f64>], tau: f64) -> f64 {
        let norm = |v: &Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let z: Vec<Vec<f64>> = z1.iter().chain(z2).map(norm).collect();
        let n = z.len();
        let b = n / 2;
        let mut total = 0.0;
        for i in 0..n {
            let logits: Vec<f64> = (0..n)
                .map(|j| {
                    if i == j {
                        -100.0
                    } else {
                        z[i].iter().zip(&z[j]).map(|(a, c)| a * c).sum::<f64>() / tau
                    }
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            let positive = if i < b { i + b } else { i - b };
            total += lse - logits[positive];
        }
        total / n as f64
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor<B, 2> {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), d]), &Default::default())
    }

    #[test]
    fn info_nce_matches_a_loop_computation() {
        let z1 = vec![
            vec![0.3, -1.2, 0.5],
            vec![2.0, 0.1, -0.4],
            vec![-0.7, 0.9, 1.1],
        ];
        let z2 = vec![
            vec![0.2, -1.0, 0.7],
            vec![-1.5, 0.3, 0.2],
            vec![0.0, 0.0, 3.0],
        ];
        for tau in [0.5, 0.1, 1.0] {
            let got: f32 = info_nce_loss(tensor(&z1), tensor(&z2), tau).into_scalar();
            let want = reference(&z1, &z2, tau);
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "τ = {tau}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn identical_views_score_lower_than_swapped_ones() {
        // With one sample per view the loss is exactly 0 + log(1 + e^{−100−s/τ}) ≈ 0.
        let z = vec![vec![1.0, 0.0]];
        let got: f32 = info_nce_loss(tensor(&z), tensor(&z), 0.5).into_scalar();
        assert!(got.abs() < 1e-6, "{got}");
        // Matching pairs beat mismatched pairs.
        let a = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let b = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        let matched: f32 = info_nce_loss(tensor(&a), tensor(&a), 0.5).into_scalar();
        let swapped: f32 = info_nce_loss(tensor(&a), tensor(&b), 0.5).into_scalar();
        assert!(matched < swapped, "{matched} vs {swapped}");
        assert!((f64::from(swapped) - reference(&a, &b, 0.5)).abs() < 1e-5);
    }

    #[test]
    fn zero_rows_do_not_produce_nan() {
        let z1 = vec![vec![0.0, 0.0], vec![1.0, 1.0]];
        let z2 = vec![vec![0.0, 0.0], vec![1.0, -1.0]];
        let got: f32 = info_nce_loss(tensor(&z1), tensor(&z2), 0.5).into_scalar();
        assert!(got.is_finite());
        assert!((f64::from(got) - reference(&z1, &z2, 0.5)).abs() < 1e-5);
    }
}
