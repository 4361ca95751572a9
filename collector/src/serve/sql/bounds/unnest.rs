//! `UNNEST` repeats every other column of a row once for each element of the row's list, and
//! reserves nothing in the memory pool: `SELECT attributes, unnest(generate_series(1, 1000))`
//! copies a span's attributes a thousand times. DataFusion builds at most a batch's worth of
//! rows at once, but never splits a row, so one row's list times the row's width is what one
//! build makes. [`GuardUnnest`] puts a [`PassExec`] watching for it before every `UnnestExec`:
//! it reads each row's list lengths and width (offsets, no copies) and fails the query, before
//! anything is built, when one row would make more than a call may.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;

use futures::StreamExt as _;

use super::pass::{Guard, PassExec, Watch};
use super::refused;
use super::sizes::{list_len, value_bytes};

/// The physical rule that guards every `UnnestExec` of a plan.
#[derive(Debug)]
pub(crate) struct GuardUnnest {
    /// The most bytes one row's unnesting may make.
    pub(crate) max_bytes: u64,
}

impl Guard for GuardUnnest {
    const NAME: &'static str = "GuardUnnest";

    fn guard(&self, node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        let Some(unnest) = node.downcast_ref::<UnnestExec>() else {
            return Ok(Transformed::no(node));
        };
        if unnest
            .input()
            .downcast_ref::<PassExec>()
            .is_some_and(|pass| pass.watch().as_any().is::<Lists>())
        {
            return Ok(Transformed::no(node));
        }
        let lists = unnest
            .list_column_indices()
            .iter()
            .map(|list| list.index_in_input_schema)
            .collect();
        let guard = Arc::new(PassExec::new(
            unnest.input().clone(),
            Arc::new(Lists {
                lists,
                max_bytes: self.max_bytes,
            }),
        ));
        let guarded = Arc::new(UnnestExec::new(
            guard,
            unnest.list_column_indices().to_vec(),
            unnest.struct_column_indices().to_vec(),
            unnest.schema(),
            unnest.options().clone(),
        )?);
        Ok(Transformed::yes(guarded as Arc<dyn ExecutionPlan>))
    }
}

/// What unnesting the rows of `batch` makes, row by row: the longest of its lists times the
/// row's width (the lists' elements and every other column, each repeated).
pub(crate) fn unnest_bytes(batch: &RecordBatch, lists: &[usize]) -> impl Iterator<Item = u64> {
    (0..batch.num_rows()).map(move |row| {
        let elements = lists
            .iter()
            .filter_map(|&c| batch.columns().get(c))
            .map(|column| list_len(column.as_ref(), row))
            .max()
            .unwrap_or(0);
        let width: u64 = batch
            .columns()
            .iter()
            .enumerate()
            .map(|(c, column)| {
                let bytes = value_bytes(column.as_ref(), row);
                if lists.contains(&c) {
                    bytes / elements.max(1)
                } else {
                    bytes.max(column.data_type().primitive_width().unwrap_or(0) as u64)
                }
            })
            .sum();
        elements.saturating_mul(width.max(1))
    })
}

/// `batch`, or the refusal of the first row that would make more than `max`.
/// An unnest's input, watched: no row's unnesting of the columns `lists` makes more than
/// `max_bytes`.
#[derive(Debug)]
struct Lists {
    lists: Vec<usize>,
    max_bytes: u64,
}

impl Watch for Lists {
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let (lists, max) = (self.lists.clone(), self.max_bytes);
        let schema = input.schema();
        let checked = input.map(move |batch| check(batch?, &lists, max));
        Box::pin(RecordBatchStreamAdapter::new(schema, checked))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn check(batch: RecordBatch, lists: &[usize], max: u64) -> Result<RecordBatch> {
    if let Some(bytes) = unnest_bytes(&batch, lists).find(|&bytes| bytes > max) {
        return Err(refused(format!(
            "unnest would make {} from one row, more than the {} one call may make (a quarter \
             of the query's share of --query-memory-bytes): every other column of the row is \
             repeated once an element",
            bytesize::ByteSize(bytes),
            bytesize::ByteSize(max)
        )));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, ListArray, StringArray};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn a_row_costs_its_elements_times_its_width() {
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2), Some(3)]),
            Some(vec![]),
        ]));
        let wide: ArrayRef = Arc::new(StringArray::from(vec!["x".repeat(100), "y".into()]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_from_iter([("l", lists), ("s", wide), ("i", ints)]).unwrap();
        let bytes: Vec<u64> = unnest_bytes(&batch, &[0]).collect();
        // Three elements of 8 bytes, each with 100 bytes of string and an 8-byte integer.
        assert_eq!(bytes, vec![3 * (8 + 100 + 8), 0]);
        assert!(check(batch.clone(), &[0], 348).is_ok());
        assert!(check(batch, &[0], 347).is_err());
    }
}
