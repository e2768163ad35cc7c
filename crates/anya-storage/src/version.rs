//! Record versions for compare-and-swap.

use std::fmt;
use std::num::NonZeroU64;

/// The version of a stored value.
///
/// Every successful [`write`](crate::KvStore::write) is given a new version, unique within the
/// store for its whole life (deleted keys do not give their versions back, and versions survive
/// restarts), and every value it puts carries that version. Holding a version therefore names
/// one exact write: a compare-and-swap against it cannot succeed after the key was changed,
/// deleted and written again (no ABA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(NonZeroU64);

impl Version {
    /// The version with the given number; `None` for zero, which no write ever gets.
    pub fn new(n: u64) -> Option<Self> {
        NonZeroU64::new(n).map(Self)
    }

    /// The version number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}
