//! Neural-network models through real pipelines (feature `dl-burn`, on by default): `train.classify`
//! with `model = { model = "mlp", ... }` on scalar features and `cnn1d` on a list column of raw
//! traces, written from TOML, run by the real binary; then `predict.model` applies the saved
//! network and must give exactly what the model file predicts when loaded directly.
#![cfg(feature = "dl-burn")]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, Float32Builder, Float64Array, ListBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use neurostream::train::models::{FittedModel, Prediction};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::support::{cli_text, read_parquet, write_parquet};

const LEN: usize = 48;

/// `n` rows: scalar features `f0`, `f1` uniform in [−1, 1] with `ring` = inside the circle
/// f0² + f1² < 0.5 ("in"/"out", not linearly separable), and a trace of LEN samples with noise and
/// one event at a random time: `shape` = "spike" (instant rise, decay) or "reversed" (the same,
/// time-reversed). `short_row` gets a trace one sample short.
fn write_table(path: &Path, n: usize, seed: u64, short_row: Option<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let kernel: Vec<f32> = (0..10).map(|k| (-(k as f32) / 2.5).exp()).collect();
    let mut traces = ListBuilder::new(Float32Builder::new());
    let (mut f0, mut f1, mut ring, mut shape, mut ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (a, b) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        f0.push(a);
        f1.push(b);
        ring.push(if a * a + b * b < 0.5 { "in" } else { "out" });
        let spike = i % 2 == 0;
        shape.push(if spike { "spike" } else { "reversed" });
        ids.push(format!("cell{i}"));
        let mut t: Vec<f32> = (0..LEN).map(|_| rng.random_range(-0.4f32..0.4)).collect();
        let at = rng.random_range(0..LEN - kernel.len());
        for (k, v) in kernel.iter().enumerate() {
            t[at + if spike { k } else { kernel.len() - 1 - k }] += 1.5 * v;
        }
        if short_row == Some(i) {
            t.pop();
        }
        traces.values().append_slice(&t);
        traces.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("f0", DataType::Float64, false),
        Field::new("f1", DataType::Float64, false),
        Field::new("trace", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), true),
        Field::new("ring", DataType::Utf8, false),
        Field::new("shape", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Float64Array::from(f0)),
            Arc::new(Float64Array::from(f1)),
            Arc::new(traces.finish()),
            Arc::new(StringArray::from(ring)),
            Arc::new(StringArray::from(shape)),
        ],
    )
    .unwrap();
    write_parquet(path, &batch);
}

const TRAIN: &str = r#"
[pipeline]
name = "nn"
seed = 4

[stages.cells]
kind = "source.parquet"
paths = ["data/cells.parquet"]

[stages.ring]
kind = "train.classify"
inputs = ["cells"]
features = ["f0", "f1"]
target = "ring"
model = { model = "mlp", hidden = [32, 16], epochs = 150, learning_rate = 0.01, batch_size = 16 }
validation = { method = "stratified", k = 3 }
artifacts = "out/ring"

[stages.shape]
kind = "train.classify"
inputs = ["cells"]
features = ["trace"]
target = "shape"
model = { model = "cnn1d", channels = [8, 16], kernel_size = 5, epochs = 60, learning_rate = 0.003 }
validation = { method = "stratified", k = 2 }
balance_classes = true
artifacts = "out/shape"
"#;

const PREDICT: &str = r#"
[pipeline]
name = "apply"
seed = 4

[stages.cells]
kind = "source.parquet"
paths = ["data/new_cells.parquet"]

[stages.shape]
kind = "predict.model"
inputs = ["cells"]
model = "out/shape/model.json"
column = "predicted_shape"

[stages.export]
kind = "sink.parquet"
inputs = ["shape"]
path = "out/predicted.parquet"
"#;

/// Runs a pipeline file of `dir`; returns (success, stdout + stderr).
fn run(dir: &Path, file: &str) -> (bool, String) {
    let (code, text) = cli_text(dir, &["run", file, "--quiet"]);
    (code == 0, text)
}

