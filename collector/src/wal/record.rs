//! One record of the write-ahead log, as it lies in a segment file.
//!
//! ```text
//! segment  := MAGIC record*
//! record   := len:u32le crc:u32le body          (len = body's length, crc = CRC-32 of body)
//! body     := kind:u8 seq:u64le arrival:i64le payload
//! ```
//!
//! The length comes first so that a reader can skip a record; the checksum covers everything
//! after it, so that a torn write (a record cut short by a crash) and a flipped bit are both
//! told from a good record. `arrival` is when the collector accepted the request (Unix
//! nanoseconds): replay feeds what is recent enough to the topology and the registry, and
//! retention retires segments by it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first bytes of every segment file: the format and its version.
pub const MAGIC: &[u8; 8] = b"WFWAL\0\0\x01";

/// Bytes before the body: its length and its checksum.
pub const FRAME_HEADER: usize = 8;

/// Bytes of a body before its payload: kind, sequence number, arrival time.
pub const BODY_HEADER: usize = 1 + 8 + 8;

/// The largest body a reader believes; a length above it is a torn or corrupt frame (the
/// receivers refuse requests far smaller than this).
pub const MAX_BODY: usize = 1 << 30;

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

/// Appends one framed record to `out`; returns the frame's length.
pub fn encode(
    out: &mut Vec<u8>,
    kind: RecordKind,
    seq: u64,
    arrival: SystemTime,
    payload: &[u8],
) -> usize {
    let start = out.len();
    let body_len = BODY_HEADER + payload.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, once the body is there
    let body = out.len();
    out.push(kind.byte());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_nanos(arrival).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[body..]);
    out[body - 4..body].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
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
    /// The checksum does not match the body.
    #[error("the record's checksum does not match its contents")]
    Checksum,
    /// The kind byte is unknown.
    #[error("unknown record kind {0}")]
    Kind(u8),
}

/// Reads the record at the start of `bytes`: the record and the bytes it took, or why it is
/// not one.
pub fn decode(bytes: &[u8]) -> Result<(Record, usize), FrameError> {
    let header = bytes.get(..FRAME_HEADER).ok_or(FrameError::Truncated)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return Err(FrameError::Length(len as u64));
    }
    let body = bytes
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(FrameError::Truncated)?;
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum);
    }
    let kind = RecordKind::of(body[0]).ok_or(FrameError::Kind(body[0]))?;
    let seq = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    let nanos = i64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
    let record = Record {
        kind,
        seq,
        arrival: from_unix_nanos(nanos),
        payload: body[BODY_HEADER..].to_vec(),
    };
    Ok((record, FRAME_HEADER + len))
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

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        encode(&mut out, RecordKind::Traces, 42, at, payload);
        out
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bytes = framed(b"spans");
        let (record, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            record,
            Record {
                kind: RecordKind::Traces,
                seq: 42,
                arrival: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                payload: b"spans".to_vec(),
            }
        );
    }

    #[test]
    fn damaged_frames_are_told_apart() {
        let good = framed(b"spans");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut kind = good.clone();
        kind[FRAME_HEADER] = 9;
        let crc = crc32fast::hash(&kind[FRAME_HEADER..]);
        kind[4..8].copy_from_slice(&crc.to_le_bytes());
        let cases: [(&str, &[u8], FrameError); 6] = [
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
                "a length no record has",
                &huge,
                FrameError::Length(u64::from(u32::MAX)),
            ),
            (
                "a kind this version does not know",
                &kind,
                FrameError::Kind(9),
            ),
        ];
        for (why, bytes, expected) in cases {
            assert_eq!(decode(bytes).unwrap_err(), expected, "{why}");
        }
    }

    #[test]
    fn arrival_times_before_the_epoch_survive() {
        let at = UNIX_EPOCH - Duration::from_secs(5);
        let mut out = Vec::new();
        encode(&mut out, RecordKind::Health, 1, at, b"{}");
        assert_eq!(decode(&out).unwrap().0.arrival, at);
    }
}
