//! The training stages' figures and diagnostics through the real binary: a `train.classify` and a
//! `train.regress` stage on a constructed table (one informative feature, one pure-noise feature,
//! seeded) write their PNGs beside metrics.json. Each PNG is decoded and checked for its
//! documented size and for real content; permutation importance in metrics.json must rank the
//! informative feature above the noise; the learning curve's full-size point must equal the
//! stage's pooled out-of-fold score. Then a training stage with two inputs whose model
//! `predict.model` applies by naming the training stage as its second input.


use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use ndarray::Array2;
use neurostream::checkpoint;
use neurostream::train::models::{FittedModel, Prediction};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use crate::support::{Project, cli, computed, metrics, output_text, read_parquet_batches, stderr, stdout};

const PIPELINE: &str = r#"
[pipeline]
name = "plots"
seed = 5

[stages.table]
kind = "source.csv"
paths = ["data/table.csv"]
units = { g_syn = "nS" }

[stages.classify]
kind = "train.classify"
inputs = ["table"]
features = ["informative", "noise"]
target = "cell_type"
model = { model = "logistic", alpha = 1.0 }
validation = { method = "stratified", k = 4 }
learning_curve = [0.25, 0.5, 1.0]

[stages.regress]
kind = "train.regress"
inputs = ["table"]
features = ["informative", "noise"]
target = "g_syn"
model = { model = "ridge", alpha = 1.0 }
report_by = "session"
learning_curve = [0.2, 0.6, 1.0]

[stages.classify_loo]
kind = "train.classify"
inputs = ["table"]
features = ["informative", "noise"]
target = "cell_type"
model = { model = "logistic", alpha = 1.0 }
validation = { method = "leave_one_out" }
plots = false

[stages.quiet]
kind = "train.regress"
inputs = ["table"]
features = ["informative", "noise"]
target = "g_syn"
model = { model = "ridge", alpha = 1.0 }
plots = false
importance_repeats = 0
"#;

const CLASSES: [&str; 3] = ["fast-spiking interneuron", "pyramidal", "unclassified"];

/// 240 rows: `cell_type` shifts `informative` by 1.5 per class (sd 0.6); `g_syn` = 3 x
/// informative + N(0, 1); `noise` is independent of both; `session` is one of three.
fn write_table(path: &Path) {
    let mut rng = StdRng::seed_from_u64(20261122);
    let mut text = String::from("row,session,cell_type,informative,noise,g_syn\n");
    for i in 0..240 {
        let k = i % 3;
        let z = |rng: &mut StdRng| -> f64 { StandardNormal.sample(rng) };
        let informative = 1.5 * k as f64 + 0.6 * z(&mut rng);
        let noise = z(&mut rng);
        let g = 3.0 * informative + z(&mut rng);
        text.push_str(&format!("{i},s{},{},{informative},{noise},{g}\n", (i / 7) % 3, CLASSES[k]));
    }
    std::fs::write(path, text).unwrap();
}

/// Runs PIPELINE on the constructed table; returns the project folder and its run directory.
fn run() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    write_table(&tmp.path().join("data/table.csv"));
    std::fs::write(tmp.path().join("pipeline.toml"), PIPELINE).unwrap();
    let out = cli(tmp.path(), &["run", "pipeline.toml", "--quiet"]);
    assert!(out.status.success(), "run failed:\n{}", output_text(&out));
    let run_dir = tmp.path().join("runs/plots");
    (tmp, run_dir)
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect()
}

/// Checks one PNG: signature, IHDR, full decode, size, and that it is a picture (many colours,
/// pixel variance, dark ink for text and axes). Returns the RGB pixels.
fn check_png(path: &Path, size: (u32, u32)) -> Vec<[u8; 3]> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}: PNG signature", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk", path.display());
    let ihdr = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!(ihdr, size, "{}: IHDR size", path.display());
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let colours: BTreeSet<[u8; 3]> = px.iter().copied().collect();
    assert!(colours.len() >= 20, "{}: only {} distinct colours", path.display(), colours.len());
    let grey: Vec<f64> = px.iter().map(|p| p.iter().map(|&c| c as f64).sum::<f64>() / 3.0).collect();
    let mean = grey.iter().sum::<f64>() / grey.len() as f64;
    let var = grey.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / grey.len() as f64;
    assert!(var > 50.0, "{}: pixel variance {var}", path.display());
    let ink = px.iter().filter(|p| p.iter().all(|&c| c < 80)).count();
    assert!(ink > 1000, "{}: {ink} dark pixels (text, axes)", path.display());
    px
}

