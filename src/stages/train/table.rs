//! Reading the columns a model needs out of record batches: the feature matrix (numeric scalars,
//! and numeric list columns expanded to `name[i]`), with the rows that cannot be used (a null or
//! non-finite value) marked and explained. Shared by the training kinds and `predict.model`.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};

use crate::error::{Error, Result};
use crate::stage::columns::f64_list_rows;

/// Feature columns of a set of batches, as a row-major matrix.
pub(crate) struct Features {
    /// The feature names: a scalar column's name, or `name[i]` for item i of a list column.
    pub names: Vec<String>,
    /// Row-major, n × names.len() (NaN where a value is missing).
    pub x: Vec<f64>,
    pub n: usize,
    /// Why a row is unusable (null / non-finite feature), by row.
    pub incomplete: Vec<Option<String>>,
    /// What names a row in messages: its value of `unit_col`, else `row <r>`.
    pub unit_of_row: Vec<String>,
}

/// A column as strings over all batches (cast to text), `None` where null.
pub(crate) fn string_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).ok_or_else(|| Error::msg(format!("no column `{col}`")))?;
        let c = arrow::compute::cast(c, &DataType::Utf8)?;
        out.extend(c.as_string::<i32>().iter().map(|s| s.map(str::to_string)));
    }
    Ok(out)
}

/// A numeric column as f64 over all batches, `None` where null.
pub(crate) fn f64_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).ok_or_else(|| Error::msg(format!("no column `{col}`")))?;
        let c = arrow::compute::cast(c, &DataType::Float64)?;
        out.extend(c.as_primitive::<Float64Type>().iter());
    }
    Ok(out)
}

/// Values of a list column over all batches, one Vec per row (None for a null row).
fn list_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(f64_list_rows(b, col)?);
    }
    Ok(out)
}

/// Marks row `r` incomplete with `why`, unless an earlier column already did.
fn mark(incomplete: &mut [Option<String>], r: usize, why: impl FnOnce() -> Option<String>) {
    if incomplete[r].is_none() {
        incomplete[r] = why();
    }
}

/// Reads the feature columns `features` of `batches` (every batch has them, with one type).
pub(crate) fn gather(batches: &[RecordBatch], features: &[String], unit_col: Option<&str>) -> Result<Features> {
    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| Error::msg("the input is empty: nothing to train on"))?;
    let mut names = Vec::new();
    let mut columns: Vec<Vec<f64>> = Vec::new();
    let mut incomplete: Vec<Option<String>> = vec![None; n];
    for f in features {
        let dt = schema.field_with_name(f).map_err(|_| Error::msg(format!("no column `{f}`")))?.data_type().clone();
        if matches!(dt, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)) {
            let rows = list_values(batches, f)?;
            let width = rows.iter().flatten().map(Vec::len).next().unwrap_or(0);
            if width == 0 {
                return Err(Error::msg(format!("list column `{f}` has no values")));
            }
            if let Some((r, len)) = rows.iter().enumerate().find_map(|(r, v)| v.as_ref().filter(|v| v.len() != width).map(|v| (r, v.len()))) {
                return Err(Error::msg(format!("list column `{f}`: row {r} has {len} values, the first row {width}; a feature list must have one length")));
            }
            for i in 0..width {
                names.push(format!("{f}[{i}]"));
                columns.push(rows.iter().map(|v| v.as_ref().map_or(f64::NAN, |v| v[i])).collect());
            }
            for (r, v) in rows.iter().enumerate() {
                mark(&mut incomplete, r, || match v {
                    None => Some(format!("feature `{f}` is null")),
                    Some(v) if v.iter().any(|x| !x.is_finite()) => Some(format!("feature `{f}` holds a non-finite value")),
                    _ => None,
                });
            }
        } else {
            let vals = f64_values(batches, f)?;
            for (r, v) in vals.iter().enumerate() {
                mark(&mut incomplete, r, || match v {
                    None => Some(format!("feature `{f}` is null")),
                    Some(x) if !x.is_finite() => Some(format!("feature `{f}` is {x}")),
                    _ => None,
                });
            }
            names.push(f.clone());
            columns.push(vals.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect());
        }
    }
    let p = columns.len();
    let mut x = vec![0.0; n * p];
    for (j, c) in columns.iter().enumerate() {
        for (r, &v) in c.iter().enumerate() {
            x[r * p + j] = v;
        }
    }
    let unit_of_row = match unit_col {
        Some(c) => string_values(batches, c)?.into_iter().enumerate().map(|(r, u)| u.unwrap_or_else(|| format!("row {r}"))).collect(),
        None => (0..n).map(|r| format!("row {r}")).collect(),
    };
    Ok(Features { names, x, n, incomplete, unit_of_row })
}
