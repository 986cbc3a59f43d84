//! The integration tests, as one crate (one link of the library instead of one per file).
//!
//! Most modules drive the real `neurostream` binary on real recordings in a scratch folder and
//! compare with the reference tools' outputs in `tests/fixtures/`; [`support::harness`] runs a
//! single stage kind in-process on given batches; [`contract`] holds every registered kind to the
//! stage contract. `cargo test --test it <module>::` runs one module.

mod support;

mod architecture;
mod backpressure;
mod contract;
mod dic_stages;
mod feature_stages;
mod generic_stages;
mod ingest_stages;
mod long_recording;
mod nn_models;
mod preprocess_signal;
mod readme;
mod restore;
mod runtime;
mod simulate_stages;
mod study2;
mod study5;
mod study_pipelines;
mod train_plots;
mod unit_cell_stages;
mod validate_corpus;
mod watch;
