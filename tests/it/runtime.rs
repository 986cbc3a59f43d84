//! Acceptance tests of the pipeline core, driving the real binary on real data (Allen human
//! spike counts, as Parquet written by pyarrow): caching, change propagation, replay, error
//! isolation, unwritable run directories, and checkpoints read back by pyarrow.

use neurostream::checkpoint;

use crate::support::*;

/// The standard pipeline of these tests: a source fanned out to two branches, one ending in an export.
const PIPELINE: &str = r#"
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

#[test]
fn second_run_recomputes_nothing() {
    let p = Project::new(PIPELINE);
    let (out, r1) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(computed(&r1), ["amplitudes", "export", "keep", "spiking", "sweeps"]);
    let before: Vec<Vec<u8>> = ["sweeps", "spiking", "keep", "export", "amplitudes"].iter().map(|s| p.manifest_bytes(s)).collect();

    let (out, r2) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(computed(&r2).is_empty(), "second run computed {:?}", computed(&r2));
    assert!(r2.stages.iter().all(|s| s.action == "reused"));
    assert!(stderr(&out).contains("not recomputed"), "the run must say it reused checkpoints:\n{}", stderr(&out));
    let after: Vec<Vec<u8>> = ["sweeps", "spiking", "keep", "export", "amplitudes"].iter().map(|s| p.manifest_bytes(s)).collect();
    assert_eq!(before, after, "checkpoints must be untouched by a cached run");
}

