//! The list columns of the preprocess stages: what they accept at validation (with the issues
//! naming the option), and reading and writing them row by row at run time.
//!
//! Two kinds of list column: a numeric list over neurons (activity table; any list type, even a
//! fixed-size one) for `preprocess.spontaneous` and `preprocess.voxelize`, and a trace (a numeric
//! list whose length varies by row, sampled at the row's rate) for `preprocess.filter`,
//! `preprocess.resample` and `preprocess.window`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, LargeListArray, ListArray, RecordBatch};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};

use crate::error::{Error, Result};
use crate::stage::Issue;
use crate::stage::columns::{column_list, is_numeric, type_name, unit_of};

/// A numeric list column of any list type (`list`, `large_list`, `fixed_size_list`).
pub fn is_numeric_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => is_numeric(f.data_type()),
        _ => false,
    }
}

/// A numeric list column with per-row lengths (`list` or `large_list`): a trace per row.
pub fn is_trace_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) => is_numeric(f.data_type()),
        _ => false,
    }
}

/// Requires `column` in `input` with a type `accept`s (`what` describes it); the issue is at `key`.
pub fn need_column(input: &Schema, column: &str, what: &str, accept: fn(&DataType) -> bool, key: &str, issues: &mut Vec<Issue>) {
    match input.field_with_name(column) {
        Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{column}` ({what}); it has: {}", column_list(input)))),
        Ok(f) if !accept(f.data_type()) => issues.push(Issue::at(&[key], format!("column `{column}` is {}; {what} is needed", type_name(f.data_type())))),
        _ => {}
    }
}

/// Checks `columns` name trace columns of `input`, each once; issues at `key[i]`.
pub fn check_list_columns(input: &Schema, key: &str, columns: &[String], issues: &mut Vec<Issue>) {
    let mut seen = BTreeSet::new();
    for (i, c) in columns.iter().enumerate() {
        if !seen.insert(c) {
            issues.push(Issue::at_index(key, i, format!("`{c}` is listed twice")));
            continue;
        }
        match input.field_with_name(c) {
            Err(_) => issues.push(Issue::at_index(key, i, format!("the input has no column `{c}`; it has: {}", column_list(input)))),
            Ok(f) if !is_trace_list(f.data_type()) => issues.push(Issue::at_index(
                key,
                i,
                format!("`{c}` is {}; a numeric list column (one trace per row) is needed", type_name(f.data_type())),
            )),
            _ => {}
        }
    }
}

/// The `columns` option of resample and window: `chosen` (the listed columns, or the trace
/// columns found when none are listed) must not be empty, and each listed one must be a trace
/// column.
pub fn check_trace_columns(input: &Schema, chosen: &[String], listed: &[String], issues: &mut Vec<Issue>) {
    if chosen.is_empty() {
        issues.push(Issue::at(&["columns"], format!("the input has no trace column (numeric list not in s); it has: {}", column_list(input))));
    }
    check_list_columns(input, "columns", listed, issues);
}

/// Trace columns of a schema: numeric lists whose unit is not seconds (event-time lists are not samples).
pub fn trace_columns(input: &Schema) -> Vec<String> {
    input.fields().iter().filter(|f| is_trace_list(f.data_type()) && unit_of(f) != Some("s")).map(|f| f.name().clone()).collect()
}

/// The rows of a numeric list column as f32 vectors (None for a null row, NaN for a null item).
/// The activity table is float32; reading another type rounds it to float32 first.
pub fn list_rows(batch: &RecordBatch, column: &str) -> Result<Vec<Option<Vec<f32>>>> {
    let col = batch.column_by_name(column).ok_or_else(|| Error::msg(format!("no column `{column}`")))?;
    let col = arrow::compute::cast(col, &DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, true))))
        .map_err(|e| Error::arrow(format!("column `{column}`"), e))?;
    let l = col.as_list::<i64>();
    Ok((0..l.len())
        .map(|r| {
            (!l.is_null(r)).then(|| {
                let v = l.value(r);
                let v = v.as_primitive::<Float32Type>();
                (0..v.len()).map(|i| if v.is_null(i) { f32::NAN } else { v.value(i) }).collect()
            })
        })
        .collect())
}

/// The rows of a column as strings (None for a null row), or `None` if the batch has no such column.
pub fn optional_string_rows(batch: &RecordBatch, column: &str) -> Result<Option<Vec<Option<String>>>> {
    let Some(col) = batch.column_by_name(column) else { return Ok(None) };
    let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| Error::arrow(format!("column `{column}`"), e))?;
    Ok(Some(col.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect()))
}

/// The rows of a column as strings (None for a null row).
pub fn string_rows(batch: &RecordBatch, column: &str) -> Result<Vec<Option<String>>> {
    optional_string_rows(batch, column)?.ok_or_else(|| Error::msg(format!("no column `{column}`")))
}

/// The distinct values of `recording_id`, in order of first appearance, with their rows.
pub fn rows_by_recording(batch: &RecordBatch) -> Result<Vec<(String, Vec<u32>)>> {
    let ids = string_rows(batch, "recording_id")?;
    let mut order: Vec<(String, Vec<u32>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (r, id) in ids.into_iter().enumerate() {
        let id = id.unwrap_or_default();
        let k = *index.entry(id.clone()).or_insert_with(|| {
            order.push((id, Vec::new()));
            order.len() - 1
        });
        order[k].1.push(r as u32);
    }
    Ok(order)
}

/// A list column of type `like` (list or large list of the item type and field it declares)
/// from f64 rows.
pub fn write_lists(rows: &[Option<Vec<f64>>], like: &DataType) -> Result<ArrayRef> {
    let item = match like {
        DataType::List(f) | DataType::LargeList(f) => f.clone(),
        other => return Err(Error::msg(format!("cannot write a list column of type {other}"))),
    };
    let values: Vec<f64> = rows.iter().flat_map(|r| r.iter().flatten().copied()).collect();
    let values = arrow::compute::cast(&Float64Array::from(values), item.data_type())?;
    let nulls = rows.iter().any(Option::is_none).then(|| NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>()));
    let lengths = rows.iter().map(|r| r.as_ref().map_or(0, Vec::len));
    Ok(match like {
        DataType::List(_) => Arc::new(ListArray::try_new(item, OffsetBuffer::<i32>::from_lengths(lengths), values, nulls)?),
        _ => Arc::new(LargeListArray::try_new(item, OffsetBuffer::<i64>::from_lengths(lengths), values, nulls)?),
    })
}
