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

/// The span name of a gRPC path: `{package.Service}/{Method}`, or `gRPC` for a path that is
/// not one (a caller must not be able to mint span names).
pub(crate) fn span_name(path: &str) -> String {
    match service_and_method(path) {
        Some((service, method)) => format!("{service}/{method}"),
        None => "gRPC".to_owned(),
    }
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
        assert_eq!(span_name("/shop.Orders/Get"), "shop.Orders/Get");
        assert_eq!(
            span_name("/anything/the/caller/likes"),
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
