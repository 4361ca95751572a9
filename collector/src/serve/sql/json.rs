//! Arrow values as JSON: numbers, strings, booleans and `null`; timestamps as RFC 3339 strings;
//! maps and structs as objects; lists as arrays. Dictionary encoding is invisible.
//!
//! Every value made is counted in the query's [`AnswerBudget`] (its bytes, and the query's time
//! limit checked as it goes), so that turning an answer into JSON is bounded as the query was;
//! the work is linear in the values read (a dictionary's key is read, not its keys copied).

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit, *};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

use super::{AnswerBudget, QueryError};

/// What a JSON value costs beside its text: `serde_json::Value` itself, and a map entry's node.
const VALUE_BYTES: usize = std::mem::size_of::<Value>();
const ENTRY_BYTES: usize = 64;

/// The type name shown for a column: the Arrow type, without dictionary encoding.
pub(crate) fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Dictionary(_, value) => type_name(value),
        other => other.to_string(),
    }
}

/// Every value of `array`, in order.
pub(crate) fn column_values(
    array: &ArrayRef,
    budget: &mut AnswerBudget,
) -> Result<Vec<Value>, QueryError> {
    (0..array.len())
        .map(|i| value_at(array.as_ref(), i, budget))
        .collect()
}

/// The value of row `i`.
pub(crate) fn value_at(
    array: &dyn Array,
    i: usize,
    budget: &mut AnswerBudget,
) -> Result<Value, QueryError> {
    let value = value_of(array, i, budget).map_err(|error| match error {
        ArrowError::ExternalError(inner) => match inner.downcast::<OverBudget>() {
            Ok(over) => over.0,
            Err(other) => QueryError::Execution(other.to_string()),
        },
        other => QueryError::Execution(other.to_string()),
    })?;
    let text = match &value {
        Value::String(s) => s.len(),
        _ => 0,
    };
    budget.take(VALUE_BYTES + text)?;
    Ok(value)
}

/// A value that failed its budget, told from an Arrow error on the way out of [`value_of`].
#[derive(Debug)]
struct OverBudget(QueryError);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OverBudget {}

fn value_of(array: &dyn Array, i: usize, budget: &mut AnswerBudget) -> Result<Value, ArrowError> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_owned()),
        DataType::Timestamp(unit, _) => timestamp(array, *unit, i)?,
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            value_of(
                dict.values().as_ref(),
                dictionary_key(dict.keys(), i)?,
                budget,
            )?
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            let offsets = map.value_offsets();
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            let (keys, values) = (map.keys(), map.values());
            let mut object = Map::new();
            for j in start..end {
                let key = match value_of(keys.as_ref(), j, budget)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = nested(values.as_ref(), j, budget)?;
                charge(budget, ENTRY_BYTES + key.len())?;
                object.insert(key, value);
            }
            Value::Object(object)
        }
        DataType::Struct(fields) => {
            let structure = array.as_struct();
            let mut object = Map::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(structure.columns()) {
                object.insert(field.name().clone(), nested(column.as_ref(), i, budget)?);
            }
            Value::Object(object)
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            items(
                list.values(),
                offsets[i] as usize,
                offsets[i + 1] as usize,
                budget,
            )?
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let offsets = list.value_offsets();
            items(
                list.values(),
                offsets[i] as usize,
                offsets[i + 1] as usize,
                budget,
            )?
        }
        _ => {
            // Decimals, durations, intervals, binary and the rest: Arrow's own display text.
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::String(formatter.value(i).to_string())
        }
    })
}

