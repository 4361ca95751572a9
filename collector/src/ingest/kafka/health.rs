//! The health topic in fleet mode: every collector reads all of it, without a group, into its
//! registry, so that every registry knows every instance whichever collector its beats reached.

use std::time::Duration;

use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

use super::consume::produced_at;
use super::{KafkaError, KafkaSettings, read_whole};
use crate::ingest::Ingest;
use crate::metrics::LogEvery;
use crate::store::log::{Record, RecordKind};

/// How long to wait after the brokers' error before asking again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Reads every partition of the health topic, from its start, into `ingest`'s registry, until
/// `stop`: every collector knows every instance, whichever collector its beats reached. Beats
/// are applied at the time they were produced, so that old ones only tell what was.
pub(crate) async fn read_health(
    settings: KafkaSettings,
    partitions: u32,
    ingest: Ingest,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    // No group: each collector reads it all and commits nothing.
    let consumer = read_whole(
        &settings,
        &settings.health_topic(),
        partitions,
        "health reader",
        |_| {},
    )?;
    let logged = LogEvery::default();
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            () = stop.cancelled() => return Ok(()),
        };
        let record = match message {
            Ok(message) => Record {
                kind: RecordKind::Health,
                seq: 0,
                arrival: produced_at(&message),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            },
            Err(error) => {
                if logged.ready() {
                    tracing::warn!(%error, "kafka: cannot read the health topic; trying again (logged at most once a minute)");
                }
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if let Err(error) = ingest.replay(&record, false).await {
            tracing::debug!(%error, "kafka: a message of the health topic is not a beat; skipped");
        }
    }
}
