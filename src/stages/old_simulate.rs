//! Simulation stages: `simulate.glif` (a source that runs an Allen GLIF neuron over a parameter
//! sweep and a list of stimuli, emitting the sweeps table) and `simulate.stg` (a transform that
//! simulates one Liu-1998 STG cell per row of a conductance table).
//!
//! Both stages are thin: the numerics are the reference-tested kernels of
//! [`crate::simulate::glif`] and [`crate::simulate::stg`]; this module only expands the sweep,
//! builds the stimuli, runs the kernels in parallel (rayon, inside one operator call) and packs
//! the results into Arrow batches with units in the field metadata.
//!
//! Conventions of `simulate.glif` (documented again on the options):
//! * the swept parameters use Allen's `neuron_config.json` names and SI units (`R_input` Ω, `C` F,
//!   `El`, `th_inf` V, `dt` s, ...); each gets one float64 column holding the absolute value used;
//! * `response` is the absolute membrane potential in mV: `1e3 · (V + El_reference)`, where V is
//!   AllenSDK's El-referenced voltage; the offset used is in `el_reference_mv` (0 when the config
//!   has no `El_reference`, so the response is then relative to rest);
//! * `model_spike_times` are AllenSDK's `interpolated_spike_times` (s from the stimulus start);
//! * a swept `dt` changes the integration step AND the stimulus sampling: the stimulus is either
//!   regenerated at the new step (generated shapes are defined in continuous time) or linearly
//!   resampled from the base step, chosen by the explicit `dt_stimulus` option. (Study 3's bug was
//!   to relabel dt without resampling, which made five "dt" values give identical traces.)
//! * per-config failures (AllenSDK's bad reset, a swept config the kernel refuses) are rows with
//!   `status` = `bad_reset` / `error` and a `status_detail`, never NaN-filled rows.
//!
//! The stimulus shapes and the sweep expansion used here were written before the shared
//! `simulate::stimulus` / `simulate::sweep` modules existed (minimal set: Allen Noise 1 / 2, long
//! square, a stimulus file; grid, uniform, log-uniform, Latin hypercube over GLIF config fields).
//! Any protocol of `simulate::stimulus` can also be given (`kind = "protocol"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{f32_trace, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, PathSeg, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::simulate::glif::{self, GlifConfig, GlifOutput, GlifRunStatus, GlifSpikes, ThresholdDynamics, ThresholdReset};
use crate::simulate::stg;

/// Errors of stimulus construction and sweep expansion (module-local; converted to the crate's
/// error with the stage named when they reach the runtime).
#[derive(Debug, thiserror::Error)]
pub enum SimStageError {
    #[error("{path}: {reason}")]
    StimulusFile { path: String, reason: String },
    #[error("stimulus `{name}`: {reason}")]
    Stimulus { name: String, reason: String },
    #[error("sweep parameter `{name}`: {reason}")]
    Param { name: String, reason: String },
}

// ================================================================================================
// Stimuli
// ================================================================================================

/// The stimulus shapes `simulate.glif` can generate or read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StimulusSpec {
    /// Allen Cell Types "Noise 1": pink (1/f power) noise between 1 and 100 Hz, three epochs whose
    /// mean is 0.75, 1.0 and 1.5 × rheobase with a coefficient of variation of 0.2, 3 s each,
    /// separated by 5 s of zero current (Allen Cell Types electrophysiology technical white paper;
    /// the sweeps of specimen 483101699 in ephys_sweeps.json last 19 s = 3·3 + 2·5 s).
    AllenNoise1(AllenNoise),
    /// Allen "Noise 2": the same protocol with another noise realisation.
    AllenNoise2(AllenNoise),
    /// A constant current step.
    LongSquare(LongSquare),
    /// A current trace read from a 1-D float64 `.npy` file.
    File(FileStimulus),
    /// Any protocol of the shared stimulus module ([`crate::simulate::stimulus::StimulusSpec`]:
    /// long/short square, ramp, step series, white/pink/OU noise, `allen_noise`), rendered at each
    /// config's sampling rate 1/dt.
    Protocol(ProtocolStimulus),
}

/// A protocol of [`crate::simulate::stimulus`], e.g.
/// `{ kind = "protocol", spec = { protocol = "allen_noise", rheobase_pa = 231.75, seed = 1 } }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtocolStimulus {
    /// Label written to `stimulus_kind` (default: the protocol name).
    #[serde(default)]
    pub name: Option<String>,
    /// The protocol table (`protocol = "..."` and its fields, in pA and s) [table].
    #[schemars(with = "serde_json::Value")]
    pub spec: crate::simulate::stimulus::StimulusSpec,
}

fn default_epochs() -> Vec<f64> {
    vec![0.75, 1.0, 1.5]
}
fn default_epoch_s() -> f64 {
    3.0
}
fn default_gap_s() -> f64 {
    5.0
}
fn default_cv() -> f64 {
    0.2
}
fn default_f_low() -> f64 {
    1.0
}
fn default_f_high() -> f64 {
    100.0
}

/// Options of the Allen noise protocols.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllenNoise {
    /// Label written to `stimulus_kind` (default `noise1` / `noise2`).
    #[serde(default)]
    pub name: Option<String>,
    /// Mean current of each epoch, as multiples of the rheobase [×rheobase].
    #[serde(default = "default_epochs")]
    pub epochs_rheobase: Vec<f64>,
    /// Length of each noise epoch [s].
    #[serde(default = "default_epoch_s")]
    pub epoch_s: f64,
    /// Zero current between epochs (0 concatenates the epochs, as study 3's `stimulus[stimulus != 0]`) [s].
    #[serde(default = "default_gap_s")]
    pub gap_s: f64,
    /// Zero current before the first epoch [s].
    #[serde(default)]
    pub lead_s: f64,
    /// Standard deviation over mean within an epoch [1].
    #[serde(default = "default_cv")]
    pub cv: f64,
    /// Lowest noise frequency [Hz].
    #[serde(default = "default_f_low")]
    pub f_low_hz: f64,
    /// Highest noise frequency [Hz].
    #[serde(default = "default_f_high")]
    pub f_high_hz: f64,
    /// Keep only the first `duration_s` of the protocol (none = the whole protocol) [s].
    #[serde(default)]
    pub duration_s: Option<f64>,
}

/// A square current step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongSquare {
    /// Label written to `stimulus_kind` (default `long_square`).
    #[serde(default)]
    pub name: Option<String>,
    /// Step amplitude [pA]; give this or `amplitude_rheobase`.
    #[serde(default)]
    pub amplitude_pa: Option<f64>,
    /// Step amplitude as a multiple of the rheobase [×rheobase].
    #[serde(default)]
    pub amplitude_rheobase: Option<f64>,
    /// Step onset [s].
    #[serde(default)]
    pub start_s: f64,
    /// Step length [s].
    pub duration_s: f64,
    /// Whole trace length (≥ start_s + duration_s) [s].
    pub total_s: f64,
}

/// A recorded or precomputed current trace.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileStimulus {
    /// Label written to `stimulus_kind` (default `file:<file stem>`).
    #[serde(default)]
    pub name: Option<String>,
    /// 1-D little-endian float64 `.npy` file, relative to the pipeline file.
    pub path: String,
    /// Unit of the values in the file: `A` (AllenSDK's convention) or `pA`.
    pub unit: String,
    /// Sampling rate of the file (none = one sample per base config `dt`) [Hz].
    #[serde(default)]
    pub sampling_rate_hz: Option<f64>,
}

/// Upper bound on generated stimulus samples (1e8 samples = 800 MB of f64): guards a mistyped
/// duration or dt against allocating unbounded memory.
const MAX_STIMULUS_SAMPLES: f64 = 1e8;

impl StimulusSpec {
    /// The label written to `stimulus_kind`.
    pub fn label(&self) -> String {
        match self {
            StimulusSpec::AllenNoise1(n) => n.name.clone().unwrap_or_else(|| "noise1".into()),
            StimulusSpec::AllenNoise2(n) => n.name.clone().unwrap_or_else(|| "noise2".into()),
            StimulusSpec::LongSquare(s) => s.name.clone().unwrap_or_else(|| "long_square".into()),
            StimulusSpec::Protocol(p) => p.name.clone().unwrap_or_else(|| p.spec.protocol().to_string()),
            StimulusSpec::File(f) => f.name.clone().unwrap_or_else(|| {
                format!("file:{}", Path::new(&f.path).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default())
            }),
        }
    }

    /// Whether the shape is defined in continuous time (so it can be regenerated at any dt).
    pub fn can_regenerate(&self) -> bool {
        !matches!(self, StimulusSpec::File(_))
    }

