//! One stage kind run in-process, without the binary and without a pipeline file: its TOML stage
//! table is parsed through the registry, given record batches are fed to its operator, and what
//! it emits comes back with its unit failures. Every emitted batch is checked against the schema
//! the stage declared for these inputs (the contract the runtime relies on when it writes
//! checkpoints), so a kind whose batches drift from its `output_schema` fails here.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use neurostream::stage::columns::{column_list, same_columns};
use neurostream::stage::{Emitter, Issue, Operator, StageContext, StageDef, UnitFailure, batch_units};

/// A parsed stage with its context, in a scratch folder of its own (its base and run directory).
pub struct Harness {
    pub def: Box<dyn StageDef>,
    pub ctx: StageContext,
    dir: tempfile::TempDir,
}

/// What one run emitted.
#[derive(Debug)]
pub struct StageOutput {
    /// The schema the stage declared for its inputs (empty for a sink).
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub failures: Vec<UnitFailure>,
}

impl StageOutput {
    /// Every emitted row in one batch (under the declared schema).
    pub fn rows(&self) -> RecordBatch {
        arrow::compute::concat_batches(&self.schema, &self.batches).unwrap()
    }
}

impl Harness {
    /// Parses a stage table as written in a pipeline file, `kind` included, `inputs` left out
    /// (`kind = "transform.filter"\nwhere = "a > 1"`). Panics on an unknown kind or a bad option.
    pub fn new(table: &str) -> Harness {
        let mut options: toml::Table = toml::from_str(table).unwrap_or_else(|e| panic!("stage table: {e}"));
        let kind = match options.remove("kind") {
            Some(toml::Value::String(k)) => k,
            other => panic!("the stage table needs `kind = \"...\"`, got {other:?}"),
        };
        let entry = neurostream::stages::find_kind(&kind).unwrap_or_else(|| panic!("no stage kind `{kind}`"));
        let def = entry.parse_options(&toml::to_string(&options).unwrap()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let dir = tempfile::tempdir().unwrap();
        let name = "stage";
        let ctx = StageContext::new(name, dir.path(), neurostream::pipeline::stage_seed(1, name), dir.path().join("runs/harness"));
        Harness { def, ctx, dir }
    }

    /// The stage's folder: relative paths in its options resolve against it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the stage once on `inputs` (one list of batches per input, in `inputs` order; each
    /// input's schema is that of its first batch). A source takes none. `Err` holds the issues of
    /// `check` or `output_schema`, as `validate` would report them.
    pub fn run(&self, inputs: &[&[RecordBatch]]) -> Result<StageOutput, Vec<Issue>> {
        let issues = self.def.check(&self.ctx);
        if !issues.is_empty() {
            return Err(issues);
        }
        let schemas: Vec<SchemaRef> = inputs.iter().map(|b| b.first().expect("each input needs a batch (its schema)").schema()).collect();
        let schema = self.def.output_schema(&self.ctx, &schemas)?;
        let operator = self.def.build(&self.ctx, &schemas, &schema).unwrap_or_else(|e| panic!("{}: build: {e}", self.def.kind()));
        let (batches, failures) = self.drive(operator, inputs);
        for b in &batches {
            assert!(
                same_columns(&b.schema(), &schema),
                "{} emitted columns {} but declared {}",
                self.def.kind(),
                column_list(&b.schema()),
                column_list(&schema)
            );
        }
        Ok(StageOutput { schema, batches, failures })
    }

    /// Drives the operator as the runtime does: a source until it says it is done; a transform or
    /// sink batch by batch (an `Err` fails the recordings of that batch only), then `finish`.
    fn drive(&self, operator: Operator, inputs: &[&[RecordBatch]]) -> (Vec<RecordBatch>, Vec<UnitFailure>) {
        let mut out = Emitter::default();
        match operator {
            Operator::Source(mut source) => {
                assert!(inputs.is_empty(), "a source takes no inputs");
                while source.next(&mut out).unwrap_or_else(|e| panic!("{}: {e}", self.def.kind())) {}
            }
            Operator::Transform(mut op) => {
                for (port, batches) in inputs.iter().enumerate() {
                    for batch in batches.iter() {
                        if let Err(e) = op.process(port, batch.clone(), &mut out) {
                            for unit in batch_units(batch, &self.ctx.name) {
                                out.fail(unit, e.to_string());
                            }
                        }
                    }
                }
                op.finish(&mut out).unwrap_or_else(|e| panic!("{}: finish: {e}", self.def.kind()));
            }
        }
        out.into_parts()
    }
}
