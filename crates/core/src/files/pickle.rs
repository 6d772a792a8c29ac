//! A tolerant pickle reader that executes nothing: the low-level unpickler of [`crate::files::torch`],
//! which reads PyTorch zip checkpoints (`torch.save` since PyTorch 1.6) that burn-store's reader
//! rejects, and the metadata of every checkpoint.
//!
//! burn-store's pickle reader needs every object in the file to be a plain container or a tensor.
//! A PyTorch-Lightning checkpoint of the reference holds more: its `hyper_parameters` are yacs
//! `CfgNode` objects (dict subclasses, pickled as `NEWOBJ` + `SETITEMS` + `BUILD`), the
//! scheduler state holds a `collections.Counter`, and the callback states are keyed by a class;
//! a classifier checkpoint written after `fit` on NumPy arrays holds NumPy scalars (`np.str_`
//! labels, `np.int64` counts) and `numpy.dtype` objects.
//! This module runs the pickle program with a small stack machine that keeps any object it does
//! not know as an opaque [`PyValue::Object`] (class, constructor arguments, state, dict and list
//! items), and interprets a few calls:
//!
//! * `torch._utils._rebuild_tensor_v2` (and the parameter wrappers) → [`TensorRef`], whose bytes
//!   are read from the archive's `data/<key>` entries (through burn-store's [`LazyDataSource`]);
//! * `collections.OrderedDict` → [`PyValue::Dict`];
//! * NumPy scalars, `numpy.core.multiarray.scalar(dtype, bytes)` (NumPy 2:
//!   `numpy._core.multiarray.scalar`), of kind `U` → [`PyValue::Str`] (trailing NULs stripped),
//!   `S` → [`PyValue::Bytes`], `i`/`u` → [`PyValue::Int`], `f` → [`PyValue::Float`], `b` →
//!   [`PyValue::Bool`]; the byte order comes from the dtype's `BUILD` state (`<`, `>`, `|`) and
//!   is little-endian when the state is absent. Other NumPy objects (arrays rebuilt by
//!   `numpy.core.multiarray._reconstruct`, dtypes) stay opaque objects;
//! * protocol 2's `_codecs.encode(text, 'latin1')` and `bytes()` → [`PyValue::Bytes`], `set(…)`
//!   → [`PyValue::List`].
//!
//! Memoised objects are values, not references: the memo keeps a copy, which is refreshed each
//! time the object is mutated (`BUILD`, `SETITEM(S)`, `APPEND(S)`) while it is the top of the
//! stack — how pickle fills every object — so a later `GET` sees the finished object.
//!
//! Limitations: self-referencing objects are not supported (a reference to an object still being
//! built reads as it was then); the text-mode opcodes of pickle protocol 0 and out-of-band
//! buffers are rejected with a clear error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{DType, TensorData};
use burn_store::pytorch::lazy_data::LazyDataSource;

/// A Python value from a pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (that fits 64 bits; larger ones are rejected).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes` / `bytearray`.
    Bytes(Vec<u8>),
    /// `list` or `set`.
    List(Vec<PyValue>),
    /// `tuple` or `frozenset`.
    Tuple(Vec<PyValue>),
    /// `dict` or `OrderedDict`, in insertion order.
    Dict(Vec<(PyValue, PyValue)>),
    /// A class or function reference (`module.name`).
    Global {
        /// Module path.
        module: String,
        /// Qualified name.
        name: String,
    },
    /// An instance of a class this reader does not interpret.
    Object {
        /// The class (usually a [`PyValue::Global`]).
        class: Box<PyValue>,
        /// Constructor arguments.
        args: Box<PyValue>,
        /// `__setstate__` / `__dict__` state (`BUILD`).
        state: Option<Box<PyValue>>,
        /// Items set on it (dict subclasses).
        items: Vec<(PyValue, PyValue)>,
        /// Items appended to it (list subclasses).
        list: Vec<PyValue>,
    },
    /// A storage (persistent id `('storage', type, key, location, numel)`).
    Storage {
        /// Entry name under `data/`.
        key: String,
        /// Element type.
        dtype: DType,
    },
    /// A tensor view of a storage.
    Tensor(TensorRef),
}

/// Where a tensor's elements live.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Storage entry name under `data/`.
    pub storage: String,
    /// Element type.
    pub dtype: DType,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