    /// Whether the shape needs the rheobase.
    fn uses_rheobase(&self) -> bool {
        match self {
            StimulusSpec::AllenNoise1(_) | StimulusSpec::AllenNoise2(_) => true,
            StimulusSpec::LongSquare(s) => s.amplitude_rheobase.is_some(),
            StimulusSpec::File(_) | StimulusSpec::Protocol(_) => false,
        }
    }

    /// Value problems, each as (sub-path inside this list entry, reason).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let finite_pos = |key: &'static str, x: f64, out: &mut Vec<(&'static str, String)>| {
            if !(x.is_finite() && x > 0.0) {
                out.push((key, format!("{x} must be a finite number > 0")));
            }
        };
        let finite_nonneg = |key: &'static str, x: f64, out: &mut Vec<(&'static str, String)>| {
            if !(x.is_finite() && x >= 0.0) {
                out.push((key, format!("{x} must be a finite number >= 0")));
            }
        };
        match self {
            StimulusSpec::AllenNoise1(n) | StimulusSpec::AllenNoise2(n) => {
                if n.epochs_rheobase.is_empty() {
                    out.push(("epochs_rheobase", "needs at least one epoch".into()));
                }
                if n.epochs_rheobase.iter().any(|x| !x.is_finite()) {
                    out.push(("epochs_rheobase", "every epoch amplitude must be finite".into()));
                }
                finite_pos("epoch_s", n.epoch_s, &mut out);
                finite_nonneg("gap_s", n.gap_s, &mut out);
                finite_nonneg("lead_s", n.lead_s, &mut out);
                finite_nonneg("cv", n.cv, &mut out);
                finite_pos("f_low_hz", n.f_low_hz, &mut out);
                if !(n.f_high_hz.is_finite() && n.f_high_hz >= n.f_low_hz) {
                    out.push(("f_high_hz", format!("{} must be finite and >= f_low_hz", n.f_high_hz)));
                } else if n.f_high_hz / (1.0 / n.epoch_s) > 100_000.0 {
                    out.push(("f_high_hz", "more than 100,000 noise components (f_high_hz · epoch_s)".into()));
                }
                if let Some(d) = n.duration_s {
                    finite_pos("duration_s", d, &mut out);
                }
            }
            StimulusSpec::LongSquare(s) => {
                match (s.amplitude_pa, s.amplitude_rheobase) {
                    (Some(_), Some(_)) | (None, None) => {
                        out.push(("amplitude_pa", "give exactly one of `amplitude_pa` and `amplitude_rheobase`".into()))
                    }
                    (Some(a), None) | (None, Some(a)) if !a.is_finite() => out.push(("amplitude_pa", "amplitude must be finite".into())),
                    _ => {}
                }
                finite_nonneg("start_s", s.start_s, &mut out);
                finite_pos("duration_s", s.duration_s, &mut out);
                if !(s.total_s.is_finite() && s.total_s >= s.start_s + s.duration_s) {
                    out.push(("total_s", format!("{} must be >= start_s + duration_s", s.total_s)));
                }
            }
            StimulusSpec::Protocol(p) => {
                if let Err(e) = p.spec.validate() {
                    out.push(("spec", e.to_string()));
                }
            }
            StimulusSpec::File(f) => {
                if f.unit != "A" && f.unit != "pA" {
                    out.push(("unit", format!("`{}`: use `A` or `pA`", f.unit)));
                }
                if let Some(r) = f.sampling_rate_hz {
                    finite_pos("sampling_rate_hz", r, &mut out);
                }
            }
        }
        out
    }

    /// The stimulus in A on the grid k·dt_s (k = 0..), or an error for a non-physical request.
    /// `rheobase_a` scales the rheobase-relative shapes; `seed` picks the noise realisation.
    pub fn generate(&self, dt_s: f64, rheobase_a: f64, seed: u64) -> std::result::Result<Vec<f64>, SimStageError> {
        let err = |reason: String| SimStageError::Stimulus { name: self.label(), reason };
        let n_for = |total_s: f64| -> std::result::Result<usize, SimStageError> {
            let n = (total_s / dt_s).round();
            if !(n.is_finite() && n >= 1.0) {
                return Err(err(format!("{total_s} s at dt {dt_s} s gives no sample")));
            }
            if n > MAX_STIMULUS_SAMPLES {
                return Err(err(format!("{total_s} s at dt {dt_s} s is more than 1e8 samples")));
            }
            Ok(n as usize)
        };
        match self {
            StimulusSpec::AllenNoise1(n) => allen_noise(n, dt_s, rheobase_a, noise_seed(seed, 1), n_for),
            StimulusSpec::AllenNoise2(n) => allen_noise(n, dt_s, rheobase_a, noise_seed(seed, 2), n_for),
            StimulusSpec::LongSquare(s) => {
                let amp_a = match (s.amplitude_pa, s.amplitude_rheobase) {
                    (Some(pa), _) => pa * 1e-12,
                    (None, Some(r)) => r * rheobase_a,
                    (None, None) => return Err(err("no amplitude".into())),
                };
                let n = n_for(s.total_s)?;
                // Edges by rounded sample index, so k·dt rounding never moves the onset by a sample.
                let on = (s.start_s / dt_s).round() as usize;
                let off = ((s.start_s + s.duration_s) / dt_s).round() as usize;
                Ok((0..n).map(|k| if k >= on && k < off { amp_a } else { 0.0 }).collect())
            }
            StimulusSpec::Protocol(p) => {
                let pa = p.spec.render(1.0 / dt_s).map_err(|e| err(e.to_string()))?;
                Ok(pa.into_iter().map(|x| x * 1e-12).collect())
            }
            StimulusSpec::File(_) => Err(err("a file stimulus cannot be regenerated at another dt; use dt_stimulus = \"resample\"".into())),
        }
    }
}

/// Separate noise realisations for Noise 1 and Noise 2 from one stage seed (splitmix-style mixing).
fn noise_seed(seed: u64, which: u64) -> u64 {
    let mut z = seed ^ which.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Pink noise as a sum of sinusoids f_k = k/epoch_s in [f_low, f_high] with amplitude ∝ 1/√f_k
/// (power ∝ 1/f) and uniform random phases, normalised to unit standard deviation analytically
/// (σ² = Σ a_k²/2). Defined in continuous time, so regenerating it at another dt samples the same
/// waveform; the same realisation is used in every epoch (a frozen noise, as repeated sweeps need).
/// Each sinusoid advances by a complex rotation per sample: no `sin` call in the inner loop.
fn allen_noise(
    n: &AllenNoise,
    dt_s: f64,
    rheobase_a: f64,
    seed: u64,
    n_for: impl Fn(f64) -> std::result::Result<usize, SimStageError>,
) -> std::result::Result<Vec<f64>, SimStageError> {
    let n_epochs = n.epochs_rheobase.len();
    let protocol_s = n.lead_s + n_epochs as f64 * n.epoch_s + (n_epochs.saturating_sub(1)) as f64 * n.gap_s;
    let total_s = n.duration_s.map_or(protocol_s, |d| d.min(protocol_s));
    let total = n_for(total_s)?;
    let df = 1.0 / n.epoch_s;
    let k_lo = (n.f_low_hz / df).ceil().max(1.0) as usize;
    let k_hi = (n.f_high_hz / df).floor() as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    // (amplitude, phase, angular step per sample)
    let mut comps: Vec<(f64, f64, f64)> = (k_lo..=k_hi)
        .map(|k| {
            let f = k as f64 * df;
            let phase = rng.random_range(0.0..std::f64::consts::TAU);
            (1.0 / f.sqrt(), phase, std::f64::consts::TAU * f * dt_s)
        })
        .collect();
    let var: f64 = comps.iter().map(|c| c.0 * c.0 / 2.0).sum();
    let norm = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    for c in &mut comps {
        c.0 *= norm;
    }
    let mut out = vec![0.0; total];
    let epoch_n = n_for(n.epoch_s)?;
    let lead_n = (n.lead_s / dt_s).round() as usize;
    let gap_n = (n.gap_s / dt_s).round() as usize;
    // The frozen noise of one epoch (unit σ), computed once.
    let mut noise = vec![0.0; epoch_n.min(total)];
    for &(amp, phase, step) in &comps {
        let (mut s, mut c) = phase.sin_cos();
        let (ds, dc) = step.sin_cos();
        for x in noise.iter_mut() {
            *x += amp * s;
            let s_next = s * dc + c * ds;
            c = c * dc - s * ds;
            s = s_next;
        }
    }
    let mut start = lead_n;
    for &mult in &n.epochs_rheobase {
        if start >= total {
            break;
        }
        let mean = mult * rheobase_a;
        let end = (start + epoch_n).min(total);
        for (k, x) in out[start..end].iter_mut().enumerate() {
            *x = mean * (1.0 + n.cv * noise[k]);
        }
        start = end + gap_n;
    }
    Ok(out)
}

/// Reads a 1-D little-endian float64 `.npy` file, checking the header against the file length
/// before using it (no allocation sized by an unchecked header field).
pub fn read_npy_f64(path: &Path) -> std::result::Result<Vec<f64>, SimStageError> {
    let bad = |reason: String| SimStageError::StimulusFile { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file (magic string missing)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let data_start = start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(&bytes[start..data_start]).map_err(|_| bad("header is not text".into()))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !(compact.contains("'descr':'<f8'") || compact.contains("'descr':'float64'")) {
        return Err(bad(format!("dtype must be little-endian float64 ('<f8'); header: {}", header.trim())));
    }
    if compact.contains("'fortran_order':True") {
        // 1-D data is the same in both orders, but a 2-D Fortran array is not: refuse below by shape.
    }
    let shape_part = compact.split("'shape':(").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape in header".into()))?;
    let dims: Vec<&str> = shape_part.split(',').filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(bad(format!("expected a 1-D array, shape is ({shape_part})")));
    }
    let n: usize = dims[0].parse().map_err(|_| bad(format!("bad shape `{shape_part}`")))?;
    let data = &bytes[data_start..];
    if n.checked_mul(8) != Some(data.len()) {
        return Err(bad(format!("header says {n} samples but the file holds {} bytes of data (truncated or padded)", data.len())));
    }
    if n == 0 {
        return Err(bad("the array is empty".into()));
    }
    let values: Vec<f64> = data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(bad(format!("sample {i} is {v}, not a finite current")));
    }
    Ok(values)
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

// ================================================================================================
// Parameter sweeps over GLIF config fields
// ================================================================================================

/// How sweep points are chosen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SweepMethod {
    /// Cartesian product of every parameter's `values` / `factors` (first parameter varies slowest).
    #[default]
    Grid,
    /// `n` points, each parameter uniform in [min, max].
    Uniform,
    /// `n` points, each parameter log-uniform in [min, max] (min > 0).
    LogUniform,
    /// `n` points, one per stratum of each parameter's [min, max] (Latin hypercube, uniform strata).
    LatinHypercube,
}

