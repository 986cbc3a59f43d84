//! Feature stages: spike detection and per-sweep spike-train features on the sweeps table.
//!
//! `features.spikes` turns each sweep (`response` mV, `sampling_rate_hz`, optional `stimulus` pA)
//! into IPFX's spike table, one row per spike, with the kernel of [`crate::features::spikes`]
//! (IPFX 2.1.2 `SpikeFeatureExtractor`, every option exposed with IPFX's default).
//! `features.sweep` turns each sweep into one row of IPFX's basic spike-train features (count,
//! rate, latency, ISI statistics, adaptation) inside a window found from the stimulus itself.
//!
//! Design choice for `features.sweep`: it takes the sweeps table alone and runs detection itself
//! (same options as `features.spikes`). Taking the spikes table instead would need a join, and
//! in a spikes table a sweep with no spike, a sweep whose detection failed and a sweep not yet
//! seen all look the same (no rows), so spike counts of 0 could not be told from missing data.
//!
//! Simulated sweeps: when the input has a `model_spike_times` column (s) and a row holds a
//! non-null list, those times are the spikes (the simulator knows when its model fired; detecting
//! on the voltage counted spikes that were not there in study 3). Then `features.spikes` fills
//! only `threshold_t` (the model time), `threshold_index` (nearest sample), `threshold_v` and
//! `threshold_i` (the sample there); every other spike column is null and `detection` says
//! `model_spike_times`. `features.sweep` computes the train features from those times.
//!
//! Chunk rows (`ingest.abf` with `chunk_s`, columns `chunk_start_s`, `chunk_end_s`,
//! `trace_start_s`): `features.spikes` detects on the row's trace (the chunk and its overlap
//! margins) and keeps the spikes whose peak lies in the chunk's core `[chunk_start_s,
//! chunk_end_s)`, with indices and times in the whole sweep's time base (`index · dt`, the values a
//! whole-sweep run gives) and spike numbers counted on across the chunks of a sweep. The peak, not
//! the threshold, assigns a spike to a chunk: the peak depends only on the dV/dt crossing and the
//! voltage next to it, so two overlapping chunks always agree on it, whereas IPFX's threshold is
//! refined with the mean upstroke of all spikes in the analysed trace, which differs between
//! chunks. Hence what equals a whole-sweep run and what does not: the spikes found and their peaks
//! are the same when the margins hold the context of every spike; thresholds (and what is measured
//! from them) can move by a sample when a chunk's spikes have a different mean upstroke than the
//! sweep's; the last spike of a trace gets its trough searched to the trace end, not to the next
//! spike or the sweep end. `features.sweep` refuses chunk rows (its features need whole sweeps).
//!
//! Every sweep is processed independently (rayon, one reused [`SpikeWorkspace`] per worker); a
//! sweep that cannot be processed (too short, NaN samples, mismatched lengths, a sampling rate
//! too low for the Bessel filter) fails alone as `out.fail("<recording_id>/<sweep>", reason)`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{field, is_numeric, is_string, require};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::features::spike_train::{SpikeTrainFeatures, basic_spike_train_features, spike_train_features};
use crate::features::spikes::{
    IsiType, SlopePoint, Spike, SpikeDetectionParams, SpikeError, SpikeWorkspace, Timebase, TracePoint, detect_spikes_with,
};

// ---------------------------------------------------------------------------------------------
// Options shared by both stages
// ---------------------------------------------------------------------------------------------

/// A filter cutoff: a number of kHz, or `"none"` (no filter; also what 0 means).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Cutoff {
    Khz(f64),
    Off(NoFilter),
}

/// The word `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoFilter {
    None,
}

impl Cutoff {
    pub(crate) fn khz(self) -> Option<f64> {
        match self {
            Cutoff::Khz(k) => Some(k),
            Cutoff::Off(_) => None,
        }
    }
}

/// Which part of each sweep is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowMode {
    /// The whole sweep (IPFX with start = end = None).
    Sweep,
    /// From the first to the last sample where the stimulus departs from its baseline (its first
    /// sample) by more than `stimulus_tolerance_pa`; the whole sweep if it never does.
    Stimulus,
    /// From the first departure to the end of that first constant level (the first step of a
    /// multi-step protocol).
    FirstStep,
}

pub(crate) fn d_filter() -> Cutoff {
    Cutoff::Khz(10.0)
}
pub(crate) fn d_heavy() -> Cutoff {
    Cutoff::Khz(1.0)
}
fn d_tol_pa() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
macro_rules! default_fns {
    ($($f:ident),*) => { $( pub(crate) fn $f() -> f64 { SpikeDetectionParams::default().$f } )* };
}
pub(crate) mod defaults {
    use super::SpikeDetectionParams;
    default_fns!(
        dv_cutoff_v_per_s, max_interval_s, min_height_mv, min_peak_mv, thresh_frac, reject_at_stim_start_interval_s,
        clip_tolerance_mv, term_frac, adp_thresh_v_per_s, detour_tolerance_mv, flat_interval_s, adp_max_delta_t_s,
        adp_max_delta_v_mv
    );
}

/// Declares a stage config struct (serde, `deny_unknown_fields`, JSON schema) holding the given
/// fields. The plain counterpart of `ipfx_detection_struct!`, so that a macro declaring stage
/// configs can take either as a parameter.
macro_rules! plain_config_struct {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
        }
    };
}
pub(crate) use plain_config_struct;

