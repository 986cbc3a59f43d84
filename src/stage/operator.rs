//! Running stages: the operator traits the runtime drives, and the [`Emitter`] an operator writes
//! its output batches and its per-recording failures to.
//!
//! Contract: an operator is driven from one thread at a time (the runtime runs it on tokio's
//! blocking pool); `process` may block and may be CPU-heavy. What it emits goes downstream in the
//! order emitted. An `Err` from `process` fails the recordings of that batch only (named by
//! [`batch_units`]); an `Err` from `finish` or a source's `next` fails the stage.

use arrow::array::{Array, RecordBatch};
use serde::Serialize;

use crate::error::Result;

/// Collects what an operator produces for one call: output batches, and failures of single
/// recordings (units of work) that must not stop the others.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) failures: Vec<UnitFailure>,
}

/// One recording (or batch) that failed in a stage; its downstream work is skipped.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UnitFailure {
    pub unit: String,
    pub message: String,
}

impl Emitter {
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }
    /// The batches emitted so far (for callers driving operators outside the runtime).
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }
    /// The batches and the unit failures emitted so far (for callers driving operators outside
    /// the runtime, e.g. the integration tests' in-process harness).
    pub fn into_parts(self) -> (Vec<RecordBatch>, Vec<UnitFailure>) {
        (self.batches, self.failures)
    }
    pub fn fail(&mut self, unit: impl Into<String>, message: impl Into<String>) {
        self.failures.push(UnitFailure { unit: unit.into(), message: message.into() });
    }
}

/// A running source: called repeatedly until it returns `false`. Each call should emit a bounded
/// amount of data (one file, one row group, one block of configurations) so memory stays bounded.
pub trait SourceOperator: Send {
    fn next(&mut self, out: &mut Emitter) -> Result<bool>;
}

/// A running transform or sink. `process` is called for every input batch (with the index of the
/// input it came from, in `inputs` order), `finish` once after every input is exhausted.
/// An `Err` from `process` fails the recordings of that batch only; from `finish`, the stage.
pub trait TransformOperator: Send {
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()>;
    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        Ok(())
    }
}

pub enum Operator {
    Source(Box<dyn SourceOperator>),
    Transform(Box<dyn TransformOperator>),
}

/// Keys of the recording (unit of work) a batch belongs to, for failure reports: the distinct
/// values of its `recording_id` column if it has one.
pub fn batch_units(batch: &RecordBatch, fallback: &str) -> Vec<String> {
    use arrow::array::AsArray;
    if let Some(col) = batch.column_by_name("recording_id") {
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).ok();
        if let Some(col) = col {
            let strings = col.as_string::<i32>();
            let mut units: Vec<String> = strings.iter().flatten().map(str::to_string).collect();
            units.sort();
            units.dedup();
            if !units.is_empty() {
                return units;
            }
        }
    }
    vec![fallback.to_string()]
}

/// Approximate in-memory size of a batch (used for channel bounds and counters).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.get_array_memory_size()).sum()
}
