//! Study 4's learned map from spike times to DICs, as pipeline stages (spec dic_stg.md §4.3, §6):
//!
//! * `dic.targets`: the (g_s, g_u) targets of a data set, drawn by Latin hypercube or uniformly
//!   over the thesis plane [−20, 20] × [0, 20], each tagged `train` or `test` (a held-out set
//!   generated the same way), seeded and independent of the thread count;
//! * `features.isi`: a fixed-length vector of ISI statistics of a spike train, the input of the
//!   regression (the thesis feeds the ISI sequence to a transformer; a tree ensemble on these
//!   summaries is what `pipelines/dic_train.toml` trains instead).
//!
//! The rest of the loop is made of the general stages: `dic.population` (cells per target),
//! `simulate.stg` (6 s, 3 s discarded), `features.bursts` (class), `train.regress` /
//! `train.classify`, `predict.model`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::old_dic::{lists_ms, ms_per_unit, no_clash};
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::dic::targets::{Target, TargetSampling, draw_targets};
use crate::dic::isi::{ISI_FEATURE_NAMES, N_ISI_FEATURES, isi_feature_vector};
use crate::error::Result;

// ================================================================================================
// dic.targets
// ================================================================================================

fn d_n() -> usize {
    1000
}
fn d_gs() -> [f64; 2] {
    [-20.0, 20.0]
}
fn d_gu() -> [f64; 2] {
    [0.0, 20.0]
}
fn d_test() -> f64 {
    0.2
}

/// Draws `n` DIC targets (g_s, g_u) over a rectangle, each marked `train` or `test`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicTargets {
    /// Number of targets [targets].
    #[serde(default = "d_n")]
    pub n: usize,
    /// `latin_hypercube` or `uniform` [enum].
    #[serde(default)]
    pub sampling: TargetSampling,
    /// Range of g_s [g_leak].
    #[serde(default = "d_gs")]
    pub g_s_range: [f64; 2],
    /// Range of g_u [g_leak].
    #[serde(default = "d_gu")]
    pub g_u_range: [f64; 2],
    /// Fraction of the targets held out as `test` (chosen at random, seeded) [fraction].
    #[serde(default = "d_test")]
    pub test_fraction: f64,
}

impl StageConfig for DicTargets {
    const KIND: &'static str = "dic.targets";
    const SUMMARY: &'static str = "Draw (g_s, g_u) DIC targets over a rectangle (Latin hypercube or uniform), tagged train/test";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.n == 0 || self.n > 10_000_000 {
            issues.push(Issue::at(&["n"], format!("{} targets; give 1..=10000000", self.n)));
        }
        for (key, [lo, hi]) in [("g_s_range", self.g_s_range), ("g_u_range", self.g_u_range)] {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                issues.push(Issue::at(&[key], format!("[{lo}, {hi}] must be finite with low < high")));
            }
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            issues.push(Issue::at(&["test_fraction"], format!("{} must be in [0, 1)", self.test_fraction)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("target_index", DataType::Int64, false, None),
            field("g_s_target", DataType::Float64, false, Some("g_leak")),
            field("g_u_target", DataType::Float64, false, Some("g_leak")),
            field("split", DataType::Utf8, false, None),
        ])))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let targets = draw_targets(self.n, self.sampling, self.g_s_range, self.g_u_range, self.test_fraction, ctx.seed);
        Ok(Operator::Source(Box::new(TargetsSource { targets, schema: output.clone(), next: 0 })))
    }
}

struct TargetsSource {
    targets: Vec<Target>,
    schema: SchemaRef,
    next: usize,
}

/// Targets per emitted batch: a batch becomes one `dic.population` call, so keep it small
/// enough for the downstream stages to overlap.
const TARGETS_PER_BATCH: usize = 256;

impl SourceOperator for TargetsSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let start = self.next;
        let end = (start + TARGETS_PER_BATCH).min(self.targets.len());
        self.next = end;
        let t = &self.targets[start..end];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((start..end).map(|i| format!("target-{i}")))),
            Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64))),
            Arc::new(Float64Array::from_iter_values(t.iter().map(|x| x.g_s))),
            Arc::new(Float64Array::from_iter_values(t.iter().map(|x| x.g_u))),
            Arc::new(StringArray::from_iter_values(t.iter().map(|x| if x.test { "test" } else { "train" }))),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(self.next < self.targets.len())
    }
}

// ================================================================================================
// features.isi
// ================================================================================================

fn d_spikes() -> String {
    "spike_times".into()
}

/// Appends `isi_features` (list of the 23 numbers of [`ISI_FEATURE_NAMES`]; null for a silent or
/// invalid train) computed from a spike-time column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesIsi {
    /// Column with the spike times (list<float64> in ms or s) [column].
    #[serde(default = "d_spikes")]
    pub spike_column: String,
}

impl StageConfig for FeaturesIsi {
    const KIND: &'static str = "features.isi";
    const SUMMARY: &'static str = "Spike train -> fixed vector of ISI statistics (rate, ln-ISI distribution, CV, burst metrics)";
    const CODE_VERSION: u32 = 2;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &["isi_features"]);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut f = Field::new("isi_features", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), true);
        f.set_metadata(std::collections::HashMap::from([("names".to_string(), ISI_FEATURE_NAMES.join(","))]));
        fields.push(f);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let scale = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| crate::error::Error::msg(i.message))?;
        Ok(Operator::Transform(Box::new(IsiOperator { column: self.spike_column.clone(), scale, schema: output.clone() })))
    }
}

struct IsiOperator {
    column: String,
    scale: f64,
    schema: SchemaRef,
}

impl TransformOperator for IsiOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let trains = lists_ms(&batch, &self.column, self.scale)?;
        let vecs: Vec<Option<[f64; N_ISI_FEATURES]>> = trains.iter().map(|t| t.as_deref().and_then(isi_feature_vector)).collect();
        let mut offsets = vec![0i64];
        let mut values = Vec::new();
        for v in &vecs {
            if let Some(v) = v {
                values.extend_from_slice(v);
            }
            offsets.push(values.len() as i64);
        }
        let nulls = NullBuffer::from(vecs.iter().map(Option::is_some).collect::<Vec<bool>>());
        let list = LargeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float64, false)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(Float64Array::from(values)),
            Some(nulls),
        )?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(list));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
