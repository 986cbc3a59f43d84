//! `features.bursts`: per simulated cell, the Spike2Pop activity class and burst metrics
//! ([`crate::dic::features::extract_features`]) and the thesis van Rossum distance to its target
//! train ([`crate::dic::features::van_rossum_distance`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dic::features::{SpikeTrainFeatures, extract_features, van_rossum_distance};
use crate::error::{Error, Result};
use crate::stage::columns::{field, string_rows};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::dic::options::{check_van_rossum, default_vr_dt, default_vr_eps};
use crate::stages::dic::spike_columns::{default_spike_column, lists_ms, ms_per_unit, no_clash};

fn default_target_column() -> String {
    "target_spike_times".into()
}

/// Per simulated cell: activity class, burst metrics (Spike2Pop's extractor: spikes per burst,
/// burst duration, intra- and inter-burst frequency, tonic frequency; 0 where the metric does not
/// apply to the class and NaN where upstream gives NaN) and the thesis van Rossum distance
/// d(target, cell) with τ from the target train (null when the row has no target train of ≥ 2
/// spikes).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesBursts {
    /// Column with the cell's spike times (list<float64> in ms or s) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Column with the target train (list<float64> in ms or s; empty string: no distance) [column].
    #[serde(default = "default_target_column")]
    pub target_column: String,
    /// Raster step of the van Rossum distance (thesis 0.1) [ms].
    #[serde(default = "default_vr_dt")]
    pub vr_dt_ms: f64,
    /// The van Rossum kernel is truncated where it falls below this (thesis 1e-6) [1/ms].
    #[serde(default = "default_vr_eps")]
    pub vr_epsilon: f64,
}

const BURSTS_ADDED: [&str; 7] =
    ["activity_class", "f_spiking_hz", "spikes_per_burst", "burst_duration_ms", "f_intra_burst_hz", "f_inter_burst_hz", "van_rossum_to_target"];

impl StageConfig for FeaturesBursts {
    const KIND: &'static str = "features.bursts";
    const SUMMARY: &'static str = "Spike train -> activity class, burst metrics, van Rossum distance to the target train";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "spike_column = \"spike_times\"\ntarget_column = \"target_spike_times\"";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        check_van_rossum(self.vr_dt_ms, self.vr_epsilon)
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &BURSTS_ADDED);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !self.target_column.is_empty() {
            if let Err(i) = ms_per_unit(input, &self.target_column, "target_column") {
                issues.push(i);
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("activity_class", DataType::Utf8, true, None));
        fields.push(field("f_spiking_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("spikes_per_burst", DataType::Float64, true, None));
        fields.push(field("burst_duration_ms", DataType::Float64, true, Some("ms")));
        fields.push(field("f_intra_burst_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("f_inter_burst_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("van_rossum_to_target", DataType::Float64, true, None));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let s = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| Error::msg(i.message))?;
        let t = if self.target_column.is_empty() {
            None
        } else {
            Some(ms_per_unit(&inputs[0], &self.target_column, "target_column").map_err(|i| Error::msg(i.message))?)
        };
        Ok(Operator::Transform(Box::new(BurstsOperator { cfg: self.clone(), spike_scale: s, target_scale: t, schema: output.clone() })))
    }
}

struct BurstsOperator {
    cfg: FeaturesBursts,
    spike_scale: f64,
    target_scale: Option<f64>,
    schema: SchemaRef,
}

impl TransformOperator for BurstsOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let trains = lists_ms(&batch, &self.cfg.spike_column, self.spike_scale)?;
        let targets = match self.target_scale {
            Some(s) => lists_ms(&batch, &self.cfg.target_column, s)?,
            None => vec![None; n],
        };
        let (dt, eps) = (self.cfg.vr_dt_ms, self.cfg.vr_epsilon);
        let results: Vec<(Option<SpikeTrainFeatures>, Option<f64>)> = trains
            .par_iter()
            .zip(&targets)
            .map(|(train, target)| {
                let Some(train) = train else { return (None, None) };
                let f = extract_features(train).ok();
                let d = target.as_ref().filter(|t| t.len() >= 2).and_then(|t| van_rossum_distance(t, train, dt, eps).ok());
                (f, d)
            })
            .collect();
        let ids = batch.column_by_name("recording_id").map(|_| string_rows(&batch, "recording_id")).transpose()?;
        for (row, (f, _)) in results.iter().enumerate() {
            if f.is_none() {
                let unit = ids.as_ref().and_then(|v| v[row].clone()).unwrap_or_else(|| format!("row {row}"));
                if trains[row].is_some() {
                    // Invalid train (unsorted / non-finite): reported, the row is kept with nulls.
                    out.fail(unit, "spike train is unsorted or not finite; features left null");
                }
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let g = |get: fn(&SpikeTrainFeatures) -> f64| Float64Array::from_iter(results.iter().map(|(f, _)| f.as_ref().map(get)));
        columns.push(Arc::new(StringArray::from_iter(results.iter().map(|(f, _)| f.as_ref().map(|f| f.label.name())))));
        columns.push(Arc::new(g(|f| f.f_spiking_hz)));
        columns.push(Arc::new(g(|f| f.nbr_spikes_bursting)));
        columns.push(Arc::new(g(|f| f.duration_bursting_ms)));
        columns.push(Arc::new(g(|f| f.f_intra_bursting_hz)));
        columns.push(Arc::new(g(|f| f.f_inter_bursting_hz)));
        columns.push(Arc::new(Float64Array::from_iter(results.iter().map(|(_, d)| *d))));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
