//! Import of the reference's PyTorch classifier checkpoints (the `torch.save` dicts its models'
//! `save` writes) into ready Burn models.
//!
//! A checkpoint is a pickled dict (PyTorch ≥ 1.6 zip format) with
//!
//! ```text
//! model_state_dict   the network's state dict
//! label_to_idx       {label: index}        idx_to_label  {index: label}
//! n_classes, input_dim                     hyperparams   {...}  (architecture)
//! predict_pointers   (CNN-Transformer only)
//! ```
//!
//! [`import_torch_checkpoint`] reads the metadata with burn-store's `PytorchReader`, detects the
//! model (from the hyper-parameter names, else from the tensor names; or takes it from
//! [`ImportOptions::model`]), rebuilds the [`ModelSpec`] and [`ModelCard`] (classes in index
//! order), builds the network and fills it through `PytorchStore` with the key-remapping table
//! below. burn-store transposes `Linear` weights and maps LayerNorm `weight`/`bias` to
//! `gamma`/`beta`; everything else is stored in PyTorch layout and only renamed:
//!
//! | PyTorch key | Burn parameter |
//! |---|---|
//! | `lstm.{weight,bias}_{ih,hh}_l{k}` | `lstm.layers.{k}.forward_dir.{weight,bias}_{ih,hh}` |
//! | `lstm.{weight,bias}_{ih,hh}_l{k}_reverse` | `lstm.layers.{k}.reverse_dir.{…}` |
//! | `classifier.{n}.*` (SimpleLSTM's `nn.Sequential`) | `classifier_{n}.*` |
//! | every other key | the same path |
//!
//! Import is strict: every tensor of the checkpoint must be used and every parameter of the
//! model filled, with the expected shape, in float32. A missing, unexpected or mis-shaped tensor is
//! an error that names its PyTorch key. The only tensors not loaded are BatchNorm's
//! `num_batches_tracked` (a training counter) and RWKV's `blocks.{i}.window_mask` buffers, which
//! the model derives from its inner window; their values are checked against it instead.
//!
//! Limitation: burn-store's pickle reader does not understand NumPy objects. Checkpoints whose
//! labels are NumPy strings (`np.str_`, from a `<U` label array) cannot be read; the reference's
//! CLI reads labels from a pandas object column, which pickles as plain `str`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;
use burn_store::{ApplyError, BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PytorchStore};

use crate::model::rwkv_ts::window_mask_values;
use crate::model::{
    CARD_FORMAT, CnnTransformerConfig, InnerWindow, ModelCard, ModelSpec, Net, RwkvTsConfig,
    SimpleLstmConfig,
};
use crate::nn::lstm_key_remaps;

/// The key of the state dict inside a reference checkpoint.
pub const STATE_DICT_KEY: &str = "model_state_dict";

/// Options of [`import_torch_checkpoint_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// The model name (`simple_lstm`, `cnn_transformer`, `rwkv_ts`); detected when `None`.
    pub model: Option<String>,
    /// The sequence length the window-dependent parts are built for (the reference: 105).
    pub seq_len: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            model: None,
            seq_len: InnerWindow::REFERENCE_LEN,
        }
    }
}

/// Imports a reference checkpoint with the default options (model detected, 105 steps).
pub fn import_torch_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(Net<B>, ModelCard)> {
    import_torch_checkpoint_with(path, &ImportOptions::default(), device)
}

