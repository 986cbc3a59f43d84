//! Dynamic Input Conductances (DICs) of the Liu 1998 STG model (Drion et al. 2015, eNeuro
//! 2(1); Fyon et al. 2024, PNAS Nexus 3(10); Brandoit 2025 thesis), spec `dic_stg.md` §3–§4.
//!
//! At a membrane potential V, the DICs split the total input conductance of the model at
//! steady state into a fast (g_f), a slow (g_s) and an ultraslow (g_u) part, according to
//! the time constant of each gate relative to τ_f = τ_mNa(V), τ_s = τ_mKd(V) and
//! τ_u = τ_mH(V). They are linear in the maximal conductances through a 3×8 sensitivity
//! matrix S(V): `(g_f, g_s, g_u) = S(V)·ḡ / g_leak`. S depends on ḡ only through the
//! steady-state calcium Ca∞(V) (set by g_CaT and g_CaS), which is why the compensation of
//! [`compensation`] iterates when a calcium conductance is unknown.
//!
//! Submodules: [`compensation`] (solve for unknown conductances, iterative compensation,
//! seed and neuromodulated populations), [`features`] (spike-train activity class,
//! burst metrics and the thesis van Rossum distance, spec §7), and the study-4 chain from spike
//! times to validated populations: [`spike_times`] (Spike2Pop's spike-time rows), [`isi`] (ISI
//! statistics and feature vectors), [`population`] (cells per target), [`reference`] (the
//! simulated reference set), [`estimate`] (k-nearest-neighbour estimate and its refinement by
//! simulation), [`validation`] (population class and the van Rossum ratio R) and [`targets`]
//! (the targets of a training data set).
//!
//! The gating functions come from `crate::simulate::stg`, so the simulated model and the
//! model the DICs describe cannot drift apart.

pub mod compensation;
pub mod estimate;
pub mod features;
pub mod isi;
pub mod population;
pub mod reference;
pub mod spike_times;
pub mod targets;
pub mod validation;

use crate::simulate::stg::{self, N_CONDUCTANCES, StgError, StgParams, gidx};

/// Errors of the DIC kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DicError {
    #[error("membrane potential {0} mV is not finite")]
    BadVoltage(f64),
    #[error("conductance {name} = {value} is not a finite non-negative number")]
    BadConductance { name: &'static str, value: f64 },
    #[error("g_leak = {0} must be finite and > 0 (the DICs are normalised by it)")]
    NonPositiveLeak(f64),
    #[error("invalid model parameters: {0}")]
    BadParams(String),
}

/// Errors of the study-4 kernels (spike-time rows, populations, the reference set, estimates):
/// the one error type the DIC stages report, per recording or as the stage's error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DicStageError {
    #[error("line {line}: expected `ID,spiking_times`, found no comma")]
    NoComma { line: usize },
    #[error("empty ID")]
    EmptyId,
    #[error("spiking_times is not a \"[t1, t2, ...]\" list: {0}")]
    NotAList(String),
    #[error("spike #{index} `{text}` is not a number")]
    NotANumber { index: usize, text: String },
    #[error("spike #{index} = {value} is not finite")]
    NonFinite { index: usize, value: f64 },
    #[error("spike #{index} = {value} is negative")]
    Negative { index: usize, value: f64 },
    #[error("spike #{index} = {value} duplicates the previous spike")]
    Duplicate { index: usize, value: f64 },
    #[error("spike times are not sorted: #{index} = {value} comes after {previous}")]
    Unsorted { index: usize, value: f64, previous: f64 },
    #[error("{count} spikes, at least {min} needed (Spike2Pop labels trains with < 3 spikes silent)")]
    TooFewSpikes { count: usize, min: usize },
    #[error("the ID `{0}` appears more than once")]
    DuplicateId(String),
    #[error("no reference cell of class {0:?}: widen the reference grid")]
    NoReference(features::ActivityClass),
    #[error("silent train (< 3 spikes): Spike2Pop makes no prediction for it")]
    Silent,
    #[error("invalid spike train: {0}")]
    BadTrain(String),
    /// Population generation (seed population, compensation) failed as a whole.
    #[error(transparent)]
    Compensation(#[from] compensation::CompensationError),
    /// The DICs of a generated cell could not be computed.
    #[error(transparent)]
    Dics(#[from] DicError),
    /// The simulation settings were refused (e.g. the gate tables' step).
    #[error(transparent)]
    Simulation(#[from] StgError),
}

/// How the calcium route of the KCa current is assigned to the timescales (spec §3.1, §10.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum CalciumRoute {
    /// Brandoit's thesis / Spike2Pop: weight it like a gate with constant τ = τ_Ca (20 ms),
    /// i.e. w_fs = 0 and w_su = 0.7368 at −51 mV. Default: the datasets and the network
    /// were built with it.
    #[default]
    ThesisTauCa,
    /// Fyon's CORR_2022 Julia code: entirely ultraslow (w_fs = w_su = 0).
    FyonUltraslow,
}

/// The three DICs and their sum, in units of g_leak (dimensionless).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dics {
    pub g_f: f64,
    pub g_s: f64,
    pub g_u: f64,
    pub g_t: f64,
}

