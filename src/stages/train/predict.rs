//! `predict.model`: applies a model written by a training stage to a table with the same feature
//! columns. The model is a file (`model`), or the training stage itself as the second input
//! (`inputs = ["table", "fit"]`), whose output schema announces its model file; the table is then
//! predicted once every input has ended, when the training stage has committed that file.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ndarray::Array2;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::artifacts::AnnouncedModel;
use super::config::is_feature_type;
use super::table::gather;
use crate::error::{Error, Result};
use crate::stage::columns::{column_list, type_name};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator, batch_units};
use crate::train::models::{FittedModel, ModelError, Prediction, Task};

fn default_prediction_column() -> String {
    "prediction".into()
}

/// Applies a model file written by a training stage to a table with the same feature columns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictModel {
    /// The `model.json` of a training stage (or the same zstd-compressed, `.json.zst`), relative to
    /// the pipeline file; leave it out when the second input is the training stage [path].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Name of the column the predictions go to [column].
    #[serde(default = "default_prediction_column")]
    pub column: String,
}

/// Where the model comes from, as validation found it.
enum ModelSource {
    File(FittedModel),
    Stage(AnnouncedModel),
}

impl PredictModel {
    fn load(&self, ctx: &StageContext, file: &str) -> std::result::Result<FittedModel, ModelError> {
        FittedModel::from_file(&ctx.resolve(file))
    }

    /// The input columns the model's features come from (`name[i]` comes from list column `name`).
    fn source_columns(model: &FittedModel) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in &model.feature_names {
            let base = f.split_once('[').map_or(f.as_str(), |(b, _)| b).to_string();
            if !out.contains(&base) {
                out.push(base);
            }
        }
        out
    }

    /// The model: the `model` file, or the one a training stage as second input announces;
    /// exactly one of them.
    fn model_source(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<ModelSource, Vec<Issue>> {
        let announced = inputs.get(1).map(|s| AnnouncedModel::of(s));
        match (&self.model, announced) {
            (Some(file), None) => self.load(ctx, file).map(ModelSource::File).map_err(|e| vec![Issue::at(&["model"], e.to_string())]),
            (Some(_), Some(_)) => Err(vec![Issue::at(
                &["model"],
                "the model comes from `model` or from a training stage as the second input, not both: drop `model` or the second input",
            )]),
            (None, None) => Err(vec![Issue::at(
                &[],
                "no model: name its file with `model`, or give the training stage as the second input (`inputs = [\"table\", \"fit\"]`)",
            )]),
            (None, Some(Some(a))) if a.file.is_some() => Ok(ModelSource::Stage(a)),
            (None, Some(Some(_))) => Err(vec![Issue::at_index(
                "inputs",
                1,
                "the second input writes one model file per target (`model-<target>.json`); name the one to apply with `model` and drop the second input",
            )]),
            (None, Some(None)) => Err(vec![Issue::at_index("inputs", 1, "the second input is not a training stage with one model file; name the model with `model`")]),
        }
    }

    /// The input with the prediction column: the input must have every column the model reads,
    /// with numbers, and not yet the prediction column.
    fn prediction_schema(&self, input: &Schema, cols: &[String], task: Task) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let table: Vec<String> = input.fields().iter().map(|f| f.name().clone()).filter(|n| cols.contains(n)).collect();
        let missing: Vec<&str> = cols.iter().filter(|c| !table.contains(c)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(vec![Issue::inputs(format!(
                "the model was trained on columns the input does not have: {} (model features: {}; input has: {})",
                missing.join(", "),
                cols.join(", "),
                column_list(input)
            ))]);
        }
        for c in cols {
            let dt = input.field_with_name(c).expect("checked above").data_type();
            if !is_feature_type(dt) {
                return Err(vec![Issue::inputs(format!("`{c}` is {}; the model needs numbers", type_name(dt)))]);
            }
        }
        if input.field_with_name(&self.column).is_ok() {
            return Err(vec![Issue::at(&["column"], format!("the input already has a column `{}`", self.column))]);
        }
        let dt = match task {
            Task::Regression => DataType::Float64,
            Task::Classification => DataType::Utf8,
            _ => DataType::Int64,
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(&self.column, dt, true));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }
}

