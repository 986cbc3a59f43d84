//! `features.group_stats`: per-group aggregates of the rows of one type, attached to the rows of
//! every other type of the same group.
//!
//! Role: a cell's excitability is a strong predictor of its spike counts, but computing it from
//! the counts being predicted leaks the answer into the features. This stage computes each
//! feature from the rows of one named type only (e.g. the cell's `Short Square` or
//! `Square - 2s Suprathreshold` sweeps) and gives it to the cell's rows of the *other* types; the
//! rows of the source type itself get null, so no row ever sees a number computed from its own
//! type's labels (and, with cell-grouped validation, never from another test cell either: the
//! aggregate stays inside the group). A group without rows of the source type gets null too.
//! The table is gathered whole (groups may span batches), so use it on per-sweep tables, not on
//! traces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{column_list, field, is_numeric, is_scalar};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::features::stats::{Stat, aggregate};

/// One added column: `stat` of `column` over the group's rows whose type is `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupFeature {
    /// Name of the added column.
    pub name: String,
    /// The type (value of `type_column`) whose rows are aggregated; rows of this type get null.
    #[serde(rename = "type")]
    pub source_type: String,
    /// Numeric column aggregated.
    pub column: String,
    /// `count`, `mean`, `min`, `max` or `median`.
    pub stat: Stat,
    /// Aggregate only the source rows where this numeric column is > 0 (e.g. `spike_count`: the
    /// smallest amplitude that made a spike).
    #[serde(default)]
    pub where_positive: Option<String>,
}

/// Per-group aggregates of one type's rows, given to the group's rows of the other types.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesGroupStats {
    /// Column naming the group (e.g. `recording_id`: the cell) [column].
    pub group: String,
    /// Column naming each row's type (e.g. `stimulus_name`) [column].
    pub type_column: String,
    /// The columns to add, each `{ name, type, column, stat, where_positive }` [list].
    pub features: Vec<GroupFeature>,
}

