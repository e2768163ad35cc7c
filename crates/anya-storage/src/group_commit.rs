//! Group commit: concurrent durable writers share one transaction and one `fsync`.
//!
//! Each writer queues its batch. If nobody is committing, it becomes the leader: it waits
//! briefly for every writer to queue (see [`GroupCommit::gather`]), takes every queued batch and
//! commits them together. It then frees the writer and hands each writer its own result
//! through that writer's slot. Everyone else sleeps on its own slot until the result is there,
//! so finished followers never queue up for the writer lock, and the first one back with its
//! next batch leads the next round. One writer alone pays one commit, as without grouping;
//! eight writers pay about one commit per round instead of eight. A batch that fails its checks
//! fails alone: the backend isolates batches inside the group (savepoints, an overlay of
//! earlier writes).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

use crate::{BoxError, StoreError, Version, WriteBatch};

/// Most batches committed in one group; the rest wait for the next round.
const MAX_GROUP: usize = 1024;

/// A backend's writer: applies several batches in one durable commit.
pub(crate) trait GroupWriter: Send {
    /// Commits `batches` in one durable step.
    ///
    /// `Ok(results)` holds one result per batch, in order: a batch whose checks failed applied
    /// nothing, and the others were committed. `Err` means nothing was committed.
    fn commit_group(&mut self, batches: Vec<WriteBatch>) -> Result<Vec<Result<Version, StoreError>>, StoreError>;
}

/// Where a writer waits for the result of its batch.
struct Slot {
    result: Mutex<Option<Result<Version, StoreError>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, result: Result<Version, StoreError>) {
        if let Ok(mut r) = self.result.lock() {
            *r = Some(result);
        }
        self.ready.notify_one();
    }
}

/// How long a waiting writer sleeps before checking whether it must lead. The hand-off below
/// never needs it (whoever releases the writer re-checks the queue); it bounds the damage of
/// a bug there to latency instead of a hang.
const WAIT_SLICE: Duration = Duration::from_millis(5);

/// Longest a leader waits for writers to join a round (see [`GroupCommit::gather`]).
const GATHER_MAX: Duration = Duration::from_micros(150);

pub(crate) struct GroupCommit<W> {
    queue: Mutex<Vec<(WriteBatch, Arc<Slot>)>>,
    /// Signalled when the round a leader is gathering is complete.
    arrived: Condvar,
    /// Writers inside [`write`](Self::write): queued, waiting, or handed their result but not
    /// yet returned.
    in_flight: AtomicUsize,
    /// Whether a leader holds the writer; a waiting writer that sees `false` looks again
    /// instead of sleeping, so a hand-off cannot slip past it.
    leading: AtomicBool,
    /// Whether a leader waits in [`gather`](Self::gather) for its round to fill.
    gathering: AtomicBool,
    writer: Mutex<W>,
}

impl<W: GroupWriter> GroupCommit<W> {
    pub(crate) fn new(writer: W) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            leading: AtomicBool::new(false),
            gathering: AtomicBool::new(false),
            writer: Mutex::new(writer),
        }
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        /// Counts the writer out (and wakes a gathering leader) however `write` returns.
        struct InFlight<'a, W: GroupWriter>(&'a GroupCommit<W>);
        impl<W: GroupWriter> Drop for InFlight<'_, W> {
            fn drop(&mut self) {
                self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.0.wake_gatherer();
            }
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _counted = InFlight(self);
        let slot = Arc::new(Slot {
            result: Mutex::new(None),
            ready: Condvar::new(),
        });
        self.queue
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .push((batch, Arc::clone(&slot)));
        self.wake_gatherer();
        loop {
            // Lead if nobody is committing: commit rounds until our own batch is done, then
            // hand the lead to the next queued writer. A leader that stayed on would hold its
            // own thread's next batch back while leading everyone else's.
            match self.writer.try_lock() {
                Ok(mut writer) => {
                    self.leading.store(true, Ordering::SeqCst);
                    let mut own_round = None;
                    while slot.result.lock().map_err(|_| StoreError::Poisoned)?.is_none() {
                        let Some(round) = self.commit_round(&mut writer)? else {
                            break;
                        };
                        if round.slots.iter().any(|s| Arc::ptr_eq(s, &slot)) {
                            own_round = Some(round);
                            break;
                        }
                        round.deliver();
                    }
                    self.leading.store(false, Ordering::SeqCst);
                    drop(writer);
                    // The round with our own batch is delivered after the writer is free: the
                    // first writer it wakes comes back to a free lock and leads the next round
                    // at once, instead of waiting to be handed it.
                    if let Some(round) = own_round {
                        round.deliver();
                    }
                    self.wake_next()?;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(StoreError::Poisoned),
            }
            // Follow: wait for the leader to fill our slot.
            let mut result = slot.result.lock().map_err(|_| StoreError::Poisoned)?;
            if let Some(r) = result.take() {
                return r;
            }
            if !self.leading.load(Ordering::SeqCst) {
                continue;
            }
            let (mut result, _) = slot
                .ready
                .wait_timeout(result, WAIT_SLICE)
                .map_err(|_| StoreError::Poisoned)?;
            if let Some(r) = result.take() {
                return r;
            }
        }
    }

    /// Wakes the first queued writer so that it leads the next round. Called after the writer
    /// lock is released: a writer queued after this looks at the free lock itself.
    fn wake_next(&self) -> Result<(), StoreError> {
        let next = self
            .queue
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .first()
            .map(|(_, slot)| Arc::clone(slot));
        if let Some(slot) = next {
            // Under the slot's lock, so the wake-up cannot fall between its check and its wait.
            let _held = slot.result.lock().map_err(|_| StoreError::Poisoned)?;
            slot.ready.notify_one();
        }
        Ok(())
    }

    /// Wakes a leader waiting in [`gather`](Self::gather) once its round is complete, and not
    /// before: each early wake-up is a context switch on the commit's critical path, and
    /// writers coming back from a round would otherwise wake the leader once each.
    fn wake_gatherer(&self) {
        if !self.gathering.load(Ordering::SeqCst) {
            return;
        }
        let complete = match self.queue.lock() {
            Ok(queue) => queue.len() >= self.in_flight.load(Ordering::SeqCst),
            // Let the leader see the poisoned lock itself.
            Err(_) => true,
        };
        if complete {
            self.arrived.notify_one();
        }
    }

    /// Takes the next round's batches. Writers whose round just finished come back with their
    /// next batch while the leader starts the next commit; taken at once, the round would hold
    /// only the writers that were not in the last one, and writers would settle into small
    /// alternating groups, each paying its own fsync. So while batches are waiting but fewer
    /// than the writers still inside `write`, the leader waits, at most [`GATHER_MAX`], for the
    /// rest to queue or leave. The leader's own batch is in the queue and counts among them.
    /// A lone writer never waits.
    fn gather(&self) -> Result<Vec<(WriteBatch, Arc<Slot>)>, StoreError> {
        let mut queue = self.queue.lock().map_err(|_| StoreError::Poisoned)?;
        let writers = || self.in_flight.load(Ordering::SeqCst);
        if !queue.is_empty() && queue.len() < writers() {
            let deadline = Instant::now() + GATHER_MAX;
            // Set before the count is read again below, all `SeqCst`: a writer that queues (under
            // this lock) or leaves (decrementing `in_flight`) either is counted by that read or
            // sees the flag and wakes us once the round is complete.
            self.gathering.store(true, Ordering::SeqCst);
            while queue.len() < writers() {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                queue = self
                    .arrived
                    .wait_timeout(queue, left)
                    .map_err(|_| StoreError::Poisoned)?
                    .0;
            }
            self.gathering.store(false, Ordering::SeqCst);
        }
        let n = queue.len().min(MAX_GROUP);
        Ok(queue.drain(..n).collect())
    }

    /// Commits one group of queued batches; `None` when the queue was empty.
    fn commit_round(&self, writer: &mut W) -> Result<Option<Round>, StoreError> {
        let group = self.gather()?;
        if group.is_empty() {
            return Ok(None);
        }
        let (batches, slots): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let n = batches.len();
        let results = match writer.commit_group(batches) {
            Ok(results) => {
                debug_assert_eq!(results.len(), n);
                results
            }
            Err(err) => {
                let shared = Arc::new(err);
                slots.iter().map(|_| Err(share(&shared))).collect()
            }
        };
        Ok(Some(Round { slots, results }))
    }
}

