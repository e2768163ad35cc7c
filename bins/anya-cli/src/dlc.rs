//! `anya dlc …`: DLC contracts funded by a wallet of the keystore, with the contract service
//! of `anya-layer2` on the data directory's store, its keystore and a bitcoind.
//!
//! Wiring only: offering, accepting, signing, closing and the crash recovery are
//! `anya_layer2::dlc::contracts::DlcService`'s. Messages travel as files (or standard input
//! and output) holding the dlcspecs serialization in hex; carrying them to the counterparty is
//! the user's business.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anya_bitcoin::wallet::AnyaWallet;
use anya_core_types::{Clock, SystemClock};
use anya_hsm::{ExportScope, HsmError, HsmProvider, KeyId, KeyRef, Label, Usage};
use anya_layer2::dlc::client::{OracleClient, RouteFamily};
use anya_layer2::dlc::contracts::ddk_manager::contract::contract_input::{
    ContractInput, ContractInputInfo, OracleInput,
};
use anya_layer2::dlc::contracts::ddk_manager::contract::enum_descriptor::EnumDescriptor;
use anya_layer2::dlc::contracts::ddk_manager::contract::{Contract, ContractDescriptor};
use anya_layer2::dlc::contracts::ddk_manager::error::Error as ManagerError;
use anya_layer2::dlc::contracts::ddk_manager::Storage as _;
use anya_layer2::dlc::contracts::service::CONTRACTS_NS;
use anya_layer2::dlc::contracts::{
    decode_message, encode_message, outgoing_message, AnyOracle, ContractSummary, DlcParts, DlcService, HttpOracle,
    KvDlcStorage, LocalOracle, Pending,
};
use anya_layer2::dlc::messages::{OracleAnnouncement, OracleAttestation};
use anya_layer2::dlc::{Oracle, OracleOptions};
use anya_storage::{KvStore, Namespace};
use bitcoin::bip32::ChildNumber;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::secp256k1::{PublicKey, Secp256k1, XOnlyPublicKey};
use bitcoin::Amount;
use clap::{Args, Subcommand, ValueEnum};
use ddk_dlc::{EnumerationPayout, Payout};
use ddk_messages::Message;
use lightning::util::ser::Readable;

use crate::node::RpcArgs;
use crate::onchain::chain;
use crate::{open_store, unlocked_in, CliError};

pub(crate) const DLC_ABOUT: &str = "\
DLC contracts (dlcspecs) funded by a wallet of the keystore, settled on oracles' attestations.

The two parties name each other by their DLC identity (`anya dlc identity`): a public key \
derived inside the keystore from the wallet's root. That root must allow DLC contract keys: \
make it with `anya key new ROOT --type bip32 --dlc` before the wallet (the opt-in is fixed when \
a key is made; see docs/adr/0006-dlc-contract-keys.md). A data directory's contracts are \
funded by one wallet: the first DLC command records --wallet, later ones may leave it out.

Messages are files holding the message in hex (`-` reads standard input; without --out a \
message is printed on standard output). Carry each to the counterparty:

  offer party                              accepting party
  anya dlc offer … --out offer.msg   ──▶   anya dlc accept offer.msg --from ALICE … --out accept.msg
  anya dlc sign accept.msg --from BOB --out sign.msg
                                     ──▶   anya dlc receive sign.msg --from ALICE   (funding broadcast)

