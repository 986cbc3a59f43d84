//! The stage actor: receives batches on its input ports, runs its operator on the blocking pool,
//! writes its checkpoint, and forwards output batches to its consumers under their edges' credits.
//!
//! Failure isolation: an operator error on one batch fails the recordings of that batch (reported as
//! [`StageEvent::Failure`]) and the stage goes on; only a broken checkpoint writer or an error in
//! `finish` fails the stage as a whole, in which case its consumers are told so by their `Eof` and
//! abort instead of committing outputs computed from incomplete inputs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::channel::{Credit, EdgeBudget};
use crate::checkpoint::{Checkpoint, CheckpointWriter, Manifest};
use super::metrics::StageCounters;
use crate::error::{Error, Result};
use crate::stage::columns::{column_list, same_columns};
use crate::stage::{Emitter, Operator, UnitFailure, batch_bytes, batch_units};

pub enum StageMsg {
    /// Sources: produce until exhausted.
    Start,
    Batch { port: usize, batch: RecordBatch, credit: Credit },
    /// An input is exhausted. `incomplete`: it lost recordings to failures; `failed`: it failed as a whole.
    Eof { port: usize, incomplete: bool, failed: bool },
}

pub struct OutputEdge {
    pub target: ActorRef<StageMsg>,
    pub port: usize,
    pub budget: Arc<EdgeBudget>,
}

#[derive(Debug)]
pub enum StageOutcome {
    /// Output committed as this checkpoint.
    Committed(Checkpoint),
    /// The stage only streamed an existing checkpoint to its consumers.
    Streamed,
    /// The stage failed as a whole.
    Failed(String),
    /// An input failed as a whole; nothing was committed.
    Aborted(String),
}

pub enum StageEvent {
    Failure { stage: usize, failure: UnitFailure },
    Finished { stage: usize, outcome: StageOutcome },
}

pub type ManifestFill = Box<dyn FnOnce(&mut Manifest) + Send>;

pub struct StageArgs {
    pub index: usize,
    pub name: String,
    pub operator: Operator,
    pub n_inputs: usize,
    pub outputs: Vec<OutputEdge>,
    pub writer: Option<CheckpointWriter>,
    pub fill: Option<ManifestFill>,
    pub counters: Arc<StageCounters>,
    pub events: mpsc::UnboundedSender<StageEvent>,
    pub output_schema: SchemaRef,
}

pub struct StageState {
    args: StageArgs,
    op: Option<Operator>,
    open_inputs: usize,
    incomplete: bool,
    upstream_failed: Option<String>,
    fatal: Option<String>,
    failures: Vec<UnitFailure>,
    batch_seq: u64,
}

pub struct StageActor;

enum Step {
    Next,
    Process(usize, RecordBatch, Credit),
    Finish,
}

struct StepResult {
    more: bool,
    error: Option<String>,
    emitter: Emitter,
    fatal: Option<String>,
}

