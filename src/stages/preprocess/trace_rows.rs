//! The per-row view the trace stages (`preprocess.filter`, `preprocess.resample`,
//! `preprocess.window`) share: a name for each row's failure, its sampling rate, and the rows kept.
//!
//! The sampling rate is per row, so a row whose rate does not fit (a cutoff above its Nyquist
//! frequency, a ratio that is no small fraction) fails alone, named `recording_id/sweep` as the
//! other trace stages name it.

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};

use super::lists::{optional_string_rows, write_lists};
use crate::error::{Error, Result};
use crate::stage::Emitter;

/// The default of the trace stages' `sampling_rate_column`: the sweeps table's rate column.
pub fn default_rate_column() -> String {
    "sampling_rate_hz".into()
}

/// Row names for failure reports (`recording_id/sweep`) and each row's sampling rate.
pub struct Rows {
    pub labels: Vec<String>,
    rates: Vec<Option<f64>>,
    rate_column: String,
}

impl Rows {
    pub fn of(batch: &RecordBatch, rate_column: &str) -> Result<Rows> {
        let n = batch.num_rows();
        let (ids, sweeps) = (optional_string_rows(batch, "recording_id")?, optional_string_rows(batch, "sweep")?);
        let labels = (0..n)
            .map(|r| {
                let id = ids.as_ref().and_then(|v| v[r].clone());
                let sweep = sweeps.as_ref().and_then(|v| v[r].clone());
                match (id, sweep) {
                    (Some(i), Some(s)) => format!("{i}/{s}"),
                    (Some(i), None) => i,
                    _ => format!("row {r}"),
                }
            })
            .collect();
        let rates = f64_column(batch, rate_column)?.unwrap_or_else(|| vec![None; n]);
        Ok(Rows { labels, rates, rate_column: rate_column.to_string() })
    }

    /// Row `r`'s sampling rate, or why it cannot be used.
    pub fn rate(&self, r: usize) -> Result<f64> {
        let column = &self.rate_column;
        match self.rates[r] {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(Error::msg(format!("`{column}` is {v}, not a positive sampling rate"))),
            None => Err(Error::msg(format!("`{column}` is null"))),
        }
    }
}

/// A numeric column as f64 rows, or `None` if the batch has no such column.
pub fn f64_column(batch: &RecordBatch, column: &str) -> Result<Option<Vec<Option<f64>>>> {
    let Some(a) = batch.column_by_name(column) else { return Ok(None) };
    Ok(Some(arrow::compute::cast(a, &DataType::Float64)?.as_primitive::<Float64Type>().iter().collect()))
}

/// Runs `step` on every row; a row whose step fails is reported under its label and not kept
/// (the others go on). Returns which rows are kept.
pub fn each_row(rows: &Rows, out: &mut Emitter, mut step: impl FnMut(usize) -> Result<()>) -> Vec<bool> {
    (0..rows.labels.len())
        .map(|r| match step(r) {
            Ok(()) => true,
            Err(e) => {
                out.fail(rows.labels[r].clone(), e.to_string());
                false
            }
        })
        .collect()
}

/// Keeps the rows marked in `keep` of every column of `batch`.
pub fn take_rows(batch: &RecordBatch, keep: &[bool]) -> Result<Vec<ArrayRef>> {
    let idx = UInt64Array::from_iter_values(keep.iter().enumerate().filter(|(_, k)| **k).map(|(r, _)| r as u64));
    batch.columns().iter().map(|c| Ok(arrow::compute::take(c, &idx, None)?)).collect()
}

/// The kept rows of `batch` with the list columns `columns` replaced by `lists` (one f64 row
/// per input row each), written in the types `schema` declares.
pub fn with_lists(batch: &RecordBatch, schema: &SchemaRef, keep: &[bool], columns: &[String], lists: &[Vec<Option<Vec<f64>>>]) -> Result<Vec<ArrayRef>> {
    let mut out = take_rows(batch, keep)?;
    for (c, rows) in columns.iter().zip(lists) {
        let kept: Vec<Option<Vec<f64>>> = rows.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| v.clone()).collect();
        let pos = schema.index_of(c)?;
        out[pos] = write_lists(&kept, schema.field(pos).data_type())?;
    }
    Ok(out)
}

pub fn first_non_finite(x: &[f64]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}
