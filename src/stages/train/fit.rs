//! The operator the training kinds share, in named steps: gather the rows of every input (in
//! input order), build the data set (complete rows, targets, groups), validate out of sample
//! (folds, with the grid search inside each training fold), score every fold, the pooled rows and
//! each `report_by` group, run the diagnostics (permutation importance, learning curve), draw the
//! figures, refit on every row, then commit the artifacts and emit the out-of-fold table.
//! Clustering, fitted on every row without folds, is in `cluster.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use ndarray::Array2;
use serde_json::{Map, Value};

use super::artifacts::{MetricRow, commit_artifacts};
use super::config::{TaskKind, Train, ValidationSpec};
use super::table::{Features, f64_values, gather, string_values};
use crate::error::{Error, Result};
use crate::stage::columns::unit_of;
use crate::stage::{Emitter, TransformOperator};
use crate::train::diagnostics::{self, Importance, LearningPoint};
use crate::train::metrics::{Scores, classification_scores, regression_scores};
use crate::train::models::{self, FitOptions, FittedModel, ModelError, ModelSpec, Prediction, Target, Task, TrainingData};
use crate::train::plots::{self, PlotError};
use crate::train::validation::Fold;

/// A running training stage: buffers every input, trains at `finish`.
pub struct TrainOperator<K: TaskKind> {
    pub(super) cfg: Train<K>,
    pub(super) name: String,
    pub(super) seed: u64,
    pub(super) artifacts: PathBuf,
    pub(super) keep: Vec<String>,
    pub(super) schema: SchemaRef,
    /// The batches of each input as they arrive; joined in input order at `finish`, so the table
    /// trained on never depends on which input delivered first.
    pub(super) inputs: Vec<Vec<RecordBatch>>,
}

/// The complete rows a training stage learns from.
pub struct Rows {
    pub(super) feature_names: Vec<String>,
    pub(super) x: Array2<f64>,
    /// The values of each target (regression).
    values: Vec<Vec<f64>>,
    /// The class labels (classification), or the labels clusters are scored against.
    pub(super) labels: Vec<String>,
    /// The values of the validation scheme's column (grouped and split schemes).
    groups: Option<Vec<String>>,
    /// The values of `report_by`.
    report_by: Option<Vec<String>>,
    /// The keep columns.
    keep: Vec<ArrayRef>,
    /// Rows left out as incomplete (`drop_incomplete_rows`).
    dropped: usize,
}

impl Rows {
    pub(super) fn n(&self) -> usize {
        self.x.nrows()
    }
}

/// What a training run produces: the output table's columns, metrics.json, the rows of
/// metrics.parquet, and the files beside them (model files and figures, in the order written).
#[derive(Default)]
pub struct Outcome {
    pub(super) columns: Vec<ArrayRef>,
    pub(super) report: Map<String, Value>,
    metric_rows: Vec<MetricRow>,
    pub(super) files: Vec<(String, Vec<u8>)>,
    plot_errors: Vec<Value>,
}

impl Outcome {
    pub(super) fn metric(&mut self, scope: impl Into<String>, fold: i64, target: &str, metric: &str, value: f64) {
        self.metric_rows.push(MetricRow::new(scope, fold, target, metric, value));
    }

    /// Keeps a rendered figure, or logs and records why it could not be drawn: a figure is a view
    /// of the metrics, so it never fails the stage.
    pub(super) fn keep_figure(&mut self, stage: &str, file: String, drawn: std::result::Result<Vec<u8>, PlotError>) {
        match drawn {
            Ok(png) => self.files.push((file, png)),
            Err(e) => {
                tracing::warn!("stage `{stage}`: figure {file} not drawn: {e}");
                self.plot_errors.push(serde_json::json!({ "file": file, "error": e.to_string() }));
            }
        }
    }
}

/// How a model is fitted on a set of rows: the configured spec, or the winner of a grid search
/// on those rows alone (inner folds), so a test fold never helps choose.
struct ModelChoice {
    candidates: Vec<ModelSpec>,
    options: FitOptions,
    grid_folds: usize,
}

