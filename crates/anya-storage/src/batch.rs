//! Atomic write batches.

use crate::namespace::{check_key, check_value};
use crate::{Namespace, StoreError, Version};

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Namespace of the key.
        ns: Namespace,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key`; removing a missing key is not an error.
    Delete {
        /// Namespace of the key.
        ns: Namespace,
        /// The key.
        key: Vec<u8>,
    },
    /// Require that `key` currently has version `expected` (`None`: that it is absent), or fail
    /// the whole batch with [`StoreError::Conflict`].
    Check {
        /// Namespace of the key.
        ns: Namespace,
        /// The key.
        key: Vec<u8>,
        /// The version the key must have, or `None` if it must not exist.
        expected: Option<Version>,
    },
}

impl Op {
    /// The namespace the operation is in.
    pub fn namespace(&self) -> &Namespace {
        match self {
            Op::Put { ns, .. } | Op::Delete { ns, .. } | Op::Check { ns, .. } => ns,
        }
    }
}

/// Operations applied all together or not at all.
///
/// Operations apply in the order they were added; a [`Check`](Op::Check) sees the effect of the
/// operations before it in the same batch. If any check fails, nothing in the batch is applied.
/// Sizes are validated as operations are added, so a batch that was built is one the store
/// accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` at `key`.
    pub fn put(
        &mut self,
        ns: &Namespace,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, StoreError> {
        let (key, value) = (key.into(), value.into());
        check_key(&key)?;
        check_value(&value)?;
        self.ops.push(Op::Put {
            ns: ns.clone(),
            key,
            value,
        });
        Ok(self)
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, ns: &Namespace, key: impl Into<Vec<u8>>) -> Result<&mut Self, StoreError> {
        let key = key.into();
        check_key(&key)?;
        self.ops.push(Op::Delete { ns: ns.clone(), key });
        Ok(self)
    }

    /// Adds a precondition: `key` must have version `expected` (`None`: must be absent).
    pub fn check(
        &mut self,
        ns: &Namespace,
        key: impl Into<Vec<u8>>,
        expected: Option<Version>,
    ) -> Result<&mut Self, StoreError> {
        let key = key.into();
        check_key(&key)?;
        self.ops.push(Op::Check {
            ns: ns.clone(),
            key,
            expected,
        });
        Ok(self)
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether the batch has any precondition.
    pub fn has_checks(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Check { .. }))
    }

    #[cfg(any(feature = "rocksdb", feature = "postgres"))]
    pub(crate) fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}
