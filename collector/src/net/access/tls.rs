//! TLS on the listeners (rustls, with the `ring` provider already in the tree): one certificate
//! and key for all four, and optionally a CA whose client certificates the OTLP receivers
//! require (mutual TLS, as the OpenTelemetry Collector's `client_ca_file`).
//!
//! The files are read again when one of them changes ([`TlsFiles::reload_if_changed`], every
//! second, and on SIGHUP): a new connection gets the new certificate, connections already open
//! keep theirs. A set of files that does not load (a key that does not match, a half-written
//! file) is refused with a log line and the certificate in force stays, as with tokens.
//!
//! (Its example runs as the unit test `examples::example`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where the certificate, its key and the client CA are.
///
/// ```
/// use wayfinder_collector::Config;
/// use wayfinder_collector::config::TlsPaths;
///
/// let mut config = Config::default();
/// config.access.set_tls(Some(TlsPaths {
///     cert: "/etc/wayfinder/cert.pem".into(),
///     key: "/etc/wayfinder/key.pem".into(),
///     client_ca: None,
/// }));
/// config.validate().unwrap(); // the files are read when the collector starts
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The certificate chain (PEM), the listener's own first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) whose client certificates the OTLP receivers require; `None`:
    /// clients are not asked for one.
    pub client_ca: Option<PathBuf>,
}

/// What a listener speaks, for ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// HTTP: HTTP/2 or HTTP/1.1.
    Http,
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no valid PEM.
    #[error("cannot read {what} from {path}: {message}")]
    Read {
        /// Which file: "the certificate", "the key", "the client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The files were read but do not make a TLS configuration (a key that does not match
    /// the certificate, a CA that is not one).
    #[error("the TLS files {cert} and {key} cannot be used: {message}")]
    Invalid {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// The listeners' TLS configurations, swapped in place when their files change.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    state: Arc<RwLock<State>>,
}

#[derive(Debug, Clone)]
struct State {
    paths: TlsPaths,
    loaded: Loaded,
    /// Each file's modification time and length when read: what tells that one changed.
    seen: Vec<Option<(SystemTime, u64)>>,
}

/// One loaded set: a configuration per protocol, with and without client certificates.
#[derive(Debug, Clone)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    grpc_mutual: Arc<ServerConfig>,
    http_mutual: Arc<ServerConfig>,
}

impl TlsFiles {
    /// Reads the files and builds the configurations.
    pub(crate) fn load(paths: TlsPaths) -> Result<Self, TlsError> {
        let seen = seen(&paths);
        let loaded = build(&paths)?;
        Ok(Self {
            state: Arc::new(RwLock::new(State {
                paths,
                loaded,
                seen,
            })),
        })
    }

    /// Serves what `other` loaded (from the files a configuration reload names) to new
    /// connections from now on, and watches its files.
    pub(crate) fn adopt(&self, other: &TlsFiles) {
        let state = other.state.read().clone();
        *self.state.write() = state;
    }

    /// The configuration for a new connection of a listener: `mutual` asks for a client
    /// certificate signed by the client CA (when one is set; without one it is ignored).
    pub(crate) fn server_config(&self, protocols: Protocols, mutual: bool) -> Arc<ServerConfig> {
        let state = self.state.read();
        let loaded = &state.loaded;
        match (protocols, mutual) {
            (Protocols::Grpc, false) => loaded.grpc.clone(),
            (Protocols::Http, false) => loaded.http.clone(),
            (Protocols::Grpc, true) => loaded.grpc_mutual.clone(),
            (Protocols::Http, true) => loaded.http_mutual.clone(),
        }
    }

    /// Reads the files again if one changed since they were last read; `Ok(true)` if the
    /// configurations were replaced. Files that do not load change nothing and are an error
    /// once (until a file changes again), so that a caller polling every second logs it once.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let paths = self.paths();
        let now_seen = seen(&paths);
        if now_seen == self.state.read().seen {
            return Ok(false);
        }
        let built = build(&paths);
        let mut state = self.state.write();
        state.seen = now_seen;
        state.loaded = built?;
        Ok(true)
    }

    /// The TLS files' upkeep, every second: reads them again if one changed, and says so.
    pub(crate) fn upkeep(&self) {
        match self.reload_if_changed() {
            Ok(true) => tracing::info!(
                cert = %self.paths().cert.display(),
                "TLS certificate reloaded; new connections get it"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(
                %error,
                "a TLS file changed but cannot be used; the certificate in force stays"
            ),
        }
    }

    /// Where the files are.
    pub(crate) fn paths(&self) -> TlsPaths {
        self.state.read().paths.clone()
    }
}

fn seen(paths: &TlsPaths) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&paths.cert),
        Some(&paths.key),
        paths.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    })
    .collect()
}

