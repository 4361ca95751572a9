//! The middleware's own HTTP client (hyper-util over the TLS connector): the health reporter's
//! `POST /v1/health`, the weights long-poll, and, on a thread of its own, the OTLP/HTTP span
//! exporter. Every call has a deadline and reads at most [`MAX_RESPONSE_BYTES`] of the answer.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Loaded;
use super::connect::{HttpsConnector, ServerName, https_connector};
use crate::BoxError;

/// The most of an answer read (the collector's answers are small; a stranger's need not be).
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// An HTTP/1.1 client, TLS for `https://` URLs. Cheap to clone (one connection pool).
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with `tls` for `https://` URLs (and none for `http://` ones).
    pub(crate) fn new(tls: Option<&Loaded>, connect_timeout: Duration) -> Self {
        let plain;
        let tls = match tls {
            Some(tls) => tls,
            None => {
                plain = Loaded::plaintext();
                &plain
            }
        };
        let connector = https_connector(tls, ServerName::Url, false, Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        HttpClient { client }
    }

    /// Sends `request` and reads the answer, all within `timeout`.
    pub(crate) async fn send(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, BoxError> {
        let target = request.uri().clone();
        let work = async {
            let response = self
                .client
                .request(request.map(Full::new))
                .await
                .map_err(|e| describe(&e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(format!("{target}: {error}").into()),
            Err(_) => Err(format!("{target}: no answer within {timeout:?}").into()),
        }
    }
}

/// An error with its causes, `outer: inner: …`: hyper-util's own says only "client error
/// (Connect)", the certificate's fault is further down.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Where a client leaves its last error, for a warning that says more than its caller's.
pub(crate) type LastError = std::sync::Arc<parking_lot::Mutex<Option<String>>>;

/// The OTLP/HTTP exporter's client. The SDK's batch processor exports from a thread of its
/// own, outside any tokio runtime, so requests run on a one-thread runtime this client owns
/// (as reqwest's blocking client does), which ends when the client is dropped.
pub(crate) struct ExportClient {
    client: HttpClient,
    last_error: LastError,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    /// A client with `tls` for `https://`, each export within `timeout`.
    pub(crate) fn new(
        tls: Option<&Loaded>,
        timeout: Duration,
        last_error: LastError,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("wayfinder-otlp-http".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let client = {
            let _entered = handle.enter();
            HttpClient::new(tls, timeout)
        };
        Ok(ExportClient {
            client,
            last_error,
            runtime: handle,
            timeout,
            _stop: stop,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let result = self
            .runtime
            .spawn(async move { client.send(request, timeout).await })
            .await
            .map_err(|e| format!("the exporter's runtime is gone: {e}"))?;
        if let Err(error) = &result {
            *self.last_error.lock() = Some(error.to_string());
        }
        result
    }
}
