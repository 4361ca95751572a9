//! Which trace ids a sealed segment holds, as a Bloom filter: a lookup by trace id (SQL's
//! `trace_id = '…'`, `/api/v1/traces/{id}`, Jaeger's trace view) skips the segments that
//! cannot hold it instead of filtering every row of the store.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::record_batch::RecordBatch;
use fastbloom::BloomFilter;

use super::view::TraceId;
use crate::decode::schema::stored;

/// The false-positive rate: one segment in a hundred without the trace is read anyway. At
/// about ten bits per distinct trace, a segment of 64 Ki spans costs at most 80 KiB.
const FALSE_POSITIVES: f64 = 0.01;

/// The trace ids of one stored batch.
#[derive(Debug)]
pub struct TraceFilter(BloomFilter);

impl TraceFilter {
    /// The filter of a stored batch (`stored_schema`'s fixed-size binary `trace_id`); `None`
    /// when the column is not that (the batch is then always read).
    pub fn of(batch: &RecordBatch) -> Option<Self> {
        let ids = batch
            .column(stored::TRACE_ID)
            .as_fixed_size_binary_opt()
            .filter(|ids| ids.value_length() == 16)?;
        let mut distinct: Vec<&[u8]> = (0..ids.len()).map(|i| ids.value(i)).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let filter = BloomFilter::with_false_pos(FALSE_POSITIVES)
            .seed(&0x7761_7966_696e_6465)
            .items(distinct.iter());
        Some(Self(filter))
    }

    /// Whether the batch may hold any of `ids` (false: it holds none).
    pub fn may_hold_any(&self, ids: &[TraceId]) -> bool {
        ids.iter().any(|id| self.0.contains(&id.as_slice()))
    }

    /// Memory the filter takes.
    pub fn bytes(&self) -> usize {
        self.0.num_bits() / 8
    }
}

/// A batch of the store with its trace filter when it has one (sealed, compacted segments).
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// The spans, in the stored layout.
    pub batch: RecordBatch,
    /// Which traces it holds.
    pub traces: Option<std::sync::Arc<TraceFilter>>,
}

impl StoredBatch {
    /// Whether a reader that wants only the traces `ids` (all when `None`) must read it.
    pub fn wanted(&self, ids: Option<&[TraceId]>) -> bool {
        match (ids, &self.traces) {
            (Some(ids), Some(filter)) => filter.may_hold_any(ids),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_traces;
    use crate::testing::{span, trace_request};

    #[test]
    fn a_batch_holds_its_traces_and_rules_out_others() {
        let spans = (1..=200u8)
            .map(|i| span([i; 16], u64::from(i), "op", 1, 2))
            .collect();
        let batch = decode_traces(&trace_request(None, spans))
            .unwrap()
            .batch
            .unwrap()
            .into_record_batch();
        let filter = TraceFilter::of(&batch).expect("a stored batch has fixed-size ids");
        for i in 1..=200u8 {
            assert!(filter.may_hold_any(&[[i; 16]]), "trace {i} is in the batch");
        }
        let absent: Vec<TraceId> = (0..1000u32)
            .map(|i| {
                let mut id = [0xee; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        let false_positives = absent
            .iter()
            .filter(|id| filter.may_hold_any(&[**id]))
            .count();
        assert!(
            false_positives < 50,
            "about 1% of absent traces pass, not {false_positives} of 1000"
        );
        assert!(
            filter.bytes() < 1024,
            "ten bits or so a trace: {}",
            filter.bytes()
        );
    }
}
