//! The stored layout ([`stored_schema`]) seen as the `spans` table ([`span_schema`]): ids back
//! to lowercase hex, the resource and scope columns taken from the `origin` dictionary, and
//! `end_time` as `start_time + duration_ns`, attribute values without their stored type letter
//! (which `attribute_types` names). Only the columns asked for are built, one batch at
//! a time while a query reads it, and a filter on trace ids is applied to the binary ids
//! before anything is built.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, FixedSizeBinaryArray, MapArray,
    RecordBatch, RecordBatchOptions, StringArray, StructArray, TimestampNanosecondArray,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::{filter_record_batch, take};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, SchemaRef, TimestampNanosecondType};
use datafusion::arrow::error::ArrowError;

use crate::decode::schema::{AttributeType, col, span_schema, stored, stored_schema};

/// A trace id as stored: 16 bytes.
pub(crate) type TraceId = [u8; 16];

/// Parses a trace id as SQL compares it: 32 lowercase hexadecimal characters. Anything else
/// equals no stored id (they are always lowercase hex), so it has no binary form.
///
/// (Its example runs as the unit test `examples::example_parse_trace_id`.)
pub(crate) fn parse_trace_id(text: &str) -> Option<TraceId> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut id = [0u8; 16];
    const_hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// The schema of [`public_batch`]'s output for a projection of [`span_schema`].
pub(crate) fn projected_schema(projection: Option<&[usize]>) -> Result<SchemaRef, ArrowError> {
    match projection {
        None => Ok(span_schema()),
        Some(columns) => Ok(Arc::new(span_schema().project(columns)?)),
    }
}

/// The rows of a stored batch as `spans` rows, with only the `projection`'s columns (all when
/// `None`), and only the spans of `traces` when given. `None` when no row is left.
pub(crate) fn public_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
    projection: Option<&[usize]>,
    traces: Option<&[TraceId]>,
) -> Result<Option<RecordBatch>, ArrowError> {
    debug_assert_eq!(batch.schema(), stored_schema());
    let filtered;
    let batch = match traces {
        None => batch,
        Some(traces) => {
            let mask = trace_mask(batch, traces);
            if mask.true_count() == 0 {
                return Ok(None);
            }
            filtered = filter_record_batch(batch, &mask)?;
            &filtered
        }
    };
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    static ALL: std::sync::LazyLock<Vec<usize>> =
        std::sync::LazyLock::new(|| (0..span_schema().fields().len()).collect());
    let columns = projection.unwrap_or(ALL.as_slice());
    let arrays = columns
        .iter()
        .map(|&column| public_column(batch, column))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), arrays, &options).map(Some)
}

/// Which rows of a stored batch belong to one of `traces`.
fn trace_mask(batch: &RecordBatch, traces: &[TraceId]) -> BooleanArray {
    let ids = batch.column(stored::TRACE_ID).as_fixed_size_binary();
    ids.iter()
        .map(|id| Some(id.is_some_and(|id| traces.iter().any(|t| t.as_slice() == id))))
        .collect()
}

/// One column of [`span_schema`] from a stored batch.
fn public_column(batch: &RecordBatch, column: usize) -> Result<ArrayRef, ArrowError> {
    let stored = |index: usize| Ok(batch.column(index).clone());
    let origin = |field: usize| -> Result<ArrayRef, ArrowError> {
        let origin = batch.column(stored::ORIGIN).as_dictionary::<Int32Type>();
        take(
            origin.values().as_struct().column(field).as_ref(),
            origin.keys(),
            None,
        )
    };
    match column {
        col::TRACE_ID => hex(batch.column(stored::TRACE_ID).as_fixed_size_binary()),
        col::SPAN_ID => hex(batch.column(stored::SPAN_ID).as_fixed_size_binary()),
        col::PARENT_SPAN_ID => hex(batch.column(stored::PARENT_SPAN_ID).as_fixed_size_binary()),
        col::TRACE_STATE => stored(stored::TRACE_STATE),
        col::SERVICE_NAME => origin(stored::origin::SERVICE_NAME),
        col::SERVICE_NAMESPACE => origin(stored::origin::SERVICE_NAMESPACE),
        col::INSTANCE_ID => origin(stored::origin::INSTANCE_ID),
        col::SPAN_NAME => stored(stored::SPAN_NAME),
        col::SPAN_KIND => stored(stored::SPAN_KIND),
        col::START_TIME => stored(stored::START_TIME),
        col::END_TIME => end_time(batch),
        col::DURATION_NS => stored(stored::DURATION_NS),
        col::STATUS_CODE => stored(stored::STATUS_CODE),
        col::STATUS_MESSAGE => stored(stored::STATUS_MESSAGE),
        col::SCOPE_NAME => origin(stored::origin::SCOPE_NAME),
        col::SCOPE_VERSION => origin(stored::origin::SCOPE_VERSION),
        col::ATTRIBUTES | col::ATTRIBUTE_TYPES => {
            let sets = batch
                .column(stored::ATTRIBUTES)
                .as_dictionary::<Int32Type>();
            // Each distinct value once: its text after the type letter, or the type's name.
            let values = if column == col::ATTRIBUTES {
                retyped(sets.values().as_map(), untyped)
            } else {
                retyped(sets.values().as_map(), |t| type_name(t))
            }?;
            take(&values, sets.keys(), None)
        }
        col::RESOURCE_ATTRIBUTES | col::RESOURCE_ATTRIBUTE_TYPES => {
            let origins = batch.column(stored::ORIGIN).as_dictionary::<Int32Type>();
            let maps = origins
                .values()
                .as_struct()
                .column(stored::origin::RESOURCE_ATTRIBUTES)
                .as_map();
            let values = if column == col::RESOURCE_ATTRIBUTES {
                retyped(maps, untyped)
            } else {
                retyped(maps, |t| type_name(t))
            }?;
            take(&values, origins.keys(), None)
        }
        col::EVENTS => stored(stored::EVENTS),
        col::LINKS => stored(stored::LINKS),
        col::FLAGS => stored(stored::FLAGS),
        other => Err(ArrowError::SchemaError(format!(
            "the spans table has no column {other}"
        ))),
    }
}

