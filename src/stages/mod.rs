//! Stage kinds: what a pipeline file can name in `kind = "..."`.
//!
//! A stage is a small config struct (serde, unknown fields rejected, doc comments that become
//! `neurostream stages`) implementing [`StageConfig`], plus an operator built from it that turns
//! record batches into record batches. The list of kinds is [`registry`]: a plain list, easy to
//! audit, no registration magic. Families live in their own modules (`generic` holds the sources,
//! sinks and transforms every pipeline needs; simulation, features, ingestion and training add theirs).

pub mod allen;
pub mod cell;
pub mod csv_source;
pub mod derive;
pub mod dic;
pub mod dic_data;
pub mod features;
pub mod features_membrane;
pub mod features_trace;
pub mod generic;
pub mod group_stats;
pub mod ingest;
pub mod preprocess;
pub mod preprocess_signal;
pub mod schema;
pub mod simulate;
pub mod simulate_hh;
pub mod train;
pub mod units;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;

/// A step in the path from a stage's table to the offending value, for error positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A problem with one stage's configuration or its fit with its inputs, located by a path inside
/// the stage's table (empty path = the stage as a whole).
#[derive(Debug, Clone)]
pub struct Issue {
    pub path: Vec<PathSeg>,
    pub message: String,
    /// Character offset inside a string value (e.g. a filter expression), when known.
    pub offset: Option<usize>,
}

impl Issue {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Issue { path: path.iter().map(|k| PathSeg::Key(k.to_string())).collect(), message: message.into(), offset: None }
    }
    pub fn at_index(key: &str, index: usize, message: impl Into<String>) -> Self {
        Issue { path: vec![PathSeg::Key(key.to_string()), PathSeg::Index(index)], message: message.into(), offset: None }
    }
    /// An issue with the stage's `inputs` (e.g. a schema its input does not provide).
    pub fn inputs(message: impl Into<String>) -> Self {
        Issue::at(&["inputs"], message)
    }
}

/// How many inputs a kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Produces batches from outside the graph; takes no inputs.
    Source,
    /// Takes `min..=max` inputs and produces batches.
    Transform { min: usize, max: Option<usize> },
    /// Takes inputs and writes outside the graph; produces no batches.
    Sink { min: usize, max: Option<usize> },
}

/// What a stage knows about where it runs, at validation, fingerprint and build time.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The stage's name in the pipeline file.
    pub name: String,
    /// Directory of the pipeline file: relative paths in stage options resolve against it.
    pub base_dir: PathBuf,
    /// The stage's own seed, derived from the pipeline seed and the stage name.
    pub seed: u64,
    /// The pipeline's run directory (`runs/<name>/`).
    pub run_dir: PathBuf,
}

impl StageContext {
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}

/// Collects what an operator produces for one call: output batches, and failures of single
/// recordings (units of work) that must not stop the others.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) failures: Vec<UnitFailure>,
}

/// One recording (or batch) that failed in a stage; its downstream work is skipped.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UnitFailure {
    pub unit: String,
    pub message: String,
}

impl Emitter {
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }
    /// The batches emitted so far (for callers driving operators outside the runtime).
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }
    pub fn fail(&mut self, unit: impl Into<String>, message: impl Into<String>) {
        self.failures.push(UnitFailure { unit: unit.into(), message: message.into() });
    }
}

/// A running source: called repeatedly until it returns `false`. Each call should emit a bounded
/// amount of data (one file, one row group, one block of configurations) so memory stays bounded.
pub trait SourceOperator: Send {
    fn next(&mut self, out: &mut Emitter) -> Result<bool>;
}

/// A running transform or sink. `process` is called for every input batch (with the index of the
/// input it came from, in `inputs` order), `finish` once after every input is exhausted.
/// An `Err` from `process` fails the recordings of that batch only; from `finish`, the stage.
pub trait TransformOperator: Send {
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()>;
    fn finish(&mut self, _out: &mut Emitter) -> Result<()> {
        Ok(())
    }
}

pub enum Operator {
    Source(Box<dyn SourceOperator>),
    Transform(Box<dyn TransformOperator>),
}

/// The contract of one stage kind's configuration.
pub trait StageConfig: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static {
    /// `<family>.<name>`, as written in pipeline files.
    const KIND: &'static str;
    /// One line for `neurostream stages`.
    const SUMMARY: &'static str;
    /// Bump when the stage's computation changes, so old checkpoints stop matching.
    const CODE_VERSION: u32;

    fn arity() -> Arity;

