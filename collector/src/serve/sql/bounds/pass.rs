//! An operator that passes its input's batches on, watched: [`PassExec`], the one piece of
//! plan the bounds insert, with what it watches for ([`Watch`]).

use std::sync::Arc;

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
use futures::StreamExt as _;

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

/// What a [`PassExec`] watches its batches for: each guard brings its own (an unnest's lists,
/// the time since the last yield, a cross join's widest row).
pub(crate) trait Watch: std::fmt::Debug + Send + Sync + 'static {
    /// `input`'s batches, watched: checked, cut or paced.
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream;

    /// The watch itself, for a guard to tell whether a node is already watched its way.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Passes its input's batches on unchanged, under its [`Watch`].
#[derive(Debug, Clone)]
pub(crate) struct PassExec {
    input: Arc<dyn ExecutionPlan>,
    watch: Arc<dyn Watch>,
    properties: Arc<PlanProperties>,
}

impl PassExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, watch: Arc<dyn Watch>) -> Self {
        let properties = input.properties().clone();
        Self {
            input,
            watch,
            properties,
        }
    }

    /// What it watches for.
    pub(crate) fn watch(&self) -> &dyn Watch {
        &*self.watch
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
        Ok(self.watch.watch(input))
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
