//! `sink.parquet`: the input exported to one Parquet file (zstd), written whole and renamed into place.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::{FileSink, SinkFormat, check_path};
use crate::error::Result;
use crate::stage::{Arity, Issue, Operator, Partitioning, StageConfig, StageContext};

/// Exports its input to one Parquet file (zstd), written whole and renamed into place.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkParquet {
    /// Output file, relative to the pipeline file [path].
    pub path: String,
}

impl StageConfig for SinkParquet {
    const KIND: &'static str = "sink.parquet";
    const SUMMARY: &'static str = "Export the input to one Parquet file (zstd), atomically";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "path = \"out/table.parquet\"";

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

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(Arc::new(Schema::empty()))
    }

    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![ctx.resolve(&self.path)]
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], _output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(FileSink::new(ctx.resolve(&self.path), inputs[0].clone(), SinkFormat::Parquet))))
    }
}
