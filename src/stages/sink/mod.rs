//! Sinks: export a table to Parquet or CSV outside the run directory.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod csv;
pub mod file;
pub mod parquet;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![entry::<parquet::SinkParquet>(), entry::<csv::SinkCsv>()]
}
