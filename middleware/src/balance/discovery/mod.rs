//! Discovery from the collector: the weights of one service, from the gRPC `Watch` stream
//! (`wayfinder.v1.Weights/Watch`), else from the HTTP long-poll
//! (`GET /api/v1/weights/{service}?after_version=N&wait=…`).
//!
//! A fleet's collectors serve the same weights with the same versions: given several (or a
//! name that resolves to several addresses), discovery starts at a random one (so that clients
//! spread) and moves to the next when a session ends, asking from the version it holds: an
//! answer older than what it holds is dropped, and a collector that has nothing for the service
//! yet (one that is starting) does not take the weights away while they are fresh.
//!
//! A session watches until the stream ends or fails, or until nothing (not even the half-TTL
//! refresh) has come for a whole TTL; then the task reconnects after an exponential backoff
//! with full jitter: a random wait in `[0, min(10 s, 100 ms × 2ⁿ⁻¹)]` after the n-th session in
//! a row that brought nothing (n ≥ 1; after a session that brought weights, up to 100 ms) (AWS's "full jitter", so that clients that lost the collector
//! together do not come back together). A session that brought weights resets the count.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;

use crate::tls::{ClientTls, HttpClient, Loaded, TlsError};
use tokio::sync::{oneshot, watch};
#[cfg(feature = "tonic")]
use wayfinder_api::grpc::{self, weights_client::WeightsClient};
use wayfinder_api::weights::ServiceWeights;
#[cfg(feature = "tonic")]
use wayfinder_api::weights::{Endpoint, EndpointLatency};

/// Where the collectors' query APIs are, and the token they ask for.
#[derive(Clone, Default)]
pub(crate) struct Collector {
    pub(crate) grpc: Vec<String>,
    pub(crate) http: Vec<String>,
    /// `Bearer <token>`, for a collector started with `--query-token-file`.
    pub(crate) authorization: Option<String>,
    /// TLS settings for `https://` URLs; `None`: the `OTEL_EXPORTER_OTLP_*` ones.
    pub(crate) tls: Option<ClientTls>,
    /// The settings read, when a URL is `https://` (by [`Collector::load`]).
    pub(crate) loaded: Option<Loaded>,
}

impl Collector {
    /// Reads the TLS files when a URL asks for TLS: a missing file fails the balancer's build.
    pub(crate) fn load(&mut self) -> Result<(), TlsError> {
        let https = self
            .grpc
            .iter()
            .chain(&self.http)
            .any(|u| crate::tls::is_https(u));
        if https {
            let tls = self.tls.clone().unwrap_or_else(ClientTls::from_env);
            self.loaded = Some(tls.load()?);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("grpc", &self.grpc)
            .field("http", &self.http)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// How long to wait for a message when no TTL is known yet.
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What discovery has found for the service, published on a `watch` channel for the balancer
/// to take: each answer replaces the last (a balancer that falls behind takes the newest).
#[derive(Debug, Clone)]
pub(crate) enum Found {
    /// No answer yet.
    Nothing,
    /// The collector's weights for the service.
    Weights(Arc<ServiceWeights>),
    /// The collector has nothing for the service.
    Unknown,
}

/// Where discovery publishes, and for which service.
#[derive(Debug)]
pub(crate) struct Publish {
    /// The service whose weights are watched.
    pub(crate) service: String,
    /// Every answer, for the balancer.
    pub(crate) found: watch::Sender<Found>,
    /// The weights last published: their version, when, and their TTL.
    pub(crate) held: parking_lot::Mutex<Option<Held>>,
}

/// The weights last published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    version: u64,
    at: tokio::time::Instant,
    ttl: Duration,
}

impl Publish {
    /// A publisher of the answers for `service`.
    pub(crate) fn new(service: String, found: watch::Sender<Found>) -> Self {
        Publish {
            service,
            found,
            held: parking_lot::Mutex::new(None),
        }
    }

    /// Publishes an answer; `false` when nobody takes them any more (the balancer is gone).
    /// Weights older than those held are dropped (another collector behind the one before);
    /// "nothing for the service" is dropped while the weights held are fresher than their TTL.
    fn publish(&self, weights: Option<ServiceWeights>) -> bool {
        let mut held = self.held.lock();
        let now = tokio::time::Instant::now();
        let found = match weights {
            Some(weights) => {
                if held.is_some_and(|h| weights.version < h.version) {
                    return !self.found.is_closed();
                }
                *held = Some(Held {
                    version: weights.version,
                    at: now,
                    ttl: Duration::from_millis(weights.ttl_ms),
                });
                Found::Weights(Arc::new(weights))
            }
            None => {
                if held.is_some_and(|h| now.duration_since(h.at) < h.ttl) {
                    return !self.found.is_closed();
                }
                *held = None;
                Found::Unknown
            }
        };
        self.found.send(found).is_ok()
    }

    /// The version to ask from: one below the version held, so that the collector answers at
    /// once with what it has (the same version again, or newer); 0 without weights.
    fn ask_after(&self) -> u64 {
        self.held.lock().map_or(0, |h| h.version.saturating_sub(1))
    }
}

/// The collectors of `urls` (comma-separated), trimmed.
pub(crate) fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One collector to ask: its gRPC and HTTP URLs (either may be missing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    grpc: Option<String>,
    http: Option<String>,
}

/// The collectors to go round: the n-th gRPC URL with the n-th HTTP URL; a URL whose host
/// name resolves to several addresses stands for one collector per address.
async fn targets(collector: &Collector) -> Vec<Target> {
    let mut grpc = Vec::new();
    for url in &collector.grpc {
        grpc.extend(resolve(url).await);
    }
    let mut http = Vec::new();
    for url in &collector.http {
        http.extend(resolve(url).await);
    }
    let n = grpc.len().max(http.len());
    (0..n)
        .map(|i| Target {
            grpc: (!grpc.is_empty()).then(|| grpc[i % grpc.len()].clone()),
            http: (!http.is_empty()).then(|| http[i % http.len()].clone()),
        })
        .collect()
}

/// `url` once per address its host name resolves to; as it is when the host is an address, or
/// does not resolve now (the connection says why).
async fn resolve(url: &str) -> Vec<String> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return vec![url.to_owned()];
    };
    let (Some(host), Some(scheme)) = (uri.host(), uri.scheme_str()) else {
        return vec![url.to_owned()];
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return vec![url.to_owned()];
    }
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let lookup = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare, port))).await;
    let mut addresses: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(found)) => found.collect(),
        _ => return vec![url.to_owned()],
    };
    addresses.sort();
    addresses.dedup();
    if addresses.len() < 2 {
        return vec![url.to_owned()];
    }
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    let path = if path == "/" { "" } else { path };
    addresses
        .into_iter()
        .map(|a| format!("{scheme}://{a}{path}"))
        .collect()
}

