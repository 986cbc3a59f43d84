//! Pipeline files: parsing with spans, validation that reports every error at once, and the
//! validated graph the runtime executes.
//!
//! A pipeline file has a `[pipeline]` table and one `[stages.<name>]` table per stage, each with a
//! `kind`, its `inputs` and the kind's own options. Validation runs in one pass over the whole file
//! and never stops at the first problem: TOML syntax, unknown keys at any level, unknown kinds (with
//! the nearest suggestion), unknown or missing inputs, cycles, invalid values, and output schemas
//! that do not fit their consumers all become `file:line:column: message` diagnostics.

mod checks;
pub mod graph;
pub mod model;
pub mod parse;
pub mod plan;
pub mod rewrite;

pub use model::{Pipeline, PipelineSection, StageNode, stage_seed};
pub use plan::{Placement, Plan, Segment};
pub use parse::{load, parse_str, parse_str_with, watch_sources};
