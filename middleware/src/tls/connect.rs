//! Connectors: TCP (with `TCP_NODELAY` and a connect timeout), then TLS by hyper-rustls with the
//! server name each connection must verify. The same connector serves hyper-util clients
//! (HTTP/1.1) and tonic channels (HTTP/2, ALPN `h2`).

#[cfg(feature = "tonic")]
use std::future::Future;
#[cfg(feature = "tonic")]
use std::pin::Pin;
#[cfg(feature = "tonic")]
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName as Name;

use super::Loaded;
use crate::BoxError;

/// The connector of [`Balancer::https_connector`](crate::Balancer::https_connector): TLS for
/// `https://` URIs (plain TCP for `http://`), for a hyper-util `Client`.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Which name the server's certificate must carry.
#[derive(Debug, Clone)]
pub(crate) enum ServerName {
    /// The host of the URL (a collector's name or address).
    Url,
    /// The endpoint's host when it is a name; else this one (the service's name), as endpoints
    /// registered by address have certificates for their service.
    EndpointOr(String),
}

impl ServerName {
    pub(crate) fn resolve(
        &self,
        fixed: Option<&str>,
        uri: &Uri,
    ) -> Result<Name<'static>, BoxError> {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = match (fixed, self) {
            (Some(fixed), _) => fixed,
            (None, ServerName::Url) => host,
            (None, ServerName::EndpointOr(service)) => {
                if host.parse::<std::net::IpAddr>().is_ok() {
                    service.as_str()
                } else {
                    host
                }
            }
        };
        Name::try_from(name.to_owned())
            .map_err(|e| format!("`{name}` cannot be a TLS server name: {e}").into())
    }
}

/// A connector that speaks TLS to `https://` URIs with `tls`, checking the name `rule` picks;
/// HTTP/2 only (for gRPC) or HTTP/1.1.
pub(crate) fn https_connector(
    tls: &Loaded,
    rule: ServerName,
    http2: bool,
    connect_timeout: Option<Duration>,
) -> HttpsConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    let fixed = tls.server_name.clone();
    let mut config = (*tls.config).clone();
    config.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .with_server_name_resolver(move |uri: &Uri| rule.resolve(fixed.as_deref(), uri));
    if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    }
}

#[cfg(feature = "tonic")]
/// A tonic channel to `url`: over TLS with `tls` when the URL is `https://`, else as tonic
/// connects by itself. `configure` sets the endpoint's timeouts. The channel connects lazily.
///
/// tonic is given the URL as `http://` with an `https://` origin, and the connector always
/// speaks TLS: tonic's own TLS (`tls-*` features, perhaps turned on elsewhere in a build)
/// would otherwise refuse an `https://` URL it has no configuration for.
pub(crate) fn grpc_channel(
    url: &str,
    tls: Option<&Loaded>,
    rule: ServerName,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<GrpcTarget, BoxError> {
    let Some(tls) = tls.filter(|_| super::is_https(url)) else {
        let endpoint = configure(tonic::transport::Endpoint::from_shared(url.to_owned())?);
        return Ok(GrpcTarget {
            endpoint,
            tls: None,
        });
    };
    let origin: Uri = url.parse()?;
    let plain = with_scheme(origin.clone(), http::uri::Scheme::HTTP)?;
    let endpoint = configure(tonic::transport::Endpoint::from(plain).origin(origin));
    Ok(GrpcTarget {
        endpoint,
        tls: Some(AlwaysTls(https_connector(tls, rule, true, None))),
    })
}

#[cfg(feature = "tonic")]
/// A tonic endpoint and, for TLS, its connector.
#[derive(Debug, Clone)]
pub(crate) struct GrpcTarget {
    endpoint: tonic::transport::Endpoint,
    tls: Option<AlwaysTls>,
}

#[cfg(feature = "tonic")]
impl GrpcTarget {
    /// A channel that connects on first use (inside a tokio runtime).
    pub(crate) fn connect_lazy(self) -> tonic::transport::Channel {
        match self.tls {
            Some(connector) => self.endpoint.connect_with_connector_lazy(connector),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// A channel connected now.
    pub(crate) async fn connect(
        self,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        match self.tls {
            Some(connector) => self.endpoint.connect_with_connector(connector).await,
            None => self.endpoint.connect().await,
        }
    }
}

#[cfg(feature = "tonic")]
/// hyper-rustls's connector, given every URI as `https://`.
#[derive(Debug, Clone)]
pub(crate) struct AlwaysTls(HttpsConnector);

#[cfg(feature = "tonic")]
impl tower::Service<Uri> for AlwaysTls {
    type Response = <HttpsConnector as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match with_scheme(uri, http::uri::Scheme::HTTPS) {
            Ok(uri) => Box::pin(self.0.call(uri)),
            Err(error) => Box::pin(std::future::ready(Err(error.into()))),
        }
    }
}

#[cfg(feature = "tonic")]
fn with_scheme(uri: Uri, scheme: http::uri::Scheme) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut parts = uri.into_parts();
    parts.scheme = Some(scheme);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts)
}
