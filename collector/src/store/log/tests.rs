use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::FrameError;
use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The salt in a segment's header.
fn salt(path: &std::path::Path) -> u64 {
    match record::Format::of(&std::fs::read(path).unwrap()) {
        Some((record::Format::V2 { salt }, _)) => salt,
        other => panic!("not a version-2 segment: {other:?}"),
    }
}

/// The records of a segment file and where each begins.
fn frames(path: &std::path::Path) -> Vec<(usize, Record)> {
    let bytes = std::fs::read(path).unwrap();
    let (format, mut offset) = record::Format::of(&bytes).unwrap();
    let mut frames = Vec::new();
    while offset < bytes.len() {
        let (record, used) = record::decode(&bytes[offset..], format).unwrap();
        frames.push((offset, record));
        offset += used;
    }
    frames
}

fn records(recovery: &Recovery) -> Vec<Record> {
    recovery.segments().flat_map(|s| s.unwrap()).collect()
}

async fn append_all(wal: &Wal, payloads: &[&[u8]], arrival: SystemTime) -> Vec<u64> {
    let mut seqs = Vec::new();
    for payload in payloads {
        let ticket = wal.append(RecordKind::Traces, arrival, payload).unwrap();
        seqs.push(ticket.durable().await.unwrap());
    }
    seqs
}

