//! Subthreshold features of one current-clamp step sweep, as IPFX computes them.
//!
//! Re-implements, from reading IPFX 2.1.2 (`ipfx/subthresh_features.py`,
//! `ipfx/time_series_utils.py`, `ipfx/stim_features.py` and the `LongSquareAnalysis` of
//! `ipfx/stimulus_protocol_analysis.py`), the per-sweep quantities of IPFX's long-square
//! analysis: baseline membrane potential, peak voltage deflection inside the stimulus window, sag,
//! membrane time constant (single-exponential fit) and the input resistance of a set of
//! hyperpolarizing sweeps. The cell-level summary that combines sweeps is `super::cell`.
//!
//! Every time-to-index conversion is IPFX's `find_time_index` (argmin |t − t0|, first index on
//! ties; times outside the trace are an error), every window is numpy's half-open `v[a:b]`, and
//! means use numpy's pairwise summation, so voltages agree with IPFX to the last bits. The
//! exponential fit `y0 + a·exp(−x/τ)` is solved by a Levenberg–Marquardt iteration of our own
//! (IPFX calls scipy's `curve_fit`, MINPACK `lmdif`) from IPFX's starting point; both converge to
//! the same least-squares minimum, so τ agrees to the fit tolerance (≈1e-7 relative).
//!
//! Where IPFX returns NaN (low signal-to-noise, a failed or poor fit, a zero sag denominator) the
//! features here are `None` with the reason in [`TauStatus`]; where IPFX raises (a time outside
//! the trace, an empty slice) the functions return a [`SubthresholdError`] naming the field.

use serde::{Deserialize, Serialize};

use super::spikes::Timebase;
use super::stats::{numpy_mean, numpy_std};

/// Errors of the subthreshold kernels. Messages name the offending field or parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubthresholdError {
    #[error("{field}: length {len} does not match v_mv length {expected}")]
    LengthMismatch { field: &'static str, len: usize, expected: usize },
    #[error("{field}[{index}] is not finite ({value})")]
    NonFinite { field: &'static str, index: usize, value: f64 },
    #[error("trace has {len} samples; at least {needed} are needed")]
    TooShort { len: usize, needed: usize },
    #[error("timebase: {0}")]
    InvalidTimebase(String),
    #[error("{field} = {value_s} s lies outside the trace [{first_s}, {last_s}] s")]
    TimeOutOfRange { field: &'static str, value_s: f64, first_s: f64, last_s: f64 },
    #[error("stimulus window [{start_s}, {end_s}] s is reversed, empty or not finite")]
    InvalidWindow { start_s: f64, end_s: f64 },
    #[error("{what}: the interval [{start_s}, {end_s}] s holds no sample")]
    EmptyInterval { what: &'static str, start_s: f64, end_s: f64 },
    #[error("parameter {name} = {value}: {reason}")]
    InvalidParameter { name: &'static str, value: f64, reason: &'static str },
    #[error("input resistance needs at least one hyperpolarizing sweep; none was given")]
    NoSweeps,
    #[error("input resistance: every sweep has the same current ({i_pa} pA) at its peak deflection; the V–I slope is undefined")]
    DegenerateCurrents { i_pa: f64 },
}

/// Stimulus interval of a step, s (IPFX's `start`, `end`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StimulusWindow {
    pub start_s: f64,
    pub end_s: f64,
}

impl StimulusWindow {
    fn validate(&self) -> Result<(), SubthresholdError> {
        if !(self.start_s.is_finite() && self.end_s.is_finite() && self.end_s > self.start_s) {
            return Err(SubthresholdError::InvalidWindow { start_s: self.start_s, end_s: self.end_s });
        }
        Ok(())
    }
}

/// One sweep: sample times, membrane potential (mV) and injected current (pA), one value each.
#[derive(Debug, Clone, Copy)]
pub struct SweepTrace<'a> {
    pub time: Timebase<'a>,
    pub v_mv: &'a [f64],
    pub i_pa: &'a [f64],
}

impl<'a> SweepTrace<'a> {
    /// Checks lengths, finiteness and the time axis; returns the validated axis.
    pub(crate) fn validate(&self) -> Result<TimeAxis<'a>, SubthresholdError> {
        let n = self.v_mv.len();
        if self.i_pa.len() != n {
            return Err(SubthresholdError::LengthMismatch { field: "i_pa", len: self.i_pa.len(), expected: n });
        }
        let axis = TimeAxis::new(self.time, n)?;
        for (field, x) in [("v_mv", self.v_mv), ("i_pa", self.i_pa)] {
            if let Some(k) = x.iter().position(|v| !v.is_finite()) {
                return Err(SubthresholdError::NonFinite { field, index: k, value: x[k] });
            }
        }
        Ok(axis)
    }
}

/// Validated time axis: IPFX's `t` array, either `t0 + k·dt` or explicit sample times.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeAxis<'a> {
    base: Timebase<'a>,
    n: usize,
}

impl<'a> TimeAxis<'a> {
    pub(crate) fn new(base: Timebase<'a>, n: usize) -> Result<Self, SubthresholdError> {
        if n < 2 {
            return Err(SubthresholdError::TooShort { len: n, needed: 2 });
        }
        match base {
            Timebase::Uniform { t0_s, dt_s } => {
                if !(t0_s.is_finite() && dt_s.is_finite() && dt_s > 0.0) {
                    return Err(SubthresholdError::InvalidTimebase(format!(
                        "uniform t0_s = {t0_s}, dt_s = {dt_s}: need finite values and dt_s > 0"
                    )));
                }
            }
            Timebase::Samples(t) => {
                if t.len() != n {
                    return Err(SubthresholdError::LengthMismatch { field: "t_s", len: t.len(), expected: n });
                }
                if let Some(k) = t.iter().position(|x| !x.is_finite()) {
                    return Err(SubthresholdError::NonFinite { field: "t_s", index: k, value: t[k] });
                }
                if let Some(k) = (1..n).find(|&k| t[k] < t[k - 1]) {
                    return Err(SubthresholdError::InvalidTimebase(format!(
                        "t_s[{k}] = {} s is earlier than t_s[{}]; sample times must not decrease",
                        t[k],
                        k - 1
                    )));
                }
            }
        }
        Ok(TimeAxis { base, n })
    }

