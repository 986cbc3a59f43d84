//! Reductions over slices as the reference tools compute them, one implementation each: numpy's
//! pairwise sum and the mean/std built on it (IPFX's values to the last bit), numpy's median and
//! linear quantile, a plain left-to-right mean and population std, and the group aggregates of
//! `features.group_stats`.
//!
//! Two sums on purpose: numpy's pairwise order where a value is compared with IPFX, the plain
//! order where a stage has always summed that way (its outputs are pinned by checkpoints).

/// numpy's pairwise summation (`np.add.reduce` on a contiguous float64 array): blocks of 8
/// accumulators below 128 elements, recursive halving above. Keeps means bit-identical to IPFX.
pub fn numpy_sum(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in x {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&x[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += x[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += x[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&x[..n2]) + numpy_sum(&x[n2..])
    }
}

/// numpy `mean` of a non-empty slice (pairwise sum).
pub fn numpy_mean(x: &[f64]) -> f64 {
    numpy_sum(x) / x.len() as f64
}

/// numpy `std` (ddof 0) of a non-empty slice: mean, then the mean of squared deviations, both
/// with pairwise summation.
pub fn numpy_std(x: &[f64]) -> f64 {
    let mean = numpy_mean(x);
    let sq: Vec<f64> = x.iter().map(|v| (v - mean) * (v - mean)).collect();
    (numpy_sum(&sq) / x.len() as f64).sqrt()
}

/// Mean and population standard deviation (ddof 0) of a non-empty slice, summed left to right.
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// numpy `median` (mean of the two middle values for an even count) of a non-empty slice.
pub fn median(x: &[f64]) -> f64 {
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    median_sorted(&s)
}

/// [`median`] of values already sorted ascending.
pub fn median_sorted(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[m] } else { (sorted[m - 1] + sorted[m]) / 2.0 }
}

/// numpy `quantile(sorted, q, method="linear")` (numpy's default) of non-empty values sorted
/// ascending: linear interpolation between the order statistics around `q·(n − 1)`.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A group aggregate of `features.group_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Count,
    Mean,
    Min,
    Max,
    Median,
}

/// `stat` of `values`: the count of any set, otherwise `None` for an empty one. The values are
/// sorted first, so the mean sums them in ascending order.
pub fn aggregate(stat: Stat, mut values: Vec<f64>) -> Option<f64> {
    if stat == Stat::Count {
        return Some(values.len() as f64);
    }
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    Some(match stat {
        Stat::Count => n as f64,
        Stat::Mean => values.iter().sum::<f64>() / n as f64,
        Stat::Min => values[0],
        Stat::Max => values[n - 1],
        Stat::Median => median_sorted(&values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_matches_plain_sum_for_small_inputs() {
        let x: Vec<f64> = (0..300).map(|k| (k as f64 * 0.37).sin()).collect();
        let plain: f64 = x.iter().sum();
        assert!((numpy_sum(&x) - plain).abs() < 1e-12);
        assert_eq!(numpy_sum(&x[..5]), x[..5].iter().fold(0.0, |a, b| a + b));
    }

    #[test]
    fn median_quantile_and_std_match_numpy() {
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        // np.median(x) = 3.5; np.median(x[:7]) = 3.0
        assert_eq!(median(&x), 3.5);
        assert_eq!(median(&x[..7]), 3.0);
        let mut s = x.to_vec();
        s.sort_by(f64::total_cmp);
        // np.quantile(x, [0, 0.05, 0.25, 0.5, 0.95, 1]) = [1, 1, 1.75, 3.5, 7.95, 9]
        let q: Vec<f64> = [0.0, 0.05, 0.25, 0.5, 0.95, 1.0].iter().map(|&q| quantile_sorted(&s, q)).collect();
        let want = [1.0, 1.0, 1.75, 3.5, 7.95, 9.0];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        // np.mean(x) = 3.875, np.std(x) = 2.5708704751503917
        let (m, sd) = mean_std(&x);
        assert_eq!(m, 3.875);
        assert!((sd - 2.570_870_475_150_391_7).abs() < 1e-12);
        assert_eq!(numpy_mean(&x), 3.875);
        assert!((numpy_std(&x) - sd).abs() < 1e-12);
    }

    #[test]
    fn aggregates_of_a_group() {
        let v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(aggregate(Stat::Count, v.clone()), Some(4.0));
        assert_eq!(aggregate(Stat::Mean, v.clone()), Some(2.5));
        assert_eq!(aggregate(Stat::Min, v.clone()), Some(1.0));
        assert_eq!(aggregate(Stat::Max, v.clone()), Some(4.0));
        assert_eq!(aggregate(Stat::Median, v), Some(2.5));
        assert_eq!(aggregate(Stat::Median, vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(aggregate(Stat::Count, vec![]), Some(0.0));
        assert_eq!(aggregate(Stat::Mean, vec![]), None);
    }
}
