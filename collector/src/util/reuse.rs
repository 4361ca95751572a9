//! Answers handed to several readers: what readers in a loop (a dashboard per user, a
//! scraper, a script) ask for again within a short period is made once and shared.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Values by key, each handed out again for `period` after it was made. One caller makes a
/// value at a time and the others wait for it, so that however many readers ask, making costs
/// at most one thread and one value per key per period.
///
/// (Its example runs as the unit test `examples::example_reuse`.)
#[derive(Debug)]
pub(crate) struct Reuse<K, V> {
    period: Duration,
    made: Mutex<Vec<(K, Instant, V)>>,
}

impl<K: PartialEq + Clone, V: Clone> Reuse<K, V> {
    /// Values are handed out again for `period`; zero makes one for every caller.
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            made: Mutex::new(Vec::new()),
        }
    }

    /// The value made for `key` less than the period ago, or a new one from `make`.
    pub(crate) fn get_or_make(&self, key: &K, make: impl FnOnce() -> V) -> V {
        let mut made = self.made.lock();
        let period = self.period;
        if let Some((_, _, value)) = made
            .iter()
            .find(|(k, at, _)| k == key && at.elapsed() < period)
        {
            return value.clone();
        }
        let value = make();
        made.retain(|(k, at, _)| k != key && at.elapsed() < period);
        if !period.is_zero() {
            made.push((key.clone(), Instant::now(), value.clone()));
        }
        value
    }
}

/// A response body handed to several readers, with its gzip form made once, by the first
/// reader that accepts gzip, and shared too: Prometheus, browsers and Grafana all ask for gzip,
/// and a megabyte of JSON or metrics text shrinks about twentyfold, so that readers in a loop
/// move a twentieth of the bytes for one compression a period.
///
/// (Its example runs as the unit test `examples::example_shared_body`.)
#[derive(Debug, Clone)]
pub struct SharedBody {
    plain: bytes::Bytes,
    gzip: std::sync::Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl SharedBody {
    /// A body of `plain` bytes.
    pub fn new(plain: bytes::Bytes) -> Self {
        Self {
            plain,
            gzip: Default::default(),
        }
    }

    /// The body as made.
    pub fn plain(&self) -> &bytes::Bytes {
        &self.plain
    }

    /// The body gzipped at the fastest level, made on the first call (CPU work: call it off the
    /// runtime's workers).
    pub fn gzip(&self) -> bytes::Bytes {
        self.gzip
            .get_or_init(|| {
                use std::io::Write as _;
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.plain.len() / 8),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(&self.plain);
                encoder.finish().unwrap_or_default().into()
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_period_makes_a_value_for_every_caller_and_keys_are_apart() {
        let fresh = Reuse::new(Duration::ZERO);
        assert_eq!(fresh.get_or_make(&1, || "a"), "a");
        assert_eq!(fresh.get_or_make(&1, || "b"), "b", "nothing kept");
        let kept = Reuse::new(Duration::from_secs(60));
        assert_eq!(kept.get_or_make(&1, || "a"), "a");
        assert_eq!(
            kept.get_or_make(&2, || "b"),
            "b",
            "another key is its own value"
        );
        assert_eq!(kept.get_or_make(&1, || "c"), "a");
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_reuse() {
        use crate::util::reuse::Reuse;
        use std::time::Duration;

        let reuse = Reuse::new(Duration::from_secs(60));
        let mut made = 0;
        let first = reuse.get_or_make(&"topology", || {
            made += 1;
            made
        });
        let again = reuse.get_or_make(&"topology", || {
            made += 1;
            made
        });
        assert_eq!((first, again), (1, 1), "made once within the period");
    }

    #[test]
    fn example_shared_body() {
        use crate::util::reuse::SharedBody;

        let body = SharedBody::new("a line\n".repeat(1000).into());
        let gzip = body.gzip();
        assert!(gzip.len() < body.plain().len() / 10, "{} bytes", gzip.len());
        assert_eq!(body.gzip().as_ptr(), gzip.as_ptr(), "compressed once");
    }
}