    /// `t[k]`, computed as numpy's `t0 + arange(n) * dt` for uniform sampling.
    #[inline]
    pub(crate) fn at(&self, k: usize) -> f64 {
        match self.base {
            Timebase::Uniform { t0_s, dt_s } => t0_s + k as f64 * dt_s,
            Timebase::Samples(t) => t[k],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// IPFX `find_time_index`: argmin |t − t0| with the first index on ties; IPFX asserts that
    /// t0 lies inside the trace, so a time outside it is an error naming `field`.
    pub(crate) fn index_of(&self, t0: f64, field: &'static str) -> Result<usize, SubthresholdError> {
        let (first, last) = (self.at(0), self.at(self.n - 1));
        if !(first <= t0 && t0 <= last) {
            return Err(SubthresholdError::TimeOutOfRange { field, value_s: t0, first_s: first, last_s: last });
        }
        // First k with t[k] >= t0 (t is non-decreasing), then compare with its left neighbour.
        let (mut lo, mut hi) = (0usize, self.n - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid) < t0 { lo = mid + 1 } else { hi = mid }
        }
        if lo == 0 {
            return Ok(0);
        }
        let (left, right) = (self.at(lo - 1), self.at(lo));
        if (left - t0).abs() <= (right - t0).abs() {
            // Repeated sample times: numpy's argmin returns the first of them.
            let mut k = lo - 1;
            while k > 0 && self.at(k - 1) == left {
                k -= 1;
            }
            Ok(k)
        } else {
            Ok(lo)
        }
    }
}

/// Which extreme [`voltage_deflection`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeflectionKind {
    /// Most negative voltage (hyperpolarizing response).
    Min,
    /// Most positive voltage.
    Max,
}

/// Options of the subthreshold features, with IPFX's defaults (`SpikeTrainFeatureExtractor`,
/// `LongSquareAnalysis`, `subthresh_features.time_constant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubthresholdParams {
    /// Interval before the stimulus start averaged for the baseline Vm, and for the noise of the
    /// τ signal-to-noise test, s (`baseline_interval`, 0.1).
    pub baseline_interval_s: f64,
    /// Extreme taken for the peak deflection; `None` = by the sign of the current halfway
    /// through the window, `max` when ≥ 0 (IPFX `deflect_type=None`).
    pub deflect_kind: Option<DeflectionKind>,
    /// Width of the average around the peak used by the sag, s (`peak_width`, 0.005).
    pub sag_peak_width_s: f64,
    /// Baseline and steady-state intervals of the sag, s (`sag_baseline_interval`, 0.03).
    pub sag_baseline_interval_s: f64,
    /// The τ fit starts where the response first reaches this fraction of the peak deflection
    /// (`tau_frac` / `frac`, 0.1).
    pub tau_frac: f64,
    /// Smallest |peak − baseline| / baseline noise accepted for τ (`min_snr`, 20).
    pub tau_min_snr: f64,
    /// Largest RMS residual of the τ fit, mV (`rmse_max_tol`, 1).
    pub tau_rmse_max_mv: f64,
}

impl Default for SubthresholdParams {
    fn default() -> Self {
        SubthresholdParams {
            baseline_interval_s: 0.1,
            deflect_kind: None,
            sag_peak_width_s: 0.005,
            sag_baseline_interval_s: 0.03,
            tau_frac: 0.1,
            tau_min_snr: 20.0,
            tau_rmse_max_mv: 1.0,
        }
    }
}

