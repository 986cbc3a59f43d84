//! `simulate.stg`: a transform that simulates one Liu-1998 STG cell per row of a conductance
//! table and adds its spike times (and, if asked, its voltage) to the row.
//!
//! The numerics are the reference-tested kernel [`crate::simulate::stg`] (exponential Euler,
//! checked against a Radau solution); this module reads the conductance columns, runs the rows in
//! parallel and writes the result columns. A row the kernel refuses (a null or negative
//! conductance, no leak) gets `status` = `error` with the reason, never a NaN-filled row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::list_columns::list_column;
use crate::error::{Error, Result};
use crate::simulate::stg;
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

fn default_dt_ms() -> f64 {
    0.01
}
fn default_duration_ms() -> f64 {
    6000.0
}
fn default_transient_ms() -> f64 {
    3000.0
}
fn default_conductance_columns() -> Vec<String> {
    stg::CONDUCTANCE_NAMES.iter().map(|s| s.to_string()).collect()
}
fn default_v0() -> f64 {
    -70.0
}
fn default_ca0() -> f64 {
    0.5
}

/// Simulates one Liu-1998 STG cell per row of a conductance table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateStg {
    /// Integration step of the exponential-Euler scheme (0.01 keeps spike times within 0.5 ms of
    /// the exact solution; above 0.025 is refused) [ms].
    #[serde(default = "default_dt_ms")]
    pub dt_ms: f64,
    /// Simulated time from the initial state, transient included [ms].
    #[serde(default = "default_duration_ms")]
    pub duration_ms: f64,
    /// Initial part simulated but not recorded (3000 in the STG data-set protocol) [ms].
    #[serde(default = "default_transient_ms")]
    pub transient_ms: f64,
    /// Keep every n-th voltage sample of the recorded window as `voltage` (0 = no voltage) [steps].
    #[serde(default)]
    pub voltage_every_steps: usize,
    /// Input columns holding g_Na, g_Kd, g_CaT, g_CaS, g_KCa, g_A, g_H, g_leak, in that order [mS/cm²].
    #[serde(default = "default_conductance_columns")]
    pub conductance_columns: Vec<String>,
    /// Voltage of the steady initial state [mV].
    #[serde(default = "default_v0")]
    pub v0_mv: f64,
    /// Calcium of the steady initial state [µM].
    #[serde(default = "default_ca0")]
    pub ca0_um: f64,
    /// Use voltage lookup tables for the gates (≈3× faster, same spike accuracy) [bool].
    #[serde(default)]
    pub gate_tables: bool,
}

impl SimulateStg {
    fn sim_config(&self) -> stg::SimulationConfig {
        stg::SimulationConfig {
            dt_ms: self.dt_ms,
            duration_ms: self.duration_ms,
            transient_ms: self.transient_ms,
            voltage_every_steps: self.voltage_every_steps,
            ..stg::SimulationConfig::default()
        }
    }
}

/// The columns this stage adds to its input's.
const ADDED: [&str; 6] = ["spike_times", "spike_count", "status", "status_detail", "voltage", "voltage_dt_ms"];

