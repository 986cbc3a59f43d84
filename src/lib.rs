//! neurostream: declarative dataflow pipelines for neurophysiology recordings and neuron
//! simulations. Pipeline files (TOML) declare stages; each stage runs as an actor; Arrow record
//! batches flow between them through bounded edges; every stage's output is checkpointed to Parquet,
//! so unchanged work is never redone and any stage can be replayed.
//!
//! Layout, in layers (a test keeps the imports pointing down): [`cli`] -> [`runtime`] (actors, edges,
//! runs, watch mode) -> [`pipeline`] (files, validation, the plan) -> [`stage`] (the stage core: what
//! a stage is) <- [`stages`] (the stage kinds, by family) -> the numeric kernels, free of Arrow
//! ([`simulate`], [`features`], [`preprocess`], [`dic`], [`train`], [`formats`]). [`checkpoint`] is
//! the on-disk checkpoint format, [`diag`] located diagnostics, [`error`] the one error type.

pub mod checkpoint;
pub mod cli;
pub mod diag;
pub mod dic;
pub mod error;
pub mod features;
pub mod formats;
pub mod pipeline;
pub mod preprocess;
pub mod runtime;
pub mod simulate;
pub mod stage;
pub mod stages;
pub mod train;

pub use error::{Error, Result};
