//! The `wayfinder` binary's reloads (a module of the binary, not of the library): on SIGHUP,
//! and when the config file changes (its modification time and length, looked at every
//! second, which also sees a Kubernetes ConfigMap's symlink swap), the flags, environment and
//! file are resolved again and handed to [`RunningCollector::reload`]; the log filter changes
//! in place. A file that does not parse or validate is refused with a log line and counted,
//! and the running configuration stays.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;
use wayfinder_collector::RunningCollector;
use wayfinder_collector::config::{Config, ServeArgs};

/// SIGHUP, listened for from [`Hangup::install`] on (before the collector starts: its default
/// action ends the process).
pub(crate) struct Hangup {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangup {
    /// Takes over SIGHUP (in the runtime).
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use anyhow::Context as _;
            let kind = tokio::signal::unix::SignalKind::hangup();
            Ok(Self {
                signal: tokio::signal::unix::signal(kind).context("cannot listen for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGHUP; never, where there is none.
    async fn recv(&mut self) {
        #[cfg(unix)]
        self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

/// How often the config file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Reloads a running collector's configuration.
pub(crate) struct Reloader<'a, S> {
    args: &'a ServeArgs,
    running: &'a RunningCollector,
    log_filter: Handle<EnvFilter, S>,
    filter_text: String,
}

impl<'a, S: 'static> Reloader<'a, S> {
    pub(crate) fn new(
        args: &'a ServeArgs,
        running: &'a RunningCollector,
        log_filter: Handle<EnvFilter, S>,
        filter_text: String,
    ) -> Self {
        Self {
            args,
            running,
            log_filter,
            filter_text,
        }
    }

    /// Reloads on every SIGHUP and file change; never returns.
    pub(crate) async fn run(mut self, mut hangup: Hangup) {
        let mut seen = stat(self.args.config.as_ref());
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                () = hangup.recv() => "SIGHUP",
                _ = tick.tick() => "the config file changed",
            };
            let now_seen = stat(self.args.config.as_ref());
            if why != "SIGHUP" && now_seen == seen {
                continue;
            }
            seen = now_seen;
            self.reload(why);
        }
    }

    fn reload(&mut self, why: &str) {
        tracing::info!(reason = why, "reloading the configuration");
        let resolved = Config::resolve(self.args).and_then(|config| {
            let filter = Config::log_filter(self.args)?;
            Ok((config, filter))
        });
        let (config, filter_text) = match resolved {
            Ok(resolved) => resolved,
            Err(error) => {
                self.running.reload_refused(&error);
                return;
            }
        };
        if filter_text != self.filter_text {
            match EnvFilter::try_new(&filter_text) {
                Ok(filter) => match self.log_filter.reload(filter) {
                    Ok(()) => {
                        tracing::info!(filter = %filter_text, "log filter changed");
                        self.filter_text = filter_text;
                    }
                    Err(error) => tracing::warn!(%error, "the log filter cannot be changed"),
                },
                Err(error) => tracing::warn!(
                    filter = %filter_text,
                    %error,
                    "invalid log filter; the running one stays"
                ),
            }
        }
        // The collector logs and counts what it applied and what needs a restart.
        let _ = self.running.reload(config);
    }
}

/// The file's modification time and length: what tells that it changed.
fn stat(path: Option<&PathBuf>) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path?).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
