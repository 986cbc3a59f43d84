//! Continuous ingestion soak test: 200 files dropped into a watched folder over time by a separate
//! process (175 plain, 10 written slowly in pieces, 10 truncated or corrupt, 5 duplicates by
//! content), with the watcher SIGKILLed midway and restarted. Afterwards every good file's outputs
//! are present exactly once, every bad file is quarantined with its error, and the ledger agrees
//! with the checkpoints. Bounded in time: every wait has a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use neurostream::checkpoint;
use neurostream::runtime::watch::read_ledger;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const WATCH_PIPELINE: &str = r#"
[pipeline]
name = "core"

[stages.inbox]
kind = "source.parquet"
paths = ["inbox/*.parquet"]

[stages.spiking]
kind = "transform.filter"
inputs = ["inbox"]
where = "spike_count >= 0"

[stages.keep]
kind = "transform.select"
inputs = ["spiking"]
columns = ["recording_id", "spike_count"]
"#;

/// One small recording: `rows` sweeps of cell `id`.
fn write_recording(path: &Path, id: usize, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("stimulus_amplitude", DataType::Float64, false),
        Field::new("spike_count", DataType::Int64, false),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values((0..rows).map(|_| format!("cell{id:04}")))),
            Arc::new(Float64Array::from_iter_values((0..rows).map(|k| 20.0 * k as f64))),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|k| ((id + k) % 9) as i64))),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

