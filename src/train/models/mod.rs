//! Model specifications, fitting and prediction for the `train` and `predict` stages.
//!
//! A pipeline names a model with a [`ModelSpec`] (a serde enum tagged by `model`, unknown fields
//! rejected) and gets back a [`FittedModel`]: the backend model (linfa or smartcore, serialized
//! with serde), the standardization fitted on the training rows only, the feature names and the
//! label classes. The `predict` stage loads that JSON and refuses a table whose schema differs
//! ([`compare_schema`] spells out the difference). Class imbalance is handled by class weights
//! where the backend takes them (decision tree sample weights, SVM per-class C) and otherwise by
//! seeded random oversampling of the training rows. Hyperparameters are chosen by grid search
//! inside the training folds only ([`grid_search`], [`nested_cross_validate`]), so the outer test
//! score never sees the data that picked them.
//!
//! One file per concern: [`spec`] (what a pipeline names), [`data`] (the table a model learns
//! from), [`fitted`] (the fitted model, [`fit`] and prediction), one file per fitter family
//! ([`regression`], [`classification`], [`unsupervised`]; the networks are [`crate::train::nn`]),
//! [`persist`] (model files, schema comparison) and [`search`] (grid search, nested CV). This
//! module re-exports their public API, so callers name `crate::train::models::X`.

mod classification;
mod data;
mod fitted;
mod persist;
mod regression;
mod search;
mod spec;
mod unsupervised;

pub use crate::train::error::{ModelError, SchemaDifference};
pub use data::{Standardizer, Target, TrainingData, encode_labels};
pub use fitted::{FittedModel, Prediction, fit};
pub use persist::compare_schema;
pub use search::{GridSearchResult, OuterFoldResult, ParamGrid, grid_search, nested_cross_validate, score};
pub use spec::{FitOptions, ModelSpec, SvmKernel, Task};

#[cfg(test)]
mod network_tests;
#[cfg(test)]
pub(crate) mod tests;
