//! Our classifiers against scikit-learn's on the same Parquet data sets (`../shared/ref/peers/
//! sklearn_*.parquet`, the peer `bench_sklearn.py` reads them too): 75/25 stratified split,
//! standardization fitted on the training part, then `fit` timed (CPU seconds of this process,
//! one thread, median of 3) and test accuracy. The models mirror the peer's: logistic regression
//! (L2, C = 1: our alpha = 1), random forest (100 trees), RBF SVM (C = 1, gamma = 1/n_features on
//! standardized features = sklearn's "scale"). The split is ours (seeded), not sklearn's
//! random_state 0, so accuracies differ by split noise as well as by model.
//!
//!     cargo run --release --example bench_vs_sklearn -- FILE.parquet [FILE.parquet ...]
//! (`scripts/bench_sklearn.sh` runs the peer and this on the same files and prints the ratios.)
use std::fs::File;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int32Type};
use ndarray::Array2;
use neurostream::train::models::{FitOptions, ModelSpec, Prediction, Target, TrainingData, fit};
use neurostream::train::validation::stratified_train_test_split;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Process CPU time (user + system) from /proc/self/stat, in 10-ms clock ticks (Linux).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    assert!(!files.is_empty(), "give Parquet files");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    println!("dataset\tmodel\tfit_cpu_s\twall_s\ttest_accuracy");
    for path in files {
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap().build().unwrap();
        let batches: Vec<_> = r.map(Result::unwrap).collect();
        let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).filter(|n| n != "label").collect();
        let n = b.num_rows();
        let mut x = Array2::<f64>::zeros((n, names.len()));
        for (j, name) in names.iter().enumerate() {
            let c = arrow::compute::cast(b.column_by_name(name).unwrap(), &DataType::Float64).unwrap();
            for (i, v) in c.as_primitive::<Float64Type>().values().iter().enumerate() {
                x[[i, j]] = *v;
            }
        }
        let labels_raw: Vec<i32> = b.column_by_name("label").unwrap().as_primitive::<Int32Type>().values().to_vec();
        let n_classes = labels_raw.iter().copied().max().unwrap() as usize + 1;
        let labels: Vec<usize> = labels_raw.iter().map(|&l| l as usize).collect();
        let fold = stratified_train_test_split(&labels, 0.25, 0).unwrap();
        let classes: Vec<String> = (0..n_classes).map(|k| k.to_string()).collect();
        let data = TrainingData::new(names.clone(), x, Target::Classes { labels: labels.clone(), classes }).unwrap();
        let (train, test) = (data.select(&fold.train), data.select(&fold.test));
        let dataset = std::path::Path::new(&path).file_stem().unwrap().to_string_lossy().to_string();
        let specs: Vec<(&str, ModelSpec)> = vec![
            ("logreg", serde_json::from_str(r#"{"model": "logistic", "alpha": 1.0}"#).unwrap()),
            ("rf", serde_json::from_str(r#"{"model": "random_forest", "n_trees": 100}"#).unwrap()),
            ("svc", serde_json::from_str(r#"{"model": "svm", "c": 1.0}"#).unwrap()),
        ];
        for (name, spec) in specs {
            let mut runs = Vec::new();
            let mut acc = 0.0;
            for _ in 0..3 {
                let (c0, w0) = (cpu_s(), std::time::Instant::now());
                let model = pool.install(|| fit(&spec, &FitOptions::default(), &train)).unwrap();
                runs.push((cpu_s() - c0, w0.elapsed().as_secs_f64()));
                if let Ok(Prediction::Classes(p)) = model.predict(&test.feature_names, test.x.view()) {
                    let Target::Classes { labels: y, .. } = &test.target else { unreachable!() };
                    acc = p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
                }
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (c, w) = runs[1];
            println!("{dataset}\t{name}\t{c:.4}\t{w:.4}\t{acc:.4}");
        }
    }
}