impl SubthresholdParams {
    /// Rejects NaN and non-physical values before any sample is touched.
    pub fn validate(&self) -> Result<(), SubthresholdError> {
        for (name, value) in [
            ("baseline_interval_s", self.baseline_interval_s),
            ("sag_peak_width_s", self.sag_peak_width_s),
            ("sag_baseline_interval_s", self.sag_baseline_interval_s),
            ("tau_rmse_max_mv", self.tau_rmse_max_mv),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(SubthresholdError::InvalidParameter { name, value, reason: "must be a positive finite number" });
            }
        }
        if !(self.tau_frac.is_finite() && self.tau_frac > 0.0 && self.tau_frac < 1.0) {
            return Err(SubthresholdError::InvalidParameter {
                name: "tau_frac",
                value: self.tau_frac,
                reason: "must lie strictly between 0 and 1",
            });
        }
        if self.tau_min_snr.is_nan() || self.tau_min_snr < 0.0 {
            return Err(SubthresholdError::InvalidParameter { name: "tau_min_snr", value: self.tau_min_snr, reason: "must be >= 0" });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Stimulus helpers
// ---------------------------------------------------------------------------------------------

/// The first square step of a command: its window and amplitude.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStimulus {
    pub window: StimulusWindow,
    /// First sample of the step.
    pub start_index: usize,
    /// Last sample of the step (inclusive).
    pub end_index: usize,
    /// The largest-magnitude command inside the step, pA.
    pub amplitude_pa: f64,
}

/// First step of the command, as IPFX's `stim_features.get_stim_characteristics(i, t,
/// test_pulse=False)` sees a single-step sweep: the step starts one sample after the first change
/// of `i_pa` and ends at the sample before the next change; `start_s = t[start_index]`, `end_s =
/// start_s + (t[end_index] − t[start_index − 1])`. Multi-epoch protocols ("steps dual") get the
/// first epoch, where IPFX would span all of them. `None` when the command has fewer than two changes. Take the window
/// from a sweep whose first step is nonzero; IPFX uses one window for all sweeps of a cell.
pub fn first_step(trace: &SweepTrace<'_>) -> Result<Option<StepStimulus>, SubthresholdError> {
    let axis = trace.validate()?;
    let i = trace.i_pa;
    let mut changes = (0..i.len() - 1).filter(|&k| i[k + 1] != i[k]);
    let (Some(first), Some(second)) = (changes.next(), changes.next()) else {
        return Ok(None);
    };
    let (start_index, end_index) = (first + 1, second);
    if start_index >= end_index {
        return Ok(None);
    }
    let start_s = axis.at(start_index);
    let end_s = start_s + (axis.at(end_index) - axis.at(start_index - 1));
    let (hi, lo) = i[start_index..=end_index]
        .iter()
        .fold((f64::NEG_INFINITY, f64::INFINITY), |(hi, lo), &x| (hi.max(x), lo.min(x)));
    let amplitude_pa = if hi.abs() > lo.abs() { hi } else { lo };
    Ok(Some(StepStimulus { window: StimulusWindow { start_s, end_s }, start_index, end_index, amplitude_pa }))
}

/// IPFX `_step_stim_amp`: the command one sample after the stimulus start, pA.
pub fn step_amplitude_pa(trace: &SweepTrace<'_>, start_s: f64) -> Result<f64, SubthresholdError> {
    let axis = trace.validate()?;
    step_amplitude_on(&axis, trace.i_pa, start_s)
}

fn step_amplitude_on(axis: &TimeAxis<'_>, i_pa: &[f64], start_s: f64) -> Result<f64, SubthresholdError> {
    let k = axis.index_of(start_s, "stimulus start")? + 1;
    i_pa.get(k).copied().ok_or(SubthresholdError::TimeOutOfRange {
        field: "stimulus start (one sample after it is read)",
        value_s: start_s,
        first_s: axis.at(0),
        last_s: axis.at(axis.len() - 1),
    })
}

// ---------------------------------------------------------------------------------------------
// Per-sweep features
// ---------------------------------------------------------------------------------------------

/// IPFX `average_voltage(v, t, start, end)`: mean of `v[idx(start):idx(end)]` (end exclusive).
fn average_voltage(axis: &TimeAxis<'_>, v: &[f64], start_s: f64, end_s: f64, what: &'static str) -> Result<f64, SubthresholdError> {
    let a = axis.index_of(start_s, what)?;
    let b = axis.index_of(end_s, what)?;
    if b <= a {
        // numpy returns NaN (mean of an empty slice) with a warning.
        return Err(SubthresholdError::EmptyInterval { what, start_s, end_s });
    }
    Ok(numpy_mean(&v[a..b]))
}

/// IPFX `baseline_voltage(t, v, start, baseline_interval)` with a given start: mean Vm over
/// [start − baseline_interval, start), mV.
pub fn baseline_voltage_mv(trace: &SweepTrace<'_>, start_s: f64, baseline_interval_s: f64) -> Result<f64, SubthresholdError> {
    let axis = trace.validate()?;
    baseline_on(&axis, trace.v_mv, start_s, baseline_interval_s)
}

fn baseline_on(axis: &TimeAxis<'_>, v: &[f64], start_s: f64, interval_s: f64) -> Result<f64, SubthresholdError> {
    average_voltage(axis, v, start_s - interval_s, start_s, "baseline interval")
}

/// IPFX `voltage_deflection`: the minimum or maximum of `v[idx(start):idx(end)]` and its index
/// (first occurrence). With `kind = None` the extreme follows the sign of the current at the
/// window's midpoint (`max` when ≥ 0).
pub fn voltage_deflection(
    trace: &SweepTrace<'_>,
    window: StimulusWindow,
    kind: Option<DeflectionKind>,
) -> Result<(f64, usize), SubthresholdError> {
    let axis = trace.validate()?;
    window.validate()?;
    deflection_on(&axis, trace.v_mv, trace.i_pa, window, kind).map(|(v, k, _)| (v, k))
}

fn deflection_on(
    axis: &TimeAxis<'_>,
    v: &[f64],
    i: &[f64],
    window: StimulusWindow,
    kind: Option<DeflectionKind>,
) -> Result<(f64, usize, DeflectionKind), SubthresholdError> {
    let a = axis.index_of(window.start_s, "stimulus start")?;
    let b = axis.index_of(window.end_s, "stimulus end")?;
    let kind = match kind {
        Some(k) => k,
        None => {
            let half = axis.index_of((window.end_s - window.start_s) / 2.0 + window.start_s, "stimulus midpoint")?;
            if i[half] >= 0.0 { DeflectionKind::Max } else { DeflectionKind::Min }
        }
    };
    if b <= a {
        // numpy's argmin of an empty slice raises.
        return Err(SubthresholdError::EmptyInterval { what: "stimulus window", start_s: window.start_s, end_s: window.end_s });
    }
    let mut best = a;
    for k in a + 1..b {
        let better = match kind {
            DeflectionKind::Min => v[k] < v[best],
            DeflectionKind::Max => v[k] > v[best],
        };
        if better {
            best = k;
        }
    }
    Ok((v[best], best, kind))
}

/// IPFX `sag(t, v, i, start, end, peak_width, baseline_interval)`: with the minimum `v_peak`
/// averaged over ±peak_width/2, the baseline over `baseline_interval` before the start and the
/// steady state over `baseline_interval` before the end, sag = (peak − steady) / (peak −
/// baseline): the fraction by which the response relaxes back. `None` where IPFX gets NaN or ±inf
/// (zero denominator).
pub fn sag(trace: &SweepTrace<'_>, window: StimulusWindow, params: &SubthresholdParams) -> Result<Option<f64>, SubthresholdError> {
    let axis = trace.validate()?;
    window.validate()?;
    params.validate()?;
    sag_on(&axis, trace.v_mv, trace.i_pa, window, params)
}

fn sag_on(
    axis: &TimeAxis<'_>,
    v: &[f64],
    i: &[f64],
    window: StimulusWindow,
    p: &SubthresholdParams,
) -> Result<Option<f64>, SubthresholdError> {
    let (_, peak, _) = deflection_on(axis, v, i, window, Some(DeflectionKind::Min))?;
    let tp = axis.at(peak);
    let half = p.sag_peak_width_s / 2.0;
    let v_peak_avg = average_voltage(axis, v, tp - half, tp + half, "sag peak average")?;
    let v_baseline = baseline_on(axis, v, window.start_s, p.sag_baseline_interval_s)?;
    let v_steady =
        average_voltage(axis, v, window.end_s - p.sag_baseline_interval_s, window.end_s, "sag steady-state interval")?;
    let s = (v_peak_avg - v_steady) / (v_peak_avg - v_baseline);
    Ok(s.is_finite().then_some(s))
}

/// Coefficients of `y0 + a·exp(−inv_tau·x)`, x in s from the fit start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExponentialFit {
    pub a_mv: f64,
    pub inv_tau_per_s: f64,
    pub y0_mv: f64,
    /// Root-mean-square residual, mV.
    pub rmse_mv: f64,
    /// Iterations of the Levenberg–Marquardt solver.
    pub iterations: usize,
}

