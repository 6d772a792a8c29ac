//! NumPy `.npy` input and output for the inference tools.
//!
//! Numeric arrays go through `ndarray-npy`; this module adds what it lacks:
//!
//! * [`peek_header`]: the header of any `.npy` file (format version 1.0, 2.0 or 3.0), so that a
//!   file of the wrong type or shape is an error that says what the file holds;
//! * NumPy unicode string arrays (`<U{n}`, UTF-32 code points, NUL-padded), which is what
//!   `np.save(path, np.array(list_of_str))` writes and `np.load(path)` reads **without**
//!   `allow_pickle`: [`string_array_bytes`] / [`read_string_array`] (the reader also accepts
//!   `>U{n}` and byte strings `|S{n}`);
//! * readers that accept the integer and float widths NumPy users produce
//!   ([`read_int_vector`], [`read_f32_matrix`]) and writers that return bytes, for
//!   [`kiln::io::write_atomic`] ([`f32_matrix_bytes`], [`i64_matrix_bytes`]).
//!
//! Every error names the file.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use ndarray::{Array1, Array2, ArrayD, Ix2};
use ndarray_npy::{ReadNpyExt, ReadableElement, WriteNpyExt};

const MAGIC: &[u8] = b"\x93NUMPY";
/// NumPy pads the header so that the data starts at a multiple of 64 bytes.
const HEADER_ALIGN: usize = 64;

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The dtype descriptor, e.g. `<f4`, `<i8`, `<U12`.
    pub descr: String,
    /// Column-major data.
    pub fortran_order: bool,
    /// Array shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte offset of the data (header length included).
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements (the product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// `true` when the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A human-readable description, e.g. `float32 array of shape [10, 512]`.
    pub fn describe(&self) -> String {
        format!(
            "{} array of shape {:?}",
            dtype_name(&self.descr),
            self.shape
        )
    }
}

/// NumPy's name of a descriptor (`<f4` → `float32`), or the descriptor itself.
fn dtype_name(descr: &str) -> String {
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let name = match code {
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        "O" => "object (pickled)",
        _ if code.starts_with('U') => "unicode string",
        _ if code.starts_with('S') => "byte string",
        _ => return format!("'{descr}'"),
    };
    name.to_string()
}

/// Reads and parses the header of the `.npy` file `bytes` (read from `path`, named in errors).
pub fn peek_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |why: String| anyhow::anyhow!("{} is not a NumPy .npy file: {why}", path.display());
    if !bytes.starts_with(MAGIC) {
        return Err(bad("missing the \\x93NUMPY magic string".into()));
    }
    let major = *bytes.get(6).ok_or_else(|| bad("truncated header".into()))?;
    let (len_bytes, start) = match major {
        1 => (2usize, 10usize),
        2 | 3 => (4, 12),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let len_field = bytes
        .get(8..8 + len_bytes)
        .ok_or_else(|| bad("truncated header".into()))?;
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let text = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("truncated header".into()))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("header is not UTF-8".into()))?;
    let dict = PyLiteral::parse(text.trim_end()).map_err(|e| bad(format!("bad header ({e})")))?;
    let PyLiteral::Dict(entries) = dict else {
        return Err(bad("header is not a dictionary".into()));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, PyLiteral::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("header has no '{key}'")))
    };
    let descr = match get("descr")? {
        PyLiteral::Str(s) => s.clone(),
        other => {
            return Err(bad(format!("structured dtype {other:?} is not supported")));
        }
    };
    let fortran_order = match get("fortran_order")? {
        PyLiteral::Bool(b) => *b,
        _ => return Err(bad("'fortran_order' is not a boolean".into())),
    };
    let shape = match get("shape")? {
        PyLiteral::Tuple(items) => items
            .iter()
            .map(|v| match v {
                PyLiteral::Int(n) => Ok(*n),
                _ => Err(bad("'shape' holds a non-integer".into())),
            })
            .collect::<Result<Vec<usize>>>()?,
        _ => return Err(bad("'shape' is not a tuple".into())),
    };
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
        data_offset: start + header_len,
    })
}

/// The subset of Python literals found in `.npy` headers.
#[derive(Debug, Clone, PartialEq)]
enum PyLiteral {
    Str(String),
    Int(usize),
    Bool(bool),
    Tuple(Vec<PyLiteral>),
    List(Vec<PyLiteral>),
    Dict(Vec<(PyLiteral, PyLiteral)>),
}

