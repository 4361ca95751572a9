//! The balancer's shared state: the endpoint set of one logical service (from the collector's
//! weights, else the static seed), the choice per request, the retry budget, and the read API.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower::retry::budget::TpsBudget;
use wayfinder_api::weights::ServiceWeights;

use super::choose::{Candidate, choose};
use super::config::BalanceConfig;
use super::discovery::{self, Collector, Found, Publish};
use super::endpoint::Endpoint;
use super::error::BalanceError;

/// A handle on the balancer of one logical service. Cheap to clone; every clone shares the
/// endpoint set, the local load of each endpoint and the retry budget. Dropping the last clone
/// stops its discovery task.
///
/// ```
/// use wayfinder_middleware::balance::Balancer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let balancer = Balancer::builder("payments")
///     .seed(["127.0.0.1:8081", "127.0.0.1:8082"])
///     .collector_grpc("http://127.0.0.1:16685")
///     .build()
///     .unwrap();
/// assert_eq!(balancer.endpoints().len(), 2); // the seed, until the collector answers
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Balancer {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) service: String,
    pub(crate) config: BalanceConfig,
    pub(crate) budget: TpsBudget,
    state: RwLock<State>,
    seed: Vec<String>,
    /// Bumped on every applied update, for whoever waits for one.
    updates: watch::Sender<u64>,
    /// Dropped with the last handle: the discovery task then ends.
    _stop: Option<oneshot::Sender<()>>,
}

/// One endpoint of the current set: the local state and the central view.
#[derive(Debug, Clone)]
struct Member {
    endpoint: Arc<Endpoint>,
    instance_id: Option<String>,
    weight: Option<f64>,
    health: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Clone)]
enum Source {
    /// The static seed (no weights yet, or the collector has none for the service).
    Seed,
    /// The collector's weights, received (or refreshed) at `received`.
    Weights {
        version: u64,
        received: Instant,
        ttl: Duration,
    },
}

#[derive(Debug)]
struct State {
    members: Vec<Member>,
    source: Source,
    weights_reason: Arc<str>,
}

const STALE: &str = "peak-ewma: weights stale";
const SEED: &str = "static seed";

/// Where the choice comes from, as [`Balancer::source`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightSource {
    /// The static seed: the collector has not answered, or has nothing for the service.
    Seed,
    /// The collector's weights of this version, fresher than their TTL.
    Weights {
        /// Their version.
        version: u64,
    },
    /// The collector's weights of this version, older than their TTL: the endpoints are
    /// theirs but the choice is local Peak-EWMA.
    Stale {
        /// Their version.
        version: u64,
    },
}

/// One endpoint as the balancer sees it: the collector's view and the local one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointView {
    /// `host:port`.
    pub address: String,
    /// `service.instance.id`, when the collector named it.
    pub instance_id: Option<String>,
    /// The collector's weight (the service's weights sum to 1); `None` for a seed endpoint.
    pub weight: Option<f64>,
    /// The collector's health status.
    pub health: Option<String>,
    /// The collector's reason for the weight.
    pub reason: Option<String>,
    /// Requests in flight from this process.
    pub in_flight: u32,
    /// The local Peak-EWMA round trip estimate.
    pub rtt: Duration,
    /// How much longer it is ejected, if it is.
    pub ejected_for: Option<Duration>,
    /// Attempts sent to it since it joined the set.
    pub requests: u64,
    /// Of which failed.
    pub failures: u64,
}

/// The endpoint chosen for one attempt, and why.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) reason: Arc<str>,
}

impl Balancer {
    /// Starts a builder for the balancer of `service` (its `service.name`).
    pub fn builder(service: impl Into<String>) -> BalancerBuilder {
        BalancerBuilder {
            service: service.into(),
            seed: Vec::new(),
            config: BalanceConfig::default(),
            collector: Collector::default(),
        }
    }

    /// The logical service.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The settings.
    pub fn config(&self) -> &BalanceConfig {
        &self.shared.config
    }

