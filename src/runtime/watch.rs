//! Continuous ingestion: `neurostream run PIPELINE --watch`.
//!
//! The pipeline's watchable source (a source over one folder and file pattern, e.g.
//! `source.parquet` with `paths = ["inbox/*.parquet"]`) is watched with `notify` plus a periodic
//! rescan (events can be missed; a rescan cannot). A file is taken once it is complete: its size
//! and modification time have not changed for `settle` (a file renamed into the folder is complete
//! at once and settles immediately after). Each file is one increment: the pipeline is validated
//! and run with the source restricted to that file. Because the source's fingerprint hashes the
//! file's content, every stage's output for that file lands in its own checkpoint folder, committed
//! atomically like any other: downstream stages append one part per recording, a restarted
//! increment reuses what it had already committed, and a file is never computed twice.
//!
//! The ledger (`runs/<name>/ledger.jsonl`, one fsynced JSON line per decision) records path,
//! content hash, status (`ok`, `failed`, `quarantined`, `duplicate`), error and the checkpoints of
//! every stage. On restart, files whose content hash is in the ledger are not ingested again. A file
//! that cannot be read, or does not fit the pipeline, is moved to `runs/<name>/quarantine/` with a
//! `.error.txt` beside it, and the watcher goes on.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::run::{Mode, RunOptions, run_pipeline};
use crate::error::{Error, Result};
use crate::checkpoint::{self, Checkpoint, RunLock, now_s};
use crate::pipeline::{self, Pipeline, Plan};

/// One ledger line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LedgerEntry {
    pub path: String,
    pub blake3: String,
    pub bytes: u64,
    /// `ok`, `failed` (a stage failed on it; see `error`), `quarantined` (unreadable or not fitting
    /// the pipeline; moved to `quarantine`), `duplicate` (same content as `duplicate_of`).
    pub status: String,
    pub error: Option<String>,
    /// Stage name -> checkpoint folder holding this recording's output.
    pub checkpoints: BTreeMap<String, String>,
    pub duplicate_of: Option<String>,
    pub quarantined_to: Option<String>,
    pub at: f64,
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// A file is complete once its size and mtime are unchanged for this long.
    pub settle: Duration,
    /// Rescan interval (also the latency when no file-system event arrives).
    pub poll: Duration,
    /// Exit (0) after this long without a new file; `None` watches until interrupted.
    pub idle_exit: Option<Duration>,
    pub quiet: bool,
    /// Override of the run directory.
    pub run_dir: Option<PathBuf>,
    /// Stages that need every row (training, ...) refit once this many new rows reached them since
    /// the last fit...
    pub refit_rows: u64,
    /// ...or once this long has passed with at least one new row (and at exit).
    pub refit_after: Duration,
}

/// The watched source's part of the plan ([`Plan`]): what each new file runs, and what runs on
/// every recording so far. Read from the kinds' declared partitioning, never from their names.
#[derive(Debug, Clone)]
struct WatchPlan {
    /// Stages of the watched source's segment: run once per file.
    segment: Vec<String>,
    /// Segment stages read by gathered stages: their per-file checkpoints are what a refit reads.
    gather_points: Vec<String>,
    /// Stages that need every row (training, sinks writing one file) and everything after them.
    gathered: Vec<String>,
}

impl WatchPlan {
    fn of(p: &Pipeline, source: &str) -> Result<WatchPlan> {
        let plan = Plan::of(p);
        let seg = plan.segment_of_source(source).ok_or_else(|| Error::msg(format!("no stage `{source}` to watch")))?;
        let names = |ix: &[usize]| ix.iter().map(|&i| p.stages[i].name.clone()).collect::<Vec<_>>();
        Ok(WatchPlan { segment: names(&seg.stages), gather_points: names(&seg.gather_points), gathered: names(&plan.gathered) })
    }

    /// Keeps only the watched segment: one file's increment.
    fn restrict_to_segment(&self, p: &mut Pipeline) {
        let keep: Vec<bool> = p.stages.iter().map(|s| self.segment.contains(&s.name)).collect();
        p.retain(&keep);
    }
}

/// Debounce state of the gathered stages.
struct Refit {
    plan: Option<WatchPlan>,
    pending_rows: u64,
    last_fit: Instant,
    /// The newest file that ran cleanly: the pipeline is validated against it for a refit.
    last_ok: Option<PathBuf>,
}

