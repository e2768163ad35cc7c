//! Price events decided from several HTTP JSON sources.
//!
//! An oracle that attests a price signs it once and for ever, so one bad feed must not be able
//! to move it. [`consensus_price`] fetches every configured [`PriceSource`] in parallel, keeps
//! the quotes that are well formed and fresh, and attests only when all of [`PriceRules`] hold:
//!
//! 1. at least `min_sources` fresh quotes (N of M);
//! 2. every counted quote within `max_deviation_bps` of their median;
//! 3. the median within `max_move_bps` of the last attested value (the circuit breaker).
//!
//! Nothing is dropped silently: every source that gave no usable quote appears in
//! [`Decision::failures`] or [`PriceError::NotEnoughSources`] with its reason.
//!
//! [`fetch_quotes`] does the I/O and the freshness checks (it knows `now`); [`decide`] is pure,
//! so the rules can be tested and fuzzed without a network.

use std::time::{Duration, Instant};

use anya_core_types::UnixTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest response body read from a source; a larger one is [`SourceError::Malformed`].
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// How far a quote's own timestamp may lie ahead of `now` before it is refused. Exchanges'
/// clocks drift a little; a quote from minutes in the future is a broken or hostile feed.
pub const MAX_FUTURE_SKEW_SECS: u64 = 60;

/// One basis point is a ten-thousandth.
const BPS_PER_UNIT: f64 = 10_000.0;

/// One configured HTTP JSON price source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSource {
    /// Name used in quotes, errors and logs.
    pub name: String,
    /// `http://` or `https://` URL answered with a JSON document.
    pub url: String,
    /// RFC 6901 JSON pointer to the price (a JSON number, or a string holding a decimal
    /// number), e.g. `"/data/amount"`.
    pub price_pointer: String,
    /// Optional JSON pointer to the quote's own timestamp, in whole unix seconds (a JSON
    /// integer, or a string of digits). When absent the fetch time is the quote time.
    #[serde(default)]
    pub time_pointer: Option<String>,
}

/// Rules a set of quotes must pass before a price is attested. Fields left out of a
/// configuration take their [`Default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceRules {
    /// At least this many fresh, well-formed quotes (N of M).
    pub min_sources: usize,
    /// A quote older than this many seconds (by its own timestamp) is stale and not counted.
    pub max_age_secs: u64,
    /// Refuse when any counted quote is further than this from the median, in basis points of
    /// the median.
    pub max_deviation_bps: u32,
    /// Circuit breaker: refuse when the median moved more than this from the last attested
    /// value, in basis points of the last value. `None`: no breaker.
    pub max_move_bps: Option<u32>,
    /// Per-request timeout in milliseconds (resolve, connect, request and whole body).
    pub timeout_ms: u64,
}

impl Default for PriceRules {
    /// Two sources, one minute of age, 1 % spread, a 20 % breaker and a three-second timeout.
    fn default() -> Self {
        Self {
            min_sources: 2,
            max_age_secs: 60,
            max_deviation_bps: 100,
            max_move_bps: Some(2000),
            timeout_ms: 3000,
        }
    }
}

/// One source's price at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    /// The [`PriceSource::name`] it came from.
    pub source: String,
    /// The price, finite and positive once it has passed [`fetch_quotes`].
    pub price: f64,
    /// The quote's own timestamp, or the fetch time when the source has no `time_pointer`.
    pub time: UnixTime,
}

