//! How database nodes are named, and which extra labels an edge's series carry: the settings
//! that Tempo and the servicegraph connector make configurable (`database_name_attributes`,
//! `dimensions`).

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