impl Refit {
    /// Runs every gathered stage on the checkpoints its gather points produced for every `ok`
    /// recording of the ledger, in arrival order: the pipeline itself, with the gather points
    /// reading those checkpoints instead of computing, and each gathered stage's artifacts in a
    /// new version folder `models/<stage>/v<NNNN>/`. Returns the versions written.
    fn fit(&mut self, file: &Path, text: &str, stage: &str, run_dir: &Path, rt: &tokio::runtime::Runtime) -> Result<Vec<String>> {
        let (Some(plan), Some(last_ok)) = (&self.plan, &self.last_ok) else { return Ok(Vec::new()) };
        let mut p = pipeline::parse_str_with(file, text, &[(stage.to_string(), vec![last_ok.clone()])]).map_err(Error::Invalid)?;
        let ledger = read_ledger(run_dir);
        let mut recordings = 0;
        for point in &plan.gather_points {
            let mut cps: Vec<Checkpoint> = Vec::new();
            for e in ledger.iter().filter(|e| e.status == "ok") {
                let Some(dir) = e.checkpoints.get(point) else { continue };
                if cps.iter().any(|c| c.dir == Path::new(dir)) {
                    continue;
                }
                if let Ok(manifest) = checkpoint::read_manifest(Path::new(dir)) {
                    cps.push(Checkpoint { dir: PathBuf::from(dir), manifest });
                }
            }
            if cps.is_empty() {
                return Ok(Vec::new());
            }
            recordings = recordings.max(cps.len());
            let i = p.index_of(point).expect("gather point of this pipeline");
            p.read_from_checkpoints(i, cps);
        }
        // Keep the gathered stages and what they read (the gather points now read checkpoints).
        let mut keep: Vec<bool> = p.stages.iter().map(|s| plan.gathered.contains(&s.name)).collect();
        for i in (0..p.stages.len()).rev() {
            if keep[i] {
                for &j in &p.stages[i].inputs {
                    keep[j] = true;
                }
            }
        }
        p.retain(&keep);
        p.set_run_dir(run_dir.join("refit"));
        let mut versions = Vec::new();
        for name in &plan.gathered {
            let models = run_dir.join("models").join(name);
            let version = (1..).find(|v| !models.join(format!("v{v:04}")).exists()).unwrap_or(1);
            let i = p.index_of(name).expect("gathered stage kept");
            p.set_artifacts_dir(i, models.join(format!("v{version:04}")));
            versions.push((name.clone(), version, models.join(format!("v{version:04}"))));
        }
        p.refresh_schemas(0)?;
        let report = rt.block_on(run_pipeline(&p, &RunOptions { mode: Mode::Run, quiet: true, lock: false }))?;
        if !report.ok {
            let why: Vec<String> = report.stages.iter().filter_map(|s| s.error.clone().map(|e| format!("stage `{}`: {e}", s.name))).collect();
            return Err(Error::msg(format!("refitting on {recordings} recordings: {}", why.join("; "))));
        }
        self.pending_rows = 0;
        self.last_fit = Instant::now();
        Ok(versions
            .into_iter()
            .filter(|(_, _, dir)| dir.exists())
            .map(|(name, v, _)| format!("{name} v{v:04} ({recordings} recordings)"))
            .collect())
    }
}

