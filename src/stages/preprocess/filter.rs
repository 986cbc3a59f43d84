//! Trace preprocessing stages: `preprocess.filter` (Butterworth low-, high- or band-pass),
//! `preprocess.resample` (rational polyphase, scipy `resample_poly`) and `preprocess.window`
//! (fixed windows or stimulus-locked epochs), on the list columns of the sweeps table.
//!
//! Traces are what `ingest.abf` / `ingest.nwb` emit (DESIGN.md "sweeps"): one row per sweep,
//! `response` (mV) and `stimulus` (pA) as `large_list<float32>`, sampled at the row's
//! `sampling_rate_hz`. The stages read any numeric list column, compute in f64 with the kernels
//! of [`crate::preprocess`], and write back the column's own type and unit, so the sweeps schema
//! survives (the window stage adds its keys). The sampling rate is per row, so a cutoff above a
//! recording's Nyquist frequency is found when that recording arrives: the row fails alone
//! (`recording_id/sweep`), with the option, its value, the Nyquist frequency and the rate.
//!
//! Chunked sweeps (`ingest.abf` with `chunk_s`: rows of one sweep carrying `chunk`,
//! `chunk_start_s`, `chunk_end_s`, `trace_start_s`, each trace widened by `chunk_overlap_s` on both
//! sides):
//! - `preprocess.filter`, zero-phase: each row (core plus overlap) is filtered on its own, so the
//!   core differs from filtering the whole sweep only by the edge transient that decayed over the
//!   overlap. For the 2 kHz low-pass of the example pipeline and 0.1 s of overlap that is below
//!   float32 rounding (tests/preprocess_signal.rs measures it); a high-pass at f Hz has transients
//!   lasting a few 1/f, so give it an overlap of several 1/f or do not chunk.
//! - `preprocess.filter`, causal: exact. The filter state is carried from one chunk row to the
//!   next (the rows of a sweep arrive in order from one source), the overlap before a chunk's core
//!   is taken from the previous row's output, so the rows equal one pass over the whole sweep.
//! - `preprocess.resample`: each row on its own (mean padding at its ends, the FIR reaches
//!   10·max(up, down) input samples, within the overlap); `trace_start_s` and the chunk times stay
//!   valid since the first output sample is at the first input sample's time.
//! - `preprocess.window`: each window is cut once, by the row whose core holds its start (fixed)
//!   or its event (epochs); a window longer than the overlap can straddle a chunk edge and not
//!   fit: the recording then fails, naming the window and the overlap needed, rather than
//!   silently missing windows (with `chunk_overlap_s = 0` this cannot be detected: keep an
//!   overlap at least as long as the windows).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeListArray, ListArray, RecordBatch, UInt64Array};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{check_rate_column, column_list, f64_list_rows, field, is_numeric, type_name, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::preprocess::butterworth::{Band, Sos, SosState, butter_sos};
use crate::preprocess::resample::{Padding, Resampler, rational_ratio};
use crate::preprocess::window::{TraceFrame, event_windows, fixed_windows};

fn d_rate() -> String {
    "sampling_rate_hz".into()
}
fn d_response() -> Vec<String> {
    vec!["response".into()]
}
fn d_order() -> usize {
    4
}
fn d_max_factor() -> u64 {
    1000
}

// =============================================================================================
// Shared: list columns in and out, row keys, the rate column
// =============================================================================================

/// A numeric list column with per-row lengths (`list` or `large_list`).
fn is_numeric_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) => is_numeric(f.data_type()),
        _ => false,
    }
}

/// The `columns` option of resample and window: `chosen` (the listed columns, or the trace
/// columns found when none are listed) must not be empty, and each listed one must be a numeric
/// list column.
fn check_trace_columns(input: &Schema, chosen: &[String], listed: &[String], issues: &mut Vec<Issue>) {
    if chosen.is_empty() {
        issues.push(Issue::at(&["columns"], format!("the input has no trace column (numeric list not in s); it has: {}", column_list(input))));
    }
    check_list_columns(input, "columns", listed, issues);
}

/// Checks `columns` name numeric list columns of `input`; issues at `key[i]`.
fn check_list_columns(input: &Schema, key: &str, columns: &[String], issues: &mut Vec<Issue>) {
    let mut seen = BTreeSet::new();
    for (i, c) in columns.iter().enumerate() {
        if !seen.insert(c) {
            issues.push(Issue::at_index(key, i, format!("`{c}` is listed twice")));
            continue;
        }
        match input.field_with_name(c) {
            Err(_) => issues.push(Issue::at_index(key, i, format!("the input has no column `{c}`; it has: {}", column_list(input)))),
            Ok(f) if !is_numeric_list(f.data_type()) => issues.push(Issue::at_index(
                key,
                i,
                format!("`{c}` is {}; a numeric list column (one trace per row) is needed", type_name(f.data_type())),
            )),
            _ => {}
        }
    }
}