/// Why one source gave no usable quote.
///
/// `name` is the [`PriceSource::name`] (it is not called `source`, which would make it the
/// error's `source()`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The URL is not `http://` or `https://`.
    #[error("price source {name}: unsupported url {url:?} (only http:// and https://)")]
    UnsupportedUrl {
        /// Source name.
        name: String,
        /// The configured URL.
        url: String,
    },
    /// No answer: DNS, connection refused, TLS, timeout, or the connection broke mid-body.
    #[error("price source {name} unreachable: {reason}")]
    Unreachable {
        /// Source name.
        name: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// The source answered with a status outside 2xx.
    #[error("price source {name} answered http status {status}")]
    Status {
        /// Source name.
        name: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The body was too large, not JSON, or had no usable price or time at the pointers.
    #[error("price source {name} sent a malformed body: {reason}")]
    Malformed {
        /// Source name.
        name: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The quote's own timestamp is older than [`PriceRules::max_age_secs`].
    #[error("price source {name} is stale: quote is {age_secs} s old, at most {max_age_secs} s allowed")]
    Stale {
        /// Source name.
        name: String,
        /// Age of the quote at `now`.
        age_secs: u64,
        /// The configured limit.
        max_age_secs: u64,
    },
    /// The price is not finite or not above zero.
    #[error("price source {name} quoted {price}, which is not a positive finite number")]
    NotPositive {
        /// Source name.
        name: String,
        /// The price as parsed.
        price: f64,
    },
    /// The quote's timestamp is more than [`MAX_FUTURE_SKEW_SECS`] after `now`.
    #[error("price source {name} quotes from {ahead_secs} s in the future (at most {MAX_FUTURE_SKEW_SECS} s allowed)")]
    FromTheFuture {
        /// Source name.
        name: String,
        /// How far the quote's time lies after `now`.
        ahead_secs: u64,
    },
}

impl SourceError {
    /// The [`PriceSource::name`] this failure belongs to.
    pub fn source_name(&self) -> &str {
        match self {
            Self::UnsupportedUrl { name, .. }
            | Self::Unreachable { name, .. }
            | Self::Status { name, .. }
            | Self::Malformed { name, .. }
            | Self::Stale { name, .. }
            | Self::NotPositive { name, .. }
            | Self::FromTheFuture { name, .. } => name,
        }
    }
}

/// Why no price was decided. Every variant says enough for an operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PriceError {
    /// Fewer fresh, well-formed quotes than [`PriceRules::min_sources`].
    #[error("only {fresh} usable price quotes, {needed} needed; failures: {}", list(failures))]
    NotEnoughSources {
        /// Quotes that were usable.
        fresh: usize,
        /// [`PriceRules::min_sources`].
        needed: usize,
        /// Why every other source was not counted.
        failures: Vec<SourceError>,
    },
    /// A counted quote lies further from the median than [`PriceRules::max_deviation_bps`].
    #[error(
        "price sources disagree: {worst_source} quoted {worst_price}, {deviation_bps} bps from the median {median} \
         (at most {max_bps} bps)"
    )]
    Spread {
        /// Median of the counted quotes.
        median: f64,
        /// The source furthest from the median.
        worst_source: String,
        /// Its price.
        worst_price: f64,
        /// Its distance from the median in basis points of the median, rounded up.
        deviation_bps: u32,
        /// [`PriceRules::max_deviation_bps`].
        max_bps: u32,
    },
    /// The median moved further from the last attested value than [`PriceRules::max_move_bps`].
    #[error(
        "circuit breaker: median {median} is {move_bps} bps from the last attested {last} (at most {max_bps} bps)"
    )]
    CircuitBreaker {
        /// The last attested value.
        last: f64,
        /// Median of the counted quotes.
        median: f64,
        /// The move in basis points of `last`, rounded up.
        move_bps: u32,
        /// [`PriceRules::max_move_bps`].
        max_bps: u32,
    },
    /// The rules cannot be met by the configuration: `min_sources` is zero or above the number
    /// of sources, there are no sources, the timeout is zero, or the last attested value is
    /// not a positive finite number.
    #[error("invalid price rules: {0}")]
    InvalidRules(String),
}

fn list(failures: &[SourceError]) -> String {
    if failures.is_empty() {
        return "none".to_owned();
    }
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The decided price and the quotes it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Median of `quotes` (mean of the two middle ones for an even count).
    pub median: f64,
    /// The counted quotes, in the order of the sources.
    pub quotes: Vec<Quote>,
    /// The sources that were not counted and why.
    pub failures: Vec<SourceError>,
}