    /// Value checks beyond what the types enforce (ranges, units, consistency). All issues at once.
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        Vec::new()
    }

    /// The schema this stage produces from its inputs' schemas, or why the inputs do not fit.
    /// Sinks return an empty schema.
    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>>;

    /// Files read from outside the graph; their content is part of the fingerprint.
    fn external_inputs(&self, _ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    /// Files written outside the run directory (sinks); a cached sink is re-run if one is missing.
    fn external_outputs(&self, _ctx: &StageContext) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Sources over a folder: the folder and file pattern `run --watch` watches.
    fn watch(&self, _ctx: &StageContext) -> Option<WatchSource> {
        None
    }

    /// Sources over files: the same configuration restricted to exactly these files (one increment
    /// of `run --watch`). `None` if the kind cannot be restricted.
    fn restrict_to(&self, _files: &[PathBuf]) -> Option<Self> {
        None
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator>;
}

/// A folder a source reads, with the pattern its files match (for `run --watch`).
#[derive(Debug, Clone)]
pub struct WatchSource {
    pub folder: PathBuf,
    pub pattern: glob::Pattern,
}

/// Object-safe view of a parsed stage configuration.
pub trait StageDef: Send + Sync {
    fn kind(&self) -> &'static str;
    fn code_version(&self) -> u32;
    fn arity(&self) -> Arity;
    fn canonical_json(&self) -> serde_json::Value;
    fn check(&self, ctx: &StageContext) -> Vec<Issue>;
    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>>;
    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>>;
    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf>;
    fn watch(&self, _ctx: &StageContext) -> Option<WatchSource> {
        None
    }
    fn restrict_to(&self, _files: &[PathBuf]) -> Option<Box<dyn StageDef>> {
        None
    }
    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator>;
}

impl<T: StageConfig> StageDef for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }
    fn code_version(&self) -> u32 {
        T::CODE_VERSION
    }
    fn arity(&self) -> Arity {
        T::arity()
    }
    fn canonical_json(&self) -> serde_json::Value {
        // serde_json's Value map is ordered by key, so this is canonical whatever the file's order.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        StageConfig::check(self, ctx)
    }
    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        StageConfig::output_schema(self, ctx, inputs)
    }
    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        StageConfig::external_inputs(self, ctx)
    }
    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        StageConfig::external_outputs(self, ctx)
    }
    fn watch(&self, ctx: &StageContext) -> Option<WatchSource> {
        StageConfig::watch(self, ctx)
    }
    fn restrict_to(&self, files: &[PathBuf]) -> Option<Box<dyn StageDef>> {
        StageConfig::restrict_to(self, files).map(|c| Box::new(c) as Box<dyn StageDef>)
    }
    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        StageConfig::build(self, ctx, inputs, output)
    }
}

type ParseFn = fn(toml::de::ValueDeserializer<'_>) -> std::result::Result<Box<dyn StageDef>, toml::de::Error>;

/// One entry of the kind registry.
pub struct KindEntry {
    pub kind: &'static str,
    pub summary: &'static str,
    pub arity: Arity,
    pub parse: ParseFn,
    pub schema: fn() -> schemars::Schema,
}

fn parse_as<T: StageConfig>(de: toml::de::ValueDeserializer<'_>) -> std::result::Result<Box<dyn StageDef>, toml::de::Error> {
    <T as serde::Deserialize>::deserialize(de).map(|c| Box::new(c) as Box<dyn StageDef>)
}

pub fn entry<T: StageConfig>() -> KindEntry {
    KindEntry { kind: T::KIND, summary: T::SUMMARY, arity: T::arity(), parse: parse_as::<T>, schema: || schemars::schema_for!(T) }
}

/// Every stage kind neurostream knows, in the order `neurostream stages` lists them.
pub fn registry() -> Vec<KindEntry> {
    vec![
        entry::<generic::SourceParquet>(),
        entry::<csv_source::SourceCsv>(),
        entry::<generic::SinkParquet>(),
        entry::<generic::SinkCsv>(),
        entry::<generic::Select>(),
        entry::<generic::Filter>(),
        entry::<derive::TransformDerive>(),
        entry::<simulate::SimulateGlif>(),
        entry::<simulate::SimulateStg>(),
        entry::<simulate_hh::SimulateHh>(),
        entry::<ingest::IngestAbf>(),
        entry::<ingest::IngestNwb>(),
        entry::<allen::IngestAllenSweeps>(),
        entry::<allen::SimulateGlifReplay>(),
        entry::<features::FeaturesSpikes>(),
        entry::<features::FeaturesSweep>(),
        entry::<units::IngestCellExplorer>(),
        entry::<units::FeaturesUnits>(),
        entry::<cell::FeaturesCell>(),
        entry::<cell::FeaturesSubthreshold>(),
        entry::<features_trace::FeaturesTrace>(),
        entry::<features_membrane::FeaturesMembrane>(),
        entry::<group_stats::FeaturesGroupStats>(),
        entry::<dic::IngestSpikeTimes>(),
        entry::<dic::DicEstimate>(),
        entry::<dic::DicPopulation>(),
        entry::<dic::FeaturesBursts>(),
        entry::<dic::DicValidate>(),
        entry::<dic_data::DicTargets>(),
        entry::<dic_data::FeaturesIsi>(),
        entry::<preprocess::IngestNatImg>(),
        entry::<preprocess::PreprocessSpontaneous>(),
        entry::<preprocess::PreprocessVoxelize>(),
        entry::<preprocess_signal::PreprocessFilter>(),
        entry::<preprocess_signal::PreprocessResample>(),
        entry::<preprocess_signal::PreprocessWindow>(),
        entry::<train::TrainRegress>(),
        entry::<train::TrainClassify>(),
        entry::<train::TrainCluster>(),
        entry::<train::PredictModel>(),
        entry::<allen::EvaluateRegression>(),
    ]
}

pub fn find_kind(kind: &str) -> Option<KindEntry> {
    registry().into_iter().find(|e| e.kind == kind)
}

/// Keys of the recording (unit of work) a batch belongs to, for failure reports: the distinct
/// values of its `recording_id` column if it has one.
pub fn batch_units(batch: &RecordBatch, fallback: &str) -> Vec<String> {
    use arrow::array::AsArray;
    if let Some(col) = batch.column_by_name("recording_id") {
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).ok();
        if let Some(col) = col {
            let strings = col.as_string::<i32>();
            let mut units: Vec<String> = strings.iter().flatten().map(str::to_string).collect();
            units.sort();
            units.dedup();
            if !units.is_empty() {
                return units;
            }
        }
    }
    vec![fallback.to_string()]
}

/// Approximate in-memory size of a batch (used for channel bounds and counters).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.get_array_memory_size()).sum()
}

pub type Schema = Arc<arrow::datatypes::Schema>;
