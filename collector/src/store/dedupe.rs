//! The second half of compacting a segment: its batches, concatenated, still hold each
//! request's own `origin` rows and attribute sets (and the strings of their nested
//! dictionaries once per request). This keeps one of each distinct row, re-encoded with fresh
//! dictionaries, and points every span at it: the same spans, read the same, in less memory.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, MapArray, RecordBatch, StringArray,
    StructArray,
};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::error::ArrowError;
use hashbrown::HashMap;

use crate::decode::builders::{DictBuilder, MapBuilder};
use crate::decode::schema::{origin_fields, stored};

/// A stored batch with its `origin` and `attributes` dictionaries deduplicated.
pub(super) fn dedupe(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns[stored::ORIGIN] = Arc::new(origins(
        columns[stored::ORIGIN].as_dictionary::<Int32Type>(),
    )?);
    columns[stored::ATTRIBUTES] = Arc::new(attribute_sets(
        columns[stored::ATTRIBUTES].as_dictionary::<Int32Type>(),
    )?);
    RecordBatch::try_new(batch.schema(), columns)
}

/// A `Dictionary(Int32, Utf8)` array read as text.
struct Texts<'a> {
    keys: &'a Int32Array,
    values: &'a StringArray,
}

impl<'a> Texts<'a> {
    fn of(array: &'a ArrayRef) -> Self {
        let dictionary = array.as_dictionary::<Int32Type>();
        Self {
            keys: dictionary.keys(),
            values: dictionary.values().as_string::<i32>(),
        }
    }

    fn get(&self, row: usize) -> Option<&'a str> {
        let key = usize::try_from(self.keys.value(row)).ok()?;
        (self.keys.is_valid(row) && key < self.values.len()).then(|| self.values.value(key))
    }
}

/// One attribute map row as (key, value) texts.
type Entries<'a> = Vec<(&'a str, Option<&'a str>)>;

/// The rows of an attribute map array as texts.
struct Maps<'a> {
    map: &'a MapArray,
    keys: Texts<'a>,
    values: Texts<'a>,
}

impl<'a> Maps<'a> {
    fn of(map: &'a MapArray) -> Self {
        Self {
            map,
            keys: Texts::of(map.entries().column(0)),
            values: Texts::of(map.entries().column(1)),
        }
    }

    fn row(&self, row: usize) -> Entries<'a> {
        let offsets = self.map.value_offsets();
        let (start, end) = (offsets[row], offsets[row + 1]);
        (start..end)
            .filter_map(|entry| {
                let entry = usize::try_from(entry).ok()?;
                Some((self.keys.get(entry)?, self.values.get(entry)))
            })
            .collect()
    }
}

fn push_entries(builder: &mut MapBuilder, entries: &Entries<'_>) {
    for &(key, value) in entries {
        builder.push_entry(key, value);
    }
    builder.end_row();
}

fn push_optional(builder: &mut DictBuilder, value: Option<&str>) {
    match value {
        Some(value) => builder.push(value),
        None => builder.push_null(),
    }
}

/// Points the spans of `dictionary` at the first of each distinct row, given each row's key.
fn remap<K: std::hash::Hash + Eq>(
    dictionary: &DictionaryArray<Int32Type>,
    rows: usize,
    key_of: impl Fn(usize) -> K,
    mut keep: impl FnMut(&K),
) -> Int32Array {
    let mut index: HashMap<K, i32> = HashMap::new();
    let mut new_key = Vec::with_capacity(rows);
    for row in 0..rows {
        let key = key_of(row);
        let next = i32::try_from(index.len()).unwrap_or(i32::MAX);
        let kept = *index.entry(key).or_insert_with_key(|key| {
            keep(key);
            next
        });
        new_key.push(kept);
    }
    dictionary
        .keys()
        .iter()
        .map(|key| key.and_then(|k| new_key.get(usize::try_from(k).ok()?).copied()))
        .collect()
}

fn attribute_sets(
    dictionary: &DictionaryArray<Int32Type>,
) -> Result<DictionaryArray<Int32Type>, ArrowError> {
    let maps = Maps::of(dictionary.values().as_map());
    let mut sets = MapBuilder::with_capacity(0, 0);
    let keys = remap(
        dictionary,
        dictionary.values().len(),
        |row| maps.row(row),
        |entries| push_entries(&mut sets, entries),
    );
    exact(DictionaryArray::try_new(keys, Arc::new(sets.finish()?))?)
}

