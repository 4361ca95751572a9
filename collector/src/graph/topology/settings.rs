//! The service graph's settings (`[topology]`): whether it is built, how long halves of an
//! edge wait, its memory, its histograms and its extra labels.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, SettingError, Settings, duration, durations, size, tidy};
use crate::util::units::{parse_duration, parse_size};

/// The service graph's settings.
///
/// ```
/// use std::time::Duration;
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// assert!(config.topology.topology, "on by default");
/// config.topology.service_graph_buckets = vec![Duration::from_secs(1), Duration::from_millis(10)];
/// let error = config.validate().unwrap_err();
/// assert!(error.to_string().contains("ascending"), "{error}");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TopologySettings {
    /// Whether the service graph (and the span metrics, from the same facts) is built; spans
    /// are stored and queryable either way. Off with `--no-topology`.
    #[arg(skip = true)]
    pub topology: bool,
    /// Do not build the service graph (spans are still stored and queryable).
    #[arg(long, env = "WAYFINDER_NO_TOPOLOGY")]
    #[serde(skip)]
    no_topology: bool,
    /// How long half of an edge waits for its other half.
    #[arg(long, env = "WAYFINDER_EDGE_WAIT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub edge_wait: Duration,
    /// How many halves of edges may wait at once.
    #[arg(long, env = "WAYFINDER_EDGE_MAX_PENDING", default_value = "100000")]
    pub edge_max_pending: usize,
    /// Memory budget of the service graph's figures; over it, the oldest minutes and the edges
    /// not seen since are evicted, and counted.
    #[arg(long, env = "WAYFINDER_TOPOLOGY_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub topology_max_bytes: usize,
    /// Upper bounds of the service-graph latency histograms, comma-separated and ascending (the
    /// servicegraph connector's by default).
    #[arg(
        long,
        env = "WAYFINDER_SERVICE_GRAPH_BUCKETS",
        value_delimiter = ',',
        value_parser = parse_duration,
        default_value = "2ms,4ms,6ms,8ms,10ms,50ms,100ms,200ms,400ms,800ms,1s,1400ms,2s,5s,10s,15s"
    )]
    #[serde(with = "durations")]
    pub service_graph_buckets: Vec<Duration>,
    /// Span or resource attributes that become extra labels of the service-graph series,
    /// `client_<name>` and `server_<name>`, comma-separated.
    #[arg(
        long,
        env = "WAYFINDER_SERVICE_GRAPH_DIMENSIONS",
        value_delimiter = ','
    )]
    pub service_graph_dimensions: Vec<String>,
    /// Where database node names come from, first found wins, comma-separated.
    #[arg(
        long,
        env = "WAYFINDER_DATABASE_NAME_ATTRIBUTES",
        value_delimiter = ',',
        default_value = "peer.service,db.namespace,server.address,network.peer.address,db.system"
    )]
    pub database_name_attributes: Vec<String>,
    /// Where the name of a peer that sends no spans comes from (the server node of a client
    /// span whose other half never came), first found wins, comma-separated: Tempo's
    /// `peer_attributes`, the servicegraph connector's `virtual_node_peer_attributes`.
    #[arg(
        long,
        env = "WAYFINDER_PEER_ATTRIBUTES",
        value_delimiter = ',',
        default_value = crate::graph::topology::DEFAULT_PEER_ATTRIBUTES
    )]
    pub peer_attributes: Vec<String>,
    /// Whether the service-graph dimensions are `client_<name>` and `server_<name>` (true, as
    /// the servicegraph connector writes them), or one `<name>` label with the server span's
    /// value, else the client's (false: Tempo's `enable_client_server_prefix` off).
    #[arg(
        long,
        env = "WAYFINDER_SERVICE_GRAPH_CLIENT_SERVER_PREFIX",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub service_graph_client_server_prefix: bool,
}

impl Default for TopologySettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for TopologySettings {
    const SECTION: &'static str = "topology";

    fn validate(&self) -> Result<(), SettingError> {
        let buckets = &self.service_graph_buckets;
        if buckets.is_empty()
            || buckets.iter().any(Duration::is_zero)
            || buckets.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(SettingError::invalid(
                "service_graph_buckets",
                "must be one or more durations above zero, ascending (e.g. 10ms,100ms,1s)",
            ));
        }
        if self.peer_attributes.is_empty() {
            return Err(SettingError::invalid(
                "peer_attributes",
                "must name at least one attribute (e.g. peer.service)",
            ));
        }
        if self.database_name_attributes.is_empty() {
            return Err(SettingError::invalid(
                "database_name_attributes",
                "must name at least one attribute (e.g. db.namespace)",
            ));
        }
        Ok(())
    }

    fn given(&mut self, matches: &clap::ArgMatches) {
        if matches.get_flag("no_topology") {
            self.topology = false;
        }
    }

    fn normalize(&mut self) {
        tidy(&mut self.service_graph_dimensions);
        tidy(&mut self.database_name_attributes);
        tidy(&mut self.peer_attributes);
    }
}
