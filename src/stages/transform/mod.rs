//! Row-wise transforms every pipeline needs: select, filter, derive.
//!
//! One file per kind, named after it; [`kinds`] lists them for the registry.

pub mod derive;
pub mod expr;
pub mod filter;
pub mod formula;
pub mod predicate;
pub mod select;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![entry::<select::Select>(), entry::<filter::Filter>(), entry::<derive::TransformDerive>()]
}
