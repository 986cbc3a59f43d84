//! Butterworth low-, high- and band-pass filters as second-order sections (SOS), applied
//! zero-phase (forward-backward) or causally.
//!
//! Design, step by step as `scipy.signal.butter(N, Wn, btype, output="sos")` does it, so that
//! the sections agree with scipy's to rounding:
//! 1. analog prototype: poles p_k = −exp(iπ m/(2N)), m = −N+1, −N+3, …, N−1, gain 1
//!    (Butterworth 1930; scipy `buttap`);
//! 2. prewarping of the normalized cutoff(s) Wn (fraction of Nyquist): ω = 2·fs·tan(π·Wn/fs)
//!    with fs = 2, so the digital filter's −3 dB point lands exactly on the cutoff;
//! 3. frequency transformation (scipy `lp2lp_zpk`, `lp2hp_zpk`, `lp2bp_zpk`; Oppenheim & Schafer,
//!    "Discrete-Time Signal Processing", 3rd ed., §7.2): low-pass p·ω; high-pass ω/p with N
//!    zeros at the origin; band-pass p·bw/2 ± √((p·bw/2)² − ω0²), ω0 = √(ω1·ω2), bw = ω2 − ω1,
//!    with N zeros at the origin (a band-pass of order N has 2N poles, scipy's convention);
//! 4. bilinear transform z = (2fs + s)/(2fs − s) (Oppenheim & Schafer §7.1.2; scipy
//!    `bilinear_zpk`), zeros at infinity moved to z = −1, gain k·Re(Π(2fs − z)/Π(2fs − p));
//! 5. pairing into sections as `scipy.signal.zpk2sos(pairing="nearest")`: the pole closest to the
//!    unit circle (the least damped) goes last, each pole pair takes the nearest zeros, and the
//!    gain goes into the first section.
//!
//! Filtering is the transposed direct form II per section, in the operation order of scipy's
//! `sosfilt` loop. [`Sos::filtfilt`] equals `scipy.signal.sosfiltfilt(sos, x)` with its defaults:
//! odd extension of 3·ntaps samples at each end (ntaps = 2·sections + 1, minus the trailing zero
//! coefficients of odd orders) and each pass started from `sosfilt_zi` scaled by its first
//! sample, so a constant trace passes unchanged and the edges carry no start-up transient.
//! [`Sos::filter_causal`] is one forward pass started in the steady state of the first sample
//! (`sosfilt(sos, x, zi=sosfilt_zi(sos) * x[0])`); [`Sos::filter_continue`] goes on from a saved
//! state, so a recording split into consecutive pieces filters exactly as if whole.

use super::Complex;

/// Why a filter cannot be designed or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("filter order {0} is outside 1..=16")]
    Order(usize),
    #[error("normalized cutoff {0} must lie strictly between 0 and 1 (a fraction of the Nyquist frequency)")]
    Cutoff(f64),
    #[error("band-pass edges {0} and {1} must be increasing")]
    BandEdges(f64, f64),
    #[error("a trace of {len} samples is too short for zero-phase filtering: more than {padlen} samples are needed (scipy sosfiltfilt's default padding)")]
    TooShort { len: usize, padlen: usize },
}

/// The pass band, with cutoffs as fractions of the Nyquist frequency (scipy's `Wn`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Band {
    Lowpass(f64),
    Highpass(f64),
    /// Lower and upper edges.
    Bandpass(f64, f64),
}

/// A cascade of second-order sections, each `[b0, b1, b2, 1, a1, a2]` (scipy's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Sos {
    pub sections: Vec<[f64; 6]>,
}

/// The filter state of every section (transposed direct form II, two delays each).
pub type SosState = Vec<[f64; 2]>;

fn check_wn(wn: f64) -> Result<(), FilterError> {
    if wn > 0.0 && wn < 1.0 { Ok(()) } else { Err(FilterError::Cutoff(wn)) }
}

