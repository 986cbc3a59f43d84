//! Allen Cell Types stages: `ingest.allen_sweeps` (per-sweep metadata and spike counts of
//! `ephys_sweeps.json`, with the cell's fitted GLIF model beside it), `simulate.glif_replay`
//! (each cell's own GLIF model played the square stimulus of each of its sweeps: the mechanistic
//! baseline of a spike-count model) and `evaluate.regression` (scores an existing prediction
//! column, e.g. that baseline, the way `train.regress` scores its out-of-fold predictions).
//!
//! Role in study 1 (specs/studies.md): the study's features were constant within a cell (a stale
//! stimulus window), so its model could not see the amplitude. These stages give each sweep its
//! real stimulus (type, amplitude, onset, duration from Allen's metadata) and each cell a few
//! numbers of its fitted GLIF model, computed without looking at any spike count.
//!
//! Allen's `num_spikes` is null both when a sweep had no spike and when it was not analysed;
//! for current-clamp sweeps the Allen feature extractor runs on every sweep, so `spike_count`
//! takes null as 0 (the raw value stays in `num_spikes`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ingest::files::expand_paths;
use crate::stage::columns::{column_list, field, is_numeric, is_string};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::formats::allen::read_ephys_sweeps;
use crate::simulate::glif::{self, GlifConfig, GlifRunStatus};

// ================================================================================================
// ingest.allen_sweeps
// ================================================================================================

/// Allen stimulus names and the code `stimulus_code` gives them (a number a model can split on;
/// the order is the Allen protocol's, not a magnitude). Any other name gets 99.
pub const STIMULUS_CODES: [(&str, i64); 11] = [
    ("Test", 0),
    ("Long Square", 1),
    ("Short Square", 2),
    ("Short Square - Triple", 3),
    ("Short Square - Hold -60mV", 4),
    ("Ramp", 5),
    ("Ramp to Rheobase", 6),
    ("Noise 1", 7),
    ("Noise 2", 8),
    ("Square - 2s Suprathreshold", 9),
    ("Square - 0.5ms Subthreshold", 10),
];

fn stimulus_code(name: &str) -> i64 {
    STIMULUS_CODES.iter().find(|(n, _)| *n == name).map_or(99, |(_, c)| *c)
}

fn d_config_name() -> Option<String> {
    Some("neuron_config.json".into())
}
fn yes() -> bool {
    true
}

/// Reads Allen `ephys_sweeps.json` files (one specimen each) into one row per sweep.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestAllenSweeps {
    /// `ephys_sweeps.json` files, glob patterns (`data/cells/*/ephys_sweeps.json`) or folders
    /// (every `*.json` directly inside), relative to the pipeline file [paths].
    pub paths: Vec<String>,
    /// Keep only current-clamp sweeps (`stimulus_units` "Amps" or "pA") [bool].
    #[serde(default = "yes")]
    pub current_clamp_only: bool,
    /// File name of the cell's GLIF `neuron_config.json`, looked up beside each sweeps file; its
    /// parameters become the `model_*` columns and its text the `neuron_config` column (null
    /// when the file is absent). Empty string = do not look [file name].
    #[serde(default = "d_config_name")]
    pub neuron_config: Option<String>,
}

impl IngestAllenSweeps {
    fn files(&self, ctx: &StageContext) -> std::result::Result<Vec<PathBuf>, Vec<Issue>> {
        expand_paths(ctx, "paths", &self.paths, "json")
    }

    fn config_beside(&self, sweeps_file: &Path) -> Option<PathBuf> {
        let name = self.neuron_config.as_deref().filter(|n| !n.is_empty())?;
        let p = sweeps_file.parent()?.join(name);
        p.is_file().then_some(p)
    }
}

pub fn allen_sweeps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("sweep", DataType::Int64, false, None),
        field("stimulus_name", DataType::Utf8, false, None),
        field("stimulus_code", DataType::Int64, false, None),
        field("stimulus_amplitude", DataType::Float64, true, Some("pA")),
        field("stimulus_start_s", DataType::Float64, true, Some("s")),
        field("stimulus_duration_s", DataType::Float64, true, Some("s")),
        field("num_spikes", DataType::Int64, true, None),
        field("spike_count", DataType::Int64, false, None),
        field("neuronal_model_id", DataType::Utf8, true, None),
        field("model_r_input_mohm", DataType::Float64, true, Some("MΩ")),
        field("model_c_pf", DataType::Float64, true, Some("pF")),
        field("model_tau_ms", DataType::Float64, true, Some("ms")),
        field("model_threshold_mv", DataType::Float64, true, Some("mV")),
        field("model_rheobase_pa", DataType::Float64, true, Some("pA")),
        field("drive_over_model_rheobase", DataType::Float64, true, Some("1")),
        field("neuron_config", DataType::Utf8, true, None),
    ]))
}

