//! The cap on connections a listener holds at once (`--max-connections`, per listener). A
//! connection beyond it is accepted and closed at once (the client sees the connection end
//! before any answer, and retries as it does for any broken connection), counted in
//! `wayfinder_refused_connections_total{listener}` and logged at most once a minute, as
//! Envoy's listener connection limit does. Each connection holds its place until it closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// How often a refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A listener that holds at most `max` connections.
pub(super) struct Limited<L> {
    inner: L,
    places: Arc<Semaphore>,
    max: usize,
    name: &'static str,
    refused: Counter,
    logged: Mutex<Option<Instant>>,
}

impl<L> Limited<L> {
    pub(super) fn new(inner: L, max: usize, name: &'static str, refused: Counter) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner,
            places: Arc::new(Semaphore::new(max)),
            max,
            name,
            refused,
            logged: Mutex::new(None),
        }
    }

    fn refuse(&self) {
        self.refused.inc();
        let mut logged = self.logged.lock();
        if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            *logged = Some(Instant::now());
            tracing::warn!(
                listener = self.name,
                max = self.max,
                "a connection beyond --max-connections was closed (logged once a minute; counted in wayfinder_refused_connections_total)"
            );
        }
    }
}

impl<L: Listener> Listener for Limited<L>
where
    L::Addr: Sync,
{
    type Io = Held<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.places.clone().try_acquire_owned() {
                Ok(place) => return (Held { io, _place: place }, addr),
                Err(_) => {
                    drop(io);
                    self.refuse();
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection with its place under the cap, given back when it closes.
pub(super) struct Held<Io> {
    io: Io,
    _place: OwnedSemaphorePermit,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Held<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Held<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Held<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The accepted connections of `listener` as the stream tonic serves.
pub(super) fn incoming<L>(
    listener: Limited<L>,
) -> impl futures::Stream<Item = io::Result<Held<L::Io>>> + Send + 'static
where
    L: Listener,
    L::Addr: Sync,
{
    futures::stream::unfold(listener, |mut listener| async move {
        let (io, _) = listener.accept().await;
        Some((Ok(io), listener))
    })
}
