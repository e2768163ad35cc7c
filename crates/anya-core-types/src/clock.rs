//! Wall-clock time behind a trait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the Unix epoch, as one monotonic-comparable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(Duration);

impl UnixTime {
    /// The time `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The time `d` after the Unix epoch.
    pub const fn from_duration(d: Duration) -> Self {
        Self(d)
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Duration since the Unix epoch.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// `self + d`, saturating at the largest representable time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }
}

/// A source of wall-clock time.
///
/// Everything in anya that depends on the time of day (rolling spending windows, oracle event
/// maturity, audit timestamps) reads it through a `Clock`, so tests can pin it.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        // A clock set before 1970 is a broken host; report the epoch rather than panic.
        UnixTime(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> UnixTime {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now().as_secs() > 1_704_067_200);
    }

    #[test]
    fn saturating_arithmetic() {
        let t = UnixTime::from_secs(10);
        assert_eq!(t.saturating_sub(Duration::from_secs(20)), UnixTime::from_secs(0));
        assert_eq!(t.saturating_add(Duration::from_secs(5)).as_secs(), 15);
    }
}
