//! Rewrites of a validated pipeline that the runtime asks for, done on the graph (never on the
//! TOML text): keep a subset of the stages, and read a stage's output from committed checkpoints
//! instead of computing it.
//!
//! `run --watch` uses both, from the plan ([`super::Plan`]): each new file runs the watched
//! source's segment alone ([`Pipeline::retain`]); a refit runs the gathered stages on the union of
//! every recording's checkpoints at the gather points ([`Pipeline::read_from_checkpoints`]).

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;

use super::Pipeline;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::stage::parquet::ParquetSource;
use crate::stage::{Arity, Issue, Operator, Partitioning, StageContext, StageDef};

impl Pipeline {
    /// Keeps the stages marked in `keep` (by index), dropping the others; stages stay in
    /// topological order and input indices are renumbered. Every input of a kept stage must be
    /// kept too (or have been turned into a checkpoint reader first).
    pub fn retain(&mut self, keep: &[bool]) {
        let mut new_index = vec![usize::MAX; self.stages.len()];
        let mut k = 0;
        for (i, &kept) in keep.iter().enumerate() {
            if kept {
                new_index[i] = k;
                k += 1;
            }
        }
        let old = std::mem::take(&mut self.stages);
        for (i, mut s) in old.into_iter().enumerate() {
            if keep[i] {
                s.inputs = s.inputs.iter().map(|&j| new_index[j]).collect();
                debug_assert!(s.inputs.iter().all(|&j| j != usize::MAX), "a kept stage lost an input");
                self.stages.push(s);
            }
        }
    }

    /// Stage `i` stops computing: its output becomes the rows of these committed checkpoints (in
    /// the given order), and it no longer has inputs. Its fingerprint becomes the hash of theirs,
    /// so everything downstream recomputes exactly when the set of checkpoints changes.
    pub fn read_from_checkpoints(&mut self, i: usize, checkpoints: Vec<Checkpoint>) {
        let s = &mut self.stages[i];
        s.def = Box::new(CheckpointUnion { stage: s.name.clone(), checkpoints });
        s.kind = CheckpointUnion::KIND;
        s.inputs.clear();
        s.input_schemas.clear();
    }

    /// Recomputes the output schema of every stage from `from` on (in topological order), after a
    /// rewrite changed a stage's context (e.g. its artifacts folder, which a training stage
    /// announces in its schema). All issues at once, named by stage.
    pub fn refresh_schemas(&mut self, from: usize) -> Result<()> {
        let mut problems = Vec::new();
        for i in from..self.stages.len() {
            let inputs: Vec<SchemaRef> = self.stages[i].inputs.iter().map(|&j| self.stages[j].output_schema.clone()).collect();
            let s = &mut self.stages[i];
            match s.def.output_schema(&s.ctx, &inputs) {
                Ok(schema) => {
                    s.input_schemas = inputs;
                    s.output_schema = schema;
                }
                Err(issues) => problems.extend(issues.into_iter().map(|x| format!("stage `{}`: {}", s.name, x.message))),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(Error::msg(problems.join("\n"))) }
    }

    /// Sets where stage `i` writes its artifacts (see [`StageContext::artifacts_dir`]).
    pub fn set_artifacts_dir(&mut self, i: usize, dir: PathBuf) {
        self.stages[i].ctx.artifacts_override = Some(dir);
    }
}

/// A stage whose output is read from committed checkpoints (see
/// [`Pipeline::read_from_checkpoints`]). Not a kind a pipeline file can name.
struct CheckpointUnion {
    stage: String,
    checkpoints: Vec<Checkpoint>,
}

impl CheckpointUnion {
    const KIND: &'static str = "checkpoints";
}

impl StageDef for CheckpointUnion {
    fn kind(&self) -> &'static str {
        Self::KIND
    }
    fn code_version(&self) -> u32 {
        1
    }
    fn arity(&self) -> Arity {
        Arity::Source
    }
    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn canonical_json(&self) -> serde_json::Value {
        // The checkpoints' fingerprints identify their content; the order is the rows' order.
        serde_json::json!({
            "stage": self.stage,
            "checkpoints": self.checkpoints.iter().map(|c| c.manifest.fingerprint.clone()).collect::<Vec<_>>(),
        })
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        Vec::new()
    }
    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        // The schema the stage had when it wrote these checkpoints; the caller keeps the node's
        // schema, and this is only asked again by `refresh_schemas`.
        let first = self.checkpoints.first().ok_or_else(|| vec![Issue::at(&[], "no checkpoint to read")])?;
        let files = first.part_files();
        let file = files.first().ok_or_else(|| vec![Issue::at(&[], format!("{}: no part file", first.dir.display()))])?;
        crate::stage::parquet::read_schema(file).map_err(|e| vec![Issue::at(&[], e.to_string())])
    }
    fn external_inputs(&self, _ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    fn external_outputs(&self, _ctx: &StageContext) -> Vec<PathBuf> {
        Vec::new()
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files: Vec<PathBuf> = self.checkpoints.iter().flat_map(Checkpoint::part_files).collect();
        Ok(Operator::Source(Box::new(ParquetSource::new(files, 65_536, output.clone()))))
    }
}
