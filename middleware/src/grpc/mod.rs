//! gRPC over the same layers: a request whose `content-type` is `application/grpc…` gets an RPC
//! span instead of an HTTP one.
//!
//! The span is named `{package.Service}/{Method}` and carries `rpc.system = "grpc"`,
//! `rpc.service`, `rpc.method` and `rpc.grpc.status_code`. The status is read from the response
//! headers (a "trailers-only" response, which is how tonic answers most errors) or else from
//! the trailers at the end of the body, so the span ends when the body does. Every status but
//! `OK` marks the span as an error, on the server as on the client.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wayfinder_middleware::{ClientLayer, ServerLayer};
//!
//! // Server: one layer on the tonic server traces every RPC.
//! let server = tonic::transport::Server::builder().layer(ServerLayer::new());
//!
//! // Client: wrap the channel; the generated client takes any tower service. Create it with
//! // `with_origin(channel, endpoint.uri().clone())` so that requests carry the server's
//! // address (`server.address`, `server.port`): tonic sends bare paths down the stack.
//! let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
//! let channel = tower::ServiceBuilder::new()
//!     .layer(ClientLayer::new())
//!     .service(endpoint.connect_lazy());
//! # let _ = (server, channel);
//! # Ok(()) }
//! ```

use http::HeaderMap;

/// Whether a request or response is gRPC, by its `content-type`: `application/grpc`, or with a
/// `+proto`-style suffix or parameters. gRPC-Web (`application/grpc-web…`) carries its status
/// in the body, not in trailers, and is traced as HTTP.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// Which RPC semantic conventions the spans follow, as `OTEL_SEMCONV_STABILITY_OPT_IN` says
/// (the migration rule of the RPC conventions, v1.44.0): `rpc` for the stable ones only,
/// `rpc/dup` for both (it wins over `rpc`), else the experimental ones emitted so far.
///
/// | | experimental (default) | stable (`rpc`) |
/// |---|---|---|
/// | system | `rpc.system = "grpc"` | `rpc.system.name = "grpc"` |
/// | method | `rpc.service`, `rpc.method` (`Get`) | `rpc.method` (`shop.v1.Orders/Get`, or `_OTHER` with `rpc.method_original`) |
/// | status | `rpc.grpc.status_code` (an integer) | `rpc.response.status_code` (`NOT_FOUND`) |
/// | name of an unknown method | `gRPC` | `grpc` |
///
/// With `rpc/dup` both sets are written; `rpc.method` then has its stable (fully qualified)
/// value, the one key the two sets share.
///
/// ```
/// use wayfinder_middleware::grpc::RpcConventions;
///
/// assert_eq!(RpcConventions::from_opt_in("http,rpc"), RpcConventions::Stable);
/// assert_eq!(RpcConventions::from_opt_in("rpc, rpc/dup"), RpcConventions::Both);
/// assert_eq!(RpcConventions::from_opt_in("http"), RpcConventions::Experimental);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcConventions {
    /// The experimental conventions (v1.37.0 and before).
    #[default]
    Experimental,
    /// The stable conventions only.
    Stable,
    /// Both.
    Both,
}

impl RpcConventions {
    /// From the value of `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list).
    pub fn from_opt_in(value: &str) -> Self {
        let tokens: Vec<String> = value
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        if tokens.iter().any(|t| t == "rpc/dup") {
            RpcConventions::Both
        } else if tokens.iter().any(|t| t == "rpc") {
            RpcConventions::Stable
        } else {
            RpcConventions::Experimental
        }
    }

    /// From the process's `OTEL_SEMCONV_STABILITY_OPT_IN`, read once.
    pub fn from_env() -> Self {
        static FROM_ENV: std::sync::OnceLock<RpcConventions> = std::sync::OnceLock::new();
        *FROM_ENV.get_or_init(|| {
            std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN")
                .map(|v| RpcConventions::from_opt_in(&v))
                .unwrap_or_default()
        })
    }

    /// Whether the experimental attributes are written.
    pub(crate) fn experimental(self) -> bool {
        self != RpcConventions::Stable
    }

    /// Whether the stable attributes are written.
    pub(crate) fn stable(self) -> bool {
        self != RpcConventions::Experimental
    }
}

/// The gRPC codes a server counts as its own errors (the gRPC semantic conventions): the
/// others (`NOT_FOUND`, `INVALID_ARGUMENT`, …) are the caller's business on the server; on the
/// client every code but `OK` is an error.
pub(crate) fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The span name of a gRPC path: `{package.Service}/{Method}`, or for a path that is not one
/// (a caller must not be able to mint span names) `gRPC` (experimental) or `grpc` (stable:
/// `{rpc.system.name}`).
pub(crate) fn span_name(path: &str, conventions: RpcConventions) -> String {
    match service_and_method(path) {
        Some((service, method)) => format!("{service}/{method}"),
        None => unknown_method_name(conventions).to_owned(),
    }
}

/// The span name of a method the server does not know.
pub(crate) fn unknown_method_name(conventions: RpcConventions) -> &'static str {
    if conventions.stable() { "grpc" } else { "gRPC" }
}

/// `(rpc.service, rpc.method)` of a gRPC path `/{package.Service}/{Method}`.
pub(crate) fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The `grpc-status` in `headers` (response headers or trailers).
pub(crate) fn status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

/// The name of a gRPC status code, used as `error.type`.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

/// The gRPC status a response with HTTP status `status` and no `grpc-status` stands for, as
/// the gRPC HTTP/2 protocol maps it.
pub(crate) fn status_from_http(status: http::StatusCode) -> i32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let cases = [
            (
                "/shop.v1.Orders/Get",
                Some(("shop.v1.Orders", "Get")),
                "package.Service/Method",
            ),
            ("/Orders/Get", Some(("Orders", "Get")), "no package"),
            ("/shop.v1.Orders/", None, "empty method"),
            ("//Get", None, "empty service"),
            ("/a/b/c", None, "too many segments"),
            ("shop.Orders/Get", None, "no leading slash"),
        ];
        for (path, expected, reason) in cases {
            assert_eq!(service_and_method(path), expected, "{reason}");
        }
    }

    #[test]
    fn content_types() {
        let cases = [
            ("application/grpc", true, "plain"),
            ("application/grpc+proto", true, "with a codec suffix"),
            ("application/grpc;charset=utf-8", true, "with a parameter"),
            (
                "application/grpc-web",
                false,
                "gRPC-Web keeps its status in the body",
            ),
            (
                "application/grpc-web+proto",
                false,
                "gRPC-Web with a suffix",
            ),
            ("application/json", false, "not gRPC"),
        ];
        for (value, expected, reason) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().expect("a value"));
            assert_eq!(is_grpc(&headers), expected, "{reason}");
        }
        let old = RpcConventions::Experimental;
        assert_eq!(span_name("/shop.Orders/Get", old), "shop.Orders/Get");
        assert_eq!(span_name("/nope", RpcConventions::Stable), "grpc");
        assert_eq!(
            span_name("/anything/the/caller/likes", old),
            "gRPC",
            "no minted names"
        );
    }

    #[test]
    fn statuses() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None, "absent");
        headers.insert("grpc-status", "5".parse().expect("value"));
        assert_eq!(status(&headers), Some(5));
        headers.insert("grpc-status", "x".parse().expect("value"));
        assert_eq!(status(&headers), None, "garbage is not a status");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "_OTHER");
    }
}
