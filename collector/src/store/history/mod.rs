//! The sealed history: spans written out of memory as Parquet files through `object_store`,
//! in a local directory (`DIR/spans`) or an S3-compatible bucket, where the collector's SQL
//! reads them beside memory and other engines (DuckDB, Spark, Trino, DataFusion) read them as
//! they are.
//!
//! Layout: `hour=YYYY-MM-DDTHH/{first}-{last}-{tag}-{i}of{n}.parquet`. The hour is that of the
//! rows' `start_time` (UTC); `first` and `last` bound the write-ahead log records whose spans
//! the file holds (the exact set is in its metadata, [`encode::WAL_SEQS_KEY`]); one seal
//! writes `n` files, one per hour its rows span, in hour order; the last commits it. At start a
//! seal without its last file (a crash between two writes) is deleted and its records
//! replayed from the log instead.
//!
//! In fleet mode the files of each partition of the spans topic are under `partition=P/`
//! (`partition=P/hour=…/…`), `first` and `last` are the partition's offsets, and the exact
//! offsets are in [`encode::KAFKA_OFFSETS_KEY`]: a partition that moves keeps its prefix, and
//! its new owner skips the offsets already sealed. There a seal without its last file is left
//! for the partition's next owner to delete (another collector may be writing it now).

pub(crate) mod encode;
pub(crate) mod seqs;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

pub(crate) use encode::{EncodeError, HOUR_NS, HourFile};

/// The offset's bits of a fleet record's sequence number (the partition is above them).
pub(crate) const OFFSET_BITS: u32 = 48;

/// A fleet record's sequence number: its partition above [`OFFSET_BITS`], its offset below.
pub(crate) fn partition_seq(partition: u16, offset: u64) -> u64 {
    (u64::from(partition) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
}

/// One sealed file.
#[derive(Debug, Clone)]
pub struct SealedFile {
    /// Where it is in the store.
    pub location: Path,
    /// Its size in bytes.
    pub size: u64,
    /// Hours since the epoch of its rows' start.
    pub hour: i64,
    /// When it was written (its object's modification time): retention goes by it too, so
    /// that spans stamped in the future (an hour of 2200) do not outlive `--retention`.
    pub sealed_at: SystemTime,
    /// The lowest and highest log record it holds spans of (in fleet mode, as
    /// [`partition_seq`]s).
    pub seqs: (u64, u64),
    /// In fleet mode, the partition of the spans topic its spans came from.
    pub partition: Option<u16>,
    /// Which seal wrote it, and how many files that seal wrote.
    seal: (String, u32),
    /// Which of them it is, from 1.
    part: u32,
}

/// The same file: every field but when it was written (as listed, the object's modification
/// time; as written, the clock's).
impl PartialEq for SealedFile {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.location,
            self.size,
            self.hour,
            self.seqs,
            self.partition,
            &self.seal,
            self.part,
        ) == (
            &other.location,
            other.size,
            other.hour,
            other.seqs,
            other.partition,
            &other.seal,
            other.part,
        )
    }
}

impl Eq for SealedFile {}

