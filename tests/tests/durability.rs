//! The write-ahead log end to end, with collectors in this process: a restart on the same
//! `--data-dir` brings back the spans and the instances; a torn tail is cut, reported and
//! everything before it kept; a full disk refuses ingest with retryable errors, loses nothing
//! acknowledged, and ingest comes back when space does.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use prost::Message as _;
use wayfinder_collector::Config;
use wayfinder_collector::testing::wal::{RecordKind, record, segment};
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{count, http_client, loopback_config, metrics_text, start, wait_for_rows};

fn config_in(dir: &Path) -> Config {
    let mut config = loopback_config();
    config.store.data_dir = Some(dir.to_path_buf());
    config
}

/// Sends `n` spans of trace `trace` over OTLP/HTTP; the answer's status.
async fn send(
    otlp_http: std::net::SocketAddr,
    trace: u8,
    first_id: u64,
    n: u64,
) -> reqwest::Response {
    send_at(otlp_http, trace, first_id, n, 1_000).await
}

/// [`send`], the spans starting at `start` (Unix nanoseconds).
async fn send_at(
    otlp_http: std::net::SocketAddr,
    trace: u8,
    first_id: u64,
    n: u64,
    start: u64,
) -> reqwest::Response {
    let spans = (first_id..first_id + n)
        .map(|id| span([trace; 16], id, "durable", start, start + 1_000))
        .collect();
    http_client()
        .post(format!("http://{otlp_http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(trace_request(Some("keeper"), spans).encode_to_vec())
        .send()
        .await
        .expect("the receiver answers")
}

async fn beat(otlp_http: std::net::SocketAddr) {
    let report = serde_json::json!({
        "service": "keeper", "instance_id": "keeper-1", "status": "passing", "seq": 1,
        "ttl_ms": 600000, "address": "127.0.0.1:9000"
    });
    let answer = http_client()
        .post(format!("http://{otlp_http}/v1/health"))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
}

fn instances(collector: &wayfinder_collector::RunningCollector) -> Vec<String> {
    collector
        .registry()
        .instances(Some("keeper"))
        .into_iter()
        .map(|i| i.instance_id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_brings_back_spans_and_instances_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config_in(dir.path())).await;
    let otlp = first.addrs().otlp_http;
    for request in 0..5 {
        assert_eq!(send(otlp, 7, request * 10 + 1, 10).await.status(), 200);
    }
    beat(otlp).await;
    assert_eq!(wait_for_rows(&first, "true", 50).await, 50);
    first.shutdown().await;

    // A crash in the middle of a later write: half a record at the end of the last segment.
    let wal_dir = dir.path().join("wal");
    let (_, last) = segment::list(&wal_dir).unwrap().pop().expect("a segment");
    let salt = match record::Format::of(&std::fs::read(&last).unwrap()) {
        Some((record::Format::V2 { salt }, _)) => salt,
        other => panic!("not a segment of this version: {other:?}"),
    };
    let mut torn = Vec::new();
    record::encode(
        &mut torn,
        salt,
        RecordKind::Traces,
        999,
        std::time::SystemTime::now(),
        &[1; 100],
    );
    let half = torn.len() / 2;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&torn[..half]).unwrap();
    drop(file);

    let second = start(config_in(dir.path())).await;
    assert_eq!(wait_for_rows(&second, "true", 50).await, 50);
    assert_eq!(
        count(&second, "SELECT count(DISTINCT span_id) FROM spans").await,
        50,
        "each span once"
    );
    assert_eq!(instances(&second), vec!["keeper-1".to_owned()]);
    let metrics = metrics_text(&second).await;
    assert!(
        metrics.contains(&format!(
            "wayfinder_wal_recovery_dropped_bytes_total {half}\n"
        )),
        "the cut is counted: {metrics}"
    );
    assert!(
        metrics.contains("wayfinder_wal_replayed_records_total 6\n"),
        "five trace requests and one heartbeat replayed: {metrics}"
    );
    second.shutdown().await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill it: it needs root (CI runs as root)"
        );
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_retryable_errors_and_loses_nothing_acknowledged() {
    let disk = Tmpfs::mount("2m");
    let data = disk.0.path().join("data");
    let mut config = config_in(&data);
    config
        .store
        .set_wal_sync(wayfinder_collector::testing::wal::WalSync::Always);
    // No reserve: the log's own write errors are the last line (the reserve is the next test).
    config.store.disk_reserve = 0;
    let collector = start(config.clone()).await;
    let otlp = collector.addrs().otlp_http;
    // Fill the disk but for a little room.
    let filler = disk.0.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    drop(file);
    let room = 256 * 1024;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(std::fs::metadata(&filler).unwrap().len() - room)
        .unwrap();

    let (mut acked, mut refused) = (0u64, None);
    for request in 0..200 {
        let answer = send(otlp, 9, request * 100 + 1, 100).await;
        if answer.status() == 200 {
            acked += 100;
            continue;
        }
        refused = Some(answer);
        break;
    }
    let refused = refused.expect("the disk fills within 200 requests");
    assert_eq!(refused.status(), 503, "a full disk is a retryable refusal");
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = refused.text().await.unwrap();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(acked > 0, "some requests fit before the disk filled");

    // Space returns: ingest goes on where it stopped.
    std::fs::remove_file(&filler).unwrap();
    let next = acked + 1;
    assert_eq!(send(otlp, 9, next, 100).await.status(), 200);
    acked += 100;
    assert_eq!(
        wait_for_rows(&collector, "true", acked as i64).await,
        acked as i64
    );
    let metrics = metrics_text(&collector).await;
    let errors: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("wayfinder_wal_write_errors_total "))
        .and_then(|value| value.parse().ok())
        .expect("the write errors are a series");
    assert!(errors >= 1, "the failed write is counted: {errors}");
    collector.shutdown().await;

    let again = start(config).await;
    assert_eq!(
        wait_for_rows(&again, "true", acked as i64).await,
        acked as i64
    );
    assert_eq!(
        count(&again, "SELECT count(DISTINCT span_id) FROM spans").await,
        acked as i64,
        "every acknowledged span once, nothing refused"
    );
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_short_of_space_refuses_ingest_and_frees_itself_by_sealing() {
    let disk = Tmpfs::mount("48m");
    let data = disk.0.path().join("data");
    let mut config = config_in(&data);
    config.store.disk_reserve = 16 << 20;
    config.store.seal_interval = std::time::Duration::from_millis(200);
    // The log keeps what the registry and weights are rebuilt from: a second of it here.
    config.registry.deregister_after = std::time::Duration::from_secs(1);
    config.weights.weight_window = std::time::Duration::from_secs(1);
    let collector = start(config.clone()).await;
    let otlp = collector.addrs().otlp_http;
    // Fill the disk to a little above the reserve.
    let filler = disk.0.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..28 {
        file.write_all(&chunk).unwrap();
    }
    drop(file);

    // Spans of now, so that the retention keeps their sealed files.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (mut acked, mut refused) = (0u64, None);
    for request in 0..2_000 {
        let answer = send_at(otlp, 5, request * 500 + 1, 500, now).await;
        if answer.status() == 200 {
            acked += 500;
            continue;
        }
        refused = Some(answer);
        break;
    }
    let refused = refused.expect("the reserve is reached within 2,000 requests");
    assert_eq!(refused.status(), 503, "a retryable refusal");
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = refused.text().await.unwrap();
    assert!(message.contains("--disk-reserve"), "{message}");
    assert!(acked > 0, "some requests fit first");

    // Nothing is freed by hand: sealing writes into the reserve, the log closes its segment
    // and retires what is sealed, and ingest resumes by itself.
    let mut resumed = false;
    for _ in 0..300 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if send_at(otlp, 5, acked + 1, 500, now).await.status() == 200 {
            acked += 500;
            resumed = true;
            break;
        }
    }
    assert!(
        resumed,
        "ingest resumed within 30 s without anyone freeing space"
    );
    let metrics = metrics_text(&collector).await;
    assert!(
        metrics.contains("reason=\"disk_low\""),
        "the refusals are counted: {metrics}"
    );
    assert_eq!(
        wait_for_rows(&collector, "true", acked as i64).await,
        acked as i64,
        "every acknowledged span"
    );
    collector.shutdown().await;
}