Then `anya dlc close ID` (either side, any time) follows the contract: funding confirmations; \
once the oracles attested, the contract is closed by the CET they unlock; after the refund \
locktime, by the refund. Oracles are read from --oracle-url (kormir's or, with --oracle-kind \
p2pd, the p2pderivatives routes), from this data directory's own oracle (--local-oracle, with \
--anchor-dir), or from messages carried by hand: --announcement and --attestation take files \
holding what `anya oracle … --hex` prints. Every announcement and attestation is verified \
against the oracle's key before it is used. Both parties name the contract's oracles: an \
offer on an oracle the accepting party does not name is refused.

Every command that opens the contracts first finishes what an interrupted one left: coins no \
contract uses are released, a funding transaction not yet broadcast is broadcast, and a \
contract whose last message may not have reached the counterparty is named (write the \
message again with `anya dlc show ID --message FILE`). `list` and `show` need no passphrase \
and no node.

Example (regtest; Alice is also the oracle):
  alice$ anya key new root --type bip32 --dlc && anya wallet new alice --root root --kind bip84
  alice$ anya --anchor-dir A oracle event create-enum coin --maturity 1767225600 --outcome heads --outcome tails
  alice$ anya --anchor-dir A dlc offer --wallet alice --counterparty BOB_ID --event coin --oracle ORACLE_KEY \\
             --outcome heads:160000000:40000000 --outcome tails:30000000:170000000 \\
             --offer-collateral 100000000 --local-oracle --out offer.msg
  alice$ anya --anchor-dir A oracle show coin --hex | head -1 > coin.ann    # to Bob, with the offer
  bob$   anya dlc accept offer.msg --wallet bob --from ALICE_ID --announcement coin.ann --out accept.msg
  alice$ anya --anchor-dir A dlc sign accept.msg --from BOB_ID --local-oracle --out sign.msg
  bob$   anya dlc receive sign.msg --from ALICE_ID
  alice$ anya --anchor-dir A oracle attest coin --outcome heads --hex > attestation.hex
  bob$   anya dlc close CONTRACT_ID --attestation attestation.hex
  bob$   anya dlc list";

#[derive(Debug, Subcommand)]
pub(crate) enum DlcCommand {
    /// Print this data directory's DLC identity (hex public key): what the counterparty names
    /// it by.
    Identity {
        #[command(flatten)]
        wallet: WalletArg,
    },
    /// Offer an enum contract: writes the offer message; prints the contract's temporary id.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Offer {
        #[command(flatten)]
        wallet: WalletArg,
        /// The counterparty's DLC identity (hex public key, from its `anya dlc identity`).
        #[arg(long)]
        counterparty: String,
        /// The oracle event the contract settles on.
        #[arg(long)]
        event: String,
        /// An oracle's x-only public key (repeat for several).
        #[arg(long = "oracle", required = true)]
        oracles: Vec<String>,
        /// How many of the oracles must attest the same outcome.
        #[arg(long, default_value_t = 1)]
        threshold: u16,
        /// An outcome and what it pays: OUTCOME:OFFER_SAT:ACCEPT_SAT (repeat for every outcome
        /// of the event; each pays the whole collateral).
        #[arg(long = "outcome", required = true, value_parser = parse_outcome)]
        outcomes: Vec<EnumerationPayout>,
        /// What this party puts in, in satoshis; the counterparty puts in the rest of what an
        /// outcome pays.
        #[arg(long, value_parser = crate::onchain::parse_amount)]
        offer_collateral: Amount,
        /// The fee rate of the contract's transactions, sat/vB.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=6250))]
        fee_rate: u64,
        /// Where to write the offer (hex); standard output without it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        oracle: OracleArgs,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Take an offer in and accept it: writes the accept message; prints the contract id.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Accept {
        /// The offer (a file of hex, or `-`).
        file: PathBuf,
        /// The offer party's DLC identity.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        wallet: WalletArg,
        /// Where to write the accept (hex); standard output without it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        oracle: OracleArgs,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Take the counterparty's accept in: writes the sign message (the offer party's last).
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Sign {
        /// The accept (a file of hex, or `-`).
        file: PathBuf,
        /// The accepting party's DLC identity.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        wallet: WalletArg,
        /// Where to write the sign message (hex); standard output without it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        oracle: OracleArgs,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Take any message in: an offer is stored (accept it with `anya dlc accept`), an accept is
    /// answered with the sign message (written to --out), a sign message makes this party
    /// broadcast the funding transaction (the accepting party's last step).
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Receive {
        /// The message (a file of hex, or `-`).
        file: PathBuf,
        /// The sender's DLC identity.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        wallet: WalletArg,
        /// Where to write a reply (hex); standard output without it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        oracle: OracleArgs,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// List the contracts: id, state, role, counterparty, collaterals, profit or loss.
    List,
    /// Show a contract; --message writes the last message it still waits on an answer to.
    Show {
        /// The contract id (or its temporary id), hex.
        id: String,
        /// Write the message this party last sent, while the counterparty has not answered it.
        #[arg(long)]
        message: Option<PathBuf>,
    },
    /// Follow the contracts now (funding confirmations; the close by CET once the oracles
    /// attested; the refund after its locktime) and show contract ID.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Close {
        /// The contract id (or its temporary id), hex.
        id: String,
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        oracle: OracleArgs,
        #[command(flatten)]
        rpc: RpcArgs,
    },
}

/// The wallet that funds the contracts.
#[derive(Debug, Args)]
pub(crate) struct WalletArg {
    /// The wallet that funds the contracts and receives their payouts [default: the one the
    /// data directory's first DLC command named].
    #[arg(long)]
    wallet: Option<String>,
}

/// The routes a remote oracle serves.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OracleKind {
    /// kormir's.
    Kormir,
    /// The p2pderivatives oracle's.
    P2pd,
}

/// Where oracle announcements and attestations come from.
#[derive(Debug, Args)]
#[command(next_help_heading = "oracles")]
pub(crate) struct OracleArgs {
    /// An oracle's base URL (repeat for several).
    #[arg(long = "oracle-url", value_name = "URL")]
    urls: Vec<String>,
    /// The routes the --oracle-url oracles serve.
    #[arg(long, value_enum, default_value = "kormir")]
    oracle_kind: OracleKind,
    /// This data directory's own oracle (`anya oracle init`; needs --anchor-dir).
    #[arg(long)]
    local_oracle: bool,
    /// An announcement carried by hand: a file holding its hex (`anya oracle show ID --hex`,
    /// first line). Repeat for several.
    #[arg(long = "announcement", value_name = "FILE")]
    announcements: Vec<PathBuf>,
    /// An attestation carried by hand: a file holding its hex (`anya oracle attest … --hex`).
    /// Repeat for several.
    #[arg(long = "attestation", value_name = "FILE")]
    attestations: Vec<PathBuf>,
}

fn parse_outcome(s: &str) -> Result<EnumerationPayout, String> {
    let mut parts = s.rsplitn(3, ':');
    let (accept, offer, outcome) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(o), Some(name)) if !name.is_empty() => (a, o, name),
        _ => return Err(format!("{s:?}: OUTCOME:OFFER_SAT:ACCEPT_SAT")),
    };
    let sat = |v: &str| crate::onchain::parse_amount(v).map_err(|e| format!("{s:?}: {e}"));
    Ok(EnumerationPayout {
        outcome: outcome.to_owned(),
        payout: Payout {
            offer: sat(offer)?,
            accept: sat(accept)?,
        },
    })
}

