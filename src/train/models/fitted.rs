//! A fitted model ([`FittedModel`]: the spec, the standardization, the feature names, the label
//! classes and the backend model) and [`fit`], which standardizes the training rows and hands
//! them to the fitter of the spec's family ([`super::regression`], [`super::classification`],
//! [`super::unsupervised`], or the network engine [`crate::train::nn`]); [`FittedModel::predict`]
//! applies any of them.

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use linfa_linear::FittedLinearRegression;
use linfa_logistic::{FittedLogisticRegression, MultiFittedLogisticRegression};
use linfa_reduction::Pca;
use linfa_svm::Svm;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::RandomForestClassifier;
use smartcore::ensemble::random_forest_regressor::RandomForestRegressor;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::lasso::Lasso;
use smartcore::linear::ridge_regression::RidgeRegression;
use smartcore::metrics::distance::euclidian::Euclidian;
use smartcore::naive_bayes::gaussian::GaussianNB;
use smartcore::neighbors::knn_classifier::KNNClassifier;
use smartcore::neighbors::knn_regressor::KNNRegressor;
use smartcore::tree::decision_tree_regressor::DecisionTreeRegressor;

use super::classification::{balanced_weights, fit_classifier, ovo_vote};
use super::persist::compare_schema;
use super::regression::fit_regression;
use super::unsupervised::fit_unsupervised;
use super::{FitOptions, ModelSpec, Standardizer, Target, Task, TrainingData};
use crate::train::error::{ModelError, backend};
use crate::train::nn::{self, Architecture, Network, NnPrediction, NnTarget};

type SmartForest = RandomForestClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>>;
type SmartForestRegressor = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;
type SmartTreeRegressor = DecisionTreeRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;
type SmartKnnRegressor = KNNRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>, Euclidian<f64>>;
type SmartKnn = KNNClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>, Euclidian<f64>>;
type SmartNb = GaussianNB<f64, u32, DenseMatrix<f64>, Vec<u32>>;
type SmartRidge = RidgeRegression<f64, f64, DenseMatrix<f64>, Vec<f64>>;
type SmartLasso = Lasso<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// The fitted backend model.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub(super) enum Backend {
    Linear(FittedLinearRegression<f64>),
    /// smartcore's ridge without its own scaling fits no intercept (it solves (XᵀX + αI)w = Xᵀy
    /// on the raw columns), so the rows are centred first: prediction = ȳ + (x − x̄)·w, which is
    /// scikit-learn's `Ridge` with its unpenalized intercept.
    Ridge { model: SmartRidge, x_mean: Vec<f64>, y_mean: f64 },
    Lasso(SmartLasso),
    LogisticBinary(FittedLogisticRegression<f64, usize>),
    LogisticMulti(MultiFittedLogisticRegression<f64, usize>),
    /// Poisson GLM coefficients (log link) on standardized features.
    Poisson { coefficients: Vec<f64>, intercept: f64 },
    DecisionTree(linfa_trees::DecisionTree<f64, usize>),
    RandomForest(SmartForest),
    RandomForestRegressor(SmartForestRegressor),
    /// F(x) = initial + learning_rate · Σ tree_m(x).
    GradientBoosting { initial: f64, learning_rate: f64, trees: Vec<SmartTreeRegressor> },
    KnnRegressor(SmartKnnRegressor),
    /// Two classes: one Platt-scaled SVM for class 1. (Model files written before the switch to
    /// one-vs-one also hold one machine per class here, read as one-vs-rest.)
    Svm { machines: Vec<Svm<f64, Pr>> },
    /// More than two classes: one SVM per pair (i, j), i < j, trained on the rows of those two
    /// classes (class i positive), combined by libsvm's vote (see [`ovo_vote`]).
    SvmOneVsOne { pairs: Vec<(usize, usize)>, machines: Vec<Svm<f64, bool>> },
    Knn(SmartKnn),
    GaussianNb(SmartNb),
    /// Cluster centres in standardized units; a row belongs to the nearest one (what k-means predicts).
    KMeans { centroids: Array2<f64> },
    Gmm(GaussianMixtureModel<f64>),
    Dbscan { core_points: Array2<f64>, core_clusters: Vec<usize>, tolerance: f64 },
    Pca(Pca<f64>),
    /// A trained `mlp` or `cnn1d` (layer sizes and f32 weights).
    Network(Network),
}

/// What a fitted model outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Values(Vec<f64>),
    /// Class indices into [`FittedModel::classes`].
    Classes(Vec<usize>),
    /// Cluster index per row; `None` = noise (DBSCAN only).
    Clusters(Vec<Option<usize>>),
    Transformed(Array2<f64>),
}

/// A trained model with everything `predict` needs; serializes to JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct FittedModel {
    pub spec: ModelSpec,
    pub options: FitOptions,
    pub feature_names: Vec<String>,
    /// Label classes in index order (classification only).
    pub classes: Option<Vec<String>>,
    pub standardizer: Option<Standardizer>,
    pub(super) backend: Backend,
}

