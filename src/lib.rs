//! neurostream: declarative dataflow pipelines for neurophysiology recordings and neuron
//! simulations. Pipeline files (TOML) declare stages; each stage runs as an actor; Arrow record
//! batches flow between them through bounded edges; every stage's output is checkpointed to Parquet,
//! so unchanged work is never redone and any stage can be replayed.
//!
//! Layout: [`pipeline`] (files, validation, graph), [`runtime`] (actors, edges, checkpoints, runs),
//! [`stages`] (the stage kinds), [`formats`] (file readers), numeric kernels by family
//! ([`simulate`], [`features`], [`preprocess`], [`dic`]), and [`cli`].

pub mod cli;
pub mod dic;
pub mod error;
pub mod features;
pub mod formats;
pub mod pipeline;
pub mod preprocess;
pub mod runtime;
pub mod simulate;
pub mod stages;
pub mod train;

pub use error::{Error, Result};
