//! What the per-row feature stages (`features.trace`, `features.membrane`) share: which input
//! columns travel on beside the added features, and how a failed row is named.

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::Result;
use crate::stage::columns::is_numeric;

/// A list column of any layout.
pub(super) fn is_list(t: &DataType) -> bool {
    matches!(t, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _))
}

/// A list column of numbers.
pub(super) fn numeric_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => is_numeric(f.data_type()),
        _ => false,
    }
}

/// The input fields a per-row feature stage passes on: every scalar column, and the list columns
/// too when `keep_lists` (the schema side of [`passed_columns`]).
pub(super) fn passed_fields(input: &Schema, keep_lists: bool) -> Vec<Field> {
    input.fields().iter().filter(|f| keep_lists || !is_list(f.data_type())).map(|f| f.as_ref().clone()).collect()
}

/// The passed-on columns of `batch` (see [`passed_fields`]) at the kept `rows`, in order.
pub(super) fn passed_columns(batch: &RecordBatch, rows: &[usize], keep_lists: bool) -> Result<Vec<ArrayRef>> {
    let idx = arrow::array::UInt64Array::from_iter_values(rows.iter().map(|&r| r as u64));
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if keep_lists || !is_list(f.data_type()) {
            columns.push(arrow::compute::take(c, &idx, None)?);
        }
    }
    Ok(columns)
}

/// How a failed row is named: `recording_id/sweep`, `recording_id`, or `row <n>`.
pub(super) fn unit_label(batch: &RecordBatch, row: usize) -> String {
    let get = |c: &str| batch.column_by_name(c).and_then(|a| arrow::compute::cast(a, &DataType::Utf8).ok());
    let id = get("recording_id").map(|a| a.as_string::<i32>().value(row).to_string());
    let sweep = get("sweep").map(|a| a.as_string::<i32>().value(row).to_string());
    match (id, sweep) {
        (Some(i), Some(s)) => format!("{i}/{s}"),
        (Some(i), None) => i,
        _ => format!("row {row}"),
    }
}
