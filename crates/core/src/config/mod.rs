//! A yacs-style configuration system on top of figment.
//!
//! A project defines its defaults as a typed struct (`Serialize + Deserialize + Default`, usually
//! with `#[serde(rename_all = "SCREAMING_SNAKE_CASE")]` so keys read like yacs keys). A run's
//! configuration is then, in order:
//!
//! 1. the defaults,
//! 2. merged with a YAML file (`--config-file`),
//! 3. merged with `KEY VALUE` pairs from the command line (`SOLVER.BASE_LR 0.00035`).
//!
//! The merge follows yacs (`CfgNode.merge_from_file` / `merge_from_list`):
//! * every value given as a string (on the command line, or a YAML string scalar) is parsed as a
//!   Python literal (`ast.literal_eval`), and stays a string when that fails. So `market1501` and
//!   `'market1501'` both give the string `market1501`, `[0]` is a list, `1e-4` a float, `False` a
//!   bool, `(40, 70)` a list;
//! * a key that the defaults do not have is an error naming the key and where it came from;
//! * the new value's type must match the default's type (lists and tuples are the same type),
//!   except that `None` may replace a value (not a section) and any value may replace a `None`
//!   default, like yacs (an optional setting switched off, e.g. `grad_clip: null`; the typed
//!   struct still rejects a `None` where the field is not optional, naming the key).
//!   Two deliberate widenings, both of which yacs would reject: an integer is accepted where the
//!   default is a float, since `BASE_LR: 1` in a YAML file means `1.0`; and an integer is
//!   accepted, as its decimal text, where the default is a string, since Lightning's precision
//!   names mix the two (`precision: 16`, `precision: bf16-mixed`).
//!
//! The merged tree is extracted into the typed struct with figment, and [`dump_yaml`] writes the
//! final configuration into a run directory.

/// Command-line arguments every kiln-based tool shares.
pub mod cli;
/// Python literals as yacs reads them.
pub mod literal;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Num, Tag, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::config::literal::parse_literal;

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file.
    File(String),
    /// A `KEY VALUE` pair on the command line.
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "config file {p}"),
            Source::CommandLine => write!(f, "command-line override"),
        }
    }
}

/// Builds a configuration of type `T` from its defaults, an optional YAML file and `KEY VALUE`
/// overrides.
pub fn load<T>(file: Option<&Path>, overrides: &[String]) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    Builder::<T>::new()
        .file(file)?
        .overrides(overrides)?
        .build()
}

/// Step-by-step configuration building (defaults → file → overrides → typed value).
pub struct Builder<T> {
    tree: Value,
    _marker: std::marker::PhantomData<T>,
}

