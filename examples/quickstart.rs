//! The anya tour on embedded defaults: a durable SQLite store, atomic batches and
//! compare-and-swap that loses no update under contention; then a software HSM keystore in the
//! same store signing with ECDSA, BIP340, Taproot (BIP86 key path) and Ed25519 — every signature
//! checked with bare secp256k1 or ring — and its hash-chained audit log verified.
//!
//! `cargo run --release --example quickstart [DATA_DIR]` (a temporary directory by default).
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::time::Instant;

use anya_core_types::{Clock, SystemClock};
use anya_hsm::{
    AuxRand, HsmProvider, KeyPolicy, KeyRef, KeySpec, Label, MnemonicLength, PublicKey, SecretString, SoftwareHsm,
    SoftwareOptions,
};
use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore, StoreError, WriteBatch};
use bitcoin::bip32::DerivationPath;
use bitcoin::key::TapTweak;
use bitcoin::{Address, KnownHrp};
use secp256k1::{Message, Secp256k1};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("anya.db");
    println!("anya quickstart — store at {}", path.display());

    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default())?);
    let events = Namespace::new("quickstart/events")?;
    let counters = Namespace::new("quickstart/counters")?;

    // 1. An atomic batch: ten events and a counter land together or not at all.
    let now = SystemClock.now().as_secs();
    let mut batch = WriteBatch::new();
    for i in 0..10u32 {
        batch.put(&events, format!("{now}-{i:02}"), format!("event {i}"))?;
    }
    batch.put(&counters, "events", 10u64.to_le_bytes())?;
    let v = store.write(batch)?;
    println!("1. wrote a batch of 11 records atomically at version {v}");

    // 2. Compare-and-swap from 8 threads: 8 × 100 increments, none lost.
    let started = Instant::now();
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| -> Result<(), StoreError> {
                for _ in 0..100 {
                    loop {
                        let cur = store.get(&counters, b"events")?.expect("written in step 1");
                        let n = u64::from_le_bytes(cur.value.as_slice().try_into().expect("8-byte counter"));
                        match store.compare_and_swap(
                            &counters,
                            b"events",
                            Some(cur.version),
                            Some(&(n + 1).to_le_bytes()),
                        ) {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            });
        }
    });
    let counter = store.get(&counters, b"events")?.expect("counter");
    let n = u64::from_le_bytes(counter.value.as_slice().try_into().expect("8-byte counter"));
    println!(
        "2. 8 threads × 100 CAS increments: counter = {n} (expected 810), {} retries after conflicts, {:.0?}",
        conflicts.into_inner(),
        started.elapsed()
    );
    assert_eq!(n, 810, "compare-and-swap lost an update");

    // 3. Durability: reopen and read everything back in key order.
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default())?;
    let entries = store.scan(&events, Scan::all())?;
    println!(
        "3. reopened: {} events in key order, first {:?}",
        entries.len(),
        String::from_utf8_lossy(&entries[0].key)
    );

    // 4. Bad input is a typed error, and the store is untouched.
    let foreign = dir.join("not-a-database.db");
    std::fs::write(&foreign, b"{\"hello\": \"world\"}")?;
    match SqliteStore::open(&foreign, SqliteOptions::default()) {
        Err(e @ StoreError::NotAnAnyaStore { .. }) => println!("4. refused a JSON file: {e}"),
        other => return Err(format!("expected NotAnAnyaStore, got {other:?}").into()),
    }
    store.check_integrity()?;
    println!("   integrity check passed");

    hsm_tour(Arc::new(store), now)?;
    Ok(())
}

