//! Ingestion: recordings in their native formats (ABF, NWB, Allen sweeps, CellExplorer, spike-time tables, calcium-imaging sessions) as Arrow tables with units.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod abf;
pub mod allen_sweeps;
pub mod cellexplorer;
pub mod files;
pub mod natimg;
pub mod nwb;
pub mod spike_times;
pub mod sweeps_table;

use crate::stage::{KindEntry, entry};

/// The chunk columns added to the sweeps table by `chunk_s`.
pub const CHUNK_COLUMNS: [&str; 4] = ["chunk", "chunk_start_s", "chunk_end_s", "trace_start_s"];

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<abf::IngestAbf>(),
        entry::<nwb::IngestNwb>(),
        entry::<allen_sweeps::IngestAllenSweeps>(),
        entry::<natimg::IngestNatImg>(),
        entry::<spike_times::IngestSpikeTimes>(),
        entry::<cellexplorer::IngestCellExplorer>(),
    ]
}
