//! Rate limits: one GCRA bucket per API token and one per client IP address (governor), refused
//! with `429 Too Many Requests` and a `Retry-After` header.
//!
//! The limits are part of the reloadable configuration: a reload swaps in new buckets (every
//! client starts full again under the new limits).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

struct Buckets {
    token: Option<Keyed<String>>,
    ip: Option<Keyed<IpAddr>>,
}

/// The node's rate limiters.
pub struct Limits {
    buckets: RwLock<Arc<Buckets>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

fn buckets(config: &RateLimitConfig) -> Buckets {
    Buckets {
        token: quota(config.per_token_per_sec, config.per_token_burst).map(RateLimiter::keyed),
        ip: quota(config.per_ip_per_sec, config.per_ip_burst).map(RateLimiter::keyed),
    }
}

impl Limits {
    /// Limiters for `config` (a rate of 0 turns that limit off).
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            buckets: RwLock::new(Arc::new(buckets(config))),
            clock: DefaultClock::default(),
        }
    }

    /// Replaces the limits.
    pub fn reload(&self, config: &RateLimitConfig) {
        *self.buckets.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(buckets(config));
    }

    fn current(&self) -> Arc<Buckets> {
        Arc::clone(&self.buckets.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Takes one request from `token`'s bucket, or says how long to wait.
    pub fn check_token(&self, token: &str) -> Result<(), Duration> {
        let buckets = self.current();
        match &buckets.token {
            Some(limiter) => limiter
                .check_key(&token.to_owned())
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Takes one request from `ip`'s bucket, or says how long to wait.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        let buckets = self.current();
        match &buckets.ip {
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Forgets idle buckets (called now and then so that the maps stay small).
    pub fn sweep(&self) {
        let buckets = self.current();
        if let Some(l) = &buckets.token {
            l.retain_recent();
        }
        if let Some(l) = &buckets.ip {
            l.retain_recent();
        }
    }
}