/// A list column of type `like` (list or large list of the item type and field it declares)
/// from f64 rows.
fn write_lists(rows: &[Option<Vec<f64>>], like: &DataType) -> Result<ArrayRef> {
    let item = match like {
        DataType::List(f) | DataType::LargeList(f) => f.clone(),
        other => return Err(Error::msg(format!("cannot write a list column of type {other}"))),
    };
    let values: Vec<f64> = rows.iter().flat_map(|r| r.iter().flatten().copied()).collect();
    let values = arrow::compute::cast(&Float64Array::from(values), item.data_type())?;
    let nulls = rows.iter().any(Option::is_none).then(|| NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>()));
    let lengths = rows.iter().map(|r| r.as_ref().map_or(0, Vec::len));
    Ok(match like {
        DataType::List(_) => Arc::new(ListArray::try_new(item, OffsetBuffer::<i32>::from_lengths(lengths), values, nulls)?),
        _ => Arc::new(LargeListArray::try_new(item, OffsetBuffer::<i64>::from_lengths(lengths), values, nulls)?),
    })
}

/// Row names for failure reports (`recording_id/sweep`, as the other trace stages) and the
/// per-row values a stage needs.
struct Rows {
    labels: Vec<String>,
    rates: Vec<Option<f64>>,
}

impl Rows {
    fn of(batch: &RecordBatch, rate_column: &str) -> Result<Rows> {
        let n = batch.num_rows();
        let strings = |c: &str| -> Result<Option<Vec<Option<String>>>> {
            let Some(a) = batch.column_by_name(c) else { return Ok(None) };
            let a = arrow::compute::cast(a, &DataType::Utf8)?;
            Ok(Some(a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()))
        };
        let (ids, sweeps) = (strings("recording_id")?, strings("sweep")?);
        let labels = (0..n)
            .map(|r| {
                let id = ids.as_ref().and_then(|v| v[r].clone());
                let sweep = sweeps.as_ref().and_then(|v| v[r].clone());
                match (id, sweep) {
                    (Some(i), Some(s)) => format!("{i}/{s}"),
                    (Some(i), None) => i,
                    _ => format!("row {r}"),
                }
            })
            .collect();
        let rates = f64_column(batch, rate_column)?.unwrap_or_else(|| vec![None; n]);
        Ok(Rows { labels, rates })
    }
}

fn f64_column(batch: &RecordBatch, column: &str) -> Result<Option<Vec<Option<f64>>>> {
    let Some(a) = batch.column_by_name(column) else { return Ok(None) };
    Ok(Some(arrow::compute::cast(a, &DataType::Float64)?.as_primitive::<Float64Type>().iter().collect()))
}

/// The row's sampling rate, or why it cannot be used.
fn row_rate(rows: &Rows, r: usize, column: &str) -> std::result::Result<f64, String> {
    match rows.rates[r] {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(format!("`{column}` is {v}, not a positive sampling rate")),
        None => Err(format!("`{column}` is null")),
    }
}

/// Keeps the rows marked in `keep` of every column of `batch`.
fn take_rows(batch: &RecordBatch, keep: &[bool]) -> Result<Vec<ArrayRef>> {
    let idx = UInt64Array::from_iter_values(keep.iter().enumerate().filter(|(_, k)| **k).map(|(r, _)| r as u64));
    batch.columns().iter().map(|c| Ok(arrow::compute::take(c, &idx, None)?)).collect()
}

fn first_non_finite(x: &[f64]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}

// =============================================================================================
// preprocess.filter
// =============================================================================================

/// How the filter is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// Forward then backward (scipy `sosfiltfilt`, odd padding): no delay, magnitude response
    /// squared (a 4th-order design acts as 8th-order, −6 dB at the cutoff).
    #[default]
    ZeroPhase,
    /// One forward pass from the steady state of the first sample (scipy `sosfilt` with
    /// `zi = sosfilt_zi(sos)·x[0]`): uses only the past, delays the signal; chunked sweeps are
    /// filtered exactly as if whole.
    Causal,
}

