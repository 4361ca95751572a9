//! The collector's tasks, in tiers that start and stop together (the receivers, the pipeline,
//! the query API, the periodic work), supervised: a task that ends while the collector is not
//! stopping is logged, counted in `wayfinder_task_early_exits_total{tier,task}`, named by
//! `/readyz`, and reported to whoever waits on [`Supervision::exited`] (the binary stops with
//! a non-zero status rather than serve half).
//!
//! The shape is rotel's agent (one join set and cancellation token per tier, a shutdown timeout
//! per tier) and the OpenTelemetry Collector's component host, which reports a component's
//! fatal error to the service that then shuts down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A task of the collector that ended while the collector was not stopping, as
/// [`RunningCollector::exited`](crate::RunningCollector::exited) returns it.
///
/// ```
/// use wayfinder_collector::TaskExit;
///
/// let exit = TaskExit { tier: "receivers", task: "otlp-grpc", panicked: true };
/// assert_eq!(exit.to_string(), "otlp-grpc (receivers) panicked");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    /// Its tier: `receivers`, `pipeline`, `query` or `periodic`.
    pub tier: &'static str,
    /// The task: `otlp-grpc`, `pipeline`, `upkeep` …
    pub task: &'static str,
    /// Whether it panicked (else it returned).
    pub panicked: bool,
}

impl std::fmt::Display for TaskExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.panicked { "panicked" } else { "ended" };
        write!(f, "{} ({}) {how}", self.task, self.tier)
    }
}

/// The labels of `wayfinder_task_early_exits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabels {
    tier: &'static str,
    task: &'static str,
}

/// What the collector's tasks share: whether it is stopping, and the early exits so far.
#[derive(Debug, Clone)]
pub(crate) struct Supervision {
    stopping: CancellationToken,
    exits: Arc<Mutex<Vec<TaskExit>>>,
    exited: watch::Sender<usize>,
    counted: Family<TaskLabels, Counter>,
}

impl Supervision {
    /// No task stopping, none failed.
    pub(crate) fn new() -> Self {
        Self {
            stopping: CancellationToken::new(),
            exits: Arc::default(),
            exited: watch::channel(0).0,
            counted: Family::default(),
        }
    }

    /// The early exits' counter, per tier and task, for the owner of the metrics to register.
    pub(crate) fn counted(&self) -> Family<TaskLabels, Counter> {
        self.counted.clone()
    }

    /// From now on a task that ends is stopping, not failing.
    pub(crate) fn stopping(&self) {
        self.stopping.cancel();
    }

    /// The early exits so far.
    pub(crate) fn exits(&self) -> Vec<TaskExit> {
        self.exits.lock().clone()
    }

    /// Waits for the first early exit (at once if there was one).
    pub(crate) async fn exited(&self) -> TaskExit {
        let mut seen = self.exited.subscribe();
        loop {
            if let Some(first) = self.exits.lock().first() {
                return first.clone();
            }
            // The sender lives in `self`: `changed` cannot fail while we wait on it.
            let _ = seen.changed().await;
        }
    }

    fn record(&self, exit: TaskExit) {
        tracing::error!(
            tier = exit.tier,
            task = exit.task,
            panicked = exit.panicked,
            "a task of the collector ended while it was running: the collector is not ready and stops"
        );
        self.counted
            .get_or_create(&TaskLabels {
                tier: exit.tier,
                task: exit.task,
            })
            .inc();
        self.exits.lock().push(exit);
        self.exited.send_modify(|n| *n += 1);
    }
}

