//! Importing PyTorch weights: ImageNet backbones (by key name, like the reference's `load_param`
//! in [`resnet.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/backbones/resnet.py)) and the reference's Lightning
//! checkpoints.
//!
//! Files are read with burn-store's [`PytorchReader`] (every `torch.save` format: zip, legacy
//! pre-1.6 pickle like torchvision's `resnet50-19c8e357.pth`, tar). A Lightning checkpoint of the
//! reference holds objects that reader rejects (yacs `CfgNode` hyper-parameters, a `Counter` in
//! the scheduler state, callback states keyed by class); such zip files are read with the
//! tolerant unpickler of [`kiln::pickle`] instead ([`ReaderKind::ZipPickle`]).
//!
//! The model's parameters are then filled **by name**: each Burn parameter path is turned into
//! the reference's key ([`torch_key`]: enum-variant segments dropped, `instance_norm` → `IN`,
//! `batch_norm` → `BN`, `gamma`/`beta` → `weight`/`bias` in instance norms; Linear weights are
//! transposed), and looked up in the file. Loading is strict: a parameter the file lacks, a
//! key the model lacks, or a shape that differs is an error that lists every offending key with
//! both shapes — a checkpoint of the wrong architecture is never half-loaded. BatchNorm
//! `num_batches_tracked` counters are ignored.
//!
//! * [`load_imagenet_weights`]: `ResNet.load_param` / `ResNet_IBN.load_param` into
//!   `backbone.base` — uses the `state_dict` entry if there is one; skips keys containing
//!   `fc`, `bottleneck`, `classifier`, `transformer` (plain) or `fc`, `bottleneck`,
//!   `reduce_embeddings.weight`, `classifier` (IBN); drops the first 14 characters of a key
//!   containing `backbone`, else the first 5 of a key containing `base` (IBN: only the `base`
//!   rule). Extension: a leading `module.` (DataParallel) is also dropped.
//! * [`load_reference_checkpoint`]: builds the model a `.ckpt` describes (architecture, width
//!   and classes from the weights, cross-checked against `hyper_parameters` `MODEL.NAME`,
//!   `MODEL.BACKBONE_EMB_SIZE`, `num_classes`; last stride from `MODEL.LAST_STRIDE`) and loads it.
//! * [`load_reference_checkpoint_into`]: loads a `.ckpt` into an existing model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;
use serde::{Deserialize, Serialize};

use super::ReidModel;
use super::resnet::{Arch, BlockKind, ResNetConfig};
use kiln::pickle::{PyValue, TensorRef, TorchZip};

/// Which reader parsed a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReaderKind {
    /// burn-store's `PytorchReader`.
    BurnStore,
    /// The tolerant zip unpickler of [`kiln::pickle`] (files burn-store rejects).
    ZipPickle,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSummary {
    /// The file.
    pub file: PathBuf,
    /// Reader used.
    pub reader: ReaderKind,
    /// Number of parameter tensors filled (running statistics included).
    pub loaded: usize,
    /// File keys skipped by the reference's name rules (e.g. `fc.weight`).
    pub skipped: Vec<String>,
    /// File keys ignored (`num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Model parameters this import leaves untouched (outside its scope, e.g. the IBN `fc`
    /// and the head for an ImageNet import).
    pub untouched: Vec<String>,
}

/// The reference hyper-parameters this crate reads from a checkpoint (`hyper_parameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceHparams {
    /// `MODEL.NAME`.
    pub model_name: Option<String>,
    /// `MODEL.LAST_STRIDE`.
    pub last_stride: Option<usize>,
    /// `MODEL.BACKBONE_EMB_SIZE`.
    pub emb_size: Option<usize>,
    /// `num_classes`.
    pub num_classes: Option<usize>,
}