/// The identity path below a contract root: the DLC branch, then `0'` (as anya-node's).
fn identity_path() -> [ChildNumber; 2] {
    [ExportScope::Dlc.branch(), ChildNumber::Hardened { index: 0 }]
}

fn identity(hsm: &dyn HsmProvider, root: &KeyId) -> Result<PublicKey, CliError> {
    match hsm.public_key(KeyRef::Derived {
        root,
        path: &identity_path(),
    })? {
        anya_hsm::PublicKey::Secp256k1(pk) => Ok(pk),
        _ => Err(CliError::Message(format!("{root} is not a BIP32 root"))),
    }
}

fn manager_error(e: impl std::error::Error) -> CliError {
    CliError::Message(chain(&e))
}

fn public_key(flag: &str, s: &str) -> Result<PublicKey, CliError> {
    s.trim().parse().map_err(|_| {
        CliError::Usage(format!(
            "--{flag} {s:?} is not a DLC identity (a hex public key, 66 characters)"
        ))
    })
}

fn contract_id(s: &str) -> Result<[u8; 32], CliError> {
    Vec::<u8>::from_hex(s.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| CliError::Usage(format!("{s:?} is not a contract id (64 hex characters)")))
}

/// The bytes of a message file: hex (whitespace ignored), or `-` for standard input.
fn read_hex(file: &Path) -> Result<Vec<u8>, CliError> {
    let text = if file == Path::new("-") {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| CliError::Io("cannot read standard input", e))?;
        buf
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))?
    };
    let hex: String = text.split_whitespace().collect();
    Vec::<u8>::from_hex(&hex).map_err(|e| CliError::Message(format!("{}: not hex: {e}", file.display())))
}

