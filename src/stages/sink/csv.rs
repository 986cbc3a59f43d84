//! `sink.csv`: the input's scalar columns exported to one CSV file, written whole and renamed into place.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::{FileSink, SinkFormat, check_path};
use crate::error::Result;
use crate::stage::columns::{is_scalar, type_name};
use crate::stage::{Arity, Issue, Operator, Partitioning, StageConfig, StageContext};

/// Exports its input to one CSV file (scalar columns only), written whole and renamed into place.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkCsv {
    /// Output file, relative to the pipeline file [path].
    pub path: String,
}

impl StageConfig for SinkCsv {
    const KIND: &'static str = "sink.csv";
    const SUMMARY: &'static str = "Export the input's scalar columns to one CSV file, atomically";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "path = \"out/table.csv\"";

    fn arity() -> Arity {
        Arity::Sink { min: 1, max: Some(1) }
    }

    /// One file holds every row: a run over part of the input would replace it with that part.
    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        check_path(&self.path)
    }

    /// CSV has no list columns: each one is an issue.
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let issues: Vec<Issue> = inputs[0]
            .fields()
            .iter()
            .filter(|f| !is_scalar(f.data_type()))
            .map(|f| {
                Issue::inputs(format!(
                    "column `{}` is {}; CSV holds scalar columns only (drop it with a transform.select stage first)",
                    f.name(),
                    type_name(f.data_type())
                ))
            })
            .collect();
        if issues.is_empty() { Ok(Arc::new(Schema::empty())) } else { Err(issues) }
    }

    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![ctx.resolve(&self.path)]
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(FileSink::new(ctx.resolve(&self.path), inputs[0].clone(), SinkFormat::Csv))))
    }
}