/// Fetches every source in parallel.
///
/// One scoped thread per source, each request bounded end to end by `rules.timeout_ms`, so a
/// slow source becomes [`SourceError::Unreachable`] and never holds the call much past the
/// timeout. A quote whose own time is older than `rules.max_age_secs` at `now` is
/// [`SourceError::Stale`]; one more than [`MAX_FUTURE_SKEW_SECS`] ahead is
/// [`SourceError::FromTheFuture`]. Every source yields exactly one quote or one failure, both
/// lists in the order of `sources`.
pub fn fetch_quotes(sources: &[PriceSource], rules: &PriceRules, now: UnixTime) -> (Vec<Quote>, Vec<SourceError>) {
    let timeout = Duration::from_millis(rules.timeout_ms);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // Non-2xx is reported as `Status` with its code; reading it ourselves keeps the code.
        .http_status_as_error(false)
        .build()
        .into();
    let started = Instant::now();

    let results: Vec<Result<Quote, SourceError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|source| {
                let agent = &agent;
                // A thread name with a NUL byte makes `spawn` panic; names come from config.
                let spawned = std::thread::Builder::new()
                    .name(format!("price-{}", source.name.replace('\0', "")))
                    .spawn_scoped(scope, move || fetch_one(agent, source, rules, now));
                (source, spawned)
            })
            .collect();
        handles
            .into_iter()
            .map(|(source, spawned)| match spawned {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(SourceError::Unreachable {
                        name: source.name.clone(),
                        reason: "the fetching thread panicked".to_owned(),
                    })
                }),
                Err(e) => Err(SourceError::Unreachable {
                    name: source.name.clone(),
                    reason: format!("cannot start a fetching thread: {e}"),
                }),
            })
            .collect()
    });

    let mut quotes = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(quote) => quotes.push(quote),
            Err(failure) => {
                tracing::warn!(%failure, "price source not counted");
                failures.push(failure);
            }
        }
    }
    tracing::debug!(
        fresh = quotes.len(),
        failed = failures.len(),
        elapsed_ms = started.elapsed().as_millis(),
        "fetched price quotes"
    );
    (quotes, failures)
}

fn fetch_one(
    agent: &ureq::Agent,
    source: &PriceSource,
    rules: &PriceRules,
    now: UnixTime,
) -> Result<Quote, SourceError> {
    let name = || source.name.clone();
    let malformed = |reason: String| SourceError::Malformed { name: name(), reason };

    let scheme_ok = source.url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        || source.url.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("http://"));
    if !scheme_ok {
        return Err(SourceError::UnsupportedUrl {
            name: name(),
            url: source.url.clone(),
        });
    }

    let mut response = agent
        .get(&source.url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| SourceError::Unreachable {
            name: name(),
            reason: e.to_string(),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(SourceError::Status {
            name: name(),
            status: status.as_u16(),
        });
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => malformed(format!("body larger than {MAX_BODY_BYTES} bytes")),
            other => SourceError::Unreachable {
                name: name(),
                reason: format!("reading the body: {other}"),
            },
        })?;

    // serde_json bounds nesting depth, so a hostile body is an error here, not a stack overflow.
    let json: Value = serde_json::from_slice(&body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let price = json
        .pointer(&source.price_pointer)
        .ok_or_else(|| malformed(format!("no value at price pointer {:?}", source.price_pointer)))
        .and_then(|v| parse_price(v).map_err(&malformed))?;
    let time = match &source.time_pointer {
        None => now,
        Some(pointer) => json
            .pointer(pointer)
            .ok_or_else(|| malformed(format!("no value at time pointer {pointer:?}")))
            .and_then(|v| parse_time(v).map_err(&malformed))?,
    };

    if !(price.is_finite() && price > 0.0) {
        return Err(SourceError::NotPositive { name: name(), price });
    }
    let ahead_secs = time.as_secs().saturating_sub(now.as_secs());
    if ahead_secs > MAX_FUTURE_SKEW_SECS {
        return Err(SourceError::FromTheFuture {
            name: name(),
            ahead_secs,
        });
    }
    let age_secs = now.as_secs().saturating_sub(time.as_secs());
    if age_secs > rules.max_age_secs {
        return Err(SourceError::Stale {
            name: name(),
            age_secs,
            max_age_secs: rules.max_age_secs,
        });
    }
    Ok(Quote {
        source: name(),
        price,
        time,
    })
}