/// Declares a stage config struct with the given fields followed by every IPFX spike-detection
/// option (IPFX 2.1.2 names and defaults), and its `spike_detection()` conversion. One
/// declaration for every stage that detects spikes (`features.spikes`, `features.sweep`,
/// `features.cell`): serde's `deny_unknown_fields` does not combine with `flatten`, so the options
/// cannot be a nested struct, and copying them per stage let their docs and defaults drift.
macro_rules! ipfx_detection_struct {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
            /// Cutoff of the 4-pole Bessel low-pass (forward-backward) applied before dV/dt (IPFX
            /// `filter`, 10), or "none". Must be below half the sampling rate: use "none" or e.g. 5
            /// for 20 kHz recordings [kHz].
            #[serde(default = "crate::stages::features::spikes::d_filter")]
            pub filter_khz: crate::stages::features::spikes::Cutoff,
            /// dV/dt whose up-crossing marks a putative spike (IPFX `dv_cutoff`, 20) [V/s].
            #[serde(default = "crate::stages::features::spikes::defaults::dv_cutoff_v_per_s")]
            pub dv_cutoff_v_per_s: f64,
            /// Longest threshold-to-peak time (IPFX `max_interval`, 0.005) [s].
            #[serde(default = "crate::stages::features::spikes::defaults::max_interval_s")]
            pub max_interval_s: f64,
            /// Smallest threshold-to-peak height (IPFX `min_height`, 2) [mV].
            #[serde(default = "crate::stages::features::spikes::defaults::min_height_mv")]
            pub min_height_mv: f64,
            /// Smallest peak voltage (IPFX `min_peak`, -30) [mV].
            #[serde(default = "crate::stages::features::spikes::defaults::min_peak_mv")]
            pub min_peak_mv: f64,
            /// Threshold at this fraction of the mean maximum upstroke (IPFX `thresh_frac`, 0.05) [1].
            #[serde(default = "crate::stages::features::spikes::defaults::thresh_frac")]
            pub thresh_frac: f64,
            /// Reject spikes within this time after the window start, 0 = off (IPFX
            /// `reject_at_stim_start_interval`, 0) [s].
            #[serde(default = "crate::stages::features::spikes::defaults::reject_at_stim_start_interval_s")]
            pub reject_at_stim_start_interval_s: f64,
            /// The last spike is clipped unless V returns to threshold + this (IPFX `tol`, 1) [mV].
            #[serde(default = "crate::stages::features::spikes::defaults::clip_tolerance_mv")]
            pub clip_tolerance_mv: f64,
            /// Cutoff of the heavier Bessel filter for the ADP search (IPFX `heavy_filter`, 1), or
            /// "none" [kHz].
            #[serde(default = "crate::stages::features::spikes::d_heavy")]
            pub heavy_filter_khz: crate::stages::features::spikes::Cutoff,
            /// Fast trough at dV/dt >= this fraction of the downstroke (IPFX `term_frac`, 0.01) [1].
            #[serde(default = "crate::stages::features::spikes::defaults::term_frac")]
            pub term_frac: f64,
            /// Heavy-filtered dV/dt that starts an ADP (IPFX `adp_thresh`, 0.5) [V/s].
            #[serde(default = "crate::stages::features::spikes::defaults::adp_thresh_v_per_s")]
            pub adp_thresh_v_per_s: f64,
            /// Minimum drop for a "detour" reset (IPFX trough-details `tol`, 0.5) [mV].
            #[serde(default = "crate::stages::features::spikes::defaults::detour_tolerance_mv")]
            pub detour_tolerance_mv: f64,
            /// The ADP rise must start within this time of the fast trough (IPFX `flat_interval`,
            /// 0.002) [s].
            #[serde(default = "crate::stages::features::spikes::defaults::flat_interval_s")]
            pub flat_interval_s: f64,
            /// Largest fast-trough-to-ADP time (IPFX `adp_max_delta_t`, 0.005) [s].
            #[serde(default = "crate::stages::features::spikes::defaults::adp_max_delta_t_s")]
            pub adp_max_delta_t_s: f64,
            /// Largest fast-trough-to-ADP rise (IPFX `adp_max_delta_v`, 10) [mV].
            #[serde(default = "crate::stages::features::spikes::defaults::adp_max_delta_v_mv")]
            pub adp_max_delta_v_mv: f64,
        }

        impl $name {
            /// IPFX's detection parameters, from this stage's options.
            pub(crate) fn spike_detection(&self) -> crate::features::spikes::SpikeDetectionParams {
                crate::features::spikes::SpikeDetectionParams {
                    filter_khz: self.filter_khz.khz(),
                    dv_cutoff_v_per_s: self.dv_cutoff_v_per_s,
                    max_interval_s: self.max_interval_s,
                    min_height_mv: self.min_height_mv,
                    min_peak_mv: self.min_peak_mv,
                    thresh_frac: self.thresh_frac,
                    reject_at_stim_start_interval_s: self.reject_at_stim_start_interval_s,
                    clip_tolerance_mv: self.clip_tolerance_mv,
                    heavy_filter_khz: self.heavy_filter_khz.khz(),
                    term_frac: self.term_frac,
                    adp_thresh_v_per_s: self.adp_thresh_v_per_s,
                    detour_tolerance_mv: self.detour_tolerance_mv,
                    flat_interval_s: self.flat_interval_s,
                    adp_max_delta_t_s: self.adp_max_delta_t_s,
                    adp_max_delta_v_mv: self.adp_max_delta_v_mv,
                }
            }
        }
    };
}
pub(crate) use ipfx_detection_struct;