impl StageState {
    /// Runs one operator call on the blocking pool, conforms and checkpoints what it emitted.
    async fn step(&mut self, step: Step) -> StepResult {
        let mut op = self.op.take().expect("operator present between steps");
        let mut writer = self.args.writer.take();
        let schema = self.args.output_schema.clone();
        let name = self.args.name.clone();
        let (op, writer, result, elapsed) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut em = Emitter::default();
            let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<bool> {
                match (&mut op, step) {
                    (Operator::Source(s), Step::Next) => s.next(&mut em),
                    (Operator::Transform(t), Step::Process(port, batch, credit)) => {
                        let r = t.process(port, batch, &mut em);
                        drop(credit); // processed: return the edge's credits
                        r.map(|_| true)
                    }
                    (Operator::Transform(t), Step::Finish) => t.finish(&mut em).map(|_| false),
                    (Operator::Source(_), _) => Ok(false),
                    (Operator::Transform(_), Step::Next) => Ok(false),
                }
            }));
            let (more, error) = match outcome {
                Ok(Ok(more)) => (more, None),
                Ok(Err(e)) => (true, Some(e.to_string())),
                Err(panic) => {
                    let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    (true, Some(format!("internal error (panic) in stage `{name}`: {msg}")))
                }
            };
            // Conform emitted batches to the declared schema (carrying its unit metadata) and checkpoint them.
            let mut fatal = None;
            let mut conformed = Vec::with_capacity(em.batches.len());
            for b in em.batches.drain(..) {
                if !same_columns(b.schema().as_ref(), &schema) {
                    fatal = Some(format!(
                        "internal error: stage `{name}` emitted columns {} but declared {}",
                        column_list(&b.schema()),
                        column_list(&schema)
                    ));
                    break;
                }
                let b = match RecordBatch::try_new(schema.clone(), b.columns().to_vec()) {
                    Ok(b) => b,
                    Err(e) => {
                        fatal = Some(format!("stage `{name}` emitted a batch that does not fit its schema: {e}"));
                        break;
                    }
                };
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.write(&b) {
                        fatal = Some(format!("stage `{name}`: {e}"));
                        break;
                    }
                }
                conformed.push(b);
            }
            em.batches = conformed;
            (op, writer, StepResult { more, error, emitter: em, fatal }, t.elapsed())
        })
        .await
        .expect("the blocking task itself does not panic: operator panics are caught");
        self.op = Some(op);
        self.args.writer = writer;
        StageCounters::add(&self.args.counters.busy_ns, elapsed.as_nanos() as u64);
        result
    }

    fn record_failure(&mut self, failure: UnitFailure) {
        StageCounters::add(&self.args.counters.failures, 1);
        let _ = self.args.events.send(StageEvent::Failure { stage: self.args.index, failure: failure.clone() });
        self.failures.push(failure);
    }

    /// Sends batches to every consumer, split to fit each edge's bound, waiting for credits.
    async fn forward(&mut self, batches: Vec<RecordBatch>) {
        for batch in batches {
            let rows = batch.num_rows();
            let bytes = batch_bytes(&batch);
            StageCounters::add(&self.args.counters.batches_out, 1);
            StageCounters::add(&self.args.counters.rows_out, rows as u64);
            StageCounters::add(&self.args.counters.bytes_out, bytes as u64);
            for edge in &self.args.outputs {
                let per_row = bytes.div_ceil(rows.max(1)).max(1);
                let max_rows = edge.budget.bound_rows.min((edge.budget.bound_bytes / per_row).max(1));
                let mut offset = 0;
                while offset < rows {
                    let n = max_rows.min(rows - offset);
                    let slice = if n == rows { batch.clone() } else { batch.slice(offset, n) };
                    let t = Instant::now();
                    let credit = edge.budget.acquire(n, n * per_row).await;
                    StageCounters::add(&self.args.counters.blocked_ns, t.elapsed().as_nanos() as u64);
                    // A consumer that has stopped (it failed) simply drops what it is sent.
                    let _ = edge.target.cast(StageMsg::Batch { port: edge.port, batch: slice, credit });
                    offset += n;
                }
            }
        }
    }

    async fn handle_result(&mut self, r: StepResult, units: impl FnOnce() -> Vec<String>) {
        let StepResult { error, emitter, fatal, .. } = r;
        if let Some(msg) = error {
            for unit in units() {
                self.record_failure(UnitFailure { unit, message: msg.clone() });
            }
        }
        for f in emitter.failures {
            self.record_failure(f);
        }
        if let Some(f) = fatal {
            self.fatal.get_or_insert(f);
            return;
        }
        self.forward(emitter.batches).await;
    }

    /// Finishes the stage: operator `finish`, checkpoint commit, `Eof` downstream, outcome report.
    async fn complete(&mut self, myself: &ActorRef<StageMsg>) {
        if self.fatal.is_none() && self.upstream_failed.is_none() {
            if matches!(self.op, Some(Operator::Transform(_))) {
                let r = self.step(Step::Finish).await;
                if let Some(e) = &r.error {
                    self.fatal.get_or_insert(e.clone());
                }
                self.handle_result(StepResult { error: None, ..r }, Vec::new).await;
            }
        }
        let outcome = if let Some(f) = self.fatal.clone() {
            StageOutcome::Failed(f)
        } else if let Some(u) = self.upstream_failed.clone() {
            StageOutcome::Aborted(u)
        } else if let Some(writer) = self.args.writer.take() {
            let fill = self.args.fill.take();
            let failures = self.failures.clone();
            let incomplete = self.incomplete;
            let r = tokio::task::spawn_blocking(move || {
                writer.commit(|m| {
                    if let Some(fill) = fill {
                        fill(m);
                    }
                    m.failures = failures;
                    m.upstream_incomplete = incomplete;
                })
            })
            .await
            .unwrap_or_else(|e| Err(Error::msg(format!("checkpoint commit panicked: {e}"))));
            match r {
                Ok(cp) => StageOutcome::Committed(cp),
                Err(e) => StageOutcome::Failed(format!("stage `{}`: committing its checkpoint: {e}", self.args.name)),
            }
        } else {
            StageOutcome::Streamed
        };
        let failed = matches!(outcome, StageOutcome::Failed(_) | StageOutcome::Aborted(_));
        let incomplete = self.incomplete || !self.failures.is_empty();
        for edge in &self.args.outputs {
            let _ = edge.target.cast(StageMsg::Eof { port: edge.port, incomplete, failed });
        }
        let _ = self.args.events.send(StageEvent::Finished { stage: self.args.index, outcome });
        myself.stop(None);
    }
}

