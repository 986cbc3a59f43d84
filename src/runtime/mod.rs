//! The runtime: one actor per stage, bounded edges between them, Parquet checkpoints, and the
//! orchestration of `run` and `replay`.
//!
//! Data flows as Arrow record batches. Each stage runs as a ractor actor; since ractor mailboxes are
//! unbounded, every edge carries *credits* ([`channel::EdgeBudget`]): a producer acquires credits for
//! a batch's rows and bytes before sending, and the consumer returns them once it has processed the
//! batch, so a slow stage slows its producers instead of filling memory. Operators (the CPU-heavy
//! part) run on tokio's blocking pool, never on the async workers. Every stage's output is written
//! to a checkpoint folder that becomes visible by one atomic rename when complete.

pub mod actor;
pub mod channel;
pub mod fingerprint;
pub mod metrics;
pub mod report;
pub mod run;
pub mod watch;

pub use run::{Mode, RunOptions, RunReport, run_pipeline};
