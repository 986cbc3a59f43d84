//! Cross-validation splitters: each returns index sets (`Fold { train, test }`) into the rows of a
//! table, so a training stage can cut any columnar batch the same way without copying it here.
//!
//! Every shuffling splitter takes an explicit `seed` and uses a seeded `StdRng`, so a pipeline run
//! is reproducible. Groups and labels are generic over `Ord` keys and are visited in sorted order
//! (a `BTreeMap`), which keeps the output independent of hash-map iteration order. Impossible
//! requests (more folds than samples, one class for a stratified split, fewer groups than folds)
//! are errors, never panics. The fold rules follow scikit-learn's `KFold`, `StratifiedKFold`,
//! `GroupKFold`, `LeaveOneGroupOut` and `LeaveOneOut` (scikit-learn user guide, section 3.1.2),
//! but the shuffles are our own RNG, so the exact memberships differ from scikit-learn's.

use std::collections::BTreeMap;

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

/// One train/test partition of row indices (both sorted ascending, disjoint).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fold {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    #[error("n_folds must be at least 2, got {n_folds}")]
    TooFewFolds { n_folds: usize },
    #[error("{n_samples} samples cannot fill {n_folds} folds (need at least one sample per fold)")]
    TooFewSamples { n_samples: usize, n_folds: usize },
    #[error("stratified split needs at least two classes, the labels hold only one")]
    SingleClass,
    #[error("{n_groups} distinct groups cannot fill {n_folds} folds")]
    TooFewGroups { n_groups: usize, n_folds: usize },
    #[error("test_fraction must be in (0, 1), got {test_fraction}")]
    BadFraction { test_fraction: f64 },
    #[error("split by value: no row has a value in the {side} set")]
    EmptySide { side: &'static str },
    #[error("split by value: value {value} is listed for both train and test")]
    OverlappingValues { value: String },
}

fn check_folds(n_samples: usize, n_folds: usize) -> Result<(), ValidationError> {
    if n_folds < 2 {
        return Err(ValidationError::TooFewFolds { n_folds });
    }
    if n_samples < n_folds {
        return Err(ValidationError::TooFewSamples { n_samples, n_folds });
    }
    Ok(())
}

/// Turns a fold assignment (`fold_of[row]`) into `n_folds` sorted train/test index sets.
fn folds_from_assignment(fold_of: &[usize], n_folds: usize) -> Vec<Fold> {
    (0..n_folds)
        .map(|k| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..fold_of.len()).partition(|&i| fold_of[i] == k);
            Fold { train, test }
        })
        .collect()
}

/// K-fold: rows (shuffled with `seed` when `shuffle`) are cut into `n_folds` contiguous blocks whose
/// sizes differ by at most one (the first `n % k` folds get one extra row, as in scikit-learn).
pub fn k_fold(
    n_samples: usize,
    n_folds: usize,
    shuffle: bool,
    seed: u64,
) -> Result<Vec<Fold>, ValidationError> {
    check_folds(n_samples, n_folds)?;
    let mut order: Vec<usize> = (0..n_samples).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    let mut fold_of = vec![0; n_samples];
    let (base, extra) = (n_samples / n_folds, n_samples % n_folds);
    let mut pos = 0;
    for k in 0..n_folds {
        let size = base + usize::from(k < extra);
        for &row in &order[pos..pos + size] {
            fold_of[row] = k;
        }
        pos += size;
    }
    Ok(folds_from_assignment(&fold_of, n_folds))
}

/// Stratified k-fold: each class's rows are shuffled and dealt round-robin over the folds, the
/// dealing continuing where the previous class stopped, so every fold keeps the class proportions
/// (to within one row per class) and fold sizes differ by at most one.
pub fn stratified_k_fold<L: Ord>(
    labels: &[L],
    n_folds: usize,
    seed: u64,
) -> Result<Vec<Fold>, ValidationError> {
    check_folds(labels.len(), n_folds)?;
    let by_class = rows_by_key(labels);
    if by_class.len() < 2 {
        return Err(ValidationError::SingleClass);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fold_of = vec![0; labels.len()];
    let mut next = 0;
    for mut rows in by_class.into_values() {
        rows.shuffle(&mut rng);
        for row in rows {
            fold_of[row] = next;
            next = (next + 1) % n_folds;
        }
    }
    Ok(folds_from_assignment(&fold_of, n_folds))
}

/// Stratified single split with `test_fraction` of every class in the test set (rounded per
/// class, at least one test and one train row for classes with two or more rows).
pub fn stratified_train_test_split<L: Ord>(
    labels: &[L],
    test_fraction: f64,
    seed: u64,
) -> Result<Fold, ValidationError> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(ValidationError::BadFraction { test_fraction });
    }
    check_folds(labels.len(), 2)?;
    let by_class = rows_by_key(labels);
    if by_class.len() < 2 {
        return Err(ValidationError::SingleClass);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut is_test = vec![false; labels.len()];
    for mut rows in by_class.into_values() {
        rows.shuffle(&mut rng);
        let n = rows.len();
        let mut n_test = (n as f64 * test_fraction).round() as usize;
        if n >= 2 {
            n_test = n_test.clamp(1, n - 1);
        }
        for &row in &rows[..n_test.min(n)] {
            is_test[row] = true;
        }
    }
    let (test, train) = (0..labels.len()).partition(|&i| is_test[i]);
    Ok(Fold { train, test })
}