/// Why the history could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The location is not a directory or a bucket URL this build knows.
    #[error("cannot use {location} for sealed spans: {reason}")]
    Location {
        /// What was given.
        location: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the store failed.
    #[error("sealed spans: {0}")]
    Store(#[from] object_store::Error),
    /// A file's metadata could not be read.
    #[error("sealed spans: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: datafusion::parquet::errors::ParquetError,
    },
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Called outside a tokio runtime (sealing blocks on the runtime's I/O).
    #[error("sealed spans are written only inside the collector's runtime")]
    NoRuntime,
}

/// Where sealed files go.
#[derive(Debug, Clone)]
pub struct History {
    store: Arc<dyn ObjectStore>,
    /// The store's URL (`file:///`, `s3://bucket`), as DataFusion's runtime registers it.
    store_url: ObjectStoreUrl,
    /// The root of the layout inside the store.
    prefix: Path,
    /// What was configured, for messages.
    location: String,
}

impl History {
    /// The history at `location`: a directory (made if missing) or `file:///…`, or an
    /// S3-compatible bucket `s3://bucket/prefix`, configured from the usual `AWS_*` variables
    /// (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO and other S3-compatible stores).
    pub fn new(location: &str) -> Result<Self, HistoryError> {
        let refuse = |reason: String| HistoryError::Location {
            location: location.to_owned(),
            reason,
        };
        let local = |dir: &std::path::Path| -> Result<Self, HistoryError> {
            std::fs::create_dir_all(dir).map_err(|e| refuse(e.to_string()))?;
            let dir = std::fs::canonicalize(dir).map_err(|e| refuse(e.to_string()))?;
            let prefix = Path::from_absolute_path(&dir).map_err(|e| refuse(e.to_string()))?;
            Ok(Self {
                store: Arc::new(object_store::local::LocalFileSystem::new()),
                store_url: ObjectStoreUrl::local_filesystem(),
                prefix,
                location: location.to_owned(),
            })
        };
        let Some((scheme, rest)) = location.split_once("://") else {
            return local(std::path::Path::new(location));
        };
        match scheme {
            "file" => local(std::path::Path::new(&format!(
                "/{}",
                rest.trim_start_matches('/')
            ))),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(refuse("no bucket named".into()));
                }
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| refuse(e.to_string()))?;
                Ok(Self {
                    store: Arc::new(store),
                    store_url: ObjectStoreUrl::parse(format!("s3://{bucket}"))
                        .map_err(|e| refuse(e.to_string()))?,
                    prefix: Path::from(prefix.trim_matches('/')),
                    location: location.to_owned(),
                })
            }
            other => Err(refuse(format!(
                "`{other}://` is not supported: give a directory, file:// or s3://"
            ))),
        }
    }

    /// The object store, for DataFusion's runtime.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL DataFusion reaches the store by.
    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }

    /// What was configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A file's URL for a listing table.
    pub fn table_url(&self, file: &SealedFile) -> datafusion::error::Result<ListingTableUrl> {
        ListingTableUrl::parse(format!(
            "{}{}",
            self.store_url.as_str(),
            file.location.as_ref()
        ))
    }

    /// Every sealed file, oldest hour first. Files of a seal left incomplete by a crash are
    /// deleted (their records are still in the log); files not of this layout are left alone
    /// and reported.
    pub async fn list(&self) -> Result<Vec<SealedFile>, HistoryError> {
        let (files, incomplete) = self.listing(None).await?;
        if !incomplete.is_empty() {
            tracing::warn!(
                files = incomplete.len(),
                "sealed spans: a seal was cut short by a crash; its files are deleted and its spans replayed from the log"
            );
            self.delete(&incomplete).await;
        }
        Ok(files)
    }

    /// Fleet mode: every complete seal of every partition, oldest hour first; an incomplete
    /// one is left alone (its collector may be writing it now: [`Self::take_partition`]).
    pub async fn list_fleet(&self) -> Result<Vec<SealedFile>, HistoryError> {
        Ok(self.listing(None).await?.0)
    }

    /// Fleet mode, when this collector takes `partition`: its complete seals; an incomplete
    /// one was cut short by its last owner's crash (a graceful owner seals before it lets
    /// go), and is deleted: its offsets were not committed, and are read again.
    pub async fn take_partition(&self, partition: u16) -> Result<Vec<SealedFile>, HistoryError> {
        let (files, incomplete) = self.listing(Some(partition)).await?;
        if !incomplete.is_empty() {
            tracing::warn!(
                partition,
                files = incomplete.len(),
                "sealed spans: a seal of the partition was cut short by its last owner's crash; its files are deleted and its offsets read again"
            );
            self.delete(&incomplete).await;
        }
        Ok(files)
    }

    /// The complete and the incomplete seals' files, under `partition`'s prefix or all.
    async fn listing(
        &self,
        partition: Option<u16>,
    ) -> Result<(Vec<SealedFile>, Vec<SealedFile>), HistoryError> {
        let under = match partition {
            Some(p) => self.prefix.clone().join(partition_dir(p)),
            None => self.prefix.clone(),
        };
        let objects: Vec<_> = self.store.list(Some(&under)).try_collect().await?;
        let mut files = Vec::new();
        for object in objects {
            let sealed_at = SystemTime::from(object.last_modified);
            match parse(&self.prefix, &object.location, object.size, sealed_at) {
                Some(file) => files.push(file),
                None => {
                    tracing::warn!(path = %object.location, "not a sealed span file of this layout; left alone")
                }
            }
        }
        // A seal writes its files in hour order and the last one (`n` of `n`) commits it:
        // retention deletes the older hours first, so a seal without its last file was cut
        // short by a crash (or, in a fleet, is being written).
        let committed: HashSet<&str> = files
            .iter()
            .filter(|f| f.part == f.seal.1)
            .map(|f| f.seal.0.as_str())
            .collect();
        let (mut complete, incomplete): (Vec<SealedFile>, Vec<SealedFile>) = files
            .iter()
            .cloned()
            .partition(|f| committed.contains(f.seal.0.as_str()));
        complete.sort_by_key(|f| (f.hour, f.seqs));
        Ok((complete, incomplete))
    }

    /// The log records held by `files` whose ranges reach `from` or later, as ranges (in fleet
    /// mode, the offsets as [`partition_seq`]s).
    pub async fn sealed_seqs(
        &self,
        files: &[SealedFile],
        from: u64,
    ) -> Result<Vec<(u64, u64)>, HistoryError> {
        let mut ranges = Vec::new();
        // A log's records count from 1 (0 is none); a partition's offsets from 0.
        let holds_any = |f: &&SealedFile| f.partition.is_some() || f.seqs.1 > 0;
        for file in files.iter().filter(|f| f.seqs.1 >= from).filter(holds_any) {
            let key = match file.partition {
                None => encode::WAL_SEQS_KEY,
                Some(_) => encode::KAFKA_OFFSETS_KEY,
            };
            let text = self.footer_value(file, key).await?;
            match seqs::decode(&text) {
                Some(found) => {
                    ranges.extend(found.into_iter().map(|(a, b)| match file.partition {
                        None => (a, b),
                        Some(p) => (partition_seq(p, a), partition_seq(p, b)),
                    }))
                }
                None => {
                    tracing::warn!(path = %file.location, "sealed spans: the file's record list cannot be read; its records are treated as not sealed")
                }
            }
        }
        Ok(ranges)
    }

    /// A key of a file's metadata, read from its footer (two ranged reads).
    async fn footer_value(&self, file: &SealedFile, key: &str) -> Result<String, HistoryError> {
        let read_error = |source| HistoryError::Read {
            path: file.location.to_string(),
            source,
        };
        let corrupt = || {
            read_error(datafusion::parquet::errors::ParquetError::General(
                "too short for a Parquet file".into(),
            ))
        };
        if file.size < 8 {
            return Err(corrupt());
        }
        let tail = self
            .store
            .get_range(&file.location, file.size - 8..file.size)
            .await?;
        let tail: [u8; 8] = tail[..].try_into().map_err(|_| corrupt())?;
        let length = FooterTail::try_new(&tail)
            .map_err(read_error)?
            .metadata_length() as u64;
        if length + 8 > file.size {
            return Err(corrupt());
        }
        let footer = self
            .store
            .get_range(&file.location, file.size - 8 - length..file.size - 8)
            .await?;
        let metadata = ParquetMetaDataReader::decode_metadata(&footer).map_err(read_error)?;
        Ok(metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == key))
            .and_then(|kv| kv.value.clone())
            .unwrap_or_default())
    }

    /// Writes one seal's files (all or none usable: see the module's layout); in fleet mode
    /// under `partition`'s prefix, named by its offsets.
    pub async fn put(
        &self,
        files: Vec<HourFile>,
        seq_bounds: (u64, u64),
        partition: Option<u16>,
    ) -> Result<Vec<SealedFile>, HistoryError> {
        let n = files.len() as u32;
        let tag = format!("{:016x}", fastrand::u64(..));
        let mut written = Vec::with_capacity(files.len());
        let (root, named) = match partition {
            None => (self.prefix.clone(), seq_bounds),
            Some(p) => (
                self.prefix.clone().join(partition_dir(p)),
                (offset_of(seq_bounds.0), offset_of(seq_bounds.1)),
            ),
        };
        for (i, file) in files.into_iter().enumerate() {
            let name = format!(
                "{:020}-{:020}-{tag}-{}of{n}.parquet",
                named.0,
                named.1,
                i + 1
            );
            let location = root
                .clone()
                .join(format!("hour={}", hour_name(file.hour)))
                .join(name);
            let size = file.bytes.len() as u64;
            if let Err(error) = self
                .store
                .put(&location, PutPayload::from(file.bytes))
                .await
            {
                // What was written of this seal goes too: the memory keeps the spans.
                self.delete(&written).await;
                return Err(error.into());
            }
            written.push(SealedFile {
                location,
                size,
                hour: file.hour,
                sealed_at: SystemTime::now(),
                seqs: seq_bounds,
                partition,
                seal: (seal_key(named, &tag), n),
                part: i as u32 + 1,
            });
        }
        Ok(written)
    }

    /// Deletes files; a failure is logged (the next retention pass tries again).
    pub async fn delete(&self, files: &[SealedFile]) {
        for file in files {
            if let Err(error) = self.store.delete(&file.location).await
                && !matches!(error, object_store::Error::NotFound { .. })
            {
                tracing::warn!(%error, path = %file.location, "sealed spans: cannot delete a file");
            }
        }
    }
}

