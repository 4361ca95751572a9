//! What one query may make and do beyond what DataFusion's memory pool sees.
//!
//! The pool counts the operators that reserve (sorts, aggregates, joins, repartitions); scalar
//! functions, constant folding while planning, `UNNEST` and window operators allocate outside
//! it, so that `length(repeat('x', 1000000000))` took 3.9 GB under a 128 MiB share. Here:
//! - every scalar function of the session is wrapped ([`functions`]) so that one call (one
//!   batch, or one constant folded) makes at most a quarter of the query's share and takes at
//!   most [`CALL_WORK`] steps, estimated from its arguments before it runs and counted in the
//!   pool while it runs; regular expressions must have literal patterns;
//! - the plan is checked ([`plan`]) for regular-expression operators with patterns from
//!   columns, aggregates whose answer grows with a window, and casts to huge fixed-size types;
//! - `UNNEST` is guarded ([`unnest`]) so that one row repeated for each element of its list
//!   makes no more than a call may, and so is what an operator's expressions copy without a
//!   function ([`expressions`]: a literal into every row, `||`);
//! - the lambda functions (`array_transform` and its kind) are not offered: what their lambda
//!   makes is not bounded here;
//! - every operator yields now and then ([`yielding`]), so that an abort stops the work.
//!
//! A query past a bound fails with `query too large` (422); a plan refused, with
//! `invalid query` (400).

mod expressions;
mod functions;
mod joins;
mod pass;
mod plan;
mod rules;
mod sizes;
mod strings;
mod unnest;
mod yielding;

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::LogicalPlan;

pub(crate) use plan::PlanRefusal;

pub(crate) use functions::new_batch;
use functions::{Bounded, CallBudget};
use pass::GuardRule;

/// The share of a query's memory one function call may make: a quarter, so that a few
/// batches in flight between operators stay within the query's share and its slack.
pub(crate) const CALL_FRACTION: usize = 4;

/// The steps one call may take (a cell of an edit distance, a character compared): 2^25, a
/// few tenths of a second in a debug build, so that a query past its time limit stops within
/// a second although a call cannot be interrupted.
pub(crate) const CALL_WORK: u64 = 1 << 25;

/// A call or a row past a bound of this module.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// The error a bounded piece returns, told apart by [`refusal`].
pub(crate) fn refused(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Refused(message)))
}

/// What a bound of this module refused, found in a DataFusion error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A call or a row past its bound: the query is too large.
    Call(String),
    /// A plan no bound makes safe: the query is invalid.
    Plan(PlanRefusal),
}

/// The [`Refusal`] anywhere in `error`'s chain.
pub(crate) fn refusal(error: &DataFusionError) -> Option<Refusal> {
    let found = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<Refused>()
            .map(|r| Refusal::Call(r.0.clone()))
            .or_else(|| e.downcast_ref::<PlanRefusal>().cloned().map(Refusal::Plan))
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refusal) = found(current) {
            return Some(refusal);
        }
        if let Some(DataFusionError::External(inner)) = current.downcast_ref::<DataFusionError>()
            && let Some(refusal) = found(inner.as_ref())
        {
            return Some(refusal);
        }
        source = current.source();
    }
    None
}

/// The bounds of one query.
#[derive(Debug, Clone)]
pub(crate) struct QueryBounds {
    budget: Arc<CallBudget>,
}

impl QueryBounds {
    /// Bounds for a query whose memory is `pool`, with a share of `share` bytes.
    pub(crate) fn new(pool: Arc<dyn MemoryPool>, share: usize) -> Self {
        Self {
            budget: Arc::new(CallBudget {
                pool,
                bytes: (share / CALL_FRACTION) as u64,
                work: CALL_WORK,
            }),
        }
    }

    /// A session with these bounds: its functions wrapped, the lambda functions gone, and
    /// every `UNNEST` guarded.
    pub(crate) fn session(&self, mut builder: SessionStateBuilder) -> SessionStateBuilder {
        if let Some(functions) = builder.scalar_functions() {
            for udf in functions.iter_mut() {
                *udf = Bounded::wrap(udf, &self.budget);
            }
        }
        *builder.higher_order_functions() = Some(Vec::new());
        builder
            .with_optimizer_rule(Arc::new(plan::BoundPlan {
                budget: self.budget.clone(),
            }))
            .with_physical_optimizer_rule(Arc::new(GuardRule(unnest::GuardUnnest {
                max_bytes: self.budget.bytes,
            })))
            .with_physical_optimizer_rule(Arc::new(GuardRule(joins::GuardCrossJoins {
                max_bytes: self.budget.bytes,
            })))
            .with_physical_optimizer_rule(Arc::new(GuardRule(expressions::GuardExpressions {
                max_bytes: self.budget.bytes,
            })))
            .with_physical_optimizer_rule(Arc::new(GuardRule(yielding::YieldEverywhere)))
    }

    /// `plan` checked and with its functions bounded (the SQL planner builds a few itself).
    pub(crate) fn plan(&self, plan: LogicalPlan) -> Result<LogicalPlan, BoundError> {
        plan::check(&plan)?;
        Ok(plan::bound_functions(plan, &self.budget)?.data)
    }
}

/// Why [`QueryBounds::plan`] refused a plan.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BoundError {
    /// The plan has a shape no bound makes safe.
    #[error(transparent)]
    Refused(#[from] PlanRefusal),
    /// Rewriting it failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}
