//! `simulate.glif`: a source that runs an Allen GLIF neuron over a parameter sweep and a list of
//! stimuli, emitting the sweeps table.
//!
//! The stage is thin: the numerics are the reference-tested kernels of [`crate::simulate::glif`]
//! (the neuron), [`crate::simulate::stimulus`] (every stimulus shape), [`crate::simulate::sweep`]
//! and [`crate::simulate::glif_params`] (the sweep over config fields) and
//! [`crate::formats::npy`] (stimulus files); this module parses the options, runs the kernels in
//! parallel (rayon, inside one operator call) and packs the results into Arrow batches with units
//! in the field metadata.
//!
//! Conventions (documented again on the options):
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef};
use rand::{SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::list_columns::list_column;
use crate::error::{Error, Result};
use crate::formats::npy::read_npy_f64;
use crate::simulate::glif::{self, GlifConfig, GlifError, GlifOutput, GlifRunStatus, GlifSpikes};
use crate::simulate::stimulus::{self, NoiseEpochs};
use crate::simulate::sweep::{SweepError, SweepPlan, SweepProblem, SweepSpec};
use crate::simulate::glif_params;
use crate::stage::columns::{f32_trace, field};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, PathSeg, SourceOperator, StageConfig, StageContext};

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
    /// Label written to `stimulus_kind` (default: the protocol name) [label].
    #[serde(default)]
    pub name: Option<String>,
    /// The protocol table (`protocol = "..."` and its fields, in pA and s) [table].
    #[schemars(with = "serde_json::Value")]
    pub spec: stimulus::StimulusSpec,
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
    /// Label written to `stimulus_kind` (default `noise1` / `noise2`) [label].
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

impl AllenNoise {
    /// The kernel's description of these epochs around `rheobase_a`. The noise lines are spaced
    /// 1/epoch_s, so every epoch holds whole periods of every line, and the scaling is analytic,
    /// so the waveform is defined in continuous time (regenerating it at another dt samples the
    /// same waveform).
    fn epochs(&self, rheobase_a: f64) -> NoiseEpochs<'_> {
        NoiseEpochs {
            multipliers: &self.epochs_rheobase,
            rheobase: rheobase_a,
            cv: self.cv,
            lead_s: self.lead_s,
            epoch_s: self.epoch_s,
            gap_s: self.gap_s,
            freqs_hz: stimulus::frequency_lines(self.f_low_hz, self.f_high_hz, 1.0 / self.epoch_s).collect(),
            standardize: false,
            baseline: 0.0,
        }
    }
}

/// A square current step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongSquare {
    /// Label written to `stimulus_kind` (default `long_square`) [label].
    #[serde(default)]
    pub name: Option<String>,
    /// Step amplitude; give this or `amplitude_rheobase` [pA].
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
    /// Label written to `stimulus_kind` (default `file:<file stem>`) [label].
    #[serde(default)]
    pub name: Option<String>,
    /// 1-D little-endian float64 `.npy` file, relative to the pipeline file [path].
    pub path: String,
    /// Unit of the values in the file: `A` (AllenSDK's convention) or `pA` [unit name].
    pub unit: String,
    /// Sampling rate of the file (none = one sample per base config `dt`) [Hz].
    #[serde(default)]
    pub sampling_rate_hz: Option<f64>,
}