pub(super) fn dense(x: &Array2<f64>) -> Result<DenseMatrix<f64>, ModelError> {
    let values = x.as_standard_layout().iter().copied().collect();
    DenseMatrix::new(x.nrows(), x.ncols(), values, false).map_err(|e| ModelError::BadData(e.to_string()))
}

/// The network architecture of a neural spec (`None` for every other model).
fn architecture<'a>(spec: &'a ModelSpec, layout: &Option<nn::SequenceLayout>) -> Option<Architecture<'a>> {
    match spec {
        ModelSpec::Mlp(s) => Some(Architecture::Mlp(s)),
        ModelSpec::Cnn1d(s) => layout.clone().map(|l| Architecture::Cnn1d(s, l)),
        _ => None,
    }
}

/// Fits `spec` on all rows of `data` (pass a fold's training rows via [`TrainingData::select`]).
pub fn fit(spec: &ModelSpec, options: &FitOptions, data: &TrainingData) -> Result<FittedModel, ModelError> {
    spec.validate(data.x.ncols())?;
    let model = spec.name();
    let layout = match spec {
        ModelSpec::Cnn1d(_) => Some(nn::sequence_layout(&data.feature_names)?),
        _ => None,
    };
    let standardizer = options.standardize.then(|| match &layout {
        Some(l) => Standardizer::fit_pooled(data.x.view(), l),
        None => Standardizer::fit(data.x.view()),
    });
    let x = match &standardizer {
        Some(s) => s.transform(data.x.view()),
        None => data.x.clone(),
    };
    let mut classes = None;
    let task = match (spec, &data.target) {
        (ModelSpec::Mlp(_) | ModelSpec::Cnn1d(_), Target::Classes { .. }) => Task::Classification,
        (ModelSpec::Mlp(_) | ModelSpec::Cnn1d(_), Target::Values(_)) => Task::Regression,
        (ModelSpec::Mlp(_) | ModelSpec::Cnn1d(_), Target::None) => {
            return Err(ModelError::WrongTarget { model, needs: "a numeric target or a class label column" });
        }
        _ => spec.task(),
    };
    let arch = |spec| architecture(spec, &layout);
    let backend = match task {
        Task::Regression if arch(spec).is_some() => {
            let Target::Values(y) = &data.target else { unreachable!("task follows the target") };
            Backend::Network(nn::fit_network(arch(spec).expect("checked"), &x, NnTarget::Values(y), options.seed)?)
        }
        Task::Regression => {
            let Target::Values(y) = &data.target else {
                return Err(ModelError::WrongTarget { model, needs: "a numeric target column" });
            };
            fit_regression(spec, x, y, options.seed)?
        }
        Task::Classification => {
            let Target::Classes { labels, classes: names } = &data.target else {
                return Err(ModelError::WrongTarget { model, needs: "a class label column" });
            };
            let present = labels.iter().collect::<std::collections::BTreeSet<_>>().len();
            if present < 2 {
                return Err(ModelError::WrongTarget { model, needs: "at least two classes in the training rows" });
            }
            classes = Some(names.clone());
            match arch(spec) {
                Some(a) => {
                    let class_weights =
                        if options.balance_classes { balanced_weights(labels, names.len()) } else { vec![1.0; names.len()] };
                    let target = NnTarget::Classes { labels, n_classes: names.len(), class_weights: &class_weights };
                    Backend::Network(nn::fit_network(a, &x, target, options.seed)?)
                }
                None => fit_classifier(spec, options, x, labels, names.len())?,
            }
        }
        Task::Clustering | Task::Transform => fit_unsupervised(spec, options, x)?,
    };
    Ok(FittedModel {
        spec: spec.clone(),
        options: options.clone(),
        feature_names: data.feature_names.clone(),
        classes,
        standardizer,
        backend,
    })
}

