//! Feature extraction: spikes, sweep, cell, subthreshold, trace, membrane, unit, burst and ISI features, group statistics.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

use crate::stage::KindEntry;

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![]
}
