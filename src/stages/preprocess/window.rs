//! `preprocess.window`: the trace columns of the sweeps table cut into fixed windows or epochs
//! around event times ([`fixed_windows`], [`event_windows`]), one output row per window with its
//! number, start time, event and the source row's keys.
//!
//! Chunked sweeps (`ingest.abf` with `chunk_s`): each window is cut once, by the row whose core
//! holds its start (fixed) or its event (epochs); a window longer than the overlap can straddle a
//! chunk edge and not fit: the recording then fails, naming the window and the overlap needed,
//! rather than silently missing windows (with `chunk_overlap_s = 0` this cannot be detected: keep
//! an overlap at least as long as the windows).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeListArray, RecordBatch, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lists::{check_trace_columns, is_trace_list, trace_columns};
use super::trace_rows::{Rows, default_rate_column, each_row, f64_column};
use crate::error::{Error, Result};
use crate::preprocess::window::{Cuts, TraceFrame, event_windows, fixed_windows};
use crate::stage::columns::{check_rate_column, column_list, f64_list_rows, field, is_numeric, type_name, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::ingest::CHUNK_COLUMNS;


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
    #[serde(default = "default_rate_column")]
    pub sampling_rate_column: String,
}

impl PreprocessWindow {
    fn columns_of(&self, input: &Schema) -> Vec<String> {
        if !self.columns.is_empty() {
            return self.columns.clone();
        }
        trace_columns(input).into_iter().filter(|c| Some(c) != self.events_column.as_ref()).collect()
    }

    /// `events_column`, if given, must hold event times: a number or a list of numbers, in s.
    fn check_events_column(&self, input: &Schema, issues: &mut Vec<Issue>) {
        let Some(e) = &self.events_column else { return };
        match input.field_with_name(e) {
            Err(_) => issues.push(Issue::at(&["events_column"], format!("the input has no column `{e}`; it has: {}", column_list(input)))),
            Ok(f) if !(is_numeric(f.data_type()) || is_trace_list(f.data_type())) => issues.push(Issue::at(
                &["events_column"],
                format!("`{e}` is {}; event times (a number or a list of numbers, s) are needed", type_name(f.data_type())),
            )),
            Ok(f) if unit_of(f).is_some_and(|u| u != "s") => {
                issues.push(Issue::at(&["events_column"], format!("`{e}` is in {}, but s is needed", unit_of(f).unwrap_or(""))))
            }
            _ => {}
        }
    }
}

impl StageConfig for PreprocessWindow {
    const KIND: &'static str = "preprocess.window";
    const SUMMARY: &'static str =
        "Cut traces into fixed windows (length, step) or epochs around event times (pre, post), one row per window with its start time and the source row's keys";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "length_s = 0.5";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Each window is cut from one row, the one whose core holds it (see the module docs).
        Partitioning::RowWise
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
        self.check_events_column(input, &mut issues);
        // The cut list columns and the keys; other list columns and the chunk times are dropped.
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| {
                if is_trace_list(f.data_type()) || matches!(f.data_type(), DataType::FixedSizeList(..)) {
                    columns.contains(f.name())
                } else {
                    !CHUNK_TIME_COLUMNS.contains(&f.name().as_str())
                }
            })
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
        let chunked = CHUNK_COLUMNS.iter().all(|c| inputs[0].field_with_name(c).is_ok());
        Ok(Operator::Transform(Box::new(WindowOp { columns: self.columns_of(&inputs[0]), cfg: self.clone(), schema: output.clone(), chunked })))
    }
}

struct WindowOp {
    cfg: PreprocessWindow,
    columns: Vec<String>,
    schema: SchemaRef,
    chunked: bool,
}

/// Where each row's trace lies in its sweep: the chunk columns, if the sweeps are chunked.
struct Frames {
    trace_start: Option<Vec<Option<f64>>>,
    core_start: Option<Vec<Option<f64>>>,
    core_end: Option<Vec<Option<f64>>>,
}

impl Frames {
    fn of(batch: &RecordBatch, chunked: bool) -> Result<Frames> {
        if !chunked {
            return Ok(Frames { trace_start: None, core_start: None, core_end: None });
        }
        Ok(Frames {
            trace_start: f64_column(batch, "trace_start_s")?,
            core_start: f64_column(batch, "chunk_start_s")?,
            core_end: f64_column(batch, "chunk_end_s")?,
        })
    }

    fn frame(&self, r: usize, samples: usize, rate_hz: f64) -> TraceFrame {
        let get = |c: &Option<Vec<Option<f64>>>| c.as_ref().and_then(|v| v[r]);
        TraceFrame {
            samples,
            rate_hz,
            trace_start_s: get(&self.trace_start).unwrap_or(0.0),
            core_s: match (get(&self.core_start), get(&self.core_end)) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            },
        }
    }
}

/// One window to cut: from source row `row`, `len` samples from `start`.
struct RowCut {
    row: usize,
    index: i64,
    start: usize,
    len: usize,
    start_s: f64,
    event_s: Option<f64>,
}

impl WindowOp {
    /// The cut columns of `batch`, as large lists of their own item type.
    fn read_lists(&self, batch: &RecordBatch) -> Result<Vec<LargeListArray>> {
        self.columns
            .iter()
            .map(|c| {
                let a = batch.column_by_name(c).ok_or_else(|| Error::msg(format!("the batch has no column `{c}`")))?;
                let t = match a.data_type() {
                    DataType::List(f) | DataType::LargeList(f) => DataType::LargeList(f.clone()),
                    other => other.clone(),
                };
                Ok(arrow::compute::cast(a, &t)?.as_list::<i64>().clone())
            })
            .collect()
    }

