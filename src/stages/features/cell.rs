//! `features.cell`: IPFX's long-square cell summary (rheobase, F-I slope, Ri, τ, sag, vrest,
//! hero-sweep and rheobase-spike features) of every cell of the sweeps table; one row per cell.
//!
//! The rows are gathered and grouped into cells, and each cell's stimulus window found, as
//! [`super::cell_rows`] describes; the kernel is [`crate::features::cell`].
//!
//! Failures: a cell whose sweeps cannot be put together (mixed sampling rates, repeated sweep
//! numbers, no step in any command) or whose summary cannot be computed (a NaN sample, a window
//! outside a sweep) fails alone as `out.fail(<cell>, reason)`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use rayon::prelude::*;

use super::cell_rows::{CellData, Gathered, Grouping, cell_config, check_input, window_columns};
use crate::error::Result;
use crate::features::cell::{CellFeatureParams, CellFeatures, CellSweep, analyze_sweep, summarize_cell};
use crate::features::spikes::SpikeWorkspace;
use crate::features::subthreshold::StimulusWindow;
use crate::stage::columns::field;
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

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
    const EXAMPLE: &'static str = "cell_column = \"recording_id\"\nfilter_khz = 10.0";

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
        let bad: FeaturesCell = toml::from_str("start_s = 1.0\ntau_frac = 2\nhero_max_amp_offset_pa = 0\nmax_interval_s = -1").unwrap();
        let issues = bad.check(&ctx());
        let paths: Vec<String> = issues.iter().map(|i| format!("{:?}", i.path)).collect();
        assert_eq!(issues.len(), 3, "{paths:?}");
    }
}
