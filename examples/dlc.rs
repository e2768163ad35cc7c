//! A Discreet Log Contract end to end on embedded defaults: two parties, each with its own
//! SQLite store, software HSM keystore and anya wallet, an anya oracle on a third keystore, and
//! anya's in-process regtest chain (no bitcoind). Alice offers an enum contract on a coin
//! flip, Bob accepts, Alice signs, Bob broadcasts the funding transaction; the oracle attests
//! "tails", Alice's manager closes the contract with the CET, and both wallets are paid exactly
//! their payouts. Every funding input passed its wallet's spending policy and every contract
//! key left the HSM only through its audited DLC export (both are in the audit chains).
//!
//! `cargo run --release --example dlc [DATA_DIR]` (a temporary directory by default).
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, Label, SystemClock, UnixTime};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, KeyPolicy, KeySpec, Operation, SecretString, SoftwareHsm, SoftwareOptions, Usage};
use anya_layer2::dlc::contracts::ddk_manager::contract::contract_input::{
    ContractInput, ContractInputInfo, OracleInput,
};
use anya_layer2::dlc::contracts::ddk_manager::contract::enum_descriptor::EnumDescriptor;
use anya_layer2::dlc::contracts::ddk_manager::contract::{Contract, ContractDescriptor};
use anya_layer2::dlc::contracts::ddk_manager::Storage as _;
use anya_layer2::dlc::contracts::{
    decode_message, encode_message, ClockTime, DlcManager, DlcWallet, HsmContractSignerProvider, KvDlcStorage,
    LocalOracle, RegtestBlockchain, TracingLogger,
};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::{Amount, Network, ScriptBuf};
use ddk_dlc::{EnumerationPayout, Payout};
use secp256k1::{PublicKey, Secp256k1, SecretKey};

type Error = Box<dyn std::error::Error>;

/// The example's clock, which the managers and the oracle share. The in-process chain's block
/// times start at the regtest genesis (2011) and go up a second a block, and a CET's lock time
/// is the time of the offer: so this clock follows the chain's time (set from the tip), and is
/// moved past the event's maturity once the contract is funded.
#[derive(Debug)]
struct ExampleClock(AtomicU64);

impl Clock for ExampleClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0.load(Ordering::SeqCst))
    }
}

fn label(s: &str) -> Result<Label, Error> {
    Ok(Label::new(s)?)
}

