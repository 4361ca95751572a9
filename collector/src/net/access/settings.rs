//! Access settings (`[access]`): the bearer tokens each side admits and the TLS files every
//! listener serves. The tokens themselves come from a file, or from `WAYFINDER_INGEST_TOKEN`
//! and `WAYFINDER_QUERY_TOKEN`, never from a flag (which `ps` shows).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Secret, TlsPaths, TokenSource};
use crate::util::settings::{self, SettingError, Settings};

/// The settings (as config-file keys) that a reload changes in place while the feature they
/// belong to stays on (the tokens of ingest, the tokens of the query API, TLS): another file or
/// variable is taken at once; turning the feature on or off needs a restart.
///
/// ```
/// use wayfinder_collector::{IN_PLACE, SWITCHED_IN_PLACE};
///
/// assert!(SWITCHED_IN_PLACE.contains(&"tls_cert"));
/// assert!(!IN_PLACE.contains(&"tls_cert"), "turning TLS on or off needs a restart");
/// ```
pub const SWITCHED_IN_PLACE: &[&str] = &[
    "ingest_token_file",
    "ingest_token",
    "query_token_file",
    "query_token",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
];

/// Access settings: bearer tokens per listener and TLS.
///
/// ```
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// config.access.tls_cert = Some("/etc/wayfinder/cert.pem".into());
/// let error = config.validate().unwrap_err();
/// assert!(error.to_string().contains("--tls-key"), "a certificate needs its key: {error}");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AccessSettings {
    /// File of the bearer tokens the OTLP receivers admit, one a line, read again when it
    /// changes; or the token itself in WAYFINDER_INGEST_TOKEN [default: none, ingest is open].
    #[arg(long, env = "WAYFINDER_INGEST_TOKEN_FILE")]
    pub ingest_token_file: Option<PathBuf>,
    /// The ingest token from `WAYFINDER_INGEST_TOKEN` (shown redacted).
    #[arg(skip)]
    #[serde(skip)]
    pub ingest_token: Option<Secret>,
    /// File of the bearer tokens the query API admits (HTTP and gRPC; /healthz and /readyz
    /// stay open); or the token itself in WAYFINDER_QUERY_TOKEN [default: none, open].
    #[arg(long, env = "WAYFINDER_QUERY_TOKEN_FILE")]
    pub query_token_file: Option<PathBuf>,
    /// The query token from `WAYFINDER_QUERY_TOKEN` (shown redacted).
    #[arg(skip)]
    #[serde(skip)]
    pub query_token: Option<Secret>,
    /// Certificate chain (PEM) that every listener serves over TLS, with --tls-key; read
    /// again when it changes [default: none, plaintext].
    #[arg(long, env = "WAYFINDER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "WAYFINDER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): the OTLP receivers then require a client certificate signed by
    /// one of them (mutual TLS); the query API does not [default: none].
    #[arg(long, env = "WAYFINDER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// A token as shown: that a variable holds one; never the token.
fn shown_secret(token: &Option<Secret>, variable: &str) -> Value {
    match token {
        None => Value::Null,
        Some(_) => Value::String(format!("<redacted> ({variable})")),
    }
}

impl Default for AccessSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for AccessSettings {
    const SECTION: &'static str = "access";

    fn shown(&self) -> Map<String, Value> {
        let mut shown = settings::shown_as_serialized(self);
        let tokens = [
            ("ingest_token", &self.ingest_token, "WAYFINDER_INGEST_TOKEN"),
            ("query_token", &self.query_token, "WAYFINDER_QUERY_TOKEN"),
        ];
        for (key, token, variable) in tokens {
            shown.insert(key.to_owned(), shown_secret(token, variable));
        }
        shown
    }

    fn validate(&self) -> Result<(), SettingError> {
        self.ingest_tokens()?;
        self.query_tokens()?;
        self.tls()?;
        Ok(())
    }

