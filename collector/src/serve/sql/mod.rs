//! SQL over the span store with DataFusion.
//!
//! Each query sees a snapshot of the store taken when it starts (batches are shared, not
//! copied), runs on the query runtime (its own threads, so that a heavy query never stalls
//! ingest), and is bounded: a time limit, a memory limit, and a row limit for its answer.
//! Only read queries are planned: DDL, DML, `COPY` and `SET` are refused.
//!
//! The bounds hold against hostile SQL, not only heavy SQL:
//! - a statement is measured before it is planned (`wayfinder-sqlcheck`'s [`Complexity`]:
//!   text, tokens, nesting, relations, nodes), and the query threads have a stack
//!   ([`QUERY_STACK`]) deep enough for every statement within those bounds, so that no query
//!   overflows it;
//! - what DataFusion's memory pool does not see (scalar functions, constant folding, `UNNEST`,
//!   regular expressions) is bounded by [`bounds`];
//! - the answer (its batches, and its JSON or Arrow IPC form, made on the query threads
//!   within the same time limit) is counted in the query's share ([`AnswerBudget`]);
//! - a query past its time limit is answered at once, and its slot of `max_concurrent` is held
//!   until its work has really stopped ([`slot`]: the slot is the query's memory pool's, which
//!   every task and reservation of the query holds; a running function call cannot be
//!   interrupted, which is why [`bounds`] bounds the work of one call too).
//!
//! [`json`] turns Arrow values into the JSON of the query API.
//!
//! [`Complexity`]: wayfinder_sqlcheck::Complexity

mod answer;
mod bounds;
pub(crate) mod json;
mod metrics;
mod slot;
mod spans_table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::{
    CacheManager, CacheManagerConfig, FileMetadataCache, FileStatisticsCache,
};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt as _;
use wayfinder_sqlcheck::{Complexity, SqlCheckError};

pub(crate) use answer::{AnswerBudget, QueryResult};
use bounds::{BoundError, QueryBounds};

use crate::decode::schema::span_schema;
use crate::graph::registry::{Registry, health_events_schema};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::store::SpanStore;
use crate::store::history::{History, SealedFile};
use metrics::SqlMetrics;

/// Limits of the query engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Time limit of one query.
    pub timeout: Duration,
    /// Memory of all queries at once; each running query gets `memory_bytes / max_concurrent`.
    pub memory_bytes: usize,
    /// Most rows in one answer.
    pub max_rows: usize,
    /// Most queries running at once; one more is refused with [`QueryError::Busy`].
    pub max_concurrent: usize,
}

/// Why a query gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The SQL does not parse or plan (syntax, unknown column or function, more than one
    /// statement).
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The statement would change something.
    #[error("only read queries (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) are allowed; this is {0}")]
    NotReadOnly(String),
    /// The query failed while running.
    #[error("query failed: {0}")]
    Execution(String),
    /// The query needed more memory than its share of `--query-memory-bytes` (nothing
    /// spills to disk).
    #[error(
        "the query needed more than its {} of query memory; narrow it (a time range, fewer \
         columns, a LIMIT) or raise --query-memory-bytes",
        bytesize::ByteSize(*.0 as u64)
    )]
    OutOfMemory(usize),
    /// The answer has more rows than allowed.
    #[error("the result has more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// As many queries as allowed are running: retry shortly.
    #[error("{0} queries are running, the most allowed at once; retry shortly")]
    Busy(usize),
    /// The query ran past its time limit.
    #[error(
        "the query ran longer than {} and was cancelled",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
    /// The statement passes a bound of `wayfinder-sqlcheck`'s `Complexity` (its text, tokens,
    /// nesting, relations or nodes): refused before it is planned.
    #[error("query too complex: {0}")]
    TooComplex(String),
    /// A function call, or one row of an `UNNEST`, would make more, or work longer, than one
    /// call may.
    #[error("query too large: {0}")]
    TooLarge(String),
}

