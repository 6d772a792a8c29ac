//! PyTorch `torch.save` files: reading them and loading their tensors, strictly and by name, into
//! any Burn [`Module`].
//!
//! # Readers
//!
//! [`TorchFile`] opens every `torch.save` format. It tries burn-store's
//! [`PytorchReader`] first (zip archives of PyTorch ≥ 1.6, legacy pre-1.6 pickles such as
//! torchvision's `resnet50-19c8e357.pth`, tar archives); when burn-store rejects a zip file
//! (it refuses any object that is neither a container nor a tensor: yacs `CfgNode`
//! hyper-parameters, a `Counter` in a scheduler state, NumPy scalars in a label map...), the file
//! is read with the tolerant unpickler of [`crate::files::pickle`] instead ([`ReaderKind::ZipPickle`]),
//! which executes nothing and keeps unknown objects opaque.
//!
//! The weights are the tensors of one top-level entry ([`TorchFile::open_entry`]: e.g.
//! `state_dict` of a Lightning checkpoint, `model_state_dict` of a classifier checkpoint), or of
//! the whole file ([`TorchFile::open`] takes `state_dict` when there is one, else everything:
//! bare state dicts). Keys of nested dicts are joined with `.`. The top-level object itself
//! (hyper-parameters, label maps, epoch...) is [`TorchFile::metadata`], always decoded by the
//! tolerant unpickler (zip files) so that a NumPy label or a yacs node never makes it unreadable;
//! NumPy scalars read as plain strings and numbers.
//!
//! # Key rules
//!
//! A Burn module names a parameter by its path: the field (or `Vec` index) names from the root,
//! each with the type of the module that holds it (`("lstm", "Struct:SimpleLstm")`, `("0",
//! "Vec")`, `("weight", "Struct:Linear")`...), exactly as a [`ModuleMapper`] sees them
//! ([`param_paths`] lists them). A
//! [`KeyMapping`] turns such a [`ParamPath`] into the PyTorch state-dict key of the same tensor
//! and says whether the PyTorch tensor is the transpose of the Burn one ([`TorchKey`]). It is
//! declared once per model, usually as a [`RenameTable`] (segment names joined with `.`, enum
//! variant segments dropped, a table of per-container renames such as LayerNorm `gamma` →
//! `weight` or a dropped wrapper field, Linear weights transposed), wrapped by a function for
//! structural rules (an LSTM's `layers.{k}.forward_dir.weight_ih` → `weight_ih_l{k}`). The same
//! mapping drives loading
//! ([`Import`]), error messages ([`Mismatch`]) and listings ([`torch_keys`]), so there is no
//! inverse mapper to keep in sync.
//!
//! # Strictness
//!
//! [`Import::apply`] visits every float parameter of the model, computes its PyTorch key and
//! fills it from the file tensor of that key (converted to `f32`, transposed when the rule says
//! so). It fails with a [`Mismatch`] that lists, by PyTorch name, every parameter missing from
//! the file, every file tensor no parameter consumed, every shape that differs (both shapes, in
//! PyTorch order) and every tensor that could not be read: a file of the wrong architecture is
//! never half-loaded. Only what the caller excludes is not checked: model parameters outside
//! [`Import::scope`] (left untouched and listed), and file keys that [`Import::file_keys`] maps
//! to nothing (by default BatchNorm `num_batches_tracked` counters, which Burn does not keep).
//! A file whose keys differ from the model's by more than the rule (the reference's ImageNet
//! `load_param` name rules) maps them with [`Import::file_keys`] too.
//!
//! ```no_run
//! # use burn::prelude::*;
//! # fn load<B: Backend, M: Module<B>>(model: M) -> anyhow::Result<M> {
//! use kiln::torch::{Import, RenameTable, TorchFile};
//!
//! const KEYS: RenameTable = RenameTable::new(&[("Struct:LayerNorm", "gamma", "weight")]);
//! let file = TorchFile::open_entry("checkpoint.pt", "model_state_dict")?;
//! let (model, applied) = Import::new(&file, &KEYS).apply(model)?;
//! println!("{} tensors from {:?}", applied.loaded, file.reader());
//! # Ok(model)
//! # }
//! ```

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use burn_store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;
use serde::{Deserialize, Serialize};

