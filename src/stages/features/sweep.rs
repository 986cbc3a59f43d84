//! `features.sweep`: IPFX's basic spike-train features (count, rate, latency, ISI statistics,
//! adaptation) of every sweep inside a window found from the stimulus itself; one row per sweep.
//!
//! Design choice: it takes the sweeps table alone and runs detection itself (same options as
//! `features.spikes`, the same per-sweep analysis: [`super::sweep_analysis`]). Taking the spikes
//! table instead would need a join, and in a spikes table a sweep with no spike, a sweep whose
//! detection failed and a sweep not yet seen all look the same (no rows), so spike counts of 0
//! could not be told from missing data.
//!
//! Simulated sweeps with a non-null `model_spike_times` list get the train features of those
//! times. Chunk rows (`ingest.abf` with `chunk_s`) are refused: the features need whole sweeps.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};

use super::sweep_analysis::{Detection, SweepResult, SweepSpikes, WindowMode, analyse_batch, check_sweeps_input, detection_config, is_chunked};
use crate::error::{Error, Result};
use crate::features::spike_train::{SpikeTrainFeatures, basic_spike_train_features, spike_train_features};
use crate::stage::columns::{field, is_string};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};

detection_config! {
    /// IPFX's basic spike-train features of every sweep inside its stimulus window; one row per sweep.
    FeaturesSweep
}

/// The per-sweep features table.
pub fn sweep_features_schema(input: &Schema) -> SchemaRef {
    let mut fields = vec![field("recording_id", DataType::Utf8, false, None), field("sweep", DataType::Int64, false, None)];
    if let Ok(f) = input.field_with_name("stimulus_kind")
        && is_string(f.data_type())
    {
        fields.push(field("stimulus_kind", DataType::Utf8, true, None));
    }
    fields.extend([
        field("detection", DataType::Utf8, false, None),
        field("stimulus_found", DataType::Boolean, false, None),
        field("window_start", DataType::Float64, false, Some("s")),
        field("window_end", DataType::Float64, false, Some("s")),
        field("stimulus_baseline", DataType::Float64, true, Some("pA")),
        field("stimulus_amplitude", DataType::Float64, true, Some("pA")),
        field("spike_count", DataType::Int64, false, None),
        field("avg_rate", DataType::Float64, false, Some("Hz")),
        field("latency", DataType::Float64, true, Some("s")),
        field("first_isi", DataType::Float64, true, Some("s")),
        field("mean_isi", DataType::Float64, true, Some("s")),
        field("median_isi", DataType::Float64, true, Some("s")),
        field("isi_cv", DataType::Float64, true, Some("1")),
        field("adapt", DataType::Float64, true, Some("1")),
    ]);
    Arc::new(Schema::new(fields))
}

impl StageConfig for FeaturesSweep {
    const KIND: &'static str = "features.sweep";
    const SUMMARY: &'static str =
        "IPFX spike-train features (count, rate, latency, ISIs, adaptation) per sweep inside its stimulus window";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "start_s = 0.27\nend_s = 1.27";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }
    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        self.issues()
    }
    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let explicit = self.start_s.is_some() || self.end_s.is_some();
        let needs_stimulus = !explicit && self.window != Some(WindowMode::Sweep);
        check_sweeps_input(&inputs[0], needs_stimulus)?;
        if is_chunked(&inputs[0]) {
            return Err(vec![Issue::at(
                &["inputs"],
                "the input holds chunk rows (ingest.abf chunk_s); spike-train features need whole sweeps: remove chunk_s",
            )]);
        }
        Ok(sweep_features_schema(&inputs[0]))
    }
    fn build(&self, _ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(SweepOp { detection: self.detection(WindowMode::Stimulus), schema: output.clone() })))
    }
}

/// One output row of features.sweep: input row, its analysis, model times used, features.
type SweepRow<'a> = (usize, &'a SweepResult, bool, SpikeTrainFeatures);

struct SweepOp {
    detection: Detection,
    schema: SchemaRef,
}

