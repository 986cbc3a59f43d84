//! What a pipeline names: the model and its hyperparameters ([`ModelSpec`], a serde enum tagged
//! by `model`, unknown fields rejected, with the documented ranges checked by
//! [`ModelSpec::validate`]), the task it serves ([`Task`]) and the options around it
//! ([`FitOptions`]).

use serde::{Deserialize, Serialize};

use crate::train::error::ModelError;
use crate::train::nn::{self, Cnn1dSpec, MlpSpec};

fn one() -> f64 {
    1.0
}
fn default_max_iterations() -> u64 {
    1000
}

/// Kernel of a support vector machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SvmKernel {
    Linear,
    /// Gaussian kernel exp(−gamma·‖x − y‖²).
    Rbf,
}

/// Which model to fit and its hyperparameters. Features are standardized (training rows only)
/// before every model unless [`FitOptions::standardize`] is false, so distances and penalties are
/// in units of training standard deviations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Ordinary least squares regression (linfa-linear).
    Linear {},
    /// Ridge regression (smartcore): minimizes ‖y − Xw − b‖² + alpha·‖w‖². `alpha` ≥ 0, default 1.
    Ridge {
        #[serde(default = "one")]
        alpha: f64,
    },
    /// Lasso regression (smartcore): minimizes ‖y − Xw − b‖²/(2n) + alpha·‖w‖₁. `alpha` > 0, default 1.
    Lasso {
        #[serde(default = "one")]
        alpha: f64,
        /// Coordinate-descent iterations, ≥ 1, default 1000.
        #[serde(default = "default_max_iterations")]
        max_iterations: u64,
    },
    /// Logistic regression (linfa-logistic), binary or multinomial (softmax). Minimizes the summed
    /// log-loss + alpha/2·‖W‖², so `alpha` = 1/C of scikit-learn. `alpha` ≥ 0, default 1.
    Logistic {
        #[serde(default = "one")]
        alpha: f64,
        /// L-BFGS iterations, ≥ 1, default 1000.
        #[serde(default = "default_max_iterations")]
        max_iterations: u64,
    },
    /// Poisson regression for non-negative counts: a GLM with log link, mean = exp(Xw + b), fitted by
    /// our own IRLS (Newton) on half the mean deviance + alpha/2·‖w‖², intercept unpenalized (the
    /// objective of scikit-learn's `PoissonRegressor`). linfa-linear's Tweedie regressor is not
    /// used: with power 1 it did not return on our test data. `alpha` ≥ 0, default 1.
    Poisson {
        #[serde(default = "one")]
        alpha: f64,
        /// Solver iterations, ≥ 1, default 1000.
        #[serde(default = "default_max_iterations")]
        max_iterations: u64,
    },
    /// CART decision tree classifier (linfa-trees, Gini).
    DecisionTree {
        /// Maximum depth, ≥ 1; absent = unlimited.
        #[serde(default)]
        max_depth: Option<usize>,
        /// Minimum (weighted) samples in a node to split it, ≥ 2, default 2.
        #[serde(default = "two")]
        min_samples_split: usize,
    },
    /// Random forest classifier (smartcore, Gini trees on bootstrap samples).
    RandomForest {
        /// Number of trees, 1–65535, default 100.
        #[serde(default = "hundred")]
        n_trees: u16,
        /// Maximum depth per tree; absent = unlimited.
        #[serde(default)]
        max_depth: Option<u16>,
        /// Features tried per split, ≥ 1; absent = √(n_features).
        #[serde(default)]
        max_features: Option<usize>,
        #[serde(default = "two")]
        min_samples_split: usize,
    },
    /// Random forest regressor (smartcore, variance-reduction trees on bootstrap samples); the
    /// prediction is the mean of the trees.
    RandomForestRegressor {
        /// Number of trees, ≥ 1, default 100.
        #[serde(default = "hundred_usize")]
        n_trees: usize,
        /// Maximum depth per tree; absent = unlimited.
        #[serde(default)]
        max_depth: Option<u16>,
        /// Features tried per split, ≥ 1; absent = all (scikit-learn's regressor default).
        #[serde(default)]
        max_features: Option<usize>,
        #[serde(default = "two")]
        min_samples_split: usize,
        /// Minimum rows per leaf, ≥ 1, default 1.
        #[serde(default = "one_usize")]
        min_samples_leaf: usize,
    },
    /// Gradient-boosted regression trees, least-squares loss (Friedman 2001, "Greedy function
    /// approximation: a gradient boosting machine", algorithm 2 "LS_Boost", with stochastic row
    /// subsampling of Friedman 2002): F_0 = mean(y), then each stage fits a smartcore regression tree
    /// to the residuals y − F_{m−1} on a seeded subsample and adds `learning_rate` times it.
    GradientBoosting {
        /// Boosting stages, ≥ 1, default 200.
        #[serde(default = "two_hundred")]
        n_estimators: usize,
        /// Shrinkage ν in (0, 1], default 0.1.
        #[serde(default = "tenth")]
        learning_rate: f64,
        /// Depth of each tree, ≥ 1, default 3.
        #[serde(default = "three_u16")]
        max_depth: u16,
        /// Minimum rows per leaf, ≥ 1, default 1.
        #[serde(default = "one_usize")]
        min_samples_leaf: usize,
        /// Fraction of rows drawn (without replacement) for each tree, (0, 1], default 1.
        #[serde(default = "one")]
        subsample: f64,
    },
    /// k-nearest-neighbour regressor (smartcore, Euclidean, mean of the neighbours).
    KnnRegressor {
        /// Neighbours, ≥ 1, default 5.
        #[serde(default = "five")]
        k: usize,
    },
    /// Support vector classifier (linfa-svm, SMO). More than two classes: one-vs-one, K(K−1)/2
    /// machines and a majority vote with libsvm's tie rule (as scikit-learn's `SVC`).
    Svm {
        /// Misclassification cost C > 0, default 1.
        #[serde(default = "one")]
        c: f64,
        #[serde(default = "rbf")]
        kernel: SvmKernel,
        /// RBF width in 1/(feature units)²; absent = 1/n_features (scikit-learn's "scale" on
        /// standardized features).
        #[serde(default)]
        gamma: Option<f64>,
    },
    /// k-nearest-neighbour classifier (smartcore, Euclidean, uniform vote).
    Knn {
        /// Neighbours, ≥ 1, default 5.
        #[serde(default = "five")]
        k: usize,
    },
    /// Gaussian naive Bayes classifier (smartcore; linfa-bayes is not in the dependency set).
    GaussianNb {},
    /// k-means clustering (linfa-clustering, k-means++ init).
    KMeans {
        /// Number of clusters, ≥ 1.
        n_clusters: usize,
        /// Restarts, the lowest inertia wins, ≥ 1, default 10.
        #[serde(default = "ten")]
        n_runs: usize,
        #[serde(default = "three_hundred")]
        max_iterations: u64,
        /// Convergence tolerance on centroid movement, > 0, default 1e-4.
        #[serde(default = "tol_kmeans")]
        tolerance: f64,
    },
    /// Gaussian mixture with full covariances (linfa-clustering, EM).
    Gmm {
        /// Number of components, ≥ 1.
        n_components: usize,
        #[serde(default = "one_u64")]
        n_runs: u64,
        #[serde(default = "hundred_u64")]
        max_iterations: u64,
        /// Lower-bound gain that stops EM, > 0, default 1e-3.
        #[serde(default = "tol_gmm")]
        tolerance: f64,
        /// Added to covariance diagonals (in squared standardized units), ≥ 0, default 1e-6.
        #[serde(default = "reg_gmm")]
        reg_covariance: f64,
    },
    /// DBSCAN density clustering (linfa-clustering). New rows are assigned the cluster of the
    /// nearest core point within `tolerance`, else noise.
    Dbscan {
        /// Neighbours (including the point) that make a core point, ≥ 2, default 5.
        #[serde(default = "five")]
        min_points: usize,
        /// Neighbourhood radius in standardized units, > 0, default 0.5.
        #[serde(default = "half")]
        tolerance: f64,
    },
    /// Principal component analysis as a transform (linfa-reduction).
    Pca {
        /// Output dimensions, 1..=n_features.
        n_components: usize,
    },
    /// Multilayer perceptron (burn, feature `dl-burn`) for regression or classification; see
    /// [`super::nn`].
    Mlp(MlpSpec),
    /// 1-D convolutional network on trace (list) columns (burn, feature `dl-burn`) for regression
    /// or classification; see [`super::nn`].
    Cnn1d(Cnn1dSpec),
}

