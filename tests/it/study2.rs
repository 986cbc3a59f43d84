//! Study 2 (Stringer et al. image-category decoding) through the real binary: `ingest.natimg` ->
//! `preprocess.spontaneous` -> `preprocess.voxelize` -> `train.classify` on a tiny natimg2800-layout
//! recording (tests/fixtures/natimg/natimg_tiny.mat, made by scripts/make_natimg_synthetic.py), with
//! the real MouseLand class labels. The voxel values are checked against the study's own
//! preprocessing run in numpy/scipy (tests/fixtures/natimg/tiny_reference.py), the occupancy
//! report against numpy's bin counts, and the baselines against the label counts.

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int64Type};

use crate::support::{cli, fixture, output_text, read_parquet, workspace};

const PIPELINE: &str = r#"
[pipeline]
name = "study2"
seed = 3

[stages.recordings]
kind = "ingest.natimg"
paths = ["data/natimg_tiny.mat"]
classes = "data/stimuli_class_assignment_confident.mat"

[stages.normalized]
kind = "preprocess.spontaneous"
inputs = ["recordings"]
n_components = 8

[stages.voxels]
kind = "preprocess.voxelize"
inputs = ["normalized"]
bins = [3, 3, 2]
artifacts = "out/voxels"

[stages.voxel_table]
kind = "sink.parquet"
inputs = ["voxels"]
path = "out/voxels.parquet"

[stages.decode]
kind = "train.classify"
inputs = ["voxels"]
features = ["voxels"]
target = "label"
model = { model = "logistic", alpha = 1.0 }
validation = { method = "stratified", k = 3 }
balance_classes = true
keep = ["recording_id", "trial"]
artifacts = "out/decode"

[stages.predictions]
kind = "sink.csv"
inputs = ["decode"]
path = "out/predictions.csv"
"#;

#[test]
fn natimg_pipeline_matches_study_preprocessing_and_reports_occupancy_and_baselines() {
    let tmp = workspace(
        PIPELINE,
        &[
            ("natimg/natimg_tiny.mat", "data/natimg_tiny.mat"),
            ("nwbmat/stimuli_class_assignment_confident.mat", "data/stimuli_class_assignment_confident.mat"),
        ],
    );
    let dir = tmp.path();
    let out = cli(dir, &["run", "p.toml", "--quiet"]);
    let text = output_text(&out);
    assert!(out.status.success(), "run failed:\n{text}");

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("natimg/tiny_reference.json")).unwrap()).unwrap();

    // Voxel table: gray screens dropped, spontaneous frames consumed, one row per presentation.
    let b = read_parquet(&dir.join("out/voxels.parquet"));
    assert_eq!(b.num_rows() as u64, r["presentations_kept"].as_u64().unwrap());
    assert!(b.column_by_name("activity").is_none() && b.column_by_name("neuron_xyz").is_none());
    let trials: Vec<i64> = b.column_by_name("trial").unwrap().as_primitive::<Int64Type>().values().to_vec();
    let ref_trials: Vec<i64> = serde_json::from_value(r["trial"].clone()).unwrap();
    assert_eq!(trials, ref_trials);
    let labels: Vec<String> = b.column_by_name("label").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect();
    let ref_labels: Vec<String> = serde_json::from_value(r["label"].clone()).unwrap();
    assert_eq!(labels, ref_labels, "labels from the real class assignment, 0-based image index");
    let voxels = b.column_by_name("voxels").unwrap().as_fixed_size_list();
    assert_eq!(voxels.value_length(), 18);
    let ref_vox: Vec<Vec<f64>> = serde_json::from_value(r["voxels_first_50"].clone()).unwrap();
    for (row, expected) in ref_vox.iter().enumerate() {
        let v = voxels.value(row);
        let v = v.as_primitive::<Float32Type>();
        for (j, e) in expected.iter().enumerate() {
            let got = f64::from(v.value(j));
            assert!((got - e).abs() <= 1e-4 * (1.0 + e.abs()), "row {row} voxel {j}: {got} vs numpy/scipy {e}");
        }
    }

    // Occupancy: per-row counts and occupancy.json against numpy's bin counts (inclusive edges).
    let counts: Vec<u64> = serde_json::from_value(r["neurons_per_voxel"].clone()).unwrap();
    let empty = counts.iter().filter(|&&c| c == 0).count() as i64;
    assert!(empty > 0, "the fixture has empty voxels, so the report is exercised");
    let empties = b.column_by_name("voxels_empty").unwrap().as_primitive::<Int64Type>();
    let occupied = b.column_by_name("voxels_occupied").unwrap().as_primitive::<Int64Type>();
    assert!(empties.values().iter().all(|&e| e == empty) && occupied.values().iter().all(|&o| o == 18 - empty));
    let occ: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/voxels/occupancy.json")).unwrap()).unwrap();
    let rec = &occ["recordings"][0];
    assert_eq!(rec["neurons"].as_u64(), r["neurons"].as_u64());
    assert_eq!(rec["voxels_empty"].as_i64(), Some(empty));
    let got: Vec<u64> = serde_json::from_value(rec["neurons_per_voxel"].clone()).unwrap();
    assert_eq!(got, counts);
    assert_eq!(rec["empty_voxels"].as_array().unwrap().len() as i64, empty);
    // Empty voxels hold 0 in every row.
    for (v, &c) in counts.iter().enumerate() {
        if c == 0 {
            assert!((0..b.num_rows()).all(|row| voxels.value(row).as_primitive::<Float32Type>().value(v) == 0.0));
        }
    }

    // The classifier's metrics carry the baselines (from the real label counts) and the imbalance-aware scores.
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/decode/metrics.json")).unwrap()).unwrap();
    let pooled = &m["targets"]["label"]["pooled"]["values"];
    let maj = pooled["majority_baseline_accuracy"].as_f64().expect("majority baseline in metrics.json");
    assert!((maj - r["majority_baseline_accuracy"].as_f64().unwrap()).abs() < 1e-12, "majority {maj}");
    let chance = pooled["chance_accuracy"].as_f64().expect("chance in metrics.json");
    assert!((chance - r["chance_accuracy"].as_f64().unwrap()).abs() < 1e-12, "chance {chance}");
    for key in ["accuracy", "balanced_accuracy", "macro_f1"] {
        let v = pooled[key].as_f64().unwrap_or_else(|| panic!("{key} in metrics.json"));
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let confusion = m["targets"]["label"]["pooled"]["confusion"].as_array().expect("confusion matrix");
    assert_eq!(confusion.len(), 12, "12 classes");
    let total: u64 = confusion.iter().flat_map(|r| r.as_array().unwrap()).map(|x| x.as_u64().unwrap()).sum();
    assert_eq!(total, 700);
    let preds = std::fs::read_to_string(dir.join("out/predictions.csv")).unwrap();
    assert_eq!(preds.lines().count(), 701);
}