use crate::files::pickle::TorchZip;
pub use crate::files::pickle::{PyValue, TensorRef};

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

/// Which reader parsed a file's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReaderKind {
    /// burn-store's `PytorchReader`.
    BurnStore,
    /// The tolerant zip unpickler of [`crate::files::pickle`] (files burn-store rejects).
    ZipPickle,
}

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

    fn dtype(&self) -> DType {
        match self {
            Source::Store(s) => s.dtype,
            Source::Zip(t) => t.dtype,
        }
    }
}

/// The weights of a `torch.save` file (one top-level entry, or all of it) and its metadata.
pub struct TorchFile {
    path: PathBuf,
    reader: ReaderKind,
    entry: Option<String>,
    zip: Option<TorchZip>,
    /// File key → tensor (keys of nested dicts joined with `.`).
    tensors: BTreeMap<String, Source>,
    /// The top-level object, decoded on first use.
    meta: OnceCell<Option<PyValue>>,
}

impl fmt::Debug for TorchFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorchFile")
            .field("path", &self.path)
            .field("reader", &self.reader)
            .field("entry", &self.entry)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl TorchFile {
    /// Opens a `torch.save` file; the weights are its `state_dict` entry when the top-level object
    /// has one (Lightning checkpoints), else every tensor of the file (bare state dicts).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::read(path.as_ref(), None)
    }

    /// Opens a `torch.save` file whose weights are the top-level entry `entry` (e.g.
    /// `model_state_dict`); an error when the file has no such entry.
    pub fn open_entry(path: impl AsRef<Path>, entry: &str) -> Result<Self> {
        Self::read(path.as_ref(), Some(entry))
    }

    fn read(path: &Path, entry: Option<&str>) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "cannot read weights: {} does not exist or is not a file",
                path.display()
            );
        }
        let store = match entry {
            Some(key) => PytorchReader::with_top_level_key(path, key),
            None => PytorchReader::new(path),
        };
        let store_err = match store {
            Ok(reader) => {
                let tensors = reader.into_tensors();
                let nested =
                    entry.is_none() && tensors.keys().any(|k| k.starts_with("state_dict."));
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
                return Ok(Self {
                    path: path.to_path_buf(),
                    reader: ReaderKind::BurnStore,
                    entry: entry
                        .map(str::to_string)
                        .or(nested.then(|| "state_dict".to_string())),
                    zip: None,
                    tensors,
                    meta: OnceCell::new(),
                });
            }
            Err(e) => e,
        };
        let zip = TorchZip::open(path).map_err(|zip_err| {
            anyhow!(
                "cannot read {} as a PyTorch file (burn-store: {store_err}; zip reader: \
                 {zip_err:#})",
                path.display()
            )
        })?;
        let (weights, entry) = match entry {
            Some(key) => match zip.root.get(key) {
                Some(w) => (w, Some(key.to_string())),
                None => bail!(
                    "{}: no `{key}` entry ({})",
                    path.display(),
                    top_level_keys(&zip.root)
                ),
            },
            None => match zip.root.get("state_dict") {
                Some(w) => (w, Some("state_dict".to_string())),
                None => (&zip.root, None),
            },
        };
        let tensors = weights
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, Source::Zip(t.clone())))
            .collect();
        let meta = OnceCell::from(Some(zip.root.clone()));
        Ok(Self {
            path: path.to_path_buf(),
            reader: ReaderKind::ZipPickle,
            entry,
            zip: Some(zip),
            tensors,
            meta,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reader that parsed the weights.
    pub fn reader(&self) -> ReaderKind {
        self.reader
    }

    /// The top-level entry the weights come from (`None`: the whole file).
    pub fn entry(&self) -> Option<&str> {
        self.entry.as_deref()
    }

    /// The tensor keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the weights hold no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether the weights hold `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The shape of tensor `key`.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(Source::shape)
    }

    /// The stored element type of tensor `key`.
    pub fn dtype(&self, key: &str) -> Option<DType> {
        self.tensors.get(key).map(Source::dtype)
    }

    /// Reads tensor `key` as `f32` (any stored dtype is converted), in its PyTorch layout.
    pub fn read_f32(&self, key: &str) -> Result<TensorData> {
        let source = self
            .tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: no tensor `{key}`", self.path.display()))?;
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

    /// The top-level object of the file (a dict for checkpoints), when it can be decoded: zip
    /// files by the tolerant unpickler of [`crate::files::pickle`], legacy files by burn-store.
    pub fn metadata(&self) -> Option<&PyValue> {
        self.meta
            .get_or_init(|| match &self.zip {
                Some(zip) => Some(zip.root.clone()),
                None => match TorchZip::open(&self.path) {
                    Ok(zip) => Some(zip.root),
                    Err(_) => PytorchReader::read_pickle_data(&self.path, None)
                        .ok()
                        .map(from_pickle_value),
                },
            })
            .as_ref()
    }

    /// The value of top-level entry `key` of the metadata.
    pub fn meta(&self, key: &str) -> Option<&PyValue> {
        self.metadata()?.get(key)
    }
}

/// The keys of a top-level dict, for error messages.
fn top_level_keys(root: &PyValue) -> String {
    match root.entries() {
        Some(entries) => {
            let keys: Vec<String> = entries
                .iter()
                .map(|(k, _)| match k {
                    PyValue::Str(s) => format!("`{s}`"),
                    other => format!("a {}", other.type_name()),
                })
                .collect();
            format!("{} top-level keys: {}", keys.len(), shortlist(&keys))
        }
        None => format!("the file holds a {}", root.type_name()),
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
// Key rules
// ---------------------------------------------------------------------------------------------

/// A parameter's path in a Burn module: `(segment name, type of the module holding it)` from the
/// root, as a [`ModuleMapper`] sees them (`"Struct:Linear"`, `"Enum:Net"`, `"Vec"`...).
pub type ParamPath = [(String, String)];

/// The PyTorch name of a Burn parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchKey {
    /// The state-dict key.
    pub key: String,
    /// Whether the PyTorch tensor is the transpose of the Burn one (Linear weights).
    pub transpose: bool,
}

/// A model's naming rule: Burn parameter path → PyTorch key (see the module docs).
pub trait KeyMapping {
    /// The PyTorch key of the parameter at `path`.
    fn torch_key(&self, path: &ParamPath) -> TorchKey;
}

impl<F: Fn(&ParamPath) -> TorchKey> KeyMapping for F {
    fn torch_key(&self, path: &ParamPath) -> TorchKey {
        self(path)
    }
}

/// The common rule: segment names joined with `.`, enum variant segments dropped (PyTorch has no
/// such level), per-container renames `(container type, Burn name, PyTorch name)` applied to
/// single segments, and the parameters of [`RenameTable::transposed`] transposed.
#[derive(Debug, Clone, Copy)]
pub struct RenameTable {
    /// `(container type, Burn segment, PyTorch segment)`; the PyTorch segment may contain dots,
    /// or be empty to drop the segment (a Burn wrapper field PyTorch does not have).
    pub renames: &'static [(&'static str, &'static str, &'static str)],
    /// `(container type, Burn segment)` of the parameters stored transposed by PyTorch.
    pub transposed: &'static [(&'static str, &'static str)],
}

