//! Model files: a [`FittedModel`] as JSON (optionally zstd-compressed), and the comparison of a
//! table's schema with the one a model was trained on ([`compare_schema`]), which lets `predict`
//! refuse a table it was not trained for and say why.

use std::path::Path;

use super::FittedModel;
use crate::train::error::{ModelError, SchemaDifference};

impl FittedModel {
    pub fn to_json(&self) -> Result<String, ModelError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Reads a model file: JSON as `train.*` writes it, or the same JSON zstd-compressed when the
    /// name ends in `.zst` (how the repository ships its trained models, at an eighth of the size).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let unreadable = |reason: String| ModelError::File { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let bytes = if path.extension().is_some_and(|e| e == "zst") {
            zstd::decode_all(bytes.as_slice()).map_err(|e| unreadable(format!("not a zstd file: {e}")))?
        } else {
            bytes
        };
        let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".into()))?;
        Self::from_json(&text).map_err(|e| unreadable(format!("not a neurostream model file: {e}")))
    }

    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        Ok(serde_json::from_str(text)?)
    }
}

/// Compares a table's features (and, if given, its label classes) with a model's. `None` = same.
pub fn compare_schema(
    model_features: &[String],
    model_classes: Option<&[String]>,
    table_features: &[String],
    table_classes: Option<&[String]>,
) -> Option<SchemaDifference> {
    let diff = SchemaDifference {
        missing_features: model_features.iter().filter(|f| !table_features.contains(f)).cloned().collect(),
        unexpected_features: table_features.iter().filter(|f| !model_features.contains(f)).cloned().collect(),
        reordered: None,
        unknown_classes: match (model_classes, table_classes) {
            (Some(m), Some(t)) => t.iter().filter(|c| !m.contains(c)).cloned().collect(),
            _ => Vec::new(),
        },
    };
    let diff = if diff.missing_features.is_empty() && diff.unexpected_features.is_empty() && model_features != table_features {
        SchemaDifference { reordered: Some((model_features.to_vec(), table_features.to_vec())), ..diff }
    } else {
        diff
    };
    (diff != SchemaDifference::default()).then_some(diff)
}
