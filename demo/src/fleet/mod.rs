//! The fleet: each instance a real server on loopback, on a thread and runtime of its own with
//! its own telemetry (`service.name`, `service.instance.id`), reporting its health, and leaving
//! gracefully (`down` first) when told to stop.
//!
//! ```text
//! users → frontend (HTTP) → checkout ×3 (gRPC) → payments ×2 (HTTP)
//!                                              → inventory (gRPC)
//!                                              → orders-db (CLIENT spans only)
//!                                              → order-events queue → notifications
//! ```

mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use opentelemetry::trace::TracerProvider as _;
use tokio::sync::{mpsc, watch};
use wayfinder_middleware::balance::Balancer;
use wayfinder_middleware::health::{GracefulShutdown, HealthReporter};
use wayfinder_middleware::{ReqwestTracing, ServerLayer, Telemetry};

use crate::options::Effect;
use crate::proto::checkout_client::CheckoutClient;
use crate::proto::checkout_server::CheckoutServer;
use crate::proto::inventory_client::InventoryClient;
use crate::proto::inventory_server::InventoryServer;

/// What a running instance can be told, and what it counts.
#[derive(Debug)]
pub struct Knobs {
    /// Its instance id (`checkout-3`).
    pub instance: String,
    /// Extra milliseconds on every call.
    pub delay_ms: AtomicU64,
    /// Calls that fail, per thousand.
    pub fail_permille: AtomicU32,
    /// Calls it served.
    pub served: AtomicU64,
}

impl Knobs {
    fn new(instance: &str) -> Arc<Self> {
        Arc::new(Knobs {
            instance: instance.to_owned(),
            delay_ms: AtomicU64::new(0),
            fail_permille: AtomicU32::new(0),
            served: AtomicU64::new(0),
        })
    }

    /// Applies a fault.
    pub fn apply(&self, effect: Effect) {
        match effect {
            Effect::Slow => self.delay_ms.store(SLOW_MS, Ordering::Relaxed),
            Effect::Fail(rate) => {
                let permille = (rate * 1000.0).round().clamp(0.0, 1000.0) as u32;
                self.fail_permille.store(permille, Ordering::Relaxed);
            }
        }
    }
}

/// What `Effect::Slow` adds to every call of its instance.
pub const SLOW_MS: u64 = 120;

/// Where the collector is.
#[derive(Debug, Clone)]
pub struct CollectorUrls {
    /// OTLP/HTTP (`http://127.0.0.1:4318`): spans and health.
    pub otlp_http: String,
    /// The query gRPC API: the balancers' `Watch`.
    pub query_grpc: String,
    /// The query HTTP API: the balancers' long-poll.
    pub query_http: String,
}

impl CollectorUrls {
    /// The URLs of a collector listening on `addrs`.
    pub fn of(addrs: &wayfinder_collector::BoundAddrs) -> Self {
        CollectorUrls {
            otlp_http: format!("http://{}", addrs.otlp_http),
            query_grpc: format!("http://{}", addrs.query_grpc),
            query_http: format!("http://{}", addrs.query_http),
        }
    }
}

/// One running instance.
#[derive(Debug)]
pub struct Instance {
    /// Its service.
    pub service: &'static str,
    /// Its knobs and counters.
    pub knobs: Arc<Knobs>,
    /// Where it serves (none for the queue's consumer).
    pub address: Option<SocketAddr>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// The running fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Every instance, callers last (`frontend` is the last one).
    pub instances: Vec<Instance>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Starts every instance, callees first so that callers have their addresses as seeds.
    pub fn start(collector: &CollectorUrls) -> anyhow::Result<Fleet> {
        let (stop, stopped) = watch::channel(false);
        let mut instances = Vec::new();
        let (queue, events) = mpsc::channel(4096);

        let notifications = Knobs::new("notifications-1");
        instances.push(spawn(
            "notifications",
            &notifications,
            None,
            collector,
            stopped.clone(),
            Role::Notifications(events),
        )?);
        let mut payments = Vec::new();
        for n in 1..=2 {
            let knobs = Knobs::new(&format!("payments-{n}"));
            let listener = bind()?;
            payments.push(listener.local_addr()?.to_string());
            let role = Role::Payments;
            instances.push(spawn(
                "payments",
                &knobs,
                Some(listener),
                collector,
                stopped.clone(),
                role,
            )?);
        }
        let knobs = Knobs::new("inventory-1");
        let listener = bind()?;
        let inventory = vec![listener.local_addr()?.to_string()];
        instances.push(spawn(
            "inventory",
            &knobs,
            Some(listener),
            collector,
            stopped.clone(),
            Role::Inventory,
        )?);
        let mut checkout = Vec::new();
        for n in 1..=3 {
            let knobs = Knobs::new(&format!("checkout-{n}"));
            let listener = bind()?;
            checkout.push(listener.local_addr()?.to_string());
            let role = Role::Checkout {
                payments: payments.clone(),
                inventory: inventory.clone(),
                queue: queue.clone(),
            };
            instances.push(spawn(
                "checkout",
                &knobs,
                Some(listener),
                collector,
                stopped.clone(),
                role,
            )?);
        }
        drop(queue);
        let knobs = Knobs::new("frontend-1");
        let listener = bind()?;
        instances.push(spawn(
            "frontend",
            &knobs,
            Some(listener),
            collector,
            stopped,
            Role::Frontend { checkout },
        )?);
        Ok(Fleet { instances, stop })
    }