impl PyLiteral {
    fn parse(text: &str) -> std::result::Result<PyLiteral, String> {
        let mut parser = LiteralParser {
            chars: text.chars().collect(),
            at: 0,
        };
        let value = parser.value()?;
        parser.skip_ws();
        if parser.at != parser.chars.len() {
            return Err(format!("unexpected text at character {}", parser.at));
        }
        Ok(value)
    }
}

struct LiteralParser {
    chars: Vec<char>,
    at: usize,
}

impl LiteralParser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.at).copied()
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected '{c}' at character {}", self.at))
        }
    }

    /// Items up to `close`, separated by commas (a trailing comma is allowed).
    fn sequence<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> std::result::Result<T, String>,
    ) -> std::result::Result<Vec<T>, String> {
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.at += 1;
                return Ok(out);
            }
            out.push(item(self)?);
            match self.peek() {
                Some(',') => self.at += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "expected ',' or '{close}' at character {}",
                        self.at
                    ));
                }
            }
        }
    }

    fn value(&mut self) -> std::result::Result<PyLiteral, String> {
        match self.peek() {
            Some('{') => {
                self.at += 1;
                let entries = self.sequence('}', |p| {
                    let key = p.value()?;
                    p.expect(':')?;
                    Ok((key, p.value()?))
                })?;
                Ok(PyLiteral::Dict(entries))
            }
            Some('(') => {
                self.at += 1;
                Ok(PyLiteral::Tuple(self.sequence(')', Self::value)?))
            }
            Some('[') => {
                self.at += 1;
                Ok(PyLiteral::List(self.sequence(']', Self::value)?))
            }
            Some(q @ ('\'' | '"')) => {
                self.at += 1;
                let mut s = String::new();
                loop {
                    match self.chars.get(self.at) {
                        None => return Err("unterminated string".into()),
                        Some(&c) if c == q => {
                            self.at += 1;
                            return Ok(PyLiteral::Str(s));
                        }
                        Some('\\') => {
                            let escaped =
                                self.chars.get(self.at + 1).ok_or("unterminated string")?;
                            s.push(*escaped);
                            self.at += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.chars.get(self.at).is_some_and(char::is_ascii_digit) {
                    self.at += 1;
                }
                let digits: String = self.chars[start..self.at].iter().collect();
                // Python 2 wrote long integers with an `L` suffix.
                if matches!(self.chars.get(self.at), Some('L' | 'l')) {
                    self.at += 1;
                }
                digits
                    .parse()
                    .map(PyLiteral::Int)
                    .map_err(|_| format!("integer {digits} is too large"))
            }
            Some(_) => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                match word.as_str() {
                    "True" => Ok(PyLiteral::Bool(true)),
                    "False" => Ok(PyLiteral::Bool(false)),
                    _ => Err(format!("unexpected token at character {start}")),
                }
            }
            None => Err("unexpected end of header".into()),
        }
    }
}

/// Builds a version-1.0 `.npy` header for `descr` and `shape`, padded to 64 bytes.
fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + length (2) + dict + '\n', padded with spaces.
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    let padding = (HEADER_ALIGN - unpadded % HEADER_ALIGN) % HEADER_ALIGN;
    dict.push_str(&" ".repeat(padding));
    dict.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// A 1-D NumPy unicode array (`<U{n}`, `n` the longest string in code points, at least 1) of
/// `strings`, as `.npy` bytes: `np.load` reads it without `allow_pickle`.
pub fn string_array_bytes(strings: &[String]) -> Vec<u8> {
    let width = strings
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = header_bytes(&format!("<U{width}"), &[strings.len()]);
    out.reserve(strings.len() * width * 4);
    for s in strings {
        let mut n = 0;
        for c in s.chars() {
            out.extend_from_slice(&u32::from(c).to_le_bytes());
            n += 1;
        }
        out.extend(std::iter::repeat_n(0u8, (width - n) * 4));
    }
    out
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads a 1-D NumPy string array (`<U{n}`, `>U{n}`, or `|S{n}` decoded as UTF-8) from `path`.
/// Trailing NULs are stripped, as NumPy does.
pub fn read_string_array(path: &Path) -> Result<Vec<String>> {
    let bytes = read_file(path)?;
    let header = peek_header(&bytes, path)?;
    ensure!(
        header.shape.len() == 1,
        "{} holds a {}; expected a 1-D string array",
        path.display(),
        header.describe()
    );
    let n = header.shape[0];
    let data = &bytes[header.data_offset..];
    let (big_endian, unicode, width) = match header.descr.as_bytes() {
        [b'<' | b'=', b'U', rest @ ..] => (false, true, rest),
        [b'>', b'U', rest @ ..] => (true, true, rest),
        [b'|', b'S', rest @ ..] => (false, false, rest),
        _ if header.descr.ends_with('O') => bail!(
            "{} holds pickled Python objects ({}); save the strings as a NumPy unicode array \
             instead, e.g. np.save(path, np.asarray(values, dtype=str))",
            path.display(),
            header.describe()
        ),
        _ => bail!(
            "{} holds a {}; expected a string array (dtype <U or |S)",
            path.display(),
            header.describe()
        ),
    };
    let width: usize = std::str::from_utf8(width)
        .ok()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("{}: bad descriptor {}", path.display(), header.descr))?;
    let item = if unicode { 4 * width } else { width };
    ensure!(
        data.len() == n * item,
        "{}: {} strings of {} bytes need {} data bytes, the file has {}",
        path.display(),
        n,
        item,
        n * item,
        data.len()
    );
    if item == 0 {
        return Ok(vec![String::new(); n]);
    }
    data.chunks(item)
        .enumerate()
        .map(|(i, chunk)| {
            if unicode {
                let mut s = String::with_capacity(width);
                for unit in chunk.chunks(4) {
                    let unit: [u8; 4] = unit.try_into().expect("chunks of 4 bytes");
                    let code = if big_endian {
                        u32::from_be_bytes(unit)
                    } else {
                        u32::from_le_bytes(unit)
                    };
                    let c = char::from_u32(code).with_context(|| {
                        format!(
                            "{}: string {i} holds the invalid code point {code:#x}",
                            path.display()
                        )
                    })?;
                    s.push(c);
                }
                Ok(s.trim_end_matches('\0').to_string())
            } else {
                let end = chunk.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                String::from_utf8(chunk[..end].to_vec())
                    .with_context(|| format!("{}: string {i} is not valid UTF-8", path.display()))
            }
        })
        .collect()
}

fn read_as<A: ReadableElement>(bytes: &[u8], path: &Path) -> Result<ArrayD<A>> {
    ArrayD::<A>::read_npy(bytes).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads a 1-D integer array (any signed or unsigned width up to 64 bits) as `i64`.
pub fn read_int_vector(path: &Path) -> Result<Vec<i64>> {
    let bytes = read_file(path)?;
    let header = peek_header(&bytes, path)?;
    ensure!(
        header.shape.len() == 1,
        "{} holds a {}; expected a 1-D integer array",
        path.display(),
        header.describe()
    );
    let code = header.descr.trim_start_matches(['<', '>', '|', '=']);
    let values: Vec<i64> = match code {
        "i1" => read_as::<i8>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "i2" => read_as::<i16>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "i4" => read_as::<i32>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "i8" => read_as::<i64>(&bytes, path)?.into_iter().collect(),
        "u1" => read_as::<u8>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "u2" => read_as::<u16>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "u4" => read_as::<u32>(&bytes, path)?
            .iter()
            .map(|&v| v.into())
            .collect(),
        "u8" => read_as::<u64>(&bytes, path)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                i64::try_from(v).with_context(|| {
                    format!("{}: entry {i} ({v}) does not fit in int64", path.display())
                })
            })
            .collect::<Result<_>>()?,
        _ => bail!(
            "{} holds a {}; expected an integer array (int32 or int64)",
            path.display(),
            header.describe()
        ),
    };
    Ok(values)
}