impl Actor for StageActor {
    type Msg = StageMsg;
    type State = StageState;
    type Arguments = StageArgs;

    async fn pre_start(&self, _myself: ActorRef<StageMsg>, mut args: StageArgs) -> Result<StageState, ActorProcessingErr> {
        let op = std::mem::replace(&mut args.operator, Operator::Transform(Box::new(Noop)));
        let open_inputs = args.n_inputs;
        Ok(StageState { args, op: Some(op), open_inputs, incomplete: false, upstream_failed: None, fatal: None, failures: Vec::new(), batch_seq: 0 })
    }

    async fn handle(&self, myself: ActorRef<StageMsg>, msg: StageMsg, state: &mut StageState) -> Result<(), ActorProcessingErr> {
        match msg {
            StageMsg::Start => {
                let mut consecutive_errors = 0;
                loop {
                    if state.fatal.is_some() {
                        break;
                    }
                    state.batch_seq += 1;
                    let seq = state.batch_seq;
                    let r = state.step(Step::Next).await;
                    let more = r.more;
                    if r.error.is_some() {
                        consecutive_errors += 1;
                    } else {
                        consecutive_errors = 0;
                    }
                    let name = state.args.name.clone();
                    state.handle_result(r, || vec![format!("{name} read #{seq}")]).await;
                    // A source that fails on every call would otherwise spin forever.
                    if !more || consecutive_errors >= 1000 {
                        if consecutive_errors >= 1000 {
                            state.fatal.get_or_insert("source failed 1000 times in a row; giving up".into());
                        }
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                state.complete(&myself).await;
            }
            StageMsg::Batch { port, batch, credit } => {
                if state.fatal.is_some() || state.upstream_failed.is_some() {
                    return Ok(()); // drop it; the credit returns with it
                }
                let c = &state.args.counters;
                StageCounters::add(&c.batches_in, 1);
                StageCounters::add(&c.rows_in, batch.num_rows() as u64);
                StageCounters::add(&c.bytes_in, batch_bytes(&batch) as u64);
                state.batch_seq += 1;
                let seq = state.batch_seq;
                // Unit names are only needed when the call fails: computing them eagerly cost a
                // String per row (the actor-graph overhead benchmark found it). A clone is an Arc bump.
                let for_units = batch.clone();
                let r = state.step(Step::Process(port, batch, credit)).await;
                let name = state.args.name.clone();
                state.handle_result(r, || batch_units(&for_units, &format!("{name} batch #{seq}"))).await;
            }
            StageMsg::Eof { port: _, incomplete, failed } => {
                state.incomplete |= incomplete;
                if failed && state.upstream_failed.is_none() {
                    state.upstream_failed = Some("an input stage failed".into());
                }
                state.open_inputs = state.open_inputs.saturating_sub(1);
                if state.open_inputs == 0 {
                    state.complete(&myself).await;
                }
            }
        }
        Ok(())
    }
}

struct Noop;
impl crate::stage::TransformOperator for Noop {
    fn process(&mut self, _: usize, _: RecordBatch, _: &mut Emitter) -> Result<()> {
        Ok(())
    }
}

/// Used by tests and benchmarks that need a deliberately slow stage.
pub fn sleep_for(d: Duration) {
    std::thread::sleep(d)
}
