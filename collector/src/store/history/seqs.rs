//! The write-ahead log records a sealed file holds, written into its metadata as ranges
//! (`1-5,7,9-12`): at start, a record whose spans are already in a file is not stored again.

/// Sorted, distinct sequence numbers as ranges.
pub(crate) fn encode(seqs: &[u64]) -> String {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
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
    fn foreign_text_is_refused() {
        for text in ["x", "5-3", "1,,2", "1-"] {
            assert_eq!(decode(text), None, "{text}");
        }
    }
}
