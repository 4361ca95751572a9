//! Whether a balanced call sends its request again, in the shape of tower's
//! [`retry::Policy`](tower::retry::Policy): [`ResendPolicy`] judges each attempt's outcome,
//! and the request is sent again only when that is safe (an idempotent request, or one that
//! never reached the server), its body can be replayed, attempts and the call's deadline are
//! left, and the retry budget has a token. The endpoints already tried travel with the
//! request as a [`Tried`] extension, so that each attempt goes to another one.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

use super::Balancer;
use super::body::RequestBody;
use super::retry::{self, Verdict};
use crate::BoxError;

/// What the attempts of one call share, as a request extension: the call's deadline and the
/// endpoints tried so far (shared by the copies of the request that the attempts send).
#[derive(Clone, Debug)]
pub(crate) struct Tried {
    /// When the whole call must be done.
    pub(crate) deadline: Instant,
    /// Whether the caller set a gRPC deadline, which each attempt passes on, shortened.
    pub(crate) grpc_deadline: bool,
    endpoints: Arc<Mutex<Vec<Arc<str>>>>,
}

impl Tried {
    /// Nothing tried yet.
    pub(crate) fn new(deadline: Instant, grpc_deadline: bool) -> Self {
        Tried {
            deadline,
            grpc_deadline,
            endpoints: Arc::default(),
        }
    }

    /// The endpoints tried, oldest first.
    pub(crate) fn endpoints(&self) -> Vec<Arc<str>> {
        self.endpoints.lock().clone()
    }

    /// Notes that an attempt goes to `endpoint`; returns its resend count (0 for the first).
    pub(crate) fn push(&self, endpoint: Arc<str>) -> u32 {
        let mut endpoints = self.endpoints.lock();
        endpoints.push(endpoint);
        u32::try_from(endpoints.len() - 1).unwrap_or(u32::MAX)
    }

    /// Attempts sent so far.
    fn attempts(&self) -> u32 {
        u32::try_from(self.endpoints.lock().len()).unwrap_or(u32::MAX)
    }
}

/// Decides, after each attempt of one call, whether to send it again and after how long.
#[derive(Clone, Debug)]
pub(crate) struct ResendPolicy {
    balancer: Balancer,
    idempotent: bool,
    grpc: bool,
    deadline: Instant,
}

impl ResendPolicy {
    /// The policy of one call through `balancer`, due by `deadline`.
    pub(crate) fn new(balancer: Balancer, idempotent: bool, grpc: bool, deadline: Instant) -> Self {
        ResendPolicy {
            balancer,
            idempotent,
            grpc,
            deadline,
        }
    }

    /// How long to wait before sending again after `attempts` attempts, the last judged
    /// `verdict` (with the answer's `headers`, if it answered); `None` to keep its outcome.
    /// A retry takes a token from the budget; the caller has checked that the body replays.
    pub(crate) fn resend_after(
        &self,
        attempts: u32,
        verdict: Verdict,
        headers: Option<&HeaderMap>,
    ) -> Option<Duration> {
        let shared = &self.balancer.shared;
        if !verdict.allows_retry(self.idempotent) || attempts >= shared.config.max_attempts {
            return None;
        }
        retry::wait_before_retry(
            &shared.config,
            attempts,
            headers,
            self.deadline,
            &shared.budget,
        )
    }
}

