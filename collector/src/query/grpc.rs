//! The query gRPC API: `wayfinder.v1.Weights` (`Get`, `Watch`) over the weights engine's
//! published snapshots.
//!
//! Every watcher reads the same snapshot of each version (one computation per update); a
//! watcher's stream only turns that snapshot into its message when the service's version moved
//! past the last one it sent, or, without a change, every half TTL.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use wayfinder_api::grpc;
use wayfinder_api::grpc::weights_server::{Weights, WeightsServer};

use tokio_util::sync::CancellationToken;

use crate::weights::WeightsEngine;

/// The `Weights` service over `engine`, ready to add to a tonic server; `stop` ends every
/// `Watch` stream (so that a graceful shutdown does not wait for watchers).
pub fn weights_server(
    engine: Arc<WeightsEngine>,
    stop: CancellationToken,
) -> WeightsServer<WeightsService> {
    WeightsServer::new(WeightsService { engine, stop })
}

/// Implements `wayfinder.v1.Weights`.
#[derive(Debug, Clone)]
pub struct WeightsService {
    engine: Arc<WeightsEngine>,
    stop: CancellationToken,
}

/// The message form of one service's weights.
pub fn to_message(weights: &wayfinder_api::weights::ServiceWeights) -> grpc::ServiceWeights {
    grpc::ServiceWeights {
        service: weights.service.clone(),
        version: weights.version,
        generated_at: weights.generated_at.clone(),
        ttl_ms: weights.ttl_ms,
        endpoints: weights
            .endpoints
            .iter()
            .map(|e| grpc::Endpoint {
                instance_id: e.instance_id.clone(),
                address: e.address.clone().unwrap_or_default(),
                weight: e.weight,
                health: e.health.clone(),
                latency_ms: Some(grpc::Latency {
                    p50: e.latency_ms.p50,
                    p90: e.latency_ms.p90,
                    p99: e.latency_ms.p99,
                    ewma: e.latency_ms.ewma,
                }),
                error_rate: e.error_rate,
                requests_per_sec: e.requests_per_sec,
                reason: e.reason.clone(),
            })
            .collect(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<grpc::ServiceWeights, Status>> + Send>>;

#[tonic::async_trait]
impl Weights for WeightsService {
    async fn get(
        &self,
        request: Request<grpc::GetWeightsRequest>,
    ) -> Result<Response<grpc::ServiceWeights>, Status> {
        let service = request.into_inner().service;
        match self.engine.get(&service) {
            Some(weights) => Ok(Response::new(to_message(&weights))),
            None => Err(Status::not_found(format!(
                "no instances of service {service} are known"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<grpc::WatchWeightsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let grpc::WatchWeightsRequest {
            service,
            after_version,
        } = request.into_inner();
        if service.is_empty() {
            return Err(Status::invalid_argument("service is empty"));
        }
        let updates = self.engine.subscribe();
        let stop = self.stop.clone();
        // Without a change, the current weights again every half TTL (with a fresh
        // `generated_at`), so that a watcher never holds weights past their TTL.
        let refresh = self.engine.config().ttl / 2;
        // The current snapshot first (`first`), then one message per newer version.
        let stream = futures::stream::unfold(
            (updates, after_version, true),
            move |(mut updates, mut last, mut first)| {
                let service = service.clone();
                let stop = stop.clone();
                async move {
                    loop {
                        let mut resend = false;
                        if !first {
                            tokio::select! {
                                changed = updates.changed() => {
                                    if changed.is_err() {
                                        return None;
                                    }
                                }
                                () = tokio::time::sleep(refresh) => resend = true,
                                () = stop.cancelled() => return None, // the collector is stopping
                            }
                        }
                        first = false;
                        let current = updates.borrow_and_update().services.get(&service).cloned();
                        if let Some(weights) = current
                            && (weights.version > last || (resend && weights.version == last))
                        {
                            last = weights.version;
                            return Some((Ok(to_message(&weights)), (updates, last, false)));
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
