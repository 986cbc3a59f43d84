//! Study 4 stages: degenerate STG populations from spike times through the Dynamic Input
//! Conductances (spec `dic_stg.md`, Brandoit 2025 / Spike2Pop).
//!
//! The chain is `ingest.spike_times` (Spike2Pop's `ID,spiking_times` CSV) → `dic.estimate`
//! (spike train → target (g_s, g_u) at V_th) → `dic.population` (M cells per target: spiking
//! seed population, then iterative neuromodulation to the target) → `simulate.stg` (the STG
//! kernel) → `features.bursts` (activity class, burst metrics and van Rossum distance of every
//! simulated cell to its target train) → `dic.validate` (per target: population class and the
//! van Rossum ratio R of spec §7).
//!
//! **What `dic.estimate` is.** Spike2Pop predicts (g_s, g_u) with a trained transformer
//! (DICsNet, spec §6); no trained model exists in this project. Until one does, the stage is a
//! transparent stand-in: a k-nearest-neighbour regression in ISI-statistics space over a
//! reference set that the stage simulates itself with the thesis data-set protocol (a grid of
//! (g_s, g_u) targets, neuromodulated populations, STG simulation, the recorded window). It
//! predicts the mean target of the k reference cells of the same activity class whose ISI
//! statistics are closest. It is not DICsNet and inherits none of its reported accuracy; it is
//! deterministic (seeded), cheap to audit, and its distance column says how far the train is from
//! anything in the reference set.
//!
//! **What R is here.** The thesis divides the mean distance from the input train x to the
//! generated population P′ by the mean distance from x to the other members of x's own
//! ground-truth population P. Spike trains given to this pipeline come without their population,
//! so the denominator is replaced by the mean pairwise distance within P′ (its own degenerate
//! spread): R ≤ 1 means the input train is no farther from the generated cells than they are
//! from each other. This is documented as a deviation from the thesis protocol. The distance is
//! the thesis function (τ from the first train of each pair); the numerator uses the input
//! train's τ as the thesis does (its `compute_van_rossum_distance` takes x as the reference for
//! both its numerator and its denominator), the proxy denominator each cell's own τ. Because
//! that denominator depends on the generated population, minimising the proxy can reward a
//! spread-out population instead of one near the train; the estimate's refinement therefore
//! ranks candidates by the numerator by default (see [`RefineCriterion`]).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, LargeListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{field, type_name, unit_of};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, SourceOperator, StageConfig, StageContext, TransformOperator};
use crate::dic::DicStageError;
use crate::dic::estimate::{Estimate, RefineCriterion, RefineProtocol, estimable_class, estimate_targets, refine_estimate};
use crate::dic::features::{ActivityClass, SpikeTrainFeatures, extract_features, van_rossum_distance};
use crate::dic::isi::{ISI_FEATURE_NAMES, isi_feature_vector};
use crate::dic::population::{PopulationProtocol, population_for_target, unit_seed};
use crate::dic::reference::{ReferenceProtocol, ReferenceSet, build_reference};
use crate::dic::spike_times::{HEADER, parse_spike_line, short};
use crate::dic::validation::{PopulationTally, TargetSummary};
use crate::error::{Error, Result};
use crate::train::models::FittedModel;
use crate::simulate::stg::{CONDUCTANCE_NAMES, N_CONDUCTANCES, SimulationConfig};

// ================================================================================================
// Arrow helpers
// ================================================================================================

fn f64_list_type() -> DataType {
    DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false)))
}

fn f64_lists<'a>(rows: impl Iterator<Item = &'a [f64]>) -> Result<LargeListArray> {
    let mut values = Vec::new();
    let mut offsets = vec![0i64];
    for r in rows {
        values.extend_from_slice(r);
        offsets.push(values.len() as i64);
    }
    Ok(LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float64, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(Float64Array::from(values)),
        None,
    )?)
}

fn is_f64_list(t: &DataType) -> bool {
    matches!(t, DataType::List(f) | DataType::LargeList(f) if f.data_type() == &DataType::Float64)
}

/// Milliseconds per unit of a spike-time column (`ms` or `s`), or the issue.
pub(super) fn ms_per_unit(schema: &Schema, column: &str, key: &str) -> std::result::Result<f64, Issue> {
    let Ok(f) = schema.field_with_name(column) else {
        return Err(Issue::at(&[key], format!("the input has no column `{column}` (spike times needed); it has: {}", crate::stage::columns::column_list(schema))));
    };
    if !is_f64_list(f.data_type()) {
        return Err(Issue::at(&[key], format!("column `{column}` is {}, but list<float64> spike times are needed", type_name(f.data_type()))));
    }
    match unit_of(f) {
        Some("ms") => Ok(1.0),
        Some("s") => Ok(1000.0),
        Some(u) => Err(Issue::at(&[key], format!("column `{column}` is in {u}; spike times in ms or s are needed"))),
        None => Err(Issue::at(&[key], format!("column `{column}` has no unit; spike times in ms or s are needed"))),
    }
}

