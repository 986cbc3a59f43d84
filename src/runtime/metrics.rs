//! Per-stage counters, updated lock-free while the stage runs and summarized at the end of `run`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Live counters of one stage. Every stage emits the same set (as Vector's component spec asks).
#[derive(Debug, Default)]
pub struct StageCounters {
    pub batches_in: AtomicU64,
    pub rows_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub batches_out: AtomicU64,
    pub rows_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub failures: AtomicU64,
    /// Time spent in the operator and the checkpoint writer [ns].
    pub busy_ns: AtomicU64,
    /// Time spent waiting for credits of a downstream edge (backpressure) [ns].
    pub blocked_ns: AtomicU64,
}

impl StageCounters {
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            batches_in: self.batches_in.load(Relaxed),
            rows_in: self.rows_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            batches_out: self.batches_out.load(Relaxed),
            rows_out: self.rows_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            failures: self.failures.load(Relaxed),
            busy_s: self.busy_ns.load(Relaxed) as f64 * 1e-9,
            blocked_s: self.blocked_ns.load(Relaxed) as f64 * 1e-9,
        }
    }
}

/// Counters of one stage at the end of a run, as written to the run report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CounterSnapshot {
    pub batches_in: u64,
    pub rows_in: u64,
    pub bytes_in: u64,
    pub batches_out: u64,
    pub rows_out: u64,
    pub bytes_out: u64,
    pub failures: u64,
    pub busy_s: f64,
    pub blocked_s: f64,
}

/// One edge's bound and the most it ever held in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeSnapshot {
    pub from: String,
    pub to: String,
    pub bound_rows: u64,
    pub bound_bytes: u64,
    pub max_in_flight_rows: u64,
    pub max_in_flight_bytes: u64,
}
