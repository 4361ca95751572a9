//! The first phase: every listener is bound before anything is opened, so that a port in use
//! fails the start at once, with nothing to undo.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::{BoundAddrs, StartError};
use crate::app::config::Config;

/// The four listeners, bound, and where they are.
#[derive(Debug)]
pub(super) struct Bound {
    pub(super) otlp_grpc: TcpListener,
    pub(super) otlp_http: TcpListener,
    pub(super) query_http: TcpListener,
    pub(super) query_grpc: TcpListener,
    pub(super) addrs: BoundAddrs,
}

async fn one(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

/// Binds the OTLP and query listeners of `config` (port 0: any free port).
pub(super) async fn bind(config: &Config) -> Result<Bound, StartError> {
    let otlp_grpc = one("otlp-grpc", config.listeners.otlp_grpc).await?;
    let otlp_http = one("otlp-http", config.listeners.otlp_http).await?;
    let query_http = one("query-http", config.listeners.query_http).await?;
    let query_grpc = one("query-grpc", config.listeners.query_grpc).await?;
    let local = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    let addrs = BoundAddrs {
        otlp_grpc: local(&otlp_grpc, config.listeners.otlp_grpc),
        otlp_http: local(&otlp_http, config.listeners.otlp_http),
        query_http: local(&query_http, config.listeners.query_http),
        query_grpc: local(&query_grpc, config.listeners.query_grpc),
    };
    Ok(Bound {
        otlp_grpc,
        otlp_http,
        query_http,
        query_grpc,
        addrs,
    })
}
