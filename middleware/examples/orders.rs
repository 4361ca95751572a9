//! An axum service traced by `wayfinder-middleware`: it takes orders over HTTP and reserves
//! stock from the `inventory` example over gRPC; `inventory` calls back for prices.
//!
//! ```text
//! cargo run -p wayfinder-collector --bin wayfinder -- serve          # the collector
//! OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//!   cargo run -p wayfinder-middleware --example inventory           # gRPC on 127.0.0.1:50051
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
//!   cargo run -p wayfinder-middleware --example orders              # HTTP on 127.0.0.1:3000
//! curl -X POST 'http://127.0.0.1:3000/orders/apple?quantity=2'
//! ```

use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use wayfinder_middleware::health::{GracefulShutdown, HealthReporter};
use wayfinder_middleware::http::ClientService;
use wayfinder_middleware::{ClientLayer, ServerLayer, Telemetry};

/// The generated gRPC code of `proto/inventory.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    include!("proto/inventory.v1.rs");
}

use proto::ReserveRequest;
use proto::inventory_client::InventoryClient;

/// The inventory client: a tonic channel behind the tracing client layer.
type Inventory = InventoryClient<ClientService<Channel>>;

/// Unit prices in cents.
const PRICES: &[(&str, u64)] = &[("apple", 120), ("pear", 95)];

/// The orders service's routes, traced; `inventory_url` is the inventory service's address.
pub fn router(inventory_url: &str) -> Result<Router, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(inventory_url.to_owned())?;
    let origin = endpoint.uri().clone();
    let channel = tower::ServiceBuilder::new()
        .layer(ClientLayer::new())
        .service(endpoint.connect_lazy());
    Ok(Router::new()
        .route("/orders/{sku}", post(order))
        .route("/prices/{sku}", get(price))
        .route("/healthz", get(|| async { "ok" }))
        // With the origin, requests carry the server's address for `server.address`/`port`.
        .with_state(InventoryClient::with_origin(channel, origin))
        .layer(ServerLayer::new()))
}

#[derive(serde::Deserialize)]
struct OrderQuery {
    quantity: u32,
}

async fn order(
    State(mut inventory): State<Inventory>,
    Path(sku): Path<String>,
    Query(query): Query<OrderQuery>,
) -> Result<Json<Value>, (StatusCode, String)> {
    tracing::info!(%sku, quantity = query.quantity, "placing an order");
    let request = ReserveRequest {
        sku: sku.clone(),
        quantity: query.quantity,
    };
    match inventory.reserve(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Ok(Json(json!({
                "sku": sku,
                "remaining": reply.remaining,
                "total_cents": reply.unit_price_cents * u64::from(query.quantity),
            })))
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "reservation failed");
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err((code, status.message().to_owned()))
        }
    }
}

async fn price(Path(sku): Path<String>) -> Result<Json<Value>, StatusCode> {
    PRICES
        .iter()
        .find(|(name, _)| *name == sku)
        .map(|(_, cents)| Json(json!({ "unit_price_cents": cents })))
        .ok_or(StatusCode::NOT_FOUND)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::from_env()?.service_name_or("orders").init()?;
    let addr: SocketAddr = std::env::var("ORDERS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let inventory =
        std::env::var("INVENTORY_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "orders listening");
    // Registered under the tracer's name and instance id, at the address it serves on; on
    // SIGTERM or Ctrl-C it sends `down`, drains 5 s, then stops.
    let health = HealthReporter::for_telemetry(&telemetry)
        .address(addr.to_string())
        .start()?;
    let shutdown = GracefulShutdown::new().health(health.clone());
    let app = router(&inventory)?.merge(health.routes());
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.signal());
    if let Ok(result) = shutdown.run(server).await {
        result?;
    }
    telemetry.shutdown().await?;
    Ok(())
}
