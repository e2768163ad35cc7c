//! Signing a 100-input P2TR PSBT: anya's `AnyaWallet::sign` (spending-policy check with its
//! durable history write and audit record, then one BIP86 key-path signature per input made
//! inside a `SoftwareHsm`) beside `bdk_wallet::Wallet::sign` signing the same PSBT with its own
//! in-memory account xprv. Issue goal: anya <= 1.1x bdk's time.
//!
//! The HSM runs with buffered audit (records written in batches by a background thread, the
//! mode for high-rate signing); the policy's spend record and decision are still written per
//! PSBT. Both sides hold the account-level key (BIP86 m/86'/1'/0'), so each derives only the
//! unhardened `0/i` tail per input.

use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;

use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Label, SystemClock};
use anya_hsm::{
    AuditMode, HsmProvider, KdfParams, KeyMaterial, KeyPolicy, KeySpec, SecretBytes, SecretString, SoftwareHsm,
    SoftwareOptions,
};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bdk_wallet::{KeychainKind, SignOptions, Wallet};
use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::{Address, Amount, FeeRate, Network, ScriptBuf};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const INPUTS: usize = 100;
const SEED: [u8; 32] = [0x2a; 32];

fn burn() -> ScriptBuf {
    Address::from_str("bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2")
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey()
}

#[allow(
    deprecated,
    reason = "the baseline is bdk_wallet signing with its own keys; Wallet::sign is deprecated in 3.2 in favour of signing outside the wallet"
)]
fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("bench.db"), SqliteOptions::default()).expect("store"));
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_audit(AuditMode::Buffered { max_pending: 4096 });
    let hsm = SoftwareHsm::create(Arc::clone(&store), &SecretString::from("bench"), options).expect("keystore");
    let root = Label::new("root").expect("label");
    hsm.import_key(
        &root,
        KeyMaterial::Bip32Seed(SecretBytes::from_slice(&SEED)),
        KeyPolicy::default_for(KeySpec::Bip32Root),
    )
    .expect("root");
    let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
    let mut wallet = AnyaWallet::create(
        Arc::clone(&store),
        Arc::clone(&hsm),
        Arc::new(SystemClock),
        Label::new("bench").expect("label"),
        &Template::Bip86 {
            root: root.clone(),
            account: 0,
        },
        Network::Regtest,
    )
    .expect("wallet");

    // BDK's wallet: the same descriptors with the account xprv in memory.
    let secp = secp256k1::Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &SEED).expect("master");
    let path = DerivationPath::from_str("m/86'/1'/0'").expect("path");
    let account = master.derive_priv(&secp, &path).expect("account");
    let fp = master.fingerprint(&secp);
    let key = format!("[{fp}/86'/1'/0']{account}");
    let mut bdk = Wallet::create(format!("tr({key}/0/*)"), format!("tr({key}/1/*)"))
        .network(Network::Regtest)
        .create_wallet_no_persist()
        .expect("bdk wallet");

    // 100 coinbase outputs to the wallet, matured by 100 more blocks.
    let mut chain = RegtestChain::new();
    for _ in 0..INPUTS {
        let to = wallet.next_address().expect("address").script_pubkey();
        chain.mine(&to, Vec::new()).expect("block");
    }
    chain.mine_empty(100, &burn());
    for height in 1..=chain.height() {
        let block = chain.block(height).expect("block");
        wallet.apply_block(block, height).expect("connects");
        bdk.apply_block(block, height).expect("connects");
    }
    let total = wallet.balance().confirmed;
    let rate = FeeRate::from_sat_per_vb(2).expect("rate");
    let psbt = wallet
        .build(&[(burn(), total - Amount::from_sat(1_000_000))], rate)
        .expect("psbt");
    assert_eq!(psbt.inputs.len(), INPUTS, "the payment needs every coin");

    // Both sides produce a complete, valid transaction.
    let mut check = psbt.clone();
    assert_eq!(wallet.sign(&mut check).expect("anya signs").taproot_key, INPUTS);
    wallet.finalize(&mut check).expect("Core verifies anya's signatures");
    let mut check = psbt.clone();
    let options = SignOptions {
        try_finalize: false,
        trust_witness_utxo: true,
        ..SignOptions::default()
    };
    bdk.sign(&mut check, options.clone()).expect("bdk signs");
    assert!(check.inputs.iter().all(|i| i.tap_key_sig.is_some()));
    assert!(bdk
        .public_descriptor(KeychainKind::External)
        .to_string()
        .starts_with("tr(["));

    let mut group = c.benchmark_group("psbt_sign_100_p2tr");
    group.throughput(Throughput::Elements(INPUTS as u64));
    group.sample_size(30);
    group.bench_function("anya_policy_hsm", |b| {
        b.iter(|| {
            let mut p = psbt.clone();
            black_box(wallet.sign(&mut p).expect("signed"));
            p
        })
    });
    group.bench_function("bdk_in_memory", |b| {
        b.iter(|| {
            let mut p = psbt.clone();
            black_box(bdk.sign(&mut p, options.clone()).expect("signed"));
            p
        })
    });
    group.finish();
    hsm.flush_audit().expect("audit flushed");
}

criterion_group!(benches, bench);
criterion_main!(benches);