/// A JSON number, or a string of an optionally signed decimal (`"43210.5"`, `"-1"`); no
/// exponent, no `NaN`/`inf` spellings. Sign and size are judged by the caller.
fn parse_price(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("price {n} is not representable as f64")),
        Value::String(s) => {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
            let well_formed = !(int.is_empty() && frac.is_empty())
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit());
            if !well_formed {
                return Err(format!("price string {:?} is not a decimal number", truncate(s)));
            }
            s.parse::<f64>()
                .map_err(|e| format!("price string {:?}: {e}", truncate(s)))
        }
        other => Err(format!("price is a JSON {}, not a number or string", kind(other))),
    }
}

/// Whole unix seconds as a JSON integer or a string of digits.
fn parse_time(v: &Value) -> Result<UnixTime, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(UnixTime::from_secs)
            .ok_or_else(|| format!("time {n} is not a whole number of unix seconds")),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u64>()
            .map(UnixTime::from_secs)
            .map_err(|e| format!("time string {:?}: {e}", truncate(s))),
        Value::String(s) => Err(format!("time string {:?} is not whole unix seconds", truncate(s))),
        other => Err(format!("time is a JSON {}, not a number or string", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Keeps hostile strings out of log lines and error messages in full.
fn truncate(s: &str) -> &str {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The pure decision over quotes that [`fetch_quotes`] found fresh.
///
/// Drops nothing silently: a quote whose price is not finite and positive is moved to the
/// failures as [`SourceError::NotPositive`]. Then it requires `rules.min_sources` quotes,
/// takes their median (mean of the two middle ones for an even count), refuses when any quote
/// is further than `rules.max_deviation_bps` from it and, given `last_attested` and
/// `rules.max_move_bps`, when the median moved further than that from the last value.
///
/// The number of sources (M) is `quotes.len() + failures.len()`: every source yields one or
/// the other.
pub fn decide(
    quotes: Vec<Quote>,
    mut failures: Vec<SourceError>,
    rules: &PriceRules,
    last_attested: Option<f64>,
) -> Result<Decision, PriceError> {
    check_rules(rules, quotes.len().saturating_add(failures.len()))?;
    if let Some(last) = last_attested {
        if !(last.is_finite() && last > 0.0) {
            return Err(PriceError::InvalidRules(format!(
                "last attested value {last} is not a positive finite number"
            )));
        }
    }

    let mut counted = Vec::with_capacity(quotes.len());
    for quote in quotes {
        if quote.price.is_finite() && quote.price > 0.0 {
            counted.push(quote);
        } else {
            failures.push(SourceError::NotPositive {
                name: quote.source,
                price: quote.price,
            });
        }
    }
    if counted.len() < rules.min_sources {
        return Err(PriceError::NotEnoughSources {
            fresh: counted.len(),
            needed: rules.min_sources,
            failures,
        });
    }

    let mut prices: Vec<f64> = counted.iter().map(|q| q.price).collect();
    prices.sort_by(f64::total_cmp);
    let mid = prices.len() / 2;
    // `counted` has at least `min_sources >= 1` entries (checked above), so `mid` and, for an
    // even count, `mid - 1` are in bounds.
    let median = if prices.len() % 2 == 1 {
        prices[mid]
    } else {
        // Not `(a + b) / 2`, which overflows near `f64::MAX`, nor `a / 2 + b / 2`, which rounds
        // subnormals to zero: for positive finite `a <= b` this stays within `[a, b]`.
        let (a, b) = (prices[mid - 1], prices[mid]);
        a + (b - a) / 2.0
    };

    let worst = counted
        .iter()
        .map(|q| (q, bps_of(q.price, median)))
        .max_by(|(_, a), (_, b)| a.total_cmp(b));
    if let Some((quote, deviation)) = worst {
        if deviation > f64::from(rules.max_deviation_bps) {
            return Err(PriceError::Spread {
                median,
                worst_source: quote.source.clone(),
                worst_price: quote.price,
                deviation_bps: round_up_bps(deviation),
                max_bps: rules.max_deviation_bps,
            });
        }
    }

    if let (Some(last), Some(max_bps)) = (last_attested, rules.max_move_bps) {
        let moved = bps_of(median, last);
        if moved > f64::from(max_bps) {
            return Err(PriceError::CircuitBreaker {
                last,
                median,
                move_bps: round_up_bps(moved),
                max_bps,
            });
        }
    }

    tracing::info!(
        median,
        counted = counted.len(),
        failed = failures.len(),
        "price decided"
    );
    Ok(Decision {
        median,
        quotes: counted,
        failures,
    })
}

/// `|value - reference|` in basis points of `reference`. Both are positive and finite here; an
/// infinite result (huge ratio) compares above every limit, and NaN cannot arise but is
/// treated as infinitely far so that it can never pass a limit.
fn bps_of(value: f64, reference: f64) -> f64 {
    let bps = (value - reference).abs() / reference * BPS_PER_UNIT;
    if bps.is_nan() {
        f64::INFINITY
    } else {
        bps
    }
}

/// Rounds a distance up to whole basis points for reporting, saturating at `u32::MAX`.
fn round_up_bps(bps: f64) -> u32 {
    let up = bps.ceil();
    if up.is_nan() || up >= f64::from(u32::MAX) {
        u32::MAX
    } else if up <= 0.0 {
        0
    } else {
        // In (0, u32::MAX) after the checks above, so the cast is exact.
        up as u32
    }
}

fn check_rules(rules: &PriceRules, source_count: usize) -> Result<(), PriceError> {
    if source_count == 0 {
        return Err(PriceError::InvalidRules("no price sources configured".to_owned()));
    }
    if rules.min_sources == 0 {
        return Err(PriceError::InvalidRules(
            "min_sources is 0; at least one quote is needed".to_owned(),
        ));
    }
    if rules.min_sources > source_count {
        return Err(PriceError::InvalidRules(format!(
            "min_sources is {} but only {source_count} sources are configured",
            rules.min_sources
        )));
    }
    Ok(())
}

/// [`fetch_quotes`] then [`decide`].
///
/// The rules are checked against `sources` before any request is made; a zero
/// `rules.timeout_ms` is [`PriceError::InvalidRules`] too, since no source could answer.
pub fn consensus_price(
    sources: &[PriceSource],
    rules: &PriceRules,
    now: UnixTime,
    last_attested: Option<f64>,
) -> Result<Decision, PriceError> {
    check_rules(rules, sources.len())?;
    if rules.timeout_ms == 0 {
        return Err(PriceError::InvalidRules("timeout_ms is 0".to_owned()));
    }
    let (quotes, failures) = fetch_quotes(sources, rules, now);
    decide(quotes, failures, rules, last_attested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_strings() {
        assert_eq!(parse_price(&Value::from("43210.50")), Ok(43210.5));
        assert_eq!(parse_price(&Value::from("-1")), Ok(-1.0));
        assert_eq!(parse_price(&Value::from(".5")), Ok(0.5));
        for bad in ["", ".", "NaN", "inf", "1e3", "1.2.3", " 1", "0x10", "-"] {
            assert!(parse_price(&Value::from(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(parse_price(&Value::Null).is_err());
    }

    #[test]
    fn time_values() {
        assert_eq!(
            parse_time(&Value::from(1_700_000_000_u64)),
            Ok(UnixTime::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_time(&Value::from("1700000000")),
            Ok(UnixTime::from_secs(1_700_000_000))
        );
        for bad in [
            Value::from(-1),
            Value::from(1.5),
            Value::from(""),
            Value::from("12a"),
            Value::Bool(true),
        ] {
            assert!(parse_time(&bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_time(&Value::from("99999999999999999999999")).is_err());
    }

    #[test]
    fn bps_guards() {
        assert_eq!(round_up_bps(f64::INFINITY), u32::MAX);
        assert_eq!(round_up_bps(f64::NAN), u32::MAX);
        assert_eq!(round_up_bps(100.2), 101);
        assert_eq!(round_up_bps(0.0), 0);
        assert!(bps_of(f64::MAX, f64::MIN_POSITIVE).is_infinite());
        assert_eq!(bps_of(110.0, 100.0).round(), 1000.0);
    }

    #[test]
    fn truncates_on_char_boundary() {
        let s = "é".repeat(100);
        assert_eq!(truncate(&s).chars().count(), 64);
        assert_eq!(truncate("short"), "short");
    }
}
