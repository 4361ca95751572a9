//! The delay from a latency change in the span stream to a watcher seeing a version that
//! reacts: three instances of `cart` sending 10 SERVER spans each every 100 ms over OTLP/gRPC,
//! one gRPC `Watch`; after 35 s (slow start over, window full) one instance turns 5× slower
//! until the watcher's weight of it falls, then recovers for 40 s; `trials` times. On one
//! collector, or on a fleet of three on a Kafka-protocol broker, where the spans go into two
//! collectors and the watcher is on the third.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message as _;
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH};

/// Spans into `otlp` (in turn), a `Watch` on `query_grpc`: the delays of `trials` changes.
pub(crate) async fn latency_change_delays(
    otlp: &[SocketAddr],
    query_grpc: SocketAddr,
    period: Duration,
    trials: usize,
) -> anyhow::Result<Vec<Duration>> {
    use wayfinder_api::grpc::WatchWeightsRequest;
    use wayfinder_api::grpc::weights_client::WeightsClient;

    let slow = Arc::new(AtomicBool::new(false));
    let mut channels = Vec::new();
    for addr in otlp {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let sender = {
        let slow = slow.clone();
        tokio::spawn(async move {
            let mut grpcs: Vec<_> = channels.into_iter().map(tonic::client::Grpc::new).collect();
            let mut seq = 0u64;
            loop {
                for i in 0..3u64 {
                    let ms = if i == 2 && slow.load(Ordering::Relaxed) {
                        50
                    } else {
                        10
                    };
                    seq += 1;
                    let spans = (0..10u64)
                        .map(|j| {
                            let mut span = wayfinder_collector::testing::span(
                                [((seq % 250) + 1) as u8; 16],
                                seq * 100 + j + 1,
                                "GET /cart",
                                1_000,
                                1_000 + ms * 1_000_000,
                            );
                            span.kind = 2;
                            span
                        })
                        .collect();
                    let request = wayfinder_collector::testing::with_instance_id(
                        wayfinder_collector::testing::trace_request(Some("cart"), spans),
                        &format!("cart-{i}"),
                    );
                    let n = grpcs.len();
                    let grpc = &mut grpcs[seq as usize % n];
                    if grpc.ready().await.is_err() {
                        return;
                    }
                    let body = Bytes::from(request.encode_to_vec());
                    let _ = grpc
                        .unary(
                            tonic::Request::new(body),
                            http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
                            RawCodec,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut client = WeightsClient::connect(format!("http://{query_grpc}")).await?;
    let mut stream = client
        .watch(WatchWeightsRequest {
            service: "cart".into(),
            after_version: 0,
        })
        .await?
        .into_inner();
    let weight_of_2 = |w: &wayfinder_api::grpc::ServiceWeights| {
        w.endpoints
            .iter()
            .find(|e| e.instance_id == "cart-2")
            .map_or(0.0, |e| e.weight)
    };
    let warm = Duration::from_secs(35);
    println!("warming up for {warm:?} (slow start and a full window)");
    let warm_until = Instant::now() + warm;
    let mut latest = None;
    while Instant::now() < warm_until {
        if let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(1), stream.message()).await
        {
            latest = Some(message);
        }
    }
    let mut delays = Vec::new();
    for trial in 0..trials {
        let before = latest.as_ref().map_or(1.0 / 3.0, weight_of_2);
        slow.store(true, Ordering::Relaxed);
        let changed = Instant::now();
        loop {
            let message = stream.message().await?.context("the stream ended")?;
            let weight = weight_of_2(&message);
            latest = Some(message);
            if weight < before * 0.95 {
                break;
            }
        }
        let delay = changed.elapsed();
        println!(
            "trial {trial}: a watcher saw cart-2's weight fall {:.0} ms after it turned 5x slower ({:.2} periods)",
            delay.as_secs_f64() * 1e3,
            delay.as_secs_f64() / period.as_secs_f64()
        );
        delays.push(delay);
        slow.store(false, Ordering::Relaxed);
        let recover_until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < recover_until {
            if let Ok(Ok(Some(message))) =
                tokio::time::timeout(Duration::from_secs(1), stream.message()).await
            {
                latest = Some(message);
            }
        }
    }
    sender.abort();
    delays.sort();
    Ok(delays)
}

/// Prints the median and the largest of `delays`, in milliseconds and update periods.
pub(crate) fn report(what: &str, delays: &[Duration], period: Duration) {
    let periods: Vec<String> = delays
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64() / period.as_secs_f64()))
        .collect();
    println!(
        "{what}: delay from a latency change to a watcher seeing it: median {:.0} ms, max {:.0} ms ({} update periods)",
        delays
            .get(delays.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        periods.join(", ")
    );
}

/// A fleet of three in-process collectors on a tansu broker: the delays, and what the
/// partials cost.
pub(crate) async fn fleet_delays(period: Duration, trials: usize) -> anyhow::Result<Vec<Duration>> {
    let broker = wayfinder_collector::testing::Broker::start()
        .context("no tansu broker: set WAYFINDER_TANSU or put it on PATH")?;
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let mut config = wayfinder_bench::fleet::loopback_config();
        config.weights.weight_update_period = period;
        config.kafka.kafka_brokers = vec![broker.addr.to_string()];
        config.kafka.kafka_partitions = 6;
        fleet.push(wayfinder_collector::Collector::start(config).await?);
    }
    // The beats go through the health topic (a POST to one collector), as a service's would.
    for i in 0..3 {
        let body = format!(
            r#"{{"service":"cart","instance_id":"cart-{i}","status":"passing","ttl_ms":600000}}"#
        );
        post(fleet[0].addrs().otlp_http, "/v1/health", &body)?;
    }
    let otlp = [fleet[0].addrs().otlp_grpc, fleet[1].addrs().otlp_grpc];
    let started = Instant::now();
    let delays = latency_change_delays(&otlp, fleet[2].addrs().query_grpc, period, trials).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (mut partials, mut bytes, mut slots) = (0.0, 0.0, 0.0);
    for collector in &fleet {
        let metrics = collector.metrics();
        partials += metrics.value("wayfinder_fleet_partials_sent_total", &[]);
        bytes += metrics.value("wayfinder_fleet_partial_bytes_sent_total", &[]);
        slots += metrics.value("wayfinder_fleet_partial_slots_sent_total", &[]);
    }
    println!(
        "partials: {partials:.0} sent in {seconds:.0} s by the three collectors ({:.1}/s), {:.0} bytes each on average, {:.0} bytes per instance slot or graph minute ({slots:.0} of them), {:.0} bytes/s in all (before lz4)",
        partials / seconds,
        bytes / partials.max(1.0),
        bytes / slots.max(1.0),
        bytes / seconds
    );
    for collector in fleet {
        collector.shutdown().await;
    }
    drop(broker);
    Ok(delays)
}

/// A `POST` of JSON `body` to `path` on `addr`, answered 200.
fn post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    Ok(())
}
