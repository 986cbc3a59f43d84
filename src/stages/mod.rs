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

use crate::stage::KindEntry;

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
    ];
    families.into_iter().flatten().collect()
}

pub fn find_kind(kind: &str) -> Option<KindEntry> {
    registry().into_iter().find(|e| e.kind == kind)
}