    /// The instance with this id.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.knobs.instance == id)
    }

    /// Where `frontend` serves.
    pub fn frontend(&self) -> SocketAddr {
        self.instances
            .iter()
            .find(|i| i.service == "frontend")
            .and_then(|i| i.address)
            .expect("the fleet has a frontend")
    }

    /// The knobs of the instance `id`; an unknown instance is an error naming the fleet's.
    pub fn knobs(&self, id: &str) -> anyhow::Result<Arc<Knobs>> {
        let instance = self.instance(id).with_context(|| {
            let ids: Vec<&str> = self
                .instances
                .iter()
                .map(|i| i.knobs.instance.as_str())
                .collect();
            format!("no instance `{id}` (the fleet: {})", ids.join(", "))
        })?;
        Ok(Arc::clone(&instance.knobs))
    }

    /// Tells every instance to leave (each sends `down`, drains, stops, flushes its spans) and
    /// waits for them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let threads: Vec<_> = self.instances.into_iter().map(|i| i.thread).collect();
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                match thread.join() {
                    Ok(result) => result?,
                    Err(_) => anyhow::bail!("an instance's thread panicked"),
                }
            }
            Ok(())
        })
        .await?
    }
}

/// A loopback listener on a free port.
fn bind() -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What an instance serves, and whom it calls.
enum Role {
    Frontend {
        checkout: Vec<String>,
    },
    Checkout {
        payments: Vec<String>,
        inventory: Vec<String>,
        queue: mpsc::Sender<services::OrderEvent>,
    },
    Payments,
    Inventory,
    Notifications(mpsc::Receiver<services::OrderEvent>),
}

/// How long a leaving instance keeps serving after `down`: short, for a demo (a service's
/// default is 5 s).
const DRAIN: Duration = Duration::from_secs(1);

fn spawn(
    service: &'static str,
    knobs: &Arc<Knobs>,
    listener: Option<std::net::TcpListener>,
    collector: &CollectorUrls,
    stop: watch::Receiver<bool>,
    role: Role,
) -> anyhow::Result<Instance> {
    let address = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let thread_knobs = Arc::clone(knobs);
    let collector = collector.clone();
    let thread = std::thread::Builder::new()
        .name(knobs.instance.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run_instance(
                service,
                thread_knobs,
                listener,
                collector,
                stop,
                role,
            ))
        })?;
    Ok(Instance {
        service,
        knobs: Arc::clone(knobs),
        address,
        thread,
    })
}

