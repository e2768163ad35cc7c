//! Prometheus metrics, served on `GET /metrics` in the text exposition format
//! (`prometheus-client`).
//!
//! | metric | labels |
//! |---|---|
//! | `anya_http_requests_total` | `method`, `route` (the route pattern, not the path), `status` |
//! | `anya_http_request_duration_seconds` | `method`, `route` |
//! | `anya_http_rate_limited_total` | `limit` (`token` or `ip`) |
//! | `anya_hsm_operations_total` / `anya_hsm_operation_duration_seconds` | `operation`, `outcome` / `operation` |
//! | `anya_store_operation_duration_seconds` | `operation` (`get`, `scan`, `write`) |
//! | `anya_wallet_balance_sat` | `wallet`, `kind` (`confirmed`, `trusted_pending`, `untrusted_pending`, `immature`) |
//! | `anya_wallet_sync_height` | `wallet` |
//! | `anya_policy_refusals_total` | `wallet`, `rule` |
//! | `anya_events_subscribers` | |

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anya_storage::{Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BalanceLabels {
    wallet: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WalletLabels {
    wallet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    wallet: String,
    rule: String,
}

/// Latency buckets from 50 µs to about 3.3 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The node's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    rate_limited: Family<LimitLabels, Counter>,
    hsm_ops: Family<OutcomeLabels, Counter>,
    hsm_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    store_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    balances: Family<BalanceLabels, Gauge>,
    sync_height: Family<WalletLabels, Gauge>,
    refusals: Family<RuleLabels, Counter>,
    subscribers: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("anya");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            rate_limited: Family::default(),
            hsm_ops: Family::default(),
            hsm_seconds: Family::new_with_constructor(latency),
            store_seconds: Family::new_with_constructor(latency),
            balances: Family::default(),
            sync_height: Family::default(),
            refusals: Family::default(),
            subscribers: Gauge::default(),
        };
        registry.register("http_requests", "HTTP requests answered", m.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, from the request to the response head",
            m.request_seconds.clone(),
        );
        registry.register("http_rate_limited", "Requests refused with 429", m.rate_limited.clone());
        registry.register("hsm_operations", "HSM operations the API asked for", m.hsm_ops.clone());
        registry.register(
            "hsm_operation_duration_seconds",
            "HSM operation latency",
            m.hsm_seconds.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Store operation latency",
            m.store_seconds.clone(),
        );
        registry.register(
            "wallet_balance_sat",
            "Wallet balance at its last sync or read",
            m.balances.clone(),
        );
        registry.register(
            "wallet_sync_height",
            "Height of the wallet's last synced block",
            m.sync_height.clone(),
        );
        registry.register(
            "policy_refusals",
            "Spends the policy refused, by rule",
            m.refusals.clone(),
        );
        registry.register(
            "events_subscribers",
            "Connected /v1/events subscribers",
            m.subscribers.clone(),
        );
        *m.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        m
    }

    /// Counts an answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a 429.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Runs the HSM operation `f`, timing and counting it.
    pub fn hsm<T, E>(&self, operation: &'static str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let result = f();
        self.hsm_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.hsm_ops.get_or_create(&OutcomeLabels { operation, outcome }).inc();
        result
    }

    fn store(&self, operation: &'static str, started: Instant) {
        self.store_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records a wallet's balance and sync height.
    pub fn wallet(&self, wallet: &str, balance: &bdk_wallet::Balance, height: u32) {
        for (kind, amount) in [
            ("confirmed", balance.confirmed),
            ("trusted_pending", balance.trusted_pending),
            ("untrusted_pending", balance.untrusted_pending),
            ("immature", balance.immature),
        ] {
            self.balances
                .get_or_create(&BalanceLabels {
                    wallet: wallet.to_owned(),
                    kind,
                })
                .set(i64::try_from(amount.to_sat()).unwrap_or(i64::MAX));
        }
        self.sync_height
            .get_or_create(&WalletLabels {
                wallet: wallet.to_owned(),
            })
            .set(i64::from(height));
    }

    /// Counts a policy refusal by rule code.
    pub fn refusal(&self, wallet: &str, rule: u16) {
        self.refusals
            .get_or_create(&RuleLabels {
                wallet: wallet.to_owned(),
                rule: rule.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the subscriber gauge set to `subscribers`.
    pub fn render(&self, subscribers: usize) -> Result<String, std::fmt::Error> {
        self.subscribers.set(i64::try_from(subscribers).unwrap_or(i64::MAX));
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// A [`KvStore`] that times every operation of the store it wraps into [`Metrics`].
pub struct MeteredStore {
    inner: Arc<dyn KvStore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl MeteredStore {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn KvStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl KvStore for MeteredStore {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        let started = Instant::now();
        let r = self.inner.get(ns, key);
        self.metrics.store("get", started);
        r
    }

    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        let started = Instant::now();
        let r = self.inner.scan(ns, scan);
        self.metrics.store("scan", started);
        r
    }

    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        let started = Instant::now();
        let r = self.inner.write(batch);
        self.metrics.store("write", started);
        r
    }
}
