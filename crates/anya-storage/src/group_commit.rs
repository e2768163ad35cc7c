//! Group commit: concurrent durable writers share one transaction and one `fsync`.
//!
//! Each writer queues its batch and then waits for the writer lock. Whoever holds the lock takes
//! every queued batch, commits them together, and hands each its own result; writers whose
//! batch was committed by another thread find their result when they get the lock and return at
//! once. One writer alone pays one commit, as without grouping; eight writers pay about one
//! commit per round instead of eight. A batch that fails its checks fails alone: the backend
//! isolates batches inside the group (savepoints, an overlay of earlier writes).

use std::sync::{Arc, Mutex};

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

type Slot = Arc<Mutex<Option<Result<Version, StoreError>>>>;

pub(crate) struct GroupCommit<W> {
    queue: Mutex<Vec<(WriteBatch, Slot)>>,
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
        let slot: Slot = Arc::new(Mutex::new(None));
        self.queue
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .push((batch, Arc::clone(&slot)));
        loop {
            let mut writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
            if let Some(result) = slot.lock().map_err(|_| StoreError::Poisoned)?.take() {
                return result;
            }
            let group: Vec<(WriteBatch, Slot)> = {
                let mut queue = self.queue.lock().map_err(|_| StoreError::Poisoned)?;
                let n = queue.len().min(MAX_GROUP);
                queue.drain(..n).collect()
            };
            if group.is_empty() {
                // Our batch is in a group another thread is committing right now; its result
                // is ours once that thread releases the lock.
                continue;
            }
            let (batches, slots): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let n = batches.len();
            match writer.commit_group(batches) {
                Ok(results) => {
                    debug_assert_eq!(results.len(), n);
                    for (slot, result) in slots.iter().zip(results) {
                        *slot.lock().map_err(|_| StoreError::Poisoned)? = Some(result);
                    }
                }
                Err(err) => {
                    let shared = Arc::new(err);
                    for slot in &slots {
                        *slot.lock().map_err(|_| StoreError::Poisoned)? = Some(Err(share(&shared)));
                    }
                }
            }
            drop(writer);
            // Our own batch may have been beyond MAX_GROUP; loop until it has a result.
            if let Some(result) = slot.lock().map_err(|_| StoreError::Poisoned)?.take() {
                return result;
            }
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
