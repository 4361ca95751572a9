//! Stored batches as Parquet files: the `spans` table's columns (what SQL users, DuckDB and
//! Spark see alike), one file per hour of `start_time`, rows sorted by `start_time` so that
//! row-group statistics prune time ranges, zstd, and a Bloom filter on `trace_id` in every
//! row group so that a trace lookup reads only the groups that may hold it.

use std::collections::BTreeMap;

use datafusion::arrow::array::AsArray as _;
use datafusion::arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::TimestampNanosecondType;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::decode::schema::{col, span_schema};
use crate::store::view::public_batch;

/// Nanoseconds in an hour, the partition's width.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// Rows in a row group: large enough for scans to read whole column chunks, small enough that
/// a trace lookup skips most of a file by its Bloom filters (at 10 bits a trace, a group's
/// filter is about 160 KiB).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The key of the file metadata that lists the write-ahead log records a file holds.
pub const WAL_SEQS_KEY: &str = "wayfinder.wal_seqs";

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

/// Encodes stored-layout batches as one Parquet file per hour of `start_time`, each noting
/// `seqs` (the log records they came from, as [`super::seqs::encode`] writes them).
pub fn encode(stored: &[RecordBatch], seqs: &str) -> Result<Vec<HourFile>, EncodeError> {
    let schema = span_schema();
    let mut public = Vec::with_capacity(stored.len());
    for batch in stored {
        if let Some(rows) = public_batch(batch, &schema, None, None)? {
            public.push(rows);
        }
    }
    if public.is_empty() {
        return Ok(Vec::new());
    }
    let all = concat_batches(&schema, &public)?;
    drop(public);
    // Sorted by start time, so each hour is a contiguous run.
    let order = sort_to_indices(all.column(col::START_TIME), None, None)?;
    let sorted = take_record_batch(&all, &order)?;
    drop(all);
    let starts = sorted
        .column(col::START_TIME)
        .as_primitive::<TimestampNanosecondType>();
    let mut runs: BTreeMap<i64, (u32, u32)> = BTreeMap::new();
    for (row, start) in starts.values().iter().enumerate() {
        let hour = start.div_euclid(HOUR_NS);
        let run = runs.entry(hour).or_insert((row as u32, row as u32));
        run.1 = row as u32 + 1;
    }
    let properties = properties(seqs);
    let mut files = Vec::with_capacity(runs.len());
    for (hour, (from, to)) in runs {
        let rows = sorted.slice(from as usize, (to - from) as usize);
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, schema.clone(), Some(properties.clone()))?;
        writer.write(&rows)?;
        writer.close()?;
        files.push(HourFile {
            hour,
            rows: rows.num_rows(),
            bytes,
        });
    }
    Ok(files)
}

/// zstd (level 3: about as fast as the ingest, a third of the size of LZ4 on span text), page
/// statistics on every column, a Bloom filter on `trace_id`.
fn properties(seqs: &str) -> WriterProperties {
    let level = ZstdLevel::try_new(3).unwrap_or_default();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("trace_id"), 0.01)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            WAL_SEQS_KEY.to_owned(),
            seqs.to_owned(),
        )]))
        .build()
}
