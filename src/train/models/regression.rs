//! The regression fitters: least squares, ridge, lasso (linfa-linear, smartcore), the Poisson GLM
//! by our own IRLS, the random forest and k-NN regressors (smartcore) and least-squares gradient
//! boosting on smartcore trees.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2, Axis};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use smartcore::ensemble::random_forest_regressor::{RandomForestRegressor, RandomForestRegressorParameters};
use smartcore::linear::lasso::{Lasso, LassoParameters};
use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters};
use smartcore::neighbors::knn_regressor::{KNNRegressor, KNNRegressorParameters};
use smartcore::tree::decision_tree_regressor::{DecisionTreeRegressor, DecisionTreeRegressorParameters};

use super::ModelSpec;
use super::fitted::{Backend, dense};
use crate::train::error::{ModelError, backend};

pub(super) fn fit_regression(spec: &ModelSpec, x: Array2<f64>, y: &[f64], seed: u64) -> Result<Backend, ModelError> {
    let model = spec.name();
    let err = backend(model);
    let y_arr = Array1::from(y.to_vec());
    Ok(match *spec {
        ModelSpec::Linear {} => Backend::Linear(LinearRegression::new().fit(&Dataset::new(x, y_arr)).map_err(|e| err(&e))?),
        ModelSpec::Ridge { alpha } => {
            let params = RidgeRegressionParameters::default().with_alpha(alpha).with_normalize(false);
            let x_mean = x.mean_axis(Axis(0)).ok_or_else(|| ModelError::BadData("no training rows".into()))?;
            let y_mean = y.iter().sum::<f64>() / y.len() as f64;
            let centred_y: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
            let model = RidgeRegression::fit(&dense(&(&x - &x_mean))?, &centred_y, params).map_err(|e| err(&e))?;
            Backend::Ridge { model, x_mean: x_mean.to_vec(), y_mean }
        }
        ModelSpec::Lasso { alpha, max_iterations } => {
            let params = LassoParameters::default().with_alpha(alpha).with_max_iter(max_iterations as usize).with_normalize(false);
            Backend::Lasso(Lasso::fit(&dense(&x)?, &y.to_vec(), params).map_err(|e| err(&e))?)
        }
        ModelSpec::Poisson { alpha, max_iterations } => {
            if let Some(row) = y.iter().position(|&v| v < 0.0) {
                return Err(ModelError::BadData(format!("Poisson target must be >= 0, row {row} is {}", y[row])));
            }
            let (coefficients, intercept) = fit_poisson_irls(&x, y, alpha, max_iterations)?;
            Backend::Poisson { coefficients, intercept }
        }
        ModelSpec::RandomForestRegressor { n_trees, max_depth, max_features, min_samples_split, min_samples_leaf } => {
            let mut p = RandomForestRegressorParameters::default()
                .with_n_trees(n_trees)
                .with_min_samples_split(min_samples_split)
                .with_min_samples_leaf(min_samples_leaf)
                .with_m(max_features.unwrap_or(x.ncols()))
                .with_seed(seed);
            if let Some(d) = max_depth {
                p = p.with_max_depth(d);
            }
            Backend::RandomForestRegressor(RandomForestRegressor::fit(&dense(&x)?, &y.to_vec(), p).map_err(|e| err(&e))?)
        }
        ModelSpec::GradientBoosting { n_estimators, learning_rate, max_depth, min_samples_leaf, subsample } => {
            fit_gradient_boosting(&x, y, n_estimators, learning_rate, max_depth, min_samples_leaf, subsample, seed)?
        }
        ModelSpec::KnnRegressor { k } => {
            if k > x.nrows() {
                return Err(ModelError::BadData(format!("k = {k} neighbours but only {} training rows", x.nrows())));
            }
            let p = KNNRegressorParameters::default().with_k(k);
            Backend::KnnRegressor(KNNRegressor::fit(&dense(&x)?, &y.to_vec(), p).map_err(|e| err(&e))?)
        }
        _ => unreachable!("fit_regression is only called for regression specs"),
    })
}

