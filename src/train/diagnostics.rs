//! Model-agnostic diagnostics of a cross-validated model: permutation feature importance on the
//! held-out folds, and the learning curve (score against training-set size) under the same folds.
//!
//! Both work from the out-of-fold predictions, pooled over the folds, and score them the way the
//! training stage ranks models ([`crate::train::models::score`]): R² for regression; accuracy for
//! classification, balanced accuracy when classes are balanced. Pooling (instead of averaging
//! per-fold scores) keeps the numbers defined for leave-one-out, where a fold holds one row, and
//! matches the pooled metrics a stage reports.
//!
//! Permutation importance follows L. Breiman, "Random forests", Machine Learning 45 (2001) 5–32,
//! section 10, in its model-agnostic form (A. Fisher, C. Rudin and F. Dominici, "All models are
//! wrong, but many are useful", JMLR 20 (2019) 177, "model reliance"; the same quantity as
//! scikit-learn's `sklearn.inspection.permutation_importance`): the drop in score when one
//! feature's values are shuffled, breaking its link with the target while keeping its
//! distribution. The shuffle runs over the held-out rows of all folds together, and each row is
//! still predicted by the model that did not train on it: the row only receives another row's value
//! of that one feature, never its target, so nothing leaks into the score. Shuffling within each
//! fold instead would do nothing under leave-one-out (a fold of one row cannot be shuffled) and
//! little with small folds. The shuffles are seeded per feature, so the numbers are reproducible
//! and do not depend on thread scheduling.

use ndarray::Axis;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;

use super::metrics::{self, MetricsError};
use super::models::{FittedModel, ModelError, Prediction, Target, TrainingData};
use super::validation::Fold;

/// Out-of-fold predictions over all rows of a table (rows no fold tests stay unset).
enum Pooled {
    Values(Vec<f64>),
    Classes(Vec<usize>),
}

/// The score the diagnostics use, and its name in metrics.json.
pub fn score_name(target: &Target, balanced: bool) -> &'static str {
    match target {
        Target::Classes { .. } if balanced => "balanced_accuracy",
        Target::Classes { .. } => "accuracy",
        _ => "r2",
    }
}

fn pooled_score(target: &Target, pooled: &Pooled, rows: &[usize], balanced: bool) -> Result<f64, MetricsError> {
    match (target, pooled) {
        (Target::Values(y), Pooled::Values(p)) => {
            let yt: Vec<f64> = rows.iter().map(|&i| y[i]).collect();
            let pt: Vec<f64> = rows.iter().map(|&i| p[i]).collect();
            metrics::r2_score(&yt, &pt)
        }
        (Target::Classes { labels, classes }, Pooled::Classes(p)) => {
            let yt: Vec<usize> = rows.iter().map(|&i| labels[i]).collect();
            let pt: Vec<usize> = rows.iter().map(|&i| p[i]).collect();
            let r = metrics::classification_report(&yt, &pt, classes.len(), &yt)?;
            Ok(if balanced { r.balanced_accuracy } else { r.accuracy })
        }
        _ => Err(MetricsError::Empty { what: "diagnostics: target and predictions of different kinds" }),
    }
}

fn empty_pooled(target: &Target, n: usize) -> Result<Pooled, ModelError> {
    match target {
        Target::Values(_) => Ok(Pooled::Values(vec![f64::NAN; n])),
        Target::Classes { .. } => Ok(Pooled::Classes(vec![usize::MAX; n])),
        Target::None => Err(ModelError::BadData("diagnostics need a target".into())),
    }
}

fn scatter(pooled: &mut Pooled, rows: &[usize], pr: Prediction) -> Result<(), ModelError> {
    match (pooled, pr) {
        (Pooled::Values(p), Prediction::Values(v)) => rows.iter().zip(v).for_each(|(&i, x)| p[i] = x),
        (Pooled::Classes(p), Prediction::Classes(c)) => rows.iter().zip(c).for_each(|(&i, k)| p[i] = k),
        _ => return Err(ModelError::BadData("the model's output does not match the target".into())),
    }
    Ok(())
}

