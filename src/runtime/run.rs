//! `run` and `replay`: decide which stages to compute, spawn their actors, collect their events,
//! report. Each step is one function below; [`run_pipeline`] is their sequence.
//!
//! Deciding: every stage's fingerprint is computed first. A stage with a reusable checkpoint under
//! its current fingerprint is not recomputed (`run` says so); a stage to compute whose input is
//! reused gets that input streamed from its checkpoint. `replay --from X` recomputes X and its
//! descendants even if their checkpoints exist, and never runs anything upstream: a missing
//! upstream checkpoint is an error before any work starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ractor::Actor;
use tokio::sync::mpsc;

use super::actor::{ManifestFill, OutputEdge, StageActor, StageArgs, StageEvent, StageMsg, StageOutcome};
use super::channel::EdgeBudget;
use super::fingerprint;
use super::metrics::{EdgeSnapshot, StageCounters};
pub use super::report::{RunReport, StageReport, read_last_report, write_report};
use crate::checkpoint::{self, Checkpoint, CheckpointWriter, ExternalInput, RunLock, now_s};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::stage::parquet::ParquetSource;
use crate::stage::{Arity, Operator, UnitFailure};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run,
    Replay { from: String },
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Take the run directory's lock (false when the caller, e.g. `run --watch`, already holds it).
    pub lock: bool,
}

impl RunOptions {
    pub fn new(mode: Mode, quiet: bool) -> Self {
        RunOptions { mode, quiet, lock: true }
    }
}

fn stage_dir(p: &Pipeline, i: usize) -> PathBuf {
    p.run_dir.join(&p.stages[i].name)
}

/// Whether a committed checkpoint may stand in for computing the stage now.
fn reusable(p: &Pipeline, i: usize, cp: &Checkpoint) -> bool {
    cp.manifest.reusable() && p.stages[i].def.external_outputs(&p.stages[i].ctx).iter().all(|f| f.exists())
}

/// Runs (or replays) a validated pipeline. Errors before any work (lock, missing checkpoints for a
/// replay, unreadable inputs) are returned as `Err`; failures during the run are in the report.
pub async fn run_pipeline(p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let started_at = now_s();
    let _lock = if opts.lock { Some(RunLock::acquire(&p.run_dir)?) } else { None };
    let say = |line: String| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };
    let decision = decide(p, &opts.mode)?;
    let (events_tx, events) = mpsc::unbounded_channel::<StageEvent>();
    let spawned = spawn(p, &decision, events_tx, &say).await?;
    if matches!(opts.mode, Mode::Run) {
        for (i, cp) in decision.existing.iter().enumerate() {
            if let (Some(cp), false, false) = (cp, decision.compute[i], decision.reader[i]) {
                say(format!("  {:<24} up to date: checkpoint {} ({} rows), not recomputed", p.stages[i].name, cp.manifest.fingerprint, cp.manifest.rows));
            }
        }
    }
    for &i in &spawned.sources {
        spawned.refs[i].as_ref().expect("spawned").cast(StageMsg::Start).map_err(|e| Error::msg(format!("starting stage `{}`: {e}", p.stages[i].name)))?;
    }
    let collected = collect(p, events, &spawned, &say).await;
    for h in spawned.handles {
        let _ = h.await;
    }
    let report = RunReport {
        pipeline: p.name().to_string(),
        file: p.file.display().to_string(),
        mode: match &opts.mode {
            Mode::Run => "run".into(),
            Mode::Replay { from } => format!("replay --from {from}"),
        },
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        ok: false,
        stages: stage_reports(p, &decision, &collected, &spawned.counters),
        edges: spawned.edges.iter().map(|(a, b, e)| edge_snapshot(p, *a, *b, e)).collect(),
        resume: None,
    };
    let ok = report.stages.iter().all(|s| !matches!(s.action.as_str(), "failed" | "aborted") && s.failures.is_empty());
    let report = RunReport { ok, resume: (!ok).then(|| format!("neurostream run {}", p.file.display())), ..report };
    write_report(&p.run_dir, &report)?;
    Ok(report)
}

/// What to do with each stage.
struct Decision {
    /// Fingerprint and hashed external inputs of every stage.
    fingerprints: Vec<(String, Vec<ExternalInput>)>,
    /// The reusable checkpoint under the current fingerprint, if any.
    existing: Vec<Option<Checkpoint>>,
    /// Computed in this run.
    compute: Vec<bool>,
    /// Not computed, but streams its checkpoint to a computed consumer.
    reader: Vec<bool>,
}