impl ModelChoice {
    /// The fitted model, and the spec the grid search chose (if there was a grid).
    fn fit(&self, data: &TrainingData) -> std::result::Result<(FittedModel, Option<ModelSpec>), ModelError> {
        if self.candidates.len() == 1 {
            Ok((models::fit(&self.candidates[0], &self.options, data)?, None))
        } else {
            let s = models::grid_search(&self.candidates, &self.options, data, self.grid_folds)?;
            Ok((models::fit(&s.best, &self.options, data)?, Some(s.best)))
        }
    }
}

/// One target's cross-validation: the out-of-fold prediction of every tested row (by row of the
/// table), each fold's scores, the grid's choices and the fold models (for the diagnostics).
struct CrossValidated {
    /// Regression predictions (NaN for a row no fold tests).
    values: Vec<f64>,
    /// Predicted class indices (`usize::MAX` for a row no fold tests).
    classes: Vec<usize>,
    fold_scores: Vec<Scores>,
    chosen: Vec<Value>,
    fold_models: Vec<FittedModel>,
}

impl CrossValidated {
    /// The scores of the out-of-fold predictions of rows `sel`.
    fn scores(&self, target: &Target, sel: &[usize]) -> Scores {
        match target {
            Target::Values(y) => {
                let yt: Vec<f64> = sel.iter().map(|&i| y[i]).collect();
                let pv: Vec<f64> = sel.iter().map(|&i| self.values[i]).collect();
                regression_scores(&yt, &pv)
            }
            Target::Classes { labels, classes } => {
                let yt: Vec<usize> = sel.iter().map(|&i| labels[i]).collect();
                let pc: Vec<usize> = sel.iter().map(|&i| self.classes[i]).collect();
                // The majority baseline takes the majority class of the training rows (all rows
                // not in the scope's folds, pooled).
                classification_scores(&yt, &pc, classes.len(), labels)
            }
            Target::None => Scores::default(),
        }
    }
}

