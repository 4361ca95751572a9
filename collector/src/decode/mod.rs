//! Turns OTLP requests into the one decoded form every consumer reads: a [`SpanBatch`].
//!
//! Decoding happens once, in the receiver that got the request; the queue, the store and the
//! query layer only ever see Arrow.

pub(crate) mod builders;
pub mod facts;
pub mod health;
pub mod otlp;
pub mod schema;

use datafusion::arrow::record_batch::RecordBatch;

pub use facts::{PeerAttributes, SpanFacts, SpanKind, SpanRef};
pub use otlp::{DecodedTraces, Rejections, decode_spans_only, decode_traces, span_count};

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary: names
/// that become map keys and metric labels are bounded.
pub(crate) fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Spans laid out as an Arrow [`RecordBatch`] with the [`schema::span_schema`] schema.
#[derive(Debug, Clone)]
pub struct SpanBatch {
    batch: RecordBatch,
    bytes: usize,
}

impl SpanBatch {
    /// Wraps a batch that has the span schema.
    pub fn new(batch: RecordBatch) -> Self {
        let bytes = batch.get_array_memory_size();
        Self { batch, bytes }
    }

    /// The Arrow batch.
    pub fn record_batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Unwraps the Arrow batch.
    pub fn into_record_batch(self) -> RecordBatch {
        self.batch
    }

    /// How many spans it holds.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The memory its arrays hold, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
