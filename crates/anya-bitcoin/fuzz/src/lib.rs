//! The fuzz harnesses: each takes the bytes libFuzzer gives and drives one path of anya-bitcoin
//! that reads outside bytes, checking that it never panics and that what it accepts keeps
//! anya's promises. The targets in `fuzz_targets/` are one line each; `make-seeds` writes the
//! seed corpus from the same setup.

use std::cell::RefCell;
use std::sync::Arc;

use anya_bitcoin::psbt::{self, extract_verified, try_inspect};
use anya_bitcoin::signer::HsmSigner;
use anya_bitcoin::verify::{check_transaction, check_tx_inputs, verify_transaction, VerifyFlags};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, UnixTime};
use anya_hsm::{HsmProvider, KeyMaterial, KeyPolicy, KeySpec, SecretBytes};
use anya_storage::{KvStore, Namespace, Scan, SqliteOptions, SqliteStore};
use bitcoin::consensus::encode::{deserialize, deserialize_partial, serialize};
use bitcoin::{Network, Transaction, TxOut};

/// The fixed seed of the harness's BIP32 root, so that seed PSBTs made by `make-seeds` are
/// signable by the harness that fuzzes them.
pub const ROOT_SEED: [u8; 32] = [0x42; 32];

/// A clock that stands still: the policy's 24-hour window reads it.
#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(1_700_000_000)
    }
}

/// A SQLite store in a temporary directory, a software HSM on it holding the root
/// [`ROOT_SEED`], and two wallets on that root: BIP84 (`wpkh`) and BIP86 (`tr`).
pub struct Harness {
    _dir: tempfile::TempDir,
    /// The store.
    pub store: Arc<dyn KvStore>,
    /// The HSM.
    pub hsm: Arc<dyn HsmProvider>,
    /// The BIP84 wallet `w84` and the BIP86 wallet `w86`.
    pub wallets: Vec<AnyaWallet>,
    /// A signer on the root.
    pub signer: HsmSigner,
}

fn label(s: &str) -> Label {
    Label::new(s).expect("a valid label")
}

