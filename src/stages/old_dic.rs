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
use crate::dic::compensation::{NeuromodulationConfig, SeedConfig, generate_neuromodulated_population, residual_gs_gu};
use crate::dic::features::{ActivityClass, SpikeTrainFeatures, extract_features, van_rossum_distance};
use crate::dic::{CalciumRoute, dics};
use crate::error::{Error, Result};
use crate::train::models::FittedModel;
use crate::simulate::stg::{self, CONDUCTANCE_NAMES, GateTables, N_CONDUCTANCES, SimulationConfig, StgParams};

/// Errors of the kernels of this module (row parsing, reference set, estimation).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DicStageError {
    #[error("line {line}: expected `ID,spiking_times`, found no comma")]
    NoComma { line: usize },
    #[error("empty ID")]
    EmptyId,
    #[error("spiking_times is not a \"[t1, t2, ...]\" list: {0}")]
    NotAList(String),
    #[error("spike #{index} `{text}` is not a number")]
    NotANumber { index: usize, text: String },
    #[error("spike #{index} = {value} is not finite")]
    NonFinite { index: usize, value: f64 },
    #[error("spike #{index} = {value} is negative")]
    Negative { index: usize, value: f64 },
    #[error("spike #{index} = {value} duplicates the previous spike")]
    Duplicate { index: usize, value: f64 },
    #[error("spike times are not sorted: #{index} = {value} comes after {previous}")]
    Unsorted { index: usize, value: f64, previous: f64 },
    #[error("{count} spikes, at least {min} needed (Spike2Pop labels trains with < 3 spikes silent)")]
    TooFewSpikes { count: usize, min: usize },
    #[error("the ID `{0}` appears more than once")]
    DuplicateId(String),
    #[error("no reference cell of class {0:?}: widen the reference grid")]
    NoReference(ActivityClass),
    #[error("silent train (< 3 spikes): Spike2Pop makes no prediction for it")]
    Silent,
    #[error("invalid spike train: {0}")]
    BadTrain(String),
}

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

fn class_name(c: ActivityClass) -> &'static str {
    match c {
        ActivityClass::Silent => "silent",
        ActivityClass::Spiking => "spiking",
        ActivityClass::Bursting => "bursting",
    }
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

/// Per-recording seed: FNV-1a of the id mixed into the stage seed, so a target's population does
/// not depend on batch boundaries or row order.
fn unit_seed(stage_seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = stage_seed ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ================================================================================================
// ingest.spike_times
// ================================================================================================

/// One parsed row of a Spike2Pop spike-time CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeRow {
    pub id: String,
    pub times: Vec<f64>,
}

