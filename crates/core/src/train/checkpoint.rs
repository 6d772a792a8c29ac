//! Model files and training checkpoints.
//!
//! * A **model file** is a Burn record in the named-MessagePack format (what Burn's
//!   `NamedMpkFileRecorder` writes, full precision), written atomically. [`load_module`] checks
//!   that every parameter has the shape the receiving module expects, so a file of another
//!   architecture is an error that names the parameter, never a silent mis-load.
//! * A **checkpoint** (`*.ckpt`) bundles everything a resumed run needs in one file: the model
//!   record, the optimiser/scheduler record, optionally the early-stopping best weights, and a JSON
//!   header with the epoch, step, seed and callback states. Layout: the magic line `KILNCKPT1\n`,
//!   a little-endian `u64` header length, the JSON header, then the sections it lists. One file
//!   and one atomic rename per checkpoint, so a crash never leaves a partial checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::files::io::write_atomic_with;

type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Encodes a record in Burn's named-MessagePack format.
pub fn record_to_bytes<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>> {
    Recorder::<B>::record(&Rec::default(), record, ()).context("cannot encode record")
}

/// Decodes a record written by [`record_to_bytes`].
pub fn record_from_bytes<B: Backend, R: Record<B>>(
    bytes: Vec<u8>,
    device: &B::Device,
) -> Result<R> {
    Recorder::<B>::load(&Rec::default(), bytes, device).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Parameter paths and shapes of a module, in visiting order.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl Shapes {
        fn push(&mut self, dims: Vec<usize>) {
            self.out.push((self.path.join("."), dims));
        }
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.push(param.val().dims().to_vec());
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.push(param.val().dims().to_vec());
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
            self.push(param.val().dims().to_vec());
        }
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Paths of the float tensors of a module that require a gradient, in visiting order: what an
/// optimiser steps and a data-parallel run averages. Frozen parameters and BatchNorm running
/// statistics are not among them.
pub fn trainable_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    struct Trainable {
        path: Vec<String>,
        out: Vec<String>,
    }
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.out.push(self.path.join("."));
            }
        }
    }
    let mut v = Trainable {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Number of learnable values, as PyTorch's `sum(p.numel() for p in model.parameters())` counts
/// them: BatchNorm running statistics (`running_mean`, `running_var`) are buffers there, while
/// Burn's `num_params` includes them.
pub fn parameter_count<B: Backend, M: Module<B>>(module: &M) -> usize {
    param_shapes::<B, M>(module)
        .into_iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Initialises every lazily-initialised parameter now.
///
/// Burn initialises parameters on first use, and a clone of an uninitialised module initialises
/// independently with its own random draws. Call this right after building a model (with the
/// backend seeded) so that the weights are fixed once, before anything clones or saves them.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    let _ = param_shapes::<B, M>(&module);
    module
}

/// Loads `record` into `module`, failing (instead of mis-loading) when any parameter's shape
/// differs from what the module expects.
///
/// Which tensors train stays as `module` had it: a float tensor that required no gradient there
/// (a frozen parameter, a BatchNorm running statistic) is loaded outside the autodiff graph.
/// Burn's `RunningState` would otherwise take the loaded tensor as the record made it, marked
/// for a gradient and moved to the device by a recorded operation, so that every running
/// update of a resumed run chained onto the last.
pub fn load_checked<B: Backend, M: Module<B>>(
    module: M,
    record: M::Record,
    what: &str,
) -> Result<M> {
    struct Frozen(Vec<bool>);
    impl<B: Backend> ModuleVisitor<B> for Frozen {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(!param.val().is_require_grad());
        }
    }
    struct Untrack(std::vec::IntoIter<bool>);
    impl<B: Backend> ModuleMapper<B> for Untrack {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.0.next().unwrap_or(false) {
                param.map(|t| t.set_require_grad(false))
            } else {
                param
            }
        }
    }
    let expected = param_shapes::<B, M>(&module);
    let mut frozen = Frozen(Vec::new());
    module.visit(&mut frozen);
    let loaded = module
        .load_record(record)
        .map(&mut Untrack(frozen.0.into_iter()));
    let got = param_shapes::<B, M>(&loaded);
    if expected.len() != got.len() {
        bail!(
            "{what} holds {} parameter tensors, the model has {}: it was saved from another architecture",
            got.len(),
            expected.len()
        );
    }
    for ((name, want), (_, have)) in expected.iter().zip(&got) {
        if want != have {
            bail!(
                "{what}: parameter `{name}` has shape {have:?}, the model expects {want:?}: \
                 it was saved from another architecture or configuration"
            );
        }
    }
    Ok(loaded)
}

