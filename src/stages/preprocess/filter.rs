//! `preprocess.filter`: Butterworth low-, high- or band-pass filtering of the trace columns of the
//! sweeps table ([`butter_sos`], applied zero-phase or causally), in f64, written back in the
//! column's own type and unit.
//!
//! Traces are what `ingest.abf` / `ingest.nwb` emit (DESIGN.md "sweeps"): one row per sweep,
//! `response` (mV) and `stimulus` (pA) as `large_list<float32>`, sampled at the row's
//! `sampling_rate_hz`. The sampling rate is per row, so a cutoff above a recording's Nyquist
//! frequency is found when that recording arrives: the row fails alone (`recording_id/sweep`),
//! with the option, its value, the Nyquist frequency and the rate.
//!
//! Chunked sweeps (`ingest.abf` with `chunk_s`: rows of one sweep carrying `chunk`,
//! `chunk_start_s`, `chunk_end_s`, `trace_start_s`, each trace widened by `chunk_overlap_s` on both
//! sides):
//! - zero-phase: each row (core plus overlap) is filtered on its own, so the core differs from
//!   filtering the whole sweep only by the edge transient that decayed over the overlap. For the
//!   2 kHz low-pass of the example pipeline and 0.1 s of overlap that is below float32 rounding
//!   (tests/preprocess_signal.rs measures it); a high-pass at f Hz has transients lasting a few
//!   1/f, so give it an overlap of several 1/f or do not chunk.
//! - causal: exact. The filter state is carried from one chunk row to the next (the rows of a
//!   sweep arrive in order from one source), the overlap before a chunk's core is taken from the
//!   previous row's output, so the rows equal one pass over the whole sweep.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lists::check_list_columns;
use super::trace_rows::{Rows, default_rate_column, each_row, f64_column, first_non_finite, with_lists};
use crate::error::{Error, Result};
use crate::preprocess::butterworth::{Band, Sos, SosState, butter_sos};
use crate::stage::columns::{check_rate_column, f64_list_rows};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::ingest::CHUNK_COLUMNS;

fn d_response() -> Vec<String> {
    vec!["response".into()]
}
fn d_order() -> usize {
    4
}

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
    /// Butterworth order, 1..=16; a band-pass of order N has 2N poles (scipy's convention) [1].
    #[serde(default = "d_order")]
    pub order: usize,
    /// "zero_phase" (forward-backward, no delay) or "causal" (one forward pass) [mode].
    #[serde(default)]
    pub mode: FilterMode,
    /// Column with each row's sampling rate [column].
    #[serde(default = "default_rate_column")]
    pub sampling_rate_column: String,
}

impl PreprocessFilter {
    /// The design for a recording sampled at `rate_hz`, or the message naming the option that
    /// does not fit its Nyquist frequency.
    fn design(&self, rate_hz: f64) -> Result<Sos> {
        let nyquist = rate_hz / 2.0;
        let wn = |key: &str, hz: f64| {
            if hz < nyquist {
                Ok(hz / nyquist)
            } else {
                Err(Error::msg(format!(
                    "`{key}` = {hz} Hz is not below the Nyquist frequency {nyquist} Hz of this recording (sampled at {rate_hz} Hz)"
                )))
            }
        };
        let band = match (self.highpass_hz, self.lowpass_hz) {
            (Some(h), Some(l)) => Band::Bandpass(wn("highpass_hz", h)?, wn("lowpass_hz", l)?),
            (None, Some(l)) => Band::Lowpass(wn("lowpass_hz", l)?),
            (Some(h), None) => Band::Highpass(wn("highpass_hz", h)?),
            (None, None) => return Err(Error::msg("no cutoff")),
        };
        butter_sos(self.order, band).map_err(|e| Error::msg(e.to_string()))
    }
}

