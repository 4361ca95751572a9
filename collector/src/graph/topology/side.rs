//! What one span brings to an edge: its side (service, instance, kind, timing, peer
//! attributes), the half it leaves waiting for the other side, the parent it is remembered as
//! for children in other services, and what two sides together say of the call (its
//! observation, its connection type, the time a message spent in the broker).

use std::sync::Arc;

use super::keys::ConnectionType;
use super::stats::Observation;
use crate::decode::{PeerAttributes, SpanFacts, SpanKind, SpanRef};

/// The values a span's facts carry for the configured attributes.
pub(super) type Values = Option<Arc<[Option<Arc<str>>]>>;

/// What one side of an edge left behind while waiting for the other.
#[derive(Debug)]
pub(super) struct Half {
    pub(super) span: SpanRef,
    pub(super) service: Arc<str>,
    pub(super) instance: Option<Arc<str>>,
    pub(super) kind: SpanKind,
    pub(super) error: bool,
    pub(super) start_unix_nano: u64,
    pub(super) duration_ns: u64,
    pub(super) peer: Option<Box<PeerAttributes>>,
    pub(super) attributes: Values,
    pub(super) weight: f64,
}

impl Half {
    /// The half a span leaves behind; its peer attributes are moved, not copied (the batch is
    /// the builder's to consume).
    pub(super) fn take(span: &mut SpanFacts) -> Self {
        Self {
            span: span.id,
            service: span.service.clone(),
            instance: span.instance.clone(),
            kind: span.kind,
            error: span.error,
            start_unix_nano: span.start_unix_nano,
            duration_ns: span.duration_ns,
            peer: span.peer.take(),
            attributes: span.attributes.clone(),
            weight: span.weight,
        }
    }

    pub(super) fn side(&self) -> Side<'_> {
        Side {
            span: Some(self.span),
            service: &self.service,
            instance: self.instance.as_ref(),
            kind: self.kind,
            error: self.error,
            start_unix_nano: Some(self.start_unix_nano),
            duration_ns: Some(self.duration_ns),
            peer: self.peer.as_deref(),
            class: None,
            attributes: self.attributes.as_deref(),
            weight: self.weight,
        }
    }
}

/// A half waiting in the pairing map, keyed by the client span's id.
#[derive(Debug)]
pub(super) enum Waiting {
    Client(Half),
    Server(Half),
}

/// A recent span, for children in other services that name it as their parent.
#[derive(Debug, Clone)]
pub(super) struct Parent {
    pub(super) service: Arc<str>,
    pub(super) instance: Option<Arc<str>>,
    /// Whether it failed, and what its peer attributes say of the connection: what the edge
    /// takes from the parent when the child comes second, so that failed counts and connection
    /// types do not depend on which arrives first.
    pub(super) error: bool,
    pub(super) class: Option<ConnectionType>,
    pub(super) attributes: Values,
    pub(super) weight: f64,
}

/// One side of an edge being recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side<'a> {
    /// The span (`None` for a remembered parent).
    pub(super) span: Option<SpanRef>,
    pub(super) service: &'a Arc<str>,
    pub(super) instance: Option<&'a Arc<str>>,
    pub(super) kind: SpanKind,
    pub(super) error: bool,
    /// When the span started (`None` for a remembered parent).
    pub(super) start_unix_nano: Option<u64>,
    /// `None` when the side is not a client or server span (the parent-to-child rule).
    pub(super) duration_ns: Option<u64>,
    pub(super) peer: Option<&'a PeerAttributes>,
    /// What a remembered parent's peer attributes said of the connection.
    pub(super) class: Option<ConnectionType>,
    /// Its values of the configured attributes.
    pub(super) attributes: Option<&'a [Option<Arc<str>>]>,
    /// How many spans it stands for.
    pub(super) weight: f64,
}

impl<'a> Side<'a> {
    pub(super) fn of(span: &'a SpanFacts) -> Self {
        Self {
            span: Some(span.id),
            service: &span.service,
            instance: span.instance.as_ref(),
            kind: span.kind,
            error: span.error,
            start_unix_nano: Some(span.start_unix_nano),
            duration_ns: Some(span.duration_ns),
            peer: span.peer.as_deref(),
            class: None,
            attributes: span.attributes.as_deref(),
            weight: span.weight,
        }
    }

    pub(super) fn parent(parent: &'a Parent) -> Self {
        Self {
            span: None,
            service: &parent.service,
            instance: parent.instance.as_ref(),
            kind: SpanKind::Internal,
            error: parent.error,
            start_unix_nano: None,
            duration_ns: None,
            peer: None,
            class: parent.class,
            attributes: parent.attributes.as_deref(),
            weight: parent.weight,
        }
    }

    /// Used when a span is a child in another service: its own duration is not a client's.
    pub(super) fn without_latency(mut self) -> Self {
        self.duration_ns = None;
        self
    }
}

pub(super) fn observation(client: Option<Side<'_>>, server: Option<Side<'_>>) -> Observation {
    Observation {
        error: client.is_some_and(|c| c.error) || server.is_some_and(|s| s.error),
        server_ns: server.and_then(|s| s.duration_ns),
        client_ns: client.and_then(|c| c.duration_ns),
        messaging_ns: None,
        exemplar: client
            .and_then(|c| c.span)
            .or_else(|| server.and_then(|s| s.span))
            .map(|span| (span, 0.0)),
        // Sampling is by trace: both sides stand for the same number of requests.
        weight: client.or(server).map_or(1.0, |side| side.weight),
    }
}

/// The time a message spent in the broker: from the producer span's end to the consumer span's
/// start, as Tempo's `traces_service_graph_request_messaging_system_seconds` has it; `None`
/// when the consumer seems to start first (clocks out of step), which Tempo skips too.
pub(super) fn time_in_broker(producer: Side<'_>, consumer: Side<'_>) -> Option<u64> {
    let end = producer.start_unix_nano? + producer.duration_ns?;
    consumer
        .start_unix_nano?
        .checked_sub(end)
        .filter(|&ns| ns > 0)
}

pub(super) fn receives_messages(peer: &PeerAttributes) -> bool {
    peer.receives_messages()
}

pub(super) fn messaging_destination(peer: &PeerAttributes) -> Option<&str> {
    peer.messaging_system.as_ref()?;
    peer.messaging_destination.as_deref()
}

/// The connection type: what the client side says, else what the server side says.
pub(super) fn connection_type(
    client: Option<Side<'_>>,
    server: Option<Side<'_>>,
) -> ConnectionType {
    let messaging = client.is_some_and(|c| c.kind == SpanKind::Producer)
        || server.is_some_and(|s| s.kind == SpanKind::Consumer);
    if messaging {
        return ConnectionType::Messaging;
    }
    [client, server]
        .into_iter()
        .flatten()
        .find_map(|side| side.class.or_else(|| side.peer.and_then(peer_class)))
        .unwrap_or(ConnectionType::Other)
}

/// What one side's peer attributes say of the connection, if anything.
pub(super) fn peer_class(peer: &PeerAttributes) -> Option<ConnectionType> {
    if peer.rpc_system.as_deref() == Some("grpc") {
        return Some(ConnectionType::Grpc);
    }
    if peer.db_system.is_some() {
        return Some(ConnectionType::Database);
    }
    if peer.messaging_system.is_some() {
        return Some(ConnectionType::Messaging);
    }
    if peer.http || peer.url_full.is_some() {
        return Some(ConnectionType::Http);
    }
    None
}
