//! Spike-train features used to label and validate DIC-generated populations (spec
//! `dic_stg.md` §7): the activity class (silent / tonic spiking / bursting by the CV of the
//! ISIs), burst metrics of Spike2Pop's `SpikeFeatureExtractor.extract_from_row`, and the
//! thesis van Rossum distance (`van_rossum_map.ipynb`).
//!
//! Both follow the upstream code step by step, including its quirks (the first and last
//! bursts are dropped; f_intra uses n/duration, not (n−1)/duration; the van Rossum τ is
//! (max ISI + min ISI)/2 of the first train; the distance is not square-rooted), because
//! the validation numbers of the thesis are defined by that code. Upstream computes the
//! features in float32; these kernels compute in f64, which agrees to ~1e-6 relative.

/// CV(ISI) at or below which a train is tonic spiking (upstream `cv_th`).
pub const CV_SPIKING_THRESHOLD: f64 = 0.15;

/// Errors of the spike-train feature kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("spike time #{index} = {value} ms is not finite")]
    NonFinite { index: usize, value: f64 },
    #[error("spike times must be non-decreasing: #{index} = {value} ms comes after {previous} ms")]
    NotSorted { index: usize, value: f64, previous: f64 },
    #[error("the reference train needs at least 2 spikes to set the van Rossum τ (got {0})")]
    TooFewSpikes(usize),
    #[error("van Rossum setting {field} = {value} is invalid: {reason}")]
    BadSetting { field: &'static str, value: f64, reason: &'static str },
    #[error("van Rossum τ = {0} ms is not positive (all reference spikes at the same time?)")]
    ZeroTau(f64),
    #[error("van Rossum grid of {0} samples is too large")]
    GridTooLarge(f64),
}

/// Activity class (Spike2Pop labels 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum ActivityClass {
    /// Fewer than 3 spikes.
    Silent = 0,
    /// CV(ISI) ≤ 0.15.
    Spiking = 1,
    /// CV(ISI) > 0.15.
    Bursting = 2,
}

impl ActivityClass {
    /// The class as the stages write it (`silent`, `spiking`, `bursting`).
    pub fn name(self) -> &'static str {
        match self {
            ActivityClass::Silent => "silent",
            ActivityClass::Spiking => "spiking",
            ActivityClass::Bursting => "bursting",
        }
    }

    /// Inverse of [`ActivityClass::name`]; `None` for any other text.
    pub fn from_name(name: &str) -> Option<ActivityClass> {
        match name {
            "silent" => Some(ActivityClass::Silent),
            "spiking" => Some(ActivityClass::Spiking),
            "bursting" => Some(ActivityClass::Bursting),
            _ => None,
        }
    }
}

/// Output of [`extract_features`]. Fields that do not apply to the class are 0 (as
/// upstream); NaN where upstream writes NaN (no burst left after dropping the first and
/// last, or a single burst for f_inter).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpikeTrainFeatures {
    pub label: ActivityClass,
    pub f_spiking_hz: f64,
    pub f_intra_bursting_hz: f64,
    pub f_inter_bursting_hz: f64,
    pub duration_bursting_ms: f64,
    pub nbr_spikes_bursting: f64,
}

fn check_train(times_ms: &[f64]) -> Result<(), FeatureError> {
    for (index, &value) in times_ms.iter().enumerate() {
        if !value.is_finite() {
            return Err(FeatureError::NonFinite { index, value });
        }
        if index > 0 && value < times_ms[index - 1] {
            return Err(FeatureError::NotSorted { index, value, previous: times_ms[index - 1] });
        }
    }
    Ok(())
}