impl StageConfig for FeaturesGroupStats {
    const KIND: &'static str = "features.group_stats";
    const SUMMARY: &'static str =
        "Per-group aggregates (count, mean, min, max, median) of the rows of one type, attached to the group's rows of every other type (never to the source type's own rows)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "group = \"recording_id\"\ntype_column = \"stimulus_name\"\nfeatures = [{ name = \"ramp_spikes\", type = \"Ramp\", column = \"spike_count\", stat = \"median\" }]";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::per_unit(self.group.clone())
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.features.is_empty() {
            issues.push(Issue::at(&["features"], "give at least one feature"));
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if !seen.insert(&f.name) {
                issues.push(Issue::at_index("features", i, format!("`{}` is named twice", f.name)));
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (key, c) in [("group", &self.group), ("type_column", &self.type_column)] {
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{c}`; it has: {}", column_list(input)))),
                Ok(f) if !is_scalar(f.data_type()) => issues.push(Issue::at(&[key], format!("`{c}` must be a scalar column"))),
                _ => {}
            }
        }
        let mut fields: Vec<_> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, f) in self.features.iter().enumerate() {
            for c in std::iter::once(&f.column).chain(f.where_positive.as_ref()) {
                match input.field_with_name(c) {
                    Err(_) => issues.push(Issue::at_index("features", i, format!("the input has no column `{c}`; it has: {}", column_list(input)))),
                    Ok(fd) if !is_numeric(fd.data_type()) => issues.push(Issue::at_index("features", i, format!("`{c}` must be numeric"))),
                    _ => {}
                }
            }
            if input.field_with_name(&f.name).is_ok() {
                issues.push(Issue::at_index("features", i, format!("the input already has a column `{}`", f.name)));
            }
            let unit = match f.stat {
                Stat::Count => None,
                _ => input.field_with_name(&f.column).ok().and_then(|fd| crate::stage::columns::unit_of(fd).map(str::to_string)),
            };
            fields.push(field(&f.name, DataType::Float64, true, unit.as_deref()));
        }
        if issues.is_empty() { Ok(Arc::new(Schema::new(fields))) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(GroupStatsOp { cfg: self.clone(), schema: output.clone(), batches: Vec::new() })))
    }
}

struct GroupStatsOp {
    cfg: FeaturesGroupStats,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

fn strings(batch: &RecordBatch, c: &str) -> Result<Vec<Option<String>>> {
    let a = arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Utf8)?;
    Ok(a.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
}

fn floats(batch: &RecordBatch, c: &str) -> Result<Vec<Option<f64>>> {
    let a = arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Float64)?;
    Ok(a.as_primitive::<Float64Type>().iter().collect())
}

impl TransformOperator for GroupStatsOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.batches.push(batch);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let agg = self.aggregates()?;
        for b in std::mem::take(&mut self.batches) {
            let columns = self.with_aggregates(&b, &agg)?;
            out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        Ok(())
    }
}

/// Per feature, the aggregate of each group that has rows of the feature's source type.
type GroupAggregates = Vec<BTreeMap<String, Option<f64>>>;

impl GroupStatsOp {
    /// Pass 1: the aggregates of each (feature, group) over the source type's rows.
    fn aggregates(&self) -> Result<GroupAggregates> {
        let mut values: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); self.cfg.features.len()];
        let mut present: Vec<BTreeSet<String>> = vec![BTreeSet::new(); self.cfg.features.len()];
        for b in &self.batches {
            let (g, t) = (strings(b, &self.cfg.group)?, strings(b, &self.cfg.type_column)?);
            for (k, f) in self.cfg.features.iter().enumerate() {
                let x = floats(b, &f.column)?;
                let gate = match &f.where_positive {
                    Some(c) => Some(floats(b, c)?),
                    None => None,
                };
                for r in 0..b.num_rows() {
                    let (Some(gr), Some(ty)) = (&g[r], &t[r]) else { continue };
                    if *ty != f.source_type {
                        continue;
                    }
                    present[k].insert(gr.clone());
                    let passes = gate.as_ref().is_none_or(|gv| gv[r].is_some_and(|v| v > 0.0));
                    if let Some(v) = x[r].filter(|v| v.is_finite())
                        && passes
                    {
                        values[k].entry(gr.clone()).or_default().push(v);
                    }
                }
            }
        }
        Ok(self
            .cfg
            .features
            .iter()
            .enumerate()
            .map(|(k, f)| present[k].iter().map(|g| (g.clone(), aggregate(f.stat, values[k].get(g).cloned().unwrap_or_default()))).collect())
            .collect())
    }

    /// Pass 2: the batch's columns followed by one column per feature: every row gets its group's
    /// aggregate unless it is of the source type.
    fn with_aggregates(&self, b: &RecordBatch, agg: &GroupAggregates) -> Result<Vec<ArrayRef>> {
        let (g, t) = (strings(b, &self.cfg.group)?, strings(b, &self.cfg.type_column)?);
        let mut columns: Vec<ArrayRef> = b.columns().to_vec();
        for (k, f) in self.cfg.features.iter().enumerate() {
            let col: Float64Array = (0..b.num_rows())
                .map(|r| match (&g[r], &t[r]) {
                    (Some(gr), Some(ty)) if *ty != f.source_type => agg[k].get(gr).copied().flatten(),
                    _ => None,
                })
                .collect();
            columns.push(Arc::new(col));
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn a_row_never_sees_its_own_type() {
        let schema = Arc::new(Schema::new(vec![
            field("cell", DataType::Utf8, false, None),
            field("type", DataType::Utf8, false, None),
            field("amp", DataType::Float64, false, Some("pA")),
            field("spikes", DataType::Int64, false, None),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "a", "a", "b", "b"])),
                Arc::new(StringArray::from(vec!["SS", "SS", "SS", "LS", "LS", "LS"])),
                Arc::new(Float64Array::from(vec![100.0, 200.0, 300.0, 50.0, 60.0, 70.0])),
                Arc::new(Int64Array::from(vec![0, 1, 1, 4, 5, 6])),
            ],
        )
        .unwrap();
        let cfg: FeaturesGroupStats = toml::from_str(
            r#"group = "cell"
type_column = "type"
features = [
  { name = "ss_threshold", type = "SS", column = "amp", stat = "min", where_positive = "spikes" },
  { name = "ls_spikes", type = "LS", column = "spikes", stat = "median" },
  { name = "ss_n", type = "SS", column = "amp", stat = "count" },
]"#,
        )
        .unwrap();
        let ctx = StageContext::new("t", ".", 0, ".");
        let out_schema = cfg.output_schema(&ctx, std::slice::from_ref(&schema)).unwrap();
        let Operator::Transform(mut op) = cfg.build(&ctx, &[schema], &out_schema).unwrap() else { panic!() };
        let mut out = Emitter::default();
        op.process(0, batch, &mut out).unwrap();
        op.finish(&mut out).unwrap();
        let b = &out.batches[0];
        let col = |n: &str| -> Vec<Option<f64>> { b.column_by_name(n).unwrap().as_primitive::<Float64Type>().iter().collect() };
        // SS rows never get the SS aggregate; cell a's LS row gets 200 (smallest SS amplitude with a spike); cell b has no SS.
        assert_eq!(col("ss_threshold"), vec![None, None, None, Some(200.0), None, None]);
        // LS aggregate (median of cell a's only LS row = 4) goes to a's SS rows only.
        assert_eq!(col("ls_spikes"), vec![Some(4.0), Some(4.0), Some(4.0), None, None, None]);
        assert_eq!(col("ss_n"), vec![None, None, None, Some(3.0), None, None]);
    }
}
