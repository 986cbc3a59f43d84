//! `run` and `replay`: plan which stages to compute, spawn their actors, wait, report.
//!
//! Planning: every stage's fingerprint is computed first. A stage with a reusable checkpoint under
//! its current fingerprint is not recomputed (`run` says so); a stage to compute whose input is
//! reused gets that input streamed from its checkpoint. `replay --from X` recomputes X and its
//! descendants even if their checkpoints exist, and never runs anything upstream: a missing
//! upstream checkpoint is an error before any work starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ractor::Actor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::actor::{OutputEdge, StageActor, StageArgs, StageEvent, StageOutcome};
use super::channel::EdgeBudget;
use super::checkpoint::{self, Checkpoint, CheckpointWriter, RunLock, now_s};
use super::fingerprint;
use super::metrics::{CounterSnapshot, EdgeSnapshot, StageCounters};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::stages::generic::ParquetSource;
use crate::stages::{Arity, Operator, UnitFailure};

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

/// What happened to one stage in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageReport {
    pub name: String,
    pub kind: String,
    pub fingerprint: String,
    /// `computed`, `reused` (checkpoint valid, not recomputed), `failed` (the stage as a whole),
    /// `aborted` (an input failed), `not-run` (outside a replay).
    pub action: String,
    pub checkpoint: Option<String>,
    pub counters: CounterSnapshot,
    pub failures: Vec<UnitFailure>,
    pub error: Option<String>,
}

/// The run report, written as `last-run.json` (and kept under `history/`) in the run directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub pipeline: String,
    pub file: String,
    pub mode: String,
    pub started_at: f64,
    pub duration_s: f64,
    pub ok: bool,
    pub stages: Vec<StageReport>,
    pub edges: Vec<EdgeSnapshot>,
    /// The command that resumes after a failure.
    pub resume: Option<String>,
}

