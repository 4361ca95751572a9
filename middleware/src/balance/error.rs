//! The balancer's errors.

/// Why a balanced call, or the balancer itself, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// No endpoint is known for the service: no seed, and nothing from the collector.
    #[error("no endpoint of service {service} is known")]
    NoEndpoints {
        /// The logical service.
        service: String,
    },
    /// The call's deadline passed (its attempts and backoff included).
    #[error("the call's deadline of {0:?} passed")]
    DeadlineExceeded(std::time::Duration),
    /// The request body could not be read.
    #[error("reading the request body failed: {0}")]
    Body(#[source] crate::BoxError),
    /// An invalid setting.
    #[error("invalid balancer setting: {0}")]
    Config(String),
}
