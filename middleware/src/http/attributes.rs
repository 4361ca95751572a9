//! Values of the OpenTelemetry HTTP and RPC semantic conventions, read from a request.

use std::net::SocketAddr;

use http::{Method, Request, Uri, Version};
use opentelemetry::KeyValue;

/// `http.request.method` and, for a method outside the well-known set,
/// `http.request.method_original`: the conventions ask for `_OTHER` so that a client sending
/// arbitrary methods cannot blow up the attribute's cardinality.
pub(crate) fn method(method: &Method) -> (&'static str, Option<&str>) {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return ("_OTHER", Some(method.as_str())),
    };
    (known, None)
}

/// Pushes `http.request.method` (and `http.request.method_original` for a non-standard
/// method); returns the method's attribute value for the span name.
pub(crate) fn push_method(attributes: &mut Vec<KeyValue>, request_method: &Method) -> &'static str {
    let (known, original) = method(request_method);
    attributes.push(KeyValue::new("http.request.method", known));
    if let Some(original) = original {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            original.to_owned(),
        ));
    }
    known
}

/// The span name of an HTTP span: `{method} {route}`, `{method}` without a route, and `HTTP`
/// in place of a method outside the well-known set.
pub(crate) fn span_name(method: &'static str, route: Option<&str>) -> String {
    match route {
        Some(route) => format!("{} {route}", route_less_name(method)),
        None => route_less_name(method).to_owned(),
    }
}

/// The span name of an HTTP span without a route: the method, or `HTTP`.
pub(crate) fn route_less_name(method: &'static str) -> &'static str {
    if method == "_OTHER" { "HTTP" } else { method }
}

/// `network.protocol.version`.
pub(crate) fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("0.9"),
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// `server.address` and `server.port` as the client addressed them: the URI's authority
/// (HTTP/2 `:authority`, absolute-form requests) or else the `Host` header. The port defaults
/// to the scheme's when the authority has none.
pub(crate) fn server_address<B>(request: &Request<B>) -> (Option<&str>, Option<u16>) {
    let raw = match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request
            .headers()
            .get(http::header::HOST)
            .and_then(|value| value.to_str().ok()),
    };
    let Some((raw, authority)) =
        raw.and_then(|raw| Some((raw, raw.parse::<http::uri::Authority>().ok()?)))
    else {
        return (None, None);
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, host)| host);
    let default_port = if scheme(request.uri()) == "https" {
        443
    } else {
        80
    };
    (
        Some(host_part(raw)),
        Some(authority.port_u16().unwrap_or(default_port)),
    )
}

/// The host of a `host[:port]` value (IPv6 literals keep their brackets, as in a URI).
fn host_part(raw: &str) -> &str {
    if raw.starts_with('[') {
        return raw.split_inclusive(']').next().unwrap_or(raw);
    }
    raw.rsplit_once(':').map_or(raw, |(host, _)| host)
}

/// `url.scheme` as a static string when it is one of the usual two.
pub(crate) fn scheme_static(uri: &Uri) -> opentelemetry::Value {
    match scheme(uri) {
        "http" => "http".into(),
        "https" => "https".into(),
        other => other.to_owned().into(),
    }
}