/// Writes a module's weights to `path` (Burn named-MessagePack record, atomic).
pub fn save_module<B: Backend, M: Module<B>>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    let bytes = record_to_bytes::<B, _>(module.clone().into_record())?;
    crate::files::io::write_atomic(path, &bytes)
}

/// Loads weights written by [`save_module`] into `module` (shapes are checked).
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<M> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let record = record_from_bytes::<B, M::Record>(bytes, device).with_context(|| {
        format!(
            "{} is not a weight file of this model (wrong architecture or not a Burn record)",
            path.display()
        )
    })?;
    load_checked(module, record, &path.display().to_string())
}

/// Sets `require_grad` on every float parameter of a module (freeze with `false`). BatchNorm
/// running statistics (the `running_mean` and `running_var` of kiln's and Burn's layers) are
/// buffers and stay out of the autodiff graph.
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, trainable: bool) -> M {
    struct Flag {
        trainable: bool,
        field: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Flag {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.field.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.field.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let running = self
                .field
                .last()
                .is_some_and(|f| f == "running_mean" || f == "running_var");
            param.set_require_grad(self.trainable && !running)
        }
    }
    module.map(&mut Flag {
        trainable,
        field: Vec::new(),
    })
}

/// The JSON header of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Number of epochs completed when the checkpoint was written.
    pub epochs_completed: usize,
    /// Optimiser steps taken.
    pub global_step: usize,
    /// The run's seed (every random stream derives from it and the epoch).
    pub seed: u64,
    /// Epoch-level metrics of the last completed epoch. JSON has no NaN or infinity: such
    /// values are written as `null` and read back as NaN.
    #[serde(deserialize_with = "nan_for_null")]
    pub metrics: BTreeMap<String, f64>,
    /// Callback states by callback name.
    pub callbacks: CallbackStates,
    /// Free-form task state (e.g. label maps).
    pub task: serde_json::Value,
    /// Names and lengths of the binary sections that follow the header.
    #[serde(default)]
    pub sections: Vec<(String, u64)>,
}

/// Reads a metrics map whose non-finite values JSON wrote as `null`.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// The callback states of a checkpoint, by [`Callback::name`](crate::train::callbacks::Callback::name)
/// (a JSON object in the header).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallbackStates(pub BTreeMap<String, serde_json::Value>);

impl CallbackStates {
    /// The state saved for the callback called `name`.
    ///
    /// A name with its configuration in brackets (`model_checkpoint[monitor=val_loss,…]`) that
    /// the checkpoint does not hold falls back to the state under the bare name before the
    /// bracket (`model_checkpoint`): checkpoints written before the name carried the
    /// configuration still resume.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0
            .get(name)
            .or_else(|| self.0.get(name.split_once('[')?.0))
    }
}

impl FromIterator<(String, serde_json::Value)> for CallbackStates {
    fn from_iter<I: IntoIterator<Item = (String, serde_json::Value)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl std::ops::Deref for CallbackStates {
    type Target = BTreeMap<String, serde_json::Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

const MAGIC: &[u8] = b"KILNCKPT1\n";

/// True when `path` starts like a kiln checkpoint (as opposed to, say, a PyTorch file).
pub fn is_checkpoint(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; MAGIC.len()];
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == head.len() && head == MAGIC)
}

/// Writes a checkpoint atomically: header plus named binary sections.
pub fn write_checkpoint(
    path: impl AsRef<Path>,
    mut meta: CheckpointMeta,
    sections: Vec<(&str, Vec<u8>)>,
) -> Result<()> {
    meta.sections = sections
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.len() as u64))
        .collect();
    let header = serde_json::to_vec(&meta)?;
    write_atomic_with(path, |file| {
        let mut w = std::io::BufWriter::new(file);
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, bytes) in &sections {
            w.write_all(bytes)?;
        }
        w.flush()?;
        Ok(())
    })
}

