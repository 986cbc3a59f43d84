//! Schema helpers: units in field metadata, and the checks a consumer makes of its inputs.
//!
//! Units travel with the data (`unit` = `mV`, `pA`, `s`, `Hz` in each field's metadata), so a
//! stage can refuse a column in the wrong unit at validation time instead of misreading it.
//! Also the one reader of numeric list columns as f64 rows that the stages share.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, LargeListArray, RecordBatch};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};

use super::Issue;
use crate::error::{Error, Result};

/// The metadata key that holds a column's unit.
pub const UNIT_KEY: &str = "unit";

/// A field with an optional unit in its metadata.
pub fn field(name: &str, data_type: DataType, nullable: bool, unit: Option<&str>) -> Field {
    let f = Field::new(name, data_type, nullable);
    match unit {
        Some(u) => f.with_metadata(HashMap::from([(UNIT_KEY.to_string(), u.to_string())])),
        None => f,
    }
}

/// A large list of f32 with a unit (the layout of `stimulus` and `response` in the sweeps table).
pub fn f32_trace(name: &str, unit: &str) -> Field {
    field(name, DataType::LargeList(std::sync::Arc::new(Field::new("item", DataType::Float32, false))), false, Some(unit))
}

pub fn unit_of(field: &Field) -> Option<&str> {
    field.metadata().get(UNIT_KEY).map(String::as_str)
}

/// A short human name for a type (`float64`, `list<float32>`, ...).
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("list<{}>", type_name(f.data_type()))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Dictionary(_, v) => type_name(v),
        other => other.to_string().to_lowercase(),
    }
}

pub fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

pub fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

pub fn is_scalar(t: &DataType) -> bool {
    is_numeric(t) || is_string(t) || matches!(t, DataType::Boolean | DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _))
}

/// Requires a column with a type accepted by `accept` (described by `expected`) and, if given, a unit.
/// `path` locates the issue in the consumer's table (usually its `inputs`).
pub fn require(
    schema: &Schema,
    input: &str,
    column: &str,
    expected: &str,
    accept: impl Fn(&DataType) -> bool,
    unit: Option<&str>,
    path: &[&str],
) -> Result<(), Issue> {
    let Ok(f) = schema.field_with_name(column) else {
        return Err(Issue::at(path, format!("input `{input}` has no column `{column}` ({expected} needed); it has: {}", column_list(schema))));
    };
    if !accept(f.data_type()) {
        return Err(Issue::at(
            path,
            format!("column `{column}` of input `{input}` is {}, but {expected} is needed", type_name(f.data_type())),
        ));
    }
    if let Some(u) = unit {
        match unit_of(f) {
            Some(have) if have == u => {}
            Some(have) => {
                return Err(Issue::at(path, format!("column `{column}` of input `{input}` is in {have}, but {u} is needed")));
            }
            None => return Err(Issue::at(path, format!("column `{column}` of input `{input}` has no unit; {u} is needed"))),
        }
    }
    Ok(())
}

/// Checks a sampling-rate column (the stage key `sampling_rate_column`): numeric, in Hz when it
/// has a unit.
pub fn check_rate_column(input: &Schema, column: &str, issues: &mut Vec<Issue>) {
    let key = ["sampling_rate_column"];
    match input.field_with_name(column) {
        Err(_) => issues.push(Issue::at(&key, format!("the input has no column `{column}`; it has: {}", column_list(input)))),
        Ok(f) if !is_numeric(f.data_type()) => issues.push(Issue::at(&key, format!("`{column}` is {}; a number (Hz) is needed", type_name(f.data_type())))),
        Ok(f) if unit_of(f).is_some_and(|u| u != "Hz") => {
            issues.push(Issue::at(&key, format!("`{column}` is in {}, but Hz is needed", unit_of(f).unwrap_or(""))))
        }
        _ => {}
    }
}

pub fn column_list(schema: &Schema) -> String {
    let names: Vec<String> = schema.fields().iter().map(|f| format!("`{}`", f.name())).collect();
    if names.is_empty() { "no columns".into() } else { names.join(", ") }
}

/// Two schemas carry the same columns and types (metadata aside): what a stage may emit against what it declared.
pub fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type().equals_datatype(y.data_type()))
}

fn column<'a>(batch: &'a RecordBatch, col: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(col).ok_or_else(|| Error::msg(format!("the batch has no column `{col}`")))
}

/// A column cast to strings, row by row (`None` for a null).
pub fn string_rows(batch: &RecordBatch, col: &str) -> Result<Vec<Option<String>>> {
    let c = arrow::compute::cast(column(batch, col)?, &DataType::Utf8)?;
    Ok(c.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
}

/// A numeric column cast to f64, row by row (`None` for a null).
pub fn f64_rows(batch: &RecordBatch, col: &str) -> Result<Vec<Option<f64>>> {
    let c = arrow::compute::cast(column(batch, col)?, &DataType::Float64)?;
    Ok(c.as_primitive::<Float64Type>().iter().collect())
}

/// A numeric list column of `batch` cast to `large_list<float64>`, for reading row by row with
/// [`row_values`] (a trace stays in the batch until its row is read).
pub fn as_f64_list(batch: &RecordBatch, col: &str) -> Result<LargeListArray> {
    let c = column(batch, col)?;
    let c = arrow::compute::cast(c, &DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, true))))?;
    Ok(c.as_list::<i64>().clone())
}

/// One row of a list from [`as_f64_list`]: `None` for a null row, NaN for a null item.
pub fn row_values(list: &LargeListArray, row: usize) -> Option<Vec<f64>> {
    if list.is_null(row) {
        return None;
    }
    let v = list.value(row);
    let v = v.as_primitive::<Float64Type>();
    Some((0..v.len()).map(|i| if v.is_null(i) { f64::NAN } else { v.value(i) }).collect())
}

/// Every row of a numeric list column as f64 (see [`row_values`]).
pub fn f64_list_rows(batch: &RecordBatch, col: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let list = as_f64_list(batch, col)?;
    Ok((0..list.len()).map(|r| row_values(&list, r)).collect())
}

/// Builds a `large_list<float32>` column (non-null items) from per-row slices.
pub fn f32_list_array(item_field: &Field, rows: &[&[f32]]) -> std::result::Result<LargeListArray, arrow::error::ArrowError> {
    let total: usize = rows.iter().map(|r| r.len()).sum();
    let mut values = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i64);
    for r in rows {
        values.extend_from_slice(r);
        offsets.push(values.len() as i64);
    }
    LargeListArray::try_new(
        Arc::new(item_field.clone()),
        OffsetBuffer::new(offsets.into()),
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )
}

/// `large_list<float64>` with non-null items (spike times, feature vectors): the type
/// [`f64_list_array`] builds.
pub fn f64_list_type() -> DataType {
    DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false)))
}

/// A [`f64_list_type`] column from per-row values (`None` = a null row).
pub fn f64_list_array(rows: &[Option<&[f64]>]) -> Result<LargeListArray> {
    let mut values = Vec::with_capacity(rows.iter().map(|r| r.map_or(0, <[f64]>::len)).sum());
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i64);
    for r in rows {
        values.extend_from_slice(r.unwrap_or_default());
        offsets.push(values.len() as i64);
    }
    let nulls = rows.iter().any(Option::is_none).then(|| NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>()));
    Ok(LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float64, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(arrow::array::Float64Array::from(values)),
        nulls,
    )?)
}
