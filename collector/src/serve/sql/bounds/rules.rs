//! How each scalar function's call is estimated before it runs ([`Rule`]), from its
//! arguments, row by row: `repeat(s, n)` makes Σ len(s)·n bytes; `levenshtein(a, b)` does
//! Σ len(a)·len(b) steps. The rules take DataFusion's functions as they are in 55 (the kinds of
//! their arguments and answers); [`rule`] names each function, and a test checks that no
//! registered function is left to the default by oversight.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ScalarFunctionArgs;

use super::refused;
use super::sizes::{Arg, fixed_width};

/// How a function's call is estimated before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rule {
    /// Its answer is fixed in width, or no larger than its arguments (a part of them, a case
    /// change, a lookup): only the answer is counted, after the call.
    Answer,
    /// Its answer may be as large as its arguments together, a literal counting once a row
    /// (`concat(col, 'a long literal')` copies the literal into every row), times the factor.
    Arguments(u8),
    /// `concat_ws(sep, …)`: the arguments, and the separator once between each two.
    Separated,
    /// `repeat(s, n)`: Σ len(s)·n.
    Repeat,
    /// `lpad`/`rpad(s, n[, fill])`: Σ n characters of up to 4 bytes.
    Pad,
    /// `range`/`generate_series(start, stop[, step])` as a function: Σ elements·8.
    Series,
    /// `array_repeat(x, n)`: Σ size(x)·n.
    ArrayRepeat,
    /// `array_resize(a, n[, fill])`: Σ n·the width of an element.
    ArrayResize,
    /// `array_replace*(a, from, to[, n])`: Σ elements·size(to), besides the list.
    ArrayReplace,
    /// `array_to_string(a, sep[, null])`: the list, and the separator and the null text once an
    /// element.
    ArrayToString,
    /// `replace(s, from, to)`: Σ len(s)/len(from)·len(to) when `to` is the longer.
    Replace,
    /// `regexp_replace(s, pattern, replacement[, flags])`: a literal pattern; Σ
    /// (len(s)+1)·len(replacement) (a global replacement can insert at every position).
    RegexpReplace,
    /// The other `regexp_*` functions: the pattern (argument 1) and flags must be literals
    /// (each distinct pattern of a column compiles a regular expression of up to 10 MiB, and
    /// a batch keeps them all); the answer is counted after.
    Regexp,
    /// `levenshtein(a, b)`: Σ len(a)·len(b) steps.
    Levenshtein,
    /// `strpos(haystack, needle)`: Σ len(h)·len(n) steps unless the needle is a literal (which
    /// is searched for in linear time).
    Strpos,
    /// `btrim`/`ltrim`/`rtrim(s, characters)`: Σ len(s)·len(characters) steps.
    Trim,
    /// `array_has_all`/`array_has_any(a, b)`: Σ |a|·|b| steps.
    ArrayPairs,
}

/// The rule of the function named `name`; `None` for a function this table does not name,
/// which [`Bounded::wrap`] gives [`Rule::Arguments`]: its answer is estimated as large as its
/// arguments, and counted after.
pub(crate) fn rule(name: &str) -> Option<Rule> {
    Some(match name {
        "repeat" => Rule::Repeat,
        "lpad" | "rpad" => Rule::Pad,
        "range" | "generate_series" => Rule::Series,
        "array_repeat" => Rule::ArrayRepeat,
        "array_resize" => Rule::ArrayResize,
        "array_replace" | "array_replace_n" | "array_replace_all" => Rule::ArrayReplace,
        "array_to_string" => Rule::ArrayToString,
        "replace" => Rule::Replace,
        "regexp_replace" => Rule::RegexpReplace,
        "regexp_like" | "regexp_match" | "regexp_count" | "regexp_instr" => Rule::Regexp,
        "levenshtein" => Rule::Levenshtein,
        "strpos" => Rule::Strpos,
        "btrim" | "ltrim" | "rtrim" => Rule::Trim,
        "array_has_all" | "array_has_any" => Rule::ArrayPairs,
        "concat_ws" => Rule::Separated,
        // One element per character, each with its offset and validity: up to 17 bytes for one.
        "string_to_array" => Rule::Arguments(17),
        // Hex doubles its input, base64 grows it by a third.
        "encode" => Rule::Arguments(2),
        // One list per argument, padded to the longest.
        "arrays_zip" => Rule::Arguments(8),
        // Combinations of their arguments (`||` as a function: `strings`).
        "concat" | "||" | "make_array" | "array_append" | "array_prepend" | "array_concat"
        | "array_union" | "array_intersect" | "array_except" | "map" | "named_struct"
        | "struct" | "overlay" | "to_char" | "arrow_cast" | "arrow_try_cast" | "cast_to_type"
        | "try_cast_to_type" | "with_metadata" | "union_extract" | "flatten" => Rule::Arguments(1),
        _ if answers_at_most_their_arguments(name) => Rule::Answer,
        _ => return None,
    })
}

