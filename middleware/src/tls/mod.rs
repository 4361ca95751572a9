//! TLS for every connection the middleware makes: the OTLP exporter, the health reporter, the
//! balancer's discovery and the balanced endpoints themselves.
//!
//! [`ClientTls`] holds the settings the OpenTelemetry specification names: the CA that signs the
//! server (`OTEL_EXPORTER_OTLP_CERTIFICATE`; the system's roots when unset) and the client's own
//! certificate and key for mutual TLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`,
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY`). An `https://` URL turns it on; an `http://` URL never
//! uses it. Files are read when the component is built, so a missing or unreadable file is an
//! error at start, naming the file.
//!
//! The TLS stack is rustls with the `ring` provider, chosen where each client is built, and no
//! process-wide provider is needed or installed: the middleware's HTTP clients are hyper-util
//! clients over hyper-rustls (not reqwest, whose `rustls` feature brings aws-lc-rs and whose
//! `rustls-no-provider` makes every `reqwest::Client` of the build panic without a
//! process-wide provider), and its gRPC channels are tonic channels over the same connector.
//!
//! ```no_run
//! use wayfinder_middleware::Telemetry;
//! use wayfinder_middleware::tls::ClientTls;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ClientTls::new()
//!     .ca_file("/etc/wayfinder/ca.pem")
//!     .client_identity("/etc/wayfinder/client.pem", "/etc/wayfinder/client.key");
//! let _telemetry = Telemetry::from_env()?
//!     .endpoint("https://collector.internal:4318")
//!     .tls(tls)
//!     .init()?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod client;
mod connect;

pub(crate) use client::{ExportClient, HttpClient, LastError, describe};
pub use connect::HttpsConnector;
#[cfg(feature = "tonic")]
pub(crate) use connect::{GrpcTarget, grpc_channel};
pub(crate) use connect::{ServerName, https_connector};

/// What can be wrong with the TLS settings; each error names the file or setting at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read, or holds no usable PEM block.
    #[error("{what} `{path}`: {message}")]
    Read {
        /// Which file: "the CA certificate", "the client certificate", "the client key".
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("mutual TLS needs both a client certificate and its key; {0} is missing")]
    HalfIdentity(&'static str),
    /// No CA file was given and the system has no root certificates.
    #[error(
        "no root certificates: the system has none ({0}); give the collector's CA with OTEL_EXPORTER_OTLP_CERTIFICATE or ClientTls::ca_file"
    )]
    NoRoots(String),
    /// rustls refused the certificates or key.
    #[error("TLS settings: {0}")]
    Invalid(String),
}

/// TLS settings of a client: the roots that verify the server and, for mutual TLS, the
/// client's certificate and key, as PEM files.
///
/// ```
/// use wayfinder_middleware::tls::ClientTls;
///
/// let env = |name: &str| match name {
///     "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some("/etc/ca.pem".to_owned()),
///     "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE" => Some("/etc/traces-ca.pem".to_owned()),
///     _ => None,
/// };
/// // The signal's own variable wins over the generic one (the specification's precedence).
/// let traces = ClientTls::from_lookup(&env, Some("TRACES"));
/// assert_eq!(traces.ca(), Some(std::path::Path::new("/etc/traces-ca.pem")));
/// assert_eq!(ClientTls::from_lookup(&env, None).ca(), Some(std::path::Path::new("/etc/ca.pem")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    ca_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    server_name: Option<String>,
}

/// The variables [`ClientTls::from_env`] reads, each also in its signal's form
/// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, …), which wins over the generic one.
pub const TLS_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
];

impl ClientTls {
    /// The system's root certificates, no client certificate.
    pub fn new() -> Self {
        ClientTls::default()
    }

    /// Trusts the CA certificates of this PEM file instead of the system's roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this certificate (PEM, with its chain) and key (PEM: PKCS#8, PKCS#1 or SEC1)
    /// for mutual TLS.
    pub fn client_identity(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificate = Some(certificate.into());
        self.client_key = Some(key.into());
        self
    }

    /// The name the server's certificate must carry, instead of the URL's host. For balanced
    /// endpoints the default is the endpoint's host when it is a name, else the balancer's
    /// service name (endpoints are usually registered by address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The CA file, if one is set.
    pub fn ca(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The generic variables of [`TLS_VARIABLES`] from the process environment.
    pub fn from_env() -> Self {
        ClientTls::from_lookup(|name| std::env::var(name).ok(), None)
    }

    /// The variables of [`TLS_VARIABLES`] through `lookup`; with `signal` (`"TRACES"`,
    /// `"LOGS"`), each signal's own variable first. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, signal: Option<&str>) -> Self {
        let get = |suffix: &str| {
            let specific = signal.and_then(|s| lookup(&format!("OTEL_EXPORTER_OTLP_{s}_{suffix}")));
            specific
                .filter(|v| !v.trim().is_empty())
                .or_else(|| lookup(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
                .filter(|v| !v.trim().is_empty())
                .map(|v| PathBuf::from(v.trim()))
        };
        ClientTls {
            ca_file: get("CERTIFICATE"),
            client_certificate: get("CLIENT_CERTIFICATE"),
            client_key: get("CLIENT_KEY"),
            server_name: None,
        }
    }

    /// Reads the files and builds the rustls configuration (ring provider, TLS 1.2 and 1.3).
    pub(crate) fn load(&self) -> Result<Loaded, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates("the CA certificate", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| read_error("the CA certificate", path, e))?;
                }
                roots
            }
            None => system_roots()?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_certificate, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(TlsError::HalfIdentity("the key")),
            (None, Some(_)) => return Err(TlsError::HalfIdentity("the certificate")),
            (Some(cert), Some(key)) => {
                let chain = read_certificates("the client certificate", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| read_error("the client key", key, e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::Invalid(format!("the client certificate and key: {e}"))
                })?
            }
        };
        Ok(Loaded {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        })
    }
}

/// Settings read and checked: the rustls configuration the connectors share.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: Option<String>,
}

impl Loaded {
    /// For clients of `http://` URLs only: no roots, so no `https://` connection can verify.
    pub(crate) fn plaintext() -> Self {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .expect("ring supports the default protocol versions");
        Loaded {
            config: Arc::new(config),
            server_name: None,
        }
    }

    /// `tls` loaded when `url` is `https://`; `None` for `http://`.
    pub(crate) fn for_url(url: &str, tls: &ClientTls) -> Result<Option<Self>, TlsError> {
        if is_https(url) {
            tls.load().map(Some)
        } else {
            Ok(None)
        }
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Whether `url` asks for TLS (`https://`, any case).
pub(crate) fn is_https(url: &str) -> bool {
    url.trim()
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn read_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Read {
        what,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_error(what, path, e))?;
    if certs.is_empty() {
        return Err(read_error(what, path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The operating system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TlsError::NoRoots(why));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
