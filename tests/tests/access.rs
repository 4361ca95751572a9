//! Bearer tokens on every listener: ingest and the query API each with their own, the probes
//! open, 401 / `UNAUTHENTICATED` without a valid token, and a token file rotated in place.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use wayfinder_api::grpc::GetWeightsRequest;
use wayfinder_api::grpc::weights_client::WeightsClient;
use wayfinder_collector::config::{Secret, TokenSource};
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH};
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{http_client, loopback_config, raw_grpc, start};

const INGEST: &str = "ingest-token-1";

fn body() -> Vec<u8> {
    trace_request(Some("guarded"), vec![span([3; 16], 1, "x", 1, 2)]).encode_to_vec()
}

async fn post_traces(addr: std::net::SocketAddr, authorization: Option<&str>) -> reqwest::Response {
    let mut request = http_client()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

async fn get(url: String, authorization: Option<&str>) -> reqwest::Response {
    let mut request = http_client().get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_admits_only_its_own_tokens_and_the_probes_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let query_file = dir.path().join("query-tokens");
    std::fs::write(&query_file, "# the query API\nquery-token-1\n").unwrap();
    let mut config = loopback_config();
    config
        .access
        .set_ingest_tokens(Some(TokenSource::Value(Secret::new(INGEST))));
    config
        .access
        .set_query_tokens(Some(TokenSource::File(query_file.clone())));
    let collector = start(config).await;
    let addrs = collector.addrs();

    // OTLP/HTTP.
    let cases = [
        ("no token", None, 401, Some("Bearer")),
        (
            "a wrong token",
            Some("Bearer nope"),
            401,
            Some("Bearer error=\"invalid_token\""),
        ),
        (
            "the query API's token is not ingest's",
            Some("Bearer query-token-1"),
            401,
            Some("Bearer error=\"invalid_token\""),
        ),
        ("ingest's token", Some("Bearer ingest-token-1"), 200, None),
    ];
    for (why, authorization, status, challenge) in cases {
        let answer = post_traces(addrs.otlp_http, authorization).await;
        assert_eq!(answer.status(), status, "{why}");
        assert_eq!(
            answer
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            challenge,
            "{why}"
        );
    }

    // OTLP/gRPC.
    let mut grpc = raw_grpc(addrs.otlp_grpc).await;
    let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
    for (why, token, code) in [
        ("no token", None, Some(tonic::Code::Unauthenticated)),
        (
            "a wrong token",
            Some("Bearer nope"),
            Some(tonic::Code::Unauthenticated),
        ),
        ("ingest's token", Some("Bearer ingest-token-1"), None),
    ] {
        let mut request = tonic::Request::new(Bytes::from(body()));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", token.parse().unwrap());
        }
        grpc.ready().await.unwrap();
        let answer = grpc.unary(request, path.clone(), RawCodec).await;
        assert_eq!(answer.err().map(|status| status.code()), code, "{why}");
    }

    // The query API: the probes are open, the rest wants the query token.
    let query = |path: &str| format!("http://{}{path}", addrs.query_http);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(query(probe), None).await.status(), 200, "{probe}");
    }
    for path in ["/api/v1/services", "/metrics", "/api/services"] {
        assert_eq!(get(query(path), None).await.status(), 401, "{path}");
        assert_eq!(
            get(query(path), Some("Bearer ingest-token-1"))
                .await
                .status(),
            401,
            "{path}: ingest's token is not the query API's"
        );
        assert_eq!(
            get(query(path), Some("Bearer query-token-1"))
                .await
                .status(),
            200,
            "{path}"
        );
    }
    // The configuration in force names the token file and hides the token itself.
    let shown: serde_json::Value = get(query("/api/v1/config"), Some("Bearer query-token-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["ingest_token"], "<redacted> (WAYFINDER_INGEST_TOKEN)");
    assert_eq!(
        shown["query_token_file"],
        query_file.display().to_string().as_str()
    );
    assert!(!shown.to_string().contains(INGEST), "{shown}");

    // The series in /metrics is encoded at most once a second: read a fresh exposition.
    for (listener, refused) in [("otlp-http", 3), ("otlp-grpc", 2), ("query-http", 6)] {
        let counted = collector.metrics().value(
            "wayfinder_unauthorized_requests_total",
            &[("listener", listener)],
        ) as u64;
        assert_eq!(counted, refused, "{listener}");
    }

    // The query gRPC API.
    let mut weights = WeightsClient::connect(format!("http://{}", addrs.query_grpc))
        .await
        .unwrap();
    let refused = weights
        .get(GetWeightsRequest {
            service: "guarded".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(GetWeightsRequest {
        service: "nobody".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer query-token-1".parse().unwrap());
    let status = weights.get(request).await.expect_err("an unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound, "past the token check");

    // Rotation: the new token joins, then the old one goes, without a restart.
    std::fs::write(&query_file, "query-token-2\n").unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if get(query("/metrics"), Some("Bearer query-token-2"))
            .await
            .status()
            == 200
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new token was taken within 5 s");
    assert_eq!(
        get(query("/metrics"), Some("Bearer query-token-1"))
            .await
            .status(),
        401,
        "the removed token no longer works"
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_beats_and_balances_against_a_guarded_collector_with_its_tokens() {
    use wayfinder_middleware::balance::{Balancer, WeightSource};
    use wayfinder_middleware::health::HealthReporter;

    let mut config = loopback_config();
    config
        .access
        .set_ingest_tokens(Some(TokenSource::Value(Secret::new(INGEST))));
    config
        .access
        .set_query_tokens(Some(TokenSource::Value(Secret::new("query-token-1"))));
    config.weights.weight_update_period = Duration::from_millis(100);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let beating = |instance: &str, port: u16, token: Option<&str>, grpc: bool| {
        let mut reporter = HealthReporter::new("guarded", instance)
            .address(format!("127.0.0.1:{port}"))
            .interval(Duration::from_millis(100))
            .ttl(Duration::from_secs(5));
        reporter = if grpc {
            reporter.otlp_grpc(&format!("http://{}", addrs.otlp_grpc))
        } else {
            reporter.http(&format!("http://{}", addrs.otlp_http))
        };
        if let Some(token) = token {
            reporter = reporter.bearer_token(token);
        }
        reporter.start().unwrap()
    };
    let _http = beating("with-token-http", 9001, Some(INGEST), false);
    let _grpc = beating("with-token-grpc", 9002, Some(INGEST), true);
    let _without = beating("without-token", 9003, None, false);

    let balancer = Balancer::builder("guarded")
        .collector_grpc(format!("http://{}", addrs.query_grpc))
        .collector_token("query-token-1")
        .build()
        .unwrap();
    let mut weighted = Vec::new();
    for _ in 0..100 {
        if matches!(balancer.source(), WeightSource::Weights { .. }) {
            weighted = balancer
                .endpoints()
                .into_iter()
                .map(|e| e.address)
                .collect();
            if weighted.len() == 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut instances: Vec<String> = collector
        .registry()
        .instances(Some("guarded"))
        .into_iter()
        .map(|i| i.instance_id.to_string())
        .collect();
    instances.sort();
    assert_eq!(
        instances,
        ["with-token-grpc", "with-token-http"],
        "the beats without the token were refused"
    );
    assert_eq!(
        weighted.len(),
        2,
        "the balancer got the weights with its token"
    );
    collector.shutdown().await;
}