/// Functions whose answer is a part of their arguments, a fixed-width figure or a case change:
/// counted after the call.
fn answers_at_most_their_arguments(name: &str) -> bool {
    const NAMES: &[&str] = &[
        // Core: choices among the arguments and lookups.
        "nullif",
        "nvl",
        "nvl2",
        "coalesce",
        "greatest",
        "least",
        "get_field",
        "arrow_typeof",
        "arrow_metadata",
        "arrow_field",
        "version",
        "union_tag",
        "input_file_name",
        "file_row_index",
        // Strings that shrink, keep or case-change their input, and figures about them.
        "ascii",
        "bit_length",
        "character_length",
        "char_length",
        "length",
        "octet_length",
        "chr",
        "ends_with",
        "starts_with",
        "contains",
        "find_in_set",
        "initcap",
        "left",
        "right",
        "lower",
        "upper",
        "reverse",
        "split_part",
        "substr",
        "substr_index",
        "to_hex",
        "translate",
        "uuid",
        "decode",
        // Date and time: fixed-width answers.
        "current_date",
        "current_time",
        "date_bin",
        "date_part",
        "date_trunc",
        "from_unixtime",
        "make_date",
        "make_time",
        "now",
        "to_date",
        "to_local_time",
        "to_time",
        "to_timestamp",
        "to_timestamp_seconds",
        "to_timestamp_millis",
        "to_timestamp_micros",
        "to_timestamp_nanos",
        "to_unixtime",
        // Math: fixed-width answers.
        "abs",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "cos",
        "cosh",
        "cot",
        "degrees",
        "exp",
        "factorial",
        "floor",
        "gcd",
        "isnan",
        "iszero",
        "lcm",
        "ln",
        "log",
        "log2",
        "log10",
        "nanvl",
        "pi",
        "power",
        "radians",
        "random",
        "signum",
        "sin",
        "sinh",
        "sqrt",
        "tan",
        "tanh",
        "round",
        "trunc",
        // Lists and maps: parts of a list, figures about it, or the list rearranged.
        "array_compact",
        "array_dims",
        "cardinality",
        "array_ndims",
        "array_element",
        "array_pop_back",
        "array_pop_front",
        "array_slice",
        "array_any_value",
        "array_has",
        "empty",
        "array_length",
        "array_max",
        "array_min",
        "array_sort",
        "array_reverse",
        "array_distinct",
        "array_position",
        "array_positions",
        "array_remove",
        "array_remove_n",
        "array_remove_all",
        "array_normalize",
        "array_add",
        "array_avg",
        "array_product",
        "array_scale",
        "array_subtract",
        "array_sum",
        "cosine_distance",
        "inner_product",
        "array_distance",
        "map_entries",
        "map_extract",
        "map_keys",
        "map_values",
    ];
    NAMES.contains(&name)
}

