//! `anya oracle`: the real binary on a temporary data directory with a rollback anchor; every
//! message it prints is parsed and verified as a DLC counterparty would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anya_layer2::dlc::messages::{EventDescriptor, OracleAnnouncement, OracleAttestation};
use lightning::util::ser::Writeable;
use secp256k1::{Secp256k1, XOnlyPublicKey};

mod common;
use common::ok;

const PASS: &str = "correct horse battery staple";
/// 2023-11-14: long past, so events mature at once.
const PAST: &str = "1700000000";
/// 2096: not yet.
const FUTURE: &str = "4000000000";

/// A data directory and, beside it, the anchor directory (both under one temp dir).
struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    anchor: PathBuf,
}

impl Env {
    /// A keystore made with its anchor.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Self {
            data: dir.path().join("data"),
            anchor: dir.path().join("anchor"),
            _dir: dir,
        };
        ok(&env.run(&["hsm", "init"]));
        env
    }

    /// `anya --anchor-dir ANCHOR ARGS…`.
    fn run(&self, args: &[&str]) -> Output {
        run(&self.data, Some(&self.anchor), args)
    }

    /// `anya oracle init`, checked: the oracle's x-only key.
    fn init(&self) -> XOnlyPublicKey {
        let out = ok(&self.run(&["oracle", "init"]));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert_eq!(out.trim().len(), 64, "{out}");
        out.trim().parse().expect("x-only public key in hex")
    }
}

fn run(data: &Path, anchor: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anya"));
    command
        .arg("--data-dir")
        .arg(data)
        .env("ANYA_PASSPHRASE", PASS)
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_ANCHOR_DIR");
    if let Some(anchor) = anchor {
        command.arg("--anchor-dir").arg(anchor);
    }
    command.args(args).output().expect("run anya")
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "anya should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stderr
}

fn announcement(out: &Output) -> OracleAnnouncement {
    serde_json::from_str(&ok(out)).expect("an announcement in JSON")
}

fn attestation(out: &Output) -> OracleAttestation {
    serde_json::from_str(&ok(out)).expect("an attestation in JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The integer that binary (or any base's) digit outcomes spell, most significant first.
fn compose(base: i64, digits: &[String]) -> i64 {
    digits
        .iter()
        .fold(0, |acc, d| acc * base + d.parse::<i64>().expect("a digit"))
}

#[test]
fn init_prints_the_oracle_key_once_made() {
    let env = Env::new();
    let out = env.run(&["oracle", "init"]);
    let key: XOnlyPublicKey = ok(&out).trim().parse().expect("x-only key");
    assert!(String::from_utf8_lossy(&out.stderr).contains("created the oracle key `oracle`"));
    // Again: the same key, nothing made.
    let again = env.run(&["oracle", "init"]);
    assert_eq!(ok(&again).trim(), key.to_string());
    assert!(again.stderr.is_empty(), "{}", String::from_utf8_lossy(&again.stderr));
    // It is the keystore's key `oracle`, not exportable (key list prints it compressed).
    let list = ok(&env.run(&["key", "list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with("oracle\t"))
        .expect("oracle key listed");
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[..3], ["oracle", "secp256k1", "non-exportable"]);
    assert_eq!(hex(fields[3])[1..], key.serialize());
}

#[test]
fn oracle_needs_a_keystore_and_its_init() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, anchor) = (dir.path().join("data"), dir.path().join("anchor"));
    let err = failed(&run(&data, Some(&anchor), &["oracle", "init"]));
    assert!(err.contains("run `anya hsm init` first"), "{err}");
    ok(&run(&data, Some(&anchor), &["hsm", "init"]));
    let err = failed(&run(
        &data,
        Some(&anchor),
        &[
            "oracle",
            "event",
            "create-enum",
            "e1",
            "--maturity",
            PAST,
            "--outcome",
            "a",
        ],
    ));
    assert!(err.contains("run `anya oracle init` first"), "{err}");
    let err = failed(&run(&data, Some(&anchor), &["oracle", "show"]));
    assert!(err.contains("run `anya oracle init` first"), "{err}");
}

#[test]
fn oracle_refuses_to_run_without_an_anchor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, anchor) = (dir.path().join("data"), dir.path().join("anchor"));
    ok(&run(&data, None, &["hsm", "init"]));
    let commands: [&[&str]; 5] = [
        &["oracle", "init"],
        &[
            "oracle",
            "event",
            "create-enum",
            "e1",
            "--maturity",
            PAST,
            "--outcome",
            "a",
        ],
        &[
            "oracle",
            "event",
            "create-numeric",
            "n1",
            "--maturity",
            PAST,
            "--digits",
            "20",
        ],
        &["oracle", "attest", "e1", "--outcome", "a"],
        &["oracle", "show"],
    ];
    for args in commands {
        let err = failed(&run(&data, None, args));
        assert!(
            err.contains("rollback anchor") && err.contains("--anchor-dir") && err.contains("ANYA_ANCHOR_DIR"),
            "{args:?}: {err}"
        );
    }
    // Refused before anything was done: no key was made.
    let keys = ok(&run(&data, None, &["key", "list"]));
    assert!(!keys.contains("oracle"), "{keys}");
    // ANYA_ANCHOR_DIR counts as --anchor-dir.
    let out = Command::new(env!("CARGO_BIN_EXE_anya"))
        .arg("--data-dir")
        .arg(&data)
        .args(["oracle", "init"])
        .env("ANYA_PASSPHRASE", PASS)
        .env("ANYA_ANCHOR_DIR", &anchor)
        .env_remove("ANYA_DATA_DIR")
        .output()
        .expect("run anya");
    let key: XOnlyPublicKey = ok(&out).trim().parse().expect("x-only key");
    let keys = ok(&run(&data, None, &["key", "list"]));
    assert!(
        keys.lines()
            .any(|l| l.starts_with("oracle\t") && l.ends_with(&key.to_string())),
        "{keys}"
    );
    assert!(anchor.is_dir(), "the anchor directory was made");
}

