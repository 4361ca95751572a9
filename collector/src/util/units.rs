//! Durations and sizes as people write them (`30s`, `256MiB`), for the command line, the
//! configuration file and the query API's parameters alike.

use std::time::Duration;

/// Parses a duration such as `30s`, `1h` or `250ms`.
///
/// ```
/// use std::time::Duration;
/// use wayfinder_collector::config::parse_duration;
///
/// assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("soon").unwrap_err().contains("30s"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m, 1h"))
}

/// Parses a size such as `4194304`, `256MiB` or `1GB`.
///
/// ```
/// use wayfinder_collector::config::parse_size;
///
/// assert_eq!(parse_size("256MiB"), Ok(256 << 20));
/// assert_eq!(parse_size("4194304"), Ok(4_194_304));
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bytes: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. 4194304, 256MiB, 1GiB"))?;
    usize::try_from(bytes.as_u64()).map_err(|_| format!("`{text}` is too large"))
}