impl<T> Builder<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    /// Starts from `T::default()`.
    pub fn new() -> Self {
        Self::from_defaults(&T::default())
    }

    /// Starts from explicit defaults.
    pub fn from_defaults(defaults: &T) -> Self {
        let tree = Value::serialize(defaults).expect("config defaults must serialise");
        Self {
            tree,
            _marker: std::marker::PhantomData,
        }
    }

    /// Merges a YAML file, if given.
    pub fn file(mut self, path: Option<&Path>) -> Result<Self> {
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let source = Source::File(path.display().to_string());
            self = self.yaml_str(&text, source)?;
        }
        Ok(self)
    }

    /// Merges YAML text.
    pub fn yaml_str(mut self, text: &str, source: Source) -> Result<Self> {
        let parsed: Value = if text.trim().is_empty() {
            Value::Dict(Tag::Default, Dict::new())
        } else {
            serde_yaml::from_str(text).with_context(|| format!("{source} is not valid YAML"))?
        };
        let parsed = decode_strings(parsed);
        let Value::Dict(_, dict) = parsed else {
            bail!("{source}: the top level must be a mapping of keys to values");
        };
        merge_dict(&mut self.tree, dict, "", &source)?;
        Ok(self)
    }

    /// Merges `KEY VALUE` pairs (a flat list of alternating dotted keys and values).
    pub fn overrides(mut self, pairs: &[String]) -> Result<Self> {
        if !pairs.len().is_multiple_of(2) {
            bail!(
                "config overrides must be KEY VALUE pairs, got an odd number of items ({}): {:?}",
                pairs.len(),
                pairs
            );
        }
        for pair in pairs.chunks(2) {
            self.set(&pair[0], &pair[1])?;
        }
        Ok(self)
    }

    /// Sets one dotted key from a literal string, yacs-style.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed = parse_literal(value);
        let mut nested = parsed;
        for part in key.split('.').rev() {
            if part.is_empty() {
                bail!("malformed config key `{key}` in command-line override");
            }
            let mut d = Dict::new();
            d.insert(part.to_string(), nested);
            nested = Value::Dict(Tag::Default, d);
        }
        let Value::Dict(_, dict) = nested else {
            unreachable!()
        };
        merge_dict(&mut self.tree, dict, "", &Source::CommandLine)
    }

    /// Extracts the typed configuration.
    pub fn build(self) -> Result<T> {
        let Value::Dict(_, dict) = self.tree else {
            bail!("config defaults must be a struct");
        };
        Figment::from(Serialized::globals(dict))
            .extract::<T>()
            .map_err(|errors| {
                let lines: Vec<String> = errors
                    .into_iter()
                    .map(|e| {
                        if e.path.is_empty() {
                            format!("invalid configuration: {}", e.kind)
                        } else {
                            format!(
                                "invalid value for config key `{}`: {}",
                                e.path.join("."),
                                e.kind
                            )
                        }
                    })
                    .collect();
                anyhow!("{}", lines.join("\n"))
            })
    }
}

impl<T> Default for Builder<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the configuration as YAML (atomically).
pub fn dump_yaml<T: Serialize>(config: &T, path: impl AsRef<Path>) -> Result<()> {
    let text = serde_yaml::to_string(config)?;
    crate::files::io::write_atomic(path, text.as_bytes())
}

/// The coarse value types yacs compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Bool,
    Int,
    Float,
    Str,
    List,
    Dict,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::None => "None",
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Str => "str",
            Kind::List => "list",
            Kind::Dict => "mapping",
        };
        f.write_str(s)
    }
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::String(..) | Value::Char(..) => Kind::Str,
        Value::Bool(..) => Kind::Bool,
        Value::Num(_, Num::F32(_) | Num::F64(_)) => Kind::Float,
        Value::Num(..) => Kind::Int,
        Value::Empty(..) => Kind::None,
        Value::Dict(..) => Kind::Dict,
        Value::Array(..) => Kind::List,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn merge_dict(target: &mut Value, new: Dict, prefix: &str, source: &Source) -> Result<()> {
    let Value::Dict(_, existing) = target else {
        bail!("config key `{prefix}` is not a section ({source})");
    };
    for (key, value) in new {
        let full = join(prefix, &key);
        let Some(slot) = existing.get_mut(&key) else {
            let mut known: Vec<&str> = existing.keys().map(String::as_str).collect();
            known.sort_unstable();
            bail!(
                "unknown config key `{full}` ({source}); keys of {}: {}",
                if prefix.is_empty() {
                    "the top level"
                } else {
                    prefix
                },
                known.join(", ")
            );
        };
        match (kind(slot), value) {
            (Kind::Dict, Value::Dict(_, sub)) => merge_dict(slot, sub, &full, source)?,
            (Kind::Dict, other) => bail!(
                "config key `{full}` is a section, but {source} gives it the {} value {}",
                kind(&other),
                show(&other)
            ),
            (_, other) => {
                *slot = coerce(slot, other, &full, source)?;
            }
        }
    }
    Ok(())
}

