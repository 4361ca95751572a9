//! An operator that passes its input's batches on, watched: [`PassExec`], the one piece of
//! plan the bounds insert, with what it watches for ([`Watch`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Result, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::{Stream, StreamExt as _};

/// A physical rule that puts [`PassExec`]s into a plan, as a [`GuardRule`]: it sees each node,
/// from the leaves up.
pub(crate) trait Guard: std::fmt::Debug + Send + Sync + 'static {
    /// The rule's name, as `EXPLAIN VERBOSE` shows it.
    const NAME: &'static str;

    /// `node` guarded, or as it was.
    fn guard(&self, node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>>;
}

/// The [`PhysicalOptimizerRule`] of a [`Guard`].
#[derive(Debug)]
pub(crate) struct GuardRule<G>(pub(crate) G);

impl<G: Guard> PhysicalOptimizerRule for GuardRule<G> {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| self.0.guard(node)).map(|t| t.data)
    }

    fn name(&self) -> &str {
        G::NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What a [`PassExec`] watches its batches for.
#[derive(Debug, Clone)]
pub(crate) enum Watch {
    /// That no row's unnesting of the columns `lists` makes more than `max_bytes`.
    Unnest { lists: Vec<usize>, max_bytes: u64 },
    /// Time: it returns `Pending` once `slice` has passed since it last did, so that the task
    /// that polls it yields, and an abort takes effect.
    Yield { slice: Duration },
    /// The widest row that passes, noted in `width` (a cross join's left side).
    Widest { width: Arc<AtomicU64> },
    /// Batches cut so that the row of `width` repeated over one makes at most `max_bytes` (a
    /// cross join's right side).
    Split {
        width: Arc<AtomicU64>,
        max_bytes: u64,
    },
    /// That the expressions of the operator above it make no more than `max_bytes` from one
    /// batch (`projection`: they are a projection's columns, a literal among them copied into
    /// every row).
    Expressions {
        exprs: Arc<Vec<Arc<dyn PhysicalExpr>>>,
        projection: bool,
        max_bytes: u64,
    },
}

/// Passes its input's batches on unchanged, under its [`Watch`].
#[derive(Debug, Clone)]
pub(crate) struct PassExec {
    input: Arc<dyn ExecutionPlan>,
    watch: Watch,
    properties: Arc<PlanProperties>,
}

impl PassExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, watch: Watch) -> Self {
        let properties = input.properties().clone();
        Self {
            input,
            watch,
            properties,
        }
    }

    /// What it watches for.
    pub(crate) fn watch(&self) -> &Watch {
        &self.watch
    }
}

impl DisplayAs for PassExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassExec: {:?}", self.watch)
    }
}

impl ExecutionPlan for PassExec {
    fn name(&self) -> &str {
        "PassExec"
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.swap_remove(0);
        Ok(Arc::new(match options.children_properties {
            ChildrenPropertiesMode::Keep => Self {
                input,
                ..Self::clone(&self)
            },
            ChildrenPropertiesMode::Recompute => Self::new(input, self.watch.clone()),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        // Each batch handed on is a new batch for the operator above: its calls start afresh.
        let input = Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            self.input.execute(partition, context)?.inspect(|_| {
                super::functions::new_batch();
            }),
        ));
        let schema = self.input.schema();
        Ok(match &self.watch {
            Watch::Unnest { lists, max_bytes } => {
                let (lists, max) = (lists.clone(), *max_bytes);
                let checked = input.map(move |batch| super::unnest::check(batch?, &lists, max));
                Box::pin(RecordBatchStreamAdapter::new(schema, checked))
            }
            Watch::Expressions {
                exprs,
                projection,
                max_bytes,
            } => {
                let (exprs, projection, max) = (exprs.clone(), *projection, *max_bytes);
                let checked = input
                    .map(move |batch| super::expressions::check(batch?, &exprs, projection, max));
                Box::pin(RecordBatchStreamAdapter::new(schema, checked))
            }
            Watch::Widest { width } => {
                let width = width.clone();
                let noted = input.inspect(move |batch| {
                    if let Ok(batch) = batch {
                        super::joins::widest(batch, &width);
                    }
                });
                Box::pin(RecordBatchStreamAdapter::new(schema, noted))
            }
            Watch::Split { width, max_bytes } => {
                let (width, max) = (width.clone(), *max_bytes);
                let cut = input.flat_map(move |batch| {
                    futures::stream::iter(match batch {
                        Ok(batch) => super::joins::split(batch, &width, max)
                            .into_iter()
                            .map(Ok)
                            .collect::<Vec<_>>(),
                        Err(error) => vec![Err(error)],
                    })
                });
                Box::pin(RecordBatchStreamAdapter::new(schema, cut))
            }
            Watch::Yield { slice } => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                TimeSliced {
                    inner: input,
                    slice: *slice,
                    since: Instant::now(),
                },
            )),
        })
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(input_stats[0].clone())
    }
}

/// A stream that returns `Pending` (waking itself) once `slice` has passed since it last did.
struct TimeSliced {
    inner: SendableRecordBatchStream,
    slice: Duration,
    since: Instant,
}

impl Stream for TimeSliced {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.since.elapsed() >= self.slice {
            self.since = Instant::now();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.inner.poll_next_unpin(cx)
    }
}
