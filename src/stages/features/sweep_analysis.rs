//! What `features.spikes` and `features.sweep` share: their window options (declared once by
//! `detection_config!` on top of IPFX's detection options) and the analysis of one sweep of the
//! sweeps table (window, detection or model spike times, chunk rows), run on every row of a batch
//! in parallel by [`analyse_batch`].

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Schema};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::spikes::{SlopePoint, Spike, SpikeDetectionParams, SpikeError, SpikeWorkspace, Timebase, TracePoint, detect_spikes_with};
use crate::stage::columns::{is_numeric, is_string, require};
use crate::stage::{Emitter, Issue};

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

pub(crate) fn d_tol_pa() -> f64 {
    1.0
}
pub(crate) fn d_true() -> bool {
    true
}

/// Declares a spike stage config: the IPFX detection options plus the window options
/// ([`WindowOptions`], whose checks and conversion it calls).
macro_rules! detection_config {
    ($(#[$meta:meta])* $name:ident) => {
        $crate::stages::features::detection::ipfx_detection_struct! {
            $(#[$meta])*
            $name {
            /// Part of each sweep analysed: "sweep", "stimulus" or "first_step" (default "sweep"
            /// for features.spikes, "stimulus" for features.sweep) [mode].
            #[serde(default)]
            pub window: Option<$crate::stages::features::sweep_analysis::WindowMode>,
            /// Explicit window start, instead of `window` (IPFX `start`) [s].
            #[serde(default)]
            pub start_s: Option<f64>,
            /// Explicit window end, instead of `window` (IPFX `end`) [s].
            #[serde(default)]
            pub end_s: Option<f64>,
            /// A stimulus sample departs from the baseline when it differs by more than this [pA].
            #[serde(default = "crate::stages::features::sweep_analysis::d_tol_pa")]
            pub stimulus_tolerance_pa: f64,
            /// Use a non-null `model_spike_times` value (simulated sweeps) instead of detecting [bool].
            #[serde(default = "crate::stages::features::sweep_analysis::d_true")]
            pub use_model_spike_times: bool,
            }
        }

        impl $name {
            fn window_options(&self) -> $crate::stages::features::sweep_analysis::WindowOptions {
                $crate::stages::features::sweep_analysis::WindowOptions {
                    window: self.window,
                    start_s: self.start_s,
                    end_s: self.end_s,
                    stimulus_tolerance_pa: self.stimulus_tolerance_pa,
                    use_model_spike_times: self.use_model_spike_times,
                }
            }
            fn detection(
                &self,
                default_window: $crate::stages::features::sweep_analysis::WindowMode,
            ) -> $crate::stages::features::sweep_analysis::Detection {
                self.window_options().detection(self.spike_detection(), default_window)
            }
            fn issues(&self) -> Vec<$crate::stage::Issue> {
                self.window_options().issues(&self.spike_detection())
            }
        }
    };
}
pub(super) use detection_config;

/// The window options of a spike stage, as configured.
#[derive(Debug, Clone, Copy)]
pub(super) struct WindowOptions {
    pub window: Option<WindowMode>,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub stimulus_tolerance_pa: f64,
    pub use_model_spike_times: bool,
}

impl WindowOptions {
    /// What a worker needs, with `default_window` where neither `window` nor `start_s`/`end_s` is given.
    pub(super) fn detection(self, params: SpikeDetectionParams, default_window: WindowMode) -> Detection {
        Detection {
            params,
            window: match (self.start_s, self.end_s) {
                (None, None) => Window::Mode(self.window.unwrap_or(default_window)),
                (s, e) => Window::Explicit { start_s: s, end_s: e },
            },
            stimulus_tolerance_pa: self.stimulus_tolerance_pa,
            use_model_spike_times: self.use_model_spike_times,
        }
    }

    /// Every issue of these options and of the detection parameters.
    pub(super) fn issues(self, params: &SpikeDetectionParams) -> Vec<Issue> {
        let mut issues = Vec::new();
        if let Err(SpikeError::InvalidParameter { name, reason, .. }) = params.validate() {
            issues.push(Issue::at(&[name], reason));
        }
        if self.start_s.is_some() || self.end_s.is_some() {
            if self.window.is_some() {
                issues.push(Issue::at(&["window"], "give either `window` or `start_s`/`end_s`, not both"));
            }
            for (key, v) in [("start_s", self.start_s), ("end_s", self.end_s)] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    issues.push(Issue::at(&[key], format!("{v} s must be a finite time >= 0")));
                }
            }
            if let (Some(s), Some(e)) = (self.start_s, self.end_s)
                && s >= e
            {
                issues.push(Issue::at(&["end_s"], format!("end_s = {e} s must be after start_s = {s} s")));
            }
        }
        if !(self.stimulus_tolerance_pa.is_finite() && self.stimulus_tolerance_pa >= 0.0) {
            issues.push(Issue::at(&["stimulus_tolerance_pa"], "must be a finite current >= 0 pA"));
        }
        issues
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Window {
    Mode(WindowMode),
    Explicit { start_s: Option<f64>, end_s: Option<f64> },
}

/// Everything a worker needs to process one sweep.
#[derive(Debug, Clone)]
pub(super) struct Detection {
    pub params: SpikeDetectionParams,
    pub window: Window,
    pub stimulus_tolerance_pa: f64,
    pub use_model_spike_times: bool,
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
pub(super) fn check_sweeps_input(schema: &Schema, needs_stimulus: bool) -> std::result::Result<(), Vec<Issue>> {
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
pub(super) fn is_chunked(schema: &Schema) -> bool {
    crate::stages::ingest::CHUNK_COLUMNS.iter().any(|c| schema.field_with_name(c).is_ok())
}

/// Chunk rows need every chunk column as a number in seconds.
pub(super) fn check_chunk_columns(schema: &Schema) -> std::result::Result<(), Vec<Issue>> {
    let p: &[&str] = &["inputs"];
    let issues: Vec<Issue> = ["chunk_start_s", "chunk_end_s", "trace_start_s"]
        .into_iter()
        .filter_map(|c| require(schema, "sweeps", c, "a number", is_numeric, Some("s"), p).err())
        .collect();
    if issues.is_empty() { Ok(()) } else { Err(issues) }
}

/// One row of a list column as a slice; `Err` names the problem (null row, null samples).
pub(super) fn list_row<'a, T: arrow::datatypes::ArrowPrimitiveType>(
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
pub(super) struct SweepColumns {
    pub recording_id: StringArray,
    pub sweep: Int64Array,
    pub rate_hz: Float64Array,
    pub response: LargeListArray,
    pub stimulus: Option<LargeListArray>,
    pub model_times: Option<LargeListArray>,
    /// With chunk rows: trace start, core start, core end [s from the sweep start].
    pub chunk: Option<[Float64Array; 3]>,
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
    pub(super) fn unit(&self, row: usize) -> String {
        let id = if self.recording_id.is_null(row) { "<null recording_id>" } else { self.recording_id.value(row) };
        if self.sweep.is_null(row) { format!("{id}/<null sweep>") } else { format!("{id}/{}", self.sweep.value(row)) }
    }
}

/// What was found in one sweep.
pub(super) enum SweepSpikes {
    Detected(Vec<Spike>),
    /// Model spike times inside the window, with the nearest sample index.
    Model(Vec<(f64, usize)>),
}

/// One sweep's analysis: its window, stimulus window and spikes.
pub(super) struct SweepResult {
    pub window_start_s: f64,
    pub window_end_s: f64,
    pub stimulus: Option<StimulusWindow>,
    pub spikes: SweepSpikes,
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
pub(super) fn analyse_batch(batch: &RecordBatch, d: &Detection, out: &mut Emitter) -> Result<(SweepColumns, Vec<(usize, SweepResult)>)> {
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


#[cfg(test)]
mod tests {
    use super::*;

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
}

/// Hand-made sweeps batches and a driver for the spike stages' unit tests.
#[cfg(test)]
pub(super) mod test_support {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use crate::stage::columns::field;
    use crate::stage::{Emitter, Operator, StageConfig, StageContext};

    /// A hand-made sweeps batch: recording "r", sweeps 0..n with the given rates, responses,
    /// stimuli and model spike times (None = null).
    pub(in crate::stages::features) fn sweeps_batch(rates: &[f64], responses: &[Vec<f32>], stimuli: &[Vec<f32>], model: &[Option<Vec<f64>>]) -> RecordBatch {
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

    pub(in crate::stages::features) fn ctx() -> StageContext {
        StageContext::new("t", ".", 0, ".")
    }

    pub(in crate::stages::features) fn run_transform<C: StageConfig>(cfg: &C, batch: RecordBatch) -> Emitter {
        let output = cfg.output_schema(&ctx(), &[batch.schema()]).unwrap_or_else(|i| panic!("{:?}", i[0].message));
        let Operator::Transform(mut op) = cfg.build(&ctx(), &[batch.schema()], &output).unwrap() else { panic!("not a transform") };
        let mut out = Emitter::default();
        op.process(0, batch, &mut out).unwrap();
        out
    }

    /// Seven sweeps: flat, a NaN sample, too short, stimulus and response of different lengths,
    /// 20 kHz (too slow for the default filter), model spike times, a zero sampling rate.
    pub(in crate::stages::features) fn seven_sweeps() -> RecordBatch {
        let flat = vec![-65.0f32; 1000];
        let mut with_nan = flat.clone();
        with_nan[5] = f32::NAN;
        let mut step = vec![0.0f32; 1000];
        step[100..900].fill(50.0);
        sweeps_batch(
            &[50_000.0, 50_000.0, 50_000.0, 50_000.0, 20_000.0, 50_000.0, 0.0],
            &[flat.clone(), with_nan, vec![-65.0; 10], flat.clone(), flat.clone(), flat.clone(), flat.clone()],
            &[step.clone(), step.clone(), vec![0.0; 10], vec![0.0; 999], step.clone(), step.clone(), step.clone()],
            &[None, None, None, None, None, Some(vec![0.001, 0.005, 0.019]), None],
        )
    }
}