/// One swept parameter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepParam {
    /// Allen config field: `R_input`, `C`, `El`, `th_inf`, `dt`, `init_voltage`, `init_threshold`,
    /// `spike_cut_length`, `coeffs.th_inf`, `coeffs.C`, `coeffs.G`, `coeffs.a`, `coeffs.b`,
    /// `asc_amp_array[j]`, `asc_tau_array[j]`, `coeffs.asc_amp_array[j]`, `a_spike`, `b_spike`,
    /// `a_voltage`, `b_voltage`, `voltage_reset_a`, `voltage_reset_b`.
    pub name: String,
    /// Grid: absolute values [the field's SI unit].
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    /// Grid: factors applied to the base config's value [1].
    #[serde(default)]
    pub factors: Option<Vec<f64>>,
    /// Random methods: lower bound [the field's SI unit, or a factor if `relative`].
    #[serde(default)]
    pub min: Option<f64>,
    /// Random methods: upper bound [the field's SI unit, or a factor if `relative`].
    #[serde(default)]
    pub max: Option<f64>,
    /// Random methods: `min` / `max` are factors of the base config's value.
    #[serde(default)]
    pub relative: bool,
}

/// A parameter sweep (empty `params` = the base configs only).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// `grid`, `uniform`, `log_uniform` or `latin_hypercube`.
    #[serde(default)]
    pub method: SweepMethod,
    /// Number of points of the random methods [configs].
    #[serde(default)]
    pub n: Option<usize>,
    /// The swept parameters, in column order.
    #[serde(default)]
    pub params: Vec<SweepParam>,
}

/// Largest sweep a stage expands (points per base config).
const MAX_SWEEP_POINTS: usize = 10_000_000;

/// Reads a GLIF config field by its Allen name (on a scratch copy: one name table for reads and writes).
fn param_get(config: &GlifConfig, name: &str) -> std::result::Result<f64, SimStageError> {
    param_access(&mut config.clone(), name, None)
}

/// Writes a GLIF config field by its Allen name. `a_spike` / `b_spike` set both the threshold
/// dynamics and the threshold reset (Allen configs carry the same values in both).
fn param_set(config: &mut GlifConfig, name: &str, value: f64) -> std::result::Result<(), SimStageError> {
    param_access(config, name, Some(value)).map(|_| ())
}

fn indexed(name: &str, prefix: &str) -> Option<std::result::Result<usize, ()>> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('[')?;
    Some(rest.strip_suffix(']').and_then(|s| s.parse().ok()).ok_or(()))
}

/// Gets (value = None) or sets a field and returns its value. A failed set leaves `c` unchanged.
fn param_access(c: &mut GlifConfig, name: &str, value: Option<f64>) -> std::result::Result<f64, SimStageError> {
    let perr = |reason: &str| SimStageError::Param { name: name.to_string(), reason: reason.to_string() };
    fn rw(slot: &mut f64, value: Option<f64>) -> f64 {
        if let Some(v) = value {
            *slot = v;
        }
        *slot
    }
    let vec_slot = |v: &mut Vec<f64>, prefix: &str| -> std::result::Result<f64, SimStageError> {
        match indexed(name, prefix) {
            Some(Ok(j)) if j < v.len() => Ok(rw(&mut v[j], value)),
            Some(Ok(j)) => Err(perr(&format!("index {j} out of range: the config has {} after-spike currents", v.len()))),
            _ => Err(perr("expected an index, e.g. `asc_amp_array[0]`")),
        }
    };
    let out = match name {
        "R_input" => rw(&mut c.r_input_ohm, value),
        "C" => rw(&mut c.c_farad, value),
        "El" => rw(&mut c.el_v, value),
        "th_inf" => rw(&mut c.th_inf_v, value),
        "dt" => rw(&mut c.dt_s, value),
        "init_voltage" => rw(&mut c.init_voltage_v, value),
        "init_threshold" => rw(&mut c.init_threshold_v, value),
        "spike_cut_length" => {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1e9) {
                    return Err(perr(&format!("{v} is not a whole number of samples")));
                }
                c.spike_cut_length = v as usize;
            }
            c.spike_cut_length as f64
        }
        "coeffs.th_inf" => rw(&mut c.coeffs.th_inf, value),
        "coeffs.C" => rw(&mut c.coeffs.c, value),
        "coeffs.G" => rw(&mut c.coeffs.g, value),
        "coeffs.a" => rw(&mut c.coeffs.a, value),
        "coeffs.b" => rw(&mut c.coeffs.b, value),
        n if n.starts_with("asc_amp_array[") => vec_slot(&mut c.asc_amp_a, "asc_amp_array")?,
        n if n.starts_with("asc_tau_array[") => vec_slot(&mut c.asc_tau_s, "asc_tau_array")?,
        n if n.starts_with("coeffs.asc_amp_array[") => vec_slot(&mut c.coeffs.asc_amp, "coeffs.asc_amp_array")?,
        "a_spike" | "b_spike" | "a_voltage" | "b_voltage" => {
            let (a_s, b_s, a_v, b_v) = match &mut c.threshold_dynamics {
                ThresholdDynamics::SpikeComponent { a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s }
                | ThresholdDynamics::ThreeComponentsExact { a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s } => {
                    (a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s)
                }
                ThresholdDynamics::Inf => return Err(perr("the config's threshold dynamics are `inf` (no threshold components)")),
            };
            let v = match name {
                "a_spike" => rw(a_s, value),
                "b_spike" => rw(b_s, value),
                "a_voltage" => rw(a_v, value),
                _ => rw(b_v, value),
            };
            if let (Some(x), ThresholdReset::ThreeComponents { a_spike_v, b_spike_per_s }) = (value, &mut c.threshold_reset) {
                match name {
                    "a_spike" => *a_spike_v = x,
                    "b_spike" => *b_spike_per_s = x,
                    _ => {}
                }
            }
            v
        }
        "voltage_reset_a" | "voltage_reset_b" => match &mut c.voltage_reset {
            glif::VoltageReset::VBefore { a, b_v } => rw(if name == "voltage_reset_a" { a } else { b_v }, value),
            glif::VoltageReset::Zero => return Err(perr("the config's voltage reset is `zero` (no a, b)")),
        },
        _ => return Err(perr("unknown parameter (see the `sweep.params.name` documentation for the list)")),
    };
    Ok(out)
}

