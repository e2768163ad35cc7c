//! The anya tour on embedded defaults: a durable SQLite store, atomic batches and
//! compare-and-swap that loses no update under contention; then a software HSM keystore in the
//! same store signing with ECDSA, BIP340, Taproot (BIP86 key path) and Ed25519 — every signature
//! checked with bare secp256k1 or ring — and its hash-chained audit log verified; then a BIP86
//! wallet on the keystore's root receives regtest coins from blocks mined in-process, and a PSBT
//! goes through the spending policy, an HSM signature and Bitcoin Core's script verification.
//!
//! `cargo run --release --example quickstart [DATA_DIR]` (a temporary directory by default).
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::time::Instant;

use anya_bitcoin::policy::{PolicyError, SpendPolicy};
use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_core_types::{Clock, SystemClock};
use anya_hsm::{
    AuxRand, HsmProvider, KeyPolicy, KeyRef, KeySpec, Label, MnemonicLength, Operation, PublicKey, SecretString,
    SoftwareHsm, SoftwareOptions,
};
use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore, StoreError, WriteBatch};
use bitcoin::bip32::DerivationPath;
use bitcoin::key::TapTweak;
use bitcoin::{Address, Amount, FeeRate, KnownHrp, Network, ScriptBuf};
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

    let store = Arc::new(store);
    let hsm = hsm_tour(Arc::clone(&store), now)?;
    wallet_tour(store, Arc::new(hsm), now)?;
    println!("done");
    Ok(())
}

/// A keystore in the same store: keys, four signature schemes, the audit chain.
fn hsm_tour(store: Arc<SqliteStore>, run: u64) -> Result<SoftwareHsm, Box<dyn std::error::Error>> {
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
    Ok(hsm)
}

/// A BIP86 wallet on the keystore's BIP32 root: regtest coins from blocks mined here, a PSBT,
/// the spending policy, an HSM signature, Bitcoin Core's verdict.
fn wallet_tour(store: Arc<SqliteStore>, hsm: Arc<SoftwareHsm>, run: u64) -> Result<(), Box<dyn std::error::Error>> {
    let wallet_root = Label::new("wallet")?;
    let template = Template::Bip86 {
        root: wallet_root.clone(),
        account: 0,
    };
    let mut wallet = AnyaWallet::create(
        store.clone(),
        hsm.clone(),
        Arc::new(SystemClock),
        Label::new(format!("quickstart-{run}"))?,
        &template,
        Network::Regtest,
    )?;
    let savings_template = Template::Bip84 {
        root: wallet_root,
        account: 1,
    };
    let mut savings = AnyaWallet::create(
        store,
        hsm.clone(),
        Arc::new(SystemClock),
        Label::new(format!("quickstart-{run}-savings"))?,
        &savings_template,
        Network::Regtest,
    )?;
    let receive = wallet.next_address()?;
    println!(
        "12. BIP86 wallet from the HSM's account xpub ({}), first address {}",
        wallet.bdk().public_descriptor(bdk_wallet::KeychainKind::External),
        receive.address
    );

    // Real regtest blocks: a coinbase to the wallet, then 100 blocks so it matures. Each block
    // has a BIP34 coinbase, a witness commitment and valid proof of work.
    let started = Instant::now();
    let mut chain = RegtestChain::new();
    let elsewhere = ScriptBuf::new_op_return([]);
    chain.mine(&receive.script_pubkey(), Vec::new())?;
    chain.mine_empty(100, &elsewhere);
    for height in 1..=chain.height() {
        let block = chain.block(height).ok_or("block")?.clone();
        wallet.apply_block(&block, height)?;
        savings.apply_block(&block, height)?;
    }
    println!(
        "13. mined {} regtest blocks in-process ({:.0?}); wallet balance {}",
        chain.height(),
        started.elapsed(),
        wallet.balance().confirmed
    );

    // The spending policy: at most 2 BTC per transaction, fee rate capped at 50 sat/vB.
    wallet.policy().set_rules(&SpendPolicy {
        max_per_tx: Some(Amount::from_btc(2.0)?),
        max_fee_rate: Some(FeeRate::from_sat_per_vb(50).ok_or("fee rate")?),
        ..SpendPolicy::default()
    })?;
    let to = savings.next_address()?.script_pubkey();
    let mut greedy = wallet.build(
        &[(to.clone(), Amount::from_btc(10.0)?)],
        FeeRate::from_sat_per_vb(80).ok_or("rate")?,
    )?;
    match wallet.sign(&mut greedy) {
        Err(WalletError::Policy(PolicyError::Refused(refusal))) => println!("14. policy refused a PSBT: {refusal}"),
        other => return Err(format!("expected a policy refusal, got {other:?}").into()),
    }

    let mut psbt = wallet.build(
        &[(to, Amount::from_btc(1.0)?)],
        FeeRate::from_sat_per_vb(5).ok_or("rate")?,
    )?;
    let summary = wallet.summarize(&psbt)?;
    let report = wallet.sign(&mut psbt)?;
    let tx = wallet.finalize(&mut psbt)?;
    println!(
        "15. PSBT approved by policy, {} Taproot signature(s) from the HSM, fee {} ({} sat/vB); Bitcoin Core verified every input",
        report.total(),
        summary.fee,
        summary.fee_rate.to_sat_per_vb_ceil()
    );
    let txid = tx.compute_txid();
    chain.mine(&elsewhere, vec![tx])?;
    let block = chain.tip().clone();
    wallet.apply_block(&block, chain.height())?;
    savings.apply_block(&block, chain.height())?;
    println!(
        "16. txid {txid} mined at height {}: wallet {}, savings {}",
        chain.height(),
        wallet.balance().confirmed,
        savings.balance().confirmed
    );

    let summary = hsm.verify_audit_chain()?;
    let records = hsm.audit_records(0, summary.records as usize)?;
    let count = |op: Operation, approved: Option<bool>| {
        records
            .iter()
            .filter(|r| r.operation == op && approved.is_none_or(|a| (r.outcome == 0) == a))
            .count()
    };
    println!(
        "17. audit chain verified: {} records; policy decisions {} approved / {} refused; {} Taproot signatures",
        summary.records,
        count(Operation::Decision, Some(true)),
        count(Operation::Decision, Some(false)),
        count(Operation::SignTaprootKeySpend, Some(true))
    );
    Ok(())
}