/// Why a membrane time constant is (not) available; IPFX's NaN cases and its one exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TauStatus {
    /// Fitted; `tau_s` is set.
    Fitted,
    /// |peak − baseline| / std(baseline) below `tau_min_snr` (IPFX returns NaN).
    LowSignalToNoise,
    /// The response never reaches the `tau_frac` level after the start (IPFX raises
    /// `FeatureError("could not find interval for time constant estimate")`).
    NoFitInterval,
    /// Fewer than 3 samples between the fit start and end (scipy's `curve_fit` raises).
    FitWindowTooShort,
    /// The solver did not converge (scipy raises RuntimeError; IPFX returns NaN).
    FitDidNotConverge,
    /// RMS residual above `tau_rmse_max_mv` (IPFX returns NaN).
    RmseAboveTolerance,
    /// Only hyperpolarizing sweeps get a τ (IPFX's `time_constant` assumes one).
    NotHyperpolarizing,
}

/// Result of the membrane time constant estimate of one sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeConstant {
    /// τ in s (IPFX `tau`); `None` unless `status` is `Fitted`.
    pub tau_s: Option<f64>,
    pub status: TauStatus,
    /// |v_peak − v_baseline| / std of the baseline samples (∞ for a noiseless baseline, which
    /// JSON writes as null); NaN (null) when not computed (`NotHyperpolarizing`).
    pub signal_to_noise: f64,
    /// First sample of the fit (where the response reaches `tau_frac` of the deflection).
    pub fit_start_index: Option<usize>,
    /// End of the fit (exclusive): the peak deflection, or `max_fit_end` if earlier.
    pub fit_end_index: usize,
    pub fit: Option<ExponentialFit>,
}

/// IPFX `time_constant(t, v, i, start, end, max_fit_end, frac, baseline_interval, min_snr)`.
///
/// Finds the minimum inside the window (or `max_fit_end` if that comes first), checks the
/// signal-to-noise ratio against the baseline noise, starts the fit at the first sample after the
/// stimulus start whose voltage is at or below `v_base + frac·(v_peak − v_base)`, and fits
/// `y0 + a·exp(−x/τ)` up to the peak (exclusive) with [`fit_membrane_time_constant`].
pub fn time_constant(
    trace: &SweepTrace<'_>,
    window: StimulusWindow,
    max_fit_end_s: Option<f64>,
    params: &SubthresholdParams,
) -> Result<TimeConstant, SubthresholdError> {
    let axis = trace.validate()?;
    window.validate()?;
    params.validate()?;
    time_constant_on(&axis, trace.v_mv, trace.i_pa, window, max_fit_end_s, params)
}

fn time_constant_on(
    axis: &TimeAxis<'_>,
    v: &[f64],
    i: &[f64],
    window: StimulusWindow,
    max_fit_end_s: Option<f64>,
    p: &SubthresholdParams,
) -> Result<TimeConstant, SubthresholdError> {
    let (mut v_peak, mut peak, _) = deflection_on(axis, v, i, window, Some(DeflectionKind::Min))?;
    if let Some(t_max) = max_fit_end_s {
        let k = axis.index_of(t_max, "max_fit_end_s")?;
        if k < peak {
            peak = k;
            v_peak = v[k];
        }
    }
    let v_baseline = baseline_on(axis, v, window.start_s, p.baseline_interval_s)?;
    let start = axis.index_of(window.start_s, "stimulus start")?;
    let noise_start = axis.index_of(window.start_s - p.baseline_interval_s, "baseline interval")?;
    let signal = (v_baseline - v_peak).abs();
    // The baseline above already required a non-empty [noise_start, start).
    let noise = numpy_std(&v[noise_start..start]);
    let snr = if noise == 0.0 { f64::INFINITY } else { signal / noise };
    let mut out = TimeConstant {
        tau_s: None,
        status: TauStatus::LowSignalToNoise,
        signal_to_noise: snr,
        fit_start_index: None,
        fit_end_index: peak,
        fit: None,
    };
    if snr < p.tau_min_snr {
        return Ok(out);
    }
    let level = p.tau_frac * (v_peak - v_baseline) + v_baseline;
    let Some(fit_start) = (start..v.len()).find(|&k| v[k] <= level) else {
        out.status = TauStatus::NoFitInterval;
        return Ok(out);
    };
    out.fit_start_index = Some(fit_start);
    let (status, fit) = fit_on(axis, v, axis.at(fit_start), axis.at(peak), p.tau_rmse_max_mv)?;
    out.status = status;
    out.fit = fit;
    if status == TauStatus::Fitted {
        out.tau_s = fit.map(|f| 1.0 / f.inv_tau_per_s);
    }
    Ok(out)
}

/// IPFX `fit_membrane_time_constant(t, v, start, end, rmse_max_tol)`: least-squares fit of
/// `y0 + a·exp(−inv_tau·x)` to `v[idx(start):idx(end)]`, x = t − t[idx(start)], from IPFX's
/// starting point `(a, inv_tau, y0) = (v[i0] − v[i1], 50, v[i1])`, i0 = idx(start), i1 =
/// idx(end). Returns the status
/// (`Fitted`, `FitWindowTooShort`, `FitDidNotConverge` or `RmseAboveTolerance`) and the fit
/// coefficients when the solver converged.
pub fn fit_membrane_time_constant(
    trace: &SweepTrace<'_>,
    start_s: f64,
    end_s: f64,
    rmse_max_mv: f64,
) -> Result<(TauStatus, Option<ExponentialFit>), SubthresholdError> {
    let axis = trace.validate()?;
    if rmse_max_mv.is_nan() || rmse_max_mv <= 0.0 {
        return Err(SubthresholdError::InvalidParameter { name: "rmse_max_mv", value: rmse_max_mv, reason: "must be > 0" });
    }
    fit_on(&axis, trace.v_mv, start_s, end_s, rmse_max_mv)
}

fn fit_on(
    axis: &TimeAxis<'_>,
    v: &[f64],
    start_s: f64,
    end_s: f64,
    rmse_max_mv: f64,
) -> Result<(TauStatus, Option<ExponentialFit>), SubthresholdError> {
    let a = axis.index_of(start_s, "fit start")?;
    let b = axis.index_of(end_s, "fit end")?;
    // curve_fit needs at least as many points as parameters.
    if b < a + 3 {
        return Ok((TauStatus::FitWindowTooShort, None));
    }
    let t_a = axis.at(a);
    let x: Vec<f64> = (a..b).map(|k| axis.at(k) - t_a).collect();
    let y = &v[a..b];
    let Some(fit) = levenberg_marquardt_exp(&x, y, [v[a] - v[b], 50.0, v[b]]) else {
        return Ok((TauStatus::FitDidNotConverge, None));
    };
    let status = if fit.rmse_mv > rmse_max_mv { TauStatus::RmseAboveTolerance } else { TauStatus::Fitted };
    Ok((status, Some(fit)))
}

