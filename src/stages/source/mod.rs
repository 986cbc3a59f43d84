//! Sources over files a pipeline reads: Parquet and CSV tables.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod csv;
pub mod files;
pub mod parquet;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![entry::<parquet::SourceParquet>(), entry::<csv::SourceCsv>()]
}
