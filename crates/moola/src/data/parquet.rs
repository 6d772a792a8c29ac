//! The parquet window contract (the reference's dataset format).
//!
//! One row per window:
//! * `window_id` (required): string or integer, kept as a string;
//! * `label` (optional): string (or integer / dictionary-encoded string, read as its string);
//!   without it the set is unlabeled;
//! * `features`: either nested `list<list<float>>` (`T × F` per row, the layout from `7c9b1bb` on)
//!   or flat `list<float>` of `D` values, reshaped timestep-major like the reference: `[D/4, 4]`
//!   when `D % 4 == 0`, else `[1, D]`. Float32, float64 or integer values; every row must have the
//!   same shape. A binary column (pickled numpy arrays, reference @6ecdb28) is refused.
//!   Without a `features` column every numeric column other than `window_id`, `label`, the
//!   expansion columns and pandas index columns is one flat feature, in schema order (the
//!   reference's pre-training fallback).
//! * `expansion_start` / `expansion_end` (optional, both or neither): integer or float bar
//!   indices; null or NaN means "not annotated".
//!
//! Files are written with the nested layout (or flat on request), float32 values and snappy
//! compression, readable by pandas/pyarrow.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{WindowSet, flat_shape};

const WINDOW_ID: &str = "window_id";
const LABEL: &str = "label";
const FEATURES: &str = "features";
const EXPANSION_START: &str = "expansion_start";
const EXPANSION_END: &str = "expansion_end";

/// How [`write_parquet`] stores the `features` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureLayout {
    /// `list<list<float>>`, `seq_len` lists of `n_features` values (the canonical layout).
    #[default]
    Nested,
    /// `list<float>` of `seq_len · n_features` values, timestep-major (the Oct 11–12 layout).
    /// Only for shapes the reader's reshape rule recovers: 4 features, or one step whose width is
    /// not a multiple of 4.
    Flat,
}

/// Reads a window set from a parquet file; every error names the file, and the row
/// (`window_id`) where one is at fault.
pub fn read_parquet(path: &Path) -> Result<WindowSet> {
    let file = path.display().to_string();
    let handle = File::open(path).with_context(|| format!("cannot open {file}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
        .with_context(|| format!("{file} is not a readable parquet file"))?;
    let schema = builder.schema().clone();
    // This build decodes uncompressed and snappy pages only (pandas' default is snappy).
    let codecs = builder
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns());
    for column in codecs {
        let codec = column.compression();
        ensure!(
            matches!(codec, Compression::UNCOMPRESSED | Compression::SNAPPY),
            "{file}: column `{}` is {codec:?}-compressed; moola reads uncompressed or snappy \
             parquet (re-save it, e.g. pandas `df.to_parquet(path, compression=\"snappy\")`)",
            column.column_path().string()
        );
    }
    let batches = builder
        .build()
        .and_then(|reader| Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?))
        .with_context(|| format!("cannot decode {file}"))?;
    let batch =
        concat_batches(&schema, &batches).with_context(|| format!("cannot decode {file}"))?;
    let n = batch.num_rows();
    ensure!(n > 0, "{file} has no rows");

    let ids_col = batch.column_by_name(WINDOW_ID).with_context(|| {
        format!(
            "{file} has no `{WINDOW_ID}` column (columns: {})",
            column_names(&schema)
        )
    })?;
    let ids = string_column(ids_col, WINDOW_ID, &file, None)?;
    let at = |row: usize| format!("{file}: row {row} (window_id {:?})", ids[row]);

    let labels = batch
        .column_by_name(LABEL)
        .map(|col| string_column(col, LABEL, &file, Some(&ids)))
        .transpose()?;

    let (x, seq_len, n_features) = match batch.column_by_name(FEATURES) {
        Some(col) => read_features(col, &file, &at)?,
        None => read_column_features(&batch, &file, &at)?,
    };

    let expansion = match (
        batch.column_by_name(EXPANSION_START),
        batch.column_by_name(EXPANSION_END),
    ) {
        (None, None) => None,
        (Some(start), Some(end)) => {
            let start = index_column(start, EXPANSION_START, &file, &at)?;
            let end = index_column(end, EXPANSION_END, &file, &at)?;
            Some(start.into_iter().zip(end).map(|(s, e)| s.zip(e)).collect())
        }
        (Some(_), None) => bail!("{file} has `{EXPANSION_START}` but no `{EXPANSION_END}` column"),
        (None, Some(_)) => bail!("{file} has `{EXPANSION_END}` but no `{EXPANSION_START}` column"),
    };

    WindowSet::new(ids, x, seq_len, n_features, labels, expansion).with_context(|| file.clone())
}

fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string-like or integer column as strings; nulls are errors naming the row.
fn string_column(
    col: &ArrayRef,
    name: &str,
    file: &str,
    ids: Option<&[String]>,
) -> Result<Vec<String>> {
    let ok = match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => matches!(
            value.as_ref(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        t => t.is_integer(),
    };
    ensure!(
        ok,
        "{file}: column `{name}` has type {}; expected strings (or integers)",
        col.data_type()
    );
    let strings = cast(col, &DataType::Utf8)
        .with_context(|| format!("{file}: cannot convert column `{name}` to strings"))?;
    let strings: &StringArray = strings.as_string();
    (0..strings.len())
        .map(|row| {
            if strings.is_null(row) {
                match ids {
                    Some(ids) => bail!(
                        "{file}: row {row} (window_id {:?}): `{name}` is null",
                        ids[row]
                    ),
                    None => bail!("{file}: row {row}: `{name}` is null"),
                }
            }
            Ok(strings.value(row).to_string())
        })
        .collect()
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    )
}

fn list_item(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

fn is_number(t: &DataType) -> bool {
    t.is_floating() || t.is_integer()
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The `features` column: nested `T × F` or flat `D` per row.
fn read_features(
    col: &ArrayRef,
    file: &str,
    at: &dyn Fn(usize) -> String,
) -> Result<(Vec<f32>, usize, usize)> {
    let t = col.data_type();
    if matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    ) {
        bail!(
            "{file}: column `features` holds binary values (pickled numpy arrays); this format \
             is not supported; store features as list<list<float>> (T × F) or list<float>"
        );
    }
    let wrong_type = || {
        anyhow::anyhow!(
            "{file}: column `features` has type {t}; expected list<list<float>> (nested T × F) \
             or list<float> (flat, timestep-major)"
        )
    };
    let item = list_item(t).ok_or_else(wrong_type)?;
    if is_list(item) {
        let leaf = list_item(item).ok_or_else(wrong_type)?;
        if !is_number(leaf) {
            return Err(wrong_type());
        }
        let nested = cast(col, &list_of(list_of(DataType::Float32)))
            .with_context(|| format!("{file}: cannot convert `features` to float32"))?;
        read_nested(nested.as_list::<i32>(), at)
    } else if is_number(item) {
        let flat = cast(col, &list_of(DataType::Float32))
            .with_context(|| format!("{file}: cannot convert `features` to float32"))?;
        read_flat(flat.as_list::<i32>(), at)
    } else {
        Err(wrong_type())
    }
}

fn read_nested(
    outer: &ListArray,
    at: &dyn Fn(usize) -> String,
) -> Result<(Vec<f32>, usize, usize)> {
    let steps: &ListArray = outer.values().as_list::<i32>();
    let values: &Float32Array = steps.values().as_primitive::<Float32Type>();
    let (outer_off, step_off) = (outer.value_offsets(), steps.value_offsets());
    let mut shape: Option<(usize, usize)> = None;
    let mut x = Vec::new();
    for row in 0..outer.len() {
        ensure!(!outer.is_null(row), "{}: `features` is null", at(row));
        let (s0, s1) = (outer_off[row] as usize, outer_off[row + 1] as usize);
        let seq_len = s1 - s0;
        ensure!(seq_len > 0, "{}: `features` is empty", at(row));
        for (t, step) in (s0..s1).enumerate() {
            ensure!(
                !steps.is_null(step),
                "{}: `features` time step {t} is null",
                at(row)
            );
            let (v0, v1) = (step_off[step] as usize, step_off[step + 1] as usize);
            let width = v1 - v0;
            let (want_t, want_f) = *shape.get_or_insert((seq_len, width));
            if seq_len != want_t || width != want_f {
                bail!(
                    "{}: ragged `features`: {seq_len} time steps, step {t} has {width} values, \
                     but row 0 is {want_t} × {want_f}; every row must have the same shape",
                    at(row)
                );
            }
            ensure!(width > 0, "{}: `features` time step {t} is empty", at(row));
            for (f, v) in (v0..v1).enumerate() {
                ensure!(
                    !values.is_null(v),
                    "{}: `features` value at time step {t}, feature {f} is null",
                    at(row)
                );
                x.push(values.value(v));
            }
        }
    }
    let (seq_len, n_features) = shape.expect("at least one row");
    Ok((x, seq_len, n_features))
}

fn read_flat(list: &ListArray, at: &dyn Fn(usize) -> String) -> Result<(Vec<f32>, usize, usize)> {
    let values: &Float32Array = list.values().as_primitive::<Float32Type>();
    let offsets = list.value_offsets();
    let mut width: Option<usize> = None;
    let mut x = Vec::new();
    for row in 0..list.len() {
        ensure!(!list.is_null(row), "{}: `features` is null", at(row));
        let (v0, v1) = (offsets[row] as usize, offsets[row + 1] as usize);
        let d = v1 - v0;
        ensure!(d > 0, "{}: `features` is empty", at(row));
        let want = *width.get_or_insert(d);
        ensure!(
            d == want,
            "{}: ragged `features`: {d} values but row 0 has {want}; every row must have the \
             same length",
            at(row)
        );
        for (k, v) in (v0..v1).enumerate() {
            ensure!(
                !values.is_null(v),
                "{}: `features` value {k} is null",
                at(row)
            );
            x.push(values.value(v));
        }
    }
    let (seq_len, n_features) = flat_shape(width.expect("at least one row"));
    Ok((x, seq_len, n_features))
}

/// No `features` column: every numeric column except the contract's other columns is a flat
/// feature (schema order).
fn read_column_features(
    batch: &RecordBatch,
    file: &str,
    at: &dyn Fn(usize) -> String,
) -> Result<(Vec<f32>, usize, usize)> {
    let schema = batch.schema();
    let mut columns = Vec::new();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let name = field.name();
        if [WINDOW_ID, LABEL, EXPANSION_START, EXPANSION_END].contains(&name.as_str())
            || name.starts_with("__index_level_")
        {
            continue;
        }
        if !is_number(field.data_type()) {
            tracing::warn!(
                "{file}: ignoring non-numeric column `{name}` ({}) in a file without a \
                 `features` column",
                field.data_type()
            );
            continue;
        }
        let values = cast(col, &DataType::Float32)
            .with_context(|| format!("{file}: cannot convert column `{name}` to float32"))?;
        columns.push((name.clone(), values));
    }
    ensure!(
        !columns.is_empty(),
        "{file} has no `features` column and no numeric feature columns (columns: {})",
        column_names(&schema)
    );
    let d = columns.len();
    let n = batch.num_rows();
    let mut x = vec![0f32; n * d];
    for (j, (name, values)) in columns.iter().enumerate() {
        let values: &Float32Array = values.as_primitive::<Float32Type>();
        for row in 0..n {
            ensure!(!values.is_null(row), "{}: column `{name}` is null", at(row));
            x[row * d + j] = values.value(row);
        }
    }
    let (seq_len, n_features) = flat_shape(d);
    Ok((x, seq_len, n_features))
}

