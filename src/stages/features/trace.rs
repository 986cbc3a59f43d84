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

const LEVEL_STATS: [&str; 10] = ["mean", "std", "min", "max", "p05", "p25", "p50", "p75", "p95", "dvdt_std"];
const QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];
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
            for s in LEVEL_STATS {
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

/// The statistics of one trace: level stats, then one autocorrelation per lag.
#[derive(Debug, Clone, PartialEq)]
struct TraceStats {
    samples: i64,
    level: [Option<f64>; LEVEL_STATS.len()],
    acf: Vec<Option<f64>>,
}

/// Linear-interpolated quantile of sorted values (numpy `quantile(method="linear")`).
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Statistics of one trace sampled at `rate_hz` (None when the rate is unknown or not positive).
fn trace_stats(x: &[f64], rate_hz: Option<f64>, lags_s: &[f64]) -> TraceStats {
    let mut finite: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    let n = finite.len();
    let mut level = [None; LEVEL_STATS.len()];
    if n > 0 {
        let mean = finite.iter().sum::<f64>() / n as f64;
        let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        finite.sort_unstable_by(f64::total_cmp);
        level[0] = Some(mean);
        level[1] = Some(var.sqrt());
        level[2] = Some(finite[0]);
        level[3] = Some(finite[n - 1]);
        for (k, &q) in QUANTILES.iter().enumerate() {
            level[4 + k] = Some(quantile_sorted(&finite, q));
        }
    }
    let rate = rate_hz.filter(|r| r.is_finite() && *r > 0.0);
    if let Some(r) = rate {
        let d: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).filter(|v| v.is_finite()).collect();
        if !d.is_empty() {
            let m = d.iter().sum::<f64>() / d.len() as f64;
            let var = d.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / d.len() as f64;
            level[9] = Some(var.sqrt() * r);
        }
    }
    let acf = lags_s
        .iter()
        .map(|&lag| {
            let r = rate?;
            let k = (lag * r).round() as usize;
            if k == 0 || k >= x.len() {
                return None;
            }
            let pairs: Vec<(f64, f64)> = x.iter().zip(&x[k..]).map(|(&a, &b)| (a, b)).filter(|(a, b)| a.is_finite() && b.is_finite()).collect();
            if pairs.len() < 2 {
                return None;
            }
            let m = pairs.len() as f64;
            let (ma, mb) = (pairs.iter().map(|p| p.0).sum::<f64>() / m, pairs.iter().map(|p| p.1).sum::<f64>() / m);
            let cov: f64 = pairs.iter().map(|(a, b)| (a - ma) * (b - mb)).sum();
            let va: f64 = pairs.iter().map(|(a, _)| (a - ma) * (a - ma)).sum();
            let vb: f64 = pairs.iter().map(|(_, b)| (b - mb) * (b - mb)).sum();
            // A constant trace has no defined correlation.
            (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
        })
        .collect();
    TraceStats { samples: n as i64, level, acf }
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
            columns.push(Arc::new(rows.iter().map(|&r| col[r].as_ref().map(|s| s.samples)).collect::<Int64Array>()));
            for k in 0..LEVEL_STATS.len() {
                columns.push(f64s(&|r| col[r].as_ref().and_then(|s| s.level[k])));
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
    fn statistics_match_numpy() {
        // numpy: x = [3, 1, 4, 1, 5, 9, 2, 6]; mean 3.875, std 2.5708704752, percentile(x, [5, 25,
        // 50, 75, 95]) = [1.0, 1.75, 3.5, 5.25, 7.95]; np.diff(x).std() * 1000 = 4100.77145554495
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let s = trace_stats(&x, Some(1000.0), &[0.001]);
        let l: Vec<f64> = s.level.iter().map(|v| v.unwrap()).collect();
        let want = [3.875, 2.570_870_475_150_391_7, 1.0, 9.0, 1.0, 1.75, 3.5, 5.25, 7.95];
        for (k, w) in want.iter().enumerate() {
            assert!((l[k] - w).abs() < 1e-9, "{}: {} vs {w}", LEVEL_STATS[k], l[k]);
        }
        assert!((l[9] - 4_100.771_455_544_95).abs() < 1e-6, "{}", l[9]);
        // np.corrcoef(x[:-1], x[1:])[0, 1] = -0.1806827218347102
        let a = s.acf[0].unwrap();
        assert!((a - (-0.180_682_721_834_710_2)).abs() < 1e-12, "{a}");
        assert_eq!(s.samples, 8);
        // non-finite samples are skipped; a constant trace has no autocorrelation
        let s = trace_stats(&[1.0, f64::NAN, 1.0, 1.0], Some(1000.0), &[0.001, 1.0]);
        assert_eq!(s.samples, 3);
        assert_eq!(s.level[1], Some(0.0));
        assert_eq!(s.acf, vec![None, None]);
        assert_eq!(lag_name(0.001), "1");
        assert_eq!(lag_name(0.0005), "0.5");
    }
}