/// Least-squares gradient boosting (see [`ModelSpec::GradientBoosting`]). Each stage's tree is
/// fitted on a seeded subsample (drawn without replacement) of the current residuals; all rows'
/// predictions are then updated, so the next residuals are exact.
#[allow(clippy::too_many_arguments)] // a plain kernel: every hyperparameter is explicit
fn fit_gradient_boosting(
    x: &Array2<f64>,
    y: &[f64],
    n_estimators: usize,
    learning_rate: f64,
    max_depth: u16,
    min_samples_leaf: usize,
    subsample: f64,
    seed: u64,
) -> Result<Backend, ModelError> {
    let err = backend("gradient_boosting");
    let n = y.len();
    let initial = y.iter().sum::<f64>() / n as f64;
    let mut f = vec![initial; n];
    let all = dense(x)?;
    let n_sub = ((subsample * n as f64).round() as usize).clamp(1, n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let params = DecisionTreeRegressorParameters::default().with_max_depth(max_depth).with_min_samples_leaf(min_samples_leaf);
    let mut trees = Vec::with_capacity(n_estimators);
    for _ in 0..n_estimators {
        let residual: Vec<f64> = y.iter().zip(&f).map(|(a, b)| a - b).collect();
        let tree = if n_sub == n {
            DecisionTreeRegressor::fit(&all, &residual, params.clone()).map_err(|e| err(&e))?
        } else {
            // Partial Fisher-Yates: the first n_sub entries are a uniform sample without replacement.
            for i in 0..n_sub {
                let j = rng.random_range(i..n);
                order.swap(i, j);
            }
            let rows = &order[..n_sub];
            let xs = dense(&x.select(Axis(0), rows))?;
            let rs: Vec<f64> = rows.iter().map(|&i| residual[i]).collect();
            DecisionTreeRegressor::fit(&xs, &rs, params.clone()).map_err(|e| err(&e))?
        };
        let step = tree.predict(&all).map_err(|e| err(&e))?;
        for (fi, si) in f.iter_mut().zip(&step) {
            *fi += learning_rate * si;
        }
        trees.push(tree);
    }
    Ok(Backend::GradientBoosting { initial, learning_rate, trees })
}

/// Penalized Poisson regression by iteratively reweighted least squares (Newton's method on
/// L(w, b) = (1/n) Σ [exp(η_i) − y_i η_i] + alpha/2 ‖w‖², η = Xw + b; McCullagh & Nelder,
/// *Generalized Linear Models*, 2nd ed., section 2.5). Each step solves
/// (XᵀWX/n + alpha·I') Δ = −∇L with W = diag(μ), by Cholesky; steps are halved until L decreases.
fn fit_poisson_irls(x: &Array2<f64>, y: &[f64], alpha: f64, max_iterations: u64) -> Result<(Vec<f64>, f64), ModelError> {
    let (n, p) = (x.nrows(), x.ncols());
    let m = p + 1; // last parameter = intercept
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let mut beta = vec![0.0; m];
    beta[p] = mean_y.max(1e-10).ln();
    let eta = |beta: &[f64], i: usize| beta[p] + x.row(i).iter().zip(beta).map(|(a, b)| a * b).sum::<f64>();
    let loss = |beta: &[f64]| {
        (0..n).map(|i| { let e = eta(beta, i); e.exp() - y[i] * e }).sum::<f64>() / n as f64
            + 0.5 * alpha * beta[..p].iter().map(|b| b * b).sum::<f64>()
    };
    let mut current = loss(&beta);
    let mut grad = vec![0.0; m];
    let mut hess = vec![0.0; m * m];
    for _ in 0..max_iterations {
        grad.iter_mut().for_each(|g| *g = 0.0);
        hess.iter_mut().for_each(|h| *h = 0.0);
        for i in 0..n {
            let mu = eta(&beta, i).exp();
            let row = x.row(i);
            let feature = |j: usize| if j == p { 1.0 } else { row[j] };
            for j in 0..m {
                grad[j] += (mu - y[i]) * feature(j) / n as f64;
                for k in 0..=j {
                    hess[j * m + k] += mu * feature(j) * feature(k) / n as f64;
                }
            }
        }
        for j in 0..p {
            grad[j] += alpha * beta[j];
            hess[j * m + j] += alpha;
        }
        // Cholesky of the lower triangle, then forward/back substitution for −grad.
        for j in 0..m {
            for k in 0..=j {
                let mut s = hess[j * m + k];
                for l in 0..k {
                    s -= hess[j * m + l] * hess[k * m + l];
                }
                if j == k {
                    if s <= 0.0 {
                        return Err(ModelError::Backend { model: "poisson", message: "Hessian is singular (collinear features with alpha = 0?)".into() });
                    }
                    hess[j * m + j] = s.sqrt();
                } else {
                    hess[j * m + k] = s / hess[k * m + k];
                }
            }
        }
        let mut step: Vec<f64> = grad.iter().map(|g| -g).collect();
        for j in 0..m {
            step[j] = (step[j] - (0..j).map(|l| hess[j * m + l] * step[l]).sum::<f64>()) / hess[j * m + j];
        }
        for j in (0..m).rev() {
            step[j] = (step[j] - (j + 1..m).map(|l| hess[l * m + j] * step[l]).sum::<f64>()) / hess[j * m + j];
        }
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-10 {
            let trial: Vec<f64> = beta.iter().zip(&step).map(|(b, s)| b + t * s).collect();
            let l = loss(&trial);
            if l.is_finite() && l <= current {
                beta = trial;
                let gain = current - l;
                current = l;
                accepted = gain > 1e-12 * current.abs().max(1.0);
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    Ok((beta[..p].to_vec(), beta[p]))
}
