//! Feature extraction: spikes, sweep, cell, subthreshold, trace, membrane, unit, burst and ISI features, group statistics.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod cell;
pub mod group_stats;
pub mod membrane;
pub mod spikes;
pub mod trace;
pub mod units;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<spikes::FeaturesSpikes>(),
        entry::<spikes::FeaturesSweep>(),
        entry::<cell::FeaturesCell>(),
        entry::<cell::FeaturesSubthreshold>(),
        entry::<trace::FeaturesTrace>(),
        entry::<membrane::FeaturesMembrane>(),
        entry::<group_stats::FeaturesGroupStats>(),
        entry::<units::FeaturesUnits>(),
        entry::<units::IngestCellExplorer>(),
    ]
}
