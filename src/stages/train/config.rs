//! The configuration the three training kinds share ([`Train`], tagged by the task at the type
//! level), its validation, and the output schema it declares: the out-of-fold prediction table,
//! with the model file it writes announced in the schema metadata for `predict.model`.
//!
//! A training stage takes one input or several: the table it trains on is the rows of input 0,
//! then input 1, and so on, so every input must give each column the stage reads, with one type.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::artifacts;
use super::fit::{Outcome, Rows, TrainOperator};
use crate::error::{Error, Result};
use crate::stage::columns::{column_list, field, is_numeric, is_scalar, type_name, unit_of};
use crate::stage::{Arity, Issue, Operator, Partitioning, StageConfig, StageContext};
use crate::train::models::{ModelError, ModelSpec, ParamGrid, Task};
use crate::train::validation::{self, Fold, ValidationError};

/// How rows are split into training and test sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ValidationSpec {
    /// k folds of shuffled rows (seeded).
    KFold {
        /// Number of folds, at least 2 [folds].
        #[serde(default = "five")]
        k: usize,
    },
    /// k folds keeping each class's share in every fold (classification).
    Stratified {
        /// Number of folds, at least 2 [folds].
        #[serde(default = "five")]
        k: usize,
    },
    /// k folds of whole groups (cells, recordings, sessions): no group in both train and test.
    Group {
        /// The group column [column].
        column: String,
        /// Number of folds, at least 2 [folds].
        #[serde(default = "five")]
        k: usize,
    },
    /// One fold per group (leave-one-cell-out and the like).
    LeaveOneGroupOut {
        /// The group column [column].
        column: String,
    },
    /// One fold per row.
    LeaveOneOut {},
    /// A single split by the values of a column (e.g. train on Noise 1, test on Noise 2).
    Split {
        /// The column whose values decide the split [column].
        column: String,
        /// Values whose rows are trained on [values].
        train: Vec<String>,
        /// Values whose rows are tested [values].
        test: Vec<String>,
    },
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
    pub(super) fn column(&self) -> Option<&str> {
        match self {
            Self::Group { column, .. } | Self::LeaveOneGroupOut { column } | Self::Split { column, .. } => Some(column),
            _ => None,
        }
    }

    /// The folds of `n` rows: `labels` are the class indices (classification), `groups` the
    /// values of the scheme's column (when it has one).
    pub(super) fn folds(&self, n: usize, labels: Option<&[usize]>, groups: Option<&[String]>, seed: u64) -> Result<Vec<Fold>> {
        let split = |r: std::result::Result<Vec<Fold>, ValidationError>| r.map_err(|e| Error::msg(e.to_string()));
        match self {
            Self::KFold { k } => split(validation::k_fold(n, *k, true, seed)),
            Self::Stratified { k } => match labels {
                Some(l) => split(validation::stratified_k_fold(l, *k, seed)),
                None => Err(Error::msg("stratified validation needs class labels (use it with train.classify)")),
            },
            Self::Group { k, .. } => split(validation::group_k_fold(groups.expect("group column gathered"), *k, seed)),
            Self::LeaveOneGroupOut { .. } => split(validation::leave_one_group_out(groups.expect("group column gathered"))),
            Self::LeaveOneOut {} => split(validation::leave_one_out(n)),
            Self::Split { train, test, .. } => split(validation::split_by_value(groups.expect("split column gathered"), train, test).map(|f| vec![f])),
        }
    }
}

/// Which learning task a training kind performs: a type-level tag, so the three kinds share one
/// configuration shape and one operator (see `regress.rs`, `classify.rs`, `cluster.rs`).
pub trait TaskKind: std::fmt::Debug + Clone + Send + Sync + 'static {
    const KIND: &'static str;
    const SUMMARY: &'static str;
    const TASK: Task;
    /// [`StageConfig::EXAMPLE`] of the kind.
    const EXAMPLE: &'static str;

    /// Fits and scores the model on the gathered rows (cross-validation, or clustering on every
    /// row), filling the output table's columns and the artifacts.
    fn run(op: &TrainOperator<Self>, rows: Rows, out: &mut Outcome) -> Result<()>;
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

impl<K: TaskKind> Train<K> {
    pub(super) fn targets(&self) -> Vec<String> {
        self.target.as_ref().map(OneOrMany::names).unwrap_or_default()
    }