/// Declares a spike stage config: the IPFX detection options plus the window options.
macro_rules! detection_config {
    ($(#[$meta:meta])* $name:ident) => {
        ipfx_detection_struct! {
            $(#[$meta])*
            $name {
            /// Part of each sweep analysed: "sweep", "stimulus" or "first_step" (default "sweep"
            /// for features.spikes, "stimulus" for features.sweep) [mode].
            #[serde(default)]
            pub window: Option<WindowMode>,
            /// Explicit window start, instead of `window` (IPFX `start`) [s].
            #[serde(default)]
            pub start_s: Option<f64>,
            /// Explicit window end, instead of `window` (IPFX `end`) [s].
            #[serde(default)]
            pub end_s: Option<f64>,
            /// A stimulus sample departs from the baseline when it differs by more than this [pA].
            #[serde(default = "d_tol_pa")]
            pub stimulus_tolerance_pa: f64,
            /// Use a non-null `model_spike_times` value (simulated sweeps) instead of detecting [bool].
            #[serde(default = "d_true")]
            pub use_model_spike_times: bool,
            }
        }

        impl $name {
            fn detection(&self, default_window: WindowMode) -> Detection {
                Detection {
                    params: self.spike_detection(),
                    window: match (self.start_s, self.end_s) {
                        (None, None) => Window::Mode(self.window.unwrap_or(default_window)),
                        (s, e) => Window::Explicit { start_s: s, end_s: e },
                    },
                    stimulus_tolerance_pa: self.stimulus_tolerance_pa,
                    use_model_spike_times: self.use_model_spike_times,
                }
            }
            fn issues(&self) -> Vec<Issue> {
                let mut issues = Vec::new();
                let d = self.detection(WindowMode::Sweep);
                if let Err(SpikeError::InvalidParameter { name, reason, .. }) = d.params.validate() {
                    issues.push(Issue::at(&[name], reason));
                }
                if self.start_s.is_some() || self.end_s.is_some() {
                    if self.window.is_some() {
                        issues.push(Issue::at(&["window"], "give either `window` or `start_s`/`end_s`, not both"));
                    }
                    for (key, v) in [("start_s", self.start_s), ("end_s", self.end_s)] {
                        if let Some(v) = v && !(v.is_finite() && v >= 0.0) {
                            issues.push(Issue::at(&[key], format!("{v} s must be a finite time >= 0")));
                        }
                    }
                    if let (Some(s), Some(e)) = (self.start_s, self.end_s) && s >= e {
                        issues.push(Issue::at(&["end_s"], format!("end_s = {e} s must be after start_s = {s} s")));
                    }
                }
                if !(self.stimulus_tolerance_pa.is_finite() && self.stimulus_tolerance_pa >= 0.0) {
                    issues.push(Issue::at(&["stimulus_tolerance_pa"], "must be a finite current >= 0 pA"));
                }
                issues
            }
        }
    };
}

detection_config! {
    /// Detects spikes in every sweep with IPFX's algorithm; one row per spike.
    FeaturesSpikes
}

detection_config! {
    /// IPFX's basic spike-train features of every sweep inside its stimulus window; one row per sweep.
    FeaturesSweep
}

#[derive(Debug, Clone, Copy)]
enum Window {
    Mode(WindowMode),
    Explicit { start_s: Option<f64>, end_s: Option<f64> },
}

/// Everything a worker needs to process one sweep.
#[derive(Debug, Clone)]
struct Detection {
    params: SpikeDetectionParams,
    window: Window,
    stimulus_tolerance_pa: f64,
    use_model_spike_times: bool,
}

// ---------------------------------------------------------------------------------------------
// Stimulus window
// ---------------------------------------------------------------------------------------------

/// Where a command waveform departs from its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StimulusWindow {
    /// First sample that departs from the baseline.
    pub start: usize,
    /// Last sample of the window (inclusive).
    pub end: usize,
    /// The first sample's value [pA].
    pub baseline_pa: f64,
    /// Departure from the baseline at the sample of the window that departs most (the IPFX rule:
    /// the extreme of the stimulus in the window) [pA].
    pub amplitude_pa: f64,
}

/// The window of `stimulus_pa` that departs from its baseline (`stimulus_pa[0]`) by more than
/// `tolerance_pa`: from the first to the last departing sample, or with `first_step_only` to the
/// last sample of the first run of samples equal to the first departing one (the first step).
/// `None` when the command never departs (a gap-free or holding-only sweep).
pub fn find_stimulus_window(stimulus_pa: &[f32], tolerance_pa: f64, first_step_only: bool) -> Option<StimulusWindow> {
    let baseline = f64::from(*stimulus_pa.first()?);
    let departs = |x: f32| (f64::from(x) - baseline).abs() > tolerance_pa;
    let start = stimulus_pa.iter().position(|&x| departs(x))?;
    let end = if first_step_only {
        let level = stimulus_pa[start];
        start + stimulus_pa[start..].iter().take_while(|&&x| x == level).count() - 1
    } else {
        stimulus_pa.iter().rposition(|&x| departs(x))?
    };
    let extreme = stimulus_pa[start..=end]
        .iter()
        .map(|&x| f64::from(x) - baseline)
        .fold(0.0f64, |best, d| if d.abs() > best.abs() { d } else { best });
    Some(StimulusWindow { start, end, baseline_pa: baseline, amplitude_pa: extreme })
}

// ---------------------------------------------------------------------------------------------
// Reading the sweeps table
// ---------------------------------------------------------------------------------------------

fn is_f32_list(t: &DataType) -> bool {
    matches!(t, DataType::LargeList(f) if *f.data_type() == DataType::Float32)
}
fn is_f64_list(t: &DataType) -> bool {
    matches!(t, DataType::LargeList(f) if *f.data_type() == DataType::Float64)
}

/// Checks the sweeps-table columns a feature stage reads; `needs_stimulus` when the window comes
/// from the stimulus.
fn check_sweeps_input(schema: &Schema, needs_stimulus: bool) -> std::result::Result<(), Vec<Issue>> {
    let p: &[&str] = &["inputs"];
    let mut issues = Vec::new();
    let mut need = |r: std::result::Result<(), Issue>| {
        if let Err(i) = r {
            issues.push(i);
        }
    };
    need(require(schema, "sweeps", "recording_id", "a string", is_string, None, p));
    need(require(schema, "sweeps", "sweep", "an integer", |t| t.is_integer(), None, p));
    need(require(schema, "sweeps", "sampling_rate_hz", "a number", is_numeric, Some("Hz"), p));
    need(require(schema, "sweeps", "response", "large_list<float32>", is_f32_list, Some("mV"), p));
    if needs_stimulus || schema.field_with_name("stimulus").is_ok() {
        need(require(schema, "sweeps", "stimulus", "large_list<float32>", is_f32_list, Some("pA"), p));
    }
    if schema.field_with_name("model_spike_times").is_ok() {
        need(require(schema, "sweeps", "model_spike_times", "large_list<float64>", is_f64_list, Some("s"), p));
    }
    if issues.is_empty() { Ok(()) } else { Err(issues) }
}

/// Does the input carry chunk rows (`ingest.abf` with `chunk_s`)?
fn is_chunked(schema: &Schema) -> bool {
    crate::stages::ingest::CHUNK_COLUMNS.iter().any(|c| schema.field_with_name(c).is_ok())
}

/// Chunk rows need every chunk column as a number in seconds.
fn check_chunk_columns(schema: &Schema) -> std::result::Result<(), Vec<Issue>> {
    let p: &[&str] = &["inputs"];
    let issues: Vec<Issue> = ["chunk_start_s", "chunk_end_s", "trace_start_s"]
        .into_iter()
        .filter_map(|c| require(schema, "sweeps", c, "a number", is_numeric, Some("s"), p).err())
        .collect();
    if issues.is_empty() { Ok(()) } else { Err(issues) }
}

/// One row of a list column as a slice; `Err` names the problem (null row, null samples).
fn list_row<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    list: &'a LargeListArray,
    row: usize,
    column: &str,
) -> std::result::Result<&'a [T::Native], String> {
    if list.is_null(row) {
        return Err(format!("`{column}` is null"));
    }
    let offsets = list.value_offsets();
    let (lo, hi) = (offsets[row] as usize, offsets[row + 1] as usize);
    let values = list.values().as_primitive::<T>();
    if let Some(nulls) = values.nulls()
        && nulls.slice(lo, hi - lo).null_count() > 0
    {
        return Err(format!("`{column}` has null samples"));
    }
    Ok(&values.values()[lo..hi])
}