/// The attributes HTTP and gRPC server spans share: `server.*`, `client.address`,
/// `network.peer.*`, `network.protocol.version`, `user_agent.original`. With
/// `trust_forwarded`, `client.address` comes from the proxy's `Forwarded` or
/// `X-Forwarded-For`; otherwise, and always for `network.peer.*`, from the socket.
pub(crate) fn push_common<B>(
    attributes: &mut Vec<KeyValue>,
    request: &Request<B>,
    trust_forwarded: bool,
) {
    push_server(attributes, request);
    let peer = peer_address(request);
    let forwarded = trust_forwarded.then(|| forwarded_for(request)).flatten();
    if let Some(client) = forwarded.or_else(|| peer.map(|p| p.ip().to_string())) {
        attributes.push(KeyValue::new("client.address", client));
    }
    if let Some(peer) = peer {
        attributes.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
    if let Some(version) = protocol_version(request.version()) {
        attributes.push(KeyValue::new("network.protocol.version", version));
    }
    if let Some(agent) = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
}

/// `server.address` and `server.port`.
pub(crate) fn push_server<B>(attributes: &mut Vec<KeyValue>, request: &Request<B>) {
    let (host, port) = server_address(request);
    if let Some(host) = host {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    if let Some(port) = port {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
}

/// Whether the called method is one the server knows, for the stable `rpc.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recognized {
    /// Known (a client's stub, or a server's configured list): the full name.
    Yes,
    /// Not in the server's configured list: `_OTHER` and `rpc.method_original`.
    No,
    /// Not known yet: the server's answer tells (UNIMPLEMENTED or not), so the stable
    /// `rpc.method` is written when the call completes.
    Later,
}

/// The RPC attributes of a gRPC path, by `conventions`: `rpc.system`, `rpc.service`,
/// `rpc.method` (experimental) and/or `rpc.system.name`, the fully qualified `rpc.method` (or
/// `_OTHER` and `rpc.method_original` for a path that is not a method, or a method not
/// recognized; nothing yet for [`Recognized::Later`]) (stable).
pub(crate) fn push_rpc(
    attributes: &mut Vec<KeyValue>,
    path: &str,
    conventions: crate::grpc::RpcConventions,
    recognized: Recognized,
) {
    let parsed = crate::grpc::service_and_method(path);
    if conventions.experimental() {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        if let Some((service, method)) = parsed
            && !conventions.stable()
        {
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
            attributes.push(KeyValue::new("rpc.method", method.to_owned()));
        } else if let Some((service, _)) = parsed {
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
        }
    }
    if conventions.stable() {
        attributes.push(KeyValue::new("rpc.system.name", "grpc"));
        match (parsed, recognized) {
            (Some(_), Recognized::Later) => {}
            (Some((service, method)), Recognized::Yes) => {
                attributes.push(KeyValue::new("rpc.method", format!("{service}/{method}")));
            }
            (Some((service, method)), Recognized::No) => {
                attributes.push(KeyValue::new("rpc.method", "_OTHER"));
                attributes.push(KeyValue::new(
                    "rpc.method_original",
                    format!("{service}/{method}"),
                ));
            }
            (None, _) => {
                attributes.push(KeyValue::new("rpc.method", "_OTHER"));
                attributes.push(KeyValue::new("rpc.method_original", path.to_owned()));
            }
        }
    }
}

/// `url.scheme`: the request URI's, or `http` (a server behind TLS termination sees plain
/// HTTP).
pub(crate) fn scheme(uri: &Uri) -> &str {
    uri.scheme_str().unwrap_or("http")
}

/// The original client as a trusted proxy says: the first `for=` of `Forwarded` (RFC 7239,
/// quotes, brackets and port removed), else the first address of `X-Forwarded-For`.
pub(crate) fn forwarded_for<B>(request: &Request<B>) -> Option<String> {
    let headers = request.headers();
    if let Some(value) = forwarded_param(headers, "for") {
        let value = value.trim_matches('"');
        let host = if let Some(rest) = value.strip_prefix('[') {
            rest.split(']').next().unwrap_or(rest)
        } else {
            value.rsplit_once(':').map_or(value, |(host, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) && !host.contains(':') {
                    host
                } else {
                    value
                }
            })
        };
        if !host.is_empty() && !host.starts_with('_') && host != "unknown" {
            return Some(host.to_owned());
        }
    }
    headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// The scheme a trusted proxy says the client used: `Forwarded: proto=`, else
/// `X-Forwarded-Proto`.
pub(crate) fn forwarded_proto<B>(request: &Request<B>) -> Option<String> {
    let headers = request.headers();
    forwarded_param(headers, "proto")
        .map(|p| p.trim_matches('"').to_ascii_lowercase())
        .or_else(|| {
            headers
                .get("x-forwarded-proto")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(',').next())
                .map(|value| value.trim().to_ascii_lowercase())
        })
        .filter(|proto| proto == "http" || proto == "https")
}

/// The first value of `name` in the first element of `Forwarded`.
fn forwarded_param<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    let first = headers
        .get(http::header::FORWARDED)?
        .to_str()
        .ok()?
        .split(',')
        .next()?;
    first.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// The peer of the connection as axum (`ConnectInfo<SocketAddr>`) or tonic (`TcpConnectInfo`)
/// recorded it, or a plain `SocketAddr` extension (what a hyper server can insert itself).
pub(crate) fn peer_address<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    #[cfg(feature = "tonic")]
    if let Some(address) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(address);
    }
    extensions.get::<SocketAddr>().copied()
}

/// The route template axum matched (`/users/{id}`), when axum routed the request.
pub(crate) fn matched_route(extensions: &http::Extensions) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    let _ = extensions;
    None
}

