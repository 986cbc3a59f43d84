//! `features.subthreshold`: IPFX's subthreshold features (stimulus amplitude, baseline Vm, peak
//! deflection, sag, τ) of every sweep, over its cell's stimulus window; one row per sweep.
//!
//! The rows are gathered and grouped into cells, and each cell's stimulus window found, as
//! [`super::cell_rows`] describes; the kernel is [`crate::features::subthreshold`].
//!
//! Failures: a cell whose sweeps cannot be put together (mixed sampling rates, repeated sweep
//! numbers, no step in any command) fails alone as `out.fail(<cell>, reason)`; a single bad sweep
//! fails alone as `<cell>/<sweep>`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use rayon::prelude::*;

use super::cell_rows::{CellData, Gathered, Grouping, cell_config, check_input, window_columns};
use crate::error::Result;
use crate::features::subthreshold::{StimulusWindow, SubthresholdFeatures, SubthresholdParams, subthreshold_features};
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

cell_config! {
    plain_config_struct;
    /// IPFX's subthreshold features (baseline Vm, peak deflection, sag, τ) of every sweep, over
    /// its cell's stimulus window; one row per sweep.
    FeaturesSubthreshold {}
}

fn subthreshold_schema(cell_column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        field(cell_column, DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("window_start", DataType::Float64, false, Some("s")),
        field("window_end", DataType::Float64, false, Some("s")),
        field("stim_amp", DataType::Float64, false, Some("pA")),
        field("baseline_v", DataType::Float64, false, Some("mV")),
        field("peak_deflection", DataType::Float64, false, Some("mV")),
        field("min_v", DataType::Float64, false, Some("mV")),
        field("sag", DataType::Float64, true, Some("1")),
        field("tau", DataType::Float64, true, Some("ms")),
        field("tau_status", DataType::Utf8, false, None),
    ]))
}

impl StageConfig for FeaturesSubthreshold {
    const KIND: &'static str = "features.subthreshold";
    const SUMMARY: &'static str =
        "IPFX subthreshold features per sweep (stimulus amplitude, baseline Vm, peak deflection, sag, tau) over its cell's stimulus window";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "cell_column = \"recording_id\"";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Cell features need every sweep of the cell.
        Partitioning::per_unit(self.cell_column.clone())
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.common_issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        check_input(&inputs[0], &self.cell_column)?;
        if self.cell_column == "sweep" {
            return Err(vec![Issue::at(&["cell_column"], "`sweep` numbers the sweeps of a cell; name the cell column")]);
        }
        Ok(subthreshold_schema(&self.cell_column))
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SubthresholdOp {
            grouping: self.grouping(),
            params: self.subthreshold(),
            gathered: Gathered::default(),
            schema: output.clone(),
        })))
    }
}

struct SubthresholdOp {
    grouping: Grouping,
    params: SubthresholdParams,
    gathered: Gathered,
    schema: SchemaRef,
}

type SweepOutcome = (usize, std::result::Result<SubthresholdFeatures, String>);

impl TransformOperator for SubthresholdOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.gathered.add(&batch, &self.grouping.cell_column)
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let cells: Vec<(String, Vec<(usize, usize)>)> = self.gathered.cells(out).into_iter().collect();
        let results: Vec<std::result::Result<(StimulusWindow, Vec<SweepOutcome>), String>> = cells
            .par_iter()
            .map(|(_, rows)| {
                let data = CellData::load(&self.gathered, rows)?;
                let window = data.window(self.grouping.window)?;
                let per_sweep = (0..data.traces.len())
                    .into_par_iter()
                    .map(|k| {
                        let r = subthreshold_features(&data.trace(k), window, &self.params).map_err(|e| e.to_string());
                        (data.sweep_numbers[k], r)
                    })
                    .collect();
                Ok((window, per_sweep))
            })
            .collect();
        self.gathered = Gathered::default();
        let mut rows: Vec<(&str, usize, StimulusWindow, SubthresholdFeatures)> = Vec::new();
        for ((cell, _), r) in cells.iter().zip(results) {
            match r {
                Err(message) => out.fail(cell.clone(), message),
                Ok((window, sweeps)) => {
                    for (s, f) in sweeps {
                        match f {
                            Ok(f) => rows.push((cell.as_str(), s, window, f)),
                            Err(message) => out.fail(format!("{cell}/{s}"), message),
                        }
                    }
                }
            }
        }
        let windows: Vec<StimulusWindow> = rows.iter().map(|r| r.2).collect();
        let [ws, we] = window_columns(&windows);
        let f64s = |get: &dyn Fn(&SubthresholdFeatures) -> Option<f64>| -> ArrayRef {
            Arc::new(rows.iter().map(|r| get(&r.3)).collect::<Float64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1 as i64).collect::<Int64Array>()),
            ws,
            we,
            f64s(&|f| Some(f.stim_amp_pa)),
            f64s(&|f| Some(f.v_baseline_mv)),
            f64s(&|f| Some(f.peak_deflect_mv)),
            f64s(&|f| Some(f.min_deflect_mv)),
            f64s(&|f| f.sag),
            f64s(&|f| f.tau.tau_s.map(|t| t * 1e3)),
            Arc::new(
                rows.iter()
                    .map(|r| Some(serde_json::to_value(r.3.tau.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()))
                    .collect::<StringArray>(),
            ),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_ipfx() {
        let s: FeaturesSubthreshold = toml::from_str("").unwrap();
        assert_eq!(s.subthreshold(), SubthresholdParams::default());
        assert_eq!(s.cell_column, "recording_id");
        assert!(toml::from_str::<FeaturesSubthreshold>("filter_khz = 5").is_err());
    }
}
