//! Checkpoints: a stage's output as Parquet under `runs/<pipeline>/<stage>/<fingerprint>/`.
//!
//! A checkpoint is written into a hidden temporary folder (`.tmp-<fingerprint>-<pid>-<n>`) and made
//! visible by one `rename` once every part file and the manifest are on disk (fsynced), so a reader
//! (or a run restarted after SIGKILL) sees either a complete checkpoint or none. Leftover `.tmp-*`
//! and `.trash-*` folders belong to interrupted runs; the next run of the pipeline (which holds the
//! run-directory lock) and `neurostream gc` remove them.
//!
//! Parts are zstd-compressed Parquet with row groups of `row_group_rows` rows, cut early at
//! [`ROW_GROUP_BYTES`], never one group per small batch.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::UnitFailure;
use crate::stage::columns::{type_name, unit_of};
use crate::stage::parquet::ROW_GROUP_BYTES;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "neurostream-checkpoint/1";
/// A new part file is started after this many bytes, so no single file grows without bound.
pub const PART_BYTES: usize = 1 << 30;

fn properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!("neurostream {}", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartInfo {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

pub fn describe_schema(schema: &Schema) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .map(|f| FieldInfo {
            name: f.name().clone(),
            data_type: type_name(f.data_type()),
            nullable: f.is_nullable(),
            unit: unit_of(f).map(str::to_string),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExternalInput {
    pub path: String,
    pub blake3: String,
}

/// What a checkpoint holds and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub fingerprint: String,
    /// Input stage name -> the fingerprint of the checkpoint this one was computed from.
    pub inputs: BTreeMap<String, String>,
    pub external_inputs: Vec<ExternalInput>,
    pub config: serde_json::Value,
    pub code_version: u32,
    pub neurostream_version: String,
    pub seed: u64,
    pub rows: u64,
    pub batches: u64,
    pub bytes: u64,
    pub parts: Vec<PartInfo>,
    pub schema: Vec<FieldInfo>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub finished_at: f64,
    pub duration_s: f64,
    /// Recordings that failed in this stage (their rows are absent).
    pub failures: Vec<UnitFailure>,
    /// An input of this stage had failures, so this output lacks their downstream rows.
    pub upstream_incomplete: bool,
    /// Files written outside the run directory (sinks).
    #[serde(default)]
    pub exported: Vec<String>,
}

impl Manifest {
    /// Whether a later run may reuse this checkpoint instead of recomputing it.
    pub fn reusable(&self) -> bool {
        self.failures.is_empty() && !self.upstream_incomplete
    }
}

/// A committed checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Checkpoint {
    pub fn part_files(&self) -> Vec<PathBuf> {
        self.manifest.parts.iter().map(|p| self.dir.join(&p.file)).collect()
    }
}

pub fn now_s() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: not a neurostream manifest: {e}", path.display())))
}

/// The committed checkpoint of `stage_dir` with this fingerprint, if any.
pub fn find(stage_dir: &Path, fingerprint: &str) -> Option<Checkpoint> {
    let dir = stage_dir.join(fingerprint);
    let manifest = read_manifest(&dir).ok()?;
    (manifest.fingerprint == fingerprint).then_some(Checkpoint { dir, manifest })
}

/// Every committed checkpoint of a stage folder, newest first.
pub fn list(stage_dir: &Path) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(stage_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            if let Ok(m) = read_manifest(&e.path()) {
                out.push(Checkpoint { dir: e.path(), manifest: m });
            }
        }
    }
    out.sort_by(|a, b| b.manifest.finished_at.total_cmp(&a.manifest.finished_at));
    out
}

