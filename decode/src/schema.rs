//! The schema of the `spans` table, defined once.
//!
//! Repetitive strings are dictionary-encoded (`Dictionary(Int32, Utf8)`); SQL sees them as
//! strings. Attributes are maps of string keys to string values: every OTLP value is turned into
//! text (integers and doubles in their shortest decimal form, booleans as `true`/`false`, bytes
//! as base64, arrays and key-value lists as JSON). `docs/schema.md` documents each column.
//!
//! Two layouts: [`span_schema`] is the `spans` table as SQL and the APIs see it, and
//! [`stored_schema`] is how the store keeps it, smaller: ids as fixed-size binary, the columns
//! that come from a span's resource and scope once per (resource, scope) in a dictionary, a
//! span's attributes as a dictionary of attribute maps (spans of one operation mostly carry the
//! same set, stored once), and `end_time` computed from `start_time + duration_ns`. `store::view` turns one into the other.

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The type of the dictionary-encoded string columns.
pub fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The type of the timestamp columns: nanoseconds since the epoch, UTC.
pub fn timestamp_ns() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The `entries` field of an attribute map: non-null dictionary keys, nullable dictionary values.
pub fn attribute_entries() -> Arc<Field> {
    static ENTRIES: LazyLock<Arc<Field>> = LazyLock::new(|| {
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("key", dict_utf8(), false),
                Field::new("value", dict_utf8(), true),
            ])),
            false,
        ))
    });
    ENTRIES.clone()
}

/// The type of an attribute map column.
pub fn attribute_map() -> DataType {
    DataType::Map(attribute_entries(), false)
}

/// The fields of one element of the `events` list.
pub fn event_fields() -> Fields {
    static FIELDS: LazyLock<Fields> = LazyLock::new(|| {
        Fields::from(vec![
            Field::new("time", timestamp_ns(), false),
            Field::new("name", dict_utf8(), false),
            Field::new("attributes", attribute_map(), false),
        ])
    });
    FIELDS.clone()
}

/// The fields of one element of the `links` list.
pub fn link_fields() -> Fields {
    static FIELDS: LazyLock<Fields> = LazyLock::new(|| {
        Fields::from(vec![
            Field::new("trace_id", DataType::Utf8, false),
            Field::new("span_id", DataType::Utf8, false),
            Field::new("trace_state", dict_utf8(), true),
            Field::new("attributes", attribute_map(), false),
        ])
    });
    FIELDS.clone()
}

/// The list item field of `events`.
pub fn event_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(event_fields()), false))
}

/// The list item field of `links`.
pub fn link_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(link_fields()), false))
}

/// Column indexes of [`span_schema`], so that code reads `col::TRACE_ID` rather than a number.
#[allow(missing_docs)]
pub mod col {
    pub const TRACE_ID: usize = 0;
    pub const SPAN_ID: usize = 1;
    pub const PARENT_SPAN_ID: usize = 2;
    pub const TRACE_STATE: usize = 3;
    pub const SERVICE_NAME: usize = 4;
    pub const SERVICE_NAMESPACE: usize = 5;
    pub const INSTANCE_ID: usize = 6;
    pub const SPAN_NAME: usize = 7;
    pub const SPAN_KIND: usize = 8;
    pub const START_TIME: usize = 9;
    pub const END_TIME: usize = 10;
    pub const DURATION_NS: usize = 11;
    pub const STATUS_CODE: usize = 12;
    pub const STATUS_MESSAGE: usize = 13;
    pub const SCOPE_NAME: usize = 14;
    pub const SCOPE_VERSION: usize = 15;
    pub const ATTRIBUTES: usize = 16;
    pub const RESOURCE_ATTRIBUTES: usize = 17;
    pub const EVENTS: usize = 18;
    pub const LINKS: usize = 19;
    pub const ATTRIBUTE_TYPES: usize = 20;
    pub const FLAGS: usize = 21;
    pub const RESOURCE_ATTRIBUTE_TYPES: usize = 22;
}

