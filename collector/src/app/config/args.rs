//! The flags of `wayfinder serve`: `--config`, `--log-level`, and every part's settings,
//! flattened from the parts' own structs (each flag also read from its environment variable).

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, Command, CommandFactory, FromArgMatches, Parser};

use crate::graph::registry::RegistrySettings;
use crate::graph::spanmetrics::SpanMetricsSettings;
use crate::graph::topology::TopologySettings;
use crate::graph::weights::WeightsSettings;
use crate::ingest::IngestSettings;
use crate::ingest::kafka::KafkaSettings;
use crate::net::ListenerSettings;
use crate::net::access::AccessSettings;
use crate::serve::QuerySettings;
use crate::store::StoreSettings;

/// The flags of `wayfinder serve`; each one also reads its environment variable.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::ServeArgs;
///
/// let args = ServeArgs::try_parse_from(["serve", "--retention", "2h"]).unwrap();
/// assert!(args.config.is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// The TOML file with any of the settings (`--config`, `WAYFINDER_CONFIG`).
    pub config: Option<PathBuf>,
    /// The log filter (`--log-level`, `RUST_LOG`).
    pub log_level: Option<String>,
    /// What the command line and the environment gave, for each part to take its own.
    pub(super) matches: Option<ArgMatches>,
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd
            .about("Run the Wayfinder collector")
            .arg(
                Arg::new("config")
                    .long("config")
                    .env("WAYFINDER_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "TOML file with any of the settings below: each part's in its section \
                         ([store], [weights] …), keys in snake_case as the flags (e.g. \
                         `retention = \"2h\"` under [store])",
                    ),
            )
            .arg(
                Arg::new("log_level")
                    .long("log-level")
                    .env("RUST_LOG")
                    .help(
                        "Log filter, e.g. `info` or `wayfinder_collector=debug,info` \
                         [default: info]",
                    ),
            );
        let cmd = ListenerSettings::augment_args(cmd.next_help_heading("Listeners"));
        let cmd = AccessSettings::augment_args(cmd.next_help_heading("Access"));
        let cmd = IngestSettings::augment_args(cmd.next_help_heading("Ingest"));
        let cmd = KafkaSettings::augment_args(cmd.next_help_heading("Fleet (Kafka)"));
        let cmd = StoreSettings::augment_args(cmd.next_help_heading("Store"));
        let cmd = RegistrySettings::augment_args(cmd.next_help_heading("Registry"));
        let cmd = TopologySettings::augment_args(cmd.next_help_heading("Topology"));
        let cmd = SpanMetricsSettings::augment_args(cmd.next_help_heading("Span metrics"));
        let cmd = WeightsSettings::augment_args(cmd.next_help_heading("Weights"));
        QuerySettings::augment_args(cmd.next_help_heading("Query"))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            log_level: matches.get_one::<String>("log_level").cloned(),
            matches: Some(matches.clone()),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl CommandFactory for ServeArgs {
    fn command() -> Command {
        Self::augment_args(Command::new("serve"))
    }

    fn command_for_update() -> Command {
        Self::command()
    }
}

impl Parser for ServeArgs {}
