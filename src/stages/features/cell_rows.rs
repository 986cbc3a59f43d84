//! What the per-cell stages (`features.cell`, `features.subthreshold`) share: their common
//! options (declared once by `cell_config!`), the gathering of the sweeps table's rows into cells,
//! and one cell's sweeps as f64 traces on one time base with its stimulus window.
//!
//! Both stages need every sweep of a cell before they can say anything about one: IPFX analyses
//! all sweeps of a cell over one stimulus window, and the cell summary selects sweeps (rheobase,
//! hero, the hyperpolarizing sweeps for Ri and τ). So `process` only gathers the input batches (the
//! columns these stages read, [`Gathered`]), and `finish` groups rows by the cell column (default
//! `recording_id`, one ABF file per cell), orders them by `sweep` ([`CellData`]) and computes the
//! cells in parallel (rayon).
//!
//! The stimulus window is found from the command, as IPFX's `get_stim_characteristics` on a
//! single-step sweep ([`first_step`]): the first epoch that departs from the holding current.
//! One window per cell, as in IPFX: the window most sweeps of the cell agree on (ties: the one
//! of the lowest sweep number). A sweep whose first epoch is a 0 pA step does not depart there,
//! so its own first step is a later epoch; taking the majority keeps such sweeps from moving the
//! window. `start_s`/`end_s` set the window explicitly instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type, Schema};

use crate::error::{Error, Result};
use crate::features::spikes::Timebase;
use crate::features::subthreshold::{StimulusWindow, SubthresholdError, SubthresholdParams, SweepTrace, first_step};
use crate::stage::columns::{is_numeric, is_string, require};
use crate::stage::{Emitter, Issue};

fn sub_default() -> SubthresholdParams {
    SubthresholdParams::default()
}
pub(crate) fn d_cell_column() -> String {
    "recording_id".into()
}
pub(crate) fn d_baseline_interval() -> f64 {
    sub_default().baseline_interval_s
}
pub(crate) fn d_sag_peak_width() -> f64 {
    sub_default().sag_peak_width_s
}
pub(crate) fn d_sag_baseline_interval() -> f64 {
    sub_default().sag_baseline_interval_s
}
pub(crate) fn d_tau_frac() -> f64 {
    sub_default().tau_frac
}
pub(crate) fn d_tau_min_snr() -> f64 {
    sub_default().tau_min_snr
}
pub(crate) fn d_tau_rmse() -> f64 {
    sub_default().tau_rmse_max_mv
}

