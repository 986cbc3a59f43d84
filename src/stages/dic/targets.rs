//! `dic.targets`: the (g_s, g_u) targets of a training data set (spec dic_stg.md §4.3, §6), drawn
//! by [`crate::dic::targets::draw_targets`] over the thesis plane [−20, 20] × [0, 20] by Latin
//! hypercube or uniformly, each tagged `train` or `test` (a held-out set generated the same way),
//! seeded and independent of the thread count.
//!
//! The rest of the learning loop is made of the general stages: `dic.population` (cells per
//! target), `simulate.stg` (6 s, 3 s discarded), `features.bursts` (class), `features.isi`,
//! `train.regress` / `train.classify`, `predict.model`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dic::targets::{Target, TargetSampling, draw_targets};
use crate::error::Result;
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

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
    /// `latin_hypercube` or `uniform` [name].
    #[serde(default)]
    pub sampling: TargetSampling,
    /// Range of g_s [g_leak].
    #[serde(default = "d_gs")]
    pub g_s_range: [f64; 2],
    /// Range of g_u [g_leak].
    #[serde(default = "d_gu")]
    pub g_u_range: [f64; 2],
    /// Fraction of the targets held out as `test` (chosen at random, seeded) [1].
    #[serde(default = "d_test")]
    pub test_fraction: f64,
}

impl StageConfig for DicTargets {
    const KIND: &'static str = "dic.targets";
    const SUMMARY: &'static str = "Draw (g_s, g_u) DIC targets over a rectangle (Latin hypercube or uniform), tagged train/test";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "n = 1000\nsampling = \"latin_hypercube\"\ntest_fraction = 0.2";

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