/// Butterworth low-, high- or band-pass filtering of trace columns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessFilter {
    /// Numeric list columns to filter, each sampled at `sampling_rate_column` [columns].
    #[serde(default = "d_response")]
    pub columns: Vec<String>,
    /// Low-pass cutoff: frequencies above it are removed. With `highpass_hz` too, the upper edge
    /// of a band-pass. Must lie below each recording's Nyquist frequency (half its rate) [Hz].
    #[serde(default)]
    pub lowpass_hz: Option<f64>,
    /// High-pass cutoff: frequencies below it (drift, offsets) are removed. With `lowpass_hz`
    /// too, the lower edge of a band-pass [Hz].
    #[serde(default)]
    pub highpass_hz: Option<f64>,
    /// Butterworth order, 1..=16; a band-pass of order N has 2N poles (scipy's convention) [order].
    #[serde(default = "d_order")]
    pub order: usize,
    /// "zero_phase" (forward-backward, no delay) or "causal" (one forward pass) [mode].
    #[serde(default)]
    pub mode: FilterMode,
    /// Column with each row's sampling rate [column].
    #[serde(default = "d_rate")]
    pub sampling_rate_column: String,
}

impl PreprocessFilter {
    /// The design for a recording sampled at `rate_hz`, or the message naming the option that
    /// does not fit its Nyquist frequency.
    fn design(&self, rate_hz: f64) -> std::result::Result<Sos, String> {
        let nyquist = rate_hz / 2.0;
        let wn = |key: &str, hz: f64| {
            if hz < nyquist {
                Ok(hz / nyquist)
            } else {
                Err(format!("`{key}` = {hz} Hz is not below the Nyquist frequency {nyquist} Hz of this recording (sampled at {rate_hz} Hz)"))
            }
        };
        let band = match (self.highpass_hz, self.lowpass_hz) {
            (Some(h), Some(l)) => Band::Bandpass(wn("highpass_hz", h)?, wn("lowpass_hz", l)?),
            (None, Some(l)) => Band::Lowpass(wn("lowpass_hz", l)?),
            (Some(h), None) => Band::Highpass(wn("highpass_hz", h)?),
            (None, None) => return Err("no cutoff".into()),
        };
        butter_sos(self.order, band).map_err(|e| e.to_string())
    }
}

