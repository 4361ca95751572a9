//! The demo's options: traffic, how long, and which instance to make slow or failing when.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `wayfinder-demo`: a collector and a small instrumented fleet on loopback, with traffic.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct Options {
    /// Requests per second the demo's users send to `frontend`.
    #[arg(long, default_value_t = 40)]
    pub rps: u32,
    /// Stop after this long (e.g. `90s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Make an instance slow (+120 ms a call), from the start or after a while:
    /// `checkout-3`, `checkout-2@30s`. `none` for no slow instance.
    #[arg(long, default_value = "checkout-3")]
    pub slow: Vec<Fault>,
    /// Make an instance fail a share of its calls: `payments-2:0.3`, `checkout-1:0.5@45s`.
    #[arg(long)]
    pub fail: Vec<Fault>,
    /// How often to print the table (at least 1s).
    #[arg(long, value_parser = table_period, default_value = "5s")]
    pub every: Duration,
    /// Run the collector on its default ports (4317, 4318, 16686, 16685); with `false`, on free
    /// ports (for tests, or when the defaults are taken).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_ports: bool,
    /// No progress bar (a log-friendly output).
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rps: 40,
            duration: None,
            slow: vec![Fault::slow("checkout-3")],
            fail: Vec::new(),
            every: Duration::from_secs(5),
            default_ports: true,
            quiet: false,
        }
    }
}

/// `--every`: a duration of at least a second.
fn table_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if period < Duration::from_secs(1) {
        return Err(format!("{text}: print tables at most once a second"));
    }
    Ok(period)
}

/// What a fault does to its instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// 120 ms more per call.
    Slow,
    /// This share of calls fails (0–1).
    Fail(f64),
}

/// A fault: an instance, what happens to it, and when (after how long; at once by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The instance (`checkout-3`); `none` is no instance.
    pub instance: String,
    /// What happens to it.
    pub effect: Effect,
    /// After how long.
    pub after: Duration,
}

impl Fault {
    /// `instance` slow from the start.
    pub fn slow(instance: &str) -> Self {
        Fault {
            instance: instance.to_owned(),
            effect: Effect::Slow,
            after: Duration::ZERO,
        }
    }
}

/// A fault that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFault(String);

impl fmt::Display for BadFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFault {}

impl FromStr for Fault {
    type Err = BadFault;

    /// `INSTANCE[@AFTER]` is a slow instance, `INSTANCE:RATE[@AFTER]` a failing one.
    fn from_str(text: &str) -> Result<Self, BadFault> {
        let (spec, after) = match text.split_once('@') {
            Some((spec, after)) => {
                let after = humantime::parse_duration(after)
                    .map_err(|e| BadFault(format!("`{after}` is not a duration: {e}")))?;
                (spec, after)
            }
            None => (text, Duration::ZERO),
        };
        let (instance, effect) = match spec.split_once(':') {
            Some((instance, rate)) => {
                let rate: f64 = rate
                    .parse()
                    .map_err(|_| BadFault(format!("`{rate}` is not a number")))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(BadFault(format!("a failure rate is 0–1, not {rate}")));
                }
                (instance, Effect::Fail(rate))
            }
            None => (spec, Effect::Slow),
        };
        if instance.is_empty() {
            return Err(BadFault("no instance named".to_owned()));
        }
        Ok(Fault {
            instance: instance.to_owned(),
            effect,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_read_or_refused_clearly() {
        use clap::Parser;
        // (arguments, accepted, why)
        let rows: [(&[&str], bool, &str); 6] = [
            (&[], true, "the defaults"),
            (
                &["--rps", "100", "--duration", "2m"],
                true,
                "traffic and a time limit",
            ),
            (
                &["--slow", "checkout-2@30s", "--fail", "payments-2:0.3"],
                true,
                "two faults",
            ),
            (&["--every", "0s"], false, "tables every 0 s would spin"),
            (&["--fail", "payments-2:3"], false, "a failure rate above 1"),
            (&["--default-ports", "maybe"], false, "not a boolean"),
        ];
        for (args, accepted, why) in rows {
            let parsed = Options::try_parse_from(
                std::iter::once("wayfinder-demo").chain(args.iter().copied()),
            );
            assert_eq!(parsed.is_ok(), accepted, "{why}: {parsed:?}");
        }
        let options = Options::try_parse_from(["wayfinder-demo"]).expect("defaults");
        let defaults = Options::default();
        assert_eq!(options.rps, defaults.rps);
        assert_eq!(
            options.slow, defaults.slow,
            "checkout-3 slow unless told otherwise"
        );
        assert_eq!(options.every, defaults.every);
        assert!(options.default_ports);
    }

    #[test]
    fn faults_parse_or_say_why_not() {
        let secs = Duration::from_secs;
        // (text, the fault or the error's start, why)
        let rows: Vec<(&str, Result<Fault, &str>, &str)> = vec![
            (
                "checkout-3",
                Ok(Fault::slow("checkout-3")),
                "slow from the start",
            ),
            (
                "checkout-2@30s",
                Ok(Fault {
                    after: secs(30),
                    ..Fault::slow("checkout-2")
                }),
                "slow after 30 s",
            ),
            (
                "payments-2:0.3",
                Ok(Fault {
                    instance: "payments-2".to_owned(),
                    effect: Effect::Fail(0.3),
                    after: Duration::ZERO,
                }),
                "failing 30% from the start",
            ),
            (
                "checkout-1:0.5@1m",
                Ok(Fault {
                    instance: "checkout-1".to_owned(),
                    effect: Effect::Fail(0.5),
                    after: secs(60),
                }),
                "failing half after a minute",
            ),
            (
                "checkout-1:1.5",
                Err("a failure rate is 0–1"),
                "a rate above 1",
            ),
            (
                "checkout-1:lots",
                Err("`lots` is not a number"),
                "a rate that is no number",
            ),
            (
                "checkout-1@soon",
                Err("`soon` is not a duration"),
                "a time that is no duration",
            ),
            (":0.5", Err("no instance named"), "no instance"),
        ];
        for (text, expected, reason) in rows {
            match (text.parse::<Fault>(), expected) {
                (Ok(fault), Ok(expected)) => assert_eq!(fault, expected, "{reason}"),
                (Err(error), Err(start)) => {
                    assert!(error.0.starts_with(start), "{reason}: {error}")
                }
                (got, expected) => panic!("{reason}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