impl StageConfig for IngestAllenSweeps {
    const KIND: &'static str = "ingest.allen_sweeps";
    const SUMMARY: &'static str =
        "Read Allen ephys_sweeps.json files: one row per sweep (stimulus type, amplitude, onset, duration, Allen's spike count) plus the cell's GLIF model";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        if self.paths.is_empty() {
            return vec![Issue::at(&["paths"], "give at least one ephys_sweeps.json file, glob pattern or folder")];
        }
        self.files(ctx).err().unwrap_or_default()
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(allen_sweeps_schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let files = self.files(ctx).map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i[0].message)))?;
        let mut all = files.clone();
        all.extend(files.iter().filter_map(|f| self.config_beside(f)));
        Ok(all)
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let files = self.files(ctx).map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i[0].message)))?;
        Ok(Operator::Source(Box::new(AllenSweepsSource { files, next: 0, cfg: self.clone(), schema: output.clone() })))
    }
}

struct AllenSweepsSource {
    files: Vec<PathBuf>,
    next: usize,
    cfg: IngestAllenSweeps,
    schema: SchemaRef,
}

impl SourceOperator for AllenSweepsSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        let Some(path) = self.files.get(self.next).cloned() else { return Ok(false) };
        self.next += 1;
        match read_cell(&path, &self.cfg, &self.schema) {
            Ok(batch) => out.emit(batch),
            Err(message) => out.fail(path.display().to_string(), message),
        }
        Ok(self.next < self.files.len())
    }
}

/// Model numbers of one cell, from its GLIF config.
struct CellModel {
    id: Option<String>,
    text: String,
    r_mohm: f64,
    c_pf: f64,
    tau_ms: f64,
    threshold_mv: f64,
    rheobase_pa: f64,
}

fn read_model(path: &Path) -> std::result::Result<CellModel, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    let configs = glif::parse_neuron_configs(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let [c] = configs.as_slice() else {
        return Err(format!("{}: holds {} configs; one cell has one model", path.display(), configs.len()));
    };
    let r = c.r_input_ohm / c.coeffs.g;
    let cap = c.c_farad * c.coeffs.c;
    Ok(CellModel {
        id: c.neuronal_model_id.clone(),
        text,
        r_mohm: r * 1e-6,
        c_pf: cap * 1e12,
        tau_ms: r * cap * 1e3,
        threshold_mv: c.th_inf_v * c.coeffs.th_inf * 1e3,
        rheobase_pa: c.rough_rheobase_a() * 1e12,
    })
}

fn read_cell(path: &Path, cfg: &IngestAllenSweeps, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let sweeps = read_ephys_sweeps(path).map_err(|e| e.to_string())?;
    let sweeps: Vec<_> = sweeps.into_iter().filter(|s| !cfg.current_clamp_only || s.is_current_clamp()).collect();
    if let Some(s) = sweeps.windows(2).find(|w| w[0].specimen_id != w[1].specimen_id) {
        return Err(format!("{}: sweeps of two specimens ({} and {}); one file per cell", path.display(), s[0].specimen_id, s[1].specimen_id));
    }
    let model = cfg.config_beside(path).map(|p| read_model(&p)).transpose()?;
    let n = sweeps.len();
    let amp: Vec<Option<f64>> = sweeps.iter().map(|s| s.amplitude_pa()).collect();
    let m = |f: &dyn Fn(&CellModel) -> f64| -> ArrayRef { Arc::new(Float64Array::from(vec![model.as_ref().map(f); n])) };
    let drive: Float64Array = amp.iter().map(|a| Some((*a)? / model.as_ref()?.rheobase_pa)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(sweeps.iter().map(|s| s.specimen_id.to_string()))),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| i64::from(s.sweep_number)))),
        Arc::new(StringArray::from_iter_values(sweeps.iter().map(|s| s.stimulus_name.clone()))),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| stimulus_code(&s.stimulus_name)))),
        Arc::new(Float64Array::from(amp.clone())),
        Arc::new(sweeps.iter().map(|s| s.stimulus_start_time_s).collect::<Float64Array>()),
        Arc::new(sweeps.iter().map(|s| s.stimulus_duration_s).collect::<Float64Array>()),
        Arc::new(sweeps.iter().map(|s| s.num_spikes.map(i64::from)).collect::<Int64Array>()),
        Arc::new(Int64Array::from_iter_values(sweeps.iter().map(|s| i64::from(s.num_spikes.unwrap_or(0))))),
        Arc::new(StringArray::from(vec![model.as_ref().and_then(|m| m.id.clone()); n])),
        m(&|c| c.r_mohm),
        m(&|c| c.c_pf),
        m(&|c| c.tau_ms),
        m(&|c| c.threshold_mv),
        m(&|c| c.rheobase_pa),
        Arc::new(drive),
        Arc::new(StringArray::from(vec![model.as_ref().map(|m| m.text.clone()); n])),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("{}: {e}", path.display()))
}

