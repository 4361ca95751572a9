//! Who gets in: bearer-token authentication of the listeners, one set of tokens for ingest
//! (the OTLP receivers), one for the query API (HTTP and gRPC), each optional; and TLS on every
//! listener, with client certificates for the OTLP receivers ([`TlsFiles`]); and how long a
//! request body may take to arrive ([`BodyTimedOut`]).
//!
//! Tokens come from a file (one a line; blank lines and `#` comments skipped, so that a new
//! token can be added before the old one is removed) or from an environment variable, never
//! from the command line, where `ps` shows them. A file is read again when it changes
//! ([`Tokens::reload_if_changed`], every second), and a file that no longer holds a valid
//! token is refused with a log line, the tokens in force staying. Tokens are compared in
//! constant time ([`subtle`]) and never logged: [`Secret`]'s `Debug` hides them.
//!
//! (Its example runs as the unit test `examples::example`.)

mod body_deadline;
mod layer;
mod settings;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use parking_lot::RwLock;
use subtle::ConstantTimeEq as _;

pub(crate) use body_deadline::DeadlineBody;
pub(crate) use body_deadline::{BodyTimedOut, Deadlines};
pub(crate) use layer::{RequireTokenLayer, Style};
pub use settings::{AccessSettings, SWITCHED_IN_PLACE};
pub use tls::TlsPaths;
pub(crate) use tls::{Protocols, TlsError, TlsFiles};

/// A token, hidden from `Debug`.
///
/// ```
/// use wayfinder_collector::config::Secret;
///
/// let token = Secret::new("s3cret");
/// assert!(!format!("{token:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// The token itself: for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Secret").field(&"<redacted>").finish()
    }
}

/// Where a listener's tokens come from.
///
/// ```
/// use wayfinder_collector::Config;
/// use wayfinder_collector::config::TokenSource;
///
/// let mut config = Config::default();
/// config.access.set_query_tokens(Some(TokenSource::File("/etc/wayfinder/query.tokens".into())));
/// assert!(config.access.query_token_file.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file, one token a line, read again when it changes.
    File(PathBuf),
    /// One token, from an environment variable.
    Value(Secret),
}

/// Why tokens could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No valid token in it.
    #[error("{origin} holds no token")]
    Empty {
        /// The file or variable.
        origin: String,
    },
    /// A token with characters a header cannot carry.
    #[error("{origin}: line {line} is not a token (use visible ASCII without spaces)")]
    Invalid {
        /// The file or variable.
        origin: String,
        /// Its line, from 1.
        line: usize,
    },
}

/// The tokens a listener admits, swapped in place when their file changes.
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    state: Arc<RwLock<State>>,
}

#[derive(Debug, Clone)]
struct State {
    /// The file they come from, if any.
    file: Option<PathBuf>,
    tokens: Arc<[Secret]>,
    /// The file's modification time and length when it was read.
    seen: Option<Seen>,
}

/// A file's modification time and length: what tells that it changed.
type Seen = (SystemTime, u64);

impl Tokens {
    /// The tokens of `source`.
    pub(crate) fn load(source: &TokenSource) -> Result<Self, TokenError> {
        match source {
            TokenSource::Value(secret) => Self::from_value(secret.clone()),
            TokenSource::File(path) => {
                let (tokens, seen) = read(path)?;
                Ok(Self::with(Some(path.clone()), tokens, seen))
            }
        }
    }

    /// One token.
    pub(crate) fn from_value(secret: Secret) -> Result<Self, TokenError> {
        let tokens = parse(secret.expose(), "the token variable")?;
        Ok(Self::with(None, tokens, None))
    }

    fn with(file: Option<PathBuf>, tokens: Arc<[Secret]>, seen: Option<Seen>) -> Self {
        Self {
            state: Arc::new(RwLock::new(State { file, tokens, seen })),
        }
    }

    /// Takes the tokens, and the file they come from, of `other` (loaded from the source a
    /// configuration reload names): the listeners holding these admit those from now on.
    pub(crate) fn adopt(&self, other: &Tokens) {
        let state = other.state.read().clone();
        *self.state.write() = state;
    }

    /// Whether an `Authorization` header carries one of the tokens (`Bearer <token>`, the
    /// scheme in any case). Every token is compared, each in constant time.
    pub(crate) fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization.and_then(|value| bearer(value.as_bytes())) else {
            return false;
        };
        let tokens = self.state.read().tokens.clone();
        tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, token| {
                found | token.expose().as_bytes().ct_eq(given)
            })
            .into()
    }

    /// Reads the file again if it changed since it was last read; `Ok(true)` if the tokens
    /// changed. A file that cannot be read or holds no valid token changes nothing and is an
    /// error once (until the file changes again), so that a caller polling every second logs
    /// it once.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TokenError> {
        let (path, last) = {
            let state = self.state.read();
            match &state.file {
                Some(path) => (path.clone(), state.seen),
                None => return Ok(false),
            }
        };
        let now_seen = stat(&path).ok();
        if now_seen == last {
            return Ok(false);
        }
        match read(&path) {
            Ok((tokens, seen)) => {
                let mut state = self.state.write();
                let changed = *state.tokens != *tokens;
                state.tokens = tokens;
                state.seen = seen;
                Ok(changed)
            }
            Err(error) => {
                self.state.write().seen = now_seen;
                Err(error)
            }
        }
    }

    /// The tokens' upkeep, every second: reads the file again if it changed, and says so
    /// (never the tokens).
    pub(crate) fn upkeep(&self, listeners: &str) {
        let file = self
            .file()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        match self.reload_if_changed() {
            Ok(true) => tracing::info!(listeners, file, tokens = self.len(), "tokens reloaded"),
            Ok(false) => {}
            Err(error) => tracing::warn!(
                listeners,
                %error,
                "the token file changed but cannot be used; the tokens in force stay"
            ),
        }
    }

    /// How many tokens are in force.
    pub(crate) fn len(&self) -> usize {
        self.state.read().tokens.len()
    }

    /// The file, if they come from one.
    pub(crate) fn file(&self) -> Option<PathBuf> {
        self.state.read().file.clone()
    }
}

fn stat(path: &Path) -> Result<Seen, TokenError> {
    let metadata = std::fs::metadata(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((modified, metadata.len()))
}

fn read(path: &Path) -> Result<(Arc<[Secret]>, Option<Seen>), TokenError> {
    let seen = stat(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((parse(&text, &path.display().to_string())?, Some(seen)))
}

/// The tokens of a file's text: one a line, blank lines and `#` comments skipped.
fn parse(text: &str, origin: &str) -> Result<Arc<[Secret]>, TokenError> {
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid {
                origin: origin.to_owned(),
                line: index + 1,
            });
        }
        tokens.push(Secret::new(line));
    }
    if tokens.is_empty() {
        return Err(TokenError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(tokens.into())
}

/// The token of `Bearer <token>`.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.strip_prefix(b" ")?;
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::net::access::{Secret, Tokens};

        let tokens = Tokens::from_value(Secret::new("s3cret")).unwrap();
        assert!(tokens.admits(Some(&"Bearer s3cret".parse().unwrap())));
        assert!(!tokens.admits(Some(&"Bearer guess".parse().unwrap())));
        assert!(!tokens.admits(None));
        assert_eq!(
            format!("{:?}", Secret::new("s3cret")),
            "Secret(\"<redacted>\")"
        );
    }
}
