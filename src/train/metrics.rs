//! Scores for trained models: regression (R², MAE, RMSE), classification (accuracy, balanced
//! accuracy, macro F1, per-class precision/recall, confusion matrix and the two baselines a score
//! must beat), and clustering against known labels (Hungarian-matched accuracy, NMI, ARI).
//!
//! Definitions follow scikit-learn 1.9 (`sklearn.metrics`) so numbers are comparable with Python
//! analyses; the unit tests check each one against values scikit-learn computed on fixed data
//! (`tests/fixtures/train/metrics_reference.json`). Classes and clusters are dense indices
//! `0..n`; an undefined ratio (no predictions of a class) counts as 0, as scikit-learn's
//! `zero_division=0`.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("{what}: y_true has {n_true} values but y_pred has {n_pred}")]
    LengthMismatch { what: &'static str, n_true: usize, n_pred: usize },
    #[error("{what}: no samples")]
    Empty { what: &'static str },
    #[error("{what}: value at row {row} is not finite")]
    NonFinite { what: &'static str, row: usize },
    #[error("{what}: label {label} at row {row} is not below n_classes = {n_classes}")]
    LabelOutOfRange { what: &'static str, row: usize, label: usize, n_classes: usize },
}

fn check_pair<T>(what: &'static str, a: &[T], b: &[T]) -> Result<(), MetricsError> {
    if a.len() != b.len() {
        return Err(MetricsError::LengthMismatch { what, n_true: a.len(), n_pred: b.len() });
    }
    if a.is_empty() {
        return Err(MetricsError::Empty { what });
    }
    Ok(())
}

fn check_finite(what: &'static str, a: &[f64], b: &[f64]) -> Result<(), MetricsError> {
    check_pair(what, a, b)?;
    if let Some(row) = a.iter().zip(b).position(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return Err(MetricsError::NonFinite { what, row });
    }
    Ok(())
}

/// Coefficient of determination R² = 1 − SS_res / SS_tot. A constant `y_true` gives 1.0 for a
/// perfect prediction and 0.0 otherwise (scikit-learn's `force_finite` convention).
pub fn r2_score(y_true: &[f64], y_pred: &[f64]) -> Result<f64, MetricsError> {
    check_finite("r2_score", y_true, y_pred)?;
    let mean = y_true.iter().sum::<f64>() / y_true.len() as f64;
    let ss_res: f64 = y_true.iter().zip(y_pred).map(|(t, p)| (t - p).powi(2)).sum();
    let ss_tot: f64 = y_true.iter().map(|t| (t - mean).powi(2)).sum();
    Ok(if ss_tot == 0.0 { if ss_res == 0.0 { 1.0 } else { 0.0 } } else { 1.0 - ss_res / ss_tot })
}

/// Mean absolute error, in the units of the target.
pub fn mean_absolute_error(y_true: &[f64], y_pred: &[f64]) -> Result<f64, MetricsError> {
    check_finite("mean_absolute_error", y_true, y_pred)?;
    Ok(y_true.iter().zip(y_pred).map(|(t, p)| (t - p).abs()).sum::<f64>() / y_true.len() as f64)
}

/// Root mean squared error, in the units of the target.
pub fn root_mean_squared_error(y_true: &[f64], y_pred: &[f64]) -> Result<f64, MetricsError> {
    check_finite("root_mean_squared_error", y_true, y_pred)?;
    let mse = y_true.iter().zip(y_pred).map(|(t, p)| (t - p).powi(2)).sum::<f64>() / y_true.len() as f64;
    Ok(mse.sqrt())
}

/// Confusion matrix `counts[true][pred]` over classes `0..n_classes`.
pub fn confusion_matrix(
    y_true: &[usize],
    y_pred: &[usize],
    n_classes: usize,
) -> Result<Vec<Vec<u64>>, MetricsError> {
    check_pair("confusion_matrix", y_true, y_pred)?;
    let mut counts = vec![vec![0u64; n_classes]; n_classes];
    for (row, (&t, &p)) in y_true.iter().zip(y_pred).enumerate() {
        let label = t.max(p);
        if label >= n_classes {
            return Err(MetricsError::LabelOutOfRange { what: "confusion_matrix", row, label, n_classes });
        }
        counts[t][p] += 1;
    }
    Ok(counts)
}

/// Everything a classification stage reports for one test set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    /// Mean recall over the classes present in `y_true`.
    pub balanced_accuracy: f64,
    /// Unweighted mean F1 over the classes present in `y_true` or `y_pred`.
    pub macro_f1: f64,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// Number of true samples per class.
    pub support: Vec<u64>,
    /// `confusion[true][pred]`.
    pub confusion: Vec<Vec<u64>>,
    /// Accuracy of always predicting the training set's most frequent class.
    pub majority_baseline_accuracy: f64,
    /// Expected accuracy of guessing uniformly among `n_classes` (= 1 / n_classes).
    pub chance_accuracy: f64,
}

/// Scores predicted classes. `train_labels` defines the majority class for the baseline (pass the
/// test labels themselves to get scikit-learn's `DummyClassifier` score on the test set).
pub fn classification_report(
    y_true: &[usize],
    y_pred: &[usize],
    n_classes: usize,
    train_labels: &[usize],
) -> Result<ClassificationReport, MetricsError> {
    let confusion = confusion_matrix(y_true, y_pred, n_classes)?;
    let n = y_true.len() as f64;
    let ratio = |num: u64, den: u64| if den == 0 { 0.0 } else { num as f64 / den as f64 };
    let support: Vec<u64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted: Vec<u64> = (0..n_classes).map(|j| confusion.iter().map(|row| row[j]).sum()).collect();
    let correct: u64 = (0..n_classes).map(|k| confusion[k][k]).sum();
    let precision: Vec<f64> = (0..n_classes).map(|k| ratio(confusion[k][k], predicted[k])).collect();
    let recall: Vec<f64> = (0..n_classes).map(|k| ratio(confusion[k][k], support[k])).collect();
    let f1: Vec<f64> = (0..n_classes)
        .map(|k| ratio(2 * confusion[k][k], support[k] + predicted[k]))
        .collect();
    let present: Vec<usize> = (0..n_classes).filter(|&k| support[k] > 0).collect();
    let seen: Vec<usize> = (0..n_classes).filter(|&k| support[k] + predicted[k] > 0).collect();
    let mean_over = |v: &[f64], idx: &[usize]| idx.iter().map(|&k| v[k]).sum::<f64>() / idx.len().max(1) as f64;
    let majority = majority_class(train_labels, n_classes);
    let majority_hits = y_true.iter().filter(|&&t| Some(t) == majority).count();
    Ok(ClassificationReport {
        accuracy: correct as f64 / n,
        balanced_accuracy: mean_over(&recall, &present),
        macro_f1: mean_over(&f1, &seen),
        precision,
        recall,
        f1,
        support,
        confusion,
        majority_baseline_accuracy: majority_hits as f64 / n,
        chance_accuracy: 1.0 / n_classes.max(1) as f64,
    })
}

/// Most frequent label (lowest index on ties), `None` for an empty slice.
pub fn majority_class(labels: &[usize], n_classes: usize) -> Option<usize> {
    let mut counts = vec![0usize; n_classes];
    for &l in labels.iter().filter(|&&l| l < n_classes) {
        counts[l] += 1;
    }
    (0..n_classes).filter(|&k| counts[k] > 0).max_by_key(|&k| (counts[k], std::cmp::Reverse(k)))
}

/// Contingency table `table[true][cluster]`, with sizes taken from the largest labels.
pub fn contingency_matrix(labels_true: &[usize], labels_pred: &[usize]) -> Result<Vec<Vec<u64>>, MetricsError> {
    check_pair("contingency_matrix", labels_true, labels_pred)?;
    let rows = labels_true.iter().max().map_or(0, |m| m + 1);
    let cols = labels_pred.iter().max().map_or(0, |m| m + 1);
    // Labels are dense indices below the sample count; a larger one would size a huge table.
    let n = labels_true.len();
    if let Some((row, &label)) = labels_true.iter().chain(labels_pred).enumerate().find(|(_, l)| **l >= n) {
        return Err(MetricsError::LabelOutOfRange { what: "contingency_matrix", row: row % n, label, n_classes: n });
    }
    let mut table = vec![vec![0u64; cols]; rows];
    for (&t, &p) in labels_true.iter().zip(labels_pred) {
        table[t][p] += 1;
    }
    Ok(table)
}

/// Maximum-weight assignment of rows to columns for a `rows × cols` weight matrix (`rows <= cols`
/// is not required: the matrix is transposed internally). Returns `assignment[row] = Some(col)`.
///
/// Kuhn–Munkres (Hungarian) algorithm in its O(n²·m) shortest-augmenting-path form with row and
/// column potentials `u`, `v` (reduced costs `c[i][j] − u[i] − v[j] ≥ 0`): H. W. Kuhn, "The
/// Hungarian method for the assignment problem", Naval Res. Logist. Q. 2 (1955) 83–97;
/// J. Munkres, J. SIAM 5 (1957) 32–38; the potential formulation as in R. Jonker and A. Volgenant,
/// Computing 38 (1987) 325–340. Written from those descriptions. Weights are maximized by
/// minimizing their negation.
pub fn hungarian_max_assignment(weights: &[Vec<f64>]) -> Vec<Option<usize>> {
    let n_rows = weights.len();
    let n_cols = weights.first().map_or(0, Vec::len);
    if n_rows == 0 || n_cols == 0 {
        return vec![None; n_rows];
    }
    let transpose = n_rows > n_cols;
    let (n, m) = if transpose { (n_cols, n_rows) } else { (n_rows, n_cols) };
    let cost = |i: usize, j: usize| if transpose { -weights[j][i] } else { -weights[i][j] };
    // 1-based arrays; column 0 is a virtual column holding the row being inserted.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut row_of_col = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    let mut min_to = vec![0.0; m + 1];
    let mut used = vec![false; m + 1];
    for i in 1..=n {
        row_of_col[0] = i;
        let mut j0 = 0;
        min_to.iter_mut().for_each(|x| *x = f64::INFINITY);
        used.iter_mut().for_each(|x| *x = false);
        loop {
            used[j0] = true;
            let i0 = row_of_col[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if !used[j] {
                    let reduced = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if reduced < min_to[j] {
                        min_to[j] = reduced;
                        way[j] = j0;
                    }
                    if min_to[j] < delta {
                        delta = min_to[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[row_of_col[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if row_of_col[j0] == 0 {
                break;
            }
        }
        // Flip the augmenting path back to the virtual column.
        loop {
            let j1 = way[j0];
            row_of_col[j0] = row_of_col[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![None; n_rows];
    for j in 1..=m {
        let i = row_of_col[j];
        if i > 0 {
            if transpose {
                assignment[j - 1] = Some(i - 1);
            } else {
                assignment[i - 1] = Some(j - 1);
            }
        }
    }
    assignment
}

/// Clustering accuracy: the fraction of samples on the diagonal after the one-to-one matching of
/// clusters to classes that maximizes it (Hungarian algorithm on the contingency table).
pub fn hungarian_matched_accuracy(labels_true: &[usize], labels_pred: &[usize]) -> Result<f64, MetricsError> {
    let table = contingency_matrix(labels_true, labels_pred)?;
    let weights: Vec<Vec<f64>> = table.iter().map(|r| r.iter().map(|&c| c as f64).collect()).collect();
    let matched: u64 = hungarian_max_assignment(&weights)
        .iter()
        .enumerate()
        .filter_map(|(i, j)| j.map(|j| table[i][j]))
        .sum();
    Ok(matched as f64 / labels_true.len() as f64)
}

/// Classes against clusters matched to classes by the Hungarian assignment of
/// [`hungarian_matched_accuracy`] (whose value is this matrix's trace over the row count):
/// `counts[true][matched]`, `n_classes` square, plus a last row and column for the clusters no
/// class was matched to (more clusters than classes, or DBSCAN's noise) when there are any; the
/// flag says whether that extra index is present. How a person reads a clustering against labels:
/// the same picture as a classifier's confusion matrix.
pub fn matched_confusion(labels_true: &[usize], labels_pred: &[usize], n_classes: usize) -> Result<(Vec<Vec<u64>>, bool), MetricsError> {
    let table = contingency_matrix(labels_true, labels_pred)?;
    let weights: Vec<Vec<f64>> = table.iter().map(|r| r.iter().map(|&c| c as f64).collect()).collect();
    let n_clusters = table.first().map_or(0, Vec::len);
    let mut class_of = vec![None; n_clusters];
    for (class, cluster) in hungarian_max_assignment(&weights).into_iter().enumerate() {
        if let Some(k) = cluster {
            class_of[k] = Some(class);
        }
    }
    let n_classes = n_classes.max(table.len());
    let unmatched = labels_pred.iter().any(|&p| class_of[p].is_none());
    let size = n_classes + usize::from(unmatched);
    let mut counts = vec![vec![0u64; size]; size];
    for (&t, &p) in labels_true.iter().zip(labels_pred) {
        counts[t][class_of[p].unwrap_or(n_classes)] += 1;
    }
    Ok((counts, unmatched))
}

/// Normalized mutual information with arithmetic normalization,
/// NMI = I(T; P) / ((H(T) + H(P)) / 2), natural logarithms (scikit-learn's default
/// `average_method="arithmetic"`). Two single-cluster labelings give 1.0.
pub fn normalized_mutual_info(labels_true: &[usize], labels_pred: &[usize]) -> Result<f64, MetricsError> {
    let table = contingency_matrix(labels_true, labels_pred)?;
    let n = labels_true.len() as f64;
    let row_sums: Vec<f64> = table.iter().map(|r| r.iter().sum::<u64>() as f64).collect();
    let col_sums: Vec<f64> = (0..table[0].len()).map(|j| table.iter().map(|r| r[j]).sum::<u64>() as f64).collect();
    let n_classes = row_sums.iter().filter(|&&s| s > 0.0).count();
    let n_clusters = col_sums.iter().filter(|&&s| s > 0.0).count();
    if n_classes == 1 && n_clusters == 1 {
        return Ok(1.0);
    }
    let entropy = |sums: &[f64]| -sums.iter().filter(|&&s| s > 0.0).map(|&s| s / n * (s / n).ln()).sum::<f64>();
    let mut mi = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0 {
                let c = c as f64;
                mi += c / n * (c * n / (row_sums[i] * col_sums[j])).ln();
            }
        }
    }
    if mi <= 0.0 {
        return Ok(0.0);
    }
    let normalizer = 0.5 * (entropy(&row_sums) + entropy(&col_sums));
    Ok(mi / normalizer)
}

/// Adjusted Rand index (Hubert & Arabie 1985):
/// ARI = (Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E), E = Σ C(a_i,2)·Σ C(b_j,2) / C(n,2).
/// Identical trivial labelings (denominator 0) give 1.0, as in scikit-learn.
pub fn adjusted_rand_index(labels_true: &[usize], labels_pred: &[usize]) -> Result<f64, MetricsError> {
    let table = contingency_matrix(labels_true, labels_pred)?;
    let pairs = |c: f64| c * (c - 1.0) / 2.0;
    let n = labels_true.len() as f64;
    let sum_cells: f64 = table.iter().flatten().map(|&c| pairs(c as f64)).sum();
    let sum_rows: f64 = table.iter().map(|r| pairs(r.iter().sum::<u64>() as f64)).sum();
    let sum_cols: f64 = (0..table[0].len()).map(|j| pairs(table.iter().map(|r| r[j]).sum::<u64>() as f64)).sum();
    let expected = sum_rows * sum_cols / pairs(n).max(f64::MIN_POSITIVE);
    let max_index = 0.5 * (sum_rows + sum_cols);
    if (max_index - expected).abs() < 1e-12 {
        return Ok(1.0);
    }
    Ok((sum_cells - expected) / (max_index - expected))
}

/// Pearson's product-moment correlation r = Σ(a−ā)(b−b̄) / √(Σ(a−ā)² · Σ(b−b̄)²) (the statistic of
/// `scipy.stats.pearsonr`). NaN when either series is constant (or shorter than two values):
/// callers that report it check the length first.
pub fn pearson_r(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// The metrics of one scope of a table (all rows pooled, one fold, or one group), as training and
/// evaluation stages report them: a metric that is undefined for the scope is left out.
#[derive(Debug, Clone, serde::Serialize, Default)]
pub struct Scores {
    pub rows: usize,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub values: std::collections::BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<u64>>>,
}

/// Classification scores of one scope: accuracy, balanced accuracy, macro F1, the majority-class
/// baseline (majority of `train_labels`) and chance, and the confusion matrix.
pub fn classification_scores(y: &[usize], p: &[usize], n_classes: usize, train_labels: &[usize]) -> Scores {
    let mut s = Scores { rows: y.len(), ..Default::default() };
    if let Ok(r) = classification_report(y, p, n_classes, train_labels) {
        s.values.insert("accuracy".into(), r.accuracy);
        s.values.insert("balanced_accuracy".into(), r.balanced_accuracy);
        s.values.insert("macro_f1".into(), r.macro_f1);
        s.values.insert("majority_baseline_accuracy".into(), r.majority_baseline_accuracy);
        s.values.insert("chance_accuracy".into(), r.chance_accuracy);
        s.confusion = Some(r.confusion);
    }
    s
}

/// Regression scores of one scope: `r2`, `mae`, `rmse`, and `pearson_r` (from two rows on).
pub fn regression_scores(y: &[f64], p: &[f64]) -> Scores {
    let mut s = Scores { rows: y.len(), ..Default::default() };
    if let Ok(v) = r2_score(y, p) {
        s.values.insert("r2".into(), v);
    }
    if let Ok(v) = mean_absolute_error(y, p) {
        s.values.insert("mae".into(), v);
    }
    if let Ok(v) = root_mean_squared_error(y, p) {
        s.values.insert("rmse".into(), v);
    }
    if y.len() > 1 {
        s.values.insert("pearson_r".into(), pearson_r(y, p));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// r by hand: a = [1, 2, 3], b = [1, 3, 2]: deviations (−1, 0, 1) and (−1, 1, 0), so
    /// Σ products = 1, Σ squares = 2 and 2, r = 1/2; a reversed copy gives −1; a constant NaN.
    #[test]
    fn pearson_r_by_hand() {
        assert!((pearson_r(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-15);
        assert!((pearson_r(&[1.0, 2.0, 3.0], &[6.0, 4.0, 2.0]) + 1.0).abs() < 1e-15);
        assert!(pearson_r(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]).is_nan());
        let s = regression_scores(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]);
        assert_eq!((s.rows, s.values["pearson_r"]), (3, pearson_r(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0])));
        assert!(!regression_scores(&[1.0], &[1.0]).values.contains_key("pearson_r"), "undefined for one row");
    }

    #[test]
    fn matched_confusion_has_the_hungarian_accuracy_on_its_diagonal() {
        // Three classes, four clusters (cluster 3 matches no class), labels permuted.
        let truth = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
        let pred = [2, 2, 1, 0, 0, 3, 1, 1, 1, 0];
        let (cm, unmatched) = matched_confusion(&truth, &pred, 3).unwrap();
        assert!(unmatched);
        assert_eq!(cm, vec![vec![2, 0, 1, 0], vec![0, 2, 0, 1], vec![0, 1, 3, 0], vec![0, 0, 0, 0]]);
        let trace: u64 = (0..3).map(|k| cm[k][k]).sum();
        assert_eq!(trace as f64 / truth.len() as f64, hungarian_matched_accuracy(&truth, &pred).unwrap());
        let (cm, unmatched) = matched_confusion(&[0, 1, 1], &[1, 0, 0], 2).unwrap();
        assert!(!unmatched);
        assert_eq!(cm, vec![vec![1, 0], vec![0, 2]]);
    }
    use serde_json::Value;

    fn reference() -> Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/metrics_reference.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }
    fn floats(v: &Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }
    fn ints(v: &Value) -> Vec<usize> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
    }
    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() < 1e-12, "{what}: ours {a} vs scikit-learn {b}");
    }

    #[test]
    fn regression_matches_sklearn() {
        let r = &reference()["regression"];
        let (t, p) = (floats(&r["y_true"]), floats(&r["y_pred"]));
        close(r2_score(&t, &p).unwrap(), r["r2"].as_f64().unwrap(), "r2");
        close(mean_absolute_error(&t, &p).unwrap(), r["mae"].as_f64().unwrap(), "mae");
        close(root_mean_squared_error(&t, &p).unwrap(), r["rmse"].as_f64().unwrap(), "rmse");
        assert!(matches!(r2_score(&[1.0, f64::NAN], &[1.0, 2.0]), Err(MetricsError::NonFinite { row: 1, .. })));
        assert!(matches!(mean_absolute_error(&[1.0], &[1.0, 2.0]), Err(MetricsError::LengthMismatch { .. })));
    }

    #[test]
    fn classification_matches_sklearn() {
        let r = &reference()["classification"];
        let (t, p) = (ints(&r["y_true"]), ints(&r["y_pred"]));
        let rep = classification_report(&t, &p, 4, &t).unwrap();
        close(rep.accuracy, r["accuracy"].as_f64().unwrap(), "accuracy");
        close(rep.balanced_accuracy, r["balanced_accuracy"].as_f64().unwrap(), "balanced accuracy");
        close(rep.macro_f1, r["macro_f1"].as_f64().unwrap(), "macro f1");
        close(rep.majority_baseline_accuracy, r["majority_baseline"].as_f64().unwrap(), "majority");
        for (k, ((pr, rc), f)) in floats(&r["precision"]).iter().zip(floats(&r["recall"])).zip(floats(&r["f1"])).enumerate() {
            close(rep.precision[k], *pr, "precision");
            close(rep.recall[k], rc, "recall");
            close(rep.f1[k], f, "f1");
        }
        let cm: Vec<Vec<u64>> = r["confusion"].as_array().unwrap().iter().map(|row| ints(row).iter().map(|&c| c as u64).collect()).collect();
        assert_eq!(rep.confusion, cm);
        assert_eq!(rep.chance_accuracy, 0.25);
        assert!(matches!(confusion_matrix(&[0, 5], &[0, 1], 4), Err(MetricsError::LabelOutOfRange { row: 1, label: 5, .. })));
    }

    #[test]
    fn clustering_matches_sklearn() {
        let r = &reference()["clustering"];
        let (t, p) = (ints(&r["labels_true"]), ints(&r["labels_pred"]));
        close(hungarian_matched_accuracy(&t, &p).unwrap(), r["hungarian_accuracy"].as_f64().unwrap(), "hungarian");
        close(normalized_mutual_info(&t, &p).unwrap(), r["nmi"].as_f64().unwrap(), "nmi");
        close(adjusted_rand_index(&t, &p).unwrap(), r["ari"].as_f64().unwrap(), "ari");
        assert_eq!(adjusted_rand_index(&[0, 0, 0], &[1, 1, 1]).unwrap(), 1.0);
        assert_eq!(normalized_mutual_info(&[0, 0], &[0, 0]).unwrap(), 1.0);
    }

    /// The Hungarian optimum equals a brute-force search over all permutations.
    #[test]
    fn hungarian_equals_brute_force() {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let (rows, cols) = (rng.random_range(1..6usize), rng.random_range(1..6usize));
            let w: Vec<Vec<f64>> = (0..rows).map(|_| (0..cols).map(|_| rng.random_range(0..20) as f64).collect()).collect();
            let got: f64 = hungarian_max_assignment(&w).iter().enumerate().filter_map(|(i, j)| j.map(|j| w[i][j])).sum();
            fn best(w: &[Vec<f64>], i: usize, used: &mut Vec<bool>) -> f64 {
                if i == w.len() {
                    return 0.0;
                }
                let mut b = best(w, i + 1, used); // row left unassigned
                for j in 0..used.len() {
                    if !used[j] {
                        used[j] = true;
                        b = b.max(w[i][j] + best(w, i + 1, used));
                        used[j] = false;
                    }
                }
                b
            }
            assert_eq!(got, best(&w, 0, &mut vec![false; cols]));
        }
    }
}
