//! Stage kinds: what a pipeline file can name in `kind = "..."`.
//!
//! A stage is a small config struct (serde, unknown fields rejected, doc comments that become
//! `neurostream stages`) implementing [`crate::stage::StageConfig`], plus an operator built from it that turns
//! record batches into record batches. The list of kinds is [`registry`]: a plain list, easy to
//! audit, no registration magic. Families live in their own folders (`source`, `transform` and `sink`
//! hold what every pipeline needs; simulation, features, ingestion and training add theirs).

pub mod source;
pub mod ingest;
pub mod simulate;
pub mod preprocess;
pub mod features;
pub mod dic;
pub mod transform;
pub mod train;
pub mod sink;

// Files not yet split into their families (one kind per file).
pub mod cell;
pub mod old_features;
pub mod features_membrane;
pub mod features_trace;
pub mod group_stats;
pub mod units;

use crate::stage::{KindEntry, entry};

/// Every stage kind neurostream knows, in the order `neurostream stages` lists them: each family's
/// list, joined (a plain list, no registration magic).
pub fn registry() -> Vec<KindEntry> {
    let families = [
        source::kinds(),
        ingest::kinds(),
        simulate::kinds(),
        preprocess::kinds(),
        features::kinds(),
        dic::kinds(),
        transform::kinds(),
        train::kinds(),
        sink::kinds(),
        not_yet_in_a_family(),
    ];
    families.into_iter().flatten().collect()
}

/// Kinds whose code has not moved into its family folder yet.
fn not_yet_in_a_family() -> Vec<KindEntry> {
    vec![
        entry::<old_features::FeaturesSpikes>(),
        entry::<old_features::FeaturesSweep>(),
        entry::<units::IngestCellExplorer>(),
        entry::<units::FeaturesUnits>(),
        entry::<cell::FeaturesCell>(),
        entry::<cell::FeaturesSubthreshold>(),
        entry::<features_trace::FeaturesTrace>(),
        entry::<features_membrane::FeaturesMembrane>(),
        entry::<group_stats::FeaturesGroupStats>(),
    ]
}

pub fn find_kind(kind: &str) -> Option<KindEntry> {
    registry().into_iter().find(|e| e.kind == kind)
}

