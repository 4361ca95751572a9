//! The receivers' refusals that no end-to-end test reaches easily.

use std::sync::Arc;

use prost::Message as _;

use super::RefusalLabels;
use super::*;
use crate::metrics::Metrics;
use crate::pipeline::IngestQueue;
use crate::store::{SpanStore, StoreConfig};
use crate::testing::{LogCapture, span, trace_request, unsealable_store};

#[tokio::test]
async fn a_store_over_a_budget_it_cannot_evict_from_refuses_ingest_retryably() {
    let lines = LogCapture::on_this_thread();
    // A store with sealing whose files cannot be written (their place is a plain file), and a
    // budget smaller than one request: once the request is in, the store is full.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn SpanStore> = unsealable_store(
        dir.path(),
        StoreConfig {
            max_bytes: 1,
            ..StoreConfig::default()
        },
        metrics.clone(),
    );
    let (queue, dispatcher) = IngestQueue::new(1 << 20);
    let pipeline = tokio::spawn(dispatcher.run(store.clone()));
    let ingest = Ingest::new(queue, metrics.clone()).with_store(store.clone());
    let body = |id| trace_request(Some("svc"), vec![span([1; 16], id, "op", 1, 2)]).encode_to_vec();

    let first = body(1);
    ingest
        .export_traces(Protocol::HttpProtobuf, TraceRequest::Protobuf(&first))
        .await
        .expect("the first request fits");
    // The pipeline appends it; then the store is over its budget.
    for _ in 0..100 {
        if store.over_budget() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(store.over_budget());

    let second = body(2);
    let refused = ingest
        .export_traces(Protocol::HttpProtobuf, TraceRequest::Protobuf(&second))
        .await
        .expect_err("refused while the store is full");
    assert_eq!(refused, IngestError::StoreFull);
    assert!(refused.to_string().contains("retry later"), "{refused}");
    assert_eq!(
        grpc::into_status(refused).code(),
        tonic::Code::Unavailable,
        "retryable over gRPC"
    );
    assert_eq!(
        ingest.check_room(Protocol::HttpProtobuf, 10),
        Err(IngestError::StoreFull)
    );
    let refusals = ingest
        .metrics
        .refused_requests
        .get_or_create(&RefusalLabels {
            protocol: "http/protobuf",
            reason: "store_full",
        })
        .get();
    assert_eq!(refusals, 2, "counted under its own reason");
    let logged = lines.text();
    assert_eq!(
        logged
            .matches("refusing requests with a retryable error")
            .count(),
        1,
        "two refusals, one line a minute: {logged}"
    );
    assert!(logged.contains("reason=\"store_full\""), "{logged}");
    assert_eq!(store.stats().rows, 1, "the acknowledged span stays");
    drop(ingest);
    pipeline.await.unwrap();
}