impl<K: TaskKind> TransformOperator for TrainOperator<K> {
    fn process(&mut self, input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.inputs[input].push(batch);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let batches: Vec<RecordBatch> = std::mem::take(&mut self.inputs).into_iter().flatten().collect();
        let mut rows = self.gather_rows(&batches)?;
        let mut outcome = Outcome { columns: std::mem::take(&mut rows.keep), report: self.report_header(&rows)?, ..Default::default() };
        K::run(self, rows, &mut outcome)?;
        let Outcome { columns, mut report, metric_rows, files, plot_errors } = outcome;
        let figures: Vec<&String> = files.iter().map(|(f, _)| f).filter(|f| f.ends_with(".png")).collect();
        report.insert("plots".into(), serde_json::to_value(figures)?);
        if !plot_errors.is_empty() {
            report.insert("plot_errors".into(), Value::Array(plot_errors));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        // The artifacts before the table: a stage reading this one's output (predict.model) opens
        // the model file once this stage's output has ended.
        commit_artifacts(&self.artifacts, &Value::Object(report), &metric_rows, &files).map_err(|e| self.fail(format!("writing the artifacts: {e}")))?;
        out.emit(batch);
        Ok(())
    }
}

impl<K: TaskKind> TrainOperator<K> {
    pub(super) fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!("stage `{}`: {msg}", self.name))
    }

    pub(super) fn fit_options(&self) -> FitOptions {
        FitOptions { standardize: self.cfg.standardize, balance_classes: self.cfg.balance_classes, seed: self.seed }
    }

    // ---- Step 1: gather the rows ----------------------------------------------------------------

    /// The complete rows of `batches`: features, targets or labels, groups, `report_by` and keep
    /// columns. An incomplete row fails the stage, naming it, unless `drop_incomplete_rows`.
    fn gather_rows(&self, batches: &[RecordBatch]) -> Result<Rows> {
        let g = gather(batches, &self.cfg.features, self.keep.first().map(String::as_str)).map_err(|e| self.fail(e))?;
        let mut incomplete = g.incomplete.clone();
        let (values, labels) = self.read_targets(batches, &mut incomplete)?;
        let complete = self.complete_rows(&g, &incomplete)?;
        let p = g.names.len();
        let x = Array2::from_shape_fn((complete.len(), p), |(i, j)| g.x[complete[i] * p + j]);
        let pick = |v: &[Option<String>]| -> Vec<String> { complete.iter().map(|&r| v[r].clone().unwrap_or_else(|| "<null>".into())).collect() };
        let groups = match self.cfg.validation().column() {
            Some(c) if K::TASK != Task::Clustering => Some(pick(&string_values(batches, c)?)),
            _ => None,
        };
        let report_by = match &self.cfg.report_by {
            Some(c) => Some(pick(&string_values(batches, c)?)),
            None => None,
        };
        Ok(Rows {
            keep: self.keep_values(batches, &complete)?,
            values: values.iter().map(|v| complete.iter().map(|&r| v[r]).collect()).collect(),
            labels: if labels.is_empty() { labels } else { complete.iter().map(|&r| labels[r].clone()).collect() },
            dropped: g.n - complete.len(),
            feature_names: g.names,
            x,
            groups,
            report_by,
        })
    }

    /// The target values (regression) or labels (classification; clustering with `labels`) of
    /// every row, marking a row with a missing one incomplete.
    fn read_targets(&self, batches: &[RecordBatch], incomplete: &mut [Option<String>]) -> Result<(Vec<Vec<f64>>, Vec<String>)> {
        let targets = self.cfg.targets();
        let (mut values, mut labels) = (Vec::new(), Vec::new());
        match K::TASK {
            Task::Regression => {
                for t in &targets {
                    let v = f64_values(batches, t)?;
                    for (r, x) in v.iter().enumerate() {
                        if incomplete[r].is_none() && !x.is_some_and(f64::is_finite) {
                            incomplete[r] = Some(format!("target `{t}` is {}", x.map_or("null".to_string(), |x| x.to_string())));
                        }
                    }
                    values.push(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect());
                }
            }
            Task::Classification => {
                let t = &targets[0];
                let v = string_values(batches, t)?;
                for (r, x) in v.iter().enumerate() {
                    if incomplete[r].is_none() && x.is_none() {
                        incomplete[r] = Some(format!("label `{t}` is null"));
                    }
                }
                labels = v.into_iter().map(Option::unwrap_or_default).collect();
            }
            _ => {
                if let Some(l) = &self.cfg.labels {
                    labels = string_values(batches, l)?.into_iter().map(|x| x.unwrap_or_else(|| "<null>".into())).collect();
                }
            }
        }
        Ok((values, labels))
    }

    /// The indices of the complete rows; an error naming the first incomplete row unless
    /// incomplete rows are dropped, and when no row is complete.
    fn complete_rows(&self, g: &Features, incomplete: &[Option<String>]) -> Result<Vec<usize>> {
        let bad: Vec<usize> = (0..g.n).filter(|&r| incomplete[r].is_some()).collect();
        if !bad.is_empty() && !self.cfg.drop_incomplete_rows {
            let r = bad[0];
            return Err(self.fail(format!(
                "{} of {} rows are incomplete; first: {} ({}). Fix the input or set `drop_incomplete_rows = true`",
                bad.len(),
                g.n,
                g.unit_of_row[r],
                incomplete[r].as_deref().unwrap_or("")
            )));
        }
        let rows: Vec<usize> = (0..g.n).filter(|&r| incomplete[r].is_none()).collect();
        if rows.is_empty() {
            return Err(self.fail("no complete row to train on"));
        }
        Ok(rows)
    }

    /// The keep columns over every batch, restricted to `rows`.
    fn keep_values(&self, batches: &[RecordBatch], rows: &[usize]) -> Result<Vec<ArrayRef>> {
        let idx = UInt64Array::from_iter_values(rows.iter().map(|&r| r as u64));
        let mut cols = Vec::new();
        for c in &self.keep {
            let parts: Vec<ArrayRef> = batches.iter().map(|b| b.column_by_name(c).cloned().expect("keep column checked")).collect();
            let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            let all = arrow::compute::concat(&parts)?;
            cols.push(arrow::compute::take(&all, &idx, None)?);
        }
        Ok(cols)
    }

    /// The first entries of metrics.json: what was trained on what.
    fn report_header(&self, rows: &Rows) -> Result<Map<String, Value>> {
        let mut report = Map::new();
        report.insert("stage".into(), self.name.clone().into());
        report.insert("kind".into(), K::KIND.into());
        report.insert("model".into(), serde_json::to_value(&self.cfg.model)?);
        report.insert("rows_used".into(), rows.n().into());
        report.insert("rows_dropped_incomplete".into(), rows.dropped.into());
        report.insert("features".into(), serde_json::to_value(&rows.feature_names)?);
        Ok(report)
    }

    // ---- Step 2: the data sets and the folds ---------------------------------------------------

    /// Regression and classification: every target validated out of sample on the same folds.
    pub(super) fn cross_validate(&self, rows: Rows, out: &mut Outcome) -> Result<()> {
        let choice = ModelChoice { candidates: self.cfg.candidates().map_err(|e| self.fail(e))?, options: self.fit_options(), grid_folds: self.cfg.grid_folds };
        let datasets = self.datasets(&rows)?;
        let labels = match datasets.first() {
            Some((_, Target::Classes { labels, .. })) => Some(labels.as_slice()),
            _ => None,
        };
        let folds = self.folds(rows.n(), labels, rows.groups.as_deref())?;
        out.report.insert("folds".into(), folds.len().into());
        let tested = tested_rows(&folds, rows.n(), out)?;
        let mut per_target = Map::new();
        for (tname, target) in datasets {
            let data = TrainingData::new(rows.feature_names.clone(), rows.x.clone(), target).map_err(|e| self.fail(e))?;
            let summary = self.validate_target(&tname, &data, &folds, &tested, rows.report_by.as_deref(), &choice, out)?;
            per_target.insert(tname, Value::Object(summary));
        }
        out.report.insert("targets".into(), Value::Object(per_target));
        Ok(())
    }

    /// One (name, target) per model: each regression target, or the class labels.
    fn datasets(&self, rows: &Rows) -> Result<Vec<(String, Target)>> {
        let targets = self.cfg.targets();
        if K::TASK != Task::Classification {
            return Ok(targets.into_iter().zip(&rows.values).map(|(t, v)| (t, Target::Values(v.clone()))).collect());
        }
        let (labels, classes) = models::encode_labels(&rows.labels);
        if classes.len() < 2 {
            return Err(self.fail(format!("label column `{}` holds a single class ({}); nothing to classify", targets[0], classes.join(", "))));
        }
        Ok(vec![(targets[0].clone(), Target::Classes { labels, classes })])
    }

    /// The folds of the validation scheme; a grouped scheme is checked never to put a group on
    /// both sides (checked, not assumed).
    fn folds(&self, n: usize, labels: Option<&[usize]>, groups: Option<&[String]>) -> Result<Vec<Fold>> {
        let scheme = self.cfg.validation();
        let folds = scheme.folds(n, labels, groups, self.seed).map_err(|e| self.fail(format!("validation: {e}")))?;
        if let Some(gr) = groups.filter(|_| !matches!(scheme, ValidationSpec::Split { .. })) {
            for (k, f) in folds.iter().enumerate() {
                let train: BTreeSet<&String> = f.train.iter().map(|&i| &gr[i]).collect();
                if let Some(&i) = f.test.iter().find(|&&i| train.contains(&gr[i])) {
                    return Err(self.fail(format!("internal: fold {k} has group `{}` on both sides", gr[i])));
                }
            }
        }
        Ok(folds)
    }

    // ---- Steps 3-6: fit, score, diagnose and draw one target -----------------------------------

    /// One target: fit and score every fold, the pooled rows and the `report_by` groups, the
    /// diagnostics and figures, its output columns, and the model refitted on every row. Returns
    /// the target's entry of metrics.json.
    #[allow(clippy::too_many_arguments)] // the steps' shared inputs, named rather than bundled
    fn validate_target(
        &self,
        tname: &str,
        data: &TrainingData,
        folds: &[Fold],
        tested: &[usize],
        report_by: Option<&[String]>,
        choice: &ModelChoice,
        out: &mut Outcome,
    ) -> Result<Map<String, Value>> {
        let cv = self.fit_folds(tname, data, folds, choice, out)?;
        let (pooled, by) = self.score_scopes(tname, &data.target, &cv, tested, report_by, out)?;
        let mut t = Map::new();
        t.insert("pooled".into(), serde_json::to_value(&pooled)?);
        t.insert("per_fold".into(), serde_json::to_value(&cv.fold_scores)?);
        if let Target::Classes { classes, .. } = &data.target {
            t.insert("classes".into(), serde_json::to_value(classes)?);
        }
        if !cv.chosen.is_empty() {
            t.insert("grid_choice_per_fold".into(), Value::Array(cv.chosen.clone()));
        }
        if let Some(rb) = &self.cfg.report_by {
            t.insert(format!("by_{rb}"), Value::Object(by));
        }
        let importance = self.permutation_importance(tname, data, folds, &cv, &mut t, out)?;
        let curve = self.learning_curve(tname, data, folds, choice, &mut t, out);
        if self.cfg.plots {
            self.draw_figures(tname, &data.target, tested, &cv, &pooled, report_by, out);
            self.draw_diagnostics(tname, &data.target, importance.as_ref(), curve.as_deref(), out);
        }
        push_target_columns(&data.target, &cv, tested, out);
        // The model every row trains, for predict.model.
        let (model, best) = choice.fit(data).map_err(|e| self.fail(format!("target `{tname}`, final fit on every row: {e}")))?;
        if let Some(b) = best {
            t.insert("grid_choice_final".into(), serde_json::to_value(b).unwrap_or_default());
        }
        out.files.push((self.cfg.model_file(tname), model.to_json().map_err(|e| self.fail(e))?.into_bytes()));
        Ok(t)
    }

    /// Fits every fold's training rows and predicts its test rows.
    fn fit_folds(&self, tname: &str, data: &TrainingData, folds: &[Fold], choice: &ModelChoice, out: &mut Outcome) -> Result<CrossValidated> {
        let n = data.x.nrows();
        let mut cv = CrossValidated { values: vec![f64::NAN; n], classes: vec![usize::MAX; n], fold_scores: Vec::new(), chosen: Vec::new(), fold_models: Vec::with_capacity(folds.len()) };
        for (k, fold) in folds.iter().enumerate() {
            let train = data.select(&fold.train);
            let test = data.select(&fold.test);
            let (model, best) = choice.fit(&train).map_err(|e| self.fail(format!("target `{tname}`, fold {k}: {e}")))?;
            if let Some(b) = best {
                cv.chosen.push(serde_json::to_value(b)?);
            }
            let pr = model.predict(&test.feature_names, test.x.view()).map_err(|e| self.fail(e))?;
            let s = match (&pr, &data.target) {
                (Prediction::Values(v), Target::Values(y)) => {
                    for (&i, &pv) in fold.test.iter().zip(v) {
                        cv.values[i] = pv;
                    }
                    let yt: Vec<f64> = fold.test.iter().map(|&i| y[i]).collect();
                    regression_scores(&yt, v)
                }
                (Prediction::Classes(c), Target::Classes { labels, classes }) => {
                    for (&i, &pc) in fold.test.iter().zip(c) {
                        cv.classes[i] = pc;
                    }
                    let yt: Vec<usize> = fold.test.iter().map(|&i| labels[i]).collect();
                    let tr: Vec<usize> = fold.train.iter().map(|&i| labels[i]).collect();
                    classification_scores(&yt, c, classes.len(), &tr)
                }
                _ => return Err(self.fail("the model's output does not match the target")),
            };
            for (m, v) in &s.values {
                out.metric("fold", k as i64, tname, m, *v);
            }
            cv.fold_scores.push(s);
            cv.fold_models.push(model);
        }
        Ok(cv)
    }

    /// Pooled out-of-fold scores, and the scores of each `report_by` group (by value).
    fn score_scopes(
        &self,
        tname: &str,
        target: &Target,
        cv: &CrossValidated,
        tested: &[usize],
        report_by: Option<&[String]>,
        out: &mut Outcome,
    ) -> Result<(Scores, Map<String, Value>)> {
        let pooled = cv.scores(target, tested);
        for (m, v) in &pooled.values {
            out.metric("pooled", -1, tname, m, *v);
        }
        let mut by = Map::new();
        if let Some(rb) = report_by {
            let mut groups_of: BTreeMap<&String, Vec<usize>> = BTreeMap::new();
            for &i in tested {
                groups_of.entry(&rb[i]).or_default().push(i);
            }
            for (gv, sel) in groups_of {
                let s = cv.scores(target, &sel);
                for (m, v) in &s.values {
                    out.metric(format!("{}={gv}", self.cfg.report_by.as_deref().unwrap_or("")), -1, tname, m, *v);
                }
                by.insert(gv.clone(), serde_json::to_value(&s)?);
            }
        }
        Ok((pooled, by))
    }

    /// Permutation importance on the same folds (off with `importance_repeats = 0`).
    fn permutation_importance(&self, tname: &str, data: &TrainingData, folds: &[Fold], cv: &CrossValidated, t: &mut Map<String, Value>, out: &mut Outcome) -> Result<Option<Importance>> {
        if self.cfg.importance_repeats == 0 {
            return Ok(None);
        }
        let imp = diagnostics::permutation_importance(&cv.fold_models, folds, data, self.cfg.importance_repeats, self.seed, self.cfg.balance_classes)
            .map_err(|e| self.fail(format!("target `{tname}`, permutation importance: {e}")))?;
        for f in &imp.features {
            out.metric("permutation_importance", -1, tname, &f.feature, f.mean);
        }
        let mut ranked = imp.features.clone();
        ranked.sort_by(|a, b| b.mean.total_cmp(&a.mean));
        t.insert("permutation_importance".into(), serde_json::json!({ "score": imp.score, "baseline": imp.baseline, "repeats": imp.repeats, "features": ranked }));
        Ok(Some(imp))
    }

    /// The learning curve on the same folds, when asked for. A fit on a small share of the rows
    /// can fail where the full fit does not (k-NN with more neighbours than rows): that is
    /// recorded and the rest kept.
    fn learning_curve(&self, tname: &str, data: &TrainingData, folds: &[Fold], choice: &ModelChoice, t: &mut Map<String, Value>, out: &mut Outcome) -> Option<Vec<LearningPoint>> {
        let fractions = self.cfg.learning_curve.as_ref()?;
        let balanced = self.cfg.balance_classes;
        let fit = |d: &TrainingData| choice.fit(d).map(|(m, _)| m);
        match diagnostics::learning_curve(fit, folds, data, fractions, self.seed, balanced) {
            Ok(points) => {
                for pt in &points {
                    let scope = format!("learning_curve={}", pt.fraction);
                    for (m, v) in [("train_rows_mean", pt.train_rows_mean), ("train_score", pt.train_score), ("validation_score", pt.validation_score)] {
                        out.metric(scope.clone(), -1, tname, m, v);
                    }
                }
                t.insert("learning_curve".into(), serde_json::json!({ "score": diagnostics::score_name(&data.target, balanced), "points": points }));
                Some(points)
            }
            Err(e) => {
                tracing::warn!("stage `{}`: target `{tname}`, learning curve: {e}", self.name);
                t.insert("learning_curve".into(), serde_json::json!({ "error": e.to_string() }));
                None
            }
        }
    }

    /// `-<target>` in file names when the stage has several targets.
    fn suffix(&self, tname: &str) -> String {
        if self.cfg.targets().len() > 1 { format!("-{tname}") } else { String::new() }
    }

    /// The out-of-fold predictions: predicted against true values (coloured by `report_by`), or
    /// the confusion matrix.
    #[allow(clippy::too_many_arguments)] // the figure's data, named rather than bundled
    fn draw_figures(&self, tname: &str, target: &Target, tested: &[usize], cv: &CrossValidated, pooled: &Scores, report_by: Option<&[String]>, out: &mut Outcome) {
        let stage = &self.name;
        let suffix = self.suffix(tname);
        match target {
            Target::Values(y) => {
                let truth: Vec<f64> = tested.iter().map(|&i| y[i]).collect();
                let pred: Vec<f64> = tested.iter().map(|&i| cv.values[i]).collect();
                let colour: Option<Vec<String>> = report_by.map(|rb| tested.iter().map(|&i| rb[i].clone()).collect());
                let colour = colour.as_deref().zip(self.cfg.report_by.as_deref()).map(|(g, c)| (c, g));
                let r2 = pooled.values.get("r2").map_or("n/a".to_string(), |v| format!("{v:.3}"));
                let unit = self.schema.field_with_name(tname).ok().and_then(|f| unit_of(f).map(str::to_string));
                let axis = match unit {
                    Some(u) => format!("{tname} ({u})"),
                    None => tname.to_string(),
                };
                let title = format!("{stage}: {tname}, out-of-fold R² = {r2}");
                let drawn = plots::predicted_vs_true(&title, &axis, &truth, &pred, colour);
                out.keep_figure(stage, format!("predicted_vs_true{suffix}.png"), drawn);
            }
            Target::Classes { classes, .. } => {
                let v = |m: &str| pooled.values.get(m).map_or("n/a".to_string(), |v| format!("{v:.3}"));
                let title = format!("{stage}: {tname}, out of fold: accuracy {}, balanced {} (majority {})", v("accuracy"), v("balanced_accuracy"), v("majority_baseline_accuracy"));
                let drawn = match &pooled.confusion {
                    Some(cm) => plots::confusion_matrix(&title, classes, cm),
                    None => Err(PlotError::NoData("no confusion matrix was computed".into())),
                };
                out.keep_figure(stage, format!("confusion{suffix}.png"), drawn);
            }
            Target::None => {}
        }
    }

    /// The diagnostics' figures: permutation importance and the learning curve.
    fn draw_diagnostics(&self, tname: &str, target: &Target, importance: Option<&Importance>, curve: Option<&[LearningPoint]>, out: &mut Outcome) {
        let stage = &self.name;
        let suffix = self.suffix(tname);
        let score_label = match diagnostics::score_name(target, self.cfg.balance_classes) {
            "r2" => "R²",
            "balanced_accuracy" => "balanced accuracy",
            _ => "accuracy",
        };
        if let Some(imp) = importance {
            let names: Vec<String> = imp.features.iter().map(|f| f.feature.clone()).collect();
            let mean: Vec<f64> = imp.features.iter().map(|f| f.mean).collect();
            let std: Vec<f64> = imp.features.iter().map(|f| f.std).collect();
            let title = format!("{stage}: permutation importance for {tname} ({} repeats)", imp.repeats);
            let label = format!("drop in out-of-fold {score_label} when the feature is shuffled");
            out.keep_figure(stage, format!("importance{suffix}.png"), plots::importance(&title, &label, &names, &mean, &std));
        }
        if let Some(points) = curve {
            let rows: Vec<f64> = points.iter().map(|p| p.train_rows_mean).collect();
            let train: Vec<f64> = points.iter().map(|p| p.train_score).collect();
            let validation: Vec<f64> = points.iter().map(|p| p.validation_score).collect();
            let title = format!("{stage}: learning curve for {tname}");
            out.keep_figure(stage, format!("learning_curve{suffix}.png"), plots::learning_curve(&title, score_label, &rows, &train, &validation));
        }
    }
}