/// The columns of one input batch a feature stage reads.
struct SweepColumns {
    recording_id: StringArray,
    sweep: Int64Array,
    rate_hz: Float64Array,
    response: LargeListArray,
    stimulus: Option<LargeListArray>,
    model_times: Option<LargeListArray>,
    /// With chunk rows: trace start, core start, core end [s from the sweep start].
    chunk: Option<[Float64Array; 3]>,
}

impl SweepColumns {
    fn from_batch(batch: &RecordBatch) -> Result<Self> {
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| Error::msg(format!("the batch has no `{name}` column")));
        let cast = |name: &str, t: &DataType| -> Result<ArrayRef> { Ok(arrow::compute::cast(col(name)?, t)?) };
        Ok(SweepColumns {
            recording_id: cast("recording_id", &DataType::Utf8)?.as_string::<i32>().clone(),
            sweep: cast("sweep", &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone(),
            rate_hz: cast("sampling_rate_hz", &DataType::Float64)?.as_primitive::<Float64Type>().clone(),
            response: col("response")?.as_list::<i64>().clone(),
            stimulus: batch.column_by_name("stimulus").map(|c| c.as_list::<i64>().clone()),
            model_times: batch.column_by_name("model_spike_times").map(|c| c.as_list::<i64>().clone()),
            chunk: if is_chunked(&batch.schema()) {
                let f = |name: &str| -> Result<Float64Array> { Ok(cast(name, &DataType::Float64)?.as_primitive::<Float64Type>().clone()) };
                Some([f("trace_start_s")?, f("chunk_start_s")?, f("chunk_end_s")?])
            } else {
                None
            },
        })
    }
    fn unit(&self, row: usize) -> String {
        let id = if self.recording_id.is_null(row) { "<null recording_id>" } else { self.recording_id.value(row) };
        if self.sweep.is_null(row) { format!("{id}/<null sweep>") } else { format!("{id}/{}", self.sweep.value(row)) }
    }
}

/// What was found in one sweep.
enum SweepSpikes {
    Detected(Vec<Spike>),
    /// Model spike times inside the window, with the nearest sample index.
    Model(Vec<(f64, usize)>),
}

/// One sweep's analysis: its window, stimulus window and spikes.
struct SweepResult {
    window_start_s: f64,
    window_end_s: f64,
    stimulus: Option<StimulusWindow>,
    spikes: SweepSpikes,
}

/// Per-worker reusable buffers.
#[derive(Default)]
struct Worker {
    ws: SpikeWorkspace,
    v_mv: Vec<f64>,
    i_pa: Vec<f64>,
}

/// Adds the stage-level advice to a kernel error.
fn explain(e: SpikeError, d: &Detection) -> String {
    match e {
        SpikeError::SamplingRateTooLow { sampling_rate_hz, cutoff_khz, .. } => {
            let option = if d.params.filter_khz == Some(cutoff_khz) { "filter_khz" } else { "heavy_filter_khz" };
            let nyquist_khz = sampling_rate_hz / 2000.0;
            format!(
                "{e}. This sweep is sampled at {sampling_rate_hz} Hz, so the cutoff must be below {nyquist_khz} kHz: \
                 set {option} = \"none\" or a lower cutoff (e.g. {option} = {}) in this stage",
                nyquist_khz / 2.0
            )
        }
        other => other.to_string(),
    }
}

/// Analyses one sweep (row `row` of `cols`).
fn analyse_sweep(cols: &SweepColumns, row: usize, d: &Detection, w: &mut Worker) -> std::result::Result<SweepResult, String> {
    if cols.recording_id.is_null(row) || cols.sweep.is_null(row) {
        return Err("null recording_id or sweep".into());
    }
    let rate = if cols.rate_hz.is_null(row) { f64::NAN } else { cols.rate_hz.value(row) };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("sampling_rate_hz = {rate} Hz is not a positive finite rate"));
    }
    let response = list_row::<Float32Type>(&cols.response, row, "response")?;
    let stimulus = match &cols.stimulus {
        Some(s) => Some(list_row::<Float32Type>(s, row, "stimulus")?),
        None => None,
    };
    let n = response.len();
    if n < 2 {
        return Err(format!("response has {n} samples; at least 2 are needed"));
    }
    if let Some(s) = stimulus {
        if s.len() != n {
            return Err(format!("stimulus has {} samples but response has {n}", s.len()));
        }
        if let Some(k) = s.iter().position(|x| !x.is_finite()) {
            return Err(format!("stimulus[{k}] is not finite ({})", s[k]));
        }
    }
    let dt_s = 1.0 / rate;
    if let Some([trace_start, core_start, core_end]) = &cols.chunk {
        return analyse_chunk(response, stimulus, dt_s, [trace_start, core_start, core_end].map(|c| c.value(row)), d, w);
    }
    let t_of = |k: usize| k as f64 * dt_s;
    let t_last = t_of(n - 1);
    let (stim_window, start_s, end_s) = match d.window {
        Window::Explicit { start_s, end_s } => {
            let stim = stimulus.and_then(|s| find_stimulus_window(s, d.stimulus_tolerance_pa, false));
            (stim, start_s, end_s)
        }
        Window::Mode(WindowMode::Sweep) => {
            (stimulus.and_then(|s| find_stimulus_window(s, d.stimulus_tolerance_pa, false)), None, None)
        }
        Window::Mode(mode) => {
            let s = stimulus.ok_or("window = stimulus needs a `stimulus` column")?;
            match find_stimulus_window(s, d.stimulus_tolerance_pa, mode == WindowMode::FirstStep) {
                Some(win) => (Some(win), Some(t_of(win.start)), Some(t_of(win.end))),
                None => (None, None, None),
            }
        }
    };
    for (name, v) in [("start_s", start_s), ("end_s", end_s)] {
        if let Some(v) = v
            && v > t_last
        {
            return Err(format!("window {name} = {v} s is after the sweep's last sample ({t_last} s)"));
        }
    }
    let (window_start_s, window_end_s) = (start_s.unwrap_or(0.0), end_s.unwrap_or(t_last));

    // Simulated sweeps: the model's own spike times.
    if d.use_model_spike_times
        && let Some(mt) = &cols.model_times
        && !mt.is_null(row)
    {
        let times = list_row::<Float64Type>(mt, row, "model_spike_times")?;
        let mut out = Vec::with_capacity(times.len());
        for (k, &t) in times.iter().enumerate() {
            if !t.is_finite() {
                return Err(format!("model_spike_times[{k}] is not finite ({t})"));
            }
            if k > 0 && t < times[k - 1] {
                return Err(format!("model_spike_times[{k}] = {t} s is earlier than the previous spike"));
            }
            if t >= window_start_s && t <= window_end_s {
                let index = ((t / dt_s).round().max(0.0) as usize).min(n - 1);
                out.push((t, index));
            }
        }
        return Ok(SweepResult { window_start_s, window_end_s, stimulus: stim_window, spikes: SweepSpikes::Model(out) });
    }

    w.v_mv.clear();
    w.v_mv.extend(response.iter().map(|&x| f64::from(x)));
    let i_pa = match stimulus {
        Some(s) => {
            w.i_pa.clear();
            w.i_pa.extend(s.iter().map(|&x| f64::from(x)));
            Some(w.i_pa.as_slice())
        }
        None => None,
    };
    let spikes = detect_spikes_with(&mut w.ws, Timebase::Uniform { t0_s: 0.0, dt_s }, &w.v_mv, i_pa, start_s, end_s, &d.params)
        .map_err(|e| explain(e, d))?;
    Ok(SweepResult { window_start_s, window_end_s, stimulus: stim_window, spikes: SweepSpikes::Detected(spikes) })
}

