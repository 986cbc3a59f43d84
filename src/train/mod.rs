//! Model training kernels: validation splitters (k-fold, stratified, grouped, leave-one-out, split
//! by a column), metrics (regression, classification with baselines, clustering with Hungarian
//! matching, NMI, ARI) and models over linfa and smartcore (neural networks over burn),
//! serializable so `predict` can refuse a model fitted on another schema; diagnostics on the same
//! folds (permutation importance, learning curve) and the PNG figures the training stages write
//! beside their metrics.

pub mod diagnostics;
pub mod error;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod plots;
pub mod validation;
