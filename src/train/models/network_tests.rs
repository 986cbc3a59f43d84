//! The neural networks ([`crate::train::nn`]) through the model API: against scikit-learn's
//! MLP, a CNN on traces against per-sample models, and their round trip through the model JSON.
//! Here rather than in `nn.rs`, so that `nn` never imports the model layer that uses it.

#[cfg(feature = "dl-burn")]
mod with_burn {
    use ndarray::Array2;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::super::tests::{accuracy_seeded, load, load_friedman};
    use super::super::{FitOptions, FittedModel, ModelError, ModelSpec, Prediction, Target, TrainingData, fit, score};
    use crate::train::nn::{Cnn1dSpec, MlpSpec};

    fn mlp(epochs: usize) -> MlpSpec {
        serde_json::from_value(serde_json::json!({ "epochs": epochs })).unwrap()
    }

    fn nn_reference() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/train/nn_reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// One hidden layer of 100 ReLU units against scikit-learn's MLPRegressor / MLPClassifier with
    /// the same settings (tests/fixtures/train/make_nn_reference.py). Both draw initial weights,
    /// the early-stopping split and the batch order at random, so the test compares our mean over
    /// three seeds with scikit-learn's mean over five. Their seed-to-seed SD is 0.002 (R²) and
    /// 0.011–0.013 (accuracy on 500 test rows, one row = 0.002): the difference of the two means
    /// has an SD of about 0.0015 and 0.009. Tolerances are about three of those SDs: 0.005 R²,
    /// 0.025 accuracy. One-sided: ours must reach scikit-learn's score.
    #[test]
    fn mlp_reaches_sklearn_scores() {
        let r = nn_reference();
        let spec = ModelSpec::Mlp(mlp(200));
        let mut failures = Vec::new();
        let (data, _, train, test) = load_friedman();
        let runs: Vec<f64> = (0..3).map(|seed| accuracy_seeded(&spec, &data, &train, &test, seed).0).collect();
        let ours = runs.iter().sum::<f64>() / 3.0;
        let sk = r["friedman1_mlp_r2"]["mean"].as_f64().unwrap();
        eprintln!("friedman1 mlp: R² {ours:.4} (runs {runs:?}) vs sklearn {sk:.4}");
        if ours < sk - 0.005 {
            failures.push(format!("friedman1 R² {ours} vs sklearn {sk}"));
        }
        for name in ["binary_80_20", "five_class"] {
            let (data, train, test) = load(name);
            let runs: Vec<f64> = (0..3).map(|seed| accuracy_seeded(&spec, &data, &train, &test, seed).0).collect();
            let ours = runs.iter().sum::<f64>() / 3.0;
            let sk = r[format!("{name}_mlp_accuracy")]["mean"].as_f64().unwrap();
            eprintln!("{name} mlp: accuracy {ours:.4} (runs {runs:?}) vs sklearn {sk:.4}");
            if ours < sk - 0.025 {
                failures.push(format!("{name} accuracy {ours} vs sklearn {sk}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Traces of 64 samples with Gaussian noise and one event at a random time: class 1 a spike
    /// (instant rise, exponential decay), class 0 the same waveform reversed in time (slow rise,
    /// instant fall). Both have the same amplitude, area and energy, so no single sample, sum or
    /// maximum separates them; only the temporal order does.
    fn spike_traces(n: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = 64;
        let shape: Vec<f64> = (0..12).map(|k| (-(k as f64) / 3.0).exp()).collect();
        let (mut traces, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let label = i % 2;
            let mut t: Vec<f64> = (0..len).map(|_| 0.3 * (rng.random::<f64>() + rng.random::<f64>() + rng.random::<f64>() - 1.5) * 2.0).collect();
            let at = rng.random_range(0..len - shape.len());
            let amp = rng.random_range(1.0..2.0);
            for (k, s) in shape.iter().enumerate() {
                let k = if label == 1 { k } else { shape.len() - 1 - k };
                t[at + k] += amp * s;
            }
            traces.push(t);
            labels.push(label);
        }
        (traces, labels)
    }

    fn trace_data(traces: &[Vec<f64>], labels: &[usize]) -> TrainingData {
        let len = traces[0].len();
        let names = (0..len).map(|i| format!("trace[{i}]")).collect();
        let x = Array2::from_shape_vec((traces.len(), len), traces.iter().flatten().copied().collect()).unwrap();
        TrainingData::new(names, x, Target::Classes { labels: labels.to_vec(), classes: vec!["reversed".into(), "spike".into()] }).unwrap()
    }

    fn cnn() -> Cnn1dSpec {
        serde_json::from_value(serde_json::json!({ "channels": [8, 16], "kernel_size": 5, "epochs": 60, "learning_rate": 0.003 })).unwrap()
    }

    /// The CNN learns the spike-vs-reversed task (≥ 0.9 test accuracy on 400 held-out traces) that
    /// per-sample models cannot: logistic regression on the same 64 samples stays near chance
    /// (≤ 0.65) and so does an MLP (≤ 0.75 — it can learn some shift-specific detectors, but
    /// not from 600 traces).
    #[test]
    fn cnn1d_learns_event_shape_that_per_sample_models_miss() {
        let (tr_x, tr_y) = spike_traces(600, 11);
        let (te_x, te_y) = spike_traces(400, 12);
        let (train, test) = (trace_data(&tr_x, &tr_y), trace_data(&te_x, &te_y));
        let options = FitOptions { seed: 5, ..FitOptions::default() };
        let model = fit(&ModelSpec::Cnn1d(cnn()), &options, &train).unwrap();
        let acc = score(&model, &test).unwrap();
        let net = model.network().unwrap();
        eprintln!("cnn1d spike-vs-reversed accuracy {acc:.4} (epochs run {}, best {})", net.epochs_run, net.best_epoch);
        let logistic = fit(&ModelSpec::Logistic { alpha: 1.0, max_iterations: 1000 }, &options, &train).unwrap();
        let lacc = score(&logistic, &test).unwrap();
        let mlp_model = fit(&ModelSpec::Mlp(mlp(60)), &options, &train).unwrap();
        let macc = score(&mlp_model, &test).unwrap();
        eprintln!("per-sample models: logistic {lacc:.4}, mlp {macc:.4}");
        assert!(acc >= 0.9, "cnn1d accuracy {acc}");
        assert!(lacc <= 0.65, "logistic regression reached {lacc}: the task is too easy to show anything");
        assert!(macc <= 0.75, "mlp reached {macc}: the task is too easy to show anything");
    }

    /// Save → load → identical predictions, for every output kind; the same seed gives the same
    /// model file, another seed another one.
    #[test]
    fn networks_round_trip_through_the_model_json_and_are_seeded() {
        let (data, train, test) = load("five_class");
        let (tr, te) = (data.select(&train[..400]), data.select(&test[..100]));
        let counts = |d: &TrainingData| Target::Values(d.x.rows().into_iter().map(|r| (0.5 + 0.3 * r[0] - 0.2 * r[1]).exp().round()).collect());
        let values = |d: &TrainingData| Target::Values(d.x.rows().into_iter().map(|r| 2.0 * r[0] - r[3] + 0.5).collect());
        let poisson: MlpSpec = serde_json::from_value(serde_json::json!({ "epochs": 20, "loss": "poisson", "hidden": [16, 8], "dropout": 0.2 })).unwrap();
        let cases = [
            (ModelSpec::Mlp(mlp(20)), tr.clone()),
            (ModelSpec::Mlp(mlp(20)), TrainingData { target: values(&tr), ..tr.clone() }),
            (ModelSpec::Mlp(poisson), TrainingData { target: counts(&tr), ..tr.clone() }),
        ];
        for (spec, train_data) in cases {
            let options = FitOptions { balance_classes: matches!(train_data.target, Target::Classes { .. }), seed: 9, ..FitOptions::default() };
            let model = fit(&spec, &options, &train_data).unwrap();
            let first = model.predict(&te.feature_names, te.x.view()).unwrap();
            let json = model.to_json().unwrap();
            let loaded = FittedModel::from_json(&json).unwrap();
            assert_eq!(loaded.predict(&te.feature_names, te.x.view()).unwrap(), first, "{json:.200}");
            assert_eq!(fit(&spec, &options, &train_data).unwrap().to_json().unwrap(), json, "same seed, same network");
            let other = fit(&spec, &FitOptions { seed: 10, ..options.clone() }, &train_data).unwrap();
            assert_ne!(other.to_json().unwrap(), json, "another seed, another network");
            match (&first, &train_data.target) {
                (Prediction::Classes(p), _) => assert!(p.iter().zip(match &te.target { Target::Classes { labels, .. } => labels, _ => unreachable!() }).filter(|(a, b)| a == b).count() > 50),
                (Prediction::Values(p), _) => assert!(p.iter().all(|v| v.is_finite())),
                _ => panic!("unexpected prediction kind"),
            }
        }
        // A trace model too, and the schema check still refuses another table.
        let (tx, ty) = spike_traces(60, 3);
        let d = trace_data(&tx, &ty);
        let spec: Cnn1dSpec = serde_json::from_value(serde_json::json!({ "channels": [4], "epochs": 3 })).unwrap();
        let model = fit(&ModelSpec::Cnn1d(spec), &FitOptions::default(), &d).unwrap();
        let loaded = FittedModel::from_json(&model.to_json().unwrap()).unwrap();
        assert_eq!(loaded.predict(&d.feature_names, d.x.view()).unwrap(), model.predict(&d.feature_names, d.x.view()).unwrap());
        let mut names = d.feature_names.clone();
        names[63] = "other[0]".into();
        assert!(matches!(loaded.predict(&names, d.x.view()), Err(ModelError::Schema(_))));
    }

    #[test]
    fn bad_network_specs_are_named() {
        let err = ModelSpec::Mlp(MlpSpec { dropout: 1.0, ..mlp(5) }).validate(3).unwrap_err().to_string();
        assert!(err.contains("mlp") && err.contains("dropout"), "{err}");
        assert!(serde_json::from_value::<ModelSpec>(serde_json::json!({ "model": "mlp", "hiden": [3] })).is_err());
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({ "model": "cnn1d", "kernel_size": 4 })).unwrap();
        assert!(spec.validate(3).unwrap_err().to_string().contains("kernel_size"));
    }
}

#[cfg(not(feature = "dl-burn"))]
mod without_burn {
    use super::super::ModelSpec;

    #[test]
    fn asking_for_a_network_without_the_feature_is_a_config_error() {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({ "model": "mlp" })).unwrap();
        let err = spec.validate(3).unwrap_err().to_string();
        assert!(err.contains("dl-burn") && err.contains("mlp"), "{err}");
    }
}