/// SI unit of a swept field, for the column metadata.
fn param_unit(name: &str) -> Option<&'static str> {
    Some(match name {
        "R_input" => "Ohm",
        "C" => "F",
        "El" | "th_inf" | "init_voltage" | "init_threshold" | "a_spike" | "voltage_reset_b" => "V",
        "dt" => "s",
        "spike_cut_length" => "samples",
        "b_spike" | "a_voltage" | "b_voltage" => "1/s",
        n if n.starts_with("asc_amp_array[") => "A",
        n if n.starts_with("asc_tau_array[") => "s",
        _ => return None,
    })
}

/// The expanded sweep: per point, one value per parameter (absolute, SI).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    pub names: Vec<String>,
    /// Row-major `[points][names.len()]`; with `relative` specs the values are factors, resolved
    /// per base config by [`SweepPlan::config`].
    pub points: Vec<Vec<f64>>,
    /// Per parameter: whether `points` holds factors of the base value.
    pub relative: Vec<bool>,
}

impl SweepSpec {
    /// Value problems with their path inside `sweep` (as `PathSeg`s) and a reason.
    fn problems(&self, base: Option<&GlifConfig>) -> Vec<(Vec<PathSeg>, String)> {
        let mut out = Vec::new();
        let at = |i: usize, key: &str| vec![PathSeg::Key("params".into()), PathSeg::Index(i), PathSeg::Key(key.into())];
        let random = self.method != SweepMethod::Grid;
        match (random, self.n) {
            (true, None) | (true, Some(0)) => out.push((vec![PathSeg::Key("n".into())], "random sweeps need `n` >= 1".into())),
            (true, Some(n)) if n > MAX_SWEEP_POINTS => out.push((vec![PathSeg::Key("n".into())], format!("more than {MAX_SWEEP_POINTS} points"))),
            (false, Some(_)) => out.push((vec![PathSeg::Key("n".into())], "`n` is for random methods; a grid's size is the product of its value lists".into())),
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        let mut grid_size: f64 = 1.0;
        for (i, p) in self.params.iter().enumerate() {
            if !seen.insert(p.name.as_str()) {
                out.push((at(i, "name"), format!("`{}` is swept twice", p.name)));
            }
            if let Some(base) = base {
                if let Err(e) = param_get(base, &p.name) {
                    out.push((at(i, "name"), e.to_string()));
                    continue;
                }
            }
            if random {
                if p.values.is_some() || p.factors.is_some() {
                    out.push((at(i, "values"), "random methods take `min` and `max`, not value lists".into()));
                }
                match (p.min, p.max) {
                    (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo <= hi => {
                        if self.method == SweepMethod::LogUniform && lo <= 0.0 {
                            out.push((at(i, "min"), "log-uniform bounds must be > 0".into()));
                        }
                    }
                    _ => out.push((at(i, "min"), "give finite `min` <= `max`".into())),
                }
            } else {
                match (&p.values, &p.factors) {
                    (Some(v), None) | (None, Some(v)) => {
                        if v.is_empty() {
                            out.push((at(i, if p.values.is_some() { "values" } else { "factors" }), "empty list".into()));
                        }
                        for (j, x) in v.iter().enumerate() {
                            if !x.is_finite() {
                                let mut path = at(i, if p.values.is_some() { "values" } else { "factors" });
                                path.push(PathSeg::Index(j));
                                out.push((path, format!("{x} is not finite")));
                            }
                        }
                        grid_size *= v.len().max(1) as f64;
                    }
                    _ => out.push((at(i, "values"), "a grid parameter needs exactly one of `values` and `factors`".into())),
                }
                if p.min.is_some() || p.max.is_some() || p.relative {
                    out.push((at(i, "min"), "`min`, `max` and `relative` are for random methods".into()));
                }
            }
            // Each value on its own must give a config the kernel accepts (e.g. no negative C).
            if let (Some(base), Some(vals)) = (base, p.values.as_ref()) {
                for (j, &x) in vals.iter().enumerate() {
                    let mut c = base.clone();
                    let r = param_set(&mut c, &p.name, x).and_then(|_| {
                        c.validate("config").map_err(|e| SimStageError::Param { name: p.name.clone(), reason: e.to_string() })
                    });
                    if let Err(e) = r {
                        let mut path = at(i, "values");
                        path.push(PathSeg::Index(j));
                        out.push((path, e.to_string()));
                    }
                }
            }
        }
        if grid_size > MAX_SWEEP_POINTS as f64 {
            out.push((vec![PathSeg::Key("params".into())], format!("the grid has {grid_size} points, more than {MAX_SWEEP_POINTS}")));
        }
        out
    }

    /// Expands the sweep (seeded; sequential, so independent of the thread count).
    pub fn expand(&self, seed: u64) -> SweepPlan {
        let names: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
        let mut relative = Vec::new();
        let points = match self.method {
            SweepMethod::Grid => {
                let lists: Vec<&Vec<f64>> = self
                    .params
                    .iter()
                    .map(|p| {
                        relative.push(p.factors.is_some());
                        p.values.as_ref().or(p.factors.as_ref()).expect("checked")
                    })
                    .collect();
                let total: usize = lists.iter().map(|l| l.len()).product();
                (0..total)
                    .map(|mut idx| {
                        // Last parameter varies fastest (itertools.product order).
                        let mut row = vec![0.0; lists.len()];
                        for d in (0..lists.len()).rev() {
                            row[d] = lists[d][idx % lists[d].len()];
                            idx /= lists[d].len();
                        }
                        row
                    })
                    .collect()
            }
            method => {
                let n = self.n.unwrap_or(0);
                let mut rng = StdRng::seed_from_u64(seed);
                relative = self.params.iter().map(|p| p.relative).collect();
                let bounds: Vec<(f64, f64)> = self.params.iter().map(|p| (p.min.unwrap_or(0.0), p.max.unwrap_or(0.0))).collect();
                // Unit-cube samples, per dimension.
                let mut unit = vec![vec![0.0; bounds.len()]; n];
                if method == SweepMethod::LatinHypercube {
                    for d in 0..bounds.len() {
                        let mut strata: Vec<usize> = (0..n).collect();
                        // Fisher-Yates with the stage's rng.
                        for i in (1..n).rev() {
                            let j = rng.random_range(0..=i);
                            strata.swap(i, j);
                        }
                        for (row, s) in unit.iter_mut().zip(&strata) {
                            row[d] = (*s as f64 + rng.random::<f64>()) / n as f64;
                        }
                    }
                } else {
                    for row in unit.iter_mut() {
                        for x in row.iter_mut() {
                            *x = rng.random::<f64>();
                        }
                    }
                }
                unit.into_iter()
                    .map(|row| {
                        row.iter()
                            .zip(&bounds)
                            .map(|(&u, &(lo, hi))| {
                                if method == SweepMethod::LogUniform {
                                    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
                                } else {
                                    lo + u * (hi - lo)
                                }
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        let points = if names.is_empty() { vec![Vec::new()] } else { points };
        SweepPlan { names, points, relative }
    }
}

impl SweepPlan {
    /// Number of configs per base config.
    pub fn len(&self) -> usize {
        self.points.len()
    }
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
    /// Absolute parameter values and the config of point `i` applied to `base`.
    pub fn config(&self, base: &GlifConfig, i: usize) -> std::result::Result<(Vec<f64>, GlifConfig), SimStageError> {
        let mut c = base.clone();
        let mut values = Vec::with_capacity(self.names.len());
        for ((name, &x), &rel) in self.names.iter().zip(&self.points[i]).zip(&self.relative) {
            let v = if rel { x * param_get(base, name)? } else { x };
            param_set(&mut c, name, v)?;
            values.push(v);
        }
        Ok((values, c))
    }
}

// ================================================================================================
// simulate.glif
// ================================================================================================

/// How a swept or file stimulus reaches a config's `dt`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DtStimulus {
    /// Generate the stimulus anew on the grid k·dt (generated shapes only).
    Regenerate,
    /// Generate (or read) it at the base config's dt (a file: at its own rate) and interpolate
    /// linearly onto k·dt, keeping its duration.
    Resample,
}

/// What spike-cut samples (AllenSDK's NaN) become in `response`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpikeCutFill {
    /// 0.05 V on the El-referenced scale, as `allensdk.model.glif.simulate_neuron` writes.
    #[default]
    Allen,
    /// Keep NaN.
    Nan,
}

fn default_true() -> bool {
    true
}
fn default_block_size() -> usize {
    256
}

/// Runs an Allen GLIF neuron (`neuron_config.json`) over a parameter sweep and stimuli.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateGlif {
    /// Allen `neuron_config.json` (one config, Allen's `{"<id>": config}` wrapping, or a list of
    /// base configs), relative to the pipeline file [path].
    pub neuron_config: String,
    /// Stimuli, each a table with `kind` = `allen_noise1`, `allen_noise2`, `long_square` or `file`
    /// [list].
    pub stimuli: Vec<StimulusSpec>,
    /// Parameter sweep over config fields (none = the base configs only) [table].
    #[serde(default)]
    pub sweep: Option<SweepSpec>,
    /// Required when `dt` is swept or a file's rate differs from `dt`: `regenerate` or `resample`
    /// the stimulus at each config's dt [enum].
    #[serde(default)]
    pub dt_stimulus: Option<DtStimulus>,
    /// Rheobase for the rheobase-relative stimuli (none = g·θ∞ of each base config,
    /// `GlifConfig::rough_rheobase_a`) [pA].
    #[serde(default)]
    pub rheobase_pa: Option<f64>,
    /// Emit the membrane potential as `response`; false keeps only spikes and summary [bool].
    #[serde(default = "default_true")]
    pub record_voltage: bool,
    /// Emit the stimulus trace as `stimulus` [bool].
    #[serde(default = "default_true")]
    pub record_stimulus: bool,
    /// What spike-cut samples become in `response`: `allen` (0.05 V above El_reference) or `nan` [enum].
    #[serde(default)]
    pub spike_cut_fill: SpikeCutFill,
    /// Configs per emitted batch (each batch holds one stimulus) [configs].
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

impl SimulateGlif {
    fn load_bases(&self, ctx: &StageContext) -> std::result::Result<Vec<GlifConfig>, String> {
        let path = ctx.resolve(&self.neuron_config);
        glif::load_neuron_configs(&path).map_err(|e| e.to_string())
    }

    fn plan(&self, ctx: &StageContext) -> SweepPlan {
        self.sweep.clone().unwrap_or_default().expand(ctx.seed)
    }

    fn dt_swept(&self) -> bool {
        self.sweep.as_ref().is_some_and(|s| s.params.iter().any(|p| p.name == "dt"))
    }

    fn schema(&self, ctx: &StageContext) -> SchemaRef {
        let mut fields = vec![
            field("recording_id", DataType::Utf8, false, None),
            field("sweep", DataType::Int64, false, None),
            field("stimulus_kind", DataType::Utf8, false, None),
            field("sampling_rate_hz", DataType::Float64, false, Some("Hz")),
        ];
        if self.record_stimulus {
            fields.push(f32_trace("stimulus", "pA"));
        }
        if self.record_voltage {
            // Null for failed configs (no trace is better than a NaN-filled one).
            fields.push(field("response", DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, false))), true, Some("mV")));
        }
        fields.push(field("neuronal_model_id", DataType::Utf8, true, None));
        fields.push(field("base_config", DataType::Int64, false, None));
        fields.push(field("config_index", DataType::Int64, false, None));
        for name in &self.plan_names() {
            fields.push(field(name, DataType::Float64, false, param_unit(name)));
        }
        fields.push(field("el_reference_mv", DataType::Float64, false, Some("mV")));
        fields.push(field("model_spike_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), false, Some("s")));
        fields.push(field("spike_count", DataType::Int64, true, None));
        fields.push(field("status", DataType::Utf8, false, None));
        fields.push(field("status_detail", DataType::Utf8, true, None));
        let _ = ctx;
        Arc::new(Schema::new(fields))
    }

    fn plan_names(&self) -> Vec<String> {
        self.sweep.as_ref().map(|s| s.params.iter().map(|p| p.name.clone()).collect()).unwrap_or_default()
    }
}

impl StageConfig for SimulateGlif {
    const KIND: &'static str = "simulate.glif";
    const SUMMARY: &'static str = "Simulate an Allen GLIF neuron over a parameter sweep and stimuli (sweeps table)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        let bases = match self.load_bases(ctx) {
            Ok(b) if b.is_empty() => {
                issues.push(Issue::at(&["neuron_config"], "the file holds no config"));
                None
            }
            Ok(b) => Some(b),
            Err(e) => {
                issues.push(Issue::at(&["neuron_config"], e));
                None
            }
        };
        if self.block_size == 0 {
            issues.push(Issue::at(&["block_size"], "block_size must be at least 1"));
        }
        if self.stimuli.is_empty() {
            issues.push(Issue::at(&["stimuli"], "give at least one stimulus"));
        }
        if let Some(r) = self.rheobase_pa {
            if !(r.is_finite() && r > 0.0) {
                issues.push(Issue::at(&["rheobase_pa"], format!("{r} must be a finite number > 0")));
            }
        }
        let sub = |key: &str, i: usize, rest: &str, msg: String| Issue {
            path: vec![PathSeg::Key(key.into()), PathSeg::Index(i), PathSeg::Key(rest.into())],
            message: msg,
            offset: None,
        };
        for (i, s) in self.stimuli.iter().enumerate() {
            for (k, msg) in s.problems() {
                issues.push(sub("stimuli", i, k, msg));
            }
            if let StimulusSpec::File(f) = s {
                match read_npy_f64(&ctx.resolve(&f.path)) {
                    Err(e) => issues.push(sub("stimuli", i, "path", e.to_string())),
                    Ok(_) => {
                        if let (Some(bases), None) = (&bases, self.dt_stimulus) {
                            let rate_differs = f.sampling_rate_hz.is_some_and(|r| bases.iter().any(|b| (r * b.dt_s - 1.0).abs() > 1e-9));
                            if rate_differs || self.dt_swept() {
                                issues.push(sub(
                                    "stimuli",
                                    i,
                                    "sampling_rate_hz",
                                    "the file's sampling differs from the configs' dt: set `dt_stimulus = \"resample\"`".into(),
                                ));
                            }
                        }
                    }
                }
                if self.dt_stimulus == Some(DtStimulus::Regenerate) && (self.dt_swept() || f.sampling_rate_hz.is_some()) {
                    issues.push(sub("stimuli", i, "kind", "a file stimulus cannot be regenerated; use `dt_stimulus = \"resample\"`".into()));
                }
            }
        }
        if self.dt_swept() && self.dt_stimulus.is_none() {
            issues.push(Issue::at(
                &["dt_stimulus"],
                "`dt` is swept: say how the stimulus follows it, `dt_stimulus = \"regenerate\"` or `\"resample\"` (relabelling dt without either was study 3's bug)",
            ));
        }
        if let Some(sweep) = &self.sweep {
            for (mut path, msg) in sweep.problems(bases.as_ref().and_then(|b| b.first())) {
                path.insert(0, PathSeg::Key("sweep".into()));
                issues.push(Issue { path, message: msg, offset: None });
            }
        }
        let reserved = ["recording_id", "sweep", "stimulus_kind", "sampling_rate_hz", "stimulus", "response", "status"];
        for (i, n) in self.plan_names().iter().enumerate() {
            if reserved.contains(&n.as_str()) {
                issues.push(Issue { path: vec![PathSeg::Key("sweep".into()), PathSeg::Key("params".into()), PathSeg::Index(i)], message: format!("`{n}` is a reserved column"), offset: None });
            }
        }
        issues
    }

    fn output_schema(&self, ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(self.schema(ctx))
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let mut files = vec![ctx.resolve(&self.neuron_config)];
        for s in &self.stimuli {
            if let StimulusSpec::File(f) = s {
                files.push(ctx.resolve(&f.path));
            }
        }
        Ok(files)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let bases = self.load_bases(ctx).map_err(|e| Error::msg(format!("stage `{}`: neuron_config: {e}", ctx.name)))?;
        let plan = self.plan(ctx);
        let mut files = HashMap::new();
        for (i, s) in self.stimuli.iter().enumerate() {
            if let StimulusSpec::File(f) = s {
                let data = read_npy_f64(&ctx.resolve(&f.path)).map_err(|e| Error::msg(format!("stage `{}`: {e}", ctx.name)))?;
                let scale = if f.unit == "pA" { 1e-12 } else { 1.0 };
                files.insert(i, Arc::new(data.into_iter().map(|x| x * scale).collect::<Vec<f64>>()));
            }
        }
        let model_label = bases
            .first()
            .and_then(|b| b.neuronal_model_id.clone())
            .unwrap_or_else(|| Path::new(&self.neuron_config).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "glif".into()));
        Ok(Operator::Source(Box::new(GlifSource {
            cfg: self.clone(),
            bases,
            plan,
            files,
            schema: output.clone(),
            seed: ctx.seed,
            model_label,
            stimulus: 0,
            next_config: 0,
            cache: HashMap::new(),
            cache_bytes: 0,
        })))
    }
}

/// Cache budget for generated stimuli of one stimulus entry (per distinct dt and rheobase).
const STIMULUS_CACHE_BYTES: usize = 512 << 20;

/// Emits one (block of configs, stimulus) per call, stimulus-major.
struct GlifSource {
    cfg: SimulateGlif,
    bases: Vec<GlifConfig>,
    plan: SweepPlan,
    files: HashMap<usize, Arc<Vec<f64>>>,
    schema: SchemaRef,
    seed: u64,
    model_label: String,
    stimulus: usize,
    next_config: usize,
    cache: HashMap<(u64, u64), Arc<Vec<f64>>>,
    cache_bytes: usize,
}

/// One simulated (config, stimulus) pair.
struct GlifRow {
    base: usize,
    config_index: usize,
    values: Vec<f64>,
    dt_s: f64,
    el_reference_v: f64,
    stimulus: Option<Arc<Vec<f64>>>,
    response_mv: Option<Vec<f32>>,
    spike_times_s: Vec<f64>,
    outcome: std::result::Result<(), (String, String)>,
}

impl GlifSource {
    fn total(&self) -> usize {
        self.bases.len() * self.plan.len()
    }

    fn rheobase_a(&self, base: &GlifConfig) -> f64 {
        self.cfg.rheobase_pa.map_or_else(|| base.rough_rheobase_a(), |pa| pa * 1e-12)
    }

    /// The stimulus (A) of entry `self.stimulus` at `dt_s` for `base`.
    fn stimulus_for(&mut self, base_idx: usize, dt_s: f64) -> std::result::Result<Arc<Vec<f64>>, SimStageError> {
        let spec = self.cfg.stimuli[self.stimulus].clone();
        let base = &self.bases[base_idx];
        let rheo = if spec.uses_rheobase() { self.rheobase_a(base) } else { 0.0 };
        let key = (dt_s.to_bits(), rheo.to_bits());
        if let Some(s) = self.cache.get(&key) {
            return Ok(s.clone());
        }
        let base_dt = base.dt_s;
        let stim = match (&spec, self.cfg.dt_stimulus) {
            (StimulusSpec::File(f), mode) => {
                let raw = self.files.get(&self.stimulus).expect("file loaded in build").clone();
                let file_dt = f.sampling_rate_hz.map_or(base_dt, |r| 1.0 / r);
                if file_dt == dt_s {
                    raw
                } else if mode == Some(DtStimulus::Resample) {
                    Arc::new(resample_linear(&raw, file_dt, dt_s))
                } else {
                    return Err(SimStageError::Stimulus {
                        name: spec.label(),
                        reason: format!("the file is sampled every {file_dt} s but the config's dt is {dt_s} s; set dt_stimulus = \"resample\""),
                    });
                }
            }
            (_, Some(DtStimulus::Resample)) if dt_s != base_dt => {
                let at_base = spec.generate(base_dt, rheo, self.seed)?;
                Arc::new(resample_linear(&at_base, base_dt, dt_s))
            }
            _ => Arc::new(spec.generate(dt_s, rheo, self.seed)?),
        };
        let bytes = stim.len() * 8;
        if self.cache_bytes + bytes > STIMULUS_CACHE_BYTES {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache_bytes += bytes;
        self.cache.insert(key, stim.clone());
        Ok(stim)
    }

    fn batch(&self, rows: &[GlifRow]) -> Result<RecordBatch> {
        let label = self.cfg.stimuli[self.stimulus].label();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| format!("{}/c{:06}", self.model_label, r.config_index)))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| self.stimulus as i64))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| label.clone()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| 1.0 / r.dt_s))),
        ];
        if self.cfg.record_stimulus {
            let lists: Vec<Option<Vec<f32>>> =
                rows.iter().map(|r| r.stimulus.as_ref().map(|s| s.iter().map(|&a| (a * 1e12) as f32).collect())).collect();
            cols.push(Arc::new(f32_lists(&lists, false)?));
        }
        if self.cfg.record_voltage {
            let lists: Vec<Option<Vec<f32>>> = rows.iter().map(|r| r.response_mv.clone()).collect();
            cols.push(Arc::new(f32_lists(&lists, true)?));
        }
        cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| self.bases[r.base].neuronal_model_id.clone()))));
        cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.base as i64))));
        cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.config_index as i64))));
        for j in 0..self.plan.names.len() {
            cols.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.values.get(j).copied().unwrap_or(f64::NAN)))));
        }
        cols.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.el_reference_v * 1e3))));
        cols.push(Arc::new(f64_lists(rows.iter().map(|r| r.spike_times_s.as_slice()))?));
        cols.push(Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.outcome.is_ok().then_some(r.spike_times_s.len() as i64)))));
        cols.push(Arc::new(StringArray::from_iter_values(rows.iter().map(|r| match &r.outcome {
            Ok(()) => "ok".to_string(),
            Err((s, _)) => s.clone(),
        }))));
        cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| r.outcome.as_ref().err().map(|e| e.1.clone())))));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// Simulates one config on one stimulus; kernel errors and bad resets become a status.
