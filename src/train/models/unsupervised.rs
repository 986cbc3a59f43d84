//! The unsupervised fitters: k-means, Gaussian mixture and DBSCAN clustering and PCA
//! (linfa-clustering, linfa-reduction).

use linfa::DatasetBase;
use linfa::prelude::*;
use linfa_clustering::{Dbscan, GaussianMixtureModel, KMeans};
use linfa_reduction::Pca;
use ndarray::{Array2, Axis};
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng as SeedableRng06;

use super::fitted::Backend;
use super::{FitOptions, ModelSpec};
use crate::train::error::{ModelError, backend};

pub(super) fn fit_unsupervised(spec: &ModelSpec, options: &FitOptions, x: Array2<f64>) -> Result<Backend, ModelError> {
    let model = spec.name();
    let err = backend(model);
    let rng = Xoshiro256Plus::seed_from_u64(options.seed);
    Ok(match *spec {
        ModelSpec::KMeans { n_clusters, n_runs, max_iterations, tolerance } => {
            if n_clusters > x.nrows() {
                return Err(ModelError::BadData(format!("{} rows cannot form {n_clusters} clusters", x.nrows())));
            }
            let fitted = KMeans::params_with_rng(n_clusters, rng)
                .n_runs(n_runs)
                .max_n_iterations(max_iterations)
                .tolerance(tolerance)
                .fit(&DatasetBase::from(x))
                .map_err(|e| err(&e))?;
            Backend::KMeans { centroids: fitted.centroids().clone() }
        }
        ModelSpec::Gmm { n_components, n_runs, max_iterations, tolerance, reg_covariance } => {
            if n_components > x.nrows() {
                return Err(ModelError::BadData(format!("{} rows cannot fit {n_components} components", x.nrows())));
            }
            let fitted = GaussianMixtureModel::params_with_rng(n_components, rng)
                .n_runs(n_runs)
                .max_n_iterations(max_iterations)
                .tolerance(tolerance)
                .reg_covariance(reg_covariance)
                .fit(&DatasetBase::from(x))
                .map_err(|e| err(&e))?;
            Backend::Gmm(fitted)
        }
        ModelSpec::Dbscan { min_points, tolerance } => {
            let clusters = Dbscan::params(min_points).tolerance(tolerance).check().map_err(|e| err(&e))?.transform(&x);
            // Keep the core points (>= min_points neighbours within tolerance, itself included),
            // which define where a new row belongs.
            let tol2 = tolerance * tolerance;
            let mut core_rows = Vec::new();
            let mut core_clusters = Vec::new();
            for (i, c) in clusters.iter().enumerate() {
                let Some(c) = c else { continue };
                let row = x.row(i);
                let neighbours =
                    x.rows().into_iter().filter(|r| r.iter().zip(row.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f64>() <= tol2).count();
                if neighbours >= min_points {
                    core_rows.push(i);
                    core_clusters.push(*c);
                }
            }
            Backend::Dbscan { core_points: x.select(Axis(0), &core_rows), core_clusters, tolerance }
        }
        ModelSpec::Pca { n_components } => {
            Backend::Pca(Pca::params(n_components).fit(&DatasetBase::from(x)).map_err(|e| err(&e))?)
        }
        _ => unreachable!("fit_unsupervised is only called for clustering and transform specs"),
    })
}
