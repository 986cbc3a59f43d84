//! Feature extraction: spikes, sweep, cell, subthreshold, trace, membrane, unit, burst and ISI features, group statistics.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod bursts;
pub mod isi;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![entry::<bursts::FeaturesBursts>(), entry::<isi::FeaturesIsi>()]
}
