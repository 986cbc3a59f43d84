//! What the integration tests share, defined once: where the binary and the fixtures are, scratch
//! projects, running the real `neurostream` binary, and reading what a run wrote (CSV, Parquet,
//! metrics). [`harness`] runs one stage kind in-process instead.

pub mod harness;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Float64Type, Int64Type};
use neurostream::checkpoint;
use neurostream::runtime::RunReport;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

// ---- where things are -------------------------------------------------------------------------

/// The real `neurostream` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostream")
}

/// The repository root (data/, pipelines/, README.md).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/`: real recordings and the reference tools' outputs.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// One file or folder under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

// ---- running the binary -----------------------------------------------------------------------

/// Runs `neurostream <args>` in `dir`.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin()).args(args).current_dir(dir).output().unwrap()
}

/// Runs `neurostream <args>` in `dir`; returns (exit code, stdout + stderr).
pub fn cli_text(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = cli(dir, args);
    (out.status.code().unwrap_or(-1), output_text(&out))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// stdout followed by stderr, for messages that may go to either.
pub fn output_text(o: &Output) -> String {
    stdout(o) + &stderr(o)
}

/// A scratch folder with the pipeline written as `p.toml` and fixture files copied in:
/// each `(fixture, dest)` copies `tests/fixtures/<fixture>` to `<dir>/<dest>`.
pub fn workspace(pipeline: &str, copies: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to) in copies {
        let dest = tmp.path().join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fixture(from), &dest).unwrap_or_else(|e| panic!("copying {from}: {e}"));
    }
    std::fs::write(tmp.path().join("p.toml"), pipeline).unwrap();
    tmp
}

/// The two real ABF step recordings in `tests/fixtures/abf` (pyABF test data, 20 kHz; 17 and 16
/// sweeps), by file stem.
pub const ABF_FILES: [&str; 2] = ["171116sh_0018", "17o05028_ic_steps"];

/// A [`workspace`] with copies of the ABF recordings `tests/fixtures/abf/<stem>.abf` in `abf/`.
pub fn abf_workspace(pipeline: &str, stems: &[&str]) -> tempfile::TempDir {
    let paths: Vec<String> = stems.iter().map(|s| format!("abf/{s}.abf")).collect();
    let copies: Vec<(&str, &str)> = paths.iter().map(|p| (p.as_str(), p.as_str())).collect();
    workspace(pipeline, &copies)
}

/// CellExplorer's ground-truth units in `tests/fixtures/units_mat` (three pyramidal cells, three
/// narrow interneurons by CellExplorer's stored type), by file stem.
pub const UNIT_FILES: [&str; 6] = ["d561102", "d681104", "d711102", "d561106", "d611110", "d611111"];

/// A [`workspace`] with copies of `tests/fixtures/units_mat/<stem>.cell_metrics.cellinfo.mat` in `mat/`.
pub fn unit_workspace(pipeline: &str, stems: &[&str]) -> tempfile::TempDir {
    let names: Vec<String> = stems.iter().map(|s| format!("{s}.cell_metrics.cellinfo.mat")).collect();
    let paths: Vec<(String, String)> = names.iter().map(|n| (format!("units_mat/{n}"), format!("mat/{n}"))).collect();
    let copies: Vec<(&str, &str)> = paths.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    workspace(pipeline, &copies)
}

/// Runs `neurostream run p.toml` in a [`workspace`].
pub fn run_workspace(dir: &Path) -> Output {
    cli(dir, &["run", "p.toml"])
}

/// A temporary project folder with the two real Allen spike-count Parquet files in `data/`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        for f in ["mtg_spikecounts_a.parquet", "mtg_spikecounts_b.parquet"] {
            std::fs::copy(fixtures().join("core").join(f), dir.path().join("data").join(f)).unwrap();
        }
        let p = Project { dir };
        p.write_pipeline(pipeline);
        p
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write_pipeline(&self, text: &str) {
        std::fs::write(self.path().join("pipeline.toml"), text).unwrap();
    }
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(self.path(), args)
    }
    pub fn run(&self) -> (Output, RunReport) {
        let out = self.cli(&["run", "pipeline.toml"]);
        (out, self.report())
    }
    pub fn report(&self) -> RunReport {
        let text = std::fs::read_to_string(self.run_dir().join("last-run.json")).expect("a run writes last-run.json");
        serde_json::from_str(&text).unwrap()
    }
    pub fn run_dir(&self) -> PathBuf {
        self.path().join("runs/core")
    }
    /// The manifest bytes of a stage's only committed checkpoint.
    pub fn manifest_bytes(&self, stage: &str) -> Vec<u8> {
        let cps = checkpoint::list(&self.run_dir().join(stage));
        assert_eq!(cps.len(), 1, "stage {stage} has {} checkpoints", cps.len());
        std::fs::read(cps[0].dir.join("manifest.json")).unwrap()
    }
}

/// The stages a run computed (not reused), sorted.
pub fn computed(r: &RunReport) -> Vec<String> {
    let mut v: Vec<String> = r.computed().into_iter().map(String::from).collect();
    v.sort();
    v
}

// ---- reading what a run wrote -----------------------------------------------------------------

/// A CSV file with a header row as rows of column -> text. Fields may be double-quoted (arrow's
/// writer quotes a field holding a comma or a quote, e.g. a `missing` list).
pub fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = split_csv_line(lines.next().unwrap());
    lines.map(|l| header.iter().cloned().zip(split_csv_line(l)).collect()).collect()
}

fn split_csv_line(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// A whole Parquet file as one batch (with the file's schema, units included).
pub fn read_parquet(path: &Path) -> RecordBatch {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// The batches of several Parquet files, in order.
pub fn read_parquet_batches(files: &[PathBuf]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in files {
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap()).unwrap().build().unwrap();
        out.extend(r.map(Result::unwrap));
    }
    out
}

/// The batches of a stage's only committed checkpoint in a run directory.
pub fn checkpoint_batches(run_dir: &Path, stage: &str) -> Vec<RecordBatch> {
    let cps = checkpoint::list(&run_dir.join(stage));
    assert_eq!(cps.len(), 1, "{stage}: one checkpoint, found {}", cps.len());
    read_parquet_batches(&cps[0].part_files())
}

/// Writes one batch as a Parquet file (test input data).
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// `<run dir>/artifacts/<stage>/metrics.json`.
pub fn metrics(run_dir: &Path, stage: &str) -> serde_json::Value {
    let path = run_dir.join("artifacts").join(stage).join("metrics.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

pub fn f64_col(b: &RecordBatch, col: &str) -> Vec<f64> {
    b.column_by_name(col).unwrap().as_primitive::<Float64Type>().values().to_vec()
}

pub fn i64_col(b: &RecordBatch, col: &str) -> Vec<i64> {
    b.column_by_name(col).unwrap().as_primitive::<Int64Type>().values().to_vec()
}

/// One row of a list-of-f32 column (a trace).
pub fn f32_list(b: &RecordBatch, col: &str, row: usize) -> Vec<f32> {
    b.column_by_name(col).unwrap().as_list::<i64>().value(row).as_primitive::<Float32Type>().values().to_vec()
}
