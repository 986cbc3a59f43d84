//! The study pipelines (`pipelines/glif_inference.toml`, study 3; `pipelines/allen_spikecounts.toml`,
//! study 1) run through the real binary on small subsets of their own data: the pipeline files
//! themselves are read and only the grid or the list of cells is cut down, so these tests follow
//! the shipped files. They check the shape of metrics.json and that no out-of-fold prediction was
//! made by a model that trained on the same group (stimulus for the split, cell for the
//! leave-one-cell-out scheme), reading the fold and group columns of the predictions table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `text` as `pipelines/<name>` of a fresh temp project (paths to the repository's data
/// made absolute) and runs it; returns the project folder.
fn run_pipeline(name: &str, text: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("pipelines")).unwrap();
    let data = format!("{}/", repo().join("data").display());
    let text = text.replace("\"../data/", &format!("\"{data}"));
    std::fs::write(tmp.path().join("pipelines").join(name), &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_neurostream"))
        .args(["run", &format!("pipelines/{name}")])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    tmp
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn metrics(run_dir: &Path, stage: &str) -> serde_json::Value {
    let p = run_dir.join("artifacts").join(stage).join("metrics.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A target's pooled scores hold every regression metric, finite.
fn assert_scores(scores: &serde_json::Value, rows: u64, what: &str) {
    assert_eq!(scores["rows"].as_u64(), Some(rows), "{what}: {scores}");
    for m in ["r2", "mae", "rmse", "pearson_r"] {
        let v = scores["values"][m].as_f64().unwrap_or_else(|| panic!("{what}: no {m} in {scores}"));
        assert!(v.is_finite(), "{what}: {m} = {v}");
    }
}

#[test]
fn glif_inference_on_a_3_to_the_5_grid() {
    let text = std::fs::read_to_string(repo().join("pipelines/glif_inference.toml")).unwrap();
    // Keep the 1st, 3rd and 5th value of every swept parameter: 3^5 = 243 configs.
    let mut cut = String::new();
    for line in text.lines() {
        if let (Some(a), Some(b)) = (line.find("values = ["), line.rfind(']')) {
            let inner = &line[a + 10..b];
            let v: Vec<&str> = inner.split(',').map(str::trim).collect();
            assert_eq!(v.len(), 5, "{line}");
            cut.push_str(&format!("{}values = [{}, {}, {}]{}\n", &line[..a], v[0], v[2], v[4], &line[b + 1..]));
        } else {
            cut.push_str(line);
            cut.push('\n');
        }
    }
    let tmp = run_pipeline("glif_inference.toml", &cut);
    let run_dir = tmp.path().join("pipelines/runs/glif_inference");
    let m = metrics(&run_dir, "infer");
    assert_eq!(m["kind"], "train.regress");
    assert_eq!(m["folds"], 1);
    assert_eq!(m["rows_used"].as_u64().unwrap() + m["rows_dropped_incomplete"].as_u64().unwrap(), 2 * 243);
    let targets = m["targets"].as_object().unwrap();
    assert_eq!(targets.keys().cloned().collect::<BTreeSet<_>>(), ["C", "El", "R_input", "dt", "th_inf"].map(String::from).into());
    let preds = read_csv(&tmp.path().join("runs/glif_inference/predictions.csv"));
    for (t, v) in targets {
        assert_scores(&v["pooled"], preds.len() as u64, t);
        assert_eq!(v["per_fold"].as_array().unwrap().len(), 1, "{t}");
    }
    // The split: every prediction is of a Noise 2 sweep, made by the model of fold 0, which saw
    // only Noise 1 sweeps; each config is predicted once.
    assert!(!preds.is_empty());
    assert!(preds.iter().all(|r| r["stimulus_kind"] == "noise2" && r["fold"] == "0"));
    let configs: BTreeSet<&str> = preds.iter().map(|r| r["config_index"].as_str()).collect();
    assert_eq!(configs.len(), preds.len());
    // dt is 1 / sampling_rate_hz, a feature: the one parameter the features fix exactly.
    for r in &preds {
        let (dt, p): (f64, f64) = (r["dt"].parse().unwrap(), r["dt_predicted"].parse().unwrap());
        assert!((dt - p).abs() < 1e-6 * dt, "dt {dt} predicted {p}");
    }
    for p in ["C", "El", "R_input", "th_inf"] {
        let truth: BTreeSet<String> = preds.iter().map(|r| r[p].clone()).collect();
        assert_eq!(truth.len(), 3, "{p}: the grid's three values");
    }
    // Issue 6's goal on the identifiable parameters: features.membrane fits R, C and El from the
    // subthreshold samples (Allen's GLIF fitting), so the new noise realisation changes little.
    for p in ["C", "El", "R_input"] {
        let r2 = targets[p]["pooled"]["values"]["r2"].as_f64().unwrap();
        assert!(r2 >= 0.95, "{p}: test R² {r2}");
    }
}

/// The Allen sweeps of `cells` (folders under data/allen_glif_cells) straight from the JSON: per
/// specimen, (sweep, stimulus name, spike count with null = 0) of the current-clamp sweeps.
fn allen_sweeps(cells: &[&str]) -> BTreeMap<String, Vec<(i64, String, i64)>> {
    let mut out: BTreeMap<String, Vec<(i64, String, i64)>> = BTreeMap::new();
    for c in cells {
        let p = repo().join("data/allen_glif_cells").join(c).join("ephys_sweeps.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        for s in v.as_array().unwrap() {
            if matches!(s["stimulus_units"].as_str(), Some("Amps" | "pA")) {
                out.entry(s["specimen_id"].as_u64().unwrap().to_string()).or_default().push((
                    s["sweep_number"].as_i64().unwrap(),
                    s["stimulus_name"].as_str().unwrap().to_string(),
                    s["num_spikes"].as_i64().unwrap_or(0),
                ));
            }
        }
    }
    out
}

#[test]
fn allen_spikecounts_on_four_cells() {
    let cells = ["neuronal_model_522987536", "neuronal_model_543898470", "neuronal_model_591248063", "neuronal_model_597605616"];
    let text = std::fs::read_to_string(repo().join("pipelines/allen_spikecounts.toml")).unwrap();
    let paths: Vec<String> = cells.iter().map(|c| format!("\"../data/allen_glif_cells/{c}/ephys_sweeps.json\"")).collect();
    let old = "paths = [\"../data/allen_glif_cells/*/ephys_sweeps.json\", \"../data/glif_483101699/ephys_sweeps.json\"]";
    assert!(text.contains(old), "the pipeline's cell list changed; update this test");
    let text = text.replace(old, &format!("paths = [{}]", paths.join(", ")));
    let tmp = run_pipeline("allen_spikecounts.toml", &text);
    let run_dir = tmp.path().join("pipelines/runs/allen_spikecounts");
    let truth = allen_sweeps(&cells);
    assert_eq!(truth.len(), 4);
    let n_sweeps: usize = truth.values().map(Vec::len).sum();
    let by_name = |name: &str| truth.values().flatten().filter(|s| s.1 == name).count() as u64;

    // The learned model, leave one cell out, reported per stimulus type.
    let m = metrics(&run_dir, "counts");
    assert_eq!(m["rows_used"].as_u64().unwrap() + m["rows_dropped_incomplete"].as_u64().unwrap(), n_sweeps as u64);
    assert_eq!(m["rows_dropped_incomplete"], 0, "every cell has its GLIF model");
    assert_eq!(m["folds"], 4, "one fold per cell");
    let t = &m["targets"]["spike_count"];
    assert_scores(&t["pooled"], n_sweeps as u64, "pooled");
    assert_eq!(t["per_fold"].as_array().unwrap().len(), 4);
    let by = t["by_stimulus_name"].as_object().unwrap();
    let names: BTreeSet<&str> = truth.values().flatten().map(|s| s.1.as_str()).collect();
    assert_eq!(by.keys().map(String::as_str).collect::<BTreeSet<_>>(), names);
    for (name, s) in by {
        assert_eq!(s["rows"].as_u64(), Some(by_name(name)), "{name}");
    }
    assert_scores(&by["Long Square"], by_name("Long Square"), "Long Square");

    // No fold tested a cell it trained on: each cell's rows all carry one fold, a different fold
    // per cell (the model of a fold trains on every row outside it). Labels are Allen's counts.
    let preds = read_preds(&run_dir, "counts");
    let mut fold_of: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (cell, sweep, fold, y) in &preds {
        fold_of.entry(cell.clone()).or_default().insert(*fold);
        let want = truth[cell].iter().find(|s| s.0 == *sweep).unwrap().2;
        assert_eq!(*y, want as f64, "{cell}/{sweep}");
    }
    assert_eq!(fold_of.len(), 4);
    assert!(fold_of.values().all(|f| f.len() == 1), "{fold_of:?}");
    assert_eq!(fold_of.values().flatten().collect::<BTreeSet<_>>().len(), 4);

    // The GLIF baseline: every Long Square sweep simulated, the other types left out and counted.
    let base = read_csv(&tmp.path().join("runs/allen_spikecounts/glif_baseline.csv"));
    let pooled = base.iter().find(|r| r["scope"] == "pooled").unwrap();
    assert_eq!(pooled["rows"].parse::<usize>().unwrap() as u64, by_name("Long Square"));
    assert_eq!(pooled["rows_skipped"].parse::<usize>().unwrap(), n_sweeps - by_name("Long Square") as usize);
    let ls = base.iter().find(|r| r["scope"] == "stimulus_name=Long Square").unwrap();
    assert!(ls["r2"].parse::<f64>().unwrap().is_finite());

    // Excitability from other sweep types: a Short Square row never carries the Short Square
    // threshold; every other row of a cell carries the smallest Short Square amplitude whose
    // sweep spiked, as read from the JSON here.
    let exc = read_columns(&run_dir, "excitability", &["recording_id", "stimulus_name"], &["short_square_threshold_pa", "stimulus_amplitude"]);
    assert_eq!(exc.len(), n_sweeps);
    for c in cells {
        let p = repo().join("data/allen_glif_cells").join(c).join("ephys_sweeps.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let v = v.as_array().unwrap();
        let id = v[0]["specimen_id"].as_u64().unwrap().to_string();
        let want = v
            .iter()
            .filter(|s| s["stimulus_name"] == "Short Square" && s["num_spikes"].as_i64().unwrap_or(0) > 0)
            .map(|s| s["stimulus_absolute_amplitude"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        for (s, f) in exc.iter().filter(|(s, _)| s[0] == id) {
            if s[1] == "Short Square" {
                assert_eq!(f[0], None, "{id}: a Short Square row sees the Short Square threshold");
            } else {
                assert_eq!(f[0], Some(want), "{id}/{}", s[1]);
            }
        }
    }

    // The Long Square model and the study's own rows (amplitude only, five cell-grouped folds).
    let m = metrics(&run_dir, "counts_long_square");
    assert_eq!(m["rows_used"].as_u64(), Some(by_name("Long Square")));

    // The f-I basis: every Long Square row's drive is its amplitude over the median amplitude of
    // its cell's Noise 1 sweeps (as read from the JSON here), and the f-I model scores them all.
    let fi = read_columns(&run_dir, "fi_basis", &["recording_id", "stimulus_name"], &["drive_over_noise", "stimulus_amplitude", "fi_20"]);
    assert_eq!(fi.len() as u64, by_name("Long Square"));
    for c in cells {
        let p = repo().join("data/allen_glif_cells").join(c).join("ephys_sweeps.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let v = v.as_array().unwrap();
        let id = v[0]["specimen_id"].as_u64().unwrap().to_string();
        let mut noise: Vec<f64> = v.iter().filter(|s| s["stimulus_name"] == "Noise 1").map(|s| s["stimulus_absolute_amplitude"].as_f64().unwrap()).collect();
        noise.sort_by(f64::total_cmp);
        let n = noise.len();
        assert!(n > 0, "{id} has Noise 1 sweeps");
        let median = if n % 2 == 1 { noise[n / 2] } else { (noise[n / 2 - 1] + noise[n / 2]) / 2.0 };
        for (s, f) in fi.iter().filter(|(s, _)| s[0] == id) {
            assert_eq!(s[1], "Long Square");
            let want = f[1].unwrap() / median;
            assert!((f[0].unwrap() - want).abs() < 1e-12 * want.abs().max(1.0), "{id}: drive {:?} want {want}", f[0]);
            assert!(f[2].unwrap() >= 0.0, "{id}: a rectified drive times a count is never negative");
        }
    }
    let m = metrics(&run_dir, "counts_fi");
    assert_eq!(m["rows_used"].as_u64(), Some(by_name("Long Square")));
    assert_eq!(m["folds"], 4);
    let m = metrics(&run_dir, "study_counts");
    assert_eq!(m["rows_used"], 25_197);
    assert_eq!(m["folds"], 5);
    let mut fold_of: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (cell, _, fold, _) in read_preds(&run_dir, "study_counts") {
        fold_of.entry(cell).or_default().insert(fold);
    }
    assert_eq!(fold_of.len(), 353);
    assert!(fold_of.values().all(|f| f.len() == 1), "a cell in two folds");
}

/// The shipped pipeline on all 21 cells, cut to the stages the Long Square f-I model needs (the
/// other models, 25,197 study rows among them, are slow in a debug build and tested above): its
/// leave-one-cell-out R² on Long Square sweeps stays above a floor the measured 0.908
/// (docs/studies.md "Results") passes with margin, and no cell is both trained on and tested in
/// one fold.
#[test]
fn allen_spikecounts_long_square_fi_model_on_all_cells() {
    let text = std::fs::read_to_string(repo().join("pipelines/allen_spikecounts.toml")).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    let stages = doc.get_mut("stages").unwrap().as_table_mut().unwrap();
    for s in ["glif_baseline", "glif_baseline_csv", "counts", "study_rows", "study_counts", "counts_long_square"] {
        assert!(stages.remove(s).is_some(), "the pipeline has no stage `{s}`; update this test");
    }
    assert_eq!(stages.keys().map(String::as_str).collect::<BTreeSet<_>>(), ["counts_fi", "excitability", "fi_basis", "glif", "long_square", "sweeps"].into());
    let tmp = run_pipeline("allen_spikecounts.toml", &toml::to_string(&doc).unwrap());
    let run_dir = tmp.path().join("pipelines/runs/allen_spikecounts");
    let m = metrics(&run_dir, "counts_fi");
    assert_eq!(m["rows_used"], 606, "every Long Square sweep of the 21 cells");
    assert_eq!(m["rows_dropped_incomplete"], 0, "every cell has Noise 1 and Noise 2 sweeps");
    assert_eq!(m["folds"], 21);
    let r2 = m["targets"]["spike_count"]["by_stimulus_name"]["Long Square"]["values"]["r2"].as_f64().unwrap();
    assert!(r2 >= 0.85, "Long Square R² out of cell {r2} (measured 0.908)");
    let mut fold_of: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (cell, _, fold, _) in read_preds(&run_dir, "counts_fi") {
        fold_of.entry(cell).or_default().insert(fold);
    }
    assert_eq!(fold_of.len(), 21);
    assert!(fold_of.values().all(|f| f.len() == 1), "a cell in two folds");
}

/// (recording_id, sweep, fold, spike_count) of a training stage's out-of-fold table.
fn read_preds(run_dir: &Path, stage: &str) -> Vec<(String, i64, i64, f64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};
    let dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join(stage)).unwrap().flatten().map(|e| e.path()).filter(|p| p.join("manifest.json").exists()).collect();
    assert_eq!(dirs.len(), 1, "{stage}: one checkpoint");
    let mut out = Vec::new();
    for part in std::fs::read_dir(&dirs[0]).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        let file = std::fs::File::open(&part).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b.column_by_name("recording_id").unwrap().as_string::<i32>().clone();
            let sweep = b.column_by_name("sweep").unwrap().as_primitive::<Int64Type>().clone();
            let fold = b.column_by_name("fold").unwrap().as_primitive::<Int64Type>().clone();
            let y = b.column_by_name("spike_count").unwrap().as_primitive::<Float64Type>().clone();
            for r in 0..b.num_rows() {
                out.push((ids.value(r).to_string(), sweep.value(r), fold.value(r), y.value(r)));
            }
        }
    }
    out
}

/// String and float columns of a stage's checkpoint, row by row (null = None).
fn read_columns(run_dir: &Path, stage: &str, strings: &[&str], floats: &[&str]) -> Vec<(Vec<String>, Vec<Option<f64>>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    let dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join(stage)).unwrap().flatten().map(|e| e.path()).filter(|p| p.join("manifest.json").exists()).collect();
    assert_eq!(dirs.len(), 1, "{stage}: one checkpoint");
    let mut out = Vec::new();
    for part in std::fs::read_dir(&dirs[0]).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        let file = std::fs::File::open(&part).unwrap();
        for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
            let b = b.unwrap();
            let s: Vec<_> = strings.iter().map(|c| b.column_by_name(c).unwrap().as_string::<i32>().clone()).collect();
            let f: Vec<_> = floats.iter().map(|c| b.column_by_name(c).unwrap().as_primitive::<Float64Type>().clone()).collect();
            for r in 0..b.num_rows() {
                out.push((
                    s.iter().map(|a| a.value(r).to_string()).collect(),
                    f.iter().map(|a| (!a.is_null(r)).then(|| a.value(r))).collect(),
                ));
            }
        }
    }
    out
}