impl RenameTable {
    /// Burn's `LayerNorm` `gamma`/`beta` are PyTorch's `weight`/`bias`.
    pub const LAYER_NORM: [(&'static str, &'static str, &'static str); 2] = [
        ("Struct:LayerNorm", "gamma", "weight"),
        ("Struct:LayerNorm", "beta", "bias"),
    ];

    /// `nn.Linear` stores its weight `[out, in]`, Burn's `Linear` `[in, out]`.
    pub const LINEAR_WEIGHT: [(&'static str, &'static str); 1] = [("Struct:Linear", "weight")];

    /// A table with these renames whose Linear weights are transposed.
    pub const fn new(renames: &'static [(&'static str, &'static str, &'static str)]) -> Self {
        Self {
            renames,
            transposed: &Self::LINEAR_WEIGHT,
        }
    }

    /// The PyTorch segments of `path` (renamed, enum variants dropped).
    pub fn segments<'p>(&self, path: &'p ParamPath) -> Vec<&'p str> {
        path.iter()
            .filter(|(_, container)| !container.starts_with("Enum:"))
            .map(|(name, container)| {
                self.renames
                    .iter()
                    .find(|(c, burn, _)| c == container && burn == name)
                    .map_or(name.as_str(), |(_, _, torch)| torch)
            })
            .filter(|segment| !segment.is_empty())
            .collect()
    }

    /// Whether the parameter at `path` is stored transposed by PyTorch.
    pub fn is_transposed(&self, path: &ParamPath) -> bool {
        path.last().is_some_and(|(name, container)| {
            self.transposed
                .iter()
                .any(|(c, n)| c == container && n == name)
        })
    }
}

