//! Training stages: `train.regress`, `train.classify`, `train.cluster`, and `predict.model`.
//!
//! A training stage gathers its whole input (features only: named numeric columns, list columns
//! expanded to `name[i]`), validates out of sample with the chosen scheme (k-fold, stratified,
//! grouped by a column, leave-one-group-out, leave-one-out, or a split by a column's values),
//! optionally grid-searches hyperparameters inside each training fold only, and emits the
//! out-of-fold predictions as its table. Beside the checkpoint it writes an artifacts folder,
//! committed atomically (written under a temporary name, then renamed into place):
//!
//! * `metrics.json` — pooled out-of-fold metrics, per-fold metrics, and a breakdown by
//!   `report_by` when given. Classification always reports the majority-class and chance
//!   baselines, balanced accuracy, macro F1 and the confusion matrix (imbalance is never hidden);
//!   clustering reports Hungarian-matched accuracy, NMI and ARI against `labels` when given;
//! * `metrics.parquet` — the same numbers as rows (scope, fold, target, metric, value);
//! * `model.json` (`model-<target>.json` for several regression targets) — the model refitted on
//!   every row, which `predict.model` loads;
//! * with `plots = true` (the default), PNG figures: `confusion.png` (train.classify; train.cluster
//!   with `labels`: each cluster matched to a class by the Hungarian assignment),
//!   `predicted_vs_true.png` (train.regress, coloured by `report_by`), `importance.png`
//!   (permutation importance) and `learning_curve.png` (when `learning_curve` is given); with
//!   several regression targets each name gets `-<target>` like the model files.
//!
//! Permutation importance (on by default, `importance_repeats`) and the learning curve (off by
//! default: it refits every fold once per fraction) are computed by
//! [`crate::train::diagnostics`] on the same folds as the metrics, and their numbers go into
//! metrics.json and metrics.parquet as well as the figures.
//!
//! Figures are a view of the metrics, never a substitute: a figure that fails to draw is logged as
//! a warning and listed under `plot_errors` in metrics.json, and the stage commits everything else.
//! A missing figure is easy to redraw; losing an hour of cross-validation to a drawing bug is not.
//!
//! The models and metrics are the reference-tested kernels of [`crate::train`].

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use ndarray::Array2;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{column_list, field, is_numeric};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};
use crate::train::models::{self, FitOptions, FittedModel, ModelError, ModelSpec, ParamGrid, Prediction, Target, Task, TrainingData};
use crate::train::validation::{self, Fold};
use crate::train::metrics::{self, Scores, classification_scores, regression_scores};
use crate::train::{diagnostics, plots};

// ================================================================================================
// Options shared by the training kinds
// ================================================================================================

/// How rows are split into training and test sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ValidationSpec {
    /// k folds of shuffled rows (seeded).
    KFold {
        #[serde(default = "five")]
        k: usize,
    },
    /// k folds keeping each class's share in every fold (classification).
    Stratified {
        #[serde(default = "five")]
        k: usize,
    },
    /// k folds of whole groups (cells, recordings, sessions): no group in both train and test.
    Group {
        column: String,
        #[serde(default = "five")]
        k: usize,
    },
    /// One fold per group (leave-one-cell-out and the like).
    LeaveOneGroupOut { column: String },
    /// One fold per row.
    LeaveOneOut {},
    /// A single split by the values of a column (e.g. train on Noise 1, test on Noise 2).
    Split { column: String, train: Vec<String>, test: Vec<String> },
}

fn five() -> usize {
    5
}
fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}

impl ValidationSpec {
    fn column(&self) -> Option<&str> {
        match self {
            Self::Group { column, .. } | Self::LeaveOneGroupOut { column } | Self::Split { column, .. } => Some(column),
            _ => None,
        }
    }

    fn folds(&self, n: usize, labels: Option<&[usize]>, groups: Option<&[String]>, seed: u64) -> std::result::Result<Vec<Fold>, String> {
        let e = |e: validation::ValidationError| e.to_string();
        match self {
            Self::KFold { k } => validation::k_fold(n, *k, true, seed).map_err(e),
            Self::Stratified { k } => match labels {
                Some(l) => validation::stratified_k_fold(l, *k, seed).map_err(e),
                None => Err("stratified validation needs class labels (use it with train.classify)".into()),
            },
            Self::Group { k, .. } => validation::group_k_fold(groups.expect("group column gathered"), *k, seed).map_err(e),
            Self::LeaveOneGroupOut { .. } => validation::leave_one_group_out(groups.expect("group column gathered")).map_err(e),
            Self::LeaveOneOut {} => validation::leave_one_out(n).map_err(e),
            Self::Split { train, test, .. } => {
                let g = groups.expect("split column gathered");
                let train_set: Vec<String> = train.clone();
                let test_set: Vec<String> = test.clone();
                let fold = validation::split_by_value(g, &train_set, &test_set).map_err(e)?;
                Ok(vec![fold])
            }
        }
    }
}

/// Which learning task a training kind performs (a type-level tag so the three kinds share one
/// config shape and one operator).
pub trait TaskKind: std::fmt::Debug + Clone + Send + Sync + 'static {
    const KIND: &'static str;
    const SUMMARY: &'static str;
    const TASK: Task;
}

#[derive(Debug, Clone, Copy)]
pub struct Regress;
#[derive(Debug, Clone, Copy)]
pub struct Classify;
#[derive(Debug, Clone, Copy)]
pub struct Cluster;

impl TaskKind for Regress {
    const KIND: &'static str = "train.regress";
    const SUMMARY: &'static str = "Fit and cross-validate a regression model (linear, ridge, lasso, Poisson, random forest, gradient boosting, k-NN)";
    const TASK: Task = Task::Regression;
}
impl TaskKind for Classify {
    const KIND: &'static str = "train.classify";
    const SUMMARY: &'static str = "Fit and cross-validate a classifier (logistic, tree, random forest, SVM, k-NN, naive Bayes) with baselines and imbalance handling";
    const TASK: Task = Task::Classification;
}
impl TaskKind for Cluster {
    const KIND: &'static str = "train.cluster";
    const SUMMARY: &'static str = "Cluster rows (k-means, GMM, DBSCAN) and score them against labels (Hungarian accuracy, NMI, ARI)";
    const TASK: Task = Task::Clustering;
}

