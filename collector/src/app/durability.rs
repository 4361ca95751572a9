//! The second phase: with `--data-dir`, the sealed Parquet files are listed and the
//! write-ahead log is read through, before anything is served: a damaged or foreign file stops
//! the start here, with the listeners bound but not yet serving.

use std::sync::Arc;

use super::StartError;
use crate::app::config::Config;
use crate::metrics::Metrics;
use crate::store::history::{History, SealedFile};
use crate::store::log::{Damage, Recovery, Wal, WalConfig, WalMetrics};

/// What a data directory holds: the sealed files and the log, read.
#[derive(Debug, Default)]
pub(super) struct Durable {
    /// The history and its files.
    pub(super) history: Option<(Arc<History>, Vec<SealedFile>)>,
    /// The log, open for appending, and what it holds to replay.
    pub(super) log: Option<(Wal, Recovery)>,
}

/// Fleet mode with a history: the store that seals per partition and where it seals, for the
/// offsets the consumer commits as they are sealed.
pub(super) struct FleetHistory {
    pub(super) store: Arc<dyn crate::store::SpanStore>,
    pub(super) history: Arc<crate::store::history::History>,
    /// What the store's seals ask and tell the consumer's offsets, once it is built.
    pub(super) hooks: Arc<SealHooks>,
}

/// The store's seals in fleet mode, hooked to the consumer's offsets once it is built.
#[derive(Default)]
pub(super) struct SealHooks {
    /// Told the records just sealed (their offsets may be committed).
    pub(super) sealed: std::sync::OnceLock<crate::store::OnSealed>,
    /// Asked which offsets each record stands for.
    pub(super) ranges: std::sync::OnceLock<crate::store::RecordRanges>,
}

/// Opens the history and the log of `config.store.data_dir`, if it names one.
pub(super) async fn open_durability(
    config: &Config,
    metrics: &Metrics,
) -> Result<Durable, StartError> {
    let Some(dir) = &config.store.data_dir else {
        return Ok(Durable::default());
    };
    // The sealed files first: the log's numbering continues above theirs, and a record whose
    // spans they hold is not stored again.
    let location = config
        .store
        .history
        .clone()
        .unwrap_or_else(|| dir.join("spans").display().to_string());
    let history = Arc::new(History::new(&location)?);
    let files = history.list().await?;
    let mut wal_config = WalConfig::new(dir.join("wal"), config.store.wal_sync());
    wal_config.track_sealing = true;
    wal_config.min_next_seq = files.iter().map(|f| f.seqs.1).max().unwrap_or(0) + 1;
    let (wal, recovery) = tokio::task::spawn_blocking(move || Wal::open(wal_config))
        .await
        .map_err(|e| StartError::Runtime(std::io::Error::other(e)))??;
    for damage in &recovery.damage {
        say_damaged(damage);
    }
    metrics.register_collector(Box::new(WalMetrics(wal.clone())));
    Ok(Durable {
        history: Some((history, files)),
        log: Some((wal, recovery)),
    })
}

/// Logs what the log's reading skipped, with where its bytes went.
fn say_damaged(damage: &Damage) {
    let moved_to = damage
        .moved_to
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if damage.is_tail() {
        tracing::warn!(
            path = %damage.path.display(),
            offset = damage.offset,
            bytes = damage.bytes,
            reason = %damage.reason,
            moved_to,
            "write-ahead log: skipped a damaged tail (a torn write, or damage with no good record after it); its bytes are moved aside, every record before it is kept"
        );
    } else {
        tracing::warn!(
            path = %damage.path.display(),
            offset = damage.offset,
            bytes = damage.bytes,
            records = damage.records.unwrap_or_default(),
            reason = %damage.reason,
            moved_to,
            "write-ahead log: skipped damaged records in the middle of a segment; their bytes are moved aside, every good record before and after them is kept"
        );
    }
}
