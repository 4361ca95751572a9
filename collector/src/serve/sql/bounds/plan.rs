//! Checks of a query's logical plan, before it is optimized or run, for what no function
//! wrapper sees: regular expressions in operators, aggregates over growing windows, casts to
//! huge fixed-size types; and the plan's functions swapped for their bounded forms (the SQL
//! planner builds a few of them itself, outside the session's registry: `POSITION(… IN …)`,
//! `SUBSTRING`, `@>`, array `||`).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr::{Cast, Like, TryCast, WindowFunction};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator, WindowFunctionDefinition};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::functions::{CallBudget, wrap_all};
use super::sizes::fixed_width;
use super::strings;

/// Why a plan is refused; each is a 400 (`invalid query`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanRefusal {
    /// A regular expression whose pattern is not one value for the whole query.
    #[error(
        "the pattern of {0} must be a literal: a pattern from a column compiles a regular \
         expression for each distinct value (up to 10 MiB each)"
    )]
    RegexPattern(String),
    /// An aggregate whose answer grows with its window, used over a window.
    #[error(
        "{0} over a window is not allowed: its answer for each row holds every row before it, \
         which grows with the square of the rows and is held outside the query's memory"
    )]
    GrowingWindow(String),
    /// A cast to a fixed-size type too wide for one value.
    #[error("a cast to {0} makes {1} bytes a value, more than the {2} a value may have")]
    WideCast(String, u64, u64),
}

/// Aggregates whose state (and so, over a window, whose answer for each row) grows with the
/// rows they have seen.
const GROWING_AGGREGATES: &[&str] = &[
    "array_agg",
    "string_agg",
    "median",
    "percentile_cont",
    "quantile_cont",
];

/// The widest fixed-size value a cast may make (a `FixedSizeList` of this many bytes).
pub(crate) const MAX_FIXED_VALUE: u64 = 1 << 20;

/// Refuses what [`PlanRefusal`] names anywhere in `plan`, subqueries included.
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), PlanRefusal> {
    let mut refusal = None;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                refusal = refusal_of(e);
                Ok(if refusal.is_some() {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        })
    });
    refusal.map_or(Ok(()), Err)
}

fn refusal_of(expr: &Expr) -> Option<PlanRefusal> {
    match expr {
        Expr::BinaryExpr(binary) => {
            let name = match binary.op {
                Operator::RegexMatch => "~",
                Operator::RegexIMatch => "~*",
                Operator::RegexNotMatch => "!~",
                Operator::RegexNotIMatch => "!~*",
                _ => return None,
            };
            (!one_value(&binary.right)).then(|| PlanRefusal::RegexPattern(name.into()))
        }
        Expr::SimilarTo(Like { pattern, .. }) => {
            (!one_value(pattern)).then(|| PlanRefusal::RegexPattern("SIMILAR TO".into()))
        }
        // A LIKE pattern from a column is compiled again whenever it changes, without the
        // regular-expression crate's size limit.
        Expr::Like(Like {
            pattern,
            case_insensitive,
            ..
        }) => (!one_value(pattern)).then(|| {
            PlanRefusal::RegexPattern(if *case_insensitive { "ILIKE" } else { "LIKE" }.into())
        }),
        // The regular-expression functions, named as the user wrote them (the optimizer turns
        // some into the operators above); their wrappers refuse a pattern column again.
        Expr::ScalarFunction(call) if call.func.name().starts_with("regexp_") => call
            .args
            .get(1)
            .filter(|pattern| !one_value(pattern))
            .map(|_| PlanRefusal::RegexPattern(call.func.name().to_owned())),
        Expr::WindowFunction(window) => {
            let WindowFunction { fun, .. } = window.as_ref();
            match fun {
                WindowFunctionDefinition::AggregateUDF(udf)
                    if GROWING_AGGREGATES.contains(&udf.name()) =>
                {
                    Some(PlanRefusal::GrowingWindow(udf.name().to_owned()))
                }
                _ => None,
            }
        }
        Expr::Cast(Cast { field, .. }) | Expr::TryCast(TryCast { field, .. }) => {
            let data_type = field.data_type();
            match fixed_width(data_type) {
                Some(width) if width > MAX_FIXED_VALUE => Some(PlanRefusal::WideCast(
                    data_type.to_string(),
                    width,
                    MAX_FIXED_VALUE,
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `expr` is one value for the whole query: no column, no subquery, nothing volatile.
fn one_value(expr: &Expr) -> bool {
    let mut one = true;
    let _ = expr.apply(|e| {
        if matches!(
            e,
            Expr::Column(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::Placeholder(_)
        ) || matches!(e, Expr::ScalarFunction(f) if f.func.signature().volatility
            == datafusion::logical_expr::Volatility::Volatile)
        {
            one = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    one
}

/// `plan` with every scalar function in its bounded form, and every chain of `||` on strings
/// one call of [`JoinStrings`] (which answers as the operator does): `a || b` is an operator,
/// which constant folding evaluates outside any bound (two hundred `repeat(…)`s joined made
/// gigabytes while the query was planned).
pub(crate) fn bound_functions(
    plan: LogicalPlan,
    budget: &Arc<CallBudget>,
) -> datafusion::error::Result<Transformed<LogicalPlan>> {
    plan.transform_up_with_subqueries(|node| {
        let rewritten = node.map_expressions(|expr| {
            let joined = expr.transform_up(|e| match e {
                Expr::BinaryExpr(binary) if binary.op == Operator::StringConcat => {
                    // The chain's terms (bottom up, the left side is already one call).
                    let mut terms = Vec::new();
                    for side in [*binary.left, *binary.right] {
                        match side {
                            Expr::ScalarFunction(call) if call.func.name() == strings::NAME => {
                                terms.extend(call.args);
                            }
                            other => terms.push(other),
                        }
                    }
                    Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(strings::JoinStrings::udf(), terms),
                    )))
                }
                other => Ok(Transformed::no(other)),
            })?;
            let changed = joined.transformed;
            let wrapped = wrap_all(joined.data, budget)?;
            Ok(Transformed::new_transformed(
                wrapped.data,
                changed || wrapped.transformed,
            ))
        })?;
        if rewritten.transformed {
            // A `||` of two types may answer another type than `concat` does.
            rewritten.map_data(LogicalPlan::recompute_schema)
        } else {
            Ok(rewritten)
        }
    })
}

/// The checks and the wrapping again, as the last rule of the optimizer: its rules rewrite
/// (`regexp_like(a, b)` becomes `a ~ b`), and what they make must be bounded too.
#[derive(Debug)]
pub(crate) struct BoundPlan {
    pub(crate) budget: Arc<CallBudget>,
}

impl OptimizerRule for BoundPlan {
    fn name(&self) -> &str {
        "wayfinder_bounds"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        check(&plan).map_err(|refusal| DataFusionError::External(Box::new(refusal)))?;
        bound_functions(plan, &self.budget)
    }
}
