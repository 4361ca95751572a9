//! How database nodes and uninstrumented peers are named, and which extra labels an edge's
//! series carry: the settings that Tempo and the servicegraph connector make configurable
//! (`database_name_attributes`, `peer_attributes` / `virtual_node_peer_attributes`,
//! `dimensions`, `enable_client_server_prefix`).

use std::borrow::Cow;
use std::sync::Arc;

use crate::decode::PeerAttributes;
use crate::graph::dimensions::{AttributePlan, Dimension};

/// One place a database node's name may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseName {
    /// `peer.service`.
    PeerService,
    /// `db.namespace` (or the older `db.name`).
    Namespace,
    /// `server.address` (or the older `net.peer.name`).
    ServerAddress,
    /// `network.peer.address`, with `:port` when `network.peer.port` is given.
    PeerAddress,
    /// `db.system.name` (or the older `db.system`).
    System,
    /// Any other attribute, by its index among the values the facts carry.
    Attribute(usize),
}

impl DatabaseName {
    /// The default precedence: `peer.service`, `db.namespace`, `server.address`,
    /// `network.peer.address`, then the system. Tempo and the servicegraph connector read the
    /// same attributes; this order puts the logical database before the host it runs on.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::PeerService,
            Self::Namespace,
            Self::ServerAddress,
            Self::PeerAddress,
            Self::System,
        ]
    }

    /// The source an attribute name stands for (an attribute the fixed facts do not hold is
    /// added to `plan`).
    pub fn of(attribute: &str, plan: &mut AttributePlan) -> Self {
        match attribute {
            "peer.service" => Self::PeerService,
            "db.namespace" | "db.name" => Self::Namespace,
            "server.address" | "net.peer.name" => Self::ServerAddress,
            "network.peer.address" => Self::PeerAddress,
            "db.system" | "db.system.name" => Self::System,
            other => Self::Attribute(plan.index(other)),
        }
    }
}

/// The database node's name for a span with `db.system`: the first of `sources` it has, else
/// its system (a node needs a name).
pub(super) fn database_name<'a>(
    peer: &'a PeerAttributes,
    values: Option<&'a [Option<Arc<str>>]>,
    sources: &[DatabaseName],
) -> Option<Cow<'a, str>> {
    let system = peer.db_system.as_deref()?;
    for source in sources {
        let name = match source {
            DatabaseName::PeerService => peer.peer_service.as_deref().map(Cow::Borrowed),
            DatabaseName::Namespace => peer.db_namespace.as_deref().map(Cow::Borrowed),
            DatabaseName::ServerAddress => peer.server_address.as_deref().map(Cow::Borrowed),
            DatabaseName::PeerAddress => {
                match (&peer.network_peer_address, peer.network_peer_port) {
                    (Some(address), Some(port)) => Some(Cow::Owned(format!("{address}:{port}"))),
                    (Some(address), None) => Some(Cow::Borrowed(address.as_str())),
                    (None, _) => None,
                }
            }
            DatabaseName::System => Some(Cow::Borrowed(system)),
            DatabaseName::Attribute(index) => values
                .and_then(|v| v.get(*index))
                .and_then(|v| v.as_deref())
                .map(Cow::Borrowed),
        };
        if name.is_some() {
            return name;
        }
    }
    Some(Cow::Borrowed(system))
}

/// One place the name of a peer that sent no spans may come from: the server node of a client
/// span whose other half never came (Tempo's `peer_attributes`, the servicegraph connector's
/// `virtual_node_peer_attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerName {
    /// `peer.service`.
    PeerService,
    /// `service.peer.name`, the current conventions' successor of `peer.service`.
    ServicePeer,
    /// `db.namespace` (or the older `db.name`).
    Namespace,
    /// `db.system.name` (or the older `db.system`).
    System,
    /// `server.address` (or the older `net.peer.name`), with `:port` when `server.port` is
    /// given.
    ServerAddress,
    /// The authority (`host:port`) of `url.full` (or the older `http.url`).
    UrlAuthority,
    /// `network.peer.address`, with `:port` when `network.peer.port` is given.
    PeerAddress,
    /// Any other attribute, by its index among the values the facts carry.
    Attribute(usize),
}

/// The default of `--peer-attributes`: the servicegraph connector's (`peer.service`,
/// `db.name`, `db.system`) and Tempo's (the same, `db.system.name` read as `db.system`), with
/// `service.peer.name` after `peer.service`, and the address and URL Wayfinder named peers by
/// before these were configurable.
pub(crate) const DEFAULT_PEER_ATTRIBUTES: &str =
    "peer.service,service.peer.name,db.name,db.system,server.address,url.full";