/// Reads a 2-D float array (`float32`, or `float64` converted to `float32`): returns the
/// row-major values and the shape `[rows, cols]`.
pub fn read_f32_matrix(path: &Path) -> Result<(Vec<f32>, [usize; 2])> {
    let bytes = read_file(path)?;
    let header = peek_header(&bytes, path)?;
    ensure!(
        header.shape.len() == 2,
        "{} holds a {}; expected a 2-D float array [rows, dim]",
        path.display(),
        header.describe()
    );
    let code = header.descr.trim_start_matches(['<', '>', '|', '=']);
    let array: Array2<f32> = match code {
        "f4" => read_as::<f32>(&bytes, path)?
            .into_dimensionality::<Ix2>()
            .with_context(|| format!("cannot read {}", path.display()))?,
        "f8" => read_as::<f64>(&bytes, path)?
            .into_dimensionality::<Ix2>()
            .with_context(|| format!("cannot read {}", path.display()))?
            .mapv(|v| v as f32),
        _ => bail!(
            "{} holds a {}; expected float32 (or float64) embeddings",
            path.display(),
            header.describe()
        ),
    };
    let shape = [array.nrows(), array.ncols()];
    // `into_raw_vec` would keep a Fortran-order layout; iterate in logical (row-major) order.
    let values = if array.is_standard_layout() {
        array.into_raw_vec_and_offset().0
    } else {
        array.iter().copied().collect()
    };
    Ok((values, shape))
}