/// One instance, on its own runtime: telemetry, health, its server, then a graceful exit.
async fn run_instance(
    service: &'static str,
    knobs: Arc<Knobs>,
    listener: Option<std::net::TcpListener>,
    collector: CollectorUrls,
    mut stop: watch::Receiver<bool>,
    role: Role,
) -> anyhow::Result<()> {
    let telemetry = Telemetry::new()
        .service_name(service)
        .instance_id(knobs.instance.clone())
        .endpoint(collector.otlp_http.clone())
        // Spans reach the collector within a second, so the first table already has weights.
        .export_delay(Duration::from_secs(1))
        .log_filter("warn")
        .build()
        .with_context(|| format!("{}: telemetry", knobs.instance))?;
    let _scope = telemetry.set_default();
    let tracer = telemetry.provider().tracer("wayfinder-demo");
    let mut reporter = HealthReporter::for_telemetry(&telemetry);
    if let Some(listener) = &listener {
        reporter = reporter.address(listener.local_addr()?.to_string());
    }
    let health = reporter.start()?;
    let graceful = GracefulShutdown::new()
        .health(health.clone())
        .drain(DRAIN)
        .deadline(Duration::from_secs(5));
    let trigger = graceful.clone();
    tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        trigger.trigger();
    });
    let listener = listener
        .map(tokio::net::TcpListener::from_std)
        .transpose()?;
    let balancer = |callee: &str, seed: &[String]| {
        Balancer::builder(callee)
            .seed(seed.iter().cloned())
            .collector_grpc(collector.query_grpc.clone())
            .collector_http(collector.query_http.clone())
            .build()
            .with_context(|| format!("a balancer for {callee}"))
    };
    match role {
        Role::Frontend { checkout } => {
            let checkout = CheckoutClient::new(balancer("checkout", &checkout)?.tonic_channel());
            let state = services::Frontend {
                knobs: Arc::clone(&knobs),
                checkout,
            };
            let app = Router::new()
                .route("/orders", post(services::frontend_order))
                .with_state(state)
                .merge(health.routes())
                .layer(ServerLayer::new());
            serve_http(&graceful, listener.expect("a listener"), app).await?;
        }
        Role::Payments => {
            let app = Router::new()
                .route("/charges", post(services::payments_charge))
                .with_state(Arc::clone(&knobs))
                .merge(health.routes())
                .layer(ServerLayer::new());
            serve_http(&graceful, listener.expect("a listener"), app).await?;
        }
        Role::Checkout {
            payments,
            inventory,
            queue,
        } => {
            let payments = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(wayfinder_middleware::balance::ReqwestBalance::new(
                    balancer("payments", &payments)?,
                ))
                .with(ReqwestTracing::new())
                .build();
            let inventory =
                InventoryClient::new(balancer("inventory", &inventory)?.tonic_channel());
            let checkout = services::CheckoutService {
                knobs: Arc::clone(&knobs),
                tracer,
                payments,
                inventory,
                queue,
            };
            let routes = tonic::service::Routes::new(health.tonic_service())
                .add_service(CheckoutServer::new(checkout));
            serve_grpc(&graceful, listener.expect("a listener"), routes).await?;
        }
        Role::Inventory => {
            let inventory = services::InventoryService {
                knobs: Arc::clone(&knobs),
            };
            let routes = tonic::service::Routes::new(health.tonic_service())
                .add_service(InventoryServer::new(inventory));
            serve_grpc(&graceful, listener.expect("a listener"), routes).await?;
        }
        Role::Notifications(events) => {
            let (stopped_tx, stopped) = watch::channel(false);
            let signal = graceful.signal();
            tokio::spawn(async move {
                signal.await;
                let _ = stopped_tx.send(true);
            });
            services::notifications(Arc::clone(&knobs), tracer, events, stopped).await;
        }
    }
    telemetry
        .shutdown()
        .await
        .with_context(|| format!("{}: flushing spans", knobs.instance))?;
    Ok(())
}

async fn serve_http(
    graceful: &GracefulShutdown,
    listener: tokio::net::TcpListener,
    app: Router,
) -> anyhow::Result<()> {
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful.signal());
    finish(
        graceful
            .run(server)
            .await
            .map(|r| r.map_err(anyhow::Error::from)),
    )
}

async fn serve_grpc(
    graceful: &GracefulShutdown,
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
) -> anyhow::Result<()> {
    let server = tonic::transport::Server::builder()
        .layer(ServerLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            graceful.signal(),
        );
    finish(graceful.run(server).await)
}

/// A server's outcome: what it returned, or that its requests outlived the deadline.
fn finish<E: Into<anyhow::Error>>(
    outcome: Result<Result<(), E>, wayfinder_middleware::health::DeadlinePassed>,
) -> anyhow::Result<()> {
    match outcome {
        Ok(result) => result.map_err(Into::into),
        Err(passed) => anyhow::bail!("requests still running {:?} after the stop", passed.0),
    }
}
