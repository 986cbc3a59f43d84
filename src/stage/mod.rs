//! The stage core: what a stage *is*, shared by the runtime (which drives stages) and the stage
//! kinds (which implement them). It names no concrete kind; the list of kinds lives in
//! [`crate::stages`], and the runtime only ever sees [`StageDef`] trait objects.
//!
//! - [`config`]: a kind's configuration contract ([`StageConfig`]), its object-safe view
//!   ([`StageDef`]) and its registry entry ([`KindEntry`]);
//! - [`partition`]: how a kind's work divides ([`Partitioning`]), read by the planner;
//! - [`operator`]: the running operator traits and the [`Emitter`];
//! - [`context`]: where a stage runs ([`StageContext`]);
//! - [`issue`]: validation issues located inside a stage's table;
//! - [`columns`]: schema and column helpers (units in field metadata, typed column reads);
//! - [`parquet`]: the Parquet settings and reader shared by checkpoints and the Parquet stages.
//!
//! Layering (checked by a test): CLI -> runtime -> pipeline -> stage core <- stages -> kernels.

pub mod columns;
pub mod config;
pub mod context;
pub mod issue;
pub mod operator;
pub mod parquet;
pub mod partition;

pub use config::{Arity, KindEntry, StageConfig, StageDef, entry};
pub use context::{StageContext, WatchSource};
pub use issue::{Issue, PathSeg};
pub use operator::{Emitter, Operator, SourceOperator, TransformOperator, UnitFailure, batch_bytes, batch_units};
pub use partition::Partitioning;