/// Whether `file` is past `retention` at `now`: its hour is (every span in it started before
/// `now - retention`), or it was written more than an hour beyond the retention ago (every span
/// in it arrived before then, whatever its timestamps say).
pub(crate) fn expired(file: &SealedFile, now: SystemTime, retention: Duration) -> bool {
    file.hour <= expired_through(now, retention)
        || file
            .sealed_at
            .checked_add(retention + Duration::from_secs(3600))
            .is_some_and(|deadline| deadline < now)
}

/// The hours-since-epoch of the latest partition past `retention` at `now`: partitions up to
/// it hold only spans that started before `now - retention`.
pub(crate) fn expired_through(now: SystemTime, retention: Duration) -> i64 {
    let cutoff = now
        .checked_sub(retention)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    cutoff.div_euclid(HOUR_NS) - 1
}

/// `2026-12-03T14` for the hour that starts then (hours before 1970 are named as 1970's first).
pub(crate) fn hour_name(hour: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(hour.max(0) as u64 * 3600);
    humantime::format_rfc3339_seconds(at).to_string()[..13].to_owned()
}

fn parse_hour(name: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(&format!("{name}:00:00Z")).ok()?;
    Some((at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() / 3600) as i64)
}

fn seal_key(seqs: (u64, u64), tag: &str) -> String {
    format!("{}-{}-{tag}", seqs.0, seqs.1)
}

