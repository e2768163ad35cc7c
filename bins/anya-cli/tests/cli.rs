//! Runs the real `anya` binary on a temporary data directory.

use std::process::{Command, Output};

use secp256k1::{ecdsa, schnorr, Message, PublicKey, Secp256k1, XOnlyPublicKey};

const PASS: &str = "correct horse battery staple";
const DIGEST: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn anya(dir: &std::path::Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anya"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("ANYA_PASSPHRASE", pass)
        .env_remove("ANYA_DATA_DIR")
        .output()
        .expect("run anya")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "anya failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn init_key_sign_verify_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    assert!(ok(&anya(&data, PASS, &["hsm", "init"])).contains("created keystore"));
    assert!(ok(&anya(&data, PASS, &["hsm", "unlock-check"])).contains("passphrase is correct"));

    let line = ok(&anya(&data, PASS, &["key", "new", "treasury", "--type", "secp256k1"]));
    let fields: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(fields[..3], ["treasury", "secp256k1", "non-exportable"]);
    let pk = PublicKey::from_slice(&hex(fields[3])).expect("public key");
    ok(&anya(
        &data,
        PASS,
        &["key", "new", "web", "--type", "ed25519", "--exportable"],
    ));

    let list = ok(&anya(&data, PASS, &["key", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("treasury\tsecp256k1\t"));
    assert!(lines[1].starts_with("web\ted25519\texportable\t"));

    let secp = Secp256k1::verification_only();
    let msg = Message::from_digest(hex(DIGEST).try_into().expect("32 bytes"));
    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "ecdsa", "--message-hex", DIGEST],
    ));
    let sig = ecdsa::Signature::from_der(&hex(sig.trim())).expect("DER signature");
    secp.verify_ecdsa(&msg, &sig, &pk).expect("ecdsa signature verifies");

    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "schnorr", "--message-hex", DIGEST],
    ));
    let sig = schnorr::Signature::from_slice(&hex(sig.trim())).expect("BIP340 signature");
    secp.verify_schnorr(&sig, &msg, &XOnlyPublicKey::from(pk))
        .expect("bip340 signature verifies");

    // A 31-byte digest is refused with a clear message.
    let out = anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "ecdsa", "--message-hex", "00"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32-byte digest"));

    let summary = ok(&anya(&data, PASS, &["audit", "verify"]));
    assert!(summary.starts_with("audit chain ok: "), "{summary}");
    let records: u64 = summary
        .trim_start_matches("audit chain ok: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("record count");
    // create, then per command an unlock and its operations: at least one record each.
    assert!(records >= 12, "{summary}");
}

#[test]
fn p256_key_signs_es256_any_message() {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let line = ok(&anya(&data, PASS, &["key", "new", "webauthn", "--type", "p256"]));
    let fields: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(fields[..3], ["webauthn", "p256", "non-exportable"]);
    let pk = hex(fields[3]);
    assert_eq!((pk.len(), pk[0]), (65, 0x04), "uncompressed SEC1 point");
    // Any length: P-256 signs SHA-256 of the message itself.
    let message = "68656c6c6f";
    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "webauthn", "--scheme", "p256", "--message-hex", message],
    ));
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &pk)
        .verify(b"hello", &hex(sig.trim()))
        .expect("DER p-256 signature verifies");
    // A P-256 key is not a secp256k1 key.
    let out = anya(
        &data,
        PASS,
        &["sign", "webauthn", "--scheme", "ecdsa", "--message-hex", DIGEST],
    );
    assert!(!out.status.success());
}

#[test]
fn wrong_passphrase_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let out = anya(&data, "not the passphrase", &["hsm", "unlock-check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: wrong passphrase");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_keystore_and_second_init_fail_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = anya(&data, PASS, &["key", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `anya hsm init` first"));
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let out = anya(&data, PASS, &["hsm", "init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
