//! Importing PyTorch weights: ImageNet backbones (by key name, like the reference's `load_param`
//! in [`resnet.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/backbones/resnet.py)) and the reference's Lightning
//! checkpoints.
//!
//! Files are read with [`kiln::torch::TorchFile`]: burn-store's reader (every `torch.save`
//! format: zip, legacy pre-1.6 pickle like torchvision's `resnet50-19c8e357.pth`, tar), and for
//! the zip files it rejects — a Lightning checkpoint of the reference holds yacs `CfgNode`
//! hyper-parameters, a `Counter` in the scheduler state, callback states keyed by class — the
//! tolerant unpickler of [`kiln::pickle`] ([`ReaderKind::ZipPickle`]).
//!
//! The model's parameters are then filled **by name** by [`kiln::torch::Import`]: each Burn
//! parameter path is turned into the reference's key by this crate's key rule ([`torch_key`]:
//! enum-variant segments dropped, `instance_norm` → `IN`, `batch_norm` → `BN`, `gamma`/`beta` →
//! `weight`/`bias` in instance norms; Linear weights are transposed), and looked up in the file.
//! Loading is strict: a parameter the file lacks, a key the model lacks, or a shape that differs
//! is an error that lists every offending key with both shapes — a checkpoint of the wrong
//! architecture is never half-loaded. BatchNorm `num_batches_tracked` counters are ignored.
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

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::prelude::*;
use kiln::torch::{Import, KeyMapping, ParamPath, PyValue, RenameTable, TorchFile, TorchKey};
use serde::{Deserialize, Serialize};

use super::ReidModel;
use super::resnet::{Arch, BlockKind, ResNetConfig};

pub use kiln::torch::ReaderKind;

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

/// The `hyper_parameters` of a checkpoint (all `None` when it has none or they are unreadable).
fn reference_hparams(file: &TorchFile) -> ReferenceHparams {
    file.meta("hyper_parameters")
        .map(ReferenceHparams::from_value)
        .unwrap_or_default()
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
// Burn path → PyTorch key
// ---------------------------------------------------------------------------------------------

/// This crate's naming rule (see the module docs): per-segment renames between its module
/// fields and the reference's keys, `(container type, Burn name, PyTorch name)`; Linear weights
/// transposed; enum variant segments (`FirstNorm::Batch` / `::Ibn`) dropped.
const KEYS: RenameTable = RenameTable::new(&[
    ("Struct:Ibn", "instance_norm", "IN"),
    ("Struct:Ibn", "batch_norm", "BN"),
    ("Struct:InstanceNorm", "gamma", "weight"),
    ("Struct:InstanceNorm", "beta", "bias"),
]);

/// The reference's state-dict key of the parameter at `path` (pairs of segment name and the type
/// of the module that holds it, as a [`burn::module::ModuleMapper`] sees them), and whether the
/// PyTorch tensor is the transpose of the Burn one (Linear weights).
pub fn torch_key(path: &ParamPath) -> (String, bool) {
    let TorchKey { key, transpose } = KEYS.torch_key(path);
    (key, transpose)
}

/// The reference key of every parameter of a module, with its shape in PyTorch order, in visit
/// order.
pub fn torch_keys<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    kiln::torch::torch_keys::<B, M>(module, &KEYS)
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
    let file = TorchFile::open(path)?;
    let ibn = model.arch().is_ibn();
    let (mut skipped, mut ignored) = (Vec::new(), Vec::new());
    for key in file.keys() {
        match imagenet_key_rule(key, ibn) {
            KeyRule::Load(_) => {}
            KeyRule::Skip(_) => skipped.push(key.to_string()),
            KeyRule::Ignore => ignored.push(key.to_string()),
        }
    }
    let (model, applied) = Import::new(&file, &KEYS)
        .file_keys(|key| match imagenet_key_rule(key, ibn) {
            KeyRule::Load(name) => Some(format!("backbone.base.{name}")),
            KeyRule::Skip(_) | KeyRule::Ignore => None,
        })
        .scope(|k| k.starts_with("backbone.base.") && !k.starts_with("backbone.base.fc."))
        .target(format!("the backbone of {}", describe(&model)))
        .apply(model)?;
    Ok((
        model,
        ImportSummary {
            file: path.to_path_buf(),
            reader: file.reader(),
            loaded: applied.loaded,
            skipped,
            ignored,
            untouched: applied.untouched,
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
    let file = TorchFile::open(path)?;
    let hparams = reference_hparams(&file);
    check_hparams(
        &hparams,
        file.path(),
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
    let file = TorchFile::open(path)?;
    let hparams = reference_hparams(&file);
    let shape = |key: &str| -> Result<Vec<usize>> {
        file.shape(key).ok_or_else(|| {
            anyhow!(
                "{}: not a centroids-reid checkpoint: it has no `{key}` (its state dict holds {} \
                 tensors)",
                path.display(),
                file.len()
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
    for key in file.keys() {
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
    let block = if file.contains("backbone.base.layer1.0.conv3.weight") {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let ibn = file.keys().any(|k| k.contains(".bn1.IN."));
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
    let fc_classes = match file.shape("backbone.base.fc.weight") {
        Some(s) => s.first().copied().unwrap_or(0),
        None => 1000,
    };
    let config = ResNetConfig::new(arch, hparams.last_stride.unwrap_or(1))
        .with_width(width)
        .with_fc_classes(fc_classes);
    let model = ReidModel::new(&config, num_classes, device)
        .with_context(|| format!("cannot build the model of {}", path.display()))?;
    check_hparams(&hparams, file.path(), arch, model.emb_size(), num_classes)?;
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
    let (model, applied) = Import::new(&file, &KEYS)
        .target(describe(&model))
        .apply(model)?;
    let meta_int = |key: &str| file.meta(key).and_then(PyValue::as_int);
    let info = CheckpointInfo {
        arch: model.arch(),
        width: model.backbone.base.width(),
        last_stride: model.backbone.base.last_stride(),
        emb_size: model.emb_size(),
        num_classes: model.num_classes(),
        hparams,
        epoch: meta_int("epoch"),
        global_step: meta_int("global_step"),
        summary: ImportSummary {
            file: file.path().to_path_buf(),
            reader: file.reader(),
            loaded: applied.loaded,
            skipped: Vec::new(),
            ignored: applied.excluded,
            untouched: applied.untouched,
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
}
