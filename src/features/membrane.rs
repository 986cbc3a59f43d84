//! Passive membrane parameters (input resistance, capacitance, resting potential, time constant)
//! from subthreshold fluctuations, by least squares on the membrane equation.
//!
//! Method (the Allen Institute's GLIF fitting, Teeter et al. 2018, Nat. Commun. 9:709, Methods
//! "Fitting of the LIF parameters"; also the Allen Cell Types GLIF technical white paper): below
//! threshold a leaky membrane obeys C·dV/dt = I − (V − El)/R, i.e.
//!
//!   dV/dt = a·V + b·I + c,   a = −1/(R·C),  b = 1/C,  c = El/(R·C),
//!
//! which is linear in (a, b, c). Regressing the sampled derivative (V[n+1] − V[n])·rate on V and I
//! over every usable pair of samples gives C = 1/b, R = −b/a, El = −c/a and τ = R·C = −1/a. A noisy
//! current is what makes V and I vary independently, so the three coefficients separate; a step
//! stimulus leaves the problem nearly singular (reported, not solved).
//!
//! Which samples enter a pair is the [`Scheme`]: the forward-Euler pairing V[n], I[n]; AllenSDK's
//! `GlifNeuron.run`, whose voltage sample n+1 is the state after integrating stimulus sample n+1
//! (so its output satisfies the model exactly with V[n], I[n+1], and the fit recovers a GLIF1
//! model's R, C and El to rounding); or the midpoint pairing for recordings, where the derivative
//! of a continuous signal between two samples is best matched by the means of V and I over them.
//!
//! A pair is used only when both voltages and the current(s) it reads are finite and neither
//! sample lies in an excluded window (spikes and their after-hyperpolarisation, which the linear
//! equation does not describe). AllenSDK's spike cuts are NaN, so a simulated GLIF trace needs no
//! spike windows.
//!
//! Units: V in mV, I in pA, rate in Hz; then b is in mV/(s·pA), so C = 1e3/b pF, R = −1e3·b/a MΩ,
//! El = −c/a mV and τ = −1e3/a ms.

/// Which current and voltage samples pair with the step from V[n] to V[n+1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// V[n] and I[n]: forward Euler with the current at the start of the step.
    Forward,
    /// V[n] and I[n+1]: AllenSDK's `GlifNeuron.run` (voltage sample n+1 integrates stimulus n+1).
    Allensdk,
    /// (V[n] + V[n+1]) / 2 and (I[n] + I[n+1]) / 2: a recording, derivative at the interval's middle.
    Midpoint,
}

/// One fit. `r_mohm`, `c_pf`, `el_mv` and `tau_ms` are the raw least-squares values: on a
/// recording contaminated by active currents they can come out non-physical (negative), which
/// `r2` and the caller then judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MembraneFit {
    pub r_mohm: f64,
    pub c_pf: f64,
    pub el_mv: f64,
    pub tau_ms: f64,
    /// Pairs of samples that entered the regression.
    pub pairs: usize,
    /// Coefficient of determination of the dV/dt regression (1 = the equation holds exactly).
    pub r2: f64,
}

/// Why there is no fit (the pair count still travels with it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoFit {
    #[error("{pairs} usable sample pairs, fewer than the {min} needed")]
    TooFewPairs { pairs: usize, min: usize },
    #[error("V and I are collinear over the {pairs} usable pairs (a step or a constant current cannot separate R from C)")]
    Singular { pairs: usize },
}

impl NoFit {
    pub fn pairs(&self) -> usize {
        match *self {
            NoFit::TooFewPairs { pairs, .. } | NoFit::Singular { pairs } => pairs,
        }
    }
}

