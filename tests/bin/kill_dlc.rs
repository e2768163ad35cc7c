//! Child process of the DLC kill test: one party of a contract (its store, keystore, wallet
//! and `ddk-manager` on anya), doing one step per run. The test kills it with SIGKILL at
//! random moments and, after each kill, runs `resume` and carries on.
//!
//! Usage: `anya-kill-dlc <dir> <name> <rpc-url> <cookie> <oracle-dir> <now> <command> [args]`,
//! where `<now>` is the Unix time the manager sees (the test moves it with the node's
//! mocktime). Commands:
//!
//! - `address`: prints a new receive address (the first run creates keystore and wallet);
//! - `sync`: syncs the wallet;
//! - `offer <event> <peer-hex> <out>`: offers the coin contract on `<event>`, writes the offer;
//! - `receive <in> <peer-hex> <out>`: hands a message to the manager, writes its reply if any;
//! - `accept <temp-id-hex> <out>`: accepts an offer, writes the accept;
//! - `resume <out-prefix>`: releases orphan reservations, broadcasts pending funding
//!   transactions and writes each message to send again to `<out-prefix>.<n>`;
//! - `tick`: the manager's chain monitor and periodic check;
//! - `state`: prints `<contract-id-hex> <state>` per contract.
//!
//! The last line of a finished run is `OK`; a refused step prints `ERR <message>`.
//!
//! With `ANYA_KILL_DLC_DIE=before-broadcast` (or `after-broadcast`) the process sends itself
//! SIGKILL just before (or just after) its first broadcast: the windows between a stored state
//! and the transaction that depends on it, which random kills rarely hit.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the protocol with the test is stdout"
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, KdfParams, KeyPolicy, KeySpec, SecretString, SoftwareHsm, SoftwareOptions, Usage};
use anya_layer2::dlc::contracts::service::state_name;
use anya_layer2::dlc::contracts::{
    decode_message, encode_message, resume, BitcoindBlockchain, ClockTime, DlcWallet, HsmContractSigner,
    HsmContractSignerProvider, KvDlcStorage, LocalOracle, Pending, TracingLogger,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_tests::dlc::{coin_contract, FixedClock};
use async_trait::async_trait;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::Network;
use bitcoin::{Block, Transaction, Txid};
use ddk_manager::error::Error as ManagerError;
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use secp256k1::PublicKey;

/// The passphrase of every keystore in the test.
pub const PASS: &str = "kill-dlc";

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

fn keystore(dir: &Path, store: &Arc<dyn KvStore>) -> Arc<dyn HsmProvider> {
    let anchor = Arc::new(FileAnchor::open(dir.join("anchor")).expect("anchor"));
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(anchor);
    let pass = SecretString::from(PASS);
    let hsm = match SoftwareHsm::open(Arc::clone(store), options.clone()) {
        Ok(hsm) => {
            hsm.unlock(&pass).expect("unlock");
            hsm
        }
        Err(anya_hsm::HsmError::KeystoreMissing) => {
            SoftwareHsm::create(Arc::clone(store), &pass, options).expect("create")
        }
        Err(e) => panic!("keystore: {e}"),
    };
    Arc::new(hsm)
}

/// Sends this process SIGKILL (no destructor, no flush: what was durable stays, nothing else).
fn die() -> ! {
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(std::process::id().to_string())
        .status();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The node, with a death around the first broadcast when asked for.
struct Dying {
    inner: BitcoindBlockchain,
    /// `before-broadcast` or `after-broadcast`.
    die: Option<String>,
}

#[async_trait]
impl ddk_manager::Blockchain for Dying {
    async fn send_transaction(&self, tx: &Transaction) -> Result<(), ManagerError> {
        if self.die.as_deref() == Some("before-broadcast") {
            die();
        }
        self.inner.send_transaction(tx).await?;
        if self.die.as_deref() == Some("after-broadcast") {
            die();
        }
        Ok(())
    }
    fn get_network(&self) -> Result<Network, ManagerError> {
        self.inner.get_network()
    }
    async fn get_blockchain_height(&self) -> Result<u64, ManagerError> {
        self.inner.get_blockchain_height().await
    }
    async fn get_block_at_height(&self, height: u64) -> Result<Block, ManagerError> {
        self.inner.get_block_at_height(height).await
    }
    async fn get_transaction(&self, txid: &Txid) -> Result<Transaction, ManagerError> {
        self.inner.get_transaction(txid).await
    }
    async fn get_transaction_confirmations(&self, txid: &Txid) -> Result<u32, ManagerError> {
        self.inner.get_transaction_confirmations(txid).await
    }
}

impl FeeEstimator for Dying {
    fn get_est_sat_per_1000_weight(&self, target: ConfirmationTarget) -> u32 {
        self.inner.get_est_sat_per_1000_weight(target)
    }
}

type Manager = ddk_manager::manager::Manager<
    Arc<DlcWallet>,
    Arc<ddk_manager::CachedContractSignerProvider<Arc<HsmContractSignerProvider>, HsmContractSigner>>,
    Arc<Dying>,
    Arc<KvDlcStorage>,
    Arc<LocalOracle>,
    Arc<ClockTime>,
    Arc<Dying>,
    HsmContractSigner,
    Arc<TracingLogger>,
>;

fn fail(what: impl std::fmt::Display) -> ! {
    println!("ERR {what}");
    std::process::exit(3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, name, url, cookie, oracle_dir, now, command, rest @ ..] = args.as_slice() else {
        eprintln!("usage: anya-kill-dlc <dir> <name> <rpc-url> <cookie> <oracle-dir> <now> <command> [args]");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let now: u64 = now.parse().expect("now");
    let clock: Arc<dyn Clock> = Arc::new(FixedClock(now));
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.join("party.db"), SqliteOptions::default()).expect("store"));
    let hsm = keystore(dir, &store);
    let root = label("root");
    if hsm.key_info(&root).is_err() {
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::ExportDlcChild);
        hsm.generate_key(&root, KeySpec::Bip32Root, policy).expect("root");
    }
    let wallet = match AnyaWallet::load(Arc::clone(&store), Arc::clone(&hsm), Arc::new(SystemClock), label(name)) {
        Ok(w) => w,
        Err(WalletError::NotFound { .. }) => AnyaWallet::create(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::new(SystemClock),
            label(name),
            &Template::Bip84 {
                root: root.clone(),
                account: 0,
            },
            Network::Regtest,
        )
        .expect("wallet"),
        Err(e) => panic!("wallet: {e}"),
    };
    let wallet = Arc::new(Mutex::new(wallet));
    let chain =
        Arc::new(BitcoindChain::connect(RpcConfig::new(url.as_str(), RpcAuth::Cookie(cookie.into()))).expect("rpc"));

    match command.as_str() {
        "address" => {
            let address = wallet.lock().expect("lock").next_address().expect("address").address;
            println!("{address}");
            println!("OK");
            return;
        }
        "sync" => {
            chain.sync_wallet(&mut wallet.lock().expect("lock")).expect("sync");
            println!("OK");
            return;
        }
        _ => {}
    }

    let oracle_dir = Path::new(oracle_dir);
    let oracle_store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(oracle_dir.join("oracle.db"), SqliteOptions::default()).expect("oracle store"));
    let oracle_hsm = keystore(oracle_dir, &oracle_store);
    let oracle =
        Arc::new(Oracle::open(oracle_hsm, oracle_store, Arc::clone(&clock), OracleOptions::default()).expect("oracle"));
    let local = Arc::new(LocalOracle::new(Arc::clone(&oracle)));
    let blockchain = Arc::new(Dying {
        inner: BitcoindBlockchain::new(Arc::clone(&chain), Network::Regtest).expect("chain"),
        die: std::env::var("ANYA_KILL_DLC_DIE").ok(),
    });
    let dlc_wallet = Arc::new(DlcWallet::new(Arc::clone(&wallet)));
    let storage = Arc::new(KvDlcStorage::new(Arc::clone(&store), "anya/dlc/contracts").expect("storage"));
    let mut oracles = HashMap::new();
    oracles.insert(oracle.public_key(), local);
    let manager: Manager = Manager::new(
        Arc::clone(&dlc_wallet),
        Arc::new(HsmContractSignerProvider::new(Arc::clone(&hsm), root)),
        Arc::clone(&blockchain),
        Arc::clone(&storage),
        oracles,
        Arc::new(ClockTime(clock)),
        Arc::clone(&blockchain),
        Arc::new(TracingLogger),
    )
    .await
    .expect("manager");
    println!("READY");

    let peer = |hex: &str| PublicKey::from_slice(&Vec::<u8>::from_hex(hex).expect("hex")).expect("peer key");
    match (command.as_str(), rest) {
        ("offer", [event, peer_hex, out]) => {
            let input = coin_contract(oracle.public_key(), event);
            let offer = manager
                .send_offer(&input, peer(peer_hex))
                .await
                .unwrap_or_else(|e| fail(e));
            std::fs::write(out, encode_message(&ddk_messages::Message::Offer(offer))).expect("write");
        }
        ("receive", [input, peer_hex, out]) => {
            let message = decode_message(&std::fs::read(input).expect("read")).expect("a message");
            let reply = manager
                .on_dlc_message(&message, peer(peer_hex))
                .await
                .unwrap_or_else(|e| fail(e));
            if let Some(reply) = reply {
                std::fs::write(out, encode_message(&reply)).expect("write");
            }
        }
        ("accept", [temp_id, out]) => {
            let id: [u8; 32] = <[u8; 32]>::from_hex(temp_id).expect("id");
            let (_, _, accept) = manager.accept_contract_offer(&id).await.unwrap_or_else(|e| fail(e));
            std::fs::write(out, encode_message(&ddk_messages::Message::Accept(accept))).expect("write");
        }
        ("resume", [prefix]) => {
            let done = resume(&storage, &dlc_wallet, &blockchain)
                .await
                .unwrap_or_else(|e| fail(e));
            println!("RELEASED {}", done.released.len());
            println!("BROADCAST {}", done.broadcast.len());
            for (n, item) in done.messages.into_iter().enumerate() {
                if let Pending::Send { message, .. } = item {
                    std::fs::write(format!("{prefix}.{n}"), encode_message(&message)).expect("write");
                    println!("SEND {prefix}.{n}");
                }
            }
        }
        ("tick", []) => {
            manager.periodic_chain_monitor().await.unwrap_or_else(|e| fail(e));
            manager.periodic_check(false).await.unwrap_or_else(|e| fail(e));
        }
        ("state", []) => {
            use ddk_manager::Storage as _;
            for contract in storage.get_contracts().await.expect("contracts") {
                println!("{} {}", contract.get_id().to_lower_hex_string(), state_name(&contract));
            }
        }
        _ => {
            eprintln!("unknown command {command} {rest:?}");
            std::process::exit(2);
        }
    }
    println!("OK");
}
