//! `wayfinder`: the collector's command line.

mod reload;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use wayfinder_collector::Collector;
use wayfinder_collector::config::{Config, ServeArgs};

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// jemalloc: glibc's allocator spent about 40% of the collector's CPU under load
/// (`malloc_consolidate`, arena locks between the receiver threads that allocate and the stage
/// threads that free); see "Allocator" in docs/benchmarks.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "wayfinder", version, about = "The Wayfinder tracing collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector: OTLP receivers, span store, query API.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter_text = Config::log_filter(&args)?;
    let filter = EnvFilter::try_new(&filter_text)
        .with_context(|| format!("invalid log filter {filter_text:?}"))?;
    // The filter sits behind a reload handle: a reload changes the log level in place.
    let (filter, log_filter) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a person at a terminal, none in a file or a log pipeline.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let config = Config::resolve(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        // Before the collector starts and says where it listens: a SIGTERM or SIGHUP sent as
        // soon as it answers must find the handlers in place. Both signals' default action
        // ends the process at once, without the graceful shutdown's flush of the log.
        let mut shutdown = ShutdownSignal::install()?;
        let hangup = reload::Hangup::install()?;
        let running = Collector::start(config).await?;
        let addrs = running.addrs();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening otlp-grpc {}", addrs.otlp_grpc)?;
        writeln!(stdout, "listening otlp-http {}", addrs.otlp_http)?;
        writeln!(stdout, "listening query-http {}", addrs.query_http)?;
        writeln!(stdout, "listening query-grpc {}", addrs.query_grpc)?;
        stdout.flush()?;
        drop(stdout);
        let reloader = reload::Reloader::new(&args, &running, log_filter, filter_text);
        // A task of the collector that ends while it runs (a receiver, the pipeline, the query
        // API, a part's upkeep) leaves it half there: it stops, and says why in its status.
        let failed = tokio::select! {
            stop = shutdown.recv() => { stop?; None }
            () = reloader.run(hangup) => None,
            exit = running.exited() => Some(exit),
        };
        tracing::info!("shutting down");
        if tokio::time::timeout(SHUTDOWN_GRACE, running.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown took longer than {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        match failed {
            None => anyhow::Ok(()),
            Some(exit) => Err(anyhow::anyhow!("the collector stopped: {exit}")),
        }
    })
}

/// SIGINT and SIGTERM, listened for from [`ShutdownSignal::install`] on.
struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Takes over SIGINT and SIGTERM (in the runtime).
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn recv(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok(())
    }
}