/// A sealed file from its place in the layout.
fn parse(prefix: &Path, location: &Path, size: u64, sealed_at: SystemTime) -> Option<SealedFile> {
    let mut parts = location.prefix_match(prefix)?.peekable();
    let partition = match parts.peek()?.as_ref().strip_prefix("partition=") {
        Some(p) => {
            let p: u16 = p.parse().ok()?;
            parts.next();
            Some(p)
        }
        None => None,
    };
    let hour = parts.next()?;
    let name = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let hour = parse_hour(hour.as_ref().strip_prefix("hour=")?)?;
    let stem = name.as_ref().strip_suffix(".parquet")?;
    let mut fields = stem.splitn(4, '-');
    let first: u64 = fields.next()?.parse().ok()?;
    let last: u64 = fields.next()?.parse().ok()?;
    let tag = fields.next()?;
    let (i, n) = fields.next()?.split_once("of")?;
    let (i, n): (u32, u32) = (i.parse().ok()?, n.parse().ok()?);
    if i == 0 || i > n || tag.len() != 16 {
        return None;
    }
    let seqs = match partition {
        None => (first, last),
        Some(p) => (partition_seq(p, first), partition_seq(p, last)),
    };
    Some(SealedFile {
        location: location.clone(),
        size,
        hour,
        sealed_at,
        seqs,
        partition,
        seal: (seal_key((first, last), tag), n),
        part: i,
    })
}

/// `partition=P`, a partition's prefix.
fn partition_dir(partition: u16) -> String {
    format!("partition={partition}")
}

/// A fleet record's partition and offset.
pub(crate) fn split_seq(seq: u64) -> (u16, u64) {
    ((seq >> OFFSET_BITS) as u16, offset_of(seq))
}

/// A fleet record's offset in its partition.
pub(crate) fn offset_of(seq: u64) -> u64 {
    seq & ((1 << OFFSET_BITS) - 1)
}

#[cfg(test)]
mod tests;
