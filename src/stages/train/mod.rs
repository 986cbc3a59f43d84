//! Training and applying models: regression, classification, clustering, prediction, evaluation.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod evaluate_regression;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<evaluate_regression::EvaluateRegression>(),
    ]
}