/// Grouped k-fold: no group ever appears in both train and test of a fold. Groups are shuffled
/// with `seed` (to break ties), then sorted by size, largest first, and each goes to the fold
/// with the fewest rows so far (the balancing rule of scikit-learn's `GroupKFold`).
pub fn group_k_fold<G: Ord>(
    groups: &[G],
    n_folds: usize,
    seed: u64,
) -> Result<Vec<Fold>, ValidationError> {
    if n_folds < 2 {
        return Err(ValidationError::TooFewFolds { n_folds });
    }
    let mut by_group: Vec<Vec<usize>> = rows_by_key(groups).into_values().collect();
    if by_group.len() < n_folds {
        return Err(ValidationError::TooFewGroups { n_groups: by_group.len(), n_folds });
    }
    by_group.shuffle(&mut StdRng::seed_from_u64(seed));
    by_group.sort_by_key(|rows| std::cmp::Reverse(rows.len())); // stable: shuffled ties stay shuffled
    let mut fold_rows = vec![0usize; n_folds];
    let mut fold_of = vec![0; groups.len()];
    for rows in by_group {
        let k = (0..n_folds).min_by_key(|&k| (fold_rows[k], k)).unwrap_or(0);
        fold_rows[k] += rows.len();
        for row in rows {
            fold_of[row] = k;
        }
    }
    Ok(folds_from_assignment(&fold_of, n_folds))
}

/// Leave-one-group-out: one fold per distinct group (in sorted group order), testing on that group.
pub fn leave_one_group_out<G: Ord>(groups: &[G]) -> Result<Vec<Fold>, ValidationError> {
    let by_group = rows_by_key(groups);
    if by_group.len() < 2 {
        return Err(ValidationError::TooFewGroups { n_groups: by_group.len(), n_folds: 2 });
    }
    let mut fold_of = vec![0; groups.len()];
    for (k, rows) in by_group.values().enumerate() {
        for &row in rows {
            fold_of[row] = k;
        }
    }
    Ok(folds_from_assignment(&fold_of, by_group.len()))
}

/// Leave-one-out: `n_samples` folds, each testing on a single row.
pub fn leave_one_out(n_samples: usize) -> Result<Vec<Fold>, ValidationError> {
    check_folds(n_samples, 2)?;
    let fold_of: Vec<usize> = (0..n_samples).collect();
    Ok(folds_from_assignment(&fold_of, n_samples))
}

/// Split by a column value: train on the rows whose value is in `train_values`, test on the rows
/// whose value is in `test_values` (e.g. train on session A, test on session B). Rows with other
/// values are left out of both sets.
pub fn split_by_value<T: PartialEq + std::fmt::Debug>(
    values: &[T],
    train_values: &[T],
    test_values: &[T],
) -> Result<Fold, ValidationError> {
    if let Some(v) = train_values.iter().find(|v| test_values.contains(v)) {
        return Err(ValidationError::OverlappingValues { value: format!("{v:?}") });
    }
    let train: Vec<usize> = (0..values.len()).filter(|&i| train_values.contains(&values[i])).collect();
    let test: Vec<usize> = (0..values.len()).filter(|&i| test_values.contains(&values[i])).collect();
    if train.is_empty() {
        return Err(ValidationError::EmptySide { side: "train" });
    }
    if test.is_empty() {
        return Err(ValidationError::EmptySide { side: "test" });
    }
    Ok(Fold { train, test })
}