impl PyValue {
    /// The value under string key `key` of a dict, or of a dict-subclass object.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        self.entries()?
            .iter()
            .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// The entries of a dict or dict-subclass object.
    pub fn entries(&self) -> Option<&[(PyValue, PyValue)]> {
        match self {
            PyValue::Dict(items) => Some(items),
            PyValue::Object { items, .. } => Some(items),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one (bools are not integers here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is an int or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(i) => Some(*i as f64),
            PyValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            PyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The Python type of this value, in words (`"str"`, `"dict"`, `"object"`...), for messages.
    pub fn type_name(&self) -> &'static str {
        kind(self)
    }

    /// Every tensor of a (nested) dict, with dotted keys, in file order.
    pub fn tensors(&self) -> Vec<(String, &TensorRef)> {
        fn walk<'a>(value: &'a PyValue, prefix: &str, out: &mut Vec<(String, &'a TensorRef)>) {
            match value {
                PyValue::Tensor(t) => out.push((prefix.to_string(), t)),
                PyValue::Dict(_) | PyValue::Object { .. } => {
                    for (k, v) in value.entries().unwrap_or_default() {
                        let key = match k {
                            PyValue::Str(s) => s.clone(),
                            PyValue::Int(i) => i.to_string(),
                            _ => continue,
                        };
                        let path = if prefix.is_empty() {
                            key
                        } else {
                            format!("{prefix}.{key}")
                        };
                        walk(v, &path, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, "", &mut out);
        out
    }
}

/// A PyTorch zip checkpoint: the unpickled root object and access to its storages.
pub struct TorchZip {
    path: PathBuf,
    source: LazyDataSource,
    prefix: String,
    /// The unpickled `data.pkl`.
    pub root: PyValue,
}

impl TorchZip {
    /// Opens a zip-format PyTorch file and unpickles its `data.pkl`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = LazyDataSource::from_zip(path)
            .with_context(|| format!("{} is not a zip-format PyTorch file", path.display()))?;
        // Entries are `<archive>/data.pkl` and `<archive>/data/<key>`; the archive name is the
        // file stem at save time, so take it from a data entry when there is one.
        let mut candidates: Vec<String> = source
            .keys()
            .iter()
            .filter_map(|k| k.rfind("data/").map(|i| k[..i].to_string()))
            .take(1)
            .collect();
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            candidates.push(format!("{stem}/"));
        }
        candidates.extend(["archive/".to_string(), String::new()]);
        let (prefix, pickle) = candidates
            .into_iter()
            .find_map(|prefix| {
                source
                    .read(&format!("{prefix}data.pkl"))
                    .ok()
                    .map(|bytes| (prefix, bytes))
            })
            .ok_or_else(|| anyhow!("{}: no data.pkl in the zip archive", path.display()))?;
        let root = parse(&pickle)
            .with_context(|| format!("cannot unpickle {}/{prefix}data.pkl", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            source,
            prefix,
            root,
        })
    }

    /// Reads a tensor's elements as `f32` (any stored dtype is converted).
    pub fn read_f32(&self, tensor: &TensorRef) -> Result<TensorData> {
        let entry = format!("{}data/{}", self.prefix, tensor.storage);
        let bytes = self
            .source
            .read(&entry)
            .with_context(|| format!("{}: cannot read storage {entry}", self.path.display()))?;
        gather(&bytes, tensor)
            .map(|data| data.convert::<f32>())
            .with_context(|| format!("{}: bad tensor in storage {entry}", self.path.display()))
    }
}

/// Copies a (possibly strided) view out of its storage bytes into a contiguous [`TensorData`].
fn gather(storage: &[u8], t: &TensorRef) -> Result<TensorData> {
    let size = t.dtype.size();
    if t.shape.len() != t.stride.len() {
        bail!(
            "shape {:?} and stride {:?} differ in rank",
            t.shape,
            t.stride
        );
    }
    let numel: usize = t.shape.iter().product();
    let mut out = Vec::with_capacity(numel * size);
    if numel > 0 {
        // Largest element index touched, to bounds-check once.
        let last = t.offset
            + t.shape
                .iter()
                .zip(&t.stride)
                .map(|(d, s)| (d - 1) * s)
                .sum::<usize>();
        if (last + 1) * size > storage.len() {
            bail!(
                "view (offset {}, shape {:?}, stride {:?}) exceeds the storage's {} bytes",
                t.offset,
                t.shape,
                t.stride,
                storage.len()
            );
        }
        let contiguous = t
            .shape
            .iter()
            .zip(&t.stride)
            .rev()
            .try_fold(1usize, |expected, (&d, &s)| {
                (d == 1 || s == expected).then_some(expected * d)
            })
            .is_some();
        if contiguous {
            out.extend_from_slice(&storage[t.offset * size..(t.offset + numel) * size]);
        } else {
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let at = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend_from_slice(&storage[at * size..(at + 1) * size]);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    Ok(TensorData::from_bytes_vec(out, t.shape.clone(), t.dtype))
}

/// The element type of a `torch.<Name>Storage` class (or a `torch.<dtype>` for newer files).
fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" | "float32" => DType::F32,
        "DoubleStorage" | "float64" => DType::F64,
        "HalfStorage" | "float16" => DType::F16,
        "BFloat16Storage" | "bfloat16" => DType::BF16,
        "LongStorage" | "int64" => DType::I64,
        "IntStorage" | "int32" => DType::I32,
        "ShortStorage" | "int16" => DType::I16,
        "CharStorage" | "int8" => DType::I8,
        "ByteStorage" | "uint8" => DType::U8,
        "BoolStorage" | "bool" => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

/// Runs a pickle program and returns the object it builds.
pub fn parse(bytes: &[u8]) -> Result<PyValue> {
    Machine::new(bytes).run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<PyValue>,
    marks: Vec<usize>,
    memo: HashMap<u32, PyValue>,
    /// `(stack index, memo id)` of the live stack entries that are memoised: mutations of such an
    /// entry (`BUILD`, `SETITEM(S)`, `APPEND(S)`) are copied to its memo slot, so that a later
    /// `GET` sees the finished object, as Python's shared references do.
    memo_at: Vec<(usize, u32)>,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            memo_at: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| anyhow!("truncated pickle at byte {}", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.take(8)?.try_into()?);
        usize::try_from(n).map_err(|_| anyhow!("length {n} too large"))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("unterminated text argument at byte {}", self.pos))?;
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| anyhow!("non-UTF-8 text argument at byte {}", self.pos))?;
        self.pos += end + 1;
        Ok(line)
    }

    fn string(&mut self, len: usize) -> Result<PyValue> {
        let raw = self.take(len)?;
        Ok(PyValue::Str(
            String::from_utf8(raw.to_vec()).map_err(|_| anyhow!("invalid UTF-8 string"))?,
        ))
    }

    fn pop(&mut self) -> Result<PyValue> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("stack underflow (pop past a mark) at byte {}", self.pos);
        }
        let v = self
            .stack
            .pop()
            .ok_or_else(|| anyhow!("stack underflow at byte {}", self.pos))?;
        self.forget_popped();
        Ok(v)
    }

    /// Drops the memo links of entries no longer on the stack.
    fn forget_popped(&mut self) {
        let len = self.stack.len();
        self.memo_at.retain(|&(i, _)| i < len);
    }

    /// Records that the top of the stack is memo entry `id`.
    fn memoise_top(&mut self, id: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        self.memo_at.push((self.stack.len() - 1, id));
        Ok(())
    }

    /// Copies the (just mutated) top of the stack to the memo entries it was stored as.
    fn sync_top(&mut self) {
        let Some(top) = self.stack.len().checked_sub(1) else {
            return;
        };
        for &(i, id) in &self.memo_at {
            if i == top {
                self.memo.insert(id, self.stack[top].clone());
            }
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<PyValue>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK on the stack at byte {}", self.pos))?;
        let items = self.stack.split_off(mark);
        self.forget_popped();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut PyValue> {
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("empty stack at byte {}", self.pos))
    }

    fn run(mut self) -> Result<PyValue> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("unsupported pickle protocol {proto}");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length hint only
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b')' => self.stack.push(PyValue::Tuple(Vec::new())),
                b']' => self.stack.push(PyValue::List(Vec::new())),
                b'}' => self.stack.push(PyValue::Dict(Vec::new())),
                0x8f => self.stack.push(PyValue::List(Vec::new())), // EMPTY_SET
                b'N' => self.stack.push(PyValue::None),
                0x88 => self.stack.push(PyValue::Bool(true)),
                0x89 => self.stack.push(PyValue::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.stack.push(PyValue::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(PyValue::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(PyValue::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let raw = self.take(n)?;
                    if n > 8 {
                        bail!("integer of {n} bytes at byte {at} does not fit 64 bits");
                    }
                    let fill = if raw.last().is_some_and(|&b| b & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut buf = [fill; 8];
                    buf[..n].copy_from_slice(raw);
                    self.stack.push(PyValue::Int(i64::from_le_bytes(buf)));
                }
                b'I' | b'L' => {
                    let text = self.line()?.trim_end_matches('L');
                    let value = match text {
                        "00" => PyValue::Bool(false),
                        "01" => PyValue::Bool(true),
                        t => PyValue::Int(t.parse().map_err(|_| anyhow!("bad integer `{t}`"))?),
                    };
                    self.stack.push(value);
                }
                b'F' => {
                    let t = self.line()?;
                    self.stack.push(PyValue::Float(
                        t.parse().map_err(|_| anyhow!("bad float `{t}`"))?,
                    ));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.stack.push(PyValue::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                b'U' | b'T' => {
                    // SHORT_BINSTRING / BINSTRING (protocol 2 `str` of Python 2): latin-1.
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let raw = self.take(n)?;
                    self.stack
                        .push(PyValue::Str(raw.iter().map(|&b| b as char).collect()));
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64()?,
                    };
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(PyValue::Bytes(raw));
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.stack.push(PyValue::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (PyValue::Str(module), PyValue::Str(name)) => {
                            self.stack.push(PyValue::Global { module, name })
                        }
                        _ => bail!("STACK_GLOBAL needs two strings at byte {at}"),
                    }
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("stack underflow at byte {at}");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.forget_popped();
                    self.stack.push(PyValue::Tuple(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PyValue::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PyValue::List(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(PyValue::Tuple(items)); // FROZENSET
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    self.stack.push(PyValue::Dict(pairs));
                }
                b'a' => {
                    let v = self.pop()?;
                    append(self.top()?, vec![v], at)?;
                    self.sync_top();
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    append(self.top()?, items, at)?;
                    self.sync_top();
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![(k, v)], at)?;
                    self.sync_top();
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    set_items(self.top()?, pairs, at)?;
                    self.sync_top();
                }
                b'q' => {
                    let i = self.u8()?.into();
                    self.memoise_top(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memoise_top(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len())?;
                    self.memoise_top(i)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()?.into()
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| anyhow!("memo entry {i} missing at byte {at}"))?;
                    self.stack.push(v);
                    self.memo_at.push((self.stack.len() - 1, i));
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid, at)?);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(reduce(callable, args, at)?);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(object(class, args));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(object(class, args));
                }
                b'b' => {
                    let state = self.pop()?;
                    // A plain dict's BUILD state (OrderedDict's `_metadata`) and a tensor's
                    // state carry nothing this reader needs.
                    if let PyValue::Object { state: slot, .. } = self.top()? {
                        *slot = Some(Box::new(state));
                        self.sync_top();
                    }
                }
                other => bail!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at} (text-mode pickle or \
                     out-of-band buffers)"
                ),
            }
        }
    }
}

fn pairs(items: Vec<PyValue>, at: usize) -> Result<Vec<(PyValue, PyValue)>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of dict items at byte {at}");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut PyValue, items: Vec<PyValue>, at: usize) -> Result<()> {
    match target {
        PyValue::List(list) | PyValue::Object { list, .. } => list.extend(items),
        other => bail!("APPEND onto a non-list ({}) at byte {at}", kind(other)),
    }
    Ok(())
}

fn set_items(target: &mut PyValue, new: Vec<(PyValue, PyValue)>, at: usize) -> Result<()> {
    match target {
        PyValue::Dict(items) | PyValue::Object { items, .. } => {
            for (k, v) in new {
                match items.iter_mut().find(|(key, _)| *key == k) {
                    Some(slot) => slot.1 = v,
                    None => items.push((k, v)),
                }
            }
        }
        other => bail!("SETITEM onto a non-dict ({}) at byte {at}", kind(other)),
    }
    Ok(())
}

fn kind(v: &PyValue) -> &'static str {
    match v {
        PyValue::None => "None",
        PyValue::Bool(_) => "bool",
        PyValue::Int(_) => "int",
        PyValue::Float(_) => "float",
        PyValue::Str(_) => "str",
        PyValue::Bytes(_) => "bytes",
        PyValue::List(_) => "list",
        PyValue::Tuple(_) => "tuple",
        PyValue::Dict(_) => "dict",
        PyValue::Global { .. } => "class",
        PyValue::Object { .. } => "object",
        PyValue::Storage { .. } => "storage",
        PyValue::Tensor(_) => "tensor",
    }
}

