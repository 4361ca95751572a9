//! Small Arrow builders that the OTLP conversion needs and arrow's own do not give: a string
//! dictionary that hands out its keys (so that one resource's attributes are interned once and
//! then repeated per span), and attribute maps built from those dictionaries.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, DictionaryArray, Int32Array, MapArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::ArrowError;
use arrow_schema::DataType;
use hashbrown::HashMap;

use super::schema;

/// A `Dictionary(Int32, Utf8)` column under construction.
#[derive(Debug, Default)]
pub struct DictBuilder {
    index: HashMap<Box<str>, i32>,
    values: StringBuilder,
    keys: Vec<i32>,
    valid: Vec<bool>,
    has_nulls: bool,
}

impl DictBuilder {
    /// A builder with room for `rows` keys.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    /// The key of `value`, adding it to the dictionary if it is new.
    pub fn intern(&mut self, value: &str) -> i32 {
        if let Some(&key) = self.index.get(value) {
            return key;
        }
        // Fewer than 2^31 distinct values per batch: a request is at most a few MiB.
        let key = i32::try_from(self.index.len()).unwrap_or(i32::MAX);
        self.values.append_value(value);
        self.index.insert(value.into(), key);
        key
    }

    /// Appends `value`.
    pub fn push(&mut self, value: &str) {
        let key = self.intern(value);
        self.push_key(key);
    }

    /// Appends the value that [`DictBuilder::intern`] gave `key` for.
    pub fn push_key(&mut self, key: i32) {
        self.keys.push(key);
        self.valid.push(true);
    }

    /// Appends `value`, or null when it is `None` or empty.
    pub fn push_non_empty(&mut self, value: Option<&str>) {
        match value {
            Some(v) if !v.is_empty() => self.push(v),
            _ => self.push_null(),
        }
    }

    /// Appends a null.
    pub fn push_null(&mut self) {
        self.keys.push(0);
        self.valid.push(false);
        self.has_nulls = true;
    }

    /// The column.
    pub fn finish(mut self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        let nulls = self
            .has_nulls
            .then(|| NullBuffer::from(std::mem::take(&mut self.valid)));
        let keys = Int32Array::new(ScalarBuffer::from(self.keys), nulls);
        let values: ArrayRef = Arc::new(self.values.finish());
        if values.is_empty() {
            // Every key is null: point them at a one-value dictionary so that keys stay in range.
            let values: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![""]));
            return DictionaryArray::try_new(keys, values);
        }
        DictionaryArray::try_new(keys, values)
    }
}

/// An attribute map column (`Map(Dictionary key, Dictionary value)`) under construction.
#[derive(Debug)]
pub struct MapBuilder {
    keys: DictBuilder,
    values: DictBuilder,
    offsets: Vec<i32>,
}

impl MapBuilder {
    /// A builder with room for `rows` maps of `entries` entries in all.
    pub fn with_capacity(rows: usize, entries: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            keys: DictBuilder::with_capacity(entries),
            values: DictBuilder::with_capacity(entries),
            offsets,
        }
    }

    /// Interns one entry and gives its keys, for entries repeated in many rows.
    pub fn intern(&mut self, key: &str, value: Option<&str>) -> (i32, Option<i32>) {
        (self.keys.intern(key), value.map(|v| self.values.intern(v)))
    }

    /// Appends one entry to the current row.
    pub fn push_entry(&mut self, key: &str, value: Option<&str>) {
        self.keys.push(key);
        match value {
            Some(v) => self.values.push(v),
            None => self.values.push_null(),
        }
    }

    /// Appends interned entries to the current row.
    pub fn push_interned(&mut self, entries: &[(i32, Option<i32>)]) {
        for &(key, value) in entries {
            self.keys.push_key(key);
            match value {
                Some(v) => self.values.push_key(v),
                None => self.values.push_null(),
            }
        }
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        let len = i32::try_from(self.keys.keys.len()).unwrap_or(i32::MAX);
        self.offsets.push(len);
    }

    /// The column.
    pub fn finish(self) -> Result<MapArray, ArrowError> {
        let entries_field = schema::attribute_entries();
        let DataType::Struct(fields) = entries_field.data_type() else {
            return Err(ArrowError::SchemaError(
                "attribute entries must be a struct".into(),
            ));
        };
        let keys: ArrayRef = Arc::new(self.keys.finish()?);
        let values: ArrayRef = Arc::new(self.values.finish()?);
        let entries = StructArray::try_new(fields.clone(), vec![keys, values], None)?;
        MapArray::try_new(
            entries_field,
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            entries,
            None,
            false,
        )
    }
}

/// Offsets of a list column under construction.
#[derive(Debug)]
pub struct ListOffsets(Vec<i32>);

impl ListOffsets {
    /// Offsets with room for `rows` lists.
    pub fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self(offsets)
    }

    /// Ends a list whose last item is the `items_so_far`th.
    pub fn end_row(&mut self, items_so_far: usize) {
        self.0.push(i32::try_from(items_so_far).unwrap_or(i32::MAX));
    }

    /// The offsets.
    pub fn finish(self) -> OffsetBuffer<i32> {
        OffsetBuffer::new(ScalarBuffer::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, ArrayAccessor};

    #[test]
    fn dictionary_interns_and_keeps_nulls() {
        let mut b = DictBuilder::with_capacity(4);
        b.push("a");
        b.push_non_empty(Some(""));
        b.push("b");
        b.push("a");
        let dict = b.finish().unwrap();
        assert_eq!(dict.values().len(), 2, "two distinct values");
        assert!(dict.is_null(1), "empty string is stored as null");
        let typed = dict.downcast_dict::<arrow_array::StringArray>().unwrap();
        assert_eq!(typed.value(0), "a");
        assert_eq!(typed.value(3), "a");
        assert_eq!(typed.value(2), "b");
    }

    #[test]
    fn all_null_dictionary_is_valid() {
        let mut b = DictBuilder::with_capacity(2);
        b.push_null();
        b.push_null();
        let dict = b.finish().unwrap();
        assert_eq!(dict.null_count(), 2);
    }

    #[test]
    fn map_rows() {
        let mut m = MapBuilder::with_capacity(2, 3);
        m.push_entry("k", Some("v"));
        m.end_row();
        let interned = [m.intern("r", Some("x")), m.intern("n", None)];
        m.push_interned(&interned);
        m.end_row();
        let map = m.finish().unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.value_length(0), 1);
        assert_eq!(map.value_length(1), 2);
        assert!(
            map.values().is_null(2),
            "an attribute without a value is a null value"
        );
    }
}
