//! A test PKI: a CA made with rcgen, certificates it signed, written as PEM files.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wayfinder_collector::config::TlsPaths;

/// A CA, and certificates it signed, written as PEM files.
pub struct Pki {
    /// Where the files are written.
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A fresh CA and a temporary directory for the files.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            issuer: Issuer::new(params, key),
            ca_pem: ca.pem(),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 (server or client), as (cert, key) PEM.
    pub fn leaf(&self) -> (String, String) {
        self.leaf_for(&["localhost", "127.0.0.1"])
    }

    /// A certificate for these names (server or client), as (cert, key) PEM.
    pub fn leaf_for(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `text` to the file `name` in the directory.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The server's files, with the CA as the client CA.
    pub fn server_files(&self) -> TlsPaths {
        let (cert, key) = self.leaf();
        TlsPaths {
            cert: self.write("server.pem", &cert),
            key: self.write("server.key", &key),
            client_ca: Some(self.write("ca.pem", &self.ca_pem)),
        }
    }

    /// A client configuration trusting the CA, with a client certificate or without.
    pub fn client(&self, with_certificate: bool, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = if with_certificate {
            let (cert, key) = self.leaf();
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}
