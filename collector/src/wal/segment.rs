//! The segment files of the log: their names, and reading them back at start.
//!
//! A segment is named by the sequence number of its first record (`00000000000000000042.wal`),
//! so that listing the directory gives them in order. At start every segment is read through
//! once; a damaged frame (a torn write at the end of the last segment after a crash, or a
//! corrupt one anywhere) ends what is kept of that segment: the file is cut there, so that
//! the next start does not find it again, and what was cut is reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::{self, FrameError, MAGIC, Record};

/// What is known of a segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its file.
    pub path: PathBuf,
    /// The sequence number in its name (its first record's, or the next one's if empty).
    pub first_seq: u64,
    /// Its last record's sequence number, if it has records.
    pub last_seq: Option<u64>,
    /// The newest arrival time among its records.
    pub newest: Option<SystemTime>,
    /// Its length.
    pub bytes: u64,
}

/// What recovery cut from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub path: PathBuf,
    /// Where the first bad frame begins; everything before it is kept.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// Why.
    pub reason: FrameError,
}

/// The file name of the segment whose first record is `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The segments in `dir`, oldest first (by the sequence number in their names).
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Why a segment cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The file could not be read or cut.
    #[error("cannot read the write-ahead log segment {path}: {source}")]
    Io {
        /// The segment.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not start as a segment does: not ours, or of a newer format.
    #[error(
        "{path} is not a write-ahead log segment of this version (its first bytes differ); move it out of the data directory"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the segment at `path` named `first_seq`: its records, handed to `each` in order, and
/// what was cut from its end, if anything. A damaged tail is cut from the file.
pub fn scan(
    path: &Path,
    first_seq: u64,
    mut each: impl FnMut(Record),
) -> Result<(SegmentInfo, Option<Damage>), ScanError> {
    let io_error = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error)?;
    let mut info = SegmentInfo {
        path: path.to_path_buf(),
        first_seq,
        last_seq: None,
        newest: None,
        bytes: bytes.len() as u64,
    };
    if bytes.len() < MAGIC.len() {
        // Created, then the crash came before its first bytes were all written.
        if !MAGIC.starts_with(&bytes) {
            return Err(ScanError::Foreign {
                path: path.to_path_buf(),
            });
        }
        let damage = (!bytes.is_empty()).then(|| Damage {
            path: path.to_path_buf(),
            offset: 0,
            bytes: bytes.len() as u64,
            reason: FrameError::Truncated,
        });
        cut(path, 0).map_err(io_error)?;
        info.bytes = 0;
        return Ok((info, damage));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(ScanError::Foreign {
            path: path.to_path_buf(),
        });
    }
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        match record::decode(&bytes[offset..]) {
            Ok((record, used)) => {
                info.last_seq = Some(record.seq);
                info.newest = Some(
                    info.newest
                        .map_or(record.arrival, |n| n.max(record.arrival)),
                );
                each(record);
                offset += used;
            }
            Err(reason) => {
                let damage = Damage {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    bytes: (bytes.len() - offset) as u64,
                    reason,
                };
                cut(path, offset as u64).map_err(io_error)?;
                info.bytes = offset as u64;
                return Ok((info, Some(damage)));
            }
        }
    }
    Ok((info, None))
}

/// Cuts the file at `len` and makes the cut durable.
fn cut(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Makes a directory's entries (a created or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