impl FittedModel {
    /// Predicts for a table whose columns are `feature_names` (checked against the training schema).
    pub fn predict(&self, feature_names: &[String], x: ArrayView2<f64>) -> Result<Prediction, ModelError> {
        if let Some(diff) = compare_schema(&self.feature_names, self.classes.as_deref(), feature_names, None) {
            return Err(ModelError::Schema(diff));
        }
        if x.ncols() != feature_names.len() {
            return Err(ModelError::BadData(format!("{} feature names for {} columns", feature_names.len(), x.ncols())));
        }
        if let Some(((row, col), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::BadData(format!("feature `{}` row {row} is {v}", feature_names[col])));
        }
        let x = match &self.standardizer {
            Some(s) => s.transform(x),
            None => x.to_owned(),
        };
        let model = self.spec.name();
        let err = backend(model);
        let to_usize = |v: Vec<u32>| Prediction::Classes(v.into_iter().map(|c| c as usize).collect());
        Ok(match &self.backend {
            Backend::Linear(m) => Prediction::Values(m.predict(&x).to_vec()),
            Backend::Ridge { model: m, x_mean, y_mean } => {
                let centred = &x - &Array1::from(x_mean.clone());
                Prediction::Values(m.predict(&dense(&centred)?).map_err(|e| err(&e))?.into_iter().map(|v| v + y_mean).collect())
            }
            Backend::Lasso(m) => Prediction::Values(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::Poisson { coefficients, intercept } => Prediction::Values(
                x.rows().into_iter().map(|r| (intercept + r.iter().zip(coefficients).map(|(a, b)| a * b).sum::<f64>()).exp()).collect(),
            ),
            Backend::LogisticBinary(m) => Prediction::Classes(m.predict(&x).to_vec()),
            Backend::LogisticMulti(m) => Prediction::Classes(m.predict(&x).to_vec()),
            Backend::DecisionTree(m) => Prediction::Classes(m.predict(&x).to_vec()),
            Backend::RandomForestRegressor(m) => Prediction::Values(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::KnnRegressor(m) => Prediction::Values(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::GradientBoosting { initial, learning_rate, trees } => {
                let d = dense(&x)?;
                let mut out = vec![*initial; x.nrows()];
                for t in trees {
                    for (o, s) in out.iter_mut().zip(t.predict(&d).map_err(|e| err(&e))?) {
                        *o += learning_rate * s;
                    }
                }
                Prediction::Values(out)
            }
            Backend::RandomForest(m) => to_usize(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::Knn(m) => to_usize(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::GaussianNb(m) => to_usize(m.predict(&dense(&x)?).map_err(|e| err(&e))?),
            Backend::Svm { machines } => {
                let scores: Vec<Array1<Pr>> = machines.iter().map(|m| m.predict(&x)).collect();
                let classes = (0..x.nrows())
                    .map(|i| {
                        if scores.len() == 1 {
                            usize::from(*scores[0][i] > 0.5)
                        } else {
                            (0..scores.len()).max_by(|&a, &b| scores[a][i].partial_cmp(&scores[b][i]).unwrap_or(std::cmp::Ordering::Equal)).unwrap_or(0)
                        }
                    })
                    .collect();
                Prediction::Classes(classes)
            }
            Backend::SvmOneVsOne { pairs, machines } => {
                let n_classes = self.classes.as_ref().map_or(0, Vec::len);
                let classes = x
                    .rows()
                    .into_iter()
                    .map(|row| {
                        let decisions: Vec<f64> = machines.iter().map(|m| m.weighted_sum(&row) - m.rho).collect();
                        ovo_vote(pairs, &decisions, n_classes)
                    })
                    .collect();
                Prediction::Classes(classes)
            }
            Backend::KMeans { centroids } => Prediction::Clusters(
                x.rows()
                    .into_iter()
                    .map(|row| {
                        centroids
                            .rows()
                            .into_iter()
                            .map(|c| c.iter().zip(row.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f64>())
                            .enumerate()
                            .min_by(|a, b| a.1.total_cmp(&b.1))
                            .map(|(k, _)| k)
                    })
                    .collect(),
            ),
            Backend::Gmm(m) => Prediction::Clusters(m.predict(&x).iter().map(|&c| Some(c)).collect()),
            Backend::Dbscan { core_points, core_clusters, tolerance } => {
                let tol2 = tolerance * tolerance;
                let clusters = x
                    .rows()
                    .into_iter()
                    .map(|row| {
                        core_points
                            .rows()
                            .into_iter()
                            .zip(core_clusters)
                            .map(|(c, &k)| (c.iter().zip(row.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f64>(), k))
                            .filter(|(d2, _)| *d2 <= tol2)
                            .min_by(|a, b| a.0.total_cmp(&b.0))
                            .map(|(_, k)| k)
                    })
                    .collect();
                Prediction::Clusters(clusters)
            }
            Backend::Pca(m) => Prediction::Transformed(m.predict(&x)),
            Backend::Network(n) => match nn::predict_network(n, &x)? {
                NnPrediction::Values(v) => Prediction::Values(v),
                NnPrediction::Classes(c) => Prediction::Classes(c),
            },
        })
    }

    /// The task this model was fitted for (a neural network serves both supervised tasks; its
    /// label classes tell which one it learned).
    pub fn task(&self) -> Task {
        match (&self.spec, &self.classes) {
            (ModelSpec::Mlp(_) | ModelSpec::Cnn1d(_), Some(_)) => Task::Classification,
            (ModelSpec::Mlp(_) | ModelSpec::Cnn1d(_), None) => Task::Regression,
            _ => self.spec.task(),
        }
    }

    /// The trained network of an `mlp` / `cnn1d` model (epochs run, best epoch, weights).
    pub fn network(&self) -> Option<&Network> {
        match &self.backend {
            Backend::Network(n) => Some(n),
            _ => None,
        }
    }
}
