//! The listeners' machinery, shared by the OTLP receivers and the query API: who may connect
//! ([`access`]: tokens, TLS, body and header deadlines), how many at once
//! ([`connections`]: the cap and the probe lane), when an idle or stalled connection is closed
//! ([`activity`]), and the serve loop itself ([`http_server`]).

pub(crate) mod access;
pub(crate) mod activity;
pub(crate) mod connections;
pub(crate) mod http_server;
pub(crate) mod metrics;
mod settings;

pub use settings::ListenerSettings;