pub fn read_ledger(run_dir: &Path) -> Vec<LedgerEntry> {
    let Ok(text) = std::fs::read_to_string(run_dir.join("ledger.jsonl")) else { return Vec::new() };
    // A line cut short by a crash is ignored: its file was not recorded, so it is ingested again.
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn append_ledger(run_dir: &Path, e: &LedgerEntry) -> Result<()> {
    let path = run_dir.join("ledger.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|err| Error::io(&path, err))?;
    let mut line = serde_json::to_vec(e)?;
    line.push(b'\n');
    f.write_all(&line).map_err(|err| Error::io(&path, err))?;
    f.sync_data().map_err(|err| Error::io(&path, err))
}

/// What the watcher knows of a candidate file between scans.
struct Seen {
    size: u64,
    mtime: SystemTime,
    stable_since: Instant,
}

/// Runs the watch loop until interrupted (or idle, with `idle_exit`). Returns the exit code.
pub fn watch(file: &Path, opts: &WatchOptions) -> Result<i32> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("{}: cannot read pipeline file: {e}", file.display())))?;
    let sources = pipeline::watch_sources(file, &text);
    let (stage, spec) = match sources.as_slice() {
        [one] => one.clone(),
        [] => {
            // Report the real problems if the file is invalid; otherwise say what watching needs.
            pipeline::load(file)?;
            return Err(Error::Usage(format!(
                "{}: --watch needs a source over one folder and pattern (e.g. source.parquet with paths = [\"inbox/*.parquet\"])",
                file.display()
            )));
        }
        many => {
            return Err(Error::Usage(format!(
                "{}: --watch supports one watched source; found {}",
                file.display(),
                many.iter().map(|(s, _)| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            )));
        }
    };
    // Validate everything that can be validated now, with the first file that reads. Problems of
    // the watched files themselves are not the pipeline's: those files are quarantined one by one.
    let source_only = |d: &crate::diag::Diagnostics| d.iter().all(|x| x.message.starts_with(&format!("stage `{stage}`: ")));
    let mut last = None;
    for candidate in list_candidates(&spec.folder, &spec.pattern).into_iter().take(20) {
        match pipeline::parse_str_with(file, &text, &[(stage.clone(), vec![candidate])]) {
            Ok(p) => return watch_loop(file, &text, &stage, &spec, Some(p), opts),
            Err(d) if source_only(&d) => last = Some(d),
            Err(d) => return Err(Error::Invalid(d)),
        }
    }
    match pipeline::parse_str(file, &text) {
        Ok(p) => watch_loop(file, &text, &stage, &spec, Some(p), opts),
        // An empty inbox (or one holding only unreadable files) is normal: each file is validated
        // with the pipeline as it arrives.
        Err(d) if source_only(&d) => {
            let _ = last;
            watch_loop(file, &text, &stage, &spec, None, opts)
        }
        Err(d) => Err(Error::Invalid(d)),
    }
}

fn list_candidates(folder: &Path, pattern: &glob::Pattern) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    !name.starts_with('.') && pattern.matches(&name)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_dir_of(file: &Path, text: &str, probe: &Option<Pipeline>, opts: &WatchOptions) -> PathBuf {
    if let Some(d) = &opts.run_dir {
        return d.clone();
    }
    if let Some(p) = probe {
        return p.run_dir.clone();
    }
    // The pipeline table alone decides the run directory.
    #[derive(Deserialize)]
    struct Head {
        pipeline: HeadSection,
    }
    #[derive(Deserialize)]
    struct HeadSection {
        name: String,
        run_dir: Option<String>,
    }
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match toml::from_str::<toml::Table>(text).ok().and_then(|t| t.try_into::<Head>().ok()) {
        Some(h) => match h.pipeline.run_dir {
            Some(d) => base.join(d),
            None => base.join("runs").join(h.pipeline.name),
        },
        None => base.join("runs").join("watch"),
    }
}

