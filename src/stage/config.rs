//! The contract of a stage kind: its configuration type ([`StageConfig`]), the object-safe view the
//! pipeline and the runtime hold ([`StageDef`]), and the registry entry that parses it ([`KindEntry`]).
//!
//! Everything the planner, `run --watch` and (later) cluster sharding need to know about a kind is
//! declared here by the kind itself (arity, [`Partitioning`], external inputs and outputs, what it
//! watches), never inferred from its name.

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Issue, Operator, Partitioning, StageContext, WatchSource};
use crate::error::Result;

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

/// The contract of one stage kind's configuration.
pub trait StageConfig: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static {
    /// `<family>.<name>`, as written in pipeline files.
    const KIND: &'static str;
    /// One line for `neurostream stages`.
    const SUMMARY: &'static str;
    /// Bump when the stage's computation changes, so old checkpoints stop matching.
    const CODE_VERSION: u32;

    fn arity() -> Arity;

    /// How this stage's work divides (see [`Partitioning`]). Every kind declares it; the planner,
    /// `run --watch` and sharding read it. It may depend on the configuration (a group column).
    fn partitioning(&self) -> Partitioning;

    /// A minimal stage table of this kind as it would appear in a pipeline file (without `kind`
    /// and `inputs`), shown by `neurostream stages` and parsed by the registry contract test.
    const EXAMPLE: &'static str = "";

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

/// Object-safe view of a parsed stage configuration.
pub trait StageDef: Send + Sync {
    fn kind(&self) -> &'static str;
    fn code_version(&self) -> u32;
    fn arity(&self) -> Arity;
    fn partitioning(&self) -> Partitioning;
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
    fn partitioning(&self) -> Partitioning {
        StageConfig::partitioning(self)
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
    /// [`StageConfig::EXAMPLE`].
    pub example: &'static str,
    pub parse: ParseFn,
    pub schema: fn() -> schemars::Schema,
}

impl KindEntry {
    /// Parses a stage table's options (TOML without `kind` and `inputs`, e.g. [`StageConfig::EXAMPLE`]).
    pub fn parse_options(&self, text: &str) -> std::result::Result<Box<dyn StageDef>, String> {
        let (root, errors) = toml::de::DeTable::parse_recoverable(text);
        if let Some(e) = errors.first() {
            return Err(e.to_string());
        }
        let span = root.span();
        (self.parse)(toml::de::ValueDeserializer::from(toml::Spanned::new(span, toml::de::DeValue::Table(root.into_inner())))).map_err(|e| e.to_string())
    }
}

fn parse_as<T: StageConfig>(de: toml::de::ValueDeserializer<'_>) -> std::result::Result<Box<dyn StageDef>, toml::de::Error> {
    <T as serde::Deserialize>::deserialize(de).map(|c| Box::new(c) as Box<dyn StageDef>)
}

/// Splits the `[unit]` off an option's description (its doc comment): `"Rows per batch [rows]."`
/// gives `("Rows per batch.", "rows")`. No unit gives an empty one. `neurostream stages` prints
/// the two apart; the registry contract test requires a unit on every option.
pub fn split_unit(description: &str) -> (String, String) {
    let t = description.trim();
    if let Some(start) = t.rfind('[') {
        if t.ends_with(']') || t[start..].contains("].") {
            let end = t[start..].find(']').map(|e| start + e).unwrap_or(t.len() - 1);
            let unit = t[start + 1..end].to_string();
            let text = format!("{}{}", t[..start].trim_end(), &t[end + 1..]);
            return (text.trim().to_string(), unit);
        }
    }
    (t.to_string(), String::new())
}

pub fn entry<T: StageConfig>() -> KindEntry {
    KindEntry { kind: T::KIND, summary: T::SUMMARY, arity: T::arity(), example: T::EXAMPLE, parse: parse_as::<T>, schema: || schemars::schema_for!(T) }
}

#[cfg(test)]
mod tests {
    use super::split_unit;

    #[test]
    fn split_unit_takes_the_last_bracketed_unit_off_the_description() {
        assert_eq!(split_unit("Rows per emitted batch [rows]."), ("Rows per emitted batch.".to_string(), "rows".to_string()));
        assert_eq!(split_unit("Bounds `[a, b]` of a window [ms]"), ("Bounds `[a, b]` of a window".to_string(), "ms".to_string()));
        assert_eq!(split_unit(" No unit here. "), ("No unit here.".to_string(), String::new()));
    }
}
