//! The write-ahead log: every request the receivers accept is appended here before it is
//! acknowledged, and replayed at the next start, so that a crash loses nothing acknowledged.
//!
//! A log is a directory of segment files ([`segment`]) of framed, checksummed records
//! ([`record`]), written by one thread ([`writer`]) with group commit. [`WalSync`] says when an
//! answer goes out:
//! - [`WalSync::Always`]: after `fdatasync`. An acknowledged request survives a power cut.
//! - [`WalSync::Interval`]: after the `write` (the bytes are in the kernel: they survive the
//!   collector's crash, not the machine's), with an `fdatasync` at least every interval. A
//!   power cut loses at most that interval.
//!
//! Segments are retired (deleted) once what they hold is older than the store keeps
//! ([`Wal::retire_before`]).
//!
//! (Its example runs as the unit test `examples::example`.)

mod disk;
mod metrics;
pub mod record;
pub mod segment;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

pub use disk::{DEFAULT_DISK_RESERVE, DiskWatch};
pub use metrics::WalMetrics;
pub use record::{Record, RecordKind};
pub use segment::{DAMAGED_DIR, Damage, ScanError, SegmentInfo};

/// When the log answers an append.
///
/// ```
/// use std::time::Duration;
/// use wayfinder_collector::Config;
/// use wayfinder_collector::config::WalSync;
///
/// let mut config = Config::default();
/// config.store.set_wal_sync(WalSync::Interval(Duration::from_millis(10)));
/// assert_eq!(config.store.wal_sync(), WalSync::Interval(Duration::from_millis(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// After the record is synced to disk.
    Always,
    /// After the record is written; synced at least this often.
    Interval(Duration),
}

/// Settings of a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// The directory of the segments (created if missing).
    pub dir: PathBuf,
    /// When an append is answered.
    pub sync: WalSync,
    /// A segment is closed and a new one begun past this size...
    pub segment_bytes: u64,
    /// ...or this age, so that retirement can delete old records on a quiet collector.
    pub segment_age: Duration,
    /// Bytes appended and not yet taken by the writer; beyond this an append is refused
    /// ([`AppendError::Full`]): the disk is slower than the ingest.
    pub max_buffered_bytes: usize,
    /// Whether spans are sealed out of the log ([`Wal::sealed`]): a segment is then retired
    /// only once every trace record in it is sealed.
    pub track_sealing: bool,
    /// The lowest sequence number the next record may take: above every record already
    /// sealed, so that a log emptied by retirement never reuses a number.
    pub min_next_seq: u64,
}

impl WalConfig {
    /// A log in `dir` with 64 MiB or 10-minute segments and a 64 MiB buffer.
    pub fn new(dir: impl Into<PathBuf>, sync: WalSync) -> Self {
        Self {
            dir: dir.into(),
            sync,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(600),
            max_buffered_bytes: 64 << 20,
            track_sealing: false,
            min_next_seq: 1,
        }
    }
}

/// Why an append failed; every kind is worth retrying later.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Writing or syncing failed (a full disk, an I/O error); nothing of the request is kept.
    #[error("cannot write to the write-ahead log: {0}")]
    Io(Arc<std::io::Error>),
    /// More is waiting for the disk than the log buffers.
    #[error("the write-ahead log is behind (its buffer is full)")]
    Full,
    /// The log is closed (the collector is stopping).
    #[error("the write-ahead log is closed")]
    Closed,
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory could not be made or read.
    #[error("cannot open the write-ahead log directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A segment could not be read.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The writer thread could not be started.
    #[error("cannot start the write-ahead log's writer: {0}")]
    Thread(std::io::Error),
}

/// Counters of a log, for metrics.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written (frames included).
    pub bytes: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Writes or syncs that failed.
    pub write_errors: AtomicU64,
    /// Appends refused because the buffer was full.
    pub refused_full: AtomicU64,
    /// Bytes of the segments on disk.
    pub disk_bytes: AtomicU64,
    /// Records replayed at start (counted by whoever replays them).
    pub replayed_records: AtomicU64,
    /// Bytes of damage moved out of segments at start.
    pub dropped_bytes: AtomicU64,
    /// Records known lost in that damage (numbered gaps between good records).
    pub dropped_records: AtomicU64,
}

/// What was found on disk when the log was opened.
#[derive(Debug)]
pub struct Recovery {
    /// The segments found, oldest first.
    pub found: Vec<SegmentInfo>,
    /// Records in them (after any cut).
    pub records: u64,
    /// What was skipped and moved aside: torn tails and damaged records.
    pub damage: Vec<Damage>,
}