/// Analyses one chunk row: detection on the whole trace (core and margins), then the spikes whose
/// peak lies in the core, moved to the sweep's time base.
fn analyse_chunk(
    response: &[f32],
    stimulus: Option<&[f32]>,
    dt_s: f64,
    [trace_start_s, core_start_s, core_end_s]: [f64; 3],
    d: &Detection,
    w: &mut Worker,
) -> std::result::Result<SweepResult, String> {
    let sample = |t: f64, name: &str| -> std::result::Result<usize, String> {
        let k = (t / dt_s).round();
        if !(k.is_finite() && k >= 0.0) {
            return Err(format!("{name} = {t} s is not a time >= 0"));
        }
        Ok(k as usize)
    };
    let offset = sample(trace_start_s, "trace_start_s")?;
    let (core_lo, core_hi) = (sample(core_start_s, "chunk_start_s")?, sample(core_end_s, "chunk_end_s")?);
    if !(offset <= core_lo && core_lo <= core_hi && core_hi <= offset + response.len()) {
        return Err(format!(
            "chunk core {core_start_s}..{core_end_s} s does not lie in the trace ({} samples from {trace_start_s} s)",
            response.len()
        ));
    }
    w.v_mv.clear();
    w.v_mv.extend(response.iter().map(|&x| f64::from(x)));
    let i_pa = match stimulus {
        Some(s) => {
            w.i_pa.clear();
            w.i_pa.extend(s.iter().map(|&x| f64::from(x)));
            Some(w.i_pa.as_slice())
        }
        None => None,
    };
    let spikes = detect_spikes_with(&mut w.ws, Timebase::Uniform { t0_s: 0.0, dt_s }, &w.v_mv, i_pa, None, None, &d.params)
        .map_err(|e| explain(e, d))?;
    // Sweep time base: sample k of the trace is sample offset + k of the sweep, at (offset + k)·dt.
    let point = |p: TracePoint| TracePoint { index: p.index + offset, t_s: (p.index + offset) as f64 * dt_s, ..p };
    let slope = |p: SlopePoint| SlopePoint { index: p.index + offset, t_s: (p.index + offset) as f64 * dt_s, ..p };
    let kept: Vec<Spike> = spikes
        .into_iter()
        .filter(|s| (core_lo..core_hi).contains(&(s.peak.index + offset)))
        .map(|s| Spike {
            threshold: point(s.threshold),
            peak: point(s.peak),
            trough: s.trough.map(point),
            upstroke: s.upstroke.map(slope),
            downstroke: s.downstroke.map(slope),
            fast_trough: s.fast_trough.map(point),
            adp: s.adp.map(point),
            slow_trough: s.slow_trough.map(point),
            ..s
        })
        .collect();
    Ok(SweepResult {
        window_start_s: core_start_s,
        window_end_s: core_end_s,
        stimulus: None,
        spikes: SweepSpikes::Detected(kept),
    })
}

/// Runs [`analyse_sweep`] on every row in parallel; failures go to `out`.
fn analyse_batch(batch: &RecordBatch, d: &Detection, out: &mut Emitter) -> Result<(SweepColumns, Vec<(usize, SweepResult)>)> {
    let cols = SweepColumns::from_batch(batch)?;
    let results: Vec<std::result::Result<SweepResult, String>> = (0..batch.num_rows())
        .into_par_iter()
        .map_init(Worker::default, |w, row| analyse_sweep(&cols, row, d, w))
        .collect();
    let mut ok = Vec::with_capacity(results.len());
    for (row, r) in results.into_iter().enumerate() {
        match r {
            Ok(res) => ok.push((row, res)),
            Err(message) => out.fail(cols.unit(row), message),
        }
    }
    Ok((cols, ok))
}

// ---------------------------------------------------------------------------------------------
// features.spikes
// ---------------------------------------------------------------------------------------------

const POINTS: [&str; 6] = ["threshold", "peak", "trough", "fast_trough", "adp", "slow_trough"];
const SLOPES: [&str; 2] = ["upstroke", "downstroke"];

/// The spikes table: keys, then IPFX's columns (with `_i` current columns), units in metadata.
pub fn spikes_schema() -> SchemaRef {
    let mut fields = vec![
        field("recording_id", DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("spike", DataType::Int64, false, None),
        field("detection", DataType::Utf8, false, None),
    ];
    for p in POINTS {
        fields.push(field(&format!("{p}_index"), DataType::Int64, true, None));
        fields.push(field(&format!("{p}_t"), DataType::Float64, true, Some("s")));
        fields.push(field(&format!("{p}_v"), DataType::Float64, true, Some("mV")));
        fields.push(field(&format!("{p}_i"), DataType::Float64, true, Some("pA")));
    }
    for s in SLOPES {
        fields.push(field(&format!("{s}_index"), DataType::Int64, true, None));
        fields.push(field(&format!("{s}_t"), DataType::Float64, true, Some("s")));
        fields.push(field(&format!("{s}_v"), DataType::Float64, true, Some("mV")));
        fields.push(field(s, DataType::Float64, true, Some("V/s")));
    }
    fields.push(field("isi_type", DataType::Utf8, true, None));
    fields.push(field("width", DataType::Float64, true, Some("s")));
    fields.push(field("upstroke_downstroke_ratio", DataType::Float64, true, Some("1")));
    fields.push(field("clipped", DataType::Boolean, true, None));
    Arc::new(Schema::new(fields))
}

/// One output row, before it becomes columns.
struct SpikeRow<'a> {
    recording_id: &'a str,
    sweep: i64,
    spike: i64,
    model: bool,
    points: [Option<TracePoint>; 6],
    slopes: [Option<SlopePoint>; 2],
    isi_type: Option<IsiType>,
    width_s: Option<f64>,
    ratio: Option<f64>,
    clipped: Option<bool>,
}