/// Fits the membrane equation to one sweep. `v_mv` and `i_pa` are the same length (the shorter
/// length is used otherwise); `usable(n)` says whether sample n may enter a pair (time windows,
/// spike exclusions). `min_pairs` is at least 3 (three unknowns).
pub fn fit_membrane(
    v_mv: &[f64],
    i_pa: &[f64],
    rate_hz: f64,
    scheme: Scheme,
    min_pairs: usize,
    usable: impl Fn(usize) -> bool,
) -> Result<MembraneFit, NoFit> {
    let n = v_mv.len().min(i_pa.len());
    let min = min_pairs.max(3);
    // (x1 = V, x2 = I, y = dV/dt) of each usable pair.
    let rows: Vec<[f64; 3]> = (0..n.saturating_sub(1))
        .filter(|&k| usable(k) && usable(k + 1))
        .filter_map(|k| {
            let (v0, v1) = (v_mv[k], v_mv[k + 1]);
            let (x1, x2) = match scheme {
                Scheme::Forward => (v0, i_pa[k]),
                Scheme::Allensdk => (v0, i_pa[k + 1]),
                Scheme::Midpoint => (0.5 * (v0 + v1), 0.5 * (i_pa[k] + i_pa[k + 1])),
            };
            let y = (v1 - v0) * rate_hz;
            (x1.is_finite() && x2.is_finite() && y.is_finite()).then_some([x1, x2, y])
        })
        .collect();
    let pairs = rows.len();
    if pairs < min {
        return Err(NoFit::TooFewPairs { pairs, min });
    }
    // Centred normal equations: the intercept drops out, and the 2x2 system in (a, b) is solved on
    // deviations from the means, which keeps it well conditioned when V sits far from zero.
    let m = pairs as f64;
    let mean = |j: usize| rows.iter().map(|r| r[j]).sum::<f64>() / m;
    let (mv, mi, my) = (mean(0), mean(1), mean(2));
    let (mut svv, mut sii, mut svi, mut svy, mut siy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for r in &rows {
        let (dv, di, dy) = (r[0] - mv, r[1] - mi, r[2] - my);
        svv += dv * dv;
        sii += di * di;
        svi += dv * di;
        svy += dv * dy;
        siy += di * dy;
        syy += dy * dy;
    }
    let det = svv * sii - svi * svi;
    // Collinear up to rounding: |corr(V, I)| within 1e-10 of 1, or a constant regressor.
    if !(det > 1e-10 * svv * sii) {
        return Err(NoFit::Singular { pairs });
    }
    let a = (sii * svy - svi * siy) / det;
    let b = (svv * siy - svi * svy) / det;
    let c = my - a * mv - b * mi;
    let explained = a * svy + b * siy;
    let r2 = if syy > 0.0 { explained / syy } else { 1.0 };
    Ok(MembraneFit { r_mohm: -1e3 * b / a, c_pf: 1e3 / b, el_mv: -c / a, tau_ms: -1e3 / a, pairs, r2 })
}

/// Which samples of a sweep may enter the fit: a time window, minus a neighbourhood of each spike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitWindow {
    /// First fitted time; the first sample at or after it [s].
    pub start_s: f64,
    /// Last fitted time, the sample at or before it included (`None`: the whole trace) [s].
    pub end_s: Option<f64>,
    /// Left out before each spike time [s].
    pub exclude_before_s: f64,
    /// Left out after each spike time (the spike and its after-hyperpolarisation) [s].
    pub exclude_after_s: f64,
}

/// A spike time that is not a finite number (`spike_times_s[index]`).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("spike time [{index}] is {value}, not a time")]
pub struct NotATime {
    pub index: usize,
    pub value: f64,
}

