//! A running part of the collector: a named task, and periodic work.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A part of the collector running on its own task, known by name.
#[derive(Debug)]
pub(crate) struct Stage {
    name: &'static str,
    task: JoinHandle<()>,
}

impl Stage {
    /// Runs `work` on a task of its own.
    pub(crate) fn spawn(
        name: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            name,
            task: tokio::spawn(work),
        }
    }

    /// Runs `work` on a blocking thread every `period` until `stop`: CPU work (compaction, the
    /// weights) kept off the runtime's workers. A tick that comes while the last one's work
    /// runs is delayed, not doubled.
    pub(crate) fn every(
        name: &'static str,
        period: Duration,
        stop: CancellationToken,
        work: impl Fn() + Clone + Send + 'static,
    ) -> Self {
        Self::spawn(name, async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let work = work.clone();
                        if let Err(error) = tokio::task::spawn_blocking(work).await {
                            tracing::error!(stage = name, %error, "periodic work failed");
                        }
                    }
                    () = stop.cancelled() => break,
                }
            }
        })
    }

    /// Waits for it to end.
    pub(crate) async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(stage = self.name, %error, "the stage ended abnormally");
        }
    }
}