/// A stored value's text, after its type letter.
fn untyped(typed: &str) -> &str {
    typed.get(1..).unwrap_or("")
}

/// The name of a stored value's type, from its letter.
fn type_name(typed: &str) -> &'static str {
    typed
        .bytes()
        .next()
        .and_then(AttributeType::of_letter)
        .map_or("string", AttributeType::name)
}

/// The stored attribute sets with each distinct value's text mapped by `f` (the keys, the
/// offsets and which value each entry has stay as they are: only the value dictionary's
/// strings are new).
fn retyped(sets: &MapArray, f: impl Fn(&str) -> &str) -> Result<MapArray, ArrowError> {
    let entries = sets.entries();
    let values = entries.column(1).as_dictionary::<Int32Type>();
    let texts: StringArray = values
        .values()
        .as_string::<i32>()
        .iter()
        .map(|text| text.map(&f))
        .collect();
    let values = DictionaryArray::<Int32Type>::try_new(values.keys().clone(), Arc::new(texts))?;
    let entries = StructArray::try_new(
        entries.fields().clone(),
        vec![entries.column(0).clone(), Arc::new(values)],
        entries.nulls().cloned(),
    )?;
    let (field, offsets, _, nulls, ordered) = sets.clone().into_parts();
    MapArray::try_new(field, offsets, entries, nulls, ordered)
}

/// Lowercase hex of fixed-size ids, nulls kept.
fn hex(ids: &FixedSizeBinaryArray) -> Result<ArrayRef, ArrowError> {
    let width = usize::try_from(ids.value_length()).unwrap_or(0);
    let raw = ids.value_data();
    let mut text = vec![0u8; raw.len() * 2];
    const_hex::encode_to_slice(raw, &mut text)
        .map_err(|e| ArrowError::ComputeError(format!("hex encoding: {e}")))?;
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(width * 2, ids.len()));
    let array = StringArray::try_new(offsets, Buffer::from(text), ids.nulls().cloned())?;
    Ok(Arc::new(array))
}

