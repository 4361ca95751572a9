//! A tonic service traced by `wayfinder-middleware`: it reserves stock for the `orders`
//! example and asks `orders` for the price over HTTP (reqwest with the tracing middleware).
//! See `orders.rs` for how to run both against `wayfinder serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use reqwest_middleware::ClientWithMiddleware;
use tonic::{Request, Response, Status};
use wayfinder_middleware::health::{GracefulShutdown, HealthReporter};
use wayfinder_middleware::{ReqwestTracing, ServerLayer, Telemetry};

/// The generated gRPC code of `proto/inventory.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    include!("proto/inventory.v1.rs");
}

use proto::inventory_server::{Inventory, InventoryServer};
use proto::{ReserveReply, ReserveRequest};

/// The stock, and a traced HTTP client for the orders service's prices.
pub struct Stock {
    units: Mutex<HashMap<String, u32>>,
    orders_url: String,
    http: ClientWithMiddleware,
}

impl Stock {
    /// Ten apples and three pears; prices from `orders_url`.
    pub fn new(orders_url: impl Into<String>) -> Self {
        let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(ReqwestTracing::new())
            .build();
        Stock {
            units: Mutex::new(HashMap::from([
                ("apple".to_owned(), 10),
                ("pear".to_owned(), 3),
            ])),
            orders_url: orders_url.into(),
            http,
        }
    }
}

#[tonic::async_trait]
impl Inventory for Arc<Stock> {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveReply>, Status> {
        let ReserveRequest { sku, quantity } = request.into_inner();
        tracing::info!(%sku, quantity, "reserving");
        if quantity == 0 {
            return Err(Status::invalid_argument("quantity must be at least 1"));
        }
        let remaining = {
            let mut units = self.units.lock();
            let Some(available) = units.get_mut(&sku) else {
                return Err(Status::not_found(format!("no such sku: {sku}")));
            };
            if *available < quantity {
                return Err(Status::resource_exhausted(format!(
                    "only {available} {sku} left"
                )));
            }
            *available -= quantity;
            *available
        };
        let url = format!("{}/prices/{sku}", self.orders_url);
        let price: serde_json::Value = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status().map_err(Into::into))
            .map_err(|error| Status::unavailable(format!("price lookup: {error}")))?
            .json()
            .await
            .map_err(|error| Status::internal(format!("price lookup: {error}")))?;
        Ok(Response::new(ReserveReply {
            remaining,
            unit_price_cents: price["unit_price_cents"].as_u64().unwrap_or_default(),
        }))
    }
}

/// The inventory gRPC service, to be served behind `ServerLayer`.
pub fn service(stock: Arc<Stock>) -> InventoryServer<Arc<Stock>> {
    InventoryServer::new(stock)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::from_env()?.service_name_or("inventory").init()?;
    let addr: SocketAddr = std::env::var("INVENTORY_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".to_owned())
        .parse()?;
    let orders = std::env::var("ORDERS_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".to_owned());
    tracing::info!(%addr, "inventory listening");
    // Registered under the tracer's name and instance id; the gRPC health service follows the
    // same state; on SIGTERM or Ctrl-C it sends `down`, drains 5 s, then stops.
    let health = HealthReporter::for_telemetry(&telemetry)
        .address(addr.to_string())
        .start()?;
    let shutdown = GracefulShutdown::new().health(health.clone());
    let server = tonic::transport::Server::builder()
        .layer(ServerLayer::new())
        .add_service(health.tonic_service())
        .add_service(service(Arc::new(Stock::new(orders))))
        .serve_with_shutdown(addr, shutdown.signal());
    if let Ok(result) = shutdown.run(server).await {
        result?;
    }
    telemetry.shutdown().await?;
    Ok(())
}
