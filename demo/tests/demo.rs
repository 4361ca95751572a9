//! The demo as a newcomer runs it, shortened: a real collector and the real fleet on loopback
//! (free ports), traffic for 20 s with `checkout-3` slow, then the graceful exit.

use std::time::Duration;

use wayfinder_demo::{Fault, Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_instance_loses_traffic_and_every_instance_leaves_with_down() {
    let options = Options {
        rps: 40,
        duration: Some(Duration::from_secs(20)),
        slow: vec![Fault::slow("checkout-3")],
        fail: Vec::new(),
        every: Duration::from_secs(4),
        default_ports: false,
        quiet: true,
    };
    let mut out = Vec::new();
    let summary = tokio::time::timeout(Duration::from_secs(90), run(options, &mut out))
        .await
        .expect("the demo ends by itself")
        .expect("the demo runs");
    let text = String::from_utf8(out).expect("utf-8");

    assert!(summary.tables >= 4, "a table every 4 s:\n{text}");
    assert!(
        text.contains("frontend → checkout (grpc)"),
        "the edges are printed:\n{text}"
    );
    assert!(
        text.contains("checkout → shop (database)")
            && text.contains("checkout → notifications (messaging)"),
        "the database and the queue are on the map:\n{text}"
    );
    assert!(
        summary.sent >= 600,
        "about 40 requests a second: {summary:?}"
    );
    assert_eq!(summary.failed, 0, "a slow instance fails nobody:\n{text}");

    let share = |id: &str| {
        summary
            .checkout
            .iter()
            .find(|line| line.instance == id)
            .map(|line| line.share)
            .unwrap_or_else(|| panic!("{id} in the last table:\n{text}"))
    };
    // A fair share is a third; the slow instance gets less than half of that.
    assert!(
        share("checkout-3") < 1.0 / 6.0,
        "the slow instance loses its traffic:\n{text}"
    );
    assert!(
        share("checkout-1") + share("checkout-2") > 0.8,
        "the others take it:\n{text}"
    );

    assert_eq!(summary.fleet_size, 8);
    assert_eq!(
        summary.departed.len(),
        summary.fleet_size,
        "every instance said down:\n{text}"
    );
    assert!(
        summary.still_registered.is_empty(),
        "none is left registered: {:?}",
        summary.still_registered
    );
}