    /// Each row's event times (epochs): a list column as is, a number as a one-event list.
    fn read_events(&self, batch: &RecordBatch) -> Result<Option<Vec<Option<Vec<f64>>>>> {
        let Some(e) = &self.cfg.events_column else { return Ok(None) };
        let a = batch.column_by_name(e).ok_or_else(|| Error::msg(format!("the batch has no column `{e}`")))?;
        if is_trace_list(a.data_type()) {
            Ok(Some(f64_list_rows(batch, e)?))
        } else {
            Ok(Some(f64_column(batch, e)?.expect("present").into_iter().map(|v| v.map(|v| vec![v])).collect()))
        }
    }

    /// The windows of row `r` (`None`: the row has no trace or no events), or why they cannot be
    /// cut: the columns differ in length, or a window does not fit in the chunk overlap.
    fn cut_row(&self, r: usize, rows: &Rows, lists: &[LargeListArray], frames: &Frames, events: Option<&[Option<Vec<f64>>]>) -> Result<Option<Cuts>> {
        let rate = rows.rate(r)?;
        let lens: Vec<Option<usize>> = lists.iter().map(|l| (!l.is_null(r)).then(|| l.value_length(r) as usize)).collect();
        let Some(samples) = lens.iter().flatten().next().copied() else { return Ok(None) };
        if let Some((i, l)) = lens.iter().enumerate().find(|(_, l)| l.is_some_and(|l| l != samples)) {
            return Err(Error::msg(format!(
                "`{}` has {} samples but `{}` has {samples}: the columns cut together must be sampled alike",
                self.columns[i],
                l.unwrap_or(0),
                self.columns[0]
            )));
        }
        let frame = frames.frame(r, samples, rate);
        let c = match (events, self.cfg.length_s) {
            (Some(ev), _) => match &ev[r] {
                Some(times) => event_windows(&frame, times, self.cfg.pre_s, self.cfg.post_s),
                None => return Ok(None),
            },
            (None, Some(len)) => fixed_windows(&frame, len, self.cfg.step_s.unwrap_or(len)),
            (None, None) => unreachable!("checked at validation"),
        };
        if let Some(t) = c.lost_s.first() {
            return Err(Error::msg(format!(
                "{} window(s) of {} samples (the first at {t} s) do not fit in chunk rows whose overlap is shorter: give ingest.abf a `chunk_overlap_s` at least as long as the window",
                c.lost_s.len(),
                c.len
            )));
        }
        Ok(Some(c))
    }

    /// The output columns in the declared schema's order: the cut slices of the list columns,
    /// the window keys, and the other columns of each window's source row.
    fn cut_columns(&self, batch: &RecordBatch, lists: &[LargeListArray], cuts: &[RowCut]) -> Result<Vec<ArrayRef>> {
        let idx = UInt64Array::from_iter_values(cuts.iter().map(|c| c.row as u64));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let name = f.name().as_str();
            if let Some(ci) = self.columns.iter().position(|c| c == name) {
                columns.push(slices(&lists[ci], cuts, f.data_type())?);
            } else if name == "window" {
                columns.push(Arc::new(Int64Array::from_iter_values(cuts.iter().map(|c| c.index))));
            } else if name == "window_start_s" {
                columns.push(Arc::new(Float64Array::from_iter_values(cuts.iter().map(|c| c.start_s))));
            } else if name == "event_s" {
                columns.push(Arc::new(Float64Array::from_iter_values(cuts.iter().map(|c| c.event_s.unwrap_or(f64::NAN)))));
            } else {
                let c = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("the batch has no column `{name}`")))?;
                columns.push(arrow::compute::take(c, &idx, None)?);
            }
        }
        Ok(columns)
    }
}

/// The windows' slices of the source rows' values, copied into one new list column of type `like`.
fn slices(list: &LargeListArray, cuts: &[RowCut], like: &DataType) -> Result<ArrayRef> {
    let mut pieces: Vec<ArrayRef> = Vec::with_capacity(cuts.len());
    let mut offsets = vec![0i64];
    for c in cuts {
        pieces.push(list.value(c.row).slice(c.start, c.len));
        offsets.push(offsets.last().expect("non-empty") + c.len as i64);
    }
    let item = match like {
        DataType::List(i) | DataType::LargeList(i) => i.clone(),
        _ => unreachable!("a cut column is a list"),
    };
    let values = if pieces.is_empty() {
        arrow::array::new_empty_array(item.data_type())
    } else {
        arrow::compute::concat(&pieces.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?
    };
    let large = LargeListArray::try_new(item, OffsetBuffer::new(offsets.into()), values, None)?;
    Ok(arrow::compute::cast(&large, like)?)
}

impl TransformOperator for WindowOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let rows = Rows::of(&batch, &self.cfg.sampling_rate_column)?;
        let lists = self.read_lists(&batch)?;
        let frames = Frames::of(&batch, self.chunked)?;
        let events = self.read_events(&batch)?;
        let mut cuts: Vec<RowCut> = Vec::new();
        let mut skipped = 0usize;
        each_row(&rows, out, |r| {
            if let Some(c) = self.cut_row(r, &rows, &lists, &frames, events.as_deref())? {
                skipped += c.skipped;
                cuts.extend(c.cuts.iter().map(|w| RowCut { row: r, index: w.index, start: w.start, len: c.len, start_s: w.start_s, event_s: w.event_s }));
            }
            Ok(())
        });
        if skipped > 0 {
            tracing::info!("{skipped} window(s) ran off the start or end of their sweep and were skipped");
        }
        let columns = self.cut_columns(&batch, &lists, &cuts)?;
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