/// Tasks that start and stop together, with the time they are given to stop.
#[derive(Debug)]
pub(crate) struct Tier {
    name: &'static str,
    stop: CancellationToken,
    grace: Duration,
    supervision: Supervision,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tier {
    /// An empty tier, whose tasks are given `grace` to end once asked to stop.
    pub(crate) fn new(name: &'static str, grace: Duration, supervision: &Supervision) -> Self {
        Self {
            name,
            stop: CancellationToken::new(),
            grace,
            supervision: supervision.clone(),
            tasks: Vec::new(),
        }
    }

    /// The token its tasks stop on.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `work` on a task of its own, supervised.
    pub(crate) fn spawn(
        &mut self,
        task: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let (tier, supervision) = (self.name, self.supervision.clone());
        let handle = tokio::spawn(async move {
            let panicked = AssertUnwindSafe(work).catch_unwind().await.is_err();
            if !supervision.stopping.is_cancelled() {
                supervision.record(TaskExit {
                    tier,
                    task,
                    panicked,
                });
            }
        });
        self.tasks.push((task, handle));
    }

    /// Runs `work` on a blocking thread every `period` until the tier stops: CPU work
    /// (compaction, the weights) kept off the runtime's workers. A tick that comes while the
    /// last one's work runs is delayed, not doubled; a tick that panics is logged, and the next
    /// one runs.
    pub(crate) fn every(
        &mut self,
        task: &'static str,
        period: Duration,
        work: impl Fn() + Clone + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.spawn(task, async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let work = work.clone();
                        if let Err(error) = tokio::task::spawn_blocking(work).await {
                            tracing::error!(task, %error, "periodic work failed");
                        }
                    }
                    () = stop.cancelled() => break,
                }
            }
        });
    }

    /// Asks its tasks to stop, then waits for them for its grace; the ones still running are
    /// aborted, and said so.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.join().await;
    }

    /// Waits for its tasks to end by themselves (the pipeline ends when its queue is drained),
    /// for its grace; the ones still running are aborted, and said so.
    pub(crate) async fn join(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        for (task, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(tier = self.name, task, %error, "a task ended abnormally");
                }
                Err(_) => {
                    handle.abort();
                    tracing::warn!(
                        tier = self.name,
                        task,
                        grace = ?self.grace,
                        "a task did not stop within its tier's grace: aborted"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervision() -> Supervision {
        Supervision::new()
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_while_running_is_reported_and_counted() {
        let supervision = supervision();
        let mut tier = Tier::new("receivers", Duration::from_secs(1), &supervision);
        let stop = tier.stop_token();
        tier.spawn("otlp-grpc", async move { stop.cancelled().await });
        tier.spawn("otlp-http", async {});
        let exit = supervision.exited().await;
        assert_eq!(
            exit,
            TaskExit {
                tier: "receivers",
                task: "otlp-http",
                panicked: false
            }
        );
        assert_eq!(exit.to_string(), "otlp-http (receivers) ended");
        let labels = TaskLabels {
            tier: "receivers",
            task: "otlp-http",
        };
        assert_eq!(supervision.counted.get_or_create(&labels).get(), 1);
        supervision.stopping();
        tier.stop().await;
        assert_eq!(supervision.exits().len(), 1, "stopping is not failing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_an_early_exit_too() {
        let supervision = supervision();
        let mut tier = Tier::new("pipeline", Duration::from_secs(1), &supervision);
        tier.spawn("pipeline", async { panic!("a stage's bug") });
        let exit = supervision.exited().await;
        assert!(exit.panicked, "{exit}");
        assert_eq!(exit.to_string(), "pipeline (pipeline) panicked");
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_end_after_stopping_began_are_not_failures() {
        let supervision = supervision();
        let mut tier = Tier::new("query", Duration::from_secs(1), &supervision);
        let stop = tier.stop_token();
        tier.spawn("query", async move { stop.cancelled().await });
        supervision.stopping();
        tier.stop().await;
        assert!(supervision.exits().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_past_its_grace_is_aborted() {
        let supervision = supervision();
        let mut tier = Tier::new("query", Duration::from_secs(2), &supervision);
        let (dropped, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        tier.spawn("stuck", async move {
            let _held = dropped;
            std::future::pending::<()>().await;
        });
        supervision.stopping();
        let started = tokio::time::Instant::now();
        tier.stop().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "its grace, no more"
        );
        assert!(dropped_rx.await.is_err(), "the stuck task was aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_work_runs_every_period_until_the_tier_stops() {
        let supervision = supervision();
        let mut tier = Tier::new("periodic", Duration::from_secs(1), &supervision);
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        tier.every("upkeep", Duration::from_secs(1), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1001)).await;
            // The work runs on a blocking thread: let it finish.
            tokio::task::yield_now().await;
        }
        // Blocking work and the paused clock do not keep step exactly: at least the first two.
        let ran = runs.load(std::sync::atomic::Ordering::SeqCst);
        assert!(ran >= 2, "ran {ran} times in three periods");
        supervision.stopping();
        tier.stop().await;
        let stopped_at = runs.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            stopped_at,
            "no tick after the tier stopped"
        );
        assert!(supervision.exits().is_empty());
    }
}
