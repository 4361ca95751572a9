use datafusion::arrow::array::AsArray as _;

use super::*;
use crate::decode::decode_traces;
use crate::decode::schema::stored;
use crate::testing::{span, trace_request};

fn batch(first_id: u64, spans: u64) -> SpanBatch {
    let spans = (first_id..first_id + spans)
        .map(|i| span([1; 16], i + 1, &format!("op{}", i % 3), 1, 2))
        .collect();
    decode_traces(&trace_request(None, spans))
        .unwrap()
        .batch
        .unwrap()
}

fn store(config: StoreConfig) -> (MemoryStore, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (MemoryStore::new(config, metrics.clone()), metrics)
}

fn evicted(metrics: &Metrics, reason: &'static str) -> u64 {
    metrics.value("wayfinder_store_evicted_spans_total", &[("reason", reason)]) as u64
}

/// Sealed, compacted segments carry a trace filter that rules out the traces they do not
/// hold; the open segment has none and is always read.
#[test]
fn compacted_segments_know_their_traces() {
    let (store, _) = store(StoreConfig {
        segment_rows: 20,
        ..Default::default()
    });
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let of_trace = |trace: u8, n: u64| {
        let spans = (0..n)
            .map(|i| span([trace; 16], i + 1, "op", 1, 2))
            .collect();
        decode_traces(&trace_request(None, spans))
            .unwrap()
            .batch
            .unwrap()
    };
    store.append_at(of_trace(1, 20), t0);
    store.append_at(of_trace(2, 20), t0);
    store.append_at(of_trace(3, 10), t0);
    store.maintain(t0);
    let batches = store.stored_batches();
    assert_eq!(batches.len(), 3, "two sealed segments and the open one");
    let read: Vec<Vec<bool>> = [1u8, 2, 3, 9]
        .iter()
        .map(|t| {
            batches
                .iter()
                .map(|b| b.wanted(Some(&[[*t; 16]])))
                .collect()
        })
        .collect();
    assert_eq!(
        read,
        [
            [true, false, true],
            [false, true, true],
            [false, false, true],
            [false, false, true],
        ],
        "a sealed segment is read only for its own trace; the open one always"
    );
    assert!(
        batches[2].traces.is_none(),
        "the open segment has no filter"
    );
    assert!(
        batches.iter().all(|b| b.wanted(None)),
        "a reader of every trace reads everything"
    );
}

#[test]
fn compaction_keeps_every_span_in_order() {
    let (store, _) = store(StoreConfig {
        segment_rows: 30,
        ..Default::default()
    });
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for i in 0..4 {
        store.append_at(batch(i * 10, 10), t0);
    }
    assert_eq!(
        store.stats().batches,
        4,
        "appends do not compact: that is upkeep's work"
    );
    store.maintain(t0);
    let stats = store.stats();
    assert_eq!(stats.rows, 40);
    assert_eq!(
        stats.batches, 2,
        "the first 30 spans were compacted into one batch"
    );
    let snapshot = store.snapshot();
    let ids: Vec<String> = snapshot
        .iter()
        .flat_map(|b| {
            b.column(stored::SPAN_ID)
                .as_fixed_size_binary()
                .iter()
                .map(|v| const_hex::encode(v.unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = (1..=40u64)
        .map(|i| const_hex::encode(i.to_be_bytes()))
        .collect();
    assert_eq!(ids, expected);
    let filters: usize = store
        .stored_batches()
        .iter()
        .filter_map(|b| b.traces.as_ref().map(|t| t.bytes()))
        .sum();
    assert!(filters > 0, "compacted segments have trace filters");
    assert_eq!(
        stats.bytes,
        snapshot
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>()
            + filters,
        "the batches and their trace filters are counted"
    );
}

#[test]
fn retention_evicts_old_segments_and_counts_them() {
    let config = StoreConfig {
        retention: Duration::from_secs(60),
        segment_age: Duration::from_secs(5),
        ..Default::default()
    };
    let (store, metrics) = store(config);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    store.append_at(batch(0, 10), t0);
    store.maintain(t0 + Duration::from_secs(6)); // seals the first segment
    store.append_at(batch(10, 5), t0 + Duration::from_secs(30));
    store.maintain(t0 + Duration::from_secs(61));
    assert_eq!(
        store.stats().rows,
        5,
        "the segment last written at t0 is past the 60 s retention"
    );
    assert_eq!(evicted(&metrics, "age"), 10);
    store.maintain(t0 + Duration::from_secs(91));
    assert_eq!(store.stats().rows, 0);
    assert_eq!(evicted(&metrics, "age"), 15);
}

#[test]
fn size_budget_evicts_oldest_first() {
    let one = batch(0, 100);
    let config = StoreConfig {
        max_bytes: one.bytes() * 3,
        segment_rows: 100,
        ..Default::default()
    };
    let (store, metrics) = store(config);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for i in 0..5 {
        store.append_at(batch(i * 100, 100), t0);
    }
    let stats = store.stats();
    assert!(stats.bytes <= one.bytes() * 3, "within budget: {stats:?}");
    assert!(stats.rows >= 200, "the newest spans stay: {stats:?}");
    assert_eq!(
        evicted(&metrics, "size") as usize + stats.rows,
        500,
        "every evicted span is counted"
    );
    let first = const_hex::encode(
        store.snapshot()[0]
            .column(stored::SPAN_ID)
            .as_fixed_size_binary()
            .value(0),
    );
    assert_ne!(
        first,
        const_hex::encode(1u64.to_be_bytes()),
        "the oldest span went first"
    );
}

#[test]
fn the_batch_just_appended_is_never_evicted() {
    // Each row is a reason: a batch over the whole budget, alone and after others.
    let big = batch(0, 200);
    let cases = [
        ("alone: it stays although over budget", 0usize),
        ("after older batches: they go, it stays", 3),
    ];
    for (reason, older) in cases {
        let (store, metrics) = store(StoreConfig {
            max_bytes: big.bytes() / 2,
            segment_rows: 10_000,
            ..Default::default()
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..older {
            store.append_at(batch(1_000 + i as u64 * 10, 10), t0);
        }
        store.append_at(big.clone(), t0);
        let stats = store.stats();
        assert_eq!(stats.rows, 200, "{reason}: {stats:?}");
        assert_eq!(evicted(&metrics, "size") as usize, older * 10, "{reason}");
        // The next append evicts it: the budget holds again but for the newest batch.
        store.append_at(batch(5_000, 10), t0);
        assert_eq!(store.stats().rows, 10, "{reason}: the old big batch went");
    }
}