/// A keystore in the same store: keys, four signature schemes, the audit chain.
fn hsm_tour(store: Arc<SqliteStore>, run: u64) -> Result<(), Box<dyn std::error::Error>> {
    // 5. A keystore sealed under a passphrase with the default Argon2id (64 MiB, 3 passes):
    // derived once here; the keystore stays unlocked. Each run gets its own namespace prefix,
    // so the example can run again on the same data directory.
    let started = Instant::now();
    let passphrase = SecretString::from("quickstart passphrase: use your own");
    let options = SoftwareOptions::default().with_namespace_prefix(format!("quickstart.{run}.hsm"));
    let hsm = SoftwareHsm::create(store, &passphrase, options)?;
    println!(
        "5. created a sealed keystore (Argon2id 64 MiB, 3 passes) in {:.0?}",
        started.elapsed()
    );

    let treasury = Label::new("treasury")?;
    let issuer = Label::new("issuer")?;
    let wallet = Label::new("wallet")?;
    hsm.generate_key(
        &treasury,
        KeySpec::Secp256k1,
        KeyPolicy::default_for(KeySpec::Secp256k1),
    )?;
    hsm.generate_key(&issuer, KeySpec::Ed25519, KeyPolicy::default_for(KeySpec::Ed25519))?;
    let (_, mnemonic) = hsm.generate_mnemonic(
        &wallet,
        MnemonicLength::Words12,
        &SecretString::from(""),
        KeyPolicy::default_for(KeySpec::Bip32Root),
    )?;
    // The mnemonic is the wallet's backup: hand it to the operator once, never log it.
    println!(
        "6. generated keys: treasury (secp256k1), issuer (Ed25519), wallet (BIP32 root from a {}-word BIP39 mnemonic)",
        mnemonic.expose().split_whitespace().count()
    );
    drop(mnemonic);

    let secp = Secp256k1::verification_only();
    let digest = [0x42u8; 32];
    let msg = Message::from_digest(digest);
    let PublicKey::Secp256k1(treasury_pk) = hsm.public_key(KeyRef::Key(&treasury))? else {
        return Err("treasury is a secp256k1 key".into());
    };

    // 7. ECDSA (RFC 6979, low-S), checked with bare secp256k1.
    let sig = hsm.sign_ecdsa(KeyRef::Key(&treasury), &digest)?;
    secp.verify_ecdsa(&msg, &sig, &treasury_pk)?;
    println!("7. ECDSA signature verified by secp256k1: {}", sig.serialize_der());

    // 8. BIP340 Schnorr.
    let sig = hsm.sign_schnorr(KeyRef::Key(&treasury), &digest, AuxRand::Fresh)?;
    secp.verify_schnorr(&sig, &msg, &treasury_pk.x_only_public_key().0)?;
    println!("8. BIP340 signature verified by secp256k1: {sig}");

    // 9. Taproot key path at BIP86's m/86'/0'/0'/0/0: the provider derives the child and applies
    // the BIP341 tweak inside; the signature verifies against the output key of the address.
    let path: DerivationPath = "m/86'/0'/0'/0/0".parse()?;
    let PublicKey::Secp256k1(internal) = hsm.public_key(KeyRef::derived(&wallet, &path))? else {
        return Err("a BIP32 child is a secp256k1 key".into());
    };
    let internal = internal.x_only_public_key().0;
    let address = Address::p2tr(&secp, internal, None, KnownHrp::Mainnet);
    let (output_key, _) = internal.tap_tweak(&secp, None);
    let sighash = [0x07u8; 32];
    let sig = hsm.sign_taproot_key_spend(KeyRef::derived(&wallet, &path), &sighash, None, AuxRand::Fresh)?;
    secp.verify_schnorr(&sig, &Message::from_digest(sighash), &output_key.to_x_only_public_key())?;
    println!("9. Taproot key-path signature for {address} ({path}) verified by secp256k1");

    // 10. Ed25519, checked with ring.
    let PublicKey::Ed25519(issuer_pk) = hsm.public_key(KeyRef::Key(&issuer))? else {
        return Err("issuer is an Ed25519 key".into());
    };
    let credential = b"{\"id\":\"did:example:alice\",\"degree\":\"BSc\"}";
    let sig = hsm.sign_ed25519(&issuer, credential)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, issuer_pk)
        .verify(credential, &sig.0)
        .map_err(|_| "Ed25519 signature does not verify")?;
    println!("10. Ed25519 signature over a credential verified by ring");

    // 11. Every call above left a record in the hash-chained audit log, durable before the call
    // returned; verification walks the chain and checks its head.
    let summary = hsm.verify_audit_chain()?;
    let head: String = summary.head.iter().map(|b| format!("{b:02x}")).collect();
    println!("11. audit chain verified: {} records, head {head}", summary.records);
    println!("done");
    Ok(())
}