#[test]
fn enum_event_is_attested_for_one_outcome_and_verifies() {
    let env = Env::new();
    let key = env.init();
    let secp = Secp256k1::verification_only();

    let ann = announcement(&env.run(&[
        "oracle",
        "event",
        "create-enum",
        "match-42",
        "--maturity",
        PAST,
        "--outcome",
        "home",
        "--outcome",
        "away",
        "--outcome",
        "draw",
    ]));
    ann.validate(&secp).expect("announcement signature and event verify");
    assert_eq!(ann.oracle_public_key, key);
    assert_eq!(ann.oracle_event.event_id, "match-42");
    assert_eq!(ann.oracle_event.event_maturity_epoch, 1_700_000_000);
    assert_eq!(ann.oracle_event.oracle_nonces.len(), 1);
    match &ann.oracle_event.event_descriptor {
        EventDescriptor::EnumEvent(d) => assert_eq!(d.outcomes, ["home", "away", "draw"]),
        other => panic!("not an enum event: {other:?}"),
    }
    // One id, one announcement.
    let err = failed(&env.run(&[
        "oracle",
        "event",
        "create-enum",
        "match-42",
        "--maturity",
        PAST,
        "--outcome",
        "x",
    ]));
    assert!(err.contains("already exists"), "{err}");

    // Not attested yet.
    let shown: serde_json::Value = serde_json::from_str(&ok(&env.run(&["oracle", "show", "match-42"]))).expect("json");
    assert!(shown["attestation"].is_null(), "{shown}");
    let err = failed(&env.run(&["oracle", "attest", "match-42", "--outcome", "maybe"]));
    assert!(err.contains("no outcome \"maybe\""), "{err}");
    let err = failed(&env.run(&["oracle", "attest", "match-42", "--value", "1"]));
    assert!(err.contains("\"match-42\" is a enum event"), "{err}");

    let first = env.run(&["oracle", "attest", "match-42", "--outcome", "home"]);
    let att = attestation(&first);
    att.validate(&secp, &ann)
        .expect("attestation verifies against the announcement");
    assert_eq!(att.outcomes, ["home"]);
    assert_eq!(att.event_id, "match-42");

    // The same outcome again: the same attestation, byte for byte.
    let again = env.run(&["oracle", "attest", "match-42", "--outcome", "home"]);
    assert_eq!(ok(&again), ok(&first));
    // Another outcome: refused, nothing printed.
    let err = failed(&env.run(&["oracle", "attest", "match-42", "--outcome", "away"]));
    assert!(err.contains("already attested as [\"home\"], not [\"away\"]"), "{err}");

    // show: both messages, as JSON and in the spec's serialization.
    let shown: serde_json::Value = serde_json::from_str(&ok(&env.run(&["oracle", "show", "match-42"]))).expect("json");
    let shown_ann: OracleAnnouncement = serde_json::from_value(shown["announcement"].clone()).expect("announcement");
    let shown_att: OracleAttestation = serde_json::from_value(shown["attestation"].clone()).expect("attestation");
    assert_eq!((shown_ann.clone(), shown_att.clone()), (ann.clone(), att.clone()));
    let lines = ok(&env.run(&["oracle", "show", "match-42", "--hex"]));
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(hex(lines[0]), ann.encode());
    assert_eq!(hex(lines[1]), att.encode());
    let hex_att = ok(&env.run(&["oracle", "attest", "match-42", "--outcome", "home", "--hex"]));
    assert_eq!(hex(hex_att.trim()), att.encode());

    // The list.
    ok(&env.run(&[
        "oracle",
        "event",
        "create-enum",
        "later",
        "--maturity",
        FUTURE,
        "--outcome",
        "a",
    ]));
    let list = ok(&env.run(&["oracle", "show"]));
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        [
            "later\t4000000000\tenum\tnot attested",
            "match-42\t1700000000\tenum\tattested home"
        ]
    );
}