/// A checkpoint folder, or a stage folder whose newest reusable checkpoint is taken.
pub fn resolve_checkpoint_dir(dir: &Path) -> Result<Checkpoint> {
    if dir.join(MANIFEST).is_file() {
        return Ok(Checkpoint { dir: dir.to_path_buf(), manifest: read_manifest(dir)? });
    }
    if !dir.is_dir() {
        return Err(Error::msg(format!("{}: no such checkpoint or stage folder", dir.display())));
    }
    list(dir)
        .into_iter()
        .find(|c| c.manifest.reusable())
        .ok_or_else(|| Error::msg(format!("{}: holds no complete checkpoint", dir.display())))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes one stage's output; nothing is visible until [`CheckpointWriter::commit`].
pub struct CheckpointWriter {
    stage_dir: PathBuf,
    tmp_dir: PathBuf,
    fingerprint: String,
    schema: SchemaRef,
    row_group_rows: usize,
    writer: Option<ArrowWriter<File>>,
    parts: Vec<PartInfo>,
    part_rows: u64,
    rows: u64,
    batches: u64,
    bytes: u64,
    started: Instant,
    started_at: f64,
    write_parts: bool,
    committed: bool,
}

impl CheckpointWriter {
    /// `write_parts = false` for sinks: their checkpoint is a manifest recording the export.
    pub fn create(stage_dir: &Path, fingerprint: &str, schema: SchemaRef, row_group_rows: usize, write_parts: bool) -> Result<Self> {
        fs::create_dir_all(stage_dir).map_err(|e| Error::io(stage_dir, e).context("creating the checkpoint folder"))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp_dir = stage_dir.join(format!(".tmp-{fingerprint}-{}-{n}", std::process::id()));
        fs::create_dir(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e).context("creating a temporary checkpoint folder"))?;
        Ok(CheckpointWriter {
            stage_dir: stage_dir.to_path_buf(),
            tmp_dir,
            fingerprint: fingerprint.to_string(),
            schema,
            row_group_rows,
            writer: None,
            parts: Vec::new(),
            part_rows: 0,
            rows: 0,
            batches: 0,
            bytes: 0,
            started: Instant::now(),
            started_at: now_s(),
            write_parts,
            committed: false,
        })
    }

    fn part_path(&self, i: usize) -> (String, PathBuf) {
        let name = format!("part-{i:05}.parquet");
        let path = self.tmp_dir.join(&name);
        (name, path)
    }

    fn open_part(&mut self) -> Result<()> {
        let (_, path) = self.part_path(self.parts.len());
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let w = ArrowWriter::try_new(file, self.schema.clone(), Some(properties(self.row_group_rows)))
            .map_err(|e| Error::parquet(path.display().to_string(), e))?;
        self.writer = Some(w);
        self.part_rows = 0;
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let (name, path) = self.part_path(self.parts.len());
            let file = w.into_inner().map_err(|e| Error::parquet(path.display().to_string(), e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
            let bytes = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            self.parts.push(PartInfo { file: name, rows: self.part_rows, bytes });
        }
        Ok(())
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.batches += 1;
        self.bytes += crate::stage::batch_bytes(batch) as u64;
        if !self.write_parts {
            return Ok(());
        }
        if self.writer.is_none() {
            self.open_part()?;
        }
        let w = self.writer.as_mut().expect("opened");
        let path = self.tmp_dir.display().to_string();
        w.write(batch).map_err(|e| Error::parquet(format!("writing checkpoint in {path}"), e))?;
        self.part_rows += batch.num_rows() as u64;
        if w.in_progress_size() >= ROW_GROUP_BYTES {
            w.flush().map_err(|e| Error::parquet(format!("writing checkpoint in {path}"), e))?;
        }
        if w.bytes_written() >= PART_BYTES {
            self.close_part()?;
        }
        Ok(())
    }

    /// Finishes the files, writes the manifest and renames the folder into place.
    /// `fill` completes the manifest (stage identity, inputs, failures) from the writer's totals.
    pub fn commit(mut self, fill: impl FnOnce(&mut Manifest)) -> Result<Checkpoint> {
        if self.write_parts && self.parts.is_empty() && self.writer.is_none() {
            self.open_part()?; // an empty output still has a readable file with the schema
        }
        self.close_part()?;
        let mut manifest = Manifest {
            format: FORMAT.into(),
            pipeline: String::new(),
            stage: String::new(),
            kind: String::new(),
            fingerprint: self.fingerprint.clone(),
            inputs: BTreeMap::new(),
            external_inputs: Vec::new(),
            config: serde_json::Value::Null,
            code_version: 0,
            neurostream_version: env!("CARGO_PKG_VERSION").into(),
            seed: 0,
            rows: self.rows,
            batches: self.batches,
            bytes: self.bytes,
            parts: self.parts.clone(),
            schema: describe_schema(&self.schema),
            started_at: self.started_at,
            finished_at: now_s(),
            duration_s: self.started.elapsed().as_secs_f64(),
            failures: Vec::new(),
            upstream_incomplete: false,
            exported: Vec::new(),
        };
        fill(&mut manifest);
        let mpath = self.tmp_dir.join(MANIFEST);
        {
            let text = serde_json::to_vec_pretty(&manifest)?;
            let mut f = File::create(&mpath).map_err(|e| Error::io(&mpath, e))?;
            std::io::Write::write_all(&mut f, &text).map_err(|e| Error::io(&mpath, e))?;
            f.sync_all().map_err(|e| Error::io(&mpath, e))?;
        }
        sync_dir(&self.tmp_dir);
        let final_dir = self.stage_dir.join(&self.fingerprint);
        if final_dir.exists() {
            // Replacing a checkpoint (replay): move the old one aside first, so the final name only
            // ever points at a complete folder.
            let trash = self.stage_dir.join(format!(".trash-{}-{}-{}", self.fingerprint, std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
            fs::rename(&final_dir, &trash).map_err(|e| Error::io(&final_dir, e))?;
            fs::rename(&self.tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
            let _ = fs::remove_dir_all(&trash);
        } else {
            fs::rename(&self.tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        sync_dir(&self.stage_dir);
        self.committed = true;
        Ok(Checkpoint { dir: final_dir, manifest })
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.writer = None;
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes temporary and trash folders left by interrupted runs (call with the run lock held).
pub fn clean_leftovers(stage_dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(stage_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.starts_with(".tmp-") || name.starts_with(".trash-")) && fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Holds the run directory's lock file for as long as it lives: one run (or gc) per pipeline at a time.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e).context("creating the run directory"))?;
        let path = run_dir.join(".lock");
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::msg(format!(
                "{}: another neurostream process is running this pipeline; wait for it to finish",
                run_dir.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}