/// Declares a per-cell stage config: the grouping, window and subthreshold options both stages
/// share, then the stage's own fields (serde's `deny_unknown_fields` does not combine with
/// `flatten`, hence a macro). `$declare` is `ipfx_detection_struct` for a stage that detects
/// spikes (adds IPFX's detection options) or `plain_config_struct`.
macro_rules! cell_config {
    ($declare:ident; $(#[$meta:meta])* $name:ident { $($extra:tt)* }) => {
        $crate::stages::features::detection::$declare! {
        $(#[$meta])*
        $name {
            /// Column whose value names the cell; rows with the same value are one cell's sweeps
            /// (default `recording_id`: one ABF file per cell) [column].
            #[serde(default = "crate::stages::features::cell_rows::d_cell_column")]
            pub cell_column: String,
            /// Stimulus window start, instead of the window found from the command (IPFX `start`) [s].
            #[serde(default)]
            pub start_s: Option<f64>,
            /// Stimulus window end, with `start_s` (IPFX `end`) [s].
            #[serde(default)]
            pub end_s: Option<f64>,
            /// Interval before the stimulus averaged for the baseline Vm and the τ noise (IPFX
            /// `baseline_interval`, 0.1) [s].
            #[serde(default = "crate::stages::features::cell_rows::d_baseline_interval")]
            pub baseline_interval_s: f64,
            /// Width of the average around the peak used by the sag (IPFX `peak_width`, 0.005) [s].
            #[serde(default = "crate::stages::features::cell_rows::d_sag_peak_width")]
            pub sag_peak_width_s: f64,
            /// Baseline and steady-state intervals of the sag (IPFX `sag_baseline_interval`, 0.03) [s].
            #[serde(default = "crate::stages::features::cell_rows::d_sag_baseline_interval")]
            pub sag_baseline_interval_s: f64,
            /// The τ fit starts where the response reaches this fraction of the peak deflection
            /// (IPFX `frac`, 0.1) [1].
            #[serde(default = "crate::stages::features::cell_rows::d_tau_frac")]
            pub tau_frac: f64,
            /// Smallest |peak − baseline| / baseline noise accepted for τ (IPFX `min_snr`, 20) [1].
            #[serde(default = "crate::stages::features::cell_rows::d_tau_min_snr")]
            pub tau_min_snr: f64,
            /// Largest RMS residual of the τ fit (IPFX `rmse_max_tol`, 1) [mV].
            #[serde(default = "crate::stages::features::cell_rows::d_tau_rmse")]
            pub tau_rmse_max_mv: f64,
            $($extra)*
        }
        }

        impl $name {
            fn subthreshold(&self) -> $crate::features::subthreshold::SubthresholdParams {
                $crate::features::subthreshold::SubthresholdParams {
                    baseline_interval_s: self.baseline_interval_s,
                    deflect_kind: None,
                    sag_peak_width_s: self.sag_peak_width_s,
                    sag_baseline_interval_s: self.sag_baseline_interval_s,
                    tau_frac: self.tau_frac,
                    tau_min_snr: self.tau_min_snr,
                    tau_rmse_max_mv: self.tau_rmse_max_mv,
                }
            }
            fn grouping(&self) -> $crate::stages::features::cell_rows::Grouping {
                $crate::stages::features::cell_rows::Grouping::new(&self.cell_column, self.start_s, self.end_s)
            }
            fn common_issues(&self) -> Vec<$crate::stage::Issue> {
                $crate::stages::features::cell_rows::common_issues(&self.cell_column, self.start_s, self.end_s, &self.subthreshold())
            }
        }
    };
}
pub(super) use cell_config;

/// How a per-cell stage groups its rows into cells, and the stimulus window it analyses.
#[derive(Debug, Clone)]
pub(crate) struct Grouping {
    pub cell_column: String,
    /// Explicit window; `None` = found from the commands.
    pub window: Option<StimulusWindow>,
}

impl Grouping {
    pub(crate) fn new(cell_column: &str, start_s: Option<f64>, end_s: Option<f64>) -> Grouping {
        let window = match (start_s, end_s) {
            (Some(start_s), Some(end_s)) => Some(StimulusWindow { start_s, end_s }),
            _ => None,
        };
        Grouping { cell_column: cell_column.to_string(), window }
    }
}

/// The issues of the options both per-cell stages share.
pub(crate) fn common_issues(cell_column: &str, start_s: Option<f64>, end_s: Option<f64>, subthreshold: &SubthresholdParams) -> Vec<Issue> {
    let mut issues = Vec::new();
    if cell_column.trim().is_empty() {
        issues.push(Issue::at(&["cell_column"], "must name a column"));
    }
    match (start_s, end_s) {
        (None, None) => {}
        (Some(s), Some(e)) => {
            if !(s.is_finite() && e.is_finite() && s >= 0.0 && e > s) {
                issues.push(Issue::at(&["end_s"], format!("window [{s}, {e}] s must be finite, >= 0 and end after start")));
            }
        }
        _ => issues.push(Issue::at(&["start_s"], "give both start_s and end_s, or neither")),
    }
    if let Err(SubthresholdError::InvalidParameter { name, value, reason }) = subthreshold.validate() {
        issues.push(Issue::at(&[name], format!("{value}: {reason}")));
    }
    issues
}

fn is_f32_list(t: &DataType) -> bool {
    matches!(t, DataType::LargeList(f) if *f.data_type() == DataType::Float32)
}

/// The sweeps-table columns both stages read; all issues at once.
pub(super) fn check_input(schema: &Schema, cell_column: &str) -> std::result::Result<(), Vec<Issue>> {
    let p: &[&str] = &["inputs"];
    let issues: Vec<Issue> = [
        require(schema, "sweeps", cell_column, "a string or integer", |t| is_string(t) || t.is_integer(), None, &["cell_column"]),
        require(schema, "sweeps", "sweep", "an integer", |t| t.is_integer(), None, p),
        require(schema, "sweeps", "sampling_rate_hz", "a number", is_numeric, Some("Hz"), p),
        require(schema, "sweeps", "stimulus", "large_list<float32>", is_f32_list, Some("pA"), p),
        require(schema, "sweeps", "response", "large_list<float32>", is_f32_list, Some("mV"), p),
    ]
    .into_iter()
    .filter_map(|r| r.err())
    .collect();
    if issues.is_empty() { Ok(()) } else { Err(issues) }
}

/// The input batches, reduced to the columns read (`cell`, `sweep`, `rate`, `stimulus`, `response`).
#[derive(Default)]
pub(super) struct Gathered {
    batches: Vec<(StringArray, Int64Array, Float64Array, LargeListArray, LargeListArray)>,
}

impl Gathered {
    pub(super) fn add(&mut self, batch: &RecordBatch, cell_column: &str) -> Result<()> {
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| Error::msg(format!("the batch has no `{name}` column")));
        self.batches.push((
            arrow::compute::cast(col(cell_column)?, &DataType::Utf8)?.as_string::<i32>().clone(),
            arrow::compute::cast(col("sweep")?, &DataType::Int64)?.as_primitive::<Int64Type>().clone(),
            arrow::compute::cast(col("sampling_rate_hz")?, &DataType::Float64)?.as_primitive::<Float64Type>().clone(),
            col("stimulus")?.as_list::<i64>().clone(),
            col("response")?.as_list::<i64>().clone(),
        ));
        Ok(())
    }

    /// Row positions `(batch, row)` per cell, cells in sorted order; rows with a null cell value
    /// are reported as failures.
    pub(super) fn cells(&self, out: &mut Emitter) -> BTreeMap<String, Vec<(usize, usize)>> {
        let mut cells: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (b, (cell, ..)) in self.batches.iter().enumerate() {
            for row in 0..cell.len() {
                if cell.is_null(row) {
                    out.fail(format!("<null cell> (batch {b}, row {row})"), "the cell column is null");
                } else {
                    cells.entry(cell.value(row).to_string()).or_default().push((b, row));
                }
            }
        }
        cells
    }
}

fn f32_row(list: &LargeListArray, row: usize, column: &str) -> std::result::Result<Vec<f64>, String> {
    if list.is_null(row) {
        return Err(format!("`{column}` is null"));
    }
    let offsets = list.value_offsets();
    let (lo, hi) = (offsets[row] as usize, offsets[row + 1] as usize);
    let values = list.values().as_primitive::<Float32Type>();
    if values.nulls().is_some_and(|n| n.slice(lo, hi - lo).null_count() > 0) {
        return Err(format!("`{column}` has null samples"));
    }
    Ok(values.values()[lo..hi].iter().map(|&x| f64::from(x)).collect())
}

/// One cell's sweeps in sweep order, as f64 traces on one sampling rate.
pub(super) struct CellData {
    pub sweep_numbers: Vec<usize>,
    /// Per sweep: (command pA, membrane potential mV).
    pub traces: Vec<(Vec<f64>, Vec<f64>)>,
    pub rate_hz: f64,
}

impl CellData {
    pub(super) fn load(g: &Gathered, rows: &[(usize, usize)]) -> std::result::Result<CellData, String> {
        let mut keyed = Vec::with_capacity(rows.len());
        let mut rate_hz = None;
        for &(b, row) in rows {
            let (_, sweep, rate, stim, resp) = &g.batches[b];
            if sweep.is_null(row) {
                return Err("a sweep has a null `sweep` number".into());
            }
            let s = sweep.value(row);
            let s = usize::try_from(s).map_err(|_| format!("sweep {s}: negative sweep number"))?;
            let r = if rate.is_null(row) { f64::NAN } else { rate.value(row) };
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("sweep {s}: sampling_rate_hz = {r} is not a positive finite rate"));
            }
            match rate_hz {
                None => rate_hz = Some(r),
                Some(r0) if r0 != r => {
                    return Err(format!("sweep {s} is sampled at {r} Hz but earlier sweeps at {r0} Hz; IPFX analyses a cell on one time base"));
                }
                _ => {}
            }
            let i = f32_row(stim, row, "stimulus").map_err(|e| format!("sweep {s}: {e}"))?;
            let v = f32_row(resp, row, "response").map_err(|e| format!("sweep {s}: {e}"))?;
            keyed.push((s, i, v));
        }
        keyed.sort_by_key(|k| k.0);
        if let Some(w) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("sweep number {} appears twice", w[0].0));
        }
        Ok(CellData {
            sweep_numbers: keyed.iter().map(|k| k.0).collect(),
            traces: keyed.into_iter().map(|(_, i, v)| (i, v)).collect(),
            rate_hz: rate_hz.unwrap_or(f64::NAN),
        })
    }

    pub(super) fn trace(&self, k: usize) -> SweepTrace<'_> {
        SweepTrace { time: Timebase::from_rate(self.rate_hz), v_mv: &self.traces[k].1, i_pa: &self.traces[k].0 }
    }

    /// The stimulus window most sweeps agree on (see the module doc), or the explicit one.
    pub(super) fn window(&self, explicit: Option<StimulusWindow>) -> std::result::Result<StimulusWindow, String> {
        if let Some(w) = explicit {
            return Ok(w);
        }
        // (start, end) -> (count, first sweep position, window)
        let mut votes: HashMap<(usize, usize), (usize, usize, StimulusWindow)> = HashMap::new();
        for k in 0..self.traces.len() {
            let step = first_step(&self.trace(k)).map_err(|e| format!("sweep {}: {e}", self.sweep_numbers[k]))?;
            if let Some(step) = step {
                let e = votes.entry((step.start_index, step.end_index)).or_insert((0, k, step.window));
                e.0 += 1;
            }
        }
        votes
            .into_values()
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|v| v.2)
            .ok_or_else(|| "no sweep's command has a step (two level changes); set start_s and end_s".to_string())
    }
}