/// Pixels within 12 of `c` on every channel.
fn near(px: &[[u8; 3]], c: [u8; 3]) -> usize {
    px.iter().filter(|p| p.iter().zip(c).all(|(&a, b)| (a as i32 - b as i32).abs() <= 12)).count()
}

/// `importance` (ranked list) -> (feature -> mean drop), checking the ranking is descending.
fn importance(v: &serde_json::Value) -> Vec<(String, f64, f64)> {
    let list: Vec<(String, f64, f64)> = v["features"]
        .as_array()
        .unwrap_or_else(|| panic!("no importance features in {v}"))
        .iter()
        .map(|f| (f["feature"].as_str().unwrap().to_string(), f["mean"].as_f64().unwrap(), f["std"].as_f64().unwrap()))
        .collect();
    assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "ranked: {list:?}");
    list
}

#[test]
fn classify_and_regress_write_readable_figures_and_rank_the_informative_feature() {
    let (_tmp, run_dir) = run();
    let artifacts = run_dir.join("artifacts");

    // train.classify: confusion matrix, importance, learning curve.
    let dir = artifacts.join("classify");
    let m = metrics(&run_dir, "classify");
    let expected: BTreeSet<String> =
        ["confusion.png", "importance.png", "learning_curve.png", "metrics.json", "metrics.parquet", "model.json"].map(String::from).into();
    assert_eq!(files(&dir), expected, "the artifacts folder holds exactly these");
    assert_eq!(m["plots"], serde_json::json!(["confusion.png", "importance.png", "learning_curve.png"]));
    assert!(m.get("plot_errors").is_none(), "{}", m["plot_errors"]);
    let cm = check_png(&dir.join("confusion.png"), (900, 800));
    // Row-normalized shading: a good classifier has dark cells (share > 0.5 is darker than
    // RGB (128, 150, 181), the midpoint of the white-to-blue scale).
    let dark_blue = cm.iter().filter(|p| p[2] as i32 > p[0] as i32 + 40 && p[0] < 100).count();
    assert!(dark_blue > 5000, "{dark_blue} dark blue pixels in the confusion matrix");
    check_png(&dir.join("importance.png"), (900, 700));
    check_png(&dir.join("learning_curve.png"), (900, 600));
    let t = &m["targets"]["cell_type"];
    let imp = importance(&t["permutation_importance"]);
    assert_eq!(t["permutation_importance"]["score"], "accuracy");
    assert_eq!(t["permutation_importance"]["repeats"], 5);
    assert_eq!(imp[0].0, "informative", "{imp:?}");
    assert_eq!(imp[1].0, "noise");
    assert!(imp[0].1 > 0.3, "shuffling the informative feature costs accuracy: {imp:?}");
    assert!(imp[1].1.abs() < 0.05, "shuffling noise costs about nothing: {imp:?}");
    let accuracy = t["pooled"]["values"]["accuracy"].as_f64().unwrap();
    let base = t["permutation_importance"]["baseline"].as_f64().unwrap();
    assert!((base - accuracy).abs() < 1e-12, "importance baseline {base} is the pooled accuracy {accuracy}");
    let points = t["learning_curve"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(points[2]["fraction"], 1.0);
    assert_eq!(points[2]["train_rows_mean"], 180.0, "3 of 4 folds of 240 rows");
    assert!((points[2]["validation_score"].as_f64().unwrap() - accuracy).abs() < 1e-12, "full-size point = the stage's accuracy");
    assert_eq!(points[0]["train_rows_min"], 45, "ceil(0.25 x 60) per class, 3 classes");

    // train.regress: predicted vs true coloured by session, importance, learning curve.
    let dir = artifacts.join("regress");
    let m = metrics(&run_dir, "regress");
    assert_eq!(m["plots"], serde_json::json!(["predicted_vs_true.png", "importance.png", "learning_curve.png"]));
    let px = check_png(&dir.join("predicted_vs_true.png"), (800, 800));
    // Three sessions, three palette colours (Tableau blue, orange, green at 70% over white).
    for (name, c) in [("blue", [31u8, 119, 180]), ("orange", [255, 127, 14]), ("green", [44, 160, 44])] {
        let blended = c.map(|v| (0.7 * v as f64 + 0.3 * 255.0).round() as u8);
        let n = near(&px, blended);
        assert!(n > 200, "session colour {name}: {n} pixels");
    }
    assert!(near(&px, [214, 39, 40]) < 50, "no fourth group colour");
    check_png(&dir.join("importance.png"), (900, 700));
    check_png(&dir.join("learning_curve.png"), (900, 600));
    let t = &m["targets"]["g_syn"];
    let imp = importance(&t["permutation_importance"]);
    assert_eq!(t["permutation_importance"]["score"], "r2");
    assert_eq!(imp[0].0, "informative", "{imp:?}");
    // Var(g) = 9 Var(informative) + 1 with Var(informative) = 1.5² · 2/3 + 0.36 = 1.86: shuffling
    // it costs about 2 · 9 · 1.86 / 17.7 = 1.9 of R² (the linear-model identity; ridge shrinks a bit).
    assert!(imp[0].1 > 1.5 && imp[0].1 < 2.2, "{imp:?}");
    assert!(imp[1].1.abs() < 0.02, "{imp:?}");
    let r2 = t["pooled"]["values"]["r2"].as_f64().unwrap();
    let points = t["learning_curve"]["points"].as_array().unwrap();
    assert!((points[2]["validation_score"].as_f64().unwrap() - r2).abs() < 1e-12);
    // The same numbers in metrics.parquet's rows, as the other metrics.
    let mut found = Vec::new();
    for b in read_parquet_batches(&[dir.join("metrics.parquet")]) {
        let col = |n: &str| arrow::compute::cast(b.column_by_name(n).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        let (scope, metric, value) = (col("scope"), col("metric"), b.column_by_name("value").unwrap().clone());
        let (scope, metric, value) = (scope.as_string::<i32>(), metric.as_string::<i32>(), value.as_primitive::<Float64Type>());
        for r in 0..b.num_rows() {
            if scope.value(r) == "permutation_importance" {
                found.push((metric.value(r).to_string(), value.value(r)));
            }
        }
    }
    found.sort_by(|a, b| b.1.total_cmp(&a.1));
    let from_json: Vec<(String, f64)> = imp.iter().map(|(f, m, _)| (f.clone(), *m)).collect();
    assert_eq!(found, from_json, "metrics.parquet holds the importance rows of metrics.json");

    // Leave-one-out: one-row folds, and the importance still ranks (the shuffle spans all folds).
    let dir = artifacts.join("classify_loo");
    assert_eq!(files(&dir), ["metrics.json", "metrics.parquet", "model.json"].map(String::from).into());
    let imp = importance(&metrics(&run_dir, "classify_loo")["targets"]["cell_type"]["permutation_importance"]);
    assert_eq!(imp[0].0, "informative", "{imp:?}");
    assert!(imp[0].1 > 0.3 && imp[1].1.abs() < 0.05, "{imp:?}");

    // plots = false, importance_repeats = 0: the artifacts are as before.
    let dir = artifacts.join("quiet");
    assert_eq!(files(&dir), ["metrics.json", "metrics.parquet", "model.json"].map(String::from).into());
    let m = metrics(&run_dir, "quiet");
    assert_eq!(m["plots"], serde_json::json!([]));
    assert!(m["targets"]["g_syn"].get("permutation_importance").is_none());
    // No temporary folder of the atomic commit is left behind.
    let leftovers: Vec<String> = files(&artifacts).into_iter().filter(|f| f.contains(".tmp-") || f.contains(".old-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_learning_curve_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    write_table(&tmp.path().join("data/table.csv"));
    let text = PIPELINE.replace("learning_curve = [0.25, 0.5, 1.0]", "learning_curve = [0.5, 0.0, 0.5, 1.5]");
    std::fs::write(tmp.path().join("pipeline.toml"), text).unwrap();
    let out = cli(tmp.path(), &["validate", "pipeline.toml"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for needle in ["0: a fraction of the training rows must be in (0, 1]", "0.5 is listed twice", "1.5: a fraction"] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert_eq!(text.matches("pipeline.toml:18:").count(), 3, "each error points into the learning_curve line:\n{text}");
    assert!(!tmp.path().join("runs").exists(), "validation creates nothing");
}

/// train.cluster with labels draws the clusters against the classes: each cluster matched to a
/// class by the Hungarian assignment (the matching behind `hungarian_accuracy`), and a last
/// column for the cluster no class was matched to (here k-means with 4 clusters for 3 classes).
#[test]
fn cluster_stage_draws_its_clusters_matched_to_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    write_table(&tmp.path().join("data/table.csv"));
    let pipeline = r#"
[pipeline]
name = "plots"
seed = 5

[stages.table]
kind = "source.csv"
paths = ["data/table.csv"]

[stages.cluster]
kind = "train.cluster"
inputs = ["table"]
features = ["informative", "noise"]
labels = "cell_type"
model = { model = "k_means", n_clusters = 4, n_runs = 5 }
"#;
    std::fs::write(tmp.path().join("pipeline.toml"), pipeline).unwrap();
    let out = cli(tmp.path(), &["run", "pipeline.toml", "--quiet"]);
    assert!(out.status.success(), "run failed:\n{}", output_text(&out));
    let dir = tmp.path().join("runs/plots/artifacts/cluster");
    let m = metrics(&tmp.path().join("runs/plots"), "cluster");
    assert_eq!(m["plots"], serde_json::json!(["confusion.png"]), "{m}");
    assert!(m.get("plot_errors").is_none(), "{}", m["plot_errors"]);
    let px = check_png(&dir.join("confusion.png"), (900, 800));
    // The informative feature separates the classes, so most matched cells are dark blue.
    let dark_blue = px.iter().filter(|p| p[2] as i32 > p[0] as i32 + 40 && p[0] < 100).count();
    assert!(dark_blue > 5000, "{dark_blue} dark blue pixels");
    let acc = m["pooled"]["values"]["hungarian_accuracy"].as_f64().unwrap();
    assert!(acc > 0.5, "hungarian accuracy {acc}");
}

// ------------------------------------------------------------------------------------------------
// A training stage with two inputs, and predict.model reading the training stage
// ------------------------------------------------------------------------------------------------

/// 60 sweeps of three cells: `stimulus_amplitude` 20..610 pA, `spike_count` about a tenth of it.
fn write_sweeps(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("sweep", DataType::Int64, false),
        Field::new("stimulus_amplitude", DataType::Float64, false),
        Field::new("spike_count", DataType::Int64, false),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values((0..60).map(|k| format!("cell{}", k % 3)))),
            Arc::new(Int64Array::from_iter_values(0..60)),
            Arc::new(Float64Array::from_iter_values((0..60).map(|k| 20.0 + 10.0 * k as f64))),
            Arc::new(Int64Array::from_iter_values((0..60).map(|k| 2 + k + (k * 7) % 5))),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

const TWO_INPUTS: &str = r#"
[pipeline]
name = "core"
seed = 3

[stages.sweeps]
kind = "source.parquet"
paths = ["data/sweeps.parquet"]

[stages.low]
kind = "transform.filter"
inputs = ["sweeps"]
where = "stimulus_amplitude < 300"

[stages.high]
kind = "transform.select"
inputs = ["sweeps"]
columns = ["recording_id", "sweep", "spike_count", "stimulus_amplitude"]

[stages.fit]
kind = "train.regress"
inputs = ["low", "high"]
features = ["stimulus_amplitude"]
target = "spike_count"
keep = ["recording_id", "sweep"]
model = { model = "ridge", alpha = 1.0 }
validation = { method = "k_fold", k = 3 }

[stages.predicted]
kind = "predict.model"
inputs = ["low", "fit"]

[stages.export]
kind = "sink.parquet"
inputs = ["predicted"]
path = "out/predicted.parquet"
"#;

fn read_parquet(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn int_column(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name).unwrap().as_primitive::<Int64Type>().values().to_vec()
}

fn float_column(b: &RecordBatch, name: &str) -> Vec<f64> {
    b.column_by_name(name).unwrap().as_primitive::<Float64Type>().values().to_vec()
}

/// `train.regress` on two inputs (a filter and a select of one source, so 28 + 60 rows) trains
/// on input 0's rows then input 1's, and announces its model file in its schema; `predict.model`
/// with the training stage as its second input applies exactly that model.json; a second run
/// computes nothing.
#[test]
fn a_two_input_training_stage_feeds_predict_model() {
    let p = Project::new(TWO_INPUTS);
    write_sweeps(&p.path().join("data/sweeps.parquet"));
    let (out, report) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(computed(&report), ["export", "fit", "high", "low", "predicted", "sweeps"]);

    let artifacts = p.run_dir().join("artifacts/fit");
    assert_eq!(metrics(&p.run_dir(), "fit")["rows_used"].as_u64(), Some(28 + 60));
    // The table is input 0's rows, then input 1's, whichever arrived first.
    let cps = checkpoint::list(&p.run_dir().join("fit"));
    let fit = read_parquet(&cps[0].part_files()[0]);
    let sweeps: Vec<i64> = (0..28).chain(0..60).collect();
    assert_eq!(int_column(&fit, "sweep"), sweeps, "low's 28 rows, then high's 60");
    let schema = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&cps[0].part_files()[0]).unwrap()).unwrap().schema().clone();
    let announced = PathBuf::from(&schema.metadata()["neurostream.model"]);
    assert!(announced.is_absolute(), "{announced:?}");
    assert_eq!(std::fs::canonicalize(&announced).unwrap(), std::fs::canonicalize(artifacts.join("model.json")).unwrap());
    assert_eq!(schema.metadata()["neurostream.model_task"], "regression");
    assert_eq!(schema.metadata()["neurostream.model_columns"], r#"["stimulus_amplitude"]"#);

    // predict.model applied the written model to input `low`: the same as loading it directly.
    let predicted = read_parquet(&p.path().join("out/predicted.parquet"));
    assert_eq!(predicted.num_rows(), 28);
    let model = FittedModel::from_file(&artifacts.join("model.json")).unwrap();
    let x = float_column(&predicted, "stimulus_amplitude");
    let Prediction::Values(direct) = model.predict(&model.feature_names, Array2::from_shape_vec((x.len(), 1), x).unwrap().view()).unwrap() else {
        panic!("values")
    };
    assert_eq!(float_column(&predicted, "prediction"), direct);

    let (out, report) = p.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(computed(&report).is_empty(), "a second run reuses everything: {:?}", computed(&report));
}

/// Validation names the input and the column when the inputs of a training stage differ, and
/// says how to give `predict.model` its model when the second input cannot.
#[test]
fn bad_inputs_of_training_and_prediction_are_named() {
    let p = Project::new(TWO_INPUTS);
    write_sweeps(&p.path().join("data/sweeps.parquet"));
    std::fs::write(p.path().join("data/ints.csv"), "recording_id,sweep,stimulus_amplitude,spike_count\ncell0,0,20,2\ncell1,1,30,4\n").unwrap();
    let validate = |text: &str| -> String {
        p.write_pipeline(text);
        let out = p.cli(&["validate", "pipeline.toml"]);
        assert!(!out.status.success(), "accepted:\n{text}");
        stdout(&out) + &stderr(&out)
    };
    let ints = "\n[stages.ints]\nkind = \"source.csv\"\npaths = [\"data/ints.csv\"]\n";

    // A second input without the target, and one whose feature has another type.
    let text = TWO_INPUTS.replace(r#"columns = ["recording_id", "sweep", "spike_count", "stimulus_amplitude"]"#, r#"columns = ["recording_id", "sweep", "stimulus_amplitude"]"#);
    let e = validate(&text);
    assert!(e.contains("stage `fit`: input 2 has no column `spike_count` (in `target`)"), "{e}");
    let e = validate(&(TWO_INPUTS.replace(r#"inputs = ["low", "high"]"#, r#"inputs = ["low", "ints"]"#) + ints));
    assert!(e.contains("stage `fit`: column `stimulus_amplitude` (in `features`) is int64 in input 2 but float64 in input 1"), "{e}");

    // predict.model: both a file and a stage, neither, a stage that is not a training stage, a
    // training stage with one model per target.
    let e = validate(&TWO_INPUTS.replace(r#"inputs = ["low", "fit"]"#, "inputs = [\"low\", \"fit\"]\nmodel = \"runs/core/artifacts/fit/model.json\""));
    assert!(e.contains("stage `predicted`: the model comes from `model` or from a training stage as the second input, not both"), "{e}");
    let e = validate(&TWO_INPUTS.replace(r#"inputs = ["low", "fit"]"#, r#"inputs = ["low"]"#));
    assert!(e.contains("stage `predicted`: no model: name its file with `model`"), "{e}");
    let e = validate(&TWO_INPUTS.replace(r#"inputs = ["low", "fit"]"#, r#"inputs = ["low", "high"]"#));
    assert!(e.contains("stage `predicted`: the second input is not a training stage with one model file; name the model with `model`"), "{e}");
    let e = validate(&TWO_INPUTS.replace(r#"target = "spike_count""#, r#"target = ["spike_count", "sweep"]"#));
    assert!(e.contains("stage `predicted`: the second input writes one model file per target"), "{e}");
    // The table must have the columns the model reads.
    let e = validate(&(TWO_INPUTS.replace(r#"inputs = ["low", "fit"]"#, r#"inputs = ["names", "fit"]"#)
        + "\n[stages.names]\nkind = \"transform.select\"\ninputs = [\"sweeps\"]\ncolumns = [\"recording_id\"]\n"));
    assert!(e.contains("stage `predicted`: the model was trained on columns the input does not have: stimulus_amplitude"), "{e}");
}
