//! The sizes of values, row by row, read from an array's offsets and views without copying
//! anything: what a bounded function estimates before it runs, and what `UNNEST` would repeat.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
#[cfg(test)]
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::ColumnarValue;

/// One argument of a call, read row by row whether it is an array or a scalar (which stands
/// for the same value in every row).
pub(super) struct Arg {
    array: ArrayRef,
    scalar: bool,
}

impl Arg {
    pub(super) fn new(value: &ColumnarValue) -> datafusion::error::Result<Self> {
        Ok(match value {
            ColumnarValue::Array(array) => Self {
                array: array.clone(),
                scalar: false,
            },
            ColumnarValue::Scalar(scalar) => Self {
                array: scalar.to_array_of_size(1)?,
                scalar: true,
            },
        })
    }

    /// Whether it is one value for every row (a literal, or folded from literals).
    pub(super) fn is_scalar(&self) -> bool {
        self.scalar
    }

    fn row(&self, i: usize) -> usize {
        if self.scalar { 0 } else { i }
    }

    /// The bytes of row `i`'s value (a string's or binary's length; a list's elements').
    pub(super) fn bytes(&self, i: usize) -> u64 {
        value_bytes(self.array.as_ref(), self.row(i))
    }

    /// Row `i`'s value as an integer, when it is one (null: `None`).
    pub(super) fn int(&self, i: usize) -> Option<i64> {
        let row = self.row(i);
        if self.array.is_null(row) {
            return None;
        }
        let value = ScalarValue::try_from_array(self.array.as_ref(), row).ok()?;
        match value.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(n) => n,
            _ => None,
        }
    }

    /// The elements of row `i`'s list (0 for null or a value that is not a list).
    pub(super) fn elements(&self, i: usize) -> u64 {
        list_len(self.array.as_ref(), self.row(i))
    }

    /// The bytes of one element of the list in row `i`, the widest (for what a list of them
    /// would cost).
    pub(super) fn element_bytes(&self, i: usize) -> u64 {
        let row = self.row(i);
        let n = list_len(self.array.as_ref(), row);
        if n == 0 {
            return 0;
        }
        value_bytes(self.array.as_ref(), row).div_ceil(n)
    }

    /// The value of row `i` as a scalar (for patterns).
    pub(super) fn scalar_at(&self, i: usize) -> Option<ScalarValue> {
        ScalarValue::try_from_array(self.array.as_ref(), self.row(i)).ok()
    }

    /// Its whole size as the call holds it: the rows it has, a scalar once per row.
    pub(super) fn total_bytes(&self, rows: usize) -> u64 {
        if self.scalar {
            value_bytes(self.array.as_ref(), 0).saturating_mul(rows as u64)
        } else {
            self.array.get_array_memory_size() as u64
        }
    }
}

/// The bytes of the value at `row`: what copying it costs. Offsets and views are read; a
/// nested value is the sum of its children's.
pub(crate) fn value_bytes(array: &dyn Array, row: usize) -> u64 {
    if row >= array.len() || array.is_null(row) {
        return 0;
    }
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value_length(row) as u64,
        DataType::LargeUtf8 => array.as_string::<i64>().value_length(row) as u64,
        DataType::Binary => array.as_binary::<i32>().value_length(row) as u64,
        DataType::LargeBinary => array.as_binary::<i64>().value_length(row) as u64,
        DataType::Utf8View => array.as_string_view().value(row).len() as u64,
        DataType::BinaryView => array.as_binary_view().value(row).len() as u64,
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let range = list.value_offsets();
            children_bytes(
                list.values().as_ref(),
                range[row] as usize,
                range[row + 1] as usize,
            )
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let range = list.value_offsets();
            children_bytes(
                list.values().as_ref(),
                range[row] as usize,
                range[row + 1] as usize,
            )
        }
        DataType::FixedSizeList(_, n) => {
            let n = *n as usize;
            let list = array.as_fixed_size_list();
            children_bytes(list.values().as_ref(), row * n, (row + 1) * n)
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            let range = map.value_offsets();
            let (start, end) = (range[row] as usize, range[row + 1] as usize);
            children_bytes(map.keys().as_ref(), start, end)
                + children_bytes(map.values().as_ref(), start, end)
        }
        DataType::Struct(_) => array
            .as_struct()
            .columns()
            .iter()
            .map(|column| value_bytes(column.as_ref(), row))
            .sum(),
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary();
            let key = ScalarValue::try_from_array(dictionary.keys(), row)
                .ok()
                .and_then(|k| k.cast_to(&DataType::Int64).ok());
            match key {
                Some(ScalarValue::Int64(Some(key))) => {
                    value_bytes(dictionary.values().as_ref(), key as usize)
                }
                _ => 0,
            }
        }
        other => other.primitive_width().map_or_else(
            || (array.get_array_memory_size() / array.len().max(1)) as u64,
            |width| width as u64,
        ),
    }
}