impl StageConfig for PreprocessFilter {
    const KIND: &'static str = "preprocess.filter";
    const SUMMARY: &'static str =
        "Butterworth low-, high- or band-pass filter (second-order sections) of trace columns, zero-phase (scipy sosfiltfilt) or causal";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // One recording at a time, whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.columns.is_empty() {
            issues.push(Issue::at(&["columns"], "give at least one list column to filter"));
        }
        if self.lowpass_hz.is_none() && self.highpass_hz.is_none() {
            issues.push(Issue::at(&[], "give `lowpass_hz`, `highpass_hz`, or both (a band-pass)"));
        }
        for (key, v) in [("lowpass_hz", self.lowpass_hz), ("highpass_hz", self.highpass_hz)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                issues.push(Issue::at(&[key], format!("{v} Hz must be a positive cutoff frequency")));
            }
        }
        if let (Some(h), Some(l)) = (self.highpass_hz, self.lowpass_hz)
            && h > 0.0
            && l > 0.0
            && h >= l
        {
            issues.push(Issue::at(&["highpass_hz"], format!("the band-pass needs highpass_hz ({h} Hz) below lowpass_hz ({l} Hz)")));
        }
        if !(1..=16).contains(&self.order) {
            issues.push(Issue::at(&["order"], format!("{} is outside 1..=16", self.order)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        check_list_columns(input, "columns", &self.columns, &mut issues);
        check_rate_column(input, &self.sampling_rate_column, &mut issues);
        if issues.is_empty() { Ok(input.clone()) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let chunked = crate::stages::ingest::CHUNK_COLUMNS.iter().all(|c| inputs[0].field_with_name(c).is_ok());
        Ok(Operator::Transform(Box::new(FilterOp { cfg: self.clone(), schema: output.clone(), chunked, carry: None, design: None })))
    }
}

/// Where causal filtering of a chunked sweep stands after its last row.
struct Carry {
    key: String,
    next_chunk: i64,
    rate_hz: f64,
    /// Per filtered column: the filter state at sweep sample `end`, and the previous row's
    /// output, which started at sweep sample `start`.
    columns: Vec<(SosState, i64, i64, Vec<f64>)>,
}

struct FilterOp {
    cfg: PreprocessFilter,
    schema: SchemaRef,
    /// The input has the chunk columns of `ingest.abf` with `chunk_s`.
    chunked: bool,
    carry: Option<Carry>,
    /// The last design and the rate it is for (rates rarely change between rows).
    design: Option<(f64, Sos)>,
}

impl FilterOp {
    fn sos(&mut self, rate: f64) -> std::result::Result<Sos, String> {
        if let Some((r, s)) = &self.design
            && *r == rate
        {
            return Ok(s.clone());
        }
        let s = self.cfg.design(rate)?;
        self.design = Some((rate, s.clone()));
        Ok(s)
    }

    /// Causal filtering of one chunk row, continuing the sweep's previous row. `first` is the
    /// sweep sample of the row's first sample.
    fn causal_chunk(&mut self, sos: &Sos, key: String, chunk: i64, rate: f64, first: i64, traces: &[Vec<f64>]) -> std::result::Result<Vec<Vec<f64>>, String> {
        let continues = self.carry.as_ref().is_some_and(|c| c.key == key && c.next_chunk == chunk && c.rate_hz == rate);
        if !continues {
            if chunk != 0 {
                return Err(format!(
                    "chunk {chunk} arrived without chunk {} of the same sweep before it: causal filtering of a chunked sweep needs its chunks in order",
                    chunk - 1
                ));
            }
            self.carry = None;
        }
        let mut outputs = Vec::with_capacity(traces.len());
        let mut carried = Vec::with_capacity(traces.len());
        for (ci, x) in traces.iter().enumerate() {
            let len = x.len() as i64;
            let (mut state, done_to, prev_start, prev) = match &self.carry {
                Some(c) => c.columns[ci].clone(),
                None => (sos.steady_state(x.first().copied().unwrap_or(0.0)), first, first, Vec::new()),
            };
            if first < prev_start || first > done_to {
                return Err(format!(
                    "chunk {chunk} starts at sample {first}, outside what the previous chunk covered ({prev_start}..{done_to}): the chunks of a sweep must overlap or touch"
                ));
            }
            let mut y: Vec<f64> = prev[(first - prev_start) as usize..].iter().copied().take(x.len()).collect();
            let from = (done_to - first).clamp(0, len) as usize;
            let mut rest = x[from..].to_vec();
            sos.filter_continue(&mut rest, &mut state);
            y.extend(rest);
            carried.push((state, first + len, first, y.clone()));
            outputs.push(y);
        }
        self.carry = Some(Carry { key, next_chunk: chunk + 1, rate_hz: rate, columns: carried });
        Ok(outputs)
    }
}

impl TransformOperator for FilterOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let mut lists: Vec<Vec<Option<Vec<f64>>>> = self.cfg.columns.iter().map(|c| f64_list_rows(&batch, c)).collect::<Result<_>>()?;
        let chunk_info = if self.chunked {
            let chunks = arrow::compute::cast(batch.column_by_name("chunk").expect("checked at build"), &DataType::Int64)?;
            let chunks: Vec<Option<i64>> = chunks.as_primitive::<arrow::datatypes::Int64Type>().iter().collect();
            let starts = f64_column(&batch, "trace_start_s")?.expect("checked at build");
            Some((chunks, starts))
        } else {
            None
        };
        let mut keep = vec![true; n];
        for r in 0..n {
            let result: std::result::Result<(), String> = (|| {
                let rate = row_rate(&rows, r, &self.cfg.sampling_rate_column)?;
                let sos = self.sos(rate)?;
                for (ci, c) in self.cfg.columns.iter().enumerate() {
                    if let Some(i) = lists[ci][r].as_deref().and_then(first_non_finite) {
                        return Err(format!("`{c}` has a non-finite sample at index {i}; the filter would spread it over the whole trace"));
                    }
                }
                match (self.cfg.mode, &chunk_info) {
                    (FilterMode::Causal, Some((chunks, starts))) if lists.iter().all(|l| l[r].is_some()) => {
                        let chunk = chunks[r].ok_or("`chunk` is null")?;
                        let first = (starts[r].ok_or("`trace_start_s` is null")? * rate).round() as i64;
                        let traces: Vec<Vec<f64>> = lists.iter_mut().map(|l| l[r].take().expect("checked")).collect();
                        let ys = self.causal_chunk(&sos, rows.labels[r].clone(), chunk, rate, first, &traces)?;
                        for (l, y) in lists.iter_mut().zip(ys) {
                            l[r] = Some(y);
                        }
                    }
                    (mode, _) => {
                        for (ci, c) in self.cfg.columns.iter().enumerate() {
                            let Some(x) = lists[ci][r].take() else { continue };
                            let y = match mode {
                                FilterMode::ZeroPhase => sos.filtfilt(&x).map_err(|e| format!("`{c}`: {e}"))?,
                                FilterMode::Causal => sos.filter_causal(&x).0,
                            };
                            lists[ci][r] = Some(y);
                        }
                    }
                }
                Ok(())
            })();
            if let Err(message) = result {
                keep[r] = false;
                out.fail(rows.labels[r].clone(), message);
            }
        }
        let mut columns = take_rows(&batch, &keep)?;
        for (ci, c) in self.cfg.columns.iter().enumerate() {
            let kept: Vec<Option<Vec<f64>>> = lists[ci].iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| v.clone()).collect();
            let pos = self.schema.index_of(c)?;
            columns[pos] = write_lists(&kept, self.schema.field(pos).data_type())?;
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// =============================================================================================
// preprocess.resample
// =============================================================================================

/// What a trace is taken to be beyond its ends while resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    /// The trace's mean (scipy `padtype="mean"`).
    #[default]
    Mean,
    /// The trace's median (`padtype="median"`).
    Median,
    /// Zeros (scipy's default `padtype="constant"`; pulls the ends of a −65 mV trace towards 0).
    Zero,
}

/// Resampling of trace columns to a new sampling rate (rational polyphase FIR, scipy `resample_poly`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessResample {
    /// The new sampling rate; `sampling_rate_column` is set to it. The ratio to each row's rate
    /// must be a fraction up/down with both at most `max_factor` [Hz].
    pub output_rate_hz: f64,
    /// List columns to resample. Default: every numeric list column not in seconds (traces;
    /// event-time lists are not samples). Every trace column must be listed, since the rate
    /// column will no longer describe the others [columns].
    #[serde(default)]
    pub columns: Vec<String>,
    /// Value assumed beyond a trace's ends: "mean", "median" or "zero" [mode].
    #[serde(default)]
    pub padding: PadMode,
    /// Largest up or down factor; the anti-alias FIR has 20·max(up, down) + 1 taps [factor].
    #[serde(default = "d_max_factor")]
    pub max_factor: u64,
    /// Column with each row's sampling rate [column].
    #[serde(default = "d_rate")]
    pub sampling_rate_column: String,
}

