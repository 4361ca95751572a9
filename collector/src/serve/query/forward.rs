//! Asking another collector of the fleet for a trace: an HTTP/1.1 client to the owners' query
//! APIs (`https://` ones verified against `--kafka-query-ca` or the system's CAs, with rustls
//! and ring), the caller's token passed on, the answer passed back as it came.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::{HeaderName, Uri};
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::error::ApiError;

/// The mark of a lookup another collector sent on: answered here, never forwarded again.
pub(super) const FORWARDED: HeaderName = HeaderName::from_static("x-wayfinder-forwarded");

/// How long the owner has to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The client that asks the owners.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>);

impl Forwarder {
    /// A client of `http://` and `https://` owners; the latter's certificates must chain to
    /// the CA certificates (PEM) in `ca`, or without it to the system's. A file that cannot
    /// be read or holds no certificate is an error.
    pub(crate) fn new(ca: Option<&Path>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = HttpsConnectorBuilder::new();
        let builder = match ca {
            Some(path) => {
                let unreadable = |error: &dyn std::fmt::Display| {
                    format!(
                        "cannot read CA certificates from {}: {error}",
                        path.display()
                    )
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                    let cert = cert.map_err(|e| unreadable(&e))?;
                    roots.add(cert).map_err(|e| unreadable(&e))?;
                }
                if roots.is_empty() {
                    return Err(unreadable(&"no certificate in it"));
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(tls)
            }
            None => match builder.with_provider_and_native_roots(provider.clone()) {
                Ok(builder) => builder,
                // Plain http:// owners need none; https:// ones then cannot be verified.
                Err(error) => {
                    tracing::warn!(%error, "no system CA certificates: the other collectors' https:// query URLs cannot be verified (give --kafka-query-ca)");
                    let tls = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    HttpsConnectorBuilder::new().with_tls_config(tls)
                }
            },
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        Ok(Forwarder(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }
}

pub(super) async fn forward(
    forwarder: &Forwarder,
    base: &str,
    path: &str,
    headers: Vec<(HeaderName, http::HeaderValue)>,
) -> Response {
    let uri: Uri = match format!("{base}{path}").parse() {
        Ok(uri) => uri,
        Err(error) => {
            return ApiError::Internal(format!("the owner's URL {base} is not valid: {error}"))
                .into_response();
        }
    };
    let mut forwarded = http::Request::get(uri).header(FORWARDED, "1");
    for (name, value) in headers {
        forwarded = forwarded.header(name, value);
    }
    let forwarded = match forwarded.body(Empty::new()) {
        Ok(forwarded) => forwarded,
        Err(error) => return ApiError::Internal(error.to_string()).into_response(),
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, forwarder.0.request(forwarded)).await {
        Ok(Ok(answer)) => answer.map(Body::new).into_response(),
        Ok(Err(error)) => ApiError::Unavailable(format!(
            "the collector that owns this trace's partition ({base}) did not answer: {}; retry",
            with_sources(&error)
        ))
        .into_response(),
        Err(_) => ApiError::Unavailable(format!(
            "the collector that owns this trace's partition ({base}) did not answer within {FORWARD_TIMEOUT:?}; retry"
        ))
        .into_response(),
    }
}

/// An error with its causes (hyper says only "client error (Connect)"; the cause says why:
/// a refused connection, a certificate that does not verify).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_ca_that_cannot_be_used_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing.pem");
        // Each row: the file, what the error says, and why.
        let cases = [
            (missing, "missing.pem", "a file that is not there"),
            (empty, "no certificate in it", "a file with no certificate"),
        ];
        for (path, says, why) in cases {
            let error = Forwarder::new(Some(&path)).unwrap_err();
            assert!(error.contains(says), "{why}: {error}");
        }
        assert!(
            Forwarder::new(None).is_ok(),
            "without a file, the system's CAs (or none, with a warning)"
        );
    }
}
