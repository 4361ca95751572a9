//! tonic under the balancer: one lazily connected `Channel` per endpoint, chosen by the
//! authority the balancer wrote into the request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use super::body::RequestBody;
use super::{Balance, BalanceLayer, Balancer};
use crate::BoxError;
use crate::ClientLayer;
use crate::http::ClientService;
use crate::tls::{ClientTls, Loaded, ServerName, TlsError};

/// Most channels kept; past it the pool starts afresh (endpoints that left are not kept
/// forever).
const MAX_CHANNELS: usize = 1024;

/// A tower service that sends each request over the tonic `Channel` of the endpoint in its URI,
/// made on first use with [`ChannelPool::configure`]'s settings. Cheap to clone.
#[derive(Clone)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    configure: Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>,
    /// TLS to every endpoint, and the name their certificates carry.
    tls: Option<(Loaded, ServerName)>,
}

impl std::fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPool")
            .field("channels", &self.channels.lock().len())
            .finish()
    }
}

impl Default for ChannelPool {
    fn default() -> Self {
        ChannelPool::new()
    }
}

impl ChannelPool {
    /// Channels with tonic's defaults (and `TCP_NODELAY`).
    pub fn new() -> Self {
        ChannelPool::configure(|endpoint| endpoint)
    }

    /// Channels whose `Endpoint` is set up by `configure` (timeouts, keep-alive, window sizes
    /// …).
    pub fn configure(configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static) -> Self {
        ChannelPool {
            channels: Arc::new(Mutex::new(HashMap::new())),
            configure: Arc::new(configure),
            tls: None,
        }
    }

    /// TLS to every endpoint with `tls`, each endpoint's certificate checked for
    /// [`ClientTls::server_name`] if set, else for the endpoint's host when it is a name, else
    /// for `service` (endpoints registered by address carry their service's certificate). The
    /// files are read now.
    pub fn tls(mut self, tls: &ClientTls, service: &str) -> Result<Self, TlsError> {
        self.tls = Some((tls.load()?, ServerName::EndpointOr(service.to_owned())));
        Ok(self)
    }

    fn channel(&self, authority: &str) -> Result<Channel, BoxError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(authority) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        let channel = match &self.tls {
            None => {
                let endpoint =
                    Endpoint::from_shared(format!("http://{authority}"))?.tcp_nodelay(true);
                (self.configure)(endpoint).connect_lazy()
            }
            Some((tls, name)) => crate::tls::grpc_channel(
                &format!("https://{authority}"),
                Some(tls),
                name.clone(),
                |endpoint| (self.configure)(endpoint.tcp_nodelay(true)),
            )?
            .connect_lazy(),
        };
        channels.insert(authority.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl Service<Request<RequestBody>> for ChannelPool {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let channel = request
            .uri()
            .authority()
            .ok_or_else(|| BoxError::from("the balancer sets an authority"))
            .and_then(|authority| self.channel(authority.as_str()));
        Box::pin(async move {
            let channel = channel?;
            let response = channel.oneshot(request.map(tonic::body::Body::new)).await?;
            Ok(response)
        })
    }
}

/// The stack a tonic generated client takes: balancing, a CLIENT span per attempt, and a
/// channel per endpoint.
pub type TonicChannel = Balance<ClientService<ChannelPool>>;

impl Balancer {
    /// A channel for a tonic generated client (`InventoryClient::new(balancer.tonic_channel())`)
    /// whose endpoints follow the collector: each call is balanced, traced per attempt, and
    /// sent over the chosen endpoint's own `Channel`.
    pub fn tonic_channel(&self) -> TonicChannel {
        tower::ServiceBuilder::new()
            .layer(BalanceLayer::new(self.clone()))
            .layer(ClientLayer::new())
            .service(ChannelPool::new())
    }

    /// [`tonic_channel`](Self::tonic_channel) over TLS to every endpoint (see
    /// [`ChannelPool::tls`] for the name each certificate must carry).
    pub fn tonic_channel_tls(&self, tls: &ClientTls) -> Result<TonicChannel, TlsError> {
        Ok(tower::ServiceBuilder::new()
            .layer(BalanceLayer::new(self.clone()))
            .layer(ClientLayer::new())
            .service(ChannelPool::new().tls(tls, self.service())?))
    }
}
