//! Helpers of the end-to-end tests: a collector on loopback port 0 and a client for its API.

use std::time::Duration;

pub mod pki;

use wayfinder_api::sql::SqlResponse;
use wayfinder_collector::{Collector, Config, RunningCollector};

/// A configuration with every listener on `127.0.0.1:0`.
pub fn loopback_config() -> Config {
    let mut config = Config::default();
    let any = "127.0.0.1:0".parse().expect("a loopback address");
    config.listeners.otlp_grpc = any;
    config.listeners.otlp_http = any;
    config.listeners.query_http = any;
    config.listeners.query_grpc = any;
    config
}

/// Starts a collector with `config`.
pub async fn start(config: Config) -> RunningCollector {
    Collector::start(config)
        .await
        .expect("the collector starts on loopback")
}

/// An HTTP client with a time limit, so that no test can hang.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// Posts an OTLP/HTTP protobuf trace request to the collector at `otlp_http`, panicking unless
/// it is taken whole (200).
pub async fn post_traces(otlp_http: std::net::SocketAddr, body: Vec<u8>) {
    let response = http_client()
        .post(format!("http://{otlp_http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("the OTLP/HTTP port answers");
    assert_eq!(response.status(), 200, "the spans are taken");
}

/// Runs a query through `POST /api/v1/sql` and returns the answer, panicking on an error status.
pub async fn sql(collector: &RunningCollector, query: &str) -> SqlResponse {
    let (status, body) = sql_raw(collector, query).await;
    assert_eq!(status, 200, "query {query:?} failed: {body}");
    serde_json::from_str(&body).expect("a SqlResponse")
}

/// Runs a query and returns the status and body as they came.
pub async fn sql_raw(collector: &RunningCollector, query: &str) -> (u16, String) {
    let url = format!("http://{}/api/v1/sql", collector.addrs().query_http);
    let response = http_client()
        .post(url)
        .json(&serde_json::json!({ "sql": query }))
        .send()
        .await
        .expect("the query API answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The single integer a `SELECT count(*) …` returns.
pub async fn count(collector: &RunningCollector, query: &str) -> i64 {
    let response = sql(collector, query).await;
    response.rows[0][0].as_i64().expect("an integer")
}

/// Waits (up to 10 s, polling every 20 ms) until the spans table holds `n` rows for `filter`:
/// acknowledged spans reach the store through the queue, a moment after the acknowledgement.
pub async fn wait_for_rows(collector: &RunningCollector, filter: &str, n: i64) -> i64 {
    let query = format!("SELECT count(*) FROM spans WHERE {filter}");
    let mut seen = 0;
    for _ in 0..500 {
        seen = count(collector, &query).await;
        if seen >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// `GET /api/v1/traces/{trace_id}`, answered as it came.
pub async fn get_trace(collector: &RunningCollector, trace_id: &str) -> reqwest::Response {
    let url = format!(
        "http://{}/api/v1/traces/{trace_id}",
        collector.addrs().query_http
    );
    http_client()
        .get(url)
        .send()
        .await
        .expect("the query API answers")
}

/// The Prometheus text of the collector's `GET /metrics`.
pub async fn metrics_text(collector: &RunningCollector) -> String {
    let url = format!("http://{}/metrics", collector.addrs().query_http);
    let response = http_client()
        .get(url)
        .send()
        .await
        .expect("the query API answers");
    response.text().await.expect("a body")
}

/// A gRPC client of `addr` that sends pre-encoded messages (with
/// [`wayfinder_collector::testing::RawCodec`]), for requests an SDK would not send.
pub async fn raw_grpc(
    addr: std::net::SocketAddr,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback URL")
        .connect()
        .await
        .expect("the gRPC port accepts");
    tonic::client::Grpc::new(channel)
}
