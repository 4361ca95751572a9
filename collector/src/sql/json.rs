//! Arrow values as JSON: numbers, strings, booleans and `null`; timestamps as RFC 3339 strings;
//! maps and structs as objects; lists as arrays. Dictionary encoding is invisible.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit, *};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

/// The type name shown for a column: the Arrow type, without dictionary encoding.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Dictionary(_, value) => type_name(value),
        other => other.to_string(),
    }
}

/// Every value of `array`, in order.
pub fn column_values(array: &ArrayRef) -> Result<Vec<Value>, ArrowError> {
    (0..array.len())
        .map(|i| value_at(array.as_ref(), i))
        .collect()
}

/// The value of row `i`.
pub fn value_at(array: &dyn Array, i: usize) -> Result<Value, ArrowError> {
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
            let key = dict.normalized_keys()[i];
            value_at(dict.values().as_ref(), key)?
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            let entries = map.value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut object = Map::with_capacity(entries.len());
            for j in 0..entries.len() {
                let key = match value_at(keys.as_ref(), j)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                object.insert(key, value_at(values.as_ref(), j)?);
            }
            Value::Object(object)
        }
        DataType::Struct(fields) => {
            let structure = array.as_struct();
            let mut object = Map::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(structure.columns()) {
                object.insert(field.name().clone(), value_at(column.as_ref(), i)?);
            }
            Value::Object(object)
        }
        DataType::List(_) => list(&array.as_list::<i32>().value(i))?,
        DataType::LargeList(_) => list(&array.as_list::<i64>().value(i))?,
        _ => {
            // Decimals, durations, intervals, binary and the rest: Arrow's own display text.
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::String(formatter.value(i).to_string())
        }
    })
}

fn list(items: &ArrayRef) -> Result<Value, ArrowError> {
    Ok(Value::Array(column_values(items)?))
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
/// ```
/// assert_eq!(wayfinder_collector::sql::json::rfc3339(1), "1970-01-01T00:00:00.000000001Z");
/// ```
pub fn rfc3339(nanos: i64) -> String {
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
            assert_eq!(value_at(array.as_ref(), 0).unwrap(), expected, "{reason}");
        }
    }
}
