//! Backpressure: with a deliberately slow consumer, rows in flight on its input edge never exceed
//! the bound (read from the run's counters), and the producer reports time blocked by it.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use neurostream::runtime::{Mode, RunOptions, run_pipeline};
use crate::support::Project;
use neurostream::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageContext, StageDef, TransformOperator};

/// Wraps a real stage; its operator sleeps before each batch, like an expensive model fit.
struct Slow(Box<dyn StageDef>);

struct SlowOp(Box<dyn TransformOperator>);

impl TransformOperator for SlowOp {
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut Emitter) -> neurostream::Result<()> {
        std::thread::sleep(Duration::from_millis(4));
        self.0.process(input, batch, out)
    }
}

impl StageDef for Slow {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn code_version(&self) -> u32 {
        self.0.code_version()
    }
    fn arity(&self) -> Arity {
        self.0.arity()
    }
    fn partitioning(&self) -> Partitioning {
        self.0.partitioning()
    }
    fn canonical_json(&self) -> serde_json::Value {
        self.0.canonical_json()
    }
    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        self.0.check(ctx)
    }
    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> Result<SchemaRef, Vec<Issue>> {
        self.0.output_schema(ctx, inputs)
    }
    fn external_inputs(&self, ctx: &StageContext) -> neurostream::Result<Vec<std::path::PathBuf>> {
        self.0.external_inputs(ctx)
    }
    fn external_outputs(&self, ctx: &StageContext) -> Vec<std::path::PathBuf> {
        self.0.external_outputs(ctx)
    }
    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> neurostream::Result<Operator> {
        match self.0.build(ctx, inputs, output)? {
            Operator::Transform(t) => Ok(Operator::Transform(Box::new(SlowOp(t)))),
            other => Ok(other),
        }
    }
}

#[test]
fn a_slow_consumer_bounds_rows_in_flight_and_blocks_its_producer() {
    let text = r#"
[pipeline]
name = "core"
channel_rows = 300
channel_bytes = 1048576

[stages.sweeps]
kind = "source.parquet"
paths = ["data/*.parquet"]
batch_rows = 50

[stages.keep]
kind = "transform.select"
inputs = ["sweeps"]
columns = ["recording_id", "spike_count"]

[stages.fast]
kind = "transform.select"
inputs = ["sweeps"]
columns = ["sweep"]
"#;
    let p = Project::new(text);
    let path = p.path().join("pipeline.toml");
    let mut pipeline = neurostream::pipeline::parse_str(&path, text).unwrap();
    let i = pipeline.index_of("keep").unwrap();
    let inner = std::mem::replace(&mut pipeline.stages[i].def, Box::new(Slow(Box::new(neurostream::stages::transform::select::Select { columns: vec![], drop: vec![] }))));
    pipeline.stages[i].def = Box::new(Slow(inner));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(run_pipeline(&pipeline, &RunOptions::new(Mode::Run, true))).unwrap();
    assert!(report.ok);
    let edge = report.edges.iter().find(|e| e.from == "sweeps" && e.to == "keep").unwrap();
    assert_eq!(edge.bound_rows, 300);
    assert!(edge.max_in_flight_rows <= 300, "{edge:?}");
    assert!(edge.max_in_flight_rows >= 100, "the slow edge should fill up: {edge:?}");
    assert!(edge.max_in_flight_bytes <= edge.bound_bytes, "{edge:?}");
    // 3,000 rows in 50-row batches at >= 4 ms each: the source must have waited for credits.
    let src = report.stage("sweeps").unwrap();
    assert!(src.counters.blocked_s > 0.05, "source blocked only {} s", src.counters.blocked_s);
    assert_eq!(report.stage("keep").unwrap().counters.rows_out, 3000);
    assert_eq!(report.stage("fast").unwrap().counters.rows_out, 3000);
}