/// Spike times and row outcome of a spike-only run (as [`run_one`] reports them).
fn spike_outcome(run: std::result::Result<(GlifRunStatus, GlifSpikes), glif::GlifError>) -> (Vec<f64>, std::result::Result<(), (String, String)>) {
    match run {
        Err(e) => (Vec::new(), Err(("error".into(), e.to_string()))),
        Ok((GlifRunStatus::Completed, spikes)) => (spikes.interpolated_times_s, Ok(())),
        Ok((GlifRunStatus::BadReset { spike_step, reset_voltage_v, reset_threshold_v }, spikes)) => (
            spikes.interpolated_times_s,
            Err((
                "bad_reset".into(),
                format!(
                    "after the spike at step {spike_step} the reset voltage {reset_voltage_v} V is above the reset threshold {reset_threshold_v} V; AllenSDK stops the run here (spike times are those before the stop)"
                ),
            )),
        ),
    }
}

fn run_one(config: &GlifConfig, stim_a: &[f64], record: bool, fill: SpikeCutFill) -> (Option<Vec<f32>>, Vec<f64>, std::result::Result<(), (String, String)>) {
    let el_ref = config.el_reference_v.unwrap_or(0.0);
    let (status, spikes, voltage) = if record {
        let mut out = GlifOutput::new();
        match glif::simulate(config, stim_a, &mut out) {
            Ok(s) => (s, std::mem::take(&mut out.spikes), Some(out.voltage_v)),
            Err(e) => return (None, Vec::new(), Err(("error".into(), e.to_string()))),
        }
    } else {
        let mut spikes = GlifSpikes::default();
        match glif::simulate_spikes(config, stim_a, &mut spikes) {
            Ok(s) => (s, spikes, None),
            Err(e) => return (None, Vec::new(), Err(("error".into(), e.to_string()))),
        }
    };
    match status {
        GlifRunStatus::Completed => {
            let response = voltage.map(|mut v| {
                if fill == SpikeCutFill::Allen {
                    glif::fill_spike_cuts(&mut v, glif::DEFAULT_SPIKE_CUT_VALUE_V);
                }
                v.iter().map(|&x| ((x + el_ref) * 1e3) as f32).collect()
            });
            (response, spikes.interpolated_times_s, Ok(()))
        }
        GlifRunStatus::BadReset { spike_step, reset_voltage_v, reset_threshold_v } => (
            None,
            spikes.interpolated_times_s,
            Err((
                "bad_reset".into(),
                format!(
                    "after the spike at step {spike_step} the reset voltage {reset_voltage_v} V is above the reset threshold {reset_threshold_v} V; AllenSDK stops the run here (spike times are those before the stop)"
                ),
            )),
        ),
    }
}