// ================================================================================================
// simulate.glif_replay
// ================================================================================================

fn d_names() -> Vec<String> {
    vec!["Long Square".into()]
}
fn d_tail() -> f64 {
    0.1
}

/// Plays each selected row's square stimulus to the GLIF model in its `neuron_config` column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateGlifReplay {
    /// Rows whose `stimulus_name` is one of these are simulated; the others get null [names].
    #[serde(default = "d_names")]
    pub stimulus_names: Vec<String>,
    /// Simulated time after the step ends; spikes after it are not counted [s].
    #[serde(default = "d_tail")]
    pub tail_s: f64,
}

impl StageConfig for SimulateGlifReplay {
    const KIND: &'static str = "simulate.glif_replay";
    const SUMMARY: &'static str =
        "Play each row's square stimulus (amplitude, onset, duration) to the GLIF model of its `neuron_config` column; the model's spike count per row";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.stimulus_names.is_empty() {
            issues.push(Issue::at(&["stimulus_names"], "name at least one stimulus type to simulate"));
        }
        if !(self.tail_s.is_finite() && self.tail_s >= 0.0) {
            issues.push(Issue::at(&["tail_s"], format!("must be >= 0 s, got {}", self.tail_s)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (c, numeric, unit) in [
            ("stimulus_name", false, None),
            ("neuron_config", false, None),
            ("stimulus_amplitude", true, Some("pA")),
            ("stimulus_start_s", true, Some("s")),
            ("stimulus_duration_s", true, Some("s")),
        ] {
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::inputs(format!("the input has no column `{c}` (ingest.allen_sweeps makes it); it has: {}", column_list(input)))),
                Ok(f) if numeric && !is_numeric(f.data_type()) => issues.push(Issue::inputs(format!("`{c}` must be numeric"))),
                Ok(f) if !numeric && !is_string(f.data_type()) => issues.push(Issue::inputs(format!("`{c}` must be a string column"))),
                Ok(f) if unit.is_some() && crate::stage::columns::unit_of(f) != unit => issues.push(Issue::inputs(format!(
                    "`{c}` is in {}, but {} is needed",
                    crate::stage::columns::unit_of(f).unwrap_or("no unit"),
                    unit.unwrap_or("")
                ))),
                _ => {}
            }
        }
        for c in ["glif_spike_count", "glif_status"] {
            if input.field_with_name(c).is_ok() {
                issues.push(Issue::inputs(format!("the input already has a column `{c}`, which this stage adds")));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<_> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("glif_spike_count", DataType::Int64, true, None));
        fields.push(field("glif_status", DataType::Utf8, true, None));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(ReplayOp { cfg: self.clone(), schema: output.clone() })))
    }
}

struct ReplayOp {
    cfg: SimulateGlifReplay,
    schema: SchemaRef,
}

/// The square stimulus of one sweep at the model's step: zero until `start_s`, `amplitude_pa`
/// for `duration_s`, zero for `tail_s` (A).
pub fn square_stimulus_a(dt_s: f64, amplitude_pa: f64, start_s: f64, duration_s: f64, tail_s: f64) -> Vec<f64> {
    let on = (start_s / dt_s).round() as usize;
    let len = (duration_s / dt_s).round() as usize;
    let tail = (tail_s / dt_s).round() as usize;
    let mut s = vec![0.0; on + len + tail];
    s[on..on + len].fill(amplitude_pa * 1e-12);
    s
}

