//! One error type for the whole crate.
//!
//! Every user-facing failure must name the file, the stage and the field it concerns, so errors carry
//! their context as text layered around the cause (`Error::context`). Pipeline-file problems are kept
//! apart as [`Diagnostics`] because they are collected (all at once) and map to exit code 2.

use std::path::{Path, PathBuf};

use crate::diag::Diagnostics;

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file (or a stage's configuration) is invalid: exit code 2.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// Invalid command-line usage: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{context}: {source}")]
    Arrow { context: String, source: arrow::error::ArrowError },
    #[error("{context}: {source}")]
    Parquet { context: String, source: parquet::errors::ParquetError },
    #[error("{0}")]
    Message(String),
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Message(message.into())
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        Error::Arrow { context: context.into(), source }
    }
    pub fn parquet(context: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet { context: context.into(), source }
    }
    /// Wraps this error with a line of context (outermost first when printed).
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context { context: context.into(), source: Box::new(self) }
    }
    /// Process exit code for this error: 2 for invalid usage or pipeline files, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Usage(_) => 2,
            Error::Context { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

/// Adds context to any `Result` whose error converts into [`Error`].
pub trait ResultExt<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(source: arrow::error::ArrowError) -> Self {
        Error::Arrow { context: "arrow".into(), source }
    }
}
impl From<parquet::errors::ParquetError> for Error {
    fn from(source: parquet::errors::ParquetError) -> Self {
        Error::Parquet { context: "parquet".into(), source }
    }
}
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Message(format!("json: {e}"))
    }
}
impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error::Invalid(d)
    }
}
