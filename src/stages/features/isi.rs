//! `features.isi`: a fixed-length vector of ISI statistics of a spike train
//! ([`crate::dic::isi::isi_feature_vector`]), the input of the DIC regression (the thesis feeds
//! the ISI sequence to a transformer; a tree ensemble on these summaries is what
//! `pipelines/dic_train.toml` trains instead).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dic::isi::{ISI_FEATURE_NAMES, isi_feature_vector};
use crate::error::{Error, Result};
use crate::stage::columns::{f64_list_array, f64_list_type};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::stages::dic::spike_columns::{default_spike_column, lists_ms, ms_per_unit, no_clash};

/// Appends `isi_features` (list of the 23 numbers of [`ISI_FEATURE_NAMES`]; null for a silent or
/// invalid train) computed from a spike-time column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesIsi {
    /// Column with the spike times (list<float64> in ms or s) [column].
    #[serde(default = "default_spike_column")]
    pub spike_column: String,
}

impl StageConfig for FeaturesIsi {
    const KIND: &'static str = "features.isi";
    const SUMMARY: &'static str = "Spike train -> fixed vector of ISI statistics (rate, ln-ISI distribution, CV, burst metrics)";
    const CODE_VERSION: u32 = 2;
    const EXAMPLE: &'static str = "spike_column = \"spike_times\"";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = no_clash(input, &["isi_features"]);
        if let Err(i) = ms_per_unit(input, &self.spike_column, "spike_column") {
            issues.push(i);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut f = Field::new("isi_features", f64_list_type(), true);
        f.set_metadata(std::collections::HashMap::from([("names".to_string(), ISI_FEATURE_NAMES.join(","))]));
        fields.push(f);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn build(&self, _ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let scale = ms_per_unit(&inputs[0], &self.spike_column, "spike_column").map_err(|i| Error::msg(i.message))?;
        Ok(Operator::Transform(Box::new(IsiOperator { column: self.spike_column.clone(), scale, schema: output.clone() })))
    }
}

struct IsiOperator {
    column: String,
    scale: f64,
    schema: SchemaRef,
}

impl TransformOperator for IsiOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let trains = lists_ms(&batch, &self.column, self.scale)?;
        let vecs: Vec<Option<_>> = trains.iter().map(|t| t.as_deref().and_then(isi_feature_vector)).collect();
        let rows: Vec<Option<&[f64]>> = vecs.iter().map(|v| v.as_ref().map(|v| v.as_slice())).collect();
        let list = f64_list_array(&rows)?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(list));
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