impl PeerName {
    /// [`DEFAULT_PEER_ATTRIBUTES`], in order.
    pub fn defaults() -> Vec<Self> {
        let mut plan = AttributePlan::default();
        DEFAULT_PEER_ATTRIBUTES
            .split(',')
            .map(|attribute| Self::of(attribute, &mut plan))
            .collect()
    }

    /// The source an attribute name stands for (an attribute the fixed facts do not hold is
    /// added to `plan`).
    pub fn of(attribute: &str, plan: &mut AttributePlan) -> Self {
        match attribute {
            "peer.service" => Self::PeerService,
            "service.peer.name" => Self::ServicePeer,
            "db.namespace" | "db.name" => Self::Namespace,
            "db.system" | "db.system.name" => Self::System,
            "server.address" | "net.peer.name" => Self::ServerAddress,
            "url.full" | "http.url" => Self::UrlAuthority,
            "network.peer.address" => Self::PeerAddress,
            other => Self::Attribute(plan.index(other)),
        }
    }
}

/// The name of the peer a client span talks to: the first of `sources` it has.
pub(super) fn peer_name(
    peer: Option<&PeerAttributes>,
    values: Option<&[Option<Arc<str>>]>,
    sources: &[PeerName],
) -> Option<String> {
    let with_port = |host: &str, port: Option<u16>| match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    sources.iter().find_map(|source| match (source, peer) {
        (PeerName::PeerService, Some(p)) => p.peer_service.clone(),
        (PeerName::ServicePeer, Some(p)) => p.service_peer_name.clone(),
        (PeerName::Namespace, Some(p)) => p.db_namespace.clone(),
        (PeerName::System, Some(p)) => p.db_system.clone(),
        (PeerName::ServerAddress, Some(p)) => p
            .server_address
            .as_deref()
            .map(|host| with_port(host, p.server_port)),
        (PeerName::UrlAuthority, Some(p)) => {
            p.url_full.as_deref().and_then(crate::decode::authority_of)
        }
        (PeerName::PeerAddress, Some(p)) => p
            .network_peer_address
            .as_deref()
            .map(|host| with_port(host, p.network_peer_port)),
        (PeerName::Attribute(index), _) => values
            .and_then(|v| v.get(*index))
            .and_then(|v| v.as_deref())
            .map(str::to_owned),
        (_, None) => None,
    })
}

