//! A fake but realistic trace workload.
//!
//! Each trace walks a fixed call graph: `frontend → checkout → {payment, inventory → postgres,
//! shipping}`, so every call is a CLIENT span in the caller and a SERVER span in the callee,
//! and the database call is a CLIENT span with `db.*` attributes. Every service runs several
//! instances; each request carries the spans of whole traces grouped by instance (one
//! `ResourceSpans` per instance), as an SDK's batch exporter would send them.
//!
//! ```
//! use wayfinder_bench::workload::{Shape, Workload};
//! let mut workload = Workload::new(Shape::default(), 1);
//! let request = workload.request();
//! let spans: usize = wayfinder_decode::span_count(&request);
//! assert!(spans >= Shape::default().spans_per_request);
//! ```

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, status::StatusCode,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wayfinder_collector::testing::string_attribute as kv;

/// The size of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Instances per service.
    pub instances: usize,
    /// Spans per request, at least (whole traces are added until it is reached).
    pub spans_per_request: usize,
    /// One request in this many has a failing call.
    pub error_one_in: u32,
    /// Copies of the call graph, each with its own service names (`checkout-7`), so that the
    /// number of distinct edges is `5 × graphs`; each trace runs in one copy, picked at random.
    pub graphs: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            instances: 3,
            spans_per_request: 500,
            error_one_in: 50,
            graphs: 1,
        }
    }
}

/// One call of the graph: caller, callee, the callee's operation and route.
struct Call {
    caller: usize,
    callee: usize,
    method: &'static str,
    route: &'static str,
}

const SERVICES: [&str; 6] = [
    "frontend",
    "checkout",
    "payment",
    "inventory",
    "shipping",
    "postgres",
];
const DATABASE: usize = 5;
const CALLS: [Call; 5] = [
    Call {
        caller: 0,
        callee: 1,
        method: "POST",
        route: "/api/checkout",
    },
    Call {
        caller: 1,
        callee: 2,
        method: "POST",
        route: "/api/payments",
    },
    Call {
        caller: 1,
        callee: 3,
        method: "GET",
        route: "/api/stock/{sku}",
    },
    Call {
        caller: 3,
        callee: DATABASE,
        method: "SELECT",
        route: "SELECT stock",
    },
    Call {
        caller: 1,
        callee: 4,
        method: "POST",
        route: "/api/shipments",
    },
];

/// Makes requests.
#[derive(Debug)]
pub struct Workload {
    shape: Shape,
    rng: SmallRng,
    clock: u64,
}

/// Spans of one instance within a request.
type Batches = Vec<Vec<Span>>;

impl Workload {
    /// A workload with a seed, so that runs are repeatable.
    pub fn new(shape: Shape, seed: u64) -> Self {
        Self {
            shape,
            rng: SmallRng::seed_from_u64(seed),
            clock: 1_764_000_000_000_000_000,
        }
    }

    /// Stamps the spans from `unix_nanos` on (by default from a fixed date in 2025, so that
    /// runs are repeatable): live traffic's timestamps, for a collector whose retention reads
    /// them.
    pub fn starting_at(mut self, unix_nanos: u64) -> Self {
        self.clock = unix_nanos;
        self
    }

