//! What the two expression languages of this family share (`transform.filter`'s predicates in
//! [`super::predicate`], `transform.derive`'s formulas in [`super::formula`]): an error located at
//! a character of the expression, which becomes an [`Issue`] pointing into the option's string.

use crate::stage::{Issue, PathSeg};

/// A parse or type error at a character offset of an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Where the error is in the expression text: a character index, as [`Issue::offset`] reads it
    /// (the formula parser counts bytes, which is the same for the ASCII formulas are written in).
    pub offset: usize,
    pub message: String,
}

impl ExprError {
    pub fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError { offset, message: message.into() }
    }

    /// This error as an issue of the option at `path` (e.g. `where`), pointing at its character.
    pub fn at(self, path: Vec<PathSeg>) -> Issue {
        Issue { path, message: self.message, offset: Some(self.offset) }
    }
}

/// At build time an expression error is the stage's error, with the same text.
impl From<ExprError> for crate::error::Error {
    fn from(e: ExprError) -> Self {
        crate::error::Error::msg(e.message)
    }
}
