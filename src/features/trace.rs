//! Summary statistics of one sampled trace (a response, a stimulus): its level, its spread, its
//! percentiles, how fast it moves and how long it stays correlated. The kernel of
//! `features.trace`, which reduces a list column to numbers a regression can use.
//!
//! Non-finite samples are skipped by the level statistics and break the pairs of the difference
//! and autocorrelation statistics. Sums run left to right (the order the stage has always used).

use super::stats::{mean_std, quantile_sorted};

/// The quantiles of [`TraceStats::quantiles`] (the 5th, 25th, 50th, 75th and 95th percentiles).
pub const QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

/// The statistics of one trace; `None` where a statistic is undefined (no finite sample, no
/// sampling rate, a lag beyond the trace, a constant trace's correlation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceStats {
    /// Finite samples.
    pub samples: usize,
    pub mean: Option<f64>,
    /// Standard deviation, ddof 0.
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// numpy's linear quantiles at [`QUANTILES`].
    pub quantiles: [Option<f64>; QUANTILES.len()],
    /// Standard deviation (ddof 0) of the successive differences times the sampling rate: the
    /// spread of the derivative, in the trace's unit per second.
    pub dvdt_std: Option<f64>,
    /// [`lag_autocorrelation`] at each lag asked for, the lag rounded to whole samples.
    pub acf: Vec<Option<f64>>,
}

/// Statistics of trace `x` sampled at `rate_hz` (`None` when the rate is unknown; a rate that is
/// not finite and positive counts as unknown), with the autocorrelation at each of `lags_s`.
pub fn trace_stats(x: &[f64], rate_hz: Option<f64>, lags_s: &[f64]) -> TraceStats {
    let mut finite: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    let mut stats = TraceStats { samples: finite.len(), ..TraceStats::default() };
    if !finite.is_empty() {
        let (mean, std) = mean_std(&finite);
        finite.sort_unstable_by(f64::total_cmp);
        stats.mean = Some(mean);
        stats.std = Some(std);
        stats.min = finite.first().copied();
        stats.max = finite.last().copied();
        stats.quantiles = QUANTILES.map(|q| Some(quantile_sorted(&finite, q)));
    }
    let rate = rate_hz.filter(|r| r.is_finite() && *r > 0.0);
    if let Some(r) = rate {
        let d: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).filter(|v| v.is_finite()).collect();
        if !d.is_empty() {
            stats.dvdt_std = Some(mean_std(&d).1 * r);
        }
    }
    stats.acf = lags_s
        .iter()
        .map(|&lag| {
            // A fixed time lag, so traces sampled at different rates are comparable.
            let k = (lag * rate?).round() as usize;
            lag_autocorrelation(x, k)
        })
        .collect();
    stats
}

/// Pearson correlation of `x` with itself shifted by `k` samples, over the pairs whose two
/// samples are finite. `None` for `k` = 0 or beyond the trace, fewer than two pairs, or a
/// constant side (no defined correlation).
pub fn lag_autocorrelation(x: &[f64], k: usize) -> Option<f64> {
    if k == 0 || k >= x.len() {
        return None;
    }
    let pairs: Vec<(f64, f64)> = x.iter().zip(&x[k..]).map(|(&a, &b)| (a, b)).filter(|(a, b)| a.is_finite() && b.is_finite()).collect();
    if pairs.len() < 2 {
        return None;
    }
    let m = pairs.len() as f64;
    let (ma, mb) = (pairs.iter().map(|p| p.0).sum::<f64>() / m, pairs.iter().map(|p| p.1).sum::<f64>() / m);
    let cov: f64 = pairs.iter().map(|(a, b)| (a - ma) * (b - mb)).sum();
    let va: f64 = pairs.iter().map(|(a, _)| (a - ma) * (a - ma)).sum();
    let vb: f64 = pairs.iter().map(|(_, b)| (b - mb) * (b - mb)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_match_numpy() {
        // numpy: x = [3, 1, 4, 1, 5, 9, 2, 6]; mean 3.875, std 2.5708704752, percentile(x, [5, 25,
        // 50, 75, 95]) = [1.0, 1.75, 3.5, 5.25, 7.95]; np.diff(x).std() * 1000 = 4100.77145554495
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let s = trace_stats(&x, Some(1000.0), &[0.001]);
        let got = [s.mean, s.std, s.min, s.max, s.quantiles[0], s.quantiles[1], s.quantiles[2], s.quantiles[3], s.quantiles[4]];
        let want = [3.875, 2.570_870_475_150_391_7, 1.0, 9.0, 1.0, 1.75, 3.5, 5.25, 7.95];
        for (k, w) in want.iter().enumerate() {
            assert!((got[k].unwrap() - w).abs() < 1e-9, "{k}: {:?} vs {w}", got[k]);
        }
        assert!((s.dvdt_std.unwrap() - 4_100.771_455_544_95).abs() < 1e-6, "{:?}", s.dvdt_std);
        // np.corrcoef(x[:-1], x[1:])[0, 1] = -0.1806827218347102
        let a = s.acf[0].unwrap();
        assert!((a - (-0.180_682_721_834_710_2)).abs() < 1e-12, "{a}");
        assert_eq!(s.samples, 8);
        // non-finite samples are skipped; a constant trace has no autocorrelation
        let s = trace_stats(&[1.0, f64::NAN, 1.0, 1.0], Some(1000.0), &[0.001, 1.0]);
        assert_eq!(s.samples, 3);
        assert_eq!(s.std, Some(0.0));
        assert_eq!(s.acf, vec![None, None]);
        // without a rate: no derivative, no autocorrelation; without samples: no level
        let s = trace_stats(&[1.0, 2.0], None, &[0.001]);
        assert_eq!((s.dvdt_std, s.acf.clone()), (None, vec![None]));
        assert_eq!(trace_stats(&[f64::NAN], Some(1.0), &[]).mean, None);
    }
}
