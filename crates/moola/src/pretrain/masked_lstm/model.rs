//! The masked BiLSTM autoencoder, its masking strategies and its loss (the reference's
//! [`bilstm_masked_autoencoder.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/models/bilstm_masked_autoencoder.py)).
//!
//! ```text
//! x [B, T, F] → masking (all F features of a masked step := mask_token)
//!             → encoder_lstm: bidirectional LSTM(F → H, num_layers, inter-layer dropout) [B, T, 2H]
//!             → layer_norm(2H)
//!             → decoder: Linear(2H → H) → ReLU → Dropout → Linear(H → F)   reconstruction [B, T, F]
//! ```
//!
//! Parameters with the defaults (F 4, H 128, 2 layers): 566,408, of which the encoder LSTM has
//! 532,480. Field names mirror the PyTorch state dict: `mask_token`, `encoder_lstm.*` (see
//! [`crate::nn::Lstm`] for the per-layer renaming), `layer_norm.*`, and the `nn.Sequential`
//! decoder `decoder.0` / `decoder.3` as `decoder_0` / `decoder_3`.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use kiln::amp;
use kiln::fused::relu;
use kiln::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::nn::{Lstm, LstmConfig};

/// Architecture of a [`BiLstmMaskedAutoencoder`] (reference defaults). A serde struct with
/// defaults, like every model specification of this crate (layer-level building blocks in
/// [`crate::nn`] use Burn's `Config` derive, as `burn::nn` does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BiLstmMaskedAutoencoderConfig {
    /// Features per time step.
    pub input_dim: usize,
    /// LSTM hidden size per direction (the encoder outputs twice this).
    pub hidden_dim: usize,
    /// Stacked bidirectional layers.
    pub num_layers: usize,
    /// Inter-layer LSTM dropout (when `num_layers > 1`) and decoder dropout.
    pub dropout: f64,
}

impl Default for BiLstmMaskedAutoencoderConfig {
    fn default() -> Self {
        Self {
            input_dim: 4,
            hidden_dim: 128,
            num_layers: 2,
            dropout: 0.2,
        }
    }
}

impl BiLstmMaskedAutoencoderConfig {
    /// The reference architecture (`input_dim` 4, `hidden_dim` 128, 2 layers, dropout 0.2).
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the sizes and the dropout rate.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.input_dim == 0 || self.hidden_dim == 0 || self.num_layers == 0 {
            anyhow::bail!(
                "masked autoencoder: input_dim ({}), hidden_dim ({}) and num_layers ({}) must be \
                 positive",
                self.input_dim,
                self.hidden_dim,
                self.num_layers
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!(
                "masked autoencoder: dropout {} is not in [0, 1)",
                self.dropout
            );
        }
        Ok(())
    }

    /// The encoder LSTM's configuration (bidirectional; dropout only between layers).
    pub fn lstm_config(&self) -> LstmConfig {
        LstmConfig::new(self.input_dim, self.hidden_dim)
            .with_num_layers(self.num_layers)
            .with_bidirectional(true)
            .with_dropout(if self.num_layers > 1 {
                self.dropout
            } else {
                0.0
            })
    }

    /// Builds the network with PyTorch's default initialisation (mask token `N(0, 0.02²)`).
    ///
    /// # Panics
    /// On an invalid configuration (call [`Self::validate`] first to get an error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BiLstmMaskedAutoencoder<B> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let (f, h) = (self.input_dim, self.hidden_dim);
        BiLstmMaskedAutoencoder {
            mask_token: init_mask_token(f, device),
            encoder_lstm: self.lstm_config().init(device),
            layer_norm: LayerNormConfig::new(2 * h).init(device),
            decoder_0: LinearConfig::new(2 * h, h).init(device),
            decoder_dropout: DropoutConfig::new(self.dropout).init(),
            decoder_3: LinearConfig::new(h, f).init(device),
        }
    }
}

