//! When an attempt failed, and when a failed attempt may be sent again.
//!
//! - A request may be retried after it may have reached the server only when it is idempotent:
//!   an idempotent HTTP method (GET, HEAD, PUT, DELETE, OPTIONS, TRACE, RFC 9110 §9.2.2), a
//!   gRPC method the user listed, or any request with an `Idempotency-Key` header.
//! - Any request may be retried after a connection error: it never left the client.
//! - Retried outcomes: connection errors, timeouts, resets, HTTP 502/503/504 and gRPC
//!   `UNAVAILABLE` (the codes gRPC's retry design A6 and Envoy's `retry_on: 5xx,reset,
//!   connect-failure` cover). Other failures count against the endpoint but are not retried.
//! - Retries wait a full-jitter backoff, at least what `Retry-After` (delta-seconds or an
//!   HTTP date) or gRPC's `grpc-retry-pushback-ms` asks for, and never past the call's deadline;
//!   each needs a token from the retry budget (tower's `TpsBudget`).

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use super::config::BalanceConfig;

use crate::grpc;

/// The header that makes any request retryable (IETF `draft-ietf-httpapi-idempotency-key`).
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a request may be sent again after it may have reached the server.
pub(crate) fn is_idempotent(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    grpc: bool,
    grpc_methods: &[String],
) -> bool {
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return true;
    }
    if grpc {
        return grpc_methods.iter().any(|m| m == path);
    }
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// What an attempt's outcome allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It worked (as far as balancing goes: a 4xx is the caller's business).
    Success,
    /// It failed and is not retried.
    Failed,
    /// It failed in a way a retry may fix, if the request is idempotent.
    RetryIfIdempotent,
    /// The request never left the client: any request may be retried.
    RetryAlways,
}

impl Verdict {
    /// Whether it counts as a failure of the endpoint.
    pub(crate) fn failed(self) -> bool {
        self != Verdict::Success
    }

    /// Whether the request may be retried after it.
    pub(crate) fn allows_retry(self, idempotent: bool) -> bool {
        match self {
            Verdict::RetryAlways => true,
            Verdict::RetryIfIdempotent => idempotent,
            Verdict::Success | Verdict::Failed => false,
        }
    }
}

