//! Oracle nonces under SIGKILL (issue 12): a process signing with committed nonces from two
//! threads is killed at random moments, again and again, on one keystore (SQLite, with a file
//! rollback anchor). After every restart, and at the end:
//! - no nonce ever signed two messages (every acknowledged signature of a nonce is the same);
//! - every nonce whose signature was asked for can still give it, for the message it was
//!   consumed for: asking again returns the acknowledged signature (or, for a request the kill
//!   cut short, a valid signature with the committed R), and any other message is refused.
#![allow(clippy::print_stderr, reason = "the test reports its counts")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anya_hsm::anchor::FileAnchor;
use anya_hsm::{
    HsmError, HsmProvider, KdfParams, KeyRef, Label, PublicKey, SecretString, SoftwareHsm, SoftwareOptions,
};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::secp256k1::{Message, Secp256k1};
use rand::Rng;

mod common;

const KILLS: u32 = 16;

/// What one run printed before it was killed.
#[derive(Debug, Default)]
struct Run {
    requested: Vec<(u32, String)>,
    signed: Vec<(u32, String, String)>,
    refused: usize,
}

fn run_oracle(dir: &Path, run: u32, delay: Duration) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_anya-kill-oracle"));
    cmd.args([dir.to_str().expect("utf-8 temp path"), &format!("run{run:03}")]);
    let mut r = Run::default();
    for line in common::run_and_kill(cmd, delay) {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["REQ", n, m] => r.requested.push((n.parse().expect("nonce"), (*m).to_owned())),
            ["SIG", n, m, s] => r
                .signed
                .push((n.parse().expect("nonce"), (*m).to_owned(), (*s).to_owned())),
            ["USED", _, _] => r.refused += 1,
            other => panic!("unexpected line {other:?}"),
        }
    }
    r
}

fn open(dir: &Path) -> SoftwareHsm {
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.join("hsm.db"), SqliteOptions::default()).expect("store"));
    let anchor = Arc::new(FileAnchor::open(dir.join("anchor")).expect("anchor"));
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(anchor);
    let hsm = SoftwareHsm::open(store, options).expect("open");
    hsm.unlock(&SecretString::from("kill-oracle")).expect("unlock");
    hsm
}

#[test]
fn killed_oracles_never_sign_two_messages_with_one_nonce_and_keep_every_signature() {
    let dir = tempfile::tempdir().expect("dir");
    let mut rng = rand::thread_rng();
    // nonce → message → signatures acknowledged for it; nonce → messages asked for.
    let mut acked: BTreeMap<u32, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut asked: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let (mut signatures, mut refusals) = (0usize, 0usize);
    for run in 0..KILLS {
        let r = run_oracle(dir.path(), run, Duration::from_millis(rng.gen_range(30..300)));
        signatures += r.signed.len();
        refusals += r.refused;
        for (n, m) in r.requested {
            asked.entry(n).or_default().insert(m);
        }
        for (n, m, s) in r.signed {
            acked.entry(n).or_default().entry(m).or_default().insert(s);
        }
        for (n, by_message) in &acked {
            assert_eq!(
                by_message.len(),
                1,
                "after run {run}, nonce {n} signed two messages: {by_message:?}"
            );
            let sigs = by_message.values().next().expect("one message");
            assert_eq!(
                sigs.len(),
                1,
                "after run {run}, nonce {n} gave two signatures: {sigs:?}"
            );
        }
    }
    eprintln!(
        "{KILLS} kills: {signatures} signatures acknowledged over {} nonces, {refusals} refusals, {} nonces asked for",
        acked.len(),
        asked.len()
    );
    assert!(signatures > 0, "the oracle never signed before it was killed");

    let hsm = open(dir.path());
    let key = Label::new("oracle").expect("label");
    let PublicKey::Secp256k1(pk) = hsm.public_key(KeyRef::Key(&key)).expect("public key") else {
        panic!("a secp256k1 key")
    };
    let (xonly, _) = pk.x_only_public_key();
    let secp = Secp256k1::verification_only();
    for (n, messages) in &asked {
        let nonce = Label::new(format!("n{n}")).expect("label");
        let mut answered = Vec::new();
        for m in messages {
            let digest: [u8; 32] = <[u8; 32]>::from_hex(m).expect("hex");
            match hsm.sign_with_nonce(&key, &nonce, &digest) {
                Ok(sig) => {
                    secp.verify_schnorr(&sig, &Message::from_digest(digest), &xonly)
                        .expect("a valid signature");
                    answered.push((m.clone(), sig));
                }
                Err(HsmError::NonceAlreadyUsed { .. }) => {}
                Err(e) => panic!("nonce {n}: {e}"),
            }
        }
        // Exactly one of the messages asked for is the nonce's (a nonce asked for once and
        // never consumed signs it now, which also makes it the nonce's).
        assert_eq!(answered.len(), 1, "nonce {n}: {answered:?}");
        let (m, sig) = &answered[0];
        if let Some(by_message) = acked.get(n) {
            let (acked_m, sigs) = by_message.iter().next().expect("one message");
            assert_eq!(acked_m, m, "nonce {n} now signs another message than it acknowledged");
            let acked_sig = sigs.iter().next().expect("one signature");
            assert_eq!(
                &sig.as_ref().to_lower_hex_string(),
                acked_sig,
                "nonce {n}: another signature"
            );
        }
    }
    hsm.verify_audit_chain().expect("the chain verifies after every kill");
}
