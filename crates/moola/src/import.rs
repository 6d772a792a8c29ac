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
//! [`import_torch_checkpoint`] opens it with [`kiln::torch::TorchFile`] (weights: the
//! `model_state_dict` entry), reads the metadata from the tolerantly decoded top-level dict, so
//! that labels and counts saved as NumPy scalars (`np.str_` labels of a `<U` label array,
//! `np.int64` counts: what the reference's `save` writes after `fit` on NumPy arrays) read as
//! plain strings and numbers, detects the model (from the hyper-parameter names, else from the
//! tensor names; or takes it from [`ImportOptions::model`]), rebuilds the [`ModelSpec`] and
//! [`ModelCard`] (classes in index order), builds the network and fills it with
//! [`kiln::torch::Import`] under this crate's key rule, [`torch_key`]:
//!
//! | Burn parameter | PyTorch key |
//! |---|---|
//! | `….layers.{k}.forward_dir.{weight,bias}_{ih,hh}` of an [`Lstm`](crate::nn::Lstm) | `….{weight,bias}_{ih,hh}_l{k}` |
//! | `….layers.{k}.reverse_dir.{…}` | `….{weight,bias}_{ih,hh}_l{k}_reverse` |
//! | SimpleLSTM's `classifier_{n}.*` | `classifier.{n}.*` (its `nn.Sequential`) |
//! | the masked autoencoder's `decoder_{n}.*` | `decoder.{n}.*` (its `nn.Sequential`) |
//! | TS-TCC's `projection_head.projection_{n}.*` | `projection_head.projection.{n}.*` (its `nn.Sequential`) |
//! | LayerNorm `gamma` / `beta` | `weight` / `bias` |
//! | Linear `weight` `[in, out]` | `weight` `[out, in]` (transposed) |
//! | every other parameter | the same path (enum variant dropped) |
//!
//! Import is strict: every tensor of the checkpoint must be used and every parameter of the
//! model filled, with the expected shape, in float32. A missing, unexpected or mis-shaped tensor
//! is an error that names its PyTorch key. The only tensors not loaded are BatchNorm's
//! `num_batches_tracked` (a training counter) and RWKV's `blocks.{i}.window_mask` buffers, which
//! the model derives from its inner window; their values are checked against it instead.
//!
//! [`read_encoder_checkpoint`] opens a reference encoder checkpoint (`encoder_state_dict` +
//! `hyperparams`) the same way, for the pre-trainers.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::tensor::DType;
use kiln::torch::{
    Import, KeyMapping, Mismatch, ParamPath, PyValue, RenameTable, TorchFile, TorchKey,
};

use crate::model::rwkv_ts::window_mask_values;
use crate::model::{
    CARD_FORMAT, CnnTransformerConfig, InnerWindow, ModelCard, ModelSpec, Net, RwkvTsConfig,
    SimpleLstmConfig,
};

/// The key of the state dict inside a reference checkpoint.
pub const STATE_DICT_KEY: &str = "model_state_dict";

/// The key of the encoder's state dict inside a reference encoder checkpoint.
pub const ENCODER_STATE_DICT_KEY: &str = "encoder_state_dict";

/// Per-segment renames of moola's networks: `(container type, Burn name, PyTorch name)`.
const RENAMES: RenameTable = RenameTable::new(&[
    ("Struct:LayerNorm", "gamma", "weight"),
    ("Struct:LayerNorm", "beta", "bias"),
    // SimpleLSTM's nn.Sequential head (Linear, ReLU, Dropout, Linear).
    ("Struct:SimpleLstm", "classifier_0", "classifier.0"),
    ("Struct:SimpleLstm", "classifier_3", "classifier.3"),
    // The masked autoencoder's nn.Sequential decoder (Linear, ReLU, Dropout, Linear).
    ("Struct:BiLstmMaskedAutoencoder", "decoder_0", "decoder.0"),
    ("Struct:BiLstmMaskedAutoencoder", "decoder_3", "decoder.3"),
    // TS-TCC's nn.Sequential projection head (Linear, LayerNorm, ReLU, Linear).
    ("Struct:ProjectionHead", "projection_0", "projection.0"),
    ("Struct:ProjectionHead", "projection_1", "projection.1"),
    ("Struct:ProjectionHead", "projection_3", "projection.3"),
]);