/// Sensitivity matrix at one voltage: rows (f, s, u), columns in conductance order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensitivityMatrix {
    pub rows_fsu: [[f64; N_CONDUCTANCES]; 3],
    /// Steady-state calcium at this voltage (µM) that entered the KCa column.
    pub ca_inf_um: f64,
}

impl SensitivityMatrix {
    /// `S·ḡ` row by row; with a normalised S these are the DICs.
    pub fn apply(&self, g: &[f64; N_CONDUCTANCES]) -> Dics {
        let dot = |row: &[f64; N_CONDUCTANCES]| row.iter().zip(g).map(|(s, g)| s * g).sum::<f64>();
        let g_f = dot(&self.rows_fsu[0]);
        let g_s = dot(&self.rows_fsu[1]);
        let g_u = dot(&self.rows_fsu[2]);
        Dics { g_f, g_s, g_u, g_t: g_f + g_s + g_u }
    }
}

/// Timescale weight `w(τx; τa, τb)` (spec §3.2): 1 if τx ≤ τa, 0 if τx > τb, and the
/// log-linear interpolation `(ln τb − ln τx)/(ln τb − ln τa)` in between. Written with the
/// same comparisons and the same expression as upstream `w_factor` so the values agree to
/// the last bits.
#[inline]
pub fn timescale_weight(tau_x: f64, tau_a: f64, tau_b: f64) -> f64 {
    if tau_x > tau_b {
        0.0
    } else if tau_x > tau_a {
        (tau_b.ln() - tau_x.ln()) / (tau_b.ln() - tau_a.ln())
    } else {
        1.0
    }
}

/// (w_fs, w_su) of a gate with time constant `tau_x` at a voltage with the given
/// (τ_f, τ_s, τ_u).
#[inline]
pub fn weight_pair(tau_x: f64, tau_f: f64, tau_s: f64, tau_u: f64) -> (f64, f64) {
    (timescale_weight(tau_x, tau_f, tau_s), timescale_weight(tau_x, tau_s, tau_u))
}

/// The STG timescale split at V: (τ_f, τ_s, τ_u) = (τ_mNa, τ_mKd, τ_mH) in ms.
pub fn timescales_ms(v_mv: f64) -> (f64, f64, f64) {
    (stg::tau_m_na(v_mv), stg::tau_m_kd(v_mv), stg::tau_m_h(v_mv))
}

fn check_params(params: &StgParams) -> Result<(), DicError> {
    params.validate().map_err(|e| DicError::BadParams(e.to_string()))
}

/// Steady-state calcium `Ca∞(V) = −α (g_CaT m³h + g_CaS m³h)(V − E_Ca) + β` (µM).
pub fn ca_inf_um(v_mv: f64, g_cat: f64, g_cas: f64, params: &StgParams) -> f64 {
    let pt = stg::m_cat_inf(v_mv).powi(3) * stg::h_cat_inf(v_mv);
    let ps = stg::m_cas_inf(v_mv).powi(3) * stg::h_cas_inf(v_mv);
    -params.alpha_ca * (g_cat * pt + g_cas * ps) * (v_mv - params.e_ca_mv) + params.beta_ca
}