/// Butterworth filter of order `order` (1..=16) as second-order sections, equal to
/// `scipy.signal.butter(order, Wn, btype, output="sos")` up to rounding.
pub fn butter_sos(order: usize, band: Band) -> Result<Sos, FilterError> {
    if !(1..=16).contains(&order) {
        return Err(FilterError::Order(order));
    }
    let n = order;
    let fs = 2.0;
    let warp = |wn: f64| 2.0 * fs * (std::f64::consts::PI * wn / fs).tan();
    // Analog prototype (buttap).
    let proto: Vec<Complex> = (0..n)
        .map(|j| {
            let m = -(n as f64) + 1.0 + 2.0 * j as f64;
            let theta = std::f64::consts::PI * m / (2.0 * n as f64);
            Complex::new(-theta.cos(), -theta.sin())
        })
        .collect();
    let (zeros, poles, gain) = match band {
        Band::Lowpass(wn) => {
            check_wn(wn)?;
            let wo = warp(wn);
            (Vec::new(), proto.iter().map(|p| p.scale(wo)).collect::<Vec<_>>(), wo.powf(n as f64))
        }
        Band::Highpass(wn) => {
            check_wn(wn)?;
            let wo = warp(wn);
            let poles: Vec<Complex> = proto.iter().map(|p| Complex::real(wo).div(*p)).collect();
            let prod = proto.iter().fold(Complex::real(1.0), |acc, p| acc.mul(p.scale(-1.0)));
            (vec![Complex::real(0.0); n], poles, Complex::real(1.0).div(prod).re)
        }
        Band::Bandpass(lo, hi) => {
            check_wn(lo)?;
            check_wn(hi)?;
            if lo >= hi {
                return Err(FilterError::BandEdges(lo, hi));
            }
            let (w1, w2) = (warp(lo), warp(hi));
            let bw = w2 - w1;
            let wo = (w1 * w2).sqrt();
            let lp: Vec<Complex> = proto.iter().map(|p| p.scale(bw).scale(0.5)).collect();
            let root = |p: &Complex| p.mul(*p).sub(Complex::real(wo * wo)).sqrt();
            let mut poles: Vec<Complex> = lp.iter().map(|p| p.add(root(p))).collect();
            poles.extend(lp.iter().map(|p| p.sub(root(p))));
            (vec![Complex::real(0.0); n], poles, bw.powf(n as f64))
        }
    };
    // Bilinear transform (bilinear_zpk), fs = 2.
    let fs2 = Complex::real(2.0 * fs);
    let degree = poles.len() - zeros.len();
    let mut zeros_z: Vec<Complex> = zeros.iter().map(|z| fs2.add(*z).div(fs2.sub(*z))).collect();
    zeros_z.extend(std::iter::repeat_n(Complex::real(-1.0), degree));
    let poles_z: Vec<Complex> = poles.iter().map(|p| fs2.add(*p).div(fs2.sub(*p))).collect();
    let num = zeros.iter().fold(Complex::real(1.0), |acc, z| acc.mul(fs2.sub(*z)));
    let den = poles.iter().fold(Complex::real(1.0), |acc, p| acc.mul(fs2.sub(*p)));
    let k = gain * num.div(den).re;
    Ok(zpk2sos_nearest(zeros_z, poles_z, k))
}

/// scipy `_cplxreal`: the complex values of conjugate pairs (one of each, positive imaginary
/// part, sorted by real part then |imaginary part|) followed by the real values, sorted.
fn complex_then_real(v: &[Complex]) -> Vec<Complex> {
    let tol = 100.0 * f64::EPSILON;
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| a.re.total_cmp(&b.re).then(a.im.abs().total_cmp(&b.im.abs())));
    let is_real = |z: &Complex| z.im.abs() <= tol * z.abs();
    let mut out: Vec<Complex> = sorted.iter().filter(|z| !is_real(z) && z.im > 0.0).copied().collect();
    out.extend(sorted.iter().filter(|z| is_real(z)).map(|z| Complex::real(z.re)));
    out
}

