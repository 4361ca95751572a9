//! The `spans` table: a snapshot of the store's batches in their stored layout, read as
//! [`span_schema`] through [`crate::store::view`] one batch at a time, building only the
//! columns a query uses. A filter on `trace_id` (`=`, `IN`, `OR` of those) is pushed down: it
//! is compared with the binary ids before any row is built, and DataFusion applies it again
//! on what comes out (the push-down is `Inexact`), so the answer is the same as without it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;

use crate::decode::schema::span_schema;
use crate::store::StoredBatch;
use crate::store::view::{TraceId, parse_trace_id, projected_schema, public_batch};

/// The `spans` table over stored batches, dealt into `partitions` for parallel scans, and the
/// sealed files beside them when there are some.
#[derive(Debug)]
pub(crate) struct SpansTable {
    partitions: Vec<Arc<[StoredBatch]>>,
    sealed: Option<Arc<dyn TableProvider>>,
}

impl SpansTable {
    /// Deals `batches` round-robin into `n` partitions so that scans use every query thread.
    pub(crate) fn new(batches: Vec<StoredBatch>, n: usize) -> Self {
        let mut parts: Vec<Vec<StoredBatch>> = vec![Vec::new(); n.max(1)];
        for (i, batch) in batches.into_iter().enumerate() {
            parts[i % n.max(1)].push(batch);
        }
        Self {
            partitions: parts.into_iter().map(Arc::from).collect(),
            sealed: None,
        }
    }

    /// Also reads `sealed` (a table of the same schema: the Parquet files), as a union.
    pub(crate) fn with_sealed(mut self, sealed: Arc<dyn TableProvider>) -> Self {
        self.sealed = Some(sealed);
        self
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        span_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projection: Option<Arc<[usize]>> = projection.map(|p| Arc::from(p.as_slice()));
        let schema = projected_schema(projection.as_deref())?;
        // The narrowest trace-id filter, if any: every pushed filter holds for every row
        // DataFusion keeps, so any one of them may prune.
        let traces: Option<Arc<[TraceId]>> = filters
            .iter()
            .filter_map(trace_ids)
            .min_by_key(Vec::len)
            .map(Arc::from);
        let partitions = self
            .partitions
            .iter()
            .map(|batches| {
                Arc::new(SpansPartition {
                    schema: schema.clone(),
                    batches: batches.clone(),
                    projection: projection.clone(),
                    traces: traces.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let exec = StreamingTableExec::try_new(schema, partitions, None, [], false, limit)?;
        let memory: Arc<dyn ExecutionPlan> = Arc::new(exec);
        match &self.sealed {
            None => Ok(memory),
            Some(sealed) => {
                let files = sealed
                    .scan(
                        state,
                        projection.as_deref().map(<[usize]>::to_vec).as_ref(),
                        filters,
                        limit,
                    )
                    .await?;
                UnionExec::try_new(vec![memory, files])
            }
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                // The files prune by any filter (statistics), memory by trace ids; DataFusion
                // applies each filter again on what comes out.
                if self.sealed.is_some() || trace_ids(filter).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }
}

/// The trace ids a filter allows, when it only allows some: `trace_id = '…'` (either way
/// round), `trace_id IN (…)`, and `OR`s of those. A literal that is not 32 lowercase hex
/// digits allows no stored row, so it adds no id.
fn trace_ids(filter: &Expr) -> Option<Vec<TraceId>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq => {
                let literal = match (is_trace_id(left), is_trace_id(right)) {
                    (true, false) => text(right)?,
                    (false, true) => text(left)?,
                    _ => return None,
                };
                Some(parse_trace_id(literal).into_iter().collect())
            }
            Operator::Or => {
                let mut ids = trace_ids(left)?;
                ids.extend(trace_ids(right)?);
                Some(ids)
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && is_trace_id(&list.expr) => list
            .list
            .iter()
            .map(|item| text(item).map(parse_trace_id))
            .collect::<Option<Vec<_>>>()
            .map(|ids| ids.into_iter().flatten().collect()),
        _ => None,
    }
}

/// Whether an expression is the `trace_id` column (possibly cast to another string type).
fn is_trace_id(expr: &Expr) -> bool {
    match expr {
        Expr::Column(column) => column.name == "trace_id",
        Expr::Cast(cast) => is_trace_id(&cast.expr),
        _ => false,
    }
}

/// The text of a string literal.
fn text(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(text))
            | ScalarValue::Utf8View(Some(text))
            | ScalarValue::LargeUtf8(Some(text)),
            _,
        ) => Some(text),
        _ => None,
    }
}

/// One partition of a scan: its batches, turned into `spans` rows as the query reads them.
#[derive(Debug)]
struct SpansPartition {
    schema: SchemaRef,
    batches: Arc<[StoredBatch]>,
    projection: Option<Arc<[usize]>>,
    traces: Option<Arc<[TraceId]>>,
}

impl PartitionStream for SpansPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let batches = self.batches.clone();
        let projection = self.projection.clone();
        let traces = self.traces.clone();
        // A batch whose trace filter rules out every wanted trace is not read at all.
        let rows = (0..batches.len()).filter_map(move |i| {
            if !batches[i].wanted(traces.as_deref()) {
                return None;
            }
            public_batch(
                &batches[i].batch,
                &schema,
                projection.as_deref(),
                traces.as_deref(),
            )
            .map_err(DataFusionError::from)
            .transpose()
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(rows),
        ))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::catalog::MemTable;
    use datafusion::prelude::{SessionContext, col, lit};

