//! The segment files of the log: their names, reading them back at start, and moving damage
//! aside.
//!
//! A segment is named by the sequence number of its first record (`00000000000000000042.wal`),
//! so that listing the directory gives them in order. At start every segment is read through
//! once ([`scan`]). A damaged record (a torn write at the end of the newest segment after a
//! crash, or a flipped byte anywhere) is skipped: the reader goes on at the next good record
//! ([`record::resync`]), so that the damage costs the records it touches, not the rest of the
//! segment. What was skipped is moved aside ([`repair`]): copied into `damaged/` beside the
//! segments, then cut out of the segment, so that the next start does not meet it again and
//! nothing is destroyed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::{self, Format, FrameError, MAGIC, MAGIC_V1, Record};

/// The folder, beside the segments, that damaged bytes are moved to.
pub const DAMAGED_DIR: &str = "damaged";

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

/// A damaged stretch of a segment, skipped by the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub path: PathBuf,
    /// Where the damage begins.
    pub offset: u64,
    /// How many bytes it spans (to the next good record, or to the end of the file).
    pub bytes: u64,
    /// Why the record there is not good.
    pub reason: FrameError,
    /// The records lost in it, when a good record follows (whose number says); `None` for damage
    /// that runs to the end of the file (a torn write, usually never acknowledged).
    pub records: Option<u64>,
    /// Where its bytes were moved, once [`repair`] has moved them.
    pub moved_to: Option<PathBuf>,
}

impl Damage {
    /// Whether it runs to the end of its file: a torn write, or damage with no record after it.
    pub fn is_tail(&self) -> bool {
        self.records.is_none()
    }
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
    /// The file could not be read or repaired.
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
    /// An empty or headless segment that is not the newest: only the newest can have been cut
    /// short by a crash as it was created; one before it was emptied by something else.
    #[error(
        "{path} has no segment header but is not the newest segment: the log has been tampered with; move it out of the data directory"
    )]
    Headless {
        /// The file.
        path: PathBuf,
    },
}

/// What [`scan`] read of a segment.
#[derive(Debug)]
pub struct Scan {
    /// The segment.
    pub info: SegmentInfo,
    /// The damaged stretches, in file order.
    pub damage: Vec<Damage>,
    /// The stretches of good bytes (the header and every good record), in file order.
    good: Vec<(usize, usize)>,
    /// The file's bytes, kept only when there is damage (for [`repair`]).
    bytes: Option<Vec<u8>>,
}

/// Reads the segment at `path` named `first_seq`: its records, handed to `each` in order, and
/// its damage. `newest` says whether it is the last segment of the log, the only one that may
/// lack a header (a crash as it was created). Nothing is changed on disk: see [`repair`].
pub fn scan(
    path: &Path,
    first_seq: u64,
    newest: bool,
    mut each: impl FnMut(Record),
) -> Result<Scan, ScanError> {
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
    let Some((format, header)) = Format::of(&bytes) else {
        let partial = MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())])
            || MAGIC_V1.starts_with(&bytes[..bytes.len().min(MAGIC_V1.len())]);
        if !partial {
            return Err(ScanError::Foreign {
                path: path.to_path_buf(),
            });
        }
        if !newest {
            return Err(ScanError::Headless {
                path: path.to_path_buf(),
            });
        }
        // Created, then the crash came before its header was all written.
        let damage = (!bytes.is_empty()).then(|| Damage {
            path: path.to_path_buf(),
            offset: 0,
            bytes: bytes.len() as u64,
            reason: FrameError::Truncated,
            records: None,
            moved_to: None,
        });
        return Ok(Scan {
            info,
            damage: damage.into_iter().collect(),
            good: Vec::new(),
            bytes: Some(bytes),
        });
    };
    let mut damage = Vec::new();
    let mut good = vec![(0, header)];
    let mut offset = header;
    // The least number the next record may have.
    let mut next_seq = first_seq;
    while offset < bytes.len() {
        let decoded = record::decode(&bytes[offset..], format).and_then(|(record, used)| {
            if record.seq < next_seq {
                Err(FrameError::Sequence {
                    expected: next_seq,
                    found: record.seq,
                })
            } else {
                Ok((record, used))
            }
        });
        match decoded {
            Ok((record, used)) => {
                next_seq = record.seq + 1;
                info.last_seq = Some(record.seq);
                info.newest = Some(
                    info.newest
                        .map_or(record.arrival, |n| n.max(record.arrival)),
                );
                each(record);
                match good.last_mut() {
                    Some((_, end)) if *end == offset => *end = offset + used,
                    _ => good.push((offset, offset + used)),
                }
                offset += used;
            }
            Err(reason) => {
                let resume = record::resync(&bytes, offset + 1, format, next_seq);
                let end = resume.unwrap_or(bytes.len());
                let records = resume.map(|at| {
                    let (record, _) =
                        record::decode(&bytes[at..], format).expect("resync found it");
                    record.seq - next_seq
                });
                damage.push(Damage {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    bytes: (end - offset) as u64,
                    reason,
                    records,
                    moved_to: None,
                });
                offset = end;
            }
        }
    }
    Ok(Scan {
        info,
        bytes: (!damage.is_empty()).then_some(bytes),
        damage,
        good,
    })
}

/// Moves a scanned segment's damage aside: each damaged stretch is copied into
/// `DIR/damaged/<segment>.<offset>` and synced, then the segment is rewritten with its good
/// bytes only (a new file renamed over it) and the directory synced. A segment left with no
/// header is removed. Returns the segment's new length and the damage with where it went.
pub fn repair(dir: &Path, scan: Scan) -> Result<(SegmentInfo, Vec<Damage>), ScanError> {
    let Scan {
        mut info,
        mut damage,
        good,
        bytes,
    } = scan;
    let Some(bytes) = bytes else {
        return Ok((info, damage));
    };
    let io_error = |source| ScanError::Io {
        path: info.path.clone(),
        source,
    };
    let aside = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&aside).map_err(io_error)?;
    let name = info
        .path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    for stretch in &mut damage {
        let start = stretch.offset as usize;
        let to = write_aside(
            &aside,
            &format!("{name}.{}", stretch.offset),
            &bytes[start..start + stretch.bytes as usize],
        )
        .map_err(io_error)?;
        stretch.moved_to = Some(to);
    }
    sync_dir(&aside).map_err(io_error)?;
    let kept: Vec<u8> = good
        .iter()
        .flat_map(|&(start, end)| bytes[start..end].iter().copied())
        .collect();
    if kept.is_empty() {
        fs::remove_file(&info.path).map_err(io_error)?;
    } else {
        let temporary = info.path.with_extension("wal.repair");
        write_synced(&temporary, &kept).map_err(io_error)?;
        fs::rename(&temporary, &info.path).map_err(io_error)?;
    }
    sync_dir(dir).map_err(io_error)?;
    info.bytes = kept.len() as u64;
    Ok((info, damage))
}

/// Writes `bytes` to a new file `name` in `dir` (`name.1`, `name.2`… if it is taken: what was
/// moved aside before is never written over), synced; returns its path.
fn write_aside(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    for attempt in 0..=u32::MAX {
        let path = match attempt {
            0 => dir.join(name),
            n => dir.join(format!("{name}.{n}")),
        };
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(bytes)?;
                file.sync_all()?;
                return Ok(path);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a directory's entries (a created or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
