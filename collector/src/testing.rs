//! Fixtures for tests and benchmarks: OTLP trace requests, span facts and registry entries
//! built from a few fields, so that the collector's unit tests, the end-to-end tests and the
//! benchmarks share one way of making them.
//!
//! ```
//! use wayfinder_collector::testing::{span, trace_request};
//! let request = trace_request(Some("checkout"), vec![span([1; 16], 1, "op", 1, 2)]);
//! assert_eq!(wayfinder_decode::span_count(&request), 1);
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::decode::{SpanFacts, SpanKind, SpanRef};
pub use crate::graph::registry::{Instance, InstanceStatus, Source};

/// An attribute `key` = `value`.
pub fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string attribute `key` = `value`.
pub fn string_attribute(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

/// A request with one resource (with `service.name` when given) and one scope holding `spans`.
pub fn trace_request(service: Option<&str>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let resource = service.map(|name| Resource {
        attributes: vec![string_attribute("service.name", name)],
        ..Default::default()
    });
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A span with the given ids, name and times (nanoseconds since the epoch).
pub fn span(trace_id: [u8; 16], span_id: u64, name: &str, start: u64, end: u64) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_be_bytes().to_vec(),
        name: name.to_owned(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    }
}

/// Adds `service.instance.id = instance` to the first resource of `request` (creating it).
pub fn with_instance_id(
    mut request: ExportTraceServiceRequest,
    instance: &str,
) -> ExportTraceServiceRequest {
    if let Some(resource_spans) = request.resource_spans.first_mut() {
        resource_spans
            .resource
            .get_or_insert_with(Resource::default)
            .attributes
            .push(KeyValue {
                key: "service.instance.id".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(instance.into())),
                }),
                ..Default::default()
            });
    }
    request
}

/// The facts of a span of `kind` from `service` (and `instance`), lasting `duration_ns`, with
/// fixed ids, named `op`, 100 bytes on the wire, started at 1 800 000 000 s after the epoch,
/// and nothing else set.
pub fn facts(
    service: &Arc<str>,
    instance: Option<&Arc<str>>,
    kind: SpanKind,
    duration_ns: u64,
) -> SpanFacts {
    SpanFacts {
        id: SpanRef {
            trace_id: [1; 16],
            span_id: [1; 8],
        },
        parent_span_id: None,
        parent_is_remote: None,
        kind,
        error: false,
        status_ok: false,
        name: Arc::from("op"),
        start_unix_nano: 1_800_000_000_000_000_000,
        duration_ns,
        service: service.clone(),
        instance: instance.cloned(),
        links: Vec::new(),
        peer: None,
        attributes: None,
        weight: 1.0,
        size: 100,
        status_message: None,
    }
}

/// [`facts`] of a span with id `[id; 8]` in trace `[trace; 16]`, under `parent` (an id of the
/// same form) when given: the fixture of the topology's rule tables.
pub fn linked_facts(
    service: &str,
    kind: SpanKind,
    (trace, id, parent): (u8, u8, Option<u8>),
    duration_ns: u64,
) -> SpanFacts {
    let mut span = facts(&Arc::from(service), None, kind, duration_ns);
    span.id = SpanRef {
        trace_id: [trace; 16],
        span_id: [id; 8],
    };
    span.parent_span_id = parent.map(|p| [p; 8]);
    span
}

/// A registry entry: a `passing` instance that reports health, at `address`.
pub fn registered_instance(service: &Arc<str>, id: &str, address: Option<String>) -> Instance {
    Instance {
        service: service.clone(),
        instance_id: Arc::from(id),
        status: InstanceStatus::Passing,
        source: Source::Health,
        address,
        last_beat: None,
        last_seen: None,
        since: SystemTime::UNIX_EPOCH,
        ttl: None,
        seq: None,
        output: None,
        lineage: None,
    }
}