fn read_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Read {
        what,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn build(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_error("the certificate", &paths.cert, e))?;
    if certs.is_empty() {
        return Err(read_error(
            "the certificate",
            &paths.cert,
            "no CERTIFICATE block",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| read_error("the key", &paths.key, e))?;
    let invalid = |error: rustls::Error| TlsError::Invalid {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        message: error.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(invalid)
    };
    let plain = builder()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(invalid)?;
    let mutual = match &paths.client_ca {
        None => plain.clone(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| read_error("the client CA", ca, e))?;
            for cert in cas {
                roots
                    .add(cert)
                    .map_err(|e| read_error("the client CA", ca, e))?;
            }
            if roots.is_empty() {
                return Err(read_error("the client CA", ca, "no CERTIFICATE block"));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| read_error("the client CA", ca, e))?;
            builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .map_err(invalid)?
        }
    };
    let with_alpn = |config: &ServerConfig, protocols: Protocols| {
        let mut config = config.clone();
        config.alpn_protocols = match protocols {
            Protocols::Grpc => vec![b"h2".to_vec()],
            Protocols::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Arc::new(config)
    };
    Ok(Loaded {
        grpc: with_alpn(&plain, Protocols::Grpc),
        http: with_alpn(&plain, Protocols::Http),
        grpc_mutual: with_alpn(&mutual, Protocols::Grpc),
        http_mutual: with_alpn(&mutual, Protocols::Http),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
        paths: TlsPaths,
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "localhost");
        Files {
            paths: TlsPaths {
                cert,
                key,
                client_ca: None,
            },
            dir,
        }
    }

    #[test]
    fn each_protocol_gets_its_alpn() {
        let tls = TlsFiles::load(files().paths).unwrap();
        for (protocols, alpn) in [
            (Protocols::Grpc, vec![b"h2".to_vec()]),
            (Protocols::Http, vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        ] {
            for mutual in [false, true] {
                assert_eq!(tls.server_config(protocols, mutual).alpn_protocols, alpn);
            }
        }
    }

    /// What is wrong, how the files are spoilt, and the words the error must carry.
    type Case = (&'static str, fn(&Files), &'static str);

    #[test]
    fn bad_files_are_refused_with_what_and_where() {
        let cases: [Case; 4] = [
            (
                "the certificate file is missing",
                |f| std::fs::remove_file(&f.paths.cert).unwrap(),
                "cannot read the certificate",
            ),
            (
                "the certificate file holds no PEM",
                |f| std::fs::write(&f.paths.cert, "not a certificate").unwrap(),
                "no CERTIFICATE block",
            ),
            (
                "the key file holds a certificate, not a key",
                |f| {
                    std::fs::copy(&f.paths.cert, &f.paths.key)
                        .map(drop)
                        .unwrap()
                },
                "cannot read the key",
            ),
            (
                "the key belongs to another certificate",
                |f| {
                    let other = f.dir.path().join("other");
                    std::fs::create_dir(&other).unwrap();
                    let (_, key) = write_pair(&other, "localhost");
                    std::fs::copy(key, &f.paths.key).unwrap();
                },
                "cannot be used",
            ),
        ];
        for (why, spoil, words) in cases {
            let files = files();
            spoil(&files);
            let error = TlsFiles::load(files.paths.clone()).unwrap_err().to_string();
            assert!(error.contains(words), "{why}: {error}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_old() {
        let files = files();
        let tls = TlsFiles::load(files.paths.clone()).unwrap();
        let first = tls.server_config(Protocols::Http, false);
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

        // A half-written file: refused once, the configuration in force stays.
        std::fs::write(&files.paths.cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(
            &first,
            &tls.server_config(Protocols::Http, false)
        ));
        assert!(!tls.reload_if_changed().unwrap(), "the error is said once");

        // A new pair: taken.
        write_pair(files.dir.path(), "localhost");
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(
            &first,
            &tls.server_config(Protocols::Http, false)
        ));
    }

    #[test]
    fn a_client_ca_that_is_not_pem_is_refused() {
        let files = files();
        let ca = files.dir.path().join("ca.pem");
        std::fs::write(&ca, "nothing").unwrap();
        let paths = TlsPaths {
            client_ca: Some(ca),
            ..files.paths.clone()
        };
        let error = TlsFiles::load(paths).unwrap_err().to_string();
        assert!(error.contains("the client CA"), "{error}");
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::net::access::{Protocols, TlsFiles, TlsPaths};

        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

        let tls = TlsFiles::load(TlsPaths {
            cert: cert_path,
            key: key_path,
            client_ca: None,
        })
        .unwrap();
        let config = tls.server_config(Protocols::Grpc, false);
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!tls.reload_if_changed().unwrap()); // nothing changed
    }
}