impl ReferenceHparams {
    fn from_value(hp: &PyValue) -> Self {
        let model = hp.get("MODEL");
        let int = |v: Option<&PyValue>| {
            v.and_then(PyValue::as_int)
                .and_then(|i| usize::try_from(i).ok())
        };
        Self {
            model_name: model
                .and_then(|m| m.get("NAME"))
                .and_then(PyValue::as_str)
                .map(str::to_string),
            last_stride: int(model.and_then(|m| m.get("LAST_STRIDE"))),
            emb_size: int(model.and_then(|m| m.get("BACKBONE_EMB_SIZE"))),
            num_classes: int(hp.get("num_classes")),
        }
    }
}

/// What a reference checkpoint held, besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Backbone architecture.
    pub arch: Arch,
    /// Base width (64 for the real networks).
    pub width: usize,
    /// Stride of layer4.
    pub last_stride: usize,
    /// Embedding size.
    pub emb_size: usize,
    /// Number of training identities.
    pub num_classes: usize,
    /// The `hyper_parameters` this crate understands (all `None` if the file has none or they
    /// could not be read).
    pub hparams: ReferenceHparams,
    /// `epoch` of the checkpoint.
    pub epoch: Option<i64>,
    /// `global_step` of the checkpoint.
    pub global_step: Option<i64>,
    /// The import itself.
    pub summary: ImportSummary,
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

enum Source {
    Store(TensorSnapshot),
    Zip(TensorRef),
}

impl Source {
    fn shape(&self) -> Vec<usize> {
        match self {
            Source::Store(s) => s.shape.to_vec(),
            Source::Zip(t) => t.shape.clone(),
        }
    }
}

/// The weights of a PyTorch file (its `state_dict` entry when it has one) and its metadata.
struct TorchFile {
    path: PathBuf,
    reader: ReaderKind,
    zip: Option<TorchZip>,
    /// File key → tensor (keys of nested dicts joined with `.`).
    tensors: BTreeMap<String, Source>,
    /// The top-level object (hyper-parameters, epoch...), when it could be read.
    meta: Option<PyValue>,
}

impl TorchFile {
    fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "cannot read weights: {} does not exist or is not a file",
                path.display()
            );
        }
        match PytorchReader::new(path) {
            Ok(reader) => {
                let tensors = reader.into_tensors();
                let nested = tensors.keys().any(|k| k.starts_with("state_dict."));
                let tensors = tensors
                    .into_iter()
                    .filter_map(|(k, v)| {
                        if nested {
                            k.strip_prefix("state_dict.")
                                .map(|k| (k.to_string(), Source::Store(v)))
                        } else {
                            Some((k, Source::Store(v)))
                        }
                    })
                    .collect();
                // Metadata only matters for checkpoints (a `state_dict` entry beside others).
                let meta = if nested {
                    PytorchReader::read_pickle_data(path, None)
                        .ok()
                        .map(from_pickle_value)
                } else {
                    None
                };
                Ok(Self {
                    path: path.to_path_buf(),
                    reader: ReaderKind::BurnStore,
                    zip: None,
                    tensors,
                    meta,
                })
            }
            Err(store_err) => {
                let zip = TorchZip::open(path).map_err(|zip_err| {
                    anyhow!(
                        "cannot read {} as a PyTorch file (burn-store: {store_err}; zip reader: \
                         {zip_err:#})",
                        path.display()
                    )
                })?;
                let weights = zip.root.get("state_dict").unwrap_or(&zip.root);
                let tensors = weights
                    .tensors()
                    .into_iter()
                    .map(|(k, t)| (k, Source::Zip(t.clone())))
                    .collect();
                let meta = Some(zip.root.clone());
                Ok(Self {
                    path: path.to_path_buf(),
                    reader: ReaderKind::ZipPickle,
                    zip: Some(zip),
                    tensors,
                    meta,
                })
            }
        }
    }

    fn data(&self, key: &str, source: &Source) -> Result<TensorData> {
        match source {
            Source::Store(s) => s
                .to_data()
                .map(|d| d.convert::<f32>())
                .map_err(|e| anyhow!("{}: cannot read tensor `{key}`: {e:?}", self.path.display())),
            Source::Zip(t) => self
                .zip
                .as_ref()
                .ok_or_else(|| anyhow!("internal: zip tensor without a zip reader"))?
                .read_f32(t)
                .with_context(|| format!("cannot read tensor `{key}`")),
        }
    }

    fn hparams(&self) -> ReferenceHparams {
        self.meta
            .as_ref()
            .and_then(|m| m.get("hyper_parameters"))
            .map(ReferenceHparams::from_value)
            .unwrap_or_default()
    }

    fn meta_int(&self, key: &str) -> Option<i64> {
        self.meta.as_ref()?.get(key)?.as_int()
    }
}

