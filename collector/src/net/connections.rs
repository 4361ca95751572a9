//! How a listener takes connections: at most `--max-connections` at once, each with TCP_NODELAY,
//! and each given `--header-read-timeout` to show it is a client (its first bytes, or its whole
//! TLS handshake) before it is served. The accept loop only accepts: the wait for first bytes
//! and the handshake run in a task per connection, so that a slow client never holds up the
//! next one.
//!
//! A connection that finds the cap reached squeezes the listener's [`Pressure`]: its
//! connections idle for a second close (an HTTP/2 client that opened and never asked holds a
//! place otherwise), and the new one waits up to [`PLACE_WAIT`] for a place; at most
//! [`MAX_WAITING`] wait at once. On the query port a few more places are kept for probes
//! ([`Lane::Probe`]): a connection admitted there is served `/healthz`, `/readyz` and
//! `/livez` and nothing else, so that a full listener still reports on itself. A connection
//! that finds no place is accepted and closed (the client sees the connection end before any
//! answer, and retries as it does for any broken connection), counted in
//! `wayfinder_refused_connections_total{listener}` and logged at most once a minute, as Envoy's
//! listener connection limit does. Each connection holds its place until it closes. A client
//! too slow to start is closed and counted in `wayfinder_slow_connections_total{listener}`, one
//! whose handshake fails (a bad or missing client certificate, a plaintext client on a TLS
//! port) in `wayfinder_tls_handshake_failures_total{listener}`.

use crate::net::access::Deadlines;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::metrics::{ListenerLabels, ListenerMetrics};
use crate::metrics::LogEvery;
use crate::net::access::{Protocols, TlsFiles};
use crate::net::activity::Pressure;
use crate::util::cap::{Cap, Place};

/// Connections ready to serve that wait for the server to take them.
const READY_QUEUE: usize = 64;
/// How long a connection that found the listener full waits for a place: long enough for an
/// idle connection to be evicted and close.
pub(crate) const PLACE_WAIT: Duration = Duration::from_secs(3);
/// Connections that wait for a place at once; more are refused at once.
pub(crate) const MAX_WAITING: usize = 64;
/// Places for probes beyond the cap, on the listeners that answer probes.
pub(crate) const PROBE_PLACES: usize = 8;

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Under the cap: served everything.
    Regular,
    /// Past the cap, in a place kept for probes: served the probes only, one request.
    Probe,
}
/// How long the accept loop pauses after an error that is not the connection's own (out of
/// file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The TLS a listener speaks.
#[derive(Debug, Clone)]
pub(crate) struct ListenerTls {
    pub(crate) files: TlsFiles,
    pub(crate) protocols: Protocols,
    /// Whether clients must show a certificate of the client CA.
    pub(crate) mutual: bool,
}

/// How one listener takes its connections.
#[derive(Debug, Clone)]
pub(crate) struct Accept {
    pub(crate) name: &'static str,
    pub(crate) cap: Cap,
    /// How long a new connection has for its first bytes or its TLS handshake: the header
    /// limit in force when it is accepted.
    pub(crate) deadlines: Deadlines,
    pub(crate) tls: Option<ListenerTls>,
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// Squeezed when a connection finds no place.
    pub(crate) pressure: Pressure,
    /// The places kept for probes, on a listener that answers them.
    pub(crate) probes: Option<Cap>,
}

/// Where a new connection's place comes from.
enum Admission {
    Place(Place, Lane),
    /// It waits for a place, holding one of [`MAX_WAITING`].
    Wait(Place),
}