impl QueryError {
    fn outcome(&self) -> &'static str {
        match self {
            QueryError::Invalid(_) | QueryError::NotReadOnly(_) => "invalid",
            QueryError::TooComplex(_) => "too_complex",
            QueryError::TooLarge(_) => "too_large",
            QueryError::Execution(_) => "failed",
            QueryError::OutOfMemory(_) => "out_of_memory",
            QueryError::TooManyRows(_) => "too_many_rows",
            QueryError::Timeout(_) => "timeout",
            QueryError::Busy(_) => "busy",
        }
    }
}

/// The stack of each query thread: deep enough for DataFusion to plan and run, in a debug
/// build, any statement within [`Complexity::LIMITS`] (a chain of 1,000 operators and 1,000
/// CTEs planned in 64 MiB; the bounds stop at 256 and 100). It is address space, touched only
/// as deep as a query goes.
pub(crate) const QUERY_STACK: usize = 64 << 20;

/// A slot of the limit on concurrent queries, freed when dropped.
#[derive(Debug)]
pub struct QuerySlot {
    _place: crate::util::cap::Place,
}

/// Runs SQL over a [`SpanStore`].
#[derive(Debug, Clone)]
pub struct QueryEngine {
    store: Arc<dyn SpanStore>,
    registry: Option<Arc<Registry>>,
    /// The limits in force; a configuration reload replaces them ([`QueryEngine::set_limits`]).
    limits: Arc<parking_lot::RwLock<QueryLimits>>,
    metrics: Arc<SqlMetrics>,
    runtime: Arc<QueryRuntime>,
    /// One place per query running.
    running: crate::util::cap::Cap,
    caches: SharedCaches,
}

impl QueryEngine {
    /// The sealed files a query reads now (in fleet mode, every collector's).
    pub(crate) fn sealed_files(&self) -> Vec<crate::store::history::SealedFile> {
        self.store.view().files
    }
}

/// The caches every query shares, so that a sealed file's footer is read and decoded once, not
/// once a query: its Parquet metadata (with the page index) and the statistics DataFusion
/// collects from it for planning. Both are DataFusion's own caches, bounded by their defaults
/// (50 MiB and 20 MiB, outside `--query-memory-bytes`, least recently used evicted), keyed by
/// path and checked against the file's size and modification time, so that a file replaced
/// under the same name is read again. A runtime per query (for its memory limit) used to
/// bring fresh, empty caches each time.
#[derive(Clone)]
struct SharedCaches {
    metadata: Arc<FileMetadataCache>,
    statistics: Option<Arc<FileStatisticsCache>>,
}

impl std::fmt::Debug for SharedCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCaches")
            .field("metadata_entries", &self.metadata.len())
            .field(
                "statistics_entries",
                &self.statistics.as_ref().map(|c| c.len()),
            )
            .finish()
    }
}

impl SharedCaches {
    fn new() -> datafusion::error::Result<Self> {
        let manager = CacheManager::try_new(&CacheManagerConfig::default())?;
        Ok(Self {
            metadata: manager.get_file_metadata_cache(),
            statistics: manager.get_file_statistic_cache(),
        })
    }

    /// A query's cache configuration: these caches, and its own list cache (the listing of a
    /// query's files is its snapshot's).
    fn config(&self) -> CacheManagerConfig {
        CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.metadata.clone()))
            .with_file_statistics_cache(self.statistics.clone())
    }
}