/// Sum of squared residuals of `y0 + a·exp(−k·x)`; non-finite when exp overflows.
fn exp_cost(x: &[f64], y: &[f64], [a, k, y0]: [f64; 3]) -> f64 {
    x.iter().zip(y).map(|(&xi, &yi)| {
        let r = y0 + a * (-k * xi).exp() - yi;
        r * r
    }).sum()
}

/// Solves the 3×3 system `m·d = rhs` by Gaussian elimination with partial pivoting.
fn solve3(mut m: [[f64; 3]; 3], mut rhs: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let piv = (col..3).max_by(|&r, &s| m[r][col].abs().total_cmp(&m[s][col].abs()))?;
        let pivot = m[piv][col];
        if pivot == 0.0 || !pivot.is_finite() {
            return None;
        }
        m.swap(col, piv);
        rhs.swap(col, piv);
        for r in col + 1..3 {
            let f = m[r][col] / m[col][col];
            let pivot_row = m[col];
            for (x, p) in m[r][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            rhs[r] -= f * rhs[col];
        }
    }
    let mut d = [0.0; 3];
    for r in (0..3).rev() {
        let s: f64 = (r + 1..3).map(|c| m[r][c] * d[c]).sum();
        d[r] = (rhs[r] - s) / m[r][r];
    }
    d.iter().all(|v| v.is_finite()).then_some(d)
}

/// Most iterations of the solver: MINPACK's default budget for 3 parameters in `curve_fit`
/// (`maxfev = 200·(n + 1)` function evaluations), which bounds ours from above.
const LM_MAX_ITERATIONS: usize = 800;

/// Levenberg–Marquardt for `y0 + a·exp(−k·x)` with the analytic Jacobian (∂/∂a = e, ∂/∂k =
/// −a·x·e, ∂/∂y0 = 1, e = exp(−k·x)) and Marquardt's diagonal scaling, which makes the steps
/// independent of the very different scales of a (mV), k (1/s) and y0 (mV). The normal
/// equations are accumulated in one pass per iteration (no allocation). Stops when a step no
/// longer changes the parameters or the cost beyond rounding; `None` when the iteration budget is
/// exhausted or the cost is not finite at the start (scipy raises, IPFX returns NaN).
fn levenberg_marquardt_exp(x: &[f64], y: &[f64], p0: [f64; 3]) -> Option<ExponentialFit> {
    let mut p = p0;
    let mut cost = exp_cost(x, y, p);
    if !cost.is_finite() {
        return None;
    }
    let mut lambda = 1e-3;
    for iteration in 1..=LM_MAX_ITERATIONS {
        let [a, k, y0] = p;
        let mut jtj = [[0.0f64; 3]; 3];
        let mut jtr = [0.0f64; 3];
        for (&xi, &yi) in x.iter().zip(y) {
            let e = (-k * xi).exp();
            let r = y0 + a * e - yi;
            let j = [e, -a * xi * e, 1.0];
            for row in 0..3 {
                jtr[row] += j[row] * r;
                for col in row..3 {
                    jtj[row][col] += j[row] * j[col];
                }
            }
        }
        (jtj[1][0], jtj[2][0], jtj[2][1]) = (jtj[0][1], jtj[0][2], jtj[1][2]);
        // Gradient small against the scale of the problem: converged (MINPACK's gtol test is
        // the cosine between residual and Jacobian columns).
        let cosine = (0..3)
            .map(|c| if jtj[c][c] > 0.0 { jtr[c].abs() / (jtj[c][c] * cost).sqrt() } else { 0.0 })
            .fold(0.0, f64::max);
        if cost == 0.0 || cosine <= 1e-14 {
            return Some(finish(p, cost, x.len(), iteration));
        }
        // Inner loop: raise λ until a step lowers the cost.
        loop {
            let mut m = jtj;
            for d in 0..3 {
                m[d][d] += lambda * jtj[d][d].max(f64::MIN_POSITIVE);
            }
            let step = solve3(m, [-jtr[0], -jtr[1], -jtr[2]]);
            if let Some(d) = step {
                let trial = [p[0] + d[0], p[1] + d[1], p[2] + d[2]];
                let trial_cost = exp_cost(x, y, trial);
                if trial_cost.is_finite() && trial_cost <= cost {
                    let small_step = (0..3).all(|c| d[c].abs() <= 1e-13 * (p[c].abs() + 1e-300));
                    let small_gain = cost - trial_cost <= 1e-15 * cost;
                    p = trial;
                    cost = trial_cost;
                    lambda = (lambda / 10.0).max(1e-15);
                    if small_step || small_gain {
                        return Some(finish(p, cost, x.len(), iteration));
                    }
                    break;
                }
            }
            lambda *= 10.0;
            if lambda > 1e20 {
                // No descent direction left at this precision: the minimum is reached.
                return Some(finish(p, cost, x.len(), iteration));
            }
        }
    }
    None
}

fn finish(p: [f64; 3], cost: f64, n: usize, iterations: usize) -> ExponentialFit {
    ExponentialFit { a_mv: p[0], inv_tau_per_s: p[1], y0_mv: p[2], rmse_mv: (cost / n as f64).sqrt(), iterations }
}

/// IPFX `input_resistance(t_set, i_set, v_set, start, end, baseline_interval)`, MΩ: for each
/// sweep (assumed hyperpolarizing) the minimum voltage in the window and the current at that
/// sample; the slope of the least-squares line v = m·i + c times 1e3 (mV/pA = GΩ). With a single
/// sweep its baseline Vm at 0 pA is added as the second point, as IPFX does.
pub fn input_resistance_mohm(
    sweeps: &[SweepTrace<'_>],
    window: StimulusWindow,
    baseline_interval_s: f64,
) -> Result<f64, SubthresholdError> {
    window.validate()?;
    if !(baseline_interval_s.is_finite() && baseline_interval_s > 0.0) {
        return Err(SubthresholdError::InvalidParameter {
            name: "baseline_interval_s",
            value: baseline_interval_s,
            reason: "must be a positive finite number",
        });
    }
    if sweeps.is_empty() {
        return Err(SubthresholdError::NoSweeps);
    }
    let mut points = Vec::with_capacity(sweeps.len() + 1);
    for s in sweeps {
        let axis = s.validate()?;
        let (v, k, _) = deflection_on(&axis, s.v_mv, s.i_pa, window, Some(DeflectionKind::Min))?;
        points.push((s.i_pa[k], v));
    }
    if sweeps.len() == 1 {
        let s = &sweeps[0];
        let axis = s.validate()?;
        points.push((0.0, baseline_on(&axis, s.v_mv, window.start_s, baseline_interval_s)?));
    }
    line_slope(&points).map(|m| m * 1e3).ok_or(SubthresholdError::DegenerateCurrents { i_pa: points[0].0 })
}

/// Least-squares slope of y on x (numpy `lstsq` of [x, 1] for a full-rank design); `None` when
/// all x are equal (rank-deficient: numpy would return its minimum-norm solution).
pub(crate) fn line_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0 && sxx.is_finite()).then(|| sxy / sxx)
}