/// The reference's state-dict key of a parameter of any moola network (the key rule of the
/// module docs' table): the [`Lstm`](crate::nn::Lstm) rule
/// `layers.{k}.{forward,reverse}_dir.{name}` → `{name}_l{k}[_reverse]` (also for a bare `Lstm`,
/// whose keys are then `weight_ih_l0`...), then the renames (LayerNorm, the `nn.Sequential`
/// members of SimpleLSTM's classifier, the masked autoencoder's decoder and TS-TCC's projection
/// head), Linear weights transposed.
pub fn torch_key(path: &ParamPath) -> TorchKey {
    let lstm = path
        .iter()
        .position(|(name, container)| name == "layers" && container == "Struct:Lstm");
    if let Some(i) = lstm
        && let [_, (k, _), (dir, _), (name, _)] = &path[i..]
        && let Some(suffix) = match dir.as_str() {
            "forward_dir" => Some(""),
            "reverse_dir" => Some("_reverse"),
            _ => None,
        }
    {
        let mut parts = RENAMES.segments(&path[..i]);
        let last = format!("{name}_l{k}{suffix}");
        parts.push(&last);
        return TorchKey {
            key: parts.join("."),
            transpose: false,
        };
    }
    RENAMES.torch_key(path)
}

/// The reference key of every parameter of a module under [`torch_key`], with its shape in
/// PyTorch order, in visit order.
pub fn torch_keys<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    kiln::torch::torch_keys::<B, M>(module, &torch_key)
}

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
    let file = TorchFile::open_entry(path, STATE_DICT_KEY)
        .context("not a readable moola classifier checkpoint")?;
    let meta = read_metadata(&file)?;
    if let Some((key, dtype)) = file
        .keys()
        .filter(|k| !k.ends_with(".num_batches_tracked"))
        .filter_map(|k| file.dtype(k).map(|d| (k, d)))
        .find(|(_, d)| *d != DType::F32)
    {
        bail!("{shown}: tensor `{key}` is {dtype:?}; only float32 checkpoints are supported");
    }

    let name = match &options.model {
        Some(name) => name.clone(),
        None => detect_model(&meta.hyperparams, file.keys())
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
        // The reference feeds raw prices.
        scaling: crate::scaling::InputScaling::None,
    };
    let net = spec
        .init::<B>(card.input_dim, card.n_classes, card.seq_len, device)
        .with_context(|| format!("{shown}: cannot build the {name} network"))?;

    // RWKV's window masks are derived from the model's window: check them, do not load them.
    let window = net_window(&net);
    let is_window_mask =
        |k: &str| name == "rwkv_ts" && k.starts_with("blocks.") && k.ends_with(".window_mask");
    for key in file.keys().filter(|k| is_window_mask(k)) {
        let values: Vec<f32> = file
            .read_f32(key)?
            .to_vec()
            .map_err(|e| anyhow!("{shown}: cannot read `{key}`: {e:?}"))?;
        check_window_mask(key, &values, window, options.seq_len)
            .with_context(|| format!("{shown}: unexpected RWKV window mask"))?;
    }

    let target = format!("the {name} network built from its hyperparams");
    let loaded = Import::new(&file, &torch_key)
        .file_keys(|k| {
            (!k.ends_with(".num_batches_tracked") && !is_window_mask(k)).then(|| k.to_string())
        })
        .target(target.clone())
        .apply(net);
    match loaded {
        Ok((net, _)) => Ok((net, card)),
        Err(mismatch) => bail!("{shown} does not match {target}:{}", problems(&mismatch)),
    }
}