/// Parses the `spiking_times` field: a Python list string `[t1, t2, ...]`, optionally inside
/// double quotes (Spike2Pop writes it with pandas, which quotes it because it holds commas).
/// Checks every time: a number, finite, ≥ 0, strictly increasing (a repeated time is reported as
/// a duplicate), and at least `min_spikes` of them.
pub fn parse_spike_list(text: &str, min_spikes: usize) -> std::result::Result<Vec<f64>, DicStageError> {
    let mut s = text.trim();
    if s.starts_with('"') || s.ends_with('"') {
        if !(s.len() >= 2 && s.starts_with('"') && s.ends_with('"')) {
            return Err(DicStageError::NotAList(format!("unbalanced quotes in `{}`", short(s))));
        }
        s = s[1..s.len() - 1].trim();
    }
    if !(s.starts_with('[') && s.ends_with(']')) || s.len() < 2 {
        return Err(DicStageError::NotAList(format!("`{}` does not start with `[` and end with `]`", short(s))));
    }
    let inner = s[1..s.len() - 1].trim();
    let mut times = Vec::new();
    if !inner.is_empty() {
        for (index, part) in inner.split(',').enumerate() {
            let t = part.trim();
            let value: f64 = t.parse().map_err(|_| DicStageError::NotANumber { index, text: short(t) })?;
            if !value.is_finite() {
                return Err(DicStageError::NonFinite { index, value });
            }
            if value < 0.0 {
                return Err(DicStageError::Negative { index, value });
            }
            if let Some(&previous) = times.last() {
                if value == previous {
                    return Err(DicStageError::Duplicate { index, value });
                }
                if value < previous {
                    return Err(DicStageError::Unsorted { index, value, previous });
                }
            }
            times.push(value);
        }
    }
    if times.len() < min_spikes {
        return Err(DicStageError::TooFewSpikes { count: times.len(), min: min_spikes });
    }
    Ok(times)
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

/// Parses one data line `ID,spiking_times` into (id, result). The id is everything before the
/// first comma (quotes stripped). `None` id when the line has no comma at all.
pub fn parse_spike_line(line: &str, line_no: usize, min_spikes: usize) -> (Option<String>, std::result::Result<Vec<f64>, DicStageError>) {
    let Some((id, rest)) = line.split_once(',') else {
        return (None, Err(DicStageError::NoComma { line: line_no }));
    };
    let id = id.trim().trim_matches('"').trim().to_string();
    if id.is_empty() {
        return (None, Err(DicStageError::EmptyId));
    }
    let parsed = parse_spike_list(rest, min_spikes);
    (Some(id), parsed)
}

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
            if cols != ["ID", "spiking_times"] {
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

/// Number of ISI statistics in the estimator's feature vector.
pub const N_ISI_STATS: usize = 5;

/// ISI statistics of a train (ms): [ln min ISI, ln median ISI, ln max ISI, ln mean ISI,
/// CV(ISI)]. For a periodic burster, min ≈ intra-burst ISI, max ≈ inter-burst gap and the
/// median/mean place the spikes per burst; for a tonic spiker all four logs coincide and CV ≈ 0.
/// Invariant to a time shift. `None` with fewer than 3 spikes or a zero ISI.
pub fn isi_statistics(times_ms: &[f64]) -> Option<[f64; N_ISI_STATS]> {
    if times_ms.len() < 3 {
        return None;
    }
    let mut isi: Vec<f64> = times_ms.windows(2).map(|w| w[1] - w[0]).collect();
    if isi.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
        return None;
    }
    isi.sort_by(f64::total_cmp);
    let n = isi.len();
    let median = if n % 2 == 1 { isi[n / 2] } else { 0.5 * (isi[n / 2 - 1] + isi[n / 2]) };
    let mean = isi.iter().sum::<f64>() / n as f64;
    let std = (isi.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / n as f64).sqrt();
    Some([isi[0].ln(), median.ln(), isi[n - 1].ln(), mean.ln(), std / mean])
}

/// One simulated reference cell: its target DICs, class and ISI statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceCell {
    pub g_s: f64,
    pub g_u: f64,
    pub class: ActivityClass,
    pub stats: [f64; N_ISI_STATS],
}

/// The estimator's reference set, with the per-dimension scale (std over all cells) used to
/// z-score distances.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSet {
    pub cells: Vec<ReferenceCell>,
    pub scale: [f64; N_ISI_STATS],
    /// Targets of the grid that gave no usable cell (unreachable or silent).
    pub empty_targets: usize,
}

/// How the reference set is built (thesis data-set protocol on a grid instead of a Latin
/// hypercube).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceProtocol {
    pub g_s_range: (f64, f64, usize),
    pub g_u_range: (f64, f64, usize),
    pub cells_per_target: usize,
    pub v_th_mv: f64,
    pub iterations: usize,
    pub max_residual: f64,
    pub sim: SimulationConfig,
}

fn linspace((a, b, n): (f64, f64, usize)) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect(),
    }
}

