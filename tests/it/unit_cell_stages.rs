//! The extracellular-unit and per-cell stages through the real binary on real files:
//! * CellExplorer ground-truth units (tests/fixtures/units_mat, six of CellExplorer's own
//!   `cell_metrics` files) -> `ingest.cellexplorer` -> `features.units` -> CSV, against the
//!   values CellExplorer computed and stored in those files (`cells_summary.csv` there);
//! * the two ABF step recordings (tests/fixtures/abf) -> `ingest.abf` -> `features.cell` /
//!   `features.subthreshold` -> CSV, against IPFX 2.1.2's LongSquareAnalysis
//!   (tests/fixtures/cellfeat/ipfx_cell_reference.json, made by the script beside it).

use std::collections::HashMap;

use crate::support::{ABF_FILES, UNIT_FILES, abf_workspace, fixture, output_text, read_csv, run_workspace, unit_workspace};

fn num(row: &HashMap<String, String>, key: &str) -> f64 {
    row.get(key).unwrap_or_else(|| panic!("no column {key}")).parse().unwrap_or_else(|e| panic!("{key} = {:?}: {e}", row[key]))
}

// ---------------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------------

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

/// CellExplorer's stored values, by file stem.
fn cellexplorer_summary() -> HashMap<String, HashMap<String, String>> {
    read_csv(&fixture("units_mat/cells_summary.csv"))
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
    let tmp = unit_workspace(UNITS_PIPELINE, &UNIT_FILES);
    let out = run_workspace(tmp.path());
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
    let tmp = unit_workspace(UNITS_PIPELINE, &UNIT_FILES[..3]);
    let bytes = std::fs::read(fixture("units_mat/d611110.cell_metrics.cellinfo.mat")).unwrap();
    std::fs::write(tmp.path().join("mat/broken.cell_metrics.cellinfo.mat"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(tmp.path().join("mat/garbage.mat"), b"MATLAB? no, just some text").unwrap();
    let out = run_workspace(tmp.path());
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

// ---------------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------------

/// IPFX refuses its 10 kHz default filter at 20 kHz; the reference ran with 5 kHz
/// (tests/fixtures/cellfeat/README.md), and with the rate at rheobase + 50 pA.
const CELL_PIPELINE: &str = r#"
[pipeline]
name = "c"

[stages.sweeps]
kind = "ingest.abf"
paths = ["abf"]

[stages.cells]
kind = "features.cell"
inputs = ["sweeps"]
filter_khz = 5
rate_at_rheobase_offset_pa = 50

[stages.cells_csv]
kind = "sink.csv"
inputs = ["cells"]
path = "out/cells.csv"

[stages.sub]
kind = "features.subthreshold"
inputs = ["sweeps"]

[stages.sub_csv]
kind = "sink.csv"
inputs = ["sub"]
path = "out/subthreshold.csv"
"#;

fn ipfx_reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("cellfeat/ipfx_cell_reference.json")).unwrap()).unwrap()
}

fn opt(row: &HashMap<String, String>, key: &str) -> Option<f64> {
    let v = row.get(key).unwrap_or_else(|| panic!("no column {key}"));
    (!v.is_empty()).then(|| v.parse().unwrap_or_else(|e| panic!("{key} = {v:?}: {e}")))
}

/// The file of a cell row, by its sweep count (17 vs 16 sweeps).
fn stem_of(sweeps: usize) -> &'static str {
    match sweeps {
        17 => ABF_FILES[0],
        16 => ABF_FILES[1],
        n => panic!("unexpected sweep count {n}"),
    }
}