fn watch_loop(file: &Path, text: &str, stage: &str, spec: &crate::stage::WatchSource, probe: Option<Pipeline>, opts: &WatchOptions) -> Result<i32> {
    // Absolute paths in the ledger, whatever the working directory of a later reader.
    let run_dir = std::path::absolute(run_dir_of(file, text, &probe, opts)).map_err(|e| Error::msg(e.to_string()))?;
    let folder = std::path::absolute(&spec.folder).map_err(|e| Error::io(&spec.folder, e))?;
    let spec = &crate::stage::WatchSource { folder, pattern: spec.pattern.clone() };
    let _lock = RunLock::acquire(&run_dir)?;
    let say = |s: String| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    if !spec.folder.is_dir() {
        return Err(Error::Usage(format!("watched folder {} does not exist", spec.folder.display())));
    }
    let quarantine = run_dir.join("quarantine");
    // Ledger state: content hashes already decided, and paths already hashed (to skip rehashing).
    let mut by_hash: HashMap<String, LedgerEntry> = HashMap::new();
    let mut known_paths: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
    for e in read_ledger(&run_dir) {
        by_hash.entry(e.blake3.clone()).or_insert(e);
    }
    say(format!("neurostream: watching {} for `{}` (stage `{stage}`); ledger {} ({} recordings)", spec.folder.display(), spec.pattern, run_dir.join("ledger.jsonl").display(), by_hash.len()));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc_flag(stop);
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(|e| Error::msg(format!("watching {}: {e}", spec.folder.display())))?;
    notify::Watcher::watch(&mut watcher, &spec.folder, notify::RecursiveMode::NonRecursive)
        .map_err(|e| Error::msg(format!("watching {}: {e}", spec.folder.display())))?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::msg(e.to_string()))?;
    let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
    let mut last_activity = Instant::now();
    let mut failed_any = false;
    let mut refit = Refit { plan: None, pending_rows: 0, last_fit: Instant::now(), last_ok: None };
    let announce = |plan: &WatchPlan| {
        if !plan.gathered.is_empty() {
            say(format!(
                "neurostream: stages that need every row ({}) refit every {} new rows or {:.0} s, versions in {}",
                plan.gathered.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                opts.refit_rows,
                opts.refit_after.as_secs_f64(),
                run_dir.join("models").display()
            ));
        }
    };
    if let Some(p) = &probe {
        let plan = WatchPlan::of(p, stage)?;
        announce(&plan);
        refit.plan = Some(plan);
    }
    let do_refit = |refit: &mut Refit| -> Result<()> {
        for v in refit.fit(file, text, stage, &run_dir, &rt)? {
            say(format!("  refit: {v}"));
        }
        Ok(())
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            say("neurostream: interrupted; the ledger is up to date".into());
            break;
        }
        let now = Instant::now();
        let mut ready = Vec::new();
        for path in list_candidates(&spec.folder, &spec.pattern) {
            let Ok(md) = std::fs::metadata(&path) else { continue }; // vanished: its next appearance counts
            let (size, mtime) = (md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            if known_paths.get(&path) == Some(&(size, mtime)) {
                continue;
            }
            let entry = seen.entry(path.clone()).or_insert(Seen { size, mtime, stable_since: now });
            if entry.size != size || entry.mtime != mtime {
                *entry = Seen { size, mtime, stable_since: now };
                last_activity = now;
                continue;
            }
            if now.duration_since(entry.stable_since) >= opts.settle {
                ready.push((path, size, mtime));
            }
        }
        for (path, size, mtime) in ready {
            seen.remove(&path);
            last_activity = Instant::now();
            let hash = match crate::runtime::fingerprint::hash_file(&path) {
                Ok(h) => h,
                Err(_) => continue, // vanished while hashing: picked up again if it comes back
            };
            // Changed since it settled? Then it was not complete: look again next round.
            match std::fs::metadata(&path) {
                Ok(md) if md.len() == size && md.modified().ok() == Some(mtime) => {}
                _ => continue,
            }
            known_paths.insert(path.clone(), (size, mtime));
            if let Some(prev) = by_hash.get(&hash) {
                if prev.status == "quarantined" && prev.path == path.display().to_string() {
                    finish_quarantine(&path, prev)?; // the move was interrupted last time
                    continue;
                }
                if prev.path != path.display().to_string() && prev.status != "duplicate" {
                    let e = LedgerEntry {
                        path: path.display().to_string(),
                        blake3: hash.clone(),
                        bytes: size,
                        status: "duplicate".into(),
                        error: None,
                        checkpoints: BTreeMap::new(),
                        duplicate_of: Some(prev.path.clone()),
                        quarantined_to: None,
                        at: now_s(),
                    };
                    if !read_ledger(&run_dir).iter().any(|x| x.path == e.path && x.blake3 == e.blake3) {
                        append_ledger(&run_dir, &e)?;
                        say(format!("  {}: same content as {}, not ingested again", path.display(), prev.path));
                    }
                }
                continue;
            }
            let (entry, plan) = ingest_one(file, text, stage, &path, &hash, size, &run_dir, &quarantine, &rt)?;
            if refit.plan.is_none() {
                if let Some(plan) = plan {
                    announce(&plan);
                    refit.plan = Some(plan);
                }
            }
            if entry.status == "ok" {
                refit.last_ok = Some(path.clone());
                let points = refit.plan.as_ref().map(|p| p.gather_points.clone()).unwrap_or_default();
                refit.pending_rows += points.iter().map(|point| rows_of(&entry, point)).max().unwrap_or(0);
            }
            say(format!("  {}: {}{}", path.display(), entry.status, entry.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()));
            if entry.status == "failed" {
                failed_any = true;
            }
            append_ledger(&run_dir, &entry)?;
            if entry.status == "quarantined" {
                finish_quarantine(&path, &entry)?;
            }
            by_hash.insert(hash, entry);
        }
        if refit.pending_rows > 0 && (refit.pending_rows >= opts.refit_rows || refit.last_fit.elapsed() >= opts.refit_after) {
            do_refit(&mut refit)?;
        }
        if let Some(idle) = opts.idle_exit {
            if seen.is_empty() && last_activity.elapsed() >= idle {
                say(format!("neurostream: no new file for {:.1} s; stopping", idle.as_secs_f64()));
                break;
            }
        }
        let _ = rx.recv_timeout(opts.poll);
        while rx.try_recv().is_ok() {}
    }
    drop(watcher);
    if refit.pending_rows > 0 {
        do_refit(&mut refit)?;
    }
    Ok(if failed_any { 1 } else { 0 })
}