/// The threads queries run on; shut down without waiting when dropped.
#[derive(Debug)]
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl QueryEngine {
    /// An engine over `store` with its own query threads.
    pub fn new(
        store: Arc<dyn SpanStore>,
        limits: QueryLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wayfinder-query")
            .thread_stack_size(QUERY_STACK)
            // Its blocking threads have the same stack (as address space): a few are enough
            // (the answers made in place, local file reads of sealed history).
            .max_blocking_threads(16)
            // Time for the limits; I/O for sealed files in an object store (S3's client).
            .enable_all()
            .build()?;
        Ok(Self {
            store,
            registry: None,
            limits: Arc::new(parking_lot::RwLock::new(limits)),
            metrics: Arc::new(SqlMetrics::register(&metrics)),
            runtime: Arc::new(QueryRuntime(Some(runtime))),
            running: crate::util::cap::Cap::new(limits.max_concurrent),
            caches: SharedCaches::new().map_err(std::io::Error::other)?,
        })
    }

    /// The sealed files whose Parquet metadata the shared cache holds.
    #[cfg(test)]
    pub(crate) fn cached_footers(&self) -> usize {
        self.caches.metadata.len()
    }

    /// Also serves the registry's `health_events` table.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The store queried.
    pub fn store(&self) -> &Arc<dyn SpanStore> {
        &self.store
    }

    /// Runs one read-only statement; its answer as DataFusion made it. What is made of the
    /// answer afterwards is outside the query's bounds: the API uses [`QueryEngine::sql_with`].
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.sql_with(sql, Ok).await
    }

    /// Runs one read-only statement and turns its answer into what the caller sends with
    /// `answer`, on the query threads, within the query's time limit and memory share.
    pub async fn sql_with<T: Send + 'static>(
        &self,
        sql: &str,
        answer: impl FnOnce(QueryResult) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let started = Instant::now();
        let sql = sql.to_owned();
        let max_rows = self.limits().max_rows;
        let result = self
            .run(move |context, bounds, budget| async move {
                let result = execute(context, bounds, &sql, max_rows, budget).await?;
                // CPU work without awaits: the other queries' tasks move to another thread.
                tokio::task::block_in_place(|| answer(result))
            })
            .await;
        self.record(started, &result);
        result
    }

    /// Runs `work` (a read of the store outside SQL, and its JSON) under a slot of the
    /// concurrency limit, on the query threads, within the query's time limit and with its
    /// memory share as the budget of what it makes.
    pub async fn bounded<T: Send + 'static>(
        &self,
        work: impl FnOnce(AnswerBudget) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        self.run(move |_, _, budget| async move { tokio::task::block_in_place(|| work(budget)) })
            .await
    }

    fn record<T>(&self, started: Instant, result: &Result<T, QueryError>) {
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(QueryError::outcome, |_| "ok");
        if matches!(outcome, "busy" | "timeout" | "out_of_memory" | "too_large")
            && self.metrics.limit_log.ready()
            && let Err(error) = result
        {
            tracing::warn!(
                outcome,
                %error,
                "a SQL query met a limit (logged at most once a minute; counted in wayfinder_sql_queries_total)"
            );
        }
        self.metrics
            .queries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A slot of the limit on concurrent queries, for work that reads the store outside SQL
    /// (a trace lookup); refused at once like a query beyond the limit.
    pub fn slot(&self) -> Result<QuerySlot, QueryError> {
        self.running
            .try_take()
            .map(|place| QuerySlot { _place: place })
            .ok_or_else(|| QueryError::Busy(self.running.max()))
    }

    /// Its limits in force.
    pub fn limits(&self) -> QueryLimits {
        *self.limits.read()
    }

    /// New limits, for the queries that start from now on (a configuration reload); queries
    /// running keep theirs, and a lower `max_concurrent` takes effect as they end.
    pub fn set_limits(&self, limits: QueryLimits) {
        *self.limits.write() = limits;
        self.running.set(limits.max_concurrent);
    }

    /// The memory each query may use: an equal share of the memory of all queries.
    fn memory_share(&self) -> usize {
        let limits = self.limits();
        limits.memory_bytes / limits.max_concurrent.max(1)
    }

    /// Runs `work` on the query threads with a session over a snapshot of the store, under a
    /// slot of the concurrency limit and the time limit. Past the time limit the caller is
    /// answered at once and the work is cancelled at its next await; the slot is held until
    /// the work has really ended, so that a call still running counts against the limit.
    async fn run<T, F, W>(&self, work: W) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, QueryError>> + Send + 'static,
        W: FnOnce(SessionContext, QueryBounds, AnswerBudget) -> F + Send + 'static,
    {
        let Some(runtime) = self.runtime.0.as_ref() else {
            return Err(QueryError::Execution(
                "the query runtime is shut down".into(),
            ));
        };
        // Refused at once beyond the limit, not queued: the caller retries (503 + Retry-After).
        // The slot goes into the query's memory pool: it comes back when nothing of the
        // query is left, its own tasks (DataFusion's partitions) included.
        let slot = self.slot()?;
        let (context, bounds) = self.context(slot._place)?;
        let limits = self.limits();
        let share = self.memory_share();
        let budget = AnswerBudget {
            deadline: Instant::now() + limits.timeout,
            timeout: limits.timeout,
            share,
            reservation: Some(
                MemoryConsumer::new("query answer").register(&context.runtime_env().memory_pool),
            ),
            since_check: 0,
        };
        let task = runtime.spawn(work(context, bounds, budget));
        let abort = task.abort_handle();
        match tokio::time::timeout(limits.timeout, task).await {
            Ok(Ok(result)) => result.map_err(|error| match error {
                QueryError::OutOfMemory(_) => QueryError::OutOfMemory(share),
                other => other,
            }),
            Ok(Err(join_error)) => Err(QueryError::Execution(format!(
                "the query stopped: {join_error}"
            ))),
            Err(_) => {
                abort.abort();
                Err(QueryError::Timeout(limits.timeout))
            }
        }
    }

    /// A session with the memory limit, the bounds of [`bounds`] and the `spans` table over a
    /// snapshot of the store.
    fn context(
        &self,
        slot: crate::util::cap::Place,
    ) -> Result<(SessionContext, QueryBounds), QueryError> {
        let internal = |e: DataFusionError| QueryError::Execution(e.to_string());
        // This query's share of the memory of all queries; nothing spills to disk (the OS temp
        // directory is no place for a collector's overflow): past its share a query fails.
        let share = self.memory_share();
        let pool = Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(share),
            std::num::NonZeroUsize::new(5).expect("five"),
        ));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(slot::SlotPool::new(pool, slot)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_cache_manager(self.caches.config())
            .build_arc()
            .map_err(internal)?;
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let bounds = QueryBounds::new(runtime.memory_pool.clone(), share);
        let state = bounds
            .session(
                SessionStateBuilder::new()
                    .with_config(config)
                    .with_runtime_env(runtime)
                    .with_default_features(),
            )
            .build();
        let context = SessionContext::new_with_state(state);
        let view = self.store.view();
        let mut table = spans_table::SpansTable::new(view.batches, 2);
        if let Some(history) = &view.history
            && !view.files.is_empty()
        {
            context
                .runtime_env()
                .register_object_store(history.store_url().as_ref(), history.store().clone());
            table = table.with_sealed(history_table(history, &view.files).map_err(internal)?);
        }
        context
            .register_table("spans", Arc::new(table))
            .map_err(internal)?;
        if let Some(registry) = &self.registry {
            let batch = registry
                .health_events()
                .map_err(|e| QueryError::Execution(e.to_string()))?;
            let table =
                MemTable::try_new(health_events_schema(), vec![vec![batch]]).map_err(internal)?;
            context
                .register_table("health_events", Arc::new(table))
                .map_err(internal)?;
        }
        Ok((context, bounds))
    }
}

