//! The query gRPC API: `wayfinder.v1.Weights` (`Get`, `Watch`) over the weights engine's
//! published snapshots.
//!
//! Every watcher reads the same snapshot of each version (one computation per update); a
//! watcher's stream only turns that snapshot into its message when the service's version moved
//! past the last one it sent, or, without a change, a half TTL after its last message.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use wayfinder_api::grpc;
use wayfinder_api::grpc::weights_server::{Weights, WeightsServer};

use super::watchers::{WatcherPermit, Watchers};
use crate::graph::weights::{WeightsEngine, WeightsSnapshot};

/// The `Weights` service over `engine`, ready to add to a tonic server; `stop` ends every
/// `Watch` stream (so that a graceful shutdown does not wait for watchers).
pub(crate) fn weights_server(
    engine: Arc<WeightsEngine>,
    watchers: Watchers,
    stop: CancellationToken,
) -> WeightsServer<WeightsService> {
    WeightsServer::new(WeightsService {
        engine,
        watchers,
        stop,
    })
}

/// Implements `wayfinder.v1.Weights`.
#[derive(Debug, Clone)]
pub(crate) struct WeightsService {
    engine: Arc<WeightsEngine>,
    watchers: Watchers,
    stop: CancellationToken,
}

/// The message form of one service's weights.
pub(crate) fn to_message(weights: &wayfinder_api::weights::ServiceWeights) -> grpc::ServiceWeights {
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

/// What a `Watch` stream keeps between its messages.
struct WatchState {
    /// The watcher's place under `--max-watchers`, held while the stream lives.
    _place: WatcherPermit,
    updates: watch::Receiver<Arc<WeightsSnapshot>>,
    /// The last version sent (at first, the watcher's `after_version`).
    last: u64,
    /// Whether the current snapshot is still to be looked at.
    first: bool,
    /// When the current weights are sent again if no newer version came: a half TTL after the
    /// last message (or the last try).
    resend_at: Instant,
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
        let Some(place) = self.watchers.try_watch() else {
            return Err(<Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::Unavailable,
                self.watchers.refusal(),
                tonic_types::ErrorDetails::with_retry_info(Some(crate::ingest::grpc::RETRY_AFTER)),
            ));
        };
        let updates = self.engine.subscribe();
        let stop = self.stop.clone();
        // Without a change, the current weights again every half TTL (with a fresh
        // `generated_at`), so that a watcher never holds weights past their TTL. A deadline, not
        // a timer per wake-up: updates that change nothing come every update period and would
        // otherwise restart the wait each time, so that it never ends.
        let refresh = self.engine.config().ttl / 2;
        let state = WatchState {
            _place: place,
            updates,
            last: after_version,
            first: true,
            resend_at: Instant::now() + refresh,
        };
        // The current snapshot first (`first`), then one message per newer version.
        let stream = futures::stream::unfold(state, move |mut state| {
            let service = service.clone();
            let stop = stop.clone();
            async move {
                loop {
                    let mut resend = false;
                    if !state.first {
                        tokio::select! {
                            changed = state.updates.changed() => {
                                if changed.is_err() {
                                    return None;
                                }
                            }
                            () = tokio::time::sleep_until(state.resend_at) => {
                                resend = true;
                                // Also when nothing is sent (the service is gone, or the
                                // watcher is ahead of it): the next try is a half TTL away.
                                state.resend_at = Instant::now() + refresh;
                            }
                            () = stop.cancelled() => return None, // the collector is stopping
                        }
                    }
                    state.first = false;
                    let current = state
                        .updates
                        .borrow_and_update()
                        .services
                        .get(&service)
                        .cloned();
                    if let Some(weights) = current
                        && (weights.version > state.last
                            || (resend && weights.version == state.last))
                    {
                        state.last = weights.version;
                        state.resend_at = Instant::now() + refresh;
                        return Some((Ok(to_message(&weights)), state));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, SystemTime};

    use futures::StreamExt as _;

    use super::*;
    use crate::graph::registry::{Instance, InstanceStatus};
    use crate::graph::weights::WeightsConfig;
    use crate::testing::registered_instance;
    use crate::util::clock::{Clock, rfc3339};

    const TTL: Duration = Duration::from_secs(60);

    fn epoch() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn cart(ids: &[&str]) -> Vec<Instance> {
        let service: Arc<str> = Arc::from("cart");
        ids.iter()
            .map(|id| registered_instance(&service, id, Some(format!("{id}:8080"))))
            .collect()
    }

    /// An engine on a clock that follows tokio's (paused) one, with cart's weights published
    /// once, and a `Weights` service over it.
    fn service(instances: &[Instance]) -> (Arc<WeightsEngine>, WeightsService) {
        let config = WeightsConfig {
            ttl: TTL,
            ..WeightsConfig::default()
        };
        let engine = Arc::new(WeightsEngine::new(config, Clock::starting_at(epoch())));
        engine.update(instances);
        let service = WeightsService {
            engine: engine.clone(),
            watchers: Watchers::new(1000, Default::default()),
            stop: CancellationToken::new(),
        };
        (engine, service)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn watchers_beyond_the_cap_are_refused_retryably_until_one_leaves() {
        let (_engine, mut service) = service(&cart(&["cart-1"]));
        let refused = prometheus_client::metrics::counter::Counter::default();
        service.watchers = Watchers::new(1, refused.clone());
        let first = watch(&service, 0).await;
        let request = Request::new(grpc::WatchWeightsRequest {
            service: "cart".into(),
            after_version: 0,
        });
        let status = service
            .watch(request)
            .await
            .err()
            .expect("the second watcher is refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            tonic_types::StatusExt::get_details_retry_info(&status).is_some(),
            "with RetryInfo"
        );
        assert!(status.message().contains("--max-watchers"), "{status:?}");
        assert_eq!(refused.get(), 1);
        assert_eq!(service.watchers.active(), 1);
        drop(first);
        assert_eq!(
            service.watchers.active(),
            0,
            "a dropped stream leaves its place"
        );
        let _again = watch(&service, 0).await;
    }

    async fn watch(service: &WeightsService, after_version: u64) -> WatchStream {
        let request = Request::new(grpc::WatchWeightsRequest {
            service: "cart".into(),
            after_version,
        });
        service
            .watch(request)
            .await
            .expect("watch opens")
            .into_inner()
    }

    /// Counts the wake-ups of the task that polled.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `stream` once: its message if one is ready (on the paused clock, everything due
    /// has happened by then). When none is, the stream must not have asked to be polled again
    /// at once: a stream looping on a past deadline is only stopped by tokio's cooperative
    /// budget, which wakes the task again as soon as it yields (a busy loop).
    async fn ready(stream: &mut WatchStream) -> Option<grpc::ServiceWeights> {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        match stream.poll_next_unpin(&mut Context::from_waker(&waker)) {
            Poll::Ready(message) => Some(message.expect("the stream goes on").expect("a message")),
            Poll::Pending => {
                // The budget's wake-up is deferred until the task yields.
                tokio::task::yield_now().await;
                assert_eq!(
                    wakes.0.load(Ordering::Relaxed),
                    0,
                    "nothing to send: the stream waits for an update or its deadline, it does \
                     not spin"
                );
                None
            }
        }
    }

    /// One second passes, then an update; the message the stream has ready, if any.
    async fn second(
        engine: &WeightsEngine,
        instances: &[Instance],
        stream: &mut WatchStream,
    ) -> Option<grpc::ServiceWeights> {
        tokio::time::advance(Duration::from_secs(1)).await;
        engine.update(instances);
        ready(stream).await
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_weights_are_resent_every_half_ttl_despite_updates() {
        let mut instances = cart(&["cart-1", "cart-2"]);
        let (engine, service) = service(&instances);
        let mut stream = watch(&service, 0).await;
        let first = stream.next().await.unwrap().unwrap();
        let version = first.version;
        let started = Instant::now();

        // Updates every second that change nothing (both at the mean weight): the first
        // resend comes a half TTL after the first message, not before, with the current
        // `generated_at`; the next one a half TTL after that.
        let mut resent = Vec::new();
        for _ in 0..TTL.as_secs() {
            if let Some(message) = second(&engine, &instances, &mut stream).await {
                resent.push((started.elapsed(), message));
            }
            assert_eq!(
                engine.get("cart").unwrap().version,
                version,
                "the premise: the weights do not change"
            );
        }
        let at: Vec<Duration> = resent.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, [TTL / 2, TTL], "resent at ttl/2 and ttl, and only then");
        for (at, message) in &resent {
            assert_eq!(message.version, version, "the same version");
            assert_eq!(
                message.generated_at,
                rfc3339(epoch() + *at),
                "the current snapshot, computed by the update just made"
            );
            assert_eq!(message.endpoints.len(), 2);
        }

        // A real change is sent at once, and the next resend is a half TTL after it.
        for _ in 0..10 {
            assert!(second(&engine, &instances, &mut stream).await.is_none());
        }
        instances[1].status = InstanceStatus::Critical;
        let changed = second(&engine, &instances, &mut stream)
            .await
            .expect("a change is sent with the update that made it");
        assert!(changed.version > version);
        let changed_at = Instant::now();
        assert!(
            changed.endpoints.iter().any(|e| e.health == "critical"),
            "{changed:?}"
        );
        let mut next = None;
        while next.is_none() {
            next = second(&engine, &instances, &mut stream).await;
        }
        assert_eq!(
            changed_at.elapsed(),
            TTL / 2,
            "the change restarted the wait"
        );
        assert_eq!(next.unwrap().version, changed.version);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_ahead_of_the_service_waits_without_spinning() {
        let instances = cart(&["cart-1"]);
        let (engine, service) = service(&instances);
        let mut stream = watch(&service, u64::MAX).await;
        // The half TTL passes with nothing to send (the version is not newer, nor the same):
        // the stream tries again a half TTL later instead of looping on a past deadline.
        for _ in 0..TTL.as_secs() + 5 {
            assert!(second(&engine, &instances, &mut stream).await.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_stream() {
        let instances = cart(&["cart-1"]);
        let (_engine, service) = service(&instances);
        let mut stream = watch(&service, 0).await;
        assert!(stream.next().await.is_some());
        service.stop.cancel();
        assert!(stream.next().await.is_none());
    }
}