    use super::*;
    use crate::decode::decode_traces;
    use crate::testing::{span, trace_request};

    /// Stored batches of three requests: traces `0a…`, `0b…` and `1c…`, each a root with two
    /// children, across two services.
    fn stored_batches() -> Vec<RecordBatch> {
        let mut batches = Vec::new();
        for (n, (first, service)) in [(0x0a, "checkout"), (0x0b, "cart"), (0x1c, "checkout")]
            .into_iter()
            .enumerate()
        {
            let trace = [first; 16];
            let base = 100 * n as u64;
            let root = span(trace, base + 1, "GET /", 1_000, 9_000);
            let mut children = Vec::new();
            for i in 2..4 {
                let mut child = span(trace, base + i, &format!("step {i}"), 2_000, 2_000 + i);
                child.parent_span_id = (base + 1).to_be_bytes().to_vec();
                children.push(child);
            }
            let request = trace_request(Some(service), [vec![root], children].concat());
            batches.push(
                decode_traces(&request)
                    .unwrap()
                    .batch
                    .unwrap()
                    .into_record_batch(),
            );
        }
        batches
    }

    async fn answer(context: &SessionContext, sql: &str) -> RecordBatch {
        let frame = context.sql(sql).await.unwrap();
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.unwrap();
        concat_batches(&schema, &batches).unwrap()
    }

