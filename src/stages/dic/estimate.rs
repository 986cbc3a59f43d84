//! `dic.estimate`: spike train → target (g_s, g_u) at V_th.
//!
//! Spike2Pop predicts (g_s, g_u) with a trained transformer (DICsNet, spec §6); no trained network
//! exists in this project. The stage applies trained regressors on `features.isi` when given
//! (`pipelines/dic_train.toml` makes them), else a transparent stand-in: a k-nearest-neighbour
//! regression in ISI-statistics space over a reference set that the stage simulates itself with
//! the thesis data-set protocol (a grid of (g_s, g_u) targets, neuromodulated populations, STG
//! simulation, the recorded window). It predicts the mean target of the k reference cells of the
//! same activity class whose ISI statistics are closest. It is not DICsNet and inherits none of
//! its reported accuracy; it is deterministic (seeded), cheap to audit, and its distance column
//! says how far the train is from anything in the reference set. Either estimate may then be
//! refined by simulation (see [`Refine`]); the refinement ranks candidates by the numerator of R
//! by default, because the R proxy's denominator (see `dic.validate`) rewards spread-out
//! populations rather than nearness to the train.
//!
//! The kernels are in `crate::dic` ([`crate::dic::reference`], [`crate::dic::estimate`]); this
//! file reads and writes the columns.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::options::{check_population, default_iterations, default_max_residual, default_v_th};
use super::spike_columns::{default_spike_column, lists_ms, ms_per_unit, no_clash, require_input};
use crate::dic::DicStageError;
use crate::dic::estimate::{Estimate, RefineCriterion, RefineProtocol, estimable_class, estimate_targets, refine_estimate};
use crate::dic::features::ActivityClass;
use crate::dic::isi::{ISI_FEATURE_NAMES, isi_feature_vector};
use crate::dic::population::{PopulationProtocol, unit_seed};
use crate::dic::reference::{ReferenceProtocol, ReferenceSet, build_reference};
use crate::error::{Error, Result, ResultExt};
use crate::simulate::stg::SimulationConfig;
use crate::stage::columns::{field, is_string, string_rows};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::train::models::{FittedModel, Prediction};

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

/// Estimates the target DICs (g_s, g_u) at V_th of each spike train. NOT the thesis network:
/// trained regressors on `features.isi` (`model_g_s` / `model_g_u` or `models_by_class`), or
/// else a k-nearest-neighbour regression in ISI-statistics space (ln min/median/max/mean ISI, CV)
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
    /// [name].
    #[serde(default)]
    pub criterion: RefineCriterion,
}

impl Refine {
    /// Issues of the `refine` table; `transient_ms` is the estimate's.
    fn check(&self, transient_ms: f64) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (k, v) in [("step_g_s", self.step_g_s), ("step_g_u", self.step_g_u)] {
            if !(v.is_finite() && v > 0.0) {
                issues.push(Issue::at(&["refine", k], format!("{v} must be finite and > 0")));
            }
        }
        if self.radius > 5 {
            issues.push(Issue::at(&["refine", "radius"], "at most 5 (121 candidates)"));
        }
        if self.cells == 0 || self.cells > 1000 {
            issues.push(Issue::at(&["refine", "cells"], "must be in 1..=1000"));
        }
        if !(self.duration_ms.is_finite() && self.duration_ms > transient_ms) {
            issues.push(Issue::at(&["refine", "duration_ms"], "must be finite and longer than transient_ms"));
        }
        if self.rounds == 0 || self.rounds > 8 {
            issues.push(Issue::at(&["refine", "rounds"], format!("{} rounds; give 1..=8", self.rounds)));
        }
        issues
    }
}

/// Paths of a (g_s, g_u) regressor pair.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPair {
    /// The g_s regressor (`model-g_s_target.json` of a `train.regress`), relative to the pipeline file [path].
    pub g_s: String,
    /// The g_u regressor, relative to the pipeline file [path].
    pub g_u: String,
}

/// One regressor pair per non-silent activity class.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassModels {
    /// Regressors trained on tonically spiking cells [table].
    pub spiking: ModelPair,
    /// Regressors trained on bursting cells [table].
    pub bursting: ModelPair,
}

