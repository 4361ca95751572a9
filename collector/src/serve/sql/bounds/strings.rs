//! `||` on strings as a function, so that it is bounded as functions are.
//!
//! `a || b` is an operator: constant folding evaluates it outside every bound (two hundred
//! `repeat(…)`s joined made gigabytes while the query was planned), and so does each batch.
//! [`JoinStrings`] answers as the operator does (NULL when any side is, the text of every side
//! otherwise, its output named `a || b`), through DataFusion's `concat` (which skips NULLs
//! instead), and the plan's `||`s become one call of it per chain ([`super::plan`]), which
//! [`super::functions::Bounded`] wraps like any other.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::kernels::boolean::{is_null, or};
use datafusion::arrow::compute::nullif;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The name it has in plans.
pub(crate) const NAME: &str = "||";

/// `||` on strings, over DataFusion's `concat`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JoinStrings {
    concat: Arc<ScalarUDF>,
}

impl JoinStrings {
    /// The function, over `concat`.
    pub(crate) fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            concat: datafusion::functions::string::concat(),
        }))
    }
}

impl ScalarUDFImpl for JoinStrings {
    fn name(&self) -> &str {
        NAME
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args
            .iter()
            .map(|arg| arg.schema_name().to_string())
            .collect::<Vec<_>>()
            .join(" || "))
    }

    fn signature(&self) -> &Signature {
        self.concat.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.concat.inner().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.concat.inner().return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let returns = args.return_field.data_type().clone();
        let mut nulls: Option<BooleanArray> = None;
        for arg in &args.args {
            match arg {
                ColumnarValue::Scalar(scalar) if scalar.is_null() => {
                    return Ok(ColumnarValue::Scalar(ScalarValue::try_new_null(&returns)?));
                }
                ColumnarValue::Scalar(_) => {}
                ColumnarValue::Array(array) if array.null_count() > 0 => {
                    let these = is_null(array.as_ref())?;
                    nulls = Some(match nulls {
                        Some(before) => or(&before, &these)?,
                        None => these,
                    });
                }
                ColumnarValue::Array(_) => {}
            }
        }
        let joined = self.concat.invoke_with_args(args)?;
        Ok(match (joined, nulls) {
            (ColumnarValue::Array(array), Some(nulls)) => {
                ColumnarValue::Array(nullif(array.as_ref(), &nulls)?)
            }
            (joined, _) => joined,
        })
    }
}