/// Trace columns of a schema: numeric lists whose unit is not seconds.
fn trace_columns(input: &Schema) -> Vec<String> {
    input.fields().iter().filter(|f| is_numeric_list(f.data_type()) && unit_of(f) != Some("s")).map(|f| f.name().clone()).collect()
}

impl PreprocessResample {
    fn columns_of(&self, input: &Schema) -> Vec<String> {
        if self.columns.is_empty() { trace_columns(input) } else { self.columns.clone() }
    }
}

impl StageConfig for PreprocessResample {
    const KIND: &'static str = "preprocess.resample";
    const SUMMARY: &'static str =
        "Resample trace columns to a new sampling rate: rational polyphase with a Kaiser-windowed anti-alias FIR (scipy resample_poly)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // One recording at a time, whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.output_rate_hz.is_finite() && self.output_rate_hz > 0.0) {
            issues.push(Issue::at(&["output_rate_hz"], format!("{} Hz must be a positive sampling rate", self.output_rate_hz)));
        }
        if !(1..=100_000).contains(&self.max_factor) {
            issues.push(Issue::at(&["max_factor"], format!("{} is outside 1..=100000", self.max_factor)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        let columns = self.columns_of(input);
        check_trace_columns(input, &columns, &self.columns, &mut issues);
        if !self.columns.is_empty() {
            for c in trace_columns(input).iter().filter(|c| !self.columns.contains(*c)) {
                issues.push(Issue::at(
                    &["columns"],
                    format!("`{c}` is a trace too; list it, or drop it before this stage (transform.select), since `{}` will no longer be its rate", self.sampling_rate_column),
                ));
            }
        }
        check_rate_column(input, &self.sampling_rate_column, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        // The rate column becomes float64 in Hz whatever it was.
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| if f.name() == &self.sampling_rate_column { field(f.name(), DataType::Float64, f.is_nullable(), Some("Hz")) } else { f.as_ref().clone() })
            .collect();
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(ResampleOp { columns: self.columns_of(&inputs[0]), cfg: self.clone(), schema: output.clone(), resampler: None })))
    }
}

struct ResampleOp {
    cfg: PreprocessResample,
    columns: Vec<String>,
    schema: SchemaRef,
    resampler: Option<(f64, Resampler)>,
}

