//! `train.regress`: fits and cross-validates a regression model, one per target column.

use super::config::{TaskKind, Train};
use super::fit::{Outcome, Rows, TrainOperator};
use crate::error::Result;
use crate::train::models::Task;

#[derive(Debug, Clone, Copy)]
pub struct Regress;

pub type TrainRegress = Train<Regress>;

impl TaskKind for Regress {
    const KIND: &'static str = "train.regress";
    const SUMMARY: &'static str = "Fit and cross-validate a regression model (linear, ridge, lasso, Poisson, random forest, gradient boosting, k-NN)";
    const TASK: Task = Task::Regression;
    const EXAMPLE: &'static str = "features = [\"stimulus_amplitude\"]\ntarget = \"spike_count\"\nmodel = { model = \"ridge\", alpha = 1.0 }";

    fn run(op: &TrainOperator<Self>, rows: Rows, out: &mut Outcome) -> Result<()> {
        op.cross_validate(rows, out)
    }
}
