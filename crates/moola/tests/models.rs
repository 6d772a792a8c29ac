//! moola's networks and building blocks: exact parameter counts of the reference, shapes,
//! window handling at other lengths, configuration errors, initialisation, train/eval behaviour
//! and gradient flow. (PyTorch parity is in `tests/import.rs`.)

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use kiln::backend::{Autodiff, Flex};
use moola::model::cnn_transformer::branch_channels;
use moola::model::{
    CnnTransformer, CnnTransformerConfig, InnerWindow, ModelSpec, Net, RwkvTsConfig,
    SimpleLstmConfig,
};
use moola::nn::{AttentionMask, LstmConfig, MultiheadAttentionConfig, TransformerEncoderConfig};

type B = Flex;
type AD = Autodiff<Flex>;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// Trainable parameters, as PyTorch's `sum(p.numel() for p in model.parameters())` counts them
/// (BatchNorm running statistics are buffers there).
fn n_params<M: Module<B>>(module: &M) -> usize {
    kiln::checkpoint::parameter_count::<B, _>(module)
}

fn build(spec: ModelSpec, input_dim: usize, n_classes: usize, seq_len: usize) -> Net<B> {
    spec.init::<B>(input_dim, n_classes, seq_len, &device())
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn input<BB: Backend>(batch: usize, steps: usize, device: &BB::Device) -> Tensor<BB, 3> {
    Tensor::random([batch, steps, 4], Distribution::Normal(0.0, 1.0), device)
}

fn values<const D: usize, BB: Backend>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn max_abs_diff<const D: usize, BB: Backend>(a: Tensor<BB, D>, b: Tensor<BB, D>) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------- parameter counts (reference)

#[test]
fn simple_lstm_parameter_counts_match_the_reference() {
    let spec = |hidden_size| {
        ModelSpec::SimpleLstm(SimpleLstmConfig {
            hidden_size,
            ..SimpleLstmConfig::default()
        })
    };
    assert_eq!(n_params(&build(spec(64), 4, 2, 105)), 36_834);
    assert_eq!(n_params(&build(spec(64), 4, 3, 105)), 36_867);
    assert_eq!(n_params(&build(spec(128), 4, 2, 105)), 139_106);
}

#[test]
fn cnn_transformer_parameter_counts_match_the_reference() {
    let default = CnnTransformerConfig::default();
    let two = build(ModelSpec::CnnTransformer(default.clone()), 4, 2, 105);
    assert_eq!(n_params(&two), 875_938);
    let three = build(ModelSpec::CnnTransformer(default.clone()), 4, 3, 105);
    assert_eq!(n_params(&three), 876_067);
    let pointers = CnnTransformerConfig {
        predict_pointers: true,
        ..default
    };
    let with_pointers = build(ModelSpec::CnnTransformer(pointers), 4, 2, 105);
    assert_eq!(n_params(&with_pointers), 875_938 + 258);
    if let Net::CnnTransformer(m) = &two {
        assert_eq!(n_params(&m.rel_pos_enc), 130_944);
    }
}

#[test]
fn rwkv_ts_parameter_count_matches_the_reference() {
    let net = build(ModelSpec::RwkvTs(RwkvTsConfig::default()), 4, 2, 105);
    assert_eq!(n_params(&net), 857_730);
}

#[test]
fn channel_split_follows_the_reference_rule() {
    assert_eq!(branch_channels(64, 3), vec![22, 21, 21]);
    assert_eq!(branch_channels(128, 3), vec![43, 43, 42]);
    assert_eq!(branch_channels(7, 2), vec![4, 3]);
    let net = build(
        ModelSpec::CnnTransformer(CnnTransformerConfig::default()),
        4,
        2,
        105,
    );
    let Net::CnnTransformer(m) = net else {
        unreachable!()
    };
    let out: Vec<Vec<usize>> = m
        .cnn_blocks
        .iter()
        .map(|b| b.convs.iter().map(|c| c.conv.weight.dims()[0]).collect())
        .collect();
    assert_eq!(
        out,
        vec![vec![22, 21, 21], vec![43, 43, 42], vec![43, 43, 42]]
    );
    let kernels: Vec<usize> = m.cnn_blocks[0]
        .convs
        .iter()
        .map(|c| c.conv.weight.dims()[2])
        .collect();
    assert_eq!(kernels, vec![3, 5, 9]);
    // 1×1 residual convolutions only where the channel count changes.
    let residual: Vec<bool> = m.cnn_blocks.iter().map(|b| b.residual.is_some()).collect();
    assert_eq!(residual, vec![true, true, false]);
}

// ---------------------------------------------------------------- small configurations

fn small_lstm(num_layers: usize) -> ModelSpec {
    ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 12,
        num_layers,
        num_heads: 3,
        dropout: 0.4,
    })
}