/// An expansion index column: integers, or floats holding integers; null/NaN → `None`.
fn index_column(
    col: &ArrayRef,
    name: &str,
    file: &str,
    at: &dyn Fn(usize) -> String,
) -> Result<Vec<Option<i64>>> {
    ensure!(
        is_number(col.data_type()),
        "{file}: column `{name}` has type {}; expected integer bar indices",
        col.data_type()
    );
    let values = cast(col, &DataType::Float64)
        .with_context(|| format!("{file}: cannot convert column `{name}`"))?;
    let values = values.as_primitive::<Float64Type>();
    (0..values.len())
        .map(|row| {
            if values.is_null(row) || values.value(row).is_nan() {
                return Ok(None);
            }
            let v = values.value(row);
            ensure!(
                v.fract() == 0.0 && v.abs() < 2f64.powi(53),
                "{}: `{name}` = {v} is not an integer bar index",
                at(row)
            );
            Ok(Some(v as i64))
        })
        .collect()
}

/// Writes `set` as parquet (snappy, float32 features) atomically: the file appears complete or
/// not at all.
pub fn write_parquet(set: &WindowSet, path: &Path, layout: FeatureLayout) -> Result<()> {
    let batch = to_batch(set, layout)
        .with_context(|| format!("cannot encode windows for {}", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    kiln::io::write_atomic_with(path, |file| {
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    })
    .with_context(|| format!("cannot write windows to {}", path.display()))
}

fn to_batch(set: &WindowSet, layout: FeatureLayout) -> Result<RecordBatch> {
    let n = set.len();
    ensure!(
        set.x.len() == n * set.sample_len(),
        "x holds {} values but {n} samples of {} × {} need {}",
        set.x.len(),
        set.seq_len,
        set.n_features,
        n * set.sample_len()
    );
    let mut fields = vec![Field::new(WINDOW_ID, DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(&set.ids))];
    if let Some(labels) = &set.labels {
        ensure!(labels.len() == n, "{} labels for {n} samples", labels.len());
        fields.push(Field::new(LABEL, DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(labels)));
    }

    let values: ArrayRef = Arc::new(Float32Array::from(set.x.clone()));
    let value_field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let features: ArrayRef = match layout {
        FeatureLayout::Nested => {
            let steps = ListArray::try_new(
                value_field.clone(),
                OffsetBuffer::from_lengths(std::iter::repeat_n(set.n_features, n * set.seq_len)),
                values,
                None,
            )?;
            let step_field = Arc::new(Field::new_list_field(DataType::List(value_field), false));
            Arc::new(ListArray::try_new(
                step_field,
                OffsetBuffer::from_lengths(std::iter::repeat_n(set.seq_len, n)),
                Arc::new(steps),
                None,
            )?)
        }
        FeatureLayout::Flat => {
            let d = set.sample_len();
            ensure!(
                flat_shape(d) == (set.seq_len, set.n_features),
                "the flat layout cannot hold {} × {} windows: a flat row of {d} values reads \
                 back as {:?}; use the nested layout",
                set.seq_len,
                set.n_features,
                flat_shape(d)
            );
            Arc::new(ListArray::try_new(
                value_field,
                OffsetBuffer::from_lengths(std::iter::repeat_n(d, n)),
                values,
                None,
            )?)
        }
    };
    fields.push(Field::new(FEATURES, features.data_type().clone(), false));
    columns.push(features);

    if let Some(expansion) = &set.expansion {
        ensure!(
            expansion.len() == n,
            "{} expansion entries for {n} samples",
            expansion.len()
        );
        for (name, pick) in [
            (
                EXPANSION_START,
                (|e: (i64, i64)| e.0) as fn((i64, i64)) -> i64,
            ),
            (EXPANSION_END, |e: (i64, i64)| e.1),
        ] {
            fields.push(Field::new(name, DataType::Int64, true));
            columns.push(Arc::new(Int64Array::from_iter(
                expansion.iter().map(|e| e.map(pick)),
            )));
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
