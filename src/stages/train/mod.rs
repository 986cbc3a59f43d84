//! Training and applying models: `train.regress`, `train.classify`, `train.cluster`, and
//! `predict.model`; one file per kind, named after it ([`kinds`] lists them for the registry).
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
//!
//! A training stage takes one input or several: it trains on the rows of input 0, then input 1,
//! and so on (buffered per input and joined in input order, so arrival timing never matters). Its
//! output schema announces the model file it writes (see [`artifacts`]), so `predict.model` can
//! take the training stage itself as its second input instead of a file path.
//!
//! Files: [`config`] (the options the training kinds share and their checks), [`table`] (reading
//! feature columns), [`fit`] (the shared operator, step by step), [`artifacts`] (the committed
//! folder and the model announcement), and one file per kind.

mod artifacts;
mod config;
mod fit;
mod table;

pub mod classify;
pub mod cluster;
pub mod evaluate_regression;
pub mod predict;
pub mod regress;

use crate::stage::{KindEntry, entry};

/// The kinds of this family, in the order `neurostream stages` lists them.
pub fn kinds() -> Vec<KindEntry> {
    vec![
        entry::<regress::TrainRegress>(),
        entry::<classify::TrainClassify>(),
        entry::<cluster::TrainCluster>(),
        entry::<predict::PredictModel>(),
        entry::<evaluate_regression::EvaluateRegression>(),
    ]
}