/// One column name or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn names(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// Fits a model on named feature columns and validates it out of sample.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
#[schemars(bound = "")]
pub struct Train<K: TaskKind> {
    /// Feature columns: numeric scalars, or numeric list columns expanded to `name[i]` [columns].
    pub features: Vec<String>,
    /// Target column (train.regress: one or several, one model each; train.classify: the class
    /// label column; train.cluster: not used) [column].
    #[serde(default)]
    pub target: Option<OneOrMany>,
    /// Label column the clusters are scored against (train.cluster) [column].
    #[serde(default)]
    pub labels: Option<String>,
    /// The model: `{ model = "random_forest", n_trees = 200 }`, ... (see the model list) [table].
    #[schemars(with = "serde_json::Value")]
    pub model: ModelSpec,
    /// Hyperparameter grid searched inside each training fold: `{ alpha = [0.1, 1.0, 10.0] }` [table].
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, Vec<serde_json::Value>>>")]
    pub grid: Option<BTreeMap<String, Vec<serde_json::Value>>>,
    /// Inner folds of the grid search [folds].
    #[serde(default = "three")]
    pub grid_folds: usize,
    /// Validation scheme: `{ method = "k_fold", k = 5 }`, `stratified`, `group` (column),
    /// `leave_one_group_out` (column), `leave_one_out`, `split` (column, train, test). Default:
    /// stratified 5-fold for classification, 5-fold otherwise [table].
    #[serde(default)]
    pub validation: Option<ValidationSpec>,
    /// Standardize features on the training rows before fitting [bool].
    #[serde(default = "yes")]
    pub standardize: bool,
    /// Classification: weight (or oversample) classes to equal total weight [bool].
    #[serde(default)]
    pub balance_classes: bool,
    /// Columns copied into the prediction table (default: `recording_id` when present) [columns].
    #[serde(default)]
    pub keep: Vec<String>,
    /// Also report the metrics per value of this column (e.g. the stimulus type) [column].
    #[serde(default)]
    pub report_by: Option<String>,
    /// Drop rows with a null or non-finite feature or target instead of failing (they are
    /// counted in metrics.json) [bool].
    #[serde(default)]
    pub drop_incomplete_rows: bool,
    /// Folder for metrics.json, metrics.parquet, the model file and the figures, relative to the
    /// pipeline file (default: `<run dir>/artifacts/<stage>`) [path].
    #[serde(default)]
    pub artifacts: Option<String>,
    /// Draw PNG figures into the artifacts folder: confusion matrix (train.classify), predicted
    /// vs true values (train.regress), permutation importance, learning curve (when requested).
    /// train.cluster draws none [bool].
    #[serde(default = "yes")]
    pub plots: bool,
    /// Permutation importance: times each feature is shuffled over the held-out rows of all folds
    /// (seeded) to measure the drop in the out-of-fold score; 0 = off. Costs features x repeats
    /// predictions per fold and no fit (slow only for models whose predictions are, k-NN and
    /// SVM on many rows) [repeats].
    #[serde(default = "five")]
    pub importance_repeats: usize,
    /// Learning curve: the fractions of each training fold to refit on, e.g.
    /// `[0.2, 0.4, 0.6, 0.8, 1.0]`, each in (0, 1]. Off when absent, because it costs one fit
    /// (and grid search) per fraction and fold [fractions].
    #[serde(default)]
    pub learning_curve: Option<Vec<f64>>,
    #[serde(skip)]
    #[schemars(skip)]
    _kind: PhantomData<K>,
}

pub type TrainRegress = Train<Regress>;
pub type TrainClassify = Train<Classify>;
pub type TrainCluster = Train<Cluster>;

impl<K: TaskKind> Train<K> {
    fn targets(&self) -> Vec<String> {
        self.target.as_ref().map(OneOrMany::names).unwrap_or_default()
    }

    fn validation(&self) -> ValidationSpec {
        self.validation.clone().unwrap_or(match K::TASK {
            Task::Classification => ValidationSpec::Stratified { k: 5 },
            _ => ValidationSpec::KFold { k: 5 },
        })
    }

    fn artifacts_dir(&self, ctx: &StageContext) -> PathBuf {
        ctx.artifacts_dir(self.artifacts.as_deref())
    }

    fn keep_columns(&self, input: &Schema) -> Vec<String> {
        if self.keep.is_empty() {
            input.field_with_name("recording_id").map(|_| vec!["recording_id".to_string()]).unwrap_or_default()
        } else {
            self.keep.clone()
        }
    }

    fn candidates(&self) -> std::result::Result<Vec<ModelSpec>, String> {
        match &self.grid {
            None => Ok(vec![self.model.clone()]),
            Some(values) => ParamGrid { base: self.model.clone(), values: values.clone() }.expand().map_err(|e| e.to_string()),
        }
    }
}

fn is_feature_type(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => is_numeric(f.data_type()),
        t => is_numeric(t) || matches!(t, DataType::Boolean),
    }
}

