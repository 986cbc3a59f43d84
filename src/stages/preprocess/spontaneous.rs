//! `preprocess.spontaneous`: the activity table (`ingest.natimg`) normalized by the spontaneous
//! period, per recording (Stringer, Pachitariu et al. 2018b, study 2).
//!
//! Gathers a recording's rows, then calls [`normalize_by_spontaneous`]: z-scores every neuron by
//! its mean and standard deviation over the spontaneous frames, projects the stimulus responses
//! off the top-k principal components of the z-scored spontaneous activity, and mean-centers each
//! neuron over the presentations: the study's `dataset.load_mat` steps 2–4 (see
//! `shared/specs/studies.md`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lists::{is_numeric_list, list_rows, need_column, rows_by_recording, string_rows};
use crate::error::{Error, Result};
use crate::preprocess::normalize::{SpontaneousParams, normalize_by_spontaneous};
use crate::stage::columns::{UNIT_KEY, f32_list_array, is_string};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::ingest::natimg::{POSITIONS, f32_item, f32_list_type, positions_column};

fn d_components() -> usize {
    32
}
fn d_epsilon() -> f64 {
    1e-6
}
fn d_activity() -> String {
    "activity".into()
}
fn yes() -> bool {
    true
}

/// Normalizes stimulus responses by the spontaneous period, per recording (Stringer et al.).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpontaneous {
    /// Principal components of the z-scored spontaneous activity projected out of the
    /// responses; 0 = z-score only (study: 32) [count].
    #[serde(default = "d_components")]
    pub n_components: usize,
    /// Added to each neuron's spontaneous standard deviation before dividing (study: 1e-6)
    /// [activity unit].
    #[serde(default = "d_epsilon")]
    pub epsilon: f64,
    /// Subtract each neuron's mean over the presentations at the end (study: yes) [bool].
    #[serde(default = "yes")]
    pub center: bool,
    /// Also emit the z-scored spontaneous frames (no projection, no centering) [bool].
    #[serde(default)]
    pub keep_spontaneous: bool,
    /// The activity column (a numeric list over neurons) [column].
    #[serde(default = "d_activity")]
    pub column: String,
}

impl StageConfig for PreprocessSpontaneous {
    const KIND: &'static str = "preprocess.spontaneous";
    const SUMMARY: &'static str =
        "Per recording: z-score neurons by the spontaneous period, project responses off the top-k spontaneous PCs, mean-center";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "n_components = 32";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // The z-scoring statistics and the principal components are those of one recording's
        // spontaneous frames: it needs that recording whole (its rows may arrive in several batches).
        Partitioning::per_unit("recording_id")
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            issues.push(Issue::at(&["epsilon"], format!("{} is not a finite value >= 0", self.epsilon)));
        }
        if self.n_components > 10_000 {
            issues.push(Issue::at(&["n_components"], format!("{} components is more than 10000", self.n_components)));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        need_column(input, "recording_id", "a string recording id", is_string, "inputs", &mut issues);
        need_column(input, "period", "`stimulus` / `spontaneous` strings", is_string, "inputs", &mut issues);
        need_column(input, &self.column, "a numeric list over neurons", is_numeric_list, "column", &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| {
                if f.name() == &self.column {
                    let mut md = f.metadata().clone();
                    md.insert(UNIT_KEY.to_string(), "z".to_string());
                    Field::new(f.name(), f32_list_type(), false).with_metadata(md)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SpontaneousOperator {
            cfg: self.clone(),
            schema: output.clone(),
            order: Vec::new(),
            batches: HashMap::new(),
        })))
    }
}

struct SpontaneousOperator {
    cfg: PreprocessSpontaneous,
    schema: SchemaRef,
    order: Vec<String>,
    batches: HashMap<String, Vec<RecordBatch>>,
}

impl TransformOperator for SpontaneousOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        for (id, rows) in rows_by_recording(&batch)? {
            let part = arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
            if !self.batches.contains_key(&id) {
                self.order.push(id.clone());
            }
            self.batches.entry(id).or_default().push(part);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        for id in std::mem::take(&mut self.order) {
            let parts = self.batches.remove(&id).unwrap_or_default();
            match normalize_recording(&self.cfg, &self.schema, &parts) {
                Ok(b) => out.emit(b),
                Err(e) => out.fail(id.clone(), format!("recording {id}: {e}")),
            }
        }
        Ok(())
    }
}