/// Index of the element of `from` nearest to `to` among the real ones, the complex ones, or all
/// (scipy `_nearest_real_complex_idx`; ties keep the first).
fn nearest(from: &[Complex], to: Complex, want_real: Option<bool>) -> usize {
    let mut best: Option<(f64, usize)> = None;
    for (i, z) in from.iter().enumerate() {
        if want_real.is_some_and(|r| r != (z.im == 0.0)) {
            continue;
        }
        let d = z.sub(to).abs();
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, i));
        }
    }
    best.expect("a zero of the requested kind remains").1
}

/// Index of the pole closest to the unit circle (the first of ties, as numpy's argmin).
fn worst(p: &[Complex], only: impl Fn(&Complex) -> bool) -> usize {
    let mut best: Option<(f64, usize)> = None;
    for (i, z) in p.iter().enumerate().filter(|(_, z)| only(z)) {
        let d = (1.0 - z.abs()).abs();
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, i));
        }
    }
    best.expect("a pole remains").1
}

/// Monic polynomial of up to two roots (numpy `poly`, conjugate pairs made real): `[1, c1, c2]`
/// right-aligned into three coefficients.
fn poly2(roots: &[Complex]) -> [f64; 3] {
    match roots {
        [] => [0.0, 0.0, 1.0],
        [r] => [0.0, 1.0, -r.re],
        [r1, r2] => {
            // convolve([1, −r1], [1, −r2]) = [1, −r2 − r1, r1·r2]
            let c1 = r2.scale(-1.0).add(r1.scale(-1.0));
            let c2 = r1.mul(*r2);
            [1.0, c1.re, c2.re]
        }
        _ => unreachable!("a section has at most two roots"),
    }
}

/// scipy `zpk2sos(z, p, k, pairing="nearest")` for a digital filter.
fn zpk2sos_nearest(mut z: Vec<Complex>, mut p: Vec<Complex>, k: f64) -> Sos {
    if z.len() < p.len() {
        z.resize(p.len(), Complex::real(0.0));
    }
    if p.len() < z.len() {
        p.resize(z.len(), Complex::real(0.0));
    }
    let n_sections = p.len().div_ceil(2);
    if p.len() % 2 == 1 {
        p.push(Complex::real(0.0));
        z.push(Complex::real(0.0));
    }
    let mut z = complex_then_real(&z);
    let mut p = complex_then_real(&p);
    let is_real = |c: &Complex| c.im == 0.0;
    let mut sections = vec![[0.0; 6]; n_sections];
    for si in (0..n_sections).rev() {
        let p1 = p.remove(worst(&p, |_| true));
        let reals_left = p.iter().filter(|c| is_real(c)).count();
        let (zs, ps): (Vec<Complex>, Vec<Complex>) = if is_real(&p1) && reals_left == 0 {
            // Special case (1): the last real pole, paired with the nearest real zero and a 0.
            let z1 = z.remove(nearest(&z, p1, Some(true)));
            (vec![z1, Complex::real(0.0)], vec![p1, Complex::real(0.0)])
        } else if p.len() + 1 == z.len() && !is_real(&p1) && reals_left == 1 && z.iter().filter(|c| is_real(c)).count() == 1 {
            // Special case (2): one real pole and one real zero left; pair with a complex zero.
            let z1 = z.remove(nearest(&z, p1, Some(false)));
            (vec![z1, z1.conj()], vec![p1, p1.conj()])
        } else {
            let p2 = if is_real(&p1) { p.remove(worst(&p, |c| c.im == 0.0)) } else { p1.conj() };
            if z.is_empty() {
                (vec![], vec![p1, p2])
            } else {
                let z1 = z.remove(nearest(&z, p1, None));
                if !is_real(&z1) {
                    (vec![z1, z1.conj()], vec![p1, p2])
                } else if !z.is_empty() {
                    let z2 = z.remove(nearest(&z, p1, Some(true)));
                    (vec![z1, z2], vec![p1, p2])
                } else {
                    (vec![z1], vec![p1, p2])
                }
            }
        };
        let b = poly2(&zs);
        let a = poly2(&ps);
        sections[si] = [b[0], b[1], b[2], a[0], a[1], a[2]];
    }
    for c in &mut sections[0][..3] {
        *c *= k;
    }
    Sos { sections }
}

