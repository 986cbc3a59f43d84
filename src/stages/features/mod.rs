//! Feature extraction: spikes, sweep, cell, subthreshold, trace, membrane, unit, burst and ISI features, group statistics.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod bursts;
pub mod cell;
pub mod cell_rows;
pub mod detection;
pub mod group_stats;
pub mod isi;
pub mod membrane;
pub mod passed_columns;
pub mod spikes;
pub mod subthreshold;
pub mod sweep;
pub mod sweep_analysis;
pub mod trace;
pub mod units;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<spikes::FeaturesSpikes>(),
        entry::<sweep::FeaturesSweep>(),
        entry::<cell::FeaturesCell>(),
        entry::<subthreshold::FeaturesSubthreshold>(),
        entry::<trace::FeaturesTrace>(),
        entry::<membrane::FeaturesMembrane>(),
        entry::<group_stats::FeaturesGroupStats>(),
        entry::<units::FeaturesUnits>(),
        entry::<bursts::FeaturesBursts>(),
        entry::<isi::FeaturesIsi>(),
    ]
}