fn from_pickle_value(v: PickleValue) -> PyValue {
    match v {
        PickleValue::None => PyValue::None,
        PickleValue::Bool(b) => PyValue::Bool(b),
        PickleValue::Int(i) => PyValue::Int(i),
        PickleValue::Float(f) => PyValue::Float(f),
        PickleValue::String(s) => PyValue::Str(s),
        PickleValue::Bytes(b) => PyValue::Bytes(b),
        PickleValue::List(items) => {
            PyValue::List(items.into_iter().map(from_pickle_value).collect())
        }
        PickleValue::Dict(map) => {
            let mut items: Vec<_> = map
                .into_iter()
                .map(|(k, v)| (PyValue::Str(k), from_pickle_value(v)))
                .collect();
            items.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
            PyValue::Dict(items)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Burn path → PyTorch key
// ---------------------------------------------------------------------------------------------

/// Per-segment renames between this crate's module fields and the reference's keys:
/// `(container type, Burn name, PyTorch name)`.
const RENAMES: &[(&str, &str, &str)] = &[
    ("Struct:Ibn", "instance_norm", "IN"),
    ("Struct:Ibn", "batch_norm", "BN"),
    ("Struct:InstanceNorm", "gamma", "weight"),
    ("Struct:InstanceNorm", "beta", "bias"),
];

/// The reference's state-dict key of the parameter at `path` (pairs of segment name and the type
/// of the module that holds it, as a [`ModuleMapper`] sees them), and whether the PyTorch
/// tensor is the transpose of the Burn one (Linear weights).
pub fn torch_key(path: &[(String, String)]) -> (String, bool) {
    let mut parts = Vec::with_capacity(path.len());
    for (name, container) in path {
        if container.starts_with("Enum:") {
            continue; // enum variant names (FirstNorm::Batch / ::Ibn) are not in PyTorch keys
        }
        let renamed = RENAMES
            .iter()
            .find(|(c, burn, _)| c == container && burn == name)
            .map_or(name.as_str(), |(_, _, torch)| torch);
        parts.push(renamed);
    }
    let transpose = path
        .last()
        .is_some_and(|(name, container)| container == "Struct:Linear" && name == "weight");
    (parts.join("."), transpose)
}

/// The reference key of every parameter of a module, with its shape in PyTorch order, in visit
/// order.
pub fn torch_keys<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Keys {
        path: Vec<(String, String)>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for Keys {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (key, transpose) = torch_key(&self.path);
            let mut dims = param.val().dims().to_vec();
            if transpose {
                dims.reverse();
            }
            self.out.push((key, dims));
        }
    }
    let mut keys = Keys {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut keys);
    keys.out
}

// ---------------------------------------------------------------------------------------------
// Strict, by-name loading
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Problems {
    missing: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    unreadable: Vec<String>,
}

struct Importer<'a> {
    path: Vec<(String, String)>,
    file: &'a TorchFile,
    /// Model key → file key.
    wanted: &'a HashMap<String, String>,
    in_scope: &'a dyn Fn(&str) -> bool,
    used: BTreeSet<String>,
    untouched: Vec<String>,
    loaded: usize,
    problems: Problems,
}

impl<B: Backend> ModuleMapper<B> for Importer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (key, transpose) = torch_key(&self.path);
        if !(self.in_scope)(&key) {
            self.untouched.push(key);
            return param;
        }
        let Some((file_key, source)) = self
            .wanted
            .get(&key)
            .and_then(|fk| self.file.tensors.get(fk).map(|s| (fk, s)))
        else {
            self.problems.missing.push(key);
            return param;
        };
        self.used.insert(file_key.clone());
        let mut expected = param.val().dims().to_vec();
        if transpose {
            expected.reverse();
        }
        let found = source.shape();
        if found != expected {
            self.problems.mismatched.push((key, found, expected));
            return param;
        }
        let data = match self.file.data(file_key, source) {
            Ok(data) if transpose => transpose_2d(data),
            Ok(data) => data,
            Err(e) => {
                self.problems.unreadable.push(format!("{key}: {e:#}"));
                return param;
            }
        };
        self.loaded += 1;
        param.map(|old| {
            let require_grad = old.is_require_grad();
            Tensor::<B, D>::from_data(data.convert::<B::FloatElem>(), &old.device())
                .set_require_grad(require_grad)
        })
    }
}