impl TransformOperator for ResampleOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let mut lists: Vec<Vec<Option<Vec<f64>>>> = self.columns.iter().map(|c| f64_list_rows(&batch, c)).collect::<Result<_>>()?;
        let padding = match self.cfg.padding {
            PadMode::Mean => Padding::Mean,
            PadMode::Median => Padding::Median,
            PadMode::Zero => Padding::Zero,
        };
        let mut keep = vec![true; n];
        let mut new_rates = vec![None; n];
        for r in 0..n {
            let result: std::result::Result<f64, String> = (|| {
                let rate = row_rate(&rows, r, &self.cfg.sampling_rate_column)?;
                if !self.resampler.as_ref().is_some_and(|(from, _)| *from == rate) {
                    let (up, down) = rational_ratio(rate, self.cfg.output_rate_hz, self.cfg.max_factor)
                        .map_err(|e| format!("`output_rate_hz` = {} Hz from {rate} Hz: {e}", self.cfg.output_rate_hz))?;
                    self.resampler = Some((rate, Resampler::new(up as usize, down as usize)));
                }
                let (_, rs) = self.resampler.as_ref().expect("set above");
                for (ci, c) in self.columns.iter().enumerate() {
                    let Some(x) = lists[ci][r].take() else { continue };
                    if let Some(i) = first_non_finite(&x) {
                        return Err(format!("`{c}` has a non-finite sample at index {i}"));
                    }
                    lists[ci][r] = Some(rs.apply(&x, padding));
                }
                Ok(rate * rs.up as f64 / rs.down as f64)
            })();
            match result {
                Ok(new_rate) => new_rates[r] = Some(new_rate),
                Err(message) => {
                    keep[r] = false;
                    out.fail(rows.labels[r].clone(), message);
                }
            }
        }
        let mut columns = take_rows(&batch, &keep)?;
        for (ci, c) in self.columns.iter().enumerate() {
            let kept: Vec<Option<Vec<f64>>> = lists[ci].iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| v.clone()).collect();
            let pos = self.schema.index_of(c)?;
            columns[pos] = write_lists(&kept, self.schema.field(pos).data_type())?;
        }
        let pos = self.schema.index_of(&self.cfg.sampling_rate_column)?;
        columns[pos] = Arc::new(new_rates.iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| *v).collect::<Float64Array>());
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// =============================================================================================
// preprocess.window
// =============================================================================================

/// Columns that place a chunk row in its sweep; a window row is a trace of its own, placed by
/// `window_start_s`, so these are not carried over (`chunk` is, as a key).
const CHUNK_TIME_COLUMNS: [&str; 3] = ["chunk_start_s", "chunk_end_s", "trace_start_s"];

/// Cuts traces into fixed windows or epochs around events, one output row per window.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessWindow {
    /// List columns to cut, all sampled at `sampling_rate_column`. Default: every numeric list
    /// column not in seconds except `events_column`. Other list columns are dropped [columns].
    #[serde(default)]
    pub columns: Vec<String>,
    /// Fixed windows: their length; the partial last window of a sweep is skipped [s].
    #[serde(default)]
    pub length_s: Option<f64>,
    /// Fixed windows: start-to-start step, from the sweep start (default `length_s`: back to
    /// back; smaller overlaps them) [s].
    #[serde(default)]
    pub step_s: Option<f64>,
    /// Epochs: a column of event times from the sweep start (s): a number per row (e.g. a
    /// stimulus onset) or a list per row (e.g. spike times); one epoch per event [column].
    #[serde(default)]
    pub events_column: Option<String>,
    /// Epochs: time kept before each event [s].
    #[serde(default)]
    pub pre_s: f64,
    /// Epochs: time kept after each event; epochs running off the sweep are skipped [s].
    #[serde(default)]
    pub post_s: f64,
    /// Column with each row's sampling rate [column].
    #[serde(default = "d_rate")]
    pub sampling_rate_column: String,
}

impl PreprocessWindow {
    fn columns_of(&self, input: &Schema) -> Vec<String> {
        if !self.columns.is_empty() {
            return self.columns.clone();
        }
        trace_columns(input).into_iter().filter(|c| Some(c) != self.events_column.as_ref()).collect()
    }
}

