//! Layers whose numbers must match PyTorch exactly and that Burn does not provide in that form.

use burn::module::{Module, Param, RunningState};
use burn::prelude::*;

/// Batch normalisation with PyTorch's semantics and state-dict names
/// (`weight`, `bias`, `running_mean`, `running_var`).
///
/// It differs from `burn::nn::BatchNorm` in one number: the running variance is updated with the
/// **unbiased** batch variance (`n/(n−1)` correction), as `torch.nn.BatchNorm*d` does, so that
/// eval-mode outputs after training match PyTorch. Normalisation itself uses the biased variance
/// in training and the running statistics in eval (no autodiff), like PyTorch and Burn.
/// Works for any input rank `[batch, channels, ...]` (BatchNorm1d/2d).
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// Scale γ.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift β.
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Running-statistics momentum (PyTorch convention: new = (1−m)·old + m·batch).
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> BatchNorm<B> {
    /// PyTorch defaults: weight 1, bias 0, running mean 0 / var 1, momentum 0.1, eps 1e-5.
    pub fn new(num_features: usize, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([num_features], device)),
            bias: Param::from_tensor(Tensor::zeros([num_features], device)),
            running_mean: RunningState::new(Tensor::zeros([num_features], device)),
            running_var: RunningState::new(Tensor::ones([num_features], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Normalises `[batch, channels, ...]`: batch statistics under autodiff (training), running
    /// statistics otherwise (evaluation).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        assert!(D >= 2, "BatchNorm needs [batch, channels, ...]");
        let dims = x.dims();
        let channels = dims[1];
        let mut shape = [1; D];
        shape[1] = channels;
        let (mean, var) = if B::ad_enabled(&x.device()) {
            let n: usize = dims
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, d)| d)
                .product();
            let flat = x.clone().swap_dims(0, 1).reshape([channels, n]);
            let mean = flat.clone().mean_dim(1); // [C, 1]
            let var = (flat - mean.clone()).square().mean_dim(1); // biased
            let unbiased = if n > 1 {
                var.clone().detach().mul_scalar(n as f64 / (n as f64 - 1.0))
            } else {
                var.clone().detach()
            };
            let m = self.momentum;
            let device = x.device();
            let rm = self.running_mean.value_sync().to_device(&device);
            let rv = self.running_var.value_sync().to_device(&device);
            self.running_mean.update(
                rm.mul_scalar(1.0 - m) + mean.clone().detach().reshape([channels]).mul_scalar(m),
            );
            self.running_var
                .update(rv.mul_scalar(1.0 - m) + unbiased.reshape([channels]).mul_scalar(m));
            (mean.reshape(shape), var.reshape(shape))
        } else {
            (
                self.running_mean.value().reshape(shape),
                self.running_var.value().reshape(shape),
            )
        };
        // y = (x − μ)·(γ/σ) + β: three broadcast ops over the activation instead of four
        // (broadcasting [1, C, 1, 1] dominates BN time on CPU). Folding μ into the shift
        // (x·a + b) would save one more but loses precision when |μ| ≫ σ (raw prices).
        let scale = self.weight.val().reshape(shape) / var.add_scalar(self.epsilon).sqrt();
        (x - mean) * scale + self.bias.val().reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn matches_pytorch_running_statistics() {
        // torch.nn.BatchNorm1d(2) in train mode on x = [[1, 2], [3, 6], [5, 10]]:
        // mean = [3, 6], biased var = [8/3, 32/3], unbiased = [4, 16]
        // running_mean = 0.1·mean = [0.3, 0.6]; running_var = 0.9 + 0.1·unbiased = [1.3, 2.5]
        // y[0] = (1 − 3)/sqrt(8/3 + 1e-5) = −1.2247426
        let device = Default::default();
        let bn = BatchNorm::<Autodiff<Flex>>::new(2, &device);
        let x = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::from([[1.0f32, 2.0], [3.0, 6.0], [5.0, 10.0]]),
            &device,
        );
        let y = bn.forward(x);
        let y0: Vec<f32> = y.into_data().to_vec().unwrap();
        assert!((y0[0] + 1.224_742_6).abs() < 1e-5, "{y0:?}");
        bn.running_mean
            .value_sync()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([0.3f32, 0.6]), Tolerance::default());
        bn.running_var
            .value_sync()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([1.3f32, 2.5]), Tolerance::default());

        // Eval mode uses the running statistics: (1 − 0.3)/sqrt(1.3 + 1e-5).
        let eval = bn.valid();
        let x = Tensor::<Flex, 2>::from_data(TensorData::from([[1.0f32, 2.0]]), &device);
        let y: Vec<f32> = eval.forward(x).into_data().to_vec().unwrap();
        assert!((y[0] - 0.7 / 1.3f32.sqrt()).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn works_on_images() {
        let device = Default::default();
        let bn = BatchNorm::<Autodiff<Flex>>::new(3, &device);
        let x = Tensor::<Autodiff<Flex>, 4>::random(
            [2, 3, 4, 5],
            burn::tensor::Distribution::Default,
            &device,
        );
        let y = bn.forward(x);
        // Per-channel output has mean 0 and biased variance ≈ 1.
        let flat = y.swap_dims(0, 1).reshape([3, 40]);
        let m: Vec<f32> = flat.clone().mean_dim(1).into_data().to_vec().unwrap();
        let v: Vec<f32> = flat.square().mean_dim(1).into_data().to_vec().unwrap();
        for c in 0..3 {
            assert!(
                m[c].abs() < 1e-5 && (v[c] - 1.0).abs() < 1e-3,
                "{m:?} {v:?}"
            );
        }
    }
}
