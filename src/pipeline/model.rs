//! The validated pipeline the runtime executes: the `[pipeline]` table, the stages in
//! topological order with their contexts and schemas, and how a stage's seed is derived.

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::{StageContext, StageDef};

fn default_channel_rows() -> usize {
    65_536
}
fn default_channel_bytes() -> usize {
    64 << 20
}
fn default_row_group_rows() -> usize {
    131_072
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name of the pipeline; checkpoints go to `runs/<name>/` beside the pipeline file.
    pub name: String,
    /// One seed for the whole pipeline; every stage derives its own from it and its name.
    #[serde(default)]
    pub seed: u64,
    /// What the pipeline is for (free text).
    #[serde(default)]
    pub description: Option<String>,
    /// Run directory, relative to the pipeline file (default `runs/<name>`).
    #[serde(default)]
    pub run_dir: Option<String>,
    /// Bound on rows in flight on each edge between two stages [rows].
    #[serde(default = "default_channel_rows")]
    pub channel_rows: usize,
    /// Bound on bytes in flight on each edge between two stages [bytes].
    #[serde(default = "default_channel_bytes")]
    pub channel_bytes: usize,
    /// Rows per Parquet row group in checkpoints (row groups are also cut at 128 MiB) [rows].
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

/// One validated stage.
pub struct StageNode {
    pub name: String,
    pub kind: &'static str,
    /// Indices (into `Pipeline::stages`) of the inputs, in the file's order.
    pub inputs: Vec<usize>,
    pub def: Box<dyn StageDef>,
    pub ctx: StageContext,
    pub input_schemas: Vec<SchemaRef>,
    pub output_schema: SchemaRef,
}

/// A validated pipeline: stages in topological order (inputs before consumers).
pub struct Pipeline {
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub section: PipelineSection,
    pub run_dir: PathBuf,
    pub stages: Vec<StageNode>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.section.name
    }
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
    /// (consumer index, input port) for every edge leaving stage `i`.
    pub fn consumers(&self, i: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (c, s) in self.stages.iter().enumerate() {
            for (port, &inp) in s.inputs.iter().enumerate() {
                if inp == i {
                    out.push((c, port));
                }
            }
        }
        out
    }
    /// Stage `i` and every stage downstream of it.
    pub fn descendants(&self, i: usize) -> Vec<bool> {
        let mut mark = vec![false; self.stages.len()];
        mark[i] = true;
        // Topological order: one forward sweep suffices.
        for (c, s) in self.stages.iter().enumerate() {
            if s.inputs.iter().any(|&p| mark[p]) {
                mark[c] = true;
            }
        }
        mark
    }
    /// Overrides the run directory (the CLI's `--run-dir`) for every stage.
    pub fn set_run_dir(&mut self, dir: PathBuf) {
        for s in &mut self.stages {
            s.ctx.run_dir = dir.clone();
        }
        self.run_dir = dir;
    }
}

/// Derives a stage's seed from the pipeline seed and the stage name (stable across runs and machines).
pub fn stage_seed(pipeline_seed: u64, stage: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&pipeline_seed.to_le_bytes());
    h.update(stage.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}
