//! The SQL behaviour of the `spans` and `health_events` tables, written as sqllogictest files
//! (`tests/sql/*.slt`), as DataFusion tests its own SQL: each file runs against a query engine
//! over a store and a registry holding the fixtures below, through the same `QueryEngine::sql` the HTTP and
//! gRPC endpoints call.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Status, status::StatusCode};
use sqllogictest::{DBOutput, DefaultColumnType};
use wayfinder_collector::testing::Clock;
use wayfinder_collector::testing::Metrics;
use wayfinder_collector::testing::{MemoryStore, SpanStore, StoreConfig};
use wayfinder_collector::testing::{QueryEngine, QueryError, QueryLimits};
use wayfinder_collector::testing::{Registry, RegistryConfig};
use wayfinder_collector::testing::{attribute, span, string_attribute, trace_request};
use wayfinder_decode::decode_traces;
use wayfinder_decode::health::{HealthEvent, HealthStatus};

/// 2026-12-03T00:00:00Z, in nanoseconds.
const T0: u64 = 1_796_256_000_000_000_000;
const MS: u64 = 1_000_000;

/// Two services: `checkout` serves `GET /cart` twice (one failed, 404) and calls `cart`, whose
/// `SELECT` lasts 2 ms.
fn fixture() -> Arc<dyn SpanStore> {
    let store: Arc<dyn SpanStore> = Arc::new(MemoryStore::new(
        StoreConfig::default(),
        Arc::new(Metrics::new()),
    ));
    let mut ok = span([1; 16], 1, "GET /cart", T0, T0 + 10 * MS);
    ok.kind = 2;
    ok.attributes = vec![
        string_attribute("http.route", "/cart"),
        attribute("http.response.status_code", Value::IntValue(200)),
    ];
    let mut failed = span([2; 16], 2, "GET /cart", T0 + 100 * MS, T0 + 130 * MS);
    failed.kind = 2;
    failed.attributes = vec![
        string_attribute("http.route", "/cart"),
        attribute("http.response.status_code", Value::IntValue(404)),
    ];
    failed.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "not found".into(),
    });
    let mut select = span([1; 16], 3, "SELECT", T0 + 2 * MS, T0 + 4 * MS);
    select.kind = 3;
    select.parent_span_id = 1u64.to_be_bytes().to_vec();
    select.attributes = vec![string_attribute("db.system.name", "postgresql")];
    for (service, spans) in [("checkout", vec![ok, failed]), ("cart", vec![select])] {
        let decoded = decode_traces(&trace_request(Some(service), spans)).unwrap();
        store.append(decoded.batch.unwrap());
    }
    store
}

/// `cart-1` registers passing, then reports warning, then leaves (down).
fn registry() -> Arc<Registry> {
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(T0);
    let registry = Arc::new(Registry::new(
        RegistryConfig::default(),
        Clock::starting_at(at),
    ));
    for (status, output) in [
        (HealthStatus::Passing, None),
        (HealthStatus::Warning, Some("pool at 90%")),
        (HealthStatus::Down, None),
    ] {
        registry.beat(HealthEvent {
            service: "cart".into(),
            instance_id: "cart-1".into(),
            address: Some("10.0.0.1:8080".into()),
            status,
            ttl: Duration::from_secs(30),
            seq: None,
            incarnation: None,
            output: output.map(String::from),
        });
    }
    registry
}

struct Engine(QueryEngine);

/// A query's failure, as the endpoints would word it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(QueryError);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Engine {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let result = self.0.sql(sql).await.map_err(Failed)?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &result.batches {
            let formatters: Vec<ArrayFormatter<'_>> = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<_, _>>()
                .expect("every column type has a display");
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; result.schema.fields().len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[tokio::test]
async fn sql_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sql");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {dir}");
    let mut failures = Vec::new();
    for file in &files {
        let store = fixture();
        let limits = QueryLimits {
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            max_rows: 1000,
            max_concurrent: 2,
        };
        let engine = QueryEngine::new(store, limits, Arc::new(Metrics::new()))
            .unwrap()
            .with_registry(registry());
        let mut runner = sqllogictest::Runner::new(|| {
            let engine = engine.clone();
            async move { Ok(Engine(engine)) }
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