/// Row indices per distinct key, keys in sorted order, rows ascending.
fn rows_by_key<K: Ord>(keys: &[K]) -> BTreeMap<&K, Vec<usize>> {
    let mut map: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        map.entry(k).or_default().push(i);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use std::collections::BTreeSet;

    fn assert_partition(folds: &[Fold], n: usize) {
        let mut seen = vec![0; n];
        for f in folds {
            let tr: BTreeSet<_> = f.train.iter().collect();
            assert!(f.test.iter().all(|i| !tr.contains(i)), "train and test overlap");
            assert_eq!(f.train.len() + f.test.len(), n);
            for &i in &f.test {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "every row must be tested exactly once");
    }

    #[test]
    fn k_fold_sizes_and_determinism() {
        let folds = k_fold(10, 3, true, 5).unwrap();
        assert_partition(&folds, 10);
        let sizes: Vec<_> = folds.iter().map(|f| f.test.len()).collect();
        assert_eq!(sizes, vec![4, 3, 3]);
        assert_eq!(folds, k_fold(10, 3, true, 5).unwrap());
        assert_ne!(folds, k_fold(10, 3, true, 6).unwrap());
        let plain = k_fold(5, 5, false, 0).unwrap();
        assert_eq!(plain[2].test, vec![2]);
        assert_eq!(k_fold(2, 3, true, 0), Err(ValidationError::TooFewSamples { n_samples: 2, n_folds: 3 }));
        assert_eq!(k_fold(5, 1, true, 0), Err(ValidationError::TooFewFolds { n_folds: 1 }));
    }

    #[test]
    fn stratified_keeps_proportions() {
        let labels: Vec<u8> = (0..100).map(|i| if i < 80 { 0 } else { 1 }).collect();
        let folds = stratified_k_fold(&labels, 5, 1).unwrap();
        assert_partition(&folds, 100);
        for f in &folds {
            let ones = f.test.iter().filter(|&&i| labels[i] == 1).count();
            assert_eq!((f.test.len(), ones), (20, 4));
        }
        assert_eq!(stratified_k_fold(&[3u8; 10], 2, 0), Err(ValidationError::SingleClass));
        let split = stratified_train_test_split(&labels, 0.25, 0).unwrap();
        assert_eq!(split.test.len(), 25);
        assert_eq!(split.test.iter().filter(|&&i| labels[i] == 1).count(), 5);
    }

    /// Property: over many random group assignments, no group is in both train and test.
    #[test]
    fn grouped_cv_never_leaks_a_group() {
        let mut rng = StdRng::seed_from_u64(99);
        for trial in 0..500 {
            let n = rng.random_range(5..200usize);
            let n_groups = rng.random_range(2..20u32);
            let groups: Vec<u32> = (0..n).map(|_| rng.random_range(0..n_groups)).collect();
            let distinct = groups.iter().collect::<BTreeSet<_>>().len();
            let n_folds = rng.random_range(2..6usize);
            match group_k_fold(&groups, n_folds, trial) {
                Ok(folds) => {
                    assert!(distinct >= n_folds);
                    assert_partition(&folds, n);
                    for f in &folds {
                        assert!(!f.test.is_empty());
                        let test_groups: BTreeSet<_> = f.test.iter().map(|&i| groups[i]).collect();
                        assert!(f.train.iter().all(|&i| !test_groups.contains(&groups[i])));
                    }
                }
                Err(e) => assert_eq!(e, ValidationError::TooFewGroups { n_groups: distinct, n_folds }),
            }
            let logo = leave_one_group_out(&groups);
            if distinct >= 2 {
                let folds = logo.unwrap();
                assert_eq!(folds.len(), distinct);
                for f in &folds {
                    let g = groups[f.test[0]];
                    assert!(f.test.iter().all(|&i| groups[i] == g));
                    assert!(f.train.iter().all(|&i| groups[i] != g));
                }
            }
        }
    }

    #[test]
    fn leave_one_out_and_by_value() {
        let folds = leave_one_out(4).unwrap();
        assert_partition(&folds, 4);
        assert_eq!(folds[1], Fold { train: vec![0, 2, 3], test: vec![1] });
        assert!(leave_one_out(1).is_err());
        let sessions = ["a", "b", "a", "c", "b"];
        let f = split_by_value(&sessions, &["a"], &["b"]).unwrap();
        assert_eq!(f, Fold { train: vec![0, 2], test: vec![1, 4] });
        assert_eq!(split_by_value(&sessions, &["a"], &["z"]), Err(ValidationError::EmptySide { side: "test" }));
        assert!(split_by_value(&sessions, &["a"], &["a"]).is_err());
    }
}
