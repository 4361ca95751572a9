//! Client-side load balancing that closes Wayfinder's loop: a service's outgoing calls to
//! another service go where the collector's weights say, corrected by what this client sees
//! itself, and a slow, failing or departing instance stops getting traffic within seconds.
//!
//! - [`Balancer`] holds the endpoint set of one logical service: from the collector's weights
//!   (the gRPC `Watch` stream, else the HTTP long-poll, reconnecting with backoff and full
//!   jitter), else a static seed. It chooses per request by weighted power of two choices
//!   ([`choose`](self#the-choice)), falls back to local Peak-EWMA when the weights are older
//!   than their TTL, ejects outliers (consecutive failures, failure rate) with a cap on the
//!   share ejected, and keeps a retry budget.
//! - [`BalanceLayer`] / [`Balance`] is the tower middleware: put it above the client (and above
//!   [`ClientLayer`](crate::ClientLayer), so that every attempt is its own CLIENT span). It
//!   rewrites each attempt's authority to the chosen endpoint, enforces the attempt timeout and
//!   the call's deadline, and retries only what is safe.
//! - [`ChannelPool`] is the inner service for tonic: one lazily connected `Channel` per
//!   endpoint; [`Balancer::tonic_channel`] builds the whole stack for a generated client.
//! - [`ReqwestBalance`] is the same for reqwest, as a `reqwest-middleware` middleware.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use wayfinder_middleware::ClientLayer;
//! use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let balancer = Balancer::builder("payments")
//!     .seed(["127.0.0.1:8081", "127.0.0.1:8082"])
//!     .collector_grpc("http://127.0.0.1:16685")
//!     .build()
//!     .unwrap();
//! let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
//! let payments = ServiceBuilder::new()
//!     .layer(BalanceLayer::new(balancer))
//!     .layer(ClientLayer::new())
//!     .service(client);
//! // Requests name the logical service; each attempt goes to a chosen instance.
//! let request = http::Request::get("http://payments/charges").body(Full::new(Bytes::new())).unwrap();
//! # let _ = (payments, request);
//! # }
//! ```
//!
//! `docs/balancing.md` gives the rule, every setting and what happens when the collector is
//! away, when the weights are stale and when most instances fail.
//!
//! # The choice
//! Two candidates are drawn in proportion to their share (the collector's weight × the local
//! slow-start ramp; the ramp alone when the weights are stale or absent) and the one with the
//! lower Peak-EWMA cost (`rtt × (in_flight + 1)`) is sent the request.

mod attempt;
mod balancer;
mod body;
mod choose;
mod config;
mod discovery;
mod endpoint;
mod error;
mod future;
mod layer;
mod load;
mod outlier;
mod policy;
#[cfg(feature = "tonic")]
mod pool;
#[cfg(feature = "reqwest")]
mod reqwest;
mod retry;

#[cfg(test)]
mod tests;

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;
use tower::Service;
use tower::retry::Retry;
use tower::retry::budget::Budget as _;

pub use balancer::{Balancer, BalancerBuilder, EndpointView, WeightSource};
pub use body::RequestBody;
pub use config::BalanceConfig;
pub use error::BalanceError;
pub use future::ResponseFuture;
pub use layer::BalanceLayer;
#[cfg(feature = "tonic")]
pub use pool::{ChannelPool, TonicChannel};
#[cfg(feature = "reqwest")]
pub use reqwest::ReqwestBalance;

use attempt::Attempts;
use policy::{ResendPolicy, Tried};

use crate::BoxError;
use crate::grpc;

/// Spreads the requests for one logical service over its endpoints (see the
/// [module](self)). `S` is the client that sends one attempt to the endpoint in its URI: a
/// hyper-util `Client` over [`RequestBody`], a [`ChannelPool`], possibly under a
/// [`ClientLayer`](crate::ClientLayer).
#[derive(Clone, Debug)]
pub struct Balance<S> {
    balancer: Balancer,
    inner: S,
}

impl<S> Balance<S> {
    /// Balances over `inner` with `balancer`.
    pub fn new(balancer: Balancer, inner: S) -> Self {
        Balance { balancer, inner }
    }

    /// The balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner client.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Balance<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ResBody>;

    /// Always ready: each attempt waits for its own clone of the inner client.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let config = &self.balancer.shared.config;
        let (mut parts, body) = request.into_parts();
        let grpc = grpc::is_grpc(&parts.headers);
        let caller_timeout = grpc.then(|| retry::grpc_timeout(&parts.headers)).flatten();
        let limit = caller_timeout.map_or(config.deadline, |t| t.min(config.deadline));
        let deadline = Instant::now() + limit;
        let idempotent = retry::is_idempotent(
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            grpc,
            &config.idempotent_grpc_methods,
        );
        let replay = (config.max_attempts > 1).then_some(config.max_replay_bytes);
        self.balancer.shared.budget.deposit();
        parts
            .extensions
            .insert(Tried::new(deadline, caller_timeout.is_some()));
        let policy = ResendPolicy::new(self.balancer.clone(), idempotent, grpc, deadline);
        let attempts = Attempts::new(self.balancer.clone(), self.inner.clone(), grpc);
        ResponseFuture::new(
            parts,
            body,
            Retry::new(policy, attempts),
            replay,
            deadline,
            limit,
            grpc,
        )
    }
}