impl KeyMapping for RenameTable {
    fn torch_key(&self, path: &ParamPath) -> TorchKey {
        TorchKey {
            key: self.segments(path).join("."),
            transpose: self.is_transposed(path),
        }
    }
}

/// Records the path of each visited parameter.
struct PathTracker(Vec<(String, String)>);

impl PathTracker {
    fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push((name.to_string(), container_type.to_string()));
    }
}

/// The PyTorch key of every float parameter of `module` under `rule`, with its shape in PyTorch
/// order, in visit order.
pub fn torch_keys<B: Backend, M: Module<B>>(
    module: &M,
    rule: &dyn KeyMapping,
) -> Vec<(String, Vec<usize>)> {
    struct Keys<'a> {
        path: PathTracker,
        rule: &'a dyn KeyMapping,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Keys<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let key = self.rule.torch_key(&self.path.0);
            let mut dims = param.val().dims().to_vec();
            if key.transpose {
                dims.reverse();
            }
            self.out.push((key.key, dims));
        }
    }
    let mut keys = Keys {
        path: PathTracker(Vec::new()),
        rule,
        out: Vec::new(),
    };
    module.visit(&mut keys);
    keys.out
}

/// The Burn path of every float parameter of `module`, in visit order: what a [`KeyMapping`]
/// receives (handy to write one).
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<(String, String)>> {
    struct Paths(PathTracker, Vec<Vec<(String, String)>>);
    impl<B: Backend> ModuleVisitor<B> for Paths {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.0.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
            self.1.push(self.0.0.clone());
        }
    }
    let mut paths = Paths(PathTracker(Vec::new()), Vec::new());
    module.visit(&mut paths);
    paths.1
}

// ---------------------------------------------------------------------------------------------
// Strict, by-name loading
// ---------------------------------------------------------------------------------------------

/// Why a file could not be loaded into a model: every offending key, by its PyTorch name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// The file.
    pub file: PathBuf,
    /// What it was loaded into (for the message).
    pub target: String,
    /// Model parameters the file lacks: PyTorch key and the model's shape (PyTorch order).
    pub missing: Vec<(String, Vec<usize>)>,
    /// File tensors no parameter consumed: file key and shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Shapes that differ: PyTorch key, shape in the file, shape in the model (PyTorch order).
    pub mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors that could not be read: PyTorch key and the error.
    pub unreadable: Vec<(String, String)>,
}

impl Mismatch {
    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mis_shaped.is_empty()
            && self.unreadable.is_empty()
    }
}

/// `a, b, …, and n more`: the first 12 items.
fn shortlist(items: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut out = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        let _ = write!(out, ", … and {} more", items.len() - SHOWN);
    }
    out
}

/// Appends `\n  title (n): a, b, …` (the first 12 items) to `out`, unless `items` is empty.
fn list_items(out: &mut String, title: &str, items: &[String]) {
    if !items.is_empty() {
        let _ = write!(out, "\n  {title} ({}): {}", items.len(), shortlist(items));
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut msg = format!(
            "{}: cannot load it into {}: the file does not match the model (a checkpoint of the \
             wrong architecture or configuration?)",
            self.file.display(),
            self.target
        );
        let mis_shaped: Vec<String> = self
            .mis_shaped
            .iter()
            .map(|(k, found, want)| {
                format!("`{k}` is {found:?} in the file but {want:?} in the model")
            })
            .collect();
        let keys = |items: &[(String, Vec<usize>)]| -> Vec<String> {
            items.iter().map(|(k, _)| k.clone()).collect()
        };
        let unreadable: Vec<String> = self
            .unreadable
            .iter()
            .map(|(k, e)| format!("{k}: {e}"))
            .collect();
        list_items(&mut msg, "shape mismatches", &mis_shaped);
        list_items(&mut msg, "missing from the file", &keys(&self.missing));
        list_items(&mut msg, "unexpected in the file", &keys(&self.unexpected));
        list_items(&mut msg, "unreadable", &unreadable);
        f.write_str(&msg)
    }
}

