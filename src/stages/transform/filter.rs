//! `transform.filter`: keep the rows for which a predicate on scalar columns holds (the language
//! is in [`super::predicate`]).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::predicate;
use crate::error::Result;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, PathSeg, StageConfig, StageContext, TransformOperator};

/// Keeps the rows for which a predicate on scalar columns holds, e.g.
/// `stimulus_kind == 'Long Square' and amplitude_pa >= 50`. Rows where the predicate is null
/// (a null in a compared column) are dropped.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The predicate: comparisons `column OP literal` (OP one of == != < <= > >=; literals are
    /// numbers, 'strings' or true/false), `column is null`, `column is not null`, combined with
    /// `and`, `or`, `not` and parentheses [expression].
    #[serde(rename = "where")]
    pub predicate: String,
}

/// Where a predicate error points: into the `where` string.
fn at_where() -> Vec<PathSeg> {
    vec![PathSeg::Key("where".into())]
}

impl StageConfig for Filter {
    const KIND: &'static str = "transform.filter";
    const SUMMARY: &'static str = "Keep rows matching a predicate on scalar columns";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "where = \"spike_count > 0 and stimulus_kind == 'Long Square'\"";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        match predicate::parse(&self.predicate) {
            Ok(_) => vec![],
            Err(e) => vec![e.at(at_where())],
        }
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let Ok(expr) = predicate::parse(&self.predicate) else {
            return Err(vec![]); // reported by `check`
        };
        let issues: Vec<Issue> = expr.type_check(&inputs[0]).into_iter().map(|e| e.at(at_where())).collect();
        if issues.is_empty() { Ok(inputs[0].clone()) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        let expr = predicate::parse(&self.predicate)?;
        Ok(Operator::Transform(Box::new(FilterOp { expr })))
    }
}

struct FilterOp {
    expr: predicate::Expr,
}

impl TransformOperator for FilterOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let mask = self.expr.evaluate(&batch)?;
        out.emit(arrow::compute::filter_record_batch(&batch, &mask)?);
        Ok(())
    }
}
