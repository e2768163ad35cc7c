//! Price sources against real HTTP servers on loopback.
//!
//! Each server is an `anya_testkit::http::HttpServer` on an ephemeral 127.0.0.1 port answering
//! every connection with one fixed behaviour (JSON, a status, a delay, a huge body); "down" is
//! a port that was bound and then released, so connecting to it is refused.

use std::time::{Duration, Instant};

use anya_testkit::http::{refused_url, HttpServer, Reply};

use anya_core_types::UnixTime;
use anya_layer2::dlc::price::{
    consensus_price, decide, fetch_quotes, PriceError, PriceRules, PriceSource, Quote, SourceError,
};
use proptest::prelude::*;

/// The pinned `now` of every test; quote times are written relative to it.
const NOW: u64 = 1_700_000_000;

fn serve(reply: Reply) -> String {
    HttpServer::start(reply).url().to_owned()
}

fn down() -> String {
    refused_url()
}

/// `{"data":{"amount":price},"ts":time}` quoted `age` seconds before [`NOW`].
fn quote_body(price: f64, age: u64) -> String {
    format!(r#"{{"data":{{"amount":{price}}},"ts":{}}}"#, NOW - age)
}

/// A server quoting `price` with a timestamp of `NOW - age`.
fn quoting(name: &str, price: f64, age: u64) -> PriceSource {
    source(name, serve(Reply::Body(quote_body(price, age))))
}

fn source(name: &str, url: String) -> PriceSource {
    PriceSource {
        name: name.to_owned(),
        url,
        price_pointer: "/data/amount".to_owned(),
        time_pointer: Some("/ts".to_owned()),
    }
}

fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

fn rules() -> PriceRules {
    PriceRules {
        timeout_ms: 2000,
        ..PriceRules::default()
    }
}

/// The single failure `fetch_quotes` reports for one source.
fn failure_of(source: PriceSource) -> SourceError {
    let (quotes, mut failures) = fetch_quotes(&[source], &rules(), now());
    assert!(quotes.is_empty(), "unexpected quotes {quotes:?}");
    assert_eq!(failures.len(), 1, "{failures:?}");
    failures.remove(0)
}

fn assert_close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

#[test]
fn default_rules() {
    let r = PriceRules::default();
    assert_eq!(
        r,
        PriceRules {
            min_sources: 2,
            max_age_secs: 60,
            max_deviation_bps: 100,
            max_move_bps: Some(2000),
            timeout_ms: 3000
        }
    );
}

#[test]
fn median_of_three_agreeing_sources() {
    let sources = [quoting("a", 100.5, 1), quoting("b", 99.8, 2), quoting("c", 100.0, 0)];
    let decision = consensus_price(&sources, &rules(), now(), None).expect("three agreeing sources");
    assert_close(decision.median, 100.0);
    assert!(decision.failures.is_empty(), "{:?}", decision.failures);
    assert_eq!(
        decision.quotes,
        vec![
            Quote {
                source: "a".to_owned(),
                price: 100.5,
                time: UnixTime::from_secs(NOW - 1)
            },
            Quote {
                source: "b".to_owned(),
                price: 99.8,
                time: UnixTime::from_secs(NOW - 2)
            },
            Quote {
                source: "c".to_owned(),
                price: 100.0,
                time: UnixTime::from_secs(NOW)
            },
        ]
    );
}

#[test]
fn median_of_even_count_is_mean_of_middle_two() {
    let sources = [
        quoting("a", 100.6, 0),
        quoting("b", 100.0, 0),
        quoting("c", 100.4, 0),
        quoting("d", 100.2, 0),
    ];
    let decision = consensus_price(&sources, &rules(), now(), None).expect("four agreeing sources");
    assert_close(decision.median, 100.3);
    assert_eq!(decision.quotes.len(), 4);
}

#[test]
fn price_as_string_and_time_as_string_and_no_time_pointer() {
    let as_string = source(
        "string",
        serve(Reply::Body(format!(r#"{{"p":"43210.50","t":"{}"}}"#, NOW - 5))),
    );
    let as_string = PriceSource {
        price_pointer: "/p".to_owned(),
        time_pointer: Some("/t".to_owned()),
        ..as_string
    };
    let untimed = PriceSource {
        time_pointer: None,
        ..source("untimed", serve(Reply::Body(r#"{"data":{"amount":43200}}"#.to_owned())))
    };
    let (quotes, failures) = fetch_quotes(&[as_string, untimed], &rules(), now());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        quotes,
        vec![
            Quote {
                source: "string".to_owned(),
                price: 43210.5,
                time: UnixTime::from_secs(NOW - 5)
            },
            Quote {
                source: "untimed".to_owned(),
                price: 43200.0,
                time: now()
            },
        ]
    );
}

#[test]
fn spread_beyond_limit_names_the_outlier() {
    let sources = [
        quoting("a", 100.0, 0),
        quoting("outlier", 105.0, 0),
        quoting("c", 100.1, 0),
    ];
    let err = consensus_price(&sources, &rules(), now(), None).expect_err("5 % apart with a 1 % limit");
    let PriceError::Spread {
        median,
        worst_source,
        worst_price,
        deviation_bps,
        max_bps,
    } = err
    else {
        panic!("expected Spread, got {err:?}");
    };
    assert_close(median, 100.1);
    assert_eq!(worst_source, "outlier");
    assert_close(worst_price, 105.0);
    // (105 - 100.1) / 100.1 = 489.5 bps, reported rounded up.
    assert_eq!(deviation_bps, 490);
    assert_eq!(max_bps, 100);
}

#[test]
fn spread_within_limit_is_decided() {
    // 100.9 is 89 bps above the median 100.0: inside 100 bps.
    let sources = [quoting("a", 100.0, 0), quoting("b", 100.9, 0), quoting("c", 99.95, 0)];
    let decision = consensus_price(&sources, &rules(), now(), None).expect("within 1 %");
    assert_close(decision.median, 100.0);
}

#[test]
fn stale_quote_is_not_counted() {
    let sources = [
        quoting("a", 100.0, 10),
        quoting("old", 100.0, 120),
        quoting("c", 100.2, 60),
    ];
    let decision = consensus_price(&sources, &rules(), now(), None).expect("two fresh of three");
    assert_close(decision.median, 100.1);
    assert_eq!(
        decision.quotes.iter().map(|q| q.source.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(
        decision.failures,
        vec![SourceError::Stale {
            name: "old".to_owned(),
            age_secs: 120,
            max_age_secs: 60
        }]
    );
}

#[test]
fn stale_with_too_few_left_is_not_enough_sources() {
    let sources = [quoting("a", 100.0, 0), quoting("old", 100.0, 61)];
    let err = consensus_price(&sources, &rules(), now(), None).expect_err("one fresh, two needed");
    assert_eq!(
        err,
        PriceError::NotEnoughSources {
            fresh: 1,
            needed: 2,
            failures: vec![SourceError::Stale {
                name: "old".to_owned(),
                age_secs: 61,
                max_age_secs: 60
            }],
        }
    );
    assert!(err.to_string().contains("old is stale"), "{err}");
}

#[test]
fn quote_from_the_future_is_refused() {
    let ahead = source(
        "ahead",
        serve(Reply::Body(format!(r#"{{"data":{{"amount":1}},"ts":{}}}"#, NOW + 61))),
    );
    assert_eq!(
        failure_of(ahead),
        SourceError::FromTheFuture {
            name: "ahead".to_owned(),
            ahead_secs: 61
        }
    );
    // Up to a minute of clock skew is tolerated.
    let skewed = source(
        "skewed",
        serve(Reply::Body(format!(r#"{{"data":{{"amount":1}},"ts":{}}}"#, NOW + 60))),
    );
    let (quotes, failures) = fetch_quotes(&[skewed], &rules(), now());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(quotes[0].time, UnixTime::from_secs(NOW + 60));
}

#[test]
fn slow_source_times_out_without_delaying_the_decision() {
    let slow = source("slow", serve(Reply::Slow(Duration::from_secs(2), quote_body(100.0, 0))));
    let sources = [quoting("a", 100.0, 0), slow, quoting("c", 100.0, 0)];
    let rules = PriceRules {
        timeout_ms: 300,
        ..PriceRules::default()
    };

    let started = Instant::now();
    let decision = consensus_price(&sources, &rules, now(), None).expect("two fast sources suffice");
    let elapsed = started.elapsed();

    assert!(
        elapsed < Duration::from_millis(1500),
        "took {elapsed:?}, the timeout is 300 ms"
    );
    assert_close(decision.median, 100.0);
    assert_eq!(decision.quotes.len(), 2);
    // It failed by the timeout, not at once for some other reason.
    assert!(elapsed >= Duration::from_millis(250), "took only {elapsed:?}");
    assert!(
        matches!(&decision.failures[..], [SourceError::Unreachable { name, reason }] if name == "slow" && reason.contains("timeout")),
        "{:?}",
        decision.failures
    );
}

#[test]
fn malformed_json_is_malformed() {
    let garbage = source("garbage", serve(Reply::Body(r#"{"data": {"amount": 100,"#.to_owned())));
    assert!(
        matches!(failure_of(garbage), SourceError::Malformed { name, reason } if name == "garbage" && reason.contains("not JSON"))
    );
    let html = source("html", serve(Reply::Body("<html>\u{0}\u{ff}</html>".to_owned())));
    assert!(matches!(failure_of(html), SourceError::Malformed { .. }));
}

#[test]
fn missing_pointer_is_malformed() {
    let missing = source(
        "missing",
        serve(Reply::Body(r#"{"data":{"price":100},"ts":1700000000}"#.to_owned())),
    );
    assert!(matches!(
        failure_of(missing),
        SourceError::Malformed { name, reason } if name == "missing" && reason.contains("/data/amount")
    ));
    let missing_time = source("no-ts", serve(Reply::Body(r#"{"data":{"amount":100}}"#.to_owned())));
    assert!(matches!(failure_of(missing_time), SourceError::Malformed { reason, .. } if reason.contains("/ts")));
}

#[test]
fn wrong_types_are_malformed() {
    for body in [
        r#"{"data":{"amount":null},"ts":1700000000}"#,
        r#"{"data":{"amount":[100]},"ts":1700000000}"#,
        r#"{"data":{"amount":"NaN"},"ts":1700000000}"#,
        r#"{"data":{"amount":"1e3"},"ts":1700000000}"#,
        r#"{"data":{"amount":100},"ts":-5}"#,
        r#"{"data":{"amount":100},"ts":"2023-11-14T22:13:20Z"}"#,
    ] {
        assert!(
            matches!(
                failure_of(source("typed", serve(Reply::Body(body.to_owned())))),
                SourceError::Malformed { .. }
            ),
            "{body}"
        );
    }
}

#[test]
fn non_positive_price_is_refused() {
    for (body, price) in [
        (r#"{"data":{"amount":0},"ts":1700000000}"#, 0.0),
        (r#"{"data":{"amount":-3.5},"ts":1700000000}"#, -3.5),
        (r#"{"data":{"amount":"-1"},"ts":1700000000}"#, -1.0),
    ] {
        assert_eq!(
            failure_of(source("zero", serve(Reply::Body(body.to_owned())))),
            SourceError::NotPositive {
                name: "zero".to_owned(),
                price
            },
            "{body}"
        );
    }
    // 400 digits parse to infinity: not finite, so not positive either.
    let huge = format!(r#"{{"data":{{"amount":"{}"}},"ts":1700000000}}"#, "9".repeat(400));
    assert!(matches!(
        failure_of(source("inf", serve(Reply::Body(huge)))),
        SourceError::NotPositive { price, .. } if price.is_infinite()
    ));
}

#[test]
fn status_503_is_status() {
    assert_eq!(
        failure_of(source("busy", serve(Reply::Status(503)))),
        SourceError::Status {
            name: "busy".to_owned(),
            status: 503
        }
    );
    assert_eq!(
        failure_of(source("gone", serve(Reply::Status(404)))),
        SourceError::Status {
            name: "gone".to_owned(),
            status: 404
        }
    );
}

#[test]
fn huge_body_is_malformed() {
    // Valid JSON with a valid price: only its size (100 KiB > 64 KiB) is wrong.
    let body = format!(
        r#"{{"data":{{"amount":100}},"ts":{NOW},"pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    assert!(matches!(
        failure_of(source("huge", serve(Reply::Body(body)))),
        SourceError::Malformed { name, reason } if name == "huge" && reason.contains("65536")
    ));
    // Just under the limit is read.
    let pad = 60 * 1024;
    let body = format!(r#"{{"data":{{"amount":100}},"ts":{NOW},"pad":"{}"}}"#, "x".repeat(pad));
    let (quotes, failures) = fetch_quotes(&[source("big", serve(Reply::Body(body)))], &rules(), now());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(quotes.len(), 1);
}

#[test]
fn down_source_is_unreachable() {
    assert!(matches!(failure_of(source("down", down())), SourceError::Unreachable { name, .. } if name == "down"));
}

#[test]
fn only_http_and_https_urls() {
    for url in ["ftp://127.0.0.1/price", "file:///etc/passwd", "127.0.0.1:80/price", ""] {
        assert_eq!(
            failure_of(source("odd", url.to_owned())),
            SourceError::UnsupportedUrl {
                name: "odd".to_owned(),
                url: url.to_owned()
            }
        );
    }
}

#[test]
fn two_of_three_with_one_down_is_decided() {
    let sources = [quoting("a", 100.0, 0), source("down", down()), quoting("c", 100.4, 0)];
    let decision = consensus_price(&sources, &rules(), now(), None).expect("2 of 3");
    assert_close(decision.median, 100.2);
    assert_eq!(decision.quotes.len(), 2);
    assert!(
        matches!(&decision.failures[..], [SourceError::Unreachable { name, .. }] if name == "down"),
        "{:?}",
        decision.failures
    );
}

#[test]
fn two_of_three_with_two_down_is_not_enough() {
    let sources = [quoting("a", 100.0, 0), source("down1", down()), source("down2", down())];
    let err = consensus_price(&sources, &rules(), now(), None).expect_err("1 of 3, 2 needed");
    let PriceError::NotEnoughSources {
        fresh,
        needed,
        failures,
    } = err
    else {
        panic!("expected NotEnoughSources, got {err:?}");
    };
    assert_eq!((fresh, needed), (1, 2));
    assert_eq!(
        failures.iter().map(SourceError::source_name).collect::<Vec<_>>(),
        ["down1", "down2"]
    );
}

#[test]
fn circuit_breaker() {
    let sources = [quoting("a", 130.0, 0), quoting("b", 130.0, 0), quoting("c", 130.0, 0)];
    let rules = PriceRules {
        max_move_bps: Some(2000),
        ..rules()
    };

    let err = consensus_price(&sources, &rules, now(), Some(100.0)).expect_err("a 30 % move");
    assert_eq!(
        err,
        PriceError::CircuitBreaker {
            last: 100.0,
            median: 130.0,
            move_bps: 3000,
            max_bps: 2000
        }
    );

    // 130 / 115 is a 13 % move: inside the 20 % breaker.
    let decision = consensus_price(&sources, &rules, now(), Some(115.0)).expect("a 13 % move");
    assert_close(decision.median, 130.0);

    // No last value: nothing to compare with.
    let decision = consensus_price(&sources, &rules, now(), None).expect("first attestation");
    assert_close(decision.median, 130.0);

    // No breaker configured: any move passes.
    let unlimited = PriceRules {
        max_move_bps: None,
        ..rules
    };
    let decision = consensus_price(&sources, &unlimited, now(), Some(1.0)).expect("no breaker");
    assert_close(decision.median, 130.0);
}

#[test]
fn circuit_breaker_in_decide_is_exact_at_the_limit() {
    let quotes = |p: f64| {
        vec![Quote {
            source: "a".to_owned(),
            price: p,
            time: now(),
        }]
    };
    let rules = PriceRules {
        min_sources: 1,
        max_move_bps: Some(2000),
        ..PriceRules::default()
    };
    assert!(decide(quotes(120.0), vec![], &rules, Some(100.0)).is_ok());
    assert!(decide(quotes(80.0), vec![], &rules, Some(100.0)).is_ok());
    assert!(matches!(
        decide(quotes(79.0), vec![], &rules, Some(100.0)),
        Err(PriceError::CircuitBreaker { move_bps: 2100, .. })
    ));
    for bad_last in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                decide(quotes(100.0), vec![], &rules, Some(bad_last)),
                Err(PriceError::InvalidRules(_))
            ),
            "{bad_last}"
        );
    }
}

#[test]
fn invalid_rules() {
    // All three point at a refused port: an InvalidRules answer must not depend on the network.
    let sources = [source("a", down()), source("b", down()), source("c", down())];
    for min_sources in [0, 4] {
        let rules = PriceRules { min_sources, ..rules() };
        let err = consensus_price(&sources, &rules, now(), None).expect_err("impossible rules");
        assert!(
            matches!(err, PriceError::InvalidRules(_)),
            "min_sources {min_sources}: {err:?}"
        );
    }
    let err = consensus_price(&[], &rules(), now(), None).expect_err("no sources");
    assert!(matches!(err, PriceError::InvalidRules(_)), "{err:?}");
    let err = consensus_price(
        &sources,
        &PriceRules {
            timeout_ms: 0,
            ..rules()
        },
        now(),
        None,
    )
    .expect_err("no time");
    assert!(matches!(err, PriceError::InvalidRules(_)), "{err:?}");

    // `decide` counts quotes and failures as the sources.
    let one = vec![Quote {
        source: "a".to_owned(),
        price: 1.0,
        time: now(),
    }];
    let err = decide(
        one,
        vec![],
        &PriceRules {
            min_sources: 2,
            ..rules()
        },
        None,
    )
    .expect_err("2 of 1");
    assert!(matches!(err, PriceError::InvalidRules(_)), "{err:?}");
    let err = decide(vec![], vec![], &rules(), None).expect_err("nothing");
    assert!(matches!(err, PriceError::InvalidRules(_)), "{err:?}");
}

#[test]
fn decide_moves_unusable_quotes_to_failures() {
    let quotes = vec![
        Quote {
            source: "a".to_owned(),
            price: 100.0,
            time: now(),
        },
        Quote {
            source: "nan".to_owned(),
            price: f64::NAN,
            time: now(),
        },
        Quote {
            source: "b".to_owned(),
            price: 100.0,
            time: now(),
        },
    ];
    let decision = decide(quotes, vec![], &rules(), None).expect("two good quotes");
    assert_close(decision.median, 100.0);
    assert_eq!(decision.quotes.len(), 2);
    assert!(
        matches!(&decision.failures[..], [SourceError::NotPositive { name, price }] if name == "nan" && price.is_nan())
    );
}

#[test]
fn price_rules_and_sources_round_trip_through_json() {
    let rules = PriceRules::default();
    let json = serde_json::to_string(&rules).expect("serialize rules");
    assert_eq!(serde_json::from_str::<PriceRules>(&json).expect("parse rules"), rules);
    let parsed: PriceSource =
        serde_json::from_str(r#"{"name":"x","url":"https://example.org","price_pointer":"/p"}"#).expect("parse source");
    assert_eq!(parsed.time_pointer, None);
}

fn price() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 95.0..105.0_f64,
        2 => 1e-300..1e300_f64,
        1 => any::<f64>(),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(f64::MAX),
        1 => Just(0.0),
    ]
}

proptest! {
    #[test]
    fn decide_never_panics_and_ok_is_consistent(
        prices in prop::collection::vec(price(), 0..8),
        failed in 0_usize..3,
        min_sources in 0_usize..6,
        max_deviation_bps in prop_oneof![0_u32..1000, any::<u32>()],
        max_move_bps in prop::option::of(any::<u32>()),
        last_attested in prop::option::of(prop_oneof![95.0..105.0_f64, any::<f64>()]),
    ) {
        let quotes: Vec<Quote> = prices
            .iter()
            .enumerate()
            .map(|(i, &price)| Quote { source: format!("q{i}"), price, time: now() })
            .collect();
        let failures: Vec<SourceError> = (0..failed)
            .map(|i| SourceError::Unreachable { name: format!("f{i}"), reason: "down".to_owned() })
            .collect();
        let total = quotes.len() + failures.len();
        let rules = PriceRules { min_sources, max_age_secs: 60, max_deviation_bps, max_move_bps, timeout_ms: 1 };

        match decide(quotes, failures, &rules, last_attested) {
            Ok(decision) => {
                // Nothing dropped silently.
                prop_assert_eq!(decision.quotes.len() + decision.failures.len(), total);
                prop_assert!(decision.quotes.len() >= min_sources && min_sources >= 1);
                let min = decision.quotes.iter().map(|q| q.price).fold(f64::INFINITY, f64::min);
                let max = decision.quotes.iter().map(|q| q.price).fold(f64::NEG_INFINITY, f64::max);
                let m = decision.median;
                prop_assert!(m.is_finite() && m > 0.0, "median {}", m);
                prop_assert!(min <= m && m <= max, "median {} outside [{}, {}]", m, min, max);
                for q in &decision.quotes {
                    prop_assert!(q.price.is_finite() && q.price > 0.0);
                    let bps = (q.price - m).abs() / m * 10_000.0;
                    prop_assert!(bps <= f64::from(max_deviation_bps), "{} is {} bps from {}", q.price, bps, m);
                }
                if let (Some(last), Some(max_move)) = (last_attested, max_move_bps) {
                    prop_assert!((m - last).abs() / last * 10_000.0 <= f64::from(max_move));
                }
            }
            Err(PriceError::NotEnoughSources { fresh, needed, failures }) => {
                prop_assert_eq!(fresh + failures.len(), total);
                prop_assert!(fresh < needed);
            }
            Err(PriceError::Spread { deviation_bps, max_bps, .. }) => {
                prop_assert!(deviation_bps > max_bps || deviation_bps == u32::MAX);
            }
            Err(PriceError::CircuitBreaker { move_bps, max_bps, .. }) => {
                prop_assert!(move_bps > max_bps || move_bps == u32::MAX);
            }
            Err(PriceError::InvalidRules(_)) => {
                let bad_last = last_attested.is_some_and(|l| !(l.is_finite() && l > 0.0));
                prop_assert!(total == 0 || min_sources == 0 || min_sources > total || bad_last);
            }
            Err(other) => prop_assert!(false, "unknown error {:?}", other),
        }
    }
}
