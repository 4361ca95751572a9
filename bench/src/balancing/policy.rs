//! The three ways a client spreads its calls in the fleet benchmark: round robin, tower's own
//! `p2c::Balance` over `PeakEwma` (linkerd's defaults: 30 ms default RTT, 10 s decay), and
//! Wayfinder's balancer reading the collector's weights. All three send through the same
//! hyper-util client under the same tracing [`ClientLayer`], so every attempt is a CLIENT span
//! that reaches the collector, and all three count the attempts they send.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use wayfinder_middleware::ClientLayer;
use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody};

/// Which balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each call to the next endpoint in turn.
    RoundRobin,
    /// tower's `p2c::Balance` over `PeakEwma`.
    P2c,
    /// Wayfinder's balancer.
    Wayfinder,
}

impl Policy {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round robin",
            Policy::P2c => "tower p2c + PeakEwma",
            Policy::Wayfinder => "Wayfinder",
        }
    }
}

type Call = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;

/// One client of the fleet: sends a call, learns of a new endpoint, counts attempts.
#[derive(Clone)]
pub struct FleetClient {
    send: Arc<dyn Fn() -> Call + Send + Sync>,
    join: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    attempts: Arc<AtomicU64>,
    /// Wayfinder's balancer, for its view.
    pub balancer: Option<Balancer>,
}

impl FleetClient {
    /// One call of `GET /work` to the service; its status.
    pub fn call(&self) -> Call {
        (self.send)()
    }

    /// Tells a static policy of a new endpoint (Wayfinder learns it from the collector).
    pub fn join(&self, addr: SocketAddr) {
        (self.join)(addr)
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

type Http = Client<HttpConnector, RequestBody>;

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

fn request(uri: Uri) -> Request<RequestBody> {
    Request::get(uri)
        .body(RequestBody::empty())
        .expect("a valid request")
}

fn uri(addr: &str) -> Uri {
    format!("http://{addr}/work").parse().expect("a valid URI")
}

/// Builds a client of `policy` for `service` over `endpoints`; `collector` is the query gRPC
/// URL Wayfinder watches; `cost_tolerance`, when given, replaces Wayfinder's default.
pub fn client(
    policy: Policy,
    service: &str,
    endpoints: &[SocketAddr],
    collector: &str,
    cost_tolerance: Option<f64>,
) -> anyhow::Result<FleetClient> {
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = {
        let attempts = attempts.clone();
        ServiceBuilder::new()
            .layer(ClientLayer::new())
            .map_request(move |r: Request<RequestBody>| {
                attempts.fetch_add(1, Ordering::Relaxed);
                r
            })
            .service(http_client())
    };
    Ok(match policy {
        Policy::RoundRobin => {
            let list = Arc::new(RwLock::new(
                endpoints.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ));
            let next = Arc::new(AtomicUsize::new(0));
            let joined = list.clone();
            FleetClient {
                send: Arc::new(move || {
                    let addr = {
                        let list = list.read();
                        list[next.fetch_add(1, Ordering::Relaxed) % list.len()].clone()
                    };
                    let service = counted.clone();
                    Box::pin(
                        async move { status(service.oneshot(request(uri(&addr))).await?).await },
                    )
                }),
                join: Arc::new(move |addr| joined.write().push(addr.to_string())),
                attempts,
                balancer: None,
            }
        }
        Policy::P2c => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let endpoint = {
                let counted = counted.clone();
                move |addr: SocketAddr| {
                    let target = uri(&addr.to_string());
                    let service = ServiceBuilder::new()
                        .map_request(move |mut r: Request<RequestBody>| {
                            *r.uri_mut() = target.clone();
                            r
                        })
                        .service(counted.clone());
                    let service = PeakEwma::new(
                        service,
                        Duration::from_millis(30),
                        Duration::from_secs(10).as_nanos() as f64,
                        CompleteOnResponse::default(),
                    );
                    Change::Insert(addr, service)
                }
            };
            for addr in endpoints {
                let _ = tx.send(endpoint(*addr));
            }
            let discover = futures::stream::poll_fn(move |cx| {
                rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
            });
            let balance = tower::balance::p2c::Balance::new(discover);
            let buffered = tower::util::BoxCloneSyncService::new(
                tower::buffer::Buffer::new(balance, 4096)
                    .map_response(|r: http::Response<_>| r.map(BodyExt::boxed_unsync)),
            );
            FleetClient {
                send: Arc::new(move || {
                    let service = buffered.clone();
                    Box::pin(
                        async move { status(service.oneshot(request(uri("p2c"))).await?).await },
                    )
                }),
                join: Arc::new(move |addr| {
                    let _ = tx.send(endpoint(addr));
                }),
                attempts,
                balancer: None,
            }
        }
        Policy::Wayfinder => {
            let balancer = Balancer::builder(service)
                .seed(endpoints.iter().map(|a| a.to_string()))
                .collector_grpc(collector)
                .configure(|config| {
                    if let Some(tolerance) = cost_tolerance {
                        config.cost_tolerance = tolerance;
                    }
                })
                .build()?;
            let service = ServiceBuilder::new()
                .layer(BalanceLayer::new(balancer.clone()))
                .service(counted);
            FleetClient {
                send: Arc::new(move || {
                    let service = service.clone();
                    Box::pin(async move {
                        status(service.oneshot(request(uri("backend"))).await?).await
                    })
                }),
                join: Arc::new(|_| {}),
                attempts,
                balancer: Some(balancer),
            }
        }
    })
}

/// The status, once the body has been read.
async fn status<B>(response: http::Response<B>) -> Result<StatusCode, BoxError>
where
    B: hyper::body::Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    response.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}