/// Imports a reference checkpoint: returns the network with the checkpoint's weights and its
/// model card (spec, input_dim, classes in index order, sequence length, source).
pub fn import_torch_checkpoint_with<B: Backend>(
    path: &Path,
    options: &ImportOptions,
    device: &B::Device,
) -> Result<(Net<B>, ModelCard)> {
    let shown = path.display();
    let meta = read_metadata(path)?;
    let tensors = PytorchReader::with_top_level_key(path, STATE_DICT_KEY)
        .map_err(|e| anyhow!("{shown}: cannot read `{STATE_DICT_KEY}`: {e}"))?
        .into_tensors();
    let shapes: BTreeMap<String, (Vec<usize>, DType)> = tensors
        .iter()
        .map(|(k, s)| (k.clone(), (s.shape.to_vec(), s.dtype)))
        .collect();
    if let Some((key, (_, dtype))) = shapes
        .iter()
        .find(|(k, (_, d))| *d != DType::F32 && !k.ends_with(".num_batches_tracked"))
    {
        bail!("{shown}: tensor `{key}` is {dtype:?}; only float32 checkpoints are supported");
    }

    let name = match &options.model {
        Some(name) => name.clone(),
        None => detect_model(&meta.hyperparams, shapes.keys())
            .with_context(|| format!("{shown}: cannot tell which model this checkpoint holds"))?
            .to_string(),
    };
    let spec = spec_from_hyperparams(&name, &meta)
        .with_context(|| format!("{shown}: bad `hyperparams` for a {name} checkpoint"))?;
    let card = ModelCard {
        format: CARD_FORMAT.to_string(),
        spec: spec.clone(),
        input_dim: meta.input_dim,
        n_classes: meta.classes.len(),
        seq_len: options.seq_len,
        classes: meta.classes.clone(),
        source: Some(format!("pytorch:{shown}")),
    };
    let mut net = spec
        .init::<B>(card.input_dim, card.n_classes, card.seq_len, device)
        .with_context(|| format!("{shown}: cannot build the {name} network"))?;

    // The model's tensors in PyTorch layout and naming (before the remapping table).
    let expected: BTreeMap<String, Vec<usize>> = net
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect();

    let remaps = key_remaps();
    let remapper = KeyRemapper::from_patterns(remaps.clone())
        .map_err(|e| anyhow!("internal key-remapping table: {e}"))?;
    let mut store = PytorchStore::from_file(path)
        .with_top_level_key(STATE_DICT_KEY)
        .remap(remapper.clone())
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false);
    let result = net
        .load_from(&mut store)
        .map_err(|e| anyhow!("{shown}: cannot load the state dict: {e}"))?;

    // Remapped key → PyTorch key, to name tensors as the checkpoint does.
    let snapshots: Vec<_> = tensors
        .into_iter()
        .map(|(key, mut snapshot)| {
            snapshot.path_stack = Some(key.split('.').map(str::to_string).collect());
            snapshot
        })
        .collect();
    let (remapped, names) = remapper.remap(snapshots);
    let original: HashMap<String, String> = names.into_iter().collect();
    let torch_name = |key: &str| original.get(key).cloned().unwrap_or_else(|| torch_key(key));

    let mut problems = Vec::new();
    for error in &result.errors {
        match error {
            ApplyError::ShapeMismatch { path, .. } => {
                let key = burn_param_to_key(path);
                let torch = torch_name(&key);
                problems.push(format!(
                    "tensor `{torch}` has shape {}, the model expects {}",
                    shape_text(shapes.get(&torch).map(|(s, _)| s)),
                    shape_text(expected.get(&key)),
                ));
            }
            other => problems.push(other.to_string()),
        }
    }
    for (path, _) in &result.missing {
        let key = burn_param_to_key(path);
        problems.push(format!(
            "tensor `{}` {} is missing",
            torch_name(&key),
            shape_text(expected.get(&key)),
        ));
    }
    let window = net_window(&net);
    // burn-store reports a LayerNorm tensor it found under its PyTorch name (`weight`/`bias`
    // for `gamma`/`beta`) as both applied and unused: count the applied ones as used.
    // The same holds for one that failed the shape check (reported above).
    let applied: std::collections::HashSet<String> = result
        .applied
        .iter()
        .map(|p| burn_param_to_key(p))
        .chain(result.errors.iter().filter_map(|e| match e {
            ApplyError::ShapeMismatch { path, .. } => Some(burn_param_to_key(path)),
            _ => None,
        }))
        .collect();
    for key in &result.unused {
        let torch = original.get(key).cloned().unwrap_or_else(|| key.clone());
        if applied.contains(key) || torch.ends_with(".num_batches_tracked") {
            continue;
        }
        if name == "rwkv_ts" && torch.starts_with("blocks.") && torch.ends_with(".window_mask") {
            let snapshot = remapped
                .iter()
                .find(|s| s.full_path() == *key)
                .expect("unused keys come from the checkpoint");
            let data = snapshot
                .to_data()
                .map_err(|e| anyhow!("{shown}: cannot read `{torch}`: {e:?}"))?;
            let values: Vec<f32> = data
                .to_vec()
                .map_err(|e| anyhow!("{shown}: cannot read `{torch}`: {e:?}"))?;
            check_window_mask(&torch, &values, window, options.seq_len)
                .with_context(|| format!("{shown}: unexpected RWKV window mask"))?;
            continue;
        }
        problems.push(format!(
            "unexpected tensor `{torch}` (no such model parameter)"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "{shown} does not match the {name} network built from its hyperparams:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok((net, card))
}

/// Metadata of a checkpoint.
#[derive(Debug, Clone)]
struct Metadata {
    hyperparams: HashMap<String, PickleValue>,
    input_dim: usize,
    classes: Vec<String>,
    predict_pointers: bool,
}

fn read_metadata(path: &Path) -> Result<Metadata> {
    let shown = path.display();
    let root = PytorchReader::read_pickle_data(path, None)
        .map_err(|e| anyhow!("{shown}: not a readable PyTorch checkpoint: {e}"))?;
    let PickleValue::Dict(root) = root else {
        bail!(
            "{shown}: expected a dict saved with torch.save, found {}",
            kind(&root)
        );
    };
    if !root.contains_key(STATE_DICT_KEY) {
        let mut keys: Vec<_> = root.keys().cloned().collect();
        keys.sort();
        bail!(
            "{shown}: no `{STATE_DICT_KEY}`: not a moola classifier checkpoint (top-level keys: {keys:?})"
        );
    }
    let field = |key: &str| {
        root.get(key)
            .ok_or_else(|| anyhow!("{shown}: missing `{key}`"))
    };
    let hyperparams = match field("hyperparams")? {
        PickleValue::Dict(d) => d.clone(),
        other => bail!("{shown}: `hyperparams` is {}, expected a dict", kind(other)),
    };
    let n_classes =
        as_usize(field("n_classes")?).with_context(|| format!("{shown}: `n_classes`"))?;
    let input_dim =
        as_usize(field("input_dim")?).with_context(|| format!("{shown}: `input_dim`"))?;
    let classes = class_labels(&root, n_classes).with_context(|| format!("{shown}: label maps"))?;
    let predict_pointers = match root.get("predict_pointers") {
        None | Some(PickleValue::None) => false,
        Some(PickleValue::Bool(b)) => *b,
        Some(PickleValue::Int(i)) => *i != 0,
        Some(other) => bail!(
            "{shown}: `predict_pointers` is {}, expected a bool",
            kind(other)
        ),
    };
    Ok(Metadata {
        hyperparams,
        input_dim,
        classes,
        predict_pointers,
    })
}

/// Class labels in index order, from `idx_to_label` (checked against `label_to_idx`).
fn class_labels(root: &HashMap<String, PickleValue>, n_classes: usize) -> Result<Vec<String>> {
    let idx_to_label = match root.get("idx_to_label") {
        Some(PickleValue::Dict(d)) => d,
        Some(other) => bail!("`idx_to_label` is {}, expected a dict", kind(other)),
        None => bail!("missing `idx_to_label`"),
    };
    let mut classes = vec![None; n_classes];
    for (index, label) in idx_to_label {
        let i: usize = index
            .parse()
            .map_err(|_| anyhow!("`idx_to_label` has a non-integer key `{index}`"))?;
        let slot = classes
            .get_mut(i)
            .ok_or_else(|| anyhow!("`idx_to_label` has index {i}, but n_classes is {n_classes}"))?;
        *slot = Some(label_text(label).context("`idx_to_label`")?);
    }
    let classes: Vec<String> = classes
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| anyhow!("`idx_to_label` has no label for index {i}")))
        .collect::<Result<_>>()?;
    if let Some(PickleValue::Dict(label_to_idx)) = root.get("label_to_idx") {
        if label_to_idx.len() != n_classes {
            bail!(
                "`label_to_idx` has {} labels, n_classes is {n_classes}",
                label_to_idx.len()
            );
        }
        for (label, index) in label_to_idx {
            let i = as_usize(index).with_context(|| format!("`label_to_idx[{label}]`"))?;
            if classes.get(i) != Some(label) {
                bail!("`label_to_idx` maps `{label}` to {i}, which `idx_to_label` contradicts");
            }
        }
    }
    Ok(classes)
}