fn small_cnn(predict_pointers: bool, window: Option<InnerWindow>) -> CnnTransformerConfig {
    CnnTransformerConfig {
        cnn_channels: vec![8, 12, 12],
        cnn_kernels: vec![3, 5, 9],
        transformer_layers: 2,
        transformer_heads: 4,
        dropout: 0.25,
        predict_pointers,
        window,
    }
}

fn small_rwkv() -> RwkvTsConfig {
    RwkvTsConfig {
        d_model: 16,
        n_layers: 2,
        ..RwkvTsConfig::default()
    }
}

// ---------------------------------------------------------------- shapes and windows

#[test]
fn output_shapes_at_the_reference_length() {
    let x = input::<B>(3, 105, &device());
    for spec in [
        small_lstm(1),
        small_lstm(2),
        ModelSpec::CnnTransformer(small_cnn(false, None)),
        ModelSpec::RwkvTs(small_rwkv()),
    ] {
        let out = build(spec.clone(), 4, 3, 105).forward(x.clone());
        assert_eq!(out.logits.dims(), [3, 3], "{}", spec.name());
        assert!(out.pointers.is_none());
        assert!(values(out.logits).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn pointer_heads_cover_the_inner_window() {
    let net = build(ModelSpec::CnnTransformer(small_cnn(true, None)), 4, 2, 105);
    let out = net.forward(input::<B>(2, 105, &device()));
    assert_eq!(out.logits.dims(), [2, 2]);
    let (start, end) = out.pointers.expect("pointer heads");
    assert_eq!(start.dims(), [2, 45]);
    assert_eq!(end.dims(), [2, 45]);
    // An explicit window at another length sizes the heads.
    let window = InnerWindow { start: 10, end: 30 };
    let net = build(
        ModelSpec::CnnTransformer(small_cnn(true, Some(window))),
        4,
        2,
        40,
    );
    let (start, _) = net.forward(input::<B>(2, 40, &device())).pointers.unwrap();
    assert_eq!(start.dims(), [2, 20]);
}

#[test]
fn windows_default_to_the_reference_layout_and_are_off_at_other_lengths() {
    let at = |seq_len| {
        let Net::CnnTransformer(m) = build(
            ModelSpec::CnnTransformer(small_cnn(false, None)),
            4,
            2,
            seq_len,
        ) else {
            unreachable!()
        };
        m
    };
    assert_eq!(at(105).window(), Some(InnerWindow::REFERENCE));
    // The window survives the autodiff → inference conversion.
    let Net::CnnTransformer(trained) =
        ad_build(&ModelSpec::CnnTransformer(small_cnn(false, None)), 105)
    else {
        unreachable!()
    };
    assert_eq!(trained.valid().window(), Some(InnerWindow::REFERENCE));
    let short = at(50);
    assert_eq!(short.window(), None);
    assert_eq!(
        short.forward(input::<B>(2, 50, &device())).logits.dims(),
        [2, 2]
    );

    let rwkv = |seq_len| {
        let Net::RwkvTs(m) = build(ModelSpec::RwkvTs(small_rwkv()), 4, 2, seq_len) else {
            unreachable!()
        };
        m
    };
    assert_eq!(rwkv(105).window(), Some(InnerWindow::REFERENCE));
    let short = rwkv(50);
    assert_eq!(short.window(), None);
    assert_eq!(short.forward(input::<B>(2, 50, &device())).dims(), [2, 2]);
    // T == 1: the InstanceNorm is skipped (it would divide by a zero variance).
    let one = rwkv(1);
    let logits = one.forward(input::<B>(2, 1, &device()));
    assert!(values(logits).iter().all(|v| v.is_finite()));
}

#[test]
fn window_weighting_and_mask_change_the_outputs() {
    let x = input::<B>(2, 105, &device());
    let Net::CnnTransformer(with) =
        build(ModelSpec::CnnTransformer(small_cnn(true, None)), 4, 2, 105)
    else {
        unreachable!()
    };
    let mut without: CnnTransformer<B> = with.clone();
    without.window = None;
    let a = with.forward(x.clone()).logits;
    let b = without.forward(x.clone()).logits;
    assert!(max_abs_diff(a, b) > 1e-4);

    // RWKV: the ×1.2 mask scales the block outputs on the window steps only. (The logits read
    // the last step, whose receptive field is the last 2·n_layers + 1 steps: with the reference
    // window they never see the mask, in the reference too.)
    let Net::RwkvTs(rwkv) = build(ModelSpec::RwkvTs(small_rwkv()), 4, 2, 105) else {
        unreachable!()
    };
    let device = device();
    let h = Tensor::<B, 3>::random([2, 105, 16], Distribution::Normal(0.0, 1.0), &device);
    let state = Tensor::<B, 3>::zeros([2, 1, 16], &device);
    let mask_values = moola::model::rwkv_ts::window_mask_values(InnerWindow::REFERENCE, 105);
    assert_eq!(mask_values[29..31], [1.0, 1.2]);
    assert_eq!(mask_values[74..76], [1.2, 1.0]);
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask_values, [1, 105, 1]), &device);
    let (masked, _) = rwkv.blocks[0].forward(h.clone(), state.clone(), Some(&mask));
    let (plain, _) = rwkv.blocks[0].forward(h, state, None);
    let steps = |t: Tensor<B, 3>, r: std::ops::Range<usize>| t.slice([0..2, r, 0..16]);
    assert!(max_abs_diff(steps(masked.clone(), 0..30), steps(plain.clone(), 0..30)) < 1e-6);
    assert!(max_abs_diff(steps(masked, 30..75), steps(plain, 30..75)) > 1e-3);
    // A window that reaches the last step changes the logits.
    let late = InnerWindow {
        start: 90,
        end: 105,
    };
    let Net::RwkvTs(with) = build(
        ModelSpec::RwkvTs(RwkvTsConfig {
            window: Some(late),
            ..small_rwkv()
        }),
        4,
        2,
        105,
    ) else {
        unreachable!()
    };
    let mut without = with.clone();
    without.window = None;
    assert!(max_abs_diff(with.forward(x.clone()), without.forward(x)) > 1e-4);
}

#[test]
fn attention_mask_blocks_buffer_rows_from_inner_columns() {
    let window = InnerWindow::REFERENCE;
    let mask: Vec<f32> = values(CnnTransformer::<B>::attention_mask(window, 105, &device()));
    let at = |i: usize, j: usize| mask[i * 105 + j];
    assert_eq!(at(0, 30), f32::NEG_INFINITY);
    assert_eq!(at(104, 74), f32::NEG_INFINITY);
    assert_eq!(at(80, 40), f32::NEG_INFINITY);
    assert_eq!(at(0, 29), 0.0);
    assert_eq!(at(0, 75), 0.0);
    assert_eq!(at(30, 0), 0.0); // inner rows attend everywhere
    assert_eq!(at(74, 74), 0.0);
    let blocked = mask.iter().filter(|v| v.is_infinite()).count();
    assert_eq!(blocked, 60 * 45);
}

/// Through a masked encoder layer, a buffer row does not depend on the inner-window inputs,
/// while an inner row does.
#[test]
fn masked_encoder_layer_isolates_buffer_rows() {
    let device = device();
    let steps = 12;
    let window = InnerWindow { start: 4, end: 8 };
    let layer = TransformerEncoderConfig::new(8, 2, 32)
        .init_layer::<B>(&device)
        .unwrap();
    let mask = AttentionMask::Additive(CnnTransformer::<B>::attention_mask(window, steps, &device));
    let x = Tensor::<B, 3>::random([1, steps, 8], Distribution::Normal(0.0, 1.0), &device);
    let bump = Tensor::<B, 3>::zeros([1, steps, 8], &device)
        .slice_assign([0..1, 5..6, 0..8], Tensor::ones([1, 1, 8], &device));
    let a = layer.forward(x.clone(), Some(&mask));
    let b = layer.forward(x + bump, Some(&mask));
    let row = |t: Tensor<B, 3>, i: usize| t.slice([0..1, i..i + 1, 0..8]);
    assert!(max_abs_diff(row(a.clone(), 0), row(b.clone(), 0)) < 1e-6);
    assert!(max_abs_diff(row(a.clone(), 10), row(b.clone(), 10)) < 1e-6);
    assert!(max_abs_diff(row(a, 6), row(b, 6)) > 1e-3);
}

#[test]
fn relative_position_bias_is_the_mean_over_key_positions() {
    let Net::CnnTransformer(m) =
        build(ModelSpec::CnnTransformer(small_cnn(false, None)), 4, 2, 105)
    else {
        unreachable!()
    };
    let steps = 7;
    let table: Vec<f32> = values(m.rel_pos_enc.rel_pos_emb.val());
    let d = 12;
    let got: Vec<f32> = values(m.rel_pos_enc.mean_bias(steps));
    for i in 0..steps {
        for c in 0..d {
            let want: f32 = (0..steps)
                .map(|j| table[(j + 511 - i) * d + c])
                .sum::<f32>()
                / steps as f32;
            assert!((got[i * d + c] - want).abs() < 1e-5, "({i}, {c})");
        }
    }
}

// ---------------------------------------------------------------- configuration errors

fn init_error(spec: ModelSpec, seq_len: usize) -> String {
    match spec.init::<B>(4, 2, seq_len, &device()) {
        Ok(_) => panic!("{spec:?} built without error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_configurations_are_errors() {
    let cnn = |f: fn(&mut CnnTransformerConfig)| {
        let mut c = small_cnn(false, None);
        f(&mut c);
        ModelSpec::CnnTransformer(c)
    };
    let err = init_error(cnn(|c| c.transformer_heads = 5), 105);
    assert!(
        err.contains("not divisible by transformer_heads 5"),
        "{err}"
    );
    let err = init_error(
        cnn(|c| {
            c.window = Some(InnerWindow {
                start: 30,
                end: 120,
            })
        }),
        105,
    );
    assert!(err.contains("30..120"), "{err}");
    let err = init_error(
        cnn(|c| c.window = Some(InnerWindow { start: 9, end: 9 })),
        105,
    );
    assert!(err.contains("9..9"), "{err}");
    let err = init_error(cnn(|c| c.predict_pointers = true), 50);
    assert!(err.contains("pointer heads need an inner window"), "{err}");
    let err = init_error(cnn(|_| {}), 600);
    assert!(err.contains("600"), "{err}");
    let err = init_error(cnn(|c| c.cnn_channels = vec![2, 12]), 105);
    assert!(err.contains("2 channels"), "{err}");
    let err = init_error(cnn(|c| c.cnn_channels.clear()), 105);
    assert!(err.contains("must not be empty"), "{err}");
    let err = init_error(cnn(|c| c.cnn_kernels = vec![3, 0]), 105);
    assert!(err.contains("kernel size 0"), "{err}");

    let err = init_error(
        ModelSpec::SimpleLstm(SimpleLstmConfig {
            hidden_size: 10,
            ..SimpleLstmConfig::default()
        }),
        105,
    );
    assert!(err.contains("not divisible by num_heads 4"), "{err}");
    let err = init_error(
        ModelSpec::RwkvTs(RwkvTsConfig {
            window: Some(InnerWindow { start: 0, end: 200 }),
            ..small_rwkv()
        }),
        105,
    );
    assert!(err.contains("0..200"), "{err}");
    let err = init_error(
        ModelSpec::RwkvTs(RwkvTsConfig {
            dropout: 1.5,
            ..small_rwkv()
        }),
        105,
    );
    assert!(err.contains("dropout"), "{err}");
}

// ---------------------------------------------------------------- initialisation

fn abs_max(t: Tensor<B, 2>) -> f32 {
    values(t).iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn std_of(v: &[f32]) -> f32 {
    let n = v.len() as f32;
    let mean = v.iter().sum::<f32>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt()
}

#[test]
fn initialisation_follows_pytorch_defaults() {
    let Net::SimpleLstm(m) = build(
        ModelSpec::SimpleLstm(SimpleLstmConfig::default()),
        4,
        2,
        105,
    ) else {
        unreachable!()
    };
    // LSTM: U(±1/√H) for every tensor, H = 64.
    let layer = &m.lstm.layers[0].forward_dir;
    for w in [layer.weight_ih.val(), layer.weight_hh.val()] {
        let a = abs_max(w);
        assert!(a <= 0.125 && a > 0.11, "{a}");
    }
    let a = abs_max(layer.bias_ih.val().unsqueeze());
    assert!(a <= 0.125 && a > 0.1, "{a}");
    // Attention: Xavier-uniform in_proj (bound √(6/(64+192))), zero biases.
    let a = abs_max(m.attention.in_proj_weight.val());
    assert!(a <= (6.0f32 / 256.0).sqrt() && a > 0.14, "{a}");
    assert_eq!(abs_max(m.attention.in_proj_bias.val().unsqueeze()), 0.0);
    // Linear: U(±1/√fan_in).
    let a = abs_max(m.classifier_0.weight.val());
    assert!(a <= 0.125 && a > 0.11, "{a}");
    // LayerNorm: ones and zeros.
    assert!(values(m.ln.gamma.val()).iter().all(|&v| v == 1.0));

    let Net::CnnTransformer(c) = build(
        ModelSpec::CnnTransformer(CnnTransformerConfig::default()),
        4,
        2,
        105,
    ) else {
        unreachable!()
    };
    let s = std_of(&values(c.rel_pos_enc.rel_pos_emb.val()));
    assert!((s - 1.0).abs() < 0.02, "rel_pos_emb std {s}");
    let conv = &c.cnn_blocks[1].convs[2].conv; // 64 → 42 channels, kernel 9: fan_in 576
    let a = values(conv.weight.val())
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(a <= 1.0 / 24.0 && a > 0.04, "{a}");
    let bn = &c.cnn_blocks[0].bn;
    assert!(values(bn.running_var.value()).iter().all(|&v| v == 1.0));

    let Net::RwkvTs(r) = build(ModelSpec::RwkvTs(RwkvTsConfig::default()), 4, 2, 105) else {
        unreachable!()
    };
    let mixes: Vec<f32> = r
        .blocks
        .iter()
        .flat_map(|b| {
            [
                &b.time_mix_k,
                &b.time_mix_v,
                &b.time_mix_r,
                &b.channel_mix_k,
                &b.channel_mix_r,
            ]
            .into_iter()
            .flat_map(|p| values(p.val()))
            .collect::<Vec<_>>()
        })
        .collect();
    let s = std_of(&mixes);
    assert!((s - 1.0).abs() < 0.1, "time-mix std {s}");
    assert!(r.blocks[0].key.bias.is_none());
}

// ---------------------------------------------------------------- train / eval behaviour

fn ad_build(spec: &ModelSpec, seq_len: usize) -> Net<AD> {
    spec.init::<AD>(4, 3, seq_len, &Default::default())
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn all_specs() -> Vec<ModelSpec> {
    vec![
        small_lstm(2),
        ModelSpec::CnnTransformer(small_cnn(true, None)),
        ModelSpec::RwkvTs(small_rwkv()),
    ]
}

#[test]
fn eval_mode_is_deterministic_and_training_uses_dropout() {
    for spec in all_specs() {
        let net = ad_build(&spec, 105);
        let x = input::<AD>(2, 105, &Default::default());
        let train_a = net.forward(x.clone()).logits;
        let train_b = net.forward(x.clone()).logits;
        assert!(
            max_abs_diff(train_a, train_b) > 1e-6,
            "{}: dropout inactive in training",
            spec.name()
        );
        let eval = net.valid();
        let x = x.inner();
        let a = eval.forward(x.clone());
        let b = eval.forward(x);
        assert_eq!(values(a.logits), values(b.logits), "{}", spec.name());
    }
}

/// Visits every float parameter (not the BatchNorm running statistics) with its path.
struct GradCheck<'a> {
    grads: &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
    path: Vec<String>,
    missing: Vec<String>,
    checked: usize,
}

impl ModuleVisitor<AD> for GradCheck<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let name = self.path.join(".");
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            return;
        }
        self.checked += 1;
        let grad = param.val().grad(self.grads).map(values);
        let ok =
            grad.is_some_and(|g| g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));
        if !ok {
            self.missing.push(name);
        }
    }
}