/// `start_time + duration_ns`: the decoder stored `duration_ns = end - start`.
fn end_time(batch: &RecordBatch) -> Result<ArrayRef, ArrowError> {
    let start = batch
        .column(stored::START_TIME)
        .as_primitive::<TimestampNanosecondType>();
    let duration = batch
        .column(stored::DURATION_NS)
        .as_primitive::<Int64Type>();
    let end: ScalarBuffer<i64> = start
        .values()
        .iter()
        .zip(duration.values().iter())
        .map(|(start, duration)| start.saturating_add(*duration))
        .collect();
    Ok(Arc::new(
        TimestampNanosecondArray::new(end, None).with_timezone("UTC"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_traces;
    use crate::testing::{span, trace_request};

    #[test]
    fn ids_come_back_as_the_hex_they_were_sent_as_and_end_is_start_plus_duration() {
        let trace = [0xab; 16];
        let mut child = span(trace, 0x0102_0304_0506_0708, "GET /cart", 1_000, 3_500);
        child.parent_span_id = 0x1112_1314_1516_1718u64.to_be_bytes().to_vec();
        let root = span(trace, 0x2122_2324_2526_2728, "GET /", 500, 4_000);
        let request = trace_request(Some("checkout"), vec![child, root]);
        let stored = decode_traces(&request).unwrap().batch.unwrap();
        let public = public_batch(stored.record_batch(), &span_schema(), None, None)
            .unwrap()
            .unwrap();
        let text = |column: usize, row: usize| {
            let array = public.column(column).as_string::<i32>();
            array.is_valid(row).then(|| array.value(row).to_owned())
        };
        assert_eq!(text(col::TRACE_ID, 0).unwrap(), "ab".repeat(16));
        assert_eq!(text(col::SPAN_ID, 0).unwrap(), "0102030405060708");
        assert_eq!(text(col::PARENT_SPAN_ID, 0).unwrap(), "1112131415161718");
        assert_eq!(text(col::PARENT_SPAN_ID, 1), None, "a root has no parent");
        let ends = public
            .column(col::END_TIME)
            .as_primitive::<TimestampNanosecondType>();
        assert_eq!((ends.value(0), ends.value(1)), (3_500, 4_000));
    }

    #[test]
    fn a_trace_filter_keeps_only_that_trace_and_a_projection_only_its_columns() {
        let request = trace_request(
            Some("checkout"),
            vec![
                span([1; 16], 1, "a", 1, 2),
                span([2; 16], 2, "b", 1, 2),
                span([1; 16], 3, "c", 1, 2),
            ],
        );
        let stored = decode_traces(&request).unwrap().batch.unwrap();
        let projection = [col::SERVICE_NAME, col::SPAN_NAME];
        let schema = projected_schema(Some(&projection)).unwrap();
        let public = public_batch(
            stored.record_batch(),
            &schema,
            Some(&projection),
            Some(&[[1; 16]]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(public.num_columns(), 2);
        assert_eq!(public.num_rows(), 2, "two spans of trace 01…");
        let names = datafusion::arrow::compute::cast(
            public.column(1),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let names: Vec<_> = names.as_string::<i32>().iter().flatten().collect();
        assert_eq!(names, ["a", "c"]);
        let none = public_batch(
            stored.record_batch(),
            &schema,
            Some(&projection),
            Some(&[[9; 16]]),
        );
        assert!(none.unwrap().is_none(), "no span of that trace");
    }

    /// Resource attributes come back as the text they were sent as, and their types beside
    /// them, as span attributes do.
    #[test]
    fn resource_attributes_keep_their_types() {
        use crate::testing::{attribute, string_attribute};
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut request = trace_request(Some("checkout"), vec![span([1; 16], 1, "a", 1, 2)]);
        let resource = request.resource_spans[0].resource.as_mut().unwrap();
        resource
            .attributes
            .push(attribute("host.cpus", Value::IntValue(4)));
        resource
            .attributes
            .push(string_attribute("host.name", "web-1"));
        let stored = decode_traces(&request).unwrap().batch.unwrap();
        let public = public_batch(stored.record_batch(), &span_schema(), None, None)
            .unwrap()
            .unwrap();
        let entry = |column: usize, key: &str| -> Option<String> {
            let maps = public.column(column).as_map();
            let entries = maps.value(0);
            let keys = datafusion::arrow::compute::cast(
                entries.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let values = datafusion::arrow::compute::cast(
                entries.column(1),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
            (0..keys.len())
                .find(|&i| keys.value(i) == key)
                .map(|i| values.value(i).to_owned())
        };
        let cases = [
            (
                col::RESOURCE_ATTRIBUTES,
                "host.cpus",
                "4",
                "the number's text, no type letter",
            ),
            (
                col::RESOURCE_ATTRIBUTE_TYPES,
                "host.cpus",
                "int",
                "and its type",
            ),
            (
                col::RESOURCE_ATTRIBUTES,
                "host.name",
                "web-1",
                "a string as sent",
            ),
            (
                col::RESOURCE_ATTRIBUTE_TYPES,
                "host.name",
                "string",
                "typed string",
            ),
            (
                col::RESOURCE_ATTRIBUTES,
                "service.name",
                "checkout",
                "the service name too",
            ),
        ];
        for (column, key, want, why) in cases {
            assert_eq!(entry(column, key).as_deref(), Some(want), "{why}");
        }
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_parse_trace_id() {
        use crate::store::view::parse_trace_id;
        assert!(parse_trace_id("4bf92f3577b34da6a3ce929d0e0e4736").is_some());
        assert!(
            parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").is_none(),
            "SQL = is case-sensitive"
        );
        assert!(parse_trace_id("4bf92f35").is_none());
    }
}