/// Loaded estimator models: one pair for every class, or one pair per class.
struct EstimatorModels {
    any: Option<(FittedModel, FittedModel)>,
    spiking: Option<(FittedModel, FittedModel)>,
    bursting: Option<(FittedModel, FittedModel)>,
}

impl DicEstimate {
    fn models(&self, ctx: &StageContext) -> std::result::Result<Option<EstimatorModels>, Issue> {
        let load = |key: &str, p: &str| -> std::result::Result<FittedModel, Issue> {
            let path = ctx.resolve(p);
            let m = FittedModel::from_file(&path).map_err(|e| Issue::at(&[key], e.to_string()))?;
            let want = isi_feature_columns();
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

/// The feature names a model trained on `features.isi`'s list column has (`isi_features[i]`).
fn isi_feature_columns() -> Vec<String> {
    (0..ISI_FEATURE_NAMES.len()).map(|i| format!("isi_features[{i}]")).collect()
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
    const EXAMPLE: &'static str = "g_s_points = 21\ng_u_points = 10\nneighbours = 5\nrefine = { step_g_s = 2.0, step_g_u = 2.0, radius = 1, rounds = 2 }";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
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
        issues.extend(check_population(self.v_th_mv, self.iterations, self.max_residual));
        if let Err(i) = self.models(ctx) {
            issues.push(i);
        }
        if let Some(r) = &self.refine {
            issues.extend(r.check(self.transient_ms));
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
        if let Err(i) = require_input(input, "recording_id", "a string id", is_string) {
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
    let names = isi_feature_columns();
    let x = ndarray::Array2::from_shape_vec((1, v.len()), v.to_vec()).expect("1 x 23");
    let one = |m: &FittedModel| -> std::result::Result<f64, DicStageError> {
        match m.predict(&names, x.view()) {
            Ok(Prediction::Values(p)) => Ok(p[0]),
            Ok(_) => Err(DicStageError::BadTrain("the model is not a regressor".into())),
            Err(e) => Err(DicStageError::BadTrain(e.to_string())),
        }
    };
    Ok(Estimate { class, g_s: one(&models.0)?, g_u: one(&models.1)?, distance: f64::NAN, neighbours: 0 })
}

impl EstimateOperator {
    /// Simulates the reference set on first use (so validating a pipeline costs nothing), unless
    /// trained models replace it.
    fn ensure_reference(&mut self) -> Result<()> {
        if self.reference.is_none() && self.models.is_none() {
            let r = build_reference(&self.cfg.protocol(), self.seed).context("building the reference set")?;
            if r.cells.is_empty() {
                return Err(Error::msg("the reference set has no spiking or bursting cell; widen the grid"));
            }
            self.reference = Some(Arc::new(r));
        }
        Ok(())
    }

    /// One train's estimate (ms), refined by simulation when configured; `unit` seeds the
    /// refinement.
    fn estimate(&self, train: &[f64], unit: &str) -> std::result::Result<Estimate, DicStageError> {
        let e = match (&self.models, &self.reference) {
            (Some(m), _) => estimate_with_models(m, train)?,
            (None, Some(r)) => estimate_targets(r, train, self.cfg.neighbours)?,
            (None, None) => unreachable!("ensure_reference ran first"),
        };
        match &self.cfg.refine {
            Some(r) => refine_estimate(&self.cfg.refine_protocol(r), e, train, unit_seed(self.seed, unit)),
            None => Ok(e),
        }
    }
}

impl TransformOperator for EstimateOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.ensure_reference()?;
        let ids = string_rows(&batch, "recording_id")?;
        let trains = lists_ms(&batch, &self.cfg.spike_column, self.ms_per_unit)?;
        let mut keep = Vec::new();
        let mut est = Vec::new();
        for (row, (id, train)) in ids.iter().zip(&trains).enumerate() {
            let unit = id.clone().unwrap_or_else(|| format!("row {row}"));
            let Some(train) = train else {
                out.fail(unit, "null spike train");
                continue;
            };
            match self.estimate(train, &unit) {
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
