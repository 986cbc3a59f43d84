//! The table a model learns from ([`TrainingData`]: feature matrix, names and [`Target`]) and the
//! standardization fitted on its training rows ([`Standardizer`]).

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::train::error::ModelError;
use crate::train::nn;

/// The target column of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Clustering and transforms have no target.
    None,
    /// Continuous or count target (regression).
    Values(Vec<f64>),
    /// Class indices into `classes` (see [`encode_labels`]).
    Classes { labels: Vec<usize>, classes: Vec<String> },
}

/// Maps arbitrary labels to dense class indices, classes in ascending label order.
pub fn encode_labels<T: Ord + ToString>(labels: &[T]) -> (Vec<usize>, Vec<String>) {
    let distinct: BTreeMap<&T, usize> = labels.iter().map(|l| (l, 0)).collect();
    let index: BTreeMap<&T, usize> = distinct.keys().enumerate().map(|(i, l)| (*l, i)).collect();
    let classes = index.keys().map(|l| l.to_string()).collect();
    (labels.iter().map(|l| index[l]).collect(), classes)
}

/// A feature matrix with its column names and target.
#[derive(Debug, Clone)]
pub struct TrainingData {
    pub feature_names: Vec<String>,
    pub x: Array2<f64>,
    pub target: Target,
}

impl TrainingData {
    /// Checks names against columns, target length, finiteness and label range.
    pub fn new(feature_names: Vec<String>, x: Array2<f64>, target: Target) -> Result<Self, ModelError> {
        if feature_names.len() != x.ncols() {
            return Err(ModelError::BadData(format!("{} feature names for {} columns", feature_names.len(), x.ncols())));
        }
        if x.nrows() == 0 {
            return Err(ModelError::BadData("no rows".into()));
        }
        if let Some(((row, col), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::BadData(format!("feature `{}` row {row} is {v}", feature_names[col])));
        }
        match &target {
            Target::None => {}
            Target::Values(y) => {
                if y.len() != x.nrows() {
                    return Err(ModelError::BadData(format!("target has {} rows, features {}", y.len(), x.nrows())));
                }
                if let Some(row) = y.iter().position(|v| !v.is_finite()) {
                    return Err(ModelError::BadData(format!("target row {row} is not finite")));
                }
            }
            Target::Classes { labels, classes } => {
                if labels.len() != x.nrows() {
                    return Err(ModelError::BadData(format!("labels have {} rows, features {}", labels.len(), x.nrows())));
                }
                if let Some(row) = labels.iter().position(|&l| l >= classes.len()) {
                    return Err(ModelError::BadData(format!("label at row {row} is not one of the {} classes", classes.len())));
                }
            }
        }
        Ok(Self { feature_names, x, target })
    }

    /// The rows `rows` (e.g. one fold's training indices).
    pub fn select(&self, rows: &[usize]) -> Self {
        let target = match &self.target {
            Target::None => Target::None,
            Target::Values(y) => Target::Values(rows.iter().map(|&i| y[i]).collect()),
            Target::Classes { labels, classes } => {
                Target::Classes { labels: rows.iter().map(|&i| labels[i]).collect(), classes: classes.clone() }
            }
        };
        Self { feature_names: self.feature_names.clone(), x: self.x.select(Axis(0), rows), target }
    }
}

/// Per-feature affine map to zero mean and unit (population) variance, fitted on training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    /// Standard deviation, replaced by 1 for constant features (as scikit-learn's StandardScaler).
    pub scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(x: ArrayView2<f64>) -> Self {
        let n = x.nrows() as f64;
        let mean: Vec<f64> = x.axis_iter(Axis(1)).map(|c| c.sum() / n).collect();
        let scale = x
            .axis_iter(Axis(1))
            .zip(&mean)
            .map(|(c, m)| {
                let sd = (c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
                if sd > 10.0 * f64::EPSILON * m.abs().max(1.0) { sd } else { 1.0 }
            })
            .collect();
        Self { mean, scale }
    }

    /// One mean and one scale per trace channel, pooled over all its samples (every column of the
    /// channel gets the same pair): standardizing each time point on its own would erase the
    /// shape a sequence model looks for (an event at sample 40 would be scaled differently from the
    /// same event at sample 41).
    pub fn fit_pooled(x: ArrayView2<f64>, layout: &nn::SequenceLayout) -> Self {
        let (mut mean, mut scale) = (Vec::new(), Vec::new());
        for c in 0..layout.channels.len() {
            let block = x.slice(ndarray::s![.., c * layout.length..(c + 1) * layout.length]);
            let m = block.mean().unwrap_or(0.0);
            let sd = block.iter().map(|v| (v - m).powi(2)).sum::<f64>() / block.len().max(1) as f64;
            let sd = sd.sqrt();
            let s = if sd > 10.0 * f64::EPSILON * m.abs().max(1.0) { sd } else { 1.0 };
            mean.extend(std::iter::repeat_n(m, layout.length));
            scale.extend(std::iter::repeat_n(s, layout.length));
        }
        Self { mean, scale }
    }

    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}