fn label_text(value: &PickleValue) -> Result<String> {
    Ok(match value {
        PickleValue::String(s) => s.clone(),
        PickleValue::Int(i) => i.to_string(),
        PickleValue::Float(f) => f.to_string(),
        PickleValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => bail!(
            "a label is {} (NumPy scalars and other objects are not supported)",
            kind(other)
        ),
    })
}

fn kind(value: &PickleValue) -> &'static str {
    match value {
        PickleValue::None => "None (or an object the reader cannot decode)",
        PickleValue::Bool(_) => "a bool",
        PickleValue::Int(_) => "an int",
        PickleValue::Float(_) => "a float",
        PickleValue::String(_) => "a string",
        PickleValue::List(_) => "a list",
        PickleValue::Dict(_) => "a dict",
        PickleValue::Bytes(_) => "bytes",
    }
}

fn as_usize(value: &PickleValue) -> Result<usize> {
    match value {
        PickleValue::Int(i) if *i >= 0 => Ok(*i as usize),
        other => bail!("expected a non-negative int, found {}", kind(other)),
    }
}

fn as_f64(value: &PickleValue) -> Result<f64> {
    match value {
        PickleValue::Float(f) => Ok(*f),
        PickleValue::Int(i) => Ok(*i as f64),
        other => bail!("expected a number, found {}", kind(other)),
    }
}

