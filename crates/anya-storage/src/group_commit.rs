//! Group commit: concurrent durable writers share one transaction and one `fsync`.
//!
//! Each writer queues its batch. If nobody is committing, it becomes the leader: it takes every
//! queued batch, commits them together, hands each writer its own result through that writer's
//! slot, and repeats while batches keep arriving. Everyone else sleeps on its own slot until the
//! result is there, so finished followers never queue up for the writer lock. One writer alone pays one commit, as without grouping; eight writers pay about one
//! commit per round instead of eight. A batch that fails its checks fails alone: the backend
//! isolates batches inside the group (savepoints, an overlay of earlier writes).

use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Duration;

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

pub(crate) struct GroupCommit<W> {
    queue: Mutex<Vec<(WriteBatch, Arc<Slot>)>>,
    writer: Mutex<W>,
}

impl<W: GroupWriter> GroupCommit<W> {
    pub(crate) fn new(writer: W) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(writer),
        }
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        let slot = Arc::new(Slot {
            result: Mutex::new(None),
            ready: Condvar::new(),
        });
        self.queue
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .push((batch, Arc::clone(&slot)));
        loop {
            // Lead if nobody is committing: commit everything queued, round after round, then
            // release the writer and look again, so that a batch queued while we held the
            // writer is never left without a leader.
            loop {
                let mut writer = match self.writer.try_lock() {
                    Ok(writer) => writer,
                    Err(TryLockError::WouldBlock) => break,
                    Err(TryLockError::Poisoned(_)) => return Err(StoreError::Poisoned),
                };
                while self.commit_round(&mut writer)? {}
                drop(writer);
                if self.queue.lock().map_err(|_| StoreError::Poisoned)?.is_empty() {
                    break;
                }
            }
            // Follow: wait for the leader to fill our slot.
            let mut result = slot.result.lock().map_err(|_| StoreError::Poisoned)?;
            if let Some(r) = result.take() {
                return r;
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

    /// Commits one group of queued batches; `false` when the queue was empty.
    fn commit_round(&self, writer: &mut W) -> Result<bool, StoreError> {
        let group: Vec<(WriteBatch, Arc<Slot>)> = {
            let mut queue = self.queue.lock().map_err(|_| StoreError::Poisoned)?;
            let n = queue.len().min(MAX_GROUP);
            queue.drain(..n).collect()
        };
        if group.is_empty() {
            return Ok(false);
        }
        let (batches, slots): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let n = batches.len();
        match writer.commit_group(batches) {
            Ok(results) => {
                debug_assert_eq!(results.len(), n);
                for (slot, result) in slots.iter().zip(results) {
                    slot.fill(result);
                }
            }
            Err(err) => {
                let shared = Arc::new(err);
                for slot in &slots {
                    slot.fill(Err(share(&shared)));
                }
            }
        }
        Ok(true)
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
