//! A query's slot of `--query-max-concurrent`, held by its memory pool.
//!
//! Aborting a query's task cannot interrupt a function call that is running, and DataFusion
//! runs a query's partitions in tasks of its own, which an abort reaches only at their next
//! await: the work may go on a while after the caller was answered. Every piece of a query's
//! work (its tasks' contexts, its memory reservations) holds the query's runtime environment,
//! and with it this pool: so the slot the pool holds comes back when the last of them is
//! gone, that is when the query's work has really stopped, not when its caller stopped
//! waiting.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

use crate::util::cap::Place;

/// A memory pool that delegates to `inner`, and holds a query's slot until it is dropped.
#[derive(Debug)]
pub(super) struct SlotPool {
    inner: Arc<dyn MemoryPool>,
    _slot: Place,
}

impl SlotPool {
    pub(super) fn new(inner: Arc<dyn MemoryPool>, slot: Place) -> Self {
        Self { inner, _slot: slot }
    }
}

impl std::fmt::Display for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl MemoryPool for SlotPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.inner.try_grow(reservation, additional)
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}
