//! The classifiers: logistic regression, decision tree, SVM (linfa), random forest, k-NN and
//! Gaussian naive Bayes (smartcore), and class-imbalance handling (class weights where the
//! backend takes them, seeded oversampling otherwise).

use linfa::prelude::*;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use linfa_svm::Svm;
use linfa_trees::DecisionTree;
use ndarray::{Array1, Array2, Axis};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::naive_bayes::gaussian::{GaussianNB, GaussianNBParameters};
use smartcore::neighbors::knn_classifier::{KNNClassifier, KNNClassifierParameters};

use super::fitted::{Backend, dense};
use super::{FitOptions, ModelSpec, SvmKernel};
use crate::train::error::{ModelError, backend};

pub(super) fn fit_classifier(
    spec: &ModelSpec,
    options: &FitOptions,
    x: Array2<f64>,
    labels: &[usize],
    n_classes: usize,
) -> Result<Backend, ModelError> {
    let model = spec.name();
    let err = backend(model);
    // Backends without class weights get oversampled rows instead.
    let weighted = matches!(spec, ModelSpec::DecisionTree { .. } | ModelSpec::Svm { .. });
    let (x, labels) = if options.balance_classes && !weighted {
        oversample(&x, labels, n_classes, options.seed)
    } else {
        (x, labels.to_vec())
    };
    let weights = if options.balance_classes && weighted { balanced_weights(&labels, n_classes) } else { vec![1.0; n_classes] };
    let y_u32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    Ok(match *spec {
        ModelSpec::Logistic { alpha, max_iterations } => {
            let present = labels.iter().collect::<std::collections::BTreeSet<_>>().len();
            let ds = Dataset::new(x, Array1::from(labels));
            if present == 2 {
                let m = LogisticRegression::default().alpha(alpha).max_iterations(max_iterations);
                Backend::LogisticBinary(m.fit(&ds).map_err(|e| err(&e))?)
            } else {
                let m = MultiLogisticRegression::default().alpha(alpha).max_iterations(max_iterations);
                Backend::LogisticMulti(m.fit(&ds).map_err(|e| err(&e))?)
            }
        }
        ModelSpec::DecisionTree { max_depth, min_samples_split } => {
            let w: Array1<f32> = labels.iter().map(|&l| weights[l] as f32).collect();
            let ds = Dataset::new(x, Array1::from(labels)).with_weights(w);
            let params = DecisionTree::params().max_depth(max_depth).min_weight_split(min_samples_split as f32);
            Backend::DecisionTree(params.fit(&ds).map_err(|e| err(&e))?)
        }
        ModelSpec::RandomForest { n_trees, max_depth, max_features, min_samples_split } => {
            let mut p = RandomForestClassifierParameters::default()
                .with_n_trees(n_trees)
                .with_min_samples_split(min_samples_split)
                .with_seed(options.seed);
            if let Some(d) = max_depth {
                p = p.with_max_depth(d);
            }
            if let Some(m) = max_features {
                p = p.with_m(m);
            }
            Backend::RandomForest(RandomForestClassifier::fit(&dense(&x)?, &y_u32, p).map_err(|e| err(&e))?)
        }
        ModelSpec::Svm { c, kernel, gamma } if n_classes > 2 => {
            let gamma = gamma.unwrap_or(1.0 / x.ncols() as f64);
            let (mut pairs, mut machines) = (Vec::new(), Vec::new());
            for i in 0..n_classes {
                for j in i + 1..n_classes {
                    let rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == i || labels[r] == j).collect();
                    // A pair with a class absent from these training rows has nothing to separate.
                    if !rows.iter().any(|&r| labels[r] == i) || !rows.iter().any(|&r| labels[r] == j) {
                        continue;
                    }
                    let is_i: Array1<bool> = rows.iter().map(|&r| labels[r] == i).collect();
                    let ds = Dataset::new(x.select(Axis(0), &rows), is_i);
                    // libsvm scales C per class by the (global) class weight, as scikit-learn passes it.
                    let params = Svm::<f64, bool>::params().pos_neg_weights(c * weights[i], c * weights[j]);
                    let params = match kernel {
                        SvmKernel::Linear => params.linear_kernel(),
                        SvmKernel::Rbf => params.gaussian_kernel(1.0 / gamma),
                    };
                    machines.push(params.fit(&ds).map_err(|e| err(&e))?);
                    pairs.push((i, j));
                }
            }
            Backend::SvmOneVsOne { pairs, machines }
        }
        ModelSpec::Svm { c, kernel, gamma } => {
            let gamma = gamma.unwrap_or(1.0 / x.ncols() as f64);
            // Two classes: one machine for "class 1"; more: one machine per class.
            let positives: Vec<usize> = if n_classes == 2 { vec![1] } else { (0..n_classes).collect() };
            let mut machines = Vec::with_capacity(positives.len());
            for &k in &positives {
                let is_k: Array1<bool> = labels.iter().map(|&l| l == k).collect();
                let binary: Vec<usize> = labels.iter().map(|&l| usize::from(l == k)).collect();
                let w = if options.balance_classes { balanced_weights(&binary, 2) } else { vec![1.0, 1.0] };
                let (w_neg, w_pos) = (w[0], w[1]);
                let ds = Dataset::new(x.clone(), is_k);
                let params = Svm::<f64, Pr>::params().pos_neg_weights(c * w_pos, c * w_neg);
                let params = match kernel {
                    SvmKernel::Linear => params.linear_kernel(),
                    SvmKernel::Rbf => params.gaussian_kernel(1.0 / gamma),
                };
                machines.push(params.fit(&ds).map_err(|e| err(&e))?);
            }
            Backend::Svm { machines }
        }
        ModelSpec::Knn { k } => {
            let p = KNNClassifierParameters::default().with_k(k);
            Backend::Knn(KNNClassifier::fit(&dense(&x)?, &y_u32, p).map_err(|e| err(&e))?)
        }
        ModelSpec::GaussianNb {} => {
            Backend::GaussianNb(GaussianNB::fit(&dense(&x)?, &y_u32, GaussianNBParameters::default()).map_err(|e| err(&e))?)
        }
        _ => unreachable!("fit_classifier is only called for classification specs"),
    })
}