impl SourceOperator for GlifSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let total = self.total();
        if self.stimulus >= self.cfg.stimuli.len() || total == 0 {
            return Ok(false);
        }
        let start = self.next_config;
        let end = (start + self.cfg.block_size).min(total);
        let per_base = self.plan.len();
        // Configs of the block (sequential: cheap, and stimulus generation is cached).
        let mut jobs = Vec::with_capacity(end - start);
        for idx in start..end {
            let (b, i) = (idx / per_base, idx % per_base);
            match self.plan.config(&self.bases[b], i) {
                Ok((values, config)) => {
                    let stim = self.stimulus_for(b, config.dt_s).map_err(|e| Error::msg(e.to_string()))?;
                    jobs.push((b, idx, values, Ok((config, stim))));
                }
                Err(e) => {
                    let values = self.plan.points[i].clone();
                    jobs.push((b, idx, values, Err(e.to_string())));
                }
            }
        }
        let (record, fill) = (self.cfg.record_voltage, self.cfg.spike_cut_fill);
        if !record {
            // Spike-only: configs in groups of lanes, interleaved step by step (same results).
            let rows: Vec<GlifRow> = jobs
                .par_chunks(glif::SPIKE_LANES)
                .flat_map_iter(|chunk| {
                    let ok: Vec<(&GlifConfig, &[f64])> = chunk.iter().filter_map(|j| j.3.as_ref().ok().map(|(c, s)| (c, s.as_slice()))).collect();
                    let mut runs = glif::simulate_spikes_lanes(&ok).into_iter();
                    chunk
                        .iter()
                        .map(|(base, config_index, values, job)| match job {
                            Ok((config, stim)) => {
                                let run = runs.next().expect("one run per ok job");
                                let (spike_times_s, outcome) = spike_outcome(run);
                                GlifRow {
                                    base: *base,
                                    config_index: *config_index,
                                    values: values.clone(),
                                    dt_s: config.dt_s,
                                    el_reference_v: config.el_reference_v.unwrap_or(0.0),
                                    stimulus: Some(stim.clone()),
                                    response_mv: None,
                                    spike_times_s,
                                    outcome,
                                }
                            }
                            Err(msg) => GlifRow {
                                base: *base,
                                config_index: *config_index,
                                values: values.clone(),
                                dt_s: f64::NAN,
                                el_reference_v: 0.0,
                                stimulus: None,
                                response_mv: None,
                                spike_times_s: Vec::new(),
                                outcome: Err(("error".into(), msg.clone())),
                            },
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            out.emit(self.batch(&rows)?);
            self.next_config = end;
            if self.next_config >= total {
                self.next_config = 0;
                self.stimulus += 1;
                self.cache.clear();
                self.cache_bytes = 0;
            }
            return Ok(self.stimulus < self.cfg.stimuli.len());
        }
        let rows: Vec<GlifRow> = jobs
            .into_par_iter()
            .map(|(base, config_index, values, job)| match job {
                Ok((config, stim)) => {
                    let (response_mv, spike_times_s, outcome) = run_one(&config, &stim, record, fill);
                    GlifRow {
                        base,
                        config_index,
                        values,
                        dt_s: config.dt_s,
                        el_reference_v: config.el_reference_v.unwrap_or(0.0),
                        stimulus: Some(stim),
                        response_mv,
                        spike_times_s,
                        outcome,
                    }
                }
                Err(msg) => GlifRow {
                    base,
                    config_index,
                    values,
                    dt_s: f64::NAN,
                    el_reference_v: 0.0,
                    stimulus: None,
                    response_mv: None,
                    spike_times_s: Vec::new(),
                    outcome: Err(("error".into(), msg)),
                },
            })
            .collect();
        out.emit(self.batch(&rows)?);
        self.next_config = end;
        if self.next_config >= total {
            self.next_config = 0;
            self.stimulus += 1;
            self.cache.clear();
            self.cache_bytes = 0;
        }
        Ok(self.stimulus < self.cfg.stimuli.len())
    }
}

/// A `large_list<float32>` column (non-null items) from optional rows; `None` rows are null
/// (`nullable`) or empty lists.
fn f32_lists(rows: &[Option<Vec<f32>>], nullable: bool) -> Result<LargeListArray> {
    let mut values = Vec::with_capacity(rows.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum());
    let mut offsets = vec![0i64];
    for r in rows {
        if let Some(r) = r {
            values.extend_from_slice(r);
        }
        offsets.push(values.len() as i64);
    }
    let nulls = nullable.then(|| NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>()));
    Ok(LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(Float32Array::from(values)),
        nulls,
    )?)
}

