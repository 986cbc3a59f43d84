//! `features.units`: the unit features the excitatory/inhibitory classification runs on.
//!
//! Runs [`crate::features::units::unit_features`] (CellExplorer's waveform, firing and ACG metrics)
//! on every row of the units table (`ingest.cellexplorer`), in parallel, and keeps the input's
//! scalar columns beside the features, so labels travel to the training stages. A unit whose
//! kernel refuses its data (too few spikes, unsorted times, a waveform too short or flat) fails
//! alone under its `recording_id`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, LargeListArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, SchemaRef, Schema};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::units::{UnitFeatureParams, UnitFeatures, unit_features};
use crate::stage::columns::{field, is_numeric, is_scalar, is_string, require};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

fn d_cv2_max() -> f64 {
    UnitFeatureParams::default().cv2_max_included
}
fn d_refractory() -> f64 {
    UnitFeatureParams::default().refractory_violation_isi_s
}
fn d_fit_start() -> [f64; 8] {
    UnitFeatureParams::default().acg_fit_start
}
fn d_fit_lower() -> [f64; 8] {
    UnitFeatureParams::default().acg_fit_lower
}
fn d_fit_upper() -> [f64; 8] {
    UnitFeatureParams::default().acg_fit_upper
}
fn d_fit_iterations() -> usize {
    UnitFeatureParams::default().acg_fit_max_iterations
}

/// CellExplorer's unit features (waveform shape, firing statistics, ACG indices and fit) of every
/// unit; one row per unit, the input's scalar columns kept.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesUnits {
    /// Recording sampling rate for every unit, overriding the input's `sampling_rate_hz` column.
    /// Unset: the column's value, or where it is null (CellExplorer v5 files do not store it)
    /// `1000 / mean(diff(waveform_time))` rounded to whole Hz. It sets the waveform upsampling
    /// factor `ceil(100 kHz / sr)` and the sample grid of the ACGs [Hz].
    #[serde(default)]
    pub sampling_rate_hz: Option<f64>,
    /// Intervals `[start, end]` excluded from the firing-rate window, e.g. optogenetic stimulation
    /// (CellExplorer `excludeIntervals`) [s].
    #[serde(default)]
    pub exclude_intervals_s: Vec<[f64; 2]>,
    /// CV2 terms at or above this are dropped before averaging (CellExplorer 1.95) [1].
    #[serde(default = "d_cv2_max")]
    pub cv2_max_included: f64,
    /// ISIs shorter than this count as refractory-period violations (CellExplorer 0.002) [s].
    #[serde(default = "d_refractory")]
    pub refractory_violation_isi_s: f64,
    /// Start point of the triple-exponential ACG fit, order [tau_decay ms, tau_rise ms, c Hz, d,
    /// asymptote Hz, refrac ms, tau_burst ms, h Hz] (CellExplorer `fit_ACG.m`) [mixed].
    #[serde(default = "d_fit_start")]
    pub acg_fit_start: [f64; 8],
    /// Lower bounds of the ACG fit, same order (CellExplorer `fit_ACG.m`) [mixed].
    #[serde(default = "d_fit_lower")]
    pub acg_fit_lower: [f64; 8],
    /// Upper bounds of the ACG fit, same order (CellExplorer `fit_ACG.m`) [mixed].
    #[serde(default = "d_fit_upper")]
    pub acg_fit_upper: [f64; 8],
    /// Iteration cap of the Levenberg–Marquardt ACG fit (1..=100000) [iterations].
    #[serde(default = "d_fit_iterations")]
    pub acg_fit_max_iterations: usize,
}

impl FeaturesUnits {
    fn params(&self) -> UnitFeatureParams {
        UnitFeatureParams {
            sampling_rate_hz: self.sampling_rate_hz,
            exclude_intervals_s: self.exclude_intervals_s.clone(),
            cv2_max_included: self.cv2_max_included,
            refractory_violation_isi_s: self.refractory_violation_isi_s,
            acg_fit_start: self.acg_fit_start,
            acg_fit_lower: self.acg_fit_lower,
            acg_fit_upper: self.acg_fit_upper,
            acg_fit_max_iterations: self.acg_fit_max_iterations,
        }
    }
}