impl<ResBody> tower::retry::Policy<Request<RequestBody>, Response<ResBody>, BoxError>
    for ResendPolicy
{
    type Future = Sleep;

    fn retry(
        &mut self,
        request: &mut Request<RequestBody>,
        result: &mut Result<Response<ResBody>, BoxError>,
    ) -> Option<Sleep> {
        let attempts = request.extensions().get::<Tried>()?.attempts();
        let (verdict, headers) = match result {
            Ok(response) => (
                retry::response_verdict(response.status(), response.headers(), self.grpc),
                Some(response.headers()),
            ),
            Err(error) => (retry::error_verdict(error.as_ref()), None),
        };
        let wait = self.resend_after(attempts, verdict, headers)?;
        Some(tokio::time::sleep(wait))
    }

    /// A copy while the body can be replayed (it was read whole); `None` for a streamed body,
    /// which is sent once.
    fn clone_request(&mut self, request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use tokio::time::Instant;
    use tower::retry::Policy as _;

    use super::*;

    fn policy(idempotent: bool) -> ResendPolicy {
        let balancer = Balancer::builder("cart")
            .seed(["127.0.0.1:1", "127.0.0.1:2"])
            .configure(|c| c.max_attempts = 3)
            .build()
            .expect("a valid balancer");
        ResendPolicy::new(
            balancer,
            idempotent,
            false,
            Instant::now() + Duration::from_secs(60),
        )
    }

    /// A request after `attempts` attempts, with a body held whole.
    fn request(attempts: usize) -> Request<RequestBody> {
        let tried = Tried::new(Instant::now() + Duration::from_secs(60), false);
        for n in 0..attempts {
            tried.push(format!("127.0.0.1:{n}").into());
        }
        let mut request = Request::new(RequestBody::full("order".into()));
        request.extensions_mut().insert(tried);
        request
    }

    #[tokio::test(start_paused = true)]
    async fn resends_only_what_is_safe_while_attempts_are_left() {
        let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        let reset: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        // Each row: idempotent, attempts made, the outcome, whether it is sent again, and why.
        type Outcome = Result<StatusCode, BoxError>;
        let cases: Vec<(bool, usize, Outcome, bool, &str)> = vec![
            (
                true,
                1,
                Ok(StatusCode::SERVICE_UNAVAILABLE),
                true,
                "a GET answered 503",
            ),
            (
                false,
                1,
                Ok(StatusCode::SERVICE_UNAVAILABLE),
                false,
                "a POST may have been applied",
            ),
            (false, 1, Err(refused), true, "a POST that never connected"),
            (false, 1, Err(reset), false, "a POST cut after it was sent"),
            (true, 1, Ok(StatusCode::OK), false, "it worked"),
            (
                true,
                1,
                Ok(StatusCode::NOT_FOUND),
                false,
                "a 4xx is the caller's business",
            ),
            (
                true,
                3,
                Ok(StatusCode::SERVICE_UNAVAILABLE),
                false,
                "max_attempts (3) reached",
            ),
        ];
        for (idempotent, attempts, outcome, resent, why) in cases {
            let mut policy = policy(idempotent);
            let mut request = request(attempts);
            let mut result = outcome.map(|status| {
                Response::builder()
                    .status(status)
                    .body(())
                    .expect("a response")
            });
            assert_eq!(
                policy.retry(&mut request, &mut result).is_some(),
                resent,
                "{why}"
            );
        }
    }

    #[test]
    fn a_copy_shares_the_tried_endpoints_and_a_streamed_body_is_not_copied() {
        let mut policy = policy(true);
        let request = request(1);
        let copy =
            tower::retry::Policy::<_, Response<()>, BoxError>::clone_request(&mut policy, &request)
                .expect("a body held whole");
        copy.extensions()
            .get::<Tried>()
            .expect("the call's state goes with the copy")
            .push("127.0.0.1:9".into());
        assert_eq!(
            request.extensions().get::<Tried>().unwrap().attempts(),
            2,
            "an attempt through the copy counts for the call"
        );
        let (parts, _) = request.into_parts();
        let streamed = Request::from_parts(
            parts,
            super::super::body::Buffered::once(http_body_util::Empty::<bytes::Bytes>::new()).next(),
        );
        assert!(
            tower::retry::Policy::<_, Response<()>, BoxError>::clone_request(
                &mut policy,
                &streamed
            )
            .is_none(),
            "a streamed body is sent once"
        );
    }
}