#[test]
fn cell_and_subthreshold_features_match_ipfx_on_real_abf_steps() {
    let tmp = abf_workspace(CELL_PIPELINE, &ABF_FILES);
    let out = run_workspace(tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    let doc = ipfx_reference();
    let cells = read_csv(&tmp.path().join("out/cells.csv"));
    assert_eq!(cells.len(), 2);
    let mut stem_of_id = HashMap::new();
    let (mut compared, mut worst_rel, mut worst_mv) = (0, 0.0f64, 0.0f64);
    for c in &cells {
        let name = stem_of(num(c, "sweep_count") as usize);
        stem_of_id.insert(c["recording_id"].clone(), name);
        let file = &doc["files"][name];
        let r = &file["ephys_features_record"];
        // the window found from the commands is IPFX's
        assert_eq!(num(c, "window_start"), file["window"]["start_s"].as_f64().unwrap(), "{name}");
        assert_eq!(num(c, "window_end"), file["window"]["end_s"].as_f64().unwrap(), "{name}");
        assert_eq!(num(c, "rheobase_sweep"), r["rheobase_sweep_num"].as_f64().unwrap(), "{name}");
        assert_eq!(num(c, "hero_sweep"), r["thumbnail_sweep_num"].as_f64().unwrap(), "{name}");
        assert_eq!(opt(c, "rheobase_i"), file["cell"]["rheobase_i"].as_f64(), "{name}");
        // The kernel test's tolerances (src/features/cell.rs): voltages within 0.1 mV, times
        // within half a sample, ratios / slopes / resistances / tau within 1 %.
        for (key, ours) in [
            ("vrest", "vrest"),
            ("vm_for_sag", "vm_for_sag"),
            ("threshold_v_long_square", "threshold_v_long_square"),
            ("peak_v_long_square", "peak_v_long_square"),
            ("trough_v_long_square", "trough_v_long_square"),
            ("fast_trough_v_long_square", "fast_trough_v_long_square"),
            ("slow_trough_v_long_square", "slow_trough_v_long_square"),
        ] {
            match r[key].as_f64() {
                None => assert_eq!(opt(c, ours), None, "{name} {key}: IPFX has none"),
                Some(x) => {
                    let e = (opt(c, ours).unwrap_or_else(|| panic!("{name} {key} missing")) - x).abs();
                    assert!(e <= 0.1, "{name} {key}: ours {} ipfx {x}", c[ours]);
                    worst_mv = worst_mv.max(e);
                    compared += 1;
                }
            }
        }
        for key in
            ["threshold_t_long_square", "peak_t_long_square", "trough_t_long_square", "fast_trough_t_long_square", "slow_trough_t_long_square", "latency"]
        {
            match r[key].as_f64() {
                None => assert_eq!(opt(c, key), None, "{name} {key}: IPFX has none"),
                Some(x) => {
                    assert!((opt(c, key).unwrap() - x).abs() <= 0.5 / 20_000.0, "{name} {key}: ours {} ipfx {x}", c[key]);
                    compared += 1;
                }
            }
        }
        for (key, ours) in [
            ("ri", "input_resistance"),
            ("sag", "sag"),
            ("tau", "tau"),
            ("f_i_curve_slope", "f_i_curve_slope"),
            ("adaptation", "adaptation"),
            ("avg_isi", "avg_isi"),
            ("upstroke_downstroke_ratio_long_square", "upstroke_downstroke_ratio_long_square"),
            ("threshold_i_long_square", "threshold_i_long_square"),
        ] {
            let x = r[key].as_f64().unwrap();
            let e = ((opt(c, ours).unwrap_or_else(|| panic!("{name} {ours} missing")) - x) / x).abs();
            assert!(e <= 0.01, "{name} {key}: ours {} ipfx {x} (rel {e:e})", c[ours]);
            worst_rel = worst_rel.max(e);
            compared += 1;
        }
        let rheo = file["cell"]["rheobase_i"].as_f64().unwrap();
        let at_step = file["sweeps"].as_array().unwrap().iter().find(|s| s["stim_amp_pa"].as_f64() == Some(rheo + 50.0)).unwrap();
        assert_eq!(opt(c, "avg_rate_at_step"), at_step["avg_rate_hz"].as_f64(), "{name} rate at rheobase + 50 pA");
        // only IPFX's NaN features are reported missing, with a reason
        let missing: Vec<&str> = c["missing"].split("; ").map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(missing, ["slow_trough_v_long_square", "slow_trough_t_long_square"], "{name}: {}", c["missing"]);
    }
    assert_eq!(compared, 38, "values compared");
    eprintln!("features.cell vs IPFX: {compared} values, max |dV| {worst_mv:e} mV, max rel error {worst_rel:e}");

    // Per sweep: IPFX's sweep table (stimulus amplitude, baseline, peak deflection, sag) and
    // the time constant of each hyperpolarizing sweep fitted to its own peak.
    let sub = read_csv(&tmp.path().join("out/subthreshold.csv"));
    assert_eq!(sub.len(), 33);
    let (mut taus, mut worst_tau) = (0, 0.0f64);
    for row in &sub {
        let name = stem_of_id[&row["recording_id"]];
        let s: usize = row["sweep"].parse().unwrap();
        let r = &doc["files"][name]["sweeps"][s];
        let label = format!("{name}[{s}]");
        assert_eq!(opt(row, "stim_amp"), r["stim_amp_pa"].as_f64(), "{label}");
        for (key, ours) in [("v_baseline_mv", "baseline_v"), ("peak_deflect_mv", "peak_deflection")] {
            let x = r[key].as_f64().unwrap();
            assert!((num(row, ours) - x).abs() <= 1e-9, "{label} {key}: ours {} ipfx {x}", row[ours]);
        }
        assert_eq!(opt(row, "min_v"), r["deflect_min"]["v_mv"].as_f64(), "{label}");
        let sag = r["sag"].as_f64().unwrap();
        assert!(((num(row, "sag") - sag) / sag).abs() <= 1e-9, "{label} sag: ours {} ipfx {sag}", row["sag"]);
        if r["stim_amp_pa"].as_f64().unwrap() < 0.0 {
            match r["tau_no_max_fit_end"]["tau_s"].as_f64() {
                None => {
                    assert_eq!(opt(row, "tau"), None, "{label}: IPFX gives NaN");
                    assert_eq!(row["tau_status"], "low_signal_to_noise", "{label}");
                }
                Some(t) => {
                    let e = ((num(row, "tau") / 1e3 - t) / t).abs();
                    assert!(e <= 0.01, "{label} tau: ours {} ms ipfx {t} s", row["tau"]);
                    assert_eq!(row["tau_status"], "fitted", "{label}");
                    worst_tau = worst_tau.max(e);
                    taus += 1;
                }
            }
        } else {
            assert_eq!((opt(row, "tau"), row["tau_status"].as_str()), (None, "not_hyperpolarizing"), "{label}");
        }
    }
    assert!(taus >= 3, "only {taus} time constants compared");
    eprintln!("features.subthreshold vs IPFX: 33 sweeps, {taus} taus, max tau rel error {worst_tau:e}");
}

#[test]
fn a_window_outside_the_sweeps_fails_each_cell_by_name() {
    // An explicit window past the end of the 3 s sweeps: features.cell fails both cells, each
    // named by its recording id with the sweep and the field; features.subthreshold (window from
    // the commands) still completes.
    let tmp = abf_workspace(CELL_PIPELINE, &ABF_FILES);
    let pipeline = CELL_PIPELINE.replace("rate_at_rheobase_offset_pa = 50", "start_s = 2.5\nend_s = 3.5");
    std::fs::write(tmp.path().join("p.toml"), pipeline).unwrap();
    let out = run_workspace(tmp.path());
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("cells") && l.contains("FAILED for")).collect();
    assert_eq!(failed.len(), 2, "{text}");
    for l in failed {
        assert!(l.contains("sweep 0: stimulus end = 3.5 s lies outside the trace"), "{l}");
    }
    assert_eq!(read_csv(&tmp.path().join("out/subthreshold.csv")).len(), 33);
}
