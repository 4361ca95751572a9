//! A fleet of three `wayfinder serve` processes on one Kafka-protocol broker (tansu) and one
//! bucket (moto's S3 server), six partitions, `--history s3://…`: each partition seals under
//! its own prefix; once sealed, SQL on every collector counts every acknowledged span of the
//! fleet; after SIGTERM of all three, every span is in the bucket exactly once, under the
//! partition murmur2 puts its trace in, and DataFusion reads the bucket as one table.
//!
//! Skipped without tansu (`WAYFINDER_TANSU` or `PATH`) or Python's moto, unless
//! `WAYFINDER_REQUIRE_KAFKA=1` and `WAYFINDER_REQUIRE_MOTO=1` (as in `.ci/run`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray as _};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use wayfinder_collector::testing::{Broker, broker_or_skip};

mod common;
mod fleet;

use fleet::{
    Collector, PARTITIONS, collector, kill_under_load, send, shared, stored, trace_id, wait_for,
};

const BUCKET: &str = "fleet-test";

/// Where Kafka's Java client puts a key: murmur2 (Kafka's seed), sign bit cleared, modulo.
fn java_partition(key: &str) -> u32 {
    (murmur2::murmur2(key.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff) % PARTITIONS
}

/// One number of a collector's SQL answer.
fn sql_count(collector: &Collector, sql: &str) -> u64 {
    sql_answer(collector, sql).0
}

/// One number of a collector's SQL answer, and its `Wayfinder-Freshness` header.
fn sql_answer(collector: &Collector, sql: &str) -> (u64, String) {
    let (head, answer) = fleet::sql(collector, sql);
    let freshness = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("wayfinder-freshness: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (answer["rows"][0][0].as_u64().expect("a count"), freshness)
}

/// Every span in the bucket, read by DataFusion as one table over `spans/`, with the
/// partition of the prefix it is under: (partition, trace id, span id).
fn bucket(s3: SocketAddr) -> Vec<(String, String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(format!("http://{s3}"))
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap();
        let context = SessionContext::new();
        let url = ObjectStoreUrl::parse(format!("s3://{BUCKET}")).unwrap();
        context
            .runtime_env()
            .register_object_store(url.as_ref(), Arc::new(store));
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("partition".into(), DataType::Utf8),
                ("hour".into(), DataType::Utf8),
            ]);
        context
            .register_listing_table(
                "spans",
                format!("s3://{BUCKET}/spans/"),
                options,
                None,
                None,
            )
            .await
            .unwrap();
        let batches = context
            .sql("SELECT partition, trace_id, span_id FROM spans")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            let text = |i: usize| {
                let column = datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8)
                    .expect("text");
                let column = column.as_string::<i32>().clone();
                (0..column.len())
                    .map(|row| column.value(row).to_owned())
                    .collect::<Vec<_>>()
            };
            let (partitions, traces, spans) = (text(0), text(1), text(2));
            for row in 0..batch.num_rows() {
                rows.push((
                    partitions[row].clone(),
                    traces[row].clone(),
                    spans[row].clone(),
                ));
            }
        }
        rows
    })
}