/// The values of an edge's extra labels: each dimension's on the client side, then each on
/// the server side (empty, without allocating, when none are configured).
pub(super) fn edge_dimensions(
    dimensions: &[Dimension],
    client: Option<&[Option<Arc<str>>]>,
    server: Option<&[Option<Arc<str>>]>,
) -> Box<[Option<Arc<str>>]> {
    if dimensions.is_empty() {
        return Box::default();
    }
    let side = |values| dimensions.iter().map(move |d| d.value(values).cloned());
    side(client).chain(side(server)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_named_by_the_first_peer_attribute_they_have() {
        let peer = |f: fn(&mut PeerAttributes)| {
            let mut p = PeerAttributes::default();
            f(&mut p);
            p
        };
        let values: Vec<Option<Arc<str>>> = vec![Some(Arc::from("payments-eu"))];
        let defaults = PeerName::defaults();
        let cases: [(PeerAttributes, Vec<PeerName>, Option<&str>, &str); 8] = [
            (
                peer(|p| {
                    p.peer_service = Some("payments".into());
                    p.service_peer_name = Some("payments-v2".into());
                    p.server_address = Some("10.0.0.7".into());
                }),
                defaults.clone(),
                Some("payments"),
                "peer.service first, as in Tempo and the connector",
            ),
            (
                peer(|p| {
                    p.service_peer_name = Some("payments".into());
                    p.server_address = Some("10.0.0.7".into());
                }),
                defaults.clone(),
                Some("payments"),
                "service.peer.name alone makes the node (the conventions' successor)",
            ),
            (
                peer(|p| {
                    p.db_namespace = Some("orders".into());
                    p.server_address = Some("db.internal".into());
                }),
                defaults.clone(),
                Some("orders"),
                "db.name before the address, as the connector's list has it",
            ),
            (
                peer(|p| {
                    p.server_address = Some("api.example".into());
                    p.server_port = Some(443);
                    p.url_full = Some("https://other.example/x".into());
                }),
                defaults.clone(),
                Some("api.example:443"),
                "server.address with its port, before the URL (as before)",
            ),
            (
                peer(|p| p.url_full = Some("https://api.example:8443/v1/pay?x=1".into())),
                defaults.clone(),
                Some("api.example:8443"),
                "the URL's authority last",
            ),
            (
                peer(|p| p.rpc_system = Some("grpc".into())),
                defaults.clone(),
                None,
                "none of them: no name (the half is counted as unpaired)",
            ),
            (
                peer(|p| {
                    p.peer_service = Some("payments".into());
                    p.network_peer_address = Some("10.0.0.7".into());
                    p.network_peer_port = Some(8080);
                }),
                vec![PeerName::PeerAddress, PeerName::PeerService],
                Some("10.0.0.7:8080"),
                "a configured order",
            ),
            (
                peer(|p| p.peer_service = Some("payments".into())),
                vec![PeerName::Attribute(0), PeerName::PeerService],
                Some("payments-eu"),
                "an attribute the fixed facts do not hold",
            ),
        ];
        for (peer, sources, want, why) in cases {
            let got = peer_name(Some(&peer), Some(&values), &sources);
            assert_eq!(got.as_deref(), want, "{why}");
        }
        assert_eq!(
            peer_name(None, Some(&values), &[PeerName::Attribute(0)]).as_deref(),
            Some("payments-eu"),
            "a span without the fixed peer attributes may still have a configured one"
        );
        let mut plan = AttributePlan::default();
        let parsed: Vec<PeerName> = ["service.peer.name", "http.url", "net.peer.name", "region"]
            .iter()
            .map(|a| PeerName::of(a, &mut plan))
            .collect();
        assert_eq!(
            parsed,
            [
                PeerName::ServicePeer,
                PeerName::UrlAuthority,
                PeerName::ServerAddress,
                PeerName::Attribute(0)
            ],
            "older names read as their newer ones; others by index"
        );
    }

    #[test]
    fn database_names_by_precedence() {
        let peer = |f: fn(&mut PeerAttributes)| {
            let mut p = PeerAttributes {
                db_system: Some("postgresql".into()),
                ..PeerAttributes::default()
            };
            f(&mut p);
            p
        };
        let everything = peer(|p| {
            p.peer_service = Some("orders-db".into());
            p.db_namespace = Some("orders".into());
            p.server_address = Some("db.internal".into());
            p.network_peer_address = Some("10.0.0.9".into());
            p.network_peer_port = Some(5432);
        });
        let values: Vec<Option<Arc<str>>> = vec![Some(Arc::from("cluster-a"))];
        let defaults = DatabaseName::defaults();
        let cases: [(&PeerAttributes, Vec<DatabaseName>, Option<&str>, &str); 7] = [
            (
                &everything,
                defaults.clone(),
                Some("orders-db"),
                "peer.service first",
            ),
            (
                &peer(|p| p.db_namespace = Some("orders".into())),
                defaults.clone(),
                Some("orders"),
                "then the namespace",
            ),
            (
                &peer(|p| {
                    p.network_peer_address = Some("10.0.0.9".into());
                    p.network_peer_port = Some(5432);
                }),
                defaults.clone(),
                Some("10.0.0.9:5432"),
                "the socket address with its port",
            ),
            (
                &peer(|_| {}),
                defaults.clone(),
                Some("postgresql"),
                "the system last",
            ),
            (
                &everything,
                vec![DatabaseName::ServerAddress, DatabaseName::Namespace],
                Some("db.internal"),
                "a configured order: the host before the namespace",
            ),
            (
                &everything,
                vec![DatabaseName::Attribute(0), DatabaseName::PeerService],
                Some("cluster-a"),
                "an attribute the fixed facts do not hold",
            ),
            (
                &peer(|_| {}),
                vec![DatabaseName::PeerService],
                Some("postgresql"),
                "none of the configured ones: the system",
            ),
        ];
        for (peer, sources, want, why) in cases {
            let got = database_name(peer, Some(&values), &sources);
            assert_eq!(got.as_deref(), want, "{why}");
        }
        let not_db = PeerAttributes::default();
        assert_eq!(
            database_name(&not_db, None, &defaults),
            None,
            "no db.system"
        );
        let mut plan = AttributePlan::default();
        assert_eq!(
            DatabaseName::of("db.name", &mut plan),
            DatabaseName::Namespace
        );
        assert_eq!(
            DatabaseName::of("db.cluster", &mut plan),
            DatabaseName::Attribute(0),
            "read as an extra attribute"
        );
    }
}