impl RunReport {
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }
    pub fn computed(&self) -> Vec<&str> {
        self.stages.iter().filter(|s| s.action == "computed").map(|s| s.name.as_str()).collect()
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
    let n = p.stages.len();
    let fps = fingerprint::compute(p)?;
    for i in 0..n {
        checkpoint::clean_leftovers(&stage_dir(p, i));
    }
    let existing: Vec<Option<Checkpoint>> =
        (0..n).map(|i| checkpoint::find(&stage_dir(p, i), &fps[i].0).filter(|cp| reusable(p, i, cp))).collect();

    let compute: Vec<bool> = match &opts.mode {
        Mode::Run => existing.iter().map(Option::is_none).collect(),
        Mode::Replay { from } => {
            let Some(x) = p.index_of(from) else {
                let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
                let hint = crate::pipeline::diag::nearest(from, names.iter().copied()).map(|h| format!("; did you mean `{h}`?")).unwrap_or_default();
                return Err(Error::Usage(format!("replay --from {from}: no stage `{from}` in {}{hint}", p.file.display())));
            };
            let forced = p.descendants(x);
            let mut missing = Vec::new();
            for i in 0..n {
                if !forced[i] {
                    continue;
                }
                for &inp in &p.stages[i].inputs {
                    if !forced[inp] && existing[inp].is_none() {
                        missing.push(format!(
                            "stage `{}` has no complete checkpoint for its current configuration (expected {})",
                            p.stages[inp].name,
                            stage_dir(p, inp).join(&fps[inp].0).display()
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
            forced
        }
    };
    let reader: Vec<bool> = (0..n).map(|i| !compute[i] && p.consumers(i).iter().any(|&(c, _)| compute[c])).collect();

    let (tx, mut rx) = mpsc::unbounded_channel::<StageEvent>();
    let counters: Vec<Arc<StageCounters>> = (0..n).map(|_| Arc::new(StageCounters::default())).collect();
    let mut refs: Vec<Option<ractor::ActorRef<super::actor::StageMsg>>> = vec![None; n];
    let mut handles = Vec::new();
    let mut edges: Vec<(usize, usize, Arc<EdgeBudget>)> = Vec::new();
    let mut spawned = 0usize;
    let mut sources = Vec::new();
    let say = |line: String| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };

    // Spawn consumers before producers (reverse topological order) so every output edge has its target.
    for i in (0..n).rev() {
        if !compute[i] && !reader[i] {
            continue;
        }
        let s = &p.stages[i];
        let mut outputs = Vec::new();
        for (c, port) in p.consumers(i) {
            if compute[c] {
                let budget = EdgeBudget::new(p.section.channel_rows, p.section.channel_bytes);
                edges.push((i, c, budget.clone()));
                outputs.push(OutputEdge { target: refs[c].clone().expect("consumer spawned first"), port, budget });
            }
        }
        let (operator, writer, fill) = if compute[i] {
            let op = s.def.build(&s.ctx, &s.input_schemas, &s.output_schema).map_err(|e| e.context(format!("stage `{}`", s.name)))?;
            let is_sink = matches!(s.def.arity(), Arity::Sink { .. });
            let writer = CheckpointWriter::create(&stage_dir(p, i), &fps[i].0, s.output_schema.clone(), p.section.row_group_rows, !is_sink)?;
            let inputs: BTreeMap<String, String> = s.inputs.iter().map(|&k| (p.stages[k].name.clone(), fps[k].0.clone())).collect();
            let (pipeline, stage, kind, config, code_version, seed) =
                (p.name().to_string(), s.name.clone(), s.kind.to_string(), s.def.canonical_json(), s.def.code_version(), s.ctx.seed);
            let externals = fps[i].1.clone();
            let exported: Vec<String> = s.def.external_outputs(&s.ctx).iter().map(|f| f.display().to_string()).collect();
            let fill: super::actor::ManifestFill = Box::new(move |m| {
                m.pipeline = pipeline;
                m.stage = stage;
                m.kind = kind;
                m.config = config;
                m.code_version = code_version;
                m.seed = seed;
                m.inputs = inputs;
                m.external_inputs = externals;
                m.exported = exported;
            });
            (op, Some(writer), Some(fill))
        } else {
            let cp = existing[i].as_ref().expect("reader stages have a checkpoint");
            say(format!("  {:<24} reusing checkpoint {} ({} rows)", s.name, cp.manifest.fingerprint, cp.manifest.rows));
            (Operator::Source(Box::new(ParquetSource::new(cp.part_files(), 65_536, s.output_schema.clone()))), None, None)
        };
        if matches!(operator, Operator::Source(_)) {
            sources.push(i);
        }
        let args = StageArgs {
            index: i,
            name: s.name.clone(),
            operator,
            n_inputs: if compute[i] { s.inputs.len() } else { 0 },
            outputs,
            writer,
            fill,
            counters: counters[i].clone(),
            events: tx.clone(),
            output_schema: s.output_schema.clone(),
        };
        let (r, h) = Actor::spawn(None, StageActor, args).await.map_err(|e| Error::msg(format!("spawning stage `{}`: {e}", s.name)))?;
        refs[i] = Some(r);
        handles.push(h);
        spawned += 1;
    }
    for i in 0..n {
        if !compute[i] && !reader[i] && matches!(opts.mode, Mode::Run) {
            let cp = existing[i].as_ref().expect("not computed in a run means reused");
            say(format!("  {:<24} up to date: checkpoint {} ({} rows), not recomputed", p.stages[i].name, cp.manifest.fingerprint, cp.manifest.rows));
        }
    }
    for &i in &sources {
        refs[i].as_ref().expect("spawned").cast(super::actor::StageMsg::Start).map_err(|e| Error::msg(format!("starting stage `{}`: {e}", p.stages[i].name)))?;
    }
    drop(tx);

    let mut failures: Vec<Vec<UnitFailure>> = vec![Vec::new(); n];
    let mut outcomes: Vec<Option<StageOutcome>> = (0..n).map(|_| None).collect();
    let mut finished = 0;
    while finished < spawned {
        let Some(ev) = rx.recv().await else { break };
        match ev {
            StageEvent::Failure { stage, failure } => {
                say(format!("  {:<24} FAILED for {}: {}", p.stages[stage].name, failure.unit, failure.message));
                failures[stage].push(failure);
            }
            StageEvent::Finished { stage, outcome } => {
                finished += 1;
                let c = counters[stage].snapshot();
                match &outcome {
                    StageOutcome::Committed(cp) => say(format!(
                        "  {:<24} computed {} rows in {:.2} s -> {}",
                        p.stages[stage].name,
                        cp.manifest.rows,
                        c.busy_s,
                        cp.dir.display()
                    )),
                    StageOutcome::Failed(e) => say(format!("  {:<24} FAILED: {e}", p.stages[stage].name)),
                    StageOutcome::Aborted(e) => say(format!("  {:<24} not committed: {e}", p.stages[stage].name)),
                    StageOutcome::Streamed => {}
                }
                outcomes[stage] = Some(outcome);
            }
        }
    }
    for h in handles {
        let _ = h.await;
    }

    let mut stages = Vec::with_capacity(n);
    let mut ok = true;
    for i in 0..n {
        let s = &p.stages[i];
        let (action, checkpoint, error) = match (&outcomes[i], compute[i]) {
            (Some(StageOutcome::Committed(cp)), _) => ("computed", Some(cp.dir.display().to_string()), None),
            (Some(StageOutcome::Failed(e)), _) => ("failed", None, Some(e.clone())),
            (Some(StageOutcome::Aborted(e)), _) => ("aborted", None, Some(e.clone())),
            (Some(StageOutcome::Streamed), _) | (None, false) => match &existing[i] {
                Some(cp) => ("reused", Some(cp.dir.display().to_string()), None),
                None => ("not-run", None, None),
            },
            (None, true) => ("failed", None, Some("the stage did not report completion".into())),
        };
        if matches!(action, "failed" | "aborted") || !failures[i].is_empty() {
            ok = false;
        }
        stages.push(StageReport {
            name: s.name.clone(),
            kind: s.kind.to_string(),
            fingerprint: fps[i].0.clone(),
            action: action.into(),
            checkpoint,
            counters: counters[i].snapshot(),
            failures: failures[i].clone(),
            error,
        });
    }
    let edges = edges
        .iter()
        .map(|(a, b, e)| EdgeSnapshot {
            from: p.stages[*a].name.clone(),
            to: p.stages[*b].name.clone(),
            bound_rows: e.bound_rows as u64,
            bound_bytes: e.bound_bytes as u64,
            max_in_flight_rows: e.max_rows.load(std::sync::atomic::Ordering::Relaxed),
            max_in_flight_bytes: e.max_bytes.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    let report = RunReport {
        pipeline: p.name().to_string(),
        file: p.file.display().to_string(),
        mode: match &opts.mode {
            Mode::Run => "run".into(),
            Mode::Replay { from } => format!("replay --from {from}"),
        },
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        ok,
        stages,
        edges,
        resume: (!ok).then(|| format!("neurostream run {}", p.file.display())),
    };
    write_report(&p.run_dir, &report)?;
    Ok(report)
}

/// Writes `last-run.json` (atomically) and a copy under `history/`.
pub fn write_report(run_dir: &Path, report: &RunReport) -> Result<()> {
    let text = serde_json::to_vec_pretty(report)?;
    let hist = run_dir.join("history");
    std::fs::create_dir_all(&hist).map_err(|e| Error::io(&hist, e))?;
    let name = format!("{:.0}-{}.json", report.started_at * 1000.0, std::process::id());
    let h = hist.join(name);
    std::fs::write(&h, &text).map_err(|e| Error::io(&h, e))?;
    let tmp = run_dir.join(format!(".last-run.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &text).map_err(|e| Error::io(&tmp, e))?;
    let dst = run_dir.join("last-run.json");
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))
}

pub fn read_last_report(run_dir: &Path) -> Option<RunReport> {
    let text = std::fs::read_to_string(run_dir.join("last-run.json")).ok()?;
    serde_json::from_str(&text).ok()
}
