//! `train.classify`: fits and cross-validates a classifier, with the majority-class and chance
//! baselines, balanced accuracy and the confusion matrix always reported.

use super::config::{TaskKind, Train};
use super::fit::{Outcome, Rows, TrainOperator};
use crate::error::Result;
use crate::train::models::Task;

#[derive(Debug, Clone, Copy)]
pub struct Classify;

pub type TrainClassify = Train<Classify>;

impl TaskKind for Classify {
    const KIND: &'static str = "train.classify";
    const SUMMARY: &'static str = "Fit and cross-validate a classifier (logistic, tree, random forest, SVM, k-NN, naive Bayes) with baselines and imbalance handling";
    const TASK: Task = Task::Classification;
    const EXAMPLE: &'static str = "features = [\"upstroke_downstroke_ratio\", \"width\"]\ntarget = \"cell_type\"\nmodel = { model = \"logistic\", alpha = 1.0 }";

    fn run(op: &TrainOperator<Self>, rows: Rows, out: &mut Outcome) -> Result<()> {
        op.cross_validate(rows, out)
    }
}