/// A store that seals into `dir/spans` but cannot write there (the place is a plain file, which
/// refuses even root) until that file is removed: for what a failing seal does.
pub fn unsealable_store(
    dir: &std::path::Path,
    config: crate::store::StoreConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Arc<crate::store::MemoryStore> {
    use crate::store::history::History;
    let location = dir.join("spans");
    let history = Arc::new(
        History::new(location.to_str().expect("a UTF-8 path")).expect("a directory to seal into"),
    );
    std::fs::remove_dir(&location).expect("the directory just made");
    std::fs::write(&location, "in the way").expect("a file in its place");
    Arc::new(
        crate::store::MemoryStore::new(config, metrics).with_sealing(
            crate::store::Sealing {
                history,
                interval: std::time::Duration::from_secs(60),
                file_rows: 1 << 20,
                on_sealed: Arc::new(|_| {}),
                partitioned: false,
                records: None,
            },
            Vec::new(),
        ),
    )
}

/// What log lines were written through it (a `tracing_subscriber` writer: pass
/// `move || capture.clone()`), for tests that check what was logged.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<parking_lot::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    /// Captures what this thread logs (INFO and above) from now on, through a process-wide
    /// subscriber installed once that writes each thread's lines to its capture. A scoped
    /// subscriber (`set_default`) is not enough in a test binary: a log callsite first reached
    /// on another test's thread while no subscriber was set caches "never", for every thread,
    /// and the capture stays empty; with a global subscriber in place no callsite is "never".
    pub fn on_this_thread() -> LogCapture {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| ThreadCapture)
                .finish();
            // Another global subscriber would mean no capture: the test then fails on it.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let capture = LogCapture::default();
        THREAD_CAPTURE.with(|slot| *slot.borrow_mut() = Some(capture.clone()));
        capture
    }
}

thread_local! {
    /// This thread's capture ([`LogCapture::on_this_thread`]).
    static THREAD_CAPTURE: std::cell::RefCell<Option<LogCapture>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes a log line to the capture of the thread that logs it, if it has one.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // `try_with`: a line logged while the thread's locals are torn down is dropped.
        let _ = THREAD_CAPTURE.try_with(|slot| {
            if let Some(capture) = slot.borrow_mut().as_mut() {
                capture.0.lock().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Kafka-protocol broker for the fleet's tests and benchmarks: tansu (`WAYFINDER_TANSU`, else
/// `tansu` on `PATH`), in memory, on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Broker {
    child: std::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl Broker {
    /// Starts one and waits (at most 10 s) until it accepts; `None` when tansu is not installed.
    ///
    /// # Panics
    ///
    /// When it starts but does not listen within 10 s.
    pub fn start() -> Option<Broker> {
        use std::process::{Command, Stdio};
        let binary = std::env::var("WAYFINDER_TANSU").unwrap_or_else(|_| "tansu".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let broker = Broker { child, addr };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen within 10 s"
            );
            std::thread::park_timeout(std::time::Duration::from_millis(20));
        }
        Some(broker)
    }

    /// Its process id, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the fleet's tests must run (`WAYFINDER_REQUIRE_KAFKA=1`, as in `.ci/run`): without a
/// broker they fail rather than skip.
pub fn kafka_required() -> bool {
    std::env::var("WAYFINDER_REQUIRE_KAFKA").is_ok_and(|v| v == "1")
}

/// A broker for a fleet test ([`Broker::start`]); without tansu, `None` after saying the test
/// is skipped, or a failure when [`kafka_required`].
pub fn broker_or_skip() -> Option<Broker> {
    let broker = Broker::start();
    if broker.is_none() {
        assert!(
            !kafka_required(),
            "WAYFINDER_REQUIRE_KAFKA=1 but tansu is not installed"
        );
        eprintln!("skipped: no tansu (set WAYFINDER_TANSU or put it on PATH)");
    }
    broker
}

// The collector's parts that the end-to-end tests and the benchmarks drive on their own, without
// a whole collector (the library's public API is `Collector` and its settings; these are not).
pub use crate::graph::registry::{Registry, RegistryConfig};
pub use crate::graph::topology::{TopologyBuilder, TopologyConfig};
pub use crate::graph::weights::{WeightsConfig, WeightsEngine};
pub use crate::ingest::grpc::{RawCodec, TRACE_EXPORT_PATH, TraceService};
pub use crate::ingest::{Ingest, Refusal, http as otlp_http};
pub use crate::metrics::Metrics;
pub use crate::pipeline::{FactsConsumer, IngestQueue};
pub use crate::serve::sql::{QueryEngine, QueryError, QueryLimits};
pub use crate::store::log as wal;
pub use crate::store::{MemoryStore, SpanStore, StoreConfig};
pub use crate::util::clock::Clock;