impl Sos {
    /// Steady-state state of every section for a unit step (scipy `sosfilt_zi`): each section's
    /// `lfilter_zi`, scaled by the DC gain of the sections before it.
    pub fn unit_step_state(&self) -> SosState {
        let mut scale = 1.0;
        self.sections
            .iter()
            .map(|s| {
                let (b, a) = ([s[0], s[1], s[2]], [s[3], s[4], s[5]]);
                // lfilter_zi for two delays: solve zi = A·zi + B with A the transposed companion
                // matrix of a; B = b[1:] − a[1:]·b0. Explicitly: z0 = (B0 + B1) / (1 + a1 + a2),
                // z1 = B1 − a2·z0.
                let (b0, b1) = (b[1] - a[1] * b[0], b[2] - a[2] * b[0]);
                let z0 = (b0 + b1) / (a[0] + a[1] + a[2]);
                let z1 = b1 - a[2] * z0;
                let zi = [scale * z0, scale * z1];
                scale *= (b[0] + b[1] + b[2]) / (a[0] + a[1] + a[2]);
                zi
            })
            .collect()
    }

    /// The state in steady state for a constant input `x0`.
    pub fn steady_state(&self, x0: f64) -> SosState {
        self.unit_step_state().into_iter().map(|[a, b]| [a * x0, b * x0]).collect()
    }

    /// Samples added at each end by [`Self::filtfilt`] (scipy sosfiltfilt's default `padlen`).
    pub fn padlen(&self) -> usize {
        let trailing_b = self.sections.iter().filter(|s| s[2] == 0.0).count();
        let trailing_a = self.sections.iter().filter(|s| s[5] == 0.0).count();
        3 * (2 * self.sections.len() + 1 - trailing_b.min(trailing_a))
    }

    /// Filters `x` in place from `state` (updated), as scipy `sosfilt`.
    pub fn filter_continue(&self, x: &mut [f64], state: &mut [[f64; 2]]) {
        for v in x.iter_mut() {
            let mut cur = *v;
            for (s, z) in self.sections.iter().zip(state.iter_mut()) {
                let new = s[0] * cur + z[0];
                z[0] = s[1] * cur - s[4] * new + z[1];
                z[1] = s[2] * cur - s[5] * new;
                cur = new;
            }
            *v = cur;
        }
    }

    /// One causal pass started in the steady state of the first sample, so a trace that starts
    /// at a resting level has no start-up transient. Returns the output and the final state.
    pub fn filter_causal(&self, x: &[f64]) -> (Vec<f64>, SosState) {
        let mut y = x.to_vec();
        let mut state = self.steady_state(x.first().copied().unwrap_or(0.0));
        self.filter_continue(&mut y, &mut state);
        (y, state)
    }