/// A keystore (created on first use) with its rollback anchor beside the store.
fn keystore(dir: &Path, store: &Arc<dyn KvStore>, passphrase: &str) -> Result<Arc<dyn HsmProvider>, Error> {
    let options = SoftwareOptions::default().with_anchor(Arc::new(FileAnchor::open(dir.join("anchor"))?));
    let pass = SecretString::from(passphrase);
    let hsm = match SoftwareHsm::create(Arc::clone(store), &pass, options.clone()) {
        Ok(hsm) => hsm,
        Err(anya_hsm::HsmError::KeystoreExists) => {
            let hsm = SoftwareHsm::open(Arc::clone(store), options)?;
            hsm.unlock(&pass)?;
            hsm
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Arc::new(hsm))
}

struct Party {
    name: &'static str,
    hsm: Arc<dyn HsmProvider>,
    wallet: Arc<Mutex<AnyaWallet>>,
    /// How the other side knows this party.
    id: PublicKey,
    manager: DlcManager<LocalOracle, RegtestBlockchain>,
}

impl Party {
    async fn open(
        name: &'static str,
        dir: &Path,
        chain: &Arc<RegtestBlockchain>,
        oracle: &Arc<LocalOracle>,
        clock: &Arc<ExampleClock>,
    ) -> Result<Self, Error> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(dir.join("party.db"), SqliteOptions::default())?);
        let hsm = keystore(&dir, &store, &format!("{name}'s example passphrase"))?;
        let root = label("root")?;
        if hsm.key_info(&root).is_err() {
            // The one opt-in a DLC party needs: its root may export the children on the DLC
            // branch (and only those), audited on every export (docs/adr/0006).
            let policy = KeyPolicy::default_for(KeySpec::Bip32Root).allowing(Usage::ExportDlcChild);
            hsm.generate_key(&root, KeySpec::Bip32Root, policy)?;
        }
        let wallet = match AnyaWallet::load(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::new(SystemClock),
            label(name)?,
        ) {
            Ok(w) => w,
            Err(_) => AnyaWallet::create(
                Arc::clone(&store),
                Arc::clone(&hsm),
                Arc::new(SystemClock),
                label(name)?,
                &Template::Bip84 {
                    root: root.clone(),
                    account: 0,
                },
                Network::Regtest,
            )?,
        };
        let wallet = Arc::new(Mutex::new(wallet));
        let mut oracles = HashMap::new();
        oracles.insert(ddk_manager_oracle_key(oracle), Arc::clone(oracle));
        let manager = DlcManager::new(
            Arc::new(DlcWallet::new(Arc::clone(&wallet))),
            Arc::new(HsmContractSignerProvider::new(Arc::clone(&hsm), root)),
            Arc::clone(chain),
            Arc::new(KvDlcStorage::new(store, "anya/dlc/contracts")?),
            oracles,
            Arc::new(ClockTime(Arc::clone(clock) as Arc<dyn Clock>)),
            Arc::clone(chain),
            Arc::new(TracingLogger),
        )
        .await?;
        let id = PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()));
        Ok(Self {
            name,
            hsm,
            wallet,
            id,
            manager,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AnyaWallet> {
        self.wallet.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the chain's blocks the wallet has not seen.
    fn sync(&self, chain: &RegtestBlockchain) -> Result<(), Error> {
        let mut wallet = self.lock();
        let from = wallet.bdk().latest_checkpoint().height() + 1;
        for height in from..=chain.height() {
            let block = chain.block(height).ok_or("a block below the tip")?;
            wallet.apply_block(&block, height)?;
        }
        Ok(())
    }

    async fn state(&self) -> Result<&'static str, Error> {
        let contracts = self.manager.get_store().get_contracts().await?;
        Ok(match contracts.first() {
            Some(Contract::Offered(_)) => "offered",
            Some(Contract::Accepted(_)) => "accepted",
            Some(Contract::Signed(_)) => "signed",
            Some(Contract::Confirmed(_)) => "confirmed",
            Some(Contract::PreClosed(_)) => "preclosed (CET broadcast)",
            Some(Contract::Closed(_)) => "closed",
            Some(Contract::Refunded(_)) => "refunded",
            Some(_) => "failed",
            None => "none",
        })
    }

    async fn tick(&self) -> Result<(), Error> {
        self.manager.periodic_chain_monitor().await?;
        self.manager.periodic_check(false).await?;
        Ok(())
    }
}

fn sats(a: Amount) -> String {
    format!("{} sat", a.to_sat())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let clock = Arc::new(ExampleClock(AtomicU64::new(0)));
    let chain = Arc::new(RegtestBlockchain::default());

    // The oracle, on its own keystore.
    let oracle_dir = dir.join("oracle");
    std::fs::create_dir_all(&oracle_dir)?;
    let oracle_store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(
        oracle_dir.join("oracle.db"),
        SqliteOptions::default(),
    )?);
    let oracle_hsm = keystore(&oracle_dir, &oracle_store, "example oracle passphrase")?;
    let oracle = Arc::new(Oracle::open(
        oracle_hsm,
        oracle_store,
        Arc::clone(&clock) as Arc<dyn Clock>,
        OracleOptions::default(),
    )?);
    let local = Arc::new(LocalOracle::new(Arc::clone(&oracle)));

    // Two funded parties.
    let alice = Party::open("alice", &dir, &chain, &local, &clock).await?;
    let bob = Party::open("bob", &dir, &chain, &local, &clock).await?;
    for party in [&alice, &bob] {
        let address = party.lock().next_address()?.address;
        chain.mine(1, &address.script_pubkey())?;
    }
    let burn = ScriptBuf::new_op_return([]);
    chain.mine(100, &burn)?;
    for party in [&alice, &bob] {
        party.sync(&chain)?;
    }
    let start = [alice.lock().balance().total(), bob.lock().balance().total()];
    println!("alice and bob hold {} and {}", sats(start[0]), sats(start[1]));
    let tip_time = |chain: &RegtestBlockchain| chain.block(chain.height()).map_or(0, |b| u64::from(b.header.time));
    clock.0.store(tip_time(&chain), Ordering::SeqCst);

    // The event, an hour ahead.
    let maturity = clock.now().as_secs() as u32 + 3600;
    let event = format!("coin-{maturity}");
    oracle.create_enum_event(&event, maturity, vec!["heads".to_owned(), "tails".to_owned()])?;
    println!("oracle {} announced {event:?} (heads | tails)", oracle.public_key());

    // The contract: 1 BTC each; heads pays alice 1.6 BTC, tails pays bob 1.7 BTC.
    let btc = |v: u64| Amount::from_sat(v);
    let payouts = [
        ("heads", btc(160_000_000), btc(40_000_000)),
        ("tails", btc(30_000_000), btc(170_000_000)),
    ];
    let input = ContractInput {
        offer_collateral: btc(100_000_000),
        accept_collateral: btc(100_000_000),
        fee_rate: 2,
        contract_infos: vec![ContractInputInfo {
            contract_descriptor: ContractDescriptor::Enum(EnumDescriptor {
                outcome_payouts: payouts
                    .iter()
                    .map(|(outcome, offer, accept)| EnumerationPayout {
                        outcome: (*outcome).to_owned(),
                        payout: Payout {
                            offer: *offer,
                            accept: *accept,
                        },
                    })
                    .collect(),
            }),
            oracles: OracleInput {
                public_keys: vec![oracle.public_key()],
                event_id: event.clone(),
                threshold: 1,
            },
        }],
        contract_flags: 0,
    };

    // Offer, accept, sign: each message as the bytes a transport would carry.
    let offer = alice.manager.send_offer(&input, bob.id).await?;
    let offer = encode_message(&ddk_messages::Message::Offer(offer));
    println!("alice offers: {} bytes", offer.len());
    bob.manager.on_dlc_message(&decode_message(&offer)?, alice.id).await?;
    let contracts = bob.manager.get_store().get_contract_offers().await?;
    let temp_id = contracts.first().ok_or("bob holds the offer")?.id;
    let (contract_id, _, accept) = bob.manager.accept_contract_offer(&temp_id).await?;
    let accept = encode_message(&ddk_messages::Message::Accept(accept));
    println!("bob accepts: {} bytes", accept.len());
    let sign = alice
        .manager
        .on_dlc_message(&decode_message(&accept)?, bob.id)
        .await?
        .ok_or("alice answers with a sign message")?;
    let sign = encode_message(&sign);
    println!("alice signs: {} bytes", sign.len());
    bob.manager.on_dlc_message(&decode_message(&sign)?, alice.id).await?;
    println!(
        "bob broadcast the funding transaction ({} in the mempool); contract {}",
        chain.mempool().len(),
        bitcoin::hex::DisplayHex::to_lower_hex_string(&contract_id[..])
    );

    // Eleven blocks: the funding confirms, and the chain's median time passes the CETs' lock
    // time (the time of the offer).
    chain.mine(11, &burn)?;
    alice.tick().await?;
    bob.tick().await?;
    println!(
        "after 11 blocks: alice {}, bob {}",
        alice.state().await?,
        bob.state().await?
    );

    // Maturity; the oracle attests; alice's manager closes with the CET.
    clock.0.store(u64::from(maturity) + 60, Ordering::SeqCst);
    oracle.attest_enum(&event, "tails")?;
    println!("the oracle attests \"tails\"");
    alice.tick().await?;
    println!("alice: {}", alice.state().await?);
    chain.mine(3, &burn)?;
    alice.tick().await?;
    bob.tick().await?;
    println!(
        "after 3 more blocks: alice {}, bob {}",
        alice.state().await?,
        bob.state().await?
    );
    if alice.state().await? != "closed" || bob.state().await? != "closed" {
        return Err("the contract did not close".into());
    }

    // The payouts, to the satoshi: each wallet holds what it had, minus what it put into the
    // funding transaction, plus its payout.
    for party in [&alice, &bob] {
        party.sync(&chain)?;
    }
    let Some(Contract::Closed(closed)) = alice.manager.get_store().get_contracts().await?.into_iter().next() else {
        return Err("closed".into());
    };
    let fund = &closed.signed_contract.accepted_contract.dlc_transactions.fund;
    let cet = closed.signed_cet.as_ref().ok_or("closed by a CET")?;
    for (party, start, payout) in [(&alice, start[0], payouts[1].1), (&bob, start[1], payouts[1].2)] {
        let wallet = party.lock();
        let paid: Amount = cet
            .output
            .iter()
            .filter(|o| wallet.is_mine(&o.script_pubkey))
            .map(|o| o.value)
            .sum();
        let change: Amount = fund
            .output
            .iter()
            .filter(|o| wallet.is_mine(&o.script_pubkey))
            .map(|o| o.value)
            .sum();
        let spent: Amount = fund
            .input
            .iter()
            .filter_map(|i| wallet.bdk().get_tx(i.previous_output.txid).map(|t| (i, t)))
            .map(|(i, t)| t.tx_node.tx.output[i.previous_output.vout as usize].value)
            .sum();
        let put_in = spent - change;
        let balance = wallet.balance().total();
        println!(
            "{}: put in {}, paid {} by the CET (payout {}), balance {}",
            party.name,
            sats(put_in),
            sats(paid),
            sats(payout),
            sats(balance)
        );
        if paid != payout || balance != start - put_in + payout {
            return Err(format!("{}'s payout or balance is wrong", party.name).into());
        }
        // What left each HSM, and why.
        let records = party.hsm.audit_records(0, 100_000)?;
        let approvals = records
            .iter()
            .filter(|r| r.operation == Operation::Decision && r.outcome == 0)
            .count();
        let exports = records
            .iter()
            .filter(|r| r.operation == Operation::ExportScopedChild)
            .count();
        party.hsm.verify_audit_chain()?;
        println!(
            "{}: {approvals} policy approval(s), {exports} audited contract-key export(s); the audit chain verifies",
            party.name
        );
    }
    println!("done in {:.2?}", started.elapsed());
    Ok(())
}

fn ddk_manager_oracle_key(oracle: &LocalOracle) -> secp256k1::XOnlyPublicKey {
    use anya_layer2::dlc::contracts::ddk_manager::Oracle as _;
    oracle.get_public_key()
}