/// Simulates the reference set: for every (g_s, g_u) of the grid, `cells_per_target` cells of a
/// neuromodulated population (seeded per target), cells with residual > `max_residual` dropped,
/// each simulated with the exponential-Euler kernel (gate tables) and summarised by its class
/// and [`isi_statistics`] over the recorded window. Silent cells are not kept.
pub fn build_reference(p: &ReferenceProtocol, seed: u64) -> std::result::Result<ReferenceSet, String> {
    let params = StgParams::default();
    let route = CalciumRoute::default();
    let tables = GateTables::new(p.sim.dt_ms).map_err(|e| e.to_string())?;
    let u0 = stg::default_initial_state();
    let mut cells_g = Vec::new();
    let mut labels = Vec::new();
    let mut k = 0u64;
    let ncfg = NeuromodulationConfig { v_th_mv: p.v_th_mv, iterations: p.iterations, ..NeuromodulationConfig::default() };
    for &gs in &linspace(p.g_s_range) {
        for &gu in &linspace(p.g_u_range) {
            k += 1;
            let pop = generate_neuromodulated_population(
                p.cells_per_target,
                unit_seed(seed, &format!("ref{k}")),
                gs,
                gu,
                &SeedConfig::default(),
                &ncfg,
                &params,
                route,
            )
            .map_err(|e| e.to_string())?;
            for g in pop.conductances {
                let ok = dics(p.v_th_mv, &g, &params, route).map(|d| residual_gs_gu(&d, gs, gu) <= p.max_residual).unwrap_or(false);
                if ok {
                    cells_g.push(g);
                    labels.push((gs, gu, k));
                }
            }
        }
    }
    let sims = stg::simulate_population_with_tables(&cells_g, &u0, &params, &p.sim, &tables);
    let mut cells = Vec::new();
    let mut used_targets = HashSet::new();
    for (sim, &(g_s, g_u, k)) in sims.iter().zip(&labels) {
        let Ok(sim) = sim else { continue };
        let Ok(f) = extract_features(&sim.spike_times_ms) else { continue };
        if f.label == ActivityClass::Silent {
            continue;
        }
        if let Some(stats) = isi_statistics(&sim.spike_times_ms) {
            cells.push(ReferenceCell { g_s, g_u, class: f.label, stats });
            used_targets.insert(k);
        }
    }
    let mut scale = [1.0; N_ISI_STATS];
    if cells.len() >= 2 {
        for (d, s) in scale.iter_mut().enumerate() {
            let mean = cells.iter().map(|c| c.stats[d]).sum::<f64>() / cells.len() as f64;
            let sd = (cells.iter().map(|c| (c.stats[d] - mean).powi(2)).sum::<f64>() / cells.len() as f64).sqrt();
            if sd > 1e-12 {
                *s = sd;
            }
        }
    }
    Ok(ReferenceSet { cells, scale, empty_targets: k as usize - used_targets.len() })
}

/// Output of [`estimate_targets`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub class: ActivityClass,
    pub g_s: f64,
    pub g_u: f64,
    /// Mean z-scored distance to the neighbours used (how typical the train is of the reference).
    pub distance: f64,
    pub neighbours: usize,
}

/// k-nearest-neighbour estimate: the mean (g_s, g_u) target of the `k` reference cells of the
/// same activity class nearest in z-scored ISI-statistics space.
pub fn estimate_targets(reference: &ReferenceSet, times_ms: &[f64], k: usize) -> std::result::Result<Estimate, DicStageError> {
    let f = extract_features(times_ms).map_err(|e| DicStageError::BadTrain(e.to_string()))?;
    if f.label == ActivityClass::Silent {
        return Err(DicStageError::Silent);
    }
    let stats = isi_statistics(times_ms).ok_or_else(|| DicStageError::BadTrain("zero or non-finite ISI".into()))?;
    let mut d: Vec<(f64, &ReferenceCell)> = reference
        .cells
        .iter()
        .filter(|c| c.class == f.label)
        .map(|c| {
            let d2: f64 = (0..N_ISI_STATS).map(|j| ((c.stats[j] - stats[j]) / reference.scale[j]).powi(2)).sum();
            (d2.sqrt(), c)
        })
        .collect();
    if d.is_empty() {
        return Err(DicStageError::NoReference(f.label));
    }
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = k.max(1).min(d.len());
    let near = &d[..n];
    Ok(Estimate {
        class: f.label,
        g_s: near.iter().map(|x| x.1.g_s).sum::<f64>() / n as f64,
        g_u: near.iter().map(|x| x.1.g_u).sum::<f64>() / n as f64,
        distance: near.iter().map(|x| x.0).sum::<f64>() / n as f64,
        neighbours: n,
    })
}

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