impl Recovery {
    /// The records of each segment found, oldest first, a segment at a time (so that replay
    /// holds one segment in memory, not the log). Blocking: reads files.
    pub fn segments(&self) -> impl Iterator<Item = Result<Vec<Record>, ScanError>> + '_ {
        (0..self.found.len()).filter_map(|index| self.segment(index))
    }

    /// The records of the `index`th segment found. Blocking: reads its file.
    pub fn segment(&self, index: usize) -> Option<Result<Vec<Record>, ScanError>> {
        let info = self.found.get(index)?;
        let newest = index + 1 == self.found.len();
        let mut records = Vec::new();
        Some(
            segment::scan(&info.path, info.first_seq, newest, |record| {
                records.push(record)
            })
            .map(|_| records),
        )
    }
}

/// A write-ahead log, shared by the receivers (cheap to clone).
#[derive(Debug, Clone)]
pub struct Wal {
    shared: Arc<writer::Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    dir: PathBuf,
    max_buffered_bytes: usize,
}

/// The answer to one append: resolves once the record is as durable as the log's
/// [`WalSync`] says.
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<u64, AppendError>>);

impl Ticket {
    /// The record's sequence number once written (and synced in `always` mode).
    pub async fn durable(self) -> Result<u64, AppendError> {
        self.0.await.unwrap_or(Err(AppendError::Closed))
    }
}