fn object(class: PyValue, args: PyValue) -> PyValue {
    PyValue::Object {
        class: Box::new(class),
        args: Box::new(args),
        state: None,
        items: Vec::new(),
        list: Vec::new(),
    }
}

/// `BINPERSID`: PyTorch's `('storage', storage_type, key, location, numel)`.
fn persistent(pid: PyValue, at: usize) -> Result<PyValue> {
    let PyValue::Tuple(parts) = &pid else {
        bail!("persistent id at byte {at} is not a tuple");
    };
    match parts.as_slice() {
        [PyValue::Str(tag), class, PyValue::Str(key), ..] if tag == "storage" => {
            let name = match class {
                PyValue::Global { name, .. } => name.as_str(),
                _ => bail!("storage type at byte {at} is not a class"),
            };
            let dtype = storage_dtype(name)
                .ok_or_else(|| anyhow!("unsupported storage type torch.{name} at byte {at}"))?;
            Ok(PyValue::Storage {
                key: key.clone(),
                dtype,
            })
        }
        _ => bail!("unsupported persistent id at byte {at}: {pid:?}"),
    }
}

fn usize_tuple(v: &PyValue, what: &str) -> Result<Vec<usize>> {
    let (PyValue::Tuple(items) | PyValue::List(items)) = v else {
        bail!("tensor {what} is not a tuple");
    };
    items
        .iter()
        .map(|x| match x {
            PyValue::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("negative tensor {what}")),
            _ => bail!("tensor {what} holds a non-integer"),
        })
        .collect()
}