/// Writes `bytes` as hex to `out`, or prints it.
fn write_hex(bytes: &[u8], out: Option<&Path>) -> Result<(), CliError> {
    let text = bytes.to_lower_hex_string();
    match out {
        None => println!("{text}"),
        Some(p) if p == Path::new("-") => println!("{text}"),
        Some(path) => {
            std::fs::write(path, format!("{text}\n"))
                .map_err(|e| CliError::Message(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn read_message<T: Readable>(file: &Path, what: &str) -> Result<T, CliError> {
    let bytes = read_hex(file)?;
    let mut cursor = lightning::io::Cursor::new(&bytes);
    let message = T::read(&mut cursor)
        .map_err(|e| CliError::Message(format!("{}: not an oracle {what}: {e:?}", file.display())))?;
    if cursor.position() != bytes.len() as u64 {
        return Err(CliError::Message(format!("{}: bytes after the {what}", file.display())));
    }
    Ok(message)
}

/// Announcements and attestations of one oracle, carried by hand and verified before use.
#[derive(Debug)]
struct CarriedOracle {
    key: XOnlyPublicKey,
    announcements: HashMap<String, OracleAnnouncement>,
    attestations: HashMap<String, OracleAttestation>,
}

#[async_trait::async_trait]
impl anya_layer2::dlc::contracts::ddk_manager::Oracle for CarriedOracle {
    fn get_public_key(&self) -> XOnlyPublicKey {
        self.key
    }

    async fn get_announcement(&self, event_id: &str) -> Result<OracleAnnouncement, ManagerError> {
        self.announcements.get(event_id).cloned().ok_or_else(|| {
            ManagerError::OracleError(format!(
                "no announcement of {event_id:?} by oracle {}: pass it with --announcement",
                self.key
            ))
        })
    }

    async fn get_attestation(&self, event_id: &str) -> Result<OracleAttestation, ManagerError> {
        self.attestations
            .get(event_id)
            .cloned()
            .ok_or_else(|| ManagerError::OracleError(format!("no attestation of {event_id:?} by oracle {}", self.key)))
    }
}

fn push(oracle: Arc<AnyOracle>, out: &mut Vec<Arc<AnyOracle>>) -> Result<(), CliError> {
    let key = oracle.get_public_key();
    if out.iter().any(|o| o.get_public_key() == key) {
        return Err(CliError::Usage(format!(
            "oracle {key} is named twice (by --oracle-url, --local-oracle or carried messages)"
        )));
    }
    out.push(oracle);
    Ok(())
}

/// The oracles `args` name, on the unlocked keystore.
fn oracles(
    args: &OracleArgs,
    anchored: bool,
    hsm: &Arc<dyn HsmProvider>,
    store: &Arc<dyn KvStore>,
) -> Result<Vec<Arc<AnyOracle>>, CliError> {
    let mut out: Vec<Arc<AnyOracle>> = Vec::new();
    let family = match args.oracle_kind {
        OracleKind::Kormir => RouteFamily::Kormir,
        OracleKind::P2pd => RouteFamily::P2pDerivatives,
    };
    for url in &args.urls {
        let client = OracleClient::connect(url, family, Duration::from_secs(10)).map_err(CliError::chain)?;
        push(Arc::new(HttpOracle::new(client)), &mut out)?;
    }
    if args.local_oracle {
        if !anchored {
            return Err(CliError::Usage(
                "--local-oracle opens this data directory's oracle, which needs --anchor-dir".to_owned(),
            ));
        }
        let options = OracleOptions::default();
        match hsm.key_info(&options.key) {
            Err(HsmError::KeyNotFound { .. }) => {
                return Err(CliError::Usage(
                    "--local-oracle: the keystore has no oracle key (run `anya oracle init` first)".to_owned(),
                ))
            }
            other => {
                other?;
            }
        }
        let oracle = Oracle::open(Arc::clone(hsm), Arc::clone(store), Arc::new(SystemClock), options)
            .map_err(CliError::chain)?;
        push(Arc::new(LocalOracle::new(Arc::new(oracle))), &mut out)?;
    }
    let secp = Secp256k1::verification_only();
    let mut carried: HashMap<XOnlyPublicKey, CarriedOracle> = HashMap::new();
    for file in &args.announcements {
        let a: OracleAnnouncement = read_message(file, "announcement")?;
        a.validate(&secp)
            .map_err(|e| CliError::Message(format!("{}: the announcement does not verify: {e}", file.display())))?;
        let entry = carried.entry(a.oracle_public_key).or_insert_with(|| CarriedOracle {
            key: a.oracle_public_key,
            announcements: HashMap::new(),
            attestations: HashMap::new(),
        });
        entry.announcements.insert(a.oracle_event.event_id.clone(), a);
    }
    for file in &args.attestations {
        let a: OracleAttestation = read_message(file, "attestation")?;
        let entry = carried.entry(a.oracle_public_key).or_insert_with(|| CarriedOracle {
            key: a.oracle_public_key,
            announcements: HashMap::new(),
            attestations: HashMap::new(),
        });
        // The contract holds the announcement: the manager verifies the attestation against
        // it before any CET is made from it.
        entry.attestations.insert(a.event_id.clone(), a);
    }
    for (_, oracle) in carried {
        push(Arc::new(oracle), &mut out)?;
    }
    Ok(out)
}

/// Where the data directory records the wallet its contracts are funded by.
fn record_ns() -> Namespace {
    Namespace::new("anya/cli/dlc").expect("a fixed, valid namespace")
}

/// The wallet `arg` names, checked against the data directory's DLC wallet; whether it is
/// still to be recorded as that (once its root proved fit: [`record`]).
fn dlc_wallet(store: &Arc<dyn KvStore>, arg: &WalletArg) -> Result<(Label, bool), CliError> {
    let recorded = store
        .get(&record_ns(), b"wallet")?
        .map(|v| String::from_utf8_lossy(&v.value).into_owned());
    let (name, new) = match (&arg.wallet, recorded) {
        (Some(given), Some(recorded)) if *given != recorded => {
            return Err(CliError::Usage(format!(
                "this data directory's contracts are funded by wallet {recorded}, not {given}"
            )))
        }
        (Some(given), Some(_)) => (given.clone(), false),
        (Some(given), None) => (given.clone(), true),
        (None, Some(recorded)) => (recorded, false),
        (None, None) => {
            return Err(CliError::Usage(
                "name the wallet that funds the contracts with --wallet".to_owned(),
            ))
        }
    };
    let label =
        Label::new(name.as_str()).map_err(|e| CliError::Usage(format!("{name:?} is not a wallet name: {e}")))?;
    Ok((label, new))
}

/// Records `wallet` as the data directory's DLC wallet when `new`.
fn record(store: &Arc<dyn KvStore>, wallet: &Label, new: bool) -> Result<(), CliError> {
    if new {
        store.put(&record_ns(), b"wallet", wallet.as_str().as_bytes())?;
    }
    Ok(())
}

/// An open contract service, the wallet's identity, and the runtime it runs on.
struct Opened {
    service: DlcService,
    identity: PublicKey,
    runtime: tokio::runtime::Runtime,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io("cannot start the runtime", e))
}

/// The wallet's root, which must allow DLC contract keys.
fn dlc_root(hsm: &dyn HsmProvider, wallet: &AnyaWallet) -> Result<KeyId, CliError> {
    let root = match wallet.signers() {
        [only] => only.root().clone(),
        _ => {
            return Err(CliError::Usage(format!(
                "wallet {} does not have one BIP32 root to derive contract keys from",
                wallet.name()
            )))
        }
    };
    if !hsm.key_info(&root)?.policy.allowed.contains(Usage::ExportDlcChild) {
        return Err(CliError::Usage(format!(
            "the root key {root} of wallet {} does not allow DLC contract keys (a key's uses are fixed when it is \
             made): make a root with `anya key new ROOT --type bip32 --dlc` and a wallet on it",
            wallet.name()
        )));
    }
    Ok(root)
}

/// Opens the contracts of `dir` funded by `wallet`, after syncing it with the node, and says
/// what the recovery did.
fn open(
    dir: &Path,
    anchored: bool,
    wallet: &WalletArg,
    oracle: &OracleArgs,
    rpc: &RpcArgs,
) -> Result<Opened, CliError> {
    let store: Arc<dyn KvStore> = open_store(dir, false)?;
    let (name, new) = dlc_wallet(&store, wallet)?;
    // The node is checked before the passphrase is asked for.
    let network = AnyaWallet::load_watch_only(Arc::clone(&store), Arc::new(SystemClock), name.clone())
        .map_err(CliError::chain)?
        .network();
    let node = rpc.connect(network)?;
    let hsm: Arc<dyn HsmProvider> = Arc::new(unlocked_in(Arc::clone(&store))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut w = AnyaWallet::load(Arc::clone(&store), Arc::clone(&hsm), Arc::clone(&clock), name.clone())
        .map_err(CliError::chain)?;
    let root = dlc_root(&*hsm, &w)?;
    record(&store, &name, new)?;
    node.chain.sync_wallet(&mut w).map_err(|e| node.error(&e))?;
    let identity = identity(&*hsm, &root)?;
    let oracles = oracles(oracle, anchored, &hsm, &store)?;
    let parts = DlcParts {
        store,
        hsm,
        root,
        wallet: Arc::new(Mutex::new(w)),
        chain: Arc::new(node.chain),
        network,
        oracles,
        clock,
    };
    let runtime = runtime()?;
    let (service, resumed) = runtime.block_on(DlcService::open(parts)).map_err(manager_error)?;
    if !resumed.released.is_empty() {
        eprintln!(
            "released {} coin reservation(s) that no contract uses (an interrupted command left them)",
            resumed.released.len()
        );
    }
    for txid in &resumed.broadcast {
        eprintln!("broadcast the funding transaction {txid} an interrupted command had not");
    }
    for failed in &resumed.failed {
        if let Pending::Failed { contract, reason } = failed {
            eprintln!(
                "contract {} could not be resumed: {reason}",
                contract.to_lower_hex_string()
            );
        }
    }
    for pending in &resumed.messages {
        if let Pending::Send { contract, .. } = pending {
            eprintln!(
                "contract {}: the counterparty has not answered its last message; write it again with \
                 `anya dlc show {} --message FILE`",
                contract.to_lower_hex_string(),
                contract.to_lower_hex_string()
            );
        }
    }
    Ok(Opened {
        service,
        identity,
        runtime,
    })
}

/// The contract a message names.
fn message_contract(bytes: &[u8]) -> Result<[u8; 32], CliError> {
    let message = decode_message(bytes).map_err(CliError::chain)?;
    match message {
        Message::Offer(m) => Ok(m.temporary_contract_id),
        Message::Accept(m) => Ok(m.temporary_contract_id),
        Message::Sign(m) => Ok(m.contract_id),
        Message::Close(m) => Ok(m.contract_id),
        _ => Err(CliError::Message(
            "not a contract offer, accept, sign or close message".to_owned(),
        )),
    }
}

fn summary_lines(s: &ContractSummary) -> String {
    let role = if s.is_offer_party {
        "offer party"
    } else {
        "accepting party"
    };
    let txid = |t: Option<bitcoin::Txid>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    format!(
        "id            {}\ntemporary id  {}\nstate         {}\nrole          {role}\ncounterparty  {}\n\
         collateral    {} sat (offer) + {} sat (accept)\nevents        {}\nfunding       {}\nclosing       {}\n\
         pnl           {} sat",
        s.id,
        s.temporary_id,
        s.state,
        s.counterparty,
        s.offer_collateral,
        s.accept_collateral,
        s.events.join(","),
        txid(s.funding_txid),
        txid(s.closing_txid),
        s.pnl
    )
}

fn list_line(s: &ContractSummary) -> String {
    let role = if s.is_offer_party { "offer" } else { "accept" };
    format!(
        "{}\t{}\t{role}\t{}\t{}+{} sat\tpnl {} sat",
        s.id, s.state, s.counterparty, s.offer_collateral, s.accept_collateral, s.pnl
    )
}

/// The contracts in `dir`'s store, read without the keystore.
fn stored(dir: &Path) -> Result<(tokio::runtime::Runtime, KvDlcStorage), CliError> {
    let store: Arc<dyn KvStore> = open_store(dir, false)?;
    Ok((runtime()?, KvDlcStorage::new(store, CONTRACTS_NS)?))
}

fn find(runtime: &tokio::runtime::Runtime, storage: &KvDlcStorage, id: &[u8; 32]) -> Result<Contract, CliError> {
    runtime.block_on(async {
        if let Some(c) = storage.get_contract(id).await.map_err(manager_error)? {
            return Ok(c);
        }
        storage
            .get_contracts()
            .await
            .map_err(manager_error)?
            .into_iter()
            .find(|c| c.get_temporary_id() == *id)
            .ok_or_else(|| CliError::Message(format!("no contract {}", id.to_lower_hex_string())))
    })
}

/// Hands `bytes` to the service; writes the reply, if any; returns the contract it concerns
/// and whether there was a reply.
fn receive(opened: &Opened, bytes: &[u8], from: &str, out: Option<&Path>) -> Result<(ContractSummary, bool), CliError> {
    let from = public_key("from", from)?;
    let id = message_contract(bytes)?;
    let (reply, contract) = opened.runtime.block_on(async {
        let reply = opened.service.receive(bytes, from).await.map_err(manager_error)?;
        let contract = opened.service.contract(&id).await.map_err(manager_error)?;
        Ok::<_, CliError>((reply, contract))
    })?;
    let replied = reply.is_some();
    if let Some(reply) = reply {
        write_hex(&reply, out)?;
    }
    Ok((ContractSummary::of(&contract), replied))
}

pub(crate) fn dlc(dir: &Path, anchored: bool, command: DlcCommand) -> Result<(), CliError> {
    match command {
        DlcCommand::Identity { wallet } => {
            let store: Arc<dyn KvStore> = open_store(dir, false)?;
            let (name, new) = dlc_wallet(&store, &wallet)?;
            let hsm = unlocked_in(Arc::clone(&store))?;
            let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
            let w = AnyaWallet::load(
                Arc::clone(&store),
                Arc::clone(&hsm),
                Arc::new(SystemClock),
                name.clone(),
            )
            .map_err(CliError::chain)?;
            let root = dlc_root(&*hsm, &w)?;
            record(&store, &name, new)?;
            println!("{}", identity(&*hsm, &root)?);
        }
        DlcCommand::Offer {
            wallet,
            counterparty,
            event,
            oracles,
            threshold,
            outcomes,
            offer_collateral,
            fee_rate,
            out,
            oracle,
            rpc,
        } => {
            let counterparty = public_key("counterparty", &counterparty)?;
            let keys = oracles
                .iter()
                .map(|k| {
                    k.parse::<XOnlyPublicKey>()
                        .map_err(|_| CliError::Usage(format!("--oracle {k:?} is not an x-only public key in hex")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let first = outcomes
                .first()
                .ok_or_else(|| CliError::Usage("name the outcomes with --outcome".to_owned()))?;
            let total = first.payout.offer.checked_add(first.payout.accept);
            for o in &outcomes {
                if o.payout.offer.checked_add(o.payout.accept) != total {
                    return Err(CliError::Usage(format!(
                        "--outcome {}: every outcome pays the same whole collateral",
                        o.outcome
                    )));
                }
            }
            let total = total
                .filter(|t| *t <= Amount::MAX_MONEY)
                .ok_or_else(|| CliError::Usage("the payouts are past the money supply".to_owned()))?;
            let accept_collateral = total.checked_sub(offer_collateral).ok_or_else(|| {
                CliError::Usage(format!(
                    "--offer-collateral {} is more than an outcome pays ({} sat)",
                    offer_collateral.to_sat(),
                    total.to_sat()
                ))
            })?;
            let input = ContractInput {
                offer_collateral,
                accept_collateral,
                fee_rate,
                contract_flags: 0,
                contract_infos: vec![ContractInputInfo {
                    contract_descriptor: ContractDescriptor::Enum(EnumDescriptor {
                        outcome_payouts: outcomes,
                    }),
                    oracles: OracleInput {
                        public_keys: keys,
                        event_id: event,
                        threshold,
                    },
                }],
            };
            input.validate().map_err(manager_error)?;
            let opened = open(dir, anchored, &wallet, &oracle, &rpc)?;
            if counterparty == opened.identity {
                return Err(CliError::Usage(
                    "--counterparty is this data directory's own identity".to_owned(),
                ));
            }
            let (id, message) = opened
                .runtime
                .block_on(opened.service.offer(&input, counterparty))
                .map_err(manager_error)?;
            write_message_and_id(&message, out.as_deref(), &id, "temporary contract id")?;
        }
        DlcCommand::Accept {
            file,
            from,
            wallet,
            out,
            oracle,
            rpc,
        } => {
            let bytes = read_hex(&file)?;
            if !matches!(decode_message(&bytes).map_err(CliError::chain)?, Message::Offer(_)) {
                return Err(CliError::Usage(format!(
                    "{} is not an offer (hand other messages in with `anya dlc receive`)",
                    file.display()
                )));
            }
            let opened = open(dir, anchored, &wallet, &oracle, &rpc)?;
            let (offered, _) = receive(&opened, &bytes, &from, None)?;
            let temporary_id = contract_id(&offered.temporary_id)?;
            let (id, message) = opened
                .runtime
                .block_on(opened.service.accept(&temporary_id))
                .map_err(manager_error)?;
            write_message_and_id(&message, out.as_deref(), &id, "contract id")?;
        }
        DlcCommand::Sign {
            file,
            from,
            wallet,
            out,
            oracle,
            rpc,
        } => {
            let bytes = read_hex(&file)?;
            if !matches!(decode_message(&bytes).map_err(CliError::chain)?, Message::Accept(_)) {
                return Err(CliError::Usage(format!(
                    "{} is not an accept (hand other messages in with `anya dlc receive`)",
                    file.display()
                )));
            }
            let opened = open(dir, anchored, &wallet, &oracle, &rpc)?;
            let (contract, _) = receive(&opened, &bytes, &from, out.as_deref())?;
            eprintln!(
                "contract {} signed: send the sign message to the counterparty",
                contract.id
            );
            if out.is_some() {
                println!("{}", contract.id);
            }
        }
        DlcCommand::Receive {
            file,
            from,
            wallet,
            out,
            oracle,
            rpc,
        } => {
            let bytes = read_hex(&file)?;
            let opened = open(dir, anchored, &wallet, &oracle, &rpc)?;
            let (contract, replied) = receive(&opened, &bytes, &from, out.as_deref())?;
            if !replied || out.is_some() {
                println!("{}", list_line(&contract));
            }
            match (contract.state, contract.is_offer_party) {
                ("offered", false) => eprintln!("offer stored: accept it with `anya dlc accept`"),
                ("signed", false) => eprintln!(
                    "funding transaction {} broadcast",
                    contract.funding_txid.map_or_else(|| "-".to_owned(), |t| t.to_string())
                ),
                _ => {}
            }
        }
        DlcCommand::List => {
            let (runtime, storage) = stored(dir)?;
            let all = runtime.block_on(storage.get_contracts()).map_err(manager_error)?;
            for c in &all {
                println!("{}", list_line(&ContractSummary::of(c)));
            }
        }
        DlcCommand::Show { id, message } => {
            let id = contract_id(&id)?;
            let (runtime, storage) = stored(dir)?;
            let contract = find(&runtime, &storage, &id)?;
            println!("{}", summary_lines(&ContractSummary::of(&contract)));
            if let Some(path) = message {
                let m = outgoing_message(&contract).ok_or_else(|| {
                    CliError::Message("the contract waits on no answer to a message of this party".to_owned())
                })?;
                write_hex(&encode_message(&m), Some(&path))?;
            }
        }
        DlcCommand::Close {
            id,
            wallet,
            oracle,
            rpc,
        } => {
            let id = contract_id(&id)?;
            let opened = open(dir, anchored, &wallet, &oracle, &rpc)?;
            let (changed, contract) = opened.runtime.block_on(async {
                let changed = opened.service.tick().await.map_err(manager_error)?;
                let contract = opened.service.contract(&id).await.map_err(manager_error)?;
                Ok::<_, CliError>((changed, contract))
            })?;
            for c in changed.iter().filter(|c| c.id != id.to_lower_hex_string()) {
                eprintln!("contract {} is now {}", c.id, c.state);
            }
            println!("{}", summary_lines(&ContractSummary::of(&contract)));
        }
    }
    Ok(())
}

/// Writes `message` (to `out`, or stdout) and the contract id: on stdout when the message went
/// to a file, else on stderr after `label`, so that stdout holds one thing.
fn write_message_and_id(message: &[u8], out: Option<&Path>, id: &[u8; 32], label: &str) -> Result<(), CliError> {
    write_hex(message, out)?;
    if out.is_some() {
        println!("{}", id.to_lower_hex_string());
    } else {
        eprintln!("{label} {}", id.to_lower_hex_string());
    }
    Ok(())
}