/// Sensitivity matrix S(V) (spec §3.1). Only g_CaT, g_CaS (through Ca∞) and, when
/// `normalize`, g_leak are read from `g`; the other entries may hold anything finite
/// (the compensation passes placeholders for its unknowns).
///
/// Column of channel i with current ḡ_i p_i(x)(V − E_i): the static part p_i(x∞) goes to
/// the fast row; each gate x adds `c_x = ∂p_i/∂x · (V − E_i) · dx∞/dV`, split as
/// w_fs·c_x (fast), (w_su − w_fs)·c_x (slow), (1 − w_su)·c_x (ultraslow).
pub fn sensitivity_matrix(
    v_mv: f64,
    g: &[f64; N_CONDUCTANCES],
    params: &StgParams,
    route: CalciumRoute,
    normalize: bool,
) -> Result<SensitivityMatrix, DicError> {
    if !v_mv.is_finite() {
        return Err(DicError::BadVoltage(v_mv));
    }
    check_params(params)?;
    for i in [gidx::CAT, gidx::CAS] {
        if !g[i].is_finite() {
            return Err(DicError::BadConductance { name: stg::CONDUCTANCE_NAMES[i], value: g[i] });
        }
    }
    let g_leak = g[gidx::LEAK];
    if normalize && !(g_leak.is_finite() && g_leak > 0.0) {
        return Err(DicError::NonPositiveLeak(g_leak));
    }
    Ok(sensitivity_matrix_unchecked(v_mv, g[gidx::CAT], g[gidx::CAS], g_leak, params, route, normalize))
}

/// [`sensitivity_matrix`] without input checks, for the inner loops of the compensation.
pub(crate) fn sensitivity_matrix_unchecked(
    v: f64,
    g_cat: f64,
    g_cas: f64,
    g_leak: f64,
    p: &StgParams,
    route: CalciumRoute,
    normalize: bool,
) -> SensitivityMatrix {
    let (tau_f, tau_s, tau_u) = timescales_ms(v);
    let w = |tau_x: f64| weight_pair(tau_x, tau_f, tau_s, tau_u);

    let (m_na, h_na) = (stg::m_na_inf(v), stg::h_na_inf(v));
    let m_kd = stg::m_kd_inf(v);
    let (m_cat, h_cat) = (stg::m_cat_inf(v), stg::h_cat_inf(v));
    let (m_cas, h_cas) = (stg::m_cas_inf(v), stg::h_cas_inf(v));
    let (m_a, h_a) = (stg::m_a_inf(v), stg::h_a_inf(v));
    let m_h = stg::m_h_inf(v);
    let ca = ca_inf_um(v, g_cat, g_cas, p);
    let m_kca = stg::m_kca_inf(v, ca);

    let (dm_cat, dh_cat) = (stg::d_m_cat_inf(v), stg::d_h_cat_inf(v));
    let (dm_cas, dh_cas) = (stg::d_m_cas_inf(v), stg::d_h_cas_inf(v));
    let v_ca = v - p.e_ca_mv;
    let v_k = v - p.e_k_mv;
    let v_na = v - p.e_na_mv;
    let v_h = v - p.e_h_mv;
    // dCa∞/dV = −α Σ_c g_c [(3m²h m' + m³h')(V − E_Ca) + m³h].
    let dca_dv = -p.alpha_ca
        * (g_cat * ((3.0 * m_cat * m_cat * h_cat * dm_cat + m_cat.powi(3) * dh_cat) * v_ca + m_cat.powi(3) * h_cat)
            + g_cas * ((3.0 * m_cas * m_cas * h_cas * dm_cas + m_cas.powi(3) * dh_cas) * v_ca + m_cas.powi(3) * h_cas));

    // Each column: static part plus a list of (c_x, w_fs, w_su) gate terms.
    let mut s = [[0.0f64; N_CONDUCTANCES]; 3];
    let mut add_column = |col: usize, static_part: f64, terms: &[(f64, (f64, f64))]| {
        let (mut f, mut sl, mut u) = (static_part, 0.0, 0.0);
        for &(c, (w_fs, w_su)) in terms {
            f += w_fs * c;
            sl += (w_su - w_fs) * c;
            u += (1.0 - w_su) * c;
        }
        s[0][col] = f;
        s[1][col] = sl;
        s[2][col] = u;
    };

    add_column(gidx::NA, m_na.powi(3) * h_na, &[
        (3.0 * m_na * m_na * h_na * stg::d_m_na_inf(v) * v_na, w(stg::tau_m_na(v))),
        (m_na.powi(3) * stg::d_h_na_inf(v) * v_na, w(stg::tau_h_na(v))),
    ]);
    add_column(gidx::KD, m_kd.powi(4), &[
        (4.0 * m_kd.powi(3) * stg::d_m_kd_inf(v) * v_k, w(stg::tau_m_kd(v))),
    ]);
    add_column(gidx::CAT, m_cat.powi(3) * h_cat, &[
        (3.0 * m_cat * m_cat * h_cat * dm_cat * v_ca, w(stg::tau_m_cat(v))),
        (m_cat.powi(3) * dh_cat * v_ca, w(stg::tau_h_cat(v))),
    ]);
    add_column(gidx::CAS, m_cas.powi(3) * h_cas, &[
        (3.0 * m_cas * m_cas * h_cas * dm_cas * v_ca, w(stg::tau_m_cas(v))),
        (m_cas.powi(3) * dh_cas * v_ca, w(stg::tau_h_cas(v))),
    ]);
    let ca_route_w = match route {
        CalciumRoute::ThesisTauCa => w(p.tau_ca_ms),
        CalciumRoute::FyonUltraslow => (0.0, 0.0),
    };
    add_column(gidx::KCA, m_kca.powi(4), &[
        (4.0 * m_kca.powi(3) * stg::d_m_kca_inf_dv(v, ca) * v_k, w(stg::tau_m_kca(v))),
        (4.0 * m_kca.powi(3) * stg::d_m_kca_inf_dca(v, ca) * v_k * dca_dv, ca_route_w),
    ]);
    add_column(gidx::A, m_a.powi(3) * h_a, &[
        (3.0 * m_a * m_a * h_a * stg::d_m_a_inf(v) * v_k, w(stg::tau_m_a(v))),
        (m_a.powi(3) * stg::d_h_a_inf(v) * v_k, w(stg::tau_h_a(v))),
    ]);
    add_column(gidx::H, m_h, &[(stg::d_m_h_inf(v) * v_h, w(stg::tau_m_h(v)))]);
    add_column(gidx::LEAK, 1.0, &[]);

    if normalize {
        for row in s.iter_mut() {
            for x in row.iter_mut() {
                *x /= g_leak;
            }
        }
    }
    SensitivityMatrix { rows_fsu: s, ca_inf_um: ca }
}

