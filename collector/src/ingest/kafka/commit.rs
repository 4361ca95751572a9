//! Fleet mode with a history: the group's offsets are committed only up to what is sealed to
//! the bucket, as Tempo's block-builder commits only what is flushed. A collector that takes a
//! partition reads it from the committed offset, skipping the messages a seal holds already
//! (a crash between a seal and its commit); a collector that lets a partition go seals what
//! it holds of it and commits before the group moves it (the revoke waits for that).
//!
//! The consumer says which offsets it hands to the pipeline ([`Offsets::feeding`],
//! [`Offsets::fed`]) and which it skips; the store says which it sealed ([`Offsets::sealed`]).
//! A partition's commit point is the first offset handed over and not sealed yet, or past the
//! last one read when every one is sealed or held no span.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::ingest::replay::SealedRecords;
use crate::store::SpanStore;
use crate::store::history::{History, HistoryError, partition_seq};

/// The longest a revoke waits for what was handed to the pipeline of a partition to be sealed.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// The longest a collector that stops waits for the group to take its partitions.
const LEAVE_WAIT: Duration = Duration::from_secs(2);
/// The longest a collector that stops waits for its last commit.
const CLOSE_COMMIT_WAIT: Duration = Duration::from_secs(2);

/// The consumer of the spans topic, with the fleet's rebalance callbacks.
pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// The consumer's callbacks: with a history, a revoke seals and commits first.
#[derive(Debug, Default)]
pub(crate) struct GroupContext {
    pub(crate) offsets: Option<Arc<Offsets>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(offsets), Rebalance::Revoke(list)) = (&self.offsets, rebalance) {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            offsets.release(consumer, &partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(offsets), Rebalance::Assign(list)) = (&self.offsets, rebalance) {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            offsets.assigned(&partitions);
        }
    }
}

/// What the consumer handed over, what was sealed, and what is committed, per owned partition.
pub(crate) struct Offsets {
    topic: String,
    history: Arc<History>,
    store: Arc<dyn SpanStore>,
    /// The consumer, once made, until [`Offsets::close`] (it holds these offsets in its
    /// context: the cycle is broken at the close).
    consumer: Mutex<Option<Arc<GroupConsumer>>>,
    /// The partitions owned now; a revoke removes one.
    state: Mutex<HashMap<i32, Partition>>,
    /// The store has sealed everything for the last time: a revoke no longer waits for it.
    closing: AtomicBool,
    /// Records of partitions let go before they were sealed (a revoke past its wait): last
    /// offset → first, for the seal that still comes, until the partition is taken again.
    released: Mutex<HashMap<i32, BTreeMap<i64, i64>>>,
}

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offsets")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Partition {
    /// Handed to the pipeline with spans, not sealed yet: last offset → first offset.
    pending: BTreeMap<i64, i64>,
    /// Past the last offset read.
    next: Option<i64>,
    /// The offset committed last.
    committed: i64,
    /// The offsets the bucket's seals hold from where this collector began reading, once read.
    sealed: Option<SealedRecords>,
}

impl Partition {
    /// Where a consumer that takes the partition must begin.
    fn position(&self) -> Option<i64> {
        self.pending
            .values()
            .next()
            .copied()
            .or(self.next)
            .filter(|at| *at > self.committed)
    }
}

impl Offsets {
    pub(crate) fn new(topic: String, history: Arc<History>, store: Arc<dyn SpanStore>) -> Self {
        Self {
            topic,
            history,
            store,
            consumer: Mutex::new(None),
            state: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            released: Mutex::new(HashMap::new()),
        }
    }

    /// The consumer these offsets commit through.
    pub(crate) fn attach(&self, consumer: &Arc<GroupConsumer>) {
        *self.consumer.lock() = Some(consumer.clone());
    }

    /// The offsets each record (numbered by its last message) stands for, as inclusive
    /// [`partition_seq`] ranges: what a seal writes into its file.
    pub(crate) fn ranges(&self, seqs: &[u64]) -> Vec<(u64, u64)> {
        let state = self.state.lock();
        let released = self.released.lock();
        seqs.iter()
            .map(|&seq| {
                let (partition, last) = crate::store::history::split_seq(seq);
                let partition_key = i32::from(partition);
                let first = state
                    .get(&partition_key)
                    .map(|p| &p.pending)
                    .or_else(|| released.get(&partition_key))
                    .and_then(|pending| pending.get(&(last as i64)))
                    .map_or(last, |first| *first as u64);
                (partition_seq(partition, first), seq)
            })
            .collect()
    }

