//! Every scalar function of a query's session, wrapped ([`Bounded`]) so that one call (one
//! batch, or one constant folded while planning) can make no more than its share of memory and
//! do no more than a bounded amount of work, and so that what it makes is seen by the query's
//! memory pool while it is made.
//!
//! Before the call, its function's [`Rule`] estimates what it will make and do from its
//! arguments; a call past a bound is refused before it allocates anything. After the call,
//! what it made is measured and counted in the pool, so that a function whose answer the rule
//! cannot foresee (or an unknown one) is stopped at the next call that would pass.

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};

use super::refused;
use super::rules::{Rule, rule};

/// What one call may make and do, for every bounded function of a query.
#[derive(Debug)]
pub(crate) struct CallBudget {
    /// The query's memory pool: a call reserves what it will make while it makes it.
    pub(crate) pool: Arc<dyn MemoryPool>,
    /// Most bytes one call may make.
    pub(crate) bytes: u64,
    /// Most steps one call may take (a step: a character compared, a cell of a distance).
    pub(crate) work: u64,
}

thread_local! {
    /// What the bounded calls of the batch an operator is evaluating have made so far on this
    /// thread (an operator evaluates a batch's expressions in one go, without yielding); while
    /// a query is planned, what the constants folded so far have made.
    static MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A new batch, or a new query, is about to be evaluated on this thread: nothing is made yet.
/// Every operator's input passes a [`super::pass::PassExec`], which calls this as it hands on
/// a batch; the query calls it before it is planned.
pub(crate) fn new_batch() {
    MADE.set(0);
}

/// A scalar function wrapped with its [`Rule`] and the query's [`CallBudget`].
#[derive(Debug)]
pub(crate) struct Bounded {
    inner: Arc<ScalarUDF>,
    rule: Rule,
    budget: Arc<CallBudget>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.rule == other.rule
    }
}

impl Eq for Bounded {}

impl std::hash::Hash for Bounded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.rule.hash(state);
    }
}

impl Bounded {
    /// `udf` bounded by `budget`: itself if it already is.
    pub(crate) fn wrap(udf: &Arc<ScalarUDF>, budget: &Arc<CallBudget>) -> Arc<ScalarUDF> {
        if is_bounded(udf) {
            return udf.clone();
        }
        Arc::new(ScalarUDF::new_from_impl(Self {
            rule: rule(udf.name()).unwrap_or(Rule::Arguments(1)),
            inner: udf.clone(),
            budget: budget.clone(),
        }))
    }
}

/// Whether `udf` is already wrapped.
pub(crate) fn is_bounded(udf: &ScalarUDF) -> bool {
    let inner: &dyn Any = udf.inner().as_ref();
    inner.downcast_ref::<Bounded>().is_some()
}

/// Every function in `expr` wrapped: a plan as the SQL planner made it, or what a function's
/// own simplification returns (which may name other functions, unwrapped).
pub(crate) fn wrap_all(expr: Expr, budget: &Arc<CallBudget>) -> Result<Transformed<Expr>> {
    expr.transform_up(|e| match e {
        Expr::ScalarFunction(mut call) if !is_bounded(&call.func) => {
            call.func = Bounded::wrap(&call.func, budget);
            Ok(Transformed::yes(Expr::ScalarFunction(call)))
        }
        other => Ok(Transformed::no(other)),
    })
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated, reason = "forwarded as DataFusion's own wrapper does")]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        #[expect(deprecated, reason = "forwarded as DataFusion's own wrapper does")]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.inner.name();
        let (bytes, work) = self.rule.estimate(self.inner.name(), &args)?;
        if work > self.budget.work {
            return Err(refused(format!(
                "{name} would take {work} steps in one call, more than the {} one call may take \
                 (a call is a batch of rows: narrow the input, or shorten the strings)",
                self.budget.work
            )));
        }
        // What the other calls of this batch (or, while planning, every constant folded)
        // made and still hold counts too: a function's arguments are all made before it runs.
        let before = MADE.get();
        if before.saturating_add(bytes) > self.budget.bytes {
            return Err(too_large(name, before, bytes, self.budget.bytes));
        }
        // What it makes is the query's while it makes it: past the pool, the call is refused.
        let reservation =
            MemoryConsumer::new(format!("function {name}")).register(&self.budget.pool);
        reservation.try_grow(bytes as usize)?;
        let answer = self.inner.invoke_with_args(args)?;
        let made = match &answer {
            ColumnarValue::Array(array) => array.get_array_memory_size() as u64,
            ColumnarValue::Scalar(scalar) => scalar.size() as u64,
        };
        let total = before.saturating_add(made);
        if total > self.budget.bytes {
            return Err(too_large(name, before, made, self.budget.bytes));
        }
        MADE.set(total);
        reservation.try_resize(made as usize)?;
        Ok(answer)
    }

    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        let updated = Arc::new(self.inner.inner().with_updated_config(config)?);
        Some(ScalarUDF::new_from_impl(Self {
            inner: updated,
            rule: self.rule,
            budget: self.budget.clone(),
        }))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        Ok(match self.inner.inner().simplify(args, info)? {
            ExprSimplifyResult::Simplified(expr) => {
                ExprSimplifyResult::Simplified(wrap_all(expr, &self.budget)?.data)
            }
            original => original,
        })
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

/// The refusal of a call that would make `bytes` after the calls of the same batch (or the
/// constants folded while planning) made `before`.
fn too_large(name: &str, before: u64, bytes: u64, max: u64) -> DataFusionError {
    let others = if before > 0 {
        format!(
            " beside the {} the calls before it on the same batch made",
            bytesize::ByteSize(before)
        )
    } else {
        String::new()
    };
    refused(format!(
        "{name} would make {} in one call{others}, more than the {} one call may make (a \
         quarter of the query's share of --query-memory-bytes)",
        bytesize::ByteSize(bytes),
        bytesize::ByteSize(max),
    ))
}
