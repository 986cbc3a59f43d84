//! Shared helpers for the integration tests: a scratch project with real fixture data, and the
//! real `neurostream` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use neurostream::runtime::RunReport;
use neurostream::checkpoint;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostream")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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
    pub fn neurostream(&self, args: &[&str]) -> Output {
        Command::new(bin()).args(args).current_dir(self.path()).output().unwrap()
    }
    pub fn run(&self) -> (Output, RunReport) {
        let out = self.neurostream(&["run", "pipeline.toml"]);
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

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn computed(r: &RunReport) -> Vec<String> {
    let mut v: Vec<String> = r.computed().into_iter().map(String::from).collect();
    v.sort();
    v
}

/// The standard pipeline of these tests: a source fanned out to two branches, one ending in an export.
pub const PIPELINE: &str = r#"
[pipeline]
name = "core"
seed = 1

[stages.sweeps]
kind = "source.parquet"
paths = ["data/*.parquet"]
batch_rows = 500

[stages.spiking]
kind = "transform.filter"
inputs = ["sweeps"]
where = "spike_count > 0"

[stages.keep]
kind = "transform.select"
inputs = ["spiking"]
columns = ["recording_id", "sweep", "stimulus_amplitude", "spike_count"]

[stages.export]
kind = "sink.parquet"
inputs = ["keep"]
path = "out/spiking.parquet"

[stages.amplitudes]
kind = "transform.select"
inputs = ["sweeps"]
columns = ["recording_id", "stimulus_amplitude"]
"#;
