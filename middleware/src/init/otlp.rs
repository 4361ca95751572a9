//! The OTLP span exporter the settings ask for: OTLP/HTTP with protobuf bodies, or OTLP/gRPC
//! (with the `tonic` feature), with the endpoint, headers and timeout of the `OTEL_EXPORTER_OTLP_*`
//! variables or the builder.

use opentelemetry_otlp::{SpanExporter, WithExportConfig};

use super::{InitError, OtlpProtocol, Telemetry};

impl Telemetry {
    pub(super) fn exporter(&self) -> Result<SpanExporter, InitError> {
        let exporter = match self.protocol {
            OtlpProtocol::Grpc => self.grpc_exporter()?,
            OtlpProtocol::HttpProtobuf => {
                // The signal's own URL is used as is; the generic one gets `/v1/traces`.
                let endpoint = self.traces_endpoint.clone().unwrap_or_else(|| {
                    format!("{}/v1/traces", self.base_endpoint().trim_end_matches('/'))
                });
                opentelemetry_otlp::WithHttpConfig::with_headers(
                    SpanExporter::builder().with_http(),
                    self.headers.iter().cloned().collect(),
                )
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
        let exporter = opentelemetry_otlp::WithTonicConfig::with_metadata(
            SpanExporter::builder().with_tonic(),
            metadata,
        )
        .with_endpoint(endpoint)
        .with_timeout(self.export_timeout)
        .build()?;
        Ok(exporter)
    }

    #[cfg(not(feature = "tonic"))]
    fn grpc_exporter(&self) -> Result<SpanExporter, InitError> {
        Err(InitError::NoGrpc)
    }
}
