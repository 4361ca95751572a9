//! The few facts per span that the topology builder and the instance registry need, taken in the
//! same pass that builds the Arrow batch, so that no consumer reads the batch back or re-parses
//! protobuf.

use std::sync::Arc;

use crate::view::{Attr, SpanView, ValueRef};

/// A trace id and a span id: what a span is known by, and what its children and links point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanRef {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span.
    pub span_id: [u8; 8],
}

/// OpenTelemetry's span kind, ordered as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanKind {
    /// Not given.
    Unspecified,
    /// In-process work.
    Internal,
    /// Serves a remote call.
    Server,
    /// Makes a remote call.
    Client,
    /// Sends a message.
    Producer,
    /// Handles a message.
    Consumer,
}

impl SpanKind {
    /// From the OTLP enum value (unknown values are [`SpanKind::Unspecified`]).
    pub fn from_otlp(kind: i32) -> Self {
        match kind {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
    /// Its name in the `span_kind` column and the JSON API: `server`, `client`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }

    /// Its OTLP enum name, the `span_kind` label value of Tempo and the spanmetrics connector:
    /// `SPAN_KIND_SERVER`, …
    pub fn otlp_name(self) -> &'static str {
        match self {
            Self::Unspecified => "SPAN_KIND_UNSPECIFIED",
            Self::Internal => "SPAN_KIND_INTERNAL",
            Self::Server => "SPAN_KIND_SERVER",
            Self::Client => "SPAN_KIND_CLIENT",
            Self::Producer => "SPAN_KIND_PRODUCER",
            Self::Consumer => "SPAN_KIND_CONSUMER",
        }
    }
}

/// The attributes that name what a span talks to, when it has any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAttributes {
    /// `db.system.name` (current) or `db.system` (older conventions).
    pub db_system: Option<String>,
    /// `db.namespace` (current) or `db.name` (older conventions).
    pub db_namespace: Option<String>,
    /// `server.address` (or the older `net.peer.name`).
    pub server_address: Option<String>,
    /// `server.port` (or the older `net.peer.port`).
    pub server_port: Option<u16>,
    /// `peer.service`.
    pub peer_service: Option<String>,
    /// `service.peer.name`: the current conventions' successor of `peer.service`.
    pub service_peer_name: Option<String>,
    /// `messaging.system`.
    pub messaging_system: Option<String>,
    /// `messaging.destination.name`.
    pub messaging_destination: Option<String>,
    /// `messaging.operation.type` (current: `create`, `send`, `receive`, `process`, `settle`)
    /// or the older `messaging.operation` (`publish`, `receive`, `process`).
    pub messaging_operation: Option<String>,
    /// `url.full` (or the older `http.url`).
    pub url_full: Option<String>,
    /// `rpc.system`.
    pub rpc_system: Option<String>,
    /// `network.peer.address`: the peer's socket address.
    pub network_peer_address: Option<String>,
    /// `network.peer.port`.
    pub network_peer_port: Option<u16>,
    /// Whether it has `http.request.method` (or the older `http.method`).
    pub http: bool,
}

impl PeerAttributes {
    /// Whether the span receives messages (`messaging.operation.type = receive`, or the older
    /// `messaging.operation`): a pull consumer's CLIENT span, such as SQS `ReceiveMessage`,
    /// which the current conventions give kind CLIENT and which is the consumer's side of a
    /// messaging edge, not a call into the broker.
    pub fn receives_messages(&self) -> bool {
        self.messaging_system.is_some() && self.messaging_operation.as_deref() == Some("receive")
    }

    /// `host[:port]` of the peer from `server.address`/`server.port`, else from `url.full`.
    pub fn peer_address(&self) -> Option<String> {
        let mut out = String::new();
        self.write_peer_address(&mut out).then_some(out)
    }

    /// Writes what [`PeerAttributes::peer_address`] returns into `out` (cleared first), without
    /// allocating when `out` has room; says whether there is one.
    pub fn write_peer_address(&self, out: &mut String) -> bool {
        use std::fmt::Write as _;
        out.clear();
        if let Some(host) = &self.server_address {
            out.push_str(host);
            if let Some(port) = self.server_port {
                let _ = write!(out, ":{port}");
            }
            return true;
        }
        match self.url_full.as_deref().and_then(authority_span) {
            Some(authority) => {
                out.push_str(authority);
                true
            }
            None => false,
        }
    }
}

/// The `host[:port]` of a URL such as `http://10.0.0.7:8080/orders?id=1` (without user info).
pub fn authority_of(url: &str) -> Option<String> {
    authority_span(url).map(str::to_owned)
}

fn authority_span(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    (!authority.is_empty()).then_some(authority)
}