/// The schema of the `spans` table.
///
/// ```
/// let schema = wayfinder_decode::schema::span_schema();
/// assert_eq!(schema.field(0).name(), "trace_id");
/// assert!(schema.field_with_name("attributes").is_ok());
/// ```
pub fn span_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("trace_id", DataType::Utf8, false),
            Field::new("span_id", DataType::Utf8, false),
            Field::new("parent_span_id", DataType::Utf8, true),
            Field::new("trace_state", dict_utf8(), true),
            Field::new("service_name", dict_utf8(), false),
            Field::new("service_namespace", dict_utf8(), true),
            Field::new("instance_id", dict_utf8(), true),
            Field::new("span_name", dict_utf8(), false),
            Field::new("span_kind", dict_utf8(), false),
            Field::new("start_time", timestamp_ns(), false),
            Field::new("end_time", timestamp_ns(), false),
            Field::new("duration_ns", DataType::Int64, false),
            Field::new("status_code", dict_utf8(), false),
            Field::new("status_message", dict_utf8(), true),
            Field::new("scope_name", dict_utf8(), true),
            Field::new("scope_version", dict_utf8(), true),
            Field::new("attributes", attribute_map(), false),
            Field::new("resource_attributes", attribute_map(), false),
            Field::new("events", DataType::List(event_item()), false),
            Field::new("links", DataType::List(link_item()), false),
            Field::new("attribute_types", attribute_map(), false),
            Field::new("flags", DataType::UInt32, false),
            Field::new("resource_attribute_types", attribute_map(), false),
        ]))
    });
    SCHEMA.clone()
}

/// The OTLP type of a span attribute's value, kept in the stored layout as the first letter of
/// its text (each distinct value once, so one byte a distinct value): the `attribute_types`
/// column names it, and Jaeger's tags take their type from it.
///
/// ```
/// use wayfinder_decode::schema::AttributeType;
/// assert_eq!(AttributeType::of_letter(b'i'), Some(AttributeType::Int));
/// assert_eq!(AttributeType::Int.name(), "int");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    /// `string_value`.
    String,
    /// `bool_value`.
    Bool,
    /// `int_value`.
    Int,
    /// `double_value`.
    Double,
    /// `bytes_value` (the text is base64).
    Bytes,
    /// `array_value` (the text is JSON).
    Array,
    /// `kvlist_value` (the text is JSON).
    Kvlist,
}

impl AttributeType {
    const ALL: [(u8, AttributeType, &'static str); 7] = [
        (b's', Self::String, "string"),
        (b'b', Self::Bool, "bool"),
        (b'i', Self::Int, "int"),
        (b'd', Self::Double, "double"),
        (b'y', Self::Bytes, "bytes"),
        (b'a', Self::Array, "array"),
        (b'k', Self::Kvlist, "kvlist"),
    ];

    /// The letter it is stored as.
    pub fn letter(self) -> u8 {
        Self::ALL
            .iter()
            .find(|(_, t, _)| *t == self)
            .map_or(b's', |(l, _, _)| *l)
    }

    /// The type a stored letter stands for.
    pub fn of_letter(letter: u8) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(l, _, _)| *l == letter)
            .map(|(_, t, _)| *t)
    }

    /// Its name in the `attribute_types` column.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t, _)| *t == self)
            .map_or("string", |(_, _, n)| n)
    }
}

/// The fields of the `origin` dictionary's values: what a span takes from its resource and its
/// instrumentation scope, once per (resource, scope) of a request.
pub fn origin_fields() -> Fields {
    static FIELDS: LazyLock<Fields> = LazyLock::new(|| {
        Fields::from(vec![
            Field::new("service_name", dict_utf8(), false),
            Field::new("service_namespace", dict_utf8(), true),
            Field::new("instance_id", dict_utf8(), true),
            Field::new("scope_name", dict_utf8(), true),
            Field::new("scope_version", dict_utf8(), true),
            Field::new("resource_attributes", attribute_map(), false),
        ])
    });
    FIELDS.clone()
}

/// The type of the stored `origin` column: a dictionary of [`origin_fields`] structs.
pub fn origin_type() -> DataType {
    DataType::Dictionary(
        Box::new(DataType::Int32),
        Box::new(DataType::Struct(origin_fields())),
    )
}

