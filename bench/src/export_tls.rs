//! The span exporter's cost over TLS against plaintext: the `wayfinder` binary serving
//! plaintext, then TLS (a certificate made here with rcgen), and this process exporting spans
//! to it through `wayfinder-middleware`'s `Telemetry` over OTLP/HTTP and OTLP/gRPC. The figure
//! is this process's CPU time per span (creating the span, batching, encoding, sending) and
//! the wall time per batch; the collector's own CPU is not counted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use wayfinder_middleware::tls::ClientTls;
use wayfinder_middleware::{OtlpProtocol, Telemetry};

use crate::compare::{Running, cpu_seconds, free_port, median, wait_listening, wayfinder_binary};

#[derive(Debug, clap::Args)]
pub(crate) struct ExportTlsArgs {
    /// The `wayfinder` binary [default: the one next to this program].
    #[arg(long)]
    wayfinder: Option<PathBuf>,
    /// Spans exported per protocol, transport and round.
    #[arg(long, default_value_t = 100_000)]
    spans: usize,
    /// Spans per export (the batch processor's default batch is 512).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// A collector process and its two OTLP ports.
struct Collector {
    _running: Running,
    grpc: u16,
    http: u16,
}

async fn start(
    wayfinder: &std::path::Path,
    tls: Option<(&PathBuf, &PathBuf)>,
) -> anyhow::Result<Collector> {
    let (grpc, http) = (free_port()?, free_port()?);
    let mut command = Command::new(wayfinder);
    command.arg("serve").args([
        "--otlp-grpc",
        &format!("127.0.0.1:{grpc}"),
        "--otlp-http",
        &format!("127.0.0.1:{http}"),
        "--query-http",
        &format!("127.0.0.1:{}", free_port()?),
        "--query-grpc",
        &format!("127.0.0.1:{}", free_port()?),
    ]);
    if let Some((cert, key)) = tls {
        command
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", wayfinder.display()))?;
    let running = Running(child);
    wait_listening(http, "wayfinder").await?;
    Ok(Collector {
        _running: running,
        grpc,
        http,
    })
}

/// CPU µs per span and wall ms per batch of one run.
async fn run(
    protocol: OtlpProtocol,
    endpoint: String,
    tls: ClientTls,
    args: &ExportTlsArgs,
) -> anyhow::Result<(f64, f64)> {
    let telemetry = Telemetry::new()
        .service_name("export-bench")
        .protocol(protocol)
        .endpoint(endpoint)
        .tls(tls)
        .build()?;
    let tracer = telemetry.provider().tracer("export-bench");
    // One batch first: connections and handshakes are not the steady cost.
    for _ in 0..args.batch {
        tracer.start("warm").end();
    }
    telemetry.flush().await?;
    let batches = args.spans.div_ceil(args.batch);
    let cpu = cpu_seconds("self")?;
    let wall = Instant::now();
    for _ in 0..batches {
        for _ in 0..args.batch {
            let mut span = tracer.start("GET /items/{id}");
            span.set_attribute(opentelemetry::KeyValue::new("http.request.method", "GET"));
            span.set_attribute(opentelemetry::KeyValue::new(
                "http.response.status_code",
                200,
            ));
            span.end();
        }
        telemetry.flush().await?;
    }
    let cpu = cpu_seconds("self")? - cpu;
    let wall = wall.elapsed();
    let (failed, _) = telemetry.export_failures();
    if failed > 0 {
        bail!("{failed} exports failed");
    }
    telemetry.shutdown().await?;
    let spans = (batches * args.batch) as f64;
    Ok((cpu * 1e6 / spans, wall.as_secs_f64() * 1e3 / batches as f64))
}

pub(crate) async fn export_tls(args: ExportTlsArgs) -> anyhow::Result<()> {
    let wayfinder = wayfinder_binary(args.wayfinder.as_ref())?;
    let dir = tempfile::tempdir()?;
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    let plain = start(&wayfinder, None).await?;
    let secure = start(&wayfinder, Some((&cert, &key))).await?;
    let trust = ClientTls::new().ca_file(&cert);
    println!(
        "{} spans per run in batches of {}, median of {} rounds; CPU of the exporting process",
        args.spans, args.batch, args.rounds
    );
    println!("protocol       transport  µs CPU/span  ms/batch");
    for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
        // Rounds alternate plaintext and TLS, so that a drift of the machine hits both.
        let mut cpu = [Vec::new(), Vec::new()];
        let mut wall = [Vec::new(), Vec::new()];
        for _ in 0..args.rounds {
            for (i, secure_run) in [false, true].into_iter().enumerate() {
                let (port, scheme, tls) = match (protocol, secure_run) {
                    (OtlpProtocol::Grpc, false) => (plain.grpc, "http", ClientTls::new()),
                    (OtlpProtocol::Grpc, true) => (secure.grpc, "https", trust.clone()),
                    (_, false) => (plain.http, "http", ClientTls::new()),
                    (_, true) => (secure.http, "https", trust.clone()),
                };
                let (c, w) =
                    run(protocol, format!("{scheme}://127.0.0.1:{port}"), tls, &args).await?;
                cpu[i].push(c);
                wall[i].push(w);
            }
        }
        let mut figures = Vec::new();
        for (i, name) in ["plaintext", "TLS"].into_iter().enumerate() {
            let (c, w) = (median(cpu[i].clone()), median(wall[i].clone()));
            println!(
                "{:<14} {name:<10} {c:>11.2} {w:>9.2}",
                format!("{protocol:?}")
            );
            figures.push(c);
        }
        println!(
            "{:<14} TLS costs {:+.2} µs CPU a span ({:+.0}%)",
            format!("{protocol:?}"),
            figures[1] - figures[0],
            (figures[1] / figures[0] - 1.0) * 100.0
        );
    }
    Ok(())
}