#[test]
fn gradients_reach_every_trainable_parameter() {
    let device = Default::default();
    for spec in all_specs() {
        let net = ad_build(&spec, 105);
        let x = input::<AD>(3, 105, &device);
        let out = net.forward(x);
        // Random weights so that no parameter's gradient cancels by symmetry.
        let weights = |dims: [usize; 2]| {
            Tensor::<AD, 2>::random(dims, Distribution::Normal(0.0, 1.0), &device)
        };
        let mut loss = (out.logits.clone() * weights(out.logits.dims())).sum();
        if let Some((start, end)) = &out.pointers {
            loss = loss
                + (start.clone() * weights(start.dims())).sum()
                + (end.clone() * weights(end.dims())).sum();
        }
        let grads = loss.backward();
        let mut check = GradCheck {
            grads: &grads,
            path: Vec::new(),
            missing: Vec::new(),
            checked: 0,
        };
        net.visit(&mut check);
        assert!(check.checked > 10, "{}", spec.name());
        assert!(
            check.missing.is_empty(),
            "{}: no (finite, non-zero) gradient for {:?}",
            spec.name(),
            check.missing
        );
    }
}

// ---------------------------------------------------------------- building blocks

/// A bidirectional layer's reverse direction is the forward recursion run on the time-reversed
/// sequence; the final states are the last outputs of each direction.
#[test]
fn reverse_direction_runs_backwards_in_time() {
    let device = device();
    let mut bi = LstmConfig::new(4, 5)
        .with_bidirectional(true)
        .init::<B>(&device);
    // Give the reverse direction the forward direction's weights.
    let fwd = &bi.layers[0].forward_dir;
    let copy = moola::nn::LstmDirection {
        weight_ih: Param::from_tensor(fwd.weight_ih.val()),
        weight_hh: Param::from_tensor(fwd.weight_hh.val()),
        bias_ih: Param::from_tensor(fwd.bias_ih.val()),
        bias_hh: Param::from_tensor(fwd.bias_hh.val()),
    };
    bi.layers[0].reverse_dir = Some(copy);
    let x = input::<B>(2, 9, &device);
    let (out, state) = bi.forward_with_state(x.clone(), None);
    assert_eq!(out.dims(), [2, 9, 10]);
    assert_eq!(state.h.dims(), [2, 2, 5]);
    let forward_part = out.clone().slice([0..2, 0..9, 0..5]);
    let reverse_part = out.slice([0..2, 0..9, 5..10]);
    let (flipped, _) = bi.forward_with_state(x.flip([1]), None);
    let flipped_forward = flipped.slice([0..2, 0..9, 0..5]).flip([1]);
    assert!(max_abs_diff(reverse_part.clone(), flipped_forward) < 1e-6);
    // h_n: forward = last step of the forward outputs, reverse = first step of the reverse ones.
    let h_fwd = state.h.clone().slice([0..1, 0..2, 0..5]).reshape([2, 1, 5]);
    assert!(max_abs_diff(h_fwd, forward_part.slice([0..2, 8..9, 0..5])) < 1e-7);
    let h_rev = state.h.slice([1..2, 0..2, 0..5]).reshape([2, 1, 5]);
    assert!(max_abs_diff(h_rev, reverse_part.slice([0..2, 0..1, 0..5])) < 1e-7);
}