    /// The seals of `partition` could not be read: it is fed as if none held anything past
    /// the commit (what a crash left sealed and uncommitted may be stored again).
    pub(crate) fn without_seals(&self, partition: i32) {
        if let Some(state) = self.state.lock().get_mut(&partition) {
            state.sealed = Some(SealedRecords::default());
        }
    }

    /// The group gave this collector `partitions`.
    fn assigned(&self, partitions: &[i32]) {
        let mut state = self.state.lock();
        let mut released = self.released.lock();
        for partition in partitions {
            state.entry(*partition).or_default();
            // Its old records' late seal would be taken for the new ones: they stand for
            // their own offsets from now on (the documented duplicates of a late revoke).
            released.remove(partition);
        }
    }

    /// Whether this collector owns `partition` now.
    pub(crate) fn owns(&self, partition: i32) -> bool {
        self.state.lock().contains_key(&partition)
    }

    /// Whether the seals of `partition` are still to be read before its message at `offset`
    /// is fed (the first message read since the partition was taken).
    pub(crate) fn needs_seals(&self, partition: i32) -> bool {
        self.state
            .lock()
            .get(&partition)
            .is_some_and(|p| p.sealed.is_none())
    }

    /// Reads which offsets of `partition` from `from` on the bucket's seals hold: the new
    /// owner skips them. A seal its last owner's crash cut short is deleted.
    pub(crate) async fn read_seals(&self, partition: i32, from: i64) -> Result<(), HistoryError> {
        let p = partition as u16;
        let files = self.history.take_partition(p).await?;
        let ranges = self
            .history
            .sealed_seqs(&files, partition_seq(p, from as u64))
            .await?;
        if let Some(state) = self.state.lock().get_mut(&partition) {
            state.sealed = Some(SealedRecords::new(ranges));
        }
        Ok(())
    }

    /// Whether a seal holds the message at `offset` of `partition` already.
    pub(crate) fn is_sealed(&self, partition: i32, offset: i64) -> bool {
        self.state.lock().get(&partition).is_some_and(|p| {
            p.sealed
                .as_ref()
                .is_some_and(|s| s.holds(partition_seq(partition as u16, offset as u64)))
        })
    }

    /// The messages `first..=last` of `partition` are handed to the pipeline as one record
    /// (said before, so that a seal of them cannot come first).
    pub(crate) fn feeding(&self, partition: i32, first: i64, last: i64) {
        if let Some(state) = self.state.lock().get_mut(&partition) {
            state.pending.insert(last, first);
            state.next = Some(state.next.unwrap_or(0).max(last + 1));
        }
    }

    /// The record ending at `last` went through with `rows` spans: with none, nothing of it
    /// waits for a seal.
    pub(crate) fn fed(&self, partition: i32, last: i64, rows: usize) {
        if rows == 0
            && let Some(state) = self.state.lock().get_mut(&partition)
        {
            state.pending.remove(&last);
        }
    }

    /// The message at `offset` of `partition` was read and needs no seal (a seal holds it).
    pub(crate) fn skipped(&self, partition: i32, offset: i64) {
        if let Some(state) = self.state.lock().get_mut(&partition) {
            state.next = Some(state.next.unwrap_or(0).max(offset + 1));
        }
    }

    /// The store sealed the records `seqs` ([`partition_seq`]s): their partitions' commit
    /// points move past them. Blocking (a synchronous commit); the store calls it on its
    /// upkeep's blocking thread.
    pub(crate) fn sealed(&self, seqs: &[u64]) {
        {
            let mut state = self.state.lock();
            let mut released = self.released.lock();
            for seq in seqs {
                let (partition, offset) = crate::store::history::split_seq(*seq);
                let (partition, offset) = (i32::from(partition), offset as i64);
                if let Some(state) = state.get_mut(&partition) {
                    state.pending.remove(&offset);
                } else if let Some(pending) = released.get_mut(&partition) {
                    pending.remove(&offset);
                    if pending.is_empty() {
                        released.remove(&partition);
                    }
                }
            }
        }
        // Asynchronous: a seal holds the store's seal lock, and a coordinator that is away
        // must not hold it (a failed commit is made again at the next seal or the close).
        let consumer = self.consumer.lock().clone();
        if let Some(consumer) = consumer {
            self.commit(consumer.as_ref(), None, CommitMode::Async);
        }
    }