fn pooled(dir: &Path, stage: &str, target: &str, key: &str) -> f64 {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("out/{stage}/metrics.json"))).unwrap()).unwrap();
    m["targets"][target]["pooled"]["values"][key].as_f64().unwrap_or_else(|| panic!("{key} in {stage}/metrics.json: {m}"))
}

#[test]
fn mlp_and_cnn1d_train_from_toml_and_predict_model_reapplies_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    write_table(&dir.join("data/cells.parquet"), 400, 1, None);
    write_table(&dir.join("data/new_cells.parquet"), 120, 2, None);
    std::fs::write(dir.join("train.toml"), TRAIN).unwrap();
    let (ok, text) = run(dir, "train.toml");
    assert!(ok, "training run failed:\n{text}");
    // Out-of-fold accuracy: the circle is not linearly separable (logistic regression stays at the
    // majority rate) and the trace classes differ only in the event's temporal order.
    let ring = pooled(dir, "ring", "ring", "accuracy");
    let majority = pooled(dir, "ring", "ring", "majority_baseline_accuracy");
    let shape = pooled(dir, "shape", "shape", "accuracy");
    eprintln!("ring mlp accuracy {ring:.3} (majority {majority:.3}); trace cnn1d accuracy {shape:.3}");
    assert!(ring >= 0.85 && ring > majority + 0.2, "mlp out-of-fold accuracy {ring}");
    assert!(shape >= 0.85, "cnn1d out-of-fold accuracy {shape}");

    // The saved network is applied by predict.model; it must equal a direct load + predict.
    std::fs::write(dir.join("predict.toml"), PREDICT).unwrap();
    let (ok, text) = run(dir, "predict.toml");
    assert!(ok, "prediction run failed:\n{text}");
    let b = read_parquet(&dir.join("out/predicted.parquet"));
    let predicted: Vec<String> = b.column_by_name("predicted_shape").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect();
    let model = FittedModel::from_file(&dir.join("out/shape/model.json")).unwrap();
    assert!(model.network().is_some(), "model.json holds the network");
    let traces = b.column_by_name("trace").unwrap();
    let traces = arrow::compute::cast(traces, &DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))).unwrap();
    let traces = traces.as_list::<i32>();
    let x = ndarray::Array2::from_shape_fn((b.num_rows(), LEN), |(r, i)| traces.value(r).as_primitive::<Float64Type>().value(i));
    let Prediction::Classes(direct) = model.predict(&model.feature_names, x.view()).unwrap() else { panic!("classes") };
    let classes = model.classes.clone().unwrap();
    let direct: Vec<String> = direct.into_iter().map(|c| classes[c].clone()).collect();
    assert_eq!(predicted, direct);
    let truth: Vec<&str> = b.column_by_name("shape").unwrap().as_string::<i32>().iter().map(Option::unwrap).collect();
    let acc = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64;
    eprintln!("predict.model accuracy on 120 new traces {acc:.3}");
    assert!(acc >= 0.85, "new-trace accuracy {acc}");
}

#[test]
fn ragged_traces_and_bad_network_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    write_table(&dir.join("data/cells.parquet"), 40, 1, Some(17));
    let shape_only = TRAIN.split("[stages.ring]").next().unwrap().to_string() + "[stages.shape]" + TRAIN.split("[stages.shape]").nth(1).unwrap();
    std::fs::write(dir.join("train.toml"), &shape_only).unwrap();
    let (ok, text) = run(dir, "train.toml");
    assert!(!ok, "a ragged trace column was accepted");
    assert!(text.contains("shape") && text.contains("`trace`") && text.contains("row 17") && text.contains("47"), "{text}");

    let bad = shape_only.replace("kernel_size = 5", "kernel_size = 4").replace("epochs = 60", "epochs = 0");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let (ok, text) = run(dir, "bad.toml");
    assert!(!ok);
    assert!(text.contains("shape") && text.contains("cnn1d") && (text.contains("kernel_size") || text.contains("epochs")), "{text}");
}
