//! RWKV-TS, ported from the reference's
//! [`models/rwkv_ts.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/models/rwkv_ts.py) (commit `6ecdb28`).
//!
//! ```text
//! x [B, T, F] → input_proj Linear(F→d) → InstanceNorm over time (no affine, eps 1e-5,
//!   skipped when T == 1 or instance_norm is off) → n_layers RWKV blocks, threading a state
//!   → last step → output_norm → dropout → classifier
//! ```
//!
//! An RWKV block on `x [B, T, d]` with state `s [B, 1, d]` (zeros for the first block):
//!
//! ```text
//! n  = ln1(x);  xx  = cat(s, n[:, :T−1])            (token shift)
//! k  = key(n·μk + xx·(1−μk));  v = value(…μv…);  r = receptance(…μr…)
//! out = σ(r) ⊙ output(k ⊙ v);  out ← out · window_mask   (×1.2 on the inner window, if any)
//! x  = x + dropout(out)
//! n2 = ln2(x);  xx2 = cat(s, n2[:, :T−1])
//! x  = x + dropout(σ(ffn_receptance(mix(n2, xx2, μr'))) ⊙ ffn_value(ReLU(ffn_key(mix(n2, xx2, μk')))²))
//! new state = x[:, T−1:T]
//! ```
//!
//! Parameters: 857,730 for the defaults and `C = 2`. Names mirror the PyTorch state dict:
//! `input_proj.*`, `blocks.{i}.{time_mix_k, time_mix_v, time_mix_r, key, value, receptance,
//! output, channel_mix_k, channel_mix_r, ffn_key, ffn_value, ffn_receptance, ln1, ln2}`,
//! `output_norm.*`, `classifier.*`. The reference's `blocks.{i}.window_mask` buffer is not a
//! parameter here: it is derived from the window (the importer checks it against that).
//!
//! ## Reference quirks (RWKV block details and the hard-coded 105-step window)
//! * `patch_sizes` is stored and saved but never used (as in the reference).
//! * The time/channel-mix coefficients start from `N(0, 1)` (unconstrained, not in `[0, 1]`),
//!   as in the reference: reproduced so that the same training recipe behaves the same.
//! * The "state" of a block is the **previous block's last output step** (zeros for the first
//!   block), used for both token shifts of the block: reproduced for checkpoint parity.
//! * Window (made configurable): the reference multiplies by its 105-step `window_mask` only
//!   when `T == 105`. Here the mask comes from `config.window`, or
//!   [`InnerWindow::default_for`] the sequence length given to `init` (the reference layout for
//!   105 steps, none otherwise); without a window there is no ×1.2 mask.
//! * Observation: the logits read the last step, whose receptive field (two one-step token
//!   shifts per block; the state is the previous block's last step) covers only the last
//!   `2·n_layers + 1` steps (9 for the defaults). With the reference window (30..75) the ×1.2
//!   mask therefore never reaches the logits, in the reference as here; it matters only for
//!   windows near the end of the sequence. `readout: mean` (an option of this port, off by
//!   default) feeds the classifier the mean over all steps instead.

use anyhow::bail;
use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use kiln::{amp, fused, ops};
use serde::{Deserialize, Serialize};

use super::InnerWindow;

/// Multiplier of the block outputs on the inner-window steps (the reference's `window_mask`).
pub const WINDOW_MASK_WEIGHT: f32 = 1.2;
/// Epsilon of the InstanceNorm after the input projection.
pub const INSTANCE_NORM_EPS: f64 = 1e-5;

/// Hyper-parameters (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RwkvTsConfig {
    /// Model width.
    pub d_model: usize,
    /// RWKV blocks.
    pub n_layers: usize,
    /// Stored and saved like the reference, never used.
    pub patch_sizes: Vec<usize>,
    /// Dropout rate.
    pub dropout: f64,
    /// InstanceNorm after the input projection.
    pub instance_norm: bool,
    /// Inner window for the ×1.2 mask; `None` = default for the sequence length.
    pub window: Option<InnerWindow>,
    /// What the classifier reads: the last step (reference) or the mean over all steps.
    pub readout: Readout,
}

/// Which time steps feed the RWKV-TS classifier head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readout {
    /// The last step, like the reference (its receptive field is the last `2·n_layers + 1`
    /// steps).
    #[default]
    Last,
    /// The mean over all steps (an option of this port; sees the whole window).
    Mean,
}

impl Default for RwkvTsConfig {
    fn default() -> Self {
        Self {
            d_model: 128,
            n_layers: 4,
            patch_sizes: vec![7, 15, 21, 35],
            dropout: 0.2,
            instance_norm: true,
            window: None,
            readout: Readout::Last,
        }
    }
}

