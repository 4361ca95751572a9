//! Stored batches as Parquet files: the `spans` table's columns (what SQL users, DuckDB and
//! Spark see alike), one file per hour of `start_time`, rows sorted by `start_time` so that
//! row-group statistics prune time ranges, zstd, and a Bloom filter on `trace_id` in every
//! row group so that a trace lookup reads only the groups that may hold it.

use datafusion::arrow::array::AsArray as _;
use datafusion::arrow::compute::{concat, interleave_record_batch, sort_to_indices};
use datafusion::arrow::datatypes::TimestampNanosecondType;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::decode::schema::{span_schema, stored};
use crate::store::view::public_batch;

/// Nanoseconds in an hour, the partition's width.
pub(crate) const HOUR_NS: i64 = 3_600_000_000_000;

/// Rows in a row group: large enough for scans to read whole column chunks, small enough that
/// a trace lookup skips most of a file by its Bloom filters (at 10 bits a trace, a group's
/// filter is about 160 KiB).
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The key of the file metadata that lists the write-ahead log records a file holds.
pub(crate) const WAL_SEQS_KEY: &str = "wayfinder.wal_seqs";

/// In fleet mode, the key of the file metadata that lists the offsets of the spans topic's
/// messages a file holds (ranges, as [`super::seqs::encode`] writes them).
pub(crate) const KAFKA_OFFSETS_KEY: &str = "wayfinder.kafka_offsets";

/// In fleet mode, the key of the file metadata that names the partition of those offsets.
pub(crate) const KAFKA_PARTITION_KEY: &str = "wayfinder.kafka_partition";

/// One hour's rows, ready to write.
#[derive(Debug)]
pub struct HourFile {
    /// Hours since the Unix epoch of every row's `start_time` (negative before it).
    pub hour: i64,
    /// The rows.
    pub rows: usize,
    /// The Parquet file.
    pub bytes: Vec<u8>,
}

/// Why batches could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Building or sorting the rows failed.
    #[error("cannot build the rows to seal: {0}")]
    Arrow(#[from] ArrowError),
    /// Writing Parquet failed.
    #[error("cannot write Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// Encodes stored-layout batches as one Parquet file per hour of `start_time`, each with
/// `metadata` (the log records or the offsets they came from, as [`super::seqs::encode`]
/// writes them, under [`WAL_SEQS_KEY`] or [`KAFKA_OFFSETS_KEY`]).
///
/// Only the start times are gathered and sorted whole; the rows are then taken from the stored
/// batches one row group at a time, turned into the table's columns (attribute maps and
/// resource columns expanded from their dictionaries) and written, so that the seal's memory
/// is the stored batches plus one expanded row group and the compressed files, not the whole
/// seal expanded two or three times over (concatenated, then sorted).
pub(crate) fn encode(
    stored: &[RecordBatch],
    metadata: &[(&str, String)],
) -> Result<Vec<HourFile>, EncodeError> {
    let schema = span_schema();
    let stored: Vec<&RecordBatch> = stored.iter().filter(|b| b.num_rows() > 0).collect();
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    // Every row as (batch, row), in start-time order.
    let starts: Vec<&dyn datafusion::arrow::array::Array> = stored
        .iter()
        .map(|batch| batch.column(stored::START_TIME).as_ref())
        .collect();
    let starts = concat(&starts)?;
    let order = sort_to_indices(&starts, None, None)?;
    let starts = starts.as_primitive::<TimestampNanosecondType>();
    let mut origin = Vec::with_capacity(starts.len());
    for (batch, rows) in stored.iter().enumerate() {
        origin.extend((0..rows.num_rows()).map(|row| (batch, row)));
    }
    let properties = properties(metadata);
    let mut files = Vec::new();
    let mut at = 0;
    let order = order.values();
    while at < order.len() {
        let hour = starts.value(order[at] as usize).div_euclid(HOUR_NS);
        let end = at
            + order[at..]
                .iter()
                .position(|&i| starts.value(i as usize).div_euclid(HOUR_NS) != hour)
                .unwrap_or(order.len() - at);
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, schema.clone(), Some(properties.clone()))?;
        for group in order[at..end].chunks(ROW_GROUP_ROWS) {
            let picks: Vec<(usize, usize)> = group.iter().map(|&i| origin[i as usize]).collect();
            let rows = interleave_record_batch(&stored, &picks)?;
            if let Some(public) = public_batch(&rows, &schema, None, None)? {
                writer.write(&public)?;
            }
        }
        writer.close()?;
        files.push(HourFile {
            hour,
            rows: end - at,
            bytes,
        });
        at = end;
    }
    Ok(files)
}

/// zstd (level 3: about as fast as the ingest, a third of the size of LZ4 on span text), page
/// statistics on every column, a Bloom filter on `trace_id`.
fn properties(metadata: &[(&str, String)]) -> WriterProperties {
    let level = ZstdLevel::try_new(3).unwrap_or_default();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("trace_id"), 0.01)
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(key, value)| KeyValue::new((*key).to_owned(), value.clone()))
                .collect(),
        ))
        .build()
}
