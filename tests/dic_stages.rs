//! Study-4 stages (`ingest.spike_times`, `dic.estimate`, `dic.population`, `features.bursts`,
//! `dic.validate`, with `simulate.stg`) driven through the real binary on Spike2Pop's example
//! trains (tests/fixtures/dicstage/stg_set.csv). Activity classes are checked against upstream
//! Spike2Pop's SpikeFeatureExtractor labels of the same trains (stg_set_features.json).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostream")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicstage")
}

fn workspace(csv: &str, pipeline: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("trains.csv"), csv).unwrap();
    std::fs::write(tmp.path().join("p.toml"), pipeline).unwrap();
    tmp
}

fn run(dir: &Path) -> (Output, String) {
    let out = Command::new(bin()).args(["run", "p.toml"]).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn upstream_labels() -> HashMap<String, &'static str> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("stg_set_features.json")).unwrap()).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let label = match r["label"].as_u64().unwrap() {
                1 => "spiking",
                2 => "bursting",
                _ => "silent",
            };
            (r["ID"].as_u64().unwrap().to_string(), label)
        })
        .collect()
}

/// The committed pipeline's chain with a coarser reference grid (so the debug-built test stays
/// within a few minutes); everything else as in pipelines/dic_population.toml.
const FULL: &str = r#"
[pipeline]
name = "t"
seed = 4

[stages.trains]
kind = "ingest.spike_times"
path = "trains.csv"

[stages.targets]
kind = "dic.estimate"
inputs = ["trains"]
g_s_points = 11
g_u_points = 7
cells_per_reference = 2
neighbours = 3
duration_ms = 5000.0

[stages.population]
kind = "dic.population"
inputs = ["targets"]
cells_per_target = 12

[stages.simulated]
kind = "simulate.stg"
inputs = ["population"]
dt_ms = 0.025
duration_ms = 4000.0
transient_ms = 3000.0
gate_tables = true

[stages.cells]
kind = "features.bursts"
inputs = ["simulated"]

[stages.validation]
kind = "dic.validate"
inputs = ["cells"]

[stages.export]
kind = "sink.csv"
inputs = ["validation"]
path = "out/validation.csv"

[stages.cells_table]
kind = "transform.select"
inputs = ["cells"]
drop = ["spike_times", "target_spike_times"]

[stages.export_cells]
kind = "sink.csv"
inputs = ["cells_table"]
path = "out/cells.csv"
"#;

#[test]
fn population_classes_match_the_example_trains() {
    let csv = std::fs::read_to_string(fixtures().join("stg_set.csv")).unwrap();
    let tmp = workspace(&csv, FULL);
    let (out, text) = run(tmp.path());
    assert!(out.status.success(), "{text}");
    let labels = upstream_labels();
    let rows = read_csv(&tmp.path().join("out/validation.csv"));
    assert_eq!(rows.len(), 5, "{rows:?}\n{text}");
    for r in &rows {
        let want = labels[&r["recording_id"]];
        // the estimator's class of the train = upstream Spike2Pop's label
        assert_eq!(r["target_class"], want, "{r:?}");
        // the generated population behaves like the train
        assert_eq!(r["population_class"], want, "{r:?}");
        let n: usize = r["n_cells"].parse().unwrap();
        let matched: usize = r["n_class_match"].parse().unwrap();
        assert!(n >= 6 && matched * 2 > n, "{r:?}");
        let ratio: f64 = r["r_ratio"].parse().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r:?}");
    }
    // every cell row carries its conductances and a residual within the reachability threshold
    let cells = read_csv(&tmp.path().join("out/cells.csv"));
    assert!(cells.len() >= 30);
    for c in &cells {
        let res: f64 = c["residual"].parse().unwrap();
        assert!(res <= 0.1, "{c:?}");
        for g in ["g_Na", "g_Kd", "g_CaT", "g_CaS", "g_KCa", "g_A", "g_H", "g_leak"] {
            assert!(c[g].parse::<f64>().unwrap() >= 0.0);
        }
    }
}

const INGEST_ONLY: &str = r#"
[pipeline]
name = "t"

[stages.trains]
kind = "ingest.spike_times"
path = "trains.csv"

[stages.counts]
kind = "transform.select"
inputs = ["trains"]
columns = ["recording_id", "spike_count"]

[stages.export]
kind = "sink.csv"
inputs = ["counts"]
path = "out/trains.csv"
"#;