    /// The next request.
    pub fn request(&mut self) -> ExportTraceServiceRequest {
        let instances = self.shape.instances.max(1);
        let graphs = self.shape.graphs.max(1);
        let mut batches: Batches = vec![Vec::new(); graphs * SERVICES.len() * instances];
        let mut spans = 0;
        while spans < self.shape.spans_per_request {
            spans += self.trace(&mut batches, instances);
        }
        let resource_spans = batches
            .into_iter()
            .enumerate()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(slot, spans)| ResourceSpans {
                resource: Some(resource(
                    self.shape.graphs,
                    slot / instances,
                    slot % instances,
                )),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "wayfinder-middleware".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    /// Adds one trace's spans; returns how many.
    fn trace(&mut self, batches: &mut Batches, instances: usize) -> usize {
        let trace_id: [u8; 16] = self.rng.random();
        let failing = self.rng.random_ratio(1, self.shape.error_one_in.max(1));
        self.clock += 1_000_000;
        let start = self.clock;
        let picks: Vec<usize> = (0..SERVICES.len())
            .map(|_| self.rng.random_range(0..instances))
            .collect();
        let graph = self.rng.random_range(0..self.shape.graphs.max(1));
        let first = graph * SERVICES.len();
        let slot = |service: usize| (first + service) * instances + picks[service];
        let mut server_span_of = [[0u8; 8]; SERVICES.len()];
        let root_id: [u8; 8] = self.rng.random();
        server_span_of[0] = root_id;
        let root_latency = 40_000_000;
        batches[slot(0)].push(self.span(
            trace_id,
            root_id,
            None,
            SpanKind::Server,
            "GET /",
            start,
            root_latency,
            false,
            http_server_attrs("GET", "/", 200, &service_name(self.shape.graphs, first)),
        ));
        let mut count = 1;
        for (i, call) in CALLS.iter().enumerate() {
            let offset = 1_000_000 * (i as u64 + 1);
            let latency = self.rng.random_range(2_000_000..20_000_000u64);
            let fails = failing && i == 1;
            let client_id: [u8; 8] = self.rng.random();
            let server_parent = server_span_of[call.caller];
            if call.callee == DATABASE {
                let attrs = vec![
                    kv("db.system.name", "postgresql"),
                    kv("db.namespace", "inventory"),
                    kv("db.operation.name", call.method),
                    kv("db.query.text", "SELECT qty FROM stock WHERE sku = $1"),
                    kv("server.address", "postgres.internal"),
                    kv_int("server.port", 5432),
                    kv("network.peer.address", "10.0.3.7"),
                    kv_int("db.response.returned_rows", 1),
                    kv("db.collection.name", "stock"),
                    kv("code.function.name", "load_stock"),
                ];
                batches[slot(call.caller)].push(self.span(
                    trace_id,
                    client_id,
                    Some(server_parent),
                    SpanKind::Client,
                    call.route,
                    start + offset,
                    latency,
                    false,
                    attrs,
                ));
                count += 1;
                continue;
            }
            let status = if fails { 500 } else { 200 };
            let callee = &service_name(self.shape.graphs, first + call.callee);
            let mut client_attrs = vec![
                kv("http.request.method", call.method),
                kv("server.address", callee),
                kv_int("server.port", 8080),
                kv(
                    "url.full",
                    &format!(
                        "http://{callee}:8080{}",
                        call.route
                            .replace("{sku}", &self.rng.random_range(1000..1100).to_string())
                    ),
                ),
                kv_int("http.response.status_code", status),
                kv("network.protocol.version", "1.1"),
                kv("user_agent.original", "wayfinder-middleware/0.1"),
                kv("peer.service", callee),
                kv("http.request.resend_count", "0"),
            ];
            if fails {
                client_attrs.push(kv("error.type", "500"));
            }
            batches[slot(call.caller)].push(self.span(
                trace_id,
                client_id,
                Some(server_parent),
                SpanKind::Client,
                call.method,
                start + offset,
                latency + 500_000,
                fails,
                client_attrs,
            ));
            let server_id: [u8; 8] = self.rng.random();
            server_span_of[call.callee] = server_id;
            batches[slot(call.callee)].push(self.span(
                trace_id,
                server_id,
                Some(client_id),
                SpanKind::Server,
                &format!("{} {}", call.method, call.route),
                start + offset + 200_000,
                latency,
                fails,
                http_server_attrs(call.method, call.route, status, callee),
            ));
            count += 2;
        }
        count
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        kind: SpanKind,
        name: &str,
        start: u64,
        latency: u64,
        error: bool,
        attributes: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: name.to_owned(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + latency,
            attributes,
            status: error.then(|| Status {
                message: "Internal Server Error".into(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }
}

fn http_server_attrs(method: &str, route: &str, status: i64, host: &str) -> Vec<KeyValue> {
    vec![
        kv("http.request.method", method),
        kv("http.route", route),
        kv("url.path", route),
        kv("url.scheme", "http"),
        kv_int("http.response.status_code", status),
        kv("server.address", host),
        kv_int("server.port", 8080),
        kv("client.address", "10.0.1.12"),
        kv("network.protocol.version", "1.1"),
        kv("user_agent.original", "wayfinder-middleware/0.1"),
    ]
}

/// The name of service `index` (counted across the copies of the graph): the plain name with
/// one graph, `name-copy` with more.
fn service_name(graphs: usize, index: usize) -> String {
    let name = SERVICES[index % SERVICES.len()];
    if graphs <= 1 {
        name.to_owned()
    } else {
        format!("{name}-{}", index / SERVICES.len())
    }
}

fn resource(graphs: usize, index: usize, instance: usize) -> Resource {
    let service = &service_name(graphs, index);
    let kind = index % SERVICES.len();
    Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.namespace", "shop"),
            kv("service.instance.id", &format!("{service}-{instance}")),
            kv("service.version", "1.4.2"),
            kv("host.name", &format!("node-{}", (kind + instance) % 4)),
            kv("deployment.environment.name", "production"),
            kv("telemetry.sdk.language", "rust"),
            kv("telemetry.sdk.name", "opentelemetry"),
            kv("telemetry.sdk.version", "0.33.0"),
        ],
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_span_is_valid_and_pairs_are_linked() {
        let mut workload = Workload::new(
            Shape {
                instances: 2,
                spans_per_request: 100,
                error_one_in: 2,
                graphs: 3,
            },
            7,
        );
        let request = workload.request();
        for resource in &request.resource_spans {
            let attributes = &resource.resource.as_ref().unwrap().attributes;
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .unwrap();
            let any_value::Value::StringValue(service) = service else {
                panic!("service.name is a string");
            };
            let copy = service.rsplit_once('-').map(|(_, copy)| copy);
            assert!(
                matches!(copy, Some("0" | "1" | "2")),
                "{service}: each of the 3 copies has its own service names"
            );
        }
        let decoded = wayfinder_decode::decode_traces(&request).unwrap();
        assert_eq!(
            decoded.rejections.total(),
            0,
            "the generator makes only valid spans"
        );
        assert!(decoded.accepted() >= 100);
        let spans: Vec<&Span> = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        let servers_with_client_parent = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32 && !s.parent_span_id.is_empty())
            .filter(|s| {
                spans
                    .iter()
                    .any(|c| c.span_id == s.parent_span_id && c.kind == SpanKind::Client as i32)
            })
            .count();
        assert!(
            servers_with_client_parent > 0,
            "server spans are children of client spans"
        );
        let attrs =
            spans.iter().map(|s| s.attributes.len()).sum::<usize>() as f64 / spans.len() as f64;
        assert!(
            (9.0..=11.0).contains(&attrs),
            "about ten attributes a span, got {attrs}"
        );
    }
}
