//! `evaluate.regression`: scores an existing prediction column (e.g. the GLIF baseline of
//! `simulate.glif_replay`) against a target column the way `train.regress` scores its
//! out-of-fold predictions, pooled and per value of `report_by`. The scores are
//! [`crate::train::metrics::regression_scores`]; this module gathers the rows and writes one
//! row per scope.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::columns::{column_list, field, is_numeric, is_scalar};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::train::metrics::regression_scores;

/// Scores a prediction column against a target column: pooled and per value of `report_by`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRegression {
    /// The observed values [column].
    pub target: String,
    /// The predicted values (rows where it is null or non-finite are skipped and counted) [column].
    pub prediction: String,
    /// Also score each value of this column (e.g. the stimulus type) [column].
    #[serde(default)]
    pub report_by: Option<String>,
}

fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("scope", DataType::Utf8, false, None),
        field("rows", DataType::Int64, false, None),
        field("rows_skipped", DataType::Int64, false, None),
        field("r2", DataType::Float64, true, None),
        field("mae", DataType::Float64, true, None),
        field("rmse", DataType::Float64, true, None),
        field("pearson_r", DataType::Float64, true, None),
    ]))
}

impl StageConfig for EvaluateRegression {
    const KIND: &'static str = "evaluate.regression";
    const SUMMARY: &'static str =
        "Score an existing prediction column against a target (R², MAE, RMSE, Pearson r), pooled and per value of `report_by`; one row per scope";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "target = \"spike_count\"\nprediction = \"glif_spike_count\"\nreport_by = \"stimulus_name\"";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    /// Pooled scores need every row.
    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (key, c, numeric) in [("target", Some(&self.target), true), ("prediction", Some(&self.prediction), true), ("report_by", self.report_by.as_ref(), false)] {
            let Some(c) = c else { continue };
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{c}`; it has: {}", column_list(input)))),
                Ok(f) if numeric && !is_numeric(f.data_type()) => issues.push(Issue::at(&[key], format!("`{c}` must be numeric"))),
                Ok(f) if !is_scalar(f.data_type()) => issues.push(Issue::at(&[key], format!("`{c}` must be a scalar column"))),
                _ => {}
            }
        }
        if issues.is_empty() { Ok(metrics_schema()) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(EvaluateOp { cfg: self.clone(), schema: output.clone(), rows: Vec::new() })))
    }
}

struct EvaluateOp {
    cfg: EvaluateRegression,
    schema: SchemaRef,
    /// (scope value, target, prediction) of every row seen.
    rows: Vec<(String, Option<f64>, Option<f64>)>,
}

impl EvaluateOp {
    /// The pooled scope (every row) and, with `report_by`, one scope per value, in value order.
    fn scopes(&self) -> Vec<(String, Vec<usize>)> {
        let mut scopes: Vec<(String, Vec<usize>)> = vec![("pooled".into(), (0..self.rows.len()).collect())];
        if let Some(col) = &self.cfg.report_by {
            let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, r) in self.rows.iter().enumerate() {
                groups.entry(&r.0).or_default().push(i);
            }
            scopes.extend(groups.into_iter().map(|(g, v)| (format!("{col}={g}"), v)));
        }
        scopes
    }
}

impl TransformOperator for EvaluateOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        let column = |c: &str, to: &DataType| -> Result<ArrayRef> {
            Ok(arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, to)?)
        };
        let numbers = |c: &str| -> Result<Vec<Option<f64>>> { Ok(column(c, &DataType::Float64)?.as_primitive::<Float64Type>().iter().collect()) };
        let (y, p) = (numbers(&self.cfg.target)?, numbers(&self.cfg.prediction)?);
        let by: Vec<String> = match &self.cfg.report_by {
            Some(c) => column(c, &DataType::Utf8)?.as_string::<i32>().iter().map(|s| s.unwrap_or("<null>").to_string()).collect(),
            None => vec![String::new(); batch.num_rows()],
        };
        self.rows.extend(by.into_iter().zip(y).zip(p).map(|((b, y), p)| (b, y, p)));
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let (mut names, mut n, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        let mut vals: [Vec<Option<f64>>; 4] = Default::default();
        for (scope, sel) in self.scopes() {
            let (y, p): (Vec<f64>, Vec<f64>) = sel
                .iter()
                .filter_map(|&i| match (self.rows[i].1, self.rows[i].2) {
                    (Some(y), Some(p)) if y.is_finite() && p.is_finite() => Some((y, p)),
                    _ => None,
                })
                .unzip();
            let s = regression_scores(&y, &p);
            names.push(scope);
            n.push(y.len() as i64);
            skipped.push((sel.len() - y.len()) as i64);
            for (k, m) in ["r2", "mae", "rmse", "pearson_r"].iter().enumerate() {
                vals[k].push(if y.is_empty() { None } else { s.values.get(*m).copied().filter(|v| v.is_finite()) });
            }
        }
        let [a, b, c, d] = vals;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(Int64Array::from(n)),
            Arc::new(Int64Array::from(skipped)),
            Arc::new(Float64Array::from(a)),
            Arc::new(Float64Array::from(b)),
            Arc::new(Float64Array::from(c)),
            Arc::new(Float64Array::from(d)),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses() {
        let cfg: EvaluateRegression = toml::from_str(EvaluateRegression::EXAMPLE).unwrap();
        assert_eq!(cfg.report_by.as_deref(), Some("stimulus_name"));
    }
}