/// The verdict on a response head.
pub(crate) fn response_verdict(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Verdict {
    if grpc {
        let code = grpc::status(headers).unwrap_or(if status == StatusCode::OK {
            0
        } else {
            grpc::status_from_http(status)
        });
        return match code {
            14 => Verdict::RetryIfIdempotent,
            // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, DATA_LOSS: the server failed.
            2 | 4 | 13 | 15 => Verdict::Failed,
            _ => Verdict::Success,
        };
    }
    match status.as_u16() {
        502..=504 => Verdict::RetryIfIdempotent,
        500..=599 => Verdict::Failed,
        _ => Verdict::Success,
    }
}

/// The verdict on an error of the inner client.
pub(crate) fn error_verdict(error: &(dyn StdError + 'static)) -> Verdict {
    if is_connect_error(error) {
        Verdict::RetryAlways
    } else {
        Verdict::RetryIfIdempotent
    }
}

/// Whether the chain holds a failure to connect: the request was never sent.
pub(crate) fn is_connect_error(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        #[cfg(feature = "hyper-client")]
        if let Some(hyper) = error.downcast_ref::<hyper_util::client::legacy::Error>()
            && hyper.is_connect()
        {
            return true;
        }
        // tonic wraps every failure to connect (refused, timed out, unreachable) in this.
        #[cfg(feature = "tonic")]
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(reqwest) = error.downcast_ref::<reqwest::Error>()
            && reqwest.is_connect()
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// How long the server asked the client to wait before trying again: `Retry-After`
/// (delta-seconds or an HTTP date, RFC 9110 §10.2.3) or gRPC's `grpc-retry-pushback-ms`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The backoff before retry `n` (n ≥ 1): a uniform draw (`unit` in `[0, 1)`) in
/// `[0, min(max, base × 2ⁿ⁻¹)]`: the exponential caps from backon, full jitter under them.
pub(crate) fn backoff(n: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let cap = backon::ExponentialBuilder::new()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(n.saturating_sub(1) as usize)
        .unwrap_or(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// How long to wait before retry `n` (n ≥ 1) after an answer with `headers` (none after an
/// error): the full-jitter backoff, at least what the server asked for; `None` when there is
/// no time left for the wait and an attempt before `deadline`, or no token in `budget`.
pub(crate) fn wait_before_retry(
    config: &BalanceConfig,
    n: u32,
    headers: Option<&HeaderMap>,
    deadline: Instant,
    budget: &TpsBudget,
) -> Option<Duration> {
    let mut wait = backoff(n, config.backoff_base, config.backoff_max, fastrand::f64());
    if let Some(asked) = headers.and_then(|h| retry_after(h, SystemTime::now())) {
        wait = wait.max(asked);
    }
    (Instant::now() + wait < deadline && budget.withdraw()).then_some(wait)
}

/// The `grpc-timeout` of a request (gRPC over HTTP/2: an integer and a unit, `H M S m u n`).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `duration` as a `grpc-timeout` value (milliseconds, rounded up, at most 8 digits).
pub(crate) fn grpc_timeout_value(duration: Duration) -> http::HeaderValue {
    let ms = duration.as_micros().div_ceil(1000).min(99_999_999);
    http::HeaderValue::from_str(&format!("{ms}m")).expect("digits and a unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_by_method_grpc_list_and_key() {
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        let listed = vec!["/shop.Inventory/Get".to_owned()];
        let rows: [(&Method, &str, &HeaderMap, bool, bool, &str); 9] = [
            (&Method::GET, "/", &none, false, true, "GET is idempotent"),
            (&Method::HEAD, "/", &none, false, true, "HEAD is idempotent"),
            (&Method::PUT, "/", &none, false, true, "PUT is idempotent"),
            (
                &Method::DELETE,
                "/",
                &none,
                false,
                true,
                "DELETE is idempotent",
            ),
            (&Method::POST, "/", &none, false, false, "POST is not"),
            (&Method::PATCH, "/", &none, false, false, "PATCH is not"),
            (
                &Method::POST,
                "/",
                &keyed,
                false,
                true,
                "an Idempotency-Key makes a POST safe",
            ),
            (
                &Method::POST,
                "/shop.Inventory/Get",
                &none,
                true,
                true,
                "a listed gRPC method",
            ),
            (
                &Method::POST,
                "/shop.Inventory/Reserve",
                &none,
                true,
                false,
                "an unlisted gRPC method",
            ),
        ];
        for (method, path, headers, grpc, expected, reason) in rows {
            assert_eq!(
                is_idempotent(method, path, headers, grpc, &listed),
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn verdicts_on_responses() {
        let none = HeaderMap::new();
        let grpc_status = |code: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", code.parse().unwrap());
            h
        };
        let rows = [
            (200, none.clone(), false, Verdict::Success, "200 is fine"),
            (
                404,
                none.clone(),
                false,
                Verdict::Success,
                "a 4xx is the caller's business",
            ),
            (
                500,
                none.clone(),
                false,
                Verdict::Failed,
                "500 fails, not retried",
            ),
            (
                502,
                none.clone(),
                false,
                Verdict::RetryIfIdempotent,
                "502 is retried",
            ),
            (
                503,
                none.clone(),
                false,
                Verdict::RetryIfIdempotent,
                "503 is retried",
            ),
            (
                504,
                none.clone(),
                false,
                Verdict::RetryIfIdempotent,
                "504 is retried",
            ),
            (200, grpc_status("0"), true, Verdict::Success, "gRPC OK"),
            (
                200,
                none.clone(),
                true,
                Verdict::Success,
                "status in trailers: the head is fine",
            ),
            (
                200,
                grpc_status("14"),
                true,
                Verdict::RetryIfIdempotent,
                "UNAVAILABLE is retried",
            ),
            (
                200,
                grpc_status("13"),
                true,
                Verdict::Failed,
                "INTERNAL fails",
            ),
            (
                200,
                grpc_status("5"),
                true,
                Verdict::Success,
                "NOT_FOUND is the caller's business",
            ),
            (
                503,
                none.clone(),
                true,
                Verdict::RetryIfIdempotent,
                "HTTP 503 on gRPC is UNAVAILABLE",
            ),
        ];
        for (status, headers, grpc, expected, reason) in rows {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                response_verdict(status, &headers, grpc),
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn connect_errors_are_found_in_the_chain() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            error_verdict(&refused),
            Verdict::RetryAlways,
            "refused: never sent"
        );
        let reset = Wrapper(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(
            error_verdict(&reset),
            Verdict::RetryIfIdempotent,
            "reset: it may have reached the server"
        );
    }

    #[test]
    fn retry_after_and_pushback() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 21:00:00 GMT").unwrap();
        let rows = [
            (
                "retry-after",
                "3",
                Some(Duration::from_secs(3)),
                "delta-seconds",
            ),
            (
                "retry-after",
                "Tue, 01 Dec 2026 21:00:07 GMT",
                Some(Duration::from_secs(7)),
                "an HTTP date",
            ),
            (
                "retry-after",
                "Tue, 01 Dec 2026 20:00:00 GMT",
                Some(Duration::ZERO),
                "a date in the past: at once",
            ),
            ("retry-after", "soon", None, "not a delay"),
            (
                "grpc-retry-pushback-ms",
                "250",
                Some(Duration::from_millis(250)),
                "gRPC pushback",
            ),
        ];
        for (name, value, expected, reason) in rows {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            assert_eq!(retry_after(&headers, now), expected, "{reason}");
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_doubling_caps() {
        let base = Duration::from_millis(25);
        let max = Duration::from_secs(1);
        let rows = [
            (1, 25, "the first retry waits up to the base"),
            (2, 50, "the second up to twice"),
            (4, 200, "doubling"),
            (10, 1000, "capped"),
        ];
        for (n, cap_ms, reason) in rows {
            let cap = backoff(n, base, max, 1.0).as_secs_f64() * 1000.0;
            assert_eq!(cap.round() as u64, cap_ms, "{reason}");
            assert_eq!(
                backoff(n, base, max, 0.0),
                Duration::ZERO,
                "{reason}: from 0"
            );
        }
    }

    #[test]
    fn grpc_timeouts_parse_and_print() {
        let rows = [
            ("100m", Some(Duration::from_millis(100)), "milliseconds"),
            ("2S", Some(Duration::from_secs(2)), "seconds"),
            ("1H", Some(Duration::from_secs(3600)), "hours"),
            ("5u", Some(Duration::from_micros(5)), "microseconds"),
            ("123456789m", None, "more than 8 digits"),
            ("10x", None, "no such unit"),
            ("m", None, "no digits"),
        ];
        for (value, expected, reason) in rows {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&headers), expected, "{reason}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_micros(1500)), "2m");
    }
}
