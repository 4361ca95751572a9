//! Every operator of a query yields to the runtime now and then, so that a query past its
//! time limit stops.
//!
//! An abort reaches a task only when it yields. DataFusion makes its leaves cooperative (they
//! spend tokio's task budget per batch), but an operator that makes many batches from little
//! input is polled again and again without its leaves being asked: a cross join of three
//! 5,000-span tables kept a core busy for twenty seconds after its query was answered
//! `timeout`, its partial aggregate looping over the join's batches without ever returning
//! `Pending`. DataFusion's own `CooperativeExec` spends tokio's budget per batch and yields
//! after 128 of them, which for batches of expensive calls is many seconds. [`YieldEverywhere`]
//! puts a [`PassExec`] watching the time above every operator: it returns `Pending` once
//! [`SLICE`] has passed since it last did, so that the work stops within the batch it is on
//! (whose calls [`super::CALL_WORK`] bounds).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use futures::{Stream, StreamExt as _};

use super::pass::{Guard, PassExec, Watch};

/// How long an operator runs before it yields: short against a second, long against the
/// cost of a yield (a wake-up and a poll, about a microsecond).
pub(crate) const SLICE: Duration = Duration::from_millis(10);

/// The physical rule of this module.
#[derive(Debug)]
pub(crate) struct YieldEverywhere;

impl Guard for YieldEverywhere {
    const NAME: &'static str = "YieldEverywhere";

    fn guard(&self, node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        if node.downcast_ref::<PassExec>().is_some() {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(
            Arc::new(PassExec::new(node, Arc::new(Slices { slice: SLICE })))
                as Arc<dyn ExecutionPlan>,
        ))
    }
}

/// Every operator's input, watched for time: it returns `Pending` once `slice` has passed since
/// it last did, so that the task that polls it yields, and an abort takes effect.
#[derive(Debug)]
struct Slices {
    slice: Duration,
}

impl Watch for Slices {
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let schema = input.schema();
        let sliced = TimeSliced {
            inner: input,
            slice: self.slice,
            since: Instant::now(),
        };
        Box::pin(RecordBatchStreamAdapter::new(schema, sliced))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
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
