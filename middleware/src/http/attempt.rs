//! What the balancer tells the client layers about one attempt, as a request extension: where
//! it was routed, why, which resend it is, and its deadline. [`ClientLayer`](crate::ClientLayer)
//! and [`ReqwestTracing`](crate::ReqwestTracing) put it on the attempt's CLIENT span and enforce
//! the deadline (to the response head), so that an attempt that runs out of time is recorded as
//! `timeout`.

use std::sync::Arc;

use opentelemetry::KeyValue;
use tokio::time::Instant;

/// One attempt of a balanced call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// The endpoint (`host:port`) it was sent to.
    pub endpoint: Arc<str>,
    /// How the endpoint was chosen: `weights v12`, `peak-ewma: weights stale`, `static seed`.
    pub reason: Arc<str>,
    /// 0 for the first attempt, n for the n-th retry (`http.request.resend_count`).
    pub resend_count: u32,
    /// When the attempt must have its response head.
    pub deadline: Instant,
}

impl Attempt {
    /// The span attributes: `wayfinder.balancer.endpoint`, `wayfinder.balancer.reason` and,
    /// for a retry, `http.request.resend_count` (the semantic conventions set it only on
    /// resends).
    pub(crate) fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new(
            "wayfinder.balancer.endpoint",
            self.endpoint.to_string(),
        ));
        attributes.push(KeyValue::new(
            "wayfinder.balancer.reason",
            self.reason.to_string(),
        ));
        if self.resend_count > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(self.resend_count),
            ));
        }
    }
}
