//! `dic.population`: each target (g_s, g_u) → M neuromodulated STG cells (spec §4.3), generated
//! by [`crate::dic::population::population_for_target`]; this file reads the targets and writes
//! one row per kept cell.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::options::{check_population, default_iterations, default_max_residual, default_v_th};
use super::spike_columns::{default_spike_column, ms_per_unit, no_clash, require_input};
use crate::dic::population::{PopulationProtocol, TargetPopulation, population_for_target, unit_seed};
use crate::error::Result;
use crate::simulate::stg::{CONDUCTANCE_NAMES, N_CONDUCTANCES};
use crate::stage::columns::{f64_rows, field, is_string, string_rows};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

fn default_cells() -> usize {
    16
}
fn default_min_kept() -> f64 {
    0.5
}

/// Generates a degenerate population for each target row: `cells_per_target` cells from the
/// spiking seed population neuromodulated to (g_s_target, g_u_target) at V_th (iterative
/// compensation, kernel defaults), one output row per kept cell with the eight conductances,
/// the achieved (g_s, g_u) and the residual. Cells with a negative conductance or a residual
/// above `max_residual` are dropped and counted; a target keeping fewer than
/// `min_kept_fraction` of its cells is unreachable and fails (with its residual).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicPopulation {
    /// Cells generated per target (M) [cells].
    #[serde(default = "default_cells")]
    pub cells_per_target: usize,
    /// Voltage at which the DICs are set [mV].
    #[serde(default = "default_v_th")]
    pub v_th_mv: f64,
    /// Fixed-point iterations of the iterative compensation (thesis default 5) [iterations].
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Largest ‖(g_s, g_u) − target‖₂ a kept cell may have (the thesis reachability threshold) [g_leak].
    #[serde(default = "default_max_residual")]
    pub max_residual: f64,
    /// Fewest kept cells, as a fraction of cells_per_target, for the target to count as reachable [1].
    #[serde(default = "default_min_kept")]
    pub min_kept_fraction: f64,
    /// Input column with the target's spike train, carried along as `target_spike_times` for
    /// validation (empty string: none) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Leave unreachable targets out silently instead of failing them (data-set generation over
    /// a plane that has unreachable corners; the count is in the stage's row counters) [bool].
    #[serde(default)]
    pub drop_unreachable: bool,
}

impl DicPopulation {
    fn protocol(&self) -> PopulationProtocol {
        PopulationProtocol { cells: self.cells_per_target, v_th_mv: self.v_th_mv, iterations: self.iterations, max_residual: self.max_residual }
    }
}

const POPULATION_ADDED: [&str; 18] = [
    "target_spike_count", "cell", "g_Na", "g_Kd", "g_CaT", "g_CaS", "g_KCa", "g_A", "g_H", "g_leak", "g_s_achieved", "g_u_achieved", "residual",
    "cells_requested", "cells_kept", "dropped_negative", "dropped_residual", "target_spike_times",
];

impl StageConfig for DicPopulation {
    const KIND: &'static str = "dic.population";
    const SUMMARY: &'static str = "Targets (g_s, g_u) -> M neuromodulated STG cells per target (iterative compensation)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "cells_per_target = 16\nmax_residual = 0.1";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.cells_per_target == 0 || self.cells_per_target > 1_000_000 {
            issues.push(Issue::at(&["cells_per_target"], "must be in 1..=1000000"));
        }
        issues.extend(check_population(self.v_th_mv, self.iterations, self.max_residual));
        if !(self.min_kept_fraction.is_finite() && (0.0..=1.0).contains(&self.min_kept_fraction)) {
            issues.push(Issue::at(&["min_kept_fraction"], "must be in [0, 1]"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &POPULATION_ADDED);
        for c in ["g_s_target", "g_u_target"] {
            if let Err(i) = require_input(input, c, "a numeric column", |t| t.is_numeric()) {
                issues.push(i);
            }
        }
        if let Err(i) = require_input(input, "recording_id", "a string id", is_string) {
            issues.push(i);
        }
        let train = (!self.spike_column.is_empty()).then(|| ms_per_unit(input, &self.spike_column, "spike_column"));
        if let Some(Err(i)) = &train {
            issues.push(i.clone());
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = Vec::new();
        for f in input.fields() {
            if f.name() == &self.spike_column {
                fields.push(f.as_ref().clone().with_name("target_spike_times"));
            } else if f.name() == "spike_count" {
                // The simulation downstream adds the cell's own `spike_count`: keep the target's
                // under its own name (pipeline composition bug: two `spike_count` columns).
                fields.push(f.as_ref().clone().with_name("target_spike_count"));
            } else {
                fields.push(f.as_ref().clone());
            }
        }
        fields.push(field("cell", DataType::Int64, false, None));
        for name in CONDUCTANCE_NAMES {
            fields.push(field(name, DataType::Float64, false, Some("mS/cm2")));
        }
        fields.push(field("g_s_achieved", DataType::Float64, false, Some("g_leak")));
        fields.push(field("g_u_achieved", DataType::Float64, false, Some("g_leak")));
        fields.push(field("residual", DataType::Float64, false, Some("g_leak")));
        fields.push(field("cells_requested", DataType::Int64, false, None));
        fields.push(field("cells_kept", DataType::Int64, false, None));
        fields.push(field("dropped_negative", DataType::Int64, false, None));
        fields.push(field("dropped_residual", DataType::Int64, false, None));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(PopulationOperator { cfg: self.clone(), seed: ctx.seed, schema: output.clone() })))
    }
}

