//! The answer of a query as the API turns it into JSON or Arrow IPC: its batches, and the time
//! and memory it may still use while it is turned.

use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::MemoryReservation;

use super::QueryError;

/// The answer of a query, and what it may still use while it is turned into JSON or Arrow IPC.
#[derive(Debug)]
pub struct QueryResult {
    /// Its schema (also when there are no rows).
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// The query's time and memory left: its batches are counted in it already.
    pub budget: AnswerBudget,
}

/// The time and memory an answer may still use: the query's deadline, and its memory
/// reservation, which holds the answer's batches and grows with what is made of them.
#[derive(Debug)]
pub struct AnswerBudget {
    /// Real time, read on the query threads (whose runtime is never paused).
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) share: usize,
    pub(super) reservation: Option<MemoryReservation>,
    /// Values taken since the deadline was last looked at.
    pub(super) since_check: usize,
}

/// How many values an answer makes between two looks at the clock.
const VALUES_PER_CHECK: usize = 1024;

impl AnswerBudget {
    /// Counts `bytes` more of the answer, and looks at the clock now and then: past the
    /// query's share or its time limit, the answer fails.
    pub fn take(&mut self, bytes: usize) -> Result<(), QueryError> {
        if let Some(reservation) = &self.reservation {
            reservation
                .try_grow(bytes)
                .map_err(|_| QueryError::OutOfMemory(self.share))?;
        }
        self.since_check += 1;
        if self.since_check >= VALUES_PER_CHECK {
            self.since_check = 0;
            self.check()?;
        }
        Ok(())
    }

    /// Fails once the query's time limit has passed.
    pub fn check(&self) -> Result<(), QueryError> {
        if Instant::now() >= self.deadline {
            return Err(QueryError::Timeout(self.timeout));
        }
        Ok(())
    }

    /// A budget without bounds, for tests.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Self {
        Self {
            deadline: Instant::now() + Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            share: usize::MAX,
            reservation: None,
            since_check: 0,
        }
    }
}