fn children_bytes(values: &dyn Array, start: usize, end: usize) -> u64 {
    match values.data_type().primitive_width() {
        // A run of fixed-width values costs its width each.
        Some(width) => ((end - start) * width) as u64,
        None => (start..end).map(|i| value_bytes(values, i)).sum(),
    }
}

/// The elements of the list at `row` (0 when it is not a list or is null).
pub(crate) fn list_len(array: &dyn Array, row: usize) -> u64 {
    if row >= array.len() || array.is_null(row) {
        return 0;
    }
    match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().value_length(row) as u64,
        DataType::LargeList(_) => array.as_list::<i64>().value_length(row) as u64,
        DataType::FixedSizeList(_, n) => *n as u64,
        DataType::Map(_, _) => {
            let offsets = array.as_map().value_offsets();
            (offsets[row + 1] - offsets[row]) as u64
        }
        _ => 0,
    }
}

/// The bytes one value of `data_type` takes when its width is fixed (a fixed-size list or
/// binary's whole width included), `None` when it varies.
pub(crate) fn fixed_width(data_type: &DataType) -> Option<u64> {
    match data_type {
        DataType::FixedSizeList(field, n) => {
            fixed_width(field.data_type()).map(|w| w.saturating_mul(*n as u64))
        }
        DataType::FixedSizeBinary(n) => Some(*n as u64),
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| fixed_width(f.data_type()))
            .try_fold(0u64, |sum, width| Some(sum.saturating_add(width?))),
        DataType::Boolean => Some(1),
        DataType::Null => Some(0),
        other => other.primitive_width().map(|w| w as u64),
    }
}

/// Integer rows of an `Int64` array, for tests.
#[cfg(test)]
pub(super) fn ints(values: &[i64]) -> ArrayRef {
    std::sync::Arc::new(datafusion::arrow::array::PrimitiveArray::<Int64Type>::from(
        values.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ListArray, StringArray, StringViewArray};
    use std::sync::Arc;

    #[test]
    fn value_sizes_are_read_row_by_row() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("abc"), None, Some("")]));
        let views: ArrayRef = Arc::new(StringViewArray::from(vec![
            "short",
            "a string longer than twelve bytes",
        ]));
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2), Some(3)]),
            None,
        ]));
        let cases: [(&ArrayRef, usize, u64, u64, &str); 6] = [
            (&strings, 0, 3, 0, "a string's bytes"),
            (&strings, 1, 0, 0, "null is nothing"),
            (&strings, 2, 0, 0, "an empty string"),
            (&views, 1, 33, 0, "a view's string"),
            (&lists, 0, 24, 3, "three 8-byte elements"),
            (&lists, 1, 0, 0, "a null list"),
        ];
        for (array, row, bytes, elements, why) in cases {
            assert_eq!(value_bytes(array.as_ref(), row), bytes, "{why}");
            assert_eq!(list_len(array.as_ref(), row), elements, "{why}");
        }
    }

    #[test]
    fn a_scalar_stands_for_every_row() {
        let arg = Arg::new(&ColumnarValue::Scalar(ScalarValue::from("abcd"))).unwrap();
        assert!(arg.is_scalar());
        assert_eq!((arg.bytes(0), arg.bytes(99)), (4, 4));
        assert_eq!(arg.total_bytes(1_000), 4_000);
        let ints = Arg::new(&ColumnarValue::Array(ints(&[5, -1]))).unwrap();
        assert_eq!((ints.int(0), ints.int(1)), (Some(5), Some(-1)));
    }

    #[test]
    fn fixed_widths_multiply_out() {
        let field = Arc::new(datafusion::arrow::datatypes::Field::new(
            "item",
            DataType::Int32,
            true,
        ));
        let cases = [
            (DataType::Int64, Some(8), "a primitive"),
            (
                DataType::FixedSizeList(field, 1 << 30),
                Some(4 << 30),
                "a fixed-size list of 2^30 ints: 4 GiB a value",
            ),
            (DataType::FixedSizeBinary(16), Some(16), "fixed-size binary"),
            (DataType::Utf8, None, "a string varies"),
        ];
        for (data_type, want, why) in cases {
            assert_eq!(fixed_width(&data_type), want, "{why}");
        }
    }
}