    pub(super) fn validation(&self) -> ValidationSpec {
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

    /// The specs a fit chooses from: the model, or every point of the grid.
    pub(super) fn candidates(&self) -> std::result::Result<Vec<ModelSpec>, ModelError> {
        match &self.grid {
            None => Ok(vec![self.model.clone()]),
            Some(values) => ParamGrid { base: self.model.clone(), values: values.clone() }.expand(),
        }
    }

    /// The model files the stage writes: one per target for several regression targets.
    pub(super) fn model_file(&self, target: &str) -> String {
        if self.targets().len() > 1 { format!("model-{target}.json") } else { "model.json".to_string() }
    }

    /// Every column the stage reads from its input(s), with the option that names it (a column
    /// named by two options is listed once, under the first).
    fn used_columns(&self, first: &Schema) -> Vec<(&'static str, String)> {
        let mut used: Vec<(&'static str, String)> = self.features.iter().map(|f| ("features", f.clone())).collect();
        used.extend(self.targets().into_iter().map(|t| ("target", t)));
        used.extend(self.labels.iter().map(|l| ("labels", l.clone())));
        used.extend(self.validation().column().map(|c| ("validation", c.to_string())));
        used.extend(self.report_by.iter().map(|c| ("report_by", c.clone())));
        used.extend(self.keep_columns(first).into_iter().map(|c| ("keep", c)));
        let mut seen = BTreeSet::new();
        used.retain(|(_, c)| seen.insert(c.clone()));
        used
    }

    /// Issues with the first input's columns: each feature, target, label, group, report and
    /// keep column present, with a type the stage can read.
    fn first_input_issues(&self, input: &Schema) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (i, f) in self.features.iter().enumerate() {
            match input.field_with_name(f) {
                Err(_) => issues.push(Issue::at_index("features", i, format!("the input has no column `{f}`; it has: {}", column_list(input)))),
                Ok(fd) if !is_feature_type(fd.data_type()) => issues.push(Issue::at_index(
                    "features",
                    i,
                    format!("`{f}` is {}; features must be numeric scalars or numeric lists", type_name(fd.data_type())),
                )),
                _ => {}
            }
        }
        let mut need = |key: &str, col: &str, numeric: bool| match input.field_with_name(col) {
            Err(_) => issues.push(Issue::at(&[key], format!("the input has no column `{col}`; it has: {}", column_list(input)))),
            Ok(fd) if numeric && !is_numeric(fd.data_type()) => {
                issues.push(Issue::at(&[key], format!("`{col}` is {}; a regression target must be numeric", type_name(fd.data_type()))))
            }
            Ok(fd) if !is_scalar(fd.data_type()) => issues.push(Issue::at(&[key], format!("`{col}` is {}; give a scalar column", type_name(fd.data_type())))),
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
        issues
    }

    /// Issues with inputs 1, 2, ...: each must give every column the stage reads, with the type
    /// it has in the first input (their rows are appended to the first input's). A column the
    /// first input lacks is reported by [`Self::first_input_issues`] alone.
    fn other_input_issues(&self, inputs: &[SchemaRef]) -> Vec<Issue> {
        let first = &inputs[0];
        let used = self.used_columns(first);
        let mut issues = Vec::new();
        for (i, input) in inputs.iter().enumerate().skip(1) {
            for (key, col) in &used {
                let Ok(want) = first.field_with_name(col) else { continue };
                match input.field_with_name(col) {
                    Err(_) => issues.push(Issue::at_index(
                        "inputs",
                        i,
                        format!("input {} has no column `{col}` (in `{key}`), which every input must give; it has: {}", i + 1, column_list(input)),
                    )),
                    Ok(have) if !have.data_type().equals_datatype(want.data_type()) => issues.push(Issue::at_index(
                        "inputs",
                        i,
                        format!(
                            "column `{col}` (in `{key}`) is {} in input {} but {} in input 1; every input must give it one type",
                            type_name(have.data_type()),
                            i + 1,
                            type_name(want.data_type())
                        ),
                    )),
                    _ => {}
                }
            }
        }
        issues
    }

    /// The prediction table: the keep columns, then per task the fold and each target with its
    /// out-of-fold prediction, or the labels and the cluster.
    fn prediction_fields(&self, inputs: &[SchemaRef]) -> Vec<Field> {
        let input = &inputs[0];
        // A keep column is nullable in the output when it is in any input (their rows are joined).
        let mut fields: Vec<Field> = self
            .keep_columns(input)
            .iter()
            .map(|c| {
                let f = input.field_with_name(c).expect("keep column checked").clone();
                let nullable = inputs.iter().any(|s| s.field_with_name(c).is_ok_and(|g| g.is_nullable()));
                f.with_nullable(nullable)
            })
            .collect();
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
                    let unit = input.field_with_name(&t).ok().and_then(|f| unit_of(f).map(str::to_string));
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
        fields
    }
}

pub(super) fn is_feature_type(t: &DataType) -> bool {
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
    const EXAMPLE: &'static str = K::EXAMPLE;

    fn arity() -> Arity {
        // Several inputs are appended in input order (e.g. two filters of one source).
        Arity::Transform { min: 1, max: None }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::Gather
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = self.learning_curve_issues();
        if self.features.is_empty() {
            issues.push(Issue::at(&["features"], "give at least one feature column"));
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if !seen.insert(f) {
                issues.push(Issue::at_index("features", i, format!("`{f}` is listed twice")));
            }
        }
        issues.extend(self.model_issues());
        issues.extend(self.validation_issues());
        issues
    }

    fn output_schema(&self, ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let mut issues = self.first_input_issues(&inputs[0]);
        issues.extend(self.other_input_issues(inputs));
        if !issues.is_empty() {
            return Err(issues);
        }
        let metadata = artifacts::announce_model(self, &self.artifacts_dir(ctx));
        Ok(Arc::new(Schema::new_with_metadata(self.prediction_fields(inputs), metadata)))
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
            inputs: vec![Vec::new(); inputs.len()],
        })))
    }
}

impl<K: TaskKind> Train<K> {
    fn learning_curve_issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let Some(fractions) = &self.learning_curve else { return issues };
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
        issues
    }

    /// The model serves the kind's task and its settings are in range; the target, labels,
    /// class balancing and grid fit the kind.
    fn model_issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
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
                issues.push(Issue::at(&["grid"], e.to_string()));
            }
        }
        issues
    }

    fn validation_issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
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
}