/// The lines of a [`Mismatch`], each naming a tensor by its PyTorch key.
fn problems(m: &Mismatch) -> String {
    let mut lines = Vec::new();
    for (key, found, want) in &m.mis_shaped {
        lines.push(format!(
            "tensor `{key}` has shape {found:?}, the model expects {want:?}"
        ));
    }
    for (key, shape) in &m.missing {
        lines.push(format!("tensor `{key}` {shape:?} is missing"));
    }
    for (key, _) in &m.unexpected {
        lines.push(format!(
            "unexpected tensor `{key}` (no such model parameter)"
        ));
    }
    for (key, error) in &m.unreadable {
        lines.push(format!("tensor `{key}` cannot be read: {error}"));
    }
    lines.iter().map(|l| format!("\n  {l}")).collect()
}

/// A reference encoder checkpoint: `torch.save({'encoder_state_dict', 'hyperparams'})`.
#[derive(Debug)]
pub struct EncoderCheckpoint {
    /// The file, with the tensors of `encoder_state_dict` as its weights.
    pub file: TorchFile,
    /// The `hyperparams` dict (NumPy scalars decoded as plain values), when the file has one;
    /// the rest of the top-level dict is [`TorchFile::metadata`].
    pub hyperparams: Option<PyValue>,
}

/// Opens a reference encoder checkpoint: its `encoder_state_dict` tensors and its `hyperparams`
/// dict. Load the weights with [`kiln::torch::Import`] under [`torch_key`] (a bare `nn.LSTM`
/// state dict fills an [`Lstm`](crate::nn::Lstm) directly) or a rule of the encoder's own.
pub fn read_encoder_checkpoint(path: &Path) -> Result<EncoderCheckpoint> {
    let shown = path.display();
    let file = TorchFile::open_entry(path, ENCODER_STATE_DICT_KEY)
        .context("not a readable encoder checkpoint")?;
    let hyperparams = match file.meta("hyperparams") {
        Some(hp @ PyValue::Dict(_)) => Some(hp.clone()),
        Some(other) => bail!(
            "{shown}: `hyperparams` is a {}, expected a dict",
            other.type_name()
        ),
        None => None,
    };
    Ok(EncoderCheckpoint { file, hyperparams })
}

/// Metadata of a checkpoint.
#[derive(Debug, Clone)]
struct Metadata {
    hyperparams: PyValue,
    input_dim: usize,
    classes: Vec<String>,
    predict_pointers: bool,
}

fn read_metadata(file: &TorchFile) -> Result<Metadata> {
    let shown = file.path().display();
    let root = file
        .metadata()
        .ok_or_else(|| anyhow!("{shown}: the checkpoint's top-level object cannot be decoded"))?;
    if root.entries().is_none() {
        bail!(
            "{shown}: expected a dict saved with torch.save, found a {}",
            root.type_name()
        );
    }
    let field = |key: &str| {
        root.get(key)
            .ok_or_else(|| anyhow!("{shown}: missing `{key}`"))
    };
    let hyperparams = match field("hyperparams")? {
        hp @ PyValue::Dict(_) => hp.clone(),
        other => bail!(
            "{shown}: `hyperparams` is a {}, expected a dict",
            other.type_name()
        ),
    };
    let n_classes =
        as_usize(field("n_classes")?).with_context(|| format!("{shown}: `n_classes`"))?;
    let input_dim =
        as_usize(field("input_dim")?).with_context(|| format!("{shown}: `input_dim`"))?;
    let classes = class_labels(root, n_classes).with_context(|| format!("{shown}: label maps"))?;
    let predict_pointers = match root.get("predict_pointers") {
        None | Some(PyValue::None) => false,
        Some(PyValue::Bool(b)) => *b,
        Some(PyValue::Int(i)) => *i != 0,
        Some(other) => bail!(
            "{shown}: `predict_pointers` is a {}, expected a bool",
            other.type_name()
        ),
    };
    Ok(Metadata {
        hyperparams,
        input_dim,
        classes,
        predict_pointers,
    })
}