/// A committed round whose results are not yet handed to its writers.
struct Round {
    slots: Vec<Arc<Slot>>,
    results: Vec<Result<Version, StoreError>>,
}

impl Round {
    fn deliver(self) {
        for (slot, result) in self.slots.iter().zip(self.results) {
            slot.fill(result);
        }
    }
}

/// The same failure reported to every writer of a group, keeping its kind.
fn share(err: &Arc<StoreError>) -> StoreError {
    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Shared(Arc<StoreError>);
    impl Shared {
        fn boxed(err: &Arc<StoreError>) -> BoxError {
            Box::new(Shared(Arc::clone(err)))
        }
    }
    match &**err {
        StoreError::Corrupt { .. } => StoreError::Corrupt {
            source: Shared::boxed(err),
        },
        StoreError::Poisoned => StoreError::Poisoned,
        StoreError::Backend { backend, .. } => StoreError::Backend {
            backend,
            source: Shared::boxed(err),
        },
        _ => StoreError::Backend {
            backend: "group-commit",
            source: Shared::boxed(err),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Namespace;

    /// A writer whose commit takes as long as a small fsync and that records each round's size.
    struct SlowWriter {
        next: u64,
        rounds: Arc<Mutex<Vec<usize>>>,
    }

    impl GroupWriter for SlowWriter {
        fn commit_group(&mut self, batches: Vec<WriteBatch>) -> Result<Vec<Result<Version, StoreError>>, StoreError> {
            std::thread::sleep(Duration::from_micros(300));
            self.rounds.lock().expect("rounds").push(batches.len());
            Ok(batches
                .iter()
                .map(|_| {
                    self.next += 1;
                    Ok(Version::new(self.next).expect("nonzero"))
                })
                .collect())
        }
    }

    #[test]
    fn concurrent_writers_share_rounds_and_each_gets_its_own_result() {
        const THREADS: usize = 8;
        const WRITES: usize = 40;
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let gc = GroupCommit::new(SlowWriter {
            next: 0,
            rounds: Arc::clone(&rounds),
        });
        let ns = Namespace::new("t").expect("ns");
        let mut versions: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        (0..WRITES)
                            .map(|i| {
                                let mut batch = WriteBatch::new();
                                batch.put(&ns, vec![i as u8], vec![1]).expect("op");
                                gc.write(batch).expect("committed").get()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("writer")).collect()
        });
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), THREADS * WRITES, "every write got its own version");
        let rounds = rounds.lock().expect("rounds");
        assert_eq!(rounds.iter().sum::<usize>(), THREADS * WRITES);
        // Without grouping there would be 320 rounds; with the hand-off and gathering, rounds
        // hold most of the writers (the bound leaves room for a loaded machine).
        assert!(
            rounds.len() <= THREADS * WRITES / 4,
            "{} rounds: {rounds:?}",
            rounds.len()
        );
    }
}
