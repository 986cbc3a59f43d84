//! Per-cell stages on the sweeps table: IPFX's long-square cell summary (`features.cell`) and the
//! subthreshold features of every sweep (`features.subthreshold`).
//!
//! Both need every sweep of a cell before they can say anything about one: IPFX analyses all
//! sweeps of a cell over one stimulus window, and the cell summary selects sweeps (rheobase, hero,
//! the hyperpolarizing sweeps for Ri and τ). So `process` only gathers the input batches (the
//! columns these stages read), and `finish` groups rows by the cell column (default
//! `recording_id`, one ABF file per cell), orders them by `sweep` and computes the cells in
//! parallel (rayon).
//!
//! The stimulus window is found from the command, as IPFX's `get_stim_characteristics` on a
//! single-step sweep ([`first_step`]): the first epoch that departs from the holding current.
//! One window per cell, as in IPFX: the window most sweeps of the cell agree on (ties: the one
//! of the lowest sweep number). A sweep whose first epoch is a 0 pA step does not depart there,
//! so its own first step is a later epoch; taking the majority keeps such sweeps from moving the
//! window. `start_s`/`end_s` set the window explicitly instead.
//!
//! Failures: a cell whose sweeps cannot be put together (mixed sampling rates, repeated sweep
//! numbers, no step in any command) or whose summary cannot be computed (a NaN sample, a window
//! outside a sweep) fails alone as `out.fail(<cell>, reason)`; in `features.subthreshold` a single
//! bad sweep fails alone as `<cell>/<sweep>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type, Schema, SchemaRef};
use rayon::prelude::*;

use super::spikes::{ipfx_detection_struct, plain_config_struct};
use crate::stage::columns::{field, is_numeric, is_string, require};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::features::cell::{CellFeatureParams, CellFeatures, CellSweep, analyze_sweep, summarize_cell};
use crate::features::spikes::{SpikeWorkspace, Timebase};
use crate::features::subthreshold::{
    StimulusWindow, SubthresholdFeatures, SubthresholdParams, SweepTrace, first_step, subthreshold_features,
};

fn d_cell_column() -> String {
    "recording_id".into()
}
fn sub_default() -> SubthresholdParams {
    SubthresholdParams::default()
}
fn d_baseline_interval() -> f64 {
    sub_default().baseline_interval_s
}
fn d_sag_peak_width() -> f64 {
    sub_default().sag_peak_width_s
}
fn d_sag_baseline_interval() -> f64 {
    sub_default().sag_baseline_interval_s
}
fn d_tau_frac() -> f64 {
    sub_default().tau_frac
}
fn d_tau_min_snr() -> f64 {
    sub_default().tau_min_snr
}
fn d_tau_rmse() -> f64 {
    sub_default().tau_rmse_max_mv
}
fn d_subthresh_min() -> f64 {
    CellFeatureParams::default().subthresh_min_amp_pa
}
fn d_subthresh_max() -> f64 {
    CellFeatureParams::default().subthresh_max_amp_pa
}
fn d_sag_target() -> f64 {
    CellFeatureParams::default().sag_target_mv
}
fn d_hero_min() -> f64 {
    CellFeatureParams::default().hero_min_amp_offset_pa
}
fn d_hero_max() -> f64 {
    CellFeatureParams::default().hero_max_amp_offset_pa
}

