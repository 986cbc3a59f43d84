//! Neuron-model simulation: GLIF, STG and Hodgkin-Huxley sweeps, and replays of recorded stimuli.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod glif;
pub mod glif_replay;
pub mod hh;
mod list_columns;
pub mod stg;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<glif::SimulateGlif>(),
        entry::<stg::SimulateStg>(),
        entry::<hh::SimulateHh>(),
        entry::<glif_replay::SimulateGlifReplay>(),
    ]
}
