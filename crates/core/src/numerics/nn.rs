//! Layers whose numbers must match PyTorch exactly and that Burn does not provide in that form,
//! or not fast enough on CPU.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::Distribution;
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;

/// The per-channel affine normalisation the fused kernels apply; defined beside them (this module
/// builds on [`crate::numerics::fused`], not the other way round).
pub use crate::numerics::fused::ChannelNorm;

/// Configuration of a [`Dropout`] layer (the API of `burn::nn::DropoutConfig`).
#[derive(Config, Debug)]
pub struct DropoutConfig {
    /// Probability of zeroing an element in training.
    pub prob: f64,
}

impl DropoutConfig {
    /// The layer.
    ///
    /// # Panics
    /// When `prob` is not in `[0, 1]`.
    pub fn init(&self) -> Dropout {
        assert!(
            (0.0..=1.0).contains(&self.prob),
            "dropout probability must be in [0, 1], got {}",
            self.prob
        );
        Dropout { prob: self.prob }
    }
}

/// Inverted dropout, `torch.nn.Dropout`'s semantics and `burn::nn::Dropout`'s API: in training
/// (autodiff enabled) each element is kept with probability `1 − prob` and scaled by
/// `1 / (1 − prob)`; in evaluation it is the identity. No parameters, so checkpoints are the same
/// as with Burn's layer.
///
/// On the CPU backends (burn-flex, burn-ndarray) the mask is drawn on the host with
/// xoshiro256++ (`rand`'s `SmallRng`) in parallel chunks, already scaled, and applied with one
/// multiplication. Burn's `random_like(Bernoulli)` draws every element through ChaCha12 and its
/// generic sampler, then multiplies twice: a fifth of a CNN-Transformer training step at batch
/// 512. The chunk generators are seeded from the training thread's own stream
/// ([`crate::seed::next_seed`]), so a run is reproducible, and so is each worker of an
/// in-process data-parallel run. Other backends (CUDA, wgpu) use Burn's device-side sampler when
/// one worker trains in the process; with several, its process-wide generator would make the
/// masks depend on thread timing, so the mask is drawn on the host and uploaded.
#[derive(Module, Clone, Debug)]
#[module(custom_display)]
pub struct Dropout {
    /// Probability of zeroing an element in training.
    pub prob: f64,
}

/// Elements per independently seeded chunk of a host-drawn mask.
const MASK_CHUNK: usize = 1 << 15;

impl Dropout {
    /// Applies dropout to a tensor of any shape.
    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let device = input.device();
        if !B::ad_enabled(&device) || self.prob == 0.0 {
            return input;
        }
        let mask = dropout_mask::<B, D>(input.shape(), 1.0 - self.prob, &device);
        let mask = if mask.dtype() == input.dtype() {
            mask
        } else {
            mask.cast(input.dtype())
        };
        input * mask
    }
}

impl ModuleDisplay for Dropout {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content.add("prob", &self.prob).optional()
    }
}

/// An inverted-dropout mask of `shape`, already scaled: `1/keep` with probability `keep`, else 0
/// (f32, not tracked by autodiff). Drawn on the host on CPU backends and whenever several
/// training workers share the process (see [`Dropout`]), with Burn's Bernoulli sampler
/// otherwise.
pub fn dropout_mask<B: Backend, const D: usize>(
    shape: burn::tensor::Shape,
    keep: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    if host_random::<B>(device) || crate::seed::workers_share_process() {
        let data = host_mask(
            shape.num_elements(),
            keep,
            crate::seed::next_seed::<B>(device),
        );
        Tensor::from_data(TensorData::new(data, shape), device)
    } else {
        Tensor::<B, D>::random(shape, Distribution::Bernoulli(keep), device).div_scalar(keep)
    }
}

/// A dropout mask of `n` elements already scaled: `1/keep` with probability `keep`, else 0.
/// Chunk `i` of [`MASK_CHUNK`] elements is drawn by its own xoshiro256++ generator seeded with
/// `seed` and `i`, so the mask depends on `seed` only, not on the thread count.
fn host_mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    // Keep when a uniform u32 is below keep·2³² (exact to 2⁻³²).
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(MASK_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            for v in chunk {
                if u64::from(rng.next_u32()) < threshold {
                    *v = scale;
                }
            }
        });
    mask
}