/// Population mean and standard deviation (ddof = 0), summed in order: the one mean/std of the
/// DIC kernels (class, ISI statistics, reference scale), so their values agree to the bit.
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The inter-spike intervals of a train, in its order (`t[i+1] − t[i]`).
pub fn intervals(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Mean over the non-NaN values (NaN if none), like `np.nanmean`.
fn nanmean(x: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in x.filter(|v| !v.is_nan()) {
        sum += v;
        n += 1;
    }
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// Activity class and burst metrics of one spike train (ms, sorted), upstream
/// `SpikeFeatureExtractor.extract_from_row`:
/// - < 3 spikes → silent;
/// - CV = std(ISI)/mean(ISI) ≤ 0.15 → spiking, with f_spiking = mean(1000/ISI) Hz;
/// - else bursting: split where ISI > (max ISI + min ISI)/2, keep bursts of ≥ 2 spikes,
///   drop the first and the last; then mean spikes per burst, mean duration (ms),
///   f_intra = 1000·mean(n/duration) and f_inter = 1000/mean(diff(burst onsets)).
///
/// The result does not depend on a time shift of the train.
pub fn extract_features(times_ms: &[f64]) -> Result<SpikeTrainFeatures, FeatureError> {
    check_train(times_ms)?;
    let mut out = SpikeTrainFeatures {
        label: ActivityClass::Silent,
        f_spiking_hz: 0.0,
        f_intra_bursting_hz: 0.0,
        f_inter_bursting_hz: 0.0,
        duration_bursting_ms: 0.0,
        nbr_spikes_bursting: 0.0,
    };
    if times_ms.len() < 3 {
        return Ok(out);
    }
    let isi = intervals(times_ms);
    let (mean, std) = mean_std(&isi);
    // A NaN CV (all spikes at one instant) fails the test, as in numpy: bursting.
    let cv = std / mean;
    if cv <= CV_SPIKING_THRESHOLD {
        out.label = ActivityClass::Spiking;
        out.f_spiking_hz = isi.iter().map(|d| 1000.0 / d).sum::<f64>() / (times_ms.len() - 1) as f64;
        return Ok(out);
    }
    out.label = ActivityClass::Bursting;
    let max_isi = isi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min_isi = isi.iter().copied().fold(f64::INFINITY, f64::min);
    let threshold = (max_isi + min_isi) / 2.0;
    // Bursts as index ranges [start, end) of the train.
    let mut bursts: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..times_ms.len() {
        if times_ms[i] - times_ms[i - 1] > threshold {
            bursts.push((start, i));
            start = i;
        }
    }
    bursts.push((start, times_ms.len()));
    bursts.retain(|&(a, b)| b - a > 1);
    let inner: &[(usize, usize)] = if bursts.len() >= 2 { &bursts[1..bursts.len() - 1] } else { &[] };
    if inner.is_empty() {
        out.nbr_spikes_bursting = f64::NAN;
        out.duration_bursting_ms = f64::NAN;
        out.f_intra_bursting_hz = f64::NAN;
        out.f_inter_bursting_hz = f64::NAN;
        return Ok(out);
    }
    let duration = |&(a, b): &(usize, usize)| times_ms[b - 1] - times_ms[a];
    out.nbr_spikes_bursting = nanmean(inner.iter().map(|&(a, b)| (b - a) as f64));
    out.duration_bursting_ms = nanmean(inner.iter().map(duration));
    out.f_intra_bursting_hz = nanmean(inner.iter().map(|burst| {
        let d = duration(burst);
        if d > 0.0 { (burst.1 - burst.0) as f64 / d } else { f64::NAN }
    })) * 1000.0;
    out.f_inter_bursting_hz = if inner.len() > 1 {
        // mean(diff(onsets)), as numpy computes it.
        let mean_gap = inner.windows(2).map(|w| times_ms[w[1].0] - times_ms[w[0].0]).sum::<f64>()
            / (inner.len() - 1) as f64;
        1000.0 / mean_gap
    } else {
        f64::NAN
    };
    Ok(out)
}

/// Largest raster the van Rossum kernel will allocate (samples).
const MAX_GRID: f64 = 1e9;

/// Thesis van Rossum distance (`van_rossum_map.ipynb`, spec §7) between a reference train
/// `u_ms` and a train `v_ms`:
/// - both are shifted to start at 0; τ = (max ISI + min ISI)/2 of `u`;
/// - kernel k(t) = e^{−t/τ}/τ sampled on `arange(0, T + dt, dt)` with T = −τ ln(ε τ)
///   (where k falls below ε);
/// - spikes are rounded (half to even) to the dt grid; the kernel is added for `u` and
///   subtracted for `v` into a raster of `ceil(max index / dt) + 1` samples (the upstream
///   length, index divided by dt once more), truncating any kernel tail beyond it;
/// - d = Σ raster² · dt, **not** square-rooted. Not symmetric (τ comes from `u`).
///
/// Defaults upstream: dt = 0.1 ms, ε = 1e-6. The raster allocation is bounded by the
/// kernel support past the last spike, not by the upstream length.
pub fn van_rossum_distance(u_ms: &[f64], v_ms: &[f64], dt_ms: f64, epsilon: f64) -> Result<f64, FeatureError> {
    check_train(u_ms)?;
    check_train(v_ms)?;
    if !(dt_ms.is_finite() && dt_ms > 0.0) {
        return Err(FeatureError::BadSetting { field: "dt_ms", value: dt_ms, reason: "must be finite and > 0" });
    }
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(FeatureError::BadSetting { field: "epsilon", value: epsilon, reason: "must be finite and > 0" });
    }
    if u_ms.len() < 2 {
        return Err(FeatureError::TooFewSpikes(u_ms.len()));
    }
    // Shift first, then difference, exactly in that order: (u_i − u_0) − (u_{i−1} − u_0)
    // can differ from u_i − u_{i−1} in the last bit, and τ sets every kernel value.
    let u0 = u_ms[0];
    let isi = || u_ms.windows(2).map(|w| (w[1] - u0) - (w[0] - u0));
    let max_isi = isi().fold(f64::NEG_INFINITY, f64::max);
    let min_isi = isi().fold(f64::INFINITY, f64::min);
    let tau = (max_isi + min_isi) / 2.0;
    if tau.is_nan() || tau <= 0.0 {
        return Err(FeatureError::ZeroTau(tau));
    }
    let max_t = -tau * (epsilon * tau).ln();
    // numpy arange length: ceil((stop − start)/step), at least 0.
    let kernel_len_f = ((max_t + dt_ms) / dt_ms).ceil().max(0.0);
    let v0 = v_ms.first().copied().unwrap_or(0.0);
    let index = |t: f64, t0: f64| ((t - t0) / dt_ms).round_ties_even();
    let u_max = index(u_ms[u_ms.len() - 1], u0);
    let v_max = if v_ms.is_empty() { -1.0 } else { index(v_ms[v_ms.len() - 1], v0) };
    let raster_len_f = (u_max.max(v_max) / dt_ms).ceil() + 1.0;
    if kernel_len_f > MAX_GRID || raster_len_f > MAX_GRID * 1e3 || u_max.max(v_max) + kernel_len_f > MAX_GRID {
        return Err(FeatureError::GridTooLarge(raster_len_f.max(kernel_len_f)));
    }
    let kernel: Vec<f64> = (0..kernel_len_f as usize).map(|k| (-(k as f64 * dt_ms) / tau).exp() / tau).collect();
    let raster_len = raster_len_f as usize;
    // Only the first max_index + kernel_len samples can be non-zero.
    let stored = raster_len.min(u_max.max(v_max) as usize + kernel.len());
    let mut w = vec![0.0f64; stored];
    let mut add = |i: usize, sign: f64| {
        let end = (i + kernel.len()).min(stored);
        if i < end {
            for (x, k) in w[i..end].iter_mut().zip(&kernel) {
                if sign > 0.0 { *x += k } else { *x -= k }
            }
        }
    };
    for &t in u_ms {
        add(index(t, u0) as usize, 1.0);
    }
    for &t in v_ms {
        add(index(t, v0) as usize, -1.0);
    }
    // Sequential sum, as Python's built-in sum over the numpy array.
    let mut d = 0.0;
    for x in &w {
        d += x * x;
    }
    Ok(d * dt_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stg/features_and_vanrossum.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn times(v: &Value) -> Vec<f64> {
        v["input_spike_times_ms"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    /// Upstream computes in float32: compare to 1e-5 relative (labels exactly).
    #[test]
    fn features_match_spike2pop_extractor() {
        let f = fixture();
        let mut n = 0;
        let mut worst = 0.0f64;
        for (name, case) in f["feature_extractor"].as_object().unwrap() {
            let got = extract_features(&times(case)).unwrap();
            assert_eq!(got.label as u8 as f64, case["label"].as_f64().unwrap(), "{name} label");
            for (key, x) in [
                ("f_spiking", got.f_spiking_hz),
                ("f_intra_bursting", got.f_intra_bursting_hz),
                ("f_inter_bursting", got.f_inter_bursting_hz),
                ("duration_bursting", got.duration_bursting_ms),
                ("nbr_spikes_bursting", got.nbr_spikes_bursting),
            ] {
                let want = case[key].as_f64().unwrap();
                let e = if x == want { 0.0 } else { (x - want).abs() / want.abs() };
                worst = worst.max(e);
                assert!(e <= 1e-5, "{name} {key}: {x} vs {want}");
            }
            n += 1;
        }
        assert_eq!(n, 5);
        eprintln!("features: 5 trains, worst relative error {worst:e}");
    }

    /// The reference pairs of the STG trains were computed from the float64 Radau spike
    /// times (not the float32 copies of `feature_extractor`); they sit on a 0.05-ms grid,
    /// so half of them are rounding ties on the 0.1-ms raster and every bit counts. They
    /// are read from a text fixture because serde_json's default float parser is not
    /// correctly rounded (181.70000000000002 parses as 181.7).
    fn radau_train(name: &str) -> Vec<f64> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stg/vanrossum_radau_trains.txt");
        let text = std::fs::read_to_string(path).unwrap();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_once(':').unwrap().1.split(',').map(|x| x.trim().parse().unwrap()).collect()
    }

    #[test]
    fn van_rossum_matches_thesis_code() {
        let f = fixture();
        let cases = &f["feature_extractor"];
        let train = |name: &str| match name {
            "stg_spiking_2s" => radau_train("G_SPIKING"),
            "stg_bursting_2s" => radau_train("G_BURSTING"),
            other => times(&cases[other]),
        };
        let mut n = 0;
        for (pair, want) in f["van_rossum"].as_object().unwrap() {
            let (a, b) = pair.split_once('|').unwrap();
            let got = van_rossum_distance(&train(a), &train(b), 0.1, 1e-6).unwrap();
            let want = want.as_f64().unwrap();
            eprintln!("van Rossum {pair}: {got:e} (ref {want:e})");
            if a == b {
                // Self distance: round-off only (reference 1.4e-32).
                assert!(got.abs() < 1e-20, "{pair}: {got}");
            } else {
                assert!((got - want).abs() <= 1e-12 * want, "{pair}: {got} vs {want}");
            }
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn bad_trains_are_errors() {
        assert!(matches!(extract_features(&[1.0, f64::NAN, 3.0]), Err(FeatureError::NonFinite { index: 1, .. })));
        assert!(matches!(extract_features(&[1.0, 3.0, 2.0]), Err(FeatureError::NotSorted { index: 2, .. })));
        assert!(matches!(van_rossum_distance(&[1.0], &[1.0, 2.0], 0.1, 1e-6), Err(FeatureError::TooFewSpikes(1))));
        assert!(matches!(van_rossum_distance(&[1.0, 1.0], &[1.0, 2.0], 0.1, 1e-6), Err(FeatureError::ZeroTau(_))));
        assert!(matches!(van_rossum_distance(&[1.0, 2.0], &[1.0, 2.0], 0.0, 1e-6), Err(FeatureError::BadSetting { .. })));
        // Silent train and empty second train are fine.
        assert_eq!(extract_features(&[]).unwrap().label, ActivityClass::Silent);
        assert!(van_rossum_distance(&[0.0, 10.0, 30.0], &[], 0.1, 1e-6).unwrap() > 0.0);
    }
}