struct PopulationOperator {
    cfg: DicPopulation,
    seed: u64,
    schema: SchemaRef,
}

impl PopulationOperator {
    /// The rows of one target's kept cells: the target row repeated, then the cells' columns.
    fn cell_rows(&self, batch: &RecordBatch, row: usize, pop: TargetPopulation) -> Result<RecordBatch> {
        let kept = pop.conductances.len();
        let idx = UInt32Array::from(vec![row as u32; kept]);
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
        columns.push(Arc::new(Int64Array::from_iter_values(0..kept as i64)));
        for k in 0..N_CONDUCTANCES {
            columns.push(Arc::new(Float64Array::from_iter_values(pop.conductances.iter().map(|g| g[k]))));
        }
        columns.push(Arc::new(Float64Array::from_iter_values(pop.achieved_gs_gu.iter().map(|a| a.0))));
        columns.push(Arc::new(Float64Array::from_iter_values(pop.achieved_gs_gu.iter().map(|a| a.1))));
        columns.push(Arc::new(Float64Array::from(pop.residuals)));
        for v in [self.cfg.cells_per_target, kept, pop.dropped_negative, pop.dropped_residual] {
            columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(v as i64, kept))));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl TransformOperator for PopulationOperator {
    /// One output batch per target, so a large population streams out target by target.
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let ids = string_rows(&batch, "recording_id")?;
        let gs = f64_rows(&batch, "g_s_target")?;
        let gu = f64_rows(&batch, "g_u_target")?;
        let m = self.cfg.cells_per_target;
        let min_kept = ((self.cfg.min_kept_fraction * m as f64).ceil() as usize).max(1);
        for row in 0..batch.num_rows() {
            let unit = ids[row].clone().unwrap_or_else(|| format!("row {row}"));
            let (Some(g_s), Some(g_u)) = (gs[row].filter(|g| g.is_finite()), gu[row].filter(|g| g.is_finite())) else {
                out.fail(unit, "g_s_target / g_u_target is null or not finite");
                continue;
            };
            let pop = match population_for_target(&self.cfg.protocol(), unit_seed(self.seed, &unit), g_s, g_u) {
                Ok(p) => p,
                Err(e) => {
                    out.fail(unit, format!("population generation failed: {e}"));
                    continue;
                }
            };
            let kept = pop.conductances.len();
            if kept < min_kept && self.cfg.drop_unreachable {
                continue;
            }
            if kept < min_kept {
                out.fail(
                    unit,
                    format!(
                        "unreachable target (g_s, g_u) = ({g_s:.4}, {g_u:.4}): {kept}/{m} cells within residual {} \
                         ({} with a negative conductance, {} with a larger residual; mean residual of the solved cells {:.4})",
                        self.cfg.max_residual, pop.dropped_negative, pop.dropped_residual, pop.mean_residual_all
                    ),
                );
                continue;
            }
            out.emit(self.cell_rows(&batch, row, pop)?);
        }
        Ok(())
    }
}