/// Checks `new` against the type of `old` and returns the value to store.
fn coerce(old: &Value, new: Value, key: &str, source: &Source) -> Result<Value> {
    let (ko, kn) = (kind(old), kind(&new));
    let mismatch = || {
        anyhow!(
            "type mismatch for config key `{key}` ({source}): the default {} is {ko}, got {kn} {}",
            show(old),
            show(&new)
        )
    };
    match (ko, kn) {
        (Kind::None, _) | (_, Kind::None) => Ok(new),
        (a, b) if a == b && a != Kind::List => Ok(new),
        (Kind::Str, Kind::Int) => new
            .to_i128()
            .map(|i| Value::from(i.to_string()))
            .ok_or_else(mismatch),
        (Kind::Float, Kind::Int) => Ok(Value::Num(
            Tag::Default,
            Num::F64(
                new.to_i128()
                    .map(|i| i as f64)
                    .or_else(|| new.to_u128().map(|u| u as f64))
                    .ok_or_else(mismatch)?,
            ),
        )),
        (Kind::List, Kind::List) => {
            let Value::Array(_, items) = new else {
                unreachable!()
            };
            // Elements must match the default's element type when the default has one.
            let template = match old {
                Value::Array(_, d) => d.first().cloned(),
                _ => None,
            };
            let items = match template {
                Some(t) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| coerce(&t, item, &format!("{key}[{i}]"), source))
                    .collect::<Result<Vec<_>>>()?,
                None => items,
            };
            Ok(Value::Array(Tag::Default, items))
        }
        _ => Err(mismatch()),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("'{s}'"),
        Value::Char(_, c) => format!("'{c}'"),
        Value::Bool(_, b) => if *b { "True" } else { "False" }.to_string(),
        Value::Num(_, n) => match n.to_f64() {
            Some(f) if matches!(n, Num::F32(_) | Num::F64(_)) => format!("{f:?}"),
            _ => n
                .to_i128()
                .map(|i| i.to_string())
                .or_else(|| n.to_u128().map(|u| u.to_string()))
                .unwrap_or_default(),
        },
        Value::Empty(..) => "None".to_string(),
        Value::Array(_, items) => {
            let inner: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Dict(..) => "{...}".to_string(),
    }
}

