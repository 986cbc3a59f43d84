//! Rational polyphase resampling with a linear-phase anti-alias FIR, equal to
//! `scipy.signal.resample_poly(x, up, down)` with its default Kaiser window (β = 5).
//!
//! Why this and not decimation after a Butterworth low-pass: the polyphase form takes any
//! rational ratio (20 kHz → 8 kHz is 2/5; up-sampling too), the FIR is linear-phase, so spikes
//! and steps keep their timing without a second backward pass, and it is one well-known
//! reference (scipy) that the numbers can be checked against. An IIR decimator would need
//! an integer ratio and filtfilt over the whole trace.
//!
//! The filter (scipy `firwin(2·half + 1, 1/max(up, down), window=("kaiser", 5.0))`, half = 10·
//! max(up, down) taps on each side) is a windowed sinc with its cutoff at the lower of the two
//! Nyquist frequencies, scaled to unit DC gain and then by `up` (the zeros inserted by
//! up-sampling divide the level by `up`). Output sample j sits at input time j·down/up samples:
//! the first output sample is at the time of the first input sample, and the output has
//! ceil(n·up/down) samples. Outside the trace the input is taken as its background value
//! ([`Padding`]): scipy's default pads with zeros, which pulls the ends of a trace resting at
//! −65 mV towards 0 mV, so the stages default to the mean.
//!
//! Polyphase evaluation (Crochiere & Rabiner, "Multirate Digital Signal Processing", 1983,
//! §3.3): y[j] = Σ_k h[k]·u[j·down − k] where u is x with up − 1 zeros between samples; only the
//! taps k ≡ j·down (mod up) meet a non-zero sample, so each output costs len(h)/up products.

/// What the trace is taken to be outside its ends (scipy `resample_poly`'s `padtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Zeros (scipy's default, `padtype="constant"`).
    Zero,
    /// The trace's mean (`padtype="mean"`).
    Mean,
    /// The trace's median (`padtype="median"`).
    Median,
}

/// Why a ratio cannot be resampled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResampleError {
    #[error("the ratio {to_hz} Hz / {from_hz} Hz is not a fraction up/down with up and down at most {max} (the FIR would have more than 20·{max} taps)")]
    Ratio { from_hz: f64, to_hz: f64, max: u64 },
}

/// `(up, down)` in lowest terms with `up / down = to_hz / from_hz` to 1e-9 relative and both at
/// most `max`, found by continued fractions (the best rational approximations).
pub fn rational_ratio(from_hz: f64, to_hz: f64, max: u64) -> Result<(u64, u64), ResampleError> {
    let err = || ResampleError::Ratio { from_hz, to_hz, max };
    if !(from_hz.is_finite() && to_hz.is_finite() && from_hz > 0.0 && to_hz > 0.0) {
        return Err(err());
    }
    let target = to_hz / from_hz;
    let (mut h0, mut h1, mut k0, mut k1) = (0u64, 1u64, 1u64, 0u64);
    let mut x = target;
    for _ in 0..64 {
        let a = x.floor();
        if a > max as f64 {
            break;
        }
        let a = a as u64;
        let (h2, k2) = (a.saturating_mul(h1).saturating_add(h0), a.saturating_mul(k1).saturating_add(k0));
        if h2 > max || k2 > max {
            break;
        }
        (h0, h1, k0, k1) = (h1, h2, k1, k2);
        if ((h1 as f64 / k1 as f64) - target).abs() <= 1e-9 * target {
            return Ok((h1, k1));
        }
        let frac = x - a as f64;
        if frac == 0.0 {
            break;
        }
        x = 1.0 / frac;
    }
    Err(err())
}