/// The rows some fold tests (a split leaves some out): the output table keeps only those, with
/// the fold that tested each.
fn tested_rows(folds: &[Fold], n: usize, out: &mut Outcome) -> Result<Vec<usize>> {
    let mut fold_of = vec![-1i64; n];
    for (k, f) in folds.iter().enumerate() {
        for &i in &f.test {
            fold_of[i] = k as i64;
        }
    }
    let tested: Vec<usize> = (0..n).filter(|&i| fold_of[i] >= 0).collect();
    let idx = UInt64Array::from_iter_values(tested.iter().map(|&i| i as u64));
    out.columns = out.columns.iter().map(|c| arrow::compute::take(c, &idx, None)).collect::<std::result::Result<_, _>>()?;
    out.columns.push(Arc::new(Int64Array::from_iter_values(tested.iter().map(|&i| fold_of[i]))));
    Ok(tested)
}

/// A target's output columns: the true value (or label) of every tested row and its
/// out-of-fold prediction.
fn push_target_columns(target: &Target, cv: &CrossValidated, tested: &[usize], out: &mut Outcome) {
    match target {
        Target::Values(y) => {
            out.columns.push(Arc::new(Float64Array::from_iter_values(tested.iter().map(|&i| y[i]))));
            out.columns.push(Arc::new(Float64Array::from_iter_values(tested.iter().map(|&i| cv.values[i]))));
        }
        Target::Classes { labels, classes } => {
            out.columns.push(Arc::new(StringArray::from_iter_values(tested.iter().map(|&i| classes[labels[i]].clone()))));
            out.columns.push(Arc::new(StringArray::from_iter_values(tested.iter().map(|&i| classes[cv.classes[i]].clone()))));
        }
        Target::None => {}
    }
}
