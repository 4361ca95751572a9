//! The balancer for reqwest, as a `reqwest-middleware` middleware.

use std::sync::Arc;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next, Result};
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::Balancer;
use super::policy::ResendPolicy;
use super::retry::{self, Verdict};
use crate::http::Attempt;

/// A [`reqwest_middleware::Middleware`] that sends every request of its client to a chosen
/// endpoint of the balancer's service (the URL's host and port are replaced, whatever they
/// name: build one client per service), with the attempt timeout (to the response head), the
/// call's deadline and safe retries. Put it before [`ReqwestTracing`](crate::ReqwestTracing) so
/// that every attempt is its own CLIENT span.
///
/// A request is retried only when reqwest can copy it (`Request::try_clone`: not a streaming
/// body) and its body is at most `max_replay_bytes`.
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use wayfinder_middleware::ReqwestTracing;
/// use wayfinder_middleware::balance::{Balancer, ReqwestBalance};
///
/// let balancer = Balancer::builder("payments").seed(["127.0.0.1:8081"]).build().unwrap();
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(ReqwestBalance::new(balancer))
///     .with(ReqwestTracing::new())
///     .build();
/// // client.get("http://payments/charges").send().await …
/// # let _ = client;
/// ```
#[derive(Clone, Debug)]
pub struct ReqwestBalance {
    balancer: Balancer,
}

impl ReqwestBalance {
    /// Balances with `balancer`.
    pub fn new(balancer: Balancer) -> Self {
        ReqwestBalance { balancer }
    }
}

#[async_trait::async_trait]
impl Middleware for ReqwestBalance {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let shared = &self.balancer.shared;
        let config = &shared.config;
        let start = Instant::now();
        let limit = request
            .timeout()
            .map_or(config.deadline, |t| (*t).min(config.deadline));
        let deadline = start + limit;
        let idempotent = retry::is_idempotent(
            request.method(),
            request.url().path(),
            request.headers(),
            false,
            &[],
        );
        let small = request
            .body()
            .map(|b| {
                b.as_bytes()
                    .is_some_and(|bytes| bytes.len() <= config.max_replay_bytes)
            })
            .unwrap_or(true);
        let replayable = small && request.try_clone().is_some();
        shared.budget.deposit();
        let policy = ResendPolicy::new(self.balancer.clone(), idempotent, false, deadline);

        let mut original = Some(request);
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut resend_count = 0u32;
        loop {
            let picked = self.balancer.pick(&tried).map_err(Error::middleware)?;
            let endpoint = picked.endpoint;
            let template = original.as_ref().expect("kept until the last attempt");
            let mut attempt = match template.try_clone() {
                Some(copy) if replayable => copy,
                _ => original.take().expect("sent once"),
            };
            let url = attempt.url_mut();
            url.set_host(Some(endpoint.authority.host()))
                .map_err(Error::middleware)?;
            let _ = url.set_port(endpoint.authority.port_u16());
            let attempt_deadline = deadline.min(Instant::now() + config.attempt_timeout);
            extensions.insert(Attempt {
                endpoint: endpoint.address.clone(),
                reason: picked.reason,
                resend_count,
                deadline: attempt_deadline,
            });

            let in_flight = endpoint.start();
            let sent = Instant::now();
            // To the response head: reqwest's own timeout would also cover the body.
            let result =
                tokio::time::timeout_at(attempt_deadline, next.clone().run(attempt, extensions))
                    .await
                    .unwrap_or_else(|elapsed| Err(Error::middleware(elapsed)));
            drop(in_flight);
            let verdict = match &result {
                Ok(response) => {
                    retry::response_verdict(response.status(), response.headers(), false)
                }
                Err(Error::Reqwest(error)) if error.is_connect() => Verdict::RetryAlways,
                Err(_) => Verdict::RetryIfIdempotent,
            };
            endpoint.record(sent, verdict.failed(), config, fastrand::f64());
            extensions.remove::<Attempt>();

            if !replayable || original.is_none() {
                return result;
            }
            let headers = result.as_ref().ok().map(Response::headers);
            let Some(wait) = policy.resend_after(resend_count + 1, verdict, headers) else {
                return result;
            };
            tokio::time::sleep(wait).await;
            tried.push(endpoint.address.clone());
            resend_count += 1;
        }
    }
}