/// Ranking of the refinement candidates (see [`Refine::criterion`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefineCriterion {
    #[default]
    Distance,
    Ratio,
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
            let m = FittedModel::from_file(&path).map_err(|e| Issue::at(&[key], e.to_string()))?;
            let want: Vec<String> = (0..super::dic_data::ISI_FEATURE_NAMES.len()).map(|i| format!("isi_features[{i}]")).collect();
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

    fn protocol(&self) -> ReferenceProtocol {
        ReferenceProtocol {
            g_s_range: (self.g_s_min, self.g_s_max, self.g_s_points),
            g_u_range: (self.g_u_min, self.g_u_max, self.g_u_points),
            cells_per_target: self.cells_per_reference,
            v_th_mv: self.v_th_mv,
            iterations: self.iterations,
            max_residual: self.max_residual,
            sim: SimulationConfig { dt_ms: self.dt_ms, duration_ms: self.duration_ms, transient_ms: self.transient_ms, ..SimulationConfig::default() },
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

/// One refinement candidate's score: the share of its cells in the train's class and the
/// criterion value (lower is better).
fn score_candidate(
    cfg: &DicEstimate,
    r: &Refine,
    class: ActivityClass,
    (gs, gu): (f64, f64),
    train_ms: &[f64],
    seed: u64,
    sim: &SimulationConfig,
    tables: &GateTables,
) -> Option<(f64, f64)> {
    let pop = population_for_target(r.cells, seed, gs, gu, cfg.v_th_mv, cfg.iterations, cfg.max_residual).ok()?;
    if pop.conductances.is_empty() {
        return None;
    }
    let sims = stg::simulate_population_with_tables(&pop.conductances, &stg::default_initial_state(), &StgParams::default(), sim, tables);
    let trains: Vec<Vec<f64>> = sims.iter().flatten().map(|s| s.spike_times_ms.clone()).collect();
    if trains.is_empty() {
        return None;
    }
    let matched = trains.iter().filter(|t| extract_features(t).is_ok_and(|f| f.label == class)).count();
    // Every cell counts, silent ones included (their distance is the train's own energy), as
    // in features.bursts / dic.validate.
    let d: Vec<f64> = trains.iter().filter_map(|t| van_rossum_distance(train_ms, t, 0.1, 1e-6).ok()).collect();
    if d.is_empty() {
        return None;
    }
    let mean_d = d.iter().sum::<f64>() / d.len() as f64;
    let value = match r.criterion {
        RefineCriterion::Distance => mean_d,
        RefineCriterion::Ratio => mean_d / mean_pairwise_van_rossum(&trains, 0.1, 1e-6),
    };
    value.is_finite().then_some((matched as f64 / trains.len() as f64, value))
}

/// See [`Refine`]. Candidates are ranked by (class-match share, −criterion); the estimate stays
/// when no candidate's population matches the class in more than half its cells. Each round's
/// grid is centred on the previous choice with half the step; a round's candidates get seeds of
/// their own (round and grid position), so later rounds do not re-score the same cells.
fn refine_estimate(cfg: &DicEstimate, r: &Refine, e: Estimate, train_ms: &[f64], seed: u64) -> std::result::Result<Estimate, DicStageError> {
    let sim = SimulationConfig { dt_ms: cfg.dt_ms, duration_ms: r.duration_ms, transient_ms: cfg.transient_ms, ..SimulationConfig::default() };
    let tables = GateTables::new(cfg.dt_ms).map_err(|e| DicStageError::BadTrain(e.to_string()))?;
    let k = r.radius as i64;
    let mut centre = (e.g_s, e.g_u);
    let mut chosen: Option<(f64, f64)> = None;
    let (mut step_s, mut step_u) = (r.step_g_s, r.step_g_u);
    for round in 0..r.rounds {
        let mut best: Option<(f64, f64, (f64, f64))> = None;
        let mut c = 0u64;
        for i in -k..=k {
            for j in -k..=k {
                let (gs, gu) = (centre.0 + i as f64 * step_s, centre.1 + j as f64 * step_u);
                if gu < 0.0 {
                    continue;
                }
                // Round 0 keeps the seeds of the single-round refinement (CODE_VERSION 1).
                let cand_seed = seed ^ (c + 1000 * round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                c += 1;
                let Some((share, value)) = score_candidate(cfg, r, e.class, (gs, gu), train_ms, cand_seed, &sim, &tables) else {
                    continue;
                };
                if share > 0.5 && best.is_none_or(|b| share > b.0 || (share == b.0 && value < b.1)) {
                    best = Some((share, value, (gs, gu)));
                }
            }
        }
        match best {
            Some((_, _, g)) => {
                centre = g;
                chosen = Some(g);
            }
            None => break,
        }
        step_s /= 2.0;
        step_u /= 2.0;
    }
    Ok(match chosen {
        Some((gs, gu)) => Estimate { g_s: gs, g_u: gu, ..e },
        None => e,
    })
}

/// The estimate of a trained pair of regressors on the train's ISI features (class from the
/// Spike2Pop rule, as the reference-set estimate does).
fn estimate_with_models(all: &EstimatorModels, times_ms: &[f64]) -> std::result::Result<Estimate, DicStageError> {
    let f = extract_features(times_ms).map_err(|e| DicStageError::BadTrain(e.to_string()))?;
    let models = match f.label {
        ActivityClass::Silent => return Err(DicStageError::Silent),
        ActivityClass::Spiking => all.spiking.as_ref().or(all.any.as_ref()),
        ActivityClass::Bursting => all.bursting.as_ref().or(all.any.as_ref()),
    }
    .expect("a pair for every class");
    let v = super::dic_data::isi_feature_vector(times_ms).ok_or_else(|| DicStageError::BadTrain("zero or non-finite ISI".into()))?;
    let names: Vec<String> = (0..v.len()).map(|i| format!("isi_features[{i}]")).collect();
    let x = ndarray::Array2::from_shape_vec((1, v.len()), v.to_vec()).expect("1 x 23");
    let one = |m: &FittedModel| -> std::result::Result<f64, DicStageError> {
        match m.predict(&names, x.view()) {
            Ok(crate::train::models::Prediction::Values(p)) => Ok(p[0]),
            Ok(_) => Err(DicStageError::BadTrain("the model is not a regressor".into())),
            Err(e) => Err(DicStageError::BadTrain(e.to_string())),
        }
    };
    Ok(Estimate { class: f.label, g_s: one(&models.0)?, g_u: one(&models.1)?, distance: f64::NAN, neighbours: 0 })
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
                (Ok(e), Some(r)) => refine_estimate(&self.cfg, r, e, train, unit_seed(self.seed, &unit)),
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
        columns.push(Arc::new(StringArray::from_iter_values(est.iter().map(|e| class_name(e.class)))));
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

/// The cells generated for one target: kept conductances with their achieved DICs, and why
/// the others were dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPopulation {
    pub conductances: Vec<[f64; N_CONDUCTANCES]>,
    pub achieved_gs_gu: Vec<(f64, f64)>,
    pub residuals: Vec<f64>,
    pub dropped_negative: usize,
    pub dropped_residual: usize,
    /// Mean residual over every cell that had a non-negative solution (kept or not).
    pub mean_residual_all: f64,
}

/// Generates M cells for (g_s*, g_u*) with the kernels (spiking seed population, iterative
/// neuromodulation with the reachability set and fitted priors, cleaning of negative cells),
/// then drops cells whose achieved (g_s, g_u) at V_th is farther than `max_residual` from the
/// target.
pub fn population_for_target(
    n_cells: usize,
    seed: u64,
    g_s: f64,
    g_u: f64,
    v_th_mv: f64,
    iterations: usize,
    max_residual: f64,
) -> std::result::Result<TargetPopulation, String> {
    let params = StgParams::default();
    let route = CalciumRoute::default();
    let ncfg = NeuromodulationConfig { v_th_mv, iterations, ..NeuromodulationConfig::default() };
    let pop = generate_neuromodulated_population(n_cells, seed, g_s, g_u, &SeedConfig::default(), &ncfg, &params, route)
        .map_err(|e| e.to_string())?;
    let mut out = TargetPopulation {
        conductances: Vec::new(),
        achieved_gs_gu: Vec::new(),
        residuals: Vec::new(),
        dropped_negative: pop.dropped.len(),
        dropped_residual: 0,
        mean_residual_all: f64::NAN,
    };
    let mut sum = 0.0;
    for g in pop.conductances {
        let d = dics(v_th_mv, &g, &params, route).map_err(|e| e.to_string())?;
        let r = residual_gs_gu(&d, g_s, g_u);
        sum += r;
        if r <= max_residual {
            out.conductances.push(g);
            out.achieved_gs_gu.push((d.g_s, d.g_u));
            out.residuals.push(r);
        } else {
            out.dropped_residual += 1;
        }
    }
    let n_solved = out.conductances.len() + out.dropped_residual;
    if n_solved > 0 {
        out.mean_residual_all = sum / n_solved as f64;
    }
    Ok(out)
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
            let pop = match population_for_target(m, seed, g_s, g_u, self.cfg.v_th_mv, self.cfg.iterations, self.cfg.max_residual) {
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
        columns.push(Arc::new(StringArray::from_iter(results.iter().map(|(f, _)| f.as_ref().map(|f| class_name(f.label))))));
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

/// Per-target validation summary (see [`summarise_target`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSummary {
    pub n_cells: usize,
    pub n_class_match: usize,
    pub population_class: ActivityClass,
    pub mean_vr_to_target: f64,
    pub mean_vr_within: f64,
    pub r_ratio: f64,
}

/// Majority class of a population (ties: bursting, then spiking, then silent).
pub fn majority_class(classes: &[ActivityClass]) -> ActivityClass {
    let count = |c| classes.iter().filter(|&&x| x == c).count();
    let (s, b, q) = (count(ActivityClass::Spiking), count(ActivityClass::Bursting), count(ActivityClass::Silent));
    if b >= s && b >= q && b > 0 {
        ActivityClass::Bursting
    } else if s >= q && s > 0 {
        ActivityClass::Spiking
    } else {
        ActivityClass::Silent
    }
}

/// Mean van Rossum distance over ordered pairs (i ≠ j) of `trains` (ms), τ from the first of
/// each pair; trains with < 2 spikes cannot set τ and are skipped as references. NaN if no pair.
pub fn mean_pairwise_van_rossum(trains: &[Vec<f64>], dt_ms: f64, epsilon: f64) -> f64 {
    let sums: Vec<(f64, usize)> = (0..trains.len())
        .into_par_iter()
        .filter(|&i| trains[i].len() >= 2)
        .map(|i| {
            let mut s = (0.0, 0usize);
            for (j, v) in trains.iter().enumerate() {
                if j != i {
                    if let Ok(d) = van_rossum_distance(&trains[i], v, dt_ms, epsilon) {
                        s.0 += d;
                        s.1 += 1;
                    }
                }
            }
            s
        })
        .collect();
    let (sum, n) = sums.iter().fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

#[derive(Default)]
struct TargetAcc {
    target_class: Option<String>,
    g_s: f64,
    g_u: f64,
    classes: Vec<ActivityClass>,
    vr_sum: f64,
    vr_n: usize,
    trains: Vec<Vec<f64>>,
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

fn parse_class(s: Option<&str>) -> Option<ActivityClass> {
    match s? {
        "silent" => Some(ActivityClass::Silent),
        "spiking" => Some(ActivityClass::Spiking),
        "bursting" => Some(ActivityClass::Bursting),
        _ => None,
    }
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
            if a.classes.is_empty() {
                a.target_class = tcls[row].clone();
                a.g_s = gs.value(row);
                a.g_u = gu.value(row);
            }
            a.classes.push(parse_class(cls[row].as_deref()).unwrap_or(ActivityClass::Silent));
            if !vr.is_null(row) && vr.value(row).is_finite() {
                a.vr_sum += vr.value(row);
                a.vr_n += 1;
            }
            if a.trains.len() < self.cfg.pairwise_cells {
                a.trains.push(trains[row].clone().unwrap_or_default());
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let accs = std::mem::take(&mut self.acc);
        let mut rows: Vec<(String, TargetAcc, TargetSummary)> = Vec::new();
        for (id, a) in accs {
            // Shift each train to start at 0 (van_rossum_distance does it too; harmless).
            let within = mean_pairwise_van_rossum(&a.trains, self.cfg.vr_dt_ms, self.cfg.vr_epsilon);
            let to_target = if a.vr_n > 0 { a.vr_sum / a.vr_n as f64 } else { f64::NAN };
            let target = parse_class(a.target_class.as_deref());
            let summary = TargetSummary {
                n_cells: a.classes.len(),
                n_class_match: a.classes.iter().filter(|&&c| Some(c) == target).count(),
                population_class: majority_class(&a.classes),
                mean_vr_to_target: to_target,
                mean_vr_within: within,
                r_ratio: to_target / within,
            };
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
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| class_name(r.2.population_class)))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2.n_cells as i64))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2.n_class_match as i64))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.mean_vr_to_target)))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.mean_vr_within)))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| opt(r.2.r_ratio)))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| {
                Some(Some(class_name(r.2.population_class)) == r.1.target_class.as_deref() && r.2.r_ratio <= 1.0)
            }))),
        ];
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicstage/");

    /// The 5 Spike2Pop example trains (tests/fixtures/dicstage/stg_set.csv).
    fn example_trains() -> Vec<SpikeRow> {
        let text = std::fs::read_to_string(format!("{FIX}stg_set.csv")).unwrap();
        text.lines()
            .skip(1)
            .enumerate()
            .map(|(i, l)| {
                let (id, t) = parse_spike_line(l, i + 2, 3);
                SpikeRow { id: id.unwrap(), times: t.unwrap() }
            })
            .collect()
    }

    #[test]
    fn parses_the_real_spike2pop_file() {
        let rows = example_trains();
        let counts: Vec<usize> = rows.iter().map(|r| r.times.len()).collect();
        // Counts stated by the data's README (upstream file): 10, 16, 23, 35, 16.
        assert_eq!(counts, [10, 16, 23, 35, 16]);
        assert_eq!(rows[0].id, "1");
        assert_eq!(rows[0].times[0], 3057.0500000002075);
    }

    /// Labels and burst metrics of the parsed trains against upstream SpikeFeatureExtractor
    /// (computed_stg_reference_values.json, copied to the fixture folder), float32 upstream.
    #[test]
    fn parsed_trains_match_upstream_features() {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIX}stg_set_features.json")).unwrap()).unwrap();
        for (train, want) in example_trains().iter().zip(r["rows"].as_array().unwrap()) {
            let f = extract_features(&train.times).unwrap();
            assert_eq!(f.label as u8 as u64, want["label"].as_u64().unwrap());
            for (got, key) in [
                (f.f_spiking_hz, "f_spiking"),
                (f.f_intra_bursting_hz, "f_intra_bursting"),
                (f.f_inter_bursting_hz, "f_inter_bursting"),
                (f.duration_bursting_ms, "duration_bursting"),
                (f.nbr_spikes_bursting, "nbr_spikes_bursting"),
            ] {
                let w = want[key].as_f64().unwrap();
                assert!((got - w).abs() <= 1e-5 * w.abs().max(1.0), "{key}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn bad_rows_are_rejected_with_reasons() {
        let bad = |s: &str| parse_spike_list(s, 3).unwrap_err().to_string();
        assert!(bad("\"[1.0, 3.0, 2.0]\"").contains("not sorted"));
        assert!(bad("\"[1.0, -3.0, 4.0]\"").contains("negative"));
        assert!(bad("\"[1.0, 2.0, 2.0]\"").contains("duplicates"));
        assert!(bad("\"[1.0, 2.0]\"").contains("at least 3"));
        assert!(bad("\"[1.0, x, 2.0]\"").contains("not a number"));
        assert!(bad("\"[1.0, 2.0, 3.0\"").contains("not a"));
        assert!(bad("\"[1.0, nan, 3.0]\"").contains("not finite"));
        assert!(bad("\"[1.0, 2.0, 3.0]").contains("unbalanced"));
        assert_eq!(parse_spike_list("[1, 2.5, 4e1]", 3).unwrap(), vec![1.0, 2.5, 40.0]);
        assert!(matches!(parse_spike_line("no comma here", 7, 3).1, Err(DicStageError::NoComma { line: 7 })));
    }

    #[test]
    fn isi_statistics_of_a_periodic_train() {
        // ISIs 10, 10, 30 → min 10, median 10, max 30, mean 50/3.
        let s = isi_statistics(&[0.0, 10.0, 20.0, 50.0]).unwrap();
        assert!((s[0] - 10f64.ln()).abs() < 1e-12 && (s[1] - 10f64.ln()).abs() < 1e-12 && (s[2] - 30f64.ln()).abs() < 1e-12);
        assert!((s[3] - (50.0f64 / 3.0).ln()).abs() < 1e-12);
        assert!(isi_statistics(&[0.0, 1.0]).is_none());
        assert!(isi_statistics(&[0.0, 1.0, 1.0]).is_none());
    }

    #[test]
    fn majority_and_pairwise() {
        use ActivityClass::*;
        assert_eq!(majority_class(&[Spiking, Bursting, Bursting]), Bursting);
        assert_eq!(majority_class(&[Spiking, Spiking, Silent]), Spiking);
        assert_eq!(majority_class(&[]), Silent);
        // identical trains: zero spread
        let t = vec![vec![0.0, 10.0, 20.0, 30.0]; 3];
        // zero up to round-off of the kernel's exponential sums (~1e-32)
        assert!(mean_pairwise_van_rossum(&t, 0.1, 1e-6).abs() < 1e-20);
    }

    #[test]
    fn seeds_differ_per_unit_and_are_stable() {
        assert_ne!(unit_seed(1, "a"), unit_seed(1, "b"));
        assert_eq!(unit_seed(7, "x"), unit_seed(7, "x"));
    }
}