/// DICs (g_f, g_s, g_u, g_t) of a cell at `v_mv`, normalised by g_leak.
pub fn dics(
    v_mv: f64,
    g: &[f64; N_CONDUCTANCES],
    params: &StgParams,
    route: CalciumRoute,
) -> Result<Dics, DicError> {
    for (i, &value) in g.iter().enumerate() {
        if !(value.is_finite() && value >= 0.0) {
            return Err(DicError::BadConductance { name: stg::CONDUCTANCE_NAMES[i], value });
        }
    }
    Ok(sensitivity_matrix(v_mv, g, params, route, true)?.apply(g))
}

/// Bisection of upstream thesis `utils.bisection` (same stopping rules, same order of
/// tests), so that V_th reproduces the reference to its 1e-6 tolerances.
fn bisection(f: &dyn Fn(f64) -> f64, mut a: f64, mut b: f64, y_tol: f64, x_tol: f64, max_iter: usize) -> f64 {
    let (fa, fb) = (f(a), f(b));
    if fa.abs() <= y_tol {
        return a;
    }
    if fb.abs() <= y_tol {
        return b;
    }
    let mut c = 0.5 * (a + b);
    for _ in 0..max_iter {
        c = (a + b) / 2.0;
        let fc = f(c);
        if fc.abs() <= y_tol || (b - a) / 2.0 < x_tol {
            return c;
        }
        if fc * f(a) < 0.0 {
            b = c;
        } else {
            a = c;
        }
    }
    c
}