pub(super) fn window_columns(windows: &[StimulusWindow]) -> [ArrayRef; 2] {
    [
        Arc::new(windows.iter().map(|w| Some(w.start_s)).collect::<Float64Array>()),
        Arc::new(windows.iter().map(|w| Some(w.end_s)).collect::<Float64Array>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_the_step_most_sweeps_share() {
        // Three sweeps at 1 kHz: a -50 pA step at 100..199 then a fixed -100 pA step at 300..349;
        // the middle sweep's first step is 0 pA, so its own first step is the second epoch.
        let mk = |amp: f64| {
            let mut i = vec![0.0; 400];
            i[100..200].fill(amp);
            i[300..350].fill(-100.0);
            i
        };
        let traces: Vec<(Vec<f64>, Vec<f64>)> = [-50.0, 0.0, 50.0].iter().map(|&a| (mk(a), vec![-65.0; 400])).collect();
        let data = CellData { sweep_numbers: vec![0, 1, 2], traces, rate_hz: 1000.0 };
        let w = data.window(None).unwrap();
        assert!((w.start_s - 0.1).abs() < 1e-12 && (w.end_s - 0.2).abs() < 1e-12, "{w:?}");
        let explicit = StimulusWindow { start_s: 0.3, end_s: 0.35 };
        assert_eq!(data.window(Some(explicit)).unwrap(), explicit);
        let flat = CellData { sweep_numbers: vec![0], traces: vec![(vec![0.0; 400], vec![-65.0; 400])], rate_hz: 1000.0 };
        assert!(flat.window(None).unwrap_err().contains("start_s and end_s"));
    }
}
