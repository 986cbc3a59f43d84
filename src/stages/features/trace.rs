//! `features.trace`: per-row summary statistics of numeric list columns (a response trace, a
//! stimulus) and, optionally, IPFX's spike-train features of an event-time list column, appended
//! to the row's scalar columns.
//!
//! Role: learning stages take scalar features. A simulated or recorded sweep carries its trace
//! as one list per row; this stage reduces each list to the numbers a regression can use (level,
//! spread, percentiles, how fast it moves, how long it stays correlated) while every scalar
//! column of the row (swept parameters, labels, stimulus kind) travels along unchanged, so the
//! next stage sees features and targets in one table without a join. List columns are dropped
//! from the output unless `keep_lists` is set (they are large and a model cannot use them).
//!
//! Statistics (each `<column>_<stat>`, in the column's unit unless said): `samples` (finite
//! samples), `mean`, `std` (ddof 0), `min`, `max`, `p05`, `p25`, `p50`, `p75`, `p95` (linear
//! interpolation between order statistics, numpy's default "linear" method), `dvdt_std` (std of
//! successive differences times the sampling rate, unit/s; needs `sampling_rate_hz`), and
//! `acf_<lag>ms` for each lag in `acf_lags_s` (Pearson autocorrelation of the trace with itself
//! shifted by round(lag·rate) samples: a fixed time lag, so traces sampled at different rates are
//! comparable). Non-finite samples are skipped by the level statistics and break the pairs of the
//! difference and autocorrelation statistics.
//!
//! `spike_times` names a list column of event times (s, e.g. `model_spike_times`); its features
//! are those of `features.sweep` (the same kernel, [`basic_spike_train_features`], IPFX's
//! `basic_spike_train_features`) inside [`start_s`, end], end = `end_s` or the length of the first
//! summarised column divided by its sampling rate: `<col>_count`, `_rate_hz`, `_latency_s`,
//! `_first_isi_s`, `_mean_isi_s`, `_median_isi_s`, `_isi_cv`, `_adapt`. Latency and ISI features
//! are null without spikes, as in IPFX. A row whose list is null gets null statistics; a row whose
//! event times are unsorted or whose window is empty fails alone (`recording_id/sweep`).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::passed_columns::{numeric_list, passed_columns, passed_fields, unit_label};
use crate::stage::columns::{as_f64_list, check_rate_column, column_list, field, row_values, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::Result;
use crate::features::spike_train::basic_spike_train_features;
use crate::features::trace::{TraceStats, trace_stats};

/// Summary statistics of list columns, and spike-train features of an event-time column, per row.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesTrace {
    /// Numeric list columns to summarise, e.g. `["response"]` [columns].
    #[serde(default)]
    pub columns: Vec<String>,
    /// Lags of the autocorrelation features, one `<column>_acf_<ms>ms` column each [s].
    #[serde(default)]
    pub acf_lags_s: Vec<f64>,
    /// Column with each row's sampling rate, needed by `dvdt_std`, the autocorrelation lags and
    /// the default spike window [column].
    #[serde(default = "d_rate")]
    pub sampling_rate_column: String,
    /// List column of event times (e.g. `model_spike_times`) whose spike-train features are added [column].
    #[serde(default)]
    pub spike_times: Option<String>,
    /// Start of the spike-train window [s].
    #[serde(default)]
    pub start_s: f64,
    /// End of the spike-train window (default: the length of the first summarised column over its sampling rate) [s].
    #[serde(default)]
    pub end_s: Option<f64>,
    /// Keep the list columns in the output (default: only scalar columns travel on) [bool].
    #[serde(default)]
    pub keep_lists: bool,
}

fn d_rate() -> String {
    "sampling_rate_hz".into()
}