fn as_bool(value: &PickleValue) -> Result<bool> {
    match value {
        PickleValue::Bool(b) => Ok(*b),
        PickleValue::Int(i) => Ok(*i != 0),
        other => bail!("expected a bool, found {}", kind(other)),
    }
}

fn as_usize_list(value: &PickleValue) -> Result<Vec<usize>> {
    match value {
        PickleValue::List(items) => items.iter().map(as_usize).collect(),
        other => bail!("expected a list of ints, found {}", kind(other)),
    }
}

/// Which model a checkpoint holds: from its hyper-parameter names, else its tensor names.
fn detect_model<'a>(
    hyperparams: &HashMap<String, PickleValue>,
    mut keys: impl Iterator<Item = &'a String>,
) -> Result<&'static str> {
    if hyperparams.contains_key("cnn_channels") {
        return Ok("cnn_transformer");
    }
    if hyperparams.contains_key("d_model") {
        return Ok("rwkv_ts");
    }
    if hyperparams.contains_key("hidden_size") {
        return Ok("simple_lstm");
    }
    match keys.find(|k| {
        k.starts_with("lstm.") || k.starts_with("cnn_blocks.") || k.contains(".time_mix_k")
    }) {
        Some(k) if k.starts_with("lstm.") => Ok("simple_lstm"),
        Some(k) if k.starts_with("cnn_blocks.") => Ok("cnn_transformer"),
        Some(_) => Ok("rwkv_ts"),
        None => bail!(
            "neither the hyperparams nor the tensor names match simple_lstm, cnn_transformer or \
             rwkv_ts: pass the model name explicitly"
        ),
    }
}

