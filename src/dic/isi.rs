//! Inter-spike-interval statistics of a spike train (ms): the two summaries the DIC estimate
//! reads, [`isi_statistics`] (the k-nearest-neighbour space of the reference set) and
//! [`isi_feature_vector`] (the inputs of the trained regressors, `features.isi`).
//!
//! Why not `crate::features::spike_train`: that module reproduces IPFX to the last bit, with
//! numpy's pairwise summation and times in seconds; these sum in order (the same mean and std as
//! the Spike2Pop class of [`super::features::extract_features`]), and their values are pinned by
//! the reference set and by the regressors trained on them (`data/dic_models/`). One summation
//! order each, so neither study's numbers move.

use super::features::{ActivityClass, extract_features, intervals, mean_std};

/// Number of ISI statistics in the estimator's feature vector.
pub const N_ISI_STATS: usize = 5;

/// The intervals of a train when every one is finite and positive (a strictly increasing train).
fn positive_intervals(times_ms: &[f64]) -> Option<Vec<f64>> {
    let isi = intervals(times_ms);
    isi.iter().all(|d| d.is_finite() && *d > 0.0).then_some(isi)
}

/// ISI statistics of a train (ms): [ln min ISI, ln median ISI, ln max ISI, ln mean ISI,
/// CV(ISI)]. For a periodic burster, min ≈ intra-burst ISI, max ≈ inter-burst gap and the
/// median/mean place the spikes per burst; for a tonic spiker all four logs coincide and CV ≈ 0.
/// Invariant to a time shift. `None` with fewer than 3 spikes or a zero ISI.
pub fn isi_statistics(times_ms: &[f64]) -> Option<[f64; N_ISI_STATS]> {
    if times_ms.len() < 3 {
        return None;
    }
    let mut isi = positive_intervals(times_ms)?;
    isi.sort_by(f64::total_cmp);
    let n = isi.len();
    let median = if n % 2 == 1 { isi[n / 2] } else { 0.5 * (isi[n / 2 - 1] + isi[n / 2]) };
    // Mean and std of the sorted intervals: the summation order the reference set was built with.
    let (mean, std) = mean_std(&isi);
    Some([isi[0].ln(), median.ln(), isi[n - 1].ln(), mean.ln(), std / mean])
}

/// Number of entries of [`isi_feature_vector`].
pub const N_ISI_FEATURES: usize = 23;

/// Names of the entries of [`isi_feature_vector`], in order.
pub const ISI_FEATURE_NAMES: [&str; N_ISI_FEATURES] = [
    "rate_hz",
    "log_isi_mean",
    "log_isi_std",
    "log_isi_min",
    "log_isi_max",
    "log_isi_q05",
    "log_isi_q10",
    "log_isi_q25",
    "log_isi_q50",
    "log_isi_q75",
    "log_isi_q90",
    "log_isi_q95",
    "isi_cv",
    "dlog_isi_abs_mean",
    "dlog_isi_std",
    "log_isi_lag1_autocorrelation",
    "fraction_short_isi",
    "class_bursting",
    "spikes_per_burst",
    "burst_duration_ms",
    "f_intra_burst_hz",
    "f_inter_burst_hz",
    "f_spiking_hz",
];

/// numpy's default (linear) quantile of sorted data: `s[lo] + (s[hi] − s[lo])·(pos − lo)` with
/// `pos = q·(n − 1)`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Size and spread of the successive changes of ln ISI: (mean |Δ|, std Δ); (0, 0) with no change.
fn successive_changes(log_isi: &[f64]) -> (f64, f64) {
    let dl = intervals(log_isi);
    if dl.is_empty() {
        return (0.0, 0.0);
    }
    let abs_mean = dl.iter().map(|x| x.abs()).sum::<f64>() / dl.len() as f64;
    (abs_mean, mean_std(&dl).1)
}