/// The elements `start..end` of a list's values.
fn items(
    values: &ArrayRef,
    start: usize,
    end: usize,
    budget: &mut AnswerBudget,
) -> Result<Value, ArrowError> {
    (start..end)
        .map(|j| nested(values.as_ref(), j, budget))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// A value inside another, counted in the budget as [`value_at`] counts a top-level one.
fn nested(array: &dyn Array, i: usize, budget: &mut AnswerBudget) -> Result<Value, ArrowError> {
    let value = value_of(array, i, budget)?;
    let text = match &value {
        Value::String(s) => s.len(),
        _ => 0,
    };
    charge(budget, VALUE_BYTES + text)?;
    Ok(value)
}

fn charge(budget: &mut AnswerBudget, bytes: usize) -> Result<(), ArrowError> {
    budget
        .take(bytes)
        .map_err(|e| ArrowError::ExternalError(Box::new(OverBudget(e))))
}

/// The key of row `i` of a dictionary's keys, whatever their integer type.
fn dictionary_key(keys: &dyn Array, i: usize) -> Result<usize, ArrowError> {
    let key = match keys.data_type() {
        DataType::Int8 => keys.as_primitive::<Int8Type>().value(i) as i64,
        DataType::Int16 => keys.as_primitive::<Int16Type>().value(i) as i64,
        DataType::Int32 => keys.as_primitive::<Int32Type>().value(i) as i64,
        DataType::Int64 => keys.as_primitive::<Int64Type>().value(i),
        DataType::UInt8 => keys.as_primitive::<UInt8Type>().value(i) as i64,
        DataType::UInt16 => keys.as_primitive::<UInt16Type>().value(i) as i64,
        DataType::UInt32 => keys.as_primitive::<UInt32Type>().value(i) as i64,
        DataType::UInt64 => keys.as_primitive::<UInt64Type>().value(i) as i64,
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "a dictionary keyed by {other}"
            )));
        }
    };
    usize::try_from(key)
        .map_err(|_| ArrowError::InvalidArgumentError(format!("a dictionary key of {key}")))
}

fn float(value: f64) -> Value {
    // JSON has no NaN or infinity: those become strings.
    Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number)
}

fn timestamp(array: &dyn Array, unit: TimeUnit, i: usize) -> Result<Value, ArrowError> {
    let nanos = match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(i)
            .checked_mul(1_000_000_000),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .value(i)
            .checked_mul(1_000_000),
        TimeUnit::Microsecond => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .checked_mul(1_000),
        TimeUnit::Nanosecond => Some(array.as_primitive::<TimestampNanosecondType>().value(i)),
    };
    let Some(nanos) = nanos else {
        return Ok(Value::Null);
    };
    Ok(Value::String(rfc3339(nanos)))
}

/// Nanoseconds since the epoch as RFC 3339 in UTC with nanoseconds, e.g.
/// `2026-11-24T14:00:00.000000001Z`.
///
/// (Its example runs as the unit test `examples::example_rfc3339`.)
pub(crate) fn rfc3339(nanos: i64) -> String {
    let time = chrono::DateTime::from_timestamp_nanos(nanos);
    time.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        DictionaryArray, Float64Array, Int64Array, StringArray, TimestampNanosecondArray,
        UInt64Array,
    };
    use std::sync::Arc;

    #[test]
    fn scalar_values() {
        let cases: Vec<(ArrayRef, Value, &str)> = vec![
            (
                Arc::new(Int64Array::from(vec![i64::MAX])),
                serde_json::json!(i64::MAX),
                "int64 stays exact",
            ),
            (
                Arc::new(UInt64Array::from(vec![u64::MAX])),
                serde_json::json!(u64::MAX),
                "uint64 stays exact",
            ),
            (
                Arc::new(Float64Array::from(vec![1.5])),
                serde_json::json!(1.5),
                "float",
            ),
            (
                Arc::new(Float64Array::from(vec![f64::NAN])),
                serde_json::json!("NaN"),
                "NaN has no JSON number",
            ),
            (
                Arc::new(StringArray::from(vec![Some("x")])),
                serde_json::json!("x"),
                "string",
            ),
            (
                Arc::new(StringArray::from(vec![None::<&str>])),
                Value::Null,
                "null",
            ),
            (
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_700_000_000_123_456_789])
                        .with_timezone("UTC"),
                ),
                serde_json::json!("2023-11-14T22:13:20.123456789Z"),
                "timestamps are RFC 3339",
            ),
            (
                Arc::new(DictionaryArray::<Int32Type>::from_iter(["b"].into_iter())),
                serde_json::json!("b"),
                "dictionaries show their values",
            ),
        ];
        for (array, expected, reason) in cases {
            let mut budget = AnswerBudget::unbounded();
            assert_eq!(
                value_at(array.as_ref(), 0, &mut budget).unwrap(),
                expected,
                "{reason}"
            );
        }
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_rfc3339() {
        assert_eq!(
            crate::serve::sql::json::rfc3339(1),
            "1970-01-01T00:00:00.000000001Z"
        );
    }
}