/// Runs until the balancer is gone (nobody takes what is published) or `stop` fires.
pub(crate) async fn run(collector: Collector, publish: Publish, mut stop: oneshot::Receiver<()>) {
    let mut idle_sessions = 0u32;
    let mut warned = Warned::default();
    let mut targets = targets(&collector).await;
    // Clients start at a random collector, so that they spread over the fleet.
    let mut at = fastrand::usize(..targets.len().max(1));
    loop {
        let target = targets[at % targets.len().max(1)].clone();
        let got = tokio::select! {
            got = session(&target, &collector, &publish, &mut warned) => got,
            _ = &mut stop => return,
        };
        if publish.found.is_closed() {
            return;
        }
        if got {
            idle_sessions = 0;
        } else {
            idle_sessions = idle_sessions.saturating_add(1);
        }
        // The next collector; after a round, the names are resolved again.
        at += 1;
        if at % targets.len().max(1) == 0 {
            targets = self::targets(&collector).await;
        }
        if targets.len() > 1 {
            tracing::debug!(service = %publish.service, next = ?targets.get(at % targets.len()), "weights: moving to another collector");
        }
        // Backing off counts whole rounds that brought nothing: a fleet's next collector is
        // tried at once.
        let rounds = idle_sessions.div_ceil(u32::try_from(targets.len().max(1)).unwrap_or(1));
        let delay = full_jitter(reconnect_cap(rounds.max(1)), fastrand::f64());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
        }
    }
}

/// The backoff cap before the n-th reconnection (n ≥ 1): 100 ms × 2ⁿ⁻¹, at most 10 s.
pub(crate) fn reconnect_cap(n: u32) -> Duration {
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(n.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(10))
}

/// A uniform draw in `[0, cap]` (`unit` in `[0, 1)`).
pub(crate) fn full_jitter(cap: Duration, unit: f64) -> Duration {
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// One session with one collector: gRPC first, the long-poll when gRPC cannot be had (or the
/// `tonic` feature is off). Returns whether any weights (or a "nothing for this service") came.
async fn session(
    target: &Target,
    collector: &Collector,
    publish: &Publish,
    warned: &mut Warned,
) -> bool {
    let authorization = collector.authorization.as_deref();
    let tls = collector.loaded.as_ref();
    let mut got = false;
    #[cfg(feature = "tonic")]
    if let Some(url) = &target.grpc {
        match watch_grpc(url, tls, authorization, publish, &mut got).await {
            Ok(()) => return got,
            Err(error) => {
                warned.failed(&publish.service, url, &*error);
                if got {
                    return got;
                }
            }
        }
    }
    if let Some(url) = &target.http
        && let Err(error) = long_poll(url, tls, authorization, publish, &mut got).await
    {
        warned.failed(&publish.service, url, &*error);
    }
    got
}

/// Failed sessions: each at `debug`, and a warning at most every [`WARN_EVERY`] with the
/// count since the last (a certificate that does not verify fails every session alike).
#[derive(Debug, Default)]
struct Warned {
    last: Option<tokio::time::Instant>,
    since: u64,
}

/// At most one warning this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Warned {
    fn failed(&mut self, service: &str, url: &str, error: &(dyn std::error::Error + 'static)) {
        let error = crate::tls::describe(error);
        tracing::debug!(%error, url, service, "weights session failed");
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                target: "wayfinder_middleware::balance",
                service,
                url,
                failed_sessions = std::mem::take(&mut self.since),
                "weights from the collector failed: {error}"
            );
            self.last = Some(now);
        }
    }
}