/// With chunk rows, the sweep whose chunks are arriving and its next spike number (chunks of a
/// sweep arrive in order, one source file after the other).
type SpikeCounter = Option<(String, i64, i64)>;

fn spike_rows<'a>(cols: &'a SweepColumns, results: &[(usize, SweepResult)], counter: &mut SpikeCounter) -> Vec<SpikeRow<'a>> {
    let mut rows = Vec::new();
    for (row, res) in results {
        let (recording_id, sweep) = (cols.recording_id.value(*row), cols.sweep.value(*row));
        // Spike numbers continue across the chunks of one sweep.
        let first_number = match counter {
            Some((id, s, next)) if cols.chunk.is_some() && id == recording_id && *s == sweep => *next,
            _ => 0,
        };
        match &res.spikes {
            SweepSpikes::Detected(spikes) => {
                if cols.chunk.is_some() {
                    *counter = Some((recording_id.to_string(), sweep, first_number + spikes.len() as i64));
                }
                for (k, s) in spikes.iter().enumerate() {
                    rows.push(SpikeRow {
                        recording_id,
                        sweep,
                        spike: first_number + k as i64,
                        model: false,
                        points: [Some(s.threshold), Some(s.peak), s.trough, s.fast_trough, s.adp, s.slow_trough],
                        slopes: [s.upstroke, s.downstroke],
                        isi_type: s.isi_type,
                        width_s: s.width_s,
                        ratio: s.upstroke_downstroke_ratio,
                        clipped: Some(s.clipped),
                    });
                }
            }
            SweepSpikes::Model(times) => {
                let response = list_row::<Float32Type>(&cols.response, *row, "response").unwrap_or(&[]);
                let stimulus = cols.stimulus.as_ref().and_then(|s| list_row::<Float32Type>(s, *row, "stimulus").ok());
                for (k, &(t_s, index)) in times.iter().enumerate() {
                    let threshold = TracePoint {
                        index,
                        t_s,
                        v_mv: response.get(index).map_or(f64::NAN, |&v| f64::from(v)),
                        i_pa: stimulus.and_then(|s| s.get(index)).map(|&i| f64::from(i)),
                    };
                    rows.push(SpikeRow {
                        recording_id,
                        sweep,
                        spike: k as i64,
                        model: true,
                        points: [Some(threshold), None, None, None, None, None],
                        slopes: [None, None],
                        isi_type: None,
                        width_s: None,
                        ratio: None,
                        clipped: None,
                    });
                }
            }
        }
    }
    rows
}

fn spikes_batch(schema: &SchemaRef, rows: &[SpikeRow<'_>]) -> Result<RecordBatch> {
    let f64s = |f: &dyn Fn(&SpikeRow) -> Option<f64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Float64Array>()) };
    let i64s = |f: &dyn Fn(&SpikeRow) -> Option<i64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Int64Array>()) };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(r.recording_id)).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.sweep).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.spike).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| Some(if r.model { "model_spike_times" } else { "ipfx" })).collect::<StringArray>()),
    ];
    for p in 0..POINTS.len() {
        columns.push(i64s(&|r| r.points[p].map(|x| x.index as i64)));
        columns.push(f64s(&|r| r.points[p].map(|x| x.t_s)));
        columns.push(f64s(&|r| r.points[p].map(|x| x.v_mv).filter(|v| !v.is_nan())));
        columns.push(f64s(&|r| r.points[p].and_then(|x| x.i_pa)));
    }
    for s in 0..SLOPES.len() {
        columns.push(i64s(&|r| r.slopes[s].map(|x| x.index as i64)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.t_s)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.v_mv)));
        columns.push(f64s(&|r| r.slopes[s].map(|x| x.dvdt_v_per_s)));
    }
    columns.push(Arc::new(
        rows.iter()
            .map(|r| {
                r.isi_type.map(|t| match t {
                    IsiType::Direct => "direct",
                    IsiType::Detour => "detour",
                })
            })
            .collect::<StringArray>(),
    ));
    columns.push(f64s(&|r| r.width_s));
    columns.push(f64s(&|r| r.ratio));
    columns.push(Arc::new(rows.iter().map(|r| r.clipped).collect::<BooleanArray>()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl StageConfig for FeaturesSpikes {
    const KIND: &'static str = "features.spikes";
    const SUMMARY: &'static str = "IPFX spike detection and per-spike features on every sweep; one row per spike";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let window_needs_stimulus = matches!(self.window, Some(WindowMode::Stimulus | WindowMode::FirstStep));
        check_sweeps_input(&inputs[0], window_needs_stimulus)?;
        if is_chunked(&inputs[0]) {
            check_chunk_columns(&inputs[0])?;
            let mut issues = Vec::new();
            if self.window.is_some_and(|w| w != WindowMode::Sweep) || self.start_s.is_some() || self.end_s.is_some() {
                issues.push(Issue::at(&["window"], "the input holds chunk rows (ingest.abf chunk_s): only window = \"sweep\" applies; remove window/start_s/end_s or chunk_s"));
            }
            if inputs[0].field_with_name("model_spike_times").is_ok() {
                issues.push(Issue::at(&["inputs"], "chunk rows with `model_spike_times` are not supported"));
            }
            if !issues.is_empty() {
                return Err(issues);
            }
        }
        Ok(spikes_schema())
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SpikesOp { detection: self.detection(WindowMode::Sweep), schema: output.clone(), counter: None })))
    }
}

struct SpikesOp {
    detection: Detection,
    schema: SchemaRef,
    counter: SpikeCounter,
}

impl TransformOperator for SpikesOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let (cols, results) = analyse_batch(&batch, &self.detection, out)?;
        let rows = spike_rows(&cols, &results, &mut self.counter);
        out.emit(spikes_batch(&self.schema, &rows)?);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// features.sweep
// ---------------------------------------------------------------------------------------------

