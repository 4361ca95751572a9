//! One record of the write-ahead log, as it lies in a segment file.
//!
//! Version 2 (written since 0.1; every segment written now):
//!
//! ```text
//! segment  := MAGIC salt:u64le record*
//! record   := marker:u64le len:u32le body_crc:u32le header_crc:u32le body
//!             (marker = the segment's salt, len = the body's length,
//!              body_crc = CRC-32 of body, header_crc = CRC-32 of the 16 bytes before it)
//! body     := kind:u8 seq:u64le arrival:i64le payload
//! ```
//!
//! Version 1 (still read): `segment := MAGIC_V1 record*`, `record := len:u32le crc:u32le body`.
//!
//! A reader that meets a damaged record skips it and goes on at the next good one
//! ([`resync`]), so that a flipped byte costs that record, not the rest of the segment. In
//! version 1 a damaged length lost everything after it, and a span attribute could carry bytes
//! that look like a whole valid frame. Version 2 marks each record with the segment's salt, a
//! random number written only in the segment's header, as SQLite's WAL salts its frames: a
//! stranger's payload cannot know it. The header has a checksum of its own, so that a damaged
//! length is told at once. Records of a segment are numbered one after another, and a
//! candidate found past damage must continue the numbering.
//!
//! `arrival` is when the collector accepted the request (Unix nanoseconds): replay feeds what
//! is recent enough to the topology and the registry, and retention retires segments by it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first bytes of a version-1 segment file.
pub const MAGIC_V1: &[u8; 8] = b"WFWAL\0\0\x01";

/// The first bytes of a version-2 segment file; its salt follows.
pub const MAGIC: &[u8; 8] = b"WFWAL\0\0\x02";

/// Bytes of a version-2 segment's header: the magic and the salt.
pub const SEGMENT_HEADER: usize = 16;

/// Bytes before a version-2 body: marker, length, the body's and the header's checksums.
pub const FRAME_HEADER: usize = 20;

/// Bytes before a version-1 body: its length and its checksum.
pub const FRAME_HEADER_V1: usize = 8;

/// Bytes of a body before its payload: kind, sequence number, arrival time.
pub const BODY_HEADER: usize = 1 + 8 + 8;

/// The largest body a reader believes; a length above it is a torn or corrupt frame (the
/// receivers refuse requests far smaller than this).
pub const MAX_BODY: usize = 1 << 30;

/// How far past the last good record a version-1 candidate's number may be: version 1 has no
/// marker, so every offset is a candidate, and the numbering is what tells a record from
/// bytes inside a payload.
const V1_SEQ_WINDOW: u64 = 1 << 20;

/// How many times over its bytes a version-1 resync may checksum candidates.
const V1_CHECKSUM_PASSES: usize = 4;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// The protobuf bytes of an `ExportTraceServiceRequest`.
    Traces,
    /// The protobuf bytes of an `ExportLogsServiceRequest` (health events among its records).
    Logs,
    /// A `POST /v1/health` report, as JSON.
    Health,
}

impl RecordKind {
    fn byte(self) -> u8 {
        match self {
            RecordKind::Traces => 1,
            RecordKind::Logs => 2,
            RecordKind::Health => 3,
        }
    }

    fn of(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Traces),
            2 => Some(RecordKind::Logs),
            3 => Some(RecordKind::Health),
            _ => None,
        }
    }
}

/// A record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the payload is.
    pub kind: RecordKind,
    /// Its place in the log: increasing, without reuse (gaps where a write failed).
    pub seq: u64,
    /// When the collector accepted it.
    pub arrival: SystemTime,
    /// The request's bytes.
    pub payload: Vec<u8>,
}

/// How a segment's records are framed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Version 1: `len crc body`.
    V1,
    /// Version 2, with the segment's salt.
    V2 {
        /// The marker of each record.
        salt: u64,
    },
}

impl Format {
    /// The format of a segment whose file starts with `bytes`, and its header's length; `None`
    /// when it is not a whole header of either version.
    pub fn of(bytes: &[u8]) -> Option<(Self, usize)> {
        if bytes.starts_with(MAGIC_V1) {
            return Some((Self::V1, MAGIC_V1.len()));
        }
        if bytes.starts_with(MAGIC) && bytes.len() >= SEGMENT_HEADER {
            let salt = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
            return Some((Self::V2 { salt }, SEGMENT_HEADER));
        }
        None
    }
}

/// A version-2 segment's header with `salt`.
pub fn segment_header(salt: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0; SEGMENT_HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&salt.to_le_bytes());
    header
}

/// Appends one version-2 record marked with `salt` to `out`; returns the frame's length.
pub fn encode(
    out: &mut Vec<u8>,
    salt: u64,
    kind: RecordKind,
    seq: u64,
    arrival: SystemTime,
    payload: &[u8],
) -> usize {
    let start = out.len();
    let body_len = BODY_HEADER + payload.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&salt.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 8]); // the checksums, once the body is there
    let body = out.len();
    out.push(kind.byte());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_nanos(arrival).to_le_bytes());
    out.extend_from_slice(payload);
    let body_crc = crc32fast::hash(&out[body..]);
    out[start + 12..start + 16].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 16]);
    out[start + 16..start + 20].copy_from_slice(&header_crc.to_le_bytes());
    out.len() - start
}

