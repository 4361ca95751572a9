//! A cross join repeats each row of its left side once for every row of a right batch
//! (DataFusion builds each output batch from one left row and one right batch), outside the
//! memory pool: a 30 MB value crossed with a batch of 8,192 rows is 245 GB in one batch.
//! [`GuardCrossJoins`] watches the left side as the join collects it ([`Watch::Widest`]: its
//! widest row) and cuts each right batch ([`Watch::Split`]) into slices small enough that a
//! left row repeated over one makes no more than a call may. A left row wider than that alone
//! goes one right row at a time: each output batch is then a copy of a row the query already
//! holds, and the query's deadline bounds how many it makes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::joins::CrossJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};

use futures::StreamExt as _;

use super::pass::{Guard, PassExec, Watch};
use super::sizes::value_bytes;

/// The physical rule of this module.
#[derive(Debug)]
pub(crate) struct GuardCrossJoins {
    /// The most bytes one left row repeated over a right slice may make.
    pub(crate) max_bytes: u64,
}

impl Guard for GuardCrossJoins {
    const NAME: &'static str = "GuardCrossJoins";

    fn guard(&self, node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        if node.downcast_ref::<CrossJoinExec>().is_none() {
            return Ok(Transformed::no(node));
        }
        let children = node.children();
        let [left, right] = children.as_slice() else {
            return Ok(Transformed::no(node));
        };
        if left.downcast_ref::<PassExec>().is_some() {
            return Ok(Transformed::no(node));
        }
        let width = Arc::new(AtomicU64::new(0));
        let left = Arc::new(PassExec::new(
            (*left).clone(),
            Arc::new(Widest {
                width: width.clone(),
            }),
        ));
        let right = Arc::new(PassExec::new(
            (*right).clone(),
            Arc::new(Split {
                width,
                max_bytes: self.max_bytes,
            }),
        ));
        let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(node.replace_children(
            vec![left as Arc<dyn ExecutionPlan>, right],
            options,
        )?))
    }
}

/// A cross join's left side, watched: the widest row that passes, noted in `width`.
#[derive(Debug)]
struct Widest {
    width: Arc<AtomicU64>,
}

impl Watch for Widest {
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let width = self.width.clone();
        let schema = input.schema();
        let noted = input.inspect(move |batch| {
            if let Ok(batch) = batch {
                widest(batch, &width);
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, noted))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A cross join's right side, watched: batches cut so that the row of `width` repeated over
/// one makes at most `max_bytes`.
#[derive(Debug)]
struct Split {
    width: Arc<AtomicU64>,
    max_bytes: u64,
}

impl Watch for Split {
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let (width, max) = (self.width.clone(), self.max_bytes);
        let schema = input.schema();
        let cut = input.flat_map(move |batch| {
            futures::stream::iter(match batch {
                Ok(batch) => split(batch, &width, max)
                    .into_iter()
                    .map(Ok)
                    .collect::<Vec<_>>(),
                Err(error) => vec![Err(error)],
            })
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, cut))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Notes the widest row of `batch` in `width`.
fn widest(batch: &RecordBatch, width: &AtomicU64) {
    let widest = (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|column| value_bytes(column.as_ref(), row))
                .fold(0u64, u64::saturating_add)
        })
        .max()
        .unwrap_or(0);
    width.fetch_max(widest, Ordering::Relaxed);
}

/// `batch` in slices over which the widest left row repeated makes at most `max` bytes (one
/// row at least).
fn split(batch: RecordBatch, width: &AtomicU64, max: u64) -> Vec<RecordBatch> {
    let width = width.load(Ordering::Relaxed).max(1);
    let rows = usize::try_from(max / width).unwrap_or(usize::MAX).max(1);
    if batch.num_rows() <= rows {
        return vec![batch];
    }
    (0..batch.num_rows())
        .step_by(rows)
        .map(|start| batch.slice(start, rows.min(batch.num_rows() - start)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::pass::GuardRule;
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    #[test]
    fn slices_hold_the_widest_row_over_them_under_the_bound() {
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                0..100,
            )) as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap();
        let rows = |width: u64, max: u64| -> Vec<usize> {
            split(batch.clone(), &AtomicU64::new(width), max)
                .iter()
                .map(RecordBatch::num_rows)
                .collect()
        };
        // 1,000 bytes over a slice of 30 rows is 30,000: the bound.
        assert_eq!(rows(1_000, 30_000), vec![30, 30, 30, 10]);
        // Under the bound, the batch goes on whole.
        assert_eq!(rows(10, 30_000), vec![100]);
        // A row wider than the bound goes over one row at a time.
        assert_eq!(rows(50_000, 30_000), vec![1; 100]);
        // Nothing noted yet (an empty left side) counts as one byte.
        assert_eq!(rows(0, 1_000), vec![100]);
    }

    #[tokio::test]
    async fn a_wide_row_crossed_with_a_batch_comes_out_in_slices() {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(GuardRule(GuardCrossJoins {
                max_bytes: 1_000_000,
            })))
            .build();
        let batches = SessionContext::new_with_state(state)
            .sql("SELECT s, value FROM (SELECT repeat('x', 100000) AS s) CROSS JOIN range(3000)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows.iter().sum::<usize>(), 3_000);
        // Without the guard, one batch of 3,000 rows: 300 MB.
        assert!(rows.iter().all(|&n| n <= 10), "{rows:?}");
    }
}
