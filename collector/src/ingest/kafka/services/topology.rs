//! The service graph's figures in the fleet: per minute, the series that belong to one server
//! (the edges into it, its own node and instances, the edges into its instances), as each
//! collector sends its share in a partial, as the server's owner sums them over collectors, and
//! as every collector sets them into the graph it serves (`GET /api/v1/topology`, Jaeger's
//! dependencies), so that every collector answers the same graph, each call counted once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;

use crate::graph::topology::stats::{Latency, Summary};
use crate::graph::topology::{ConnectionType, EdgeKey, Graph, InstanceEdgeKey, NodeKey, NodeKind};

/// One series' minutes, on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeriesFigures {
    /// 0 an edge, 1 a service's node, 2 an instance, 3 an edge into an instance.
    #[prost(uint32, tag = "1")]
    pub what: u32,
    /// The caller's kind ([`NodeKind`] in its order), for edges.
    #[prost(uint32, tag = "2")]
    pub client_kind: u32,
    /// The caller, for edges.
    #[prost(string, tag = "3")]
    pub client: String,
    /// The server's kind, for edges.
    #[prost(uint32, tag = "4")]
    pub server_kind: u32,
    /// The server (the service, for a node or an instance).
    #[prost(string, tag = "5")]
    pub server: String,
    /// The instance, for instances and edges into them.
    #[prost(string, tag = "6")]
    pub instance: String,
    /// [`ConnectionType`] in its order, for edges.
    #[prost(uint32, tag = "7")]
    pub connection: u32,
    /// Where an instance serves, when known.
    #[prost(string, optional, tag = "8")]
    pub address: Option<String>,
    /// When an instance last served, in milliseconds since the epoch (0: unknown).
    #[prost(uint64, tag = "9")]
    pub last_seen_ms: u64,
    /// Its minutes.
    #[prost(message, repeated, tag = "10")]
    pub minutes: Vec<MinuteFigures>,
}

/// One minute of a series.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MinuteFigures {
    /// Minutes since the epoch.
    #[prost(uint64, tag = "1")]
    pub minute: u64,
    #[prost(uint64, tag = "2")]
    pub requests: u64,
    #[prost(uint64, tag = "3")]
    pub errors: u64,
    /// The server side's latency sketch ([`Latency::to_bytes`]).
    #[prost(bytes = "vec", tag = "4")]
    pub server: Vec<u8>,
    /// The client side's.
    #[prost(bytes = "vec", tag = "5")]
    pub client: Vec<u8>,
}

/// A server's series of one minute, summed over the fleet: what its owner publishes.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TopologyMinute {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(uint64, tag = "2")]
    pub minute: u64,
    #[prost(message, repeated, tag = "3")]
    pub series: Vec<SeriesFigures>,
}

/// Which series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SeriesKey {
    Edge(EdgeKey),
    Node(Arc<str>),
    Instance(Arc<str>, Arc<str>),
    InstanceEdge(InstanceEdgeKey),
}

impl SeriesKey {
    /// The server it belongs to: whose owner sums it.
    pub(crate) fn server(&self) -> &Arc<str> {
        match self {
            SeriesKey::Edge(key) => &key.server.name,
            SeriesKey::Node(service) | SeriesKey::Instance(service, _) => service,
            SeriesKey::InstanceEdge(key) => &key.server,
        }
    }
}

/// A series: its key, its extras, its minutes.
pub(crate) type Series = (SeriesKey, Extras, Vec<(u64, Summary)>);

/// Per minute, each collector's figures.
type ByMinute = BTreeMap<u64, BTreeMap<Arc<str>, Summary>>;

/// What an instance's series carries beside its minutes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Extras {
    pub address: Option<String>,
    pub last_seen_ms: u64,
}

const KINDS: [NodeKind; 5] = [
    NodeKind::Service,
    NodeKind::Database,
    NodeKind::Messaging,
    NodeKind::External,
    NodeKind::User,
];
const CONNECTIONS: [ConnectionType; 5] = [
    ConnectionType::Http,
    ConnectionType::Grpc,
    ConnectionType::Database,
    ConnectionType::Messaging,
    ConnectionType::Other,
];

