//! `simulate.glif_replay`: each cell's own GLIF model played the square stimulus of each of its
//! sweeps (amplitude, onset and duration from `ingest.allen_sweeps`), the model's spike count per
//! row: the mechanistic baseline of a spike-count model (study 1, specs/studies.md).
//!
//! The stimulus is [`crate::simulate::stimulus::square_step`] at the model's own step and the
//! count is [`crate::simulate::glif::count_spikes`]; this module reads the columns, parses each
//! distinct config once and writes `glif_spike_count` and `glif_status`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::simulate::glif::{self, GlifConfig, GlifError, GlifRunStatus, GlifSpikeCount};
use crate::simulate::stimulus::{self, StimulusError};
use crate::stage::columns::{column_list, field, is_numeric, is_string, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

fn d_names() -> Vec<String> {
    vec!["Long Square".into()]
}
fn d_tail() -> f64 {
    0.1
}

/// Plays each selected row's square stimulus to the GLIF model in its `neuron_config` column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateGlifReplay {
    /// Rows whose `stimulus_name` is one of these are simulated; the others get null [names].
    #[serde(default = "d_names")]
    pub stimulus_names: Vec<String>,
    /// Simulated time after the step ends; spikes after it are not counted [s].
    #[serde(default = "d_tail")]
    pub tail_s: f64,
}

/// The input columns the stage reads: (name, numeric, unit).
const READS: [(&str, bool, Option<&str>); 5] = [
    ("stimulus_name", false, None),
    ("neuron_config", false, None),
    ("stimulus_amplitude", true, Some("pA")),
    ("stimulus_start_s", true, Some("s")),
    ("stimulus_duration_s", true, Some("s")),
];

/// The columns it adds.
const ADDS: [&str; 2] = ["glif_spike_count", "glif_status"];

impl StageConfig for SimulateGlifReplay {
    const KIND: &'static str = "simulate.glif_replay";
    const SUMMARY: &'static str =
        "Play each row's square stimulus (amplitude, onset, duration) to the GLIF model of its `neuron_config` column; the model's spike count per row";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "stimulus_names = [\"Long Square\"]\ntail_s = 0.1";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    /// Each output row is its input row's sweep, replayed alone.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.stimulus_names.is_empty() {
            issues.push(Issue::at(&["stimulus_names"], "name at least one stimulus type to simulate"));
        }
        if !(self.tail_s.is_finite() && self.tail_s >= 0.0) {
            issues.push(Issue::at(&["tail_s"], format!("must be >= 0 s, got {}", self.tail_s)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (c, numeric, unit) in READS {
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::inputs(format!("the input has no column `{c}` (ingest.allen_sweeps makes it); it has: {}", column_list(input)))),
                Ok(f) if numeric && !is_numeric(f.data_type()) => issues.push(Issue::inputs(format!("`{c}` must be numeric"))),
                Ok(f) if !numeric && !is_string(f.data_type()) => issues.push(Issue::inputs(format!("`{c}` must be a string column"))),
                Ok(f) if unit.is_some() && unit_of(f) != unit => {
                    issues.push(Issue::inputs(format!("`{c}` is in {}, but {} is needed", unit_of(f).unwrap_or("no unit"), unit.unwrap_or(""))))
                }
                _ => {}
            }
        }
        for c in ADDS {
            if input.field_with_name(c).is_ok() {
                issues.push(Issue::inputs(format!("the input already has a column `{c}`, which this stage adds")));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<_> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("glif_spike_count", DataType::Int64, true, None));
        fields.push(field("glif_status", DataType::Utf8, true, None));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(ReplayOp { cfg: self.clone(), schema: output.clone() })))
    }
}

struct ReplayOp {
    cfg: SimulateGlifReplay,
    schema: SchemaRef,
}

