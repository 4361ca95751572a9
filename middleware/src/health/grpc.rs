//! The standard gRPC health service (`grpc.health.v1.Health`, from `tonic-health`) reflecting
//! the reporter's state, so that gRPC probes, Kubernetes and the collector agree.

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthService, HealthServer};

use super::{Health, Status};

impl Health {
    /// A `grpc.health.v1.Health` service for a tonic server: the overall status (service `""`)
    /// is `SERVING` while the instance is [`ready`](Health::ready), `NOT_SERVING` when it is
    /// critical or leaving; `Watch` streams see each change.
    pub fn tonic_service(&self) -> HealthServer<impl HealthService> {
        let (reporter, server) = tonic_health::server::health_reporter();
        let mut status = self.subscribe();
        tokio::spawn(async move {
            loop {
                let serving = match *status.borrow_and_update() {
                    Status::Passing | Status::Warning => ServingStatus::Serving,
                    Status::Critical | Status::Down => ServingStatus::NotServing,
                };
                reporter.set_service_status("", serving).await;
                if status.changed().await.is_err() {
                    // The reporter is gone: nothing will change any more.
                    reporter
                        .set_service_status("", ServingStatus::NotServing)
                        .await;
                    return;
                }
            }
        });
        server
    }
}