/// Whether `B` computes on the host (burn-flex, burn-ndarray, also under autodiff), where a
/// host-drawn mask costs no transfer.
fn host_random<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("flex") || name.contains("ndarray")
}

/// Configuration of a [`LayerNorm`] (the API of `burn::nn::LayerNormConfig`).
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalised (last) axis.
    pub d_model: usize,
    /// Added to the variance.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Whether the layer has the shift β.
    #[config(default = true)]
    pub bias: bool,
}

impl LayerNormConfig {
    /// The layer: γ = 1, β = 0, as `torch.nn.LayerNorm`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_model], device))),
            epsilon: self.epsilon,
        }
    }
}

/// Layer normalisation over the last axis, `torch.nn.LayerNorm`'s numbers and
/// `burn::nn::LayerNorm`'s fields (`gamma`, `beta`, `epsilon`), so records and the PyTorch
/// import tables are the same as with Burn's layer. It runs [`crate::numerics::fused::layer_norm`]: one
/// pass forward and one backward on burn-flex training, Burn's own op elsewhere.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct LayerNorm<B: Backend> {
    /// Scale γ (PyTorch's `weight`).
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift β (PyTorch's `bias`).
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Normalises `[..., d_model]` over its last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::numerics::fused::layer_norm(
            x,
            self.gamma.val(),
            self.beta.as_ref().map(Param::val),
            self.epsilon,
        )
    }
}

impl<B: Backend> ModuleDisplay for LayerNorm<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_model] = self.gamma.shape().dims();
        content
            .add("d_model", &d_model)
            .add("epsilon", &self.epsilon)
            .add("bias", &self.beta.is_some())
            .optional()
    }
}

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
        let (batch, channels) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        // Everything runs on [N, C, S], and the per-channel values [1, C, 1] are applied with
        // `crate::numerics::ops`, which lays `[N, C, S] ∘ [1, C, 1]` out as "one scalar per row" for
        // burn-flex's SIMD kernel. Plain `[1, C, 1, 1]` broadcasts (and a `swap_dims(0, 1)` copy
        // for the batch statistics) took its element-by-element strided path, which was a third
        // of a ResNet50 training step.
        let x = x.reshape([batch, channels, spatial]);
        if B::ad_enabled(&x.device()) {
            // Batch statistics, one fused operation on burn-flex (`crate::numerics::fused::batch_norm`).
            let (y, mean, var) = crate::numerics::fused::batch_norm(
                x,
                self.weight.val(),
                self.bias.val(),
                self.epsilon,
            );
            let n = batch * spatial;
            let unbiased = if n > 1 {
                var.mul_scalar(n as f64 / (n as f64 - 1.0))
            } else {
                var
            };
            let m = self.momentum;
            let device = y.device();
            // Detached: the statistics are buffers, and an update recorded on the graph would
            // chain every step's onto the last.
            let rm = self.running_mean.value_sync().detach().to_device(&device);
            let rv = self.running_var.value_sync().detach().to_device(&device);
            self.running_mean
                .update(rm.mul_scalar(1.0 - m) + mean.mul_scalar(m));
            self.running_var
                .update(rv.mul_scalar(1.0 - m) + unbiased.mul_scalar(m));
            return y.reshape(dims);
        }
        self.running_norm().apply(x).reshape(dims)
    }

    /// The evaluation map `(x − μ)·s + β` with the running statistics, `s = γ/√(σ² + ε)`.
    pub fn running_norm(&self) -> ChannelNorm<B> {
        ChannelNorm {
            mean: self.running_mean.value(),
            scale: self.weight.val() / self.running_var.value().add_scalar(self.epsilon).sqrt(),
            beta: self.bias.val(),
        }
    }
}