    /// Applies the collector's weights for the service (the discovery task does this for every
    /// answer; call it yourself to feed weights from elsewhere). Endpoints without an address
    /// or with weight 0 (ejected, `critical`) are left out; when none is left the seed is used.
    /// The weights of another service are ignored.
    pub fn apply(&self, weights: &ServiceWeights) {
        if weights.service != self.shared.service {
            return;
        }
        self.shared.apply(Some(weights));
    }

    /// Falls back to the seed: the collector has nothing for the service.
    pub fn apply_none(&self) {
        self.shared.apply(None);
    }

    /// Where the choice comes from now.
    pub fn source(&self) -> WeightSource {
        let state = self.shared.state.read();
        match state.source {
            Source::Seed => WeightSource::Seed,
            Source::Weights {
                version,
                received,
                ttl,
            } => {
                if Instant::now().saturating_duration_since(received) > ttl {
                    WeightSource::Stale { version }
                } else {
                    WeightSource::Weights { version }
                }
            }
        }
    }

    /// The current endpoints, with the collector's view and the local one.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let now = Instant::now();
        let state = self.shared.state.read();
        state
            .members
            .iter()
            .map(|m| {
                let local = m.endpoint.local_view(now);
                EndpointView {
                    address: m.endpoint.address.to_string(),
                    instance_id: m.instance_id.clone(),
                    weight: m.weight,
                    health: m.health.clone(),
                    reason: m.reason.clone(),
                    in_flight: local.in_flight,
                    rtt: local.rtt,
                    ejected_for: local.ejected_for,
                    requests: local.requests,
                    failures: local.failures,
                }
            })
            .collect()
    }

    /// Waits until an update has been applied after the one seen last by `seen` (start with
    /// 0); returns the count of updates so far.
    pub async fn updated(&self, seen: u64) -> u64 {
        let mut rx = self.shared.updates.subscribe();
        match rx.wait_for(|n| *n > seen).await {
            Ok(n) => *n,
            Err(_) => seen,
        }
    }

    /// A connector for a hyper-util `Client` under [`BalanceLayer`]: TLS to `https://`
    /// requests (HTTP/1.1), each endpoint's certificate checked for
    /// [`ClientTls::server_name`] if set, else for the endpoint's host when it is a name, else
    /// for this balancer's service. The files are read now.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    /// use wayfinder_middleware::tls::ClientTls;
    /// use wayfinder_middleware::balance::RequestBody;
    /// use wayfinder_middleware::{BalanceLayer, Balancer, ClientLayer};
    ///
    /// let balancer = Balancer::builder("inventory").seed(["10.0.0.7:8443"]).build()?;
    /// let tls = ClientTls::new().ca_file("/etc/inventory/ca.pem");
    /// let client = Client::builder(TokioExecutor::new())
    ///     .build::<_, RequestBody>(balancer.https_connector(&tls)?);
    /// let service = tower::ServiceBuilder::new()
    ///     .layer(BalanceLayer::new(balancer))
    ///     .layer(ClientLayer::new())
    ///     .service(client);
    /// // Requests go to `https://inventory/...`; the balancer picks the address.
    /// # let _ = service; Ok(()) }
    /// ```
    pub fn https_connector(
        &self,
        tls: &crate::tls::ClientTls,
    ) -> Result<crate::tls::HttpsConnector, crate::tls::TlsError> {
        Ok(crate::tls::https_connector(
            &tls.load()?,
            crate::tls::ServerName::EndpointOr(self.service().to_owned()),
            false,
            None,
        ))
    }

    /// The local state of the current endpoints.
    #[cfg(test)]
    pub(crate) fn endpoints_arc(&self) -> Vec<Arc<Endpoint>> {
        let state = self.shared.state.read();
        state.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Chooses an endpoint, avoiding those in `tried` where another is available.
    pub(crate) fn pick(&self, tried: &[Arc<str>]) -> Result<Picked, BalanceError> {
        self.shared.pick(tried, &mut fastrand::Rng::new())
    }
}