impl Wal {
    /// Opens the log in `config.dir`: reads every segment, moving damage aside (see
    /// [`segment::scan`] and [`segment::repair`]), then starts the writer, which begins a new
    /// segment after them.
    pub fn open(config: WalConfig) -> Result<(Self, Recovery), OpenError> {
        let dir_error = |source| OpenError::Dir {
            path: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(dir_error)?;
        let mut recovery = Recovery {
            found: Vec::new(),
            records: 0,
            damage: Vec::new(),
        };
        let mut next_seq = config.min_next_seq.max(1);
        let segments = segment::list(&config.dir).map_err(dir_error)?;
        let count = segments.len();
        for (index, (first_seq, path)) in segments.into_iter().enumerate() {
            let mut records = 0u64;
            let scan = segment::scan(&path, first_seq, index + 1 == count, |_| records += 1)?;
            let (info, damage) = segment::repair(&config.dir, scan)?;
            recovery.records += records;
            recovery.damage.extend(damage);
            next_seq = next_seq
                .max(first_seq)
                .max(info.last_seq.map_or(0, |s| s + 1));
            if info.last_seq.is_none() {
                // Nothing to replay or keep; its name may be the next segment's.
                if info.path.exists() {
                    std::fs::remove_file(&info.path).map_err(dir_error)?;
                }
                continue;
            }
            recovery.found.push(info);
        }
        let stats = WalStats::default();
        let on_disk: u64 = recovery.found.iter().map(|s| s.bytes).sum();
        stats.disk_bytes.store(on_disk, Ordering::Relaxed);
        let dropped: u64 = recovery.damage.iter().map(|d| d.bytes).sum();
        stats.dropped_bytes.store(dropped, Ordering::Relaxed);
        let lost: u64 = recovery.damage.iter().filter_map(|d| d.records).sum();
        stats.dropped_records.store(lost, Ordering::Relaxed);
        let shared = Arc::new(writer::Shared {
            state: Mutex::new(writer::Pending {
                next_seq,
                ..writer::Pending::default()
            }),
            wake: Condvar::new(),
            closed: Mutex::new(recovery.found.clone()),
            stats,
            unsealed: config.track_sealing.then(Mutex::default),
            // Random, and written only in segment headers: a payload cannot carry a frame
            // that a reader past damage would take for a record.
            salt: fastrand::u64(..),
        });
        let thread = std::thread::Builder::new()
            .name("wayfinder-wal".into())
            .spawn({
                let (shared, config) = (shared.clone(), config.clone());
                move || writer::run(shared, config)
            })
            .map_err(OpenError::Thread)?;
        Ok((
            Self {
                shared,
                thread: Arc::new(Mutex::new(Some(thread))),
                dir: config.dir,
                max_buffered_bytes: config.max_buffered_bytes,
            },
            recovery,
        ))
    }

    /// Appends a record (a copy of `payload`); the [`Ticket`] says when it is durable. Refused
    /// at once when the buffer is full or the log closed.
    pub fn append(
        &self,
        kind: RecordKind,
        arrival: SystemTime,
        payload: &[u8],
    ) -> Result<Ticket, AppendError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.shared.state.lock();
        if pending.closing {
            return Err(AppendError::Closed);
        }
        if !fits(pending.buf.len(), payload.len(), self.max_buffered_bytes) {
            self.shared
                .stats
                .refused_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::Full);
        }
        let seq = pending.next_seq;
        pending.next_seq += 1;
        if kind == RecordKind::Traces
            && let Some(unsealed) = &self.shared.unsealed
        {
            unsealed.lock().insert(seq);
        }
        record::encode(
            &mut pending.buf,
            self.shared.salt,
            kind,
            seq,
            arrival,
            payload,
        );
        pending.waiters.push((seq, tx));
        pending.newest = Some(pending.newest.map_or(arrival, |n| n.max(arrival)));
        drop(pending);
        self.shared.wake.notify_one();
        Ok(Ticket(rx))
    }

    /// Notes a replayed trace record whose spans are in the store, not sealed yet.
    pub fn track(&self, seq: u64) {
        if let Some(unsealed) = &self.shared.unsealed {
            unsealed.lock().insert(seq);
        }
    }

    /// Notes trace records whose spans are sealed: the log need not keep them for the store.
    pub fn sealed(&self, seqs: &[u64]) {
        if let Some(unsealed) = &self.shared.unsealed {
            let mut unsealed = unsealed.lock();
            for seq in seqs {
                unsealed.remove(seq);
            }
        }
    }

    /// Deletes the closed segments whose newest record arrived before `cutoff` (and, with
    /// sealing, whose trace records are all sealed); returns how many. Blocking: removes files.
    pub fn retire_before(&self, cutoff: SystemTime) -> usize {
        let oldest_unsealed = self
            .shared
            .unsealed
            .as_ref()
            .and_then(|u| u.lock().first().copied())
            .unwrap_or(u64::MAX);
        let retired: Vec<SegmentInfo> = {
            let mut closed = self.shared.closed.lock();
            let (old, keep) = std::mem::take(&mut *closed).into_iter().partition(|s| {
                s.newest.is_none_or(|newest| newest < cutoff)
                    && s.last_seq.is_none_or(|last| last < oldest_unsealed)
            });
            *closed = keep;
            old
        };
        let mut count = 0;
        for segment in &retired {
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    count += 1;
                    self.shared
                        .stats
                        .disk_bytes
                        .fetch_sub(segment.bytes.min(self.disk_bytes()), Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, path = %segment.path.display(), "cannot delete a retired write-ahead log segment; keeping it");
                    self.shared.closed.lock().push(segment.clone());
                }
            }
        }
        if count > 0 {
            let _ = segment::sync_dir(&self.dir);
        }
        count
    }

    /// The log's upkeep, every second: short of space on `disk`, the open segment closes, so
    /// that what is sealed of it can go too; then what is sealed, or older than `keep`, goes.
    pub(crate) fn upkeep(&self, disk: Option<&DiskWatch>, keep: Duration, now: SystemTime) {
        if disk.is_some_and(DiskWatch::check) {
            self.rotate();
        }
        self.retire_before(now - keep);
    }

    /// Closes the open segment after what is appended so far (the next record begins a new
    /// one), so that retirement can take it once its records are sealed and old enough: what
    /// a disk short of space does.
    pub fn rotate(&self) {
        self.shared.state.lock().rotate = true;
        self.shared.wake.notify_one();
    }

    /// Its counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    fn disk_bytes(&self) -> u64 {
        self.shared.stats.disk_bytes.load(Ordering::Relaxed)
    }

    /// Writes and syncs what is appended, then stops the writer; later appends are refused.
    pub async fn close(&self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the write-ahead log's writer ended abnormally");
            }
        }
    }
}

/// Whether a record of `payload` bytes may join `buffered` bytes under a buffer of `max`: a
/// request larger than the whole buffer is taken when the buffer is empty (it is refused by
/// the receivers' own size limits long before it could be too large for memory).
fn fits(buffered: usize, payload: usize, max: usize) -> bool {
    buffered == 0 || buffered + payload + record::FRAME_HEADER + record::BODY_HEADER <= max
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[tokio::test(flavor = "current_thread")]
    async fn example() {
        use crate::store::log::{RecordKind, Wal, WalConfig, WalSync};
        use std::time::SystemTime;

        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig::new(dir.path(), WalSync::Always);
        let (wal, recovery) = Wal::open(config.clone()).unwrap();
        assert_eq!(recovery.records, 0);
        let ticket = wal
            .append(RecordKind::Traces, SystemTime::now(), b"request")
            .unwrap();
        let seq = ticket.durable().await.unwrap(); // on disk, synced
        wal.close().await;

        let (_wal, recovery) = Wal::open(config).unwrap();
        let records: Vec<_> = recovery.segments().flat_map(|s| s.unwrap()).collect();
        assert_eq!(
            (records[0].seq, &records[0].payload[..]),
            (seq, &b"request"[..])
        );
    }
}