/// `[r, c]` → `[c, r]` for f32 data.
fn transpose_2d(data: TensorData) -> TensorData {
    let shape = data.shape.to_vec();
    let (r, c) = (shape[0], shape[1]);
    let values: Vec<f32> = data.to_vec().unwrap_or_default();
    let mut out = vec![0f32; values.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = values[i * c + j];
        }
    }
    TensorData::new(out, [c, r])
}

fn list(out: &mut String, title: &str, items: &[String]) {
    const SHOWN: usize = 12;
    if items.is_empty() {
        return;
    }
    let _ = write!(out, "\n  {title} ({}): ", items.len());
    let shown: Vec<&str> = items.iter().take(SHOWN).map(String::as_str).collect();
    out.push_str(&shown.join(", "));
    if items.len() > SHOWN {
        let _ = write!(out, ", … and {} more", items.len() - SHOWN);
    }
}

/// Fills the parameters of `model` whose keys satisfy `in_scope` from `file`; `wanted` maps model
/// keys to file keys, `candidates` are the file keys that must all be consumed.
fn apply<B: Backend>(
    model: ReidModel<B>,
    file: &TorchFile,
    wanted: &HashMap<String, String>,
    candidates: &BTreeSet<String>,
    in_scope: &dyn Fn(&str) -> bool,
    what: &str,
) -> Result<(ReidModel<B>, usize, Vec<String>)> {
    let mut importer = Importer {
        path: Vec::new(),
        file,
        wanted,
        in_scope,
        used: BTreeSet::new(),
        untouched: Vec::new(),
        loaded: 0,
        problems: Problems::default(),
    };
    let model = model.map(&mut importer);
    let unexpected: Vec<String> = candidates.difference(&importer.used).cloned().collect();
    let p = importer.problems;
    if p.missing.is_empty()
        && p.mismatched.is_empty()
        && p.unreadable.is_empty()
        && unexpected.is_empty()
    {
        return Ok((model, importer.loaded, importer.untouched));
    }
    let mut msg = format!(
        "{}: cannot load it into {what}: the file does not match the model (a checkpoint of the \
         wrong architecture or configuration?)",
        file.path.display()
    );
    let mismatched: Vec<String> = p
        .mismatched
        .iter()
        .map(|(k, found, want)| format!("`{k}` is {found:?} in the file but {want:?} in the model"))
        .collect();
    list(&mut msg, "shape mismatches", &mismatched);
    list(&mut msg, "missing from the file", &p.missing);
    list(&mut msg, "unexpected in the file", &unexpected);
    list(&mut msg, "unreadable", &p.unreadable);
    bail!(msg)
}

fn describe<B: Backend>(model: &ReidModel<B>) -> String {
    format!(
        "a {} model (width {}, last stride {}, {}-d embedding, {} classes)",
        model.arch(),
        model.backbone.base.width(),
        model.backbone.base.last_stride(),
        model.emb_size(),
        model.num_classes()
    )
}

// ---------------------------------------------------------------------------------------------
// ImageNet weights
// ---------------------------------------------------------------------------------------------

