//! A fleet whose listeners speak TLS (`--tls-cert`, `--tls-key`): the collectors reach each
//! other's query APIs at `https://` (the default query URL with TLS) and verify them against
//! `--kafka-query-ca`, so that a trace lookup on a collector that does not own the trace's
//! partition is still answered whole; with a CA that did not sign the others' certificates the
//! lookup is a retryable 503 that says why.
//!
//! The broker is tansu (`WAYFINDER_TANSU` or `PATH`); skipped without it unless
//! `WAYFINDER_REQUIRE_KAFKA=1`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use wayfinder_collector::testing::{broker_or_skip, span, trace_request};

mod common;
mod fleet;

use fleet::{Collector, PARTITIONS, collector, wait_for};

/// A CA and a certificate it signed for 127.0.0.1, written as PEM files in `dir`: the CA's
/// path, the certificate's and the key's.
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write("ca.pem", &ca.pem()),
        write("cert.pem", &leaf.pem()),
        write("key.pem", &key.serialize_pem()),
    )
}

/// One request over TLS to `addr`, trusting `ca`; the whole response as text.
fn exchange(addr: SocketAddr, ca: &Path, request: &[u8]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(request).unwrap();
    let mut response = Vec::new();
    // A server may close without a TLS close_notify once it has answered.
    let _ = tls.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, ca, request.as_bytes())
}

/// A collector of the fleet with TLS on every listener (`own`: its CA, certificate and key),
/// trusting `query_ca` for the others; with the CA that signed its certificate.
fn tls_collector(
    broker: SocketAddr,
    own: &(PathBuf, PathBuf, PathBuf),
    query_ca: &Path,
) -> (Collector, PathBuf) {
    let paths = [&own.1, &own.2, &query_ca.to_path_buf()].map(|p| p.display().to_string());
    let args = [
        "--tls-cert",
        paths[0].as_str(),
        "--tls-key",
        paths[1].as_str(),
        "--kafka-query-ca",
        paths[2].as_str(),
    ];
    (collector(broker, &args, &[]), own.0.clone())
}

/// The partitions a collector's `/metrics` (over TLS) says it owns.
fn owned((collector, ca): &(Collector, PathBuf)) -> Vec<u32> {
    let text = get(collector.query_http, ca, "/metrics");
    (0..PARTITIONS)
        .filter(|p| {
            text.contains(&format!(
                "wayfinder_kafka_owned_partition{{partition=\"{p}\"}} 1"
            ))
        })
        .collect()
}

fn trace_id(n: u8) -> [u8; 16] {
    let mut id = [0x3cu8; 16];
    id[0] = n;
    id
}

#[test]
fn over_tls_any_collector_answers_any_trace_and_a_wrong_ca_is_said() {
    let Some(broker) = broker_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet_pki = pki(dir.path(), "fleet");
    let other_pki = pki(dir.path(), "other");
    // Two collectors that trust the fleet's CA, and a third whose trust is another CA.
    let fleet = [
        tls_collector(broker.addr, &fleet_pki, &fleet_pki.0),
        tls_collector(broker.addr, &fleet_pki, &fleet_pki.0),
        tls_collector(broker.addr, &fleet_pki, &other_pki.0),
    ];
    wait_for(Duration::from_secs(30), "the group did not settle", || {
        let each: Vec<Vec<u32>> = fleet.iter().map(owned).collect();
        each.iter().map(Vec::len).sum::<usize>() == PARTITIONS as usize
            && each.iter().all(|mine| !mine.is_empty())
    });

    // Twelve traces, each sent over TLS to the first collector.
    let traces: Vec<String> = (1..=12u8).map(|n| const_hex::encode(trace_id(n))).collect();
    for n in 1..=12u8 {
        let spans = vec![
            span(trace_id(n), 1, "GET /a", 1_000, 9_000),
            span(trace_id(n), 2, "GET /b", 2_000, 8_000),
        ];
        let body = trace_request(Some("secure"), spans).encode_to_vec();
        let mut request = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let answer = exchange(fleet[0].0.otlp_http, &fleet[0].1, &request);
        assert!(answer.starts_with("HTTP/1.1 200"), "trace {n}: {answer}");
    }

    // The two that trust the fleet's CA answer every trace whole: their own from their store,
    // the others' asked over https of their owners.
    for (collector, ca) in &fleet[..2] {
        for trace in &traces {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = get(collector.query_http, ca, &format!("/api/v1/traces/{trace}"));
                if answer.starts_with("HTTP/1.1 200") {
                    let body: serde_json::Value =
                        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
                    assert_eq!(body["spans"].as_array().map_or(0, Vec::len), 2, "{trace}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "trace {trace} not answered over TLS: {answer}"
                );
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
    }

    // The third cannot verify the others: a trace of theirs is a retryable 503 saying so.
    let mine = owned(&fleet[2]);
    let theirs = (1..=12u8)
        .map(|n| const_hex::encode(trace_id(n)))
        .find(|hex| {
            let partition =
                (murmur2::murmur2(hex.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff) % PARTITIONS;
            !mine.contains(&partition)
        })
        .expect("a trace of another collector's partitions");
    let answer = get(
        fleet[2].0.query_http,
        &fleet[2].1,
        &format!("/api/v1/traces/{theirs}"),
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("did not answer") && answer.contains("certificate"),
        "the answer says the owner's certificate was not trusted: {answer}"
    );
}