/// Appends one version-1 record to `out` (for tests of reading old segments).
#[cfg(test)]
pub fn encode_v1(
    out: &mut Vec<u8>,
    kind: RecordKind,
    seq: u64,
    arrival: SystemTime,
    payload: &[u8],
) {
    let body_len = BODY_HEADER + payload.len();
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.push(kind.byte());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_nanos(arrival).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[body..]);
    out[body - 4..body].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The file ends inside the frame: the write was cut short.
    #[error("the file ends inside a record (a torn write)")]
    Truncated,
    /// The length is impossible.
    #[error("a record length of {0} bytes is impossible")]
    Length(u64),
    /// The marker is not the segment's.
    #[error("the bytes there do not start with the segment's record marker")]
    Marker,
    /// The header's checksum does not match it (version 2).
    #[error("the record's header checksum does not match its header")]
    Header,
    /// The checksum does not match the body.
    #[error("the record's checksum does not match its contents")]
    Checksum,
    /// The kind byte is unknown.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// The record's number does not follow the one before it.
    #[error("record number {found} where {expected} or later was due")]
    Sequence {
        /// The least number that could come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
}

/// Reads the record at the start of `bytes` in `format`: the record and the bytes it took, or
/// why it is not one.
pub fn decode(bytes: &[u8], format: Format) -> Result<(Record, usize), FrameError> {
    match format {
        Format::V1 => decode_v1(bytes),
        Format::V2 { salt } => decode_v2(bytes, salt),
    }
}

fn decode_v2(bytes: &[u8], salt: u64) -> Result<(Record, usize), FrameError> {
    let header = bytes.get(..FRAME_HEADER).ok_or(FrameError::Truncated)?;
    let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) != salt {
        return Err(FrameError::Marker);
    }
    if crc32fast::hash(&header[..16]) != field(16) {
        return Err(FrameError::Header);
    }
    let len = field(8) as usize;
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return Err(FrameError::Length(len as u64));
    }
    let body = bytes
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(FrameError::Truncated)?;
    if crc32fast::hash(body) != field(12) {
        return Err(FrameError::Checksum);
    }
    Ok((body_record(body)?, FRAME_HEADER + len))
}

fn decode_v1(bytes: &[u8]) -> Result<(Record, usize), FrameError> {
    let header = bytes.get(..FRAME_HEADER_V1).ok_or(FrameError::Truncated)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return Err(FrameError::Length(len as u64));
    }
    let body = bytes
        .get(FRAME_HEADER_V1..FRAME_HEADER_V1 + len)
        .ok_or(FrameError::Truncated)?;
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum);
    }
    Ok((body_record(body)?, FRAME_HEADER_V1 + len))
}

fn body_record(body: &[u8]) -> Result<Record, FrameError> {
    let kind = RecordKind::of(body[0]).ok_or(FrameError::Kind(body[0]))?;
    let seq = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    let nanos = i64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
    Ok(Record {
        kind,
        seq,
        arrival: from_unix_nanos(nanos),
        payload: body[BODY_HEADER..].to_vec(),
    })
}

/// The offset, at or after `from`, of the next good record of `bytes` whose number is at
/// least `next_seq`: where a reader goes on after damage. `None` when no good record follows.
///
/// In version 2 only the offsets that hold the segment's marker are tried; in version 1 every
/// offset is, and a candidate must also number itself within [`V1_SEQ_WINDOW`] of `next_seq`
/// before its checksum is computed.
pub fn resync(bytes: &[u8], from: usize, format: Format, next_seq: u64) -> Option<usize> {
    let good =
        |at: usize| decode(&bytes[at..], format).is_ok_and(|(record, _)| record.seq >= next_seq);
    match format {
        Format::V2 { salt } => {
            let marker = salt.to_le_bytes();
            let finder = memchr::memmem::Finder::new(&marker);
            let mut at = from;
            while at < bytes.len() {
                let found = at + finder.find(&bytes[at..])?;
                if good(found) {
                    return Some(found);
                }
                at = found + 1;
            }
            None
        }
        Format::V1 => {
            // Checksums are what costs: at most a few times the segment's bytes in all, so
            // that a segment crafted with many plausible candidates cannot stall the start.
            let mut budget = bytes.len().saturating_mul(V1_CHECKSUM_PASSES);
            (from..bytes.len()).find(|&at| {
                let Some(frame) = bytes.get(at..at + FRAME_HEADER_V1 + BODY_HEADER) else {
                    return false;
                };
                let plausible = RecordKind::of(frame[FRAME_HEADER_V1]).is_some() && {
                    let seq = u64::from_le_bytes(
                        frame[FRAME_HEADER_V1 + 1..FRAME_HEADER_V1 + 9]
                            .try_into()
                            .expect("8 bytes"),
                    );
                    (next_seq..next_seq.saturating_add(V1_SEQ_WINDOW)).contains(&seq)
                };
                if !plausible || budget == 0 {
                    return false;
                }
                let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
                budget = budget.saturating_sub(len);
                good(at)
            })
        }
    }
}