impl StageConfig for PreprocessWindow {
    const KIND: &'static str = "preprocess.window";
    const SUMMARY: &'static str =
        "Cut traces into fixed windows (length, step) or epochs around event times (pre, post), one row per window with its start time and the source row's keys";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // One recording at a time, whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        let positive = |key: &str, v: f64, issues: &mut Vec<Issue>| {
            if !(v.is_finite() && v > 0.0) {
                issues.push(Issue::at(&[key], format!("{v} s must be a positive duration")));
            }
        };
        match (self.length_s, &self.events_column) {
            (Some(_), Some(_)) => issues.push(Issue::at(&["events_column"], "give either `length_s` (fixed windows) or `events_column` (epochs), not both")),
            (None, None) => issues.push(Issue::at(&[], "give `length_s` (fixed windows) or `events_column` with `pre_s`/`post_s` (epochs)")),
            (Some(l), None) => {
                positive("length_s", l, &mut issues);
                if let Some(s) = self.step_s {
                    positive("step_s", s, &mut issues);
                }
                for (key, v) in [("pre_s", self.pre_s), ("post_s", self.post_s)] {
                    if v != 0.0 {
                        issues.push(Issue::at(&[key], "only used with `events_column` (epochs)"));
                    }
                }
            }
            (None, Some(_)) => {
                if self.step_s.is_some() {
                    issues.push(Issue::at(&["step_s"], "only used with `length_s` (fixed windows)"));
                }
                for (key, v) in [("pre_s", self.pre_s), ("post_s", self.post_s)] {
                    if !(v.is_finite() && v >= 0.0) {
                        issues.push(Issue::at(&[key], format!("{v} s must be a duration >= 0")));
                    }
                }
                if self.pre_s + self.post_s <= 0.0 {
                    issues.push(Issue::at(&["post_s"], "the epoch is empty: give `pre_s` and/or `post_s` > 0"));
                }
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        let columns = self.columns_of(input);
        check_trace_columns(input, &columns, &self.columns, &mut issues);
        check_rate_column(input, &self.sampling_rate_column, &mut issues);
        if let Some(e) = &self.events_column {
            match input.field_with_name(e) {
                Err(_) => issues.push(Issue::at(&["events_column"], format!("the input has no column `{e}`; it has: {}", column_list(input)))),
                Ok(f) if !(is_numeric(f.data_type()) || is_numeric_list(f.data_type())) => issues.push(Issue::at(
                    &["events_column"],
                    format!("`{e}` is {}; event times (a number or a list of numbers, s) are needed", type_name(f.data_type())),
                )),
                Ok(f) if unit_of(f).is_some_and(|u| u != "s") => {
                    issues.push(Issue::at(&["events_column"], format!("`{e}` is in {}, but s is needed", unit_of(f).unwrap_or(""))))
                }
                _ => {}
            }
        }
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| if is_numeric_list(f.data_type()) || matches!(f.data_type(), DataType::FixedSizeList(..)) { columns.contains(f.name()) } else { !CHUNK_TIME_COLUMNS.contains(&f.name().as_str()) })
            .map(|f| f.as_ref().clone())
            .collect();
        let mut added = vec![field("window", DataType::Int64, false, None), field("window_start_s", DataType::Float64, false, Some("s"))];
        if self.events_column.is_some() {
            added.push(field("event_s", DataType::Float64, false, Some("s")));
        }
        for a in added {
            if input.field_with_name(a.name()).is_ok() {
                issues.push(Issue::inputs(format!("the input already has a column `{}`, which this stage adds", a.name())));
            }
            fields.push(a);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let chunked = crate::stages::ingest::CHUNK_COLUMNS.iter().all(|c| inputs[0].field_with_name(c).is_ok());
        Ok(Operator::Transform(Box::new(WindowOp { columns: self.columns_of(&inputs[0]), cfg: self.clone(), schema: output.clone(), chunked })))
    }
}

struct WindowOp {
    cfg: PreprocessWindow,
    columns: Vec<String>,
    schema: SchemaRef,
    chunked: bool,
}

