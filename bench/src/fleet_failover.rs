//! `fleet-failover`: three `wayfinder serve` processes in fleet mode on a Kafka-protocol broker
//! on loopback (tansu, in memory); traces are sent, then one collector is killed with SIGKILL.
//! Measured from the kill: until the survivors own every partition again, and until a trace
//! the dead collector owned is answered (whole) by a survivor.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;

use crate::compare::{Running, free_port, median, wayfinder_binary};

#[derive(Debug, clap::Args)]
pub(crate) struct FleetFailoverArgs {
    /// The `wayfinder` binary (default: the one next to this program).
    #[arg(long)]
    wayfinder: Option<PathBuf>,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Partitions of the spans topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// The collectors' `--kafka-session-timeout`.
    #[arg(long, default_value = "6s")]
    session_timeout: String,
    /// With it, the collectors seal into a history they share (a directory under this one, a
    /// fresh one each round; `--seal-interval 1s`) and commit their offsets as they seal; the
    /// new owners then resume from what is sealed.
    #[arg(long)]
    history_dir: Option<PathBuf>,
}

struct Member {
    process: Running,
    otlp_http: u16,
    query: u16,
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn owned(query: u16) -> Vec<u32> {
    let (_, text) = get(query, "/metrics").await;
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("wayfinder_kafka_owned_partition{partition=\"")?;
            let (partition, value) = rest.split_once("\"} ")?;
            (value.trim() == "1")
                .then(|| partition.parse().ok())
                .flatten()
        })
        .collect()
}

async fn all_owned(members: &[&Member], partitions: u32) -> bool {
    let mut all = Vec::new();
    for member in members {
        all.extend(owned(member.query).await);
    }
    all.sort_unstable();
    all == (0..partitions).collect::<Vec<_>>()
}

async fn post(port: u16, body: &[u8]) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: bench\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.starts_with("HTTP/1.1 200")
}

async fn round(
    wayfinder: &PathBuf,
    args: &FleetFailoverArgs,
    number: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let broker = wayfinder_collector::testing::Broker::start()
        .context("no tansu broker: set WAYFINDER_TANSU or put it on PATH")?;
    let port = broker.addr.port();
    let history: Vec<String> = match &args.history_dir {
        Some(dir) => {
            let round = dir.join(format!("round-{number}-{}", std::process::id()));
            std::fs::create_dir_all(&round).context("cannot make the history directory")?;
            vec![
                "--history".into(),
                round.display().to_string(),
                "--seal-interval".into(),
                "1s".into(),
            ]
        }
        None => Vec::new(),
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        let (otlp_http, query) = (free_port()?, free_port()?);
        let child = Command::new(wayfinder)
            .arg("serve")
            .args(["--otlp-grpc", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--otlp-http", &format!("127.0.0.1:{otlp_http}")])
            .args(["--query-http", &format!("127.0.0.1:{query}")])
            .args(["--query-grpc", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--kafka-brokers", &format!("127.0.0.1:{port}")])
            .args(["--kafka-partitions", &args.partitions.to_string()])
            .args(["--kafka-session-timeout", &args.session_timeout])
            .args(&history)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wayfinder")?;
        members.push(Member {
            process: Running(child),
            otlp_http,
            query,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_owned(&members.iter().collect::<Vec<_>>(), args.partitions).await {
        if Instant::now() > deadline {
            bail!("the group did not settle within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A trace the first collector owns: sent until one lands on its partitions.
    let theirs = owned(members[0].query).await;
    let mut chosen = None;
    for n in 0u64..1_000 {
        let mut id = [0x77u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        let hex = const_hex::encode(id);
        let partition =
            (murmur2::murmur2(hex.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff) % args.partitions;
        if theirs.contains(&partition) {
            // Started now: a history deletes what is past the retention.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64;
            let spans = vec![wayfinder_collector::testing::span(
                id,
                1,
                "GET /",
                now,
                now + 1_000,
            )];
            let body =
                wayfinder_collector::testing::trace_request(Some("bench"), spans).encode_to_vec();
            if !post(members[1].otlp_http, &body).await {
                bail!("the trace was not acknowledged");
            }
            chosen = Some(hex);
            break;
        }
    }
    let hex = chosen.context("no trace id landed on the first collector's partitions")?;
    let path = format!("/api/v1/traces/{hex}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(members[1].query, &path).await.0 != 200 {
        if Instant::now() > deadline {
            bail!("the trace was not answered before the kill");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = members.remove(0);
    drop(dead.process); // SIGKILL
    let killed = Instant::now();
    let survivors: Vec<&Member> = members.iter().collect();
    let mut owned_again = None;
    let mut answered = None;
    while owned_again.is_none() || answered.is_none() {
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no failover within 60 s");
        }
        if owned_again.is_none() && all_owned(&survivors, args.partitions).await {
            owned_again = Some(killed.elapsed());
        }
        if answered.is_none() {
            let (status, body) = get(survivors[0].query, &path).await;
            if status == 200 && body.contains("\"spans\"") {
                answered = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((
        owned_again.unwrap_or_default(),
        answered.unwrap_or_default(),
    ))
}

pub(crate) async fn fleet_failover(args: FleetFailoverArgs) -> anyhow::Result<()> {
    let wayfinder = wayfinder_binary(args.wayfinder.as_ref())?;
    println!(
        "{} rounds: three collectors, {} partitions, --kafka-session-timeout {}{}; SIGKILL one",
        args.rounds,
        args.partitions,
        args.session_timeout,
        if args.history_dir.is_some() {
            ", sealing into a shared history"
        } else {
            ""
        }
    );
    let (mut owned, mut answered) = (Vec::new(), Vec::new());
    for n in 0..args.rounds {
        let (o, a) = round(&wayfinder, &args, n).await?;
        println!(
            "round {}: partitions owned again after {:.2} s; the dead collector's trace answered after {:.2} s",
            n + 1,
            o.as_secs_f64(),
            a.as_secs_f64()
        );
        owned.push(o.as_secs_f64());
        answered.push(a.as_secs_f64());
    }
    println!(
        "median: owned again {:.2} s, answered {:.2} s",
        median(owned),
        median(answered)
    );
    Ok(())
}
