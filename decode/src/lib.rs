//! Turns OTLP requests into the one decoded form every consumer reads: a [`SpanBatch`] (Arrow)
//! and the [`SpanFacts`] the topology needs, and OTLP logs into health events.
//!
//! Decoding happens once, in the receiver that got the request; the queue, the store and the
//! query layer only ever see Arrow. Trace requests are decoded two ways that give the same
//! result: [`decode_traces_wire`] reads protobuf bytes directly, borrowing from them (the
//! collector's path for OTLP/gRPC and OTLP/HTTP protobuf), and [`decode_traces`] reads a prost
//! message (OTLP/JSON arrives that way). [`oracle`] compares the two; the fuzz targets in
//! `decode/fuzz` run it on any input.
//!
//! A crate of its own, without DataFusion, so that fuzzing it builds quickly.

pub mod builders;
mod columns;
pub mod facts;
pub mod health;
pub mod options;
pub mod oracle;
pub mod otlp;
pub mod schema;
pub mod split;
pub mod traces_wire;
mod view;
mod wire;

use arrow_array::RecordBatch;

pub use facts::{PeerAttributes, SpanFacts, SpanKind, SpanRef, authority_of};
pub use options::DecodeOptions;
pub use otlp::{
    DecodedTraces, Rejections, decode_spans_only, decode_traces, decode_traces_with, span_count,
};
pub use traces_wire::{
    DecodeError, decode_spans_only_wire, decode_traces_wire, decode_traces_wire_with,
};
pub use wire::WireError;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary: names
/// that become map keys and metric labels are bounded.
pub fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `name` may name a service or an instance: it has no control character (C0, DEL or
/// C1). No identifier needs one, and a line feed in a name would start a line of its own in a
/// log or an exposition format downstream. Spans (their resource's `service.name` and
/// `service.instance.id`) and heartbeats are held to it alike.
///
/// ```
/// assert!(wayfinder_decode::is_clean_name("checkout-3 é"));
/// assert!(!wayfinder_decode::is_clean_name("inj\"svc\n"));
/// ```
pub fn is_clean_name(name: &str) -> bool {
    !name.chars().any(char::is_control)
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