fn kind_of(n: u32) -> Result<NodeKind, String> {
    KINDS
        .get(n as usize)
        .copied()
        .ok_or_else(|| format!("node kind {n}"))
}

fn connection_of(n: u32) -> Result<ConnectionType, String> {
    CONNECTIONS
        .get(n as usize)
        .copied()
        .ok_or_else(|| format!("connection type {n}"))
}

fn number_of<T: PartialEq>(all: &[T], value: &T) -> u32 {
    all.iter().position(|v| v == value).unwrap_or(0) as u32
}

/// The minute `time` falls in.
pub(crate) fn minute_of(time: SystemTime) -> u64 {
    crate::util::clock::unix_seconds(time) / crate::graph::topology::stats::BUCKET_SECONDS
}

/// Every series of `graph` with its minutes from `from` on (a copy, to send).
pub(crate) fn collect(graph: &Graph, from: u64) -> Vec<Series> {
    let minutes = |series: &crate::graph::topology::stats::Series| -> Vec<(u64, Summary)> {
        series.since(from).map(|(m, s)| (m, s.clone())).collect()
    };
    let mut out = Vec::new();
    for (key, edge) in &graph.edges {
        out.push((
            SeriesKey::Edge(key.clone()),
            Extras::default(),
            minutes(&edge.series),
        ));
    }
    for (service, series) in &graph.nodes {
        out.push((
            SeriesKey::Node(service.clone()),
            Extras::default(),
            minutes(series),
        ));
    }
    for ((service, id), state) in &graph.instances {
        let extras = Extras {
            address: state.address.clone(),
            last_seen_ms: state.last_seen.map_or(0, crate::util::clock::unix_millis),
        };
        out.push((
            SeriesKey::Instance(service.clone(), id.clone()),
            extras,
            minutes(&state.series),
        ));
    }
    for (key, series) in &graph.instance_edges {
        out.push((
            SeriesKey::InstanceEdge(key.clone()),
            Extras::default(),
            minutes(series),
        ));
    }
    out.retain(|(_, _, minutes)| !minutes.is_empty());
    out
}

/// The wire form of a series' minutes.
pub(crate) fn to_wire(
    key: &SeriesKey,
    extras: &Extras,
    minutes: &[(u64, &Summary)],
) -> SeriesFigures {
    let mut figures = SeriesFigures {
        address: extras.address.clone(),
        last_seen_ms: extras.last_seen_ms,
        minutes: minutes
            .iter()
            .map(|(minute, s)| MinuteFigures {
                minute: *minute,
                requests: s.requests,
                errors: s.errors,
                server: s.server.to_bytes(),
                client: s.client.to_bytes(),
            })
            .collect(),
        ..SeriesFigures::default()
    };
    match key {
        SeriesKey::Edge(edge) => {
            figures.what = 0;
            figures.client_kind = number_of(&KINDS, &edge.client.kind);
            figures.client = edge.client.name.to_string();
            figures.server_kind = number_of(&KINDS, &edge.server.kind);
            figures.server = edge.server.name.to_string();
            figures.connection = number_of(&CONNECTIONS, &edge.connection);
        }
        SeriesKey::Node(service) => {
            figures.what = 1;
            figures.server = service.to_string();
        }
        SeriesKey::Instance(service, id) => {
            figures.what = 2;
            figures.server = service.to_string();
            figures.instance = id.to_string();
        }
        SeriesKey::InstanceEdge(edge) => {
            figures.what = 3;
            figures.client_kind = number_of(&KINDS, &edge.client.kind);
            figures.client = edge.client.name.to_string();
            figures.server = edge.server.to_string();
            figures.instance = edge.instance.to_string();
            figures.connection = number_of(&CONNECTIONS, &edge.connection);
        }
    }
    figures
}