/// The ISI summary of a train in ms (see [`ISI_FEATURE_NAMES`]): the firing rate over the train,
/// the distribution of ln ISI (ms) — mean, std, extremes, quantiles —, CV, the size and
/// correlation of successive ln-ISI changes (bursts alternate short and long intervals), the share
/// of ISIs below the Spike2Pop burst threshold (max + min ISI)/2, and the Spike2Pop class and burst
/// metrics (0 where they do not apply). Shift- and window-length-invariant (rates, not counts), so
/// a 1-s recorded train and a 3-s simulated one are comparable. `None` for fewer than 3 spikes
/// (silent, as Spike2Pop labels them) or a non-increasing train.
pub fn isi_feature_vector(times_ms: &[f64]) -> Option<[f64; N_ISI_FEATURES]> {
    let f = extract_features(times_ms).ok()?;
    if f.label == ActivityClass::Silent {
        return None;
    }
    let isi = positive_intervals(times_ms)?;
    let n = isi.len() as f64;
    let l: Vec<f64> = isi.iter().map(|d| d.ln()).collect();
    let mut ls = l.clone();
    ls.sort_by(f64::total_cmp);
    let (mean_l, std_l) = mean_std(&l);
    let (mean_isi, std_isi) = mean_std(&isi);
    let cv = std_isi / mean_isi;
    // The interval-structure features (successive changes, lag-1 correlation, short-ISI share)
    // describe bursts; on a regular train (CV ≤ 0.15, Spike2Pop's tonic rule) they measure only
    // integration jitter, which differs between simulators (a BDF-simulated 10 Hz train fed to
    // trees trained on exponential-Euler trains landed in the bursting region). They are 0 there.
    let regular = cv <= 0.15;
    let (dabs, dstd) = if regular { (0.0, 0.0) } else { successive_changes(&l) };
    let lag1 = if !regular && l.len() >= 3 && std_l > 1e-12 {
        let c: f64 = l.windows(2).map(|w| (w[0] - mean_l) * (w[1] - mean_l)).sum::<f64>() / (n - 1.0);
        c / (std_l * std_l)
    } else {
        0.0
    };
    let (min_i, max_i) = (isi.iter().copied().fold(f64::INFINITY, f64::min), isi.iter().copied().fold(0.0, f64::max));
    let thr = 0.5 * (min_i + max_i);
    let short = if regular { 0.0 } else { isi.iter().filter(|&&d| d < thr).count() as f64 / n };
    let z = |x: f64| if x.is_finite() { x } else { 0.0 };
    let span = times_ms[times_ms.len() - 1] - times_ms[0];
    Some([
        1000.0 * n / span,
        mean_l,
        std_l,
        ls[0],
        ls[ls.len() - 1],
        quantile(&ls, 0.05),
        quantile(&ls, 0.10),
        quantile(&ls, 0.25),
        quantile(&ls, 0.50),
        quantile(&ls, 0.75),
        quantile(&ls, 0.90),
        quantile(&ls, 0.95),
        cv,
        dabs,
        dstd,
        lag1,
        short,
        if f.label == ActivityClass::Bursting { 1.0 } else { 0.0 },
        z(f.nbr_spikes_bursting),
        z(f.duration_bursting_ms),
        z(f.f_intra_bursting_hz),
        z(f.f_inter_bursting_hz),
        z(f.f_spiking_hz),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isi_statistics_of_a_periodic_train() {
        // ISIs 10, 10, 30 → min 10, median 10, max 30, mean 50/3.
        let s = isi_statistics(&[0.0, 10.0, 20.0, 50.0]).unwrap();
        assert!((s[0] - 10f64.ln()).abs() < 1e-12 && (s[1] - 10f64.ln()).abs() < 1e-12 && (s[2] - 30f64.ln()).abs() < 1e-12);
        assert!((s[3] - (50.0f64 / 3.0).ln()).abs() < 1e-12);
        assert!(isi_statistics(&[0.0, 1.0]).is_none());
        assert!(isi_statistics(&[0.0, 1.0, 1.0]).is_none());
    }

    #[test]
    fn isi_statistics_known_answer() {
        // ISIs 2, 4, 4, 6 (mean 4, population std √2, median (4 + 4)/2, even count).
        let s = isi_statistics(&[1.0, 3.0, 7.0, 11.0, 17.0]).unwrap();
        let want = [2f64.ln(), 4f64.ln(), 6f64.ln(), 4f64.ln(), 2f64.sqrt() / 4.0];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{s:?} vs {want:?}");
        }
    }

    #[test]
    fn quantile_is_numpys_linear_one() {
        let s = [1.0, 2.0, 4.0, 8.0];
        // numpy.quantile([1, 2, 4, 8], [0, 0.25, 0.5, 0.9, 1]) = 1, 1.75, 3, 6.8, 8
        for (q, want) in [(0.0, 1.0), (0.25, 1.75), (0.5, 3.0), (0.9, 6.8), (1.0, 8.0)] {
            assert!((quantile(&s, q) - want).abs() < 1e-12, "q {q}: {}", quantile(&s, q));
        }
    }

    #[test]
    fn isi_features_of_a_periodic_train_and_of_a_burster() {
        let tonic: Vec<f64> = (0..20).map(|k| 3000.0 + 100.0 * k as f64).collect();
        let v = isi_feature_vector(&tonic).unwrap();
        assert!((v[0] - 10.0).abs() < 1e-9, "rate {}", v[0]);
        assert!((v[1] - 100f64.ln()).abs() < 1e-12 && v[2].abs() < 1e-12 && v[12].abs() < 1e-12);
        assert_eq!(v[17], 0.0, "tonic");
        assert_eq!(&v[13..17], &[0.0; 4], "no burst structure on a regular train");
        // Bursts of 4 spikes 10 ms apart every 500 ms.
        let burst: Vec<f64> = (0..8).flat_map(|b| (0..4).map(move |s| 500.0 * b as f64 + 10.0 * s as f64)).collect();
        let v = isi_feature_vector(&burst).unwrap();
        assert_eq!(v[17], 1.0, "bursting");
        assert!((v[18] - 4.0).abs() < 1e-12, "spikes per burst {}", v[18]);
        assert!((v[16] - 24.0 / 31.0).abs() < 1e-12, "short-ISI share {}", v[16]);
        assert!(v[15] < 0.0, "short and long intervals alternate: negative lag-1 correlation");
        assert!(isi_feature_vector(&[1.0, 2.0]).is_none(), "fewer than 3 spikes is silent");
        assert!(isi_feature_vector(&[1.0, 3.0, 2.0, 4.0]).is_none(), "unsorted");
    }
}