/// The rows some fold tests, ascending.
fn tested_rows(folds: &[Fold]) -> Vec<usize> {
    let mut rows: Vec<usize> = folds.iter().flat_map(|f| f.test.iter().copied()).collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Seed of feature `j`'s shuffles: the stage seed mixed with the feature index (a SplitMix64
/// step, so neighbouring features get unrelated streams).
fn feature_seed(seed: u64, j: usize) -> u64 {
    let mut z = seed ^ (j as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Permutation importance of one feature.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureImportance {
    pub feature: String,
    /// Mean drop in the pooled out-of-fold score over the repeats (positive = the model relies on
    /// the feature; about 0 = it does not; negative = shuffling helped, i.e. noise).
    pub mean: f64,
    /// Population standard deviation of the drop over the repeats (NumPy's `std`, as scikit-learn).
    pub std: f64,
    /// The drop of every repeat.
    pub drops: Vec<f64>,
}

/// Permutation importance of every feature, in the table's feature order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Importance {
    /// `r2`, `accuracy` or `balanced_accuracy`.
    pub score: &'static str,
    /// The pooled out-of-fold score without any shuffling.
    pub baseline: f64,
    pub repeats: usize,
    pub features: Vec<FeatureImportance>,
}

/// Permutation importance of every feature of `data` for the fold models `models` (`models[k]`
/// was trained on `folds[k].train`): for each feature and repeat, the feature's column is shuffled
/// over all test rows, every fold model predicts its own test rows with the shuffled column, and
/// the drop is the pooled out-of-fold score minus the pooled score of those predictions.
pub fn permutation_importance(
    models: &[FittedModel],
    folds: &[Fold],
    data: &TrainingData,
    repeats: usize,
    seed: u64,
    balanced: bool,
) -> Result<Importance, ModelError> {
    if models.len() != folds.len() {
        return Err(ModelError::BadData(format!("{} fold models for {} folds", models.len(), folds.len())));
    }
    if repeats == 0 {
        return Err(ModelError::BadData("permutation importance needs at least one repeat".into()));
    }
    let n = data.x.nrows();
    let tested = tested_rows(folds);
    let test_x: Vec<_> = folds.iter().map(|f| data.x.select(Axis(0), &f.test)).collect();
    let mut base = empty_pooled(&data.target, n)?;
    for ((model, fold), x) in models.iter().zip(folds).zip(&test_x) {
        scatter(&mut base, &fold.test, model.predict(&data.feature_names, x.view())?)?;
    }
    let baseline = pooled_score(&data.target, &base, &tested, balanced)?;
    let features = (0..data.feature_names.len())
        .into_par_iter()
        .map(|j| -> Result<FeatureImportance, ModelError> {
            let mut rng = StdRng::seed_from_u64(feature_seed(seed, j));
            let mut drops = Vec::with_capacity(repeats);
            let mut order = tested.clone();
            let mut shuffled = vec![f64::NAN; n];
            for _ in 0..repeats {
                order.shuffle(&mut rng);
                for (&to, &from) in tested.iter().zip(&order) {
                    shuffled[to] = data.x[[from, j]];
                }
                let mut pooled = empty_pooled(&data.target, n)?;
                for ((model, fold), x) in models.iter().zip(folds).zip(&test_x) {
                    let mut xp = x.clone();
                    xp.column_mut(j).iter_mut().zip(&fold.test).for_each(|(v, &i)| *v = shuffled[i]);
                    scatter(&mut pooled, &fold.test, model.predict(&data.feature_names, xp.view())?)?;
                }
                drops.push(baseline - pooled_score(&data.target, &pooled, &tested, balanced)?);
            }
            let mean = drops.iter().sum::<f64>() / repeats as f64;
            let std = (drops.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / repeats as f64).sqrt();
            Ok(FeatureImportance { feature: data.feature_names[j].clone(), mean, std, drops })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Importance { score: score_name(&data.target, balanced), baseline, repeats, features })
}

/// Why a learning curve could not be computed (the stage records the text in metrics.json).
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    #[error("fraction {0} is not in (0, 1]")]
    Fraction(f64),
    /// A fit on a share of a fold's training rows failed (it can where the full fit does not).
    #[error("fraction {fraction}, fold {fold} ({rows} training rows): {source}")]
    Fit { fraction: f64, fold: usize, rows: usize, source: ModelError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// One point of a learning curve.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LearningPoint {
    /// The share of each fold's training rows the models were fitted on.
    pub fraction: f64,
    /// Training rows per fold: mean, smallest and largest over the folds.
    pub train_rows_mean: f64,
    pub train_rows_min: usize,
    pub train_rows_max: usize,
    /// Mean over the folds of the score on the rows each model was fitted on.
    pub train_score: f64,
    /// Pooled out-of-fold score on the folds' full test sets.
    pub validation_score: f64,
}

/// A seeded subset of `fraction` of the training rows `train`: per class for classification
/// (`ceil(fraction * n_k)` rows of every class present, so no class disappears from a small
/// subset), of all rows otherwise; at least one row. Returned ascending.
pub fn subsample(train: &[usize], target: &Target, fraction: f64, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let take = |len: usize| ((fraction * len as f64).ceil() as usize).clamp(1, len);
    let mut out = match target {
        Target::Classes { labels, classes } => {
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
            for &i in train {
                by_class[labels[i]].push(i);
            }
            let mut out = Vec::new();
            for mut rows in by_class.into_iter().filter(|r| !r.is_empty()) {
                rows.shuffle(&mut rng);
                out.extend_from_slice(&rows[..take(rows.len())]);
            }
            out
        }
        _ => {
            let mut rows = train.to_vec();
            rows.shuffle(&mut rng);
            rows.truncate(take(train.len()));
            rows
        }
    };
    out.sort_unstable();
    out
}

/// Learning curve: for each fraction, every fold's model is refitted (by `fit`, which may grid
/// search) on a seeded [`subsample`] of that fold's training rows and scored on the whole test
/// fold. The validation score pools the out-of-fold predictions as the stage's metrics do; at
/// fraction 1.0 it equals the stage's pooled score (same folds, same fits).
pub fn learning_curve<F>(fit: F, folds: &[Fold], data: &TrainingData, fractions: &[f64], seed: u64, balanced: bool) -> Result<Vec<LearningPoint>, CurveError>
where
    F: Fn(&TrainingData) -> Result<FittedModel, ModelError>,
{
    let n = data.x.nrows();
    let tested = tested_rows(folds);
    let mut out = Vec::new();
    for (a, &fraction) in fractions.iter().enumerate() {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(CurveError::Fraction(fraction));
        }
        let mut pooled = empty_pooled(&data.target, n)?;
        let (mut sizes, mut train_scores) = (Vec::new(), Vec::new());
        for (k, fold) in folds.iter().enumerate() {
            let rows = if fraction >= 1.0 { fold.train.clone() } else { subsample(&fold.train, &data.target, fraction, feature_seed(seed, a * 65_537 + k)) };
            let train = data.select(&rows);
            let model = fit(&train).map_err(|source| CurveError::Fit { fraction, fold: k, rows: rows.len(), source })?;
            let on_train = model.predict(&train.feature_names, train.x.view())?;
            let mut own = empty_pooled(&train.target, rows.len())?;
            scatter(&mut own, &(0..rows.len()).collect::<Vec<_>>(), on_train)?;
            let all: Vec<usize> = (0..rows.len()).collect();
            train_scores.push(pooled_score(&train.target, &own, &all, balanced)?);
            let test = data.x.select(Axis(0), &fold.test);
            scatter(&mut pooled, &fold.test, model.predict(&data.feature_names, test.view())?)?;
            sizes.push(rows.len());
        }
        out.push(LearningPoint {
            fraction,
            train_rows_mean: sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64,
            train_rows_min: sizes.iter().copied().min().unwrap_or(0),
            train_rows_max: sizes.iter().copied().max().unwrap_or(0),
            train_score: train_scores.iter().sum::<f64>() / train_scores.len().max(1) as f64,
            validation_score: pooled_score(&data.target, &pooled, &tested, balanced)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::models::{FitOptions, ModelSpec, fit};
    use crate::train::validation::k_fold;
    use ndarray::Array2;
    use rand::RngExt;
    use rand_distr::{Distribution, StandardNormal};

    /// y = 3 x0 + 1 x1 + 0 x2 + noise, independent standard-normal features.
    fn linear_data(n: usize, seed: u64) -> TrainingData {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut x = Array2::zeros((n, 3));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            for j in 0..3 {
                x[[i, j]] = StandardNormal.sample(&mut rng);
            }
            let e: f64 = StandardNormal.sample(&mut rng);
            y.push(3.0 * x[[i, 0]] + 1.0 * x[[i, 1]] + 0.5 * e);
        }
        TrainingData::new(vec!["strong".into(), "weak".into(), "noise".into()], x, Target::Values(y)).unwrap()
    }

    fn fold_models(spec: &ModelSpec, folds: &[Fold], data: &TrainingData) -> Vec<FittedModel> {
        folds.iter().map(|f| fit(spec, &FitOptions::default(), &data.select(&f.train)).unwrap()).collect()
    }

    /// For a linear model and independent features, shuffling feature j adds β_j²·2·Var(x_j) to
    /// the mean squared error (E[(β(x − x'))²] with x' an independent copy), so the R² drop is
    /// 2·β_j²·Var(x_j) / Var(y): 2·9/10.25 = 1.756 for `strong`, 2/10.25 = 0.195 for `weak`, 0 for
    /// `noise` (Var(y) = 9 + 1 + 0.25). Checked to a few percent on 4000 rows.
    #[test]
    fn permutation_importance_of_a_linear_model_matches_the_analytic_drop() {
        let data = linear_data(4000, 11);
        let folds = k_fold(4000, 5, true, 3).unwrap();
        let models = fold_models(&ModelSpec::Linear {}, &folds, &data);
        let imp = permutation_importance(&models, &folds, &data, 5, 42, false).unwrap();
        assert_eq!(imp.score, "r2");
        let var_y = 10.25;
        let expect = [2.0 * 9.0 / var_y, 2.0 / var_y, 0.0];
        for (f, e) in imp.features.iter().zip(expect) {
            assert!((f.mean - e).abs() < 0.06 * e.max(0.1), "{}: drop {} expected {e}", f.feature, f.mean);
            assert_eq!(f.drops.len(), 5);
        }
        assert!(imp.features[2].mean.abs() < 0.005, "noise feature: {}", imp.features[2].mean);
        assert!(imp.baseline > 0.97, "baseline R² {}", imp.baseline);
        // Seeded: the same numbers again, other numbers with another seed.
        let again = permutation_importance(&models, &folds, &data, 5, 42, false).unwrap();
        assert_eq!(imp, again);
        let other = permutation_importance(&models, &folds, &data, 5, 43, false).unwrap();
        assert_ne!(imp.features[0].drops, other.features[0].drops);
    }

    /// Leave-one-out: each fold tests one row, yet shuffling over all held-out rows still measures
    /// the reliance (the same analytic drop, within sampling error on 300 rows).
    #[test]
    fn permutation_importance_works_under_leave_one_out() {
        let data = linear_data(300, 12);
        let folds = crate::train::validation::leave_one_out(300).unwrap();
        let models = fold_models(&ModelSpec::Linear {}, &folds, &data);
        let imp = permutation_importance(&models, &folds, &data, 3, 1, false).unwrap();
        assert!((imp.features[0].mean - 1.756).abs() < 0.35, "{:?}", imp.features[0]);
        assert!(imp.features[1].mean > 0.08, "{:?}", imp.features[1]);
        assert!(imp.features[2].mean.abs() < 0.02, "{:?}", imp.features[2]);
    }

    #[test]
    fn subsample_keeps_every_class_and_the_fraction() {
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i % 10 == 0)).collect();
        let target = Target::Classes { labels: labels.clone(), classes: vec!["a".into(), "b".into()] };
        let train: Vec<usize> = (0..100).collect();
        let s = subsample(&train, &target, 0.2, 1);
        assert_eq!(s.iter().filter(|&&i| labels[i] == 1).count(), 2, "ceil(0.2 * 10)");
        assert_eq!(s.iter().filter(|&&i| labels[i] == 0).count(), 18, "ceil(0.2 * 90)");
        let tiny = subsample(&train, &target, 0.01, 1);
        assert_eq!(tiny.iter().filter(|&&i| labels[i] == 1).count(), 1, "a class never disappears");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subsample(&train, &Target::Values(vec![0.0; 100]), 0.25, 1).len(), 25);
        assert_eq!(subsample(&train, &target, 0.2, 1), s, "seeded");
    }

    /// More training rows never hurt a well-specified linear model much, and its full-size point
    /// is the plain cross-validated score.
    #[test]
    fn learning_curve_ends_at_the_cross_validated_score() {
        let mut data = linear_data(400, 5);
        // A noisier target so small training sets visibly do worse.
        if let Target::Values(y) = &mut data.target {
            let mut rng = StdRng::seed_from_u64(9);
            y.iter_mut().for_each(|v| *v += rng.random_range(-4.0..4.0));
        }
        let folds = k_fold(400, 4, true, 1).unwrap();
        let spec = ModelSpec::Linear {};
        let fitter = |d: &TrainingData| fit(&spec, &FitOptions::default(), d);
        let curve = learning_curve(fitter, &folds, &data, &[0.05, 0.5, 1.0], 7, false).unwrap();
        assert_eq!(curve.len(), 3);
        assert_eq!((curve[2].train_rows_min, curve[2].train_rows_max), (300, 300));
        assert_eq!(curve[0].train_rows_min, 15, "ceil(0.05 * 300)");
        let models = fold_models(&spec, &folds, &data);
        let full = permutation_importance(&models, &folds, &data, 1, 0, false).unwrap().baseline;
        assert!((curve[2].validation_score - full).abs() < 1e-12, "{} vs {full}", curve[2].validation_score);
        assert!(curve[0].validation_score < curve[2].validation_score, "{curve:?}");
        assert!(curve[0].train_score > curve[0].validation_score, "a small training set is fitted better than it generalizes: {curve:?}");
        assert!(learning_curve(fitter, &folds, &data, &[0.0], 7, false).is_err());
    }
}