impl StageConfig for PredictModel {
    const KIND: &'static str = "predict.model";
    const SUMMARY: &'static str = "Apply a trained model file to a table with the same features (schema differences refused, spelled out)";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "model = \"runs/study/artifacts/fit/model.json\"";

    fn arity() -> Arity {
        // The table, and optionally the training stage whose model it applies.
        Arity::Transform { min: 1, max: Some(2) }
    }

    fn partitioning(&self) -> Partitioning {
        // Each row's prediction depends on that row and the model only.
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        match &self.model {
            Some(file) => self.load(ctx, file).err().map(|e| Issue::at(&["model"], e.to_string())).into_iter().collect(),
            None => Vec::new(),
        }
    }

    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let (cols, task) = match self.model_source(ctx, inputs)? {
            ModelSource::File(model) => (Self::source_columns(&model), model.task()),
            ModelSource::Stage(a) => (a.columns, a.task),
        };
        self.prediction_schema(&inputs[0], &cols, task)
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        // A model from a stage input is covered by that stage's fingerprint.
        Ok(self.model.iter().map(|m| ctx.resolve(m)).collect())
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let model = match (&self.model, inputs.get(1).and_then(|s| AnnouncedModel::of(s)).and_then(|a| a.file)) {
            (Some(file), _) => Model::Loaded(self.load(ctx, file).map_err(|e| Error::msg(format!("stage `{}`: {e}", ctx.name)))?),
            (None, Some(file)) => Model::AtFinish(file),
            (None, None) => return Err(Error::msg(format!("stage `{}`: no model (validation should have said so)", ctx.name))),
        };
        Ok(Operator::Transform(Box::new(PredictOperator { name: ctx.name.clone(), model, schema: output.clone(), pending: Vec::new() })))
    }
}

/// The model a running `predict.model` applies.
enum Model {
    Loaded(FittedModel),
    /// Written by the training stage of the second input, read once every input has ended.
    AtFinish(PathBuf),
}

struct PredictOperator {
    name: String,
    model: Model,
    schema: SchemaRef,
    /// Table batches waiting for a model written by a stage input.
    pending: Vec<RecordBatch>,
}

impl PredictOperator {
    /// The batch with the model's prediction column appended.
    fn predict(&self, model: &FittedModel, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = PredictModel::source_columns(model);
        let g = gather(std::slice::from_ref(batch), &columns, None)?;
        if let Some(r) = g.incomplete.iter().position(Option::is_some) {
            return Err(Error::msg(format!("row {r}: {}", g.incomplete[r].as_deref().unwrap_or(""))));
        }
        let x = Array2::from_shape_vec((g.n, g.names.len()), g.x).map_err(|e| Error::msg(e.to_string()))?;
        let pr = model.predict(&g.names, x.view()).map_err(|e| Error::msg(format!("model refuses this table: {e}")))?;
        let col: ArrayRef = match pr {
            Prediction::Values(v) => Arc::new(Float64Array::from(v)),
            Prediction::Classes(c) => {
                let classes = model.classes.clone().unwrap_or_default();
                Arc::new(StringArray::from_iter_values(c.into_iter().map(|k| classes.get(k).cloned().unwrap_or_else(|| k.to_string()))))
            }
            Prediction::Clusters(c) => Arc::new(Int64Array::from_iter(c.into_iter().map(|k| k.map(|k| k as i64)))),
            Prediction::Transformed(_) => return Err(Error::msg("a PCA model transforms; it does not predict a column")),
        };
        let mut columns = batch.columns().to_vec();
        columns.push(col);
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl TransformOperator for PredictOperator {
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        match &self.model {
            // The training stage's own rows: its model is what this stage wants, not its table.
            _ if input > 0 => {}
            Model::Loaded(model) => out.emit(self.predict(model, &batch)?),
            Model::AtFinish(_) => self.pending.push(batch),
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let Model::AtFinish(file) = &self.model else { return Ok(()) };
        let model = FittedModel::from_file(file).map_err(|e| Error::msg(format!("stage `{}`: {e}", self.name)))?;
        // As `process` would: a batch the model refuses fails its recordings, not the stage.
        for (i, batch) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            match self.predict(&model, &batch) {
                Ok(b) => out.emit(b),
                Err(e) => {
                    for unit in batch_units(&batch, &format!("{} batch #{i}", self.name)) {
                        out.fail(unit, e.to_string());
                    }
                }
            }
        }
        Ok(())
    }
}