/// Why a selected row's replay gave no count: written to its `glif_status` as `error: ...`.
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error(transparent)]
    Stimulus(#[from] StimulusError),
    #[error(transparent)]
    Glif(#[from] GlifError),
}

/// The columns of one batch the replay reads.
struct Rows {
    names: ArrayRef,
    configs: ArrayRef,
    ids: Option<ArrayRef>,
    amp: Vec<Option<f64>>,
    start: Vec<Option<f64>>,
    dur: Vec<Option<f64>>,
}

impl Rows {
    fn read(batch: &RecordBatch) -> Result<Self> {
        let column = |c: &str| batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")));
        let text = |c: &str| -> Result<ArrayRef> { Ok(arrow::compute::cast(column(c)?, &DataType::Utf8)?) };
        let number = |c: &str| -> Result<Vec<Option<f64>>> {
            let a = arrow::compute::cast(column(c)?, &DataType::Float64)?;
            Ok(a.as_primitive::<Float64Type>().iter().collect())
        };
        Ok(Rows {
            names: text("stimulus_name")?,
            configs: text("neuron_config")?,
            ids: text("recording_id").ok(),
            amp: number("stimulus_amplitude")?,
            start: number("stimulus_start_s")?,
            dur: number("stimulus_duration_s")?,
        })
    }

    fn name(&self, r: usize) -> Option<&str> {
        let a = self.names.as_string::<i32>();
        a.is_valid(r).then(|| a.value(r))
    }

    fn config(&self, r: usize) -> Option<&str> {
        let a = self.configs.as_string::<i32>();
        a.is_valid(r).then(|| a.value(r))
    }

    /// The recording a row belongs to, for failure reports.
    fn unit(&self, r: usize) -> String {
        self.ids.as_ref().map_or(format!("row {r}"), |a| a.as_string::<i32>().value(r).to_string())
    }

    /// The row's square (amplitude pA, onset s, duration s), if it has a playable one.
    fn square(&self, r: usize) -> Option<(f64, f64, f64)> {
        match (self.amp[r], self.start[r], self.dur[r]) {
            (Some(a), Some(s0), Some(d)) if a.is_finite() && s0 >= 0.0 && d > 0.0 => Some((a, s0, d)),
            _ => None,
        }
    }
}

/// Parses each distinct config text of the batch once: exactly one GLIF config per cell.
fn parse_configs<'a>(rows: &'a Rows, n: usize) -> HashMap<&'a str, Result<GlifConfig>> {
    let mut parsed: HashMap<&str, Result<GlifConfig>> = HashMap::new();
    for r in 0..n {
        if let Some(text) = rows.config(r) {
            parsed.entry(text).or_insert_with_key(|t| match glif::parse_neuron_configs(t) {
                Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
                Ok(v) => Err(Error::msg(format!("`neuron_config` holds {} configs, not one", v.len()))),
                Err(e) => Err(Error::msg(e.to_string())),
            });
        }
    }
    parsed
}

/// The spike count of one square played to one model at the model's step.
fn replay(c: &GlifConfig, amplitude_pa: f64, start_s: f64, duration_s: f64, tail_s: f64) -> std::result::Result<GlifSpikeCount, ReplayError> {
    let stim = stimulus::square_step(c.dt_s, start_s, duration_s, start_s + duration_s + tail_s, amplitude_pa * 1e-12)?;
    Ok(glif::count_spikes(c, &stim)?)
}

impl ReplayOp {
    fn selected(&self, rows: &Rows, r: usize) -> bool {
        rows.name(r).is_some_and(|name| self.cfg.stimulus_names.iter().any(|x| x == name))
    }
}

impl TransformOperator for ReplayOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = Rows::read(&batch)?;
        let parsed = parse_configs(&rows, n);
        // Selected rows with a model: a bad config fails its recording alone; a row without a
        // playable square keeps a null count.
        let mut keep = vec![true; n];
        let mut jobs: Vec<(usize, &GlifConfig, (f64, f64, f64))> = Vec::new();
        for r in 0..n {
            let Some(text) = rows.config(r).filter(|_| self.selected(&rows, r)) else { continue };
            match &parsed[text] {
                Ok(c) => jobs.extend(rows.square(r).map(|sq| (r, c, sq))),
                Err(e) => {
                    keep[r] = false;
                    out.fail(rows.unit(r), format!("neuron_config: {e}"));
                }
            }
        }
        let tail_s = self.cfg.tail_s;
        let results: Vec<(usize, std::result::Result<GlifSpikeCount, ReplayError>)> =
            jobs.par_iter().map(|&(r, c, (a, s0, d))| (r, replay(c, a, s0, d, tail_s))).collect();
        // Status: why a selected row has no count unless its replay says otherwise.
        let mut count: Vec<Option<i64>> = vec![None; n];
        let mut status: Vec<Option<String>> =
            (0..n).map(|r| self.selected(&rows, r).then(|| if rows.config(r).is_some() { "no_square" } else { "no_model" }.to_string())).collect();
        for (r, res) in results {
            status[r] = Some(match res {
                Ok(GlifSpikeCount { status: GlifRunStatus::Completed, n_spikes, .. }) => {
                    count[r] = Some(n_spikes as i64);
                    "ok".into()
                }
                Ok(GlifSpikeCount { status: GlifRunStatus::BadReset { .. }, .. }) => "bad_reset".into(),
                Err(e) => format!("error: {e}"),
            });
        }
        let kept: Vec<u64> = (0..n).filter(|&r| keep[r]).map(|r| r as u64).collect();
        let idx = arrow::array::UInt64Array::from(kept.clone());
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
        columns.push(Arc::new(kept.iter().map(|&r| count[r as usize]).collect::<Int64Array>()));
        columns.push(Arc::new(kept.iter().map(|&r| status[r as usize].clone()).collect::<StringArray>()));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_checks() {
        let cfg: SimulateGlifReplay = toml::from_str(SimulateGlifReplay::EXAMPLE).unwrap();
        assert!(cfg.check(&StageContext::new("replay", ".", 0, ".")).is_empty());
    }
}
