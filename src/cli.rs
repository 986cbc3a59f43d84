//! The `neurostream` command line (DESIGN.md): run, replay, validate, graph, status, inspect,
//! stages, gc. Exit codes: 0 success, 1 a run failed, 2 invalid usage or pipeline file.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};
use crate::pipeline::{self, Pipeline};
use crate::checkpoint::{self, describe_schema};
use crate::runtime::{Mode, RunOptions, run_pipeline};
use crate::stage::Arity;
use crate::stages;

#[derive(Parser, Debug)]
#[command(name = "neurostream", version, about = "Declarative dataflow pipelines for neurophysiology, on Arrow and Parquet")]
pub struct Cli {
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline; stages whose fingerprint is unchanged reuse their checkpoint.
    Run {
        pipeline: PathBuf,
        /// Run directory (default: `runs/<name>` beside the pipeline file).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Keep watching the source's folder: every new recording flows through the graph once.
        #[arg(long)]
        watch: bool,
        /// With --watch: a file is complete once unchanged for this many seconds.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
        /// With --watch: stop after this many seconds without a new file (default: until Ctrl-C).
        #[arg(long)]
        idle_exit: Option<f64>,
        /// With --watch: training stages refit after this many new rows reach them...
        #[arg(long, default_value_t = 1000)]
        refit_rows: u64,
        /// ...or this many seconds after the last fit when at least one new row arrived.
        #[arg(long, default_value_t = 60.0)]
        refit_seconds: f64,
    },
    /// Recompute STAGE and everything downstream from the checkpoints of STAGE's inputs.
    Replay {
        pipeline: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Check the file and the graph; print every error as file:line:column: message (exit 2 if invalid).
    Validate { pipeline: PathBuf },
    /// Print the stage graph.
    Graph {
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Per stage and per recording: ok / error / pending, and the checkpoint in use.
    Status {
        pipeline: PathBuf,
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Summarize a checkpoint folder, a stage folder or a Parquet file: schema with units, rows, provenance.
    Inspect { path: PathBuf },
    /// List every stage kind with its options, types, defaults and units.
    Stages {
        /// Only this kind.
        kind: Option<String>,
        /// Print the JSON schemas instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete checkpoints that the pipeline's current configuration no longer uses.
    Gc {
        pipeline: PathBuf,
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// Entry point of the binary: returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    match execute(&cli) {
        Ok(code) => code,
        Err(Error::Invalid(d)) => {
            eprintln!("{d}");
            eprintln!("{} error{} found; nothing was run", d.len(), if d.len() == 1 { "" } else { "s" });
            2
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn load(path: &Path, run_dir: &Option<PathBuf>) -> Result<Pipeline> {
    let mut p = pipeline::load(path)?;
    if let Some(d) = run_dir {
        p.set_run_dir(d.clone());
    }
    Ok(p)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::msg(format!("starting the async runtime: {e}")))
}

pub fn execute(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Run { pipeline, run_dir, watch, settle, idle_exit, refit_rows, refit_seconds } => {
            if *watch {
                if !(settle.is_finite() && *settle >= 0.0) || idle_exit.is_some_and(|i| !(i.is_finite() && i >= 0.0)) || !(refit_seconds.is_finite() && *refit_seconds >= 0.0) {
                    return Err(Error::Usage("--settle, --idle-exit and --refit-seconds take a non-negative number of seconds".into()));
                }
                let opts = crate::runtime::watch::WatchOptions {
                    settle: std::time::Duration::from_secs_f64(*settle),
                    poll: std::time::Duration::from_millis(200),
                    idle_exit: idle_exit.map(std::time::Duration::from_secs_f64),
                    quiet: cli.quiet,
                    run_dir: run_dir.clone(),
                    refit_rows: (*refit_rows).max(1),
                    refit_after: std::time::Duration::from_secs_f64(*refit_seconds),
                };
                return crate::runtime::watch::watch(pipeline, &opts);
            }
            run_cmd(pipeline, run_dir, Mode::Run, cli.quiet)
        }
        Command::Replay { pipeline, from, run_dir } => run_cmd(pipeline, run_dir, Mode::Replay { from: from.clone() }, cli.quiet),
        Command::Validate { pipeline } => {
            let p = pipeline::load(pipeline)?;
            if !cli.quiet {
                println!("{}: ok ({} stages)", pipeline.display(), p.stages.len());
            }
            Ok(0)
        }
        Command::Graph { pipeline, format } => {
            let p = pipeline::load(pipeline)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => pipeline::graph::to_dot(&p),
                    GraphFormat::Mermaid => pipeline::graph::to_mermaid(&p),
                }
            );
            Ok(0)
        }
        Command::Status { pipeline, run_dir } => status(&load(pipeline, run_dir)?),
        Command::Inspect { path } => inspect(path),
        Command::Stages { kind, json } => list_stages(kind.as_deref(), *json),
        Command::Gc { pipeline, run_dir, dry_run } => gc(&load(pipeline, run_dir)?, *dry_run, cli.quiet),
    }
}

fn run_cmd(path: &Path, run_dir: &Option<PathBuf>, mode: Mode, quiet: bool) -> Result<i32> {
    let p = load(path, run_dir)?;
    if !quiet {
        let what = match &mode {
            Mode::Run => "run".to_string(),
            Mode::Replay { from } => format!("replay from `{from}`"),
        };
        eprintln!("neurostream: {what} of pipeline `{}` ({} stages) in {}", p.name(), p.stages.len(), p.run_dir.display());
    }
    let report = runtime()?.block_on(run_pipeline(&p, &RunOptions::new(mode, quiet)))?;
    if !quiet {
        eprintln!();
        eprintln!("{:<24} {:<18} {:<9} {:>10} {:>10} {:>9} {:>9}", "stage", "kind", "action", "rows in", "rows out", "busy s", "blocked s");
        for s in &report.stages {
            eprintln!(
                "{:<24} {:<18} {:<9} {:>10} {:>10} {:>9.3} {:>9.3}",
                s.name, s.kind, s.action, s.counters.rows_in, s.counters.rows_out, s.counters.busy_s, s.counters.blocked_s
            );
        }
        eprintln!("counters: {}", p.run_dir.join("last-run.json").display());
    }
    if report.ok {
        if !quiet {
            eprintln!("ok in {:.2} s", report.duration_s);
        }
        Ok(0)
    } else {
        eprintln!("run failed:");
        for s in &report.stages {
            if let Some(e) = &s.error {
                eprintln!("  stage `{}` ({}): {e}", s.name, s.action);
            }
            for f in &s.failures {
                eprintln!("  stage `{}`, recording `{}`: {}", s.name, f.unit, f.message);
            }
        }
        if let Some(r) = &report.resume {
            eprintln!("fix the cause, then resume with: {r}");
        }
        Ok(1)
    }
}

fn status(p: &Pipeline) -> Result<i32> {
    let fps = crate::runtime::fingerprint::compute(p)?;
    let last = crate::runtime::run::read_last_report(&p.run_dir);
    println!("pipeline `{}` ({}), run directory {}", p.name(), p.file.display(), p.run_dir.display());
    println!("{:<24} {:<18} {:<8} {:<22} {:>10}", "stage", "kind", "state", "checkpoint", "rows");
    let mut pending_upstream = vec![false; p.stages.len()];
    for (i, s) in p.stages.iter().enumerate() {
        let dir = p.run_dir.join(&s.name);
        let cp = checkpoint::find(&dir, &fps[i].0);
        let last_stage = last.as_ref().and_then(|r| r.stage(&s.name)).filter(|r| r.fingerprint == fps[i].0);
        let upstream = s.inputs.iter().any(|&k| pending_upstream[k]);
        let (state, detail, rows) = match (&cp, last_stage) {
            (Some(c), _) if c.manifest.reusable() && !upstream => ("ok", c.manifest.fingerprint.clone(), c.manifest.rows.to_string()),
            (Some(c), _) if !c.manifest.failures.is_empty() => ("error", c.manifest.fingerprint.clone(), c.manifest.rows.to_string()),
            (_, Some(r)) if r.error.is_some() => ("error", "-".into(), "-".into()),
            _ => ("pending", if upstream { "(inputs pending)".into() } else { "-".into() }, "-".into()),
        };
        if state != "ok" {
            pending_upstream[i] = true;
        }
        println!("{:<24} {:<18} {:<8} {:<22} {:>10}", s.name, s.kind, state, detail, rows);
        if let Some(r) = last_stage {
            if let Some(e) = &r.error {
                println!("    error: {e}");
            }
        }
        if let Some(c) = &cp {
            for f in &c.manifest.failures {
                println!("    recording `{}`: error: {}", f.unit, f.message);
            }
        }
    }
    Ok(0)
}

fn inspect(path: &Path) -> Result<i32> {
    if path.is_dir() {
        if path.join(checkpoint::MANIFEST).is_file() {
            let m = checkpoint::read_manifest(path)?;
            println!("checkpoint {}", path.display());
            println!("  pipeline {}  stage {}  kind {}", m.pipeline, m.stage, m.kind);
            println!("  fingerprint {}  code version {}  neurostream {}", m.fingerprint, m.code_version, m.neurostream_version);
            for (k, v) in &m.inputs {
                println!("  input {k} <- checkpoint {v}");
            }
            for e in &m.external_inputs {
                println!("  reads {} (blake3 {})", e.path, &e.blake3[..16]);
            }
            for e in &m.exported {
                println!("  exported {e}");
            }
            println!("  rows {}  batches {}  in-memory bytes {}  parts {}", m.rows, m.batches, m.bytes, m.parts.len());
            println!("  computed in {:.3} s, seed {}", m.duration_s, m.seed);
            println!("  config {}", m.config);
            print_fields(&m.schema);
            for f in &m.failures {
                println!("  FAILED recording `{}`: {}", f.unit, f.message);
            }
            return Ok(0);
        }
        let list = checkpoint::list(path);
        if list.is_empty() {
            return Err(Error::Usage(format!("{}: neither a checkpoint nor a stage folder with checkpoints", path.display())));
        }
        println!("stage folder {} ({} checkpoints, newest first)", path.display(), list.len());
        for c in list {
            println!("  {}  {} rows  failures {}", c.manifest.fingerprint, c.manifest.rows, c.manifest.failures.len());
        }
        return Ok(0);
    }
    let is_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if is_parquet {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::parquet(format!("{}: not a readable Parquet file", path.display()), e))?;
        let md = b.metadata().file_metadata();
        println!("parquet file {}", path.display());
        println!("  rows {}  row groups {}  created by {}", md.num_rows(), b.metadata().num_row_groups(), md.created_by().unwrap_or("?"));
        print_fields(&describe_schema(b.schema()));
        return Ok(0);
    }
    if !path.exists() {
        return Err(Error::Usage(format!("{}: no such file or folder", path.display())));
    }
    Err(Error::Usage(format!("{}: unsupported file type for inspect (expected a checkpoint folder or a .parquet file)", path.display())))
}

fn print_fields(fields: &[checkpoint::FieldInfo]) {
    println!("  schema:");
    for f in fields {
        println!(
            "    {:<28} {:<20} {}{}",
            f.name,
            f.data_type,
            if f.nullable { "nullable" } else { "" },
            f.unit.as_ref().map(|u| format!("  [{u}]")).unwrap_or_default()
        );
    }
}

/// Renders a JSON-schema type compactly (`list<string>`, `integer?`, `Name`).
fn schema_type(s: &serde_json::Value) -> String {
    if let Some(r) = s.get("$ref").and_then(|r| r.as_str()) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(e) = s.get("enum").and_then(|e| e.as_array()) {
        return e.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("|");
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(|a| a.as_array()) {
            return alts.iter().map(schema_type).collect::<Vec<_>>().join("|");
        }
    }
    let one = |t: &str| -> String {
        match t {
            "array" => format!("list<{}>", s.get("items").map(schema_type).unwrap_or("any".into())),
            "object" => match s.get("additionalProperties") {
                Some(v) if v.is_object() => format!("table<{}>", schema_type(v)),
                _ => "table".into(),
            },
            other => other.to_string(),
        }
    };
    match s.get("type") {
        Some(serde_json::Value::String(t)) => one(t),
        Some(serde_json::Value::Array(ts)) => {
            let non_null: Vec<String> = ts.iter().filter_map(|t| t.as_str()).filter(|t| *t != "null").map(one).collect();
            let nullable = ts.iter().any(|t| t == "null");
            format!("{}{}", non_null.join("|"), if nullable { "?" } else { "" })
        }
        _ => "any".into(),
    }
}

fn list_stages(only: Option<&str>, json: bool) -> Result<i32> {
    let reg = stages::registry();
    let selected: Vec<_> = reg.iter().filter(|e| only.is_none_or(|k| k == e.kind)).collect();
    if selected.is_empty() {
        let hint = only
            .and_then(|k| crate::diag::nearest(k, reg.iter().map(|e| e.kind)))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        return Err(Error::Usage(format!("no stage kind `{}`{hint}", only.unwrap_or(""))));
    }
    if json {
        let all: serde_json::Map<String, serde_json::Value> =
            selected.iter().map(|e| (e.kind.to_string(), serde_json::to_value((e.schema)()).unwrap_or_default())).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    for e in selected {
        let arity = match e.arity {
            Arity::Source => "source".to_string(),
            Arity::Transform { min, max } => format!("{}..{} inputs", min, max.map(|m| m.to_string()).unwrap_or("n".into())),
            Arity::Sink { .. } => "sink".to_string(),
        };
        println!("{}  ({arity}; {})\n  {}", e.kind, partitioning_of(e), e.summary);
        let schema = serde_json::to_value((e.schema)()).unwrap_or_default();
        let required: Vec<&str> = schema.get("required").and_then(|r| r.as_array()).map(|r| r.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let ty = schema_type(prop);
                let default = match prop.get("default") {
                    Some(d) => format!("default {d}"),
                    None if required.contains(&name.as_str()) => "required".into(),
                    None => "optional".into(),
                };
                let (desc, unit) = crate::stage::config::split_unit(prop.get("description").and_then(|d| d.as_str()).unwrap_or(""));
                let unit = if unit.is_empty() { String::new() } else { format!("[{unit}] ") };
                println!("    {name:<18} {ty:<16} {default:<18} {unit}{}", desc.replace('\n', " "));
            }
        }
        println!();
    }
    Ok(0)
}

/// How a kind's work divides, read from its example configuration (a key column may come from
/// the configuration, e.g. a group column).
fn partitioning_of(e: &crate::stage::KindEntry) -> String {
    match e.parse_options(e.example) {
        Ok(def) => def.partitioning().to_string(),
        Err(_) => "partitioning: see the kind's docs".into(),
    }
}

fn gc(p: &Pipeline, dry_run: bool, quiet: bool) -> Result<i32> {
    let _lock = checkpoint::RunLock::acquire(&p.run_dir)?;
    let fps = crate::runtime::fingerprint::compute(p)?;
    let mut removed = 0usize;
    let mut bytes = 0u64;
    let rd = std::fs::read_dir(&p.run_dir).map_err(|e| Error::io(&p.run_dir, e))?;
    for entry in rd.flatten() {
        let stage_name = entry.file_name().to_string_lossy().to_string();
        if !entry.path().is_dir() || stage_name == "history" || stage_name.starts_with('.') {
            continue;
        }
        let current = p.index_of(&stage_name).map(|i| fps[i].0.clone());
        let Ok(inner) = std::fs::read_dir(entry.path()) else { continue };
        for cp in inner.flatten() {
            let name = cp.file_name().to_string_lossy().to_string();
            if Some(&name) == current.as_ref() || !cp.path().is_dir() {
                continue;
            }
            if !name.starts_with('.') && !cp.path().join(checkpoint::MANIFEST).is_file() {
                continue; // not ours: leave it
            }
            bytes += dir_size(&cp.path());
            removed += 1;
            if !quiet {
                println!("{} {}", if dry_run { "would remove" } else { "removing" }, cp.path().display());
            }
            if !dry_run {
                std::fs::remove_dir_all(cp.path()).map_err(|e| Error::io(cp.path(), e))?;
            }
        }
    }
    if !quiet {
        println!("{} {removed} checkpoint folders ({:.1} MB)", if dry_run { "would free" } else { "freed" }, bytes as f64 / 1e6);
    }
    Ok(0)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }).sum())
        .unwrap_or(0)
}