impl StageConfig for PreprocessFilter {
    const KIND: &'static str = "preprocess.filter";
    const SUMMARY: &'static str =
        "Butterworth low-, high- or band-pass filter (second-order sections) of trace columns, zero-phase (scipy sosfiltfilt) or causal";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "lowpass_hz = 2000.0";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        match self.mode {
            // Each row (a sweep, or a chunk with its overlap) is filtered on its own.
            FilterMode::ZeroPhase => Partitioning::RowWise,
            // A chunked sweep carries the filter state from one chunk row to the next, so a
            // recording's rows must stay together and in order.
            FilterMode::Causal => Partitioning::per_unit("recording_id"),
        }
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
        let chunked = CHUNK_COLUMNS.iter().all(|c| inputs[0].field_with_name(c).is_ok());
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

/// Each row's chunk number and the sweep time of its first sample (chunked sweeps).
struct ChunkInfo {
    chunks: Vec<Option<i64>>,
    starts: Vec<Option<f64>>,
}

impl FilterOp {
    fn sos(&mut self, rate: f64) -> Result<Sos> {
        if let Some((r, s)) = &self.design
            && *r == rate
        {
            return Ok(s.clone());
        }
        let s = self.cfg.design(rate)?;
        self.design = Some((rate, s.clone()));
        Ok(s)
    }

    fn chunk_info(&self, batch: &RecordBatch) -> Result<Option<ChunkInfo>> {
        if !self.chunked {
            return Ok(None);
        }
        let chunks = arrow::compute::cast(batch.column_by_name("chunk").expect("checked at build"), &DataType::Int64)?;
        let chunks = chunks.as_primitive::<Int64Type>().iter().collect();
        let starts = f64_column(batch, "trace_start_s")?.expect("checked at build");
        Ok(Some(ChunkInfo { chunks, starts }))
    }

    /// Filters row `r` of every column in `lists` in place.
    fn filter_row(&mut self, r: usize, rows: &Rows, lists: &mut [Vec<Option<Vec<f64>>>], chunk_info: Option<&ChunkInfo>) -> Result<()> {
        let rate = rows.rate(r)?;
        let sos = self.sos(rate)?;
        for (ci, c) in self.cfg.columns.iter().enumerate() {
            if let Some(i) = lists[ci][r].as_deref().and_then(first_non_finite) {
                return Err(Error::msg(format!("`{c}` has a non-finite sample at index {i}; the filter would spread it over the whole trace")));
            }
        }
        match (self.cfg.mode, chunk_info) {
            (FilterMode::Causal, Some(info)) if lists.iter().all(|l| l[r].is_some()) => {
                let chunk = info.chunks[r].ok_or_else(|| Error::msg("`chunk` is null"))?;
                let first = (info.starts[r].ok_or_else(|| Error::msg("`trace_start_s` is null"))? * rate).round() as i64;
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
                        FilterMode::ZeroPhase => sos.filtfilt(&x).map_err(|e| Error::msg(format!("`{c}`: {e}")))?,
                        FilterMode::Causal => sos.filter_causal(&x).0,
                    };
                    lists[ci][r] = Some(y);
                }
            }
        }
        Ok(())
    }

    /// Causal filtering of one chunk row, continuing the sweep's previous row. `first` is the
    /// sweep sample of the row's first sample.
    fn causal_chunk(&mut self, sos: &Sos, key: String, chunk: i64, rate: f64, first: i64, traces: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        let continues = self.carry.as_ref().is_some_and(|c| c.key == key && c.next_chunk == chunk && c.rate_hz == rate);
        if !continues {
            if chunk != 0 {
                return Err(Error::msg(format!(
                    "chunk {chunk} arrived without chunk {} of the same sweep before it: causal filtering of a chunked sweep needs its chunks in order",
                    chunk - 1
                )));
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
                return Err(Error::msg(format!(
                    "chunk {chunk} starts at sample {first}, outside what the previous chunk covered ({prev_start}..{done_to}): the chunks of a sweep must overlap or touch"
                )));
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
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let mut lists: Vec<Vec<Option<Vec<f64>>>> = self.cfg.columns.iter().map(|c| f64_list_rows(&batch, c)).collect::<Result<_>>()?;
        let chunk_info = self.chunk_info(&batch)?;
        let keep = each_row(&rows, out, |r| self.filter_row(r, &rows, &mut lists, chunk_info.as_ref()));
        let columns = with_lists(&batch, &self.schema, &keep, &self.cfg.columns, &lists)?;
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