/// The entries of dict field `key`.
fn dict_entries<'a>(root: &'a PyValue, key: &str) -> Result<Option<&'a [(PyValue, PyValue)]>> {
    match root.get(key) {
        None => Ok(None),
        Some(PyValue::Dict(items)) => Ok(Some(items)),
        Some(other) => bail!("`{key}` is a {}, expected a dict", other.type_name()),
    }
}

/// Class labels in index order, from `idx_to_label` (checked against `label_to_idx`).
fn class_labels(root: &PyValue, n_classes: usize) -> Result<Vec<String>> {
    let idx_to_label =
        dict_entries(root, "idx_to_label")?.ok_or_else(|| anyhow!("missing `idx_to_label`"))?;
    let mut classes = vec![None; n_classes];
    for (index, label) in idx_to_label {
        let i = match index {
            PyValue::Int(i) => usize::try_from(*i).ok(),
            PyValue::Str(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| anyhow!("`idx_to_label` has a non-index key {}", value_text(index)))?;
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
    if let Some(label_to_idx) = dict_entries(root, "label_to_idx")? {
        if label_to_idx.len() != n_classes {
            bail!(
                "`label_to_idx` has {} labels, n_classes is {n_classes}",
                label_to_idx.len()
            );
        }
        for (label, index) in label_to_idx {
            let label = label_text(label).context("`label_to_idx`")?;
            let i = as_usize(index).with_context(|| format!("`label_to_idx[{label}]`"))?;
            if classes.get(i) != Some(&label) {
                bail!("`label_to_idx` maps `{label}` to {i}, which `idx_to_label` contradicts");
            }
        }
    }
    Ok(classes)
}

/// A label as text (`str`, and NumPy `str_` scalars, as is; numbers and bools as Python prints
/// them).
fn label_text(value: &PyValue) -> Result<String> {
    Ok(match value {
        PyValue::Str(s) => s.clone(),
        PyValue::Int(i) => i.to_string(),
        PyValue::Float(f) => f.to_string(),
        PyValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        PyValue::Bytes(b) => {
            String::from_utf8(b.clone()).map_err(|_| anyhow!("a label is non-UTF-8 bytes {b:?}"))?
        }
        other => bail!(
            "a label is a {} (only strings, numbers and bools are supported)",
            other.type_name()
        ),
    })
}

/// A short description of a value for messages.
fn value_text(value: &PyValue) -> String {
    label_text(value).unwrap_or_else(|_| format!("of type {}", value.type_name()))
}

fn as_usize(value: &PyValue) -> Result<usize> {
    match value {
        PyValue::Int(i) if *i >= 0 => Ok(*i as usize),
        PyValue::Int(i) => bail!("expected a non-negative int, found {i}"),
        other => bail!("expected a non-negative int, found a {}", other.type_name()),
    }
}

fn as_f64(value: &PyValue) -> Result<f64> {
    value
        .as_f64()
        .ok_or_else(|| anyhow!("expected a number, found a {}", value.type_name()))
}

fn as_bool(value: &PyValue) -> Result<bool> {
    match value {
        PyValue::Bool(b) => Ok(*b),
        PyValue::Int(i) => Ok(*i != 0),
        other => bail!("expected a bool, found a {}", other.type_name()),
    }
}

fn as_usize_list(value: &PyValue) -> Result<Vec<usize>> {
    match value {
        PyValue::List(items) | PyValue::Tuple(items) => items.iter().map(as_usize).collect(),
        other => bail!("expected a list of ints, found a {}", other.type_name()),
    }
}

/// Which model a checkpoint holds: from its hyper-parameter names, else its tensor names.
fn detect_model<'a>(
    hyperparams: &PyValue,
    mut keys: impl Iterator<Item = &'a str>,
) -> Result<&'static str> {
    if hyperparams.get("cnn_channels").is_some() {
        return Ok("cnn_transformer");
    }
    if hyperparams.get("d_model").is_some() {
        return Ok("rwkv_ts");
    }
    if hyperparams.get("hidden_size").is_some() {
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
fn hp_required<T>(hp: &PyValue, key: &str, parse: impl Fn(&PyValue) -> Result<T>) -> Result<T> {
    let value = hp.get(key).ok_or_else(|| anyhow!("missing `{key}`"))?;
    parse(value).with_context(|| format!("`{key}`"))
}

/// An optional hyper-parameter with the reference's default.
fn hp_or<T>(
    hp: &PyValue,
    key: &str,
    default: T,
    parse: impl Fn(&PyValue) -> Result<T>,
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

    fn key(path: &[(&str, &str)]) -> String {
        let path: Vec<(String, String)> = path
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        torch_key(&path).key
    }

    #[test]
    fn torch_key_maps_burn_paths_to_reference_keys() {
        let lstm = |layer: &str, dir: &str, name: &str| {
            key(&[
                ("SimpleLstm", "Enum:Net"),
                ("lstm", "Struct:SimpleLstm"),
                ("layers", "Struct:Lstm"),
                (layer, "Vec"),
                (dir, "Struct:LstmLayer"),
                (name, "Struct:LstmDirection"),
            ])
        };
        assert_eq!(lstm("1", "forward_dir", "weight_ih"), "lstm.weight_ih_l1");
        assert_eq!(
            lstm("0", "reverse_dir", "bias_hh"),
            "lstm.bias_hh_l0_reverse"
        );
        assert_eq!(
            key(&[
                ("classifier_3", "Struct:SimpleLstm"),
                ("weight", "Struct:Linear")
            ]),
            "classifier.3.weight"
        );
        assert!(
            torch_key(&[
                ("classifier_3".into(), "Struct:SimpleLstm".into()),
                ("weight".into(), "Struct:Linear".into())
            ])
            .transpose
        );
        assert_eq!(
            key(&[
                ("classifier", "Struct:CnnTransformer"),
                ("weight", "Struct:Linear")
            ]),
            "classifier.weight"
        );
        assert_eq!(
            key(&[
                ("transformer", "Struct:CnnTransformer"),
                ("layers", "Struct:TransformerEncoder"),
                ("1", "Vec"),
                ("linear1", "Struct:TransformerEncoderLayer"),
                ("bias", "Struct:Linear"),
            ]),
            "transformer.layers.1.linear1.bias"
        );
        assert_eq!(
            key(&[("ln", "Struct:SimpleLstm"), ("gamma", "Struct:LayerNorm")]),
            "ln.weight"
        );
        assert_eq!(
            key(&[("ln", "Struct:SimpleLstm"), ("beta", "Struct:LayerNorm")]),
            "ln.bias"
        );
        // A bare LSTM state dict.
        assert_eq!(
            key(&[
                ("layers", "Struct:Lstm"),
                ("0", "Vec"),
                ("reverse_dir", "Struct:LstmLayer"),
                ("weight_hh", "Struct:LstmDirection"),
            ]),
            "weight_hh_l0_reverse"
        );
    }

    /// Every parameter of every network has a distinct reference key.
    #[test]
    fn every_network_has_distinct_reference_keys() {
        type B = kiln::backend::Flex;
        let device = Default::default();
        for spec in ["simple_lstm", "cnn_transformer", "rwkv_ts"] {
            let net = ModelSpec::from_name(spec)
                .unwrap()
                .init::<B>(4, 3, InnerWindow::REFERENCE_LEN, &device)
                .unwrap();
            let keys = torch_keys::<B, _>(&net);
            let distinct: std::collections::BTreeSet<_> = keys.iter().map(|(k, _)| k).collect();
            assert_eq!(distinct.len(), keys.len(), "{spec}: {keys:?}");
            for (k, _) in &keys {
                assert!(!k.contains("gamma") && !k.contains("_dir."), "{spec}: {k}");
            }
        }
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
