//! `source.parquet`: Parquet files (paths or globs), or the checkpoint of another pipeline's stage,
//! streamed row group by row group.

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{glob_files, listing_error};
use crate::checkpoint;
use crate::error::Result;
use crate::stage::parquet::ParquetSource;
use crate::stage::{Arity, Issue, Operator, Partitioning, StageConfig, StageContext, WatchSource};

fn default_batch_rows() -> usize {
    65_536
}

/// Reads Parquet files (paths or glob patterns) or the checkpoint of another pipeline's stage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceParquet {
    /// Parquet files or glob patterns (`data/*.parquet`), relative to the pipeline file. Files are
    /// read in sorted order; every file must have the same columns [paths].
    #[serde(default)]
    pub paths: Vec<String>,
    /// Instead of `paths`: a stage folder of another pipeline's run directory
    /// (`runs/<pipeline>/<stage>`, whose newest complete checkpoint is read) or one checkpoint folder [path].
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Rows per emitted batch [rows].
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

impl SourceParquet {
    fn files(&self, ctx: &StageContext) -> std::result::Result<Vec<PathBuf>, Issue> {
        if let Some(cp) = &self.checkpoint {
            let dir = ctx.resolve(cp);
            let found = checkpoint::resolve_checkpoint_dir(&dir).map_err(|e| Issue::at(&["checkpoint"], e.to_string()))?;
            return Ok(found.part_files());
        }
        glob_files(ctx, &self.paths)
    }
}

impl StageConfig for SourceParquet {
    const KIND: &'static str = "source.parquet";
    const SUMMARY: &'static str = "Read Parquet files, globs, or another pipeline's checkpoint";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"data/*.parquet\"]";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each file's rows pass on unchanged, so any split of the files is a split of the output.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        match (self.paths.is_empty(), &self.checkpoint) {
            (true, None) => issues.push(Issue::at(&[], "give `paths` (files or globs) or `checkpoint`")),
            (false, Some(_)) => issues.push(Issue::at(&["checkpoint"], "give either `paths` or `checkpoint`, not both")),
            _ => {}
        }
        if self.batch_rows == 0 {
            issues.push(Issue::at(&["batch_rows"], "batch_rows must be at least 1"));
        }
        issues
    }

    /// The schema of the first readable file. Files that turn out unreadable or different fail at
    /// run time as single recordings (named by path), so one bad file does not stop the others.
    fn output_schema(&self, ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let files = self.files(ctx).map_err(|i| vec![i])?;
        let key = if self.checkpoint.is_some() { "checkpoint" } else { "paths" };
        let mut errors = Vec::new();
        for f in &files {
            match crate::stage::parquet::read_schema(f) {
                Ok(s) => return Ok(s),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Err(vec![Issue::at(&[key], "no Parquet file to read")])
        } else {
            Err(vec![Issue::at(&[key], format!("no readable Parquet file: {}", errors.join("; ")))])
        }
    }

    /// Watchable when it reads one glob whose folder part has no wildcard (`inbox/*.parquet`).
    fn watch(&self, ctx: &StageContext) -> Option<WatchSource> {
        if self.checkpoint.is_some() || self.paths.len() != 1 {
            return None;
        }
        let full = ctx.resolve(&self.paths[0]);
        let folder = full.parent()?.to_path_buf();
        if folder.to_string_lossy().contains(['*', '?', '[']) {
            return None;
        }
        let pattern = glob::Pattern::new(&full.file_name()?.to_string_lossy()).ok()?;
        Some(WatchSource { folder, pattern })
    }

    fn restrict_to(&self, files: &[PathBuf]) -> Option<Self> {
        Some(SourceParquet {
            paths: files.iter().map(|f| glob::Pattern::escape(&f.to_string_lossy())).collect(),
            checkpoint: None,
            batch_rows: self.batch_rows,
        })
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        self.files(ctx).map_err(|i| listing_error(ctx, i))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = self.external_inputs(ctx)?;
        Ok(Operator::Source(Box::new(ParquetSource::new(files, self.batch_rows, output.clone()))))
    }
}
