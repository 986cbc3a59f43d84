//! The sweeps table the recording readers (`ingest.abf`, `ingest.nwb`) emit (DESIGN.md): one row
//! per sweep with the membrane potential (`response`, mV) and the command (`stimulus`, pA), so the
//! rest of a pipeline never sees a file format.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::CHUNK_COLUMNS;
use crate::stage::columns::{f32_trace, field};

/// The sweeps table: keys, rate, both traces, and where the traces come from.
pub fn sweeps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("stimulus_kind", DataType::Utf8, false, None),
        field("sampling_rate_hz", DataType::Float64, false, Some("Hz")),
        f32_trace("stimulus", "pA"),
        f32_trace("response", "mV"),
        field("file", DataType::Utf8, false, None),
        field("response_channel", DataType::Utf8, false, None),
        field("response_units", DataType::Utf8, false, None),
        field("stimulus_units", DataType::Utf8, false, None),
    ]))
}

/// The sweeps table of a reader that splits sweeps into chunks: [`sweeps_schema`] plus the chunk
/// position columns ([`CHUNK_COLUMNS`]: the chunk's number in its sweep, its core's start and
/// end and its traces' first sample, in s from the sweep start).
pub fn chunked_sweeps_schema() -> SchemaRef {
    let mut fields: Vec<Field> = sweeps_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let [chunk, times @ ..] = CHUNK_COLUMNS;
    fields.push(field(chunk, DataType::Int64, false, None));
    fields.extend(times.iter().map(|name| field(name, DataType::Float64, false, Some("s"))));
    Arc::new(Schema::new(fields))
}

/// The item field of a list column of `schema` (the traces' `item`), for building that column.
pub(super) fn list_item_field(schema: &Schema, column: &str) -> Field {
    match schema.field_with_name(column).map(|f| f.data_type().clone()) {
        Ok(DataType::LargeList(item)) => item.as_ref().clone(),
        _ => Field::new("item", DataType::Float32, false),
    }
}