/// Fingerprints every stage and decides what to compute (all that has no reusable checkpoint; for
/// a replay, the stage and its descendants, whose inputs must then have checkpoints).
fn decide(p: &Pipeline, mode: &Mode) -> Result<Decision> {
    let n = p.stages.len();
    let fingerprints = fingerprint::compute(p)?;
    for i in 0..n {
        checkpoint::clean_leftovers(&stage_dir(p, i));
    }
    let existing: Vec<Option<Checkpoint>> =
        (0..n).map(|i| checkpoint::find(&stage_dir(p, i), &fingerprints[i].0).filter(|cp| reusable(p, i, cp))).collect();
    let compute = match mode {
        Mode::Run => existing.iter().map(Option::is_none).collect(),
        Mode::Replay { from } => replayed(p, from, &fingerprints, &existing)?,
    };
    let reader = (0..n).map(|i| !compute[i] && p.consumers(i).iter().any(|&(c, _)| compute[c])).collect();
    Ok(Decision { fingerprints, existing, compute, reader })
}

/// The stages `replay --from from` recomputes, after checking every input they read has a checkpoint.
fn replayed(p: &Pipeline, from: &str, fingerprints: &[(String, Vec<ExternalInput>)], existing: &[Option<Checkpoint>]) -> Result<Vec<bool>> {
    let Some(x) = p.index_of(from) else {
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        let hint = crate::diag::nearest(from, names.iter().copied()).map(|h| format!("; did you mean `{h}`?")).unwrap_or_default();
        return Err(Error::Usage(format!("replay --from {from}: no stage `{from}` in {}{hint}", p.file.display())));
    };
    let forced = p.descendants(x);
    let mut missing = Vec::new();
    for s in p.stages.iter().enumerate().filter(|(i, _)| forced[*i]).map(|(_, s)| s) {
        for &inp in &s.inputs {
            if !forced[inp] && existing[inp].is_none() {
                missing.push(format!(
                    "stage `{}` has no complete checkpoint for its current configuration (expected {})",
                    p.stages[inp].name,
                    stage_dir(p, inp).join(&fingerprints[inp].0).display()
                ));
            }
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(Error::msg(format!(
            "replay --from {from} needs the checkpoints of its inputs:\n  {}\nrun `neurostream run {}` first",
            missing.join("\n  "),
            p.file.display()
        )));
    }
    Ok(forced)
}

/// The running actors of one run.
struct Spawned {
    refs: Vec<Option<ractor::ActorRef<StageMsg>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    /// (producer, consumer, budget) of every edge between running stages.
    edges: Vec<(usize, usize, Arc<EdgeBudget>)>,
    /// Stages that produce on `Start` (sources, and checkpoint readers).
    sources: Vec<usize>,
    counters: Vec<Arc<StageCounters>>,
}

/// Spawns one actor per computed or reading stage, consumers before producers (reverse
/// topological order) so every output edge has its target.
async fn spawn(p: &Pipeline, d: &Decision, events: mpsc::UnboundedSender<StageEvent>, say: &impl Fn(String)) -> Result<Spawned> {
    let n = p.stages.len();
    let mut sp = Spawned {
        refs: vec![None; n],
        handles: Vec::new(),
        edges: Vec::new(),
        sources: Vec::new(),
        counters: (0..n).map(|_| Arc::new(StageCounters::default())).collect(),
    };
    for i in (0..n).rev() {
        if !d.compute[i] && !d.reader[i] {
            continue;
        }
        let s = &p.stages[i];
        let mut outputs = Vec::new();
        for (c, port) in p.consumers(i) {
            if d.compute[c] {
                let budget = EdgeBudget::new(p.section.channel_rows, p.section.channel_bytes);
                sp.edges.push((i, c, budget.clone()));
                outputs.push(OutputEdge { target: sp.refs[c].clone().expect("consumer spawned first"), port, budget });
            }
        }
        let (operator, writer, fill) = if d.compute[i] {
            let op = s.def.build(&s.ctx, &s.input_schemas, &s.output_schema).map_err(|e| e.context(format!("stage `{}`", s.name)))?;
            let is_sink = matches!(s.def.arity(), Arity::Sink { .. });
            let writer = CheckpointWriter::create(&stage_dir(p, i), &d.fingerprints[i].0, s.output_schema.clone(), p.section.row_group_rows, !is_sink)?;
            (op, Some(writer), Some(manifest_fill(p, i, &d.fingerprints)))
        } else {
            let cp = d.existing[i].as_ref().expect("reader stages have a checkpoint");
            say(format!("  {:<24} reusing checkpoint {} ({} rows)", s.name, cp.manifest.fingerprint, cp.manifest.rows));
            (Operator::Source(Box::new(ParquetSource::new(cp.part_files(), 65_536, s.output_schema.clone()))), None, None)
        };
        if matches!(operator, Operator::Source(_)) {
            sp.sources.push(i);
        }
        let args = StageArgs {
            index: i,
            name: s.name.clone(),
            operator,
            n_inputs: if d.compute[i] { s.inputs.len() } else { 0 },
            outputs,
            writer,
            fill,
            counters: sp.counters[i].clone(),
            events: events.clone(),
            output_schema: s.output_schema.clone(),
        };
        let (r, h) = Actor::spawn(None, StageActor, args).await.map_err(|e| Error::msg(format!("spawning stage `{}`: {e}", s.name)))?;
        sp.refs[i] = Some(r);
        sp.handles.push(h);
    }
    Ok(sp)
}

/// What a computed stage's manifest records besides its output (filled in at commit).
fn manifest_fill(p: &Pipeline, i: usize, fingerprints: &[(String, Vec<ExternalInput>)]) -> ManifestFill {
    let s = &p.stages[i];
    let inputs: BTreeMap<String, String> = s.inputs.iter().map(|&k| (p.stages[k].name.clone(), fingerprints[k].0.clone())).collect();
    let (pipeline, stage, kind, config, code_version, seed) =
        (p.name().to_string(), s.name.clone(), s.kind.to_string(), s.def.canonical_json(), s.def.code_version(), s.ctx.seed);
    let externals = fingerprints[i].1.clone();
    let exported: Vec<String> = s.def.external_outputs(&s.ctx).iter().map(|f| f.display().to_string()).collect();
    Box::new(move |m| {
        m.pipeline = pipeline;
        m.stage = stage;
        m.kind = kind;
        m.config = config;
        m.code_version = code_version;
        m.seed = seed;
        m.inputs = inputs;
        m.external_inputs = externals;
        m.exported = exported;
    })
}

/// Per stage: its failed recordings and how it ended.
struct Collected {
    failures: Vec<Vec<UnitFailure>>,
    outcomes: Vec<Option<StageOutcome>>,
}

/// Receives the stages' events until every spawned stage has finished, printing progress lines.
async fn collect(p: &Pipeline, mut events: mpsc::UnboundedReceiver<StageEvent>, sp: &Spawned, say: &impl Fn(String)) -> Collected {
    let n = p.stages.len();
    let mut c = Collected { failures: vec![Vec::new(); n], outcomes: (0..n).map(|_| None).collect() };
    let mut finished = 0;
    while finished < sp.handles.len() {
        let Some(ev) = events.recv().await else { break };
        match ev {
            StageEvent::Failure { stage, failure } => {
                say(format!("  {:<24} FAILED for {}: {}", p.stages[stage].name, failure.unit, failure.message));
                c.failures[stage].push(failure);
            }
            StageEvent::Finished { stage, outcome } => {
                finished += 1;
                let name = &p.stages[stage].name;
                match &outcome {
                    StageOutcome::Committed(cp) => {
                        let busy = sp.counters[stage].snapshot().busy_s;
                        say(format!("  {name:<24} computed {} rows in {busy:.2} s -> {}", cp.manifest.rows, cp.dir.display()))
                    }
                    StageOutcome::Failed(e) => say(format!("  {name:<24} FAILED: {e}")),
                    StageOutcome::Aborted(e) => say(format!("  {name:<24} not committed: {e}")),
                    StageOutcome::Streamed => {}
                }
                c.outcomes[stage] = Some(outcome);
            }
        }
    }
    c
}

/// One report line per stage: computed, reused, failed, aborted or not run.
fn stage_reports(p: &Pipeline, d: &Decision, c: &Collected, counters: &[Arc<StageCounters>]) -> Vec<StageReport> {
    p.stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (action, checkpoint, error) = match (&c.outcomes[i], d.compute[i]) {
                (Some(StageOutcome::Committed(cp)), _) => ("computed", Some(cp.dir.display().to_string()), None),
                (Some(StageOutcome::Failed(e)), _) => ("failed", None, Some(e.clone())),
                (Some(StageOutcome::Aborted(e)), _) => ("aborted", None, Some(e.clone())),
                (Some(StageOutcome::Streamed), _) | (None, false) => match &d.existing[i] {
                    Some(cp) => ("reused", Some(cp.dir.display().to_string()), None),
                    None => ("not-run", None, None),
                },
                (None, true) => ("failed", None, Some("the stage did not report completion".into())),
            };
            StageReport {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                fingerprint: d.fingerprints[i].0.clone(),
                action: action.into(),
                checkpoint,
                counters: counters[i].snapshot(),
                failures: c.failures[i].clone(),
                error,
            }
        })
        .collect()
}

fn edge_snapshot(p: &Pipeline, from: usize, to: usize, e: &EdgeBudget) -> EdgeSnapshot {
    EdgeSnapshot {
        from: p.stages[from].name.clone(),
        to: p.stages[to].name.clone(),
        bound_rows: e.bound_rows as u64,
        bound_bytes: e.bound_bytes as u64,
        max_in_flight_rows: e.max_rows.load(std::sync::atomic::Ordering::Relaxed),
        max_in_flight_bytes: e.max_bytes.load(std::sync::atomic::Ordering::Relaxed),
    }
}