/// Threshold voltage V_th (spec §3.4, thesis `find_first_decreasing_zero_bisection`): the
/// first V, scanning upward on `linspace(−80, 0, 100)`, where g_t goes from > 0 to < 0,
/// refined by bisection with y_tol = x_tol = 1e-6. `Ok(None)` if g_t has no such crossing
/// (upstream returns NaN). The pipeline itself uses the fixed V_th = −51 mV.
pub fn threshold_voltage_mv(
    g: &[f64; N_CONDUCTANCES],
    params: &StgParams,
    route: CalciumRoute,
) -> Result<Option<f64>, DicError> {
    dics(-51.0, g, params, route)?; // validates g and params once
    let g_t = |v: f64| {
        sensitivity_matrix_unchecked(v, g[gidx::CAT], g[gidx::CAS], g[gidx::LEAK], params, route, true)
            .apply(g)
            .g_t
    };
    const N: usize = 100;
    let (start, stop) = (-80.0f64, 0.0f64);
    let step = (stop - start) / (N - 1) as f64;
    let grid = |i: usize| if i == N - 1 { stop } else { start + i as f64 * step };
    let mut y_prev = g_t(grid(0));
    for i in 0..N - 1 {
        let y_next = g_t(grid(i + 1));
        if y_prev > 0.0 && y_next < 0.0 {
            return Ok(Some(bisection(&g_t, grid(i), grid(i + 1), 1e-6, 1e-6, 1000)));
        }
        y_prev = y_next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stg/");

    pub(crate) fn refs() -> Value {
        let text = std::fs::read_to_string(format!("{FIX}reference_vectors.json")).expect("fixture");
        serde_json::from_str(&text).expect("json")
    }

    pub(crate) fn arr8(v: &Value) -> [f64; 8] {
        let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        v.try_into().unwrap()
    }

    fn rel_err(a: f64, b: f64) -> f64 {
        if a == b { 0.0 } else { (a - b).abs() / b.abs() }
    }

    #[test]
    fn timescale_weights_at_minus_51_match_reference() {
        let r = refs();
        let w = &r["w_factors_at_Vth"];
        let v = -51.0;
        let (tf, ts, tu) = timescales_ms(v);
        assert!(rel_err(tf, w["tau_f=tau_m_Na"].as_f64().unwrap()) < 1e-12);
        assert!(rel_err(ts, w["tau_s=tau_m_Kd"].as_f64().unwrap()) < 1e-12);
        assert!(rel_err(tu, w["tau_u=tau_m_H"].as_f64().unwrap()) < 1e-12);
        let gates: [(&str, f64); 12] = [
            ("m_Na", stg::tau_m_na(v)), ("h_Na", stg::tau_h_na(v)), ("m_Kd", stg::tau_m_kd(v)),
            ("m_CaT", stg::tau_m_cat(v)), ("h_CaT", stg::tau_h_cat(v)), ("m_CaS", stg::tau_m_cas(v)),
            ("h_CaS", stg::tau_h_cas(v)), ("m_KCa", stg::tau_m_kca(v)), ("m_A", stg::tau_m_a(v)),
            ("h_A", stg::tau_h_a(v)), ("m_H", stg::tau_m_h(v)), ("Ca_route_of_KCa(tau_Ca=20)", 20.0),
        ];
        for (name, tau) in gates {
            let f = &w["factors"][name];
            assert!(rel_err(tau, f["tau_x"].as_f64().unwrap()) < 1e-12, "{name} tau");
            let (wfs, wsu) = weight_pair(tau, tf, ts, tu);
            assert!((wfs - f["w_fs"].as_f64().unwrap()).abs() < 1e-12, "{name} w_fs {wfs}");
            assert!((wsu - f["w_su"].as_f64().unwrap()).abs() < 1e-12, "{name} w_su {wsu}");
        }
    }

    /// S matrices (normalised and not), DICs and Ca∞ at −51 mV, 1e-10 relative.
    #[test]
    fn s_matrix_and_dics_at_minus_51_match_reference() {
        let r = refs();
        let p = StgParams::default();
        let mut worst = 0.0f64;
        for name in ["G_SPIKING", "G_BURSTING"] {
            let d = &r["stg_dics"][name];
            let g = arr8(&d["g"]);
            for (key, normalize) in [("S_normalized_rows_fsu_cols_g_Na_g_Kd_g_CaT_g_CaS_g_KCa_g_A_g_H_g_leak", true), ("S_unnormalized", false)] {
                let s = sensitivity_matrix(-51.0, &g, &p, CalciumRoute::ThesisTauCa, normalize).unwrap();
                for row in 0..3 {
                    for col in 0..8 {
                        let want = d[key][row][col].as_f64().unwrap();
                        let got = s.rows_fsu[row][col];
                        let e = rel_err(got, want);
                        worst = worst.max(e);
                        assert!(e <= 1e-10, "{name} {key}[{row}][{col}] = {got:e}, ref {want:e}");
                    }
                }
                assert!(rel_err(s.ca_inf_um, d["Ca_inf_at_V"].as_f64().unwrap()) < 1e-12);
            }
            let got = dics(-51.0, &g, &p, CalciumRoute::ThesisTauCa).unwrap();
            for (k, x) in [("g_f", got.g_f), ("g_s", got.g_s), ("g_u", got.g_u), ("g_t", got.g_t)] {
                let e = rel_err(x, d[k].as_f64().unwrap());
                worst = worst.max(e);
                assert!(e <= 1e-10, "{name} {k} = {x}, ref {}", d[k]);
            }
        }
        eprintln!("S matrices and DICs at -51 mV: worst relative error {worst:e}");
    }

    /// The DIC curves from −80 to 0 mV (CSV printed with 12 significant digits).
    #[test]
    fn dic_curves_match_reference() {
        let r = refs();
        let p = StgParams::default();
        for name in ["G_SPIKING", "G_BURSTING"] {
            let g = arr8(&r["stg_dics"][name]["g"]);
            let text = std::fs::read_to_string(format!("{FIX}stg_dic_curves_{name}.csv")).unwrap();
            let mut n = 0;
            for line in text.lines().skip(1) {
                let x: Vec<f64> = line.split(',').map(|s| s.parse().unwrap()).collect();
                let d = dics(x[0], &g, &p, CalciumRoute::ThesisTauCa).unwrap();
                let scale = x[1].abs() + x[2].abs() + x[3].abs();
                for (got, want) in [(d.g_f, x[1]), (d.g_s, x[2]), (d.g_u, x[3]), (d.g_t, x[4])] {
                    assert!((got - want).abs() <= 1e-9 * scale, "{name} V={} got {got} ref {want}", x[0]);
                }
                n += 1;
            }
            assert_eq!(n, 161);
        }
    }

    #[test]
    fn threshold_voltage_matches_reference() {
        let r = refs();
        let p = StgParams::default();
        for name in ["G_SPIKING", "G_BURSTING"] {
            let d = &r["stg_dics"][name];
            let g = arr8(&d["g"]);
            let want = d["V_th_first_decreasing_zero_of_g_t"].as_f64().unwrap();
            let got = threshold_voltage_mv(&g, &p, CalciumRoute::ThesisTauCa).unwrap().unwrap();
            eprintln!("{name}: V_th = {got} (ref {want}, diff {:e})", got - want);
            assert!((got - want).abs() <= 1e-9, "{name} V_th {got} vs {want}");
            let at = dics(got, &g, &p, CalciumRoute::ThesisTauCa).unwrap();
            let ref_at = &d["DICs_at_V_th"];
            for (k, x) in [("g_f", at.g_f), ("g_s", at.g_s), ("g_u", at.g_u)] {
                assert!(rel_err(x, ref_at[k].as_f64().unwrap()) < 1e-8, "{name} {k} at V_th");
            }
            // g_t ≈ 0 there: compare absolutely (it is a cancellation of O(10) terms).
            assert!((at.g_t - ref_at["g_t"].as_f64().unwrap()).abs() < 1e-10);
        }
    }

    #[test]
    fn fyon_route_moves_the_calcium_term_to_ultraslow() {
        let r = refs();
        let g = arr8(&r["stg_dics"]["G_SPIKING"]["g"]);
        let p = StgParams::default();
        let a = sensitivity_matrix(-51.0, &g, &p, CalciumRoute::ThesisTauCa, true).unwrap();
        let b = sensitivity_matrix(-51.0, &g, &p, CalciumRoute::FyonUltraslow, true).unwrap();
        // Only the KCa column changes, and its total (f+s+u) is the same.
        for col in 0..8 {
            let ta: f64 = (0..3).map(|r| a.rows_fsu[r][col]).sum();
            let tb: f64 = (0..3).map(|r| b.rows_fsu[r][col]).sum();
            assert!((ta - tb).abs() <= 1e-12 * ta.abs().max(1e-300));
            if col != gidx::KCA {
                for r in 0..3 {
                    assert_eq!(a.rows_fsu[r][col], b.rows_fsu[r][col]);
                }
            }
        }
        assert_ne!(a.rows_fsu[1][gidx::KCA], b.rows_fsu[1][gidx::KCA]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = StgParams::default();
        let mut g = [1.0; 8];
        assert!(matches!(dics(f64::NAN, &g, &p, CalciumRoute::default()), Err(DicError::BadVoltage(_))));
        g[7] = 0.0;
        assert!(matches!(dics(-51.0, &g, &p, CalciumRoute::default()), Err(DicError::NonPositiveLeak(_))));
        g[7] = 0.01;
        g[2] = -1.0;
        assert!(matches!(dics(-51.0, &g, &p, CalciumRoute::default()), Err(DicError::BadConductance { name: "g_CaT", .. })));
        g[2] = 1.0;
        let bad = StgParams { tau_ca_ms: f64::NAN, ..p };
        assert!(matches!(dics(-51.0, &g, &bad, CalciumRoute::default()), Err(DicError::BadParams(_))));
        // Extreme voltages stay finite (sigmoid tails written as s(1−s)).
        let d = dics(-500.0, &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.01], &p, CalciumRoute::default()).unwrap();
        assert!(d.g_f.is_finite() && d.g_s.is_finite() && d.g_u.is_finite());
    }
}