/// Modified Bessel function of the first kind, order 0, by its power series
/// I0(x) = Σ ((x/2)^k / k!)² (Abramowitz & Stegun 9.6.12), to full double precision for the
/// arguments of a Kaiser window (|x| ≤ β).
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 1..500 {
        term *= q / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Low-pass FIR of `numtaps` (odd) taps with cutoff `cutoff` (fraction of Nyquist), Kaiser
/// window β, unit DC gain: scipy `firwin(numtaps, cutoff, window=("kaiser", beta))`.
pub fn firwin_kaiser(numtaps: usize, cutoff: f64, beta: f64) -> Vec<f64> {
    let alpha = 0.5 * (numtaps as f64 - 1.0);
    let sinc = |x: f64| {
        let y = std::f64::consts::PI * if x == 0.0 { 1e-20 } else { x };
        y.sin() / y
    };
    let i0_beta = bessel_i0(beta);
    let mut h: Vec<f64> = (0..numtaps)
        .map(|i| {
            let m = i as f64 - alpha;
            let r = (i as f64 - alpha) / alpha;
            let w = bessel_i0(beta * (1.0 - r * r).sqrt()) / i0_beta;
            cutoff * sinc(cutoff * m) * w
        })
        .collect();
    let s: f64 = h.iter().sum();
    h.iter_mut().for_each(|v| *v /= s);
    h
}

/// A resampler by `up / down` with scipy `resample_poly`'s default filter.
#[derive(Debug, Clone)]
pub struct Resampler {
    pub up: usize,
    pub down: usize,
    /// The FIR, already scaled by `up`.
    taps: Vec<f64>,
    half_len: usize,
}

impl Resampler {
    pub fn new(up: usize, down: usize) -> Resampler {
        let g = gcd(up, down);
        let (up, down) = (up / g, down / g);
        let max_rate = up.max(down);
        let half_len = 10 * max_rate;
        let mut taps = firwin_kaiser(2 * half_len + 1, 1.0 / max_rate as f64, 5.0);
        taps.iter_mut().for_each(|v| *v *= up as f64);
        Resampler { up, down, taps, half_len }
    }

    /// Number of output samples for `n` input samples: ceil(n·up/down).
    pub fn output_len(&self, n: usize) -> usize {
        (n * self.up).div_ceil(self.down)
    }

    /// Resamples `x`; an empty trace gives an empty trace.
    pub fn apply(&self, x: &[f64], padding: Padding) -> Vec<f64> {
        if self.up == 1 && self.down == 1 {
            return x.to_vec();
        }
        if x.is_empty() {
            return Vec::new();
        }
        let background = match padding {
            Padding::Zero => 0.0,
            Padding::Mean => x.iter().sum::<f64>() / x.len() as f64,
            Padding::Median => {
                let mut s = x.to_vec();
                s.sort_unstable_by(f64::total_cmp);
                let m = s.len() / 2;
                if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 }
            }
        };
        let (up, down, n) = (self.up, self.down, x.len());
        // scipy shifts the filter by n_pre_pad zeros so output sample n_pre_remove lands on the
        // first input sample; tap k of the padded filter is tap k − n_pre_pad of `taps`.
        let pre_pad = down - self.half_len % down;
        let pre_remove = (self.half_len + pre_pad) / down;
        (0..self.output_len(n))
            .map(|j| {
                let m = (j + pre_remove) * down;
                // Inputs i meet tap k = m − i·up of the padded filter; only taps inside `taps`
                // (pre_pad ≤ k < pre_pad + len) are non-zero. Oldest input first, scipy's order.
                let last_tap = pre_pad + self.taps.len() - 1;
                if m < pre_pad {
                    return background;
                }
                let i_hi = ((m - pre_pad) / up).min(n - 1);
                let i_lo = if m > last_tap { (m - last_tap).div_ceil(up) } else { 0 };
                let mut acc = 0.0;
                if i_lo <= i_hi {
                    for (i, xi) in x[i_lo..=i_hi].iter().enumerate() {
                        acc += (xi - background) * self.taps[m - (i_lo + i) * up - pre_pad];
                    }
                }
                acc + background
            })
            .collect()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_found_in_lowest_terms_or_refused() {
        assert_eq!(rational_ratio(20_000.0, 5_000.0, 1000), Ok((1, 4)));
        assert_eq!(rational_ratio(20_000.0, 8_000.0, 1000), Ok((2, 5)));
        assert_eq!(rational_ratio(44_100.0, 20_000.0, 1000), Ok((200, 441)));
        assert_eq!(rational_ratio(10_000.0, 10_000.0, 1000), Ok((1, 1)));
        assert!(rational_ratio(20_000.0, 20_000.0 / std::f64::consts::PI, 1000).is_err());
        assert!(rational_ratio(20_000.0, 0.0, 1000).is_err());
    }

    #[test]
    fn firwin_matches_scipy_and_a_constant_keeps_its_level() {
        // scipy 1.17.1: firwin(11, 0.3, window=("kaiser", 5.0))
        let want = [
            -0.0023718003085671825,
            -0.008505447569927146,
            0.013805798765590032,
            0.10602505511737073,
            0.2388184727130681,
            0.304455842564931,
            0.2388184727130681,
            0.10602505511737073,
            0.013805798765590032,
            -0.008505447569927146,
            -0.0023718003085671825,
        ];
        let h = firwin_kaiser(11, 0.3, 5.0);
        for (g, w) in h.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{h:?}");
        }
        let r = Resampler::new(2, 5);
        let y = r.apply(&vec![-65.0; 101], Padding::Mean);
        assert_eq!(y.len(), 41);
        assert!(y.iter().all(|v| (v + 65.0).abs() < 1e-9), "{y:?}");
        // Zero padding pulls the ends towards 0 (scipy's default behaviour); in the middle only
        // the polyphase DC ripple of the windowed sinc remains (1e-4 relative).
        let z = r.apply(&vec![-65.0; 101], Padding::Zero);
        assert!(z[0] > -60.0 && (z[20] + 65.0).abs() < 1e-2, "{} {}", z[0], z[20]);
    }
}
