//! `transform.select`: keep (or drop) named columns, in the order given.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::did_you_mean;
use crate::error::{Error, Result};
use crate::stage::columns::column_list;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

/// Keeps (or drops) named columns, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// Columns to keep, in this order [columns].
    #[serde(default)]
    pub columns: Vec<String>,
    /// Columns to remove (instead of `columns`) [columns].
    #[serde(default)]
    pub drop: Vec<String>,
}

impl Select {
    /// The input columns the output keeps, in output order; an issue per name the input lacks.
    fn indices(&self, schema: &Schema) -> std::result::Result<Vec<usize>, Vec<Issue>> {
        let mut issues = Vec::new();
        let check = |key: &str, cols: &[String], issues: &mut Vec<Issue>| {
            for (i, c) in cols.iter().enumerate() {
                if schema.index_of(c).is_err() {
                    let hint = did_you_mean(c, schema.fields().iter().map(|f| f.name().as_str()))
                        .unwrap_or_else(|| format!("; the input has {}", column_list(schema)));
                    issues.push(Issue::at_index(key, i, format!("no column `{c}` in the input{hint}")));
                }
            }
        };
        check("columns", &self.columns, &mut issues);
        check("drop", &self.drop, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        if !self.columns.is_empty() {
            Ok(self.columns.iter().map(|c| schema.index_of(c).expect("checked")).collect())
        } else {
            Ok((0..schema.fields().len()).filter(|&i| !self.drop.contains(schema.field(i).name())).collect())
        }
    }
}

impl StageConfig for Select {
    const KIND: &'static str = "transform.select";
    const SUMMARY: &'static str = "Keep or drop named columns";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "columns = [\"recording_id\", \"sweep\", \"spike_count\"]";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        match (self.columns.is_empty(), self.drop.is_empty()) {
            (true, true) => issues.push(Issue::at(&[], "give `columns` to keep or `drop` to remove")),
            (false, false) => issues.push(Issue::at(&["drop"], "give either `columns` or `drop`, not both")),
            _ => {}
        }
        for (i, c) in self.columns.iter().enumerate() {
            if self.columns[..i].contains(c) {
                issues.push(Issue::at_index("columns", i, format!("column `{c}` listed twice")));
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let idx = self.indices(&inputs[0])?;
        Ok(Arc::new(inputs[0].project(&idx).map_err(|e| vec![Issue::at(&[], e.to_string())])?))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        let idx = self.indices(&inputs[0]).map_err(|i| Error::msg(i[0].message.clone()))?;
        Ok(Operator::Transform(Box::new(SelectOp { idx })))
    }
}

struct SelectOp {
    idx: Vec<usize>,
}

impl TransformOperator for SelectOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        out.emit(batch.project(&self.idx)?);
        Ok(())
    }
}