#[test]
fn bad_class_file_and_missing_grid_are_clear() {
    let tmp = workspace(
        "[pipeline]\nname = \"bad\"\n[stages.r]\nkind = \"ingest.natimg\"\npaths = [\"data/natimg_tiny.mat\"]\nclasses = \"data/classes.csv\"\n[stages.v]\nkind = \"preprocess.voxelize\"\ninputs = [\"r\"]\n",
        &[("natimg/natimg_tiny.mat", "data/natimg_tiny.mat")],
    );
    let dir = tmp.path();
    std::fs::write(dir.join("data/classes.csv"), "image_index_0based,image_id_1based_matlab,class_id,class_name\n0,1,x,birds\n").unwrap();
    let out = cli(dir, &["validate", "p.toml"]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("classes.csv") && text.contains("line 2"), "the class file error names file and line:\n{text}");
    assert!(text.contains("bins") && text.contains("bin_size"), "voxelize without a grid is refused:\n{text}");
}

#[test]
fn truncated_recording_fails_alone() {
    let tmp = workspace(
        r#"
[pipeline]
name = "broken"
[stages.r]
kind = "ingest.natimg"
paths = ["rec"]
classes = "labels/classes.csv"
[stages.n]
kind = "preprocess.spontaneous"
inputs = ["r"]
n_components = 4
[stages.v]
kind = "preprocess.voxelize"
inputs = ["n"]
bin_size = [400.0, 400.0, 400.0]
[stages.out]
kind = "sink.parquet"
inputs = ["v"]
path = "out/voxels.parquet"
"#,
        &[("natimg/natimg_tiny.mat", "rec/natimg_tiny.mat"), ("nwbmat/class_assignment_confident.csv", "labels/classes.csv")],
    );
    let dir = tmp.path();
    let bytes = std::fs::read(fixture("natimg/natimg_tiny.mat")).unwrap();
    std::fs::write(dir.join("rec/broken.mat"), &bytes[..bytes.len() / 2]).unwrap();
    let out = cli(dir, &["run", "p.toml"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("broken.mat"), "the failure names the file:\n{text}");
    let b = read_parquet(&dir.join("out/voxels.parquet"));
    assert_eq!(b.num_rows(), 700, "the good recording went through every stage");
}
