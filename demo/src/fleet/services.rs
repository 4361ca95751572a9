//! What each service of the fleet does when called: real handlers on real servers, calling the
//! next service through the balancer, with a database call and a queue in the middle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use reqwest_middleware::ClientWithMiddleware;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use wayfinder_middleware::Propagation;

use super::Knobs;
use crate::proto::checkout_server::Checkout;
use crate::proto::inventory_client::InventoryClient;
use crate::proto::inventory_server::Inventory;
use crate::proto::{PlaceOrderReply, PlaceOrderRequest, ReserveReply, ReserveRequest};
use wayfinder_middleware::balance::TonicChannel;

/// A message on the order-events queue: the order, and the producer's trace context.
#[derive(Debug)]
pub(crate) struct OrderEvent {
    pub(crate) order_id: String,
    pub(crate) headers: http::HeaderMap,
}

/// The queue's name, as `messaging.destination.name`.
pub(crate) const QUEUE: &str = "order-events";

/// Some work: `base` ± 50%, plus the instance's extra delay; `Err` when the instance fails
/// this call.
async fn work(knobs: &Knobs, base_ms: u64) -> Result<(), String> {
    knobs.served.fetch_add(1, Ordering::Relaxed);
    let jitter = fastrand::u64(base_ms / 2..=base_ms + base_ms / 2);
    let extra = knobs.delay_ms.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(jitter + extra)).await;
    let fail = knobs.fail_permille.load(Ordering::Relaxed);
    if fail > 0 && fastrand::u32(0..1000) < fail {
        return Err(format!("{} failed this call (demo fault)", knobs.instance));
    }
    Ok(())
}

/// `frontend`: `POST /orders` places an order through `checkout`.
#[derive(Clone)]
pub(crate) struct Frontend {
    pub(crate) knobs: Arc<Knobs>,
    pub(crate) checkout: crate::proto::checkout_client::CheckoutClient<TonicChannel>,
}

pub(crate) async fn frontend_order(
    State(frontend): State<Frontend>,
    Json(order): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    work(&frontend.knobs, 1)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let sku = order["sku"].as_str().unwrap_or("apple").to_owned();
    let request = PlaceOrderRequest {
        order_id: format!("o-{:016x}", fastrand::u64(..)),
        sku,
        quantity: 1,
    };
    let reply = frontend
        .checkout
        .clone()
        .place_order(request)
        .await
        .map_err(|status| (StatusCode::BAD_GATEWAY, status.message().to_owned()))?
        .into_inner();
    Ok(Json(serde_json::json!({
        "order_id": reply.order_id,
        "checkout": reply.instance,
    })))
}

/// `checkout`: a database read, a charge at `payments`, a reservation at `inventory`, and an
/// event on the queue.
pub(crate) struct CheckoutService {
    pub(crate) knobs: Arc<Knobs>,
    pub(crate) tracer: SdkTracer,
    pub(crate) payments: ClientWithMiddleware,
    pub(crate) inventory: InventoryClient<TonicChannel>,
    pub(crate) queue: mpsc::Sender<OrderEvent>,
}

impl CheckoutService {
    /// A CLIENT span of the database (no server side: the collector draws a database node).
    async fn query_database(&self, order_id: &str) {
        let mut span = self.tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name("SELECT shop.orders")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("db.namespace", "shop"),
                    KeyValue::new("db.operation.name", "SELECT"),
                    KeyValue::new("db.collection.name", "orders"),
                    KeyValue::new("server.address", "orders-db.local"),
                    KeyValue::new("server.port", 5432_i64),
                    KeyValue::new("demo.order_id", order_id.to_owned()),
                ]),
            &Context::current(),
        );
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=3))).await;
        span.end();
    }

    /// A PRODUCER span, its context in the message for the consumer.
    fn publish(&self, order_id: &str) {
        let span = self.tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name(format!("send {QUEUE}"))
                .with_kind(SpanKind::Producer)
                .with_attributes([
                    KeyValue::new("messaging.system", "rabbitmq"),
                    KeyValue::new("messaging.destination.name", QUEUE),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.operation.name", "publish"),
                ]),
            &Context::current(),
        );
        let cx = Context::current().with_span(span);
        let mut headers = http::HeaderMap::new();
        Propagation::default().inject_into(&cx, &mut headers);
        let event = OrderEvent {
            order_id: order_id.to_owned(),
            headers,
        };
        if self.queue.try_send(event).is_err() {
            cx.span().set_status(opentelemetry::trace::Status::error(
                "the queue is full or closed",
            ));
            cx.span()
                .set_attribute(KeyValue::new("error.type", "queue_full"));
        }
        cx.span().end();
    }
}

#[tonic::async_trait]
impl Checkout for CheckoutService {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderReply>, Status> {
        let order = request.into_inner();
        self.query_database(&order.order_id).await;
        work(&self.knobs, 3).await.map_err(Status::unavailable)?;
        let charge = self
            .payments
            .post("http://payments/charges")
            .json(&serde_json::json!({ "order_id": order.order_id, "cents": 1299 }))
            .send()
            .await
            .map_err(|e| Status::unavailable(format!("payments: {e}")))?;
        if !charge.status().is_success() {
            return Err(Status::unavailable(format!(
                "payments answered {}",
                charge.status()
            )));
        }
        self.inventory
            .clone()
            .reserve(ReserveRequest {
                sku: order.sku.clone(),
                quantity: order.quantity,
            })
            .await?;
        self.publish(&order.order_id);
        Ok(Response::new(PlaceOrderReply {
            order_id: order.order_id,
            instance: self.knobs.instance.clone(),
        }))
    }
}

/// `payments`: `POST /charges`.
pub(crate) async fn payments_charge(
    State(knobs): State<Arc<Knobs>>,
    Json(_charge): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    work(&knobs, 4)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(serde_json::json!({ "charged": true })))
}

/// `inventory`: stock that never runs out.
pub(crate) struct InventoryService {
    pub(crate) knobs: Arc<Knobs>,
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn reserve(
        &self,
        _request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveReply>, Status> {
        work(&self.knobs, 2).await.map_err(Status::unavailable)?;
        Ok(Response::new(ReserveReply { remaining: 1000 }))
    }
}

/// `notifications`: consumes order events, one CONSUMER span each, child of its producer.
pub(crate) async fn notifications(
    knobs: Arc<Knobs>,
    tracer: SdkTracer,
    mut queue: mpsc::Receiver<OrderEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let propagation = Propagation::default();
    loop {
        let event = tokio::select! {
            event = queue.recv() => event,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(event) = event else { return };
        let parent = propagation.extract(&event.headers);
        let mut span = tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name(format!("process {QUEUE}"))
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("messaging.system", "rabbitmq"),
                    KeyValue::new("messaging.destination.name", QUEUE),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("demo.order_id", event.order_id),
                ]),
            &parent,
        );
        if let Err(error) = work(&knobs, 1).await {
            span.set_status(opentelemetry::trace::Status::error(error));
        }
        span.end();
    }
}