    /// Zero-phase forward-backward filtering, equal to `scipy.signal.sosfiltfilt(sos, x)` with
    /// its defaults (odd padding of [`Self::padlen`] samples). The magnitude response is the
    /// filter's squared, the phase zero, so a spike or a step is not shifted in time.
    pub fn filtfilt(&self, x: &[f64]) -> Result<Vec<f64>, FilterError> {
        let (n, pad) = (x.len(), self.padlen());
        if n <= pad {
            return Err(FilterError::TooShort { len: n, padlen: pad });
        }
        let (first, last) = (x[0], x[n - 1]);
        let mut ext = Vec::with_capacity(n + 2 * pad);
        ext.extend((1..=pad).rev().map(|k| 2.0 * first - x[k]));
        ext.extend_from_slice(x);
        ext.extend((1..=pad).map(|k| 2.0 * last - x[n - 1 - k]));
        let unit = self.unit_step_state();
        let scaled = |v: f64| -> SosState { unit.iter().map(|[a, b]| [a * v, b * v]).collect() };
        let mut state = scaled(ext[0]);
        self.filter_continue(&mut ext, &mut state);
        ext.reverse();
        let mut state = scaled(ext[0]);
        self.filter_continue(&mut ext, &mut state);
        ext.reverse();
        ext.truncate(pad + n);
        ext.drain(..pad);
        Ok(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_match_scipy_butter() {
        // scipy 1.17.1: butter(4, 0.2, output="sos"), butter(3, [0.1, 0.3], "band", output="sos"),
        // butter(3, 0.1, "high", output="sos")
        let cases: [(usize, Band, &[[f64; 6]]); 3] = [
            (
                4,
                Band::Lowpass(0.2),
                &[
                    [0.00482434335771623, 0.00964868671543246, 0.00482434335771623, 1.0, -1.0485995763626117, 0.2961403575616696],
                    [1.0, 2.0, 1.0, 1.0, -1.3209134308194264, 0.6327387928852766],
                ],
            ),
            (
                3,
                Band::Bandpass(0.1, 0.3),
                &[
                    [0.01809893300751444, 0.03619786601502888, 0.01809893300751444, 1.0, -1.2840790438404122, 0.5095254494944287],
                    [1.0, 0.0, -1.0, 1.0, -1.0263940971801464, 0.6507946692078062],
                    [1.0, -2.0, 1.0, 1.0, -1.7386603322829222, 0.8385491481879397],
                ],
            ),
            (
                3,
                Band::Highpass(0.1),
                &[
                    [0.7294407226390824, -0.7294407226390824, 0.0, 1.0, -0.726542528005361, 0.0],
                    [1.0, -2.0, 1.0, 1.0, -1.647552215703991, 0.7323389172728038],
                ],
            ),
        ];
        for (order, band, want) in cases {
            let sos = butter_sos(order, band).unwrap();
            assert_eq!(sos.sections.len(), want.len(), "{band:?}");
            for (got, want) in sos.sections.iter().zip(want) {
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= 1e-14 * w.abs().max(1.0), "{band:?}: {got:?} vs {want:?}");
                }
            }
        }
        assert_eq!(butter_sos(4, Band::Lowpass(0.2)).unwrap().padlen(), 15);
        // odd order: the first-order section's trailing zeros shorten scipy's pad by 3
        assert_eq!(butter_sos(3, Band::Highpass(0.1)).unwrap().padlen(), 12);
    }

    #[test]
    fn constant_passes_a_lowpass_unchanged_and_is_removed_by_a_highpass() {
        let x = vec![-65.0; 200];
        let lp = butter_sos(3, Band::Lowpass(0.1)).unwrap();
        assert!(lp.filtfilt(&x).unwrap().iter().all(|v| (v + 65.0).abs() < 1e-9));
        assert!(lp.filter_causal(&x).0.iter().all(|v| (v + 65.0).abs() < 1e-9));
        let hp = butter_sos(2, Band::Highpass(0.1)).unwrap();
        assert!(hp.filtfilt(&x).unwrap().iter().all(|v| v.abs() < 1e-9));
        assert!(matches!(lp.filtfilt(&x[..12]), Err(FilterError::TooShort { len: 12, padlen: 12 })));
        assert_eq!(butter_sos(4, Band::Lowpass(1.0)), Err(FilterError::Cutoff(1.0)));
        assert_eq!(butter_sos(0, Band::Lowpass(0.5)), Err(FilterError::Order(0)));
        assert_eq!(butter_sos(2, Band::Bandpass(0.3, 0.2)), Err(FilterError::BandEdges(0.3, 0.2)));
    }

    #[test]
    fn causal_filtering_in_pieces_equals_filtering_whole() {
        let x: Vec<f64> = (0..1000).map(|i| ((i as f64) * 0.05).sin() + 0.3 * ((i as f64) * 0.9).cos()).collect();
        let sos = butter_sos(4, Band::Bandpass(0.02, 0.3)).unwrap();
        let (whole, _) = sos.filter_causal(&x);
        let mut state = sos.steady_state(x[0]);
        let mut pieces = Vec::new();
        for part in x.chunks(137) {
            let mut p = part.to_vec();
            sos.filter_continue(&mut p, &mut state);
            pieces.extend(p);
        }
        assert_eq!(whole, pieces);
    }
}
