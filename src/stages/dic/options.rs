//! Options several study-4 kinds share, with one default and one check each: the population
//! settings of `dic.estimate` and `dic.population`, the van Rossum settings of `features.bursts`
//! and `dic.validate`.

use crate::stage::Issue;

pub(crate) fn default_v_th() -> f64 {
    -51.0
}
pub(crate) fn default_iterations() -> usize {
    5
}
pub(crate) fn default_max_residual() -> f64 {
    0.1
}
pub(crate) fn default_vr_dt() -> f64 {
    0.1
}
pub(crate) fn default_vr_eps() -> f64 {
    1e-6
}

/// `v_th_mv`, `iterations` and `max_residual` of a population.
pub(crate) fn check_population(v_th_mv: f64, iterations: usize, max_residual: f64) -> Vec<Issue> {
    let mut issues = Vec::new();
    if !(v_th_mv.is_finite() && (-100.0..=0.0).contains(&v_th_mv)) {
        issues.push(Issue::at(&["v_th_mv"], "must be in [-100, 0] mV"));
    }
    if iterations > 1000 {
        issues.push(Issue::at(&["iterations"], "at most 1000"));
    }
    if !(max_residual.is_finite() && max_residual > 0.0) {
        issues.push(Issue::at(&["max_residual"], "must be finite and > 0"));
    }
    issues
}

/// `vr_dt_ms` and `vr_epsilon` of the van Rossum distance.
pub(crate) fn check_van_rossum(vr_dt_ms: f64, vr_epsilon: f64) -> Vec<Issue> {
    let mut issues = Vec::new();
    if !(vr_dt_ms.is_finite() && vr_dt_ms > 0.0 && vr_dt_ms <= 10.0) {
        issues.push(Issue::at(&["vr_dt_ms"], "must be in (0, 10] ms"));
    }
    if !(vr_epsilon.is_finite() && vr_epsilon > 0.0 && vr_epsilon < 1.0) {
        issues.push(Issue::at(&["vr_epsilon"], "must be in (0, 1)"));
    }
    issues
}