#[tokio::test(flavor = "current_thread")]
async fn records_come_back_in_order_and_numbering_goes_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig::new(dir.path(), WalSync::Always);
    let (wal, _) = Wal::open(config.clone()).unwrap();
    let first = append_all(&wal, &[b"a", b"b"], at(10)).await;
    wal.close().await;

    let (wal, recovery) = Wal::open(config.clone()).unwrap();
    assert_eq!(recovery.records, 2);
    assert!(recovery.damage.is_empty());
    let second = append_all(&wal, &[b"c"], at(20)).await;
    assert!(second[0] > first[1], "{first:?} then {second:?}");
    wal.close().await;

    let (_wal, recovery) = Wal::open(config).unwrap();
    let got: Vec<(u64, Vec<u8>, SystemTime)> = records(&recovery)
        .into_iter()
        .map(|r| (r.seq, r.payload, r.arrival))
        .collect();
    assert_eq!(
        got,
        vec![
            (first[0], b"a".to_vec(), at(10)),
            (first[1], b"b".to_vec(), at(10)),
            (second[0], b"c".to_vec(), at(20)),
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_torn_tail_is_cut_and_reported_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig::new(dir.path(), WalSync::Always);
    let (wal, _) = Wal::open(config.clone()).unwrap();
    append_all(&wal, &[b"one", b"two"], at(1)).await;
    wal.close().await;
    // A crash in the middle of the next write: half a frame at the end of the segment.
    let (_, path) = segment::list(dir.path()).unwrap().pop().unwrap();
    let good_len = std::fs::metadata(&path).unwrap().len();
    let mut frame = Vec::new();
    record::encode(
        &mut frame,
        salt(&path),
        RecordKind::Traces,
        3,
        at(1),
        b"three",
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(file);

    let (wal, recovery) = Wal::open(config.clone()).unwrap();
    let aside = dir.path().join(DAMAGED_DIR).join(format!(
        "{}.{good_len}",
        path.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(
        recovery.damage,
        vec![Damage {
            path: path.clone(),
            offset: good_len,
            bytes: (frame.len() / 2) as u64,
            reason: FrameError::Truncated,
            records: None,
            moved_to: Some(aside.clone()),
        }]
    );
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        &frame[..frame.len() / 2],
        "the torn bytes are moved aside, not destroyed"
    );
    let kept: Vec<Vec<u8>> = records(&recovery).into_iter().map(|r| r.payload).collect();
    assert_eq!(kept, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good_len,
        "the file is cut"
    );
    wal.close().await;
    let (_wal, again) = Wal::open(config).unwrap();
    assert!(again.damage.is_empty(), "a cut tail is not found twice");
    assert_eq!(again.records, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_record_ends_its_segment_and_later_segments_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path(), WalSync::Always);
    config.segment_bytes = 1; // every group in a segment of its own
    let (wal, _) = Wal::open(config.clone()).unwrap();
    append_all(&wal, &[b"first", b"second", b"third"], at(1)).await;
    wal.close().await;
    let segments = segment::list(dir.path()).unwrap();
    assert_eq!(segments.len(), 3, "one record a segment");
    let middle = &segments[1].1;
    let mut bytes = std::fs::read(middle).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(middle, bytes).unwrap();

    let (_wal, recovery) = Wal::open(config).unwrap();
    let kept: Vec<Vec<u8>> = records(&recovery).into_iter().map(|r| r.payload).collect();
    assert_eq!(kept, vec![b"first".to_vec(), b"third".to_vec()]);
    assert_eq!(recovery.damage.len(), 1);
    assert_eq!(recovery.damage[0].reason, FrameError::Checksum);
    assert_eq!(&recovery.damage[0].path, middle);
}

#[tokio::test(flavor = "current_thread")]
async fn damage_in_the_middle_of_a_segment_costs_only_the_records_it_touches() {
    // Each row: which byte of the fifth record's frame is flipped, and why that one.
    /// Which byte of a record's frame (from its start and length) is flipped.
    type Flip = fn(usize, usize) -> usize;
    let cases: [(Flip, FrameError, &str); 3] = [
        (
            |start, len| start + len - 3,
            FrameError::Checksum,
            "a byte of the payload",
        ),
        (
            |start, _| start + 9,
            FrameError::Header,
            "a byte of the length: in version 1 it lost the rest of the segment",
        ),
        (
            |start, _| start + 2,
            FrameError::Marker,
            "a byte of the marker",
        ),
    ];
    for (flip, reason, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig::new(dir.path(), WalSync::Always);
        let (wal, _) = Wal::open(config.clone()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("request {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        append_all(&wal, &refs, at(1)).await;
        wal.close().await;
        let (_, path) = segment::list(dir.path()).unwrap().pop().unwrap();
        let frames = frames(&path);
        assert_eq!(frames.len(), 10, "{why}: one segment");
        let start = frames[4].0;
        let end = frames[5].0;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[flip(start, end - start)] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();

        let (wal, recovery) = Wal::open(config.clone()).unwrap();
        let kept: Vec<Vec<u8>> = records(&recovery).into_iter().map(|r| r.payload).collect();
        let mut want = payloads.clone();
        want.remove(4);
        assert_eq!(kept, want, "{why}: the other nine come back");
        assert_eq!(recovery.damage.len(), 1, "{why}");
        let damage = &recovery.damage[0];
        assert_eq!(
            (damage.offset, damage.bytes, damage.reason, damage.records),
            ((start as u64), ((end - start) as u64), reason, Some(1)),
            "{why}: the damaged record, and only it"
        );
        assert_eq!(
            std::fs::read(damage.moved_to.as_ref().unwrap()).unwrap(),
            &bytes[start..end],
            "{why}: its bytes are moved aside"
        );
        assert_eq!(
            wal.stats().dropped_records.load(Ordering::Relaxed),
            1,
            "{why}"
        );
        wal.close().await;
        let (_wal, again) = Wal::open(config).unwrap();
        assert!(again.damage.is_empty(), "{why}: the damage is found once");
        assert_eq!(again.records, 9, "{why}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn segments_of_the_first_version_are_read_and_resynchronised() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = record::MAGIC_V1.to_vec();
    let mut starts = Vec::new();
    for seq in 1..=5u64 {
        starts.push(bytes.len());
        record::encode_v1(
            &mut bytes,
            RecordKind::Traces,
            seq,
            at(1),
            format!("old {seq}").as_bytes(),
        );
    }
    bytes[starts[2]] ^= 0xff; // the third record's length
    std::fs::write(dir.path().join(segment::file_name(1)), &bytes).unwrap();
    let config = WalConfig::new(dir.path(), WalSync::Always);
    let (wal, recovery) = Wal::open(config).unwrap();
    let kept: Vec<u64> = records(&recovery).into_iter().map(|r| r.seq).collect();
    assert_eq!(kept, vec![1, 2, 4, 5]);
    assert_eq!(recovery.damage[0].records, Some(1));
    let next = append_all(&wal, &[b"new"], at(2)).await;
    assert_eq!(next, vec![6], "the numbering goes on after the old records");
}

#[test]
fn a_foreign_file_or_an_emptied_segment_stops_the_start() {
    // Each row: the files of the log directory, and why the start stops (or not).
    let header = record::segment_header(7);
    /// Segment files: their names' numbers and their bytes.
    type Files<'a> = &'a [(u64, &'a [u8])];
    let cases: [(Files, Option<&str>, &str); 4] = [
        (
            &[(1, b"#!/bin/sh\n")],
            Some("is not a write-ahead log segment"),
            "a foreign file named like a segment",
        ),
        (
            &[(1, b""), (5, &header)],
            Some("has no segment header but is not the newest"),
            "an empty segment before the newest",
        ),
        (
            &[(1, &header), (5, b"")],
            None,
            "an empty newest segment: a crash between creating it and writing its header",
        ),
        (
            &[(1, &header), (5, &header[..5])],
            None,
            "a newest segment with half a header",
        ),
    ];
    for (files, refused, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        for (seq, bytes) in files {
            std::fs::write(dir.path().join(segment::file_name(*seq)), bytes).unwrap();
        }
        let opened = Wal::open(WalConfig::new(dir.path(), WalSync::Always));
        match (opened, refused) {
            (Ok(_), None) => {}
            (Err(error), Some(text)) => assert!(error.to_string().contains(text), "{why}: {error}"),
            (Ok(_), Some(text)) => panic!("{why}: started, though {text}"),
            (Err(error), None) => panic!("{why}: {error}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn retirement_deletes_closed_segments_older_than_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path(), WalSync::Always);
    config.segment_bytes = 1;
    let (wal, _) = Wal::open(config.clone()).unwrap();
    append_all(&wal, &[b"old"], at(100)).await;
    append_all(&wal, &[b"newer"], at(200)).await;
    append_all(&wal, &[b"open"], at(50)).await; // the open segment is never retired
    assert_eq!(wal.retire_before(at(150)), 1);
    assert_eq!(wal.retire_before(at(150)), 0, "nothing more is that old");
    wal.close().await;
    let (_wal, recovery) = Wal::open(config).unwrap();
    let kept: Vec<Vec<u8>> = records(&recovery).into_iter().map(|r| r.payload).collect();
    assert_eq!(kept, vec![b"newer".to_vec(), b"open".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig::new(dir.path(), WalSync::Always)).unwrap();
    let tickets: Vec<Ticket> = (0..500)
        .map(|i: u32| {
            wal.append(RecordKind::Traces, at(1), &i.to_le_bytes())
                .unwrap()
        })
        .collect();
    let mut seqs = Vec::new();
    for ticket in tickets {
        seqs.push(ticket.durable().await.unwrap());
    }
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    let syncs = wal.stats().syncs.load(Ordering::Relaxed);
    assert!(
        syncs < 500,
        "{syncs} syncs for 500 records: no group commit"
    );
    assert_eq!(wal.stats().records.load(Ordering::Relaxed), 500);
}

#[tokio::test(flavor = "current_thread")]
async fn interval_mode_answers_after_the_write_and_syncs_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig::new(dir.path(), WalSync::Interval(Duration::from_secs(3600)));
    let (wal, _) = Wal::open(config.clone()).unwrap();
    append_all(&wal, &[b"a"], at(1)).await;
    assert_eq!(
        wal.stats().syncs.load(Ordering::Relaxed),
        0,
        "answered before any sync"
    );
    wal.close().await;
    assert_eq!(
        wal.stats().syncs.load(Ordering::Relaxed),
        1,
        "synced as it closed"
    );
    assert!(matches!(
        wal.append(RecordKind::Traces, at(1), b"late"),
        Err(AppendError::Closed)
    ));
    let (_wal, recovery) = Wal::open(config).unwrap();
    assert_eq!(recovery.records, 1);
}

#[test]
fn the_buffer_admits_what_fits_and_one_request_of_any_size_when_empty() {
    let frame = record::FRAME_HEADER + record::BODY_HEADER;
    let cases = [
        (
            "an empty buffer takes even a request larger than it",
            0,
            1000,
            true,
        ),
        ("room for the whole frame", 10, 64 - 10 - frame, true),
        ("one byte over", 10, 64 - 10 - frame + 1, false),
        ("a full buffer takes nothing more", 64, 0, false),
    ];
    for (why, buffered, payload, admitted) in cases {
        assert_eq!(fits(buffered, payload, 64), admitted, "{why}");
    }
}

#[test]
fn a_file_that_is_not_a_segment_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(segment::file_name(1)), b"not a log at all").unwrap();
    let error = Wal::open(WalConfig::new(dir.path(), WalSync::Always)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is not a write-ahead log segment"),
        "{error}"
    );
}
