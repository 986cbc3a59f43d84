//! Spike-train (sweep) features over a time window, as IPFX computes them.
//!
//! Re-implements `ipfx/spike_train_features.py::basic_spike_train_features` (IPFX 2.1.2), which
//! `SpikeTrainFeatureExtractor(start, end).process(...)` returns: spike count, average rate,
//! latency and the inter-spike-interval statistics, all taken from *threshold* times. The ISI
//! statistics use the spikes handed in; only the average rate counts the thresholds inside
//! [start, end]. [`spike_train_features`] first selects the spikes whose threshold lies in the
//! window, as the reference harness did for `ipfx_train_features_50kHz.json`.
//!
//! Sums and means use numpy's pairwise summation so the values agree with IPFX to the last bits.

use serde::{Deserialize, Serialize};

use super::spikes::Spike;
use super::stats::{median, numpy_mean, numpy_std};

/// Errors of the spike-train kernels; messages name the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpikeTrainError {
    #[error("window [{start_s}, {end_s}] s is empty, reversed or not finite")]
    InvalidWindow { start_s: f64, end_s: f64 },
    #[error("threshold_times_s[{index}] is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("threshold_times_s[{index}] = {value} s is earlier than the previous threshold; spikes must be in time order")]
    NotSorted { index: usize, value: f64 },
}

/// IPFX's basic spike-train features. `None` where IPFX gives NaN or omits the key (with no
/// spikes IPFX returns only `avg_rate = 0`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SpikeTrainFeatures {
    /// Number of thresholds inside [start, end].
    pub spike_count: usize,
    /// `spike_count / (end − start)`, Hz (IPFX `avg_rate`).
    pub avg_rate_hz: f64,
    /// First threshold time − start, s.
    pub latency_s: Option<f64>,
    pub first_isi_s: Option<f64>,
    pub mean_isi_s: Option<f64>,
    pub median_isi_s: Option<f64>,
    /// std (ddof 0) / mean of the ISIs.
    pub isi_cv: Option<f64>,
    /// Adaptation index: mean of (isi[i+1] − isi[i]) / (isi[i+1] + isi[i]); needs two ISIs.
    pub adapt: Option<f64>,
}

fn check_window(start_s: f64, end_s: f64) -> Result<(), SpikeTrainError> {
    if !(start_s.is_finite() && end_s.is_finite() && end_s > start_s) {
        return Err(SpikeTrainError::InvalidWindow { start_s, end_s });
    }
    Ok(())
}

/// IPFX `basic_spike_train_features(t, spikes_df, start, end)` on threshold times (s, in time
/// order). All given spikes enter the ISI statistics and the latency; `avg_rate` counts only those
/// in [start, end].
pub fn basic_spike_train_features(
    threshold_times_s: &[f64],
    start_s: f64,
    end_s: f64,
) -> Result<SpikeTrainFeatures, SpikeTrainError> {
    check_window(start_s, end_s)?;
    for (k, &x) in threshold_times_s.iter().enumerate() {
        if !x.is_finite() {
            return Err(SpikeTrainError::NonFinite { index: k, value: x });
        }
        if k > 0 && x < threshold_times_s[k - 1] {
            return Err(SpikeTrainError::NotSorted { index: k, value: x });
        }
    }
    let spike_count = threshold_times_s.iter().filter(|&&x| x >= start_s && x <= end_s).count();
    let avg_rate_hz = spike_count as f64 / (end_s - start_s);
    if threshold_times_s.is_empty() {
        return Ok(SpikeTrainFeatures { spike_count, avg_rate_hz, ..SpikeTrainFeatures::default() });
    }
    let isis: Vec<f64> = threshold_times_s.windows(2).map(|w| w[1] - w[0]).collect();
    let (mean, cv, median) = if isis.is_empty() {
        (None, None, None)
    } else {
        let mean = numpy_mean(&isis);
        (Some(mean), Some(numpy_std(&isis) / mean), Some(median(&isis)))
    };
    Ok(SpikeTrainFeatures {
        spike_count,
        avg_rate_hz,
        latency_s: Some(threshold_times_s[0] - start_s),
        first_isi_s: isis.first().copied(),
        mean_isi_s: mean,
        median_isi_s: median,
        isi_cv: cv,
        adapt: adaptation_index(&isis),
    })
}

/// Features of the spikes whose threshold lies in [start, end] (the selection the reference
/// harness applied before calling IPFX's `SpikeTrainFeatureExtractor(start, end)`).
pub fn spike_train_features(spikes: &[Spike], start_s: f64, end_s: f64) -> Result<SpikeTrainFeatures, SpikeTrainError> {
    check_window(start_s, end_s)?;
    let times: Vec<f64> =
        spikes.iter().map(|s| s.threshold.t_s).filter(|&x| x >= start_s && x <= end_s).collect();
    basic_spike_train_features(&times, start_s, end_s)
}

/// IPFX `adaptation_index` / `norm_diff`: NaN (None) below two ISIs, 0 when all consecutive sums
/// are ~0 (`np.allclose(..., 0)`), pairs of zero ISIs count as 0, mean ignoring NaN.
fn adaptation_index(isis: &[f64]) -> Option<f64> {
    if isis.len() <= 1 {
        return None;
    }
    if isis.windows(2).all(|w| (w[1] + w[0]).abs() <= 1e-8) {
        return Some(0.0);
    }
    let diffs: Vec<f64> = isis
        .windows(2)
        .map(|w| if w[0] == 0.0 && w[1] == 0.0 { 0.0 } else { (w[1] - w[0]) / (w[1] + w[0]) })
        .filter(|x| !x.is_nan())
        .collect();
    if diffs.is_empty() { None } else { Some(numpy_mean(&diffs)) }
}