/// Query parameters whose values the semantic conventions ask to redact (signed-URL secrets).
const SECRET_PARAMETERS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// `query` with the values of [`SECRET_PARAMETERS`] replaced by `REDACTED`.
pub(crate) fn redact_query(query: &str) -> std::borrow::Cow<'_, str> {
    let secret = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        SECRET_PARAMETERS.contains(&name)
    };
    if !query.split('&').any(secret) {
        return query.into();
    }
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(pair) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
        .into()
}

/// `url.full` of an outgoing request, without user name, password or signed-URL secrets.
pub(crate) fn url_full(uri: &Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((_, host)) => ("REDACTED:REDACTED@", host),
        None => ("", authority),
    };
    let query = uri
        .query()
        .map(|query| format!("?{}", redact_query(query)))
        .unwrap_or_default();
    if host.is_empty() {
        return format!("{}{query}", uri.path());
    }
    format!("{}://{credentials}{host}{}{query}", scheme(uri), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_from_authority_or_host() {
        let cases = [
            (
                "http://api.local:8080/x",
                None,
                (Some("api.local"), Some(8080)),
                "absolute URI wins",
            ),
            (
                "/x",
                Some("shop.local:3000"),
                (Some("shop.local"), Some(3000)),
                "Host with port",
            ),
            (
                "/x",
                Some("shop.local"),
                (Some("shop.local"), Some(80)),
                "Host without port: scheme default",
            ),
            (
                "/x",
                Some("[::1]:9000"),
                (Some("[::1]"), Some(9000)),
                "IPv6 literal keeps brackets",
            ),
            (
                "https://secure.local/x",
                None,
                (Some("secure.local"), Some(443)),
                "https default port",
            ),
            ("/x", None, (None, None), "no authority, no Host"),
            (
                "/x",
                Some("bad host"),
                (None, None),
                "an unparsable Host is left out",
            ),
        ];
        for (uri, host, expected, reason) in cases {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header("host", host);
            }
            let request = builder.body(()).expect("test request");
            assert_eq!(server_address(&request), expected, "{reason}");
        }
    }

    #[test]
    fn methods_and_names() {
        let cases = [
            (
                Method::GET,
                Some("/users/{id}"),
                "GET /users/{id}",
                None,
                "route known",
            ),
            (
                Method::POST,
                None,
                "POST",
                None,
                "no route: the method alone",
            ),
            (
                Method::from_bytes(b"PURGE").expect("method"),
                Some("/x"),
                "HTTP /x",
                Some("PURGE"),
                "unknown methods become _OTHER, the span says HTTP",
            ),
        ];
        for (m, route, name, original, reason) in cases {
            let (known, orig) = method(&m);
            assert_eq!(span_name(known, route), name, "{reason}");
            assert_eq!(orig, original, "{reason}");
        }
    }

    #[test]
    fn url_full_redacts_credentials() {
        let uri: Uri = "http://user:secret@api.local:80/a?b=c"
            .parse()
            .expect("uri");
        assert_eq!(
            url_full(&uri),
            "http://REDACTED:REDACTED@api.local:80/a?b=c"
        );
        let uri: Uri = "http://api.local/a".parse().expect("uri");
        assert_eq!(url_full(&uri), "http://api.local/a");
    }

    #[test]
    fn the_peer_comes_from_the_servers_connection_info() {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let bare = || Request::new(());
        // (the request's extensions, the peer read, why)
        let mut axum = bare();
        axum.extensions_mut()
            .insert(axum::extract::ConnectInfo(at(1001)));
        let mut tonic = bare();
        tonic
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: Some(at(50051)),
                remote_addr: Some(at(1002)),
            });
        let mut plain = bare();
        plain.extensions_mut().insert(at(1003));
        let mut both = bare();
        both.extensions_mut()
            .insert(axum::extract::ConnectInfo(at(1004)));
        both.extensions_mut().insert(at(1005));
        let rows = [
            (axum, Some(at(1001)), "axum's ConnectInfo"),
            (
                tonic,
                Some(at(1002)),
                "tonic's TcpConnectInfo, the remote side",
            ),
            (
                plain,
                Some(at(1003)),
                "a SocketAddr a hyper server inserted",
            ),
            (
                both,
                Some(at(1004)),
                "axum's ConnectInfo before a plain SocketAddr",
            ),
            (bare(), None, "no connection info: no peer"),
        ];
        for (request, peer, reason) in rows {
            assert_eq!(peer_address(&request), peer, "{reason}");
        }
    }
}