#[test]
fn bad_csv_rows_fail_alone() {
    let good = std::fs::read_to_string(fixtures().join("stg_set.csv")).unwrap();
    let mut csv = good.trim_end().to_string();
    csv.push_str(
        "\nunsorted,\"[1.0, 3.0, 2.0, 4.0]\"\n\
         negative,\"[-1.0, 3.0, 5.0]\"\n\
         dup,\"[1.0, 2.0, 2.0, 4.0]\"\n\
         few,\"[1.0, 2.0]\"\n\
         broken,\"[1.0, 2.0, 3.0\"\n\
         words,\"[1.0, two, 3.0]\"\n\
         1,\"[1.0, 2.0, 3.0]\"\n\
         nocomma\n",
    );
    let tmp = workspace(&csv, INGEST_ONLY);
    let (_out, text) = run(tmp.path());
    for (id, reason) in [
        ("unsorted", "not sorted"),
        ("negative", "negative"),
        ("dup", "duplicates"),
        ("few", "at least 3"),
        ("broken", "`]`"),
        ("words", "not a number"),
        ("1", "more than once"),
        ("line 14", "no comma"),
    ] {
        assert!(text.contains(id) && text.contains(reason), "missing `{id}`: `{reason}` in:\n{text}");
    }
    let rows = read_csv(&tmp.path().join("out/trains.csv"));
    let got: Vec<(String, String)> = rows.iter().map(|r| (r["recording_id"].clone(), r["spike_count"].clone())).collect();
    let want: Vec<(String, String)> =
        [("1", "10"), ("2", "16"), ("3", "23"), ("4", "35"), ("5", "16")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn wrong_header_is_reported() {
    let tmp = workspace("id;times\n1;[1,2,3]\n", INGEST_ONLY);
    let (_out, text) = run(tmp.path());
    assert!(text.contains("ID,spiking_times"), "{text}");
}

/// The spike-times-to-DIC loop of pipelines/dic_train.toml at a small size: targets held out by
/// the `split` column never train the model (checked from the prediction table), the regressors
/// beat the constant (training-mean) predictor on the held-out targets, and the trained model
/// files then drive `dic.estimate` on Spike2Pop's example trains with the upstream classes.
#[test]
fn dic_train_loop_trains_on_train_targets_and_feeds_the_estimator() {
    let pipeline = r#"
[pipeline]
name = "t"
seed = 11

[stages.targets]
kind = "dic.targets"
n = 150
test_fraction = 0.3

[stages.population]
kind = "dic.population"
inputs = ["targets"]
cells_per_target = 2
spike_column = ""
drop_unreachable = true

[stages.simulated]
kind = "simulate.stg"
inputs = ["population"]
dt_ms = 0.025
duration_ms = 4000.0
transient_ms = 3000.0
gate_tables = true

[stages.classes]
kind = "features.bursts"
inputs = ["simulated"]
target_column = ""

[stages.isi]
kind = "features.isi"
inputs = ["classes"]

[stages.dics]
kind = "train.regress"
inputs = ["isi"]
features = ["isi_features"]
target = ["g_s_target", "g_u_target"]
model = { model = "gradient_boosting", n_estimators = 60, max_depth = 3 }
validation = { method = "split", column = "split", train = ["train"], test = ["test"] }
drop_incomplete_rows = true
keep = ["recording_id", "split"]
artifacts = "models"

[stages.export]
kind = "sink.csv"
inputs = ["dics"]
path = "out/predictions.csv"
"#;
    let tmp = workspace("", pipeline);
    let (out, text) = run(tmp.path());
    assert!(out.status.success(), "{text}");
    let rows = read_csv(&tmp.path().join("out/predictions.csv"));
    assert!(rows.len() > 50, "{} held-out cells", rows.len());
    assert!(rows.iter().all(|r| r["split"] == "test"), "only held-out targets are scored");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("models/metrics.json")).unwrap()).unwrap();
    for t in ["g_s_target", "g_u_target"] {
        let y: Vec<f64> = rows.iter().map(|r| r[t].parse().unwrap()).collect();
        let p: Vec<f64> = rows.iter().map(|r| r[&format!("{t}_predicted")].parse().unwrap()).collect();
        let mae = y.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum::<f64>() / y.len() as f64;
        let reported = m["targets"][t]["pooled"]["values"]["mae"].as_f64().unwrap();
        assert!((mae - reported).abs() < 1e-9, "{t}: metrics.json MAE {reported} vs predictions {mae}");
        // The constant predictor: the mean target of the uniform design, the plane's centre.
        let centre = if t == "g_s_target" { 0.0 } else { 10.0 };
        let base = y.iter().map(|a| (a - centre).abs()).sum::<f64>() / y.len() as f64;
        assert!(mae < 0.8 * base, "{t}: MAE {mae} vs constant predictor {base}");
    }
    assert!(tmp.path().join("models/model-g_s_target.json").exists() && tmp.path().join("models/metrics.parquet").exists());

    // The trained models replace the reference set of dic.estimate.
    let csv = std::fs::read_to_string(fixtures().join("stg_set.csv")).unwrap();
    std::fs::write(tmp.path().join("trains.csv"), csv).unwrap();
    std::fs::write(
        tmp.path().join("p.toml"),
        r#"
[pipeline]
name = "u"

[stages.trains]
kind = "ingest.spike_times"
path = "trains.csv"

[stages.targets]
kind = "dic.estimate"
inputs = ["trains"]
model_g_s = "models/model-g_s_target.json"
model_g_u = "models/model-g_u_target.json"

[stages.table]
kind = "transform.select"
inputs = ["targets"]
drop = ["spike_times"]

[stages.export]
kind = "sink.csv"
inputs = ["table"]
path = "out/targets.csv"
"#,
    )
    .unwrap();
    let (out, text) = run(tmp.path());
    assert!(out.status.success(), "{text}");
    let labels = upstream_labels();
    let est = read_csv(&tmp.path().join("out/targets.csv"));
    assert_eq!(est.len(), 5);
    for r in &est {
        assert_eq!(r["target_class"], labels[&r["recording_id"]], "{r:?}");
        let (gs, gu): (f64, f64) = (r["g_s_target"].parse().unwrap(), r["g_u_target"].parse().unwrap());
        assert!((-20.0..=20.0).contains(&gs) && (0.0..=20.0).contains(&gu), "{r:?}");
    }
}