    fn take_in_place(&mut self, new: &Self) {
        // Another file or variable is taken while the feature stays on; turning it on or off
        // needs a restart.
        if self.ingest_tokens().ok().flatten().is_some()
            && new.ingest_tokens().ok().flatten().is_some()
        {
            self.ingest_token_file = new.ingest_token_file.clone();
            self.ingest_token = new.ingest_token.clone();
        }
        if self.query_tokens().ok().flatten().is_some()
            && new.query_tokens().ok().flatten().is_some()
        {
            self.query_token_file = new.query_token_file.clone();
            self.query_token = new.query_token.clone();
        }
        if self.tls_cert.is_some() && new.tls_cert.is_some() {
            self.tls_cert = new.tls_cert.clone();
            self.tls_key = new.tls_key.clone();
            self.tls_client_ca = new.tls_client_ca.clone();
        }
    }
}

/// A listener's tokens: a file, or the value of a variable, not both.
fn token_source(
    key: &'static str,
    file: &Option<PathBuf>,
    value: &Option<Secret>,
) -> Result<Option<TokenSource>, SettingError> {
    match (file, value) {
        (Some(_), Some(_)) => Err(SettingError::invalid(
            key,
            format!(
                "both a token file and WAYFINDER_{}_TOKEN are set: keep one",
                key.split('_').next().unwrap_or_default().to_uppercase()
            ),
        )),
        (Some(path), None) => Ok(Some(TokenSource::File(path.clone()))),
        (None, Some(value)) => Ok(Some(TokenSource::Value(value.clone()))),
        (None, None) => Ok(None),
    }
}

impl AccessSettings {
    /// Where the OTLP receivers' tokens come from (`None`: ingest is open).
    pub(crate) fn ingest_tokens(&self) -> Result<Option<TokenSource>, SettingError> {
        token_source(
            "ingest_token_file",
            &self.ingest_token_file,
            &self.ingest_token,
        )
    }

    /// Where the query API's tokens come from (`None`: it is open).
    pub(crate) fn query_tokens(&self) -> Result<Option<TokenSource>, SettingError> {
        token_source(
            "query_token_file",
            &self.query_token_file,
            &self.query_token,
        )
    }

    /// The TLS files: a certificate and its key together, a client CA only with them.
    pub(crate) fn tls(&self) -> Result<Option<TlsPaths>, SettingError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsPaths {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            (None, None) => Err(SettingError::invalid(
                "tls_client_ca",
                "needs --tls-cert and --tls-key: client certificates are asked for over TLS",
            )),
            (Some(_), None) => Err(SettingError::invalid(
                "tls_key",
                "--tls-cert needs its key, --tls-key",
            )),
            (None, Some(_)) => Err(SettingError::invalid(
                "tls_cert",
                "--tls-key needs its certificate, --tls-cert",
            )),
        }
    }

    /// Serves TLS with `paths` (the three files at once).
    pub fn set_tls(&mut self, paths: Option<TlsPaths>) {
        self.tls_cert = paths.as_ref().map(|p| p.cert.clone());
        self.tls_key = paths.as_ref().map(|p| p.key.clone());
        self.tls_client_ca = paths.and_then(|p| p.client_ca);
    }

    /// Admits the tokens of `source` on the OTLP receivers (`None`: open).
    ///
    /// ```
    /// use wayfinder_collector::Config;
    /// use wayfinder_collector::config::{Secret, TokenSource};
    ///
    /// let mut config = Config::default();
    /// config.access.set_ingest_tokens(Some(TokenSource::Value(Secret::new("t0ken"))));
    /// assert_eq!(config.in_force()["ingest_token"], "<redacted> (WAYFINDER_INGEST_TOKEN)");
    /// ```
    pub fn set_ingest_tokens(&mut self, source: Option<TokenSource>) {
        (self.ingest_token_file, self.ingest_token) = split(source);
    }

    /// Admits the tokens of `source` on the query API (`None`: open).
    pub fn set_query_tokens(&mut self, source: Option<TokenSource>) {
        (self.query_token_file, self.query_token) = split(source);
    }
}

fn split(source: Option<TokenSource>) -> (Option<PathBuf>, Option<Secret>) {
    match source {
        None => (None, None),
        Some(TokenSource::File(path)) => (Some(path), None),
        Some(TokenSource::Value(secret)) => (None, Some(secret)),
    }
}
