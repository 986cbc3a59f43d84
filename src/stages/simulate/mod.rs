//! Neuron-model simulation: GLIF, STG and Hodgkin-Huxley sweeps, and replays of recorded stimuli.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

use crate::stage::KindEntry;

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![]
}