/// Output feature columns: name, unit, accessor. NaN (CellExplorer's undefined values) is written
/// as null.
type UnitColumn = (&'static str, &'static str, fn(&UnitFeatures) -> f64);
const UNIT_COLUMNS: [UnitColumn; 20] = [
    ("trough_to_peak", "ms", |f| f.trough_to_peak_ms),
    ("peak_to_trough", "ms", |f| f.peak_to_trough_ms),
    ("half_width", "ms", |f| f.half_width_ms),
    ("ab_ratio", "1", |f| f.ab_ratio),
    ("polarity", "z", |f| f.polarity_z),
    ("firing_rate", "Hz", |f| f.firing_rate_hz),
    ("cv2", "1", |f| f.cv2),
    ("refractory_violation", "permille", |f| f.refractory_violation_permille),
    ("burst_index_royer2012", "1", |f| f.burst_index_royer2012),
    ("burst_index_doublets", "1", |f| f.burst_index_doublets),
    ("theta_modulation_index", "1", |f| f.theta_modulation_index),
    ("acg_tau_decay", "ms", |f| f.acg_tau_decay_ms),
    ("acg_tau_rise", "ms", |f| f.acg_tau_rise_ms),
    ("acg_c", "Hz", |f| f.acg_c_hz),
    ("acg_d", "1", |f| f.acg_d),
    ("acg_asymptote", "Hz", |f| f.acg_asymptote_hz),
    ("acg_refrac", "ms", |f| f.acg_refrac_ms),
    ("acg_tau_burst", "ms", |f| f.acg_tau_burst_ms),
    ("acg_h", "Hz", |f| f.acg_h_hz),
    ("acg_fit_rsquare", "1", |f| f.acg_fit_rsquare),
];

fn is_f64_list(t: &DataType) -> bool {
    matches!(t, DataType::LargeList(f) if *f.data_type() == DataType::Float64)
}

impl StageConfig for FeaturesUnits {
    const KIND: &'static str = "features.units";
    const SUMMARY: &'static str =
        "CellExplorer unit features per unit: trough-to-peak, A/B ratio, firing rate, CV2, burst indices, ACG fit (tau_rise, refrac)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "refractory_violation_isi_s = 0.002";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if let Some(sr) = self.sampling_rate_hz
            && !(sr.is_finite() && sr > 0.0)
        {
            issues.push(Issue::at(&["sampling_rate_hz"], format!("{sr} Hz is not a positive finite rate")));
        }
        for (i, iv) in self.exclude_intervals_s.iter().enumerate() {
            if !(iv[0].is_finite() && iv[1].is_finite() && iv[0] <= iv[1]) {
                issues.push(Issue::at_index("exclude_intervals_s", i, format!("[{}, {}] s is not a finite, ordered interval", iv[0], iv[1])));
            }
        }
        if self.cv2_max_included.is_nan() {
            issues.push(Issue::at(&["cv2_max_included"], "must be a number (use a large value for no cut)"));
        }
        if !(self.refractory_violation_isi_s.is_finite() && self.refractory_violation_isi_s >= 0.0) {
            issues.push(Issue::at(&["refractory_violation_isi_s"], "must be a finite time >= 0 s"));
        }
        if !(1..=100_000).contains(&self.acg_fit_max_iterations) {
            issues.push(Issue::at(&["acg_fit_max_iterations"], "must be in 1..=100000"));
        }
        for k in 0..8 {
            let (lo, hi, x0) = (self.acg_fit_lower[k], self.acg_fit_upper[k], self.acg_fit_start[k]);
            if !(lo.is_finite() && hi.is_finite() && x0.is_finite() && lo <= hi) {
                issues.push(Issue::at_index("acg_fit_lower", k, format!("bounds [{lo}, {hi}] and start {x0} must be finite with lower <= upper")));
            } else if [0, 1, 6].contains(&k) && lo <= 0.0 {
                issues.push(Issue::at_index("acg_fit_lower", k, format!("{lo}: time constants need a lower bound > 0 ms")));
            }
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let schema = &inputs[0];
        let p: &[&str] = &["inputs"];
        let mut issues = Vec::new();
        for r in [
            require(schema, "units", "recording_id", "a string", is_string, None, p),
            require(schema, "units", "spike_times", "large_list<float64>", is_f64_list, Some("s"), p),
            require(schema, "units", "waveform", "large_list<float64>", is_f64_list, Some("uV"), p),
            require(schema, "units", "waveform_time", "large_list<float64>", is_f64_list, Some("ms"), p),
        ] {
            if let Err(i) = r {
                issues.push(i);
            }
        }
        if schema.field_with_name("sampling_rate_hz").is_ok()
            && let Err(i) = require(schema, "units", "sampling_rate_hz", "a number", is_numeric, Some("Hz"), p)
        {
            issues.push(i);
        }
        let mut fields: Vec<Field> = schema.fields().iter().filter(|f| is_scalar(f.data_type())).map(|f| f.as_ref().clone()).collect();
        for (name, unit, _) in UNIT_COLUMNS {
            if fields.iter().any(|f| f.name() == name) {
                issues.push(Issue::inputs(format!("input column `{name}` would be overwritten by the feature of the same name; drop or rename it first")));
            }
            fields.push(field(name, DataType::Float64, true, Some(unit)));
        }
        if issues.is_empty() { Ok(Arc::new(Schema::new(fields))) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(UnitsOp { params: self.params(), schema: output.clone() })))
    }
}