type LevelStat = (&'static str, fn(&TraceStats) -> Option<f64>);
/// The level statistics of each summarised column: name suffix and accessor, in output order
/// (the percentiles are those of [`crate::features::trace::QUANTILES`]).
const LEVEL_STATS: [LevelStat; 10] = [
    ("mean", |s| s.mean),
    ("std", |s| s.std),
    ("min", |s| s.min),
    ("max", |s| s.max),
    ("p05", |s| s.quantiles[0]),
    ("p25", |s| s.quantiles[1]),
    ("p50", |s| s.quantiles[2]),
    ("p75", |s| s.quantiles[3]),
    ("p95", |s| s.quantiles[4]),
    ("dvdt_std", |s| s.dvdt_std),
];
const SPIKE_STATS: [(&str, Option<&str>); 8] = [
    ("count", None),
    ("rate_hz", Some("Hz")),
    ("latency_s", Some("s")),
    ("first_isi_s", Some("s")),
    ("mean_isi_s", Some("s")),
    ("median_isi_s", Some("s")),
    ("isi_cv", Some("1")),
    ("adapt", Some("1")),
];

fn lag_name(lag_s: f64) -> String {
    // 0.001 -> "1", 0.0005 -> "0.5": the lag in ms with no trailing zeros.
    let ms = lag_s * 1e3;
    let s = format!("{:.6}", ms);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl FeaturesTrace {
    /// Names and units of the added columns.
    fn added(&self, input: &Schema) -> Vec<(String, Option<String>, bool)> {
        let mut out = Vec::new();
        for c in &self.columns {
            let unit = input.field_with_name(c).ok().and_then(|f| unit_of(f).map(str::to_string));
            out.push((format!("{c}_samples"), None, true));
            for (s, _) in LEVEL_STATS {
                let u = if s == "dvdt_std" { unit.as_ref().map(|u| format!("{u}/s")) } else { unit.clone() };
                out.push((format!("{c}_{s}"), u, false));
            }
            for &l in &self.acf_lags_s {
                out.push((format!("{c}_acf_{}ms", lag_name(l)), Some("1".into()), false));
            }
        }
        if let Some(t) = &self.spike_times {
            for (s, u) in SPIKE_STATS {
                out.push((format!("{t}_{s}"), u.map(str::to_string), s == "count"));
            }
        }
        out
    }
}

impl StageConfig for FeaturesTrace {
    const KIND: &'static str = "features.trace";
    const SUMMARY: &'static str =
        "Per-row summary statistics of list columns (mean, std, percentiles, dV/dt spread, autocorrelation) and spike-train features of an event-time column";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "columns = [\"response\"]";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.columns.is_empty() && self.spike_times.is_none() {
            issues.push(Issue::at(&["columns"], "give list columns to summarise, `spike_times`, or both"));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.columns.iter().enumerate() {
            if !seen.insert(c) {
                issues.push(Issue::at_index("columns", i, format!("`{c}` is listed twice")));
            }
        }
        for (i, &l) in self.acf_lags_s.iter().enumerate() {
            if !(l.is_finite() && l > 0.0) {
                issues.push(Issue::at_index("acf_lags_s", i, format!("a lag must be > 0 s, got {l}")));
            }
        }
        if !self.start_s.is_finite() {
            issues.push(Issue::at(&["start_s"], "must be finite"));
        }
        if let Some(e) = self.end_s
            && !(e.is_finite() && e > self.start_s)
        {
            issues.push(Issue::at(&["end_s"], format!("must be after start_s ({} s), got {e}", self.start_s)));
        }
        if self.spike_times.is_some() && self.end_s.is_none() && self.columns.is_empty() {
            issues.push(Issue::at(&["end_s"], "give `end_s`, or a summarised column whose length sets the window"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::at_index("columns", i, format!("the input has no column `{c}`; it has: {}", column_list(input)))),
                Ok(f) if !numeric_list(f.data_type()) => issues.push(Issue::at_index(
                    "columns",
                    i,
                    format!("`{c}` is {}; a numeric list column is needed", crate::stage::columns::type_name(f.data_type())),
                )),
                _ => {}
            }
        }
        if let Some(t) = &self.spike_times {
            match input.field_with_name(t) {
                Err(_) => issues.push(Issue::at(&["spike_times"], format!("the input has no column `{t}`; it has: {}", column_list(input)))),
                Ok(f) if !numeric_list(f.data_type()) => issues.push(Issue::at(
                    &["spike_times"],
                    format!("`{t}` is {}; a list of event times is needed", crate::stage::columns::type_name(f.data_type())),
                )),
                Ok(f) if unit_of(f).is_some_and(|u| u != "s") => {
                    issues.push(Issue::at(&["spike_times"], format!("`{t}` is in {}, but s is needed", unit_of(f).unwrap_or(""))))
                }
                _ => {}
            }
        }
        if !self.columns.is_empty() {
            check_rate_column(input, &self.sampling_rate_column, &mut issues);
        }
        let mut fields = passed_fields(input, self.keep_lists);
        let mut names: BTreeSet<String> = fields.iter().map(|f| f.name().clone()).collect();
        for (name, unit, is_int) in self.added(input) {
            if !names.insert(name.clone()) {
                issues.push(Issue::inputs(format!("the input already has a column `{name}`, which this stage would add")));
            }
            fields.push(field(&name, if is_int { DataType::Int64 } else { DataType::Float64 }, true, unit.as_deref()));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(TraceOp { cfg: self.clone(), schema: output.clone() })))
    }
}

struct TraceOp {
    cfg: FeaturesTrace,
    schema: SchemaRef,
}

impl TransformOperator for TraceOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let rates: Option<Vec<Option<f64>>> = match batch.column_by_name(&self.cfg.sampling_rate_column) {
            Some(c) => Some(arrow::compute::cast(c, &DataType::Float64)?.as_primitive::<Float64Type>().iter().collect()),
            None => None,
        };
        let rate_of = |r: usize| rates.as_ref().and_then(|v| v[r]);
        // Level statistics, column by column, rows in parallel.
        let mut stats: Vec<Vec<Option<TraceStats>>> = Vec::new();
        let mut lengths: Vec<Option<usize>> = vec![None; n];
        for (ci, c) in self.cfg.columns.iter().enumerate() {
            let list = as_f64_list(&batch, c)?;
            let col: Vec<Option<TraceStats>> = (0..n)
                .into_par_iter()
                .map(|r| row_values(&list, r).map(|v| trace_stats(&v, rate_of(r), &self.cfg.acf_lags_s)))
                .collect();
            if ci == 0 {
                for (r, l) in lengths.iter_mut().enumerate() {
                    *l = (!list.is_null(r)).then(|| list.value_length(r) as usize);
                }
            }
            stats.push(col);
        }
        // Spike-train features; a row that cannot be analysed fails alone.
        let mut keep = vec![true; n];
        let mut trains = vec![None; n];
        if let Some(t) = &self.cfg.spike_times {
            let list = as_f64_list(&batch, t)?;
            for r in 0..n {
                let Some(times) = row_values(&list, r) else { continue };
                let end = match self.cfg.end_s {
                    Some(e) => Some(e),
                    None => match (lengths[r], rate_of(r)) {
                        (Some(len), Some(rate)) if rate > 0.0 => Some(len as f64 / rate),
                        _ => None,
                    },
                };
                let Some(end) = end else {
                    keep[r] = false;
                    out.fail(unit_label(&batch, r), format!("`{t}`: no window end (set `end_s`, or the trace and its sampling rate are missing)"));
                    continue;
                };
                match basic_spike_train_features(&times, self.cfg.start_s, end) {
                    Ok(f) => trains[r] = Some(f),
                    Err(e) => {
                        keep[r] = false;
                        out.fail(unit_label(&batch, r), format!("`{t}`: {e}"));
                    }
                }
            }
        }
        let rows: Vec<usize> = (0..n).filter(|&r| keep[r]).collect();
        let mut columns = passed_columns(&batch, &rows, self.cfg.keep_lists)?;
        let f64s = |f: &dyn Fn(usize) -> Option<f64>| -> ArrayRef { Arc::new(rows.iter().map(|&r| f(r)).collect::<Float64Array>()) };
        for col in &stats {
            columns.push(Arc::new(rows.iter().map(|&r| col[r].as_ref().map(|s| s.samples as i64)).collect::<Int64Array>()));
            for (_, get) in LEVEL_STATS {
                columns.push(f64s(&|r| col[r].as_ref().and_then(get)));
            }
            for k in 0..self.cfg.acf_lags_s.len() {
                columns.push(f64s(&|r| col[r].as_ref().and_then(|s| s.acf[k])));
            }
        }
        if self.cfg.spike_times.is_some() {
            columns.push(Arc::new(rows.iter().map(|&r| trains[r].as_ref().map(|f| f.spike_count as i64)).collect::<Int64Array>()));
            columns.push(f64s(&|r| trains[r].as_ref().map(|f| f.avg_rate_hz)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.latency_s)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.first_isi_s)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.mean_isi_s)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.median_isi_s)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.isi_cv)));
            columns.push(f64s(&|r| trains[r].as_ref().and_then(|f| f.adapt)));
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_names_are_milliseconds_without_trailing_zeros() {
        assert_eq!(lag_name(0.001), "1");
        assert_eq!(lag_name(0.0005), "0.5");
    }
}
