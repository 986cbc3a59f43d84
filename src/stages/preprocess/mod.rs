//! Preprocessing: normalization by spontaneous activity, voxel grids, filtering, resampling and windowing of traces.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod filter;
pub mod spontaneous;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<spontaneous::IngestNatImg>(),
        entry::<spontaneous::PreprocessSpontaneous>(),
        entry::<spontaneous::PreprocessVoxelize>(),
        entry::<filter::PreprocessFilter>(),
        entry::<filter::PreprocessResample>(),
        entry::<filter::PreprocessWindow>(),
    ]
}