/// One recording's activity split by period: row-major matrices over its `n` neurons.
struct Periods {
    n: usize,
    stim_rows: Vec<u32>,
    spont_rows: Vec<u32>,
    resp: Vec<f64>,
    spont: Vec<f64>,
}

/// Reads the activity rows of one recording, every row with the same neuron count and finite
/// values, into its presentations and its spontaneous frames.
fn split_periods(batch: &RecordBatch, column: &str) -> Result<Periods> {
    let periods = string_rows(batch, "period")?;
    let activity = list_rows(batch, column)?;
    let mut n = None;
    let mut split = Periods { n: 0, stim_rows: Vec::new(), spont_rows: Vec::new(), resp: Vec::new(), spont: Vec::new() };
    for (r, (p, a)) in periods.iter().zip(&activity).enumerate() {
        let a = a.as_ref().ok_or_else(|| Error::msg(format!("row {r}: `{column}` is null")))?;
        if *n.get_or_insert(a.len()) != a.len() {
            return Err(Error::msg(format!("row {r}: `{column}` has {} neurons, earlier rows {}", a.len(), n.unwrap_or(0))));
        }
        if let Some(i) = a.iter().position(|x| !x.is_finite()) {
            return Err(Error::msg(format!("row {r}: `{column}`[{i}] is not finite")));
        }
        let (rows, values) = match p.as_deref() {
            Some("stimulus") => (&mut split.stim_rows, &mut split.resp),
            Some("spontaneous") => (&mut split.spont_rows, &mut split.spont),
            other => return Err(Error::msg(format!("row {r}: period {other:?} is neither `stimulus` nor `spontaneous`"))),
        };
        rows.push(r as u32);
        values.extend(a.iter().map(|&x| f64::from(x)));
    }
    split.n = n.unwrap_or(0);
    Ok(split)
}

fn normalize_recording(cfg: &PreprocessSpontaneous, schema: &SchemaRef, parts: &[RecordBatch]) -> Result<RecordBatch> {
    let Some(first) = parts.first() else { return Err(Error::msg("no rows")) };
    let batch = arrow::compute::concat_batches(&first.schema(), parts)?;
    let Periods { n, stim_rows, spont_rows, resp, spont } = split_periods(&batch, &cfg.column)?;
    if spont_rows.is_empty() {
        return Err(Error::msg("no spontaneous frames (period = `spontaneous`): nothing to normalize by"));
    }
    let params = SpontaneousParams { n_components: cfg.n_components, epsilon: cfg.epsilon, center: cfg.center };
    let (z_resp, z_spont) = normalize_by_spontaneous(&resp, &spont, n, params).map_err(|e| Error::msg(e.to_string()))?;
    let mut keep = stim_rows;
    let mut values: Vec<f32> = z_resp.iter().map(|&x| x as f32).collect();
    if cfg.keep_spontaneous {
        keep.extend(&spont_rows);
        values.extend(z_spont.iter().map(|&x| x as f32));
    }
    if keep.is_empty() {
        return Err(Error::msg("no stimulus presentations"));
    }
    let rows: Vec<&[f32]> = values.chunks_exact(n).collect();
    let activity: ArrayRef = Arc::new(f32_list_array(&f32_item(), &rows)?);
    output_batch(cfg, schema, &batch, &keep, activity)
}

/// The kept rows of the recording's `batch` with the new `activity` column, and the positions on
/// the first emitted row, wherever they were in the input.
fn output_batch(cfg: &PreprocessSpontaneous, schema: &SchemaRef, batch: &RecordBatch, keep: &[u32], activity: ArrayRef) -> Result<RecordBatch> {
    let taken = arrow::compute::take_record_batch(batch, &UInt32Array::from(keep.to_vec()))?;
    let positions = batch.schema().field_with_name(POSITIONS).ok().map(|_| list_rows(batch, POSITIONS)).transpose()?;
    let positions = positions.and_then(|p| p.into_iter().flatten().next());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        if f.name() == &cfg.column {
            columns.push(activity.clone());
        } else if f.name() == POSITIONS && matches!(f.data_type(), DataType::LargeList(_)) {
            columns.push(Arc::new(positions_column(positions.as_deref(), keep.len())?) as ArrayRef);
        } else {
            columns.push(taken.column_by_name(f.name()).ok_or_else(|| Error::msg(format!("no column `{}`", f.name())))?.clone());
        }
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