impl std::error::Error for Mismatch {}

/// What a successful [`Import::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Number of parameter tensors filled.
    pub loaded: usize,
    /// Model parameters (PyTorch keys) outside the import's scope, left as they were.
    pub untouched: Vec<String>,
    /// File keys [`Import::file_keys`] excluded from the import, sorted.
    pub excluded: Vec<String>,
}

type Scope<'a> = Box<dyn Fn(&str) -> bool + 'a>;
type FileKeys<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// A strict by-name load of a [`TorchFile`] into a module (see the module docs).
pub struct Import<'a> {
    file: &'a TorchFile,
    rule: &'a dyn KeyMapping,
    scope: Scope<'a>,
    file_keys: FileKeys<'a>,
    target: String,
}

impl<'a> Import<'a> {
    /// Loads every parameter of the model from the file tensor of its PyTorch key (under
    /// `rule`); every file tensor except `num_batches_tracked` counters must be consumed.
    pub fn new(file: &'a TorchFile, rule: &'a dyn KeyMapping) -> Self {
        Self {
            file,
            rule,
            scope: Box::new(|_| true),
            file_keys: Box::new(|key| {
                (!key.ends_with("num_batches_tracked")).then(|| key.to_string())
            }),
            target: "the model".to_string(),
        }
    }

    /// Only the parameters whose PyTorch key satisfies `in_scope` are loaded (and required); the
    /// others keep their values and are listed in [`Applied::untouched`].
    pub fn scope(mut self, in_scope: impl Fn(&str) -> bool + 'a) -> Self {
        self.scope = Box::new(in_scope);
        self
    }

    /// Which model key (PyTorch naming) each file key fills; `None` excludes the file key from
    /// the import (neither loaded nor reported unexpected). Replaces the default (identity,
    /// `num_batches_tracked` excluded).
    pub fn file_keys(mut self, model_key: impl Fn(&str) -> Option<String> + 'a) -> Self {
        self.file_keys = Box::new(model_key);
        self
    }

    /// What the file is loaded into, for the error message (default: "the model").
    pub fn target(mut self, what: impl Into<String>) -> Self {
        self.target = what.into();
        self
    }

    /// Fills the model's parameters; a [`Mismatch`] (and no model) when anything does not fit.
    pub fn apply<B: Backend, M: Module<B>>(&self, model: M) -> Result<(M, Applied), Box<Mismatch>> {
        let mut wanted = HashMap::new();
        let mut candidates = BTreeSet::new();
        let mut excluded = Vec::new();
        for key in self.file.tensors.keys() {
            match (self.file_keys)(key) {
                Some(model_key) => {
                    wanted.insert(model_key, key.clone());
                    candidates.insert(key.clone());
                }
                None => excluded.push(key.clone()),
            }
        }
        let mut loader = Loader {
            path: PathTracker(Vec::new()),
            import: self,
            wanted: &wanted,
            used: BTreeSet::new(),
            applied: Applied {
                excluded,
                ..Applied::default()
            },
            problems: Mismatch {
                file: self.file.path.clone(),
                target: self.target.clone(),
                ..Mismatch::default()
            },
        };
        let model = model.map(&mut loader);
        let mut problems = loader.problems;
        problems.unexpected = candidates
            .difference(&loader.used)
            .map(|k| (k.clone(), self.file.shape(k).unwrap_or_default()))
            .collect();
        if problems.is_empty() {
            Ok((model, loader.applied))
        } else {
            Err(Box::new(problems))
        }
    }
}