impl StageConfig for SimulateStg {
    const KIND: &'static str = "simulate.stg";
    const SUMMARY: &'static str = "Simulate one Liu-1998 STG cell per row of a conductance table (spike times)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "dt_ms = 0.025\nduration_ms = 6000.0\ntransient_ms = 3000.0";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    /// Each output row is its input row's cell, simulated alone.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.dt_ms.is_finite() && self.dt_ms > 0.0 && self.dt_ms <= 0.025) {
            issues.push(Issue::at(&["dt_ms"], format!("{} must be in (0, 0.025] ms (exponential Euler loses spike-time accuracy above)", self.dt_ms)));
        }
        if !(self.duration_ms.is_finite() && self.duration_ms > 0.0) {
            issues.push(Issue::at(&["duration_ms"], format!("{} must be a finite number > 0", self.duration_ms)));
        } else if self.duration_ms / self.dt_ms > 1e9 {
            issues.push(Issue::at(&["duration_ms"], "more than 1e9 integration steps per cell"));
        }
        if !(self.transient_ms.is_finite() && self.transient_ms >= 0.0 && self.transient_ms < self.duration_ms) {
            issues.push(Issue::at(&["transient_ms"], format!("{} must be in [0, duration_ms)", self.transient_ms)));
        }
        if self.voltage_every_steps > 0 && self.dt_ms > 0.0 {
            let samples = (self.duration_ms - self.transient_ms) / self.dt_ms / self.voltage_every_steps as f64;
            if samples > 1e8 {
                issues.push(Issue::at(&["voltage_every_steps"], format!("{samples:.0} voltage samples per cell; decimate more")));
            }
        }
        if self.conductance_columns.len() != stg::N_CONDUCTANCES {
            issues.push(Issue::at(&["conductance_columns"], format!("needs {} names (g_Na, g_Kd, g_CaT, g_CaS, g_KCa, g_A, g_H, g_leak), got {}", stg::N_CONDUCTANCES, self.conductance_columns.len())));
        }
        if !self.v0_mv.is_finite() {
            issues.push(Issue::at(&["v0_mv"], "must be finite"));
        }
        if !(self.ca0_um.is_finite() && self.ca0_um >= 0.0) {
            issues.push(Issue::at(&["ca0_um"], "must be finite and >= 0"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let input_name = "inputs[0]";
        let mut issues = Vec::new();
        for c in &self.conductance_columns {
            if let Err(i) = crate::stage::columns::require(input, input_name, c, "a numeric column", |t| t.is_numeric(), None, &["conductance_columns"]) {
                issues.push(i);
            }
        }
        for f in input.fields() {
            if ADDED.contains(&f.name().as_str()) {
                issues.push(Issue::inputs(format!("input `{input_name}` already has a column `{}` that this stage adds", f.name())));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("spike_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), false, Some("s")));
        fields.push(field("spike_count", DataType::Int64, true, None));
        fields.push(field("status", DataType::Utf8, false, None));
        fields.push(field("status_detail", DataType::Utf8, true, None));
        if self.voltage_every_steps > 0 {
            fields.push(field("voltage", DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, false))), true, Some("mV")));
            fields.push(field("voltage_dt_ms", DataType::Float64, false, Some("ms")));
        }
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let tables = if self.gate_tables { Some(Arc::new(stg::GateTables::new(self.dt_ms).map_err(|e| Error::msg(e.to_string()))?)) } else { None };
        let u0 = stg::initial_state(self.v0_mv, self.ca0_um);
        Ok(Operator::Transform(Box::new(StgOperator { cfg: self.clone(), schema: output.clone(), tables, u0 })))
    }
}

struct StgOperator {
    cfg: SimulateStg,
    schema: SchemaRef,
    tables: Option<Arc<stg::GateTables>>,
    u0: [f64; stg::N_STATES],
}

/// Why one row has no simulation: written to its `status_detail`.
#[derive(Debug, Clone, thiserror::Error)]
enum RowError {
    #[error("`{0}` is null")]
    NullConductance(String),
    #[error(transparent)]
    Kernel(#[from] stg::StgError),
}

impl StgOperator {
    /// Each row's eight conductances, in kernel order, or the first null among them.
    fn conductances(&self, batch: &RecordBatch) -> Result<Vec<std::result::Result<[f64; stg::N_CONDUCTANCES], RowError>>> {
        let mut cols: Vec<Float64Array> = Vec::with_capacity(stg::N_CONDUCTANCES);
        for c in &self.cfg.conductance_columns {
            let col = batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}` in the batch")))?;
            let col = arrow::compute::cast(col, &DataType::Float64)?;
            cols.push(col.as_primitive::<Float64Type>().clone());
        }
        Ok((0..batch.num_rows())
            .map(|r| {
                let mut g = [0.0; stg::N_CONDUCTANCES];
                for (k, col) in cols.iter().enumerate() {
                    if col.is_null(r) {
                        return Err(RowError::NullConductance(self.cfg.conductance_columns[k].clone()));
                    }
                    g[k] = col.value(r);
                }
                Ok(g)
            })
            .collect())
    }
}

impl TransformOperator for StgOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = self.conductances(&batch)?;
        let config = self.cfg.sim_config();
        let params = stg::StgParams::default();
        let (u0, tables) = (&self.u0, self.tables.as_deref());
        let results: Vec<std::result::Result<stg::SimulationOutput, RowError>> = rows
            .par_iter()
            .map(|g| {
                let g = g.as_ref().map_err(Clone::clone)?;
                Ok(match tables {
                    Some(t) => stg::simulate_cell_with_tables(g, u0, &params, &config, t),
                    None => stg::simulate_cell(g, u0, &params, &config),
                }?)
            })
            .collect();
        let transient_ms = self.cfg.transient_ms;
        let spikes: Vec<Vec<f64>> = results
            .iter()
            .map(|r| r.as_ref().map(|o| o.spike_times_ms.iter().map(|t| (t - transient_ms) * 1e-3).collect()).unwrap_or_default())
            .collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(list_column::<Float64Type, _>(spikes.iter().map(Some), false)?));
        columns.push(Arc::new(Int64Array::from_iter(results.iter().zip(&spikes).map(|(r, s)| r.is_ok().then_some(s.len() as i64)))));
        columns.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| if r.is_ok() { "ok" } else { "error" }))));
        columns.push(Arc::new(StringArray::from_iter(results.iter().map(|r| r.as_ref().err().map(ToString::to_string)))));
        if self.cfg.voltage_every_steps > 0 {
            let voltages = results.iter().map(|r| r.as_ref().ok().map(|o| o.voltage_mv.iter().map(|&v| v as f32).collect::<Vec<f32>>()));
            columns.push(Arc::new(list_column::<Float32Type, _>(voltages, true)?));
            let dt = self.cfg.dt_ms * self.cfg.voltage_every_steps as f64;
            columns.push(Arc::new(Float64Array::from_iter_values((0..n).map(|_| dt))));
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_checks() {
        let cfg: SimulateStg = toml::from_str(SimulateStg::EXAMPLE).unwrap();
        assert!(cfg.check(&StageContext::new("stg", ".", 0, ".")).is_empty());
    }
}
