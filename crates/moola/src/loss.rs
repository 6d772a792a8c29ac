//! Losses of the classifier recipe (the reference's shared focal loss and mixup criterion, and
//! the CNN-Transformer's multi-task loss).
//!
//! * [`focal_loss`]: `FL = α[y]·(1 − p_t)^γ · CE`, `p_t = exp(−CE)`, mean over the batch;
//! * [`mixed`]: the mixup/CutMix criterion `λ·L(y_a) + (1 − λ)·L(y_b)`;
//! * [`multitask_loss`]: CNN-Transformer with pointer heads,
//!   `α·CE(class) + β·(BCE(start) + BCE(end))` with one-hot pointer targets, both BCE terms means
//!   over `batch × window`, and the progressive weights of [`progressive_weights`].

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Per-sample cross-entropy `−log softmax(logits)[y]`, shape `[batch]`.
pub fn cross_entropy_per_sample<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    logp.gather(1, targets.unsqueeze_dim(1))
        .squeeze_dim::<1>(1)
        .neg()
}

/// Mean cross-entropy.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    cross_entropy_per_sample(logits, targets).mean()
}

/// Focal loss (γ, optional per-class α), mean over the batch.
pub fn focal_loss<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    gamma: f64,
    alpha: Option<&Tensor<B, 1>>,
) -> Tensor<B, 1> {
    let ce = cross_entropy_per_sample(logits, targets.clone());
    let pt = ce.clone().neg().exp();
    let weight = pt.neg().add_scalar(1.0).powf_scalar(gamma);
    let mut fl = weight * ce;
    if let Some(alpha) = alpha {
        fl = fl * alpha.clone().select(0, targets);
    }
    fl.mean()
}

/// The mixup criterion: `λ·loss(y_a) + (1 − λ)·loss(y_b)`.
pub fn mixed<B: Backend>(
    loss: impl Fn(Tensor<B, 1, Int>) -> Tensor<B, 1>,
    y_a: Tensor<B, 1, Int>,
    y_b: Tensor<B, 1, Int>,
    lambda: f64,
) -> Tensor<B, 1> {
    if lambda >= 1.0 {
        return loss(y_a);
    }
    loss(y_a).mul_scalar(lambda) + loss(y_b).mul_scalar(1.0 - lambda)
}

/// Numerically stable `BCEWithLogits` against targets, mean over all elements.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    // max(x, 0) − x·t + log(1 + exp(−|x|))
    let relu = logits.clone().clamp_min(0.0);
    let softplus = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    (relu - logits * targets + softplus).mean()
}

/// One-hot rows `[batch, width]` from indices.
pub fn one_hot<B: Backend>(indices: Tensor<B, 1, Int>, width: usize) -> Tensor<B, 2> {
    indices.one_hot::<2>(width).float()
}

/// The progressive multi-task weights of the reference (they override `loss_alpha`/`loss_beta`):
/// `α = 1`, `β = beta_max · min(epoch / warmup_epochs, 1)` (reference: 0.1 and 50).
pub fn progressive_weights(epoch: usize, beta_max: f64, warmup_epochs: usize) -> (f64, f64) {
    let ramp = if warmup_epochs == 0 {
        1.0
    } else {
        (epoch as f64 / warmup_epochs as f64).min(1.0)
    };
    (1.0, beta_max * ramp)
}

