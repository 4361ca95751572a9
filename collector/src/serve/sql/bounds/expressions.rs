//! What an operator's expressions make from one input batch, estimated before they run.
//!
//! Functions bound their own answers ([`super::functions`]); two things around them copy
//! without a function: a literal is copied into every row of a projection
//! (`SELECT repeat('x', 30000000) FROM range(8192)` folds to one 30 MB literal, then copies it
//! 8,192 times), and `||` on strings is an operator, not a function, making the sum of its
//! sides (a chain of CTEs doubling a string at each step grows it exponentially).
//! [`GuardExpressions`] puts a [`PassExec`] below every operator whose expressions hold a
//! literal or a `||`: for each batch its input gives, it estimates what they will make
//! ([`made`]) and fails the query before they run when that passes what one call may make.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, ReplaceChildrenOptions};

use futures::StreamExt as _;

use super::pass::{Guard, PassExec, Watch};
use super::refused;

/// The physical rule of this module.
#[derive(Debug)]
pub(crate) struct GuardExpressions {
    /// The most bytes an operator's expressions may make from one batch.
    pub(crate) max_bytes: u64,
}

impl Guard for GuardExpressions {
    const NAME: &'static str = "GuardExpressions";

    fn guard(&self, node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        let children = node.children();
        if children.len() != 1 || node.downcast_ref::<PassExec>().is_some() {
            return Ok(Transformed::no(node));
        }
        let mut exprs = Vec::new();
        node.apply_expressions(&mut |expr| {
            exprs.push(expr.clone());
            Ok(TreeNodeRecursion::Continue)
        })?;
        if !exprs.iter().any(copies) {
            return Ok(Transformed::no(node));
        }
        let watch = Arc::new(Made {
            exprs,
            projection: node.downcast_ref::<ProjectionExec>().is_some(),
            max_bytes: self.max_bytes,
        });
        let guarded = Arc::new(PassExec::new(children[0].clone(), watch));
        let options =
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(
            node.replace_children(vec![guarded], options)?,
        ))
    }
}

/// Whether `expr` holds something that copies without a function: a literal or a `||`.
fn copies(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some()
        || expr
            .downcast_ref::<BinaryExpr>()
            .is_some_and(|b| *b.op() == Operator::StringConcat)
        || expr.children().into_iter().any(copies)
}

/// The bytes of `expr`'s answer over `batch`, as far as copying goes: a column's, a literal's
/// times the rows, the sum of a `||`'s sides, and otherwise the sum of the children's (a
/// function passes on at most what it was given, or bounds itself).
fn size(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> u64 {
    if let Some(column) = expr.downcast_ref::<Column>() {
        return batch.columns().get(column.index()).map_or(0, |array| {
            array.to_data().get_slice_memory_size().unwrap_or(0) as u64
        });
    }
    if let Some(literal) = expr.downcast_ref::<Literal>() {
        return (literal.value().size() as u64).saturating_mul(batch.num_rows() as u64);
    }
    expr.children()
        .into_iter()
        .map(|child| size(child, batch))
        .fold(0, u64::saturating_add)
}

/// The bytes `expr` newly makes over `batch`: what its `||`s copy, and a literal that is a
/// projection's own column (copied into every row); a column passed on is shared, not copied.
pub(crate) fn made(
    expr: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
    root_of_projection: bool,
) -> u64 {
    if expr
        .downcast_ref::<BinaryExpr>()
        .is_some_and(|b| *b.op() == Operator::StringConcat)
    {
        return size(expr, batch);
    }
    if root_of_projection && expr.downcast_ref::<Literal>().is_some() {
        return size(expr, batch);
    }
    expr.children()
        .into_iter()
        .map(|child| made(child, batch, false))
        .fold(0, u64::saturating_add)
}

/// `batch`, or the refusal when `exprs` would make more than `max` from it.
/// An operator's input, watched: the operator's expressions make no more than `max_bytes` from
/// one batch (`projection`: they are a projection's columns, a literal among them copied into
/// every row).
#[derive(Debug)]
struct Made {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    projection: bool,
    max_bytes: u64,
}

impl Watch for Made {
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let exprs = Arc::new(self.exprs.clone());
        let (projection, max) = (self.projection, self.max_bytes);
        let schema = input.schema();
        let checked = input.map(move |batch| check(batch?, &exprs, projection, max));
        Box::pin(RecordBatchStreamAdapter::new(schema, checked))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn check(
    batch: RecordBatch,
    exprs: &[Arc<dyn PhysicalExpr>],
    projection: bool,
    max: u64,
) -> Result<RecordBatch> {
    let bytes = exprs
        .iter()
        .map(|expr| made(expr, &batch, projection))
        .fold(0, u64::saturating_add);
    if bytes > max {
        return Err(refused(format!(
            "an operator's expressions would make {} from one batch of {} rows, more than the \
             {} one call may make (a literal copied into every row, or strings joined with ||)",
            bytesize::ByteSize(bytes),
            batch.num_rows(),
            bytesize::ByteSize(max)
        )));
    }
    Ok(batch)
}