    /// The stored layout read through [`SpansTable`] (projection and trace-id push-down)
    /// answers as the same rows fully built into a plain in-memory table, query by query.
    #[tokio::test]
    async fn answers_as_the_plain_table_row_for_row() {
        let stored = stored_batches();
        let schema = span_schema();
        let plain: Vec<RecordBatch> = stored
            .iter()
            .map(|b| public_batch(b, &schema, None, None).unwrap().unwrap())
            .collect();
        let lazy = SessionContext::new();
        // With each batch's trace filter, as sealed segments have them: the batches a filter
        // rules out are skipped, and the answers stay the same.
        let filtered = stored
            .iter()
            .map(|batch| StoredBatch {
                batch: batch.clone(),
                traces: crate::store::TraceFilter::of(batch).map(Arc::new),
            })
            .collect();
        lazy.register_table("spans", Arc::new(SpansTable::new(filtered, 2)))
            .unwrap();
        let reference = SessionContext::new();
        let table = MemTable::try_new(schema, vec![plain]).unwrap();
        reference.register_table("spans", Arc::new(table)).unwrap();

        let trace = "0b".repeat(16);
        let other = "1c".repeat(16);
        let cases: [(&str, String, usize); 9] = [
            (
                "everything",
                "SELECT * FROM spans ORDER BY span_id".into(),
                9,
            ),
            ("count", "SELECT count(*) AS n FROM spans".into(), 1),
            (
                "one trace, pushed down",
                format!(
                    "SELECT span_name, trace_id, span_id, parent_span_id FROM spans WHERE trace_id = '{trace}' ORDER BY span_id"
                ),
                3,
            ),
            (
                "IN list",
                format!(
                    "SELECT span_id FROM spans WHERE trace_id IN ('{trace}', '{other}') ORDER BY span_id"
                ),
                6,
            ),
            (
                "OR with another column: not pushed",
                format!(
                    "SELECT span_id FROM spans WHERE trace_id = '{trace}' OR span_name = 'step 2' ORDER BY span_id"
                ),
                5,
            ),
            (
                "uppercase matches nothing, as with strings",
                format!(
                    "SELECT span_id FROM spans WHERE trace_id = '{}'",
                    trace.to_uppercase()
                ),
                0,
            ),
            (
                "LIKE on the hex",
                "SELECT trace_id, span_id FROM spans WHERE trace_id LIKE '0%' ORDER BY span_id"
                    .into(),
                6,
            ),
            (
                "join of children to parents",
                "SELECT c.span_name AS child, p.span_name AS parent, p.service_name FROM spans c \
                 JOIN spans p ON c.parent_span_id = p.span_id ORDER BY c.span_id"
                    .into(),
                6,
            ),
            (
                "resource and derived columns",
                "SELECT service_name, resource_attributes['service.name'] AS from_resource, \
                 end_time - start_time AS took, duration_ns FROM spans ORDER BY span_id"
                    .into(),
                9,
            ),
        ];
        for (why, sql, rows) in cases {
            let got = answer(&lazy, &sql).await;
            let want = answer(&reference, &sql).await;
            assert_eq!(got.num_rows(), rows, "{why}: row count");
            assert_eq!(got, want, "{why}");
        }
    }

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const OTHER: &str = "00f067aa0ba902b700f067aa0ba902b7";

    #[test]
    fn which_filters_narrow_to_trace_ids() {
        let id = parse_trace_id(ID).unwrap();
        let other = parse_trace_id(OTHER).unwrap();
        let cases: [(&str, Expr, Option<Vec<TraceId>>); 8] = [
            ("equality", col("trace_id").eq(lit(ID)), Some(vec![id])),
            ("literal first", lit(ID).eq(col("trace_id")), Some(vec![id])),
            (
                "IN list",
                col("trace_id").in_list(vec![lit(ID), lit(OTHER)], false),
                Some(vec![id, other]),
            ),
            (
                "OR of equalities",
                col("trace_id")
                    .eq(lit(ID))
                    .or(col("trace_id").eq(lit(OTHER))),
                Some(vec![id, other]),
            ),
            (
                "uppercase equals no stored (lowercase) id",
                col("trace_id").eq(lit(ID.to_uppercase())),
                Some(vec![]),
            ),
            (
                "NOT IN allows nearly everything",
                col("trace_id").in_list(vec![lit(ID)], true),
                None,
            ),
            (
                "OR with another column cannot narrow",
                col("trace_id")
                    .eq(lit(ID))
                    .or(col("span_name").eq(lit("x"))),
                None,
            ),
            ("another column", col("span_id").eq(lit(ID)), None),
        ];
        for (why, filter, expected) in cases {
            assert_eq!(trace_ids(&filter), expected, "{why}");
        }
    }
}