/// The rows of a list<f64> column as ms (null → None), scaled by `ms_per_unit`.
pub(super) fn lists_ms(batch: &RecordBatch, name: &str, ms_per_unit: f64) -> Result<Vec<Option<Vec<f64>>>> {
    let col = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}` in the batch")))?;
    let col = arrow::compute::cast(col, &DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, true))))?;
    let l = col.as_list::<i64>();
    Ok((0..l.len())
        .map(|i| {
            (!l.is_null(i)).then(|| {
                let v = l.value(i);
                v.as_primitive::<Float64Type>().iter().map(|x| x.unwrap_or(f64::NAN) * ms_per_unit).collect()
            })
        })
        .collect())
}

fn f64_column(batch: &RecordBatch, name: &str) -> Result<Float64Array> {
    let col = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}` in the batch")))?;
    Ok(arrow::compute::cast(col, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let col = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}` in the batch")))?;
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    Ok(col.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
}

fn require_column(schema: &Schema, column: &str, expected: &str, accept: impl Fn(&DataType) -> bool) -> std::result::Result<(), Issue> {
    crate::stage::columns::require(schema, "inputs[0]", column, expected, accept, None, &["inputs"])
}

pub(super) fn no_clash(schema: &Schema, added: &[&str]) -> Vec<Issue> {
    schema
        .fields()
        .iter()
        .filter(|f| added.contains(&f.name().as_str()))
        .map(|f| Issue::inputs(format!("the input already has a column `{}` that this stage adds", f.name())))
        .collect()
}
// ================================================================================================
// ingest.spike_times
// ================================================================================================

fn default_min_spikes() -> usize {
    3
}
fn default_ingest_rows() -> usize {
    1024
}
fn default_time_unit() -> String {
    "ms".into()
}

/// Reads a Spike2Pop spike-time CSV (`ID,spiking_times`, the times a quoted `"[t1, t2, ...]"`
/// list) into one row per train: `recording_id` (the ID), `spike_times` (list<float64>, in the
/// file's unit, ms for Spike2Pop files, as written: not shifted), `spike_count`. A bad row
/// (malformed list, non-number, negative, unsorted or duplicate time, too few spikes, repeated
/// ID) fails alone, named by its ID (or `line N` when it has none).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestSpikeTimes {
    /// The CSV file, relative to the pipeline file [path].
    pub path: String,
    /// Unit of the times in the file: `ms` (Spike2Pop) or `s` [unit].
    #[serde(default = "default_time_unit")]
    pub time_unit: String,
    /// Fewest spikes a train may have; Spike2Pop drops trains with fewer than 3 as silent [spikes].
    #[serde(default = "default_min_spikes")]
    pub min_spikes: usize,
    /// Rows per emitted batch [rows].
    #[serde(default = "default_ingest_rows")]
    pub batch_rows: usize,
}

impl IngestSpikeTimes {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("spike_times", f64_list_type(), false, Some(&self.time_unit)),
            field("spike_count", DataType::Int64, false, None),
        ]))
    }
}

impl StageConfig for IngestSpikeTimes {
    const KIND: &'static str = "ingest.spike_times";
    const SUMMARY: &'static str = "Read a Spike2Pop spike-time CSV (ID,spiking_times) into one row per train";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Source
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !ctx.resolve(&self.path).is_file() {
            issues.push(Issue::at(&["path"], format!("no file `{}`", ctx.resolve(&self.path).display())));
        }
        if self.time_unit != "ms" && self.time_unit != "s" {
            issues.push(Issue::at(&["time_unit"], format!("`{}` is not `ms` or `s`", self.time_unit)));
        }
        if self.min_spikes < 2 {
            issues.push(Issue::at(&["min_spikes"], "at least 2 spikes are needed for an ISI"));
        }
        if self.batch_rows == 0 {
            issues.push(Issue::at(&["batch_rows"], "batch_rows must be at least 1"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, _inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        Ok(self.schema())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(vec![ctx.resolve(&self.path)])
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Source(Box::new(SpikeCsvSource {
            path: ctx.resolve(&self.path),
            lines: None,
            next_line: 0,
            seen: HashSet::new(),
            cfg: self.clone(),
            schema: output.clone(),
        })))
    }
}

struct SpikeCsvSource {
    path: PathBuf,
    lines: Option<Vec<String>>,
    next_line: usize,
    seen: HashSet<String>,
    cfg: IngestSpikeTimes,
    schema: SchemaRef,
}

impl SourceOperator for SpikeCsvSource {
    fn next(&mut self, out: &mut Emitter) -> Result<bool> {
        if self.lines.is_none() {
            let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let header = lines.first().map(|h| h.trim().to_string()).unwrap_or_default();
            let cols: Vec<&str> = header.split(',').map(|c| c.trim().trim_matches('"')).collect();
            if cols != HEADER {
                out.fail(
                    self.path.display().to_string(),
                    format!("header is `{}`, expected `ID,spiking_times` (Spike2Pop format)", short(&header)),
                );
                self.lines = Some(Vec::new());
                return Ok(false);
            }
            lines.remove(0);
            self.lines = Some(lines);
            self.next_line = 0;
        }
        let lines = self.lines.as_ref().expect("read");
        if self.next_line >= lines.len() {
            return Ok(false);
        }
        let (mut ids, mut trains) = (Vec::new(), Vec::new());
        while self.next_line < lines.len() && ids.len() < self.cfg.batch_rows {
            let line_no = self.next_line + 2; // 1-based, after the header
            let line = &lines[self.next_line];
            self.next_line += 1;
            if line.trim().is_empty() {
                continue;
            }
            let (id, parsed) = parse_spike_line(line, line_no, self.cfg.min_spikes);
            let unit = id.clone().unwrap_or_else(|| format!("line {line_no}"));
            match (id, parsed) {
                (Some(id), Ok(times)) => {
                    if !self.seen.insert(id.clone()) {
                        out.fail(unit, DicStageError::DuplicateId(id).to_string());
                        continue;
                    }
                    ids.push(id);
                    trains.push(times);
                }
                (_, Err(e)) => out.fail(unit, format!("line {line_no}: {e}")),
                (None, Ok(_)) => unreachable!("no id means a parse error"),
            }
        }
        if !ids.is_empty() {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(ids.iter())),
                Arc::new(f64_lists(trains.iter().map(Vec::as_slice))?),
                Arc::new(Int64Array::from_iter_values(trains.iter().map(|t| t.len() as i64))),
            ];
            out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        Ok(true)
    }
}

// ================================================================================================
// dic.estimate
// ================================================================================================
fn default_spike_column() -> String {
    "spike_times".into()
}
fn default_gs_min() -> f64 {
    -20.0
}
fn default_gs_max() -> f64 {
    20.0
}
fn default_gs_points() -> usize {
    21
}
fn default_gu_min() -> f64 {
    1.0
}
fn default_gu_max() -> f64 {
    19.0
}
fn default_gu_points() -> usize {
    10
}
fn default_ref_cells() -> usize {
    3
}
fn default_k() -> usize {
    5
}
fn default_ref_dt() -> f64 {
    0.025
}
fn default_ref_duration() -> f64 {
    6000.0
}
fn default_ref_transient() -> f64 {
    3000.0
}
fn default_v_th() -> f64 {
    -51.0
}
fn default_iterations() -> usize {
    5
}
fn default_max_residual() -> f64 {
    0.1
}

/// Estimates the target DICs (g_s, g_u) at V_th of each spike train. NOT the thesis network:
/// a k-nearest-neighbour regression in ISI-statistics space (ln min/median/max/mean ISI, CV)
/// over a reference set this stage simulates itself (grid of targets → neuromodulated cells →
/// STG simulation with the data-set protocol), restricted to the train's activity class.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicEstimate {
    /// Input column with the spike times (list<float64> in ms or s) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Lowest g_s target of the reference grid [g_leak].
    #[serde(default = "default_gs_min")]
    pub g_s_min: f64,
    /// Highest g_s target of the reference grid [g_leak].
    #[serde(default = "default_gs_max")]
    pub g_s_max: f64,
    /// Number of g_s grid points [points].
    #[serde(default = "default_gs_points")]
    pub g_s_points: usize,
    /// Lowest g_u target of the reference grid [g_leak].
    #[serde(default = "default_gu_min")]
    pub g_u_min: f64,
    /// Highest g_u target of the reference grid [g_leak].
    #[serde(default = "default_gu_max")]
    pub g_u_max: f64,
    /// Number of g_u grid points [points].
    #[serde(default = "default_gu_points")]
    pub g_u_points: usize,
    /// Cells generated and simulated per reference target [cells].
    #[serde(default = "default_ref_cells")]
    pub cells_per_reference: usize,
    /// Neighbours averaged by the estimate [cells].
    #[serde(default = "default_k")]
    pub neighbours: usize,
    /// Integration step of the reference simulations [ms].
    #[serde(default = "default_ref_dt")]
    pub dt_ms: f64,
    /// Simulated time of each reference cell, transient included [ms].
    #[serde(default = "default_ref_duration")]
    pub duration_ms: f64,
    /// Initial part of each reference simulation that is not recorded [ms].
    #[serde(default = "default_ref_transient")]
    pub transient_ms: f64,
    /// Voltage at which the DICs are set [mV].
    #[serde(default = "default_v_th")]
    pub v_th_mv: f64,
    /// Fixed-point iterations of the iterative compensation [iterations].
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Reference cells farther than this from their target (‖(g_s, g_u) − target‖₂) are dropped [g_leak].
    #[serde(default = "default_max_residual")]
    pub max_residual: f64,
    /// Trained models (`model-g_s_target.json`, `model-g_u_target.json` of a `train.regress` on
    /// `features.isi`, e.g. `pipelines/dic_train.toml`): when both are given they replace the
    /// k-nearest-neighbour reference set [path].
    #[serde(default)]
    pub model_g_s: Option<String>,
    /// See `model_g_s` [path].
    #[serde(default)]
    pub model_g_u: Option<String>,
    /// Trained models per activity class, used instead of `model_g_s` / `model_g_u`:
    /// `{ spiking = { g_s = "...", g_u = "..." }, bursting = { g_s = "...", g_u = "..." } }`.
    /// Tonic spiking is degenerate in g_s (many targets fire alike): a class-blind regressor
    /// averages spiking and bursting targets and can land where the population bursts; one
    /// regressor per class (the class is exact from the spike times) keeps the estimate inside
    /// the train's own class [table].
    #[serde(default)]
    pub models_by_class: Option<ClassModels>,
    /// Simulation-based refinement of each estimate (see [`Refine`]); absent = none [table].
    #[serde(default)]
    pub refine: Option<Refine>,
}

fn d_refine_step() -> f64 {
    2.0
}
fn d_refine_radius() -> usize {
    1
}
fn d_refine_cells() -> usize {
    8
}
fn d_refine_duration() -> f64 {
    4000.0
}
fn d_refine_rounds() -> usize {
    1
}

/// Refinement of an estimate by simulation: the (2r+1)² targets on a grid of `step` around the
/// estimate each get `cells` neuromodulated cells, simulated with the validation protocol
/// (`duration_ms` after the estimate's `transient_ms`); the target whose population matches the
/// train's class in most cells, then lies nearest to the train in mean van Rossum distance,
/// replaces the estimate. The regression gives the conditional mean of (g_s, g_u), which for a
/// degenerate train (tonic spiking) or one near the spiking/bursting border can fall where the
/// population does something else; a few simulations check it against the train itself.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Refine {
    /// Grid step in g_s [g_leak].
    #[serde(default = "d_refine_step")]
    pub step_g_s: f64,
    /// Grid step in g_u [g_leak].
    #[serde(default = "d_refine_step")]
    pub step_g_u: f64,
    /// Grid half-width in steps (1 = 3 x 3 candidates) [steps].
    #[serde(default = "d_refine_radius")]
    pub radius: usize,
    /// Cells simulated per candidate [cells].
    #[serde(default = "d_refine_cells")]
    pub cells: usize,
    /// Simulated time per cell, the estimate's `transient_ms` included [ms].
    #[serde(default = "d_refine_duration")]
    pub duration_ms: f64,
    /// Successive grids: each later round is centred on the previous round's choice with half
    /// the previous step, so `rounds = 2` with step 1 ends on a 0.5 grid [rounds].
    #[serde(default = "d_refine_rounds")]
    pub rounds: usize,
    /// What ranks the candidates whose cells match the train's class equally often:
    /// `distance` = mean van Rossum distance from the train to the candidate's cells (the
    /// numerator of R; with the thesis' fixed ground-truth denominator, minimising it is
    /// minimising R), `ratio` = the R proxy of `dic.validate` on the candidate's cells (mean
    /// distance to the train over the mean pairwise distance inside the candidate population)
    /// [criterion].
    #[serde(default)]
    pub criterion: RefineCriterion,
}

/// Paths of a (g_s, g_u) regressor pair.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPair {
    pub g_s: String,
    pub g_u: String,
}

/// One regressor pair per non-silent activity class.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassModels {
    pub spiking: ModelPair,
    pub bursting: ModelPair,
}

/// Loaded estimator models: one pair for every class, or one pair per class.
pub struct EstimatorModels {
    any: Option<(FittedModel, FittedModel)>,
    spiking: Option<(FittedModel, FittedModel)>,
    bursting: Option<(FittedModel, FittedModel)>,
}

impl DicEstimate {
    fn models(&self, ctx: &StageContext) -> std::result::Result<Option<EstimatorModels>, Issue> {
        let load = |key: &str, p: &str| -> std::result::Result<FittedModel, Issue> {
            let path = ctx.resolve(p);
            let m = FittedModel::from_file(&path).map_err(|e| Issue::at(&[key], e))?;
            let want: Vec<String> = (0..ISI_FEATURE_NAMES.len()).map(|i| format!("isi_features[{i}]")).collect();
            if m.feature_names != want {
                return Err(Issue::at(&[key], format!("{}: the model was not trained on the {} `isi_features` of features.isi", path.display(), want.len())));
            }
            Ok(m)
        };
        let any = match (&self.model_g_s, &self.model_g_u) {
            (None, None) => None,
            (Some(a), Some(b)) => Some((load("model_g_s", a)?, load("model_g_u", b)?)),
            _ => return Err(Issue::at(&["model_g_s"], "give both model_g_s and model_g_u, or neither")),
        };
        let by = match &self.models_by_class {
            None => None,
            Some(_) if any.is_some() => return Err(Issue::at(&["models_by_class"], "give models_by_class or model_g_s / model_g_u, not both")),
            Some(c) => Some((
                (load("models_by_class", &c.spiking.g_s)?, load("models_by_class", &c.spiking.g_u)?),
                (load("models_by_class", &c.bursting.g_s)?, load("models_by_class", &c.bursting.g_u)?),
            )),
        };
        Ok(match (any, by) {
            (None, None) => None,
            (any, Some((sp, bu))) => Some(EstimatorModels { any, spiking: Some(sp), bursting: Some(bu) }),
            (any, None) => Some(EstimatorModels { any, spiking: None, bursting: None }),
        })
    }

    /// The cells of a reference target or a refinement candidate: `cells` of them, kept within
    /// this stage's residual.
    fn population(&self, cells: usize) -> PopulationProtocol {
        PopulationProtocol { cells, v_th_mv: self.v_th_mv, iterations: self.iterations, max_residual: self.max_residual }
    }

    /// The STG simulation of the reference cells, or of the refinement's (`duration_ms`).
    fn simulation(&self, duration_ms: f64) -> SimulationConfig {
        SimulationConfig { dt_ms: self.dt_ms, duration_ms, transient_ms: self.transient_ms, ..SimulationConfig::default() }
    }

    fn protocol(&self) -> ReferenceProtocol {
        ReferenceProtocol {
            g_s_range: (self.g_s_min, self.g_s_max, self.g_s_points),
            g_u_range: (self.g_u_min, self.g_u_max, self.g_u_points),
            population: self.population(self.cells_per_reference),
            sim: self.simulation(self.duration_ms),
        }
    }

    fn refine_protocol(&self, r: &Refine) -> RefineProtocol {
        RefineProtocol {
            step_g_s: r.step_g_s,
            step_g_u: r.step_g_u,
            radius: r.radius,
            rounds: r.rounds,
            criterion: r.criterion,
            population: self.population(r.cells),
            sim: self.simulation(r.duration_ms),
        }
    }
}

const ESTIMATE_ADDED: [&str; 5] = ["target_class", "g_s_target", "g_u_target", "estimate_distance", "estimate_neighbours"];

fn check_sim(issues: &mut Vec<Issue>, dt_ms: f64, duration_ms: f64, transient_ms: f64) {
    if !(dt_ms.is_finite() && dt_ms > 0.0 && dt_ms <= 0.025) {
        issues.push(Issue::at(&["dt_ms"], format!("{dt_ms} must be in (0, 0.025] ms (exponential Euler loses spike-time accuracy above)")));
    }
    if !(duration_ms.is_finite() && duration_ms > 0.0 && duration_ms <= 1e6) {
        issues.push(Issue::at(&["duration_ms"], format!("{duration_ms} must be in (0, 1e6] ms")));
    }
    if !(transient_ms.is_finite() && transient_ms >= 0.0 && transient_ms < duration_ms) {
        issues.push(Issue::at(&["transient_ms"], format!("{transient_ms} must be in [0, duration_ms)")));
    }
}

impl StageConfig for DicEstimate {
    const KIND: &'static str = "dic.estimate";
    const SUMMARY: &'static str = "Spike train -> target (g_s, g_u): trained regressors on features.isi, or kNN in ISI-statistics space over a simulated reference set";
    const CODE_VERSION: u32 = 2;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (key, lo, hi, n) in [("g_s_points", self.g_s_min, self.g_s_max, self.g_s_points), ("g_u_points", self.g_u_min, self.g_u_max, self.g_u_points)] {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                issues.push(Issue::at(&[key], format!("grid range [{lo}, {hi}] must be finite and ordered")));
            }
            if n == 0 || n > 1000 {
                issues.push(Issue::at(&[key], format!("{n} grid points; give 1..=1000")));
            }
        }
        if self.g_u_min < 0.0 {
            issues.push(Issue::at(&["g_u_min"], "negative g_u targets are not spiking cells; use >= 0"));
        }
        if self.cells_per_reference == 0 || self.cells_per_reference * self.g_s_points * self.g_u_points > 1_000_000 {
            issues.push(Issue::at(&["cells_per_reference"], "must be >= 1 and give at most 1e6 reference cells"));
        }
        if self.neighbours == 0 {
            issues.push(Issue::at(&["neighbours"], "must be >= 1"));
        }
        check_sim(&mut issues, self.dt_ms, self.duration_ms, self.transient_ms);
        if !(self.v_th_mv.is_finite() && (-100.0..=0.0).contains(&self.v_th_mv)) {
            issues.push(Issue::at(&["v_th_mv"], "must be in [-100, 0] mV"));
        }
        if self.iterations > 1000 {
            issues.push(Issue::at(&["iterations"], "at most 1000"));
        }
        if !(self.max_residual.is_finite() && self.max_residual > 0.0) {
            issues.push(Issue::at(&["max_residual"], "must be finite and > 0"));
        }
        if let Err(i) = self.models(_ctx) {
            issues.push(i);
        }
        if let Some(r) = &self.refine {
            for (k, v) in [("step_g_s", r.step_g_s), ("step_g_u", r.step_g_u)] {
                if !(v.is_finite() && v > 0.0) {
                    issues.push(Issue::at(&["refine", k], format!("{v} must be finite and > 0")));
                }
            }
            if r.radius > 5 {
                issues.push(Issue::at(&["refine", "radius"], "at most 5 (121 candidates)"));
            }
            if r.cells == 0 || r.cells > 1000 {
                issues.push(Issue::at(&["refine", "cells"], "must be in 1..=1000"));
            }
            if !(r.duration_ms.is_finite() && r.duration_ms > self.transient_ms) {
                issues.push(Issue::at(&["refine", "duration_ms"], "must be finite and longer than transient_ms"));
            }
            if r.rounds == 0 || r.rounds > 8 {
                issues.push(Issue::at(&["refine", "rounds"], format!("{} rounds; give 1..=8", r.rounds)));
            }
        }
        issues
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        let mut paths: Vec<&String> = self.model_g_s.iter().chain(&self.model_g_u).collect();
        if let Some(c) = &self.models_by_class {
            paths.extend([&c.spiking.g_s, &c.spiking.g_u, &c.bursting.g_s, &c.bursting.g_u]);
        }
        Ok(paths.into_iter().map(|p| ctx.resolve(p)).collect())
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &ESTIMATE_ADDED);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if let Err(i) = require_column(input, "recording_id", "a string id", crate::stage::columns::is_string) {
            issues.push(i);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("target_class", DataType::Utf8, false, None));
        fields.push(field("g_s_target", DataType::Float64, false, Some("g_leak")));
        fields.push(field("g_u_target", DataType::Float64, false, Some("g_leak")));
        fields.push(field("estimate_distance", DataType::Float64, false, None));
        fields.push(field("estimate_neighbours", DataType::Int64, false, None));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let scale = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| Error::msg(i.message))?;
        Ok(Operator::Transform(Box::new(EstimateOperator {
            cfg: self.clone(),
            seed: ctx.seed,
            ms_per_unit: scale,
            reference: None,
            models: self.models(ctx).map_err(|i| Error::msg(i.message))?.map(Arc::new),
            schema: output.clone(),
        })))
    }
}

struct EstimateOperator {
    cfg: DicEstimate,
    seed: u64,
    ms_per_unit: f64,
    /// Built on the first batch (so validating a pipeline costs nothing).
    reference: Option<Arc<ReferenceSet>>,
    /// Trained (g_s, g_u) regressors on features.isi, used instead of the reference set.
    models: Option<Arc<EstimatorModels>>,
    schema: SchemaRef,
}
/// The estimate of a trained pair of regressors on the train's ISI features (class from the
/// Spike2Pop rule, as the reference-set estimate does).
fn estimate_with_models(all: &EstimatorModels, times_ms: &[f64]) -> std::result::Result<Estimate, DicStageError> {
    let class = estimable_class(times_ms)?;
    let models = match class {
        ActivityClass::Silent => unreachable!("estimable_class refuses silent trains"),
        ActivityClass::Spiking => all.spiking.as_ref().or(all.any.as_ref()),
        ActivityClass::Bursting => all.bursting.as_ref().or(all.any.as_ref()),
    }
    .expect("a pair for every class");
    let v = isi_feature_vector(times_ms).ok_or_else(|| DicStageError::BadTrain("zero or non-finite ISI".into()))?;
    let names: Vec<String> = (0..v.len()).map(|i| format!("isi_features[{i}]")).collect();
    let x = ndarray::Array2::from_shape_vec((1, v.len()), v.to_vec()).expect("1 x 23");
    let one = |m: &FittedModel| -> std::result::Result<f64, DicStageError> {
        match m.predict(&names, x.view()) {
            Ok(crate::train::models::Prediction::Values(p)) => Ok(p[0]),
            Ok(_) => Err(DicStageError::BadTrain("the model is not a regressor".into())),
            Err(e) => Err(DicStageError::BadTrain(e.to_string())),
        }
    };
    Ok(Estimate { class, g_s: one(&models.0)?, g_u: one(&models.1)?, distance: f64::NAN, neighbours: 0 })
}

impl TransformOperator for EstimateOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        if self.reference.is_none() && self.models.is_none() {
            let r = build_reference(&self.cfg.protocol(), self.seed).map_err(|e| Error::msg(format!("building the reference set: {e}")))?;
            if r.cells.is_empty() {
                return Err(Error::msg("the reference set has no spiking or bursting cell; widen the grid"));
            }
            self.reference = Some(Arc::new(r));
        }
        let reference = self.reference.clone();
        let models = self.models.clone();
        let ids = string_column(&batch, "recording_id")?;
        let trains = lists_ms(&batch, &self.cfg.spike_column, self.ms_per_unit)?;
        let mut keep = Vec::new();
        let mut est = Vec::new();
        for (row, (id, train)) in ids.iter().zip(&trains).enumerate() {
            let unit = id.clone().unwrap_or_else(|| format!("row {row}"));
            let Some(train) = train else {
                out.fail(unit, "null spike train");
                continue;
            };
            let e = match (&models, &reference) {
                (Some(m), _) => estimate_with_models(m, train),
                (None, Some(r)) => estimate_targets(r, train, self.cfg.neighbours),
                (None, None) => unreachable!("reference built above"),
            };
            let e = match (e, &self.cfg.refine) {
                (Ok(e), Some(r)) => refine_estimate(&self.cfg.refine_protocol(r), e, train, unit_seed(self.seed, &unit)),
                (e, _) => e,
            };
            match e {
                Ok(e) => {
                    keep.push(row as u32);
                    est.push(e);
                }
                Err(e) => out.fail(unit, e.to_string()),
            }
        }
        if keep.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(keep);
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
        columns.push(Arc::new(StringArray::from_iter_values(est.iter().map(|e| e.class.name()))));
        columns.push(Arc::new(Float64Array::from_iter_values(est.iter().map(|e| e.g_s))));
        columns.push(Arc::new(Float64Array::from_iter_values(est.iter().map(|e| e.g_u))));
        columns.push(Arc::new(Float64Array::from_iter_values(est.iter().map(|e| e.distance))));
        columns.push(Arc::new(Int64Array::from_iter_values(est.iter().map(|e| e.neighbours as i64))));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// ================================================================================================
// dic.population
// ================================================================================================

fn default_cells() -> usize {
    16
}
fn default_min_kept() -> f64 {
    0.5
}
fn default_target_column() -> String {
    "target_spike_times".into()
}

/// Generates a degenerate population for each target row: `cells_per_target` cells from the
/// spiking seed population neuromodulated to (g_s_target, g_u_target) at V_th (iterative
/// compensation, kernel defaults), one output row per kept cell with the eight conductances,
/// the achieved (g_s, g_u) and the residual. Cells with a negative conductance or a residual
/// above `max_residual` are dropped and counted; a target keeping fewer than
/// `min_kept_fraction` of its cells is unreachable and fails (with its residual).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicPopulation {
    /// Cells generated per target (M) [cells].
    #[serde(default = "default_cells")]
    pub cells_per_target: usize,
    /// Voltage at which the DICs are set [mV].
    #[serde(default = "default_v_th")]
    pub v_th_mv: f64,
    /// Fixed-point iterations of the iterative compensation (thesis default 5) [iterations].
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Largest ‖(g_s, g_u) − target‖₂ a kept cell may have (the thesis reachability threshold) [g_leak].
    #[serde(default = "default_max_residual")]
    pub max_residual: f64,
    /// Fewest kept cells, as a fraction of cells_per_target, for the target to count as reachable [fraction].
    #[serde(default = "default_min_kept")]
    pub min_kept_fraction: f64,
    /// Input column with the target's spike train, carried along as `target_spike_times` for
    /// validation (empty string: none) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Leave unreachable targets out silently instead of failing them (data-set generation over
    /// a plane that has unreachable corners; the count is in the stage's row counters) [bool].
    #[serde(default)]
    pub drop_unreachable: bool,
}

impl DicPopulation {
    fn protocol(&self) -> PopulationProtocol {
        PopulationProtocol { cells: self.cells_per_target, v_th_mv: self.v_th_mv, iterations: self.iterations, max_residual: self.max_residual }
    }
}

const POPULATION_ADDED: [&str; 18] = [
    "target_spike_count", "cell", "g_Na", "g_Kd", "g_CaT", "g_CaS", "g_KCa", "g_A", "g_H", "g_leak", "g_s_achieved", "g_u_achieved", "residual",
    "cells_requested", "cells_kept", "dropped_negative", "dropped_residual", "target_spike_times",
];

impl StageConfig for DicPopulation {
    const KIND: &'static str = "dic.population";
    const SUMMARY: &'static str = "Targets (g_s, g_u) -> M neuromodulated STG cells per target (iterative compensation)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.cells_per_target == 0 || self.cells_per_target > 1_000_000 {
            issues.push(Issue::at(&["cells_per_target"], "must be in 1..=1000000"));
        }
        if !(self.v_th_mv.is_finite() && (-100.0..=0.0).contains(&self.v_th_mv)) {
            issues.push(Issue::at(&["v_th_mv"], "must be in [-100, 0] mV"));
        }
        if self.iterations > 1000 {
            issues.push(Issue::at(&["iterations"], "at most 1000"));
        }
        if !(self.max_residual.is_finite() && self.max_residual > 0.0) {
            issues.push(Issue::at(&["max_residual"], "must be finite and > 0"));
        }
        if !(self.min_kept_fraction.is_finite() && (0.0..=1.0).contains(&self.min_kept_fraction)) {
            issues.push(Issue::at(&["min_kept_fraction"], "must be in [0, 1]"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &POPULATION_ADDED);
        for c in ["g_s_target", "g_u_target"] {
            if let Err(i) = require_column(input, c, "a numeric column", |t| t.is_numeric()) {
                issues.push(i);
            }
        }
        if let Err(i) = require_column(input, "recording_id", "a string id", crate::stage::columns::is_string) {
            issues.push(i);
        }
        let train = (!self.spike_column.is_empty()).then(|| ms_per_unit(input, &self.spike_column, "spike_column"));
        if let Some(Err(i)) = &train {
            issues.push(i.clone());
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = Vec::new();
        for f in input.fields() {
            if f.name() == &self.spike_column {
                fields.push(f.as_ref().clone().with_name("target_spike_times"));
            } else if f.name() == "spike_count" {
                // The simulation downstream adds the cell's own `spike_count`: keep the target's
                // under its own name (pipeline composition bug: two `spike_count` columns).
                fields.push(f.as_ref().clone().with_name("target_spike_count"));
            } else {
                fields.push(f.as_ref().clone());
            }
        }
        fields.push(field("cell", DataType::Int64, false, None));
        for name in CONDUCTANCE_NAMES {
            fields.push(field(name, DataType::Float64, false, Some("mS/cm2")));
        }
        fields.push(field("g_s_achieved", DataType::Float64, false, Some("g_leak")));
        fields.push(field("g_u_achieved", DataType::Float64, false, Some("g_leak")));
        fields.push(field("residual", DataType::Float64, false, Some("g_leak")));
        fields.push(field("cells_requested", DataType::Int64, false, None));
        fields.push(field("cells_kept", DataType::Int64, false, None));
        fields.push(field("dropped_negative", DataType::Int64, false, None));
        fields.push(field("dropped_residual", DataType::Int64, false, None));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(PopulationOperator { cfg: self.clone(), seed: ctx.seed, schema: output.clone() })))
    }
}

struct PopulationOperator {
    cfg: DicPopulation,
    seed: u64,
    schema: SchemaRef,
}

impl TransformOperator for PopulationOperator {
    /// One output batch per target, so a large population streams out target by target.
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let ids = string_column(&batch, "recording_id")?;
        let gs = f64_column(&batch, "g_s_target")?;
        let gu = f64_column(&batch, "g_u_target")?;
        let m = self.cfg.cells_per_target;
        let min_kept = ((self.cfg.min_kept_fraction * m as f64).ceil() as usize).max(1);
        for row in 0..batch.num_rows() {
            let unit = ids[row].clone().unwrap_or_else(|| format!("row {row}"));
            if gs.is_null(row) || gu.is_null(row) || !gs.value(row).is_finite() || !gu.value(row).is_finite() {
                out.fail(unit, "g_s_target / g_u_target is null or not finite");
                continue;
            }
            let (g_s, g_u) = (gs.value(row), gu.value(row));
            let seed = unit_seed(self.seed, &unit);
            let pop = match population_for_target(&self.cfg.protocol(), seed, g_s, g_u) {
                Ok(p) => p,
                Err(e) => {
                    out.fail(unit, format!("population generation failed: {e}"));
                    continue;
                }
            };
            let kept = pop.conductances.len();
            if kept < min_kept && self.cfg.drop_unreachable {
                continue;
            }
            if kept < min_kept {
                out.fail(
                    unit,
                    format!(
                        "unreachable target (g_s, g_u) = ({g_s:.4}, {g_u:.4}): {kept}/{m} cells within residual {} \
                         ({} with a negative conductance, {} with a larger residual; mean residual of the solved cells {:.4})",
                        self.cfg.max_residual, pop.dropped_negative, pop.dropped_residual, pop.mean_residual_all
                    ),
                );
                continue;
            }
            let idx = UInt32Array::from(vec![row as u32; kept]);
            let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
            columns.push(Arc::new(Int64Array::from_iter_values(0..kept as i64)));
            for k in 0..N_CONDUCTANCES {
                columns.push(Arc::new(Float64Array::from_iter_values(pop.conductances.iter().map(|g| g[k]))));
            }
            columns.push(Arc::new(Float64Array::from_iter_values(pop.achieved_gs_gu.iter().map(|a| a.0))));
            columns.push(Arc::new(Float64Array::from_iter_values(pop.achieved_gs_gu.iter().map(|a| a.1))));
            columns.push(Arc::new(Float64Array::from(pop.residuals.clone())));
            for v in [m, kept, pop.dropped_negative, pop.dropped_residual] {
                columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(v as i64, kept))));
            }
            out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        Ok(())
    }
}

// ================================================================================================
// features.bursts
// ================================================================================================

fn default_vr_dt() -> f64 {
    0.1
}
fn default_vr_eps() -> f64 {
    1e-6
}

/// Per simulated cell: activity class, burst metrics (Spike2Pop's extractor: spikes per burst,
/// burst duration, intra- and inter-burst frequency, tonic frequency; 0 where the metric does not
/// apply to the class and NaN where upstream gives NaN) and the thesis van Rossum distance
/// d(target, cell) with τ from the target train (null when the row has no target train of ≥ 2
/// spikes).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesBursts {
    /// Column with the cell's spike times (list<float64> in ms or s) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Column with the target train (list<float64> in ms or s; empty string: no distance) [column].
    #[serde(default = "default_target_column")]
    pub target_column: String,
    /// Raster step of the van Rossum distance (thesis 0.1) [ms].
    #[serde(default = "default_vr_dt")]
    pub vr_dt_ms: f64,
    /// The van Rossum kernel is truncated where it falls below this (thesis 1e-6) [1/ms].
    #[serde(default = "default_vr_eps")]
    pub vr_epsilon: f64,
}

const BURSTS_ADDED: [&str; 7] =
    ["activity_class", "f_spiking_hz", "spikes_per_burst", "burst_duration_ms", "f_intra_burst_hz", "f_inter_burst_hz", "van_rossum_to_target"];

impl StageConfig for FeaturesBursts {
    const KIND: &'static str = "features.bursts";
    const SUMMARY: &'static str = "Spike train -> activity class, burst metrics, van Rossum distance to the target train";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.vr_dt_ms.is_finite() && self.vr_dt_ms > 0.0 && self.vr_dt_ms <= 10.0) {
            issues.push(Issue::at(&["vr_dt_ms"], "must be in (0, 10] ms"));
        }
        if !(self.vr_epsilon.is_finite() && self.vr_epsilon > 0.0 && self.vr_epsilon < 1.0) {
            issues.push(Issue::at(&["vr_epsilon"], "must be in (0, 1)"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &BURSTS_ADDED);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !self.target_column.is_empty() {
            if let Err(i) = ms_per_unit(input, &self.target_column, "target_column") {
                issues.push(i);
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(field("activity_class", DataType::Utf8, true, None));
        fields.push(field("f_spiking_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("spikes_per_burst", DataType::Float64, true, None));
        fields.push(field("burst_duration_ms", DataType::Float64, true, Some("ms")));
        fields.push(field("f_intra_burst_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("f_inter_burst_hz", DataType::Float64, true, Some("Hz")));
        fields.push(field("van_rossum_to_target", DataType::Float64, true, None));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let s = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| Error::msg(i.message))?;
        let t = if self.target_column.is_empty() {
            None
        } else {
            Some(ms_per_unit(&inputs[0], &self.target_column, "target_column").map_err(|i| Error::msg(i.message))?)
        };
        Ok(Operator::Transform(Box::new(BurstsOperator { cfg: self.clone(), spike_scale: s, target_scale: t, schema: output.clone() })))
    }
}

struct BurstsOperator {
    cfg: FeaturesBursts,
    spike_scale: f64,
    target_scale: Option<f64>,
    schema: SchemaRef,
}

impl TransformOperator for BurstsOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let n = batch.num_rows();
        let trains = lists_ms(&batch, &self.cfg.spike_column, self.spike_scale)?;
        let targets = match self.target_scale {
            Some(s) => lists_ms(&batch, &self.cfg.target_column, s)?,
            None => vec![None; n],
        };
        let (dt, eps) = (self.cfg.vr_dt_ms, self.cfg.vr_epsilon);
        let results: Vec<(Option<SpikeTrainFeatures>, Option<f64>)> = trains
            .par_iter()
            .zip(&targets)
            .map(|(train, target)| {
                let Some(train) = train else { return (None, None) };
                let f = extract_features(train).ok();
                let d = target.as_ref().filter(|t| t.len() >= 2).and_then(|t| van_rossum_distance(t, train, dt, eps).ok());
                (f, d)
            })
            .collect();
        let ids = batch.column_by_name("recording_id").map(|_| string_column(&batch, "recording_id")).transpose()?;
        for (row, (f, _)) in results.iter().enumerate() {
            if f.is_none() {
                let unit = ids.as_ref().and_then(|v| v[row].clone()).unwrap_or_else(|| format!("row {row}"));
                if trains[row].is_some() {
                    // Invalid train (unsorted / non-finite): reported, the row is kept with nulls.
                    out.fail(unit, "spike train is unsorted or not finite; features left null");
                }
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let g = |get: fn(&SpikeTrainFeatures) -> f64| Float64Array::from_iter(results.iter().map(|(f, _)| f.as_ref().map(get)));
        columns.push(Arc::new(StringArray::from_iter(results.iter().map(|(f, _)| f.as_ref().map(|f| f.label.name())))));
        columns.push(Arc::new(g(|f| f.f_spiking_hz)));
        columns.push(Arc::new(g(|f| f.nbr_spikes_bursting)));
        columns.push(Arc::new(g(|f| f.duration_bursting_ms)));
        columns.push(Arc::new(g(|f| f.f_intra_bursting_hz)));
        columns.push(Arc::new(g(|f| f.f_inter_bursting_hz)));
        columns.push(Arc::new(Float64Array::from_iter(results.iter().map(|(_, d)| *d))));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

// ================================================================================================
// dic.validate
// ================================================================================================

fn default_pairwise_cells() -> usize {
    32
}

/// One target's rows so far: its target columns (from its first row) and its cells' tally.
#[derive(Default)]
struct TargetAcc {
    target_class: Option<String>,
    g_s: f64,
    g_u: f64,
    cells: PopulationTally,
}

/// Per target (recording_id): the population's majority activity class against the target
/// train's class, and the van Rossum ratio R = mean d(target, cell) / mean d(cell_i, cell_j)
/// (the within-population spread stands in for the thesis' ground-truth population, which
/// spike-time inputs do not have; see the module doc). `accepted` = classes match and R ≤ 1.
/// Emits one row per target when its input is exhausted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicValidate {
    /// Column with the cell's spike times (list<float64> in ms or s) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
    /// Cells per target kept for the within-population distance (pairs grow as its square) [cells].
    #[serde(default = "default_pairwise_cells")]
    pub pairwise_cells: usize,
    /// Raster step of the van Rossum distance (thesis 0.1) [ms].
    #[serde(default = "default_vr_dt")]
    pub vr_dt_ms: f64,
    /// The van Rossum kernel is truncated where it falls below this (thesis 1e-6) [1/ms].
    #[serde(default = "default_vr_eps")]
    pub vr_epsilon: f64,
}

impl StageConfig for DicValidate {
    const KIND: &'static str = "dic.validate";
    const SUMMARY: &'static str = "Per target: population activity class vs the train's, van Rossum ratio R (spec 7)";
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
        if self.pairwise_cells < 2 || self.pairwise_cells > 10_000 {
            issues.push(Issue::at(&["pairwise_cells"], "must be in 2..=10000"));
        }
        if !(self.vr_dt_ms.is_finite() && self.vr_dt_ms > 0.0 && self.vr_dt_ms <= 10.0) {
            issues.push(Issue::at(&["vr_dt_ms"], "must be in (0, 10] ms"));
        }
        if !(self.vr_epsilon.is_finite() && self.vr_epsilon > 0.0 && self.vr_epsilon < 1.0) {
            issues.push(Issue::at(&["vr_epsilon"], "must be in (0, 1)"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for c in ["recording_id", "activity_class", "target_class"] {
            if let Err(i) = require_column(input, c, "a string column", crate::stage::columns::is_string) {
                issues.push(i);
            }
        }
        for c in ["van_rossum_to_target", "g_s_target", "g_u_target"] {
            if let Err(i) = require_column(input, c, "a numeric column", |t| t.is_numeric()) {
                issues.push(i);
            }
        }
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Arc::new(Schema::new(vec![
            field("recording_id", DataType::Utf8, false, None),
            field("g_s_target", DataType::Float64, false, Some("g_leak")),
            field("g_u_target", DataType::Float64, false, Some("g_leak")),
            field("target_class", DataType::Utf8, true, None),
            field("population_class", DataType::Utf8, false, None),
            field("n_cells", DataType::Int64, false, None),
            field("n_class_match", DataType::Int64, false, None),
            field("mean_vr_to_target", DataType::Float64, true, None),
            field("mean_vr_within_population", DataType::Float64, true, None),
            field("r_ratio", DataType::Float64, true, None),
            field("accepted", DataType::Boolean, false, None),
        ])))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let s = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| Error::msg(i.message))?;
        Ok(Operator::Transform(Box::new(ValidateOperator { cfg: self.clone(), scale: s, acc: BTreeMap::new(), schema: output.clone() })))
    }
}

struct ValidateOperator {
    cfg: DicValidate,
    scale: f64,
    acc: BTreeMap<String, TargetAcc>,
    schema: SchemaRef,
}

impl TransformOperator for ValidateOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        let ids = string_column(&batch, "recording_id")?;
        let cls = string_column(&batch, "activity_class")?;
        let tcls = string_column(&batch, "target_class")?;
        let vr = f64_column(&batch, "van_rossum_to_target")?;
        let gs = f64_column(&batch, "g_s_target")?;
        let gu = f64_column(&batch, "g_u_target")?;
        let trains = lists_ms(&batch, &self.cfg.spike_column, self.scale)?;
        for row in 0..batch.num_rows() {
            let id = ids[row].clone().unwrap_or_else(|| "<null>".into());
            let a = self.acc.entry(id).or_default();
            if a.cells.classes.is_empty() {
                a.target_class = tcls[row].clone();
                a.g_s = gs.value(row);
                a.g_u = gu.value(row);
            }
            let class = cls[row].as_deref().and_then(ActivityClass::from_name).unwrap_or(ActivityClass::Silent);
            let vr_to_target = (!vr.is_null(row)).then(|| vr.value(row));
            a.cells.add(class, vr_to_target, trains[row].clone().unwrap_or_default(), self.cfg.pairwise_cells);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let accs = std::mem::take(&mut self.acc);
        let mut rows: Vec<(String, TargetAcc, TargetSummary)> = Vec::new();
        for (id, a) in accs {
            let target = a.target_class.as_deref().and_then(ActivityClass::from_name);
            let summary = a.cells.summarise(target, self.cfg.vr_dt_ms, self.cfg.vr_epsilon);
            rows.push((id, a, summary));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let opt = |x: f64| x.is_finite().then_some(x);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1.g_s))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1.g_u))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.target_class.clone()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.population_class.name()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2.n_cells as i64))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2.n_class_match as i64))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.mean_vr_to_target)))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.mean_vr_within)))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.r_ratio)))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.2.accepted)))),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