impl Shared {
    pub(crate) fn apply(&self, weights: Option<&ServiceWeights>) {
        let now = Instant::now();
        let mut state = self.state.write();
        let usable: Vec<_> = weights
            .map(|w| {
                w.endpoints
                    .iter()
                    .filter(|e| {
                        e.weight > 0.0 && e.address.as_deref().is_some_and(|a| !a.is_empty())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reuse = |address: &str| {
            state
                .members
                .iter()
                .find(|m| &*m.endpoint.address == address)
                .map(|m| m.endpoint.clone())
        };
        let (members, source, reason) = match weights {
            Some(w) if !usable.is_empty() => {
                let members: Vec<Member> = usable
                    .iter()
                    .filter_map(|e| {
                        let address = e.address.as_deref()?;
                        let endpoint =
                            reuse(address).or_else(|| Endpoint::new(address, &self.config, now))?;
                        Some(Member {
                            endpoint,
                            instance_id: Some(e.instance_id.clone()),
                            weight: Some(e.weight),
                            health: Some(e.health.clone()),
                            reason: Some(e.reason.clone()),
                        })
                    })
                    .collect();
                let source = Source::Weights {
                    version: w.version,
                    received: now,
                    ttl: Duration::from_millis(w.ttl_ms),
                };
                (
                    members,
                    source,
                    Arc::from(format!("weights v{}", w.version)),
                )
            }
            _ => {
                let members = self
                    .seed
                    .iter()
                    .filter_map(|address| {
                        let endpoint =
                            reuse(address).or_else(|| Endpoint::new(address, &self.config, now))?;
                        Some(Member {
                            endpoint,
                            instance_id: None,
                            weight: None,
                            health: None,
                            reason: None,
                        })
                    })
                    .collect();
                (members, Source::Seed, Arc::from(SEED))
            }
        };
        state.members = members;
        state.source = source;
        state.weights_reason = reason;
        drop(state);
        self.updates.send_modify(|n| *n += 1);
    }

    pub(crate) fn pick(
        &self,
        tried: &[Arc<str>],
        rng: &mut fastrand::Rng,
    ) -> Result<Picked, BalanceError> {
        let now = Instant::now();
        let state = self.state.read();
        let (weighted, reason) = match &state.source {
            Source::Seed => (false, state.weights_reason.clone()),
            Source::Weights { received, ttl, .. } => {
                if now.saturating_duration_since(*received) > *ttl {
                    (false, Arc::from(STALE))
                } else {
                    (true, state.weights_reason.clone())
                }
            }
        };
        let members = &state.members;
        if members.is_empty() {
            return Err(BalanceError::NoEndpoints {
                service: self.service.clone(),
            });
        }
        // The ejected, worst first; beyond the cap the least bad stay in.
        let mut ejected: Vec<(usize, f64)> = members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.endpoint.ejection(now).map(|bad| (i, bad)))
            .collect();
        let cap = (members.len() as f64 * self.config.max_ejection_share).floor() as usize;
        let cap = cap.min(members.len() - 1);
        if ejected.len() > cap {
            ejected.sort_by(|a, b| b.1.total_cmp(&a.1));
            ejected.truncate(cap);
        }
        let out = |i: usize| ejected.iter().any(|(j, _)| *j == i);
        let untried_left = members
            .iter()
            .enumerate()
            .any(|(i, m)| !out(i) && !tried.contains(&m.endpoint.address));
        let candidates: Vec<Candidate> = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let excluded = out(i) || (untried_left && tried.contains(&m.endpoint.address));
                if excluded {
                    return Candidate {
                        share: 0.0,
                        cost: f64::INFINITY,
                    };
                }
                let base = if weighted {
                    m.weight.unwrap_or(0.0)
                } else {
                    1.0
                };
                Candidate {
                    share: base * m.endpoint.ramp(self.config.slow_start, now),
                    cost: m.endpoint.cost(now),
                }
            })
            .collect();
        let index = choose(&candidates, self.config.cost_tolerance, rng).ok_or_else(|| {
            BalanceError::NoEndpoints {
                service: self.service.clone(),
            }
        })?;
        Ok(Picked {
            endpoint: members[index].endpoint.clone(),
            reason,
        })
    }
}

/// Builds a [`Balancer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BalancerBuilder {
    service: String,
    seed: Vec<String>,
    config: BalanceConfig,
    collector: Collector,
}