/// The array with its buffers cut to their contents (the builders grow by doubling).
fn exact(mut array: DictionaryArray<Int32Type>) -> Result<DictionaryArray<Int32Type>, ArrowError> {
    array.shrink_to_fit();
    Ok(array)
}

/// What an `origin` row holds, as texts.
type Origin<'a> = ([Option<&'a str>; 5], Entries<'a>);

fn origins(
    dictionary: &DictionaryArray<Int32Type>,
) -> Result<DictionaryArray<Int32Type>, ArrowError> {
    use stored::origin as o;
    let values: &StructArray = dictionary.values().as_struct();
    let texts: Vec<Texts<'_>> = [
        o::SERVICE_NAME,
        o::SERVICE_NAMESPACE,
        o::INSTANCE_ID,
        o::SCOPE_NAME,
        o::SCOPE_VERSION,
    ]
    .into_iter()
    .map(|field| Texts::of(values.column(field)))
    .collect();
    let resources = Maps::of(values.column(o::RESOURCE_ATTRIBUTES).as_map());
    let mut columns: Vec<DictBuilder> = (0..5).map(|_| DictBuilder::default()).collect();
    let mut resource_attributes = MapBuilder::with_capacity(0, 0);
    let keys = remap(
        dictionary,
        values.len(),
        |row| -> Origin<'_> {
            (
                std::array::from_fn(|field| texts[field].get(row)),
                resources.row(row),
            )
        },
        |(fields, entries)| {
            for (builder, value) in columns.iter_mut().zip(fields) {
                push_optional(builder, *value);
            }
            push_entries(&mut resource_attributes, entries);
        },
    );
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(6);
    for builder in columns {
        arrays.push(Arc::new(builder.finish()?));
    }
    arrays.push(Arc::new(resource_attributes.finish()?));
    let values = StructArray::try_new(origin_fields(), arrays, None)?;
    exact(DictionaryArray::try_new(keys, Arc::new(values))?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::compute::concat_batches;

    use super::*;
    use crate::decode::decode_traces;
    use crate::decode::schema::{span_schema, stored_schema};
    use crate::store::view::public_batch;
    use crate::testing::{span, string_attribute as kv, trace_request};

    /// Sixty requests of two services whose spans share two attribute sets.
    fn requests() -> Vec<RecordBatch> {
        (0u8..60)
            .map(|n| {
                let service = if n % 2 == 1 { "cart" } else { "checkout" };
                let spans = (0..4u64)
                    .map(|i| {
                        let mut s = span([n + 1; 16], i + 1, "GET /", 1, 2);
                        let route = if i % 2 == 0 { "/cart" } else { "/pay" };
                        s.attributes =
                            vec![kv("http.route", route), kv("http.request.method", "GET")];
                        s
                    })
                    .collect();
                let request = trace_request(Some(service), spans);
                decode_traces(&request)
                    .unwrap()
                    .batch
                    .unwrap()
                    .into_record_batch()
            })
            .collect()
    }

    #[test]
    fn equal_rows_are_kept_once_and_every_span_reads_the_same() {
        let merged = concat_batches(&stored_schema(), &requests()).unwrap();
        let deduped = dedupe(&merged).unwrap();
        let distinct = |batch: &RecordBatch, column: usize| {
            batch
                .column(column)
                .as_dictionary::<Int32Type>()
                .values()
                .len()
        };
        assert_eq!(distinct(&merged, stored::ORIGIN), 60, "one per request");
        assert_eq!(distinct(&deduped, stored::ORIGIN), 2, "checkout and cart");
        assert_eq!(
            distinct(&merged, stored::ATTRIBUTES),
            120,
            "two per request"
        );
        assert_eq!(distinct(&deduped, stored::ATTRIBUTES), 2, "/cart and /pay");
        let bytes = |batch: &RecordBatch| batch.get_array_memory_size();
        assert!(
            bytes(&deduped) < bytes(&merged),
            "{} < {}",
            bytes(&deduped),
            bytes(&merged)
        );
        let read = |batch: &RecordBatch| {
            public_batch(batch, &span_schema(), None, None)
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            read(&deduped),
            read(&merged),
            "the same spans, column by column"
        );
    }
}
