//! The extracellular-unit and per-cell stages through the real binary on real files:
//! * CellExplorer ground-truth units (tests/fixtures/units_mat, six of CellExplorer's own
//!   `cell_metrics` files) -> `ingest.cellexplorer` -> `features.units` -> CSV, against the
//!   values CellExplorer computed and stored in those files (`cells_summary.csv` there);
//! * the two ABF step recordings (tests/fixtures/abf) -> `ingest.abf` -> `features.cell` /
//!   `features.subthreshold` -> CSV, against IPFX 2.1.2's LongSquareAnalysis
//!   (tests/fixtures/cellfeat/ipfx_cell_reference.json, made by the script beside it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostream")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(dir: &Path) -> Output {
    Command::new(bin()).args(["run", "p.toml"]).current_dir(dir).output().unwrap()
}

fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
}

/// A CSV file (no quoted commas in these tables) as rows of column -> text.
fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn num(row: &HashMap<String, String>, key: &str) -> f64 {
    row.get(key).unwrap_or_else(|| panic!("no column {key}")).parse().unwrap_or_else(|e| panic!("{key} = {:?}: {e}", row[key]))
}

// ---------------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------------

/// Ten and twenty kHz recordings, pyramidal cells and narrow interneurons (CellExplorer's types).
const UNIT_FILES: [&str; 6] = ["d561102", "d681104", "d711102", "d561106", "d611110", "d611111"];

const UNITS_PIPELINE: &str = r#"
[pipeline]
name = "u"

[stages.units]
kind = "ingest.cellexplorer"
paths = ["mat"]

[stages.features]
kind = "features.units"
inputs = ["units"]

[stages.csv]
kind = "sink.csv"
inputs = ["features"]
path = "out/units.csv"
"#;

fn units_workspace(stems: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("mat")).unwrap();
    for stem in stems {
        let name = format!("{stem}.cell_metrics.cellinfo.mat");
        std::fs::copy(fixtures().join("units_mat").join(&name), tmp.path().join("mat").join(&name)).unwrap();
    }
    std::fs::write(tmp.path().join("p.toml"), UNITS_PIPELINE).unwrap();
    tmp
}

/// CellExplorer's stored values, by file stem.
fn cellexplorer_summary() -> HashMap<String, HashMap<String, String>> {
    read_csv(&fixtures().join("units_mat/cells_summary.csv"))
        .into_iter()
        .map(|r| (r["file"].trim_end_matches(".cell_metrics.cellinfo.mat").to_string(), r))
        .collect()
}

/// Checks every output row against CellExplorer; returns the stems seen.
fn check_units_against_cellexplorer(rows: &[HashMap<String, String>]) -> Vec<String> {
    let summary = cellexplorer_summary();
    let (mut worst_ab, mut worst_rate) = (0.0f64, 0.0f64);
    let mut stems = Vec::new();
    for r in rows {
        let stem = r["file"].clone();
        let ce = &summary[&stem];
        assert_eq!(r["unit_id"], ce["UID"], "{stem}");
        assert_eq!(r["session"], stem, "{stem}");
        assert_eq!(r["putative_cell_type"], ce["putativeCellType"], "{stem}");
        assert_eq!(r["brain_region"], ce["brainRegion"], "{stem}");
        assert_eq!(r["ground_truth_source"], ce["groundTruth"], "{stem}");
        // `Juxta` names how the hc-1 cells were identified, not a class.
        assert_eq!(r["ground_truth"], "", "{stem}");
        assert_eq!(r["spike_count"], ce["n_spike_times"], "{stem}");
        let rate = num(r, "sampling_rate_hz");
        assert!(rate == 10_000.0 || rate == 20_000.0, "{stem}: {rate}");
        assert!(r["recording_id"].ends_with("-0") && r["recording_id"].len() == 18, "{stem}: {}", r["recording_id"]);
        // The kernel tests' tolerances (src/features/units.rs): the same deterministic
        // algorithm on CellExplorer's own waveform and spike times.
        let ttp = num(r, "trough_to_peak");
        assert!((ttp - num(ce, "troughToPeak_ms")).abs() < 1e-12, "{stem}: trough_to_peak {ttp} vs {}", ce["troughToPeak_ms"]);
        let ab = num(r, "ab_ratio");
        let e_ab = (ab - num(ce, "ab_ratio")).abs();
        assert!(e_ab < 1e-9, "{stem}: ab_ratio {ab} vs {}", ce["ab_ratio"]);
        let fr = num(r, "firing_rate");
        let e_fr = (fr - num(ce, "firingRate_Hz")).abs() / num(ce, "firingRate_Hz");
        assert!(e_fr < 1e-12, "{stem}: firing_rate {fr} vs {}", ce["firingRate_Hz"]);
        let bi = num(r, "burst_index_royer2012");
        let want = num(ce, "burstIndex_Royer2012");
        assert!((bi - want).abs() <= 1e-12 * want.max(1.0), "{stem}: burst index {bi} vs {want}");
        assert!(num(r, "acg_tau_rise").is_finite() && num(r, "half_width") > 0.0, "{stem}");
        worst_ab = worst_ab.max(e_ab);
        worst_rate = worst_rate.max(e_fr);
        stems.push(stem);
    }
    eprintln!("features.units vs CellExplorer: max |ab_ratio err| {worst_ab:e}, max rel firing-rate err {worst_rate:e}");
    stems.sort();
    stems
}

#[test]
fn unit_features_match_cellexplorer_on_its_ground_truth_files() {
    let tmp = units_workspace(&UNIT_FILES);
    let out = run(tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    let rows = read_csv(&tmp.path().join("out/units.csv"));
    assert_eq!(rows.len(), 6);
    let mut want: Vec<String> = UNIT_FILES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(check_units_against_cellexplorer(&rows), want);
    // both classes and both sampling rates are covered
    let types: std::collections::HashSet<&str> = rows.iter().map(|r| r["putative_cell_type"].as_str()).collect();
    assert_eq!(types.len(), 2, "{types:?}");
    let rates: std::collections::HashSet<&str> = rows.iter().map(|r| r["sampling_rate_hz"].as_str()).collect();
    assert_eq!(rates.len(), 2, "{rates:?}");
}

#[test]
fn truncated_and_foreign_mat_files_fail_alone() {
    let tmp = units_workspace(&UNIT_FILES[..3]);
    let bytes = std::fs::read(fixtures().join("units_mat/d611110.cell_metrics.cellinfo.mat")).unwrap();
    std::fs::write(tmp.path().join("mat/broken.cell_metrics.cellinfo.mat"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(tmp.path().join("mat/garbage.mat"), b"MATLAB? no, just some text").unwrap();
    let out = run(tmp.path());
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("broken.cell_metrics.cellinfo.mat"), "{text}");
    assert!(text.contains("garbage.mat") && text.contains("not a MATLAB .mat file"), "{text}");
    // the three good files went through every stage
    let rows = read_csv(&tmp.path().join("out/units.csv"));
    let mut want: Vec<String> = UNIT_FILES[..3].iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(check_units_against_cellexplorer(&rows), want);
}