impl TransformOperator for ReplayOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let s = |c: &str| -> Result<ArrayRef> {
            Ok(arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Utf8)?)
        };
        let f = |c: &str| -> Result<Vec<Option<f64>>> {
            let a = arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Float64)?;
            Ok(a.as_primitive::<Float64Type>().iter().collect())
        };
        let (names, configs, ids) = (s("stimulus_name")?, s("neuron_config")?, s("recording_id").ok());
        let (names, configs) = (names.as_string::<i32>(), configs.as_string::<i32>());
        let (amp, start, dur) = (f("stimulus_amplitude")?, f("stimulus_start_s")?, f("stimulus_duration_s")?);
        // Parse each distinct config text once; a bad config fails its recording alone.
        let mut parsed: std::collections::HashMap<&str, std::result::Result<GlifConfig, String>> = Default::default();
        for r in 0..n {
            if configs.is_valid(r) {
                parsed.entry(configs.value(r)).or_insert_with_key(|t| {
                    glif::parse_neuron_configs(t).map_err(|e| e.to_string()).and_then(|mut v| {
                        if v.len() == 1 { Ok(v.remove(0)) } else { Err(format!("`neuron_config` holds {} configs, not one", v.len())) }
                    })
                });
            }
        }
        let unit = |r: usize| ids.as_ref().map_or(format!("row {r}"), |a| a.as_string::<i32>().value(r).to_string());
        let mut keep = vec![true; n];
        let mut jobs: Vec<(usize, &GlifConfig, f64, f64, f64)> = Vec::new();
        for r in 0..n {
            if !names.is_valid(r) || !self.cfg.stimulus_names.iter().any(|x| x == names.value(r)) || !configs.is_valid(r) {
                continue;
            }
            match parsed.get(configs.value(r)) {
                Some(Ok(c)) => match (amp[r], start[r], dur[r]) {
                    (Some(a), Some(s0), Some(d)) if a.is_finite() && s0 >= 0.0 && d > 0.0 => jobs.push((r, c, a, s0, d)),
                    _ => {} // no square to play: null count, status says why below
                },
                Some(Err(e)) => {
                    keep[r] = false;
                    out.fail(unit(r), format!("neuron_config: {e}"));
                }
                None => {}
            }
        }
        let results: Vec<(usize, std::result::Result<glif::GlifSpikeCount, String>)> = jobs
            .par_iter()
            .map(|&(r, c, a, s0, d)| {
                let stim = square_stimulus_a(c.dt_s, a, s0, d, self.cfg.tail_s);
                (r, glif::count_spikes(c, &stim).map_err(|e| e.to_string()))
            })
            .collect();
        let mut count: Vec<Option<i64>> = vec![None; n];
        let mut status: Vec<Option<String>> = vec![None; n];
        for (r, st) in status.iter_mut().enumerate() {
            let selected = names.is_valid(r) && self.cfg.stimulus_names.iter().any(|x| x == names.value(r));
            if selected {
                *st = Some(if configs.is_valid(r) { "no_square".into() } else { "no_model".into() });
            }
        }
        for (r, res) in results {
            match res {
                Ok(c) => match c.status {
                    GlifRunStatus::Completed => {
                        count[r] = Some(c.n_spikes as i64);
                        status[r] = Some("ok".into());
                    }
                    GlifRunStatus::BadReset { .. } => status[r] = Some("bad_reset".into()),
                },
                Err(e) => status[r] = Some(format!("error: {e}")),
            }
        }
        let rows: Vec<u64> = (0..n).filter(|&r| keep[r]).map(|r| r as u64).collect();
        let idx = arrow::array::UInt64Array::from(rows.clone());
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
        columns.push(Arc::new(rows.iter().map(|&r| count[r as usize]).collect::<Int64Array>()));
        columns.push(Arc::new(rows.iter().map(|&r| status[r as usize].clone()).collect::<StringArray>()));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// ================================================================================================
// evaluate.regression
// ================================================================================================

/// Scores a prediction column against a target column: pooled and per value of `report_by`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRegression {
    /// The observed values [column].
    pub target: String,
    /// The predicted values (rows where it is null or non-finite are skipped and counted) [column].
    pub prediction: String,
    /// Also score each value of this column (e.g. the stimulus type) [column].
    #[serde(default)]
    pub report_by: Option<String>,
}

fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("scope", DataType::Utf8, false, None),
        field("rows", DataType::Int64, false, None),
        field("rows_skipped", DataType::Int64, false, None),
        field("r2", DataType::Float64, true, None),
        field("mae", DataType::Float64, true, None),
        field("rmse", DataType::Float64, true, None),
        field("pearson_r", DataType::Float64, true, None),
    ]))
}