/// A learnable `[1, 1, F]` mask token drawn from `N(0, 0.02²)` (`torch.randn(...) * 0.02`).
pub(crate) fn init_mask_token<B: Backend>(f: usize, device: &B::Device) -> Param<Tensor<B, 3>> {
    Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    }
    .init([1, 1, f], device)
}

/// The masked BiLSTM autoencoder.
#[derive(Module, Debug)]
pub struct BiLstmMaskedAutoencoder<B: Backend> {
    /// Learnable token `[1, 1, F]` that replaces every feature of a masked step.
    pub mask_token: Param<Tensor<B, 3>>,
    /// Bidirectional encoder (`encoder_lstm.*`).
    pub encoder_lstm: Lstm<B>,
    /// LayerNorm of the encoder outputs (`layer_norm.*`).
    pub layer_norm: LayerNorm<B>,
    /// Decoder, first Linear (`decoder.0.*`).
    pub decoder_0: Linear<B>,
    /// Decoder dropout (`decoder.2`, no parameters).
    pub decoder_dropout: Dropout,
    /// Decoder, output Linear (`decoder.3.*`).
    pub decoder_3: Linear<B>,
}

/// The loss of one batch (the reference's `compute_loss`), as scalar tensors `[1]`.
#[derive(Debug, Clone)]
pub struct MaskedLoss<B: Backend> {
    /// `reconstruction + 0.1 · regularization`, the loss to back-propagate.
    pub total: Tensor<B, 1>,
    /// Mean squared error over the masked steps × features (0 when nothing is masked).
    pub reconstruction: Tensor<B, 1>,
    /// `ReLU(1 − latent_std)`.
    pub regularization: Tensor<B, 1>,
    /// Mean over channels of the unbiased std over (batch, time) of the encoder's output on the
    /// unmasked input.
    pub latent_std: Tensor<B, 1>,
}

/// Host copies of a [`MaskedLoss`] (the reference's loss dictionary).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    /// Total loss.
    pub total: f64,
    /// Masked reconstruction MSE.
    pub reconstruction: f64,
    /// Anti-collapse regulariser.
    pub regularization: f64,
    /// Mean latent std.
    pub latent_std: f64,
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

impl<B: Backend> MaskedLoss<B> {
    /// Reads the four values back to the host.
    pub fn values(&self) -> LossValues {
        LossValues {
            total: scalar(self.total.clone()),
            reconstruction: scalar(self.reconstruction.clone()),
            regularization: scalar(self.regularization.clone()),
            latent_std: scalar(self.latent_std.clone()),
        }
    }
}

/// Weight of the anti-collapse regulariser in the total loss.
pub const REGULARIZATION_WEIGHT: f64 = 0.1;

impl<B: Backend> BiLstmMaskedAutoencoder<B> {
    /// The architecture of this network.
    pub fn config(&self) -> BiLstmMaskedAutoencoderConfig {
        BiLstmMaskedAutoencoderConfig {
            input_dim: self.mask_token.dims()[2],
            hidden_dim: self.encoder_lstm.hidden_size(),
            num_layers: self.encoder_lstm.layers.len(),
            dropout: self.decoder_dropout.prob,
        }
    }

    /// Encoder outputs `[B, T, 2H]` (no layer norm).
    pub fn encode(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.encoder_lstm.forward(x)
    }

    /// Reconstruction `[B, T, F]` of a (masked) input `[B, T, F]`.
    pub fn forward(&self, x_masked: Tensor<B, 3>) -> Tensor<B, 3> {
        let encoded = self.layer_norm.forward(self.encode(x_masked));
        let hidden = self
            .decoder_dropout
            .forward(relu(amp::linear_layer(&self.decoder_0, encoded)));
        amp::linear_layer(&self.decoder_3, hidden)
    }

