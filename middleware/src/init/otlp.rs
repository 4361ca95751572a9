//! The OTLP span exporter the settings ask for: OTLP/HTTP with protobuf bodies, or OTLP/gRPC
//! (with the `tonic` feature), with the endpoint, headers, timeout and TLS of the
//! `OTEL_EXPORTER_OTLP_*` variables or the builder. Both go through the middleware's own
//! clients ([`crate::tls`]): hyper-util for HTTP, a tonic channel for gRPC, TLS by rustls with
//! ring for `https://`.

use opentelemetry_otlp::{SpanExporter, WithExportConfig};

use super::{InitError, OtlpProtocol, Telemetry};
use crate::tls::{ExportClient, LastError, Loaded};

impl Telemetry {
    /// The exporter; its client leaves the cause of a failure in `last_error`.
    pub(super) fn exporter(&self, last_error: LastError) -> Result<SpanExporter, InitError> {
        let exporter = match self.protocol {
            OtlpProtocol::Grpc => self.grpc_exporter()?,
            OtlpProtocol::HttpProtobuf => {
                // The signal's own URL is used as is; the generic one gets `/v1/traces`.
                let endpoint = self.traces_endpoint.clone().unwrap_or_else(|| {
                    format!("{}/v1/traces", self.base_endpoint().trim_end_matches('/'))
                });
                let tls = Loaded::for_url(&endpoint, &self.tls)?;
                let client = ExportClient::new(tls.as_ref(), self.export_timeout, last_error)?;
                use opentelemetry_otlp::WithHttpConfig as _;
                SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_headers(self.headers.iter().cloned().collect())
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .with_timeout(self.export_timeout)
                    .build()?
            }
        };
        Ok(exporter)
    }

    #[cfg(feature = "tonic")]
    fn grpc_exporter(&self) -> Result<SpanExporter, InitError> {
        use opentelemetry_otlp::WithTonicConfig as _;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(InitError::NoRuntime);
        }
        // gRPC has one URL for every signal: the traces one, when given, as it is.
        let endpoint = self
            .traces_endpoint
            .clone()
            .unwrap_or_else(|| self.base_endpoint());
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (key, value) in &self.headers {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                metadata.insert(key, value);
            }
        }
        let tls = Loaded::for_url(&endpoint, &self.tls)?;
        let timeout = self.export_timeout;
        let channel =
            crate::tls::grpc_channel(&endpoint, tls.as_ref(), crate::tls::ServerName::Url, |e| {
                e.timeout(timeout).connect_timeout(timeout)
            })
            .map_err(|error| {
                super::env::invalid("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint, &error.to_string())
            })?
            .connect_lazy();
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_metadata(metadata)
            .with_channel(channel)
            .with_timeout(timeout)
            .build()?;
        Ok(exporter)
    }

    #[cfg(not(feature = "tonic"))]
    fn grpc_exporter(&self) -> Result<SpanExporter, InitError> {
        Err(InitError::NoGrpc)
    }
}