/// One LSTM step computed by hand: gates i, f, g, o from `W_ih·x + b_ih + b_hh` (h₀ = 0).
#[test]
fn lstm_step_matches_the_gate_equations() {
    let device = device();
    let mut lstm = LstmConfig::new(1, 1).init::<B>(&device);
    let d = &mut lstm.layers[0].forward_dir;
    d.weight_ih = Param::from_tensor(Tensor::from_data([[0.5f32], [-1.0], [2.0], [1.5]], &device));
    d.weight_hh = Param::from_tensor(Tensor::from_data([[0.3f32], [0.2], [-0.4], [0.1]], &device));
    d.bias_ih = Param::from_tensor(Tensor::from_data([0.1f32, 0.2, 0.0, -0.1], &device));
    d.bias_hh = Param::from_tensor(Tensor::from_data([0.0f32, 0.3, 0.1, 0.0], &device));
    let x = Tensor::<B, 3>::from_data([[[2.0f32], [-1.0]]], &device);
    let out = values(lstm.forward(x));
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let step = |x: f64, h: f64, c: f64| {
        let i = sig(0.5 * x + 0.3 * h + 0.1);
        let f = sig(-x + 0.2 * h + 0.5);
        let g = (2.0 * x - 0.4 * h + 0.1).tanh();
        let o = sig(1.5 * x + 0.1 * h - 0.1);
        let c = f * c + i * g;
        (o * c.tanh(), c)
    };
    let (h1, c1) = step(2.0, 0.0, 0.0);
    let (h2, _) = step(-1.0, h1, c1);
    assert!((f64::from(out[0]) - h1).abs() < 1e-6, "{out:?} vs {h1}");
    assert!((f64::from(out[1]) - h2).abs() < 1e-6, "{out:?} vs {h2}");
}