/// A required hyper-parameter.
fn hp_required<T>(
    hp: &HashMap<String, PickleValue>,
    key: &str,
    parse: impl Fn(&PickleValue) -> Result<T>,
) -> Result<T> {
    let value = hp.get(key).ok_or_else(|| anyhow!("missing `{key}`"))?;
    parse(value).with_context(|| format!("`{key}`"))
}

/// An optional hyper-parameter with the reference's default.
fn hp_or<T>(
    hp: &HashMap<String, PickleValue>,
    key: &str,
    default: T,
    parse: impl Fn(&PickleValue) -> Result<T>,
) -> Result<T> {
    match hp.get(key) {
        Some(value) => parse(value).with_context(|| format!("`{key}`")),
        None => Ok(default),
    }
}

/// The [`ModelSpec`] of a checkpoint (the reference's `load`: architecture hyper-parameters from
/// the dict; dropout, which does not change inference, and RWKV's optional entries default to the
/// reference's values when absent).
fn spec_from_hyperparams(name: &str, meta: &Metadata) -> Result<ModelSpec> {
    let hp = &meta.hyperparams;
    Ok(match name {
        "simple_lstm" => {
            let d = SimpleLstmConfig::default();
            ModelSpec::SimpleLstm(SimpleLstmConfig {
                hidden_size: hp_required(hp, "hidden_size", as_usize)?,
                num_layers: hp_required(hp, "num_layers", as_usize)?,
                num_heads: hp_required(hp, "num_heads", as_usize)?,
                dropout: hp_or(hp, "dropout_rate", d.dropout, as_f64)?,
            })
        }
        "cnn_transformer" => {
            let d = CnnTransformerConfig::default();
            ModelSpec::CnnTransformer(CnnTransformerConfig {
                cnn_channels: hp_required(hp, "cnn_channels", as_usize_list)?,
                cnn_kernels: hp_required(hp, "cnn_kernels", as_usize_list)?,
                transformer_layers: hp_required(hp, "transformer_layers", as_usize)?,
                transformer_heads: hp_required(hp, "transformer_heads", as_usize)?,
                dropout: hp_or(hp, "dropout_rate", d.dropout, as_f64)?,
                predict_pointers: meta.predict_pointers,
                window: None,
            })
        }
        "rwkv_ts" => {
            let d = RwkvTsConfig::default();
            ModelSpec::RwkvTs(RwkvTsConfig {
                d_model: hp_required(hp, "d_model", as_usize)?,
                n_layers: hp_required(hp, "n_layers", as_usize)?,
                patch_sizes: hp_or(hp, "patch_sizes", d.patch_sizes, as_usize_list)?,
                dropout: hp_or(hp, "dropout_rate", d.dropout, as_f64)?,
                instance_norm: hp_or(hp, "instance_norm", d.instance_norm, as_bool)?,
                window: None,
                readout: Default::default(),
            })
        }
        other => ModelSpec::from_name(other)?,
    })
}

/// The key-remapping table (PyTorch key → Burn path) applied to every checkpoint.
pub fn key_remaps() -> Vec<(String, String)> {
    let mut remaps = lstm_key_remaps("lstm", "lstm");
    // SimpleLSTM's nn.Sequential head: classifier.0 / classifier.3 → classifier_0 / classifier_3.
    remaps.push((
        r"^classifier\.([0-9]+)\.".to_string(),
        "classifier_${1}.".to_string(),
    ));
    remaps
}