impl RwkvTsConfig {
    /// The window the network uses for `seq_len` steps.
    pub fn effective_window(&self, seq_len: usize) -> Option<InnerWindow> {
        self.window.or(InnerWindow::default_for(seq_len))
    }

    /// Checks the hyper-parameters against the data dimensions; returns the effective window.
    pub fn validate(
        &self,
        input_dim: usize,
        n_classes: usize,
        seq_len: usize,
    ) -> anyhow::Result<Option<InnerWindow>> {
        if input_dim == 0 || n_classes == 0 || seq_len == 0 {
            bail!(
                "rwkv_ts: input_dim ({input_dim}), n_classes ({n_classes}) and the sequence \
                 length ({seq_len}) must be positive"
            );
        }
        if self.d_model == 0 {
            bail!("rwkv_ts: d_model must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("rwkv_ts: dropout {} is not in [0, 1)", self.dropout);
        }
        let window = self.effective_window(seq_len);
        if let Some(w) = window
            && (w.is_empty() || w.end > seq_len)
        {
            bail!(
                "rwkv_ts: inner window {}..{} is not a non-empty range inside the {seq_len} steps",
                w.start,
                w.end
            );
        }
        Ok(window)
    }

    /// Builds the network (errors on an invalid configuration, see [`Self::validate`]).
    pub fn init<B: Backend>(
        &self,
        input_dim: usize,
        n_classes: usize,
        seq_len: usize,
        device: &B::Device,
    ) -> anyhow::Result<RwkvTs<B>> {
        let window = self.validate(input_dim, n_classes, seq_len)?;
        let d = self.d_model;
        Ok(RwkvTs {
            input_proj: LinearConfig::new(input_dim, d).init(device),
            blocks: (0..self.n_layers)
                .map(|_| RwkvBlock::new(d, self.dropout, device))
                .collect(),
            output_norm: LayerNormConfig::new(d).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            classifier: LinearConfig::new(d, n_classes).init(device),
            instance_norm: self.instance_norm,
            window,
            readout: self.readout,
        })
    }
}

/// One simplified RWKV block (time mixing + channel mixing with token shift).
#[derive(Module, Debug)]
pub struct RwkvBlock<B: Backend> {
    /// Time-mix coefficient of the key input `[1, 1, d]`.
    pub time_mix_k: Param<Tensor<B, 3>>,
    /// Time-mix coefficient of the value input `[1, 1, d]`.
    pub time_mix_v: Param<Tensor<B, 3>>,
    /// Time-mix coefficient of the receptance input `[1, 1, d]`.
    pub time_mix_r: Param<Tensor<B, 3>>,
    /// Key projection (no bias).
    pub key: Linear<B>,
    /// Value projection (no bias).
    pub value: Linear<B>,
    /// Receptance projection (no bias).
    pub receptance: Linear<B>,
    /// Output projection (no bias).
    pub output: Linear<B>,
    /// Channel-mix coefficient of the FFN key input `[1, 1, d]`.
    pub channel_mix_k: Param<Tensor<B, 3>>,
    /// Channel-mix coefficient of the FFN receptance input `[1, 1, d]`.
    pub channel_mix_r: Param<Tensor<B, 3>>,
    /// FFN expansion `d → 4d` (no bias).
    pub ffn_key: Linear<B>,
    /// FFN projection `4d → d` (no bias).
    pub ffn_value: Linear<B>,
    /// FFN gate `d → d` (no bias).
    pub ffn_receptance: Linear<B>,
    /// Norm before time mixing.
    pub ln1: LayerNorm<B>,
    /// Norm before channel mixing.
    pub ln2: LayerNorm<B>,
    /// Dropout on both residual branches.
    pub dropout: Dropout,
}

impl<B: Backend> RwkvBlock<B> {
    fn new(d: usize, dropout: f64, device: &B::Device) -> Self {
        let randn = || {
            Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([1, 1, d], device)
        };
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            time_mix_k: randn(),
            time_mix_v: randn(),
            time_mix_r: randn(),
            key: linear(d, d),
            value: linear(d, d),
            receptance: linear(d, d),
            output: linear(d, d),
            channel_mix_k: randn(),
            channel_mix_r: randn(),
            ffn_key: linear(d, 4 * d),
            ffn_value: linear(4 * d, d),
            ffn_receptance: linear(d, d),
            ln1: LayerNormConfig::new(d).init(device),
            ln2: LayerNormConfig::new(d).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `n·μ + cat(state, n[:, :T−1])·(1 − μ)`: the token shift and its mix, fused
    /// ([`kiln::fused::shift_lerp`]).
    fn mix(n: &Tensor<B, 3>, state: &Tensor<B, 3>, mu: &Param<Tensor<B, 3>>) -> Tensor<B, 3> {
        fused::shift_lerp(n.clone(), state.clone(), mu.val())
    }

    /// One block: `x [B, T, d]`, `state [B, 1, d]`, optional window weights `[1, T, 1]`;
    /// returns the new `x` and the new state (its last step).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Tensor<B, 3>,
        window_mask: Option<&Tensor<B, 3>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let n = self.ln1.forward(x.clone());
        let k = amp::linear_layer(&self.key, Self::mix(&n, &state, &self.time_mix_k));
        let v = amp::linear_layer(&self.value, Self::mix(&n, &state, &self.time_mix_v));
        let r = amp::linear_layer(&self.receptance, Self::mix(&n, &state, &self.time_mix_r));
        let mut out = fused::sigmoid_gate(r, amp::linear_layer(&self.output, k * v));
        if let Some(m) = window_mask {
            out = ops::mul(out, m.clone());
        }
        let x = x + self.dropout.forward(out);

        let n2 = self.ln2.forward(x.clone());
        let k2 = amp::linear_layer(&self.ffn_key, Self::mix(&n2, &state, &self.channel_mix_k));
        let r2 = amp::linear_layer(
            &self.ffn_receptance,
            Self::mix(&n2, &state, &self.channel_mix_r),
        );
        let ffn = fused::sigmoid_gate(
            r2,
            amp::linear_layer(&self.ffn_value, fused::relu_square(k2)),
        );
        let x = x + self.dropout.forward(ffn);
        let [batch, steps, d] = x.dims();
        let new_state = x.clone().slice([0..batch, steps - 1..steps, 0..d]);
        (x, new_state)
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct RwkvTs<B: Backend> {
    /// Input projection `F → d` (with bias).
    pub input_proj: Linear<B>,
    /// The RWKV blocks.
    pub blocks: Vec<RwkvBlock<B>>,
    /// LayerNorm of the last step.
    pub output_norm: LayerNorm<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// Classification layer.
    pub classifier: Linear<B>,
    /// Whether the InstanceNorm is applied.
    pub instance_norm: bool,
    /// The inner window of the ×1.2 mask, if any.
    #[module(skip)]
    pub window: Option<InnerWindow>,
    /// Which steps feed the classifier.
    #[module(skip)]
    pub readout: Readout,
}

/// The reference's `window_mask` values for `steps` steps and a window: 1.0, and
/// [`WINDOW_MASK_WEIGHT`] inside the window.
pub fn window_mask_values(window: InnerWindow, steps: usize) -> Vec<f32> {
    (0..steps)
        .map(|t| {
            if (window.start..window.end).contains(&t) {
                WINDOW_MASK_WEIGHT
            } else {
                1.0
            }
        })
        .collect()
}

impl<B: Backend> RwkvTs<B> {
    /// The inner window in use.
    pub fn window(&self) -> Option<InnerWindow> {
        self.window
    }

    /// Logits `[batch, classes]` from `[batch, time, features]`.
    ///
    /// # Panics
    /// When the inner window does not fit the input's length (the model was built for another
    /// sequence length).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, steps, _] = x.dims();
        let device = x.device();
        let mut h = amp::linear_layer(&self.input_proj, x);
        let d = h.dims()[2];
        if self.instance_norm && steps > 1 {
            let (var, mean) = h.clone().var_mean_bias(1);
            h = ops::div(ops::sub(h, mean), var.add_scalar(INSTANCE_NORM_EPS).sqrt());
        }
        let mask = self.window.map(|w| {
            assert!(
                w.end <= steps,
                "rwkv_ts: inner window {}..{} does not fit {steps} steps",
                w.start,
                w.end
            );
            Tensor::<B, 3>::from_data(
                TensorData::new(window_mask_values(w, steps), [1, steps, 1]),
                &device,
            )
        });
        let mut state = Tensor::zeros([batch, 1, d], &device);
        for block in &self.blocks {
            let (next, next_state) = block.forward(h, state, mask.as_ref());
            h = next;
            state = next_state;
        }
        let last = match self.readout {
            Readout::Last => h
                .slice([0..batch, steps - 1..steps, 0..d])
                .reshape([batch, d]),
            Readout::Mean => h.mean_dim(1).reshape([batch, d]),
        };
        amp::linear_layer(
            &self.classifier,
            self.dropout.forward(self.output_norm.forward(last)),
        )
    }
}