#[test]
fn attesting_before_maturity_is_refused() {
    let env = Env::new();
    env.init();
    let hex_ann = ok(&env.run(&[
        "oracle",
        "event",
        "create-enum",
        "later",
        "--maturity",
        FUTURE,
        "--outcome",
        "a",
        "--outcome",
        "b",
        "--hex",
    ]));
    let shown = ok(&env.run(&["oracle", "show", "later", "--hex"]));
    assert_eq!(shown, hex_ann, "only the announcement, as create printed it");
    let err = failed(&env.run(&["oracle", "attest", "later", "--outcome", "a"]));
    assert!(err.contains("matures at 4000000000"), "{err}");
    // Nothing was fixed: the event is still open.
    assert_eq!(
        ok(&env.run(&["oracle", "show"])).trim(),
        "later\t4000000000\tenum\tnot attested"
    );
}

#[test]
fn numeric_event_of_20_binary_digits_is_attested_and_verifies() {
    let env = Env::new();
    let key = env.init();
    let secp = Secp256k1::verification_only();

    let ann = announcement(&env.run(&[
        "oracle",
        "event",
        "create-numeric",
        "btcusd",
        "--maturity",
        PAST,
        "--digits",
        "20",
        "--unit",
        "usd/btc",
    ]));
    ann.validate(&secp).expect("announcement verifies");
    assert_eq!(ann.oracle_public_key, key);
    assert_eq!(ann.oracle_event.oracle_nonces.len(), 20);
    match &ann.oracle_event.event_descriptor {
        EventDescriptor::DigitDecompositionEvent(d) => {
            assert_eq!((d.base, d.nb_digits, d.is_signed, d.precision), (2, 20, false, 0));
            assert_eq!(d.unit, "usd/btc");
        }
        other => panic!("not a numeric event: {other:?}"),
    }
    let err = failed(&env.run(&["oracle", "attest", "btcusd", "--outcome", "1"]));
    assert!(err.contains("\"btcusd\" is a numeric event"), "{err}");

    let first = env.run(&["oracle", "attest", "btcusd", "--value", "97250"]);
    assert!(first.stderr.is_empty(), "{}", String::from_utf8_lossy(&first.stderr));
    let att = attestation(&first);
    att.validate(&secp, &ann).expect("every digit's signature verifies");
    assert_eq!(att.outcomes.len(), 20);
    assert_eq!(compose(2, &att.outcomes), 97_250);
    assert_eq!(
        ok(&env.run(&["oracle", "attest", "btcusd", "--value", "97250"])),
        ok(&first)
    );
    let err = failed(&env.run(&["oracle", "attest", "btcusd", "--value", "97251"]));
    assert!(err.contains("already attested"), "{err}");

    // Signed, base 10, a negative value and a precision.
    let ann = announcement(&env.run(&[
        "oracle",
        "event",
        "create-numeric",
        "rate",
        "--maturity",
        PAST,
        "--digits",
        "5",
        "--base",
        "10",
        "--signed",
        "--precision",
        "-2",
    ]));
    assert_eq!(ann.oracle_event.oracle_nonces.len(), 6, "a sign and 5 digits");
    let att = attestation(&env.run(&["oracle", "attest", "rate", "--value", "-1234"]));
    att.validate(&secp, &ann).expect("signed attestation verifies");
    assert_eq!(att.outcomes, ["-", "0", "1", "2", "3", "4"]);

    // A value the digits cannot hold is clamped, and said so.
    ok(&env.run(&[
        "oracle",
        "event",
        "create-numeric",
        "small",
        "--maturity",
        PAST,
        "--digits",
        "4",
    ]));
    let out = env.run(&["oracle", "attest", "small", "--value", "100"]);
    assert_eq!(attestation(&out).outcomes, ["1", "1", "1", "1"]);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("attested 15") && note.contains("clamped"), "{note}");

    let list = ok(&env.run(&["oracle", "show"]));
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        [
            "btcusd\t1700000000\tnumeric\tattested 97250 usd/btc",
            "rate\t1700000000\tnumeric\tattested -1234e-2",
            "small\t1700000000\tnumeric\tattested 15",
        ]
    );
}
