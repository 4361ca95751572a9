//! The write-ahead log records a sealed file holds, written into its metadata as ranges
//! (`1-5,7,9-12`): at start, a record whose spans are already in a file is not stored again.

/// Sorted, distinct sequence numbers as ranges.
pub(crate) fn encode(seqs: &[u64]) -> String {
    let ranges: Vec<(u64, u64)> = seqs.iter().map(|&s| (s, s)).collect();
    encode_ranges(&ranges)
}

/// Inclusive ranges, in any order and overlapping or not, as the sorted, merged ranges they
/// cover.
pub(crate) fn encode_ranges(ranges: &[(u64, u64)]) -> String {
    let mut out = String::new();
    for (start, end) in merge(ranges.to_vec()) {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

/// Inclusive ranges sorted and merged where they overlap or touch.
pub(crate) fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(a, b)| a <= b);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// The ranges [`encode`] wrote, as `(first, last)` pairs; `None` when the text is not that.
pub(crate) fn decode(text: &str) -> Option<Vec<(u64, u64)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some((a, b))
            }
            None => part.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        // (seqs, text, why)
        let cases: [(&[u64], &str, &str); 4] = [
            (&[], "", "no records"),
            (&[7], "7", "one record"),
            (
                &[3, 1, 2, 5, 9, 8, 2],
                "1-3,5,8-9",
                "unsorted, repeated, with gaps",
            ),
            (
                &[u64::MAX - 1, u64::MAX],
                "18446744073709551614-18446744073709551615",
                "the top of the range",
            ),
        ];
        for (seqs, text, why) in cases {
            assert_eq!(encode(seqs), text, "{why}");
            let mut expanded: Vec<u64> = decode(text)
                .unwrap()
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .collect();
            expanded.sort_unstable();
            let mut want = seqs.to_vec();
            want.sort_unstable();
            want.dedup();
            assert_eq!(expanded, want, "{why}");
        }
    }

    #[test]
    fn ranges_are_merged_where_they_overlap_or_touch() {
        // (ranges, text, why)
        type Case = (&'static [(u64, u64)], &'static str, &'static str);
        let cases: [Case; 4] = [
            (&[(3, 5), (0, 2)], "0-5", "touching, out of order"),
            (&[(0, 9), (4, 6)], "0-9", "one inside another"),
            (&[(7, 9), (1, 1), (8, 12)], "1,7-12", "overlapping"),
            (&[(5, 4)], "", "an empty range"),
        ];
        for (ranges, text, why) in cases {
            assert_eq!(encode_ranges(ranges), text, "{why}");
        }
    }

    #[test]
    fn foreign_text_is_refused() {
        for text in ["x", "5-3", "1,,2", "1-"] {
            assert_eq!(decode(text), None, "{text}");
        }
    }
}