impl BalancerBuilder {
    /// Static addresses (`host:port`) used until the collector answers, and whenever it has
    /// nothing for the service.
    pub fn seed<I, A>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.seed = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// The collector's query gRPC API (`http://host:16685`): weights come from its `Watch`.
    /// A fleet's collectors all serve the same weights: give several (comma-separated, or one
    /// call each), or a name that resolves to several addresses, and discovery moves to another
    /// when its `Watch` breaks, never going back in version.
    pub fn collector_grpc(mut self, url: impl Into<String>) -> Self {
        self.collector
            .grpc
            .extend(discovery::split_urls(&url.into()));
        self
    }

    /// The collector's query HTTP API (`http://host:16686`): the long-poll, used when the gRPC
    /// `Watch` cannot be had (or alone). Several, as with
    /// [`collector_grpc`](Self::collector_grpc).
    pub fn collector_http(mut self, url: impl Into<String>) -> Self {
        self.collector
            .http
            .extend(discovery::split_urls(&url.into()));
        self
    }

    /// Sends `Authorization: Bearer <token>` to the collector's query API, for a collector
    /// started with `--query-token-file`.
    pub fn collector_token(mut self, token: &str) -> Self {
        self.collector.authorization = Some(format!("Bearer {}", token.trim()));
        self
    }

    /// TLS settings for `https://` collector URLs: the CA that signs the collector and a
    /// client certificate. Without them an `https://` URL uses the
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY` variables (the
    /// query API is on the collector the spans go to), else the system's roots. The files are
    /// read by [`build`](Self::build).
    pub fn collector_tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.collector.tls = Some(tls);
        self
    }

    /// All settings at once.
    pub fn config(mut self, config: BalanceConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes some settings.
    pub fn configure(mut self, change: impl FnOnce(&mut BalanceConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// gRPC methods (`/package.Service/Method`) that may be retried.
    pub fn idempotent_grpc_methods<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        self.config.idempotent_grpc_methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// The balancer; with a collector configured it starts the discovery task on the current
    /// tokio runtime (it ends with the last handle).
    pub fn build(mut self) -> Result<Balancer, BalanceError> {
        self.config.validate().map_err(BalanceError::Config)?;
        self.collector
            .load()
            .map_err(|e| BalanceError::Config(format!("the collector's TLS: {e}")))?;
        if let Some(bad) = self.seed.iter().find(|a| {
            a.parse::<http::uri::Authority>()
                .ok()
                .and_then(|a| a.port_u16())
                .is_none()
        }) {
            return Err(BalanceError::Config(format!(
                "seed address `{bad}` is not host:port"
            )));
        }
        let discover = !self.collector.grpc.is_empty() || !self.collector.http.is_empty();
        let (stop, stopped) = oneshot::channel();
        let budget = TpsBudget::new(
            self.config.retry_budget_window,
            self.config.retry_min_per_sec,
            self.config.retry_percent,
        );
        let shared = Arc::new(Shared {
            service: self.service,
            config: self.config,
            budget,
            state: RwLock::new(State {
                members: Vec::new(),
                source: Source::Seed,
                weights_reason: Arc::from(SEED),
            }),
            seed: self.seed,
            updates: watch::channel(0).0,
            _stop: discover.then_some(stop),
        });
        shared.apply(None);
        if discover {
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                BalanceError::Config(
                    "a balancer with a collector is built inside a tokio runtime".to_owned(),
                )
            })?;
            let (found, taken) = watch::channel(Found::Nothing);
            let publish = Publish::new(shared.service.clone(), found);
            handle.spawn(discovery::run(self.collector, publish, stopped));
            handle.spawn(take_found(taken, Arc::downgrade(&shared)));
        }
        Ok(Balancer { shared })
    }
}

/// Applies what discovery publishes, the newest each time, until discovery ends or the
/// balancer is gone (its dropping of this task's receiver then ends discovery too).
async fn take_found(mut taken: watch::Receiver<Found>, shared: std::sync::Weak<Shared>) {
    while taken.changed().await.is_ok() {
        let found = taken.borrow_and_update().clone();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match found {
            Found::Nothing => {}
            Found::Weights(weights) => shared.apply(Some(&weights)),
            Found::Unknown => shared.apply(None),
        }
    }
}