/// A `large_list<float64>` column (non-null items, no null rows).
fn f64_lists<'a>(rows: impl Iterator<Item = &'a [f64]>) -> Result<LargeListArray> {
    let mut values = Vec::new();
    let mut offsets = vec![0i64];
    for r in rows {
        values.extend_from_slice(r);
        offsets.push(values.len() as i64);
    }
    Ok(LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float64, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(Float64Array::from(values)),
        None,
    )?)
}

// ================================================================================================
// simulate.stg
// ================================================================================================

fn default_dt_ms() -> f64 {
    0.01
}
fn default_duration_ms() -> f64 {
    6000.0
}
fn default_transient_ms() -> f64 {
    3000.0
}
fn default_conductance_columns() -> Vec<String> {
    stg::CONDUCTANCE_NAMES.iter().map(|s| s.to_string()).collect()
}
fn default_v0() -> f64 {
    -70.0
}
fn default_ca0() -> f64 {
    0.5
}

/// Simulates one Liu-1998 STG cell per row of a conductance table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateStg {
    /// Integration step of the exponential-Euler scheme (0.01 keeps spike times within 0.5 ms of
    /// the exact solution; above 0.025 is refused) [ms].
    #[serde(default = "default_dt_ms")]
    pub dt_ms: f64,
    /// Simulated time from the initial state, transient included [ms].
    #[serde(default = "default_duration_ms")]
    pub duration_ms: f64,
    /// Initial part simulated but not recorded (3000 in the STG data-set protocol) [ms].
    #[serde(default = "default_transient_ms")]
    pub transient_ms: f64,
    /// Keep every n-th voltage sample of the recorded window as `voltage` (0 = no voltage) [steps].
    #[serde(default)]
    pub voltage_every_steps: usize,
    /// Input columns holding g_Na, g_Kd, g_CaT, g_CaS, g_KCa, g_A, g_H, g_leak, in that order [mS/cm²].
    #[serde(default = "default_conductance_columns")]
    pub conductance_columns: Vec<String>,
    /// Voltage of the steady initial state [mV].
    #[serde(default = "default_v0")]
    pub v0_mv: f64,
    /// Calcium of the steady initial state [µM].
    #[serde(default = "default_ca0")]
    pub ca0_um: f64,
    /// Use voltage lookup tables for the gates (≈3× faster, same spike accuracy) [bool].
    #[serde(default)]
    pub gate_tables: bool,
}

impl SimulateStg {
    fn sim_config(&self) -> stg::SimulationConfig {
        stg::SimulationConfig {
            dt_ms: self.dt_ms,
            duration_ms: self.duration_ms,
            transient_ms: self.transient_ms,
            voltage_every_steps: self.voltage_every_steps,
            ..stg::SimulationConfig::default()
        }
    }
}