/// `REDUCE`: tensor rebuilds and OrderedDicts are interpreted, anything else is kept opaque.
fn reduce(callable: PyValue, args: PyValue, at: usize) -> Result<PyValue> {
    let PyValue::Global { module, name } = &callable else {
        return Ok(object(callable, args));
    };
    let arg_list = match &args {
        PyValue::Tuple(items) => items.as_slice(),
        _ => &[],
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [storage, offset, shape, stride, ..] = arg_list else {
                bail!(
                    "{module}.{name} with {} arguments at byte {at}",
                    arg_list.len()
                );
            };
            let PyValue::Storage { key, dtype } = storage else {
                bail!("{module}.{name} without a storage at byte {at}");
            };
            let offset = match offset {
                PyValue::Int(i) => usize::try_from(*i)?,
                _ => bail!("tensor offset is not an integer at byte {at}"),
            };
            Ok(PyValue::Tensor(TensorRef {
                storage: key.clone(),
                dtype: *dtype,
                offset,
                shape: usize_tuple(shape, "shape")?,
                stride: usize_tuple(stride, "stride")?,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => arg_list
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("{module}.{name} without arguments at byte {at}")),
        ("torch._tensor", "_rebuild_from_type_v2") => match arg_list {
            [func, _type, inner_args, ..] => reduce(func.clone(), inner_args.clone(), at),
            _ => bail!(
                "{module}.{name} with {} arguments at byte {at}",
                arg_list.len()
            ),
        },
        ("collections", "OrderedDict") => {
            let mut dict = PyValue::Dict(Vec::new());
            if let Some(PyValue::List(items)) = arg_list.first() {
                let mut new = Vec::new();
                for item in items {
                    if let PyValue::Tuple(kv) | PyValue::List(kv) = item
                        && let [k, v] = kv.as_slice()
                    {
                        new.push((k.clone(), v.clone()));
                    }
                }
                set_items(&mut dict, new, at)?;
            }
            Ok(dict)
        }
        // Protocol 2 writes `bytes` as `_codecs.encode(latin-1 text, 'latin1')`, empty ones as
        // `bytes()`, and sets as `set([items])`.
        ("_codecs", "encode") => match arg_list {
            [PyValue::Str(text), PyValue::Str(encoding)]
                if matches!(encoding.as_str(), "latin1" | "latin-1" | "iso-8859-1") =>
            {
                match text.chars().map(|c| u8::try_from(u32::from(c))).collect() {
                    Ok(bytes) => Ok(PyValue::Bytes(bytes)),
                    Err(_) => Ok(object(callable, args)),
                }
            }
            _ => Ok(object(callable, args)),
        },
        ("__builtin__" | "builtins", "bytes" | "bytearray") => match arg_list {
            [] => Ok(PyValue::Bytes(Vec::new())),
            [PyValue::Bytes(b)] => Ok(PyValue::Bytes(b.clone())),
            _ => Ok(object(callable, args)),
        },
        ("__builtin__" | "builtins", "set" | "frozenset") => match arg_list {
            [] => Ok(PyValue::List(Vec::new())),
            [PyValue::List(items) | PyValue::Tuple(items)] => Ok(PyValue::List(items.clone())),
            _ => Ok(object(callable, args)),
        },
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => match arg_list {
            [dtype, PyValue::Bytes(data)] => {
                Ok(numpy_scalar(dtype, data).unwrap_or_else(|| object(callable, args)))
            }
            _ => Ok(object(callable, args)),
        },
        _ => Ok(object(callable, args)),
    }
}

/// A NumPy scalar (`numpy.core.multiarray.scalar(dtype, bytes)`) as a plain value, or `None`
/// when its dtype is not one of `U` (str), `S` (bytes), `i`/`u` (int), `f` (float), `b` (bool).
///
/// The dtype is a `numpy.dtype(descr, align, copy)` object; its `BUILD` state
/// `(version, byte order, …)` gives the byte order (`<` little, `>` big, `|` not applicable).
/// Without a state (or with `=`) little-endian is assumed, like every platform PyTorch runs on.
fn numpy_scalar(dtype: &PyValue, data: &[u8]) -> Option<PyValue> {
    let PyValue::Object {
        class, args, state, ..
    } = dtype
    else {
        return None;
    };
    if !matches!(&**class, PyValue::Global { module, name } if module == "numpy" && name == "dtype")
    {
        return None;
    }
    let descr = match &**args {
        PyValue::Tuple(items) | PyValue::List(items) => items.first()?.as_str()?,
        _ => return None,
    };
    let state_order = match state.as_deref() {
        Some(PyValue::Tuple(items)) => items.get(1).and_then(PyValue::as_str),
        _ => None,
    };
    let (descr_order, descr) = match descr.chars().next()? {
        c @ ('<' | '>' | '|' | '=') => (Some(c), &descr[1..]),
        _ => (None, descr),
    };
    let big = descr_order == Some('>') || (descr_order.is_none() && state_order == Some(">"));
    let kind = descr.chars().next()?;
    // Bytes per item; a `U` descr counts UCS-4 characters.
    let size: usize = descr[kind.len_utf8()..].parse().ok()?;
    let size = if kind == 'U' { size * 4 } else { size };
    if data.len() != size {
        return None;
    }
    // The value's bytes, most significant last.
    let mut le = data.to_vec();
    if big && kind != 'U' && kind != 'S' {
        le.reverse();
    }
    Some(match (kind, size) {
        ('U', _) => {
            let text: Option<String> = data
                .chunks_exact(4)
                .map(|c| {
                    let c: [u8; 4] = c.try_into().ok()?;
                    let code = if big {
                        u32::from_be_bytes(c)
                    } else {
                        u32::from_le_bytes(c)
                    };
                    char::from_u32(code)
                })
                .collect();
            PyValue::Str(text?.trim_end_matches('\0').to_string())
        }
        ('S', _) => {
            let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            PyValue::Bytes(data[..end].to_vec())
        }
        ('b', 1) => PyValue::Bool(data[0] != 0),
        ('i', 1 | 2 | 4 | 8) => {
            let fill = if le[size - 1] & 0x80 != 0 { 0xff } else { 0 };
            let mut buf = [fill; 8];
            buf[..size].copy_from_slice(&le);
            PyValue::Int(i64::from_le_bytes(buf))
        }
        ('u', 1 | 2 | 4 | 8) => {
            let mut buf = [0; 8];
            buf[..size].copy_from_slice(&le);
            PyValue::Int(i64::try_from(u64::from_le_bytes(buf)).ok()?)
        }
        ('f', 2) => PyValue::Float(burn::tensor::f16::from_le_bytes(le.try_into().ok()?).to_f64()),
        ('f', 4) => PyValue::Float(f32::from_le_bytes(le.try_into().ok()?).into()),
        ('f', 8) => PyValue::Float(f64::from_le_bytes(le.try_into().ok()?)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containers_and_dict_subclasses() {
        // pickle.dumps({'a': [1, -2, 3.5], 'b': Node(x='y')}, protocol=2) with
        // `class Node(dict)` in module `m` carrying __dict__ {'f': False}:
        // hand-assembled opcode stream.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend([b'X', 1, 0, 0, 0, b'a', b']', b'(', b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(3.5f64.to_be_bytes());
        p.extend([b'e', b'X', 1, 0, 0, 0, b'b']);
        p.extend(b"cm\nNode\n");
        p.extend([
            b')', 0x81, b'(', b'X', 1, 0, 0, 0, b'x', b'X', 1, 0, 0, 0, b'y', b'u',
        ]);
        p.extend([b'}', b'X', 1, 0, 0, 0, b'f', 0x89, b's', b'b', b'u', b'.']);
        let v = parse(&p).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&PyValue::List(vec![
                PyValue::Int(1),
                PyValue::Int(-2),
                PyValue::Float(3.5)
            ]))
        );
        let node = v.get("b").unwrap();
        assert_eq!(node.get("x").and_then(PyValue::as_str), Some("y"));
        let PyValue::Object { class, state, .. } = node else {
            panic!("{node:?}")
        };
        assert_eq!(
            **class,
            PyValue::Global {
                module: "m".into(),
                name: "Node".into()
            }
        );
        assert!(state.is_some());
    }

    /// `pickle.dumps({np.str_('up'): 0}, protocol=2)` (NumPy 2, `pickletools.optimize`d): a
    /// label map of a reference checkpoint written after `fit` on NumPy arrays.
    const NUMPY_STR_KEY: &[u8] = b"\x80\x02}cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00U2\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNK\x08K\x04K\x08tbc_codecs\nencode\nX\x08\x00\x00\x00u\x00\x00\x00p\x00\x00\x00X\x06\x00\x00\x00latin1\x86R\x86RK\x00s.";

    /// `pickle.dumps([np.int64(-5), np.float64(2.5), np.int64(7)], protocol=2)` (optimised): the
    /// second `int64` reuses the memoised dtype object, whose `BUILD` came after it was memoised.
    const NUMPY_NUMBERS: &[u8] = b"\x80\x02](cnumpy._core.multiarray\nscalar\nq\x00cnumpy\ndtype\nq\x01X\x02\x00\x00\x00i8\x89\x88\x87Rq\x02(K\x03X\x01\x00\x00\x00<q\x03NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbc_codecs\nencode\nq\x04X\x10\x00\x00\x00\xc3\xbb\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbfX\x06\x00\x00\x00latin1q\x05\x86R\x86Rh\x00h\x01X\x02\x00\x00\x00f8\x89\x88\x87R(K\x03h\x03NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbh\x04X\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04@h\x05\x86R\x86Rh\x00h\x02h\x04X\x08\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00h\x05\x86R\x86Re.";

    /// `np.int32(258)` with its dtype's byte order edited to big-endian (`>`, bytes `00 00 01 02`).
    const NUMPY_BIG_ENDIAN: &[u8] = b"\x80\x02cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00i4\x89\x88\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbc_codecs\nencode\nX\x04\x00\x00\x00\x00\x00\x01\x02X\x06\x00\x00\x00latin1\x86R\x86R.";

    /// `pickle.dumps(np.array(['a', 'bb']), protocol=2)` (optimised).
    const NUMPY_ARRAY: &[u8] = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85c_codecs\nencode\nq\x00X\x01\x00\x00\x00bX\x06\x00\x00\x00latin1q\x01\x86R\x87R(K\x01K\x02\x85cnumpy\ndtype\nX\x02\x00\x00\x00U2\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNK\x08K\x04K\x08tb\x89h\x00X\x10\x00\x00\x00a\x00\x00\x00\x00\x00\x00\x00b\x00\x00\x00b\x00\x00\x00h\x01\x86Rtb.";

    /// `[np.bool_(True), np.bytes_(b'ab'), np.float32(1.5), np.uint8(200)]` (optimised).
    const NUMPY_OTHERS: &[u8] = b"\x80\x02](cnumpy._core.multiarray\nscalar\nq\x00cnumpy\ndtype\nq\x01X\x02\x00\x00\x00b1\x89\x88\x87R(K\x03X\x01\x00\x00\x00|q\x02NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbc_codecs\nencode\nq\x03X\x01\x00\x00\x00\x01X\x06\x00\x00\x00latin1q\x04\x86R\x86Rh\x00h\x01X\x02\x00\x00\x00S2\x89\x88\x87R(K\x03h\x02NNNK\x02K\x01K\x00tbh\x03X\x02\x00\x00\x00abh\x04\x86R\x86Rh\x00h\x01X\x02\x00\x00\x00f4\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbh\x03X\x05\x00\x00\x00\x00\x00\xc3\x80?h\x04\x86R\x86Rh\x00h\x01X\x02\x00\x00\x00u1\x89\x88\x87R(K\x03h\x02NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbh\x03X\x02\x00\x00\x00\xc3\x88h\x04\x86R\x86Re.";

    #[test]
    fn numpy_str_keys_become_plain_strings() {
        let v = parse(NUMPY_STR_KEY).unwrap();
        assert_eq!(
            v,
            PyValue::Dict(vec![(PyValue::Str("up".into()), PyValue::Int(0))])
        );
        assert_eq!(v.get("up"), Some(&PyValue::Int(0)));
        // NumPy 1.x writes `numpy.core.multiarray.scalar`.
        let at = NUMPY_STR_KEY
            .windows(12)
            .position(|w| w == b"numpy._core.")
            .unwrap();
        let mut old = NUMPY_STR_KEY[..at].to_vec();
        old.extend_from_slice(b"numpy.core.");
        old.extend_from_slice(&NUMPY_STR_KEY[at + 12..]);
        let v = parse(&old).unwrap();
        assert_eq!(v.get("up"), Some(&PyValue::Int(0)));
    }

    #[test]
    fn numpy_numbers_become_plain_numbers() {
        assert_eq!(
            parse(NUMPY_NUMBERS).unwrap(),
            PyValue::List(vec![PyValue::Int(-5), PyValue::Float(2.5), PyValue::Int(7)])
        );
        assert_eq!(parse(NUMPY_BIG_ENDIAN).unwrap(), PyValue::Int(258));
        assert_eq!(
            parse(NUMPY_OTHERS).unwrap(),
            PyValue::List(vec![
                PyValue::Bool(true),
                PyValue::Bytes(b"ab".to_vec()),
                PyValue::Float(1.5),
                PyValue::Int(200)
            ])
        );
    }

    #[test]
    fn numpy_arrays_stay_opaque_without_failing() {
        let v = parse(NUMPY_ARRAY).unwrap();
        let PyValue::Object { class, state, .. } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(
            **class,
            PyValue::Global {
                module: "numpy._core.multiarray".into(),
                name: "_reconstruct".into()
            }
        );
        assert!(state.is_some());
    }

    #[test]
    fn memoised_containers_see_later_mutations() {
        // `x = [1]; pickle.dumps([x, x], protocol=2)`, hand-assembled: the inner list is
        // memoised empty, filled, then fetched again.
        let p = [
            0x80, 2, b']', b'(', b']', b'q', 1, b'K', 1, b'a', b'h', 1, b'e', b'.',
        ];
        assert_eq!(
            parse(&p).unwrap(),
            PyValue::List(vec![
                PyValue::List(vec![PyValue::Int(1)]),
                PyValue::List(vec![PyValue::Int(1)])
            ])
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x80, 2, b'a']).is_err()); // append on empty stack
        assert!(parse(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f]).is_err()); // truncated
        assert!(parse(&[0x80, 2, b'K', 1, b'u', b'.']).is_err()); // no mark
        assert!(parse(&[0x80, 2, b'S']).is_err()); // protocol-0 string
    }

    #[test]
    fn gathers_strided_views() {
        // Storage 0..6 (f32) viewed as the transpose of a [2, 3] matrix: shape [3, 2], stride [1, 3].
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorRef {
            storage: "0".into(),
            dtype: DType::F32,
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        let data = gather(&storage, &t).unwrap();
        assert_eq!(data.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        let t = TensorRef {
            offset: 4,
            shape: vec![2],
            stride: vec![1],
            ..t
        };
        assert_eq!(
            gather(&storage, &t).unwrap().to_vec::<f32>().unwrap(),
            vec![4., 5.]
        );
        let t = TensorRef { offset: 5, ..t };
        assert!(
            gather(&storage, &t).is_err(),
            "out-of-bounds view must be an error"
        );
    }
}
