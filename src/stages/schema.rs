//! Schema helpers: units in field metadata, and the checks a consumer makes of its inputs.
//!
//! Units travel with the data (`unit` = `mV`, `pA`, `s`, `Hz` in each field's metadata), so a
//! stage can refuse a column in the wrong unit at validation time instead of misreading it.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field, Schema};

use super::Issue;

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

pub fn column_list(schema: &Schema) -> String {
    let names: Vec<String> = schema.fields().iter().map(|f| format!("`{}`", f.name())).collect();
    if names.is_empty() { "no columns".into() } else { names.join(", ") }
}

/// Two schemas carry the same columns and types (metadata aside): what a stage may emit against what it declared.
pub fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type().equals_datatype(y.data_type()))
}