/// Declares a per-cell stage config: the grouping, window and subthreshold options both stages
/// share, then the stage's own fields (serde's `deny_unknown_fields` does not combine with
/// `flatten`, hence a macro). `$declare` is `ipfx_detection_struct` for a stage that detects
/// spikes (adds IPFX's detection options) or `plain_config_struct`.
macro_rules! cell_config {
    ($declare:ident; $(#[$meta:meta])* $name:ident { $($extra:tt)* }) => {
        $declare! {
        $(#[$meta])*
        $name {
            /// Column whose value names the cell; rows with the same value are one cell's sweeps
            /// (default `recording_id`: one ABF file per cell) [column].
            #[serde(default = "d_cell_column")]
            pub cell_column: String,
            /// Stimulus window start, instead of the window found from the command (IPFX `start`) [s].
            #[serde(default)]
            pub start_s: Option<f64>,
            /// Stimulus window end, with `start_s` (IPFX `end`) [s].
            #[serde(default)]
            pub end_s: Option<f64>,
            /// Interval before the stimulus averaged for the baseline Vm and the τ noise (IPFX
            /// `baseline_interval`, 0.1) [s].
            #[serde(default = "d_baseline_interval")]
            pub baseline_interval_s: f64,
            /// Width of the average around the peak used by the sag (IPFX `peak_width`, 0.005) [s].
            #[serde(default = "d_sag_peak_width")]
            pub sag_peak_width_s: f64,
            /// Baseline and steady-state intervals of the sag (IPFX `sag_baseline_interval`, 0.03) [s].
            #[serde(default = "d_sag_baseline_interval")]
            pub sag_baseline_interval_s: f64,
            /// The τ fit starts where the response reaches this fraction of the peak deflection
            /// (IPFX `frac`, 0.1) [1].
            #[serde(default = "d_tau_frac")]
            pub tau_frac: f64,
            /// Smallest |peak − baseline| / baseline noise accepted for τ (IPFX `min_snr`, 20) [1].
            #[serde(default = "d_tau_min_snr")]
            pub tau_min_snr: f64,
            /// Largest RMS residual of the τ fit (IPFX `rmse_max_tol`, 1) [mV].
            #[serde(default = "d_tau_rmse")]
            pub tau_rmse_max_mv: f64,
            $($extra)*
        }
        }

        impl $name {
            fn subthreshold(&self) -> SubthresholdParams {
                SubthresholdParams {
                    baseline_interval_s: self.baseline_interval_s,
                    deflect_kind: None,
                    sag_peak_width_s: self.sag_peak_width_s,
                    sag_baseline_interval_s: self.sag_baseline_interval_s,
                    tau_frac: self.tau_frac,
                    tau_min_snr: self.tau_min_snr,
                    tau_rmse_max_mv: self.tau_rmse_max_mv,
                }
            }
            fn grouping(&self) -> Grouping {
                let window = match (self.start_s, self.end_s) {
                    (Some(start_s), Some(end_s)) => Some(StimulusWindow { start_s, end_s }),
                    _ => None,
                };
                Grouping { cell_column: self.cell_column.clone(), window }
            }
            fn common_issues(&self) -> Vec<Issue> {
                let mut issues = Vec::new();
                if self.cell_column.trim().is_empty() {
                    issues.push(Issue::at(&["cell_column"], "must name a column"));
                }
                match (self.start_s, self.end_s) {
                    (None, None) => {}
                    (Some(s), Some(e)) => {
                        if !(s.is_finite() && e.is_finite() && s >= 0.0 && e > s) {
                            issues.push(Issue::at(&["end_s"], format!("window [{s}, {e}] s must be finite, >= 0 and end after start")));
                        }
                    }
                    _ => issues.push(Issue::at(&["start_s"], "give both start_s and end_s, or neither")),
                }
                if let Err(crate::features::subthreshold::SubthresholdError::InvalidParameter { name, value, reason }) =
                    self.subthreshold().validate()
                {
                    issues.push(Issue::at(&[name], format!("{value}: {reason}")));
                }
                issues
            }
        }
    };
}

cell_config! {
    ipfx_detection_struct;
    /// IPFX's long-square cell summary (rheobase, F-I slope, Ri, τ, sag, hero-sweep and
    /// rheobase-spike features) of every cell; one row per cell.
    FeaturesCell {
        /// Sweeps with amplitude above this (and below `subthresh_max_amp_pa`) give Ri and τ
        /// (IPFX `subthresh_min_amp`, -100) [pA].
        #[serde(default = "d_subthresh_min")]
        pub subthresh_min_amp_pa: f64,
        /// Upper amplitude bound (exclusive) of those sweeps (IPFX `SUBTHRESH_MAX_AMP`, 0) [pA].
        #[serde(default = "d_subthresh_max")]
        pub subthresh_max_amp_pa: f64,
        /// Peak deflection at which the sag is reported (IPFX `SAG_TARGET`, -100) [mV].
        #[serde(default = "d_sag_target")]
        pub sag_target_mv: f64,
        /// Hero sweep: amplitude above rheobase + this (IPFX `HERO_MIN_AMP_OFFSET`, 39) [pA].
        #[serde(default = "d_hero_min")]
        pub hero_min_amp_offset_pa: f64,
        /// Hero sweep: amplitude below rheobase + this (IPFX `HERO_MAX_AMP_OFFSET`, 61) [pA].
        #[serde(default = "d_hero_max")]
        pub hero_max_amp_offset_pa: f64,
        /// Also report the rate of the spiking sweep at rheobase + this (IPFX
        /// `avg_rate_{k}_long_square`); unset = no `avg_rate_at_step` value [pA].
        #[serde(default)]
        pub rate_at_rheobase_offset_pa: Option<f64>,
    }
}

cell_config! {
    plain_config_struct;
    /// IPFX's subthreshold features (baseline Vm, peak deflection, sag, τ) of every sweep, over
    /// its cell's stimulus window; one row per sweep.
    FeaturesSubthreshold {}
}

impl FeaturesCell {
    fn params(&self) -> CellFeatureParams {
        CellFeatureParams {
            spike_detection: self.spike_detection(),
            subthreshold: self.subthreshold(),
            subthresh_min_amp_pa: self.subthresh_min_amp_pa,
            subthresh_max_amp_pa: self.subthresh_max_amp_pa,
            sag_target_mv: self.sag_target_mv,
            hero_min_amp_offset_pa: self.hero_min_amp_offset_pa,
            hero_max_amp_offset_pa: self.hero_max_amp_offset_pa,
            rate_at_rheobase_offset_pa: self.rate_at_rheobase_offset_pa,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gathering and grouping
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Grouping {
    cell_column: String,
    /// Explicit window; `None` = found from the commands.
    window: Option<StimulusWindow>,
}

fn is_f32_list(t: &DataType) -> bool {
    matches!(t, DataType::LargeList(f) if *f.data_type() == DataType::Float32)
}

/// The sweeps-table columns both stages read; all issues at once.
fn check_input(schema: &Schema, cell_column: &str) -> std::result::Result<(), Vec<Issue>> {
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
struct Gathered {
    batches: Vec<(StringArray, Int64Array, Float64Array, LargeListArray, LargeListArray)>,
}

impl Gathered {
    fn add(&mut self, batch: &RecordBatch, cell_column: &str) -> Result<()> {
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
    fn cells(&self, out: &mut Emitter) -> BTreeMap<String, Vec<(usize, usize)>> {
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
struct CellData {
    sweep_numbers: Vec<usize>,
    /// Per sweep: (command pA, membrane potential mV).
    traces: Vec<(Vec<f64>, Vec<f64>)>,
    rate_hz: f64,
}

impl CellData {
    fn load(g: &Gathered, rows: &[(usize, usize)]) -> std::result::Result<CellData, String> {
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

    fn trace(&self, k: usize) -> SweepTrace<'_> {
        SweepTrace { time: Timebase::from_rate(self.rate_hz), v_mv: &self.traces[k].1, i_pa: &self.traces[k].0 }
    }

    /// The stimulus window most sweeps agree on (see the module doc), or the explicit one.
    fn window(&self, explicit: Option<StimulusWindow>) -> std::result::Result<StimulusWindow, String> {
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

fn window_columns(windows: &[StimulusWindow]) -> [ArrayRef; 2] {
    [
        Arc::new(windows.iter().map(|w| Some(w.start_s)).collect::<Float64Array>()),
        Arc::new(windows.iter().map(|w| Some(w.end_s)).collect::<Float64Array>()),
    ]
}

// ---------------------------------------------------------------------------------------------
// features.cell
// ---------------------------------------------------------------------------------------------

type CellColumn = (&'static str, &'static str, fn(&CellFeatures) -> Option<f64>);
/// Output features: column name (IPFX / Allen `ephys_features` name, the names `missing` uses),
/// unit, accessor.
const CELL_COLUMNS: [CellColumn; 23] = [
    ("rheobase_i", "pA", |f| f.rheobase_i_pa),
    ("f_i_curve_slope", "Hz/pA", |f| f.f_i_curve_slope_hz_per_pa),
    ("input_resistance", "MOhm", |f| f.input_resistance_mohm),
    ("tau", "ms", |f| f.tau_ms),
    ("vrest", "mV", |f| f.vrest_mv),
    ("sag", "1", |f| f.sag),
    ("vm_for_sag", "mV", |f| f.vm_for_sag_mv),
    ("adaptation", "1", |f| f.adaptation),
    ("latency", "s", |f| f.latency_s),
    ("avg_isi", "ms", |f| f.avg_isi_ms),
    ("upstroke_downstroke_ratio_long_square", "1", |f| f.upstroke_downstroke_ratio_long_square),
    ("threshold_v_long_square", "mV", |f| f.threshold_v_long_square_mv),
    ("threshold_t_long_square", "s", |f| f.threshold_t_long_square_s),
    ("threshold_i_long_square", "pA", |f| f.threshold_i_long_square_pa),
    ("peak_v_long_square", "mV", |f| f.peak_v_long_square_mv),
    ("peak_t_long_square", "s", |f| f.peak_t_long_square_s),
    ("trough_v_long_square", "mV", |f| f.trough_v_long_square_mv),
    ("trough_t_long_square", "s", |f| f.trough_t_long_square_s),
    ("fast_trough_v_long_square", "mV", |f| f.fast_trough_v_long_square_mv),
    ("fast_trough_t_long_square", "s", |f| f.fast_trough_t_long_square_s),
    ("slow_trough_v_long_square", "mV", |f| f.slow_trough_v_long_square_mv),
    ("slow_trough_t_long_square", "s", |f| f.slow_trough_t_long_square_s),
    ("avg_rate_at_step", "Hz", |f| f.avg_rate_at_step_hz),
];

fn cell_schema(cell_column: &str) -> SchemaRef {
    let mut fields = vec![
        field(cell_column, DataType::Utf8, false, None),
        field("sweep_count", DataType::Int64, false, None),
        field("window_start", DataType::Float64, false, Some("s")),
        field("window_end", DataType::Float64, false, Some("s")),
        field("rheobase_sweep", DataType::Int64, true, None),
        field("hero_sweep", DataType::Int64, true, None),
    ];
    for (name, unit, _) in CELL_COLUMNS {
        fields.push(field(name, DataType::Float64, true, Some(unit)));
    }
    fields.push(field("missing", DataType::Utf8, true, None));
    Arc::new(Schema::new(fields))
}

impl StageConfig for FeaturesCell {
    const KIND: &'static str = "features.cell";
    const SUMMARY: &'static str =
        "IPFX long-square cell summary per cell (rheobase, F-I slope, Ri, tau, sag, vrest, hero-sweep and rheobase-spike features)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Cell features need every sweep of the cell.
        Partitioning::per_unit(self.cell_column.clone())
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = self.common_issues();
        match self.params().validate() {
            Ok(()) => {}
            Err(crate::features::cell::CellFeatureError::InvalidParameter { name, value, reason }) => {
                issues.push(Issue::at(&[name], format!("{value}: {reason}")));
            }
            Err(crate::features::cell::CellFeatureError::SpikeParams(crate::features::spikes::SpikeError::InvalidParameter {
                name,
                reason,
                ..
            })) => issues.push(Issue::at(&[name], reason)),
            Err(crate::features::cell::CellFeatureError::Subparams(_)) => {} // reported by common_issues
            Err(other) => issues.push(Issue::at(&[], other.to_string())),
        }
        issues
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        check_input(&inputs[0], &self.cell_column)?;
        Ok(cell_schema(&self.cell_column))
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(CellOp {
            grouping: self.grouping(),
            params: self.params(),
            gathered: Gathered::default(),
            schema: output.clone(),
        })))
    }
}

struct CellOp {
    grouping: Grouping,
    params: CellFeatureParams,
    gathered: Gathered,
    schema: SchemaRef,
}

/// One cell's summary: sweep count, window, features.
fn analyse_cell(data: &CellData, grouping: &Grouping, p: &CellFeatureParams) -> std::result::Result<(StimulusWindow, CellFeatures), String> {
    let window = data.window(grouping.window)?;
    let sweeps: Vec<CellSweep<'_>> =
        (0..data.traces.len()).map(|k| CellSweep { sweep_number: data.sweep_numbers[k], trace: data.trace(k) }).collect();
    // Collect every sweep's result first and report the failure of the lowest sweep: rayon's
    // `collect::<Result<..>>` returns whichever error a thread met first, so the message named a
    // different sweep from run to run.
    let analyzed = sweeps
        .par_iter()
        .map_init(SpikeWorkspace::new, |ws, s| analyze_sweep(ws, s, window, p))
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let f = summarize_cell(&sweeps, &analyzed, window, p).map_err(|e| e.to_string())?;
    Ok((window, f))
}

impl TransformOperator for CellOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.gathered.add(&batch, &self.grouping.cell_column)
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let cells: Vec<(String, Vec<(usize, usize)>)> = self.gathered.cells(out).into_iter().collect();
        let results: Vec<std::result::Result<(usize, StimulusWindow, CellFeatures), String>> = cells
            .par_iter()
            .map(|(_, rows)| {
                let data = CellData::load(&self.gathered, rows)?;
                let (w, f) = analyse_cell(&data, &self.grouping, &self.params)?;
                Ok((data.traces.len(), w, f))
            })
            .collect();
        self.gathered = Gathered::default();
        let mut names = Vec::new();
        let mut rows = Vec::new();
        for ((cell, _), r) in cells.iter().zip(results) {
            match r {
                Ok(x) => {
                    names.push(cell.as_str());
                    rows.push(x);
                }
                Err(message) => out.fail(cell.clone(), message),
            }
        }
        let windows: Vec<StimulusWindow> = rows.iter().map(|r| r.1).collect();
        let [ws, we] = window_columns(&windows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(rows.iter().map(|r| r.0 as i64).collect::<Int64Array>()),
            ws,
            we,
            Arc::new(rows.iter().map(|r| r.2.rheobase_sweep_number.map(|s| s as i64)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2.hero_sweep_number.map(|s| s as i64)).collect::<Int64Array>()),
        ];
        for (_, _, get) in CELL_COLUMNS {
            columns.push(Arc::new(rows.iter().map(|r| get(&r.2)).collect::<Float64Array>()));
        }
        columns.push(Arc::new(
            rows.iter()
                .map(|r| {
                    (!r.2.missing.is_empty())
                        .then(|| r.2.missing.iter().map(|m| format!("{}: {}", m.feature, m.reason)).collect::<Vec<_>>().join("; "))
                })
                .collect::<StringArray>(),
        ));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// features.subthreshold
// ---------------------------------------------------------------------------------------------

fn subthreshold_schema(cell_column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        field(cell_column, DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("window_start", DataType::Float64, false, Some("s")),
        field("window_end", DataType::Float64, false, Some("s")),
        field("stim_amp", DataType::Float64, false, Some("pA")),
        field("baseline_v", DataType::Float64, false, Some("mV")),
        field("peak_deflection", DataType::Float64, false, Some("mV")),
        field("min_v", DataType::Float64, false, Some("mV")),
        field("sag", DataType::Float64, true, Some("1")),
        field("tau", DataType::Float64, true, Some("ms")),
        field("tau_status", DataType::Utf8, false, None),
    ]))
}

impl StageConfig for FeaturesSubthreshold {
    const KIND: &'static str = "features.subthreshold";
    const SUMMARY: &'static str =
        "IPFX subthreshold features per sweep (stimulus amplitude, baseline Vm, peak deflection, sag, tau) over its cell's stimulus window";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Cell features need every sweep of the cell.
        Partitioning::per_unit(self.cell_column.clone())
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.common_issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        check_input(&inputs[0], &self.cell_column)?;
        if self.cell_column == "sweep" {
            return Err(vec![Issue::at(&["cell_column"], "`sweep` numbers the sweeps of a cell; name the cell column")]);
        }
        Ok(subthreshold_schema(&self.cell_column))
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SubthresholdOp {
            grouping: self.grouping(),
            params: self.subthreshold(),
            gathered: Gathered::default(),
            schema: output.clone(),
        })))
    }
}

struct SubthresholdOp {
    grouping: Grouping,
    params: SubthresholdParams,
    gathered: Gathered,
    schema: SchemaRef,
}

type SweepOutcome = (usize, std::result::Result<SubthresholdFeatures, String>);

impl TransformOperator for SubthresholdOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.gathered.add(&batch, &self.grouping.cell_column)
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let cells: Vec<(String, Vec<(usize, usize)>)> = self.gathered.cells(out).into_iter().collect();
        let results: Vec<std::result::Result<(StimulusWindow, Vec<SweepOutcome>), String>> = cells
            .par_iter()
            .map(|(_, rows)| {
                let data = CellData::load(&self.gathered, rows)?;
                let window = data.window(self.grouping.window)?;
                let per_sweep = (0..data.traces.len())
                    .into_par_iter()
                    .map(|k| {
                        let r = subthreshold_features(&data.trace(k), window, &self.params).map_err(|e| e.to_string());
                        (data.sweep_numbers[k], r)
                    })
                    .collect();
                Ok((window, per_sweep))
            })
            .collect();
        self.gathered = Gathered::default();
        let mut rows: Vec<(&str, usize, StimulusWindow, SubthresholdFeatures)> = Vec::new();
        for ((cell, _), r) in cells.iter().zip(results) {
            match r {
                Err(message) => out.fail(cell.clone(), message),
                Ok((window, sweeps)) => {
                    for (s, f) in sweeps {
                        match f {
                            Ok(f) => rows.push((cell.as_str(), s, window, f)),
                            Err(message) => out.fail(format!("{cell}/{s}"), message),
                        }
                    }
                }
            }
        }
        let windows: Vec<StimulusWindow> = rows.iter().map(|r| r.2).collect();
        let [ws, we] = window_columns(&windows);
        let f64s = |get: &dyn Fn(&SubthresholdFeatures) -> Option<f64>| -> ArrayRef {
            Arc::new(rows.iter().map(|r| get(&r.3)).collect::<Float64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1 as i64).collect::<Int64Array>()),
            ws,
            we,
            f64s(&|f| Some(f.stim_amp_pa)),
            f64s(&|f| Some(f.v_baseline_mv)),
            f64s(&|f| Some(f.peak_deflect_mv)),
            f64s(&|f| Some(f.min_deflect_mv)),
            f64s(&|f| f.sag),
            f64s(&|f| f.tau.tau_s.map(|t| t * 1e3)),
            Arc::new(
                rows.iter()
                    .map(|r| Some(serde_json::to_value(r.3.tau.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()))
                    .collect::<StringArray>(),
            ),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> StageContext {
        StageContext::new("t", ".", 0, ".")
    }

    #[test]
    fn options_default_to_ipfx_and_are_checked() {
        let c: FeaturesCell = toml::from_str("").unwrap();
        assert_eq!(c.params(), CellFeatureParams::default());
        assert_eq!(c.cell_column, "recording_id");
        let s: FeaturesSubthreshold = toml::from_str("").unwrap();
        assert_eq!(s.subthreshold(), SubthresholdParams::default());
        assert!(toml::from_str::<FeaturesSubthreshold>("filter_khz = 5").is_err());
        let bad: FeaturesCell = toml::from_str("start_s = 1.0\ntau_frac = 2\nhero_max_amp_offset_pa = 0\nmax_interval_s = -1").unwrap();
        let issues = bad.check(&ctx());
        let paths: Vec<String> = issues.iter().map(|i| format!("{:?}", i.path)).collect();
        assert_eq!(issues.len(), 3, "{paths:?}");
    }

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