impl StageConfig for EvaluateRegression {
    const KIND: &'static str = "evaluate.regression";
    const SUMMARY: &'static str =
        "Score an existing prediction column against a target (R², MAE, RMSE, Pearson r), pooled and per value of `report_by`; one row per scope";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (key, c, numeric) in [("target", Some(&self.target), true), ("prediction", Some(&self.prediction), true), ("report_by", self.report_by.as_ref(), false)] {
            let Some(c) = c else { continue };
            match input.field_with_name(c) {
                Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{c}`; it has: {}", column_list(input)))),
                Ok(f) if numeric && !is_numeric(f.data_type()) => issues.push(Issue::at(&[key], format!("`{c}` must be numeric"))),
                Ok(f) if !crate::stage::columns::is_scalar(f.data_type()) => issues.push(Issue::at(&[key], format!("`{c}` must be a scalar column"))),
                _ => {}
            }
        }
        if issues.is_empty() { Ok(metrics_schema()) } else { Err(issues) }
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(EvaluateOp { cfg: self.clone(), schema: output.clone(), rows: Vec::new() })))
    }
}

struct EvaluateOp {
    cfg: EvaluateRegression,
    schema: SchemaRef,
    /// (scope value, target, prediction) of every row seen.
    rows: Vec<(String, Option<f64>, Option<f64>)>,
}

impl TransformOperator for EvaluateOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        let f = |c: &str| -> Result<Vec<Option<f64>>> {
            let a = arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Float64)?;
            Ok(a.as_primitive::<Float64Type>().iter().collect())
        };
        let (y, p) = (f(&self.cfg.target)?, f(&self.cfg.prediction)?);
        let by: Vec<String> = match &self.cfg.report_by {
            Some(c) => {
                let a = arrow::compute::cast(batch.column_by_name(c).ok_or_else(|| Error::msg(format!("no column `{c}`")))?, &DataType::Utf8)?;
                a.as_string::<i32>().iter().map(|s| s.unwrap_or("<null>").to_string()).collect()
            }
            None => vec![String::new(); batch.num_rows()],
        };
        self.rows.extend(by.into_iter().zip(y).zip(p).map(|((b, y), p)| (b, y, p)));
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let mut scopes: Vec<(String, Vec<usize>)> = vec![("pooled".into(), (0..self.rows.len()).collect())];
        if let Some(col) = &self.cfg.report_by {
            let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
            for (i, r) in self.rows.iter().enumerate() {
                groups.entry(&r.0).or_default().push(i);
            }
            scopes.extend(groups.into_iter().map(|(g, v)| (format!("{col}={g}"), v)));
        }
        let (mut names, mut n, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        let mut vals: [Vec<Option<f64>>; 4] = Default::default();
        for (scope, sel) in scopes {
            let ok: Vec<(f64, f64)> = sel
                .iter()
                .filter_map(|&i| match (self.rows[i].1, self.rows[i].2) {
                    (Some(y), Some(p)) if y.is_finite() && p.is_finite() => Some((y, p)),
                    _ => None,
                })
                .collect();
            let (y, p): (Vec<f64>, Vec<f64>) = ok.iter().copied().unzip();
            let s = crate::train::metrics::regression_scores(&y, &p);
            names.push(scope);
            n.push(ok.len() as i64);
            skipped.push((sel.len() - ok.len()) as i64);
            for (k, m) in ["r2", "mae", "rmse", "pearson_r"].iter().enumerate() {
                vals[k].push(if y.is_empty() { None } else { s.values.get(*m).copied().filter(|v| v.is_finite()) });
            }
        }
        let [a, b, c, d] = vals;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(Int64Array::from(n)),
            Arc::new(Int64Array::from(skipped)),
            Arc::new(Float64Array::from(a)),
            Arc::new(Float64Array::from(b)),
            Arc::new(Float64Array::from(c)),
            Arc::new(Float64Array::from(d)),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_stimulus_has_its_onset_and_length() {
        let s = square_stimulus_a(5e-5, 100.0, 1.02, 1.0, 0.1);
        assert_eq!(s.len(), 20_400 + 20_000 + 2_000);
        assert_eq!(s[20_399], 0.0);
        assert_eq!(s[20_400], 100e-12);
        assert_eq!(s[40_399], 100e-12);
        assert_eq!(s[40_400], 0.0);
    }

    #[test]
    fn stimulus_codes_are_distinct() {
        let mut c: Vec<i64> = STIMULUS_CODES.iter().map(|x| x.1).collect();
        c.sort_unstable();
        c.dedup();
        assert_eq!(c.len(), STIMULUS_CODES.len());
        assert_eq!(stimulus_code("Long Square"), 1);
        assert_eq!(stimulus_code("Something new"), 99);
    }
}