/// The per-sweep subthreshold features IPFX's long-square analysis records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubthresholdFeatures {
    /// Command one sample after the stimulus start, pA (IPFX `stim_amp`).
    pub stim_amp_pa: f64,
    /// Mean Vm over `baseline_interval_s` before the start, mV (IPFX `v_baseline`).
    pub v_baseline_mv: f64,
    /// Peak deflection in the window, mV, its sample index and the extreme taken (IPFX
    /// `peak_deflect`).
    pub peak_deflect_mv: f64,
    pub peak_deflect_index: usize,
    pub peak_deflect_kind: DeflectionKind,
    /// Minimum Vm in the window, mV, and the current there, pA (the input-resistance point).
    pub min_deflect_mv: f64,
    pub min_deflect_index: usize,
    pub i_at_min_deflect_pa: f64,
    /// IPFX `sag` (dimensionless); `None` for a zero denominator.
    pub sag: Option<f64>,
    /// τ with the fit ending at the peak deflection (no `max_fit_end`); only for
    /// hyperpolarizing steps, otherwise status `NotHyperpolarizing`.
    pub tau: TimeConstant,
}

/// All subthreshold features of one sweep (see [`SubthresholdFeatures`]).
pub fn subthreshold_features(
    trace: &SweepTrace<'_>,
    window: StimulusWindow,
    params: &SubthresholdParams,
) -> Result<SubthresholdFeatures, SubthresholdError> {
    let axis = trace.validate()?;
    window.validate()?;
    params.validate()?;
    let (v, i) = (trace.v_mv, trace.i_pa);
    let stim_amp_pa = step_amplitude_on(&axis, i, window.start_s)?;
    let v_baseline_mv = baseline_on(&axis, v, window.start_s, params.baseline_interval_s)?;
    let (peak_deflect_mv, peak_deflect_index, peak_deflect_kind) = deflection_on(&axis, v, i, window, params.deflect_kind)?;
    let (min_deflect_mv, min_deflect_index, _) = deflection_on(&axis, v, i, window, Some(DeflectionKind::Min))?;
    let sag = sag_on(&axis, v, i, window, params)?;
    let tau = if stim_amp_pa < 0.0 {
        time_constant_on(&axis, v, i, window, None, params)?
    } else {
        TimeConstant {
            tau_s: None,
            status: TauStatus::NotHyperpolarizing,
            signal_to_noise: f64::NAN,
            fit_start_index: None,
            fit_end_index: min_deflect_index,
            fit: None,
        }
    };
    Ok(SubthresholdFeatures {
        stim_amp_pa,
        v_baseline_mv,
        peak_deflect_mv,
        peak_deflect_index,
        peak_deflect_kind,
        min_deflect_mv,
        min_deflect_index,
        i_at_min_deflect_pa: i[min_deflect_index],
        sag,
        tau,
    })
}

/// Test data shared with `super::cell`'s tests: the pyABF recordings of `tests/fixtures/abf`.
#[cfg(test)]
pub(crate) mod test_data {
    /// One recording: per sweep (command pA, membrane potential mV), 20 kHz.
    pub(crate) struct Recording {
        pub sweeps: Vec<(Vec<f64>, Vec<f64>)>,
    }

    pub(crate) const RATE_HZ: f64 = 20_000.0;

    pub(crate) fn fixture(path: &str) -> String {
        format!("{}/tests/fixtures/{}", env!("CARGO_MANIFEST_DIR"), path)
    }

    /// Decodes a zstd-compressed .npy (little-endian float32, shape [sweeps, 2, samples]).
    pub(crate) fn load(name: &str) -> Recording {
        let raw = std::fs::read(fixture(&format!("abf/{name}.pyabf.npy.zst"))).unwrap();
        let npy = zstd::decode_all(&raw[..]).unwrap();
        assert_eq!(&npy[..6], b"\x93NUMPY");
        let (hlen, off) = if npy[6] == 1 {
            (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10)
        } else {
            (u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize, 12)
        };
        let header = std::str::from_utf8(&npy[off..off + hlen]).unwrap();
        assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
        let shape: Vec<usize> = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let (ns, nc, n) = (shape[0], shape[1], shape[2]);
        assert_eq!(nc, 2);
        let data = &npy[off + hlen..];
        let at = |k: usize| f32::from_le_bytes([data[4 * k], data[4 * k + 1], data[4 * k + 2], data[4 * k + 3]]) as f64;
        let sweeps = (0..ns)
            .map(|s| {
                let i = (0..n).map(|k| at((s * 2) * n + k)).collect();
                let v = (0..n).map(|k| at((s * 2 + 1) * n + k)).collect();
                (i, v)
            })
            .collect();
        Recording { sweeps }
    }

    pub(crate) fn reference() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture("cellfeat/ipfx_cell_reference.json")).unwrap()).unwrap()
    }

    pub(crate) const FILES: [&str; 2] = ["171116sh_0018", "17o05028_ic_steps"];
}

#[cfg(test)]
mod tests {
    use super::test_data::{FILES, RATE_HZ, load, reference};
    use super::*;

    fn trace<'a>(i: &'a [f64], v: &'a [f64]) -> SweepTrace<'a> {
        SweepTrace { time: Timebase::from_rate(RATE_HZ), v_mv: v, i_pa: i }
    }