/// What the reference's `load_param` does with one file key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// Copy into `backbone.base.<this>`.
    Load(String),
    /// Skipped by the reference because the key contains this word.
    Skip(&'static str),
    /// A BatchNorm `num_batches_tracked` counter.
    Ignore,
}

/// The reference's name rules of `ResNet.load_param` (plain) / `ResNet_IBN.load_param` (IBN),
/// plus dropping a DataParallel `module.` prefix.
pub fn imagenet_key_rule(key: &str, ibn: bool) -> KeyRule {
    if key.ends_with("num_batches_tracked") {
        return KeyRule::Ignore;
    }
    let skips: &[&'static str] = if ibn {
        &["fc", "bottleneck", "reduce_embeddings.weight", "classifier"]
    } else {
        &["fc", "bottleneck", "classifier", "transformer"]
    };
    if let Some(word) = skips.iter().find(|w| key.contains(**w)) {
        return KeyRule::Skip(word);
    }
    let renamed = if !ibn && key.contains("backbone") {
        key.get(14..).unwrap_or("")
    } else if key.contains("base") {
        key.get(5..).unwrap_or("")
    } else {
        key
    };
    KeyRule::Load(
        renamed
            .strip_prefix("module.")
            .unwrap_or(renamed)
            .to_string(),
    )
}