/// Rows the recording's checkpoint of `stage` holds (from its manifest; 0 if unknown).
fn rows_of(entry: &LedgerEntry, stage: &str) -> u64 {
    entry
        .checkpoints
        .get(stage)
        .and_then(|cp| crate::checkpoint::read_manifest(Path::new(cp)).ok())
        .map(|m| m.rows)
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn ingest_one(
    file: &Path,
    text: &str,
    stage: &str,
    path: &Path,
    hash: &str,
    size: u64,
    run_dir: &Path,
    quarantine: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<(LedgerEntry, Option<WatchPlan>)> {
    let mut entry = LedgerEntry {
        path: path.display().to_string(),
        blake3: hash.to_string(),
        bytes: size,
        status: "ok".into(),
        error: None,
        checkpoints: BTreeMap::new(),
        duplicate_of: None,
        quarantined_to: None,
        at: now_s(),
    };
    let mut p = match pipeline::parse_str_with(file, text, &[(stage.to_string(), vec![path.to_path_buf()])]) {
        Ok(p) => p,
        Err(d) => {
            // The file does not fit the pipeline (unreadable, or a schema its consumers cannot use).
            quarantine_file(path, hash, quarantine, &d.to_string(), &mut entry)?;
            return Ok((entry, None));
        }
    };
    let plan = WatchPlan::of(&p, stage)?;
    plan.restrict_to_segment(&mut p);
    p.set_run_dir(run_dir.to_path_buf());
    let report = rt.block_on(run_pipeline(&p, &RunOptions { mode: Mode::Run, quiet: true, lock: false }))?;
    let source_failures: Vec<String> = report.stage(stage).map(|s| s.failures.iter().map(|f| f.message.clone()).collect()).unwrap_or_default();
    if !source_failures.is_empty() {
        quarantine_file(path, hash, quarantine, &source_failures.join("; "), &mut entry)?;
        return Ok((entry, Some(plan)));
    }
    for s in &report.stages {
        if let Some(cp) = &s.checkpoint {
            entry.checkpoints.insert(s.name.clone(), cp.clone());
        }
    }
    if !report.ok {
        let mut errors = Vec::new();
        for s in &report.stages {
            if let Some(e) = &s.error {
                errors.push(format!("stage `{}`: {e}", s.name));
            }
            for f in &s.failures {
                errors.push(format!("stage `{}`: {}: {}", s.name, f.unit, f.message));
            }
        }
        entry.status = "failed".into();
        entry.error = Some(errors.join("; "));
    }
    Ok((entry, Some(plan)))
}

/// Decides the quarantine: writes the error file and fills the entry. The move itself happens after
/// the ledger line is written ([`finish_quarantine`]), so a crash in between is completed on restart.
fn quarantine_file(path: &Path, hash: &str, quarantine: &Path, error: &str, entry: &mut LedgerEntry) -> Result<()> {
    std::fs::create_dir_all(quarantine).map_err(|e| Error::io(quarantine, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
    let dst = quarantine.join(format!("{}-{name}", &hash[..12]));
    let err_file = quarantine.join(format!("{}-{name}.error.txt", &hash[..12]));
    std::fs::write(&err_file, format!("{}\n{error}\n", path.display())).map_err(|e| Error::io(&err_file, e))?;
    entry.status = "quarantined".into();
    entry.error = Some(error.to_string());
    entry.quarantined_to = Some(dst.display().to_string());
    Ok(())
}

/// Moves a quarantined file out of the watched folder (idempotent).
fn finish_quarantine(path: &Path, entry: &LedgerEntry) -> Result<()> {
    let Some(dst) = entry.quarantined_to.as_ref().map(PathBuf::from) else { return Ok(()) };
    if !path.exists() {
        return Ok(());
    }
    if std::fs::rename(path, &dst).is_err() {
        // Another file system: copy, then remove.
        std::fs::copy(path, &dst).map_err(|e| Error::io(&dst, e))?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Sets `flag` on SIGINT/SIGTERM so the loop finishes the current file and exits cleanly.
fn ctrlc_flag(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("neurostream-signals".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(_) => return,
        };
        rt.block_on(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        });
        flag.store(true, Ordering::Relaxed);
    })?;
    Ok(())
}
