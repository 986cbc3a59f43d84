//! `ingest.spike_times`: a Spike2Pop spike-time CSV (`ID,spiking_times`) as one row per train.
//! Rows are parsed and checked by [`crate::dic::spike_times`]; a bad row fails alone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dic::DicStageError;
use crate::dic::spike_times::{HEADER, parse_spike_line, short};
use crate::error::{Error, Result};
use crate::stage::columns::{f64_list_array, f64_list_type, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

fn default_min_spikes() -> usize {
    3
}
fn default_ingest_rows() -> usize {
    1024
}
fn default_time_unit() -> String {
    "ms".into()
}

/// Reads a Spike2Pop spike-time CSV (`ID,spiking_times`, the times a quoted `"[t1, t2, ...]"`
/// list) into one row per train: `recording_id` (the ID), `spike_times` (list<float64>, in the
/// file's unit, ms for Spike2Pop files, as written: not shifted), `spike_count`. A bad row
/// (malformed list, non-number, negative, unsorted or duplicate time, too few spikes, repeated
/// ID) fails alone, named by its ID (or `line N` when it has none).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestSpikeTimes {
    /// The CSV file, relative to the pipeline file [path].
    pub path: String,
    /// Unit of the times in the file: `ms` (Spike2Pop) or `s` [name].
    #[serde(default = "default_time_unit")]
    pub time_unit: String,
    /// Fewest spikes a train may have; Spike2Pop drops trains with fewer than 3 as silent [spikes].
    #[serde(default = "default_min_spikes")]
    pub min_spikes: usize,
    /// Rows per emitted batch [rows].
    #[serde(default = "default_ingest_rows")]
    pub batch_rows: usize,
}

impl IngestSpikeTimes {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("spike_times", f64_list_type(), false, Some(&self.time_unit)),
            field("spike_count", DataType::Int64, false, None),
        ]))
    }
}

impl StageConfig for IngestSpikeTimes {
    const KIND: &'static str = "ingest.spike_times";
    const SUMMARY: &'static str = "Read a Spike2Pop spike-time CSV (ID,spiking_times) into one row per train";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "path = \"data/stg_set.csv\"";

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !ctx.resolve(&self.path).is_file() {
            issues.push(Issue::at(&["path"], format!("no file `{}`", ctx.resolve(&self.path).display())));
        }
        if self.time_unit != "ms" && self.time_unit != "s" {
            issues.push(Issue::at(&["time_unit"], format!("`{}` is not `ms` or `s`", self.time_unit)));
        }
        if self.min_spikes < 2 {
            issues.push(Issue::at(&["min_spikes"], "at least 2 spikes are needed for an ISI"));
        }
        if self.batch_rows == 0 {
            issues.push(Issue::at(&["batch_rows"], "batch_rows must be at least 1"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(self.schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(vec![ctx.resolve(&self.path)])
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(SpikeCsvSource {
            path: ctx.resolve(&self.path),
            lines: None,
            next_line: 0,
            seen: HashSet::new(),
            cfg: self.clone(),
            schema: output.clone(),
        })))
    }
}

struct SpikeCsvSource {
    path: PathBuf,
    lines: Option<Vec<String>>,
    next_line: usize,
    seen: HashSet<String>,
    cfg: IngestSpikeTimes,
    schema: SchemaRef,
}

impl SpikeCsvSource {
    /// Reads the file's data lines; `false` (and a failure naming the file) when its header is not
    /// Spike2Pop's.
    fn load(&mut self, out: &mut Emitter) -> Result<bool> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let header = lines.first().map(|h| h.trim().to_string()).unwrap_or_default();
        let cols: Vec<&str> = header.split(',').map(|c| c.trim().trim_matches('"')).collect();
        if cols != HEADER {
            out.fail(self.path.display().to_string(), format!("header is `{}`, expected `ID,spiking_times` (Spike2Pop format)", short(&header)));
            self.lines = Some(Vec::new());
            return Ok(false);
        }
        lines.remove(0);
        self.lines = Some(lines);
        self.next_line = 0;
        Ok(true)
    }
}

impl SourceOperator for SpikeCsvSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        if self.lines.is_none() && !self.load(out)? {
            return Ok(false);
        }
        let lines = self.lines.as_ref().expect("read");
        if self.next_line >= lines.len() {
            return Ok(false);
        }
        let (mut ids, mut trains) = (Vec::new(), Vec::new());
        while self.next_line < lines.len() && ids.len() < self.cfg.batch_rows {
            let line_no = self.next_line + 2; // 1-based, after the header
            let line = &lines[self.next_line];
            self.next_line += 1;
            if line.trim().is_empty() {
                continue;
            }
            let (id, parsed) = parse_spike_line(line, line_no, self.cfg.min_spikes);
            let unit = id.clone().unwrap_or_else(|| format!("line {line_no}"));
            match (id, parsed) {
                (Some(id), Ok(times)) => {
                    if !self.seen.insert(id.clone()) {
                        out.fail(unit, DicStageError::DuplicateId(id).to_string());
                        continue;
                    }
                    ids.push(id);
                    trains.push(times);
                }
                (_, Err(e)) => out.fail(unit, format!("line {line_no}: {e}")),
                (None, Ok(_)) => unreachable!("no id means a parse error"),
            }
        }
        if !ids.is_empty() {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(ids.iter())),
                Arc::new(f64_list_array(&trains.iter().map(|t| Some(t.as_slice())).collect::<Vec<_>>())?),
                Arc::new(Int64Array::from_iter_values(trains.iter().map(|t| t.len() as i64))),
            ];
            out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        Ok(true)
    }
}