#[test]
fn changing_one_option_recomputes_exactly_that_stage_and_its_descendants() {
    let p = Project::new(PIPELINE);
    assert!(p.run().0.status.success());
    let rows_before = p.report().stage("keep").unwrap().counters.rows_out;
    p.write_pipeline(&PIPELINE.replace("spike_count > 0", "spike_count > 5"));
    let (out, r) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(computed(&r), ["export", "keep", "spiking"]);
    assert_eq!(r.stage("sweeps").unwrap().action, "reused");
    assert_eq!(r.stage("amplitudes").unwrap().action, "reused");
    let rows_after = r.stage("keep").unwrap().counters.rows_out;
    assert!(rows_after < rows_before, "a stricter filter keeps fewer rows ({rows_after} vs {rows_before})");
    // The old checkpoint stays until gc; the new one has a new fingerprint.
    assert_eq!(checkpoint::list(&p.run_dir().join("spiking")).len(), 2);
    let gc = p.cli(&["gc", "pipeline.toml"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert_eq!(checkpoint::list(&p.run_dir().join("spiking")).len(), 1);
    assert!(p.run().1.stages.iter().all(|s| s.action == "reused"), "gc keeps the current checkpoints");
}

#[test]
fn replay_regenerates_the_stage_and_descendants_and_leaves_upstream_untouched() {
    let p = Project::new(PIPELINE);
    assert!(p.run().0.status.success());
    let upstream: Vec<Vec<u8>> = ["sweeps", "spiking", "amplitudes"].iter().map(|s| p.manifest_bytes(s)).collect();
    let keep_before = p.manifest_bytes("keep");
    let out = p.cli(&["replay", "pipeline.toml", "--from", "keep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = p.report();
    assert_eq!(computed(&r), ["export", "keep"]);
    let upstream_after: Vec<Vec<u8>> = ["sweeps", "spiking", "amplitudes"].iter().map(|s| p.manifest_bytes(s)).collect();
    assert_eq!(upstream, upstream_after);
    assert_ne!(keep_before, p.manifest_bytes("keep"), "keep must be regenerated");
    // Same fingerprint, same rows.
    let a: serde_json::Value = serde_json::from_slice(&keep_before).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&p.manifest_bytes("keep")).unwrap();
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(a["rows"], b["rows"]);
}

#[test]
fn replay_without_the_upstream_checkpoint_fails_clearly() {
    let p = Project::new(PIPELINE);
    assert!(p.run().0.status.success());
    let keep_before = p.manifest_bytes("keep");
    std::fs::remove_dir_all(p.run_dir().join("spiking")).unwrap();
    let out = p.cli(&["replay", "pipeline.toml", "--from", "keep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("stage `spiking` has no complete checkpoint"), "{err}");
    assert!(err.contains("neurostream run pipeline.toml"), "{err}");
    assert_eq!(keep_before, p.manifest_bytes("keep"), "nothing is recomputed when replay cannot start");
    let bad = p.cli(&["replay", "pipeline.toml", "--from", "kep"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("did you mean `keep`?"), "{}", stderr(&bad));
}

#[test]
fn one_bad_file_fails_alone_and_the_run_exits_1_with_the_resume_command() {
    let p = Project::new(PIPELINE);
    // A truncated copy of a real file, and a real Parquet file with other columns.
    let good = std::fs::read(p.path().join("data/mtg_spikecounts_a.parquet")).unwrap();
    std::fs::write(p.path().join("data/mtg_spikecounts_c_truncated.parquet"), &good[..good.len() / 2]).unwrap();
    let (out, r) = p.run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failures = &r.stage("sweeps").unwrap().failures;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].unit.ends_with("mtg_spikecounts_c_truncated.parquet"), "{failures:?}");
    // The good files went all the way through.
    assert_eq!(r.stage("sweeps").unwrap().counters.rows_out, 3000);
    assert_eq!(r.stage("amplitudes").unwrap().counters.rows_out, 3000);
    assert!(p.path().join("out/spiking.parquet").exists());
    let err = stderr(&out);
    assert!(err.contains("mtg_spikecounts_c_truncated.parquet"), "{err}");
    assert!(err.contains("resume with: neurostream run pipeline.toml"), "{err}");
    let status = p.cli(&["status", "pipeline.toml"]);
    let st = stdout(&status);
    assert!(st.lines().any(|l| l.starts_with("sweeps") && l.contains("error")), "{st}");
    assert!(st.contains("mtg_spikecounts_c_truncated.parquet"), "{st}");
    // Fixing the input (removing the bad file) makes the next run complete and reuse nothing stale.
    std::fs::remove_file(p.path().join("data/mtg_spikecounts_c_truncated.parquet")).unwrap();
    let (out, r) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(r.stage("sweeps").unwrap().failures.is_empty());
}

#[test]
fn a_file_with_an_unexpected_schema_fails_alone_naming_the_file() {
    let p = Project::new(PIPELINE);
    // A checkpoint of another stage is a real Parquet file with fewer columns.
    let other = Project::new(PIPELINE);
    assert!(other.run().0.status.success());
    let cp = checkpoint::list(&other.run_dir().join("amplitudes")).remove(0);
    std::fs::copy(&cp.part_files()[0], p.path().join("data/mtg_spikecounts_z_other.parquet")).unwrap();
    let (out, r) = p.run();
    assert_eq!(out.status.code(), Some(1));
    let f = &r.stage("sweeps").unwrap().failures;
    assert_eq!(f.len(), 1);
    assert!(f[0].unit.ends_with("mtg_spikecounts_z_other.parquet") && f[0].message.contains("unexpected schema"), "{f:?}");
}

#[test]
fn unwritable_run_directory_is_reported_with_its_path() {
    let p = Project::new(&PIPELINE.replace("seed = 1", "seed = 1\nrun_dir = \"blocker/runs\""));
    std::fs::write(p.path().join("blocker"), b"a file where a folder should be").unwrap();
    let out = p.cli(&["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("blocker/runs"), "{}", stderr(&out));
    assert!(!p.path().join("out").exists());
}

#[test]
fn checkpoints_open_in_pyarrow_with_columns_types_units_and_rows() {
    let p = Project::new(PIPELINE);
    assert!(p.run().0.status.success());
    let cp = checkpoint::list(&p.run_dir().join("keep")).remove(0);
    let script = r#"
import json, sys, pyarrow.parquet as pq, pyarrow as pa
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
t = pq.read_table([d + "/" + p["file"] for p in m["parts"]])
assert t.num_rows == m["rows"], (t.num_rows, m["rows"])
assert t.column_names == ["recording_id", "sweep", "stimulus_amplitude", "spike_count"], t.column_names
assert t.schema.field("recording_id").type == pa.string()
assert t.schema.field("sweep").type == pa.int64()
assert t.schema.field("stimulus_amplitude").type == pa.float64()
assert t.schema.field("stimulus_amplitude").metadata[b"unit"] == b"pA"
assert min(t.column("spike_count").to_pylist()) > 0
md = pq.ParquetFile(d + "/" + m["parts"][0]["file"]).metadata
assert md.row_group(0).column(0).compression == "ZSTD", md.row_group(0).column(0).compression
print("rows", t.num_rows)
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&cp.dir).output().expect("python3 with pyarrow (installed by .ci/run)");
    assert!(out.status.success(), "pyarrow check failed:\n{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("rows {}", cp.manifest.rows)));
    // Row groups are not one per small batch: 500-row batches go into one row group.
    assert!(cp.manifest.batches > 1);
    let f = std::fs::File::open(&cp.part_files()[0]).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    use parquet::file::reader::FileReader;
    assert_eq!(reader.metadata().num_row_groups(), 1);
}

/// Disk full while writing checkpoints: the run fails with exit 1, naming the stage and the
/// operating system's reason; no partial checkpoint is visible; once space is back, the same
/// command completes. The run directory lives on a real 48 KiB tmpfs when this process may mount
/// one (ENOSPC); otherwise the binary runs under RLIMIT_FSIZE (EFBIG from the same write calls,
/// with SIGXFSZ ignored as a shell's `trap '' XFSZ` does).
#[test]
fn disk_full_while_writing_fails_cleanly_and_a_rerun_completes() {
    let p = Project::new(&PIPELINE.replace("seed = 1", "seed = 1\nrun_dir = \"small/runs\""));
    let small = p.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48k", "tmpfs"])
        .arg(&small)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let out = if mounted {
        p.cli(&["run", "pipeline.toml"])
    } else {
        std::process::Command::new("bash")
            .args(["-c", &format!("trap '' XFSZ; ulimit -f 96; exec {} run pipeline.toml", bin())])
            .current_dir(p.path())
            .output()
            .unwrap()
    };
    let err = stderr(&out);
    let cleanup = || {
        if mounted {
            let _ = std::process::Command::new("umount").arg(&small).status();
        }
    };
    if out.status.code() != Some(1) || !(err.contains("No space left on device") || err.contains("File too large")) {
        cleanup();
        panic!("expected exit 1 with the OS reason (mounted tmpfs: {mounted}), got {:?}:\n{err}", out.status.code());
    }
    let stage_named = ["sweeps", "spiking", "keep", "amplitudes", "export"].iter().any(|s| err.contains(&format!("`{s}`")));
    let run_dir = small.join("runs/core");
    // Every visible checkpoint is complete: its manifest parses and its parts are readable.
    let mut visible = 0;
    for stage in ["sweeps", "spiking", "keep", "amplitudes"] {
        for cp in checkpoint::list(&run_dir.join(stage)) {
            visible += 1;
            let m = std::fs::read_to_string(cp.dir.join("manifest.json")).unwrap();
            assert!(serde_json::from_str::<serde_json::Value>(&m).is_ok(), "{stage}: manifest {m}");
            for part in std::fs::read_dir(&cp.dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "parquet")) {
                let f = std::fs::File::open(part.path()).unwrap();
                assert!(parquet::file::reader::SerializedFileReader::new(f).is_ok(), "{} is not a complete Parquet file", part.path().display());
            }
        }
    }
    // Space comes back: the same command completes and exports every row.
    let ok = if mounted {
        let r = std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&small).status().unwrap();
        assert!(r.success());
        p.cli(&["run", "pipeline.toml"])
    } else {
        p.cli(&["run", "pipeline.toml"])
    };
    let ok_err = stderr(&ok);
    cleanup();
    assert!(stage_named, "the message must name the stage:\n{err}");
    assert!(ok.status.success(), "rerun after the disk was freed: {ok_err}");
    eprintln!("disk full via {}: {visible} complete checkpoints visible after the failure", if mounted { "tmpfs" } else { "RLIMIT_FSIZE" });
}