impl<K: TaskKind> StageConfig for Train<K> {
    const KIND: &'static str = K::KIND;
    const SUMMARY: &'static str = K::SUMMARY;
    // 2: the artifacts gained figures, permutation importance and the learning curve;
    // 3: train.cluster draws its clusters matched to the classes.
    const CODE_VERSION: u32 = 3;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if let Some(fractions) = &self.learning_curve {
            if K::TASK == Task::Clustering {
                issues.push(Issue::at(&["learning_curve"], "train.cluster is not validated out of sample; it has no learning curve"));
            } else if fractions.is_empty() {
                issues.push(Issue::at(&["learning_curve"], "give at least one fraction, e.g. [0.2, 0.4, 0.6, 0.8, 1.0]"));
            }
            for (i, &f) in fractions.iter().enumerate() {
                if !(f > 0.0 && f <= 1.0) {
                    issues.push(Issue::at_index("learning_curve", i, format!("{f}: a fraction of the training rows must be in (0, 1]")));
                } else if fractions[..i].contains(&f) {
                    issues.push(Issue::at_index("learning_curve", i, format!("{f} is listed twice")));
                }
            }
        }
        if self.features.is_empty() {
            issues.push(Issue::at(&["features"], "give at least one feature column"));
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if !seen.insert(f) {
                issues.push(Issue::at_index("features", i, format!("`{f}` is listed twice")));
            }
        }
        // Neural networks serve both supervised tasks: name both rather than their nominal one.
        let task = if self.model.serves(Task::Regression) && self.model.serves(Task::Classification) {
            "Regression or Classification".to_string()
        } else {
            format!("{:?}", self.model.task())
        };
        if !self.model.serves(K::TASK) {
            issues.push(Issue::at(&["model"], format!("`{}` is a {task} model; {} needs a {:?} model", self.model.name(), K::KIND, K::TASK)));
        }
        if let Err(e) = self.model.validate(usize::MAX) {
            issues.push(Issue::at(&["model"], e.to_string()));
        }
        match (K::TASK, &self.target) {
            (Task::Regression | Task::Classification, None) => issues.push(Issue::at(&[], format!("{} needs `target`", K::KIND))),
            (Task::Classification, Some(OneOrMany::Many(v))) if v.len() != 1 => issues.push(Issue::at(&["target"], "one class label column")),
            (Task::Clustering, Some(_)) => issues.push(Issue::at(&["target"], "train.cluster has no target; use `labels` to score the clusters")),
            _ => {}
        }
        if K::TASK != Task::Clustering && self.labels.is_some() {
            issues.push(Issue::at(&["labels"], "only train.cluster takes `labels`; use `target`"));
        }
        if self.balance_classes && K::TASK != Task::Classification {
            issues.push(Issue::at(&["balance_classes"], "only train.classify balances classes"));
        }
        if self.grid.is_some() {
            if self.grid_folds < 2 {
                issues.push(Issue::at(&["grid_folds"], "at least 2 inner folds"));
            }
            if let Err(e) = self.candidates() {
                issues.push(Issue::at(&["grid"], e));
            }
        }
        match self.validation() {
            ValidationSpec::KFold { k } | ValidationSpec::Stratified { k } | ValidationSpec::Group { k, .. } if k < 2 => {
                issues.push(Issue::at(&["validation", "k"], format!("k = {k}: at least 2 folds")))
            }
            ValidationSpec::Stratified { .. } if K::TASK != Task::Classification => {
                issues.push(Issue::at(&["validation", "method"], "stratified folds need class labels: use k_fold or group"))
            }
            _ => {}
        }
        if K::TASK == Task::Clustering && self.validation.is_some() {
            issues.push(Issue::at(&["validation"], "clustering is fitted on every row; it takes no validation scheme"));
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let mut issues = Vec::new();
        for (i, f) in self.features.iter().enumerate() {
            match input.field_with_name(f) {
                Err(_) => issues.push(Issue::at_index("features", i, format!("the input has no column `{f}`; it has: {}", column_list(input)))),
                Ok(fd) if !is_feature_type(fd.data_type()) => issues.push(Issue::at_index(
                    "features",
                    i,
                    format!("`{f}` is {}; features must be numeric scalars or numeric lists", crate::stage::columns::type_name(fd.data_type())),
                )),
                _ => {}
            }
        }
        let mut need = |key: &str, col: &str, numeric: bool| match input.field_with_name(col) {
            Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{col}`; it has: {}", column_list(input)))),
            Ok(fd) if numeric && !is_numeric(fd.data_type()) => {
                issues.push(Issue::at(&[key], format!("`{col}` is {}; a regression target must be numeric", crate::stage::columns::type_name(fd.data_type()))))
            }
            Ok(fd) if !crate::stage::columns::is_scalar(fd.data_type()) => {
                issues.push(Issue::at(&[key], format!("`{col}` is {}; give a scalar column", crate::stage::columns::type_name(fd.data_type()))))
            }
            _ => {}
        };
        for t in self.targets() {
            need("target", &t, K::TASK == Task::Regression);
        }
        if let Some(l) = &self.labels {
            need("labels", l, false);
        }
        if let Some(c) = self.validation().column() {
            need("validation", c, false);
        }
        if let Some(c) = &self.report_by {
            need("report_by", c, false);
        }
        for c in &self.keep {
            need("keep", c, false);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut fields: Vec<Field> = self.keep_columns(input).iter().map(|c| input.field_with_name(c).unwrap().clone()).collect();
        let mut reserved: BTreeSet<String> = fields.iter().map(|f| f.name().clone()).collect();
        let mut add = |f: Field, fields: &mut Vec<Field>| {
            if reserved.insert(f.name().clone()) {
                fields.push(f);
            }
        };
        match K::TASK {
            Task::Regression => {
                add(field("fold", DataType::Int64, false, None), &mut fields);
                for t in self.targets() {
                    let unit = input.field_with_name(&t).ok().and_then(|f| crate::stage::columns::unit_of(f).map(str::to_string));
                    add(field(&t, DataType::Float64, false, unit.as_deref()), &mut fields);
                    add(field(&format!("{t}_predicted"), DataType::Float64, false, unit.as_deref()), &mut fields);
                }
            }
            Task::Classification => {
                add(field("fold", DataType::Int64, false, None), &mut fields);
                let t = &self.targets()[0];
                add(field(t, DataType::Utf8, false, None), &mut fields);
                add(field(&format!("{t}_predicted"), DataType::Utf8, false, None), &mut fields);
            }
            _ => {
                if let Some(l) = &self.labels {
                    add(field(l, DataType::Utf8, false, None), &mut fields);
                }
                add(field("cluster", DataType::Int64, true, None), &mut fields);
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn external_outputs(&self, ctx: &StageContext) -> Vec<PathBuf> {
        vec![self.artifacts_dir(ctx).join("metrics.json")]
    }

    fn build(&self, ctx: &StageContext, inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        Ok(Operator::Transform(Box::new(TrainOperator {
            cfg: self.clone(),
            name: ctx.name.clone(),
            seed: ctx.seed,
            artifacts: self.artifacts_dir(ctx),
            keep: self.keep_columns(&inputs[0]),
            schema: output.clone(),
            batches: Vec::new(),
        })))
    }
}

// ================================================================================================
// Gathering the table
// ================================================================================================

/// The rows a training stage learns from, column by column.
struct Gathered {
    feature_names: Vec<String>,
    /// Row-major, n × feature_names.len().
    x: Vec<f64>,
    n: usize,
    /// Why a row is unusable (null / non-finite feature or target), by row.
    incomplete: Vec<Option<String>>,
    unit_of_row: Vec<String>,
}

fn string_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).ok_or_else(|| Error::msg(format!("no column `{col}`")))?;
        let c = arrow::compute::cast(c, &DataType::Utf8)?;
        out.extend(c.as_string::<i32>().iter().map(|s| s.map(str::to_string)));
    }
    Ok(out)
}

fn f64_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).ok_or_else(|| Error::msg(format!("no column `{col}`")))?;
        let c = arrow::compute::cast(c, &DataType::Float64)?;
        out.extend(c.as_primitive::<Float64Type>().iter());
    }
    Ok(out)
}

/// Values of a list column over all batches, one Vec per row (None for a null row).
fn list_values(batches: &[RecordBatch], col: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(crate::stage::columns::f64_list_rows(b, col)?);
    }
    Ok(out)
}

fn gather(batches: &[RecordBatch], features: &[String], unit_col: Option<&str>) -> Result<Gathered> {
    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| Error::msg("the input is empty: nothing to train on"))?;
    let mut names = Vec::new();
    let mut columns: Vec<Vec<f64>> = Vec::new();
    let mut incomplete: Vec<Option<String>> = vec![None; n];
    for f in features {
        let dt = schema.field_with_name(f).map_err(|_| Error::msg(format!("no column `{f}`")))?.data_type().clone();
        if matches!(dt, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)) {
            let rows = list_values(batches, f)?;
            let width = rows.iter().flatten().map(Vec::len).next().unwrap_or(0);
            if width == 0 {
                return Err(Error::msg(format!("list column `{f}` has no values")));
            }
            if let Some((r, len)) = rows.iter().enumerate().find_map(|(r, v)| v.as_ref().filter(|v| v.len() != width).map(|v| (r, v.len()))) {
                return Err(Error::msg(format!("list column `{f}`: row {r} has {len} values, the first row {width}; a feature list must have one length")));
            }
            for i in 0..width {
                names.push(format!("{f}[{i}]"));
                columns.push(rows.iter().map(|v| v.as_ref().map_or(f64::NAN, |v| v[i])).collect());
            }
            for (r, v) in rows.iter().enumerate() {
                if incomplete[r].is_none() {
                    match v {
                        None => incomplete[r] = Some(format!("feature `{f}` is null")),
                        Some(v) if v.iter().any(|x| !x.is_finite()) => incomplete[r] = Some(format!("feature `{f}` holds a non-finite value")),
                        _ => {}
                    }
                }
            }
        } else {
            let vals = f64_values(batches, f)?;
            for (r, v) in vals.iter().enumerate() {
                if incomplete[r].is_none() {
                    match v {
                        None => incomplete[r] = Some(format!("feature `{f}` is null")),
                        Some(x) if !x.is_finite() => incomplete[r] = Some(format!("feature `{f}` is {x}")),
                        _ => {}
                    }
                }
            }
            names.push(f.clone());
            columns.push(vals.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect());
        }
    }
    let p = columns.len();
    let mut x = vec![0.0; n * p];
    for (j, c) in columns.iter().enumerate() {
        for (r, &v) in c.iter().enumerate() {
            x[r * p + j] = v;
        }
    }
    let unit_of_row = match unit_col {
        Some(c) => string_values(batches, c)?.into_iter().enumerate().map(|(r, u)| u.unwrap_or_else(|| format!("row {r}"))).collect(),
        None => (0..n).map(|r| format!("row {r}")).collect(),
    };
    Ok(Gathered { feature_names: names, x, n, incomplete, unit_of_row })
}

// ================================================================================================
// The operator
// ================================================================================================

struct TrainOperator<K: TaskKind> {
    cfg: Train<K>,
    name: String,
    seed: u64,
    artifacts: PathBuf,
    keep: Vec<String>,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl<K: TaskKind> TrainOperator<K> {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!("stage `{}`: {msg}", self.name))
    }

    /// Keeps a rendered figure, or logs and records why it could not be drawn (see the module
    /// documentation: figures never fail the stage).
    fn keep_figure(&self, file: String, drawn: std::result::Result<Vec<u8>, plots::PlotError>, files: &mut Vec<(String, Vec<u8>)>, errors: &mut Vec<serde_json::Value>) {
        match drawn {
            Ok(png) => files.push((file, png)),
            Err(e) => {
                tracing::warn!("stage `{}`: figure {file} not drawn: {e}", self.name);
                errors.push(serde_json::json!({ "file": file, "error": e.to_string() }));
            }
        }
    }

    fn run(&mut self) -> Result<(RecordBatch, serde_json::Value, Vec<(String, Vec<u8>)>)> {
        let batches = std::mem::take(&mut self.batches);
        let unit_col = self.keep.first().map(String::as_str);
        let g = gather(&batches, &self.cfg.features, unit_col).map_err(|e| self.fail(e))?;
        let targets = self.cfg.targets();
        // Target values / labels, with incomplete rows marked.
        let mut incomplete = g.incomplete.clone();
        let mut values: Vec<Vec<f64>> = Vec::new();
        let mut labels_raw: Vec<String> = Vec::new();
        match K::TASK {
            Task::Regression => {
                for t in &targets {
                    let v = f64_values(&batches, t)?;
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
                let v = string_values(&batches, t)?;
                for (r, x) in v.iter().enumerate() {
                    if incomplete[r].is_none() && x.is_none() {
                        incomplete[r] = Some(format!("label `{t}` is null"));
                    }
                }
                labels_raw = v.into_iter().map(Option::unwrap_or_default).collect();
            }
            _ => {
                if let Some(l) = &self.cfg.labels {
                    labels_raw = string_values(&batches, l)?.into_iter().map(|x| x.unwrap_or_else(|| "<null>".into())).collect();
                }
            }
        }
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
        let n = rows.len();
        if n == 0 {
            return Err(self.fail("no complete row to train on"));
        }
        let p = g.feature_names.len();
        let x = Array2::from_shape_fn((n, p), |(i, j)| g.x[rows[i] * p + j]);
        let pick_s = |v: &[Option<String>]| -> Vec<String> { rows.iter().map(|&r| v[r].clone().unwrap_or_else(|| "<null>".into())).collect() };
        let groups = match self.cfg.validation().column() {
            Some(c) if K::TASK != Task::Clustering => Some(pick_s(&string_values(&batches, c)?)),
            _ => None,
        };
        let report_by = match &self.cfg.report_by {
            Some(c) => Some(pick_s(&string_values(&batches, c)?)),
            None => None,
        };
        let keep_cols: Vec<ArrayRef> = {
            let idx = arrow::array::UInt64Array::from_iter_values(rows.iter().map(|&r| r as u64));
            let mut cols = Vec::new();
            for c in &self.keep {
                let parts: Vec<ArrayRef> = batches.iter().map(|b| b.column_by_name(c).cloned().expect("keep column checked")).collect();
                let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                let all = arrow::compute::concat(&parts)?;
                cols.push(arrow::compute::take(&all, &idx, None)?);
            }
            cols
        };
        let options = FitOptions { standardize: self.cfg.standardize, balance_classes: self.cfg.balance_classes, seed: self.seed };
        let candidates = self.cfg.candidates().map_err(|e| self.fail(e))?;
        let mut report = serde_json::Map::new();
        report.insert("stage".into(), self.name.clone().into());
        report.insert("kind".into(), K::KIND.into());
        report.insert("model".into(), serde_json::to_value(&self.cfg.model)?);
        report.insert("rows_used".into(), n.into());
        report.insert("rows_dropped_incomplete".into(), bad.len().into());
        report.insert("features".into(), serde_json::to_value(&g.feature_names)?);
        let mut metric_rows: Vec<(String, i64, String, String, f64)> = Vec::new();
        let mut models_out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut plot_errors: Vec<serde_json::Value> = Vec::new();
        let mut columns = keep_cols;
        let fit_best = |data: &TrainingData| -> std::result::Result<(FittedModel, Option<ModelSpec>), ModelError> {
            if candidates.len() == 1 {
                Ok((models::fit(&candidates[0], &options, data)?, None))
            } else {
                let s = models::grid_search(&candidates, &options, data, self.cfg.grid_folds)?;
                Ok((models::fit(&s.best, &options, data)?, Some(s.best)))
            }
        };
        match K::TASK {
            Task::Regression | Task::Classification => {
                let (target, classes) = if K::TASK == Task::Classification {
                    let l: Vec<String> = rows.iter().map(|&r| labels_raw[r].clone()).collect();
                    let (idx, classes) = models::encode_labels(&l);
                    if classes.len() < 2 {
                        return Err(self.fail(format!("label column `{}` holds a single class ({}); nothing to classify", targets[0], classes.join(", "))));
                    }
                    (Some(Target::Classes { labels: idx, classes: classes.clone() }), Some(classes))
                } else {
                    (None, None)
                };
                let label_idx: Option<Vec<usize>> = match &target {
                    Some(Target::Classes { labels, .. }) => Some(labels.clone()),
                    _ => None,
                };
                let folds = self
                    .cfg
                    .validation()
                    .folds(n, label_idx.as_deref(), groups.as_deref(), self.seed)
                    .map_err(|e| self.fail(format!("validation: {e}")))?;
                if let Some(gr) = &groups {
                    // Grouped schemes must never put a group on both sides (checked, not assumed).
                    for (k, f) in folds.iter().enumerate() {
                        let train: BTreeSet<&String> = f.train.iter().map(|&i| &gr[i]).collect();
                        if let Some(&i) = f.test.iter().find(|&&i| train.contains(&gr[i])) {
                            if !matches!(self.cfg.validation(), ValidationSpec::Split { .. }) {
                                return Err(self.fail(format!("internal: fold {k} has group `{}` on both sides", gr[i])));
                            }
                        }
                    }
                }
                report.insert("folds".into(), folds.len().into());
                let mut fold_of = vec![-1i64; n];
                for (k, f) in folds.iter().enumerate() {
                    for &i in &f.test {
                        fold_of[i] = k as i64;
                    }
                }
                let tested: Vec<usize> = (0..n).filter(|&i| fold_of[i] >= 0).collect();
                // Restrict the output to rows that were tested (a split leaves some out).
                let tested_idx = arrow::array::UInt64Array::from_iter_values(tested.iter().map(|&i| i as u64));
                columns = columns.iter().map(|c| arrow::compute::take(c, &tested_idx, None)).collect::<std::result::Result<_, _>>()?;
                columns.push(Arc::new(Int64Array::from_iter_values(tested.iter().map(|&i| fold_of[i]))));
                let datasets: Vec<(String, Target)> = match &target {
                    Some(t) => vec![(targets[0].clone(), t.clone())],
                    None => targets.iter().enumerate().map(|(j, t)| (t.clone(), Target::Values(rows.iter().map(|&r| values[j][r]).collect()))).collect(),
                };
                let mut per_target = serde_json::Map::new();
                for (tname, tdata) in datasets {
                    let data = TrainingData::new(g.feature_names.clone(), x.clone(), tdata.clone()).map_err(|e| self.fail(e))?;
                    let mut pred_v = vec![f64::NAN; n];
                    let mut pred_c = vec![usize::MAX; n];
                    let mut fold_scores = Vec::new();
                    let mut chosen = Vec::new();
                    let mut fold_models = Vec::with_capacity(folds.len());
                    for (k, fold) in folds.iter().enumerate() {
                        let train = data.select(&fold.train);
                        let test = data.select(&fold.test);
                        let (model, best) = fit_best(&train).map_err(|e| self.fail(format!("target `{tname}`, fold {k}: {e}")))?;
                        if let Some(b) = best {
                            chosen.push(serde_json::to_value(b)?);
                        }
                        let pr = model.predict(&test.feature_names, test.x.view()).map_err(|e| self.fail(e))?;
                        let s = match (&pr, &tdata) {
                            (Prediction::Values(v), Target::Values(y)) => {
                                for (&i, &pv) in fold.test.iter().zip(v) {
                                    pred_v[i] = pv;
                                }
                                let yt: Vec<f64> = fold.test.iter().map(|&i| y[i]).collect();
                                regression_scores(&yt, v)
                            }
                            (Prediction::Classes(c), Target::Classes { labels, classes }) => {
                                for (&i, &pc) in fold.test.iter().zip(c) {
                                    pred_c[i] = pc;
                                }
                                let yt: Vec<usize> = fold.test.iter().map(|&i| labels[i]).collect();
                                let tr: Vec<usize> = fold.train.iter().map(|&i| labels[i]).collect();
                                classification_scores(&yt, c, classes.len(), &tr)
                            }
                            _ => return Err(self.fail("the model's output does not match the target")),
                        };
                        for (m, v) in &s.values {
                            metric_rows.push(("fold".into(), k as i64, tname.clone(), m.clone(), *v));
                        }
                        fold_scores.push(s);
                        fold_models.push(model);
                    }
                    // Pooled out-of-fold metrics and the per-group breakdown.
                    let pooled_for = |sel: &[usize]| -> Scores {
                        match &tdata {
                            Target::Values(y) => {
                                let yt: Vec<f64> = sel.iter().map(|&i| y[i]).collect();
                                let pv: Vec<f64> = sel.iter().map(|&i| pred_v[i]).collect();
                                regression_scores(&yt, &pv)
                            }
                            Target::Classes { labels, classes } => {
                                let yt: Vec<usize> = sel.iter().map(|&i| labels[i]).collect();
                                let pc: Vec<usize> = sel.iter().map(|&i| pred_c[i]).collect();
                                // The majority baseline takes the majority class of the training
                                // rows (all rows not in the scope's folds, pooled).
                                classification_scores(&yt, &pc, classes.len(), labels)
                            }
                            Target::None => Scores::default(),
                        }
                    };
                    let pooled = pooled_for(&tested);
                    for (m, v) in &pooled.values {
                        metric_rows.push(("pooled".into(), -1, tname.clone(), m.clone(), *v));
                    }
                    let mut by = serde_json::Map::new();
                    if let Some(rb) = &report_by {
                        let mut groups_of: BTreeMap<&String, Vec<usize>> = BTreeMap::new();
                        for &i in &tested {
                            groups_of.entry(&rb[i]).or_default().push(i);
                        }
                        for (gv, sel) in groups_of {
                            let s = pooled_for(&sel);
                            for (m, v) in &s.values {
                                metric_rows.push((format!("{}={gv}", self.cfg.report_by.as_deref().unwrap_or("")), -1, tname.clone(), m.clone(), *v));
                            }
                            by.insert(gv.clone(), serde_json::to_value(&s)?);
                        }
                    }
                    let mut t = serde_json::Map::new();
                    t.insert("pooled".into(), serde_json::to_value(&pooled)?);
                    t.insert("per_fold".into(), serde_json::to_value(&fold_scores)?);
                    if let Some(cl) = &classes {
                        t.insert("classes".into(), serde_json::to_value(cl)?);
                    }
                    if !chosen.is_empty() {
                        t.insert("grid_choice_per_fold".into(), serde_json::Value::Array(chosen));
                    }
                    if let Some(rb) = &self.cfg.report_by {
                        t.insert(format!("by_{rb}"), serde_json::Value::Object(by));
                    }
                    // Diagnostics on the same folds, and the figures.
                    let suffix = if targets.len() > 1 { format!("-{tname}") } else { String::new() };
                    let balanced = self.cfg.balance_classes;
                    let score_label = match diagnostics::score_name(&tdata, balanced) {
                        "r2" => "R²",
                        "balanced_accuracy" => "balanced accuracy",
                        _ => "accuracy",
                    };
                    let importance = if self.cfg.importance_repeats > 0 {
                        let imp = diagnostics::permutation_importance(&fold_models, &folds, &data, self.cfg.importance_repeats, self.seed, balanced)
                            .map_err(|e| self.fail(format!("target `{tname}`, permutation importance: {e}")))?;
                        for f in &imp.features {
                            metric_rows.push(("permutation_importance".into(), -1, tname.clone(), f.feature.clone(), f.mean));
                        }
                        let mut ranked = imp.features.clone();
                        ranked.sort_by(|a, b| b.mean.total_cmp(&a.mean));
                        t.insert(
                            "permutation_importance".into(),
                            serde_json::json!({ "score": imp.score, "baseline": imp.baseline, "repeats": imp.repeats, "features": ranked }),
                        );
                        Some(imp)
                    } else {
                        None
                    };
                    let curve = match &self.cfg.learning_curve {
                        Some(fractions) => {
                            let fit = |d: &TrainingData| fit_best(d).map(|(m, _)| m);
                            match diagnostics::learning_curve(fit, &folds, &data, fractions, self.seed, balanced) {
                                Ok(points) => {
                                    for pt in &points {
                                        let scope = format!("learning_curve={}", pt.fraction);
                                        for (m, v) in [("train_rows_mean", pt.train_rows_mean), ("train_score", pt.train_score), ("validation_score", pt.validation_score)] {
                                            metric_rows.push((scope.clone(), -1, tname.clone(), m.into(), v));
                                        }
                                    }
                                    t.insert("learning_curve".into(), serde_json::json!({ "score": diagnostics::score_name(&tdata, balanced), "points": points }));
                                    Some(points)
                                }
                                Err(e) => {
                                    // A fit on a small share of the rows can fail where the full fit
                                    // does not (k-NN with more neighbours than rows): say so, keep the rest.
                                    tracing::warn!("stage `{}`: target `{tname}`, learning curve: {e}", self.name);
                                    t.insert("learning_curve".into(), serde_json::json!({ "error": e.to_string() }));
                                    None
                                }
                            }
                        }
                        None => None,
                    };
                    if self.cfg.plots {
                        let stage = &self.name;
                        match &tdata {
                            Target::Values(y) => {
                                let truth: Vec<f64> = tested.iter().map(|&i| y[i]).collect();
                                let pred: Vec<f64> = tested.iter().map(|&i| pred_v[i]).collect();
                                let colour: Option<Vec<String>> = report_by.as_ref().map(|rb| tested.iter().map(|&i| rb[i].clone()).collect());
                                let colour = colour.as_deref().zip(self.cfg.report_by.as_deref()).map(|(g, c)| (c, g));
                                let r2 = pooled.values.get("r2").map_or("n/a".to_string(), |v| format!("{v:.3}"));
                                let unit = self.schema.field_with_name(&tname).ok().and_then(|f| crate::stage::columns::unit_of(f).map(str::to_string));
                                let axis = match unit {
                                    Some(u) => format!("{tname} ({u})"),
                                    None => tname.clone(),
                                };
                                let title = format!("{stage}: {tname}, out-of-fold R² = {r2}");
                                let drawn = plots::predicted_vs_true(&title, &axis, &truth, &pred, colour);
                                self.keep_figure(format!("predicted_vs_true{suffix}.png"), drawn, &mut models_out, &mut plot_errors);
                            }
                            Target::Classes { classes, .. } => {
                                let v = |m: &str| pooled.values.get(m).map_or("n/a".to_string(), |v| format!("{v:.3}"));
                                let title = format!(
                                    "{stage}: {tname}, out of fold: accuracy {}, balanced {} (majority {})",
                                    v("accuracy"),
                                    v("balanced_accuracy"),
                                    v("majority_baseline_accuracy")
                                );
                                let drawn = match &pooled.confusion {
                                    Some(cm) => plots::confusion_matrix(&title, classes, cm),
                                    None => Err(plots::PlotError::NoData("no confusion matrix was computed".into())),
                                };
                                self.keep_figure(format!("confusion{suffix}.png"), drawn, &mut models_out, &mut plot_errors);
                            }
                            Target::None => {}
                        }
                        if let Some(imp) = &importance {
                            let names: Vec<String> = imp.features.iter().map(|f| f.feature.clone()).collect();
                            let mean: Vec<f64> = imp.features.iter().map(|f| f.mean).collect();
                            let std: Vec<f64> = imp.features.iter().map(|f| f.std).collect();
                            let title = format!("{stage}: permutation importance for {tname} ({} repeats)", imp.repeats);
                            let label = format!("drop in out-of-fold {score_label} when the feature is shuffled");
                            let drawn = plots::importance(&title, &label, &names, &mean, &std);
                            self.keep_figure(format!("importance{suffix}.png"), drawn, &mut models_out, &mut plot_errors);
                        }
                        if let Some(points) = &curve {
                            let rows: Vec<f64> = points.iter().map(|p| p.train_rows_mean).collect();
                            let train: Vec<f64> = points.iter().map(|p| p.train_score).collect();
                            let validation: Vec<f64> = points.iter().map(|p| p.validation_score).collect();
                            let title = format!("{stage}: learning curve for {tname}");
                            let drawn = plots::learning_curve(&title, score_label, &rows, &train, &validation);
                            self.keep_figure(format!("learning_curve{suffix}.png"), drawn, &mut models_out, &mut plot_errors);
                        }
                    }
                    per_target.insert(tname.clone(), serde_json::Value::Object(t));
                    // Output columns.
                    match &tdata {
                        Target::Values(y) => {
                            columns.push(Arc::new(Float64Array::from_iter_values(tested.iter().map(|&i| y[i]))));
                            columns.push(Arc::new(Float64Array::from_iter_values(tested.iter().map(|&i| pred_v[i]))));
                        }
                        Target::Classes { labels, classes } => {
                            columns.push(Arc::new(StringArray::from_iter_values(tested.iter().map(|&i| classes[labels[i]].clone()))));
                            columns.push(Arc::new(StringArray::from_iter_values(tested.iter().map(|&i| classes[pred_c[i]].clone()))));
                        }
                        Target::None => {}
                    }
                    // The model every row trains, for predict.model.
                    let (final_model, best) = fit_best(&data).map_err(|e| self.fail(format!("target `{tname}`, final fit on every row: {e}")))?;
                    if let Some(b) = best {
                        per_target
                            .get_mut(&tname)
                            .and_then(|v| v.as_object_mut())
                            .map(|o| o.insert("grid_choice_final".into(), serde_json::to_value(b).unwrap_or_default()));
                    }
                    let file = if targets.len() > 1 { format!("model-{tname}.json") } else { "model.json".to_string() };
                    models_out.push((file, final_model.to_json().map_err(|e| self.fail(e))?.into_bytes()));
                }
                report.insert("targets".into(), serde_json::Value::Object(per_target));
            }
            _ => {
                let data = TrainingData::new(g.feature_names.clone(), x.clone(), Target::None).map_err(|e| self.fail(e))?;
                let model = models::fit(&self.cfg.model, &options, &data).map_err(|e| self.fail(e))?;
                let pr = model.predict(&data.feature_names, data.x.view()).map_err(|e| self.fail(e))?;
                let Prediction::Clusters(cl) = pr else { return Err(self.fail("the model did not return clusters")) };
                let mut scores = Scores { rows: n, ..Default::default() };
                let n_clusters = cl.iter().flatten().collect::<BTreeSet<_>>().len();
                scores.values.insert("clusters".into(), n_clusters as f64);
                scores.values.insert("noise_rows".into(), cl.iter().filter(|c| c.is_none()).count() as f64);
                if self.cfg.labels.is_some() {
                    let l: Vec<String> = rows.iter().map(|&r| labels_raw[r].clone()).collect();
                    let (truth, classes) = models::encode_labels(&l);
                    // Noise rows form one extra cluster for the scores.
                    let pred: Vec<usize> = cl.iter().map(|c| c.unwrap_or(n_clusters)).collect();
                    if let Ok(v) = metrics::hungarian_matched_accuracy(&truth, &pred) {
                        scores.values.insert("hungarian_accuracy".into(), v);
                    }
                    if let Ok(v) = metrics::normalized_mutual_info(&truth, &pred) {
                        scores.values.insert("nmi".into(), v);
                    }
                    if let Ok(v) = metrics::adjusted_rand_index(&truth, &pred) {
                        scores.values.insert("ari".into(), v);
                    }
                    let majority = metrics::majority_class(&truth, classes.len()).map(|m| truth.iter().filter(|&&t| t == m).count() as f64 / n as f64);
                    if let Some(m) = majority {
                        scores.values.insert("majority_baseline_accuracy".into(), m);
                    }
                    if self.cfg.plots {
                        let v = |m: &str| scores.values.get(m).map_or("n/a".to_string(), |v| format!("{v:.3}"));
                        let title = format!("{}: clusters matched to classes, accuracy {}, NMI {}, ARI {}", self.name, v("hungarian_accuracy"), v("nmi"), v("ari"));
                        let drawn = metrics::matched_confusion(&truth, &pred, classes.len())
                            .map_err(|e| plots::PlotError::NoData(e.to_string()))
                            .and_then(|(cm, unmatched)| {
                                let mut names = classes.clone();
                                if unmatched {
                                    names.push("unmatched cluster".into());
                                }
                                plots::confusion_matrix(&title, &names, &cm)
                            });
                        self.keep_figure("confusion.png".into(), drawn, &mut models_out, &mut plot_errors);
                    }
                    report.insert("classes".into(), serde_json::to_value(&classes)?);
                    columns.push(Arc::new(StringArray::from_iter_values(l)));
                }
                for (m, v) in &scores.values {
                    metric_rows.push(("pooled".into(), -1, "clusters".into(), m.clone(), *v));
                }
                report.insert("pooled".into(), serde_json::to_value(&scores)?);
                columns.push(Arc::new(Int64Array::from_iter(cl.iter().map(|c| c.map(|k| k as i64)))));
                models_out.push(("model.json".into(), model.to_json().map_err(|e| self.fail(e))?.into_bytes()));
            }
        }
        let figures: Vec<&String> = models_out.iter().map(|(f, _)| f).filter(|f| f.ends_with(".png")).collect();
        report.insert("plots".into(), serde_json::to_value(figures)?);
        if !plot_errors.is_empty() {
            report.insert("plot_errors".into(), serde_json::Value::Array(plot_errors));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        // metrics.parquet rows travel as JSON here and are written with the other files.
        report.insert(
            "_metric_rows".into(),
            serde_json::to_value(metric_rows.iter().map(|(s, f, t, m, v)| (s, f, t, m, v)).collect::<Vec<_>>())?,
        );
        Ok((batch, serde_json::Value::Object(report), models_out))
    }
}

/// Writes the artifacts folder atomically: every file (metrics, models, figures) into
/// `<dir>.tmp-<pid>`, fsynced, then the folder renamed into place (an older one is moved aside
/// first and removed after). A reader sees the old folder or the new one, never a mix.
fn commit_artifacts(dir: &Path, mut report: serde_json::Value, files: &[(String, Vec<u8>)]) -> Result<()> {
    use std::io::Write;
    let rows = report.as_object_mut().and_then(|o| o.remove("_metric_rows")).unwrap_or_default();
    let parent = dir.parent().ok_or_else(|| Error::msg(format!("{}: no parent folder", dir.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = PathBuf::from(format!("{}.tmp-{}", dir.display(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = tmp.join(name);
        let mut f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
        f.sync_all().map_err(|e| Error::io(&p, e))
    };
    write("metrics.json", serde_json::to_string_pretty(&report)?.as_bytes())?;
    for (name, bytes) in files {
        write(name, bytes)?;
    }
    // metrics.parquet: scope, fold (-1 = pooled), target, metric, value.
    let rows: Vec<(String, i64, String, String, f64)> = serde_json::from_value(rows).unwrap_or_default();
    let schema = Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("fold", DataType::Int64, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.clone()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.clone()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3.clone()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )?;
    let p = tmp.join("metrics.parquet");
    let f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(crate::stage::parquet::writer_properties()))?;
    w.write(&batch)?;
    let f = w.into_inner()?;
    f.sync_all().map_err(|e| Error::io(&p, e))?;
    let old = PathBuf::from(format!("{}.old-{}", dir.display(), std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

impl<K: TaskKind> TransformOperator for TrainOperator<K> {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut Emitter) -> Result<()> {
        self.batches.push(batch);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        let (batch, report, models_out) = self.run()?;
        commit_artifacts(&self.artifacts, report, &models_out).map_err(|e| self.fail(format!("writing the artifacts: {e}")))?;
        out.emit(batch);
        Ok(())
    }
}

// ================================================================================================
// predict.model
// ================================================================================================

fn default_prediction_column() -> String {
    "prediction".into()
}

/// Applies a model file written by a training stage to a table with the same feature columns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictModel {
    /// The `model.json` of a training stage (or the same zstd-compressed, `.json.zst`), relative to
    /// the pipeline file [path].
    pub model: String,
    /// Name of the column the predictions go to [column].
    #[serde(default = "default_prediction_column")]
    pub column: String,
}

impl PredictModel {
    fn load(&self, ctx: &StageContext) -> std::result::Result<FittedModel, String> {
        FittedModel::from_file(&ctx.resolve(&self.model)).map_err(|e| e.to_string())
    }

    /// The input columns the model's features come from (`name[i]` comes from list column `name`).
    fn source_columns(model: &FittedModel) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in &model.feature_names {
            let base = f.split_once('[').map_or(f.as_str(), |(b, _)| b).to_string();
            if !out.contains(&base) {
                out.push(base);
            }
        }
        out
    }
}

impl StageConfig for PredictModel {
    const KIND: &'static str = "predict.model";
    const SUMMARY: &'static str = "Apply a trained model file to a table with the same features (schema differences refused, spelled out)";
    const CODE_VERSION: u32 = 1;

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, ctx: &StageContext) -> Vec<Issue> {
        match self.load(ctx) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Issue::at(&["model"], e)],
        }
    }

    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let input = &inputs[0];
        let model = self.load(ctx).map_err(|e| vec![Issue::at(&["model"], e)])?;
        let cols = Self::source_columns(&model);
        let table: Vec<String> = input.fields().iter().map(|f| f.name().clone()).filter(|n| cols.contains(n)).collect();
        let missing: Vec<&String> = cols.iter().filter(|c| !table.contains(c)).collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(vec![Issue::inputs(format!(
                "the model was trained on columns the input does not have: {} (model features: {}; input has: {})",
                names.join(", "),
                cols.join(", "),
                column_list(input)
            ))]);
        }
        for c in &cols {
            let dt = input.field_with_name(c).unwrap().data_type();
            if !is_feature_type(dt) {
                return Err(vec![Issue::inputs(format!("`{c}` is {}; the model needs numbers", crate::stage::columns::type_name(dt)))]);
            }
        }
        if input.field_with_name(&self.column).is_ok() {
            return Err(vec![Issue::at(&["column"], format!("the input already has a column `{}`", self.column))]);
        }
        let dt = match model.task() {
            Task::Regression => DataType::Float64,
            Task::Classification => DataType::Utf8,
            _ => DataType::Int64,
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(&self.column, dt, true));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn external_inputs(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(vec![ctx.resolve(&self.model)])
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let model = self.load(ctx).map_err(|e| Error::msg(format!("stage `{}`: {e}", ctx.name)))?;
        let columns = Self::source_columns(&model);
        Ok(Operator::Transform(Box::new(PredictOperator { model, columns, schema: output.clone() })))
    }
}

struct PredictOperator {
    model: FittedModel,
    columns: Vec<String>,
    schema: SchemaRef,
}

impl TransformOperator for PredictOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let g = gather(std::slice::from_ref(&batch), &self.columns, None)?;
        if let Some(r) = g.incomplete.iter().position(Option::is_some) {
            return Err(Error::msg(format!("row {r}: {}", g.incomplete[r].as_deref().unwrap_or(""))));
        }
        let x = Array2::from_shape_vec((g.n, g.feature_names.len()), g.x).map_err(|e| Error::msg(e.to_string()))?;
        let pr = self.model.predict(&g.feature_names, x.view()).map_err(|e| Error::msg(format!("model refuses this table: {e}")))?;
        let col: ArrayRef = match pr {
            Prediction::Values(v) => Arc::new(Float64Array::from(v)),
            Prediction::Classes(c) => {
                let classes = self.model.classes.clone().unwrap_or_default();
                Arc::new(StringArray::from_iter_values(c.into_iter().map(|k| classes.get(k).cloned().unwrap_or_else(|| k.to_string()))))
            }
            Prediction::Clusters(c) => Arc::new(Int64Array::from_iter(c.into_iter().map(|k| k.map(|k| k as i64)))),
            Prediction::Transformed(_) => return Err(Error::msg("a PCA model transforms; it does not predict a column")),
        };
        let mut columns = batch.columns().to_vec();
        columns.push(col);
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