impl TransformOperator for SweepOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let (cols, results) = analyse_batch(&batch, &self.detection, out)?;
        let mut rows: Vec<SweepRow<'_>> = Vec::with_capacity(results.len());
        for (row, res) in &results {
            let (start, end) = (res.window_start_s, res.window_end_s);
            let (model, feats) = match &res.spikes {
                SweepSpikes::Detected(spikes) => (false, spike_train_features(spikes, start, end)),
                SweepSpikes::Model(times) => {
                    let t: Vec<f64> = times.iter().map(|x| x.0).collect();
                    (true, basic_spike_train_features(&t, start, end))
                }
            };
            match feats {
                Ok(f) => rows.push((*row, res, model, f)),
                Err(e) => out.fail(cols.unit(*row), format!("spike-train features: {e}")),
            }
        }
        let kinds = batch.column_by_name("stimulus_kind").and_then(|c| arrow::compute::cast(c, &DataType::Utf8).ok());
        let f64s = |f: &dyn Fn(&SweepRow<'_>) -> Option<f64>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<Float64Array>())
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| Some(cols.recording_id.value(r.0))).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| cols.sweep.value(r.0)).collect::<Int64Array>()),
        ];
        if self.schema.field_with_name("stimulus_kind").is_ok() {
            let kinds = kinds.ok_or_else(|| Error::msg("the batch has no `stimulus_kind` column"))?;
            let kinds = kinds.as_string::<i32>();
            columns.push(Arc::new(rows.iter().map(|r| kinds.is_valid(r.0).then(|| kinds.value(r.0))).collect::<StringArray>()));
        }
        columns.extend([
            Arc::new(rows.iter().map(|r| Some(if r.2 { "model_spike_times" } else { "ipfx" })).collect::<StringArray>()) as ArrayRef,
            Arc::new(rows.iter().map(|r| Some(r.1.stimulus.is_some())).collect::<BooleanArray>()),
            f64s(&|r| Some(r.1.window_start_s)),
            f64s(&|r| Some(r.1.window_end_s)),
            f64s(&|r| r.1.stimulus.map(|s| s.baseline_pa)),
            f64s(&|r| r.1.stimulus.map(|s| s.amplitude_pa)),
            Arc::new(rows.iter().map(|r| r.3.spike_count as i64).collect::<Int64Array>()),
            f64s(&|r| Some(r.3.avg_rate_hz)),
            f64s(&|r| r.3.latency_s),
            f64s(&|r| r.3.first_isi_s),
            f64s(&|r| r.3.mean_isi_s),
            f64s(&|r| r.3.median_isi_s),
            f64s(&|r| r.3.isi_cv),
            f64s(&|r| r.3.adapt),
        ]);
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Float64Type;

    use super::super::sweep_analysis::test_support::{run_transform, seven_sweeps};
    use super::*;

    #[test]
    fn bad_sweeps_fail_alone_and_model_times_are_used() {
        let batch = seven_sweeps();
        // features.sweep: window 100..899 (the +50 pA step) holds the spike at 0.005 s only
        let cfg: FeaturesSweep = toml::from_str("filter_khz = \"none\"").unwrap();
        let out = run_transform(&cfg, batch);
        let units: Vec<&str> = out.failures.iter().map(|f| f.unit.as_str()).collect();
        // without the main filter a 10-sample sweep is analysable (no spike), as in IPFX
        assert_eq!(units, ["r/1", "r/3", "r/6"]);
        let b = &out.batches[0];
        assert_eq!(b.num_rows(), 4);
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let counts = col("spike_count");
        assert_eq!(counts.as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), vec![0, 0, 0, 1]);
        let amp = col("stimulus_amplitude");
        assert!(amp.is_null(1));
        assert_eq!(amp.as_primitive::<Float64Type>().value(3), 50.0);
        let start = col("window_start");
        assert_eq!(start.as_primitive::<Float64Type>().value(3), 100.0 / 50_000.0);
        let latency = col("latency");
        assert!((latency.as_primitive::<Float64Type>().value(3) - (0.005 - 0.002)).abs() < 1e-15);
    }
}
