//! The free space of the data directory's filesystem, and the room kept for sealing.
//!
//! With a full disk the log cannot take a request, and sealing cannot write the Parquet file
//! that would let the log retire its segments: ingest stayed refused until someone freed space.
//! [`DiskWatch`] reads the filesystem's free space (`statvfs`) every second and says when it
//! is below the reserve (`--disk-reserve`): ingest is then refused, retryably (`disk_low`),
//! while the reserve is left to sealing, and the log closes its open segment so that what is
//! sealed can be retired and the space comes back by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::metrics::LogEvery;

/// `--disk-reserve`'s default: room for a seal of half the default store in Parquet (zstd
/// makes spans several times smaller than their Arrow form) and the log's buffer.
pub const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

/// Whether the data directory's filesystem is below its reserve, as last read.
#[derive(Debug, Clone)]
pub struct DiskWatch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    reserve: AtomicU64,
    free: AtomicU64,
    low: AtomicBool,
    logged: LogEvery,
}

impl DiskWatch {
    /// A watch of the filesystem that holds `dir`, keeping `reserve` bytes free.
    pub fn new(dir: impl Into<PathBuf>, reserve: u64) -> Self {
        Self(Arc::new(Inner {
            dir: dir.into(),
            reserve: AtomicU64::new(reserve),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            logged: LogEvery::default(),
        }))
    }

    /// A new reserve (a configuration reload), from the next check on.
    pub fn set_reserve(&self, reserve: u64) {
        self.0.reserve.store(reserve, Ordering::Relaxed);
    }

    /// Reads the free space now (blocking: a system call); returns whether it is below the
    /// reserve. A filesystem that cannot be read counts as not low: the log's own write errors
    /// still refuse what it cannot take.
    pub fn check(&self) -> bool {
        let inner = &self.0;
        let free = match rustix::fs::statvfs(&inner.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(error) => {
                tracing::debug!(%error, dir = %inner.dir.display(), "cannot read the free space");
                u64::MAX
            }
        };
        let reserve = inner.reserve.load(Ordering::Relaxed);
        let low = free < reserve;
        inner.free.store(free, Ordering::Relaxed);
        let was = inner.low.swap(low, Ordering::Relaxed);
        if low && (!was || inner.logged.ready()) {
            tracing::warn!(
                free,
                reserve,
                dir = %inner.dir.display(),
                "the data directory's disk is below --disk-reserve: ingest is refused, retryably, and the rest is kept for sealing (logged at most once a minute; counted in wayfinder_receiver_refused_requests_total{{reason=\"disk_low\"}})"
            );
        } else if was && !low {
            tracing::info!(
                free,
                reserve,
                "the data directory's disk has room again: ingest resumes"
            );
        }
        low
    }

    /// Whether the free space was below the reserve at the last check.
    pub fn is_low(&self) -> bool {
        self.0.low.load(Ordering::Relaxed)
    }

    /// The free bytes at the last check.
    pub fn free(&self) -> u64 {
        self.0.free.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_when_the_free_space_is_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::new(dir.path(), 0);
        assert!(!watch.check(), "no reserve: never low");
        assert!(watch.free() > 0 && watch.free() < u64::MAX);
        watch.set_reserve(u64::MAX);
        assert!(watch.check(), "a reserve larger than any disk");
        assert!(watch.is_low());
    }
}