/// The remapped key of a Burn parameter path (LayerNorm `gamma`/`beta` → `weight`/`bias`).
fn burn_param_to_key(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

/// The PyTorch key of a remapped key (the inverse of [`key_remaps`]), for error messages.
fn torch_key(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        // layers.{k}.{forward,reverse}_dir.{weight,bias}_{ih,hh} → {weight,bias}_{ih,hh}_l{k}[_reverse]
        if parts[i] == "layers"
            && i + 3 < parts.len()
            && parts[i + 1].parse::<usize>().is_ok()
            && (parts[i + 2] == "forward_dir" || parts[i + 2] == "reverse_dir")
            && i + 4 == parts.len()
        {
            let suffix = if parts[i + 2] == "reverse_dir" {
                "_reverse"
            } else {
                ""
            };
            out.push(format!("{}_l{}{suffix}", parts[i + 3], parts[i + 1]));
            break;
        }
        match parts[i].strip_prefix("classifier_") {
            Some(n) if i == 0 && n.parse::<usize>().is_ok() => out.push(format!("classifier.{n}")),
            _ => out.push(parts[i].to_string()),
        }
        i += 1;
    }
    out.join(".")
}

fn shape_text(shape: Option<&Vec<usize>>) -> String {
    shape.map_or_else(|| "?".to_string(), |s| format!("{s:?}"))
}

/// The inner window of a network, if any.
fn net_window<B: Backend>(net: &Net<B>) -> Option<InnerWindow> {
    match net {
        Net::SimpleLstm(_) => None,
        Net::CnnTransformer(m) => m.window(),
        Net::RwkvTs(m) => m.window(),
    }
}

/// Checks a reference `window_mask` buffer against the model's window: when it has the model's
/// sequence length the model must apply exactly these weights; otherwise the reference never
/// applies it (its mask is used only when `T` equals its length) and neither does the model.
fn check_window_mask(
    key: &str,
    values: &[f32],
    window: Option<InnerWindow>,
    seq_len: usize,
) -> Result<()> {
    if values.len() != seq_len {
        if window.is_some() {
            bail!(
                "`{key}` has {} steps but the model applies its window to {seq_len}",
                values.len()
            );
        }
        return Ok(());
    }
    let expected = match window {
        Some(w) => window_mask_values(w, seq_len),
        None => vec![1.0; seq_len],
    };
    if let Some((t, (have, want))) = values
        .iter()
        .zip(&expected)
        .enumerate()
        .find(|(_, (a, b))| (*a - *b).abs() > 1e-6)
    {
        bail!(
            "`{key}`[{t}] = {have}, the model's inner window ({window:?}) gives {want}: \
             import with the matching window"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_key_inverts_the_remapping_table() {
        assert_eq!(
            torch_key("lstm.layers.1.forward_dir.weight_ih"),
            "lstm.weight_ih_l1"
        );
        assert_eq!(
            torch_key("lstm.layers.0.reverse_dir.bias_hh"),
            "lstm.bias_hh_l0_reverse"
        );
        assert_eq!(torch_key("classifier_3.weight"), "classifier.3.weight");
        assert_eq!(torch_key("classifier.weight"), "classifier.weight");
        assert_eq!(
            torch_key("transformer.layers.1.linear1.bias"),
            "transformer.layers.1.linear1.bias"
        );
        assert_eq!(burn_param_to_key("ln.gamma"), "ln.weight");
        assert_eq!(burn_param_to_key("ln.beta"), "ln.bias");
    }

    #[test]
    fn window_mask_check() {
        let w = InnerWindow::REFERENCE;
        let good = window_mask_values(w, 105);
        assert!(check_window_mask("m", &good, Some(w), 105).is_ok());
        let mut bad = good.clone();
        bad[40] = 1.0;
        let err = check_window_mask("m", &bad, Some(w), 105).unwrap_err();
        assert!(err.to_string().contains("m`[40]"), "{err}");
        // A 105-step mask is never applied to other lengths, by the reference or the model.
        assert!(check_window_mask("m", &good, None, 50).is_ok());
    }
}
