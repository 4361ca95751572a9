use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

use super::*;
use crate::decode::decode_traces;
use crate::decode::schema::span_schema;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, Sealing, SpanStore, StoreConfig};
use crate::testing::{span, trace_request};

const HOUR: u64 = 3600;

/// A batch of `n` spans of trace `[trace; 16]`, starting `start_s` seconds after the epoch.
fn batch(trace: u8, n: u64, start_s: u64) -> crate::decode::SpanBatch {
    let start = start_s * 1_000_000_000;
    let spans = (0..n)
        .map(|i| span([trace; 16], i + 1, "op", start + i, start + i + 10))
        .collect();
    decode_traces(&trace_request(Some("svc"), spans))
        .unwrap()
        .batch
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    history: Arc<History>,
    store: Arc<MemoryStore>,
    sealed: Arc<Mutex<Vec<u64>>>,
}

fn fixture(interval: Duration) -> Fixture {
    fixture_with(interval, false)
}

fn fixture_with(interval: Duration, partitioned: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::new(dir.path().join("spans").to_str().unwrap()).unwrap());
    let sealed = Arc::new(Mutex::new(Vec::new()));
    let told = sealed.clone();
    let store = MemoryStore::new(
        StoreConfig {
            retention: Duration::from_secs(100 * 24 * HOUR),
            segment_rows: 10,
            ..StoreConfig::default()
        },
        Arc::new(Metrics::new()),
    )
    .with_sealing(
        Sealing {
            history: history.clone(),
            interval,
            file_rows: 1 << 20,
            on_sealed: Arc::new(move |seqs| told.lock().extend_from_slice(seqs)),
            partitioned,
            records: None,
        },
        Vec::new(),
    );
    Fixture {
        _dir: dir,
        history,
        store: Arc::new(store),
        sealed,
    }
}

/// Seals everything at `now`, on a blocking thread as upkeep does.
async fn flush(store: &Arc<MemoryStore>, now: SystemTime) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.flush_at(now))
        .await
        .unwrap();
}