#[cfg(feature = "tonic")]
async fn watch_grpc(
    url: &str,
    tls: Option<&Loaded>,
    authorization: Option<&str>,
    publish: &Publish,
    got: &mut bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = publish.service.clone();
    let target = crate::tls::grpc_channel(url, tls, crate::tls::ServerName::Url, |e| {
        e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true)
    })?;
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await??;
    let authorization: Option<tonic::metadata::AsciiMetadataValue> =
        authorization.map(str::parse).transpose()?;
    let request = |message| with_authorization(message, authorization.as_ref());
    let mut client = WeightsClient::new(channel);
    let mut stream = client
        .watch(request(grpc::WatchWeightsRequest {
            service: service.clone(),
            after_version: publish.ask_after(),
        }))
        .await?
        .into_inner();
    let mut ttl = DEFAULT_TTL;
    loop {
        let message = tokio::time::timeout(ttl, stream.message()).await;
        let weights = match message {
            // Nothing for a whole TTL: the collector refreshes every half TTL, so either the
            // service is gone (the Watch waits for it silently) or the stream is stuck.
            Err(_) => {
                let get = with_authorization(
                    grpc::GetWeightsRequest {
                        service: service.clone(),
                    },
                    authorization.as_ref(),
                );
                match client.get(get).await {
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        *got = true;
                        if !publish.publish(None) {
                            return Ok(());
                        }
                        continue;
                    }
                    Ok(_) => return Err("the Watch stream fell silent".into()),
                    Err(status) => return Err(status.into()),
                }
            }
            Ok(Err(status)) => return Err(status.into()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(message))) => from_message(message),
        };
        ttl = Duration::from_millis(weights.ttl_ms.max(1)).max(Duration::from_secs(1));
        *got = true;
        if !publish.publish(Some(weights)) {
            return Ok(());
        }
    }
}

/// A gRPC request carrying the collector's token, if there is one.
#[cfg(feature = "tonic")]
fn with_authorization<T>(
    message: T,
    authorization: Option<&tonic::metadata::AsciiMetadataValue>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

async fn long_poll(
    url: &str,
    tls: Option<&Loaded>,
    authorization: Option<&str>,
    publish: &Publish,
    got: &mut bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = publish.service.clone();
    let client = HttpClient::new(tls, CONNECT_TIMEOUT);
    let base = format!(
        "{}/api/v1/weights/{}",
        url.trim_end_matches('/'),
        form_path(&service)
    );
    // Without weights, the current answer at once; with, the next one from the version held.
    let mut after: Option<u64> = match publish.ask_after() {
        0 => None,
        v => Some(v),
    };
    let mut ttl = DEFAULT_TTL;
    loop {
        let wait = ttl / 2;
        let url = match after {
            None => base.clone(),
            Some(v) => format!("{base}?after_version={v}&wait={}ms", wait.as_millis()),
        };
        let mut request = http::Request::get(&url);
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let response = client
            .send(
                request.body(bytes::Bytes::new())?,
                wait + CONNECT_TIMEOUT * 2,
            )
            .await?;
        match response.status().as_u16() {
            200 => {
                let weights: ServiceWeights = serde_json::from_slice(response.body())?;
                ttl = Duration::from_millis(weights.ttl_ms.max(1)).max(Duration::from_secs(1));
                after = Some(weights.version);
                *got = true;
                if !publish.publish(Some(weights)) {
                    return Ok(());
                }
            }
            404 => {
                *got = true;
                if !publish.publish(None) {
                    return Ok(());
                }
                // Wait for the service to appear.
                after = Some(after.unwrap_or(0));
            }
            status => return Err(format!("weights answered {status}").into()),
        }
    }
}

/// A service name as one path segment.
fn form_path(service: &str) -> String {
    service
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The JSON form of a `Watch` message.
#[cfg(feature = "tonic")]
pub(crate) fn from_message(message: grpc::ServiceWeights) -> ServiceWeights {
    ServiceWeights {
        service: message.service,
        version: message.version,
        generated_at: message.generated_at,
        ttl_ms: message.ttl_ms,
        endpoints: message
            .endpoints
            .into_iter()
            .map(|e| {
                let latency = e.latency_ms.unwrap_or_default();
                Endpoint {
                    instance_id: e.instance_id,
                    address: (!e.address.is_empty()).then_some(e.address),
                    weight: e.weight,
                    health: e.health,
                    latency_ms: EndpointLatency {
                        p50: latency.p50,
                        p90: latency.p90,
                        p99: latency.p99,
                        ewma: latency.ewma,
                    },
                    error_rate: e.error_rate,
                    requests_per_sec: e.requests_per_sec,
                    reason: e.reason,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
