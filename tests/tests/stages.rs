//! A stage that panics on a poisoned batch, in a running collector: the other acknowledged
//! batches are all stored and queryable, the collector stays up, `/readyz` says 503 while the
//! stage backs off and 200 after, and `/metrics` counts the panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message;
use wayfinder_collector::Collector;
use wayfinder_collector::testing::FactsConsumer;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_decode::SpanFacts;
use wayfinder_e2e::{count, http_client, loopback_config, metrics_text};

/// Panics on a batch of exactly one span; counts the spans of the others.
#[derive(Debug, Default)]
struct Poisoned(AtomicUsize);

impl FactsConsumer for Poisoned {
    fn name(&self) -> &'static str {
        "poisoned"
    }
    fn consume(&self, facts: &[SpanFacts]) {
        assert_ne!(facts.len(), 1, "a poisoned batch");
        self.0.fetch_add(facts.len(), Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_loses_nothing_acknowledged_and_readyz_says_so() {
    let poisoned = Arc::new(Poisoned::default());
    let collector = Collector::start_with(loopback_config(), vec![poisoned.clone()])
        .await
        .expect("the collector starts");
    let addrs = collector.addrs();
    let client = http_client();
    let readyz = || async {
        let answer = client
            .get(format!("http://{}/readyz", addrs.query_http))
            .send()
            .await
            .expect("the query API answers");
        (
            answer.status().as_u16(),
            answer.text().await.unwrap_or_default(),
        )
    };
    assert_eq!(readyz().await.0, 200);

    for (trace, spans) in [(1u8, 10u64), (2, 1), (3, 10)] {
        let spans = (0..spans)
            .map(|i| span([trace; 16], i + 1, "op", 1, 2))
            .collect();
        let answer = client
            .post(format!("http://{}/v1/traces", addrs.otlp_http))
            .header("content-type", "application/x-protobuf")
            .body(trace_request(Some("svc"), spans).encode_to_vec())
            .send()
            .await
            .expect("the receiver answers");
        assert_eq!(answer.status(), 200, "acknowledged");
    }

    // The stage backs off for a second after the panic: /readyz is 503 and names it.
    let mut down = None;
    for _ in 0..200 {
        let (status, body) = readyz().await;
        if status == 503 {
            down = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let down = down.expect("/readyz turned 503 while the stage was down");
    assert!(down.contains("poisoned"), "names the stage: {down}");
    let text = metrics_text(&collector).await;
    assert!(
        text.contains("wayfinder_pipeline_stage_panics_total{stage=\"poisoned\"} 1"),
        "{text}"
    );

    // Then it is back, and every acknowledged span is stored, the poisoned batch's too (only
    // that one stage lost it).
    let mut back = false;
    for _ in 0..100 {
        if readyz().await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "/readyz is 200 again after the backoff");
    assert_eq!(count(&collector, "SELECT count(*) FROM spans").await, 21);
    for _ in 0..100 {
        if poisoned.0.load(Ordering::Relaxed) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        poisoned.0.load(Ordering::Relaxed),
        20,
        "the stage took the batch after the poisoned one"
    );
    let text = metrics_text(&collector).await;
    assert!(
        text.contains("wayfinder_pipeline_stage_up{stage=\"poisoned\"} 1"),
        "{text}"
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_while_the_collector_runs_is_named_counted_and_stops_it() {
    let mut collector = Collector::start(loopback_config())
        .await
        .expect("the collector starts");
    let addrs = collector.addrs();
    let readyz = || async {
        let answer = http_client()
            .get(format!("http://{}/readyz", addrs.query_http))
            .send()
            .await
            .expect("the query API answers");
        (
            answer.status().as_u16(),
            answer.text().await.unwrap_or_default(),
        )
    };
    assert_eq!(readyz().await.0, 200, "ready while every task runs");
    // A task that returns at once, as a receiver whose listener broke would.
    collector.spawn_supervised("probe", async {});
    let exit = tokio::time::timeout(Duration::from_secs(10), collector.exited())
        .await
        .expect("the exit is reported");
    assert_eq!(
        (exit.tier, exit.task, exit.panicked),
        ("query", "probe", false)
    );
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("task ended: probe (query) ended"), "{body}");
    let text = metrics_text(&collector).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("wayfinder_task_early_exits_total{"))
        .unwrap_or_default();
    assert!(line.contains("tier=\"query\""), "{line}");
    assert!(line.contains("task=\"probe\""), "{line}");
    assert!(line.ends_with(" 1"), "counted once: {line}");
    collector.shutdown().await;
}
