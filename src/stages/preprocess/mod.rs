//! Preprocessing: normalization by spontaneous activity, voxel grids, filtering, resampling and windowing of traces.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry. What several kinds
//! share: [`lists`] (their list columns: checks, readers, writers) and [`trace_rows`] (the
//! per-row failure names and sampling rates of the trace stages). The numerics are the kernels of
//! [`crate::preprocess`]; the activity table's layout is `ingest.natimg`'s
//! ([`crate::stages::ingest::natimg`]).

pub mod filter;
pub mod lists;
pub mod resample;
pub mod spontaneous;
pub mod trace_rows;
pub mod voxelize;
pub mod window;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<spontaneous::PreprocessSpontaneous>(),
        entry::<voxelize::PreprocessVoxelize>(),
        entry::<filter::PreprocessFilter>(),
        entry::<resample::PreprocessResample>(),
        entry::<window::PreprocessWindow>(),
    ]
}
