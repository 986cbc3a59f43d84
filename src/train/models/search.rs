//! Choosing hyperparameters: the score that ranks them ([`score`]), grids of candidate specs
//! ([`ParamGrid`]), grid search inside the training rows only ([`grid_search`]) and nested
//! cross-validation ([`nested_cross_validate`]), so the outer test score never sees the data that
//! picked them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{FitOptions, FittedModel, ModelSpec, Prediction, Target, TrainingData, fit};
use crate::train::error::ModelError;
use crate::train::metrics;
use crate::train::validation::{self, Fold};

/// Score used to rank hyperparameters: accuracy (classification; balanced accuracy when
/// `balance_classes`), R² (regression).
pub fn score(model: &FittedModel, data: &TrainingData) -> Result<f64, ModelError> {
    let prediction = model.predict(&data.feature_names, data.x.view())?;
    match (&data.target, prediction) {
        (Target::Values(y), Prediction::Values(p)) => Ok(metrics::r2_score(y, &p)?),
        (Target::Classes { labels, classes }, Prediction::Classes(p)) => {
            let report = metrics::classification_report(labels, &p, classes.len(), labels)?;
            Ok(if model.options.balance_classes { report.balanced_accuracy } else { report.accuracy })
        }
        _ => Err(ModelError::Grid(format!("model {} cannot be scored against this target", model.spec.name()))),
    }
}

/// A base spec plus lists of values for some of its fields, e.g.
/// `{"base": {"model": "ridge"}, "values": {"alpha": [0.1, 1, 10]}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGrid {
    pub base: ModelSpec,
    pub values: BTreeMap<String, Vec<serde_json::Value>>,
}

impl ParamGrid {
    /// All combinations (Cartesian product, fields in name order). A field name the model does
    /// not have, or a value of the wrong type, is an error naming it.
    pub fn expand(&self) -> Result<Vec<ModelSpec>, ModelError> {
        let serde_json::Value::Object(base) = serde_json::to_value(&self.base)? else {
            return Err(ModelError::Grid("base spec is not an object".into()));
        };
        let mut combos = vec![base];
        for (field, values) in &self.values {
            if values.is_empty() {
                return Err(ModelError::Grid(format!("field `{field}` has an empty value list")));
            }
            combos = combos
                .into_iter()
                .flat_map(|c| values.iter().map(move |v| (c.clone(), v.clone())))
                .map(|(mut c, v)| {
                    c.insert(field.clone(), v);
                    c
                })
                .collect();
        }
        combos
            .into_iter()
            .map(|c| {
                serde_json::from_value::<ModelSpec>(serde_json::Value::Object(c.clone()))
                    .map_err(|e| ModelError::Grid(format!("{} with {:?}: {e}", self.base.name(), c)))
            })
            .collect()
    }
}

/// Result of a grid search: every candidate's mean inner-CV score and the best one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSearchResult {
    pub best: ModelSpec,
    pub best_score: f64,
    pub scores: Vec<(ModelSpec, f64)>,
}

/// Internal CV splits of `data`: stratified for classes, shuffled k-fold otherwise.
fn inner_folds(data: &TrainingData, n_folds: usize, seed: u64) -> Result<Vec<Fold>, ModelError> {
    Ok(match &data.target {
        Target::Classes { labels, .. } => validation::stratified_k_fold(labels, n_folds, seed)?,
        _ => validation::k_fold(data.x.nrows(), n_folds, true, seed)?,
    })
}

/// Picks the candidate with the best mean score over `n_folds` inner folds of `data` (which
/// should already be the outer training rows only). Ties keep the earlier candidate.
pub fn grid_search(
    candidates: &[ModelSpec],
    options: &FitOptions,
    data: &TrainingData,
    n_folds: usize,
) -> Result<GridSearchResult, ModelError> {
    if candidates.is_empty() {
        return Err(ModelError::Grid("no candidate specs".into()));
    }
    let folds = inner_folds(data, n_folds, options.seed)?;
    let mut scores = Vec::with_capacity(candidates.len());
    for spec in candidates {
        let mut total = 0.0;
        for fold in &folds {
            let model = fit(spec, options, &data.select(&fold.train))?;
            total += score(&model, &data.select(&fold.test))?;
        }
        scores.push((spec.clone(), total / folds.len() as f64));
    }
    let (best, best_score) = scores
        .iter()
        .fold(None::<&(ModelSpec, f64)>, |acc, s| match acc {
            Some(a) if a.1 >= s.1 => Some(a),
            _ => Some(s),
        })
        .cloned()
        .ok_or_else(|| ModelError::Grid("no scores".into()))?;
    Ok(GridSearchResult { best, best_score, scores })
}

/// One outer fold of a nested cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OuterFoldResult {
    pub best: ModelSpec,
    pub inner_score: f64,
    pub test_score: f64,
}

/// Nested CV: for each outer fold, grid search on its training rows only, refit the winner on
/// those rows, score it on the untouched test rows.
pub fn nested_cross_validate(
    candidates: &[ModelSpec],
    options: &FitOptions,
    data: &TrainingData,
    outer: &[Fold],
    inner_n_folds: usize,
) -> Result<Vec<OuterFoldResult>, ModelError> {
    outer
        .iter()
        .map(|fold| {
            let train = data.select(&fold.train);
            let search = grid_search(candidates, options, &train, inner_n_folds)?;
            let model = fit(&search.best, options, &train)?;
            let test_score = score(&model, &data.select(&fold.test))?;
            Ok(OuterFoldResult { best: search.best, inner_score: search.best_score, test_score })
        })
        .collect()
}