    fn window_of(doc: &serde_json::Value) -> StimulusWindow {
        StimulusWindow { start_s: doc["window"]["start_s"].as_f64().unwrap(), end_s: doc["window"]["end_s"].as_f64().unwrap() }
    }

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn first_step_window_matches_ipfx_get_stim_characteristics() {
        let doc = reference();
        for name in FILES {
            let rec = load(name);
            let w = &doc["files"][name]["window"];
            let (i, v) = &rec.sweeps[0];
            let step = first_step(&trace(i, v)).unwrap().unwrap();
            assert_eq!(step.start_index as u64, w["start_index"].as_u64().unwrap(), "{name}");
            assert_eq!(step.end_index as u64, w["end_index"].as_u64().unwrap(), "{name}");
            assert_eq!(step.window.start_s, w["start_s"].as_f64().unwrap(), "{name}");
            assert_eq!(step.window.end_s, w["end_s"].as_f64().unwrap(), "{name}");
            assert_eq!(step.amplitude_pa, rec.sweeps[0].0[step.start_index]);
        }
    }

    /// Baseline, deflections, stimulus amplitude and sag of every sweep of both recordings.
    #[test]
    fn per_sweep_voltages_and_sag_match_ipfx() {
        let doc = reference();
        let params = SubthresholdParams::default();
        let (mut worst_mv, mut worst_sag) = (0.0f64, 0.0f64);
        for name in FILES {
            let rec = load(name);
            let file = &doc["files"][name];
            let window = window_of(file);
            for (s, (i, v)) in rec.sweeps.iter().enumerate() {
                let r = &file["sweeps"][s];
                let f = subthreshold_features(&trace(i, v), window, &params).unwrap();
                let g = |k: &str| r[k].as_f64().unwrap();
                assert_eq!(f.stim_amp_pa, g("stim_amp_pa"), "{name}[{s}] stim_amp");
                for (key, ours) in [("v_baseline_mv", f.v_baseline_mv), ("peak_deflect_mv", f.peak_deflect_mv)] {
                    let err = (ours - g(key)).abs();
                    assert!(err <= 1e-9, "{name}[{s}] {key}: ours {ours} ipfx {}", g(key));
                    worst_mv = worst_mv.max(err);
                }
                assert_eq!(f.peak_deflect_index as u64, r["peak_deflect_index"].as_u64().unwrap(), "{name}[{s}]");
                for (kind, key) in [(DeflectionKind::Min, "deflect_min"), (DeflectionKind::Max, "deflect_max")] {
                    let (dv, dk) = voltage_deflection(&trace(i, v), window, Some(kind)).unwrap();
                    assert_eq!(dk as u64, r[key]["index"].as_u64().unwrap(), "{name}[{s}] {key}");
                    assert_eq!(dv, r[key]["v_mv"].as_f64().unwrap(), "{name}[{s}] {key}");
                }
                assert_eq!(f.min_deflect_index as u64, r["deflect_min"]["index"].as_u64().unwrap());
                let e = rel(f.sag.unwrap(), g("sag"));
                assert!(e <= 1e-9, "{name}[{s}] sag: ours {:?} ipfx {}", f.sag, g("sag"));
                worst_sag = worst_sag.max(e);
            }
        }
        eprintln!("per-sweep: max |ΔV| {worst_mv:e} mV, max sag rel error {worst_sag:e}");
    }

    fn check_tau(ours: &TimeConstant, r: &serde_json::Value, what: &str) -> f64 {
        assert_eq!(ours.fit_end_index as u64, r["fit_end_index"].as_u64().unwrap(), "{what} fit end");
        let snr = r["snr"].as_f64().unwrap();
        assert!(rel(ours.signal_to_noise, snr) <= 1e-9, "{what} snr ours {} ipfx {snr}", ours.signal_to_noise);
        match r["tau_s"].as_f64() {
            None => {
                assert_eq!(ours.tau_s, None, "{what}: IPFX gives NaN");
                assert_eq!(ours.status, TauStatus::LowSignalToNoise, "{what}");
                0.0
            }
            Some(tau) => {
                assert_eq!(ours.status, TauStatus::Fitted, "{what}");
                assert_eq!(ours.fit_start_index.map(|k| k as u64), r["fit_start_index"].as_u64(), "{what} fit start");
                let fit = ours.fit.unwrap();
                assert!((fit.a_mv - r["fit_a_mv"].as_f64().unwrap()).abs() <= 0.1, "{what} a");
                assert!((fit.y0_mv - r["fit_y0_mv"].as_f64().unwrap()).abs() <= 0.1, "{what} y0");
                let e = rel(ours.tau_s.unwrap(), tau);
                assert!(e <= 0.01, "{what} tau: ours {:?} ipfx {tau}", ours.tau_s);
                e
            }
        }
    }

    /// τ of every hyperpolarizing sweep, with the fit ending at its own peak and at the median
    /// peak time of the cell (the LongSquareAnalysis variant).
    #[test]
    fn time_constants_match_ipfx() {
        let doc = reference();
        let params = SubthresholdParams::default();
        let mut worst = 0.0f64;
        let mut fitted = 0;
        for name in FILES {
            let rec = load(name);
            let file = &doc["files"][name];
            let window = window_of(file);
            let median_peak = file["cell"]["median_peak_time_s"].as_f64().unwrap();
            for (s, (i, v)) in rec.sweeps.iter().enumerate() {
                let r = &file["sweeps"][s];
                if r["stim_amp_pa"].as_f64().unwrap() >= 0.0 {
                    let f = subthreshold_features(&trace(i, v), window, &params).unwrap();
                    assert_eq!(f.tau.status, TauStatus::NotHyperpolarizing);
                    continue;
                }
                let own = time_constant(&trace(i, v), window, None, &params).unwrap();
                worst = worst.max(check_tau(&own, &r["tau_no_max_fit_end"], &format!("{name}[{s}]")));
                let med = time_constant(&trace(i, v), window, Some(median_peak), &params).unwrap();
                worst = worst.max(check_tau(&med, &r["tau_median_peak_fit_end"], &format!("{name}[{s}] median")));
                fitted += own.tau_s.is_some() as usize + med.tau_s.is_some() as usize;
            }
        }
        assert!(fitted >= 6, "only {fitted} fits compared");
        eprintln!("tau: {fitted} fits, max rel error {worst:e}");
    }