/// yacs decodes string values of a YAML file with `literal_eval` too.
fn decode_strings(v: Value) -> Value {
    match v {
        Value::String(_, s) => parse_literal(&s),
        Value::Array(t, items) => Value::Array(t, items.into_iter().map(decode_strings).collect()),
        Value::Dict(t, d) => Value::Dict(
            t,
            d.into_iter().map(|(k, v)| (k, decode_strings(v))).collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
    struct Solver {
        base_lr: f64,
        max_epochs: usize,
        lr_steps: Vec<usize>,
        optimizer_name: String,
        use_warmup_lr: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
    struct Datasets {
        names: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
    struct Cfg {
        solver: Solver,
        datasets: Datasets,
        gpu_ids: Vec<i64>,
        output_dir: String,
        pixel_mean: Vec<f64>,
    }

    impl Default for Cfg {
        fn default() -> Self {
            Self {
                solver: Solver {
                    base_lr: 1e-4,
                    max_epochs: 120,
                    lr_steps: vec![40, 70],
                    optimizer_name: "Adam".into(),
                    use_warmup_lr: true,
                },
                datasets: Datasets {
                    names: "market1501".into(),
                },
                gpu_ids: vec![0],
                output_dir: String::new(),
                pixel_mean: vec![0.485, 0.456, 0.406],
            }
        }
    }

    fn ov(pairs: &[&str]) -> Vec<String> {
        pairs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn yacs_merge_order_and_types() {
        let yaml =
            "SOLVER:\n  BASE_LR: 0.00035\n  MAX_EPOCHS: 10\nDATASETS:\n  NAMES: 'dukemtmcreid'\n";
        let cfg: Cfg = Builder::new()
            .yaml_str(yaml, Source::File("a.yml".into()))
            .unwrap()
            .overrides(&ov(&[
                "SOLVER.MAX_EPOCHS",
                "3",
                "GPU_IDS",
                "[0, 1]",
                "SOLVER.LR_STEPS",
                "(5, 8)",
                "DATASETS.NAMES",
                "'market1501'",
                "OUTPUT_DIR",
                "runs/x",
                "SOLVER.BASE_LR",
                "1",
            ]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(cfg.solver.base_lr, 1.0);
        assert_eq!(cfg.solver.max_epochs, 3);
        assert_eq!(cfg.solver.lr_steps, vec![5, 8]);
        assert_eq!(cfg.gpu_ids, vec![0, 1]);
        assert_eq!(cfg.datasets.names, "market1501");
        assert_eq!(cfg.output_dir, "runs/x");
        assert_eq!(cfg.solver.optimizer_name, "Adam");
    }

    #[test]
    fn string_keys_accept_quoted_and_bare() {
        for v in ["market1501", "'market1501'", "\"market1501\""] {
            let cfg: Cfg = load(None, &ov(&["DATASETS.NAMES", v])).unwrap();
            assert_eq!(cfg.datasets.names, "market1501");
        }
    }

    #[test]
    fn yaml_strings_are_literal_evaluated() {
        // PyYAML reads `1e-4` as a string; yacs then literal_evals it into a float.
        let yaml = "SOLVER:\n  BASE_LR: '1e-4'\n  LR_STEPS: '(3, 4)'\n";
        let cfg: Cfg = Builder::new()
            .yaml_str(yaml, Source::File("a.yml".into()))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(cfg.solver.base_lr, 1e-4);
        assert_eq!(cfg.solver.lr_steps, vec![3, 4]);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = load::<Cfg>(None, &ov(&["SOLVER.BASE_LRX", "0.1"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SOLVER.BASE_LRX") && msg.contains("command-line"),
            "{msg}"
        );
        let err = Builder::<Cfg>::new()
            .yaml_str("MODEL:\n  NAME: x\n", Source::File("my.yml".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`MODEL`") && err.contains("my.yml"), "{err}");
    }

    #[test]
    fn type_mismatches_are_rejected() {
        for (k, v) in [
            ("SOLVER.MAX_EPOCHS", "1.5"),
            ("SOLVER.USE_WARMUP_LR", "1"),
            ("SOLVER.BASE_LR", "fast"),
            ("GPU_IDS", "0"),
            ("SOLVER.LR_STEPS", "[1.5]"),
            ("DATASETS.NAMES", "[1]"),
            ("SOLVER", "3"),
        ] {
            let err = load::<Cfg>(None, &ov(&[k, v])).unwrap_err().to_string();
            assert!(err.contains(k), "{k} {v}: {err}");
        }
        // Values that pass the type check but not the typed struct name the key too.
        let err = load::<Cfg>(None, &ov(&["SOLVER.MAX_EPOCHS", "-3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`SOLVER.MAX_EPOCHS`") && !err.contains("config.rs"),
            "{err}"
        );
        // Ints widen into float lists.
        let cfg: Cfg = load(None, &ov(&["PIXEL_MEAN", "[0, 1, 0.5]"])).unwrap();
        assert_eq!(cfg.pixel_mean, vec![0.0, 1.0, 0.5]);
    }

    #[test]
    fn odd_override_list_is_an_error() {
        assert!(load::<Cfg>(None, &ov(&["SOLVER.BASE_LR"])).is_err());
    }

    #[test]
    fn dump_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let cfg: Cfg = load(None, &ov(&["SOLVER.MAX_EPOCHS", "7"])).unwrap();
        dump_yaml(&cfg, &path).unwrap();
        let back: Cfg = load(Some(&path), &[]).unwrap();
        assert_eq!(back, cfg);
    }
}