/// Runs upkeep at `now` where sealing may block on the runtime.
async fn maintain(store: &Arc<MemoryStore>, now: SystemTime) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.maintain(now))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sealing_moves_spans_from_memory_to_hourly_parquet_files() {
    let f = fixture(Duration::from_secs(60));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    // Spans of two hours, from records 7, 8 and 9.
    f.store
        .append_logged_at(batch(1, 10, 1_000 * HOUR + 10), Some(7), t0);
    f.store
        .append_logged_at(batch(2, 10, 1_000 * HOUR + 20), Some(8), t0);
    f.store
        .append_logged_at(batch(3, 5, 1_001 * HOUR + 5), Some(9), t0);
    maintain(&f.store, t0 + Duration::from_secs(1)).await;
    assert!(
        f.store.view().files.is_empty(),
        "not due yet: fewer spans than a file and younger than the interval"
    );
    assert_eq!(f.store.stats().rows, 25);

    flush(&f.store, t0 + Duration::from_secs(2)).await;
    let view = f.store.view();
    assert_eq!(f.store.stats().rows, 0, "sealed spans leave memory");
    assert!(view.batches.is_empty());
    let hours: Vec<i64> = view.files.iter().map(|f| f.hour).collect();
    assert_eq!(hours, [1_000, 1_001], "one file per hour of start_time");
    let mut told = f.sealed.lock().clone();
    told.sort_unstable();
    assert_eq!(told, [7, 8, 9], "the log is told which records are sealed");

    // What is on disk is what the store knows, and readable as plain Parquet.
    let listed = f.history.list().await.unwrap();
    assert_eq!(listed, view.files);
    let names: Vec<String> = listed.iter().map(|f| f.location.to_string()).collect();
    assert!(names[0].contains("/hour=1970-02-11T16/"), "{names:?}");
    let mut rows = 0;
    for file in &listed {
        let path = format!("/{}", file.location.as_ref());
        let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let metadata = reader.metadata();
        let columns: Vec<String> = metadata
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let want: Vec<String> = span_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(columns, want, "the SQL table's column names");
        for group in metadata.row_groups() {
            rows += group.num_rows();
            let trace_id = group.column(0);
            assert!(
                trace_id.bloom_filter_offset().is_some(),
                "a Bloom filter on trace_id"
            );
            assert!(matches!(trace_id.compression(), Compression::ZSTD(_)));
            assert!(trace_id.statistics().is_some(), "statistics");
        }
    }
    assert_eq!(rows, 25, "every span sealed once");
    let ranges = f.history.sealed_seqs(&listed, 0).await.unwrap();
    assert_eq!(
        ranges,
        [(7, 9), (7, 9)],
        "each file lists its seal's records"
    );
    assert!(
        f.history.sealed_seqs(&listed, 10).await.unwrap().is_empty(),
        "files wholly below the log's oldest record are not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn queries_share_the_sealed_files_footers() {
    let f = fixture(Duration::from_secs(60));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    f.store
        .append_logged_at(batch(1, 10, 1_000 * HOUR + 10), Some(1), t0);
    f.store
        .append_logged_at(batch(2, 5, 1_001 * HOUR + 5), Some(2), t0);
    flush(&f.store, t0 + Duration::from_secs(2)).await;
    assert_eq!(f.store.view().files.len(), 2, "two sealed files");
    let engine = crate::serve::sql::QueryEngine::new(
        f.store.clone(),
        crate::serve::sql::QueryLimits {
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            max_rows: 1_000,
            max_concurrent: 2,
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    assert_eq!(engine.cached_footers(), 0);
    for round in 0..3 {
        let result = engine
            .sql("SELECT count(*) FROM spans WHERE start_time IS NOT NULL")
            .await
            .unwrap();
        let count = result.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(count, 15, "round {round}: every sealed span");
        // Each file's footer is read by the first query and kept for the next ones (a runtime
        // of its own per query used to start each one with empty caches).
        assert_eq!(engine.cached_footers(), 2, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_seal_is_due_after_its_interval() {
    let f = fixture(Duration::from_secs(60));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    f.store
        .append_logged_at(batch(1, 10, 1_000 * HOUR), Some(1), t0);
    maintain(&f.store, t0 + Duration::from_secs(30)).await;
    assert!(f.store.view().files.is_empty(), "30 s < the 60 s interval");
    maintain(&f.store, t0 + Duration::from_secs(61)).await;
    assert_eq!(f.store.view().files.len(), 1, "due after the interval");
    assert_eq!(f.store.stats().rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn start_up_deletes_a_seal_cut_short_and_leaves_foreign_files() {
    let f = fixture(Duration::from_secs(60));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    f.store
        .append_logged_at(batch(1, 10, 1_000 * HOUR), Some(1), t0);
    f.store
        .append_logged_at(batch(2, 10, 1_001 * HOUR), Some(2), t0);
    flush(&f.store, t0).await;
    let files = f.store.view().files;
    assert_eq!(files.len(), 2);
    // A crash after the first of the two files: the second, which commits the seal, is missing.
    f.history.store.delete(&files[1].location).await.unwrap();
    let foreign = f.history.prefix.clone().join("notes.txt");
    f.history
        .store
        .put(&foreign, PutPayload::from_static(b"hello"))
        .await
        .unwrap();
    let listed = f.history.list().await.unwrap();
    assert!(
        listed.is_empty(),
        "the incomplete seal is not used: {listed:?}"
    );
    assert!(
        f.history.store.head(&files[0].location).await.is_err(),
        "its other file is deleted (the log replays its records)"
    );
    assert!(
        f.history.store.head(&foreign).await.is_ok(),
        "a file not of the layout is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn retention_deletes_whole_hours() {
    let f = fixture(Duration::from_secs(60));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    f.store
        .append_logged_at(batch(1, 10, 1_000 * HOUR), Some(1), t0);
    f.store
        .append_logged_at(batch(2, 10, 1_010 * HOUR), Some(2), t0);
    flush(&f.store, t0).await;
    assert_eq!(f.store.view().files.len(), 2);
    // 100 days of retention: at hour 1_000 + 2_401 the first hour is past it, not the second.
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs((1_000 + 2_402) * HOUR);
    maintain(&f.store, later).await;
    let hours: Vec<i64> = f.store.view().files.iter().map(|f| f.hour).collect();
    assert_eq!(hours, [1_010]);
    assert_eq!(
        f.history.list().await.unwrap().len(),
        1,
        "deleted on disk too"
    );
}

#[test]
fn hour_names_round_trip() {
    // (hour, name, why)
    let cases = [
        (0, "1970-01-01T00", "the epoch"),
        (492_374, "2026-03-03T14", "a recent hour"),
        (
            -5,
            "1970-01-01T00",
            "before the epoch is named as its first hour",
        ),
    ];
    for (hour, name, why) in cases {
        assert_eq!(hour_name(hour), name, "{why}");
        assert_eq!(parse_hour(name), Some(hour.max(0)), "{why}");
    }
}

#[test]
fn locations_are_checked() {
    // (location, accepted, why)
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("a").display().to_string();
    let file_url = format!("file://{}", dir.path().join("b").display());
    let cases = [
        (local.as_str(), true, "a directory, made if missing"),
        (file_url.as_str(), true, "a file:// URL"),
        ("s3://", false, "a bucket must be named"),
        ("gs://bucket", false, "not built in"),
    ];
    for (location, accepted, why) in cases {
        assert_eq!(History::new(location).is_ok(), accepted, "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_store_that_cannot_seal_says_it_is_full_until_a_seal_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(1, 10, 1_000 * HOUR).bytes();
    let metrics = Arc::new(Metrics::new());
    let store = crate::testing::unsealable_store(
        dir.path(),
        StoreConfig {
            retention: Duration::from_secs(100 * 24 * HOUR),
            segment_rows: 10,
            max_bytes: one * 3 / 2,
            ..StoreConfig::default()
        },
        metrics.clone(),
    );
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    store.append_logged_at(batch(1, 10, 1_000 * HOUR), Some(1), t0);
    assert!(!store.over_budget(), "one batch is within the budget");
    store.append_logged_at(batch(2, 10, 1_000 * HOUR), Some(2), t0);
    assert!(
        store.over_budget(),
        "two are over it, and nothing may be evicted"
    );

    maintain(&store, t0 + Duration::from_secs(1)).await;
    assert!(
        metrics.value("wayfinder_seal_failures_total", &[]) > 0.0,
        "the seal was tried and failed"
    );
    assert!(store.over_budget(), "still full: nothing left memory");
    assert_eq!(store.stats().rows, 20, "nothing unsealed was dropped");

    std::fs::remove_file(dir.path().join("spans")).unwrap();
    maintain(&store, t0 + Duration::from_secs(2)).await;
    assert_eq!(
        store.stats().rows,
        0,
        "sealed once the files can be written"
    );
    assert!(!store.over_budget(), "and ingest may go on");
}

#[test]
fn a_seal_writes_every_row_once_sorted_by_start_time_within_its_hour() {
    use datafusion::arrow::array::AsArray as _;
    use datafusion::arrow::datatypes::TimestampNanosecondType;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    // Three stored batches whose start times interleave across two hours, and more rows than
    // a row group, so that rows are gathered across batches and groups.
    let base = 1_000 * HOUR;
    let stored: Vec<_> = [(1u8, base + 3_000), (2, base + HOUR + 5), (3, base + 10)]
        .into_iter()
        .map(|(trace, start)| batch(trace, 70_000, start))
        .map(crate::decode::SpanBatch::into_record_batch)
        .collect();
    let files = encode::encode(&stored, &[(encode::WAL_SEQS_KEY, "1-3".into())]).unwrap();
    let hours: Vec<i64> = files.iter().map(|f| f.hour).collect();
    assert_eq!(hours, [1_000, 1_001]);
    let mut total = 0;
    for file in &files {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file.bytes.clone()))
                .unwrap()
                .build()
                .unwrap();
        let mut last = i64::MIN;
        let mut rows = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let starts = batch
                .column(crate::decode::schema::col::START_TIME)
                .as_primitive::<TimestampNanosecondType>();
            for start in starts.values().iter().copied() {
                assert!(start >= last, "sorted by start time");
                assert_eq!(start.div_euclid(encode::HOUR_NS), file.hour, "in its hour");
                last = start;
            }
            rows += batch.num_rows();
        }
        assert_eq!(rows, file.rows);
        total += rows;
    }
    assert_eq!(total, 210_000, "every row once");
}

#[test]
fn retention_holds_for_every_partition_whatever_the_timestamps() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let hour = |t: SystemTime| {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 3600).unwrap()
    };
    let file = |hour: i64, sealed_ago: u64| SealedFile {
        location: Path::from("spans/x.parquet"),
        size: 1,
        hour,
        sealed_at: now - Duration::from_secs(sealed_ago),
        seqs: (1, 1),
        partition: None,
        seal: ("x".into(), 1),
        part: 1,
    };
    let retention = Duration::from_secs(3600);
    let year_2200 = hour(SystemTime::UNIX_EPOCH + Duration::from_secs(7_258_118_400));
    // Each row: the file, whether it is past the retention, and why.
    let cases = [
        (file(hour(now), 60), false, "this hour, sealed a minute ago"),
        (
            file(hour(now) - 3, 7_200),
            true,
            "an hour three hours back: its spans are older than the retention",
        ),
        (
            file(year_2200, 60),
            false,
            "stamped in 2200, sealed a minute ago: kept for now",
        ),
        (
            file(year_2200, 7_201),
            true,
            "stamped in 2200, sealed over two hours ago: it escaped the retention before",
        ),
    ];
    for (file, want, why) in cases {
        assert_eq!(expired(&file, now, retention), want, "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn in_a_fleet_each_partition_seals_under_its_prefix_with_its_offsets() {
    let f = fixture_with(Duration::from_secs(60), true);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * HOUR);
    // Partition 1's offsets 5 and 6, partition 2's offset 7, interleaved as a consumer feeds.
    f.store.append_logged_at(
        batch(1, 10, 1_000 * HOUR + 10),
        Some(partition_seq(1, 5)),
        t0,
    );
    f.store.append_logged_at(
        batch(2, 4, 1_000 * HOUR + 20),
        Some(partition_seq(2, 7)),
        t0,
    );
    f.store.append_logged_at(
        batch(3, 3, 1_000 * HOUR + 30),
        Some(partition_seq(1, 6)),
        t0,
    );
    // The same three spans again (an exporter's retry), at offset 8 of partition 1.
    f.store.append_logged_at(
        batch(3, 3, 1_000 * HOUR + 30),
        Some(partition_seq(1, 8)),
        t0,
    );

    // Letting partition 2 go seals only its spans.
    let store = f.store.clone();
    tokio::task::spawn_blocking(move || store.flush_partition_at(2, t0))
        .await
        .unwrap();
    assert_eq!(
        f.store.stats().rows,
        16,
        "partition 1's spans stay in memory"
    );
    assert_eq!(*f.sealed.lock(), [partition_seq(2, 7)]);

    flush(&f.store, t0 + Duration::from_secs(1)).await;
    assert_eq!(f.store.stats().rows, 0);
    let sealed_rows: usize = f
        .store
        .view()
        .files
        .iter()
        .map(|file| {
            let path = format!("/{}", file.location.as_ref());
            let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
            reader.metadata().file_metadata().num_rows() as usize
        })
        .sum();
    assert_eq!(
        sealed_rows, 17,
        "the retried spans are sealed once (10 + 3 + 4)"
    );
    let listed = f.history.list_fleet().await.unwrap();
    let mut names: Vec<String> = listed
        .iter()
        .map(|file| {
            let path = file.location.as_ref();
            path[path.find("partition=").unwrap()..].to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with(
            "partition=1/hour=1970-02-11T16/00000000000000000005-00000000000000000008-"
        ),
        "under the partition's prefix, named by its offsets: {names:?}"
    );
    assert!(
        names[1].starts_with(
            "partition=2/hour=1970-02-11T16/00000000000000000007-00000000000000000007-"
        ),
        "{names:?}"
    );
    let partitions: Vec<Option<u16>> = listed.iter().map(|f| f.partition).collect();
    assert!(partitions.contains(&Some(1)) && partitions.contains(&Some(2)));

    // A new owner of partition 1 reads which offsets are sealed from the files' metadata.
    let taken = f.history.take_partition(1).await.unwrap();
    assert_eq!(taken.len(), 1, "only the partition's own files");
    let ranges = f
        .history
        .sealed_seqs(&taken, partition_seq(1, 0))
        .await
        .unwrap();
    assert_eq!(
        ranges,
        [
            (partition_seq(1, 5), partition_seq(1, 6)),
            (partition_seq(1, 8), partition_seq(1, 8))
        ]
    );
    assert!(
        f.history
            .sealed_seqs(&taken, partition_seq(1, 9))
            .await
            .unwrap()
            .is_empty(),
        "a file wholly below the committed offset is not read"
    );

    // A seal cut short in partition 1 is left alone by a listing (its collector may be writing
    // it) and deleted when the partition is taken (its owner crashed).
    let short = f
        .history
        .prefix
        .clone()
        .join("partition=1")
        .join("hour=1970-02-11T16")
        .join(format!("{:020}-{:020}-{:016x}-1of2.parquet", 9, 10, 1));
    f.history
        .store
        .put(&short, PutPayload::from_static(b"PAR1"))
        .await
        .unwrap();
    assert_eq!(f.history.list_fleet().await.unwrap().len(), 2);
    assert!(f.history.store.head(&short).await.is_ok(), "left alone");
    assert_eq!(f.history.take_partition(1).await.unwrap().len(), 1);
    assert!(
        f.history.store.head(&short).await.is_err(),
        "deleted by the partition's new owner"
    );
}