impl Accept {
    /// Accepts on `listener` until `stop`; the connections come out ready to serve.
    pub(crate) fn spawn(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> mpsc::Receiver<Conn> {
        let (ready, connections) = mpsc::channel(READY_QUEUE);
        tokio::spawn(self.run(listener, ready, stop));
        connections
    }

    async fn run(self, listener: TcpListener, ready: mpsc::Sender<Conn>, stop: CancellationToken) {
        let labels = ListenerLabels {
            listener: self.name,
        };
        let counters = Counters {
            refused: self
                .metrics
                .refused_connections
                .get_or_create(&labels)
                .clone(),
            slow: self.metrics.slow_connections.get_or_create(&labels).clone(),
            failed: self
                .metrics
                .tls_handshake_failures
                .get_or_create(&labels)
                .clone(),
            logged: Arc::default(),
        };
        let waiting = Cap::new(MAX_WAITING);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!(listener = self.name, %error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let admission = match self.cap.try_take() {
                Some(place) => Admission::Place(place, Lane::Regular),
                None => {
                    self.pressure.squeeze();
                    match (
                        self.probes.as_ref().and_then(Cap::try_take),
                        waiting.try_take(),
                    ) {
                        (Some(place), _) => Admission::Place(place, Lane::Probe),
                        (None, Some(waiter)) => Admission::Wait(waiter),
                        (None, None) => {
                            drop(tcp);
                            counters.refuse(self.name, self.cap.max());
                            continue;
                        }
                    }
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let (this, ready, counters) = (self.clone(), ready.clone(), counters.clone());
            tokio::spawn(async move {
                let (place, lane) = match admission {
                    Admission::Place(place, lane) => (place, lane),
                    Admission::Wait(waiter) => {
                        match tokio::time::timeout(PLACE_WAIT, this.cap.take()).await {
                            Ok(place) => {
                                drop(waiter);
                                (place, Lane::Regular)
                            }
                            Err(_) => {
                                counters.refuse(this.name, this.cap.max());
                                return;
                            }
                        }
                    }
                };
                let local = tcp.local_addr().ok();
                let start = this.start(tcp);
                tokio::pin!(start);
                // The connection is counted before it is closed (dropped with `start`), so that
                // whoever sees the close sees the count.
                let started = tokio::select! {
                    started = &mut start => Ok(started),
                    () = tokio::time::sleep(this.deadlines.headers()) => {
                        counters.slow.inc();
                        Err(())
                    }
                };
                match started {
                    Ok(Ok(io)) => {
                        let conn = Conn {
                            io,
                            info: TcpConnectInfo {
                                local_addr: local,
                                remote_addr: Some(remote),
                            },
                            lane,
                            _place: place,
                        };
                        // A server that stopped takes no more: the connection closes.
                        let _ = ready.send(conn).await;
                    }
                    Ok(Err(Start::Closed)) => {}
                    Ok(Err(Start::Handshake(error))) => {
                        counters.failed.inc();
                        tracing::debug!(listener = this.name, %remote, %error, "TLS handshake failed");
                    }
                    Err(()) => {
                        tracing::debug!(listener = this.name, %remote, "a connection sent nothing in time; closed");
                    }
                }
            });
        }
    }

    /// Waits for the client's first bytes, or completes its TLS handshake.
    async fn start(&self, tcp: TcpStream) -> Result<Stream, Start> {
        match &self.tls {
            None => {
                let mut first = [0u8; 1];
                match tcp.peek(&mut first).await {
                    Ok(0) | Err(_) => Err(Start::Closed),
                    Ok(_) => Ok(Stream::Plain(tcp)),
                }
            }
            Some(tls) => {
                let config = tls.files.server_config(tls.protocols, tls.mutual);
                tokio_rustls::TlsAcceptor::from(config)
                    .accept(tcp)
                    .await
                    .map(|tls| Stream::Tls(Box::new(tls)))
                    .map_err(Start::Handshake)
            }
        }
    }
}

/// Why a connection was not served.
enum Start {
    /// It closed before a byte came.
    Closed,
    /// Its TLS handshake failed.
    Handshake(io::Error),
}

/// The errors of one connection that `accept` reports, after which the listener is fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[derive(Clone)]
struct Counters {
    refused: Counter,
    slow: Counter,
    failed: Counter,
    logged: Arc<LogEvery>,
}

impl Counters {
    fn refuse(&self, listener: &'static str, max: usize) {
        self.refused.inc();
        if self.logged.ready() {
            tracing::warn!(
                listener,
                max,
                "a connection beyond --max-connections was closed (logged once a minute; counted in wayfinder_refused_connections_total)"
            );
        }
    }
}

/// A connection's bytes: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection ready to serve, with its place under the cap, given back when it closes.
pub(crate) struct Conn {
    io: Stream,
    info: TcpConnectInfo,
    lane: Lane,
    _place: Place,
}

impl Conn {
    /// How it was admitted.
    pub(crate) fn lane(&self) -> Lane {
        self.lane
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}