/// The sealed files as one listing table of the `spans` schema: DataFusion prunes files and
/// row groups by their statistics (time ranges) and Bloom filters (`trace_id`).
fn history_table(
    history: &History,
    files: &[SealedFile],
) -> datafusion::error::Result<Arc<dyn TableProvider>> {
    let urls = files
        .iter()
        .map(|file| history.table_url(file))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(span_schema());
    Ok(Arc::new(ListingTable::try_new(config)?))
}

async fn execute(
    context: SessionContext,
    bounds: QueryBounds,
    sql: &str,
    max_rows: usize,
    mut budget: AnswerBudget,
) -> Result<QueryResult, QueryError> {
    // Nothing is made yet by this query's calls on this thread.
    bounds::new_batch();
    // The statement's kind and size first (a parse, no planning), then the plan's.
    wayfinder_sqlcheck::check(sql).map_err(|error| match error {
        SqlCheckError::NotReadOnly(kind) => QueryError::NotReadOnly(kind),
        SqlCheckError::TooComplex(passed) => QueryError::TooComplex(passed.to_string()),
        other => QueryError::Invalid(other.to_string()),
    })?;
    // DataFusion's own parse is measured too: it knows statements sqlparser alone does not.
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(classify)?;
    measure(&statement)?;
    let plan = state.statement_to_plan(statement).await.map_err(classify)?;
    refuse_writes(&plan)?;
    let plan = bounds.plan(plan).map_err(|error| match error {
        BoundError::Refused(refusal) => QueryError::Invalid(refusal.to_string()),
        BoundError::DataFusion(error) => classify(error),
    })?;
    let frame = context.execute_logical_plan(plan).await.map_err(classify)?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(classify)?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify)?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(QueryError::TooManyRows(max_rows));
        }
        if batch.num_rows() > 0 {
            // The answer's batches are the query's until it is sent.
            budget.take(batch.get_array_memory_size())?;
            batches.push(batch);
        }
    }
    Ok(QueryResult {
        schema,
        batches,
        budget,
    })
}