/// The dropper: a separate Python process that copies staged files into the inbox on a schedule.
const DROPPER: &str = r#"
import json, os, shutil, sys, threading, time
plan = json.load(open(sys.argv[1]))
inbox = sys.argv[2]
def slow(src, dst):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        for k in range(4):
            f.write(data[k * len(data) // 4:(k + 1) * len(data) // 4]); f.flush(); os.fsync(f.fileno())
            time.sleep(0.25)
threads = []
for item in plan:
    dst = os.path.join(inbox, item["name"])
    if item["how"] == "slow":
        t = threading.Thread(target=slow, args=(item["src"], dst)); t.start(); threads.append(t)
    elif item["how"] == "rename":
        tmp = os.path.join(inbox, "." + item["name"] + ".part")
        shutil.copy(item["src"], tmp); os.rename(tmp, dst)
    else:
        shutil.copy(item["src"], dst)
    time.sleep(0.012)
for t in threads: t.join()
"#;

fn spawn_watcher(p: &Project) -> Child {
    Command::new(bin())
        .args(["--quiet", "run", "pipeline.toml", "--watch", "--settle", "0.6", "--idle-exit", "2.5"])
        .current_dir(p.path())
        .spawn()
        .unwrap()
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            panic!("watcher still running after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn soak_200_files_with_slow_corrupt_duplicate_files_and_a_sigkill() {
    let p = Project::new(WATCH_PIPELINE);
    let staging = p.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(p.path().join("inbox")).unwrap();
    let mut plan = Vec::new();
    let mut good_rows: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..185 {
        let src = staging.join(format!("rec{i:04}.parquet"));
        let rows = 5 + i % 17;
        write_recording(&src, i, rows);
        good_rows.insert(format!("cell{i:04}"), rows);
        let how = if i % 18 == 5 && plan.iter().filter(|x: &&serde_json::Value| x["how"] == "slow").count() < 10 {
            "slow"
        } else if i % 2 == 0 {
            "rename"
        } else {
            "copy"
        };
        plan.push(serde_json::json!({"name": format!("rec{i:04}.parquet"), "src": src, "how": how}));
    }
    assert_eq!(plan.iter().filter(|x| x["how"] == "slow").count(), 10);
    // 10 bad files: truncated copies of good recordings, and garbage with a Parquet name.
    for k in 0..10 {
        let src = staging.join(format!("bad{k}.parquet"));
        if k < 6 {
            let data = std::fs::read(staging.join(format!("rec{:04}.parquet", k * 7))).unwrap();
            std::fs::write(&src, &data[..data.len() * (k + 2) / 10]).unwrap();
        } else {
            std::fs::write(&src, format!("not parquet at all #{k}").repeat(40)).unwrap();
        }
        plan.insert(20 + k * 15, serde_json::json!({"name": format!("bad{k}.parquet"), "src": src, "how": "copy"}));
    }
    // 5 duplicates by content under new names, dropped after their originals.
    for k in 0..5 {
        let src = staging.join(format!("rec{:04}.parquet", 3 + k * 11));
        plan.push(serde_json::json!({"name": format!("copy_of_{k}.parquet"), "src": src, "how": "copy"}));
    }
    assert_eq!(plan.len(), 200);
    let plan_path = p.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let script = p.path().join("dropper.py");
    std::fs::write(&script, DROPPER).unwrap();

    let mut dropper = Command::new("python3").arg(&script).arg(&plan_path).arg(p.path().join("inbox")).spawn().unwrap();
    let mut first = spawn_watcher(&p);
    std::thread::sleep(Duration::from_millis(2500));
    first.kill().unwrap(); // SIGKILL midway
    first.wait().unwrap();
    let after_kill = read_ledger(&p.run_dir()).len();
    let mut second = spawn_watcher(&p);
    let status = dropper.wait().unwrap();
    assert!(status.success(), "the dropper failed");
    let status = wait_with_deadline(&mut second, Duration::from_secs(240));
    assert!(status.success(), "watcher exit {status:?}");
    eprintln!("ledger lines after the SIGKILL: {after_kill}");
    assert!(after_kill > 0 && after_kill < 200, "the kill must land midway (ledger had {after_kill} lines)");

    let ledger = read_ledger(&p.run_dir());
    let ok: Vec<_> = ledger.iter().filter(|e| e.status == "ok").collect();
    let dup: Vec<_> = ledger.iter().filter(|e| e.status == "duplicate").collect();
    let quarantined: Vec<_> = ledger.iter().filter(|e| e.status == "quarantined").collect();
    assert!(ledger.iter().all(|e| ["ok", "duplicate", "quarantined"].contains(&e.status.as_str())), "{ledger:#?}");
    // Exactly once: one ok line per distinct good content.
    let ok_hashes: BTreeSet<&str> = ok.iter().map(|e| e.blake3.as_str()).collect();
    assert_eq!(ok.len(), 185, "ok entries: {}", ok.len());
    assert_eq!(ok_hashes.len(), 185);
    assert_eq!(dup.len(), 5, "{dup:#?}");
    assert_eq!(quarantined.len(), 10);
    for q in &quarantined {
        let to = Path::new(q.quarantined_to.as_ref().unwrap());
        assert!(to.exists(), "{to:?} missing");
        assert!(!Path::new(&q.path).exists(), "{} still in the inbox", q.path);
        assert!(q.error.as_ref().is_some_and(|e| !e.is_empty()));
        let err_file = to.with_file_name(format!("{}.error.txt", to.file_name().unwrap().to_string_lossy()));
        assert!(std::fs::read_to_string(err_file).unwrap().contains(&q.path));
    }

    // Every good recording's output is present exactly once in the `keep` checkpoints, and the
    // ledger names exactly the checkpoints on disk.
    let on_disk: BTreeSet<String> = checkpoint::list(&p.run_dir().join("keep")).iter().map(|c| c.dir.display().to_string()).collect();
    let in_ledger: BTreeSet<String> = ok.iter().map(|e| e.checkpoints["keep"].clone()).collect();
    assert_eq!(on_disk, in_ledger);
    let mut seen_rows: BTreeMap<String, usize> = BTreeMap::new();
    for cp in checkpoint::list(&p.run_dir().join("keep")) {
        for f in cp.part_files() {
            for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap()).unwrap().build().unwrap() {
                let b = b.unwrap();
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                for id in ids.iter().flatten() {
                    *seen_rows.entry(id.to_string()).or_default() += 1;
                }
            }
        }
    }
    assert_eq!(seen_rows, good_rows, "each good recording's rows exactly once");
}

/// A training stage in a watched pipeline refits on a debounce over every recording so far: with
/// `--refit-rows 30` the first recording (20 rows) waits, the second brings the count to 40 and
/// triggers version 1 on both; the third (20) waits and is fitted into version 2 when the watcher
/// stops. Per-file increments never run the training stage itself.
#[test]
fn a_training_stage_refits_on_a_debounce_and_writes_model_versions() {
    let pipeline = r#"
[pipeline]
name = "core"
seed = 3

[stages.inbox]
kind = "source.parquet"
paths = ["inbox/*.parquet"]

[stages.keep]
kind = "transform.select"
inputs = ["inbox"]
columns = ["recording_id", "stimulus_amplitude", "spike_count"]

[stages.counts]
kind = "train.regress"
inputs = ["keep"]
features = ["stimulus_amplitude"]
target = "spike_count"
model = { model = "ridge", alpha = 1.0 }
validation = { method = "k_fold", k = 2 }
"#;
    let p = Project::new(pipeline);
    let inbox = p.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut child = Command::new(bin())
        .args(["--quiet", "run", "pipeline.toml", "--watch", "--settle", "0.3", "--idle-exit", "3", "--refit-rows", "30", "--refit-seconds", "3600"])
        .current_dir(p.path())
        .spawn()
        .unwrap();
    let models = p.run_dir().join("models/counts");
    let versions = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&models).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    let wait_for = |n_ledger: usize| {
        let t = Instant::now();
        while read_ledger(&p.run_dir()).len() < n_ledger {
            assert!(t.elapsed() < Duration::from_secs(60), "ledger never reached {n_ledger} entries");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    write_recording(&inbox.join("a.parquet"), 1, 20);
    wait_for(1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(versions().is_empty(), "20 rows < 30: no refit yet, got {:?}", versions());
    write_recording(&inbox.join("b.parquet"), 2, 20);
    wait_for(2);
    let t = Instant::now();
    while versions().len() < 1 {
        assert!(t.elapsed() < Duration::from_secs(60), "no model version after 40 rows");
        std::thread::sleep(Duration::from_millis(50));
    }
    write_recording(&inbox.join("c.parquet"), 3, 20);
    let status = wait_with_deadline(&mut child, Duration::from_secs(90));
    assert!(status.success(), "{status:?}");
    assert_eq!(versions(), ["v0001", "v0002"]);
    let rows_used = |v: &str| -> u64 {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(models.join(v).join("metrics.json")).unwrap()).unwrap();
        m["rows_used"].as_u64().unwrap()
    };
    assert_eq!(rows_used("v0001"), 40, "version 1 fits recordings a and b");
    assert_eq!(rows_used("v0002"), 60, "version 2 fits all three");
    assert!(models.join("v0002/model.json").exists());
    assert!(checkpoint::list(&p.run_dir().join("counts")).is_empty(), "increments never train on one file");
    assert_eq!(read_ledger(&p.run_dir()).iter().filter(|e| e.status == "ok").count(), 3);
}

/// Watching a folder of ABF recordings (`ingest.abf` over a folder, the way a rig's acquisition
/// folder is watched): each recording is ingested once when it appears, its spikes land in their
/// own checkpoint, and a truncated recording is quarantined by name while the others go on. The
/// soak test above covers `source.parquet`; this one covers a binary-format reader in the loop.
#[test]
fn a_watched_abf_folder_ingests_each_recording_once_and_quarantines_a_truncated_one() {
    let pipeline = r#"
[pipeline]
name = "core"

[stages.sweeps]
kind = "ingest.abf"
paths = ["inbox"]

[stages.spikes]
kind = "features.spikes"
inputs = ["sweeps"]
filter_khz = 5
"#;
    let p = Project::new(pipeline);
    let inbox = p.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut child = spawn_watcher(&p);
    let abf = |name: &str| std::fs::read(fixtures().join("abf").join(format!("{name}.abf"))).unwrap();
    let wait_for = |n: usize| {
        let t = Instant::now();
        while read_ledger(&p.run_dir()).len() < n {
            assert!(t.elapsed() < Duration::from_secs(90), "ledger never reached {n} entries: {:#?}", read_ledger(&p.run_dir()));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(inbox.join("cell_a.abf"), abf("171116sh_0018")).unwrap();
    wait_for(1);
    // Truncated mid-data: the header parses, the sweeps do not fit.
    let b = abf("17o05028_ic_steps");
    std::fs::write(inbox.join("cell_b_truncated.abf"), &b[..b.len() / 3]).unwrap();
    wait_for(2);
    // Written in four parts, like a slow network copy: the settle time must wait for the last.
    let mut f = std::fs::File::create(inbox.join("cell_b.abf")).unwrap();
    for k in 0..4 {
        use std::io::Write;
        f.write_all(&b[k * b.len() / 4..(k + 1) * b.len() / 4]).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(f);
    let status = wait_with_deadline(&mut child, Duration::from_secs(120));
    assert!(status.success(), "watcher exit {status:?}");

    let ledger = read_ledger(&p.run_dir());
    assert_eq!(ledger.len(), 3, "{ledger:#?}");
    let by_name = |n: &str| ledger.iter().find(|e| e.path.ends_with(n)).unwrap_or_else(|| panic!("{n} not in {ledger:#?}"));
    assert_eq!(by_name("cell_a.abf").status, "ok");
    assert_eq!(by_name("cell_b.abf").status, "ok", "{:#?}", by_name("cell_b.abf"));
    let bad = by_name("cell_b_truncated.abf");
    assert_ne!(bad.status, "ok", "{bad:#?}");
    assert!(bad.error.as_deref().is_some_and(|e| e.contains("cell_b_truncated.abf")), "the error names the file: {bad:#?}");

    // Spikes per recording, read back from each recording's own checkpoint: pyABF/IPFX give 117
    // spikes in 171116sh_0018 (the abf_spikes pipeline's number) and the rest of the 472 spikes of
    // tests/fixtures/abf in 17o05028_ic_steps.
    let spikes_in = |e: &neurostream::runtime::watch::LedgerEntry| -> usize {
        let cp = Path::new(&e.checkpoints["spikes"]).to_path_buf();
        let cp = if cp.is_absolute() { cp } else { p.path().join(cp) };
        let cp = checkpoint::Checkpoint { manifest: checkpoint::read_manifest(&cp).unwrap(), dir: cp };
        let mut n = 0;
        for f in cp.part_files() {
            for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap()).unwrap().build().unwrap() {
                n += b.unwrap().num_rows();
            }
        }
        n
    };
    assert_eq!(spikes_in(by_name("cell_a.abf")), 117);
    assert_eq!(spikes_in(by_name("cell_a.abf")) + spikes_in(by_name("cell_b.abf")), 472);
}

/// The plan, not the kinds' names, decides what runs per file: a training stage with two inputs
/// (two filters of the watched source) and a `predict.model` that reads it are both gathered, so no
/// increment runs them; the refit at exit fits once on the union of both inputs over every
/// recording and predicts every recording with that model. Before the plan, watch mode refitted
/// only `train.*` stages with exactly one input, found by their name, and could not run a stage
/// downstream of one.
#[test]
fn watch_refits_a_two_input_training_stage_and_the_prediction_after_it() {
    let pipeline = r#"
[pipeline]
name = "core"
seed = 3

[stages.inbox]
kind = "source.parquet"
paths = ["inbox/*.parquet"]

[stages.low]
kind = "transform.filter"
inputs = ["inbox"]
where = "stimulus_amplitude < 200"

[stages.high]
kind = "transform.filter"
inputs = ["inbox"]
where = "stimulus_amplitude >= 200"

[stages.counts]
kind = "train.regress"
inputs = ["low", "high"]
features = ["stimulus_amplitude"]
target = "spike_count"
model = { model = "ridge", alpha = 1.0 }
validation = { method = "k_fold", k = 2 }

[stages.predicted]
kind = "predict.model"
inputs = ["inbox", "counts"]
"#;
    let p = Project::new(pipeline);
    let inbox = p.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    write_recording(&inbox.join("a.parquet"), 1, 20);
    write_recording(&inbox.join("b.parquet"), 2, 20);
    let mut child = Command::new(bin())
        .args(["--quiet", "run", "pipeline.toml", "--watch", "--settle", "0.3", "--idle-exit", "2", "--refit-rows", "1000000", "--refit-seconds", "3600"])
        .current_dir(p.path())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(120));
    assert!(status.success(), "{status:?}");

    let ledger = read_ledger(&p.run_dir());
    assert_eq!(ledger.iter().filter(|e| e.status == "ok").count(), 2, "{ledger:?}");
    for e in &ledger {
        let stages: BTreeSet<&str> = e.checkpoints.keys().map(String::as_str).collect();
        assert_eq!(stages, BTreeSet::from(["inbox", "low", "high"]), "increments run the source's segment only");
    }
    assert!(checkpoint::list(&p.run_dir().join("counts")).is_empty() && checkpoint::list(&p.run_dir().join("predicted")).is_empty());

    // One refit at exit: the model fitted on both inputs of both recordings.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.run_dir().join("models/counts/v0001/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["rows_used"].as_u64(), Some(40), "low (10 + 10 rows) and high (10 + 10) of a and b");

    // ...and every recording predicted with it: ridge on one feature is a line through the points.
    let refit = checkpoint::list(&p.run_dir().join("refit/predicted"));
    assert_eq!(refit.len(), 1, "one prediction checkpoint");
    let mut xy = Vec::new();
    for part in refit[0].part_files() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(part).unwrap()).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let x = b.column_by_name("stimulus_amplitude").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().clone();
            let y = b.column_by_name("prediction").expect("a prediction column").as_any().downcast_ref::<Float64Array>().unwrap().clone();
            xy.extend(x.values().iter().copied().zip(y.values().iter().copied()));
        }
    }
    assert_eq!(xy.len(), 40);
    let (x0, y0) = xy[0];
    let (x1, y1) = *xy.iter().find(|(x, _)| *x != x0).unwrap();
    let slope = (y1 - y0) / (x1 - x0);
    assert!(slope.is_finite() && slope != 0.0);
    for (x, y) in &xy {
        assert!((y - (y0 + slope * (x - x0))).abs() < 1e-9, "({x}, {y}) is off the fitted line");
    }
}
