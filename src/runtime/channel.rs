//! Bounded edges between stage actors, by credits.
//!
//! ractor mailboxes are unbounded, so the bound is enforced here: before a producer casts a batch to
//! its consumer it acquires credits for the batch's rows and bytes from the edge's budget; the
//! credit travels with the message and is returned when the consumer has processed the batch. Rows
//! and bytes in flight on an edge (queued in the mailbox or being processed) therefore never exceed
//! the bound; the high-water marks are kept so tests and reports can show it. Producers split
//! batches larger than the bound (zero-copy slices) so a single batch always fits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are counted in KiB credits so that large bounds fit tokio's u32 permit counts.
const BYTE_UNIT: usize = 1024;

#[derive(Debug)]
pub struct EdgeBudget {
    pub bound_rows: usize,
    pub bound_bytes: usize,
    rows: Arc<Semaphore>,
    kib: Arc<Semaphore>,
    in_flight_rows: AtomicU64,
    in_flight_bytes: AtomicU64,
    pub max_rows: AtomicU64,
    pub max_bytes: AtomicU64,
}

/// Credits held by one batch in flight; dropping it returns them.
#[derive(Debug)]
pub struct Credit {
    budget: Arc<EdgeBudget>,
    rows: usize,
    bytes: usize,
    _rows: OwnedSemaphorePermit,
    _kib: OwnedSemaphorePermit,
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.budget.in_flight_rows.fetch_sub(self.rows as u64, Relaxed);
        self.budget.in_flight_bytes.fetch_sub(self.bytes as u64, Relaxed);
    }
}

impl EdgeBudget {
    pub fn new(bound_rows: usize, bound_bytes: usize) -> Arc<Self> {
        let bound_rows = bound_rows.clamp(1, u32::MAX as usize);
        let kib = (bound_bytes / BYTE_UNIT).clamp(1, u32::MAX as usize);
        Arc::new(EdgeBudget {
            bound_rows,
            bound_bytes: kib * BYTE_UNIT,
            rows: Arc::new(Semaphore::new(bound_rows)),
            kib: Arc::new(Semaphore::new(kib)),
            in_flight_rows: AtomicU64::new(0),
            in_flight_bytes: AtomicU64::new(0),
            max_rows: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
        })
    }

    /// Waits until the edge can take `rows` and `bytes` more (each clamped to the bound; callers split
    /// larger batches first). Cancel safe: a cancelled wait holds no credits.
    pub async fn acquire(self: &Arc<Self>, rows: usize, bytes: usize) -> Credit {
        let rows = rows.clamp(1, self.bound_rows);
        let bytes = bytes.min(self.bound_bytes);
        let kib = bytes.div_ceil(BYTE_UNIT).clamp(1, self.bound_bytes / BYTE_UNIT);
        let r = self.rows.clone().acquire_many_owned(rows as u32).await.expect("edge semaphores are never closed");
        let k = self.kib.clone().acquire_many_owned(kib as u32).await.expect("edge semaphores are never closed");
        let now_rows = self.in_flight_rows.fetch_add(rows as u64, Relaxed) + rows as u64;
        let now_bytes = self.in_flight_bytes.fetch_add(bytes as u64, Relaxed) + bytes as u64;
        self.max_rows.fetch_max(now_rows, Relaxed);
        self.max_bytes.fetch_max(now_bytes, Relaxed);
        Credit { budget: self.clone(), rows, bytes, _rows: r, _kib: k }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credits_block_at_the_bound_and_return_on_drop() {
        let b = EdgeBudget::new(10, 1 << 20);
        let c1 = b.acquire(6, 100).await;
        let c2 = b.acquire(4, 100).await;
        // The edge is full: a third acquire must wait until a credit is returned.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(5, 100).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(c1);
        let c3 = waiter.await.unwrap();
        assert_eq!(b.max_rows.load(Relaxed), 10);
        drop((c2, c3));
        assert_eq!(b.in_flight_rows.load(Relaxed), 0);
    }
}
