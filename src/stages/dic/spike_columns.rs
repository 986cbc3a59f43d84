//! Spike-time columns as the study-4 stages (`ingest.spike_times`, `dic.*`, `features.bursts`,
//! `features.isi`) read and write them: `list<float64>` in `ms` or `s`, read back in ms; and the
//! input checks these stages share.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};

use crate::error::Result;
use crate::stage::Issue;
use crate::stage::columns::{column_list, f64_list_rows, require, type_name, unit_of};

/// The default input column of spike times.
pub(crate) fn default_spike_column() -> String {
    "spike_times".into()
}

fn is_f64_list(t: &DataType) -> bool {
    matches!(t, DataType::List(f) | DataType::LargeList(f) if f.data_type() == &DataType::Float64)
}

/// Milliseconds per unit of a spike-time column (`ms` or `s`), or the issue (at option `key`).
pub(crate) fn ms_per_unit(schema: &Schema, column: &str, key: &str) -> std::result::Result<f64, Issue> {
    let Ok(f) = schema.field_with_name(column) else {
        return Err(Issue::at(&[key], format!("the input has no column `{column}` (spike times needed); it has: {}", column_list(schema))));
    };
    if !is_f64_list(f.data_type()) {
        return Err(Issue::at(&[key], format!("column `{column}` is {}, but list<float64> spike times are needed", type_name(f.data_type()))));
    }
    match unit_of(f) {
        Some("ms") => Ok(1.0),
        Some("s") => Ok(1000.0),
        Some(u) => Err(Issue::at(&[key], format!("column `{column}` is in {u}; spike times in ms or s are needed"))),
        None => Err(Issue::at(&[key], format!("column `{column}` has no unit; spike times in ms or s are needed"))),
    }
}

/// The rows of a spike-time column in ms (null row → `None`), given its [`ms_per_unit`].
pub(crate) fn lists_ms(batch: &RecordBatch, name: &str, ms_per_unit: f64) -> Result<Vec<Option<Vec<f64>>>> {
    let mut rows = f64_list_rows(batch, name)?;
    for t in rows.iter_mut().flatten() {
        for x in t.iter_mut() {
            *x *= ms_per_unit;
        }
    }
    Ok(rows)
}

/// Requires a column of the stage's one input, of a type `accept`s (described by `expected`).
pub(crate) fn require_input(schema: &Schema, column: &str, expected: &str, accept: impl Fn(&DataType) -> bool) -> std::result::Result<(), Issue> {
    require(schema, "inputs[0]", column, expected, accept, None, &["inputs"])
}

/// One issue per column of `added` the input already has.
pub(crate) fn no_clash(schema: &Schema, added: &[&str]) -> Vec<Issue> {
    schema
        .fields()
        .iter()
        .filter(|f| added.contains(&f.name().as_str()))
        .map(|f| Issue::inputs(format!("the input already has a column `{}` that this stage adds", f.name())))
        .collect()
}
