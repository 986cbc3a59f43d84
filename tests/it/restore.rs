//! Restore equivalence (Arroyo's smoke test, here with real processes): a run killed with SIGKILL at
//! several points and then run again ends with Parquet outputs identical in rows and values to an
//! uninterrupted run, and no partial checkpoint is ever visible in between.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float32Builder, Float64Array, Int64Array, LargeListBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use neurostream::checkpoint;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::*;

/// Six files of synthetic sweeps (deterministic), large enough that a run takes a while.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let unit = |u: &str| std::collections::HashMap::from([("unit".to_string(), u.to_string())]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("sweep", DataType::Int64, false),
        Field::new("stimulus_amplitude", DataType::Float64, false).with_metadata(unit("pA")),
        Field::new("spike_count", DataType::Int64, false),
        Field::new("response", DataType::LargeList(Arc::new(Field::new("item", DataType::Float32, true))), false).with_metadata(unit("mV")),
    ]));
    for f in 0..6 {
        let path = dir.join(format!("sweeps_{f}.parquet"));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        for chunk in 0..4 {
            let n = 10_000;
            let base = (f * 4 + chunk) * n;
            let ids: Vec<String> = (0..n).map(|i| format!("cell{}", (base + i) / 50)).collect();
            let mut trace = LargeListBuilder::new(Float32Builder::new());
            for i in 0..n {
                for k in 0..32 {
                    trace.values().append_value(-70.0 + ((base + i) * 7 + k) as f32 % 13.0);
                }
                trace.append(true);
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(Int64Array::from_iter_values((0..n).map(|i| ((base + i) % 50) as i64))),
                    Arc::new(Float64Array::from_iter_values((0..n).map(|i| ((base + i) % 41) as f64 * 10.0 - 100.0))),
                    Arc::new(Int64Array::from_iter_values((0..n).map(|i| ((base + i) * 31 % 17) as i64))),
                    Arc::new(trace.finish()),
                ],
            )
            .unwrap();
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
    }
}

const RESTORE_PIPELINE: &str = r#"
[pipeline]
name = "core"
channel_rows = 20000
row_group_rows = 50000

[stages.sweeps]
kind = "source.parquet"
paths = ["big/*.parquet"]
batch_rows = 5000

[stages.spiking]
kind = "transform.filter"
inputs = ["sweeps"]
where = "spike_count > 2 and stimulus_amplitude >= 0"

[stages.keep]
kind = "transform.select"
inputs = ["spiking"]
drop = ["sweep"]

[stages.export]
kind = "sink.parquet"
inputs = ["keep"]
path = "out/spiking.parquet"

[stages.amplitudes]
kind = "transform.select"
inputs = ["sweeps"]
columns = ["recording_id", "stimulus_amplitude"]
"#;

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

/// Every visible checkpoint folder is complete: manifest present, parts readable, row counts agree.
fn assert_no_partial_checkpoint(run_dir: &Path) {
    let Ok(stages) = std::fs::read_dir(run_dir) else { return };
    for stage in stages.flatten() {
        if !stage.path().is_dir() || stage.file_name() == "history" {
            continue;
        }
        for cp in std::fs::read_dir(stage.path()).unwrap().flatten() {
            let name = cp.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue; // temporary folders of the killed run, invisible by convention
            }
            let m = checkpoint::read_manifest(&cp.path()).unwrap_or_else(|e| panic!("partial checkpoint visible at {}: {e}", cp.path().display()));
            let mut rows = 0u64;
            for part in &m.parts {
                let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(cp.path().join(&part.file)).unwrap()).unwrap();
                rows += r.metadata().file_metadata().num_rows() as u64;
            }
            assert_eq!(rows, m.rows, "{}: parts hold {rows} rows, manifest says {}", cp.path().display(), m.rows);
        }
    }
}

#[test]
fn killed_runs_resume_to_outputs_identical_to_an_uninterrupted_run() {
    let reference = Project::new(RESTORE_PIPELINE);
    write_data(&reference.path().join("big"));
    let t = Instant::now();
    let (out, _) = reference.run();
    assert!(out.status.success(), "{}", stderr(&out));
    let full = t.elapsed();

    let killed = Project::new(RESTORE_PIPELINE);
    std::fs::create_dir_all(killed.path().join("big")).unwrap();
    for e in std::fs::read_dir(reference.path().join("big")).unwrap().flatten() {
        std::fs::copy(e.path(), killed.path().join("big").join(e.file_name())).unwrap();
    }
    let mut interrupted = 0;
    let mut committed_before_kill = Vec::new();
    for frac in [0.15, 0.3, 0.45, 0.6, 0.75, 0.9] {
        let _ = std::fs::remove_file(killed.run_dir().join("last-run.json"));
        let mut child = Command::new(bin()).args(["--quiet", "run", "pipeline.toml"]).current_dir(killed.path()).spawn().unwrap();
        std::thread::sleep(full.mul_f64(frac));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !killed.run_dir().join("last-run.json").exists() {
            interrupted += 1;
            assert!(!status.success());
        }
        assert_no_partial_checkpoint(&killed.run_dir());
        if let Ok(f) = std::fs::File::open(killed.path().join("out/spiking.parquet")) {
            // The export is renamed into place whole, so if it exists it is readable.
            ParquetRecordBatchReaderBuilder::try_new(f).expect("a visible export is complete");
        }
        let n: usize = ["sweeps", "spiking", "keep", "export", "amplitudes"].iter().map(|s| checkpoint::list(&killed.run_dir().join(s)).len()).sum();
        committed_before_kill.push(n);
        if n == 5 {
            break;
        }
    }
    assert!(interrupted >= 2, "the kills must interrupt real work (only {interrupted} did; run took {full:?})");
    let (out, r) = killed.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(r.ok);
    eprintln!("uninterrupted run {full:?}; checkpoints committed after each kill: {committed_before_kill:?}");

    for stage in ["sweeps", "spiking", "keep", "amplitudes"] {
        let a = checkpoint::list(&reference.run_dir().join(stage)).remove(0);
        let b = checkpoint::list(&killed.run_dir().join(stage)).remove(0);
        assert_eq!(a.manifest.fingerprint, b.manifest.fingerprint);
        assert_eq!(a.manifest.rows, b.manifest.rows, "{stage}");
        assert_eq!(concat(&read_parquet_batches(&a.part_files())), concat(&read_parquet_batches(&b.part_files())), "{stage}: values differ");
    }
    let a = read_parquet(&reference.path().join("out/spiking.parquet"));
    let b = read_parquet(&killed.path().join("out/spiking.parquet"));
    assert_eq!(a, b, "exports differ");
    assert!(a.num_rows() > 0);
}
