//! The log's writer: one thread that takes what the receivers appended, writes it to the open
//! segment, syncs it as the configuration says, then answers every request of that group.
//!
//! Group commit: while the thread writes or syncs one group, the next requests gather in the
//! buffer, and the next write takes them all with one `write` and (in `always` mode) one
//! `fdatasync`. A write or sync that fails is undone (the file cut back to where the group
//! began), every request of the group gets the error, and the next group starts a new segment.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::record::{SEGMENT_HEADER, segment_header};
use super::segment::{self, SegmentInfo};
use super::{AppendError, WalConfig, WalStats, WalSync};

/// What the receivers and the writer share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<Pending>,
    pub(super) wake: Condvar,
    /// Closed segments, oldest first, for retirement.
    pub(super) closed: Mutex<Vec<SegmentInfo>>,
    pub(super) stats: WalStats,
    /// With sealing: the trace records whose spans are not sealed yet (a segment holding one
    /// is not retired). Taken after `state` when both are.
    pub(super) unsealed: Option<Mutex<std::collections::BTreeSet<u64>>>,
    /// The marker of this process's records, in the header of each segment it writes.
    pub(super) salt: u64,
}

/// Records appended and not yet taken by the writer.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) buf: Vec<u8>,
    /// Each request's sequence number and where its answer goes.
    pub(super) waiters: Vec<(u64, oneshot::Sender<Result<u64, AppendError>>)>,
    pub(super) newest: Option<SystemTime>,
    pub(super) next_seq: u64,
    pub(super) closing: bool,
    /// Asked to close the open segment (so that retirement may take it).
    pub(super) rotate: bool,
}

/// The segment being written.
struct Open {
    file: File,
    info: SegmentInfo,
    opened: Instant,
}

pub(super) fn run(shared: Arc<Shared>, config: WalConfig) {
    let mut writer = Writer {
        shared,
        config,
        open: None,
        dirty: false,
        last_sync: Instant::now(),
        spare: Vec::new(),
    };
    writer.run();
}

struct Writer {
    shared: Arc<Shared>,
    config: WalConfig,
    open: Option<Open>,
    /// Written and not yet synced (interval mode).
    dirty: bool,
    last_sync: Instant,
    spare: Vec<u8>,
}

impl Writer {
    fn run(&mut self) {
        loop {
            let mut pending = self.shared.state.lock();
            while pending.buf.is_empty() && !pending.closing && !pending.rotate {
                match self.config.sync {
                    WalSync::Interval(interval) if self.dirty => {
                        let deadline = self.last_sync + interval;
                        if self
                            .shared
                            .wake
                            .wait_until(&mut pending, deadline)
                            .timed_out()
                            && pending.buf.is_empty()
                        {
                            break;
                        }
                    }
                    _ => self.shared.wake.wait(&mut pending),
                }
            }
            let closing = pending.closing;
            let rotate = std::mem::take(&mut pending.rotate);
            let mut buf = std::mem::take(&mut self.spare);
            std::mem::swap(&mut buf, &mut pending.buf);
            let waiters = std::mem::take(&mut pending.waiters);
            let newest = pending.newest.take();
            drop(pending);

            if !buf.is_empty() {
                self.write_group(&buf, waiters, newest);
            }
            if rotate && let Some(open) = self.open.take() {
                self.close(open);
            }
            buf.clear();
            self.spare = buf;
            if let WalSync::Interval(interval) = self.config.sync
                && self.dirty
                && (closing || self.last_sync.elapsed() >= interval)
            {
                self.sync_in_background();
            }
            if closing && self.shared.state.lock().buf.is_empty() {
                if let Some(open) = self.open.take() {
                    self.close(open);
                }
                return;
            }
        }
    }

    /// Writes one group and answers its requests.
    fn write_group(
        &mut self,
        buf: &[u8],
        waiters: Vec<(u64, oneshot::Sender<Result<u64, AppendError>>)>,
        newest: Option<SystemTime>,
    ) {
        let first_seq = waiters.first().map_or(0, |(seq, _)| *seq);
        let last_seq = waiters.last().map(|(seq, _)| *seq);
        let result = self.write(buf, first_seq);
        let stats = &self.shared.stats;
        match result {
            Ok(()) => {
                if let Some(open) = &mut self.open {
                    open.info.last_seq = last_seq.or(open.info.last_seq);
                    open.info.newest = open.info.newest.max(newest);
                    open.info.bytes += buf.len() as u64;
                }
                stats
                    .records
                    .fetch_add(waiters.len() as u64, Ordering::Relaxed);
                stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                stats
                    .disk_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                for (seq, answer) in waiters {
                    let _ = answer.send(Ok(seq));
                }
            }
            Err(error) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let error = AppendError::Io(Arc::new(error));
                if let Some(unsealed) = &self.shared.unsealed {
                    let mut unsealed = unsealed.lock();
                    for (seq, _) in &waiters {
                        unsealed.remove(seq);
                    }
                }
                for (_, answer) in waiters {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }

    /// Appends `buf` to the open segment (a new one when there is none, or it is full or old),
    /// synced in `always` mode; on failure the file is cut back and closed.
    fn write(&mut self, buf: &[u8], first_seq: u64) -> io::Result<()> {
        let rotate = self.open.as_ref().is_some_and(|open| {
            open.info.bytes >= self.config.segment_bytes
                || open.opened.elapsed() >= self.config.segment_age
        });
        if rotate && let Some(open) = self.open.take() {
            self.close(open);
        }
        if self.open.is_none() {
            self.open = Some(self.create(first_seq)?);
        }
        let open = self.open.as_mut().expect("a segment was just opened");
        let before = open.info.bytes;
        let written = open
            .file
            .write_all(buf)
            .and_then(|()| match self.config.sync {
                WalSync::Always => {
                    self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    open.file.sync_data()
                }
                WalSync::Interval(_) => {
                    self.dirty = true;
                    Ok(())
                }
            });
        if let Err(error) = written {
            // Undo what part of the group reached the file; a file that cannot be cut is left
            // for recovery to cut at the next start (it is closed: nothing follows the tail).
            let _ = open
                .file
                .set_len(before)
                .and_then(|()| open.file.seek(SeekFrom::Start(before)));
            let open = self.open.take().expect("the segment is open");
            self.close(open);
            return Err(error);
        }
        Ok(())
    }

    fn create(&self, first_seq: u64) -> io::Result<Open> {
        let path: PathBuf = self.config.dir.join(segment::file_name(first_seq));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let started = file
            .write_all(&segment_header(self.shared.salt))
            .and_then(|()| file.sync_data())
            .and_then(|()| segment::sync_dir(&self.config.dir));
        if let Err(error) = started {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        self.shared
            .stats
            .disk_bytes
            .fetch_add(SEGMENT_HEADER as u64, Ordering::Relaxed);
        Ok(Open {
            file,
            info: SegmentInfo {
                path,
                first_seq,
                last_seq: None,
                newest: None,
                bytes: SEGMENT_HEADER as u64,
            },
            opened: Instant::now(),
        })
    }

    /// Syncs the open segment (interval mode).
    fn sync_in_background(&mut self) {
        if let Some(open) = &self.open {
            self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = open.file.sync_data() {
                self.shared
                    .stats
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, path = %open.info.path.display(), "cannot sync the write-ahead log");
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Syncs a segment and hands it to retirement.
    fn close(&mut self, open: Open) {
        if let Err(error) = open.file.sync_data() {
            tracing::warn!(%error, path = %open.info.path.display(), "cannot sync a write-ahead log segment as it is closed");
        }
        self.dirty = false;
        self.shared.closed.lock().push(open.info);
    }
}
