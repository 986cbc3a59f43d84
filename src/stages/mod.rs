//! Stage kinds: what a pipeline file can name in `kind = "..."`.
//!
//! A stage is a small config struct (serde, unknown fields rejected, doc comments that become
//! `neurostream stages`) implementing [`crate::stage::StageConfig`], plus an operator built from it that turns
//! record batches into record batches. The list of kinds is [`registry`]: a plain list, easy to
//! audit, no registration magic. Families live in their own modules (`generic` holds the sources,
//! sinks and transforms every pipeline needs; simulation, features, ingestion and training add theirs).

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
pub mod allen;
pub mod csv_source;
pub mod derive;
pub mod old_dic;
pub mod dic_data;
pub mod generic;
pub mod old_ingest;
pub mod old_preprocess;
pub mod preprocess_signal;
pub mod old_simulate;
pub mod simulate_hh;
pub mod old_train;

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
        entry::<generic::SourceParquet>(),
        entry::<csv_source::SourceCsv>(),
        entry::<generic::SinkParquet>(),
        entry::<generic::SinkCsv>(),
        entry::<generic::Select>(),
        entry::<generic::Filter>(),
        entry::<derive::TransformDerive>(),
        entry::<old_simulate::SimulateGlif>(),
        entry::<old_simulate::SimulateStg>(),
        entry::<simulate_hh::SimulateHh>(),
        entry::<old_ingest::IngestAbf>(),
        entry::<old_ingest::IngestNwb>(),
        entry::<allen::IngestAllenSweeps>(),
        entry::<allen::SimulateGlifReplay>(),
        entry::<old_dic::IngestSpikeTimes>(),
        entry::<old_dic::DicEstimate>(),
        entry::<old_dic::DicPopulation>(),
        entry::<old_dic::FeaturesBursts>(),
        entry::<old_dic::DicValidate>(),
        entry::<dic_data::DicTargets>(),
        entry::<dic_data::FeaturesIsi>(),
        entry::<old_preprocess::IngestNatImg>(),
        entry::<old_preprocess::PreprocessSpontaneous>(),
        entry::<old_preprocess::PreprocessVoxelize>(),
        entry::<preprocess_signal::PreprocessFilter>(),
        entry::<preprocess_signal::PreprocessResample>(),
        entry::<preprocess_signal::PreprocessWindow>(),
        entry::<old_train::TrainRegress>(),
        entry::<old_train::TrainClassify>(),
        entry::<old_train::TrainCluster>(),
        entry::<old_train::PredictModel>(),
        entry::<allen::EvaluateRegression>(),
    ]
}

pub fn find_kind(kind: &str) -> Option<KindEntry> {
    registry().into_iter().find(|e| e.kind == kind)
}