/// Adds randomly drawn (with replacement, seeded) rows of every minority class until each class has
/// as many rows as the largest one.
fn oversample(x: &Array2<f64>, labels: &[usize], n_classes: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let target = by_class.iter().map(Vec::len).max().unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: Vec<usize> = (0..labels.len()).collect();
    for members in by_class.iter().filter(|m| !m.is_empty()) {
        for _ in members.len()..target {
            rows.push(members[rng.random_range(0..members.len())]);
        }
    }
    (x.select(Axis(0), &rows), rows.iter().map(|&i| labels[i]).collect())
}

/// "Balanced" class weights n / (K · n_k) (scikit-learn's `class_weight="balanced"`).
pub(super) fn balanced_weights(labels: &[usize], n_classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n_classes];
    for &l in labels {
        counts[l] += 1;
    }
    let present = counts.iter().filter(|&&c| c > 0).count() as f64;
    counts.iter().map(|&c| if c == 0 { 0.0 } else { labels.len() as f64 / (present * c as f64) }).collect()
}

/// One-vs-one majority vote, libsvm's rule (`svm_predict_values` in libsvm's svm.cpp; Chang & Lin
/// 2011, "LIBSVM: a library for support vector machines", ACM TIST 2(3), section 7): the machine
/// for (i, j) votes i when its decision value is > 0, else j; the most votes win, and a tie goes to
/// the class that comes first in the class order (libsvm keeps the first maximum; for
/// scikit-learn that is the smallest label, as here).
pub(super) fn ovo_vote(pairs: &[(usize, usize)], decisions: &[f64], n_classes: usize) -> usize {
    let mut votes = vec![0usize; n_classes];
    for (&(i, j), &d) in pairs.iter().zip(decisions) {
        votes[if d > 0.0 { i } else { j }] += 1;
    }
    (0..n_classes).fold(0, |best, k| if votes[k] > votes[best] { k } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libsvm's vote: machine (i, j) votes i on a decision > 0, j otherwise (0 included); ties go
    /// to the first class in order.
    #[test]
    fn one_vs_one_vote_follows_libsvm() {
        let pairs = [(0, 1), (0, 2), (1, 2)];
        assert_eq!(ovo_vote(&pairs, &[1.0, 1.0, -1.0], 3), 0);
        assert_eq!(ovo_vote(&pairs, &[-1.0, -1.0, 1.0], 3), 1);
        assert_eq!(ovo_vote(&pairs, &[1.0, -1.0, -1.0], 3), 2);
        // A three-way tie (0 beats 1, 1 beats 2, 2 beats 0): one vote each, class 0 wins.
        assert_eq!(ovo_vote(&pairs, &[1.0, -1.0, 1.0], 3), 0);
        // The cycle the other way round (1 beats 0, 0 beats 2, 2 beats 1): still class 0 by order.
        assert_eq!(ovo_vote(&pairs, &[-1.0, 1.0, -1.0], 3), 0);
        assert_eq!(ovo_vote(&pairs, &[-1.0, 0.0, 0.0], 3), 2, "a zero decision votes j");
    }

    #[test]
    fn oversampling_balances_classes() {
        let x = Array2::from_shape_fn((10, 1), |(i, _)| i as f64);
        let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let (x2, l2) = oversample(&x, &labels, 2, 1);
        assert_eq!(l2.iter().filter(|&&l| l == 1).count(), 8);
        assert_eq!(x2.nrows(), 16);
        assert!(x2.rows().into_iter().zip(&l2).all(|(r, &l)| (l == 1) == (r[0] >= 8.0)));
        assert_eq!(balanced_weights(&labels, 2), vec![10.0 / 16.0, 2.5]);
    }
}