/// The per-sweep features table.
pub fn sweep_features_schema(input: &Schema) -> SchemaRef {
    let mut fields = vec![field("recording_id", DataType::Utf8, false, None), field("sweep", DataType::Int64, false, None)];
    if let Ok(f) = input.field_with_name("stimulus_kind")
        && is_string(f.data_type())
    {
        fields.push(field("stimulus_kind", DataType::Utf8, true, None));
    }
    fields.extend([
        field("detection", DataType::Utf8, false, None),
        field("stimulus_found", DataType::Boolean, false, None),
        field("window_start", DataType::Float64, false, Some("s")),
        field("window_end", DataType::Float64, false, Some("s")),
        field("stimulus_baseline", DataType::Float64, true, Some("pA")),
        field("stimulus_amplitude", DataType::Float64, true, Some("pA")),
        field("spike_count", DataType::Int64, false, None),
        field("avg_rate", DataType::Float64, false, Some("Hz")),
        field("latency", DataType::Float64, true, Some("s")),
        field("first_isi", DataType::Float64, true, Some("s")),
        field("mean_isi", DataType::Float64, true, Some("s")),
        field("median_isi", DataType::Float64, true, Some("s")),
        field("isi_cv", DataType::Float64, true, Some("1")),
        field("adapt", DataType::Float64, true, Some("1")),
    ]);
    Arc::new(Schema::new(fields))
}

impl StageConfig for FeaturesSweep {
    const KIND: &'static str = "features.sweep";
    const SUMMARY: &'static str =
        "IPFX spike-train features (count, rate, latency, ISIs, adaptation) per sweep inside its stimulus window";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let explicit = self.start_s.is_some() || self.end_s.is_some();
        let needs_stimulus = !explicit && self.window != Some(WindowMode::Sweep);
        check_sweeps_input(&inputs[0], needs_stimulus)?;
        if is_chunked(&inputs[0]) {
            return Err(vec![Issue::at(
                &["inputs"],
                "the input holds chunk rows (ingest.abf chunk_s); spike-train features need whole sweeps: remove chunk_s",
            )]);
        }
        Ok(sweep_features_schema(&inputs[0]))
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SweepOp { detection: self.detection(WindowMode::Stimulus), schema: output.clone() })))
    }
}

/// One output row of features.sweep: input row, its analysis, model times used, features.
type SweepRow<'a> = (usize, &'a SweepResult, bool, SpikeTrainFeatures);

struct SweepOp {
    detection: Detection,
    schema: SchemaRef,
}