fn unix_nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn from_unix_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5eed_cafe_f00d_d00d;
    const V2: Format = Format::V2 { salt: SALT };

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, SALT, RecordKind::Traces, 42, at(), payload);
        out
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bytes = framed(b"spans");
        let (record, used) = decode(&bytes, V2).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            record,
            Record {
                kind: RecordKind::Traces,
                seq: 42,
                arrival: at(),
                payload: b"spans".to_vec(),
            }
        );
        let mut old = Vec::new();
        encode_v1(&mut old, RecordKind::Health, 7, at(), b"{}");
        assert_eq!(
            decode(&old, Format::V1).unwrap().0.seq,
            7,
            "version 1 reads too"
        );
    }

    #[test]
    fn damaged_frames_are_told_apart() {
        let good = framed(b"spans");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut length = good.clone();
        length[8] ^= 0x40;
        let mut marker = good.clone();
        marker[0] ^= 1;
        let mut kind = good.clone();
        kind[FRAME_HEADER] = 9;
        let crc = crc32fast::hash(&kind[FRAME_HEADER..]);
        kind[12..16].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&kind[..16]);
        kind[16..20].copy_from_slice(&header_crc.to_le_bytes());
        let cases: [(&str, &[u8], FrameError); 7] = [
            ("nothing after the last record", &[], FrameError::Truncated),
            ("cut inside the header", &good[..5], FrameError::Truncated),
            (
                "cut inside the body",
                &good[..good.len() - 1],
                FrameError::Truncated,
            ),
            (
                "a bit flipped in the payload",
                &flipped,
                FrameError::Checksum,
            ),
            (
                "a bit flipped in the length: the header's own checksum tells",
                &length,
                FrameError::Header,
            ),
            ("not the segment's marker", &marker, FrameError::Marker),
            (
                "a kind this version does not know",
                &kind,
                FrameError::Kind(9),
            ),
        ];
        for (why, bytes, expected) in cases {
            assert_eq!(decode(bytes, V2).unwrap_err(), expected, "{why}");
        }
    }

    #[test]
    fn a_reader_goes_on_at_the_next_good_record() {
        let mut bytes = Vec::new();
        for (seq, payload) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            encode(&mut bytes, SALT, RecordKind::Traces, seq, at(), payload);
        }
        let second = framed(b"one").len();
        let third = second + framed(b"two").len();
        // The second record's length damaged: its end is unknown, the third is found anyway.
        bytes[second + 8] ^= 0xff;
        assert!(decode(&bytes[second..], V2).is_err());
        assert_eq!(resync(&bytes, second + 1, V2, 2), Some(third));
        assert_eq!(
            resync(&bytes, second + 1, V2, 4),
            None,
            "a record numbered before where the reader is does not count"
        );
    }

    #[test]
    fn a_frame_inside_a_payload_is_not_a_record() {
        // A span attribute that carries a whole frame, as a stranger could send it: without
        // the segment's salt its marker is wrong, so that resync passes over it.
        let forged = {
            let mut out = Vec::new();
            encode(&mut out, 0, RecordKind::Traces, 2, at(), b"forged");
            out
        };
        let mut bytes = Vec::new();
        encode(&mut bytes, SALT, RecordKind::Traces, 1, at(), &forged);
        let end = bytes.len();
        encode(&mut bytes, SALT, RecordKind::Traces, 2, at(), b"real");
        bytes[FRAME_HEADER + 3] ^= 1; // the first record damaged
        assert_eq!(resync(&bytes, 1, V2, 1), Some(end));
        // Version 1 has no marker: the numbering is what it has.
        let mut old = Vec::new();
        let mut inner = Vec::new();
        encode_v1(&mut inner, RecordKind::Traces, 9_999_999, at(), b"far");
        encode_v1(&mut old, RecordKind::Traces, 1, at(), &inner);
        let end = old.len();
        encode_v1(&mut old, RecordKind::Traces, 2, at(), b"real");
        old[FRAME_HEADER_V1 + 2] ^= 1;
        assert_eq!(
            resync(&old, 1, Format::V1, 1),
            Some(end),
            "a frame numbered far past the last record is passed over"
        );
    }

    #[test]
    fn arrival_times_before_the_epoch_survive() {
        let at = UNIX_EPOCH - Duration::from_secs(5);
        let mut out = Vec::new();
        encode(&mut out, SALT, RecordKind::Health, 1, at, b"{}");
        assert_eq!(decode(&out, V2).unwrap().0.arrival, at);
    }
}
