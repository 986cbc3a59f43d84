//! `train.cluster`: clusters every row (k-means, GMM, DBSCAN) and, given `labels`, scores the
//! clusters against them (Hungarian-matched accuracy, NMI, ARI) and draws them matched to the
//! classes. No folds: a clustering is fitted on every row.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};

use super::config::{TaskKind, Train};
use super::fit::{Outcome, Rows, TrainOperator};
use crate::error::Result;
use crate::train::metrics::{self, Scores};
use crate::train::models::{self, Prediction, Target, Task, TrainingData};
use crate::train::plots::{self, PlotError};

#[derive(Debug, Clone, Copy)]
pub struct Cluster;

pub type TrainCluster = Train<Cluster>;

impl TaskKind for Cluster {
    const KIND: &'static str = "train.cluster";
    const SUMMARY: &'static str = "Cluster rows (k-means, GMM, DBSCAN) and score them against labels (Hungarian accuracy, NMI, ARI)";
    const TASK: Task = Task::Clustering;
    const EXAMPLE: &'static str = "features = [\"upstroke_downstroke_ratio\", \"width\"]\nlabels = \"cell_type\"\nmodel = { model = \"k_means\", n_clusters = 3 }";

    fn run(op: &TrainOperator<Self>, rows: Rows, out: &mut Outcome) -> Result<()> {
        let data = TrainingData::new(rows.feature_names.clone(), rows.x.clone(), Target::None).map_err(|e| op.fail(e))?;
        let model = models::fit(&op.cfg.model, &op.fit_options(), &data).map_err(|e| op.fail(e))?;
        let pr = model.predict(&data.feature_names, data.x.view()).map_err(|e| op.fail(e))?;
        let Prediction::Clusters(clusters) = pr else { return Err(op.fail("the model did not return clusters")) };
        let mut scores = Scores { rows: rows.n(), ..Default::default() };
        let n_clusters = clusters.iter().flatten().collect::<BTreeSet<_>>().len();
        scores.values.insert("clusters".into(), n_clusters as f64);
        scores.values.insert("noise_rows".into(), clusters.iter().filter(|c| c.is_none()).count() as f64);
        if op.cfg.labels.is_some() {
            score_against_labels(op, &rows.labels, &clusters, n_clusters, &mut scores, out)?;
        }
        for (m, v) in &scores.values {
            out.metric("pooled", -1, "clusters", m, *v);
        }
        out.report.insert("pooled".into(), serde_json::to_value(&scores)?);
        out.columns.push(Arc::new(Int64Array::from_iter(clusters.iter().map(|c| c.map(|k| k as i64)))));
        out.files.push(("model.json".into(), model.to_json().map_err(|e| op.fail(e))?.into_bytes()));
        Ok(())
    }
}

/// Scores the clusters against the labels (noise rows form one extra cluster), draws them
/// matched to the classes, and adds the labels column to the output.
fn score_against_labels(op: &TrainOperator<Cluster>, labels: &[String], clusters: &[Option<usize>], n_clusters: usize, scores: &mut Scores, out: &mut Outcome) -> Result<()> {
    let (truth, classes) = models::encode_labels(labels);
    let pred: Vec<usize> = clusters.iter().map(|c| c.unwrap_or(n_clusters)).collect();
    if let Ok(v) = metrics::hungarian_matched_accuracy(&truth, &pred) {
        scores.values.insert("hungarian_accuracy".into(), v);
    }
    if let Ok(v) = metrics::normalized_mutual_info(&truth, &pred) {
        scores.values.insert("nmi".into(), v);
    }
    if let Ok(v) = metrics::adjusted_rand_index(&truth, &pred) {
        scores.values.insert("ari".into(), v);
    }
    let majority = metrics::majority_class(&truth, classes.len()).map(|m| truth.iter().filter(|&&t| t == m).count() as f64 / truth.len() as f64);
    if let Some(m) = majority {
        scores.values.insert("majority_baseline_accuracy".into(), m);
    }
    if op.cfg.plots {
        let v = |m: &str| scores.values.get(m).map_or("n/a".to_string(), |v| format!("{v:.3}"));
        let title = format!("{}: clusters matched to classes, accuracy {}, NMI {}, ARI {}", op.name, v("hungarian_accuracy"), v("nmi"), v("ari"));
        let drawn = metrics::matched_confusion(&truth, &pred, classes.len()).map_err(|e| PlotError::NoData(e.to_string())).and_then(|(cm, unmatched)| {
            let mut names = classes.clone();
            if unmatched {
                names.push("unmatched cluster".into());
            }
            plots::confusion_matrix(&title, &names, &cm)
        });
        out.keep_figure(&op.name, "confusion.png".into(), drawn);
    }
    out.report.insert("classes".into(), serde_json::to_value(&classes)?);
    out.columns.push(Arc::new(StringArray::from_iter_values(labels.iter().cloned())));
    Ok(())
}