/// Loads ImageNet (torchvision ResNet or IBN-Net ResNet-IBN-a) weights into `backbone.base`,
/// like the reference's `load_param`. Every backbone parameter except the IBN `fc` must be in
/// the file; the BNNeck, classifier and centers keep their initialisation.
pub fn load_imagenet_weights<B: Backend>(
    model: ReidModel<B>,
    path: impl AsRef<Path>,
) -> Result<(ReidModel<B>, ImportSummary)> {
    let path = path.as_ref();
    let file = TorchFile::read(path)?;
    let ibn = model.arch().is_ibn();
    let mut wanted = HashMap::new();
    let mut candidates = BTreeSet::new();
    let (mut skipped, mut ignored) = (Vec::new(), Vec::new());
    for key in file.tensors.keys() {
        match imagenet_key_rule(key, ibn) {
            KeyRule::Load(name) => {
                wanted.insert(format!("backbone.base.{name}"), key.clone());
                candidates.insert(key.clone());
            }
            KeyRule::Skip(_) => skipped.push(key.clone()),
            KeyRule::Ignore => ignored.push(key.clone()),
        }
    }
    let in_scope = |k: &str| k.starts_with("backbone.base.") && !k.starts_with("backbone.base.fc.");
    let what = format!("the backbone of {}", describe(&model));
    let (model, loaded, untouched) = apply(model, &file, &wanted, &candidates, &in_scope, &what)?;
    Ok((
        model,
        ImportSummary {
            file: path.to_path_buf(),
            reader: file.reader,
            loaded,
            skipped,
            ignored,
            untouched,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Reference Lightning checkpoints
// ---------------------------------------------------------------------------------------------

/// Loads every parameter of a reference checkpoint (`state_dict` with `backbone.base.*`, `bn.*`,
/// `fc_query.weight`, `center_loss.centers`) into `model`. Fails, naming the keys and shapes,
/// when the checkpoint is of another architecture or class count, or when its
/// `hyper_parameters` contradict the model.
pub fn load_reference_checkpoint_into<B: Backend>(
    model: ReidModel<B>,
    path: impl AsRef<Path>,
) -> Result<(ReidModel<B>, CheckpointInfo)> {
    let path = path.as_ref();
    let file = TorchFile::read(path)?;
    let hparams = file.hparams();
    check_hparams(
        &hparams,
        &file.path,
        model.arch(),
        model.emb_size(),
        model.num_classes(),
    )?;
    if let Some(stride) = hparams.last_stride
        && stride != model.backbone.base.last_stride()
    {
        bail!(
            "{}: checkpoint of another configuration: its hyper_parameters say MODEL.LAST_STRIDE \
             = {stride}, the model has last stride {}",
            path.display(),
            model.backbone.base.last_stride()
        );
    }
    load_checkpoint_file(model, file, hparams)
}

/// Builds the model a reference checkpoint describes and loads it.
///
/// The architecture, base width, embedding size and class count come from the weights (so
/// reduced-width test models load too), cross-checked against `hyper_parameters`
/// (`MODEL.NAME`, `MODEL.BACKBONE_EMB_SIZE`, `num_classes`); the last stride, which the weights
/// do not show, comes from `MODEL.LAST_STRIDE` (1, the reference default, when absent).
pub fn load_reference_checkpoint<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<(ReidModel<B>, CheckpointInfo)> {
    let path = path.as_ref();
    let file = TorchFile::read(path)?;
    let hparams = file.hparams();
    let shape = |key: &str| -> Result<Vec<usize>> {
        file.tensors.get(key).map(Source::shape).ok_or_else(|| {
            anyhow!(
                "{}: not a centroids-reid checkpoint: it has no `{key}` (its state dict holds {} \
                 tensors)",
                path.display(),
                file.tensors.len()
            )
        })
    };
    let width = *shape("backbone.base.conv1.weight")?
        .first()
        .ok_or_else(|| anyhow!("{}: scalar backbone.base.conv1.weight", path.display()))?;
    let num_classes = *shape("fc_query.weight")?
        .first()
        .ok_or_else(|| anyhow!("{}: scalar fc_query.weight", path.display()))?;
    let mut layers = [0usize; 4];
    for key in file.tensors.keys() {
        if let Some(rest) = key.strip_prefix("backbone.base.layer") {
            let mut parts = rest.split('.');
            if let (Some(stage), Some(block)) = (parts.next(), parts.next())
                && let (Ok(stage), Ok(block)) = (stage.parse::<usize>(), block.parse::<usize>())
                && (1..=4).contains(&stage)
            {
                layers[stage - 1] = layers[stage - 1].max(block + 1);
            }
        }
    }
    let block = if file
        .tensors
        .contains_key("backbone.base.layer1.0.conv3.weight")
    {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let ibn = file.tensors.keys().any(|k| k.contains(".bn1.IN."));
    let structure = format!(
        "layers {layers:?}, {} blocks{}",
        match block {
            BlockKind::Basic => "basic",
            BlockKind::Bottleneck => "bottleneck",
        },
        if ibn { ", IBN" } else { "" }
    );
    let arch = Arch::from_structure(layers, block, ibn).ok_or_else(|| {
        anyhow!(
            "{}: the state dict is not one of the reference backbones ({structure})",
            path.display()
        )
    })?;
    if let Some(name) = &hparams.model_name {
        let named = Arch::from_name(name)
            .with_context(|| format!("{}: hyper_parameters MODEL.NAME", path.display()))?;
        if named != arch {
            bail!(
                "{}: checkpoint of the wrong architecture: its hyper_parameters say MODEL.NAME = \
                 {named}, but its weights are a {arch} ({structure})",
                path.display()
            );
        }
    }
    let fc_classes = match file.tensors.get("backbone.base.fc.weight") {
        Some(s) => s.shape().first().copied().unwrap_or(0),
        None => 1000,
    };
    let config = ResNetConfig::new(arch, hparams.last_stride.unwrap_or(1))
        .with_width(width)
        .with_fc_classes(fc_classes);
    let model = ReidModel::new(&config, num_classes, device)
        .with_context(|| format!("cannot build the model of {}", path.display()))?;
    check_hparams(&hparams, &file.path, arch, model.emb_size(), num_classes)?;
    load_checkpoint_file(model, file, hparams)
}

fn check_hparams(
    hp: &ReferenceHparams,
    path: &Path,
    arch: Arch,
    emb_size: usize,
    num_classes: usize,
) -> Result<()> {
    let path = path.display();
    if let Some(name) = &hp.model_name {
        let named = Arch::from_name(name)
            .with_context(|| format!("{path}: hyper_parameters MODEL.NAME"))?;
        if named != arch {
            bail!(
                "{path}: checkpoint of the wrong architecture: its hyper_parameters say MODEL.NAME \
                 = {named}, the model is a {arch}"
            );
        }
    }
    if let Some(emb) = hp.emb_size
        && emb != emb_size
    {
        bail!(
            "{path}: checkpoint of another configuration: its hyper_parameters say \
             MODEL.BACKBONE_EMB_SIZE = {emb}, the model's embedding has {emb_size} dimensions"
        );
    }
    if let Some(n) = hp.num_classes
        && n != num_classes
    {
        bail!(
            "{path}: checkpoint of another dataset: its hyper_parameters say num_classes = {n}, \
             the model has {num_classes} classes"
        );
    }
    Ok(())
}

fn load_checkpoint_file<B: Backend>(
    model: ReidModel<B>,
    file: TorchFile,
    hparams: ReferenceHparams,
) -> Result<(ReidModel<B>, CheckpointInfo)> {
    let mut wanted = HashMap::new();
    let mut candidates = BTreeSet::new();
    let mut ignored = Vec::new();
    for key in file.tensors.keys() {
        if key.ends_with("num_batches_tracked") {
            ignored.push(key.clone());
        } else {
            wanted.insert(key.clone(), key.clone());
            candidates.insert(key.clone());
        }
    }
    let what = describe(&model);
    let (model, loaded, untouched) = apply(model, &file, &wanted, &candidates, &|_| true, &what)?;
    let info = CheckpointInfo {
        arch: model.arch(),
        width: model.backbone.base.width(),
        last_stride: model.backbone.base.last_stride(),
        emb_size: model.emb_size(),
        num_classes: model.num_classes(),
        hparams,
        epoch: file.meta_int("epoch"),
        global_step: file.meta_int("global_step"),
        summary: ImportSummary {
            file: file.path.clone(),
            reader: file.reader,
            loaded,
            skipped: Vec::new(),
            ignored,
            untouched,
        },
    };
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_name_rules() {
        use KeyRule::*;
        // torchvision file
        assert_eq!(
            imagenet_key_rule("conv1.weight", false),
            Load("conv1.weight".into())
        );
        assert_eq!(imagenet_key_rule("fc.weight", false), Skip("fc"));
        assert_eq!(imagenet_key_rule("bn1.num_batches_tracked", false), Ignore);
        // reid-strong-baseline checkpoint: `base.` prefix dropped, head skipped
        assert_eq!(
            imagenet_key_rule("base.layer1.0.conv1.weight", false),
            Load("layer1.0.conv1.weight".into())
        );
        assert_eq!(
            imagenet_key_rule("bottleneck.weight", false),
            Skip("bottleneck")
        );
        assert_eq!(
            imagenet_key_rule("classifier.weight", true),
            Skip("classifier")
        );
        // `backbone` drops 14 characters for the plain ResNet only
        assert_eq!(
            imagenet_key_rule("backbone.base.conv1.weight", false),
            Load("conv1.weight".into())
        );
        assert_eq!(
            imagenet_key_rule("backbone.base.conv1.weight", true),
            Load("one.base.conv1.weight".into())
        );
        assert_eq!(
            imagenet_key_rule("transformer.x", false),
            Skip("transformer")
        );
        assert_eq!(
            imagenet_key_rule("transformer.x", true),
            Load("transformer.x".into())
        );
        assert_eq!(
            imagenet_key_rule("layer1.0.bn1.IN.weight", true),
            Load("layer1.0.bn1.IN.weight".into())
        );
        assert_eq!(
            imagenet_key_rule("module.layer4.2.bn3.bias", true),
            Load("layer4.2.bn3.bias".into())
        );
    }

    #[test]
    fn transposes_linear_weights() {
        let data = TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]);
        let t = transpose_2d(data);
        assert_eq!(t.shape.to_vec(), vec![3, 2]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
    }
}