fn two() -> usize {
    2
}
fn one_usize() -> usize {
    1
}
fn hundred_usize() -> usize {
    100
}
fn two_hundred() -> usize {
    200
}
fn tenth() -> f64 {
    0.1
}
fn three_u16() -> u16 {
    3
}
fn five() -> usize {
    5
}
fn ten() -> usize {
    10
}
fn hundred() -> u16 {
    100
}
fn three_hundred() -> u64 {
    300
}
fn one_u64() -> u64 {
    1
}
fn hundred_u64() -> u64 {
    100
}
fn tol_kmeans() -> f64 {
    1e-4
}
fn tol_gmm() -> f64 {
    1e-3
}
fn reg_gmm() -> f64 {
    1e-6
}
fn half() -> f64 {
    0.5
}
fn rbf() -> SvmKernel {
    SvmKernel::Rbf
}

/// What a model learns and therefore which target it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Regression,
    Classification,
    Clustering,
    Transform,
}

impl ModelSpec {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Linear {} => "linear",
            Self::Ridge { .. } => "ridge",
            Self::Lasso { .. } => "lasso",
            Self::Logistic { .. } => "logistic",
            Self::Poisson { .. } => "poisson",
            Self::DecisionTree { .. } => "decision_tree",
            Self::RandomForest { .. } => "random_forest",
            Self::RandomForestRegressor { .. } => "random_forest_regressor",
            Self::GradientBoosting { .. } => "gradient_boosting",
            Self::KnnRegressor { .. } => "knn_regressor",
            Self::Svm { .. } => "svm",
            Self::Knn { .. } => "knn",
            Self::GaussianNb {} => "gaussian_nb",
            Self::KMeans { .. } => "k_means",
            Self::Gmm { .. } => "gmm",
            Self::Dbscan { .. } => "dbscan",
            Self::Pca { .. } => "pca",
            Self::Mlp(_) => "mlp",
            Self::Cnn1d(_) => "cnn1d",
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Self::Linear {}
            | Self::Ridge { .. }
            | Self::Lasso { .. }
            | Self::Poisson { .. }
            | Self::RandomForestRegressor { .. }
            | Self::GradientBoosting { .. }
            | Self::KnnRegressor { .. } => Task::Regression,
            Self::Logistic { .. }
            | Self::DecisionTree { .. }
            | Self::RandomForest { .. }
            | Self::Svm { .. }
            | Self::Knn { .. }
            | Self::GaussianNb {} => Task::Classification,
            Self::KMeans { .. } | Self::Gmm { .. } | Self::Dbscan { .. } => Task::Clustering,
            Self::Pca { .. } => Task::Transform,
            // Neural networks serve both supervised tasks; this is the one they report when no
            // target decides it (a fitted network knows: see [`FittedModel::task`]).
            Self::Mlp(_) | Self::Cnn1d(_) => Task::Regression,
        }
    }

    /// Whether the model can be trained for `task` (neural networks: regression and classification).
    pub fn serves(&self, task: Task) -> bool {
        match self {
            Self::Mlp(_) | Self::Cnn1d(_) => matches!(task, Task::Regression | Task::Classification),
            _ => self.task() == task,
        }
    }

    /// Checks the ranges documented on each field.
    pub fn validate(&self, n_features: usize) -> Result<(), ModelError> {
        let model = self.name();
        let bad = |field: &'static str, reason: String| Err(ModelError::InvalidParameter { model, field, reason });
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        match self {
            Self::Mlp(s) => return nn::validate(model, &s.training(), &s.hidden),
            Self::Cnn1d(s) => return nn::validate_cnn(s),
            _ => {}
        }
        match *self {
            Self::Ridge { alpha } | Self::Logistic { alpha, .. } | Self::Poisson { alpha, .. } if !finite_nonneg(alpha) => {
                bad("alpha", format!("must be finite and >= 0, got {alpha}"))
            }
            Self::Lasso { alpha, .. } if !(alpha.is_finite() && alpha > 0.0) => bad("alpha", format!("must be > 0, got {alpha}")),
            Self::Lasso { max_iterations: 0, .. } | Self::Logistic { max_iterations: 0, .. } | Self::Poisson { max_iterations: 0, .. } => {
                bad("max_iterations", "must be >= 1".into())
            }
            Self::DecisionTree { max_depth: Some(0), .. } => bad("max_depth", "must be >= 1".into()),
            Self::DecisionTree { min_samples_split, .. } | Self::RandomForest { min_samples_split, .. } if min_samples_split < 2 => {
                bad("min_samples_split", format!("must be >= 2, got {min_samples_split}"))
            }
            Self::RandomForest { n_trees: 0, .. } | Self::RandomForestRegressor { n_trees: 0, .. } => bad("n_trees", "must be >= 1".into()),
            Self::RandomForestRegressor { min_samples_split, .. } if min_samples_split < 2 => {
                bad("min_samples_split", format!("must be >= 2, got {min_samples_split}"))
            }
            Self::RandomForestRegressor { max_depth: Some(0), .. } => bad("max_depth", "must be >= 1".into()),
            Self::RandomForestRegressor { max_features: Some(m), .. } if m == 0 || m > n_features => {
                bad("max_features", format!("must be in 1..={n_features}, got {m}"))
            }
            Self::RandomForestRegressor { min_samples_leaf: 0, .. } | Self::GradientBoosting { min_samples_leaf: 0, .. } => {
                bad("min_samples_leaf", "must be >= 1".into())
            }
            Self::GradientBoosting { n_estimators: 0, .. } => bad("n_estimators", "must be >= 1".into()),
            Self::GradientBoosting { max_depth: 0, .. } => bad("max_depth", "must be >= 1".into()),
            Self::GradientBoosting { learning_rate, .. } if !(learning_rate > 0.0 && learning_rate <= 1.0) => {
                bad("learning_rate", format!("must be in (0, 1], got {learning_rate}"))
            }
            Self::GradientBoosting { subsample, .. } if !(subsample > 0.0 && subsample <= 1.0) => {
                bad("subsample", format!("must be in (0, 1], got {subsample}"))
            }
            Self::KnnRegressor { k: 0 } => bad("k", "must be >= 1".into()),
            Self::RandomForest { max_depth: Some(0), .. } => bad("max_depth", "must be >= 1".into()),
            Self::RandomForest { max_features: Some(m), .. } if m == 0 || m > n_features => {
                bad("max_features", format!("must be in 1..={n_features}, got {m}"))
            }
            Self::Svm { c, .. } if !(c.is_finite() && c > 0.0) => bad("c", format!("must be > 0, got {c}")),
            Self::Svm { gamma: Some(g), .. } if !(g.is_finite() && g > 0.0) => bad("gamma", format!("must be > 0, got {g}")),
            Self::Knn { k: 0 } => bad("k", "must be >= 1".into()),
            Self::KMeans { n_clusters: 0, .. } => bad("n_clusters", "must be >= 1".into()),
            Self::KMeans { n_runs: 0, .. } => bad("n_runs", "must be >= 1".into()),
            Self::KMeans { tolerance, .. } | Self::Gmm { tolerance, .. } | Self::Dbscan { tolerance, .. }
                if !(tolerance.is_finite() && tolerance > 0.0) =>
            {
                bad("tolerance", format!("must be > 0, got {tolerance}"))
            }
            Self::Gmm { n_components: 0, .. } => bad("n_components", "must be >= 1".into()),
            Self::Gmm { n_runs: 0, .. } => bad("n_runs", "must be >= 1".into()),
            Self::Gmm { reg_covariance, .. } if !finite_nonneg(reg_covariance) => {
                bad("reg_covariance", format!("must be >= 0, got {reg_covariance}"))
            }
            Self::Dbscan { min_points, .. } if min_points < 2 => bad("min_points", format!("must be >= 2, got {min_points}")),
            Self::Pca { n_components } if n_components == 0 || n_components > n_features => {
                bad("n_components", format!("must be in 1..={n_features}, got {n_components}"))
            }
            _ => Ok(()),
        }
    }
}

/// Options around the model proper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitOptions {
    /// Standardize each feature to zero mean and unit variance using the training rows only.
    #[serde(default = "yes")]
    pub standardize: bool,
    /// Compensate class imbalance: "balanced" class weights n/(K·n_k) where the backend accepts
    /// them (decision tree, SVM), seeded random oversampling of minority classes otherwise.
    #[serde(default)]
    pub balance_classes: bool,
    /// Seed for every random choice (forest bootstraps, k-means init, oversampling, CV shuffles).
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { standardize: true, balance_classes: false, seed: 0 }
    }
}