    /// The loss of a reconstruction of `x` whose steps `mask` (`[B, T]`, true = masked) were
    /// masked: MSE over the masked steps plus `0.1 · ReLU(1 − s)`, where `s` is the mean over
    /// channels of the unbiased std over (batch, time) of the encoder's output on the
    /// **unmasked** `x` (an extra encoder pass that gradients flow through).
    pub fn compute_loss(
        &self,
        reconstruction: Tensor<B, 3>,
        x: Tensor<B, 3>,
        mask: Tensor<B, 2, Bool>,
    ) -> MaskedLoss<B> {
        let [b, t, f] = x.dims();
        let weights = mask.float().unsqueeze_dim::<3>(2); // [B, T, 1]
        let squared = (reconstruction - x.clone()).square() * weights.clone();
        // Masked values = masked steps × features; dividing by max(·, 1) makes the loss 0 when
        // nothing is masked (the numerator is 0 then), without a host round trip.
        let count = weights.sum().mul_scalar(f as f64).clamp_min(1.0);
        let reconstruction = squared.sum() / count;
        let encoded = self.encode(x);
        let d = encoded.dims()[2];
        let latent_std = encoded.reshape([b * t, d]).var(0).sqrt().mean();
        let regularization = relu(latent_std.clone().neg().add_scalar(1.0));
        let total =
            reconstruction.clone() + regularization.clone().mul_scalar(REGULARIZATION_WEIGHT);
        MaskedLoss {
            total,
            reconstruction,
            regularization,
            latent_std,
        }
    }
}

/// How time steps are chosen for masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    /// Every (sample, step) independently with probability `mask_ratio` (BERT-style).
    Random,
    /// One contiguous block of `⌊T · mask_ratio⌋` steps per sample, uniform start.
    Block,
    /// `max(1, ⌊P · mask_ratio⌋)` of the `P = ⌊T / patch_size⌋` patches per sample, chosen
    /// without replacement (PatchTST-style; the reference default).
    #[default]
    Patch,
}

impl MaskStrategy {
    /// The reference's name (`random`, `block`, `patch`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Block => "block",
            Self::Patch => "patch",
        }
    }
}

impl std::fmt::Display for MaskStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MaskStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "random" => Ok(Self::Random),
            "block" => Ok(Self::Block),
            "patch" => Ok(Self::Patch),
            _ => Err(format!(
                "unknown mask strategy `{s}`: expected random, block or patch"
            )),
        }
    }
}

/// The masked positions of a `[b, t]` batch, row-major (true = masked), drawn from `rng`.
///
/// * random: `u < mask_ratio` per position;
/// * block: `⌊t · mask_ratio⌋` consecutive steps per sample starting uniformly in
///   `0..=t − len` (nothing when the length is 0);
/// * patch: `n = max(1, ⌊P · mask_ratio⌋)` distinct patches of `patch_size` steps out of
///   `P = ⌊t / patch_size⌋` (patch `p` covers `p·ps .. p·ps + ps`; the tail after the last whole
///   patch is never masked; nothing when `P = 0`).
pub fn mask_positions(
    strategy: MaskStrategy,
    b: usize,
    t: usize,
    mask_ratio: f64,
    patch_size: usize,
    rng: &mut impl Rng,
) -> Vec<bool> {
    let mut mask = vec![false; b * t];
    match strategy {
        MaskStrategy::Random => {
            for m in &mut mask {
                *m = rng.random::<f64>() < mask_ratio;
            }
        }
        MaskStrategy::Block => {
            let len = ((t as f64 * mask_ratio) as usize).min(t);
            for row in mask.chunks_mut(t.max(1)) {
                let start = rng.random_range(0..=t - len);
                row[start..start + len].fill(true);
            }
        }
        MaskStrategy::Patch => {
            let ps = patch_size.max(1);
            let patches = t / ps;
            if patches > 0 {
                let n = ((patches as f64 * mask_ratio) as usize).clamp(1, patches);
                for row in mask.chunks_mut(t) {
                    for p in rand::seq::index::sample(rng, patches, n) {
                        row[p * ps..(p * ps + ps).min(t)].fill(true);
                    }
                }
            }
        }
    }
    mask
}