#[test]
fn lstm_dropout_only_between_layers_and_only_in_training() {
    let device = Default::default();
    let one = LstmConfig::new(4, 6).with_dropout(0.5).init::<AD>(&device);
    let x = input::<AD>(2, 5, &device);
    // One layer: dropout is never applied, even in training.
    assert_eq!(
        values(one.forward(x.clone())),
        values(one.forward(x.clone()))
    );
    let two = LstmConfig::new(4, 6)
        .with_num_layers(2)
        .with_dropout(0.5)
        .init::<AD>(&device);
    assert_ne!(
        values(two.forward(x.clone())),
        values(two.forward(x.clone()))
    );
    let eval = two.valid();
    assert_eq!(
        values(eval.forward(x.clone().inner())),
        values(eval.forward(x.inner()))
    );
}

#[test]
fn attention_masks_block_positions() {
    let device = device();
    let mha = MultiheadAttentionConfig::new(8, 2)
        .init::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 3>::random([1, 4, 8], Distribution::Normal(0.0, 1.0), &device);
    // Row 0 may only see column 0: the output is then independent of the other steps.
    let mut blocked = [[false; 4]; 4];
    blocked[0] = [false, true, true, true];
    let bool_mask = AttentionMask::Blocked(Tensor::<B, 2, Bool>::from_data(blocked, &device));
    let additive: Vec<f32> = blocked
        .iter()
        .flatten()
        .map(|&b| if b { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    let add_mask = AttentionMask::Additive(Tensor::from_data(
        TensorData::new(additive, [4, 4]),
        &device,
    ));
    let a = mha.forward_self(x.clone(), Some(&bool_mask));
    let b = mha.forward_self(x.clone(), Some(&add_mask));
    assert!(max_abs_diff(a.clone(), b) < 1e-6);
    let alone = mha.forward_self(x.clone().slice([0..1, 0..1, 0..8]), None);
    assert!(max_abs_diff(a.slice([0..1, 0..1, 0..8]), alone) < 1e-5);
    // The general form with query = key = value equals self-attention.
    let general = mha.forward(x.clone(), x.clone(), x.clone(), None);
    assert!(max_abs_diff(general, mha.forward_self(x, None)) < 1e-5);
    assert!(
        MultiheadAttentionConfig::new(10, 4)
            .init::<B>(&device)
            .is_err()
    );
}