impl Rule {
    /// What a call of the function `name` will make (bytes) and do (steps), or why it may not
    /// run at all.
    pub(crate) fn estimate(self, name: &str, args: &ScalarFunctionArgs) -> Result<(u64, u64)> {
        let rows = args.number_rows;
        let arg = |i: usize| args.args.get(i).map(Arg::new).transpose();
        let per_row = |f: &dyn Fn(usize) -> u64| (0..rows).map(f).fold(0u64, u64::saturating_add);
        let all_arguments = || -> Result<u64> {
            args.args.iter().try_fold(0u64, |sum, value| {
                Ok(sum.saturating_add(Arg::new(value)?.total_bytes(rows)))
            })
        };
        let literal = |i: usize, what: &str| -> Result<()> {
            match arg(i)? {
                Some(a) if !a.is_scalar() => Err(refused(format!(
                    "{}'s {what} must be a literal: a pattern from a column compiles a regular \
                     expression for each distinct value",
                    name
                ))),
                _ => Ok(()),
            }
        };
        let (bytes, work) = match self {
            Rule::Answer => (0, 0),
            Rule::Arguments(factor) => (all_arguments()?.saturating_mul(u64::from(factor)), 0),
            Rule::Separated => {
                let sep = arg(0)?;
                let joins = args.args.len().saturating_sub(2) as u64;
                let seps = sep.map_or(0, |s| per_row(&|i| s.bytes(i)));
                (
                    all_arguments()?.saturating_add(seps.saturating_mul(joins)),
                    0,
                )
            }
            Rule::Repeat => {
                let (Some(s), Some(n)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| {
                    s.bytes(i)
                        .saturating_mul(n.int(i).unwrap_or(0).max(0) as u64)
                });
                (made, 0)
            }
            Rule::Pad => {
                let Some(n) = arg(1)? else {
                    return Ok((0, 0));
                };
                (
                    per_row(&|i| 4u64.saturating_mul(n.int(i).unwrap_or(0).max(0) as u64)),
                    0,
                )
            }
            Rule::Series => (series_bytes(args)?, 0),
            Rule::ArrayRepeat => {
                let (Some(x), Some(n)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| {
                    x.bytes(i)
                        .max(8)
                        .saturating_mul(n.int(i).unwrap_or(0).max(0) as u64)
                });
                (made, 0)
            }
            Rule::ArrayResize => {
                let (Some(a), Some(n)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| {
                    a.element_bytes(i)
                        .max(8)
                        .saturating_mul(n.int(i).unwrap_or(0).max(0) as u64)
                });
                (made, 0)
            }
            Rule::ArrayReplace => {
                let (Some(a), Some(to)) = (arg(0)?, arg(2)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| {
                    a.bytes(i)
                        .saturating_add(a.elements(i).saturating_mul(to.bytes(i)))
                });
                (made, 0)
            }
            Rule::ArrayToString => {
                let Some(a) = arg(0)? else {
                    return Ok((0, 0));
                };
                let sep = arg(1)?;
                let null = arg(2)?;
                let made = per_row(&|i| {
                    let each = sep.as_ref().map_or(0, |s| s.bytes(i))
                        + null.as_ref().map_or(0, |s| s.bytes(i));
                    a.bytes(i)
                        .saturating_add(a.elements(i).saturating_mul(each))
                });
                (made, 0)
            }
            Rule::Replace => {
                let (Some(s), Some(from), Some(to)) = (arg(0)?, arg(1)?, arg(2)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| {
                    let (len, from, to) = (s.bytes(i), from.bytes(i), to.bytes(i));
                    if from == 0 || to <= from {
                        len
                    } else {
                        (len / from).saturating_mul(to).saturating_add(len)
                    }
                });
                (made, 0)
            }
            Rule::RegexpReplace => {
                literal(1, "pattern")?;
                literal(3, "flags")?;
                let (Some(s), Some(r)) = (arg(0)?, arg(2)?) else {
                    return Ok((0, 0));
                };
                let made = per_row(&|i| (s.bytes(i) + 1).saturating_mul(r.bytes(i).max(1)));
                (made, 0)
            }
            Rule::Regexp => {
                literal(1, "pattern")?;
                for flags in 2..args.args.len() {
                    // regexp_count's and regexp_instr's start and flags; both literal.
                    if args.args[flags].data_type().is_string() {
                        literal(flags, "flags")?;
                    }
                }
                (0, 0)
            }
            Rule::Levenshtein => {
                let (Some(a), Some(b)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                (0, per_row(&|i| a.bytes(i).saturating_mul(b.bytes(i))))
            }
            Rule::Strpos => {
                let (Some(h), Some(n)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                if n.is_scalar() {
                    (0, 0)
                } else {
                    (0, per_row(&|i| h.bytes(i).saturating_mul(n.bytes(i))))
                }
            }
            Rule::Trim => {
                let (Some(s), Some(chars)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                (0, per_row(&|i| s.bytes(i).saturating_mul(chars.bytes(i))))
            }
            Rule::ArrayPairs => {
                let (Some(a), Some(b)) = (arg(0)?, arg(1)?) else {
                    return Ok((0, 0));
                };
                (0, per_row(&|i| a.elements(i).saturating_mul(b.elements(i))))
            }
        };
        // A fixed-width answer costs its width in every row, whatever the rule says.
        let fixed = fixed_width(args.return_field.data_type())
            .map_or(0, |width| width.saturating_mul(rows as u64));
        Ok((bytes.max(fixed), work))
    }
}

/// What `range`/`generate_series` make: 8 bytes an element, the elements counted from the
/// arguments as the function counts them (a time step as its shortest: a month as 28 days).
fn series_bytes(args: &ScalarFunctionArgs) -> Result<u64> {
    let rows = args.number_rows;
    let values: Vec<Arg> = args.args.iter().map(Arg::new).collect::<Result<_>>()?;
    let mut total = 0u64;
    for i in 0..rows {
        let scalar = |a: &Arg| a.scalar_at(i);
        let (start, stop, step) = match values.as_slice() {
            [stop] => (Some(ScalarValue::Int64(Some(0))), scalar(stop), None),
            [start, stop] => (scalar(start), scalar(stop), None),
            [start, stop, step] => (scalar(start), scalar(stop), scalar(step)),
            _ => (None, None, None),
        };
        let (Some(start), Some(stop)) = (start, stop) else {
            continue;
        };
        let span = nanos_or_int(&stop)
            .zip(nanos_or_int(&start))
            .map_or(0, |(b, a)| b.saturating_sub(a).unsigned_abs());
        let step = match step {
            Some(ScalarValue::IntervalMonthDayNano(Some(v))) => {
                (i128::from(v.months) * 28 * 86_400_000_000_000
                    + i128::from(v.days) * 86_400_000_000_000
                    + i128::from(v.nanoseconds))
                .unsigned_abs()
            }
            Some(ScalarValue::IntervalYearMonth(Some(months))) => {
                (i128::from(months) * 28 * 86_400_000_000_000).unsigned_abs()
            }
            Some(ScalarValue::IntervalDayTime(Some(v))) => {
                (i128::from(v.days) * 86_400_000_000_000 + i128::from(v.milliseconds) * 1_000_000)
                    .unsigned_abs()
            }
            Some(other) => other
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|s| match s {
                    ScalarValue::Int64(Some(n)) => Some(n.unsigned_abs() as u128),
                    _ => None,
                })
                .unwrap_or(1),
            // Dates step a day by default, numbers one.
            None if matches!(start, ScalarValue::Date32(_) | ScalarValue::Date64(_)) => {
                86_400_000_000_000
            }
            None => 1,
        };
        let elements = span / step.max(1) + 1;
        total = total.saturating_add(u64::try_from(elements.saturating_mul(8)).unwrap_or(u64::MAX));
    }
    Ok(total)
}

/// An integer, a date or a timestamp as one number (dates and times in nanoseconds).
fn nanos_or_int(value: &ScalarValue) -> Option<i128> {
    match value {
        ScalarValue::Date32(Some(days)) => Some(i128::from(*days) * 86_400_000_000_000),
        ScalarValue::Date64(Some(ms)) => Some(i128::from(*ms) * 1_000_000),
        ScalarValue::TimestampSecond(Some(s), _) => Some(i128::from(*s) * 1_000_000_000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(i128::from(*ms) * 1_000_000),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(i128::from(*us) * 1_000),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(i128::from(*ns)),
        other => match other.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(n)) => Some(i128::from(n)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateDefaults;

    #[test]
    fn every_function_of_the_session_has_a_rule() {
        // A DataFusion upgrade that brings a function fails here until the function is
        // classified: an amplifier left to the default would be bounded only after the fact.
        let unnamed: Vec<String> = SessionStateDefaults::default_scalar_functions()
            .iter()
            .map(|udf| udf.name().to_owned())
            .filter(|name| rule(name).is_none())
            .collect();
        assert!(unnamed.is_empty(), "functions without a rule: {unnamed:?}");
    }
}
