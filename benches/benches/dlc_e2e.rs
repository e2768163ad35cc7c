//! Offer to signed for the large numeric contract, through two ddk-manager instances on anya,
//! and the stored size of the signed contract.
//!
//! This is not a criterion bench: one run takes most of a minute, so each step of each run
//! is timed once with a clock and printed. It needs a regtest `bitcoind` (`BITCOIND_EXE`; the
//! bench says so and exits without one). Each party has its own SQLite store, software HSM,
//! anya wallet (funded by a coinbase), `KvDlcStorage` and ddk-manager (`DlcManager`). The
//! three oracles are anya oracles on their own keystores (`LocalOracle`). The contract is the
//! large case of `dlc_cets`: 17 binary digits, 2 of 3 oracles, difference parameters
//! 2^7 / 2^8.
//!
//! The steps, as a real pair of parties runs them:
//! 1. `offer`: Alice's `send_offer` (fetches the three announcements, builds and stores the
//!    offer);
//! 2. `offer received`: Bob's `on_dlc_message(Offer)`;
//! 3. `accept`: Bob's `accept_contract_offer`. It builds the CETs and the adaptor trie, makes
//!    Bob's CET adaptor signatures and stores the accepted contract;
//! 4. `accept received, sign`: Alice's `on_dlc_message(Accept)`. It rebuilds the trie, verifies
//!    Bob's signatures, makes her own, signs the funding inputs and stores the signed contract;
//! 5. `sign received`: Bob's `on_dlc_message(Sign)`. It verifies Alice's signatures, stores the
//!    signed contract and broadcasts the funding transaction.
//!
//! Build with `--features ddk-parallel` to run the same flow with ddk-manager's `parallel`
//! feature (ddk-trie's rayon signing and verification). `ANYA_E2E_RUNS` sets the number of
//! contracts (default 2).
#![allow(clippy::print_stdout, reason = "the bench reports its timings on stdout")]
#![allow(clippy::print_stderr, reason = "a skipped bench says why on stderr")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anya_benches::numeric::{AnyaOracles, NumericParams};
use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::{HsmProvider, KdfParams, KeyPolicy, KeySpec, SecretString, SoftwareHsm, SoftwareOptions, Usage};
use anya_layer2::dlc::contracts::storage::encode_contract;
use anya_layer2::dlc::contracts::{
    encode_message, BitcoindBlockchain, ClockTime, DlcManager, DlcWallet, HsmContractSignerProvider, KvDlcStorage,
    LocalOracle, TracingLogger,
};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::{Amount, Network};
use ddk_manager::contract::contract_input::{ContractInput, ContractInputInfo, OracleInput};
use ddk_manager::contract::Contract;
use ddk_manager::{Oracle as _, Storage as _};
use ddk_messages::Message;
use secp256k1::{PublicKey, Secp256k1, SecretKey};

const PASS: &str = "bench party passphrase";

fn label(s: &str) -> Label {
    Label::new(s).expect("label")
}

struct Party {
    _dir: tempfile::TempDir,
    wallet: Arc<Mutex<AnyaWallet>>,
    id: PublicKey,
    manager: DlcManager<LocalOracle>,
}

