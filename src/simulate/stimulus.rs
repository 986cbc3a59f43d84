//! Current-clamp stimulus protocols rendered as sampled currents in pA at an explicit sampling
//! rate: the Allen Cell Types shapes (long square, short square and its triple, ramp, step series
//! for F-I curves, and the "Noise 1/2" pink-noise sweep) plus generic white, pink and
//! Ornstein-Uhlenbeck noise.
//!
//! A [`StimulusSpec`] is the user-facing, serde-tagged description (`protocol = "long_square"`,
//! ...); [`StimulusSpec::render`] returns a `Vec<f64>`, [`StimulusSpec::fill`] writes into a slice
//! whose length [`StimulusSpec::n_samples`] gives. The building blocks are plain slice kernels
//! ([`fill_square`], [`fill_ramp`], [`fill_white_noise`], [`pink_noise`], [`fill_noise_epochs`],
//! [`fill_ornstein_uhlenbeck`]), shared with the simulation stages, which generate on a dt grid
//! ([`square_step`], [`samples_for`]) and move a stimulus to another step ([`resample_linear`]).
//! Each shape has one implementation here.
//!
//! Time grid: sample k is at t = k / fs. A window [onset, onset + duration) covers the samples
//! round(onset·fs) .. round((onset + duration)·fs) (end exclusive); rounding, not truncation,
//! so that 1.02 s at 200 kHz is sample 204,000 even though 1.02·200000 is 203999.99999999997 in
//! floating point. This matches the Allen metadata: a 1 s long square at 200 kHz spans 200,000
//! samples and `ephys_sweeps.json` reports `stimulus_duration` = (last − first sample)/fs =
//! 0.999995 s. Noise is seeded ([`rand::rngs::StdRng::seed_from_u64`]), so a spec renders the same
//! samples on every run and thread count.

use std::f64::consts::TAU;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Renders longer than this many samples are refused (a typo in a duration or rate must not
/// allocate gigabytes): 2^30 samples = 8 GiB of f64.
pub const MAX_SAMPLES: usize = 1 << 30;

/// Errors of stimulus validation and rendering.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StimulusError {
    #[error("stimulus `{protocol}`: field `{field}` is {value}: {reason}")]
    Field {
        protocol: &'static str,
        field: &'static str,
        value: f64,
        reason: &'static str,
    },
    #[error("sampling rate {0} Hz must be finite and > 0")]
    SampleRate(f64),
    #[error("stimulus `{protocol}` would have {samples} samples (limit {MAX_SAMPLES})")]
    TooLong {
        protocol: &'static str,
        samples: f64,
    },
    #[error("output slice has {got} samples, the stimulus has {expected}")]
    Length { expected: usize, got: usize },
    #[error("{duration_s} s at dt {dt_s} s gives no sample")]
    NoSample { duration_s: f64, dt_s: f64 },
    #[error("{duration_s} s at dt {dt_s} s is more than 1e8 samples")]
    TooManySamples { duration_s: f64, dt_s: f64 },
}

fn default_onset_allen_s() -> f64 {
    1.02
}
fn default_noise_onset_s() -> f64 {
    2.02
}
fn default_long_duration_s() -> f64 {
    1.0
}
fn default_short_duration_s() -> f64 {
    0.003
}
fn default_one() -> usize {
    1
}
fn default_ramp_slope() -> f64 {
    25.0
}
fn default_f_min() -> f64 {
    1.0
}
fn default_f_max() -> f64 {
    100.0
}
fn default_multipliers() -> Vec<f64> {
    vec![0.75, 1.0, 1.5]
}
fn default_cv() -> f64 {
    0.2
}
fn default_epoch_s() -> f64 {
    3.0
}
fn default_epoch_period_s() -> f64 {
    8.0
}
fn default_tail_s() -> f64 {
    1.0
}