    /// Commits the partitions whose commit point moved (all owned, or only `only`).
    fn commit<C: Consumer<GroupContext>>(
        &self,
        consumer: &C,
        only: Option<&[i32]>,
        mode: CommitMode,
    ) {
        let mut list = TopicPartitionList::new();
        let mut moved = Vec::new();
        {
            let state = self.state.lock();
            for (partition, state) in state.iter() {
                if only.is_some_and(|only| !only.contains(partition)) {
                    continue;
                }
                if let Some(at) = state.position()
                    && list
                        .add_partition_offset(&self.topic, *partition, Offset::Offset(at))
                        .is_ok()
                {
                    moved.push((*partition, at));
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                let mut state = self.state.lock();
                for (partition, at) in moved {
                    if let Some(state) = state.get_mut(&partition) {
                        state.committed = state.committed.max(at);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "kafka: cannot commit the sealed offsets; they are committed at the next seal (a new owner reads the tail again, skipping what is sealed)");
            }
        }
    }

    /// A revoke: everything handed to the pipeline of `partitions` is sealed (waiting up to
    /// [`REVOKE_WAIT`] for the pipeline), committed, and forgotten, before the group moves them.
    fn release(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]) {
        let can_block = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let seal = || {
            let deadline = Instant::now() + REVOKE_WAIT;
            for &partition in partitions {
                loop {
                    let waiting = self
                        .state
                        .lock()
                        .get(&partition)
                        .is_some_and(|p| !p.pending.is_empty());
                    if !waiting {
                        break;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            partition,
                            "kafka: a revoked partition's spans could not all be sealed in time; its next owner reads them again (they may be sealed twice)"
                        );
                        break;
                    }
                    self.store.flush_partition(partition as u16);
                    std::thread::park_timeout(Duration::from_millis(20));
                }
            }
        };
        let closing = self.closing.load(Ordering::Acquire);
        // At the close the store has sealed all it will, and the close has committed (within
        // its bound): nothing to wait for, and an asynchronous commit of what is left.
        if closing {
            self.commit(consumer, Some(partitions), CommitMode::Async);
        } else if can_block {
            tokio::task::block_in_place(|| {
                seal();
                self.commit(consumer, Some(partitions), CommitMode::Sync);
            });
        } else {
            self.commit(consumer, Some(partitions), CommitMode::Async);
        }
        let mut state = self.state.lock();
        let mut released = self.released.lock();
        for partition in partitions {
            // What was not sealed in time keeps its ranges, for the seal that comes later.
            if let Some(gone) = state.remove(partition)
                && !gone.pending.is_empty()
            {
                released.insert(*partition, gone.pending);
            }
        }
    }

