//! `preprocess.resample`: the trace columns of the sweeps table at a new sampling rate (rational
//! polyphase FIR, scipy `resample_poly`: [`Resampler`]), the rate column following.
//!
//! Chunked sweeps (`ingest.abf` with `chunk_s`): each row is resampled on its own (mean padding at
//! its ends; the FIR reaches 10·max(up, down) input samples, within the overlap); `trace_start_s`
//! and the chunk times stay valid since the first output sample is at the first input sample's time.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lists::{check_trace_columns, trace_columns};
use super::trace_rows::{Rows, default_rate_column, each_row, first_non_finite, with_lists};
use crate::error::{Error, Result};
use crate::preprocess::resample::{Padding, Resampler, rational_ratio};
use crate::stage::columns::{check_rate_column, f64_list_rows, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

fn d_max_factor() -> u64 {
    1000
}

/// What a trace is taken to be beyond its ends while resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    /// The trace's mean (scipy `padtype="mean"`).
    #[default]
    Mean,
    /// The trace's median (`padtype="median"`).
    Median,
    /// Zeros (scipy's default `padtype="constant"`; pulls the ends of a −65 mV trace towards 0).
    Zero,
}

/// Resampling of trace columns to a new sampling rate (rational polyphase FIR, scipy `resample_poly`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessResample {
    /// The new sampling rate; `sampling_rate_column` is set to it. The ratio to each row's rate
    /// must be a fraction up/down with both at most `max_factor` [Hz].
    pub output_rate_hz: f64,
    /// List columns to resample. Default: every numeric list column not in seconds (traces;
    /// event-time lists are not samples). Every trace column must be listed, since the rate
    /// column will no longer describe the others [columns].
    #[serde(default)]
    pub columns: Vec<String>,
    /// Value assumed beyond a trace's ends: "mean", "median" or "zero" [mode].
    #[serde(default)]
    pub padding: PadMode,
    /// Largest up or down factor; the anti-alias FIR has 20·max(up, down) + 1 taps [1].
    #[serde(default = "d_max_factor")]
    pub max_factor: u64,
    /// Column with each row's sampling rate [column].
    #[serde(default = "default_rate_column")]
    pub sampling_rate_column: String,
}

impl PreprocessResample {
    fn columns_of(&self, input: &Schema) -> Vec<String> {
        if self.columns.is_empty() { trace_columns(input) } else { self.columns.clone() }
    }
}

impl StageConfig for PreprocessResample {
    const KIND: &'static str = "preprocess.resample";
    const SUMMARY: &'static str =
        "Resample trace columns to a new sampling rate: rational polyphase with a Kaiser-windowed anti-alias FIR (scipy resample_poly)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "output_rate_hz = 10000.0";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Each row (a sweep, or a chunk with its overlap) is resampled on its own.
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.output_rate_hz.is_finite() && self.output_rate_hz > 0.0) {
            issues.push(Issue::at(&["output_rate_hz"], format!("{} Hz must be a positive sampling rate", self.output_rate_hz)));
        }
        if !(1..=100_000).contains(&self.max_factor) {
            issues.push(Issue::at(&["max_factor"], format!("{} is outside 1..=100000", self.max_factor)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        let columns = self.columns_of(input);
        check_trace_columns(input, &columns, &self.columns, &mut issues);
        if !self.columns.is_empty() {
            for c in trace_columns(input).iter().filter(|c| !self.columns.contains(*c)) {
                issues.push(Issue::at(
                    &["columns"],
                    format!("`{c}` is a trace too; list it, or drop it before this stage (transform.select), since `{}` will no longer be its rate", self.sampling_rate_column),
                ));
            }
        }
        check_rate_column(input, &self.sampling_rate_column, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        // The rate column becomes float64 in Hz whatever it was.
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| if f.name() == &self.sampling_rate_column { field(f.name(), DataType::Float64, f.is_nullable(), Some("Hz")) } else { f.as_ref().clone() })
            .collect();
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(ResampleOp { columns: self.columns_of(&inputs[0]), cfg: self.clone(), schema: output.clone(), resampler: None })))
    }
}

struct ResampleOp {
    cfg: PreprocessResample,
    columns: Vec<String>,
    schema: SchemaRef,
    /// The last resampler and the input rate it is for (rates rarely change between rows).
    resampler: Option<(f64, Resampler)>,
}

impl ResampleOp {
    /// Resamples row `r` of every column in `lists` in place; returns the row's new rate.
    fn resample_row(&mut self, r: usize, rows: &Rows, lists: &mut [Vec<Option<Vec<f64>>>]) -> Result<f64> {
        let rate = rows.rate(r)?;
        if !self.resampler.as_ref().is_some_and(|(from, _)| *from == rate) {
            let (up, down) = rational_ratio(rate, self.cfg.output_rate_hz, self.cfg.max_factor)
                .map_err(|e| Error::msg(format!("`output_rate_hz` = {} Hz from {rate} Hz: {e}", self.cfg.output_rate_hz)))?;
            self.resampler = Some((rate, Resampler::new(up as usize, down as usize)));
        }
        let (_, rs) = self.resampler.as_ref().expect("set above");
        let padding = match self.cfg.padding {
            PadMode::Mean => Padding::Mean,
            PadMode::Median => Padding::Median,
            PadMode::Zero => Padding::Zero,
        };
        for (ci, c) in self.columns.iter().enumerate() {
            let Some(x) = lists[ci][r].take() else { continue };
            if let Some(i) = first_non_finite(&x) {
                return Err(Error::msg(format!("`{c}` has a non-finite sample at index {i}")));
            }
            lists[ci][r] = Some(rs.apply(&x, padding));
        }
        Ok(rate * rs.up as f64 / rs.down as f64)
    }
}

impl TransformOperator for ResampleOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let mut lists: Vec<Vec<Option<Vec<f64>>>> = self.columns.iter().map(|c| f64_list_rows(&batch, c)).collect::<Result<_>>()?;
        let mut new_rates = vec![None; n];
        let keep = each_row(&rows, out, |r| {
            new_rates[r] = Some(self.resample_row(r, &rows, &mut lists)?);
            Ok(())
        });
        let mut columns = with_lists(&batch, &self.schema, &keep, &self.columns, &lists)?;
        let pos = self.schema.index_of(&self.cfg.sampling_rate_column)?;
        columns[pos] = Arc::new(new_rates.iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| *v).collect::<Float64Array>());
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