/// A stimulus protocol. Unless `total_s` is given, a rendered sweep ends `tail_s` after the
/// stimulus (Allen sweeps record on after the stimulus, too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "snake_case", deny_unknown_fields)]
pub enum StimulusSpec {
    /// Allen "Long Square": one step of `amplitude_pa` for `duration_s`.
    LongSquare {
        /// Step amplitude above baseline [pA].
        amplitude_pa: f64,
        /// Step onset (Allen: 1.02 s) [s].
        #[serde(default = "default_onset_allen_s")]
        onset_s: f64,
        /// Step duration (Allen: 1 s) [s].
        #[serde(default = "default_long_duration_s")]
        duration_s: f64,
        /// Holding current outside the step [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Allen "Short Square" (3 ms) and, with `n_pulses` 3, "Short Square - Triple".
    ShortSquare {
        /// Pulse amplitude above baseline [pA].
        amplitude_pa: f64,
        /// Onset of the first pulse (Allen: 1.02 s; triple: 2.02 s) [s].
        #[serde(default = "default_onset_allen_s")]
        onset_s: f64,
        /// Duration of each pulse (Allen: 3 ms) [s].
        #[serde(default = "default_short_duration_s")]
        duration_s: f64,
        /// Number of pulses [1].
        #[serde(default = "default_one")]
        n_pulses: usize,
        /// Onset-to-onset interval of the pulses, needed when n_pulses > 1 [s].
        #[serde(default)]
        interval_s: f64,
        /// Holding current outside the pulses [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Allen "Ramp": start_pa + slope·(t − onset) from onset for duration_s.
    Ramp {
        /// Slope (Allen: 25 pA/s) [pA/s].
        #[serde(default = "default_ramp_slope")]
        slope_pa_per_s: f64,
        /// Ramp onset (Allen: 1.02 s) [s].
        #[serde(default = "default_onset_allen_s")]
        onset_s: f64,
        /// Ramp duration [s].
        duration_s: f64,
        /// Current above baseline at the onset sample [pA].
        #[serde(default)]
        start_pa: f64,
        /// Holding current outside the ramp [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// F-I protocol: `n_sweeps` long squares of first_pa, first_pa + step_pa, ..., rendered back to
    /// back, each sweep `sweep_s` long (see [`StimulusSpec::n_sweeps`]).
    StepSeries {
        /// Amplitude of the first sweep [pA].
        first_pa: f64,
        /// Amplitude increment per sweep [pA].
        step_pa: f64,
        /// Number of sweeps [1].
        n_sweeps: usize,
        /// Step onset within each sweep [s].
        #[serde(default = "default_onset_allen_s")]
        onset_s: f64,
        /// Step duration [s].
        #[serde(default = "default_long_duration_s")]
        duration_s: f64,
        /// Length of each sweep; default: onset + duration + tail_s [s].
        #[serde(default)]
        sweep_s: Option<f64>,
        /// Holding current outside the steps [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Recording after each step when sweep_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Gaussian white noise, independent per sample.
    WhiteNoise {
        /// Mean within the window [pA].
        mean_pa: f64,
        /// Standard deviation per sample [pA].
        sd_pa: f64,
        /// Seed of the StdRng stream [1].
        seed: u64,
        /// Window onset [s].
        #[serde(default)]
        onset_s: f64,
        /// Window duration [s].
        duration_s: f64,
        /// Current outside the window [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Pink (1/f power) noise as the Allen Institute builds it: sines at f_min, f_min + f_step,
    /// ..., f_max with amplitude 1/sqrt(f) and seeded uniform random phases, normalised to the
    /// window's mean and standard deviation.
    PinkNoise {
        /// Mean within the window [pA].
        mean_pa: f64,
        /// Standard deviation within the window [pA].
        sd_pa: f64,
        /// Seed of the phases [1].
        seed: u64,
        /// Window onset [s].
        #[serde(default)]
        onset_s: f64,
        /// Window duration [s].
        duration_s: f64,
        /// Lowest frequency [Hz].
        #[serde(default = "default_f_min")]
        f_min_hz: f64,
        /// Highest frequency [Hz].
        #[serde(default = "default_f_max")]
        f_max_hz: f64,
        /// Frequency spacing [Hz].
        #[serde(default = "default_f_min")]
        f_step_hz: f64,
        /// Current outside the window [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Ornstein-Uhlenbeck noise, exact discretisation x[k] = a·x[k−1] + sd·sqrt(1 − a²)·w[k],
    /// a = exp(−1/(fs·τ)), as the peer scripts (`make_trace.py`, `glif_configs.py`) make it.
    OrnsteinUhlenbeck {
        /// Mean [pA].
        mean_pa: f64,
        /// Stationary standard deviation [pA].
        sd_pa: f64,
        /// Correlation time [s].
        tau_s: f64,
        /// Seed of the StdRng stream [1].
        seed: u64,
        /// Window onset [s].
        #[serde(default)]
        onset_s: f64,
        /// Window duration [s].
        duration_s: f64,
        /// Start from a stationary draw instead of x[−1] = 0 (the peers' convention) [bool].
        #[serde(default)]
        stationary_start: bool,
        /// Current outside the window [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
    /// Allen "Noise 1" / "Noise 2": epochs of pink noise (CV 0.2) around multiples of rheobase,
    /// separated by silence. Timing from `ephys_sweeps.json` (specimen 483101699, sweeps 62-68):
    /// onset 2.02 s, 3 s epochs every 8 s, `stimulus_duration` 18.999995 s. The amplitude the
    /// metadata lists (`stimulus_absolute_amplitude`) is the largest epoch's mean. The Allen
    /// generator (`AllenInstitute/ephys_pink_noise`, `make_pink.py`) uses one pink waveform for all
    /// epochs, sines of 1-100 Hz at 1 Hz spacing; "Noise 1" and "Noise 2" differ only in the phases,
    /// here the seed.
    AllenNoise {
        /// Rheobase the epochs are scaled by [pA].
        rheobase_pa: f64,
        /// Epoch means as multiples of rheobase (study 3: 0.75, 1.0, 1.5) [1].
        #[serde(default = "default_multipliers")]
        multipliers: Vec<f64>,
        /// Coefficient of variation within each epoch [1].
        #[serde(default = "default_cv")]
        cv: f64,
        /// Seed of the phases [1].
        seed: u64,
        /// Onset of the first epoch [s].
        #[serde(default = "default_noise_onset_s")]
        onset_s: f64,
        /// Epoch duration [s].
        #[serde(default = "default_epoch_s")]
        epoch_s: f64,
        /// Onset-to-onset interval of the epochs [s].
        #[serde(default = "default_epoch_period_s")]
        epoch_period_s: f64,
        /// Lowest frequency [Hz].
        #[serde(default = "default_f_min")]
        f_min_hz: f64,
        /// Highest frequency [Hz].
        #[serde(default = "default_f_max")]
        f_max_hz: f64,
        /// Current outside the epochs [pA].
        #[serde(default)]
        baseline_pa: f64,
        /// Sweep length; default: stimulus end + tail_s [s].
        #[serde(default)]
        total_s: Option<f64>,
        /// Recording after the stimulus when total_s is not given [s].
        #[serde(default = "default_tail_s")]
        tail_s: f64,
    },
}

/// Sample index of time t: round(t·fs), see the module doc.
pub fn sample_index(t_s: f64, sample_rate_hz: f64) -> usize {
    (t_s * sample_rate_hz).round().max(0.0) as usize
}

/// Sets `out[start..end]` (clipped to the slice) to `amplitude_pa`.
pub fn fill_square(out: &mut [f64], start: usize, end: usize, amplitude_pa: f64) {
    let end = end.min(out.len());
    if start < end {
        out[start..end].fill(amplitude_pa);
    }
}

/// `out[start + j] = start_pa + slope_pa_per_s · j / fs` for the window (clipped to the slice).
pub fn fill_ramp(
    out: &mut [f64],
    start: usize,
    end: usize,
    start_pa: f64,
    slope_pa_per_s: f64,
    fs: f64,
) {
    let end = end.min(out.len());
    for (j, x) in out
        .get_mut(start..end)
        .unwrap_or_default()
        .iter_mut()
        .enumerate()
    {
        *x = start_pa + slope_pa_per_s * (j as f64 / fs);
    }
}

/// Independent N(mean, sd²) samples from `rng`.
pub fn fill_white_noise(out: &mut [f64], mean_pa: f64, sd_pa: f64, rng: &mut StdRng) {
    for x in out {
        let w: f64 = rng.sample(StandardNormal);
        *x = mean_pa + sd_pa * w;
    }
}

/// Ornstein-Uhlenbeck samples at interval dt_s: x[k] = a·x[k−1] + sd·sqrt(1−a²)·w[k] with
/// a = exp(−dt/τ), w ~ N(0, 1), output mean + x. This is the exact transition of the continuous
/// process (no Euler error at any dt), which is also what the peer scripts use. `x_prev` is
/// x[−1]: 0 for the peers' convention, or a stationary draw sd·w.
pub fn fill_ornstein_uhlenbeck(
    out: &mut [f64],
    mean_pa: f64,
    sd_pa: f64,
    tau_s: f64,
    dt_s: f64,
    x_prev: f64,
    rng: &mut StdRng,
) {
    let a = (-dt_s / tau_s).exp();
    let b = sd_pa * (1.0 - a * a).sqrt();
    let mut x = x_prev;
    for y in out {
        let w: f64 = rng.sample(StandardNormal);
        x = a * x + b * w;
        *y = mean_pa + x;
    }
}

/// Pink (1/f power) noise, the one synthesis of the crate: Σ_f a_f·sin(2π f t + φ_f) over
/// `freqs_hz` with a_f = f^(−1/2), φ_f uniform in [0, 2π) from `rng` (drawn in frequency order),
/// at t = k·dt_s for k = 0..n, scaled to unit standard deviation analytically (σ² = Σ a_f²/2,
/// which is the sample variance over whole periods of every line). This is the Allen Institute's
/// recipe (`AllenInstitute/ephys_pink_noise`, `make_pink.py`: sines at 1/f^½ amplitudes with
/// random phases). Each sinusoid advances by a complex rotation per sample, so the inner loop has
/// no `sin` call.
pub fn pink_noise(n: usize, dt_s: f64, freqs_hz: impl IntoIterator<Item = f64>, rng: &mut StdRng) -> Vec<f64> {
    // (amplitude, phase, angular step per sample), phases drawn once in frequency order
    let mut comps: Vec<(f64, f64, f64)> = freqs_hz
        .into_iter()
        .map(|f| {
            let phase = rng.random_range(0.0..TAU);
            (1.0 / f.sqrt(), phase, TAU * f * dt_s)
        })
        .collect();
    let var: f64 = comps.iter().map(|c| c.0 * c.0 / 2.0).sum();
    let norm = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    for c in &mut comps {
        c.0 *= norm;
    }
    let mut out = vec![0.0; n];
    for &(amp, phase, step) in &comps {
        let (mut s, mut c) = phase.sin_cos();
        let (ds, dc) = step.sin_cos();
        for x in out.iter_mut() {
            *x += amp * s;
            let s_next = s * dc + c * ds;
            c = c * dc - s * ds;
            s = s_next;
        }
    }
    out
}

/// The lines k·f_step (k ≥ 1) in [f_low, f_high]: the frequencies of a noise that repeats every
/// 1/f_step seconds (f_step = 1/epoch makes every epoch whole periods of every line).
pub fn frequency_lines(f_low_hz: f64, f_high_hz: f64, f_step_hz: f64) -> impl Iterator<Item = f64> {
    let k_lo = (f_low_hz / f_step_hz).ceil().max(1.0) as usize;
    let k_hi = (f_high_hz / f_step_hz).floor() as usize;
    (k_lo..=k_hi).map(move |k| k as f64 * f_step_hz)
}

/// Subtracts the slice's mean and divides by its standard deviation (ddof 0, as `np.std`); a
/// constant slice becomes zeros.
pub fn standardize(x: &mut [f64]) {
    if x.is_empty() {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    let inv = if sd > 0.0 { 1.0 / sd } else { 0.0 };
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
}

/// Epochs of one frozen pink-noise waveform around multiples of a rheobase, separated by silence:
/// the shape of Allen "Noise 1" / "Noise 2" (Allen Cell Types electrophysiology white paper;
/// specimen 483101699's noise sweeps: three 3 s epochs at 0.75, 1.0 and 1.5 × rheobase, CV 0.2,
/// 5 s apart). Times in s, currents in the caller's unit.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseEpochs<'a> {
    /// Mean of each epoch, as multiples of `rheobase`.
    pub multipliers: &'a [f64],
    pub rheobase: f64,
    /// Standard deviation over mean within an epoch.
    pub cv: f64,
    /// Silence before the first epoch.
    pub lead_s: f64,
    pub epoch_s: f64,
    /// Silence between epochs.
    pub gap_s: f64,
    /// The noise lines (e.g. [`frequency_lines`]).
    pub freqs_hz: Vec<f64>,
    /// Scale the noise to zero mean and unit σ over one epoch's own samples, as make_pink.py does
    /// (`np.std`), instead of analytically ([`pink_noise`]); the two agree when an epoch holds
    /// whole periods of every line.
    pub standardize: bool,
    /// Current outside the epochs (the caller's `out` holds it already) and added inside them.
    pub baseline: f64,
}

impl NoiseEpochs<'_> {
    /// Length of the protocol: lead, the epochs and the gaps between them.
    pub fn protocol_s(&self) -> f64 {
        let n = self.multipliers.len();
        self.lead_s + n as f64 * self.epoch_s + (n.saturating_sub(1)) as f64 * self.gap_s
    }
}

/// Writes the epochs of `p` into `out` (sampled every `dt_s`, its length the sweep's): epoch e
/// holds baseline + m_e·rheobase·(1 + cv·z[k]), z one unit-σ [`pink_noise`] realisation drawn
/// from `rng` and reused in every epoch (a frozen noise, as repeated sweeps need). Epoch starts
/// are whole samples: round(lead/dt), then each after the previous end plus round(gap/dt);
/// epochs are clipped at the end of `out`.
pub fn fill_noise_epochs(out: &mut [f64], dt_s: f64, p: &NoiseEpochs, rng: &mut StdRng) -> Result<(), StimulusError> {
    let total = out.len();
    let epoch_n = samples_for(p.epoch_s, dt_s)?;
    let lead_n = (p.lead_s / dt_s).round() as usize;
    let gap_n = (p.gap_s / dt_s).round() as usize;
    // Analytic scaling makes each sample independent of the length, so an epoch cut by the end
    // of `out` need not be generated whole; standardizing needs the whole epoch.
    let n = if p.standardize { epoch_n } else { epoch_n.min(total) };
    let mut noise = pink_noise(n, dt_s, p.freqs_hz.iter().copied(), rng);
    if p.standardize {
        standardize(&mut noise);
    }
    let mut start = lead_n;
    for &mult in p.multipliers {
        if start >= total {
            break;
        }
        let mean = mult * p.rheobase;
        let end = (start + epoch_n).min(total);
        for (k, x) in out[start..end].iter_mut().enumerate() {
            *x = p.baseline + mean * (1.0 + p.cv * noise[k]);
        }
        start = end + gap_n;
    }
    Ok(())
}

/// Separate noise realisations from one seed (e.g. Noise 1 and Noise 2 of one stage): the seed
/// mixed with `which` by the SplitMix64 finaliser (Steele, Lea & Flood 2014).
pub fn noise_seed(seed: u64, which: u64) -> u64 {
    let mut z = seed ^ which.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Upper bound on a stimulus generated on a dt grid (1e8 samples = 800 MB of f64): guards a
/// mistyped duration or dt against allocating unbounded memory.
pub const MAX_GENERATED_SAMPLES: f64 = 1e8;

/// Samples of `duration_s` on the grid k·dt_s: round(duration/dt), at least 1 and at most
/// [`MAX_GENERATED_SAMPLES`].
pub fn samples_for(duration_s: f64, dt_s: f64) -> Result<usize, StimulusError> {
    let n = (duration_s / dt_s).round();
    if !(n.is_finite() && n >= 1.0) {
        return Err(StimulusError::NoSample { duration_s, dt_s });
    }
    if n > MAX_GENERATED_SAMPLES {
        return Err(StimulusError::TooManySamples { duration_s, dt_s });
    }
    Ok(n as usize)
}

/// A square step on the grid k·dt_s lasting `total_s` ([`samples_for`] samples): `amplitude` on
/// samples round(onset/dt) .. round((onset + duration)/dt) (end exclusive, clipped to the trace),
/// zero elsewhere. Rounding the edges' sample indices keeps k·dt rounding from moving the onset
/// by a sample.
pub fn square_step(dt_s: f64, onset_s: f64, duration_s: f64, total_s: f64, amplitude: f64) -> Result<Vec<f64>, StimulusError> {
    let mut out = vec![0.0; samples_for(total_s, dt_s)?];
    let on = (onset_s / dt_s).round() as usize;
    let off = ((onset_s + duration_s) / dt_s).round() as usize;
    fill_square(&mut out, on, off, amplitude);
    Ok(out)
}

/// Linear interpolation of `x` (sampled every `dt_from_s`) onto the grid k·`dt_to_s` over the same
/// duration (n_from·dt_from); the last partial step is dropped rather than extrapolated.
pub fn resample_linear(x: &[f64], dt_from_s: f64, dt_to_s: f64) -> Vec<f64> {
    if x.is_empty() {
        return Vec::new();
    }
    if dt_from_s == dt_to_s {
        return x.to_vec();
    }
    let duration = x.len() as f64 * dt_from_s;
    let n = ((duration / dt_to_s) + 1e-9).floor().max(1.0) as usize;
    let last = x.len() - 1;
    (0..n)
        .map(|k| {
            let pos = k as f64 * dt_to_s / dt_from_s;
            let i = (pos.floor() as usize).min(last);
            if i >= last {
                return x[last];
            }
            let frac = pos - i as f64;
            x[i] + (x[i + 1] - x[i]) * frac
        })
        .collect()
}

impl StimulusSpec {
    /// The protocol name as written in configs.
    pub fn protocol(&self) -> &'static str {
        match self {
            StimulusSpec::LongSquare { .. } => "long_square",
            StimulusSpec::ShortSquare { .. } => "short_square",
            StimulusSpec::Ramp { .. } => "ramp",
            StimulusSpec::StepSeries { .. } => "step_series",
            StimulusSpec::WhiteNoise { .. } => "white_noise",
            StimulusSpec::PinkNoise { .. } => "pink_noise",
            StimulusSpec::OrnsteinUhlenbeck { .. } => "ornstein_uhlenbeck",
            StimulusSpec::AllenNoise { .. } => "allen_noise",
        }
    }

    /// Number of sweeps the protocol renders back to back (the step series; 1 for the others).
    pub fn n_sweeps(&self) -> usize {
        match self {
            StimulusSpec::StepSeries { n_sweeps, .. } => *n_sweeps,
            _ => 1,
        }
    }

    fn err(&self, field: &'static str, value: f64, reason: &'static str) -> StimulusError {
        StimulusError::Field {
            protocol: self.protocol(),
            field,
            value,
            reason,
        }
    }

    /// End time of the stimulus proper (last window end) [s].
    fn stimulus_end_s(&self) -> f64 {
        match self {
            StimulusSpec::LongSquare {
                onset_s,
                duration_s,
                ..
            }
            | StimulusSpec::Ramp {
                onset_s,
                duration_s,
                ..
            }
            | StimulusSpec::WhiteNoise {
                onset_s,
                duration_s,
                ..
            }
            | StimulusSpec::PinkNoise {
                onset_s,
                duration_s,
                ..
            }
            | StimulusSpec::OrnsteinUhlenbeck {
                onset_s,
                duration_s,
                ..
            }
            | StimulusSpec::StepSeries {
                onset_s,
                duration_s,
                ..
            } => onset_s + duration_s,
            StimulusSpec::ShortSquare {
                onset_s,
                duration_s,
                n_pulses,
                interval_s,
                ..
            } => onset_s + (n_pulses.saturating_sub(1)) as f64 * interval_s + duration_s,
            StimulusSpec::AllenNoise {
                onset_s,
                epoch_s,
                epoch_period_s,
                multipliers,
                ..
            } => onset_s + (multipliers.len().saturating_sub(1)) as f64 * epoch_period_s + epoch_s,
        }
    }

    /// The sweep's `total_s` (or `sweep_s` of a step series) and `tail_s` fields.
    fn total_and_tail(&self) -> (Option<f64>, f64) {
        match self {
            StimulusSpec::LongSquare {
                total_s, tail_s, ..
            }
            | StimulusSpec::ShortSquare {
                total_s, tail_s, ..
            }
            | StimulusSpec::Ramp {
                total_s, tail_s, ..
            }
            | StimulusSpec::WhiteNoise {
                total_s, tail_s, ..
            }
            | StimulusSpec::PinkNoise {
                total_s, tail_s, ..
            }
            | StimulusSpec::OrnsteinUhlenbeck {
                total_s, tail_s, ..
            }
            | StimulusSpec::AllenNoise {
                total_s, tail_s, ..
            } => (*total_s, *tail_s),
            StimulusSpec::StepSeries {
                sweep_s, tail_s, ..
            } => (*sweep_s, *tail_s),
        }
    }

    /// Length of one sweep [s].
    fn sweep_length_s(&self) -> f64 {
        let (total, tail) = self.total_and_tail();
        total.unwrap_or(self.stimulus_end_s() + tail)
    }

    /// Checks every field for finiteness and physical sense.
    pub fn validate(&self) -> Result<(), StimulusError> {
        let mut finite: Vec<(&'static str, f64)> = Vec::new();
        let mut nonneg: Vec<(&'static str, f64)> = Vec::new();
        let mut positive: Vec<(&'static str, f64)> = Vec::new();
        let (total, tail) = self.total_and_tail();
        nonneg.push(("tail_s", tail));
        if let Some(t) = total {
            positive.push(("total_s", t));
        }
        match self {
            StimulusSpec::LongSquare {
                amplitude_pa,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                finite.extend([
                    ("amplitude_pa", *amplitude_pa),
                    ("baseline_pa", *baseline_pa),
                ]);
                nonneg.extend([("onset_s", *onset_s), ("duration_s", *duration_s)]);
            }
            StimulusSpec::ShortSquare {
                amplitude_pa,
                onset_s,
                duration_s,
                n_pulses,
                interval_s,
                baseline_pa,
                ..
            } => {
                finite.extend([
                    ("amplitude_pa", *amplitude_pa),
                    ("baseline_pa", *baseline_pa),
                ]);
                nonneg.extend([
                    ("onset_s", *onset_s),
                    ("duration_s", *duration_s),
                    ("interval_s", *interval_s),
                ]);
                if *n_pulses == 0 {
                    return Err(self.err("n_pulses", 0.0, "must be >= 1"));
                }
                if *n_pulses > 1 && interval_s < duration_s {
                    return Err(self.err(
                        "interval_s",
                        *interval_s,
                        "pulses overlap: must be >= duration_s",
                    ));
                }
            }
            StimulusSpec::Ramp {
                slope_pa_per_s,
                onset_s,
                duration_s,
                start_pa,
                baseline_pa,
                ..
            } => {
                finite.extend([
                    ("slope_pa_per_s", *slope_pa_per_s),
                    ("start_pa", *start_pa),
                    ("baseline_pa", *baseline_pa),
                ]);
                nonneg.extend([("onset_s", *onset_s), ("duration_s", *duration_s)]);
            }
            StimulusSpec::StepSeries {
                first_pa,
                step_pa,
                n_sweeps,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                finite.extend([
                    ("first_pa", *first_pa),
                    ("step_pa", *step_pa),
                    ("baseline_pa", *baseline_pa),
                ]);
                nonneg.extend([("onset_s", *onset_s), ("duration_s", *duration_s)]);
                if *n_sweeps == 0 {
                    return Err(self.err("n_sweeps", 0.0, "must be >= 1"));
                }
            }
            StimulusSpec::WhiteNoise {
                mean_pa,
                sd_pa,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                finite.extend([("mean_pa", *mean_pa), ("baseline_pa", *baseline_pa)]);
                nonneg.extend([
                    ("sd_pa", *sd_pa),
                    ("onset_s", *onset_s),
                    ("duration_s", *duration_s),
                ]);
            }
            StimulusSpec::PinkNoise {
                mean_pa,
                sd_pa,
                onset_s,
                duration_s,
                f_min_hz,
                f_max_hz,
                f_step_hz,
                baseline_pa,
                ..
            } => {
                finite.extend([("mean_pa", *mean_pa), ("baseline_pa", *baseline_pa)]);
                nonneg.extend([
                    ("sd_pa", *sd_pa),
                    ("onset_s", *onset_s),
                    ("duration_s", *duration_s),
                ]);
                positive.extend([("f_min_hz", *f_min_hz), ("f_step_hz", *f_step_hz)]);
                if f_max_hz.is_nan() || f_max_hz < f_min_hz {
                    return Err(self.err("f_max_hz", *f_max_hz, "must be >= f_min_hz"));
                }
                if (f_max_hz - f_min_hz) / f_step_hz > 1e6 {
                    return Err(self.err("f_step_hz", *f_step_hz, "more than a million sines"));
                }
            }
            StimulusSpec::OrnsteinUhlenbeck {
                mean_pa,
                sd_pa,
                tau_s,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                finite.extend([("mean_pa", *mean_pa), ("baseline_pa", *baseline_pa)]);
                nonneg.extend([
                    ("sd_pa", *sd_pa),
                    ("onset_s", *onset_s),
                    ("duration_s", *duration_s),
                ]);
                positive.push(("tau_s", *tau_s));
            }
            StimulusSpec::AllenNoise {
                rheobase_pa,
                multipliers,
                cv,
                onset_s,
                epoch_s,
                epoch_period_s,
                f_min_hz,
                f_max_hz,
                baseline_pa,
                ..
            } => {
                finite.extend([("rheobase_pa", *rheobase_pa), ("baseline_pa", *baseline_pa)]);
                finite.extend(multipliers.iter().map(|&m| ("multipliers", m)));
                nonneg.extend([("cv", *cv), ("onset_s", *onset_s)]);
                positive.extend([("epoch_s", *epoch_s), ("f_min_hz", *f_min_hz)]);
                if multipliers.is_empty() {
                    return Err(self.err("multipliers", 0.0, "needs at least one epoch"));
                }
                if epoch_period_s.is_nan() || epoch_period_s < epoch_s {
                    return Err(self.err(
                        "epoch_period_s",
                        *epoch_period_s,
                        "epochs overlap: must be >= epoch_s",
                    ));
                }
                if f_max_hz.is_nan() || f_max_hz < f_min_hz || f_max_hz - f_min_hz > 1e6 {
                    return Err(self.err(
                        "f_max_hz",
                        *f_max_hz,
                        "must be >= f_min_hz (and < 1e6 sines)",
                    ));
                }
            }
        }
        for (field, v) in finite {
            if !v.is_finite() {
                return Err(self.err(field, v, "not a finite number"));
            }
        }
        for (field, v) in nonneg {
            if !(v.is_finite() && v >= 0.0) {
                return Err(self.err(field, v, "must be finite and >= 0"));
            }
        }
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(self.err(field, v, "must be finite and > 0"));
            }
        }
        Ok(())
    }

    /// Samples of one sweep.
    fn sweep_samples(&self, fs: f64) -> Result<usize, StimulusError> {
        if !(fs.is_finite() && fs > 0.0) {
            return Err(StimulusError::SampleRate(fs));
        }
        let n = (self.sweep_length_s() * fs).round();
        if !(n.is_finite() && n >= 0.0 && n * self.n_sweeps() as f64 <= MAX_SAMPLES as f64) {
            return Err(StimulusError::TooLong {
                protocol: self.protocol(),
                samples: n * self.n_sweeps() as f64,
            });
        }
        Ok(n as usize)
    }

    /// Samples of one sweep (a step series renders [`StimulusSpec::n_sweeps`] of them back to back).
    pub fn samples_per_sweep(&self, sample_rate_hz: f64) -> Result<usize, StimulusError> {
        self.validate()?;
        self.sweep_samples(sample_rate_hz)
    }

    /// Total number of samples [`StimulusSpec::render`] produces at `sample_rate_hz`.
    pub fn n_samples(&self, sample_rate_hz: f64) -> Result<usize, StimulusError> {
        self.validate()?;
        Ok(self.sweep_samples(sample_rate_hz)? * self.n_sweeps())
    }

    /// Renders the protocol in pA at `sample_rate_hz`.
    pub fn render(&self, sample_rate_hz: f64) -> Result<Vec<f64>, StimulusError> {
        let n = self.n_samples(sample_rate_hz)?;
        let mut out = vec![0.0; n];
        self.fill(sample_rate_hz, &mut out)?;
        Ok(out)
    }

    /// Writes the protocol into `out`, whose length must be [`StimulusSpec::n_samples`].
    pub fn fill(&self, sample_rate_hz: f64, out: &mut [f64]) -> Result<(), StimulusError> {
        let expected = self.n_samples(sample_rate_hz)?;
        if out.len() != expected {
            return Err(StimulusError::Length {
                expected,
                got: out.len(),
            });
        }
        let fs = sample_rate_hz;
        let idx = |t: f64| sample_index(t, fs);
        let window = |on: f64, dur: f64| (idx(on), idx(on + dur));
        match self {
            StimulusSpec::LongSquare {
                amplitude_pa,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let (a, b) = window(*onset_s, *duration_s);
                fill_square(out, a, b, baseline_pa + amplitude_pa);
            }
            StimulusSpec::ShortSquare {
                amplitude_pa,
                onset_s,
                duration_s,
                n_pulses,
                interval_s,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                for p in 0..*n_pulses {
                    let (a, b) = window(onset_s + p as f64 * interval_s, *duration_s);
                    fill_square(out, a, b, baseline_pa + amplitude_pa);
                }
            }
            StimulusSpec::Ramp {
                slope_pa_per_s,
                onset_s,
                duration_s,
                start_pa,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let (a, b) = window(*onset_s, *duration_s);
                fill_ramp(out, a, b, baseline_pa + start_pa, *slope_pa_per_s, fs);
            }
            StimulusSpec::StepSeries {
                first_pa,
                step_pa,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let per = expected / self.n_sweeps().max(1);
                let (a, b) = window(*onset_s, *duration_s);
                for (i, sweep) in out.chunks_mut(per.max(1)).enumerate() {
                    fill_square(sweep, a, b, baseline_pa + first_pa + i as f64 * step_pa);
                }
            }
            StimulusSpec::WhiteNoise {
                mean_pa,
                sd_pa,
                seed,
                onset_s,
                duration_s,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let (a, b) = window(*onset_s, *duration_s);
                let mut rng = StdRng::seed_from_u64(*seed);
                if let Some(w) = out.get_mut(a..b.min(expected)) {
                    fill_white_noise(w, *mean_pa, *sd_pa, &mut rng);
                }
            }
            StimulusSpec::PinkNoise {
                mean_pa,
                sd_pa,
                seed,
                onset_s,
                duration_s,
                f_min_hz,
                f_max_hz,
                f_step_hz,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let (a, b) = window(*onset_s, *duration_s);
                let mut rng = StdRng::seed_from_u64(*seed);
                if let Some(w) = out.get_mut(a..b.min(expected)) {
                    let n_freq = ((f_max_hz - f_min_hz) / f_step_hz + 1e-9).floor() as usize + 1;
                    let freqs = (0..n_freq).map(|i| f_min_hz + i as f64 * f_step_hz);
                    let mut z = pink_noise(w.len(), 1.0 / fs, freqs, &mut rng);
                    // The window's own mean and sd, as make_pink.py normalises (exact even when
                    // the window is not whole periods of every line).
                    standardize(&mut z);
                    for (x, z) in w.iter_mut().zip(z) {
                        *x = mean_pa + sd_pa * z;
                    }
                }
            }
            StimulusSpec::OrnsteinUhlenbeck {
                mean_pa,
                sd_pa,
                tau_s,
                seed,
                onset_s,
                duration_s,
                stationary_start,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                let (a, b) = window(*onset_s, *duration_s);
                let mut rng = StdRng::seed_from_u64(*seed);
                let x_prev = if *stationary_start {
                    let w: f64 = rng.sample(StandardNormal);
                    sd_pa * w
                } else {
                    0.0
                };
                if let Some(w) = out.get_mut(a..b.min(expected)) {
                    fill_ornstein_uhlenbeck(
                        w,
                        *mean_pa,
                        *sd_pa,
                        *tau_s,
                        1.0 / fs,
                        x_prev,
                        &mut rng,
                    );
                }
            }
            StimulusSpec::AllenNoise {
                rheobase_pa,
                multipliers,
                cv,
                seed,
                onset_s,
                epoch_s,
                epoch_period_s,
                f_min_hz,
                f_max_hz,
                baseline_pa,
                ..
            } => {
                out.fill(*baseline_pa);
                // Lines at f_min, f_min + 1 Hz, ..., f_max; the noise standardized over the epoch.
                let n_freq = ((f_max_hz - f_min_hz) + 1e-9).floor() as usize + 1;
                let epochs = NoiseEpochs {
                    multipliers,
                    rheobase: *rheobase_pa,
                    cv: *cv,
                    lead_s: *onset_s,
                    epoch_s: *epoch_s,
                    gap_s: epoch_period_s - epoch_s,
                    freqs_hz: (0..n_freq).map(|i| f_min_hz + i as f64).collect(),
                    standardize: true,
                    baseline: *baseline_pa,
                };
                let mut rng = StdRng::seed_from_u64(*seed);
                fill_noise_epochs(out, 1.0 / fs, &epochs, &mut rng)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allen sweep metadata (specimen 483101699), copied from `ephys_sweeps.json`, see
    /// `tests/fixtures/hh/README.md`.
    fn allen_sweeps() -> Vec<serde_json::Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hh/allen_483101699_sweep_timing.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
    fn sweep(n: u64) -> serde_json::Value {
        allen_sweeps()
            .into_iter()
            .find(|s| s["sweep_number"] == n)
            .unwrap()
    }
    /// First and last sample that differ from the baseline.
    fn support(x: &[f64], baseline: f64) -> (usize, usize) {
        let first = x.iter().position(|&v| v != baseline).unwrap();
        let last = x.iter().rposition(|&v| v != baseline).unwrap();
        (first, last)
    }
    const FS_ALLEN: f64 = 200_000.0;

    /// Allen's metadata: start = first stimulus sample / fs, duration = (last − first) / fs.
    fn assert_allen_timing(x: &[f64], baseline: f64, meta: &serde_json::Value) {
        let (first, last) = support(x, baseline);
        let start = meta["stimulus_start_time"].as_f64().unwrap();
        let duration = meta["stimulus_duration"].as_f64().unwrap();
        assert_eq!(
            first,
            (start * FS_ALLEN).round() as usize,
            "{}",
            meta["stimulus_name"]
        );
        assert!(
            ((last - first) as f64 / FS_ALLEN - duration).abs() < 1e-9,
            "{}",
            meta["stimulus_name"]
        );
    }

    #[test]
    fn squares_match_allen_sweep_timing() {
        let meta = sweep(36); // Long Square, -110 pA
        let amp = meta["stimulus_absolute_amplitude"].as_f64().unwrap();
        let spec: StimulusSpec = serde_json::from_str(&format!(
            r#"{{"protocol": "long_square", "amplitude_pa": {amp}}}"#
        ))
        .unwrap();
        let x = spec.render(FS_ALLEN).unwrap();
        assert_allen_timing(&x, 0.0, &meta);
        assert_eq!(x.len(), (3.02 * FS_ALLEN).round() as usize); // 1.02 + 1 + 1 s tail
        assert_eq!(
            (x[203_999], x[204_000], x[403_999], x[404_000]),
            (0.0, amp, amp, 0.0)
        );

        let meta = sweep(7); // Short Square, 3 ms
        let spec: StimulusSpec =
            serde_json::from_str(r#"{"protocol": "short_square", "amplitude_pa": 100}"#).unwrap();
        let x = spec.render(FS_ALLEN).unwrap();
        assert_allen_timing(&x, 0.0, &meta);
        assert_eq!(x.iter().filter(|&&v| v == 100.0).count(), 600);

        for n in [87, 88] {
            // Short Square - Triple: three 3 ms pulses, onset-to-onset `stimulus_interval`
            let meta = sweep(n);
            let interval = meta["stimulus_interval"].as_f64().unwrap();
            let spec = StimulusSpec::ShortSquare {
                amplitude_pa: meta["stimulus_absolute_amplitude"].as_f64().unwrap(),
                onset_s: 2.02,
                duration_s: 0.003,
                n_pulses: 3,
                interval_s: interval,
                baseline_pa: 0.0,
                total_s: None,
                tail_s: 1.0,
            };
            let x = spec.render(FS_ALLEN).unwrap();
            assert_allen_timing(&x, 0.0, &meta);
            assert_eq!(x.iter().filter(|&&v| v != 0.0).count(), 1800);
        }
    }

    #[test]
    fn ramp_matches_allen_sweep() {
        // Allen ramp: 25 pA/s from 1.02 s; the metadata's start (1.0225 s) is the first sample the
        // DAC made non-zero, so only the end is compared: last sample at start + duration, and its
        // value the listed amplitude (800 pA after 32 s).
        let meta = sweep(4);
        let spec: StimulusSpec =
            serde_json::from_str(r#"{"protocol": "ramp", "duration_s": 32.0, "tail_s": 0.5}"#)
                .unwrap();
        let x = spec.render(FS_ALLEN).unwrap();
        let (first, last) = support(&x, 0.0);
        assert_eq!(first, 204_001); // sample 204,000 is the ramp's 0 pA start
        let end = meta["stimulus_start_time"].as_f64().unwrap()
            + meta["stimulus_duration"].as_f64().unwrap();
        assert!((last as f64 / FS_ALLEN - end).abs() < 1e-9);
        let amp = meta["stimulus_absolute_amplitude"].as_f64().unwrap();
        assert!((x[last] - amp).abs() < 0.01, "{} vs {amp}", x[last]);
        assert!((x[204_000 + 40_000] - 5.0).abs() < 1e-12); // 0.2 s in: 5 pA
    }

    #[test]
    fn allen_noise_epochs_match_noise_sweeps() {
        for n in [62, 63] {
            let meta = sweep(n);
            assert_eq!(meta["stimulus_interval"].as_f64(), Some(8.0));
            // the listed amplitude is the largest epoch's mean, 1.5 × rheobase
            let rheobase = meta["stimulus_absolute_amplitude"].as_f64().unwrap() / 1.5;
            let spec: StimulusSpec = serde_json::from_str(&format!(
                r#"{{"protocol": "allen_noise", "rheobase_pa": {rheobase}, "seed": {n}}}"#
            ))
            .unwrap();
            let x = spec.render(FS_ALLEN).unwrap();
            assert_allen_timing(&x, 0.0, &meta);
            for (e, mult) in [0.75, 1.0, 1.5].into_iter().enumerate() {
                let a = 404_000 + e * 1_600_000;
                let epoch = &x[a..a + 600_000];
                assert!(x[a - 1] == 0.0 && x[a + 600_000] == 0.0);
                let mean = epoch.iter().sum::<f64>() / 600_000.0;
                let sd = (epoch.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 600_000.0).sqrt();
                assert!((mean - mult * rheobase).abs() < 1e-9 * rheobase);
                assert!((sd / mean - 0.2).abs() < 1e-9, "CV {}", sd / mean);
            }
            if n == 63 {
                assert_eq!(
                    meta["stimulus_absolute_amplitude"].as_f64().unwrap(),
                    347.625012109276
                );
            }
        }
    }

    /// Amplitude of the component at f (single-bin DFT over whole periods).
    fn amplitude_at(x: &[f64], fs: f64, f: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (j, v) in x.iter().enumerate() {
            let ph = TAU * f * j as f64 / fs;
            re += v * ph.cos();
            im += v * ph.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn pink_noise_has_one_over_f_power() {
        let spec: StimulusSpec = serde_json::from_str(
            r#"{"protocol": "pink_noise", "mean_pa": 50, "sd_pa": 10, "seed": 7, "duration_s": 2.0, "total_s": 2.0}"#,
        )
        .unwrap();
        let fs = 2_000.0;
        let x = spec.render(fs).unwrap();
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!((mean - 50.0).abs() < 1e-9 && (sd - 10.0).abs() < 1e-9);
        // power ∝ 1/f: amplitude ∝ f^(-1/2); nothing outside 1..100 Hz or between the 1 Hz lines
        let a1 = amplitude_at(&x, fs, 1.0);
        for f in [4.0, 25.0, 100.0] {
            let ratio = amplitude_at(&x, fs, f) / a1;
            assert!((ratio - 1.0 / f64::sqrt(f)).abs() < 1e-9, "f {f}: {ratio}");
        }
        assert!(amplitude_at(&x, fs, 150.0) < 1e-9 * a1);
        assert!(amplitude_at(&x, fs, 10.5) < 1e-9 * a1);
    }

    #[test]
    fn ornstein_uhlenbeck_statistics() {
        // 200 s at 10 kHz, τ = 5 ms: ~2·10^4 correlation times, so the standard errors are about
        // sd·sqrt(2τ/T) = 0.7% of sd for the mean, ~0.7% for the sd and ~0.01 for the
        // autocorrelation; tolerances are 4-5 standard errors.
        let (mean, sd, tau) = (80.0, 60.0, 0.005);
        let spec = StimulusSpec::OrnsteinUhlenbeck {
            mean_pa: mean,
            sd_pa: sd,
            tau_s: tau,
            seed: 12345,
            onset_s: 0.0,
            duration_s: 200.0,
            stationary_start: true,
            baseline_pa: 0.0,
            total_s: Some(200.0),
            tail_s: 0.0,
        };
        let fs = 10_000.0;
        let x = spec.render(fs).unwrap();
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let s = (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!((m - mean).abs() < 0.03 * sd, "mean {m}");
        assert!((s / sd - 1.0).abs() < 0.03, "sd {s}");
        let acf = |lag: usize| {
            x.iter()
                .zip(&x[lag..])
                .map(|(a, b)| (a - m) * (b - m))
                .sum::<f64>()
                / (n - lag as f64)
                / (s * s)
        };
        for lag in [1usize, 50, 100] {
            let expected = (-(lag as f64) / (fs * tau)).exp();
            assert!(
                (acf(lag) - expected).abs() < 0.05,
                "lag {lag}: {} vs {expected}",
                acf(lag)
            );
        }
        // White noise: no correlation at lag 1.
        let w = StimulusSpec::WhiteNoise {
            mean_pa: 0.0,
            sd_pa: 1.0,
            seed: 3,
            onset_s: 0.0,
            duration_s: 10.0,
            baseline_pa: 0.0,
            total_s: None,
            tail_s: 0.0,
        }
        .render(fs)
        .unwrap();
        let lag1 = w.iter().zip(&w[1..]).map(|(a, b)| a * b).sum::<f64>() / w.len() as f64;
        assert!(
            lag1.abs() < 0.05 && (w.iter().map(|v| v * v).sum::<f64>() / 1e5 - 1.0).abs() < 0.03
        );
    }

    #[test]
    fn ou_peer_convention_starts_from_zero_and_seeds_repeat() {
        let spec = StimulusSpec::OrnsteinUhlenbeck {
            mean_pa: 0.0,
            sd_pa: 10.0,
            tau_s: 0.005,
            seed: 1,
            onset_s: 0.5,
            duration_s: 0.5,
            stationary_start: false,
            baseline_pa: 0.0,
            total_s: Some(1.0),
            tail_s: 0.0,
        };
        let x = spec.render(20_000.0).unwrap();
        assert_eq!(x, spec.render(20_000.0).unwrap());
        assert!(x[..10_000].iter().all(|&v| v == 0.0));
        // x[0] = sd·sqrt(1 − a²)·w with a = exp(−dt/τ) = exp(−0.01): one innovation (sd 1.4 pA)
        assert!(x[10_000] != 0.0 && x[10_000].abs() < 10.0 * (1.0 - (-0.02f64).exp()).sqrt() * 5.0);
    }

    #[test]
    fn step_series_renders_sweeps_back_to_back() {
        let spec: StimulusSpec = serde_json::from_str(
            r#"{"protocol": "step_series", "first_pa": -110, "step_pa": 20, "n_sweeps": 4, "sweep_s": 3.0}"#,
        )
        .unwrap();
        let fs = 10_000.0;
        assert_eq!(
            (spec.n_sweeps(), spec.samples_per_sweep(fs).unwrap()),
            (4, 30_000)
        );
        let x = spec.render(fs).unwrap();
        assert_eq!(x.len(), 4 * 30_000);
        for i in 0..4 {
            let s = &x[i * 30_000..(i + 1) * 30_000];
            let amp = -110.0 + 20.0 * i as f64;
            assert_eq!(
                (s[10_199], s[10_200], s[20_199], s[20_200]),
                (0.0, amp, amp, 0.0)
            );
        }
    }

    #[test]
    fn bad_specs_are_errors() {
        let bad = [
            r#"{"protocol": "long_square", "amplitude_pa": 10, "onset": 1}"#,
            r#"{"protocol": "long_square"}"#,
            r#"{"protocol": "square", "amplitude_pa": 10}"#,
        ];
        for b in bad {
            assert!(serde_json::from_str::<StimulusSpec>(b).is_err(), "{b}");
        }
        let ls = |d: f64| StimulusSpec::LongSquare {
            amplitude_pa: 10.0,
            onset_s: 0.1,
            duration_s: d,
            baseline_pa: 0.0,
            total_s: None,
            tail_s: 0.1,
        };
        assert!(matches!(
            ls(-1.0).render(1e3),
            Err(StimulusError::Field {
                field: "duration_s",
                ..
            })
        ));
        assert!(matches!(
            ls(f64::NAN).render(1e3),
            Err(StimulusError::Field { .. })
        ));
        assert!(matches!(
            ls(1.0).render(0.0),
            Err(StimulusError::SampleRate(_))
        ));
        assert!(matches!(
            ls(1e9).render(1e6),
            Err(StimulusError::TooLong { .. })
        ));
        let mut short = vec![0.0; 10];
        assert!(matches!(
            ls(1.0).fill(1e3, &mut short),
            Err(StimulusError::Length {
                expected: 1200,
                got: 10
            })
        ));
        let ou = StimulusSpec::OrnsteinUhlenbeck {
            mean_pa: 0.0,
            sd_pa: 1.0,
            tau_s: 0.0,
            seed: 0,
            onset_s: 0.0,
            duration_s: 1.0,
            stationary_start: false,
            baseline_pa: 0.0,
            total_s: None,
            tail_s: 0.0,
        };
        assert!(matches!(
            ou.render(1e3),
            Err(StimulusError::Field { field: "tau_s", .. })
        ));
    }
    #[test]
    fn resample_keeps_duration_and_interpolates() {
        let x: Vec<f64> = (0..10).map(|k| k as f64).collect();
        let y = resample_linear(&x, 1.0, 0.5);
        assert_eq!(y.len(), 20);
        assert_eq!(y[3], 1.5);
        let z = resample_linear(&x, 1.0, 3.0);
        assert_eq!(z, vec![0.0, 3.0, 6.0]);
    }

    #[test]
    fn square_step_has_its_onset_and_length() {
        let s = square_step(5e-5, 1.02, 1.0, 1.02 + 1.0 + 0.1, 100e-12).unwrap();
        assert_eq!(s.len(), 20_400 + 20_000 + 2_000);
        assert_eq!((s[20_399], s[20_400], s[40_399], s[40_400]), (0.0, 100e-12, 100e-12, 0.0));
        // A step running past the end is clipped.
        assert_eq!(square_step(1.0, 8.0, 5.0, 10.0, 1.0).unwrap(), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!(matches!(square_step(1e-6, 0.0, 1.0, 1e3, 1.0), Err(StimulusError::TooManySamples { .. })));
    }

    #[test]
    fn noise_epochs_have_the_protocol_means_and_cv() {
        let mults = [0.75, 1.0, 1.5];
        let p = NoiseEpochs {
            multipliers: &mults,
            rheobase: 100e-12,
            cv: 0.2,
            lead_s: 0.0,
            epoch_s: 3.0,
            gap_s: 5.0,
            freqs_hz: frequency_lines(1.0, 100.0, 1.0 / 3.0).collect(),
            standardize: false,
            baseline: 0.0,
        };
        let dt = 1e-4;
        let mut x = vec![0.0; samples_for(p.protocol_s(), dt).unwrap()];
        fill_noise_epochs(&mut x, dt, &p, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!(x.len(), 190_000);
        for (e, mult) in mults.iter().enumerate() {
            let seg = &x[e * 80_000..e * 80_000 + 30_000];
            let mean = seg.iter().sum::<f64>() / seg.len() as f64;
            let sd = (seg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / seg.len() as f64).sqrt();
            assert!((mean / (mult * 100e-12) - 1.0).abs() < 0.05, "epoch {e}: mean {mean}");
            assert!((sd / mean - 0.2).abs() < 0.03, "epoch {e}: cv {}", sd / mean);
        }
        assert!(x[30_000..80_000].iter().all(|&v| v == 0.0));
        // The same waveform in every epoch (a frozen noise).
        assert!((x[1] / 0.75 - x[80_001]).abs() < 1e-12 * 100e-12);
    }

    #[test]
    fn generated_lengths_are_bounded() {
        assert_eq!(samples_for(0.5, 1e-4), Ok(5000));
        assert_eq!(samples_for(1e-5, 1e-4).unwrap_err().to_string(), "0.00001 s at dt 0.0001 s gives no sample");
        assert!(matches!(samples_for(1e5, 1e-5), Err(StimulusError::TooManySamples { .. })));
    }
}