/// `[rows, cols]` float32 values (row-major) as `.npy` bytes.
pub fn f32_matrix_bytes(values: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let array = Array2::from_shape_vec((rows, cols), values.to_vec())
        .context("embedding matrix shape does not match its values")?;
    let mut out = Vec::new();
    array
        .write_npy(&mut out)
        .context("cannot encode a float32 .npy array")?;
    Ok(out)
}

/// `[rows, cols]` int64 values (row-major) as `.npy` bytes.
pub fn i64_matrix_bytes(values: &[i64], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let array = Array2::from_shape_vec((rows, cols), values.to_vec())
        .context("index matrix shape does not match its values")?;
    let mut out = Vec::new();
    array
        .write_npy(&mut out)
        .context("cannot encode an int64 .npy array")?;
    Ok(out)
}

/// A 1-D int64 array as `.npy` bytes.
pub fn i64_vector_bytes(values: &[i64]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    Array1::from_vec(values.to_vec())
        .write_npy(&mut out)
        .context("cannot encode an int64 .npy array")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_header_is_aligned_and_parses_back() {
        let strings = vec!["a/b.jpg".to_string(), "ü".to_string(), String::new()];
        let bytes = string_array_bytes(&strings);
        let header = peek_header(&bytes, Path::new("x.npy")).unwrap();
        assert_eq!(header.descr, "<U7");
        assert_eq!(header.shape, vec![3]);
        assert!(!header.fortran_order);
        assert_eq!(header.data_offset % HEADER_ALIGN, 0);
        assert_eq!(bytes.len(), header.data_offset + 3 * 7 * 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npy");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_string_array(&path).unwrap(), strings);
    }

    #[test]
    fn header_parser_accepts_numpy_spellings() {
        let v = PyLiteral::parse("{'descr': '<i8', 'fortran_order': False, 'shape': (3L, 4), }")
            .unwrap();
        assert_eq!(
            v,
            PyLiteral::Dict(vec![
                (PyLiteral::Str("descr".into()), PyLiteral::Str("<i8".into())),
                (
                    PyLiteral::Str("fortran_order".into()),
                    PyLiteral::Bool(false)
                ),
                (
                    PyLiteral::Str("shape".into()),
                    PyLiteral::Tuple(vec![PyLiteral::Int(3), PyLiteral::Int(4)])
                ),
            ])
        );
        assert!(PyLiteral::parse("{'descr': '<i8'").is_err());
        assert!(PyLiteral::parse("{'a': None}").is_err());
    }

    #[test]
    fn numeric_writers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        std::fs::write(
            &path,
            f32_matrix_bytes(&[1.0, 2.0, 3.0, 4.5, 5.0, 6.0], 2, 3).unwrap(),
        )
        .unwrap();
        let (values, shape) = read_f32_matrix(&path).unwrap();
        assert_eq!(shape, [2, 3]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.5, 5.0, 6.0]);
        std::fs::write(&path, i64_vector_bytes(&[3, -1, 7]).unwrap()).unwrap();
        assert_eq!(read_int_vector(&path).unwrap(), vec![3, -1, 7]);
        let err = read_f32_matrix(&path).unwrap_err().to_string();
        assert!(err.contains("int64 array of shape [3]"), "{err}");
    }
}