/// `relu(bn(conv(x)) + residual)`, the unit of a ResNet (`residual` and the ReLU each
/// optional).
///
/// Training (autodiff) or under autocast: [`crate::numerics::amp::conv2d_layer`], [`BatchNorm::forward`]
/// (batch statistics), the sum and [`crate::numerics::fused::relu`]. Evaluation in full precision: one
/// [`crate::numerics::fused::conv2d_epilogue`] with the running statistics, which on burn-flex applies the
/// BatchNorm, the residual and the ReLU to each image's output while it is in cache, with the
/// same roundings as the separate operations.
pub fn conv2d_batch_norm<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    residual: Option<Tensor<B, 4>>,
    relu: bool,
) -> Tensor<B, 4> {
    if B::ad_enabled(&x.device()) || crate::numerics::amp::current().is_some() {
        let mut y = bn.forward(crate::numerics::amp::conv2d_layer(conv, x));
        if let Some(r) = residual {
            y = y + r;
        }
        return if relu {
            crate::numerics::fused::relu(y)
        } else {
            y
        };
    }
    let (x, options) = crate::numerics::amp::layer_input(conv, x);
    let then = crate::numerics::fused::Epilogue {
        norm: Some(bn.running_norm()),
        residual,
        relu,
    };
    crate::numerics::fused::conv2d_epilogue(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
        then,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{TensorData, Tolerance};

    /// Checkpoints written while the models used `burn::nn::LayerNorm` load into
    /// [`LayerNorm`] (same record fields), and the layer computes what Burn's did.
    #[test]
    fn layer_norm_reads_burn_layer_norm_records() {
        use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
        type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;
        let device = Default::default();
        let mut theirs = burn::nn::LayerNormConfig::new(6).init::<Flex>(&device);
        theirs.gamma = Param::from_tensor(Tensor::from_floats(
            [1.0, 2.0, 0.5, -1.0, 3.0, 1.5],
            &device,
        ));
        theirs.beta = Some(Param::from_tensor(Tensor::from_floats(
            [0.1, -0.2, 0.0, 0.3, 0.0, 1.0],
            &device,
        )));
        let bytes =
            Recorder::<Flex>::record(&Rec::default(), theirs.clone().into_record(), ()).unwrap();
        let record = Recorder::<Flex>::load(&Rec::default(), bytes, &device).unwrap();
        let ours = LayerNormConfig::new(6)
            .init::<Flex>(&device)
            .load_record(record);
        ours.gamma
            .val()
            .into_data()
            .assert_eq(&theirs.gamma.val().into_data(), true);
        let x = Tensor::<Flex, 2>::random([5, 6], Distribution::Normal(2.0, 3.0), &device);
        ours.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&theirs.forward(x).into_data(), Tolerance::absolute(1e-5));
        assert_eq!(ours.epsilon, 1e-5);
    }

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

    /// The running statistics are buffers: never trainable and never in the autodiff graph,
    /// not after a checkpoint round trip (as a resume loads one), nor after
    /// `set_trainable(true)` (as unfreezing does), nor after a training step (whatever loaded
    /// them); an optimiser step
    /// (SGD with weight decay, which moves every parameter it steps) leaves them where the
    /// running-statistics update put them.
    #[test]
    fn running_statistics_are_never_trainable() {
        use crate::train::checkpoint::{
            load_checked, record_from_bytes, record_to_bytes, set_trainable, trainable_paths,
        };
        use burn::optim::{GradientsParams, Optimizer, SgdConfig, decay::WeightDecayConfig};
        type AD = Autodiff<Flex>;
        // Neither a tracked leaf nor a recorded result (whose updates would chain every step's
        // into one graph), and not among the trainable tensors.
        let buffers = |bn: &BatchNorm<AD>, when: &str| {
            for (name, t) in [
                ("running_mean", bn.running_mean.value_sync()),
                ("running_var", bn.running_var.value_sync()),
            ] {
                let node = t.into_primitive().tensor().node;
                assert!(node.requirement.is_none(), "{when}: {name} is in the graph");
            }
            assert_eq!(trainable_paths::<AD, _>(bn), ["weight", "bias"], "{when}");
        };
        let device = Default::default();
        let saved = BatchNorm::<AD>::new(2, &device);
        let bytes = record_to_bytes::<AD, _>(saved.into_record()).unwrap();
        let record = || record_from_bytes::<AD, _>(bytes.clone(), &device).unwrap();
        let bn = load_checked(BatchNorm::<AD>::new(2, &device), record(), "bn").unwrap();
        buffers(&bn, "loaded");
        buffers(&set_trainable(bn, true), "set trainable");
        // Burn's own loading leaves them in the graph; the forward pass's update takes them
        // out.
        let bn = BatchNorm::<AD>::new(2, &device).load_record(record());

        // The batch of `matches_pytorch_running_statistics`: running mean [0.3, 0.6] and
        // variance [1.3, 2.5] after the forward pass.
        let x = Tensor::<AD, 2>::from_data(
            TensorData::from([[1.0f32, 2.0], [3.0, 6.0], [5.0, 10.0]]),
            &device,
        );
        let g = Tensor::<AD, 2>::from_data(
            TensorData::from([[1.0f32, -1.0], [0.5, 2.0], [-2.0, 0.0]]),
            &device,
        );
        let loss = (bn.forward(x) * g).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &bn);
        buffers(&bn, "forward");
        let weight = bn.weight.val().into_data();
        let mut sgd = SgdConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.5)))
            .init::<AD, BatchNorm<AD>>();
        let bn = sgd.step(1.0, bn, grads);
        assert_ne!(bn.weight.val().into_data(), weight, "the step moved γ");
        bn.running_mean
            .value_sync()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([0.3f32, 0.6]), Tolerance::default());
        bn.running_var
            .value_sync()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([1.3f32, 2.5]), Tolerance::default());
        buffers(&bn, "step");
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

    /// Training-mode output and gradients on a `[N, C, H, W]` input against an independent
    /// host computation in f64: y = (x − μ_c)/sqrt(σ²_c + ε)·γ_c + β_c with biased batch
    /// statistics, and the analytic gradients of L = Σ y·g for a fixed upstream g:
    /// ∂L/∂β_c = Σ g, ∂L/∂γ_c = Σ g·x̂, ∂L/∂x = γ/σ·(g − mean(g) − x̂·mean(g·x̂)).
    #[test]
    fn training_output_and_gradients_match_the_formulas() {
        type AD = Autodiff<Flex>;
        let device = Default::default();
        let (n, c, h, w) = (3, 2, 2, 3);
        let len = n * c * h * w;
        let xs: Vec<f32> = (0..len)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3 + (i % c) as f32)
            .collect();
        let gs: Vec<f32> = (0..len)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let mut bn = BatchNorm::<AD>::new(c, &device);
        bn.weight =
            Param::from_tensor(Tensor::from_data(TensorData::from([1.5f32, -0.5]), &device));
        bn.bias = Param::from_tensor(Tensor::from_data(TensorData::from([0.2f32, 0.7]), &device));
        let x = Tensor::<AD, 4>::from_data(TensorData::new(xs.clone(), [n, c, h, w]), &device)
            .require_grad();
        let g = Tensor::<AD, 4>::from_data(TensorData::new(gs.clone(), [n, c, h, w]), &device);
        let y = bn.forward(x.clone());
        let grads = (y.clone() * g).sum().backward();
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let dgamma: Vec<f32> = bn
            .weight
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let dbeta: Vec<f32> = bn.bias.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let (gamma, beta) = ([1.5f64, -0.5], [0.2f64, 0.7]);
        let at = |b: usize, ch: usize, s: usize| (b * c + ch) * h * w + s;
        let m = (n * h * w) as f64;
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|b| (0..h * w).map(move |s| at(b, ch, s)))
                .collect();
            let mean = idx.iter().map(|&i| f64::from(xs[i])).sum::<f64>() / m;
            let var = idx
                .iter()
                .map(|&i| (f64::from(xs[i]) - mean).powi(2))
                .sum::<f64>()
                / m;
            let sd = (var + 1e-5).sqrt();
            let xhat = |i: usize| (f64::from(xs[i]) - mean) / sd;
            let mg = idx.iter().map(|&i| f64::from(gs[i])).sum::<f64>() / m;
            let mgx = idx.iter().map(|&i| f64::from(gs[i]) * xhat(i)).sum::<f64>() / m;
            assert!((f64::from(dbeta[ch]) - mg * m).abs() < 1e-4, "dβ {ch}");
            assert!((f64::from(dgamma[ch]) - mgx * m).abs() < 1e-4, "dγ {ch}");
            for &i in &idx {
                let want_y = xhat(i) * gamma[ch] + beta[ch];
                assert!(
                    (f64::from(y[i]) - want_y).abs() < 1e-5,
                    "y[{i}] {} vs {want_y}",
                    y[i]
                );
                let want_dx = gamma[ch] / sd * (f64::from(gs[i]) - mg - xhat(i) * mgx);
                assert!(
                    (f64::from(dx[i]) - want_dx).abs() < 1e-4,
                    "dx[{i}] {} vs {want_dx}",
                    dx[i]
                );
            }
        }
    }

    #[test]
    fn dropout_keeps_1_minus_p_scaled_and_is_the_identity_in_eval() {
        type AD = Autodiff<Flex>;
        let device = Default::default();
        let n = 200_000;
        let p = 0.3;
        let layer = DropoutConfig::new(p).init();
        let xs: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        let x = Tensor::<AD, 2>::from_data(TensorData::new(xs.clone(), [n / 100, 100]), &device)
            .require_grad();
        let y = layer.forward(x.clone());
        let grads = y.clone().sum().backward();
        let ys: Vec<f32> = y.into_data().to_vec().unwrap();
        let gs: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut dropped = 0usize;
        for i in 0..n {
            if ys[i] == 0.0 {
                dropped += 1;
                assert_eq!(gs[i], 0.0, "a dropped element gets no gradient");
            } else {
                assert_eq!(ys[i], xs[i] * scale, "kept elements are scaled by 1/(1-p)");
                assert_eq!(gs[i], scale);
            }
        }
        // Binomial(n, p): 5 standard deviations.
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (dropped as f64 - n as f64 * p).abs() < 5.0 * sd,
            "{dropped} of {n} dropped"
        );
        // Chunks are independent streams: the drop rate holds in every 32 Ki chunk.
        let first: usize = ys[..MASK_CHUNK].iter().filter(|v| **v == 0.0).count();
        let second: usize = ys[MASK_CHUNK..2 * MASK_CHUNK]
            .iter()
            .filter(|v| **v == 0.0)
            .count();
        assert_ne!(
            ys[..MASK_CHUNK]
                .iter()
                .map(|v| *v == 0.0)
                .collect::<Vec<_>>(),
            ys[MASK_CHUNK..2 * MASK_CHUNK]
                .iter()
                .map(|v| *v == 0.0)
                .collect::<Vec<_>>(),
            "two chunks drew the same mask"
        );
        let chunk_sd = (MASK_CHUNK as f64 * p * (1.0 - p)).sqrt();
        for c in [first, second] {
            assert!(
                (c as f64 - MASK_CHUNK as f64 * p).abs() < 5.0 * chunk_sd,
                "{c}"
            );
        }
        // Evaluation (no autodiff): the identity.
        let plain = Tensor::<Flex, 1>::from_floats([1.0, 2.0, 3.0], &device);
        let out: Vec<f32> = layer.forward(plain).into_data().to_vec().unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn dropout_masks_depend_on_the_seed_only() {
        let n = 3 * MASK_CHUNK + 5;
        let a = host_mask(n, 0.5, 7);
        // Same seed, other thread counts: the same mask.
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| host_mask(n, 0.5, 7));
        assert_eq!(a, single);
        assert_ne!(a, host_mask(n, 0.5, 8), "another seed, another mask");
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        // keep = 1: nothing dropped; keep → 0: almost everything.
        assert!(host_mask(1000, 1.0, 1).iter().all(|&v| v == 1.0));
        assert!(
            host_mask(1000, 1e-6, 1)
                .iter()
                .filter(|&&v| v != 0.0)
                .count()
                < 5
        );
    }
}