#[cfg(test)]
mod tests {
    use super::super::spikes::{SpikeDetectionParams, Timebase, detect_spikes};
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/spikes/{}", env!("CARGO_MANIFEST_DIR"), name)
    }

    /// Threshold times of the IPFX 2.1.2 reference table (column `threshold_t`).
    fn ipfx_threshold_times() -> Vec<f64> {
        let text = std::fs::read_to_string(fixture("ipfx_spikes_50kHz.csv")).unwrap();
        let mut lines = text.lines();
        let col = lines.next().unwrap().split(',').position(|c| c == "threshold_t").unwrap();
        lines.map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect()
    }

    fn reference() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture("ipfx_train_features_50kHz.json")).unwrap()).unwrap()
    }

    fn assert_close(name: &str, ours: Option<f64>, theirs: f64, rel: f64) -> f64 {
        let o = ours.unwrap_or_else(|| panic!("{name}: missing"));
        let err = ((o - theirs) / theirs).abs();
        assert!(err <= rel, "{name}: ours {o} ipfx {theirs} (rel {err:e})");
        err
    }

    /// The four epochs of the reference file; the harness clamps the end to the last sample.
    const EPOCHS: [(&str, f64, f64); 4] =
        [("step_0.1nA", 1.0, 3.0), ("step_0.3nA", 4.0, 6.0), ("noise", 7.0, 9.99998), ("whole", 0.0, 9.99998)];

    fn check_epochs(spike_thresholds: &[f64], tol: f64) -> f64 {
        let doc = reference();
        let mut worst = 0.0f64;
        for (name, start, end) in EPOCHS {
            let r = &doc["features"][name];
            let times: Vec<f64> = spike_thresholds.iter().copied().filter(|&x| x >= start && x <= end).collect();
            let f = basic_spike_train_features(&times, start, end).unwrap();
            let g = |k: &str| r[k].as_f64().unwrap();
            for (key, ours) in [
                ("adapt", f.adapt),
                ("latency", f.latency_s),
                ("isi_cv", f.isi_cv),
                ("mean_isi", f.mean_isi_s),
                ("median_isi", f.median_isi_s),
                ("first_isi", f.first_isi_s),
                ("avg_rate", Some(f.avg_rate_hz)),
            ] {
                worst = worst.max(assert_close(&format!("{name}.{key}"), ours, g(key), tol));
            }
        }
        worst
    }

    #[test]
    fn train_features_from_ipfx_thresholds_match_ipfx() {
        // Same inputs as IPFX (its own threshold times): isolates the feature formulas.
        let worst = check_epochs(&ipfx_threshold_times(), 1e-6);
        eprintln!("train features from IPFX thresholds: max rel error {worst:e}");
    }

    #[test]
    fn train_features_from_our_detection_match_ipfx() {
        let raw = std::fs::read(fixture("hh_v_50kHz.f64shuf.zst")).unwrap();
        let shuffled = zstd::decode_all(&raw[..]).unwrap();
        let n = shuffled.len() / 8;
        let v: Vec<f64> = (0..n)
            .map(|k| f64::from_le_bytes(std::array::from_fn(|j| shuffled[j * n + k])))
            .collect();
        let spikes = detect_spikes(
            Timebase::Uniform { t0_s: 0.0, dt_s: 2e-5 },
            &v,
            None,
            Some(0.0),
            Some((n - 1) as f64 * 2e-5),
            &SpikeDetectionParams::default(),
        )
        .unwrap();
        let times: Vec<f64> = spikes.iter().map(|s| s.threshold.t_s).collect();
        let worst = check_epochs(&times, 0.01);
        eprintln!("train features from our detection: max rel error {worst:e}");
        // The Spike-slice entry point selects by threshold time the same way.
        let f = spike_train_features(&spikes, 4.0, 6.0).unwrap();
        assert_eq!(f.spike_count, 105);
        assert_close("step_0.3nA.avg_rate", Some(f.avg_rate_hz), 52.5, 1e-12);
    }

    #[test]
    fn edge_cases_follow_ipfx() {
        let none = basic_spike_train_features(&[], 0.0, 1.0).unwrap();
        assert_eq!(none.avg_rate_hz, 0.0);
        assert_eq!((none.latency_s, none.mean_isi_s, none.adapt), (None, None, None));
        let one = basic_spike_train_features(&[0.25], 0.0, 1.0).unwrap();
        assert_eq!((one.spike_count, one.latency_s, one.first_isi_s, one.isi_cv), (1, Some(0.25), None, None));
        let two = basic_spike_train_features(&[0.25, 0.5], 0.0, 1.0).unwrap();
        assert_eq!((two.isi_cv, two.adapt, two.median_isi_s), (Some(0.0), None, Some(0.25)));
        // ISIs 0.1, 0.2, 0.4: norm diffs 1/3, 1/3 -> adapt 1/3
        let three = basic_spike_train_features(&[0.0, 0.1, 0.3, 0.7], 0.0, 1.0).unwrap();
        assert!((three.adapt.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(basic_spike_train_features(&[0.1], 1.0, 1.0), Err(SpikeTrainError::InvalidWindow { .. })));
        assert!(matches!(basic_spike_train_features(&[0.1], f64::NAN, 1.0), Err(SpikeTrainError::InvalidWindow { .. })));
        assert!(matches!(basic_spike_train_features(&[0.1, f64::NAN], 0.0, 1.0), Err(SpikeTrainError::NonFinite { index: 1, .. })));
        assert!(matches!(basic_spike_train_features(&[0.5, 0.1], 0.0, 1.0), Err(SpikeTrainError::NotSorted { index: 1, .. })));
    }
}