/// A list entry's problems, each as (key inside the entry, reason).
type EntryProblems = Vec<(&'static str, String)>;

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

    /// Whether the shape needs the rheobase.
    fn uses_rheobase(&self) -> bool {
        match self {
            StimulusSpec::AllenNoise1(_) | StimulusSpec::AllenNoise2(_) => true,
            StimulusSpec::LongSquare(s) => s.amplitude_rheobase.is_some(),
            StimulusSpec::File(_) | StimulusSpec::Protocol(_) => false,
        }
    }

    /// Value problems, each as (sub-path inside this list entry, reason).
    fn problems(&self) -> EntryProblems {
        let mut out = Vec::new();
        match self {
            StimulusSpec::AllenNoise1(n) | StimulusSpec::AllenNoise2(n) => noise_problems(n, &mut out),
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
    pub fn generate(&self, dt_s: f64, rheobase_a: f64, seed: u64) -> Result<Vec<f64>> {
        let err = |reason: &dyn std::fmt::Display| Error::msg(format!("stimulus `{}`: {reason}", self.label()));
        match self {
            StimulusSpec::AllenNoise1(n) | StimulusSpec::AllenNoise2(n) => {
                // Separate realisations for Noise 1 and Noise 2 from one stage seed.
                let which = if matches!(self, StimulusSpec::AllenNoise1(_)) { 1 } else { 2 };
                let epochs = n.epochs(rheobase_a);
                let protocol_s = epochs.protocol_s();
                let total_s = n.duration_s.map_or(protocol_s, |d| d.min(protocol_s));
                let mut out = vec![0.0; stimulus::samples_for(total_s, dt_s).map_err(|e| err(&e))?];
                let mut rng = StdRng::seed_from_u64(stimulus::noise_seed(seed, which));
                stimulus::fill_noise_epochs(&mut out, dt_s, &epochs, &mut rng).map_err(|e| err(&e))?;
                Ok(out)
            }
            StimulusSpec::LongSquare(s) => {
                let amp_a = match (s.amplitude_pa, s.amplitude_rheobase) {
                    (Some(pa), _) => pa * 1e-12,
                    (None, Some(r)) => r * rheobase_a,
                    (None, None) => return Err(err(&"no amplitude")),
                };
                stimulus::square_step(dt_s, s.start_s, s.duration_s, s.total_s, amp_a).map_err(|e| err(&e))
            }
            StimulusSpec::Protocol(p) => {
                let pa = p.spec.render(1.0 / dt_s).map_err(|e| err(&e))?;
                Ok(pa.into_iter().map(|x| x * 1e-12).collect())
            }
            StimulusSpec::File(_) => Err(err(&"a file stimulus cannot be regenerated at another dt; use dt_stimulus = \"resample\"")),
        }
    }
}

fn finite_pos(key: &'static str, x: f64, out: &mut EntryProblems) {
    if !(x.is_finite() && x > 0.0) {
        out.push((key, format!("{x} must be a finite number > 0")));
    }
}

fn finite_nonneg(key: &'static str, x: f64, out: &mut EntryProblems) {
    if !(x.is_finite() && x >= 0.0) {
        out.push((key, format!("{x} must be a finite number >= 0")));
    }
}

/// The Allen noise options: at least one finite epoch, positive lengths, a noise band with at
/// most 100,000 lines.
fn noise_problems(n: &AllenNoise, out: &mut EntryProblems) {
    if n.epochs_rheobase.is_empty() {
        out.push(("epochs_rheobase", "needs at least one epoch".into()));
    }
    if n.epochs_rheobase.iter().any(|x| !x.is_finite()) {
        out.push(("epochs_rheobase", "every epoch amplitude must be finite".into()));
    }
    finite_pos("epoch_s", n.epoch_s, out);
    finite_nonneg("gap_s", n.gap_s, out);
    finite_nonneg("lead_s", n.lead_s, out);
    finite_nonneg("cv", n.cv, out);
    finite_pos("f_low_hz", n.f_low_hz, out);
    if !(n.f_high_hz.is_finite() && n.f_high_hz >= n.f_low_hz) {
        out.push(("f_high_hz", format!("{} must be finite and >= f_low_hz", n.f_high_hz)));
    } else if n.f_high_hz / (1.0 / n.epoch_s) > 100_000.0 {
        out.push(("f_high_hz", "more than 100,000 noise components (f_high_hz · epoch_s)".into()));
    }
    if let Some(d) = n.duration_s {
        finite_pos("duration_s", d, out);
    }
}

// ================================================================================================
// The stage
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
    /// Stimuli, each a table with `kind` = `allen_noise1`, `allen_noise2`, `long_square`, `file`
    /// or `protocol` [list].
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

/// Columns the stage writes itself; a swept parameter may not take their names.
const RESERVED: [&str; 7] = ["recording_id", "sweep", "stimulus_kind", "sampling_rate_hz", "stimulus", "response", "status"];

impl SimulateGlif {
    fn load_bases(&self, ctx: &StageContext) -> std::result::Result<Vec<GlifConfig>, GlifError> {
        glif::load_neuron_configs(&ctx.resolve(&self.neuron_config))
    }

    fn plan(&self, ctx: &StageContext) -> SweepPlan {
        self.sweep.clone().unwrap_or_default().expand(ctx.seed)
    }

    fn dt_swept(&self) -> bool {
        self.sweep.as_ref().is_some_and(|s| s.params.iter().any(|p| p.name == "dt"))
    }

    fn plan_names(&self) -> Vec<String> {
        self.sweep.as_ref().map(|s| s.params.iter().map(|p| p.name.clone()).collect()).unwrap_or_default()
    }

    fn schema(&self) -> SchemaRef {
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
            fields.push(field(name, DataType::Float64, false, glif_params::unit(name)));
        }
        fields.push(field("el_reference_mv", DataType::Float64, false, Some("mV")));
        fields.push(field("model_spike_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), false, Some("s")));
        fields.push(field("spike_count", DataType::Int64, true, None));
        fields.push(field("status", DataType::Utf8, false, None));
        fields.push(field("status_detail", DataType::Utf8, true, None));
        Arc::new(Schema::new(fields))
    }

    /// The file stimulus of entry `i`: readable, and sampled as the configs are unless told to
    /// resample.
    fn file_issues(&self, ctx: &StageContext, i: usize, f: &FileStimulus, bases: Option<&[GlifConfig]>) -> Vec<Issue> {
        let mut issues = Vec::new();
        match read_npy_f64(&ctx.resolve(&f.path)) {
            Err(e) => issues.push(entry_issue(i, "path", e.to_string())),
            Ok(_) => {
                if let (Some(bases), None) = (bases, self.dt_stimulus) {
                    let rate_differs = f.sampling_rate_hz.is_some_and(|r| bases.iter().any(|b| (r * b.dt_s - 1.0).abs() > 1e-9));
                    if rate_differs || self.dt_swept() {
                        issues.push(entry_issue(i, "sampling_rate_hz", "the file's sampling differs from the configs' dt: set `dt_stimulus = \"resample\"`"));
                    }
                }
            }
        }
        if self.dt_stimulus == Some(DtStimulus::Regenerate) && (self.dt_swept() || f.sampling_rate_hz.is_some()) {
            issues.push(entry_issue(i, "kind", "a file stimulus cannot be regenerated; use `dt_stimulus = \"resample\"`"));
        }
        issues
    }
}

/// An issue at `stimuli[i].<key>`.
fn entry_issue(i: usize, key: &str, message: impl Into<String>) -> Issue {
    Issue { path: vec![PathSeg::Key("stimuli".into()), PathSeg::Index(i), PathSeg::Key(key.into())], message: message.into(), offset: None }
}

/// A sweep problem as an issue at its place inside the `sweep` table.
fn sweep_issue(p: SweepProblem) -> Issue {
    let mut path = vec![PathSeg::Key("sweep".into())];
    if let Some(i) = p.param {
        path.extend([PathSeg::Key("params".into()), PathSeg::Index(i)]);
    }
    path.push(PathSeg::Key(p.field.into()));
    path.extend(p.item.map(PathSeg::Index));
    Issue { path, message: p.message, offset: None }
}

impl StageConfig for SimulateGlif {
    const KIND: &'static str = "simulate.glif";
    const SUMMARY: &'static str = "Simulate an Allen GLIF neuron over a parameter sweep and stimuli (sweeps table)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "neuron_config = \"data/neuron_config.json\"\n\
        stimuli = [{ kind = \"long_square\", amplitude_pa = 100.0, duration_s = 1.0, total_s = 1.5 }]\n\
        sweep = { params = [{ name = \"C\", factors = [0.8, 1.0, 1.2] }] }";

    fn arity() -> Arity {
        Arity::Source
    }

    /// Each row is one (config, stimulus) pair, computed from that pair alone.
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
                issues.push(Issue::at(&["neuron_config"], e.to_string()));
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
        for (i, s) in self.stimuli.iter().enumerate() {
            issues.extend(s.problems().into_iter().map(|(k, msg)| entry_issue(i, k, msg)));
            if let StimulusSpec::File(f) = s {
                issues.extend(self.file_issues(ctx, i, f, bases.as_deref()));
            }
        }
        if self.dt_swept() && self.dt_stimulus.is_none() {
            issues.push(Issue::at(
                &["dt_stimulus"],
                "`dt` is swept: say how the stimulus follows it, `dt_stimulus = \"regenerate\"` or `\"resample\"` (relabelling dt without either was study 3's bug)",
            ));
        }
        if let Some(sweep) = &self.sweep {
            issues.extend(sweep.problems(bases.as_ref().and_then(|b| b.first())).into_iter().map(sweep_issue));
        }
        for (i, n) in self.plan_names().iter().enumerate() {
            if RESERVED.contains(&n.as_str()) {
                issues.push(Issue { path: vec![PathSeg::Key("sweep".into()), PathSeg::Key("params".into()), PathSeg::Index(i)], message: format!("`{n}` is a reserved column"), offset: None });
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(self.schema())
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
            plan: self.plan(ctx),
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

// ================================================================================================
// The operator
// ================================================================================================

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

/// A row's `status` and `status_detail`.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// `status` (`error`, `bad_reset`) and why.
    Failed { status: &'static str, detail: String },
}

impl Outcome {
    fn error(e: &dyn std::fmt::Display) -> Self {
        Outcome::Failed { status: "error", detail: e.to_string() }
    }
    fn status(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed { status, .. } => status,
        }
    }
    fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed { detail, .. } => Some(detail),
        }
    }
}

/// One config of a block, ready to run (its config and stimulus) or already failed (why).
struct Job {
    base: usize,
    config_index: usize,
    values: Vec<f64>,
    run: std::result::Result<(GlifConfig, Arc<Vec<f64>>), SweepError>,
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
    outcome: Outcome,
}

impl GlifRow {
    /// The row of a job that ran, with what the run gave.
    fn ran(job: &Job, config: &GlifConfig, stim: &Arc<Vec<f64>>, response_mv: Option<Vec<f32>>, spike_times_s: Vec<f64>, outcome: Outcome) -> Self {
        GlifRow {
            base: job.base,
            config_index: job.config_index,
            values: job.values.clone(),
            dt_s: config.dt_s,
            el_reference_v: config.el_reference_v.unwrap_or(0.0),
            stimulus: Some(stim.clone()),
            response_mv,
            spike_times_s,
            outcome,
        }
    }

    /// The row of a config the sweep could not build.
    fn failed(job: &Job, e: &SweepError) -> Self {
        GlifRow {
            base: job.base,
            config_index: job.config_index,
            values: job.values.clone(),
            dt_s: f64::NAN,
            el_reference_v: 0.0,
            stimulus: None,
            response_mv: None,
            spike_times_s: Vec::new(),
            outcome: Outcome::error(e),
        }
    }
}

/// The row status of a finished run: AllenSDK's bad reset (the run stopped there) is a status.
fn run_outcome(status: &GlifRunStatus) -> Outcome {
    match status {
        GlifRunStatus::Completed => Outcome::Ok,
        GlifRunStatus::BadReset { spike_step, reset_voltage_v, reset_threshold_v } => Outcome::Failed {
            status: "bad_reset",
            detail: format!(
                "after the spike at step {spike_step} the reset voltage {reset_voltage_v} V is above the reset threshold {reset_threshold_v} V; AllenSDK stops the run here (spike times are those before the stop)"
            ),
        },
    }
}

/// Spike times and row outcome of a spike-only run; a kernel error is an `error` row.
fn spike_outcome(run: std::result::Result<(GlifRunStatus, GlifSpikes), GlifError>) -> (Vec<f64>, Outcome) {
    match run {
        Err(e) => (Vec::new(), Outcome::error(&e)),
        Ok((status, spikes)) => (spikes.interpolated_times_s, run_outcome(&status)),
    }
}

/// Simulates one config on one stimulus, recording the voltage: the response in mV (none after a
/// bad reset or a kernel error), the spike times and the row outcome.
fn run_with_voltage(config: &GlifConfig, stim_a: &[f64], fill: SpikeCutFill) -> (Option<Vec<f32>>, Vec<f64>, Outcome) {
    let mut out = GlifOutput::new();
    let status = match glif::simulate(config, stim_a, &mut out) {
        Ok(s) => s,
        Err(e) => return (None, Vec::new(), Outcome::error(&e)),
    };
    let spikes = std::mem::take(&mut out.spikes).interpolated_times_s;
    let outcome = run_outcome(&status);
    if outcome != Outcome::Ok {
        return (None, spikes, outcome);
    }
    let el_ref = config.el_reference_v.unwrap_or(0.0);
    let mut v = out.voltage_v;
    if fill == SpikeCutFill::Allen {
        glif::fill_spike_cuts(&mut v, glif::DEFAULT_SPIKE_CUT_VALUE_V);
    }
    let response = v.iter().map(|&x| ((x + el_ref) * 1e3) as f32).collect();
    (Some(response), spikes, outcome)
}

impl GlifSource {
    fn total(&self) -> usize {
        self.bases.len() * self.plan.len()
    }

    fn rheobase_a(&self, base: &GlifConfig) -> f64 {
        self.cfg.rheobase_pa.map_or_else(|| base.rough_rheobase_a(), |pa| pa * 1e-12)
    }

    /// The stimulus (A) of entry `self.stimulus` at `dt_s` for `base`, cached per (dt, rheobase).
    fn stimulus_for(&mut self, base_idx: usize, dt_s: f64) -> Result<Arc<Vec<f64>>> {
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
                    Arc::new(stimulus::resample_linear(&raw, file_dt, dt_s))
                } else {
                    return Err(Error::msg(format!(
                        "stimulus `{}`: the file is sampled every {file_dt} s but the config's dt is {dt_s} s; set dt_stimulus = \"resample\"",
                        spec.label()
                    )));
                }
            }
            (_, Some(DtStimulus::Resample)) if dt_s != base_dt => {
                let at_base = spec.generate(base_dt, rheo, self.seed)?;
                Arc::new(stimulus::resample_linear(&at_base, base_dt, dt_s))
            }
            _ => Arc::new(spec.generate(dt_s, rheo, self.seed)?),
        };
        let bytes = stim.len() * 8;
        if self.cache_bytes + bytes > STIMULUS_CACHE_BYTES {
            self.clear_cache();
        }
        self.cache_bytes += bytes;
        self.cache.insert(key, stim.clone());
        Ok(stim)
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// The configs `start..end` of the current stimulus with their stimuli (sequential: cheap,
    /// and stimulus generation is cached). A config the sweep cannot build is a failed job; a
    /// stimulus that cannot be generated fails the stage.
    fn jobs(&mut self, start: usize, end: usize) -> Result<Vec<Job>> {
        let per_base = self.plan.len();
        let mut jobs = Vec::with_capacity(end - start);
        for idx in start..end {
            let (base, i) = (idx / per_base, idx % per_base);
            let job = match self.plan.config(&self.bases[base], i) {
                Ok((values, config)) => {
                    let stim = self.stimulus_for(base, config.dt_s)?;
                    Job { base, config_index: idx, values, run: Ok((config, stim)) }
                }
                Err(e) => Job { base, config_index: idx, values: self.plan.points[i].clone(), run: Err(e) },
            };
            jobs.push(job);
        }
        Ok(jobs)
    }

    /// Spike-only runs: configs in groups of lanes, interleaved step by step (same results as
    /// one at a time).
    fn run_spikes_only(jobs: &[Job]) -> Vec<GlifRow> {
        jobs.par_chunks(glif::SPIKE_LANES)
            .flat_map_iter(|chunk| {
                let ok: Vec<(&GlifConfig, &[f64])> = chunk.iter().filter_map(|j| j.run.as_ref().ok().map(|(c, s)| (c, s.as_slice()))).collect();
                let mut runs = glif::simulate_spikes_lanes(&ok).into_iter();
                chunk
                    .iter()
                    .map(|job| match &job.run {
                        Ok((config, stim)) => {
                            let (spike_times_s, outcome) = spike_outcome(runs.next().expect("one run per ok job"));
                            GlifRow::ran(job, config, stim, None, spike_times_s, outcome)
                        }
                        Err(e) => GlifRow::failed(job, e),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Runs recording the voltage, one config per task.
    fn run_with_voltage(jobs: &[Job], fill: SpikeCutFill) -> Vec<GlifRow> {
        jobs.par_iter()
            .map(|job| match &job.run {
                Ok((config, stim)) => {
                    let (response_mv, spike_times_s, outcome) = run_with_voltage(config, stim, fill);
                    GlifRow::ran(job, config, stim, response_mv, spike_times_s, outcome)
                }
                Err(e) => GlifRow::failed(job, e),
            })
            .collect()
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
            let pa = rows.iter().map(|r| r.stimulus.as_ref().map(|s| s.iter().map(|&a| (a * 1e12) as f32).collect::<Vec<f32>>()));
            cols.push(Arc::new(list_column::<Float32Type, _>(pa, false)?));
        }
        if self.cfg.record_voltage {
            cols.push(Arc::new(list_column::<Float32Type, _>(rows.iter().map(|r| r.response_mv.as_ref()), true)?));
        }
        cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| self.bases[r.base].neuronal_model_id.clone()))));
        cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.base as i64))));
        cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.config_index as i64))));
        for j in 0..self.plan.names.len() {
            cols.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.values.get(j).copied().unwrap_or(f64::NAN)))));
        }
        cols.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.el_reference_v * 1e3))));
        cols.push(Arc::new(list_column::<Float64Type, _>(rows.iter().map(|r| Some(&r.spike_times_s)), false)?));
        cols.push(Arc::new(Int64Array::from_iter(rows.iter().map(|r| (r.outcome == Outcome::Ok).then_some(r.spike_times_s.len() as i64)))));
        cols.push(Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.outcome.status()))));
        cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| r.outcome.detail()))));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
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
        let jobs = self.jobs(start, end)?;
        let rows = if self.cfg.record_voltage { Self::run_with_voltage(&jobs, self.cfg.spike_cut_fill) } else { Self::run_spikes_only(&jobs) };
        out.emit(self.batch(&rows)?);
        self.next_config = end;
        if self.next_config >= total {
            self.next_config = 0;
            self.stimulus += 1;
            self.clear_cache();
        }
        Ok(self.stimulus < self.cfg.stimuli.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every emitted batch holds at most `block_size` rows and one stimulus; all configs come out.
    #[test]
    fn source_batches_are_bounded_by_block_size() {
        use arrow::array::AsArray;
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
        let batches = em.into_batches();
        let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, vec![4, 4, 2, 4, 4, 2]);
        for b in &batches {
            assert_eq!(b.schema().fields().len(), schema.fields().len());
            let kinds = b.column_by_name("stimulus_kind").unwrap().as_string::<i32>();
            assert!(kinds.iter().all(|k| k == kinds.iter().next().unwrap()));
        }
        // Zero current: no spikes anywhere.
        let zero = &batches[3];
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

    /// The stage's Noise 1: 19 s at the defaults, the protocol's epoch means and CV, silence
    /// between epochs, and Noise 2 another realisation of the same shape.
    #[test]
    fn allen_noise_has_the_protocol_means_and_cv() {
        let spec: AllenNoise = toml::from_str("").unwrap();
        let dt = 1e-4;
        let x = StimulusSpec::AllenNoise1(spec.clone()).generate(dt, 100e-12, 7).unwrap();
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
        let y = StimulusSpec::AllenNoise2(spec).generate(dt, 100e-12, 7).unwrap();
        assert_eq!(y.len(), x.len());
        assert_ne!(x[1000], y[1000]);
    }

    #[test]
    fn the_example_parses() {
        let cfg: SimulateGlif = toml::from_str(SimulateGlif::EXAMPLE).unwrap();
        assert_eq!(cfg.plan_names(), ["C"]);
    }
}
