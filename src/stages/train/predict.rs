//! `predict.model`: applies a model file written by a training stage to a table with the same
//! feature columns; a table whose features differ is refused with the difference spelled out.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ndarray::Array2;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::is_feature_type;
use super::table::gather;
use crate::error::{Error, Result};
use crate::stage::columns::{column_list, type_name};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::train::models::{FittedModel, ModelError, Prediction, Task};

fn default_prediction_column() -> String {
    "prediction".into()
}

/// Applies a model file written by a training stage to a table with the same feature columns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictModel {
    /// The `model.json` of a training stage (or the same zstd-compressed, `.json.zst`), relative to
    /// the pipeline file [path].
    pub model: String,
    /// Name of the column the predictions go to [column].
    #[serde(default = "default_prediction_column")]
    pub column: String,
}

impl PredictModel {
    fn load(&self, ctx: &StageContext) -> std::result::Result<FittedModel, ModelError> {
        FittedModel::from_file(&ctx.resolve(&self.model))
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
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        // Each row's prediction depends on that row and the model only.
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        self.load(ctx).err().map(|e| Issue::at(&["model"], e.to_string())).into_iter().collect()
    }

    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let model = self.load(ctx).map_err(|e| vec![Issue::at(&["model"], e.to_string())])?;
        self.prediction_schema(&inputs[0], &Self::source_columns(&model), model.task())
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(vec![ctx.resolve(&self.model)])
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let model = self.load(ctx).map_err(|e| Error::msg(format!("stage `{}`: {e}", ctx.name)))?;
        Ok(Operator::Transform(Box::new(PredictOperator { model, schema: output.clone() })))
    }
}

struct PredictOperator {
    model: FittedModel,
    schema: SchemaRef,
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
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        out.emit(self.predict(&self.model, &batch)?);
        Ok(())
    }
}