/// What the topology builder and the registry know of one accepted span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanFacts {
    /// Its trace and span id.
    pub id: SpanRef,
    /// Its parent's span id, in the same trace; `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the parent is in another process, when the SDK says (OTLP span flags bits 8–9).
    pub parent_is_remote: Option<bool>,
    /// Its kind.
    pub kind: SpanKind,
    /// Whether its status is Error.
    pub error: bool,
    /// Whether its status is Ok (set so by the service); neither this nor `error` when Unset.
    pub status_ok: bool,
    /// Its name.
    pub name: Arc<str>,
    /// When it started, in nanoseconds since the epoch.
    pub start_unix_nano: u64,
    /// How long it took, in nanoseconds.
    pub duration_ns: u64,
    /// `service.name` of its resource.
    pub service: Arc<str>,
    /// `service.instance.id` of its resource.
    pub instance: Option<Arc<str>>,
    /// The spans it links to.
    pub links: Vec<SpanRef>,
    /// What it talks to, when it says.
    pub peer: Option<Box<PeerAttributes>>,
    /// The values of [`DecodeOptions::attributes`](crate::DecodeOptions::attributes), in that
    /// order (its own, else its resource's); `None` when none are configured.
    pub attributes: Option<Arc<[Option<Arc<str>>]>>,
    /// How many spans it stands for: `1 / ratio` of the
    /// [`DecodeOptions::multiplier_key`](crate::DecodeOptions::multiplier_key) attribute, else 1.
    pub weight: f64,
    /// The bytes of its protobuf message as received (from a prost message, OTLP/JSON's: its
    /// encoded length), as Tempo's `traces_spanmetrics_size_total` counts them. The same as
    /// the re-encoded length for a canonical encoding, which SDKs send; more when the bytes
    /// repeat fields, write defaults or carry unknown fields.
    pub size: u64,
    /// Its status message, when
    /// [`DecodeOptions::status_message`](crate::DecodeOptions::status_message) asks for it and
    /// it has one (cut to 256 bytes).
    pub status_message: Option<Arc<str>>,
}

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` and `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` of OTLP.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

impl SpanFacts {
    /// The facts of a span that passed validation (ids of the right length).
    pub(crate) fn of(
        span: &SpanView<'_>,
        times: (u64, u64),
        name: Arc<str>,
        service: &Arc<str>,
        instance: Option<&Arc<str>>,
    ) -> Self {
        let (start_unix_nano, duration_ns) = times;
        let parent_span_id = <[u8; 8]>::try_from(span.parent_span_id)
            .ok()
            .filter(|p| p.iter().any(|&b| b != 0));
        let links = span
            .links
            .iter()
            .filter_map(|link| {
                Some(SpanRef {
                    trace_id: link.trace_id.try_into().ok()?,
                    span_id: link.span_id.try_into().ok()?,
                })
            })
            .collect();
        let kind = SpanKind::from_otlp(span.kind);
        Self {
            id: SpanRef {
                trace_id: span.trace_id.try_into().unwrap_or_default(),
                span_id: span.span_id.try_into().unwrap_or_default(),
            },
            parent_span_id,
            parent_is_remote: (span.flags & HAS_IS_REMOTE != 0)
                .then_some(span.flags & IS_REMOTE != 0),
            kind,
            error: span.status_code == 2,
            status_ok: span.status_code == 1,
            name,
            start_unix_nano,
            duration_ns,
            service: service.clone(),
            instance: instance.cloned(),
            links,
            // In-process spans talk to no peer: their attributes are not read.
            peer: match kind {
                SpanKind::Internal | SpanKind::Unspecified => None,
                _ => peer_attributes(&span.attributes),
            },
            attributes: None,
            weight: 1.0,
            size: span.encoded_len as u64,
            status_message: None,
        }
    }
}

/// A port given as an integer or as text.
fn port(value: &ValueRef<'_>) -> Option<u16> {
    match value {
        ValueRef::Int(i) => u16::try_from(*i).ok(),
        ValueRef::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// Peer names become node names, map keys and metric labels: at most this many bytes are kept.
const MAX_PEER_TEXT: usize = 256;

fn slot(peer: &mut Option<Box<PeerAttributes>>) -> &mut PeerAttributes {
    peer.get_or_insert_with(Box::default)
}

/// The peer attributes of a span; `None` when it has none of them (most in-process spans).
fn peer_attributes(attrs: &[Attr<'_>]) -> Option<Box<PeerAttributes>> {
    let mut peer: Option<Box<PeerAttributes>> = None;
    for kv in attrs {
        let Some(value) = kv.value.as_ref() else {
            continue;
        };
        let text = || match value {
            ValueRef::Str(s) if !s.is_empty() => {
                Some(super::truncated(s, MAX_PEER_TEXT).to_owned())
            }
            _ => None,
        };
        match kv.key {
            "db.system.name" => slot(&mut peer).db_system = text(),
            "db.system" => {
                let p = slot(&mut peer);
                if p.db_system.is_none() {
                    p.db_system = text();
                }
            }
            "db.namespace" => slot(&mut peer).db_namespace = text(),
            "db.name" => {
                let p = slot(&mut peer);
                if p.db_namespace.is_none() {
                    p.db_namespace = text();
                }
            }
            "server.address" => slot(&mut peer).server_address = text(),
            "net.peer.name" => {
                let p = slot(&mut peer);
                if p.server_address.is_none() {
                    p.server_address = text();
                }
            }
            "network.peer.address" => slot(&mut peer).network_peer_address = text(),
            "network.peer.port" => slot(&mut peer).network_peer_port = port(value),
            "server.port" | "net.peer.port" => {
                let port = port(value);
                let p = slot(&mut peer);
                if kv.key == "server.port" || p.server_port.is_none() {
                    p.server_port = port;
                }
            }
            "peer.service" => slot(&mut peer).peer_service = text(),
            "service.peer.name" => slot(&mut peer).service_peer_name = text(),
            "messaging.system" => slot(&mut peer).messaging_system = text(),
            "messaging.destination.name" => slot(&mut peer).messaging_destination = text(),
            "messaging.operation.type" => slot(&mut peer).messaging_operation = text(),
            "messaging.operation" => {
                let p = slot(&mut peer);
                if p.messaging_operation.is_none() {
                    p.messaging_operation = text();
                }
            }
            "url.full" => slot(&mut peer).url_full = text(),
            "http.url" => {
                let p = slot(&mut peer);
                if p.url_full.is_none() {
                    p.url_full = text();
                }
            }
            "rpc.system" => slot(&mut peer).rpc_system = text(),
            "http.request.method" | "http.method" => slot(&mut peer).http = true,
            _ => {}
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_urls() {
        let cases = [
            (
                "http://10.0.0.7:8080/orders?id=1",
                Some("10.0.0.7:8080"),
                "host and port, path dropped",
            ),
            (
                "https://user:pw@api.example/x",
                Some("api.example"),
                "user info dropped",
            ),
            ("grpc://svc:50051", Some("svc:50051"), "no path"),
            ("http:///nothing", None, "empty authority"),
            ("svc:80/x", Some("svc:80"), "no scheme"),
        ];
        for (url, want, why) in cases {
            assert_eq!(authority_of(url).as_deref(), want, "{why}");
        }
        let long = format!("{}é", "a".repeat(255));
        assert_eq!(
            super::super::truncated(&long, 256),
            "a".repeat(255),
            "cut before é"
        );
    }

    #[test]
    fn both_decoders_give_each_span_its_message_bytes_and_the_status_message_when_asked() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
        use prost::Message as _;

        let span = |id: u8, attributes: usize, message: &str| Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: "GET /cart".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: (0..attributes)
                .map(|i| KeyValue {
                    key: format!("k{i}"),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("v".repeat(i))),
                    }),
                    ..Default::default()
                })
                .collect(),
            status: Some(Status {
                code: 2,
                message: message.into(),
            }),
            ..Default::default()
        };
        let spans = vec![span(1, 0, ""), span(2, 7, "deadline exceeded")];
        let sizes: Vec<u64> = spans.iter().map(|s| s.encoded_len() as u64).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let asked = crate::DecodeOptions {
            status_message: true,
            ..crate::DecodeOptions::default()
        };
        let wire = crate::decode_traces_wire_with(&request.encode_to_vec(), &asked).unwrap();
        let prost = crate::decode_traces_with(&request, &asked).unwrap();
        for (decoded, how) in [(&wire, "wire"), (&prost, "prost")] {
            let got: Vec<u64> = decoded.facts.iter().map(|f| f.size).collect();
            assert_eq!(
                got, sizes,
                "{how}: the Span message's encoded length, as Tempo's Size()"
            );
            let messages: Vec<Option<&str>> = decoded
                .facts
                .iter()
                .map(|f| f.status_message.as_deref())
                .collect();
            assert_eq!(messages, [None, Some("deadline exceeded")], "{how}");
        }
        let plain = crate::decode_traces_wire_with(
            &request.encode_to_vec(),
            &crate::DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(plain.facts.len(), 2);
        assert!(
            plain.facts.iter().all(|f| f.status_message.is_none()),
            "not taken unless asked"
        );
    }
}
