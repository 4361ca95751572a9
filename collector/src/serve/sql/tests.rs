use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_limit_stops_its_work() {
    let limits = QueryLimits {
        timeout: Duration::from_millis(500),
        memory_bytes: 256 << 20,
        max_rows: 10,
        max_concurrent: 1,
    };
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(crate::store::MemoryStore::new(
        crate::store::StoreConfig::default(),
        metrics.clone(),
    ));
    let spans = (0..5_000u64)
        .map(|i| crate::testing::span([3; 16], i + 1, "op", 1_000 + i, 1_010 + i))
        .collect();
    let request = crate::testing::trace_request(Some("svc"), spans);
    let batch = crate::decode::decode_traces(&request)
        .unwrap()
        .batch
        .unwrap();
    SpanStore::append(store.as_ref(), batch);
    let engine = QueryEngine::new(store, limits, metrics).unwrap();
    // 1.25·10^11 rows: a partial aggregate loops over the join's batches without its
    // leaves being asked, and kept a core busy for over 20 s after this answer.
    let answer = engine
        .sql("SELECT count(*) FROM spans a CROSS JOIN spans b CROSS JOIN spans c")
        .await;
    assert!(matches!(answer, Err(QueryError::Timeout(_))), "{answer:?}");
    // The slot is held by the query's memory pool, which every task of the query holds:
    // it comes back when the work has stopped.
    let mut waited = Duration::ZERO;
    while engine.slot().is_err() {
        assert!(
            waited < Duration::from_secs(5),
            "the query's work went on past its time limit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
}

#[tokio::test]
async fn a_timed_out_query_keeps_its_slot_until_its_work_stops() {
    let limits = QueryLimits {
        timeout: Duration::from_millis(50),
        memory_bytes: 64 << 20,
        max_rows: 10,
        max_concurrent: 1,
    };
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn SpanStore> = Arc::new(crate::store::MemoryStore::new(
        crate::store::StoreConfig::default(),
        metrics.clone(),
    ));
    let engine = QueryEngine::new(store, limits, metrics).unwrap();
    // Work that no abort interrupts, as a function call in the middle of a batch.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let answer = engine
        .bounded(move |_| {
            let _ = wait.recv();
            Ok(())
        })
        .await;
    assert!(matches!(answer, Err(QueryError::Timeout(_))), "{answer:?}");
    assert!(
        matches!(engine.slot(), Err(QueryError::Busy(1))),
        "the answer went at the time limit; the slot stays while the work runs"
    );
    release.send(()).unwrap();
    let mut waited = Duration::ZERO;
    while engine.slot().is_err() {
        assert!(waited < Duration::from_secs(10), "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
}

#[test]
fn messages_carry_no_debug_output() {
    let cases = [
        (
            QueryError::Timeout(Duration::from_millis(1500)),
            "the query ran longer than 1s 500ms and was cancelled",
            "a duration as people write it",
        ),
        (
            QueryError::TooManyRows(10),
            "the result has more than 10 rows; add a LIMIT or aggregate",
            "a number",
        ),
    ];
    for (error, want, why) in cases {
        assert_eq!(error.to_string(), want, "{why}");
    }
}