/// The estimate stage of pipelines/dic_population.toml (the committed per-class models) on one
/// train, with and without a small coarse-to-fine refinement (`rounds = 2`: a 3 x 3 grid 2 apart,
/// then a 3 x 3 grid 1 apart around the first choice). The refined target must lie on the
/// estimate's grid: a multiple of 1 from it, at most 2 + 1 away per axis, and — because the
/// first round moves in steps of 2 — not reachable by the first round alone when it is odd.
/// No test asserts R <= 1 on the five trains with the committed pipeline: it holds at the
/// pipeline's seed but not across seeds (docs/studies.md, "Study 4: the ratio R and the
/// refinement"), so such a test would pin a seed's luck rather than a property.
#[test]
fn refinement_rounds_refine_on_a_halved_grid() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/dic_models");
    let m = |f: &str| models.join(f).display().to_string();
    let estimate = |refine: &str| {
        format!(
            r#"
[pipeline]
name = "r"
seed = 4

[stages.trains]
kind = "ingest.spike_times"
path = "trains.csv"

[stages.targets]
kind = "dic.estimate"
inputs = ["trains"]
dt_ms = 0.025
models_by_class = {{ spiking = {{ g_s = "{}", g_u = "{}" }}, bursting = {{ g_s = "{}", g_u = "{}" }} }}
{refine}

[stages.table]
kind = "transform.select"
inputs = ["targets"]
drop = ["spike_times"]

[stages.export]
kind = "sink.csv"
inputs = ["table"]
path = "out/targets.csv"
"#,
            m("spiking-g_s.json.zst"),
            m("spiking-g_u.json.zst"),
            m("bursting-g_s.json.zst"),
            m("bursting-g_u.json.zst")
        )
    };
    // Train 5 of the example set: the doublet burster at the spiking/bursting border.
    let csv = std::fs::read_to_string(fixtures().join("stg_set.csv")).unwrap();
    let one: String = csv.lines().enumerate().filter(|(i, _)| *i == 0 || *i == 5).map(|(_, l)| format!("{l}\n")).collect();
    let target = |refine: &str| -> (f64, f64) {
        let tmp = workspace(&one, &estimate(refine));
        let (out, text) = run(tmp.path());
        assert!(out.status.success(), "{text}");
        let rows = read_csv(&tmp.path().join("out/targets.csv"));
        assert_eq!(rows.len(), 1, "{text}");
        assert_eq!(rows[0]["target_class"], "bursting");
        (rows[0]["g_s_target"].parse().unwrap(), rows[0]["g_u_target"].parse().unwrap())
    };
    let raw = target("");
    let refined = target(r#"refine = { step_g_s = 2.0, step_g_u = 2.0, radius = 1, cells = 3, duration_ms = 3600.0, rounds = 2 }"#);
    eprintln!("raw estimate {raw:?}, refined {refined:?}");
    // Deterministic (seeded) for this train: the refinement moves the estimate.
    assert_ne!(raw, refined, "the refinement kept the raw estimate");
    for (r, e) in [(refined.0, raw.0), (refined.1, raw.1)] {
        let off = r - e;
        assert!((off - off.round()).abs() < 1e-9, "offset {off} is not on the 1-step grid (raw {raw:?}, refined {refined:?})");
        assert!(off.abs() <= 3.0 + 1e-9, "offset {off} beyond 2 + 1 (raw {raw:?}, refined {refined:?})");
    }

    // Bad refinement settings are refused before anything runs, each named.
    let tmp = workspace(&one, &estimate(r#"refine = { rounds = 0, criterion = "distance" }"#));
    let (out, text) = run(tmp.path());
    assert!(!out.status.success());
    assert!(text.contains("rounds"), "{text}");
    let tmp = workspace(&one, &estimate(r#"refine = { criterion = "closest" }"#));
    let (out, text) = run(tmp.path());
    assert!(!out.status.success());
    assert!(text.contains("criterion") || text.contains("closest"), "{text}");
}
