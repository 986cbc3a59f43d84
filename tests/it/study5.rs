//! Study 5 through the real binary: the committed `pipelines/ei_units.toml`, pointed at the six
//! CellExplorer ground-truth units of tests/fixtures/units_mat (three pyramidal cells, three
//! narrow interneurons by CellExplorer's stored type, see that folder's `cells_summary.csv`).
//! Checks the shape of what the study reports: one out-of-fold prediction per unit, one
//! leave-one-out fold per unit, and the supervised (balanced accuracy, majority baseline,
//! confusion) and unsupervised (Hungarian-matched accuracy, NMI, ARI) metrics.

use std::collections::{BTreeSet, HashMap};

use crate::support::{UNIT_FILES, cli, fixture, metrics, output_text, read_csv, repo, unit_workspace};

#[test]
fn ei_units_pipeline_on_six_ground_truth_units() {
    let tmp = unit_workspace("", &UNIT_FILES);
    let pipeline = std::fs::read_to_string(repo().join("pipelines/ei_units.toml")).unwrap();
    assert!(pipeline.contains(r#"paths = ["../data/cellexplorer_groundtruth"]"#), "the pipeline's data path changed");
    std::fs::write(tmp.path().join("ei_units.toml"), pipeline.replace("../data/cellexplorer_groundtruth", "mat")).unwrap();
    let out = cli(tmp.path(), &["run", "ei_units.toml"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let run = tmp.path().join("runs/ei_units");

    // CellExplorer's stored type of each unit (its own summary, not our output).
    let truth: HashMap<String, String> = read_csv(&fixture("units_mat/cells_summary.csv"))
        .into_iter()
        .map(|r| (r["file"].trim_end_matches(".cell_metrics.cellinfo.mat").to_string(), r["putativeCellType"].clone()))
        .collect();

    for (stage, csv) in [("classify", "predictions.csv"), ("classify_without_rule_features", "predictions_without_rule_features.csv")] {
        let rows = read_csv(&run.join(csv));
        // One row per unit, each unit once, with its stored label.
        assert_eq!(rows.len(), UNIT_FILES.len(), "{csv}");
        let sessions: BTreeSet<&str> = rows.iter().map(|r| r["session"].as_str()).collect();
        assert_eq!(sessions, UNIT_FILES.iter().copied().collect::<BTreeSet<_>>(), "{csv}");
        for r in &rows {
            assert_eq!(r["putative_cell_type"], truth[&r["session"]], "{csv}: {}", r["session"]);
        }
        // Leave-one-out: as many folds as units, each unit alone in its fold.
        let folds: BTreeSet<&str> = rows.iter().map(|r| r["fold"].as_str()).collect();
        assert_eq!(folds.len(), UNIT_FILES.len(), "{csv}: folds {folds:?}");
        let m = metrics(&run, stage);
        assert_eq!(m["folds"], 6, "{stage}");
        let t = &m["targets"]["putative_cell_type"];
        assert_eq!(t["per_fold"].as_array().unwrap().len(), 6, "{stage}");
        let pooled = &t["pooled"];
        assert_eq!(pooled["rows"], 6);
        // Three of each class: the majority baseline is 3/6.
        assert_eq!(pooled["values"]["majority_baseline_accuracy"].as_f64().unwrap(), 0.5, "{stage}");
        // The confusion matrix and balanced accuracy agree with the predictions table.
        let classes: Vec<String> = t["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        assert_eq!(classes, ["Narrow Interneuron", "Pyramidal Cell"]);
        let mut confusion = [[0u64; 2]; 2];
        for r in &rows {
            let i = classes.iter().position(|c| *c == r["putative_cell_type"]).unwrap();
            let j = classes.iter().position(|c| *c == r["putative_cell_type_predicted"]).unwrap();
            confusion[i][j] += 1;
        }
        let stored: Vec<Vec<u64>> = serde_json::from_value(pooled["confusion"].clone()).unwrap();
        assert_eq!(stored, confusion.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), "{stage}");
        let recall = |k: usize| confusion[k][k] as f64 / (confusion[k][0] + confusion[k][1]) as f64;
        let balanced = (recall(0) + recall(1)) / 2.0;
        assert!((pooled["values"]["balanced_accuracy"].as_f64().unwrap() - balanced).abs() < 1e-12, "{stage}");
    }

    // Unsupervised: one cluster per unit, scored against the stored labels.
    let rows = read_csv(&run.join("clusters.csv"));
    assert_eq!(rows.len(), 6);
    let m = metrics(&run, "cluster");
    let v = &m["pooled"]["values"];
    assert_eq!(v["clusters"].as_f64().unwrap(), 2.0);
    // Hungarian matching of two clusters to two equal classes, recomputed from the table.
    let count = |cl: &str, ty: &str| rows.iter().filter(|r| r["cluster"] == cl && r["putative_cell_type"] == ty).count();
    let (a, b) = ("Narrow Interneuron", "Pyramidal Cell");
    let matched = (count("0", a) + count("1", b)).max(count("0", b) + count("1", a));
    assert!((v["hungarian_accuracy"].as_f64().unwrap() - matched as f64 / 6.0).abs() < 1e-12, "{v}");
    for key in ["nmi", "ari", "majority_baseline_accuracy"] {
        assert!(v[key].as_f64().is_some_and(f64::is_finite), "{key} missing: {v}");
    }
}
