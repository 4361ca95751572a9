//! Health checks in two tiers: a cheap liveness check on every beat, and heavy checks (a
//! database, a downstream) each at its own lower rate, with a timeout, its last result cached
//! between runs, so that a fleet never hammers a shared dependency to learn whether it is
//! healthy. A failing check makes the instance `warning`; `critical` comes only after
//! `failures_before_critical` failures of the same check in a row.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What a check answers: `Ok(())` when healthy, else why not.
pub type CheckResult = Result<(), String>;

type CheckFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = CheckResult> + Send>> + Send + Sync>;

/// The status an instance reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Healthy.
    Passing,
    /// Serving, but a check fails.
    Warning,
    /// A check failed too many times in a row.
    Critical,
    /// Shutting down.
    Down,
}

impl Status {
    /// The name the collector reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Down => "down",
        }
    }
}

/// One check and its cached state.
pub(crate) struct Check {
    pub(crate) name: String,
    run: CheckFn,
    /// `None` for the liveness tier (every beat).
    every: Option<Duration>,
    timeout: Duration,
    next_run: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<String>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("every", &self.every)
            .field("consecutive_failures", &self.consecutive_failures)
            .finish_non_exhaustive()
    }
}

impl Check {
    pub(crate) fn new<F, Fut>(
        name: String,
        every: Option<Duration>,
        timeout: Duration,
        run: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        Check {
            name,
            run: Arc::new(move || Box::pin(run())),
            every,
            timeout,
            next_run: None,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    /// Runs the check if it is due at `now` (liveness: always); otherwise keeps the cached result.
    pub(crate) async fn refresh(&mut self, now: Instant) {
        if let (Some(_), Some(next)) = (self.every, self.next_run)
            && now < next
        {
            return;
        }
        let result = match tokio::time::timeout(self.timeout, (self.run)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        };
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.last_error = None;
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(error);
            }
        }
        if let Some(every) = self.every {
            self.next_run = Some(now + every);
        }
    }
}

/// The status from the checks' cached results, and the output that explains it.
pub(crate) fn status(checks: &[Check], failures_before_critical: u32) -> (Status, Option<String>) {
    let mut status = Status::Passing;
    let mut output = Vec::new();
    for check in checks {
        let Some(error) = &check.last_error else {
            continue;
        };
        let this = if check.consecutive_failures >= failures_before_critical.max(1) {
            Status::Critical
        } else {
            Status::Warning
        };
        if this == Status::Critical || status == Status::Passing {
            status = this;
        }
        output.push(format!(
            "{}: {error} ({} in a row)",
            check.name, check.consecutive_failures
        ));
    }
    let output = (!output.is_empty()).then(|| output.join("; "));
    (status, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn heavy_checks_run_at_their_own_rate_and_failures_escalate() {
        let runs = Arc::new(AtomicU32::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (r, f) = (runs.clone(), failing.clone());
        let mut checks = vec![
            Check::new("live".into(), None, Duration::from_secs(1), || async {
                Ok(())
            }),
            Check::new(
                "database".into(),
                Some(Duration::from_secs(30)),
                Duration::from_secs(2),
                move || {
                    let (r, f) = (r.clone(), f.clone());
                    async move {
                        r.fetch_add(1, Ordering::Relaxed);
                        if f.load(Ordering::Relaxed) {
                            Err("connection refused".to_owned())
                        } else {
                            Ok(())
                        }
                    }
                },
            ),
        ];
        // Beats every 5 s for a minute: the database is asked at 0, 30 and 60 s only.
        for _ in 0..=12 {
            for check in &mut checks {
                check.refresh(Instant::now()).await;
            }
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert_eq!(
            runs.load(Ordering::Relaxed),
            3,
            "a heavy check runs every 30 s, not every beat"
        );
        assert_eq!(status(&checks, 3), (Status::Passing, None));

        failing.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            for check in &mut checks {
                check.refresh(Instant::now()).await;
            }
            seen.push(status(&checks, 3).0);
        }
        assert_eq!(
            seen,
            [Status::Warning, Status::Warning, Status::Critical],
            "warning at once, critical on the third failure in a row"
        );
        let (_, output) = status(&checks, 3);
        assert_eq!(
            output.as_deref(),
            Some("database: connection refused (3 in a row)")
        );

        failing.store(false, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(30)).await;
        for check in &mut checks {
            check.refresh(Instant::now()).await;
        }
        assert_eq!(
            status(&checks, 3).0,
            Status::Passing,
            "one success clears it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_on_its_timeout() {
        let mut check = Check::new("slow".into(), None, Duration::from_secs(1), || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        let started = Instant::now();
        check.refresh(Instant::now()).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(1));
        let (status, output) = status(std::slice::from_ref(&check), 3);
        assert_eq!(status, Status::Warning);
        assert_eq!(
            output.as_deref(),
            Some("slow: timed out after 1s (1 in a row)")
        );
    }
}