/// [`Complexity::LIMITS`] over a statement as DataFusion parsed it; DataFusion's own
/// statements that write are refused here, before planning.
fn measure(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(statement) => {
            wayfinder_sqlcheck::complexity(statement, &Complexity::LIMITS)
                .map_err(|passed| QueryError::TooComplex(passed.to_string()))
        }
        DfStatement::Explain(explain) => measure(&explain.statement),
        DfStatement::CreateExternalTable(_) => {
            Err(QueryError::NotReadOnly("CREATE EXTERNAL TABLE".into()))
        }
        DfStatement::CopyTo(_) => Err(QueryError::NotReadOnly("COPY".into())),
        DfStatement::Reset(_) => Err(QueryError::NotReadOnly("RESET".into())),
    }
}

fn refuse_writes(plan: &LogicalPlan) -> Result<(), QueryError> {
    let kind = match plan {
        LogicalPlan::Ddl(ddl) => Some(format!("DDL ({})", ddl.name())),
        LogicalPlan::Dml(dml) => Some(format!("DML ({})", dml.op)),
        LogicalPlan::Copy(_) => Some("COPY".to_owned()),
        LogicalPlan::Statement(statement) => Some(format!("a statement ({})", statement.name())),
        _ => None,
    };
    if let Some(kind) = kind {
        return Err(QueryError::NotReadOnly(kind));
    }
    // DataFusion's own check, in case it adds kinds of writes that the match above misses.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| QueryError::NotReadOnly(e.to_string()))
}

fn classify(error: DataFusionError) -> QueryError {
    match bounds::refusal(&error) {
        Some(bounds::Refusal::Call(message)) => return QueryError::TooLarge(message),
        Some(bounds::Refusal::Plan(refusal)) => return QueryError::Invalid(refusal.to_string()),
        None => {}
    }
    match error.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => QueryError::Invalid(error.to_string()),
        // The share is filled in by the caller, which knows it.
        DataFusionError::ResourcesExhausted(_) => QueryError::OutOfMemory(0),
        _ => QueryError::Execution(error.to_string()),
    }
}

#[cfg(test)]
mod tests;