    #[test]
    fn input_resistance_matches_ipfx() {
        let doc = reference();
        let mut worst = 0.0f64;
        for name in FILES {
            let rec = load(name);
            let file = &doc["files"][name];
            let window = window_of(file);
            let all = &file["input_resistance_all_hyperpolarizing"];
            let traces: Vec<SweepTrace> = all["sweeps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    let (i, v) = &rec.sweeps[k.as_u64().unwrap() as usize];
                    trace(i, v)
                })
                .collect();
            let ri = input_resistance_mohm(&traces, window, 0.1).unwrap();
            let e = rel(ri, all["mohm"].as_f64().unwrap());
            assert!(e <= 0.01, "{name}: ours {ri} ipfx {}", all["mohm"]);
            worst = worst.max(e);
            let one = &file["input_resistance_single_sweep"];
            let (i, v) = &rec.sweeps[one["sweep"].as_u64().unwrap() as usize];
            let ri1 = input_resistance_mohm(&[trace(i, v)], window, 0.1).unwrap();
            let e = rel(ri1, one["mohm"].as_f64().unwrap());
            assert!(e <= 0.01, "{name} single sweep: ours {ri1} ipfx {}", one["mohm"]);
            worst = worst.max(e);
        }
        eprintln!("input resistance: max rel error {worst:e}");
    }

    /// Explicit sample times equal to the uniform axis give identical features.
    #[test]
    fn explicit_sample_times_agree_with_uniform() {
        let rec = load(FILES[0]);
        let (i, v) = &rec.sweeps[1];
        let dt = 1.0 / RATE_HZ;
        let t: Vec<f64> = (0..v.len()).map(|k| k as f64 * dt).collect();
        let w = StimulusWindow { start_s: 0.14685, end_s: 0.64685 };
        let p = SubthresholdParams::default();
        let uniform = subthreshold_features(&trace(i, v), w, &p).unwrap();
        let explicit = subthreshold_features(&SweepTrace { time: Timebase::Samples(&t), v_mv: v, i_pa: i }, w, &p).unwrap();
        assert_eq!(uniform, explicit);
        let mut back = t.clone();
        back[10] = back[9] - 1e-6;
        let bad = SweepTrace { time: Timebase::Samples(&back), v_mv: v, i_pa: i };
        assert!(matches!(subthreshold_features(&bad, w, &p), Err(SubthresholdError::InvalidTimebase(_))));
    }

    /// The solver recovers known coefficients of a noiseless exponential from IPFX's start.
    #[test]
    fn exponential_fit_recovers_exact_coefficients() {
        let x: Vec<f64> = (0..2000).map(|k| k as f64 * 5e-5).collect();
        let y: Vec<f64> = x.iter().map(|&t| -80.0 + 12.0 * (-t / 0.025).exp()).collect();
        let n = y.len() - 1;
        let fit = levenberg_marquardt_exp(&x, &y, [y[0] - y[n], 50.0, y[n]]).unwrap();
        assert!((fit.inv_tau_per_s - 40.0).abs() < 1e-8, "{fit:?}");
        assert!((fit.a_mv - 12.0).abs() < 1e-9 && (fit.y0_mv + 80.0).abs() < 1e-9, "{fit:?}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let rec = load(FILES[0]);
        let (i, v) = &rec.sweeps[0];
        let w = StimulusWindow { start_s: 0.14685, end_s: 0.64685 };
        let p = SubthresholdParams::default();
        let mut nan_v = v.clone();
        nan_v[500] = f64::NAN;
        assert!(matches!(
            subthreshold_features(&trace(i, &nan_v), w, &p),
            Err(SubthresholdError::NonFinite { field: "v_mv", index: 500, .. })
        ));
        assert!(matches!(
            subthreshold_features(&trace(&i[..100], v), w, &p),
            Err(SubthresholdError::LengthMismatch { field: "i_pa", len: 100, .. })
        ));
        // Window outside the trace, reversed window, window too early for the baseline.
        let late = StimulusWindow { start_s: 2.0, end_s: 4.0 };
        assert!(matches!(subthreshold_features(&trace(i, v), late, &p), Err(SubthresholdError::TimeOutOfRange { .. })));
        let rev = StimulusWindow { start_s: 0.6, end_s: 0.2 };
        assert!(matches!(subthreshold_features(&trace(i, v), rev, &p), Err(SubthresholdError::InvalidWindow { .. })));
        let early = StimulusWindow { start_s: 0.05, end_s: 0.5 };
        assert!(matches!(
            subthreshold_features(&trace(i, v), early, &p),
            Err(SubthresholdError::TimeOutOfRange { field: "baseline interval", .. })
        ));
        // Bad parameters and timebase.
        let bad = SubthresholdParams { tau_frac: f64::NAN, ..SubthresholdParams::default() };
        assert!(matches!(subthreshold_features(&trace(i, v), w, &bad), Err(SubthresholdError::InvalidParameter { name: "tau_frac", .. })));
        let zero_dt = SweepTrace { time: Timebase::Uniform { t0_s: 0.0, dt_s: 0.0 }, v_mv: v, i_pa: i };
        assert!(matches!(subthreshold_features(&zero_dt, w, &p), Err(SubthresholdError::InvalidTimebase(_))));
        let short = SweepTrace { time: Timebase::from_rate(RATE_HZ), v_mv: &v[..1], i_pa: &i[..1] };
        assert!(matches!(subthreshold_features(&short, w, &p), Err(SubthresholdError::TooShort { .. })));
        // No sweeps / identical currents for the input resistance.
        assert_eq!(input_resistance_mohm(&[], w, 0.1), Err(SubthresholdError::NoSweeps));
        assert!(matches!(
            input_resistance_mohm(&[trace(i, v), trace(i, v)], w, 0.1),
            Err(SubthresholdError::DegenerateCurrents { .. })
        ));
        // A flat command has no step; a flat response gives a NaN-free "no sag".
        let flat_i = vec![0.0; 20_000];
        let flat_v = vec![-65.0; 20_000];
        assert_eq!(first_step(&trace(&flat_i, &flat_v)).unwrap(), None);
        let w1 = StimulusWindow { start_s: 0.2, end_s: 0.8 };
        let f = subthreshold_features(&trace(&flat_i, &flat_v), w1, &p).unwrap();
        assert_eq!(f.sag, None);
        // A hyperpolarizing step whose response never moves: infinite SNR is not reached (0/0).
        let neg_i = vec![-50.0; 20_000];
        let tau = time_constant(&trace(&neg_i, &flat_v), w1, None, &p).unwrap();
        assert_eq!(tau.tau_s, None);
        // Too few samples to fit.
        assert_eq!(fit_membrane_time_constant(&trace(i, v), 0.2, 0.2001, 1.0).unwrap(), (TauStatus::FitWindowTooShort, None));
    }
}
