//! The flags of `wayfinder serve` (each also read from its environment variable), and the
//! parsers of their durations and sizes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::util::units::{parse_duration, parse_size};

/// The flags of `wayfinder serve`; each one also reads its environment variable.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(about = "Run the Wayfinder collector")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case, e.g. `otlp_grpc`).
    #[arg(long, env = "WAYFINDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the OTLP/gRPC receiver [default: 127.0.0.1:4317].
    #[arg(long, env = "WAYFINDER_OTLP_GRPC")]
    pub otlp_grpc: Option<SocketAddr>,
    /// Address of the OTLP/HTTP receiver [default: 127.0.0.1:4318].
    #[arg(long, env = "WAYFINDER_OTLP_HTTP")]
    pub otlp_http: Option<SocketAddr>,
    /// Address of the query HTTP API [default: 127.0.0.1:16686].
    #[arg(long, env = "WAYFINDER_QUERY_HTTP")]
    pub query_http: Option<SocketAddr>,
    /// Address of the query gRPC API [default: 127.0.0.1:16685].
    #[arg(long, env = "WAYFINDER_QUERY_GRPC")]
    pub query_grpc: Option<SocketAddr>,
    /// Largest OTLP/gRPC message, after decompression [default: 4MiB].
    #[arg(long, env = "WAYFINDER_GRPC_MAX_MESSAGE_BYTES", value_parser = parse_size)]
    pub grpc_max_message_bytes: Option<usize>,
    /// Largest OTLP/HTTP body, after decompression [default: 20MiB].
    #[arg(long, env = "WAYFINDER_HTTP_MAX_BODY_BYTES", value_parser = parse_size)]
    pub http_max_body_bytes: Option<usize>,
    /// Memory budget of the ingest queue [default: 256MiB].
    #[arg(long, env = "WAYFINDER_MAX_INGEST_BYTES", value_parser = parse_size)]
    pub max_ingest_bytes: Option<usize>,
    /// How long spans are kept [default: 1h].
    #[arg(long, env = "WAYFINDER_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Memory budget of the span store [default: 1GiB].
    #[arg(long, env = "WAYFINDER_MAX_STORE_BYTES", value_parser = parse_size)]
    pub max_store_bytes: Option<usize>,
    /// Time limit of one SQL query [default: 30s].
    #[arg(long, env = "WAYFINDER_QUERY_TIMEOUT", value_parser = parse_duration)]
    pub query_timeout: Option<Duration>,
    /// Memory of all SQL queries at once, shared equally among --query-max-concurrent
    /// [default: 512MiB].
    #[arg(long, env = "WAYFINDER_QUERY_MEMORY_BYTES", value_parser = parse_size)]
    pub query_memory_bytes: Option<usize>,
    /// Most rows in one SQL answer [default: 100000].
    #[arg(long, env = "WAYFINDER_QUERY_MAX_ROWS")]
    pub query_max_rows: Option<usize>,
    /// Most SQL queries running at once; more get 503 with Retry-After [default: 4].
    #[arg(long, env = "WAYFINDER_QUERY_MAX_CONCURRENT")]
    pub query_max_concurrent: Option<usize>,
    /// Do not build the service graph (spans are still stored and queryable).
    #[arg(long, env = "WAYFINDER_NO_TOPOLOGY")]
    pub no_topology: bool,
    /// How long half of an edge waits for its other half [default: 10s].
    #[arg(long, env = "WAYFINDER_EDGE_WAIT", value_parser = parse_duration)]
    pub edge_wait: Option<Duration>,
    /// How many halves of edges may wait at once [default: 100000].
    #[arg(long, env = "WAYFINDER_EDGE_MAX_PENDING")]
    pub edge_max_pending: Option<usize>,
    /// Memory budget of the service graph's figures; over it, the oldest minutes and the edges
    /// not seen since are evicted, and counted [default: 256MiB].
    #[arg(long, env = "WAYFINDER_TOPOLOGY_MAX_BYTES", value_parser = parse_size)]
    pub topology_max_bytes: Option<usize>,
    /// How many span-metrics series are tracked at most; further ones go to the overflow
    /// series [default: 10000].
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_MAX_SERIES")]
    pub span_metrics_max_series: Option<usize>,
    /// Upper bounds of the service-graph latency histograms, comma-separated and ascending
    /// [default: the servicegraph connector's, 2ms,4ms,6ms,8ms,10ms,50ms,100ms,200ms,400ms,
    /// 800ms,1s,1400ms,2s,5s,10s,15s].
    #[arg(long, env = "WAYFINDER_SERVICE_GRAPH_BUCKETS", value_delimiter = ',', value_parser = parse_duration)]
    pub service_graph_buckets: Vec<Duration>,
    /// Span or resource attributes that become extra labels of the service-graph series,
    /// `client_<name>` and `server_<name>`, comma-separated [default: none].
    #[arg(
        long,
        env = "WAYFINDER_SERVICE_GRAPH_DIMENSIONS",
        value_delimiter = ','
    )]
    pub service_graph_dimensions: Vec<String>,
    /// Span or resource attributes that become extra labels of the span-metrics series,
    /// comma-separated [default: none].
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_DIMENSIONS", value_delimiter = ',')]
    pub span_metrics_dimensions: Vec<String>,
    /// Attribute holding the probability a span was sampled with; the span counts for
    /// 1/probability in the Prometheus series [default: none].
    #[arg(long, env = "WAYFINDER_SPAN_MULTIPLIER_KEY")]
    pub span_multiplier_key: Option<String>,
    /// Where database node names come from, first found wins, comma-separated [default:
    /// peer.service,db.namespace,server.address,network.peer.address,db.system].
    #[arg(
        long,
        env = "WAYFINDER_DATABASE_NAME_ATTRIBUTES",
        value_delimiter = ','
    )]
    pub database_name_attributes: Vec<String>,
    /// How long an instance stays critical (or silent) before it is removed [default: 60s].
    #[arg(long, env = "WAYFINDER_DEREGISTER_AFTER", value_parser = parse_duration)]
    pub deregister_after: Option<Duration>,
    /// The longest TTL a heartbeat may have; a longer one is refused [default: 10m].
    #[arg(long, env = "WAYFINDER_MAX_HEARTBEAT_TTL", value_parser = parse_duration)]
    pub max_heartbeat_ttl: Option<Duration>,
    /// How often load-balancing weights are computed [default: 1s].
    #[arg(long, env = "WAYFINDER_WEIGHT_UPDATE_PERIOD", value_parser = parse_duration)]
    pub weight_update_period: Option<Duration>,
    /// The sliding window the weights are computed from [default: 30s].
    #[arg(long, env = "WAYFINDER_WEIGHT_WINDOW", value_parser = parse_duration)]
    pub weight_window: Option<Duration>,
    /// How long published weights hold without a newer answer [default: 60s].
    #[arg(long, env = "WAYFINDER_WEIGHT_TTL", value_parser = parse_duration)]
    pub weight_ttl: Option<Duration>,
    /// How strongly weight follows speed, `(L_ref / L)^gamma`, > 0 [default: 1].
    #[arg(long, env = "WAYFINDER_WEIGHT_GAMMA")]
    pub weight_gamma: Option<f64>,
    /// How much errors inflate latency, `L · (1 + k · err)`, >= 0 [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_ERROR_PENALTY")]
    pub weight_error_penalty: Option<f64>,
    /// Largest change of a weight per update, as a ratio, >= 1 [default: 1.25].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_STEP")]
    pub weight_max_step: Option<f64>,
    /// Changes of a target within this ratio are ignored, >= 1 [default: 1.05].
    #[arg(long, env = "WAYFINDER_WEIGHT_DEADBAND")]
    pub weight_deadband: Option<f64>,
    /// Lowest weight as a share of the mean, in (0, 1] [default: 0.1].
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_FACTOR")]
    pub weight_min_factor: Option<f64>,
    /// Highest weight as a multiple of the mean, >= 1 [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_FACTOR")]
    pub weight_max_factor: Option<f64>,
    /// Requests in the window that judge an instance fully; below, its own figures count in
    /// proportion, the rest is the mean or the weight it earned [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_REQUESTS")]
    pub weight_min_requests: Option<u64>,
    /// How long new instances ramp up; 0s turns it off [default: 30s].
    #[arg(long, env = "WAYFINDER_WEIGHT_SLOW_START", value_parser = parse_duration)]
    pub weight_slow_start: Option<Duration>,
    /// Largest share of a service's instances ejected at once, in [0, 1] [default: 0.5].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_EJECTION")]
    pub weight_max_ejection: Option<f64>,
    /// Most connections each listener holds at once; one more is closed at once [default: 4096].
    #[arg(long, env = "WAYFINDER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most clients waiting for weights at once (gRPC Watch streams and HTTP long-polls); more
    /// get a retryable refusal [default: 10000].
    #[arg(long, env = "WAYFINDER_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// Directory of the write-ahead log; every accepted request is written there before it is
    /// acknowledged and replayed at start [default: none, spans are kept in memory only].
    #[arg(long, env = "WAYFINDER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When an accepted request is acknowledged: `always` after it is synced to disk (it
    /// survives a power cut), `interval` once written, synced every --wal-sync-interval (a
    /// power cut loses at most that interval) [default: interval].
    #[arg(long, env = "WAYFINDER_WAL_SYNC", value_enum)]
    pub wal_sync: Option<WalSyncMode>,
    /// How often the write-ahead log is synced in `interval` mode [default: 200ms].
    #[arg(long, env = "WAYFINDER_WAL_SYNC_INTERVAL", value_parser = parse_duration)]
    pub wal_sync_interval: Option<Duration>,
    /// Where spans sealed out of memory go as Parquet files, with --data-dir: a directory,
    /// `file:///…` or `s3://bucket/prefix` (credentials and endpoint from the `AWS_*`
    /// variables) [default: DIR/spans].
    #[arg(long, env = "WAYFINDER_HISTORY")]
    pub history: Option<String>,
    /// Free space kept on the data directory's disk, with --data-dir: below it ingest is
    /// refused (retryably), so that sealing has room to free the log's space [default: 256MiB].
    #[arg(long, env = "WAYFINDER_DISK_RESERVE", value_parser = parse_size)]
    pub disk_reserve: Option<usize>,
    /// The longest spans wait in memory before they are sealed to Parquet (sooner when a
    /// million wait or memory is half full) [default: 1m].
    #[arg(long, env = "WAYFINDER_SEAL_INTERVAL", value_parser = parse_duration)]
    pub seal_interval: Option<Duration>,
    /// File of the bearer tokens the OTLP receivers admit, one a line, read again when it
    /// changes; or the token itself in WAYFINDER_INGEST_TOKEN [default: none, ingest is open].
    #[arg(long, env = "WAYFINDER_INGEST_TOKEN_FILE")]
    pub ingest_token_file: Option<PathBuf>,
    /// File of the bearer tokens the query API admits (HTTP and gRPC; /healthz and /readyz
    /// stay open); or the token itself in WAYFINDER_QUERY_TOKEN [default: none, open].
    #[arg(long, env = "WAYFINDER_QUERY_TOKEN_FILE")]
    pub query_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) that every listener serves over TLS, with --tls-key; read
    /// again when it changes [default: none, plaintext].
    #[arg(long, env = "WAYFINDER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "WAYFINDER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): the OTLP receivers then require a client certificate signed by
    /// one of them (mutual TLS); the query API does not [default: none].
    #[arg(long, env = "WAYFINDER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How long a new connection has to send its first bytes (or finish its TLS handshake),
    /// and an HTTP/1 request to send its headers, before it is closed [default: 10s].
    #[arg(long, env = "WAYFINDER_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// How long an HTTP request's body may take to arrive in full after its headers, before
    /// the request is refused and its connection closed [default: 30s].
    #[arg(long, env = "WAYFINDER_BODY_READ_TIMEOUT", value_parser = parse_duration)]
    pub body_read_timeout: Option<Duration>,
    /// How long a connection may have no request open before it is closed (HTTP/2 with a
    /// GOAWAY); a listener at --max-connections closes connections idle for a second
    /// [default: 2m].
    #[arg(long, env = "WAYFINDER_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Log filter, e.g. `info` or `wayfinder_collector=debug,info` [default: info].
    #[arg(long, env = "RUST_LOG")]
    pub log_level: Option<String>,
}

/// When the write-ahead log acknowledges, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSyncMode {
    /// After `fdatasync`.
    Always,
    /// After `write`, synced every interval.
    Interval,
}