impl Party {
    async fn new(node: &Bitcoind, chain: &Arc<BitcoindChain>, oracles: &[Arc<LocalOracle>], name: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("party.db"), SqliteOptions::default()).expect("sqlite"));
        let hsm: Arc<dyn HsmProvider> = Arc::new(
            SoftwareHsm::create(
                Arc::clone(&store),
                &SecretString::from(PASS),
                SoftwareOptions::default().with_kdf(KdfParams::insecure_for_tests()),
            )
            .expect("keystore"),
        );
        let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::ExportDlcChild);
        hsm.generate_key(&label("root"), KeySpec::Bip32Root, policy)
            .expect("root");
        let wallet = AnyaWallet::create(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::new(SystemClock),
            label(name),
            &Template::Bip84 {
                root: label("root"),
                account: 0,
            },
            Network::Regtest,
        )
        .expect("wallet");
        let wallet = Arc::new(Mutex::new(wallet));
        let address = wallet.lock().expect("wallet").next_address().expect("address").address;
        node.mine(1, &address);
        let blockchain = Arc::new(BitcoindBlockchain::new(Arc::clone(chain), Network::Regtest).expect("chain"));
        let map: HashMap<_, _> = oracles.iter().map(|o| (o.get_public_key(), Arc::clone(o))).collect();
        let manager = DlcManager::new(
            Arc::new(DlcWallet::new(Arc::clone(&wallet))),
            Arc::new(HsmContractSignerProvider::new(Arc::clone(&hsm), label("root"))),
            Arc::clone(&blockchain),
            Arc::new(KvDlcStorage::new(Arc::clone(&store), "anya/dlc/contracts").expect("storage")),
            map,
            Arc::new(ClockTime(Arc::new(SystemClock) as Arc<dyn Clock>)),
            blockchain,
            Arc::new(TracingLogger),
        )
        .await
        .expect("manager");
        let id = PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()));
        Self {
            _dir: dir,
            wallet,
            id,
            manager,
        }
    }

    fn sync(&self, chain: &BitcoindChain) {
        chain
            .sync_wallet(&mut self.wallet.lock().expect("wallet"))
            .expect("sync");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(n: usize) -> String {
    format!("{n} bytes ({:.2} MiB)", n as f64 / (1024.0 * 1024.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(node) = Bitcoind::start() else {
        eprintln!("dlc_e2e: BITCOIND_EXE is not set; skipped");
        return;
    };
    let runs: usize = std::env::var("ANYA_E2E_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let chain = Arc::new(
        BitcoindChain::connect(RpcConfig::new(node.rpc_url(), RpcAuth::Cookie(node.cookie_file()))).expect("rpc"),
    );
    let params = NumericParams::LARGE;
    let oracles = AnyaOracles::new(params.nb_oracles);
    let local: Vec<Arc<LocalOracle>> = oracles
        .oracles
        .iter()
        .map(|o| Arc::new(LocalOracle::new(Arc::clone(o))))
        .collect();
    let alice = Party::new(&node, &chain, &local, "alice").await;
    let bob = Party::new(&node, &chain, &local, "bob").await;
    node.mine(100, &node.new_burn_address());
    alice.sync(&chain);
    bob.sync(&chain);

    let build = if cfg!(feature = "ddk-parallel") {
        "ddk-manager with `parallel` (rayon)"
    } else {
        "ddk-manager default (serial)"
    };
    println!("dlc_e2e: {build}; 17 digits, 2 of 3 anya oracles, difference 2^7 / 2^8");
    let maturity = u32::try_from(SystemClock.now().as_secs() + 86_400).expect("a 32-bit time");
    for run in 1..=runs {
        let event_id = format!("e2e-{run}");
        oracles.announce(&event_id, maturity, &params);
        let input = ContractInput {
            offer_collateral: Amount::from_sat(100_000_000),
            accept_collateral: Amount::from_sat(100_000_000),
            fee_rate: 2,
            contract_infos: vec![ContractInputInfo {
                contract_descriptor: params.descriptor(),
                oracles: OracleInput {
                    public_keys: oracles.oracles.iter().map(|o| o.public_key()).collect(),
                    event_id,
                    threshold: params.threshold as u16,
                },
            }],
            contract_flags: 0,
        };

        let start = Instant::now();
        let offer = alice.manager.send_offer(&input, bob.id).await.expect("offer");
        let t_offer = start.elapsed();
        let temp_id = offer.temporary_contract_id;
        let offer_bytes = encode_message(&Message::Offer(offer.clone())).len();
        bob.manager
            .on_dlc_message(&Message::Offer(offer), alice.id)
            .await
            .expect("offer received");
        let t_offer_received = start.elapsed();
        let (contract_id, _, accept) = bob.manager.accept_contract_offer(&temp_id).await.expect("accepted");
        let t_accept = start.elapsed();
        let accept_bytes = encode_message(&Message::Accept(accept.clone())).len();
        let sign = alice
            .manager
            .on_dlc_message(&Message::Accept(accept), bob.id)
            .await
            .expect("accept received")
            .expect("a sign message");
        let t_sign = start.elapsed();
        let sign_bytes = encode_message(&sign).len();
        bob.manager
            .on_dlc_message(&sign, alice.id)
            .await
            .expect("sign received");
        let t_signed = start.elapsed();

        let stored = |c: Option<Contract>| match c {
            Some(c @ Contract::Signed(_)) => {
                let Contract::Signed(s) = &c else {
                    unreachable!("matched Signed")
                };
                let a = &s.accepted_contract;
                let sigs = a.adaptor_signatures.len() + s.adaptor_signatures.len();
                let cet_bytes: usize = a
                    .dlc_transactions
                    .cets
                    .iter()
                    .map(|t| bitcoin::consensus::serialize(t).len())
                    .sum();
                let size = encode_contract(&c).len();
                (
                    size,
                    a.dlc_transactions.cets.len(),
                    a.adaptor_signatures.len(),
                    sigs,
                    cet_bytes,
                )
            }
            other => panic!("not signed: {other:?}"),
        };
        let (alice_size, cets, per_party, sigs, cet_bytes) = stored(
            alice
                .manager
                .get_store()
                .get_contract(&contract_id)
                .await
                .expect("read"),
        );
        let (bob_size, ..) = stored(bob.manager.get_store().get_contract(&contract_id).await.expect("read"));

        println!("run {run}: {cets} CETs, {per_party} CET adaptor signatures per party");
        println!("  offer                          {}", secs(t_offer));
        println!("  offer received (Bob)           {}", secs(t_offer_received - t_offer));
        println!("  accept (Bob)                   {}", secs(t_accept - t_offer_received));
        println!("  accept received, sign (Alice)  {}", secs(t_sign - t_accept));
        println!("  sign received (Bob)            {}", secs(t_signed - t_sign));
        println!("  offer -> signed                {}", secs(t_signed));
        println!(
            "  stored signed contract: Alice {}, Bob {}",
            mib(alice_size),
            mib(bob_size)
        );
        println!(
            "    of which {} adaptor signatures ({}), CETs {}, the rest (trie, offer, funding) {}",
            sigs,
            mib(sigs * 162),
            mib(cet_bytes),
            mib(alice_size.saturating_sub(sigs * 162 + cet_bytes))
        );
        println!(
            "  messages: offer {}, accept {}, sign {}",
            mib(offer_bytes),
            mib(accept_bytes),
            mib(sign_bytes)
        );

        // The funding coins confirm, and the change is spendable for the next run.
        node.mine(1, &node.new_burn_address());
        alice.sync(&chain);
        bob.sync(&chain);
    }
}