impl TransformOperator for WindowOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let lists: Vec<LargeListArray> = self
            .columns
            .iter()
            .map(|c| {
                let a = batch.column_by_name(c).ok_or_else(|| Error::msg(format!("the batch has no column `{c}`")))?;
                let t = match a.data_type() {
                    DataType::List(f) | DataType::LargeList(f) => DataType::LargeList(f.clone()),
                    other => other.clone(),
                };
                Ok(arrow::compute::cast(a, &t)?.as_list::<i64>().clone())
            })
            .collect::<Result<_>>()?;
        let (trace_start, core_start, core_end) = if self.chunked {
            (f64_column(&batch, "trace_start_s")?, f64_column(&batch, "chunk_start_s")?, f64_column(&batch, "chunk_end_s")?)
        } else {
            (None, None, None)
        };
        let events: Option<Vec<Option<Vec<f64>>>> = match &self.cfg.events_column {
            None => None,
            Some(e) => {
                let a = batch.column_by_name(e).ok_or_else(|| Error::msg(format!("the batch has no column `{e}`")))?;
                if is_numeric_list(a.data_type()) {
                    Some(f64_list_rows(&batch, e)?)
                } else {
                    Some(f64_column(&batch, e)?.expect("present").into_iter().map(|v| v.map(|v| vec![v])).collect())
                }
            }
        };
        // (source row, window index, first sample, length, start time, event)
        let mut cuts: Vec<(usize, i64, usize, usize, f64, Option<f64>)> = Vec::new();
        let mut skipped = 0usize;
        for r in 0..n {
            let result: std::result::Result<(), String> = (|| {
                let rate = row_rate(&rows, r, &self.cfg.sampling_rate_column)?;
                let lens: Vec<Option<usize>> = lists.iter().map(|l| (!l.is_null(r)).then(|| l.value_length(r) as usize)).collect();
                let Some(samples) = lens.iter().flatten().next().copied() else { return Ok(()) };
                if let Some((i, l)) = lens.iter().enumerate().find(|(_, l)| l.is_some_and(|l| l != samples)) {
                    return Err(format!("`{}` has {} samples but `{}` has {samples}: the columns cut together must be sampled alike", self.columns[i], l.unwrap_or(0), self.columns[0]));
                }
                let get = |c: &Option<Vec<Option<f64>>>| c.as_ref().and_then(|v| v[r]);
                let frame = TraceFrame {
                    samples,
                    rate_hz: rate,
                    trace_start_s: get(&trace_start).unwrap_or(0.0),
                    core_s: match (get(&core_start), get(&core_end)) {
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => None,
                    },
                };
                let c = match (&events, self.cfg.length_s) {
                    (Some(ev), _) => match &ev[r] {
                        Some(times) => event_windows(&frame, times, self.cfg.pre_s, self.cfg.post_s),
                        None => return Ok(()),
                    },
                    (None, Some(len)) => fixed_windows(&frame, len, self.cfg.step_s.unwrap_or(len)),
                    (None, None) => unreachable!("checked at validation"),
                };
                if let Some(t) = c.lost_s.first() {
                    return Err(format!(
                        "{} window(s) of {} samples (the first at {t} s) do not fit in chunk rows whose overlap is shorter: give ingest.abf a `chunk_overlap_s` at least as long as the window",
                        c.lost_s.len(),
                        c.len
                    ));
                }
                skipped += c.skipped;
                cuts.extend(c.cuts.iter().map(|w| (r, w.index, w.start, c.len, w.start_s, w.event_s)));
                Ok(())
            })();
            if let Err(message) = result {
                out.fail(rows.labels[r].clone(), message);
                cuts.retain(|c| c.0 != r);
            }
        }
        if skipped > 0 {
            tracing::info!("{skipped} window(s) ran off the start or end of their sweep and were skipped");
        }
        let idx = UInt64Array::from_iter_values(cuts.iter().map(|c| c.0 as u64));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let name = f.name().as_str();
            if let Some(ci) = self.columns.iter().position(|c| c == name) {
                // Slices of the source rows' values, copied into one new list column.
                let list = &lists[ci];
                let mut pieces: Vec<ArrayRef> = Vec::with_capacity(cuts.len());
                let mut offsets = vec![0i64];
                for &(r, _, start, len, _, _) in &cuts {
                    pieces.push(list.value(r).slice(start, len));
                    offsets.push(offsets.last().expect("non-empty") + len as i64);
                }
                let item = match f.data_type() {
                    DataType::List(i) | DataType::LargeList(i) => i.clone(),
                    _ => unreachable!("a cut column is a list"),
                };
                let values = if pieces.is_empty() {
                    arrow::array::new_empty_array(item.data_type())
                } else {
                    arrow::compute::concat(&pieces.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?
                };
                let large = LargeListArray::try_new(item, OffsetBuffer::new(offsets.into()), values, None)?;
                columns.push(arrow::compute::cast(&large, f.data_type())?);
            } else if name == "window" {
                columns.push(Arc::new(Int64Array::from_iter_values(cuts.iter().map(|c| c.1))));
            } else if name == "window_start_s" {
                columns.push(Arc::new(Float64Array::from_iter_values(cuts.iter().map(|c| c.4))));
            } else if name == "event_s" {
                columns.push(Arc::new(Float64Array::from_iter_values(cuts.iter().map(|c| c.5.unwrap_or(f64::NAN)))));
            } else {
                let c = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("the batch has no column `{name}`")))?;
                columns.push(arrow::compute::take(c, &idx, None)?);
            }
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