/// The type of the stored `attributes` column (each value's text after a letter that names its
/// [`AttributeType`]): a dictionary of attribute maps, one entry per
/// distinct set of a request.
pub fn attribute_set_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(attribute_map()))
}

/// Column indexes of [`stored_schema`], and of [`origin_fields`] in `origin::*`.
#[allow(missing_docs)]
pub mod stored {
    pub const TRACE_ID: usize = 0;
    pub const SPAN_ID: usize = 1;
    pub const PARENT_SPAN_ID: usize = 2;
    pub const TRACE_STATE: usize = 3;
    pub const ORIGIN: usize = 4;
    pub const SPAN_NAME: usize = 5;
    pub const SPAN_KIND: usize = 6;
    pub const START_TIME: usize = 7;
    pub const DURATION_NS: usize = 8;
    pub const STATUS_CODE: usize = 9;
    pub const STATUS_MESSAGE: usize = 10;
    pub const ATTRIBUTES: usize = 11;
    pub const EVENTS: usize = 12;
    pub const LINKS: usize = 13;
    pub const FLAGS: usize = 14;

    /// Fields of the `origin` dictionary's struct values.
    pub mod origin {
        pub const SERVICE_NAME: usize = 0;
        pub const SERVICE_NAMESPACE: usize = 1;
        pub const INSTANCE_ID: usize = 2;
        pub const SCOPE_NAME: usize = 3;
        pub const SCOPE_VERSION: usize = 4;
        pub const RESOURCE_ATTRIBUTES: usize = 5;
    }
}

/// How the store keeps spans (see the module documentation); [`stored`] names its columns.
///
/// ```
/// use arrow_schema::DataType;
/// let schema = wayfinder_decode::schema::stored_schema();
/// assert_eq!(schema.field(0).data_type(), &DataType::FixedSizeBinary(16));
/// ```
pub fn stored_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("trace_id", DataType::FixedSizeBinary(16), false),
            Field::new("span_id", DataType::FixedSizeBinary(8), false),
            Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
            Field::new("trace_state", dict_utf8(), true),
            Field::new("origin", origin_type(), false),
            Field::new("span_name", dict_utf8(), false),
            Field::new("span_kind", dict_utf8(), false),
            Field::new("start_time", timestamp_ns(), false),
            Field::new("duration_ns", DataType::Int64, false),
            Field::new("status_code", dict_utf8(), false),
            Field::new("status_message", dict_utf8(), true),
            Field::new("attributes", attribute_set_type(), false),
            Field::new("events", DataType::List(event_item()), false),
            Field::new("links", DataType::List(link_item()), false),
            Field::new("flags", DataType::UInt32, false),
        ]))
    });
    SCHEMA.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_indexes_match_the_schema() {
        let schema = span_schema();
        let expected = [
            (col::TRACE_ID, "trace_id"),
            (col::SPAN_ID, "span_id"),
            (col::PARENT_SPAN_ID, "parent_span_id"),
            (col::TRACE_STATE, "trace_state"),
            (col::SERVICE_NAME, "service_name"),
            (col::SERVICE_NAMESPACE, "service_namespace"),
            (col::INSTANCE_ID, "instance_id"),
            (col::SPAN_NAME, "span_name"),
            (col::SPAN_KIND, "span_kind"),
            (col::START_TIME, "start_time"),
            (col::END_TIME, "end_time"),
            (col::DURATION_NS, "duration_ns"),
            (col::STATUS_CODE, "status_code"),
            (col::STATUS_MESSAGE, "status_message"),
            (col::SCOPE_NAME, "scope_name"),
            (col::SCOPE_VERSION, "scope_version"),
            (col::ATTRIBUTES, "attributes"),
            (col::RESOURCE_ATTRIBUTES, "resource_attributes"),
            (col::EVENTS, "events"),
            (col::LINKS, "links"),
            (col::ATTRIBUTE_TYPES, "attribute_types"),
            (col::FLAGS, "flags"),
            (col::RESOURCE_ATTRIBUTE_TYPES, "resource_attribute_types"),
        ];
        assert_eq!(
            schema.fields().len(),
            expected.len(),
            "every column has an index constant"
        );
        for (index, name) in expected {
            assert_eq!(schema.field(index).name(), name, "col constant for {name}");
        }
    }
}
