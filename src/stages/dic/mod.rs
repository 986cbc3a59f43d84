//! Dynamic input conductances: targets, estimates from spike times, populations and their validation.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry. The study-4 chain
//! (spec `dic_stg.md`, Brandoit 2025 / Spike2Pop): `ingest.spike_times` → `dic.estimate` →
//! `dic.population` → `simulate.stg` → `features.bursts` → `dic.validate`, and for learning the
//! estimate, `dic.targets` → `dic.population` → `simulate.stg` → `features.bursts` →
//! `features.isi` → `train.regress`. The numeric work is in the kernels of `crate::dic`.
//!
//! [`spike_columns`] and [`options`] hold what these kinds share (also the ingest and features
//! kinds of the chain); [`DicStageError`], the kernels' one error type, becomes an [`Error`] here.

pub mod estimate;
pub mod options;
pub mod population;
pub mod spike_columns;
pub mod targets;
pub mod validate;

use crate::dic::DicStageError;
use crate::error::Error;
use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<targets::DicTargets>(),
        entry::<estimate::DicEstimate>(),
        entry::<population::DicPopulation>(),
        entry::<validate::DicValidate>(),
    ]
}

/// The kernel's message, unchanged: the caller adds the context (stage, step).
impl From<DicStageError> for Error {
    fn from(e: DicStageError) -> Self {
        Error::msg(e.to_string())
    }
}
