//! `source.csv`: CSV tables (metadata tables such as the hc-3 cell and session lists, per-sweep
//! spike-count tables, ...) read with arrow's CSV reader. CSV carries no types or units: the schema
//! is inferred from the first file's leading rows, and `units` attaches unit metadata to named
//! columns so downstream stages can check them. Every file must fit that schema; a file that does
//! not (or has a malformed row) fails alone, named with the reader's message (which gives the line).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::Format;
use arrow::datatypes::{Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{glob_files, listed_files};
use crate::error::{Error, Result};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext};

fn d_true() -> bool {
    true
}
fn d_delim() -> String {
    ",".into()
}
fn d_infer() -> usize {
    1000
}
fn d_batch() -> usize {
    65_536
}

/// Reads CSV files (paths or globs) with a header row into one table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceCsv {
    /// CSV files or glob patterns, relative to the pipeline file; read in sorted order [paths].
    pub paths: Vec<String>,
    /// Field delimiter, one ASCII character [char].
    #[serde(default = "d_delim")]
    pub delimiter: String,
    /// The first line names the columns [bool].
    #[serde(default = "d_true")]
    pub has_header: bool,
    /// Rows of the first file used to infer the column types [rows].
    #[serde(default = "d_infer")]
    pub infer_rows: usize,
    /// Unit metadata per column, e.g. `{ stimulus_amplitude = "pA" }` [table].
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// Rows per emitted batch [rows].
    #[serde(default = "d_batch")]
    pub batch_rows: usize,
}

impl SourceCsv {
    fn format(&self) -> Format {
        Format::default().with_header(self.has_header).with_delimiter(self.delimiter.as_bytes()[0])
    }

    /// The schema inferred from a file's leading rows, with the declared units attached.
    fn schema_of(&self, path: &Path) -> Result<SchemaRef> {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let (schema, _) = self.format().infer_schema(&mut f, Some(self.infer_rows)).map_err(|e| Error::arrow(path.display().to_string(), e))?;
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match self.units.get(f.name()) {
                Some(u) => f.as_ref().clone().with_metadata(std::collections::HashMap::from([("unit".to_string(), u.clone())])),
                None => f.as_ref().clone(),
            })
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl StageConfig for SourceCsv {
    const KIND: &'static str = "source.csv";
    const SUMMARY: &'static str = "Read CSV tables (files, globs) with inferred types and declared units";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "paths = [\"tables/*.csv\"]\nunits = { stimulus_amplitude = \"pA\" }";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each file's rows pass on unchanged, so any split of the files is a split of the output.
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.paths.is_empty() {
            issues.push(Issue::at(&["paths"], "give at least one CSV file or glob pattern"));
        } else if let Err(i) = glob_files(ctx, &self.paths) {
            issues.push(i);
        }
        if self.delimiter.len() != 1 || !self.delimiter.is_ascii() {
            issues.push(Issue::at(&["delimiter"], format!("`{}` is not one ASCII character", self.delimiter)));
        }
        if self.infer_rows == 0 || self.batch_rows == 0 {
            issues.push(Issue::at(&["infer_rows"], "infer_rows and batch_rows must be at least 1"));
        }
        issues
    }

    fn output_schema(&self, ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let files = glob_files(ctx, &self.paths).map_err(|i| vec![i])?;
        let schema = self.schema_of(&files[0]).map_err(|e| vec![Issue::at(&["paths"], e.to_string())])?;
        let missing: Vec<Issue> = self
            .units
            .keys()
            .filter(|c| schema.field_with_name(c).is_err())
            .map(|c| Issue::at(&["units", c], format!("no column `{c}` in {}", files[0].display())))
            .collect();
        if missing.is_empty() { Ok(schema) } else { Err(missing) }
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        listed_files(ctx, &self.paths)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(CsvSource { cfg: self.clone(), files: self.external_inputs(ctx)?, next: 0, schema: output.clone() })))
    }
}

struct CsvSource {
    cfg: SourceCsv,
    files: Vec<PathBuf>,
    next: usize,
    schema: SchemaRef,
}

impl CsvSource {
    /// Reads one whole file against the table's schema (a CSV file is small next to recordings).
    fn read(&self, path: &Path) -> Result<Vec<RecordBatch>> {
        let label = path.display().to_string();
        let own = self.cfg.schema_of(path)?;
        let names = |s: &Schema| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        if names(&own) != names(&self.schema) {
            return Err(Error::msg(format!("{label}: columns {:?} differ from the first file's {:?}", names(&own), names(&self.schema))));
        }
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        f.rewind().map_err(|e| Error::io(path, e))?;
        let reader = arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_format(self.cfg.format())
            .with_batch_size(self.cfg.batch_rows)
            .build(BufReader::new(f))
            .map_err(|e| Error::arrow(label.clone(), e))?;
        reader.map(|b| b.map_err(|e| Error::arrow(label.clone(), e))).collect()
    }
}

impl SourceOperator for CsvSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next).cloned() else { return Ok(false) };
        self.next += 1;
        match self.read(&path) {
            Ok(batches) => batches.into_iter().for_each(|b| out.emit(b)),
            Err(e) => out.fail(path.display().to_string(), e.to_string()),
        }
        Ok(self.next < self.files.len())
    }
}