/// Reads a checkpoint written by [`write_checkpoint`].
pub fn read_checkpoint(
    path: impl AsRef<Path>,
) -> Result<(CheckpointMeta, BTreeMap<String, Vec<u8>>)> {
    let path = path.as_ref();
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{} is not a kiln checkpoint: {why}", path.display());
    if !data.starts_with(MAGIC) {
        return Err(bad("missing KILNCKPT header"));
    }
    let mut at = MAGIC.len();
    let len_bytes: [u8; 8] = data
        .get(at..at + 8)
        .ok_or_else(|| bad("truncated header"))?
        .try_into()
        .expect("8 bytes");
    at += 8;
    let header_len = u64::from_le_bytes(len_bytes) as usize;
    let header = data
        .get(at..at + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    at += header_len;
    let meta: CheckpointMeta =
        serde_json::from_slice(header).map_err(|e| bad(&format!("bad header ({e})")))?;
    let mut sections = BTreeMap::new();
    for (name, len) in &meta.sections {
        let len = *len as usize;
        let bytes = data
            .get(at..at + len)
            .ok_or_else(|| bad(&format!("section `{name}` is truncated")))?;
        sections.insert(name.clone(), bytes.to_vec());
        at += len;
    }
    if at != data.len() {
        return Err(bad("trailing bytes after the last section"));
    }
    Ok((meta, sections))
}

/// The float parameters of a record written by [`record_to_bytes`] (a checkpoint's `model`
/// section, a model file's weights), by path (`lstm.layers.0.weight_ih`), in the record's order,
/// as f32 values. Reads the record's structure, so no model needs to be built: for comparing two
/// runs' weights, or inspecting a file.
pub fn record_params(bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    let value: MpkValue = rmp_serde::from_slice(bytes).context("the record is not MessagePack")?;
    let MpkValue::Map(top) = value else {
        bail!("the record is not a map");
    };
    let item = top
        .into_iter()
        .find(|(k, _)| k == "item")
        .map(|(_, v)| v)
        .context("the record has no `item`")?;
    let mut out = Vec::new();
    collect_params(&item, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// [`record_params`] of a kiln checkpoint's `model` section.
pub fn checkpoint_params(path: impl AsRef<Path>) -> Result<Vec<(String, Vec<f32>)>> {
    let path = path.as_ref();
    let (_, sections) = read_checkpoint(path)?;
    let model = sections
        .get("model")
        .with_context(|| format!("checkpoint {} has no model section", path.display()))?;
    record_params(model).with_context(|| format!("reading the weights of {}", path.display()))
}

/// A MessagePack value, as much of it as a Burn record needs.
enum MpkValue {
    Map(Vec<(String, MpkValue)>),
    Seq(Vec<MpkValue>),
    Bytes(Vec<u8>),
    Str(String),
    Int(i64),
    Other,
}

impl<'de> serde::Deserialize<'de> for MpkValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MpkValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a MessagePack value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<MpkValue, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<MpkValue, MpkValue>()? {
                    let key = match k {
                        MpkValue::Str(s) => s,
                        MpkValue::Int(i) => i.to_string(),
                        _ => String::from("?"),
                    };
                    entries.push((key, v));
                }
                Ok(MpkValue::Map(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<MpkValue, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(MpkValue::Seq(items))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Bytes(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Str(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Int(v as i64))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Other)
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Other)
            }
            fn visit_unit<E>(self) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Other)
            }
            fn visit_none<E>(self) -> std::result::Result<MpkValue, E> {
                Ok(MpkValue::Other)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<MpkValue, D::Error> {
                serde::Deserialize::deserialize(d)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Walks a record item: a map with a `param` entry holding `bytes`, `shape` and `dtype` is a
/// float parameter (ints and bools are skipped).
fn collect_params(
    value: &MpkValue,
    path: &mut Vec<String>,
    out: &mut Vec<(String, Vec<f32>)>,
) -> Result<()> {
    match value {
        MpkValue::Map(entries) => {
            let field = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if let Some(MpkValue::Map(param)) = field("param") {
                let get = |name: &str| param.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                if let (Some(MpkValue::Bytes(bytes)), Some(MpkValue::Str(dtype))) =
                    (get("bytes"), get("dtype"))
                {
                    let values: Vec<f32> = match dtype.as_str() {
                        "F32" => bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                        "F64" => bytes
                            .chunks_exact(8)
                            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                            .collect(),
                        "F16" => bytes
                            .chunks_exact(2)
                            .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32())
                            .collect(),
                        "BF16" => bytes
                            .chunks_exact(2)
                            .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                            .collect(),
                        _ => return Ok(()),
                    };
                    out.push((path.join("."), values));
                }
                return Ok(());
            }
            for (k, v) in entries {
                path.push(k.clone());
                collect_params(v, path, out)?;
                path.pop();
            }
        }
        MpkValue::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                collect_params(v, path, out)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_container_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ckpt");
        let meta = CheckpointMeta {
            epochs_completed: 3,
            global_step: 30,
            seed: 9,
            metrics: [("val_loss".to_string(), 0.5)].into(),
            callbacks: [("early_stopping[val_loss]".to_string(), serde_json::json!(1))]
                .into_iter()
                .collect(),
            task: serde_json::json!({"labels": ["a", "b"]}),
            sections: vec![],
        };
        write_checkpoint(
            &path,
            meta,
            vec![("model", vec![1, 2, 3]), ("optim", vec![])],
        )
        .unwrap();
        let (m, s) = read_checkpoint(&path).unwrap();
        assert_eq!(m.epochs_completed, 3);
        assert_eq!(s["model"], vec![1, 2, 3]);
        assert!(s["optim"].is_empty());

        // A truncated file is rejected, not half-loaded.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = read_checkpoint(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_checkpoint(&path).is_err());
    }

    #[test]
    fn non_finite_metrics_round_trip_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nan.ckpt");
        let meta = CheckpointMeta {
            epochs_completed: 1,
            global_step: 1,
            seed: 1,
            metrics: [("a".to_string(), f64::NAN), ("b".to_string(), 2.0)].into(),
            callbacks: CallbackStates::default(),
            task: serde_json::Value::Null,
            sections: vec![],
        };
        write_checkpoint(&path, meta, vec![("model", vec![0])]).unwrap();
        let (m, _) = read_checkpoint(&path).unwrap();
        assert!(m.metrics["a"].is_nan());
        assert_eq!(m.metrics["b"], 2.0);
    }

    #[test]
    fn record_params_reads_every_float_tensor_by_path() {
        use burn::nn::{Linear, LinearConfig};
        type B = crate::backend::Flex;
        #[derive(Module, Debug)]
        struct Two<B: Backend> {
            first: Linear<B>,
            layers: Vec<Linear<B>>,
        }
        let device = Default::default();
        let m = materialize(Two::<B> {
            first: LinearConfig::new(2, 3).init(&device),
            layers: vec![LinearConfig::new(3, 1).with_bias(false).init(&device)],
        });
        let bytes = record_to_bytes::<B, _>(m.clone().into_record()).unwrap();
        let params = record_params(&bytes).unwrap();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["first.weight", "first.bias", "layers.0.weight"]);
        let w: Vec<f32> = m.first.weight.val().into_data().to_vec().unwrap();
        assert_eq!(params[0].1, w);
        assert_eq!(params[2].1.len(), 3);
        assert!(record_params(b"not a record").is_err());
    }

    /// A callback's own key first; a bracketed name missing from the checkpoint falls back to
    /// its bare name (the key of checkpoints written before names carried a configuration),
    /// never to another callback's state. The header keeps its JSON object.
    #[test]
    fn callback_states_fall_back_to_the_bare_name() {
        use serde_json::json;
        let old: CallbackStates =
            serde_json::from_str(r#"{"model_checkpoint": [1], "early_stopping[val_loss]": 2}"#)
                .unwrap();
        assert_eq!(
            old.get("model_checkpoint[monitor=val_loss]"),
            Some(&json!([1]))
        );
        assert_eq!(old.get("early_stopping[val_loss]"), Some(&json!(2)));
        assert_eq!(old.get("early_stopping[val_acc]"), None);
        assert_eq!(old.get("other"), None);
        let new: CallbackStates = [
            ("model_checkpoint[last]".to_string(), json!(3)),
            ("model_checkpoint".to_string(), json!(0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(new.get("model_checkpoint[last]"), Some(&json!(3)));
        assert_eq!(
            serde_json::to_value(&new).unwrap(),
            json!({"model_checkpoint": 0, "model_checkpoint[last]": 3})
        );
    }
}
