//! The errors of the model kernels, in a file of their own so that the model layer
//! ([`super::models`]) and the neural-network engine ([`super::nn`]) both depend on it and
//! neither on the other's errors: `models` uses `nn`, never the other way round.

use std::fmt;
use std::path::PathBuf;

use super::metrics::MetricsError;
use super::validation::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {model}: parameter `{field}` {reason}")]
    InvalidParameter { model: &'static str, field: &'static str, reason: String },
    #[error("data: {0}")]
    BadData(String),
    #[error("model {model} needs {needs}")]
    WrongTarget { model: &'static str, needs: &'static str },
    #[error("model {model} failed in its backend: {message}")]
    Backend { model: &'static str, message: String },
    #[error("schema mismatch: {0}")]
    Schema(SchemaDifference),
    #[error("grid search: {0}")]
    Grid(String),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("model JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A model file that cannot be read (the reason names what is wrong with it).
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
}

/// Wraps an error of a backend library (linfa, smartcore, burn) as the failure of `model`.
pub(crate) fn backend(model: &'static str) -> impl Fn(&dyn fmt::Display) -> ModelError {
    move |e| ModelError::Backend { model, message: e.to_string() }
}

/// How a table's schema differs from the one a model was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaDifference {
    /// Training features absent from the table.
    pub missing_features: Vec<String>,
    /// Table features the model never saw.
    pub unexpected_features: Vec<String>,
    /// Same feature set in another order: (model order, table order).
    pub reordered: Option<(Vec<String>, Vec<String>)>,
    /// Label classes in the table that the model cannot predict.
    pub unknown_classes: Vec<String>,
}

impl fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing_features.is_empty() {
            parts.push(format!("features missing from the table: {}", self.missing_features.join(", ")));
        }
        if !self.unexpected_features.is_empty() {
            parts.push(format!("features the model was not trained on: {}", self.unexpected_features.join(", ")));
        }
        if let Some((model, table)) = &self.reordered {
            parts.push(format!("same features in another order (model: {}; table: {})", model.join(", "), table.join(", ")));
        }
        if !self.unknown_classes.is_empty() {
            parts.push(format!("label classes unknown to the model: {}", self.unknown_classes.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}
