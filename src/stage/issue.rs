//! Validation issues of one stage: a message located by a path inside the stage's table, which the
//! pipeline parser turns into `file:line:column` diagnostics. Stages return every issue at once.

/// A step in the path from a stage's table to the offending value, for error positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A problem with one stage's configuration or its fit with its inputs, located by a path inside
/// the stage's table (empty path = the stage as a whole).
#[derive(Debug, Clone)]
pub struct Issue {
    pub path: Vec<PathSeg>,
    pub message: String,
    /// Character offset inside a string value (e.g. a filter expression), when known.
    pub offset: Option<usize>,
}

impl Issue {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Issue { path: path.iter().map(|k| PathSeg::Key(k.to_string())).collect(), message: message.into(), offset: None }
    }
    pub fn at_index(key: &str, index: usize, message: impl Into<String>) -> Self {
        Issue { path: vec![PathSeg::Key(key.to_string()), PathSeg::Index(index)], message: message.into(), offset: None }
    }
    /// An issue with the stage's `inputs` (e.g. a schema its input does not provide).
    pub fn inputs(message: impl Into<String>) -> Self {
        Issue::at(&["inputs"], message)
    }
}

/// The closest of `candidates` to `word` (for "did you mean" hints), if any is close enough.
pub use crate::diag::nearest;