impl TransformOperator for SweepOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let (cols, results) = analyse_batch(&batch, &self.detection, out)?;
        let mut rows: Vec<SweepRow<'_>> = Vec::with_capacity(results.len());
        for (row, res) in &results {
            let (start, end) = (res.window_start_s, res.window_end_s);
            let (model, feats) = match &res.spikes {
                SweepSpikes::Detected(spikes) => (false, spike_train_features(spikes, start, end)),
                SweepSpikes::Model(times) => {
                    let t: Vec<f64> = times.iter().map(|x| x.0).collect();
                    (true, basic_spike_train_features(&t, start, end))
                }
            };
            match feats {
                Ok(f) => rows.push((*row, res, model, f)),
                Err(e) => out.fail(cols.unit(*row), format!("spike-train features: {e}")),
            }
        }
        let kinds = batch.column_by_name("stimulus_kind").and_then(|c| arrow::compute::cast(c, &DataType::Utf8).ok());
        let f64s = |f: &dyn Fn(&SweepRow<'_>) -> Option<f64>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<Float64Array>())
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| Some(cols.recording_id.value(r.0))).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| cols.sweep.value(r.0)).collect::<Int64Array>()),
        ];
        if self.schema.field_with_name("stimulus_kind").is_ok() {
            let kinds = kinds.ok_or_else(|| Error::msg("the batch has no `stimulus_kind` column"))?;
            let kinds = kinds.as_string::<i32>();
            columns.push(Arc::new(rows.iter().map(|r| kinds.is_valid(r.0).then(|| kinds.value(r.0))).collect::<StringArray>()));
        }
        columns.extend([
            Arc::new(rows.iter().map(|r| Some(if r.2 { "model_spike_times" } else { "ipfx" })).collect::<StringArray>()) as ArrayRef,
            Arc::new(rows.iter().map(|r| Some(r.1.stimulus.is_some())).collect::<BooleanArray>()),
            f64s(&|r| Some(r.1.window_start_s)),
            f64s(&|r| Some(r.1.window_end_s)),
            f64s(&|r| r.1.stimulus.map(|s| s.baseline_pa)),
            f64s(&|r| r.1.stimulus.map(|s| s.amplitude_pa)),
            Arc::new(rows.iter().map(|r| r.3.spike_count as i64).collect::<Int64Array>()),
            f64s(&|r| Some(r.3.avg_rate_hz)),
            f64s(&|r| r.3.latency_s),
            f64s(&|r| r.3.first_isi_s),
            f64s(&|r| r.3.mean_isi_s),
            f64s(&|r| r.3.median_isi_s),
            f64s(&|r| r.3.isi_cv),
            f64s(&|r| r.3.adapt),
        ]);
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn stimulus_window_of_a_two_step_protocol() {
        // holding 0 pA, a +50 pA step, back to 0, a -100 pA step, back to 0
        let mut s = vec![0.0f32; 100];
        s[10..30].fill(50.0);
        s[50..60].fill(-100.0);
        let w = find_stimulus_window(&s, 1.0, false).unwrap();
        assert_eq!((w.start, w.end, w.baseline_pa, w.amplitude_pa), (10, 59, 0.0, -100.0));
        let w = find_stimulus_window(&s, 1.0, true).unwrap();
        assert_eq!((w.start, w.end, w.amplitude_pa), (10, 29, 50.0));
        assert!(find_stimulus_window(&[3.0; 10], 1.0, false).is_none());
        assert!(find_stimulus_window(&[], 1.0, false).is_none());
        // a departure below the tolerance is no departure
        let mut s = vec![-20.0f32; 10];
        s[4] = -20.5;
        assert!(find_stimulus_window(&s, 1.0, false).is_none());
    }

    /// A hand-made sweeps batch: recording "r", sweeps 0..n with the given rates, responses,
    /// stimuli and model spike times (None = null).
    fn sweeps_batch(rates: &[f64], responses: &[Vec<f32>], stimuli: &[Vec<f32>], model: &[Option<Vec<f64>>]) -> RecordBatch {
        use arrow::array::Float64Builder;
        use arrow::array::LargeListBuilder;
        let n = rates.len();
        let mut mb = LargeListBuilder::new(Float64Builder::new()).with_field(Field::new("item", DataType::Float64, false));
        for m in model {
            match m {
                Some(v) => {
                    mb.values().append_slice(v);
                    mb.append(true);
                }
                None => mb.append(false),
            }
        }
        let schema = Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("sweep", DataType::Int64, false, None),
            field("sampling_rate_hz", DataType::Float64, false, Some("Hz")),
            crate::stage::columns::f32_trace("stimulus", "pA"),
            crate::stage::columns::f32_trace("response", "mV"),
            field("model_spike_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), true, Some("s")),
        ]));
        let item = Field::new("item", DataType::Float32, false);
        fn refs(x: &[Vec<f32>]) -> Vec<&[f32]> {
            x.iter().map(Vec::as_slice).collect()
        }
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["r"; n])),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(Float64Array::from(rates.to_vec())),
                Arc::new(crate::stage::columns::f32_list_array(&item, &refs(stimuli)).unwrap()),
                Arc::new(crate::stage::columns::f32_list_array(&item, &refs(responses)).unwrap()),
                Arc::new(mb.finish()),
            ],
        )
        .unwrap()
    }

    fn ctx() -> StageContext {
        StageContext::new("t", ".", 0, ".")
    }

    fn run_transform<C: StageConfig>(cfg: &C, batch: RecordBatch) -> Emitter {
        let output = cfg.output_schema(&ctx(), &[batch.schema()]).unwrap_or_else(|i| panic!("{:?}", i[0].message));
        let Operator::Transform(mut op) = cfg.build(&ctx(), &[batch.schema()], &output).unwrap() else { panic!("not a transform") };
        let mut out = Emitter::default();
        op.process(0, batch, &mut out).unwrap();
        out
    }

    #[test]
    fn bad_sweeps_fail_alone_and_model_times_are_used() {
        let flat = vec![-65.0f32; 1000];
        let mut with_nan = flat.clone();
        with_nan[5] = f32::NAN;
        let mut step = vec![0.0f32; 1000];
        step[100..900].fill(50.0);
        let batch = sweeps_batch(
            &[50_000.0, 50_000.0, 50_000.0, 50_000.0, 20_000.0, 50_000.0, 0.0],
            &[flat.clone(), with_nan, vec![-65.0; 10], flat.clone(), flat.clone(), flat.clone(), flat.clone()],
            &[step.clone(), step.clone(), vec![0.0; 10], vec![0.0; 999], step.clone(), step.clone(), step.clone()],
            &[None, None, None, None, None, Some(vec![0.001, 0.005, 0.019]), None],
        );
        let cfg: FeaturesSpikes = toml::from_str("").unwrap();
        let out = run_transform(&cfg, batch.clone());
        let failures: Vec<(String, String)> = out.failures.iter().map(|f| (f.unit.clone(), f.message.clone())).collect();
        let units: Vec<&str> = failures.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(units, ["r/1", "r/2", "r/3", "r/4", "r/6"], "{failures:?}");
        assert!(failures[0].1.contains("v_mv[5] is not finite"), "{}", failures[0].1);
        assert!(failures[1].1.contains("10 samples"), "{}", failures[1].1);
        assert!(failures[2].1.contains("stimulus has 999 samples but response has 1000"), "{}", failures[2].1);
        assert!(failures[3].1.contains("20000 Hz") && failures[3].1.contains("filter_khz = \"none\""), "{}", failures[3].1);
        assert!(failures[4].1.contains("sampling_rate_hz = 0"), "{}", failures[4].1);
        // sweep 5: the model's three spike times, nothing detected on the flat trace
        assert_eq!(out.batches.len(), 1);
        let b = &out.batches[0];
        assert_eq!(b.num_rows(), 3);
        let t = b.column_by_name("threshold_t").unwrap().as_primitive::<Float64Type>();
        assert_eq!(t.values().to_vec(), vec![0.001, 0.005, 0.019]);
        let idx = b.column_by_name("threshold_index").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(idx.values().to_vec(), vec![50, 250, 950]);
        let i = b.column_by_name("threshold_i").unwrap().as_primitive::<Float64Type>();
        assert_eq!(i.values().to_vec(), vec![0.0, 50.0, 0.0]);
        assert!(b.column_by_name("peak_index").unwrap().is_null(0));
        assert_eq!(b.column_by_name("detection").unwrap().as_string::<i32>().value(0), "model_spike_times");

        // features.sweep: window 100..899 (the +50 pA step) holds the spike at 0.005 s only
        let cfg: FeaturesSweep = toml::from_str("filter_khz = \"none\"").unwrap();
        let out = run_transform(&cfg, batch);
        let units: Vec<&str> = out.failures.iter().map(|f| f.unit.as_str()).collect();
        // without the main filter a 10-sample sweep is analysable (no spike), as in IPFX
        assert_eq!(units, ["r/1", "r/3", "r/6"]);
        let b = &out.batches[0];
        assert_eq!(b.num_rows(), 4);
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let counts = col("spike_count");
        assert_eq!(counts.as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), vec![0, 0, 0, 1]);
        let amp = col("stimulus_amplitude");
        assert!(amp.is_null(1));
        assert_eq!(amp.as_primitive::<Float64Type>().value(3), 50.0);
        let start = col("window_start");
        assert_eq!(start.as_primitive::<Float64Type>().value(3), 100.0 / 50_000.0);
        let latency = col("latency");
        assert!((latency.as_primitive::<Float64Type>().value(3) - (0.005 - 0.002)).abs() < 1e-15);
    }

    #[test]
    fn filter_option_accepts_numbers_and_none() {
        let c: FeaturesSpikes = toml::from_str("filter_khz = \"none\"\nheavy_filter_khz = 2").unwrap();
        assert_eq!(c.filter_khz, Cutoff::Off(NoFilter::None));
        assert_eq!(c.heavy_filter_khz, Cutoff::Khz(2.0));
        assert_eq!(c.detection(WindowMode::Sweep).params.filter_khz, None);
        let d: FeaturesSpikes = toml::from_str("").unwrap();
        assert_eq!(d.detection(WindowMode::Sweep).params, SpikeDetectionParams::default());
        assert!(toml::from_str::<FeaturesSpikes>("filter_khz = \"off\"").is_err());
        assert!(toml::from_str::<FeaturesSpikes>("filter = 5").is_err());
        let bad: FeaturesSpikes = toml::from_str("max_interval_s = -1\nstart_s = 2\nend_s = 1\nwindow = \"sweep\"").unwrap();
        let issues = bad.issues();
        let keys: Vec<String> = issues.iter().map(|i| format!("{:?}", i.path)).collect();
        assert_eq!(issues.len(), 3, "{keys:?}");
    }
}