/// A series' key, extras and minutes from the wire.
pub(crate) fn from_wire(figures: &SeriesFigures) -> Result<Series, String> {
    let node = |kind: u32, name: &str| -> Result<NodeKey, String> {
        Ok(NodeKey {
            kind: kind_of(kind)?,
            name: Arc::from(name),
        })
    };
    let key = match figures.what {
        0 => SeriesKey::Edge(EdgeKey {
            client: node(figures.client_kind, &figures.client)?,
            server: node(figures.server_kind, &figures.server)?,
            connection: connection_of(figures.connection)?,
        }),
        1 => SeriesKey::Node(Arc::from(figures.server.as_str())),
        2 => SeriesKey::Instance(
            Arc::from(figures.server.as_str()),
            Arc::from(figures.instance.as_str()),
        ),
        3 => SeriesKey::InstanceEdge(InstanceEdgeKey {
            client: node(figures.client_kind, &figures.client)?,
            server: Arc::from(figures.server.as_str()),
            instance: Arc::from(figures.instance.as_str()),
            connection: connection_of(figures.connection)?,
        }),
        n => return Err(format!("series of kind {n}")),
    };
    let minutes = figures
        .minutes
        .iter()
        .map(|m| {
            Ok((
                m.minute,
                Summary {
                    requests: m.requests,
                    errors: m.errors.min(m.requests),
                    server: Latency::from_bytes(&m.server)?,
                    client: Latency::from_bytes(&m.client)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let extras = Extras {
        address: figures.address.clone(),
        last_seen_ms: figures.last_seen_ms,
    };
    Ok((key, extras, minutes))
}

/// Sets a series' minute in `graph` (the fleet's graph a collector serves).
pub(crate) fn set(
    graph: &mut Graph,
    key: SeriesKey,
    extras: Extras,
    minute: u64,
    summary: Summary,
) {
    match key {
        SeriesKey::Edge(key) => graph
            .edges
            .entry(key)
            .or_default()
            .series
            .set(minute, summary),
        SeriesKey::Node(service) => graph.nodes.entry(service).or_default().set(minute, summary),
        SeriesKey::Instance(service, id) => {
            let state = graph.instances.entry((service, id)).or_default();
            state.series.set(minute, summary);
            if extras.address.is_some() {
                state.address = extras.address;
            }
            if extras.last_seen_ms > 0 {
                let seen = SystemTime::UNIX_EPOCH + Duration::from_millis(extras.last_seen_ms);
                state.last_seen = Some(state.last_seen.map_or(seen, |s| s.max(seen)));
            }
        }
        SeriesKey::InstanceEdge(key) => graph
            .instance_edges
            .entry(key)
            .or_default()
            .set(minute, summary),
    }
}

/// A server's series, per minute and collector, as its owner keeps them (only the minutes that
/// may still change).
#[derive(Debug, Default)]
pub(crate) struct TopologySums {
    series: HashMap<SeriesKey, (Extras, ByMinute)>,
    /// Minutes changed since they were last published.
    dirty: BTreeSet<u64>,
}

impl TopologySums {
    /// Takes in one collector's figures (replacing what it said of the same minutes).
    pub(crate) fn take(
        &mut self,
        collector: &Arc<str>,
        figures: &[SeriesFigures],
    ) -> Result<(), String> {
        let decoded = figures
            .iter()
            .map(from_wire)
            .collect::<Result<Vec<_>, String>>()?;
        for (key, extras, minutes) in decoded {
            let (kept, by_minute) = self.series.entry(key).or_default();
            if extras.address.is_some() {
                kept.address = extras.address;
            }
            kept.last_seen_ms = kept.last_seen_ms.max(extras.last_seen_ms);
            for (minute, summary) in minutes {
                by_minute
                    .entry(minute)
                    .or_default()
                    .insert(collector.clone(), summary);
                self.dirty.insert(minute);
            }
        }
        Ok(())
    }

    /// Forgets minutes before `oldest`; says whether anything is left.
    pub(crate) fn prune(&mut self, oldest: u64) -> bool {
        self.series.retain(|_, (_, minutes)| {
            minutes.retain(|m, _| *m >= oldest);
            !minutes.is_empty()
        });
        self.dirty.retain(|m| *m >= oldest);
        !self.series.is_empty()
    }

    /// The minutes changed since the last call, each summed over the collectors.
    pub(crate) fn take_changed(&mut self, service: &str) -> Vec<TopologyMinute> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|minute| {
                let mut series: Vec<(&SeriesKey, SeriesFigures)> = self
                    .series
                    .iter()
                    .filter_map(|(key, (extras, minutes))| {
                        let by_collector = minutes.get(&minute)?;
                        let mut sum = Summary::default();
                        for summary in by_collector.values() {
                            sum.merge(summary);
                        }
                        Some((key, to_wire(key, extras, &[(minute, &sum)])))
                    })
                    .collect();
                series.sort_by(|a, b| a.0.cmp(b.0));
                TopologyMinute {
                    service: service.to_owned(),
                    minute,
                    series: series.into_iter().map(|(_, f)| f).collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, ms: &[u64]) -> Summary {
        let mut s = Summary {
            requests,
            ..Summary::default()
        };
        for v in ms {
            s.server.record(v * 1_000_000);
            s.client.record(v * 1_000_000 + 500_000);
        }
        s
    }

    #[test]
    fn every_series_travels_and_sums_over_collectors() {
        let edge = SeriesKey::Edge(EdgeKey {
            client: NodeKey {
                kind: NodeKind::User,
                name: Arc::from("user"),
            },
            server: NodeKey {
                kind: NodeKind::Service,
                name: Arc::from("cart"),
            },
            connection: ConnectionType::Grpc,
        });
        let instance = SeriesKey::Instance(Arc::from("cart"), Arc::from("cart-1"));
        let extras = Extras {
            address: Some("10.0.0.1:80".into()),
            last_seen_ms: 42,
        };
        let mut sums = TopologySums::default();
        // Rows: (collector, series, requests, latencies, why).
        let rows: [(&str, &SeriesKey, u64, &[u64], &str); 4] = [
            ("a", &edge, 2, &[10, 20], "collector a's share"),
            (
                "a",
                &edge,
                3,
                &[10, 20, 30],
                "a again, later in the minute: replaces",
            ),
            ("b", &edge, 1, &[40], "collector b's share: adds"),
            ("b", &instance, 1, &[40], "an instance, with its address"),
        ];
        for (collector, key, requests, ms, why) in rows {
            let s = summary(requests, ms);
            let wire = to_wire(key, &extras, &[(7, &s)]);
            let (back, _, minutes) = from_wire(&wire).expect(why);
            assert_eq!(&back, key, "{why}: the key travels");
            assert_eq!(minutes[0].1.requests, requests, "{why}");
            sums.take(&Arc::from(collector), &[wire]).expect(why);
        }
        let published = sums.take_changed("cart");
        assert_eq!(published.len(), 1, "one minute changed");
        let mut graph = Graph::new(100, 1 << 20, Arc::from([0.1].as_slice()));
        for figures in &published[0].series {
            let (key, extras, minutes) = from_wire(figures).unwrap();
            for (minute, summary) in minutes {
                set(&mut graph, key.clone(), extras.clone(), minute, summary);
            }
        }
        let SeriesKey::Edge(edge_key) = &edge else {
            unreachable!()
        };
        let total = graph.edges[edge_key].series.window(0).unwrap();
        assert_eq!(total.requests, 4, "3 from a (its latest), 1 from b");
        assert_eq!(total.server.count(), 4);
        let state = &graph.instances[&(Arc::from("cart"), Arc::from("cart-1"))];
        assert_eq!(state.address.as_deref(), Some("10.0.0.1:80"));
        assert!(
            sums.take_changed("cart").is_empty(),
            "nothing changed since"
        );
        assert!(!sums.prune(8), "minute 7 is gone");
    }

    #[test]
    fn unknown_kinds_are_refused() {
        let mut wire = SeriesFigures {
            what: 9,
            ..SeriesFigures::default()
        };
        assert!(from_wire(&wire).is_err());
        wire.what = 0;
        wire.client_kind = 77;
        assert!(from_wire(&wire).is_err());
    }
}