/// A masked batch.
#[derive(Debug, Clone)]
pub struct MaskedBatch<B: Backend> {
    /// The input with every feature of each masked step replaced by the mask token `[B, T, F]`
    /// (differentiable with respect to the token).
    pub x_masked: Tensor<B, 3>,
    /// `[B, T]`, true = masked.
    pub mask: Tensor<B, 2, Bool>,
    /// Number of masked steps.
    pub num_masked: usize,
}

/// Masks `x` `[B, T, F]` with `mask_token` `[1, 1, F]` (the reference's `apply_masking`).
pub fn apply_masking<B: Backend>(
    x: Tensor<B, 3>,
    mask_token: Tensor<B, 3>,
    strategy: MaskStrategy,
    mask_ratio: f64,
    patch_size: usize,
    rng: &mut impl Rng,
) -> MaskedBatch<B> {
    let [b, t, _] = x.dims();
    let positions = mask_positions(strategy, b, t, mask_ratio, patch_size, rng);
    let num_masked = positions.iter().filter(|&&m| m).count();
    let device = x.device();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(positions, [b, t]), &device);
    MaskedBatch {
        x_masked: mask_with(x, mask_token, mask.clone()),
        mask,
        num_masked,
    }
}

/// `x` `[B, T, F]` with every feature of each step where `mask` `[B, T]` is true replaced by
/// `mask_token` `[1, 1, F]` (the reference's `x_masked[mask] = mask_token...`): the masking of
/// [`apply_masking`] for a given mask (differentiable with respect to the token).
pub fn mask_with<B: Backend>(
    x: Tensor<B, 3>,
    mask_token: Tensor<B, 3>,
    mask: Tensor<B, 2, Bool>,
) -> Tensor<B, 3> {
    let [b, t, f] = x.dims();
    x.mask_where(
        mask.unsqueeze_dim::<3>(2).expand([b, t, f]),
        mask_token.expand([b, t, f]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::backend::{Autodiff, Flex};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    type B = Flex;

    fn rows(mask: &[bool], t: usize) -> Vec<Vec<usize>> {
        mask.chunks(t)
            .map(|r| (0..t).filter(|&i| r[i]).collect())
            .collect()
    }

    #[test]
    fn block_masks_one_run_of_floor_t_ratio_steps() {
        let mut rng = StdRng::seed_from_u64(0);
        for (t, ratio, len) in [(105, 0.15, 15), (105, 0.4, 42), (10, 0.15, 1), (6, 0.1, 0)] {
            let mask = mask_positions(MaskStrategy::Block, 20, t, ratio, 7, &mut rng);
            for r in rows(&mask, t) {
                assert_eq!(r.len(), len, "t {t} ratio {ratio}");
                if let (Some(&a), Some(&b)) = (r.first(), r.last()) {
                    assert_eq!(b - a + 1, len, "contiguous");
                }
            }
        }
        // Starts cover the whole range 0..=T−len.
        let mask = mask_positions(MaskStrategy::Block, 400, 10, 0.5, 7, &mut rng);
        let starts: std::collections::BTreeSet<usize> =
            rows(&mask, 10).iter().map(|r| r[0]).collect();
        assert_eq!(starts, (0..=5).collect());
    }

    #[test]
    fn patch_masks_whole_aligned_patches() {
        let mut rng = StdRng::seed_from_u64(1);
        // (T, ratio, patch size, patches masked): P = T / ps, n = max(1, ⌊P · ratio⌋).
        for (t, ratio, ps, n) in [
            (105, 0.15, 7, 2),
            (105, 0.4, 7, 6),
            (20, 0.15, 7, 1),
            (20, 1.0, 7, 2),
            (35, 0.0, 5, 1),
        ] {
            let mask = mask_positions(MaskStrategy::Patch, 30, t, ratio, ps, &mut rng);
            for r in rows(&mask, t) {
                assert_eq!(r.len(), n * ps, "t {t} ratio {ratio}");
                // Whole patches: every masked step's patch is fully masked, never the tail.
                for &i in &r {
                    let p = i / ps;
                    assert!(p < t / ps, "tail step {i} masked");
                    assert!((p * ps..p * ps + ps).all(|j| r.contains(&j)));
                }
            }
        }
        // Shorter than one patch: nothing to mask.
        assert!(!mask_positions(MaskStrategy::Patch, 2, 5, 0.5, 7, &mut rng).contains(&true));
        // Every patch gets chosen sometimes.
        let mask = mask_positions(MaskStrategy::Patch, 200, 105, 0.15, 7, &mut rng);
        let mut seen = [false; 15];
        for r in rows(&mask, 105) {
            for i in r {
                seen[i / 7] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn random_masks_about_the_ratio() {
        let mut rng = StdRng::seed_from_u64(2);
        let mask = mask_positions(MaskStrategy::Random, 100, 105, 0.15, 7, &mut rng);
        let frac = mask.iter().filter(|&&m| m).count() as f64 / mask.len() as f64;
        assert!((frac - 0.15).abs() < 0.02, "{frac}");
        assert!(!mask_positions(MaskStrategy::Random, 4, 9, 0.0, 7, &mut rng).contains(&true));
        assert!(
            mask_positions(MaskStrategy::Random, 4, 9, 1.0, 7, &mut rng)
                .iter()
                .all(|&m| m)
        );
    }

    #[test]
    fn strategies_parse_and_print() {
        for s in [
            MaskStrategy::Random,
            MaskStrategy::Block,
            MaskStrategy::Patch,
        ] {
            assert_eq!(s.to_string().parse::<MaskStrategy>().unwrap(), s);
        }
        assert!("blocks".parse::<MaskStrategy>().is_err());
        assert_eq!(MaskStrategy::default(), MaskStrategy::Patch);
        assert_eq!(
            serde_json::to_string(&MaskStrategy::Block).unwrap(),
            "\"block\""
        );
    }

    #[test]
    fn masked_steps_hold_the_token_and_the_rest_is_unchanged() {
        let device = Default::default();
        let (b, t, f) = (3, 14, 4);
        let values: Vec<f32> = (0..b * t * f).map(|v| 100.0 + v as f32).collect();
        let x = Tensor::<B, 3>::from_data(TensorData::new(values.clone(), [b, t, f]), &device);
        let token = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.1f32, -0.2, 0.3, -0.4], [1, 1, f]),
            &device,
        );
        for strategy in [
            MaskStrategy::Random,
            MaskStrategy::Block,
            MaskStrategy::Patch,
        ] {
            let mut rng = StdRng::seed_from_u64(3);
            let out = apply_masking(x.clone(), token.clone(), strategy, 0.3, 7, &mut rng);
            let mask: Vec<bool> = out.mask.into_data().to_vec().unwrap();
            let got: Vec<f32> = out.x_masked.into_data().to_vec().unwrap();
            assert_eq!(out.num_masked, mask.iter().filter(|&&m| m).count());
            assert!(out.num_masked > 0);
            // Same draws as the host-side positions.
            let mut rng = StdRng::seed_from_u64(3);
            assert_eq!(mask, mask_positions(strategy, b, t, 0.3, 7, &mut rng));
            for (pos, &m) in mask.iter().enumerate() {
                let step = &got[pos * f..(pos + 1) * f];
                if m {
                    assert_eq!(step, &[0.1, -0.2, 0.3, -0.4]);
                } else {
                    assert_eq!(step, &values[pos * f..(pos + 1) * f]);
                }
            }
        }
    }

    #[test]
    fn the_mask_token_receives_gradients() {
        type AD = Autodiff<Flex>;
        let device = Default::default();
        // No dropout and 16 decoder units: with 4 units and dropout 0.2, an unseeded init could
        // leave every ReLU unit dead or dropped at the masked steps (a zero gradient that says
        // nothing about the mask token's wiring; CI hit it once).
        let model = BiLstmMaskedAutoencoderConfig {
            hidden_dim: 16,
            num_layers: 1,
            dropout: 0.0,
            ..Default::default()
        }
        .init::<AD>(&device);
        let x = Tensor::<AD, 3>::random([2, 14, 4], burn::tensor::Distribution::Default, &device);
        let mut rng = StdRng::seed_from_u64(4);
        let m = apply_masking(
            x.clone(),
            model.mask_token.val(),
            MaskStrategy::Patch,
            0.5,
            7,
            &mut rng,
        );
        let loss = model.compute_loss(model.forward(m.x_masked), x, m.mask);
        let grads = loss.total.backward();
        let g = model.mask_token.grad(&grads).expect("mask token gradient");
        assert!(g.abs().sum().into_scalar() > 0.0);
    }

    /// Host mean and unbiased std per channel of `[n, d]` values.
    fn channel_std(v: &[f32], d: usize) -> Vec<f64> {
        let n = v.len() / d;
        (0..d)
            .map(|c| {
                let col: Vec<f64> = (0..n).map(|i| f64::from(v[i * d + c])).collect();
                let mean = col.iter().sum::<f64>() / n as f64;
                (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            })
            .collect()
    }

    #[test]
    fn loss_matches_a_hand_computation() {
        let device = Default::default();
        let model = BiLstmMaskedAutoencoderConfig {
            input_dim: 2,
            hidden_dim: 3,
            num_layers: 1,
            ..Default::default()
        }
        .init::<B>(&device);
        let (b, t, f) = (2, 3, 2);
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.5, 2.0, 0.0, 1.0, 1.0];
        let r: Vec<f32> = vec![1.5, 2.0, 2.0, 4.0, 5.0, 7.0, 0.0, 0.5, 2.0, 3.0, 1.0, 1.0];
        let mask = vec![false, true, true, false, true, false];
        let xt = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [b, t, f]), &device);
        let rt = Tensor::<B, 3>::from_data(TensorData::new(r.clone(), [b, t, f]), &device);
        let mt = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask.clone(), [b, t]), &device);
        let v = model.compute_loss(rt.clone(), xt.clone(), mt).values();
        // Masked steps: (0,1): (3−2)², (4−4)²; (0,2): 0, (7−6)²; (1,1): 0, (3−0)².
        // Sum 1 + 0 + 0 + 1 + 0 + 9 = 11 over 3 steps × 2 features.
        assert!((v.reconstruction - 11.0 / 6.0).abs() < 1e-6, "{v:?}");
        let enc: Vec<f32> = model.encode(xt.clone()).into_data().to_vec().unwrap();
        let stds = channel_std(&enc, 6);
        let s = stds.iter().sum::<f64>() / 6.0;
        assert!((v.latent_std - s).abs() < 1e-5, "{v:?} {s}");
        let reg = (1.0 - s).max(0.0);
        assert!((v.regularization - reg).abs() < 1e-5);
        assert!((v.total - (11.0 / 6.0 + 0.1 * reg)).abs() < 1e-5);
        // Nothing masked: the reconstruction term is 0, the regulariser remains.
        let none =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![false; 6], [b, t]), &device);
        let v0 = model.compute_loss(rt, xt, none).values();
        assert_eq!(v0.reconstruction, 0.0);
        assert!((v0.total - 0.1 * reg).abs() < 1e-5);
    }

    #[test]
    fn reference_architecture_and_names() {
        let device = Default::default();
        let model = BiLstmMaskedAutoencoderConfig::new().init::<B>(&device);
        assert_eq!(model.config(), BiLstmMaskedAutoencoderConfig::new());
        let names: Vec<String> = kiln::checkpoint::param_shapes(&model)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for key in [
            "mask_token",
            "encoder_lstm.layers.0.forward_dir.weight_ih",
            "encoder_lstm.layers.1.reverse_dir.bias_hh",
            "layer_norm.gamma",
            "decoder_0.weight",
            "decoder_3.bias",
        ] {
            assert!(names.iter().any(|n| n == key), "{key} not in {names:?}");
        }
        let out = model.forward(Tensor::zeros([2, 9, 4], &device));
        assert_eq!(out.dims(), [2, 9, 4]);
        assert!(
            BiLstmMaskedAutoencoderConfig {
                dropout: 1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