impl Harness {
    /// A new harness (a new store, keystore and wallets).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("a store"));
        let hsm: Arc<dyn HsmProvider> = Arc::new(anya_hsm::conformance::software_on(Arc::clone(&store)));
        let root = label("root");
        hsm.import_key(
            &root,
            KeyMaterial::Bip32Seed(SecretBytes::from_slice(&ROOT_SEED)),
            KeyPolicy::default_for(KeySpec::Bip32Root),
        )
        .expect("the root imports");
        let wallets = [
            (
                "w84",
                Template::Bip84 {
                    root: root.clone(),
                    account: 0,
                },
            ),
            (
                "w86",
                Template::Bip86 {
                    root: root.clone(),
                    account: 0,
                },
            ),
        ]
        .into_iter()
        .map(|(name, template)| {
            AnyaWallet::create(
                Arc::clone(&store),
                Arc::clone(&hsm),
                Arc::new(FixedClock),
                label(name),
                &template,
                Network::Regtest,
            )
            .expect("a wallet")
        })
        .collect();
        let signer = HsmSigner::new(Arc::clone(&hsm), root).expect("a signer");
        Self {
            _dir: dir,
            store,
            hsm,
            wallets,
            signer,
        }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn with_harness<R>(f: impl FnOnce(&mut Harness) -> R) -> R {
    HARNESS.with(|h| f(h.borrow_mut().get_or_insert_with(Harness::new)))
}

/// PSBT bytes (binary, hex or base64) → decode → inspect → each wallet's spend summary and
/// policy verdict → HSM signing → finalize → extract with Core's checks and interpreter.
///
/// Checked: nothing panics; a PSBT that decodes passes `validate` and still does after
/// signing; whatever is extracted passes `check_transaction`.
pub fn psbt(data: &[u8]) {
    let Ok(mut psbt) = psbt::decode(data) else { return };
    psbt::validate(&psbt).expect("decode returns only valid PSBTs");
    if let Ok(info) = try_inspect(&psbt, Network::Regtest) {
        let _ = info.to_string();
    }
    with_harness(|h| {
        for w in &h.wallets {
            if let Ok(summary) = w.summarize(&psbt) {
                let _ = summary.outgoing();
                let _ = w.policy().evaluate(&summary);
            }
        }
        if h.signer.sign(&mut psbt).is_ok() {
            psbt::validate(&psbt).expect("signing keeps a PSBT valid");
        }
    });
    if psbt::finalize(&mut psbt).is_ok() {
        if let Ok(tx) = extract_verified(&psbt) {
            check_transaction(&tx).expect("extract_verified returns checked transactions");
        }
    }
}

/// A consensus-encoded transaction, then consensus-encoded outputs it spends (one per input,
/// as many as parse) → `check_transaction` → `check_tx_inputs` → `verify_transaction` under
/// consensus and standard flags.
///
/// Checked: nothing panics; the transaction re-encodes to bytes that decode to it; a
/// transaction both checks pass has a fee within the money supply.
pub fn transaction(data: &[u8]) {
    let Ok((tx, used)) = deserialize_partial::<Transaction>(data) else {
        return;
    };
    let again: Transaction = deserialize(&serialize(&tx)).expect("a decoded transaction re-encodes");
    assert_eq!(again, tx);
    let mut rest = &data[used..];
    let mut spent: Vec<TxOut> = Vec::with_capacity(tx.input.len().min(64));
    while spent.len() < tx.input.len() {
        let Ok((out, n)) = deserialize_partial::<TxOut>(rest) else {
            break;
        };
        spent.push(out);
        rest = &rest[n..];
    }
    if check_transaction(&tx).is_ok() {
        if let Ok(fee) = check_tx_inputs(&tx, &spent) {
            assert!(fee <= bitcoin::Amount::MAX_MONEY);
        }
    }
    for flags in [VerifyFlags::consensus(), VerifyFlags::pre_taproot()] {
        let _ = verify_transaction(&tx, &spent, flags);
    }
}

/// Which stored record a [`wallet_records`] input replaces, and with what.
const RECORD_REGISTRY: u8 = 0;
const RECORD_BIRTHDAY: u8 = 1;
const RECORD_RULES: u8 = 2;
const RECORD_SPEND: u8 = 3;
const RECORD_TXID: u8 = 4;
/// From here on, the n-th change set (modulo their count).
const RECORD_CHANGESET: u8 = 5;

/// The key of the policy spend record [`wallet_records`] replaces: `s/`, a time inside the
/// 24-hour window, a txid.
pub fn spend_record_key() -> Vec<u8> {
    let mut key = b"s/".to_vec();
    key.extend_from_slice(&(1_700_000_000u64 - 60).to_be_bytes());
    key.extend_from_slice(&[7u8; 32]);
    key
}

/// The key of the policy record of a spend's inputs [`wallet_records`] replaces.
pub fn txid_record_key() -> Vec<u8> {
    let mut key = b"t/".to_vec();
    key.extend_from_slice(&[7u8; 32]);
    key
}

/// A wallet's stored records with one replaced by fuzz bytes: the first byte picks the
/// record (0 the registry entry, 1 the birthday, 2 the policy rules, 3 a policy spend record,
/// 4 a spend's inputs record, 5 + n the n-th change set), the rest is its new value. Then the wallet is loaded (with and without
/// the HSM) and its policy read.
///
/// Checked: nothing panics; a load that fails writes nothing.
pub fn wallet_records(data: &[u8]) {
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    with_harness(|h| {
        let name = label("w84");
        let wallet_ns = Namespace::new("anya/wallet/w84").expect("ns");
        let policy_ns = Namespace::new("anya/wallet/w84/policy").expect("ns");
        let registry = Namespace::new("anya/wallets").expect("ns");
        let saved: Vec<(Namespace, Records)> = [&wallet_ns, &policy_ns, &registry]
            .into_iter()
            .map(|ns| (ns.clone(), snapshot(&*h.store, ns)))
            .collect();
        let (ns, key) = match which {
            RECORD_REGISTRY => (registry.clone(), b"w84".to_vec()),
            RECORD_BIRTHDAY => (wallet_ns.clone(), b"birthday".to_vec()),
            RECORD_RULES => (policy_ns.clone(), b"rules".to_vec()),
            RECORD_SPEND => (policy_ns.clone(), spend_record_key()),
            RECORD_TXID => (policy_ns.clone(), txid_record_key()),
            n => {
                let records = &saved[0].1;
                let changesets: Vec<&Vec<u8>> = records
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| k.starts_with(b"cs/"))
                    .collect();
                let key = changesets[usize::from(n - RECORD_CHANGESET) % changesets.len()].clone();
                (wallet_ns.clone(), key)
            }
        };
        h.store.put(&ns, &key, value).expect("the store writes");
        let before: Vec<_> = saved.iter().map(|(ns, _)| snapshot(&*h.store, ns)).collect();
        let loaded = AnyaWallet::load(
            Arc::clone(&h.store),
            Arc::clone(&h.hsm),
            Arc::new(FixedClock),
            name.clone(),
        );
        match loaded {
            Ok(w) => {
                let _ = w.balance();
                let _ = w.policy().rules();
                let _ = w.policy().spent_last_24h();
            }
            Err(e) => {
                let _ = e.to_string();
                let after: Vec<_> = saved.iter().map(|(ns, _)| snapshot(&*h.store, ns)).collect();
                assert!(after == before, "a failed load wrote to the store: {e}");
            }
        }
        if let Ok(w) = AnyaWallet::load_watch_only(Arc::clone(&h.store), Arc::new(FixedClock), name) {
            let _ = w.balance();
        }
        // Put every record back as it was for the next input.
        for (ns, records) in &saved {
            for (k, _) in snapshot(&*h.store, ns) {
                h.store.delete(ns, &k).expect("the store deletes");
            }
            for (k, v) in records {
                h.store.put(ns, k, v).expect("the store writes");
            }
        }
    });
}

/// A namespace's records, key and value.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

fn snapshot(store: &dyn KvStore, ns: &Namespace) -> Records {
    store
        .scan(ns, Scan::all())
        .expect("the store scans")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}
