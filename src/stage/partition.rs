//! How a stage's work divides: the declaration the planner (`crate::pipeline::plan`), `run --watch`
//! and cluster sharding read instead of guessing from a kind's name.
//!
//! This is DataFusion's "required input distribution" in the terms of this domain. Recordings,
//! configs, cells and targets are *units*: a unit is the set of rows sharing one value of a key
//! column. A kind whose output for any set of units depends only on those units' rows can run on
//! any split of its input by that key (one file at a time in watch mode, one shard on a cluster)
//! and the union of the pieces equals one run over everything. A kind that needs every row
//! (training, statistics over a population, a whole-population fit) is a gather point: it runs
//! once, after every unit upstream of it is done.

use serde::Serialize;

/// A kind's declared partitioning (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "partitioning", rename_all = "snake_case")]
pub enum Partitioning {
    /// Each output row depends only on the input row it comes from (filters, projections, row-wise
    /// arithmetic, applying a fitted model, per-sweep features), or for a source, each row on the
    /// one file or configuration it reads: any split of the rows works.
    RowWise,
    /// The output for a set of units depends only on those units' rows, a unit being the rows that
    /// share a value of `key` (e.g. every sweep of one cell for cell features). For a source,
    /// `key` names the column identifying the unit each row comes from.
    PerUnit { key: String },
    /// Needs every row of every input before it can emit (training, population statistics).
    Gather,
}

impl Partitioning {
    pub fn per_unit(key: impl Into<String>) -> Self {
        Partitioning::PerUnit { key: key.into() }
    }

    /// Whether a split of the input by units can be processed piece by piece.
    pub fn is_per_unit(&self) -> bool {
        !matches!(self, Partitioning::Gather)
    }

    /// The key column, for [`Partitioning::PerUnit`].
    pub fn key(&self) -> Option<&str> {
        match self {
            Partitioning::PerUnit { key } => Some(key),
            _ => None,
        }
    }
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::RowWise => write!(f, "row-wise"),
            Partitioning::PerUnit { key } => write!(f, "per unit of `{key}`"),
            Partitioning::Gather => write!(f, "needs every row"),
        }
    }
}