impl StageConfig for SimulateStg {
    const KIND: &'static str = "simulate.stg";
    const SUMMARY: &'static str = "Simulate one Liu-1998 STG cell per row of a conductance table (spike times)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.dt_ms.is_finite() && self.dt_ms > 0.0 && self.dt_ms <= 0.025) {
            issues.push(Issue::at(&["dt_ms"], format!("{} must be in (0, 0.025] ms (exponential Euler loses spike-time accuracy above)", self.dt_ms)));
        }
        if !(self.duration_ms.is_finite() && self.duration_ms > 0.0) {
            issues.push(Issue::at(&["duration_ms"], format!("{} must be a finite number > 0", self.duration_ms)));
        } else if self.duration_ms / self.dt_ms > 1e9 {
            issues.push(Issue::at(&["duration_ms"], "more than 1e9 integration steps per cell"));
        }
        if !(self.transient_ms.is_finite() && self.transient_ms >= 0.0 && self.transient_ms < self.duration_ms) {
            issues.push(Issue::at(&["transient_ms"], format!("{} must be in [0, duration_ms)", self.transient_ms)));
        }
        if self.voltage_every_steps > 0 && self.dt_ms > 0.0 {
            let samples = (self.duration_ms - self.transient_ms) / self.dt_ms / self.voltage_every_steps as f64;
            if samples > 1e8 {
                issues.push(Issue::at(&["voltage_every_steps"], format!("{samples:.0} voltage samples per cell; decimate more")));
            }
        }
        if self.conductance_columns.len() != stg::N_CONDUCTANCES {
            issues.push(Issue::at(&["conductance_columns"], format!("needs {} names (g_Na, g_Kd, g_CaT, g_CaS, g_KCa, g_A, g_H, g_leak), got {}", stg::N_CONDUCTANCES, self.conductance_columns.len())));
        }
        if !self.v0_mv.is_finite() {
            issues.push(Issue::at(&["v0_mv"], "must be finite"));
        }
        if !(self.ca0_um.is_finite() && self.ca0_um >= 0.0) {
            issues.push(Issue::at(&["ca0_um"], "must be finite and >= 0"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let input_name = "inputs[0]";
        let mut issues = Vec::new();
        for c in &self.conductance_columns {
            if let Err(i) = crate::stage::columns::require(input, input_name, c, "a numeric column", |t| t.is_numeric(), None, &["conductance_columns"]) {
                issues.push(i);
            }
        }
        let added = ["spike_times", "spike_count", "status", "status_detail", "voltage", "voltage_dt_ms"];
        for f in input.fields() {
            if added.contains(&f.name().as_str()) {
                issues.push(Issue::inputs(format!("input `{input_name}` already has a column `{}` that this stage adds", f.name())));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("spike_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), false, Some("s")));
        fields.push(field("spike_count", DataType::Int64, true, None));
        fields.push(field("status", DataType::Utf8, false, None));
        fields.push(field("status_detail", DataType::Utf8, true, None));
        if self.voltage_every_steps > 0 {
            fields.push(field("voltage", DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, false))), true, Some("mV")));
            fields.push(field("voltage_dt_ms", DataType::Float64, false, Some("ms")));
        }
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let tables = if self.gate_tables { Some(Arc::new(stg::GateTables::new(self.dt_ms).map_err(|e| Error::msg(e.to_string()))?)) } else { None };
        let u0 = stg::initial_state(self.v0_mv, self.ca0_um);
        Ok(Operator::Transform(Box::new(StgOperator { cfg: self.clone(), schema: output.clone(), tables, u0 })))
    }
}

struct StgOperator {
    cfg: SimulateStg,
    schema: SchemaRef,
    tables: Option<Arc<stg::GateTables>>,
    u0: [f64; stg::N_STATES],
}

impl TransformOperator for StgOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let mut cols: Vec<Float64Array> = Vec::with_capacity(stg::N_CONDUCTANCES);
        for c in &self.cfg.conductance_columns {
            let col = batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}` in the batch")))?;
            let col = arrow::compute::cast(col, &DataType::Float64)?;
            cols.push(col.as_primitive::<Float64Type>().clone());
        }
        let rows: Vec<std::result::Result<[f64; stg::N_CONDUCTANCES], String>> = (0..n)
            .map(|r| {
                let mut g = [0.0; stg::N_CONDUCTANCES];
                for (k, col) in cols.iter().enumerate() {
                    if col.is_null(r) {
                        return Err(format!("`{}` is null", self.cfg.conductance_columns[k]));
                    }
                    g[k] = col.value(r);
                }
                Ok(g)
            })
            .collect();
        let config = self.cfg.sim_config();
        let params = stg::StgParams::default();
        let (u0, tables) = (&self.u0, self.tables.as_deref());
        let results: Vec<std::result::Result<stg::SimulationOutput, String>> = rows
            .par_iter()
            .map(|g| {
                let g = g.as_ref().map_err(Clone::clone)?;
                match tables {
                    Some(t) => stg::simulate_cell_with_tables(g, u0, &params, &config, t),
                    None => stg::simulate_cell(g, u0, &params, &config),
                }
                .map_err(|e| e.to_string())
            })
            .collect();
        let transient_ms = self.cfg.transient_ms;
        let spikes: Vec<Vec<f64>> = results
            .iter()
            .map(|r| r.as_ref().map(|o| o.spike_times_ms.iter().map(|t| (t - transient_ms) * 1e-3).collect()).unwrap_or_default())
            .collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(f64_lists(spikes.iter().map(Vec::as_slice))?));
        columns.push(Arc::new(Int64Array::from_iter(results.iter().zip(&spikes).map(|(r, s)| r.is_ok().then_some(s.len() as i64)))));
        columns.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| if r.is_ok() { "ok" } else { "error" }))));
        columns.push(Arc::new(StringArray::from_iter(results.iter().map(|r| r.as_ref().err().cloned()))));
        if self.cfg.voltage_every_steps > 0 {
            let lists: Vec<Option<Vec<f32>>> = results.iter().map(|r| r.as_ref().ok().map(|o| o.voltage_mv.iter().map(|&v| v as f32).collect())).collect();
            columns.push(Arc::new(f32_lists(&lists, true)?));
            let dt = self.cfg.dt_ms * self.cfg.voltage_every_steps as f64;
            columns.push(Arc::new(Float64Array::from_iter_values((0..n).map(|_| dt))));
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn grid_is_cartesian_in_product_order() {
        let spec = SweepSpec {
            method: SweepMethod::Grid,
            n: None,
            params: vec![
                SweepParam { name: "C".into(), values: Some(vec![1.0, 2.0]), factors: None, min: None, max: None, relative: false },
                SweepParam { name: "R_input".into(), values: None, factors: Some(vec![0.5, 1.0, 2.0]), min: None, max: None, relative: false },
            ],
        };
        let plan = spec.expand(0);
        assert_eq!(plan.len(), 6);
        assert_eq!(plan.points[1], vec![1.0, 1.0]);
        assert_eq!(plan.points[3], vec![2.0, 0.5]);
    }

    #[test]
    fn latin_hypercube_fills_every_stratum() {
        let spec = SweepSpec {
            method: SweepMethod::LatinHypercube,
            n: Some(50),
            params: vec![SweepParam { name: "C".into(), values: None, factors: None, min: Some(0.0), max: Some(1.0), relative: false }],
        };
        let plan = spec.expand(3);
        let mut strata: Vec<usize> = plan.points.iter().map(|p| (p[0] * 50.0) as usize).collect();
        strata.sort();
        assert_eq!(strata, (0..50).collect::<Vec<_>>());
        assert_eq!(plan, spec.expand(3));
    }

    /// Every emitted batch holds at most `block_size` rows and one stimulus; all configs come out.
    #[test]
    fn source_batches_are_bounded_by_block_size() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/glif");
        let toml = r#"
            neuron_config = "glif1_neuron_config.json"
            block_size = 4
            record_stimulus = false
            stimuli = [{ kind = "long_square", amplitude_rheobase = 1.2, duration_s = 0.05, total_s = 0.05 },
                       { kind = "long_square", amplitude_pa = 0.0, duration_s = 0.05, total_s = 0.05 }]
            sweep = { params = [{ name = "C", factors = [0.8, 0.9, 1.0, 1.1, 1.2] }, { name = "th_inf", factors = [0.9, 1.1] }] }
        "#;
        let cfg: SimulateGlif = toml::from_str(toml).unwrap();
        let ctx = StageContext::new("sim", dir, 1, std::env::temp_dir());
        assert!(cfg.check(&ctx).is_empty(), "{:?}", cfg.check(&ctx));
        let schema = cfg.output_schema(&ctx, &[]).unwrap();
        let Operator::Source(mut op) = cfg.build(&ctx, &[], &schema).unwrap() else { panic!("a source") };
        let mut em = Emitter::default();
        while op.next(&mut em).unwrap() {}
        let sizes: Vec<usize> = em.batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, vec![4, 4, 2, 4, 4, 2]);
        for b in &em.batches {
            assert_eq!(b.schema().fields().len(), schema.fields().len());
            let kinds = b.column_by_name("stimulus_kind").unwrap().as_string::<i32>();
            assert!(kinds.iter().all(|k| k == kinds.iter().next().unwrap()));
        }
        // Zero current: no spikes anywhere.
        let zero = &em.batches[3];
        assert!(zero.column_by_name("spike_count").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().iter().all(|&c| c == 0));
    }

    #[test]
    fn swept_dt_without_dt_stimulus_is_refused() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/glif");
        let cfg: SimulateGlif = toml::from_str(
            r#"
            neuron_config = "glif1_neuron_config.json"
            stimuli = [{ kind = "allen_noise1" }]
            sweep = { params = [{ name = "dt", values = [1e-5, -1.0] }, { name = "nonsense", values = [1.0] }] }
        "#,
        )
        .unwrap();
        let ctx = StageContext::new("sim", dir, 1, std::env::temp_dir());
        let issues = cfg.check(&ctx);
        let text: Vec<String> = issues.iter().map(|i| format!("{:?}: {}", i.path, i.message)).collect();
        assert!(text.iter().any(|t| t.contains("dt_stimulus")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("Index(1)") && t.contains("dt")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("unknown parameter")), "{text:?}");
    }

    #[test]
    fn allen_noise_has_the_protocol_means_and_cv() {
        let spec = AllenNoise {
            name: None,
            epochs_rheobase: default_epochs(),
            epoch_s: 3.0,
            gap_s: 5.0,
            lead_s: 0.0,
            cv: 0.2,
            f_low_hz: 1.0,
            f_high_hz: 100.0,
            duration_s: None,
        };
        let dt = 1e-4;
        let x = StimulusSpec::AllenNoise1(spec).generate(dt, 100e-12, 7).unwrap();
        assert_eq!(x.len(), 190_000);
        for (e, mult) in [0.75, 1.0, 1.5].iter().enumerate() {
            let s = e * 80_000;
            let seg = &x[s..s + 30_000];
            let mean = seg.iter().sum::<f64>() / seg.len() as f64;
            let sd = (seg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / seg.len() as f64).sqrt();
            assert!((mean / (mult * 100e-12) - 1.0).abs() < 0.05, "epoch {e}: mean {mean}");
            assert!((sd / mean - 0.2).abs() < 0.03, "epoch {e}: cv {}", sd / mean);
        }
        assert!(x[30_000..80_000].iter().all(|&v| v == 0.0));
    }
}