/// The usable samples of an `n`-sample trace at `rate_hz` for [`fit_membrane`]: those of the
/// window, minus the samples from floor((t − before)·rate) to ceil((t + after)·rate) around each
/// spike time t.
pub fn usable_samples(n: usize, rate_hz: f64, window: &FitWindow, spike_times_s: &[f64]) -> Result<Vec<bool>, NotATime> {
    let first = (window.start_s * rate_hz).ceil() as usize;
    let end = window.end_s.map_or(n, |e| ((e * rate_hz).floor() as usize + 1).min(n));
    let mut usable = vec![false; n];
    for u in usable.iter_mut().take(end).skip(first) {
        *u = true;
    }
    for (index, &t) in spike_times_s.iter().enumerate() {
        if !t.is_finite() {
            return Err(NotATime { index, value: t });
        }
        let lo = ((t - window.exclude_before_s) * rate_hz).floor().max(0.0) as usize;
        let hi = (((t + window.exclude_after_s) * rate_hz).ceil().max(0.0) as usize).min(n.saturating_sub(1));
        for u in usable.iter_mut().take(hi + 1).skip(lo) {
            *u = false;
        }
    }
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::glif::tests::read_d2z;

    /// AllenSDK 2.16.2's GLIF1 run on its OU stimulus (fixtures/glif, dt 5e-5 s) with the config's
    /// parameters: R 1.5e8 Ω, C 1e-10 F, El 0 V relative to El_reference −0.075 V.
    fn allensdk_glif1() -> (Vec<f64>, Vec<f64>) {
        let (_, v) = read_d2z("glif1_voltage.npy.d2z.zst");
        let (_, i) = read_d2z("glif_stimulus.npy.d2z.zst");
        let v_mv = v.iter().map(|v| 1e3 * (v - 0.075)).collect();
        let i_pa = i.iter().map(|i| i * 1e12).collect();
        (v_mv, i_pa)
    }

    #[test]
    fn recovers_the_parameters_of_an_allensdk_glif1_run_from_its_own_output() {
        let (v, i) = allensdk_glif1();
        assert!(v.iter().any(|x| x.is_nan()), "the reference has spike cuts");
        let fit = fit_membrane(&v, &i, 1.0 / 5e-5, Scheme::Allensdk, 10, |_| true).unwrap();
        let rel = |x: f64, t: f64| ((x - t) / t).abs();
        assert!(rel(fit.r_mohm, 150.0) < 1e-9, "R {} MΩ", fit.r_mohm);
        assert!(rel(fit.c_pf, 100.0) < 1e-9, "C {} pF", fit.c_pf);
        assert!((fit.el_mv - -75.0).abs() < 1e-7, "El {} mV", fit.el_mv);
        assert!(rel(fit.tau_ms, 15.0) < 1e-9, "tau {} ms", fit.tau_ms);
        assert!(fit.r2 > 1.0 - 1e-12, "r2 {}", fit.r2);
        // Pairs straddling a NaN spike cut are left out, the rest are used.
        let finite_pairs = v.windows(2).filter(|w| w[0].is_finite() && w[1].is_finite()).count();
        assert_eq!(fit.pairs, finite_pairs);
    }

    #[test]
    fn float32_storage_of_the_trace_costs_less_than_a_part_in_ten_thousand() {
        // The pipeline stores mV and pA as float32 list columns.
        let (v, i) = allensdk_glif1();
        let v: Vec<f64> = v.iter().map(|&x| x as f32 as f64).collect();
        let i: Vec<f64> = i.iter().map(|&x| x as f32 as f64).collect();
        let fit = fit_membrane(&v, &i, 2e4, Scheme::Allensdk, 10, |_| true).unwrap();
        assert!((fit.r_mohm / 150.0 - 1.0).abs() < 1e-4, "R {}", fit.r_mohm);
        assert!((fit.c_pf / 100.0 - 1.0).abs() < 1e-4, "C {}", fit.c_pf);
        assert!((fit.el_mv + 75.0).abs() < 1e-2, "El {}", fit.el_mv);
    }

    #[test]
    fn pairing_the_wrong_current_sample_biases_the_fit() {
        // Why `scheme` exists: the same AllenSDK trace read as forward Euler misplaces the
        // current by one sample, which on an OU current with a 5 ms correlation time is a
        // visible error, not rounding.
        let (v, i) = allensdk_glif1();
        let fit = fit_membrane(&v, &i, 2e4, Scheme::Forward, 10, |_| true).unwrap();
        assert!((fit.c_pf / 100.0 - 1.0).abs() > 1e-3, "C {}", fit.c_pf);
        assert!(fit.r2 < 1.0 - 1e-6);
    }

    #[test]
    fn the_midpoint_scheme_fits_a_finely_sampled_continuous_membrane() {
        // A membrane integrated at 1 µs with a slow sinusoidal-plus-square current, sampled every
        // 20 µs: the midpoint pairing recovers R, C and El to the discretisation error.
        let (r, c, el) = (200.0_f64, 50.0_f64, -70.0_f64); // MΩ, pF, mV -> tau 10 ms
        let fine_dt = 1e-6;
        let every = 20;
        let (mut v, mut vs, mut is) = (el, Vec::new(), Vec::new());
        let current = |t: f64| 40.0 * (2.0 * std::f64::consts::PI * 7.0 * t).sin() + if (t * 13.0).fract() < 0.5 { 25.0 } else { -10.0 };
        for k in 0..200_000 {
            let t = k as f64 * fine_dt;
            if k % every == 0 {
                vs.push(v);
                is.push(current(t));
            }
            // dV/dt in mV/s: (I pA − (V − El) mV / R MΩ · 1e3 pA/(mV/MΩ))/C pF · 1e3
            v += fine_dt * (current(t) - (v - el) / r * 1e3) / c * 1e3;
        }
        let fit = fit_membrane(&vs, &is, 1.0 / (fine_dt * every as f64), Scheme::Midpoint, 10, |_| true).unwrap();
        assert!((fit.r_mohm / r - 1.0).abs() < 5e-3, "R {}", fit.r_mohm);
        assert!((fit.c_pf / c - 1.0).abs() < 5e-3, "C {}", fit.c_pf);
        assert!((fit.el_mv - el).abs() < 0.05, "El {}", fit.el_mv);
    }

    #[test]
    fn excluded_samples_keep_a_spike_out_of_the_fit() {
        let (mut v, i) = allensdk_glif1();
        // Paint a 2 ms spike-like excursion over a subthreshold stretch.
        let at = 30_000;
        for (k, x) in v[at..at + 40].iter_mut().enumerate() {
            *x = -20.0 + k as f64;
        }
        let spoiled = fit_membrane(&v, &i, 2e4, Scheme::Allensdk, 10, |_| true).unwrap();
        assert!((spoiled.c_pf / 100.0 - 1.0).abs() > 1e-3, "the excursion must matter: C {}", spoiled.c_pf);
        let kept = fit_membrane(&v, &i, 2e4, Scheme::Allensdk, 10, |k| !(at..at + 40).contains(&k)).unwrap();
        assert!((kept.c_pf / 100.0 - 1.0).abs() < 1e-9, "C {}", kept.c_pf);
    }

    #[test]
    fn too_few_pairs_or_a_constant_current_give_no_fit() {
        let v = [-70.0, -69.0, -68.5, -68.2];
        let i = [10.0, 20.0, 15.0, 12.0];
        assert_eq!(fit_membrane(&v, &i, 1e3, Scheme::Forward, 10, |_| true), Err(NoFit::TooFewPairs { pairs: 3, min: 10 }));
        let v: Vec<f64> = (0..100).map(|k| -70.0 + 5.0 * (1.0 - (-(k as f64) / 10.0).exp())).collect();
        let i = vec![50.0; 100];
        assert_eq!(fit_membrane(&v, &i, 1e3, Scheme::Forward, 10, |_| true), Err(NoFit::Singular { pairs: 99 }));
    }

    #[test]
    fn usable_samples_are_the_window_minus_the_spikes() {
        // 20 samples at 1 kHz; window 2.5 ms ..= 15 ms -> samples 3..=15; a spike at 8 ms with 2 ms
        // before and 1 ms after leaves out samples 6..=10: (0.008 + 0.001) * 1000 is
        // 9.000000000000002 in floating point, and the end is rounded up, so the boundary sample
        // is left out too (the conservative side, as the stage always did).
        let w = FitWindow { start_s: 0.0025, end_s: Some(0.015), exclude_before_s: 0.002, exclude_after_s: 0.001 };
        let u = usable_samples(20, 1000.0, &w, &[0.008]).unwrap();
        let kept: Vec<usize> = (0..20).filter(|&k| u[k]).collect();
        assert_eq!(kept, [3, 4, 5, 11, 12, 13, 14, 15]);
        // the whole trace without an end; a spike near the end is clipped to the trace
        let w = FitWindow { start_s: 0.0, end_s: None, exclude_before_s: 0.0, exclude_after_s: 1.0 };
        let u = usable_samples(5, 1000.0, &w, &[0.003]).unwrap();
        assert_eq!(u, [true, true, true, false, false]);
        let e = usable_samples(5, 1000.0, &w, &[0.001, f64::NAN]).unwrap_err();
        assert!(e.index == 1 && e.value.is_nan(), "{e}");
    }
}
