//! The run report: what happened to every stage and edge, written as `last-run.json` (and kept
//! under `history/`) in the run directory, read back by `status`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::{CounterSnapshot, EdgeSnapshot};
use crate::error::{Error, Result};
use crate::stage::UnitFailure;

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