/// A broker, a bucket and three collectors sealing into it, settled; `None` when tansu or moto
/// is missing (and not required).
fn fleet_with_history() -> Option<(Broker, common::Killed, SocketAddr, Vec<Collector>)> {
    let broker = broker_or_skip()?;
    let Some((moto, s3)) = common::moto(BUCKET) else {
        assert!(
            !std::env::var("WAYFINDER_REQUIRE_MOTO").is_ok_and(|v| v == "1"),
            "WAYFINDER_REQUIRE_MOTO=1 but moto's server does not start"
        );
        eprintln!("skipped: no moto for python3 (pip install 'moto[server]')");
        return None;
    };
    let env = [
        ("AWS_ENDPOINT", format!("http://{s3}")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let history = format!("s3://{BUCKET}/spans");
    let args = ["--history", history.as_str(), "--seal-interval", "1s"];
    let fleet: Vec<Collector> = (0..3)
        .map(|_| collector(broker.addr, &args, &env))
        .collect();
    wait_for(Duration::from_secs(30), "the group did not settle", || {
        shared(&fleet.iter().collect::<Vec<_>>())
    });
    Some((broker, moto, s3, fleet))
}

#[test]
fn each_partition_seals_into_one_bucket_once_and_sql_on_any_collector_counts_the_fleet() {
    let Some((_broker, _moto, s3, fleet)) = fleet_with_history() else {
        return;
    };

    // Traces sent each to one collector in turn: each lands on the partition of its id.
    let first_round = 1..=90u32;
    for n in first_round.clone() {
        assert!(
            send(fleet[n as usize % 3].otlp_http, n),
            "trace {n} acknowledged"
        );
    }
    let spans = 2 * first_round.clone().count() as u64;
    // Once sealed (segments seal after 5 s, the fleet's files are listed every 5 s), SQL on
    // every collector counts every span of the fleet, each once.
    let deadline = Instant::now() + Duration::from_secs(45);
    for collector in &fleet {
        loop {
            let counted = sql_count(collector, "SELECT count(*) FROM spans");
            if counted == spans {
                break;
            }
            assert!(
                counted < spans,
                "no span counted twice: {counted} of {spans}"
            );
            assert!(
                Instant::now() < deadline,
                "SQL on a collector counts {counted} of the fleet's {spans} spans 45 s after they were acknowledged"
            );
            std::thread::park_timeout(Duration::from_millis(200));
        }
        let (distinct, freshness) = sql_answer(
            collector,
            "SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)",
        );
        assert_eq!(distinct, spans, "each span once");
        // The answer says which partitions it holds live and which as sealed.
        let mine = fleet::owned(collector.query_http);
        let said: Vec<&str> = freshness.split(", ").collect();
        assert_eq!(said.len(), PARTITIONS as usize, "{freshness}");
        for (p, part) in said.iter().enumerate() {
            let (number, state) = part.split_once('=').expect("P=STATE");
            assert_eq!(number, p.to_string(), "{freshness}");
            if mine.contains(&(p as u32)) {
                assert_eq!(state, "live", "an owned partition: {freshness}");
            } else {
                assert!(
                    state.starts_with("sealed@20"),
                    "another's partition, sealed: {freshness}"
                );
            }
        }
    }

    // More traces, not sealed yet; then SIGTERM to all three at once: each seals what it
    // holds and commits before it leaves.
    let second_round = 91..=150u32;
    for n in second_round.clone() {
        assert!(
            send(fleet[n as usize % 3].otlp_http, n),
            "trace {n} acknowledged"
        );
    }
    for collector in &fleet {
        let pid = collector.process.0.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
    }
    for mut collector in fleet {
        assert!(
            collector.process.0.wait().unwrap().success(),
            "exit 0 after SIGTERM"
        );
    }

    let rows = bucket(s3);
    let sent: BTreeSet<u32> = first_round.chain(second_round).collect();
    assert_eq!(
        rows.len(),
        sent.len() * 2,
        "every acknowledged span is in the bucket, once"
    );
    let distinct: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|(_, trace, span)| (trace.as_str(), span.as_str()))
        .collect();
    assert_eq!(distinct.len(), rows.len(), "no span twice");
    let traces: BTreeSet<&str> = rows.iter().map(|(_, trace, _)| trace.as_str()).collect();
    let want: BTreeSet<String> = sent
        .iter()
        .map(|n| const_hex::encode(trace_id(*n)))
        .collect();
    assert_eq!(
        traces,
        want.iter().map(String::as_str).collect(),
        "the traces sent"
    );
    for (partition, trace, _) in &rows {
        assert_eq!(
            partition,
            &java_partition(trace).to_string(),
            "trace {trace} is sealed under the prefix of the partition murmur2 puts it in"
        );
    }
}

#[test]
fn a_killed_collectors_partitions_resume_from_what_is_sealed_without_loss_or_duplicates() {
    let Some((_broker, _moto, _s3, mut fleet)) = fleet_with_history() else {
        return;
    };
    // Load on all three, long enough that the one killed has sealed some of its spans (after
    // 5 s) and holds others in memory only.
    let (acked, moved) = kill_under_load(&mut fleet, Duration::from_secs(7));
    let survivors: Vec<&Collector> = fleet.iter().collect();

    // Once everything is sealed, one survivor's SQL (every partition's files, and its own
    // memory) has every acknowledged trace whole: the dead one's sealed spans from its files,
    // the rest read again from its last commit, and none twice.
    let one = &survivors[..1];
    let deadline = Instant::now() + Duration::from_secs(45);
    let counts = loop {
        let counts = stored(one);
        let whole = acked
            .iter()
            .all(|n| counts.get(&const_hex::encode(trace_id(*n))) == Some(&2));
        if whole || Instant::now() > deadline {
            break counts;
        }
        std::thread::park_timeout(Duration::from_millis(200));
    };
    for n in &acked {
        assert_eq!(
            counts.get(&const_hex::encode(trace_id(*n))),
            Some(&2),
            "acknowledged trace {n} is stored whole, once"
        );
    }
    assert!(
        counts.values().all(|&c| c == 2),
        "no span is stored twice: {:?}",
        counts
            .iter()
            .filter(|(_, c)| **c != 2)
            .take(5)
            .collect::<Vec<_>>()
    );
    let skipped: f64 = survivors
        .iter()
        .map(|c| {
            common::http_exchange(
                c.query_http,
                "GET /metrics",
                "",
                "",
                Duration::from_secs(10),
            )
            .lines()
            .find_map(|l| {
                l.strip_prefix("wayfinder_kafka_sealed_skipped_messages_total ")
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .expect("the skipped messages' counter")
        })
        .sum();
    eprintln!(
        "partitions owned again {moved:?} after the kill; {skipped} messages read again were held by a seal already"
    );
}