    /// At shutdown, once the store sealed everything: commits every owned partition's point,
    /// then leaves the group (the others take the partitions at once, from there). Bounded:
    /// the commit by [`CLOSE_COMMIT_WAIT`], the leave by [`LEAVE_WAIT`].
    pub(crate) async fn close(self: &Arc<Self>) {
        self.closing.store(true, Ordering::Release);
        let Some(consumer) = self.consumer.lock().take() else {
            return;
        };
        let (offsets, committing) = (self.clone(), consumer.clone());
        let commit = tokio::task::spawn_blocking(move || {
            offsets.commit(committing.as_ref(), None, CommitMode::Sync)
        });
        if tokio::time::timeout(CLOSE_COMMIT_WAIT, commit)
            .await
            .is_err()
        {
            tracing::warn!(
                "kafka: the brokers did not take the last commit in time; the partitions' next owners read from the one before (skipping what is sealed)"
            );
        }
        consumer.unsubscribe();
        // The revoke is served by polling; a message read meanwhile is not fed (and not
        // committed).
        let deadline = tokio::time::Instant::now() + LEAVE_WAIT;
        while consumer.assignment().is_ok_and(|a| a.count() > 0)
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{MemoryStore, Sealing, StoreConfig};
    use crate::testing::{span, trace_request};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_new_owner_skips_the_offsets_a_seal_holds_and_commits_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let history = Arc::new(History::new(dir.path().to_str().unwrap()).unwrap());
        let metrics = Arc::new(Metrics::new());
        // The last owner: its consumer fed messages 3 and 4 of partition 2 as one record
        // (numbered by its last message), and messages 6 and 7 as two.
        let elsewhere: Arc<dyn SpanStore> =
            Arc::new(MemoryStore::new(StoreConfig::default(), metrics.clone()));
        let last_owner = Arc::new(Offsets::new("spans".into(), history.clone(), elsewhere));
        last_owner.assigned(&[2]);
        let asked = last_owner.clone();
        let store = Arc::new(
            MemoryStore::new(StoreConfig::default(), metrics).with_sealing(
                Sealing {
                    history: history.clone(),
                    interval: Duration::from_secs(60),
                    file_rows: 1 << 20,
                    on_sealed: Arc::new(|_| {}),
                    partitioned: true,
                    records: Some(Arc::new(move |seqs| asked.ranges(seqs))),
                },
                Vec::new(),
            ),
        );
        let batch = || {
            let spans = vec![span([7; 16], 1, "op", 1, 2)];
            crate::decode::decode_traces(&trace_request(Some("svc"), spans))
                .unwrap()
                .batch
                .unwrap()
        };
        for (first, last) in [(3, 4), (6, 6), (7, 7)] {
            last_owner.feeding(2, first, last);
            store.append_logged_at(
                batch(),
                Some(partition_seq(2, last as u64)),
                std::time::SystemTime::now(),
            );
            last_owner.fed(2, last, 1);
        }
        // It sealed them, and crashed before committing.
        let sealing = store.clone();
        tokio::task::spawn_blocking(move || {
            sealing.flush_partition_at(2, std::time::SystemTime::now())
        })
        .await
        .unwrap();

        let offsets = Offsets::new("spans".into(), history, store);
        offsets.assigned(&[2]);
        assert!(offsets.needs_seals(2), "taken, its seals not read yet");
        offsets.read_seals(2, 3).await.unwrap();
        assert!(!offsets.needs_seals(2));
        // Each row: an offset, whether a seal holds it, and why.
        let cases = [
            (
                3,
                true,
                "the first message of a record the last owner sealed",
            ),
            (4, true, "its last message, which numbers the record"),
            (5, false, "never fed with spans: read again"),
            (6, true, "a record of one message"),
            (8, false, "never sealed: read and stored again"),
        ];
        for (offset, sealed, why) in cases {
            assert_eq!(
                offsets.is_sealed(2, offset),
                sealed,
                "offset {offset}: {why}"
            );
        }
        assert!(!offsets.is_sealed(1, 3), "another partition's offset 3");
        // The skipped ones move the commit point past them; one fed waits for its seal.
        offsets.skipped(2, 3);
        offsets.skipped(2, 4);
        offsets.feeding(2, 5, 5);
        offsets.fed(2, 5, 1);
        let position = offsets.state.lock()[&2].position();
        assert_eq!(position, Some(5), "up to the one waiting for its seal");
        offsets.sealed(&[partition_seq(2, 5)]);
        let position = offsets.state.lock()[&2].position();
        assert_eq!(position, Some(6), "sealed: past it");
        assert_eq!(
            offsets.ranges(&[partition_seq(2, 9)]),
            [(partition_seq(2, 9), partition_seq(2, 9))],
            "a record it does not know stands for itself"
        );
    }

    #[test]
    fn the_commit_point_is_the_first_offset_not_sealed() {
        // Each row: what happened to the partition, the commit point, and why.
        type Step = fn(&mut Partition);
        let cases: [(&[Step], Option<i64>, &str); 5] = [
            (&[], None, "nothing read: nothing to commit"),
            (
                &[|p| {
                    p.pending.insert(9, 0);
                    p.next = Some(10);
                }],
                None,
                "one record handed over, not sealed: the start, committed already",
            ),
            (
                &[
                    |p| {
                        p.pending.insert(9, 0);
                        p.pending.insert(19, 10);
                        p.next = Some(20);
                    },
                    |p| {
                        p.pending.remove(&9);
                    },
                ],
                Some(10),
                "the first of two sealed: up to the second",
            ),
            (
                &[|p| {
                    p.pending.insert(19, 10);
                    p.next = Some(25);
                    p.committed = 10;
                }],
                None,
                "the point is where it was committed already",
            ),
            (
                &[|p| p.next = Some(30)],
                Some(30),
                "everything read sealed or empty: past the last read",
            ),
        ];
        for (steps, want, why) in cases {
            let mut partition = Partition::default();
            for step in steps {
                step(&mut partition);
            }
            assert_eq!(partition.position(), want, "{why}");
        }
    }
}