struct Loader<'a, 'i> {
    path: PathTracker,
    import: &'a Import<'i>,
    /// Model key → file key.
    wanted: &'a HashMap<String, String>,
    used: BTreeSet<String>,
    applied: Applied,
    problems: Mismatch,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, '_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let TorchKey { key, transpose } = self.import.rule.torch_key(&self.path.0);
        let transpose = transpose && D == 2;
        let mut expected = param.val().dims().to_vec();
        if transpose {
            expected.reverse();
        }
        if !(self.import.scope)(&key) {
            self.applied.untouched.push(key);
            return param;
        }
        let file = self.import.file;
        let Some((file_key, found)) = self
            .wanted
            .get(&key)
            .and_then(|fk| file.shape(fk).map(|shape| (fk, shape)))
        else {
            self.problems.missing.push((key, expected));
            return param;
        };
        self.used.insert(file_key.clone());
        if found != expected {
            self.problems.mis_shaped.push((key, found, expected));
            return param;
        }
        let data = match file.read_f32(file_key) {
            Ok(data) if transpose => transpose_2d(data),
            Ok(data) => data,
            Err(e) => {
                self.problems.unreadable.push((key, format!("{e:#}")));
                return param;
            }
        };
        self.applied.loaded += 1;
        param.map(|old| {
            let require_grad = old.is_require_grad();
            Tensor::<B, D>::from_data(data.convert::<B::FloatElem>(), &old.device())
                .set_require_grad(require_grad)
        })
    }
}

/// `[r, c]` → `[c, r]` for f32 data (other ranks are returned unchanged).
pub fn transpose_2d(data: TensorData) -> TensorData {
    let shape = data.shape.to_vec();
    let [r, c] = shape[..] else {
        return data;
    };
    let values: Vec<f32> = data.convert::<f32>().to_vec().unwrap_or_default();
    let mut out = vec![0f32; values.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = values[i * c + j];
        }
    }
    TensorData::new(out, [c, r])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segments: &[(&str, &str)]) -> Vec<(String, String)> {
        segments
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn rename_table_joins_renames_and_transposes() {
        const RULE: RenameTable = RenameTable::new(&[
            ("Struct:Ibn", "instance_norm", "IN"),
            ("Struct:Head", "classifier_0", "classifier.0"),
            ("Struct:Encoder", "inner", ""),
        ]);
        assert_eq!(
            RULE.torch_key(&path(&[
                ("inner", "Struct:Encoder"),
                ("bias", "Struct:Linear")
            ]))
            .key,
            "bias"
        );
        let key = RULE.torch_key(&path(&[
            ("backbone", "Struct:Model"),
            ("Ibn", "Enum:FirstNorm"),
            ("instance_norm", "Struct:Ibn"),
            ("gamma", "Struct:InstanceNorm"),
        ]));
        assert_eq!(key.key, "backbone.IN.gamma");
        assert!(!key.transpose);
        let key = RULE.torch_key(&path(&[
            ("classifier_0", "Struct:Head"),
            ("weight", "Struct:Linear"),
        ]));
        assert_eq!(
            key,
            TorchKey {
                key: "classifier.0.weight".into(),
                transpose: true
            }
        );
    }

    #[test]
    fn transposes_linear_weights() {
        let data = TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]);
        let t = transpose_2d(data);
        assert_eq!(t.shape.to_vec(), vec![3, 2]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn mismatch_lists_every_problem() {
        let m = Mismatch {
            file: "f.pt".into(),
            target: "a net".into(),
            missing: vec![("a.bias".into(), vec![3])],
            unexpected: vec![("b.weight".into(), vec![2, 2])],
            mis_shaped: vec![("c.weight".into(), vec![4], vec![5])],
            unreadable: Vec::new(),
        };
        let text = m.to_string();
        assert!(
            text.starts_with("f.pt: cannot load it into a net"),
            "{text}"
        );
        assert!(text.contains("missing from the file (1): a.bias"), "{text}");
        assert!(
            text.contains("unexpected in the file (1): b.weight"),
            "{text}"
        );
        assert!(
            text.contains("`c.weight` is [4] in the file but [5] in the model"),
            "{text}"
        );
    }
}