struct UnitsOp {
    params: UnitFeatureParams,
    schema: SchemaRef,
}

/// One row of a `large_list<float64>` column; `Err` names the problem.
fn f64_row<'a>(list: &'a LargeListArray, row: usize, column: &str) -> std::result::Result<&'a [f64], String> {
    if list.is_null(row) {
        return Err(format!("`{column}` is null"));
    }
    let offsets = list.value_offsets();
    let (lo, hi) = (offsets[row] as usize, offsets[row + 1] as usize);
    let values = list.values().as_primitive::<Float64Type>();
    if values.nulls().is_some_and(|n| n.slice(lo, hi - lo).null_count() > 0) {
        return Err(format!("`{column}` has null values"));
    }
    Ok(&values.values()[lo..hi])
}

impl TransformOperator for UnitsOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| Error::msg(format!("the batch has no `{name}` column")));
        let ids = arrow::compute::cast(col("recording_id")?, &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let times = col("spike_times")?.as_list::<i64>();
        let wave = col("waveform")?.as_list::<i64>();
        let wave_t = col("waveform_time")?.as_list::<i64>();
        let rates = match batch.column_by_name("sampling_rate_hz") {
            Some(c) => Some(arrow::compute::cast(c, &DataType::Float64)?),
            None => None,
        };
        let rates = rates.as_ref().map(|r| r.as_primitive::<Float64Type>());
        let results: Vec<std::result::Result<UnitFeatures, String>> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| {
                let mut params = self.params.clone();
                if params.sampling_rate_hz.is_none() {
                    params.sampling_rate_hz = rates.filter(|r| r.is_valid(row)).map(|r| r.value(row));
                }
                let t = f64_row(times, row, "spike_times")?;
                let w = f64_row(wave, row, "waveform")?;
                let wt = f64_row(wave_t, row, "waveform_time")?;
                unit_features(t, w, wt, &params).map_err(|e| format!("unit features: {e}"))
            })
            .collect();
        let mut keep = Vec::with_capacity(results.len());
        let mut feats = Vec::with_capacity(results.len());
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(f) => {
                    keep.push(row as u32);
                    feats.push(f);
                }
                Err(message) => {
                    let unit = if ids.is_null(row) { format!("<null recording_id> (row {row})") } else { ids.value(row).to_string() };
                    out.fail(unit, message);
                }
            }
        }
        let indices = arrow::array::UInt32Array::from(keep);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields().iter().take(self.schema.fields().len() - UNIT_COLUMNS.len()) {
            columns.push(arrow::compute::take(col(f.name())?.as_ref(), &indices, None)?);
        }
        for (_, _, get) in UNIT_COLUMNS {
            columns.push(Arc::new(feats.iter().map(|f| Some(get(f)).filter(|v| !v.is_nan())).collect::<Float64Array>()));
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_cellexplorer_and_are_checked() {
        let c: FeaturesUnits = toml::from_str("").unwrap();
        assert_eq!(c.params(), UnitFeatureParams::default());
        assert!(toml::from_str::<FeaturesUnits>("acg_fit_start = [1.0]").is_err());
        assert!(toml::from_str::<FeaturesUnits>("sampling_rate = 20000").is_err());
        let bad: FeaturesUnits =
            toml::from_str("sampling_rate_hz = -1\nexclude_intervals_s = [[2.0, 1.0]]\nacg_fit_max_iterations = 0").unwrap();
        let ctx = StageContext::new("t", ".", 0, ".");
        assert_eq!(bad.check(&ctx).len(), 3);
    }
}