/// Multi-task loss of the CNN-Transformer with pointer heads (plain CE for the class term).
#[allow(clippy::too_many_arguments)]
pub fn multitask_loss<B: Backend>(
    class_logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    start_logits: Tensor<B, 2>,
    end_logits: Tensor<B, 2>,
    start_targets: Tensor<B, 1, Int>,
    end_targets: Tensor<B, 1, Int>,
    alpha: f64,
    beta: f64,
) -> Tensor<B, 1> {
    let width = start_logits.dims()[1];
    let cls = cross_entropy(class_logits, targets);
    let start = bce_with_logits(start_logits, one_hot(start_targets, width));
    let end = bce_with_logits(end_logits, one_hot(end_targets, width));
    cls.mul_scalar(alpha) + (start + end).mul_scalar(beta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::backend::Flex;

    type B = Flex;

    fn scalar(t: Tensor<B, 1>) -> f64 {
        f64::from(t.into_scalar())
    }

    fn logits() -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let d = Default::default();
        (
            Tensor::from_data([[2.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &d),
            Tensor::from_data([0i32, 0, 1], &d),
        )
    }

    #[test]
    fn focal_loss_by_hand() {
        let (z, y) = logits();
        // CE: ln(1+e^-2), ln(1+e^1), ln 2
        let ce = [
            (1.0 + (-2.0f64).exp()).ln(),
            (1.0 + 1.0f64.exp()).ln(),
            2.0f64.ln(),
        ];
        let fl: Vec<f64> = ce.iter().map(|c| (1.0 - (-c).exp()).powi(2) * c).collect();
        let want = fl.iter().sum::<f64>() / 3.0;
        let got = scalar(focal_loss(z.clone(), y.clone(), 2.0, None));
        assert!((got - want).abs() < 1e-6, "{got} {want}");
        // γ = 0 is plain cross-entropy.
        let got = scalar(focal_loss(z.clone(), y.clone(), 0.0, None));
        assert!((got - ce.iter().sum::<f64>() / 3.0).abs() < 1e-6);
        // α weights by the target class.
        let alpha = Tensor::<B, 1>::from_data([0.25f32, 4.0], &Default::default());
        let want = (0.25 * fl[0] + 0.25 * fl[1] + 4.0 * fl[2]) / 3.0;
        let got = scalar(focal_loss(z, y, 2.0, Some(&alpha)));
        assert!((got - want).abs() < 1e-5, "{got} {want}");
    }

    #[test]
    fn mixup_criterion_interpolates() {
        let (z, y) = logits();
        let yb = Tensor::<B, 1, Int>::from_data([1i32, 1, 0], &Default::default());
        let la = scalar(cross_entropy(z.clone(), y.clone()));
        let lb = scalar(cross_entropy(z.clone(), yb.clone()));
        let got = scalar(mixed(|t| cross_entropy(z.clone(), t), y, yb, 0.3));
        assert!((got - (0.3 * la + 0.7 * lb)).abs() < 1e-6);
    }

    #[test]
    fn bce_and_multitask_by_hand() {
        let d = Default::default();
        let x = Tensor::<B, 2>::from_data([[0.0f32, 2.0], [-1.0, 3.0]], &d);
        let t = Tensor::<B, 2>::from_data([[1.0f32, 0.0], [0.0, 1.0]], &d);
        let sp = |v: f64| (1.0 + v.exp()).ln();
        // BCE(x, t) = softplus(x) − x·t
        let want = (sp(0.0) + sp(2.0) + sp(-1.0) + sp(3.0) - 3.0) / 4.0;
        let got = scalar(bce_with_logits(x.clone(), t));
        assert!((got - want).abs() < 1e-6, "{got} {want}");

        let (z, y) = logits();
        let starts = Tensor::<B, 1, Int>::from_data([0i32, 1, 1], &d);
        let ends = Tensor::<B, 1, Int>::from_data([1i32, 1, 0], &d);
        let sl = Tensor::<B, 2>::from_data([[0.5f32, -0.5], [1.0, 2.0], [0.0, 0.0]], &d);
        let el = Tensor::<B, 2>::from_data([[0.1f32, 0.2], [0.3, -0.4], [2.0, 1.0]], &d);
        let ce = scalar(cross_entropy(z.clone(), y.clone()));
        let bs = scalar(bce_with_logits(sl.clone(), one_hot(starts.clone(), 2)));
        let be = scalar(bce_with_logits(el.clone(), one_hot(ends.clone(), 2)));
        let got = scalar(multitask_loss(z, y, sl, el, starts, ends, 1.0, 0.05));
        assert!((got - (ce + 0.05 * (bs + be))).abs() < 1e-6);
    }

    #[test]
    fn progressive_schedule() {
        assert_eq!(progressive_weights(0, 0.1, 50), (1.0, 0.0));
        assert!((progressive_weights(25, 0.1, 50).1 - 0.05).abs() < 1e-12);
        assert_eq!(progressive_weights(80, 0.1, 50), (1.0, 0.1));
    }
}
