//! `anya wallet …` and `anya psbt …`: descriptor wallets whose keys stay in the keystore, and
//! PSBTs from anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anya_bitcoin::policy::SpendPolicy;
use anya_bitcoin::psbt::{self, PsbtError};
use anya_bitcoin::rpc::RpcError;
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, SystemClock};
use anya_hsm::{HsmProvider, Label};
use anya_storage::KvStore;
use bdk_wallet::KeychainKind;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, Denomination, FeeRate, Network, ScriptBuf, Transaction, Txid};
use clap::{Subcommand, ValueEnum};

use crate::node::{FeeArgs, Node, RpcArgs};
use crate::{open_store, unlocked_in, CliError};

pub(crate) const WALLET_ABOUT: &str = "\
Descriptor wallets whose private keys never leave the keystore.

A wallet is a BIP86 (Taproot, the default) or BIP84 (native segwit) account below a BIP32 root \
key of the keystore. Its state (addresses, coins, transactions) and its spending policy live in \
the same store. Every signature is checked against the policy first and recorded in the audit \
chain; every transaction is verified by Bitcoin Core's script interpreter before it leaves.

`list`, `address`, `balance`, `sync` and `policy` (without changes) need no passphrase. `send`, \
`bump-fee` and `psbt finalize` check the node (reachable, credentials, same chain) and build the \
transaction before the passphrase is asked for and anything is signed; they print the txid only \
once bitcoind accepted the transaction. With --no-broadcast no node is needed: the signed \
transaction is printed for `bitcoin-cli sendrawtransaction` and counts as spent.

A new wallet has no coins. Pay to `anya wallet address`, then bring the wallet up to date with \
`anya wallet sync` against a bitcoind (found as bitcoin-cli finds it; see `anya wallet sync \
--help`). Give a new wallet whose keys have never received coins a --birthday (the node's \
current height, `bitcoin-cli getblockcount`) so that its first sync starts there instead of at \
the genesis block.

Example (regtest, bitcoind -regtest with its cookie in ~/.bitcoin/regtest):
  anya key new root --type bip32
  anya wallet new savings --root root --kind bip86 --network regtest --birthday 0
  anya wallet address savings
  anya wallet sync savings                       # or --datadir DIR, --rpcport, --rpcuser …
  anya wallet balance savings
  anya wallet policy savings --max-per-tx 0.01btc --max-fee-rate 50
  anya wallet send savings --to bcrt1q… --amount 25000            # fee from estimatesmartfee
  anya wallet bump-fee savings --txid <txid> --fee-rate 5
  anya wallet send savings --to bcrt1q… --amount 25000 --fee-rate 2 --no-broadcast";

pub(crate) const PSBT_ABOUT: &str = "\
Partially signed transactions (BIP174 version 0, with BIP371 Taproot fields) from this or any other wallet; a PSBTv2 (BIP370) is refused.

FILE is a path or `-` for standard input, holding the PSBT as base64 (what Bitcoin Core prints), \
hex, or raw binary.

Example:
  bitcoin-cli walletcreatefundedpsbt … > tx.psbt
  anya psbt inspect tx.psbt --network testnet
  anya psbt sign tx.psbt --wallet savings -o signed.psbt
  anya psbt combine signed.psbt cosigner.psbt -o both.psbt
  anya psbt finalize both.psbt --wallet savings     # broadcasts through bitcoind
  anya psbt finalize both.psbt --no-broadcast       # prints the txid and raw hex";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// Taproot key path, `tr(…/86'/coin'/account')`: bc1p… addresses.
    Bip86,
    /// Native segwit v0, `wpkh(…/84'/coin'/account')`: bc1q… addresses.
    Bip84,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum NetworkArg {
    Regtest,
    Testnet,
    Testnet4,
    Signet,
    Bitcoin,
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Regtest => Network::Regtest,
            NetworkArg::Testnet => Network::Testnet,
            NetworkArg::Testnet4 => Network::Testnet4,
            NetworkArg::Signet => Network::Signet,
            NetworkArg::Bitcoin => Network::Bitcoin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Create a wallet from a BIP32 root key of the keystore; prints its receive descriptor.
    New {
        /// The wallet's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// The BIP32 root key (make one with `anya key new ID --type bip32`).
        #[arg(long)]
        root: String,
        /// The script type.
        #[arg(long, value_enum, default_value = "bip86")]
        kind: Kind,
        /// The BIP44 account number.
        #[arg(long, default_value_t = 0)]
        account: u32,
        /// The network (fixed for the wallet's life).
        #[arg(long, value_enum, default_value = "regtest")]
        network: NetworkArg,
        /// The height of the first block that can hold a payment to the wallet; sync starts
        /// there. For keys that never received anything, the node's current height
        /// (`bitcoin-cli getblockcount`). Without it the first sync scans from the genesis block.
        #[arg(long, value_name = "HEIGHT")]
        birthday: Option<u32>,
    },
    /// List the wallets: name, network, receive descriptor.
    List,
    /// Reveal the wallet's next receive address.
    Address {
        /// The wallet.
        name: String,
    },
    /// Show the wallet's balance in satoshis, as of its last sync.
    Balance {
        /// The wallet.
        name: String,
    },
    /// Bring the wallet up to bitcoind's tip and mempool; prints what is spendable.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Sync {
        /// The wallet.
        name: String,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Pay an address: check the node, build, check the policy, sign in the keystore, verify,
    /// broadcast.
    ///
    /// Prints the txid once bitcoind has accepted the transaction. If bitcoind rejects it, the
    /// spend is released from the policy's limits and the error says why. With --no-broadcast
    /// no node is contacted (unless for the fee estimate): the txid and the raw transaction in
    /// hex are printed for `bitcoin-cli sendrawtransaction`, and the spend counts against the
    /// limits. With --psbt-out nothing is signed: the unsigned PSBT is written for review or
    /// other signers.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Send {
        /// The wallet.
        name: String,
        /// The address to pay (of the wallet's network).
        #[arg(long)]
        to: String,
        /// The amount: satoshis (`25000`, `25000sat`) or bitcoin (`0.00025`, `0.00025btc`).
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
        #[command(flatten)]
        fee: FeeArgs,
        /// Write the unsigned PSBT (base64) here (`-` for standard output) instead of signing.
        #[arg(long, conflicts_with = "no_broadcast")]
        psbt_out: Option<PathBuf>,
        /// Sign without broadcasting and print the raw transaction; no node is needed when
        /// --fee-rate is given.
        #[arg(long)]
        no_broadcast: bool,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Replace an unconfirmed transaction of the wallet with one paying a higher fee rate (BIP125).
    ///
    /// Checks the node first, like `send`, and prints the replacement's txid once bitcoind has
    /// accepted it.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    BumpFee {
        /// The wallet.
        name: String,
        /// The transaction to replace.
        #[arg(long)]
        txid: Txid,
        /// The new fee rate in sat/vB (higher than the replaced transaction's).
        #[arg(long, value_parser = parse_fee_rate)]
        fee_rate: FeeRate,
        /// Sign without broadcasting and print the raw replacement.
        #[arg(long)]
        no_broadcast: bool,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Show the wallet's spending policy; with options, change it first.
    ///
    /// Amounts are satoshis or bitcoin (`0.01btc`); fee rates are sat/vB. Every signature the
    /// wallet makes is checked against these rules first. Showing needs no passphrase;
    /// changing does.
    Policy {
        /// The wallet.
        name: String,
        /// Start from no limits (then apply the other options).
        #[arg(long)]
        clear: bool,
        /// Most value one transaction may send out of the wallet (fee included).
        #[arg(long, value_parser = parse_amount)]
        max_per_tx: Option<Amount>,
        /// Most value sent out in any rolling 24 hours.
        #[arg(long = "max-per-24h", value_parser = parse_amount)]
        max_per_24h: Option<Amount>,
        /// Allow paying this address (repeat for several); once set, only these are allowed.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Highest fee rate, sat/vB.
        #[arg(long, value_parser = parse_fee_rate)]
        max_fee_rate: Option<FeeRate>,
        /// Highest absolute fee.
        #[arg(long, value_parser = parse_amount)]
        max_fee: Option<Amount>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PsbtCommand {
    /// Show a PSBT's inputs, outputs, fee, and which key signs what.
    Inspect {
        /// The PSBT file, or `-` for standard input.
        file: PathBuf,
        /// The network whose addresses are shown.
        #[arg(long, value_enum, default_value = "regtest")]
        network: NetworkArg,
    },
    /// Sign a PSBT with a wallet's keys, after its spending policy approves.
    Sign {
        /// The PSBT file, or `-`.
        file: PathBuf,
        /// The wallet whose keys sign.
        #[arg(long)]
        wallet: String,
        /// Where to write the signed PSBT (base64); standard output if absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Merge the signatures of several PSBTs of one transaction.
    Combine {
        /// The PSBT files.
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
        /// Where to write the combined PSBT (base64); standard output if absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Finalize a fully signed PSBT, verify it with Bitcoin Core's script interpreter and
    /// broadcast it; prints the txid once bitcoind accepted it.
    ///
    /// The node is checked before the PSBT is finalized. With --no-broadcast no node is
    /// contacted and the txid and raw transaction in hex are printed. With --wallet (which then
    /// needs the passphrase), a transaction bitcoind rejects is released from that wallet's
    /// spending limits.
    #[command(after_long_help = crate::node::CONNECTION_HELP)]
    Finalize {
        /// The PSBT file, or `-`.
        file: PathBuf,
        /// Finalize with this wallet's descriptors (needed for scripts miniscript cannot
        /// infer from the PSBT alone); its network picks the node.
        #[arg(long)]
        wallet: Option<String>,
        /// The network of the node to broadcast to, without --wallet [default: regtest].
        #[arg(long, value_enum)]
        network: Option<NetworkArg>,
        /// Also write the finalized PSBT (base64) here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the raw transaction instead of broadcasting it.
        #[arg(long)]
        no_broadcast: bool,
        #[command(flatten)]
        rpc: RpcArgs,
    },
}

pub(crate) fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim().to_ascii_lowercase();
    let (number, denomination) = if let Some(n) = t.strip_suffix("btc") {
        (n, Denomination::Bitcoin)
    } else if let Some(n) = t.strip_suffix("sats").or_else(|| t.strip_suffix("sat")) {
        (n, Denomination::Satoshi)
    } else if t.contains('.') {
        (t.as_str(), Denomination::Bitcoin)
    } else {
        (t.as_str(), Denomination::Satoshi)
    };
    Amount::from_str_in(number.trim(), denomination)
        .map_err(|e| format!("{s:?} is not an amount (satoshis like 25000, or bitcoin like 0.00025btc): {e}"))
}

/// sat/vB with up to 8 decimals, read exactly (no floating point): as a "bitcoin" amount its
/// satoshi count is the rate times 10^8, and 1 sat/vB is 250 sat/kwu.
pub(crate) fn parse_fee_rate(s: &str) -> Result<FeeRate, String> {
    let bad = |why: &str| format!("{s:?} is not a fee rate in sat/vB: {why}");
    let scaled = Amount::from_str_in(s.trim(), Denomination::Bitcoin).map_err(|e| bad(&e.to_string()))?;
    let kwu = scaled.to_sat().saturating_mul(250) / 100_000_000;
    if kwu == 0 {
        return Err(bad("it must be at least 0.004 sat/vB"));
    }
    Ok(FeeRate::from_sat_per_kwu(kwu))
}

pub(crate) fn show_rate(rate: FeeRate) -> String {
    let kwu = rate.to_sat_per_kwu();
    format!("{}.{:02} sat/vB", kwu / 250, (kwu % 250) * 100 / 250)
}

fn label(s: &str) -> Result<Label, CliError> {
    Label::new(s).map_err(|e| CliError::Usage(format!("{s:?} is not a valid name: {e}")))
}

struct Keystore {
    store: Arc<dyn KvStore>,
    hsm: Arc<dyn HsmProvider>,
}

fn keystore(dir: &Path) -> Result<Keystore, CliError> {
    let store: Arc<dyn KvStore> = open_store(dir, false)?;
    let hsm = unlocked_in(Arc::clone(&store))?;
    Ok(Keystore {
        store,
        hsm: Arc::new(hsm),
    })
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

fn load(ks: &Keystore, name: &str) -> Result<AnyaWallet, CliError> {
    AnyaWallet::load(Arc::clone(&ks.store), Arc::clone(&ks.hsm), clock(), label(name)?).map_err(CliError::chain)
}

/// The wallet without its keys: for what needs no signature, and for every check a signing
/// command makes before the passphrase is asked for.
fn watch_only(dir: &Path, name: &str) -> Result<AnyaWallet, CliError> {
    let store: Arc<dyn KvStore> = open_store(dir, false)?;
    AnyaWallet::load_watch_only(store, clock(), label(name)?).map_err(CliError::chain)
}

fn descriptor(wallet: &AnyaWallet) -> String {
    wallet.bdk().public_descriptor(KeychainKind::External).to_string()
}

fn address(s: &str, network: Network) -> Result<ScriptBuf, CliError> {
    let address = Address::from_str(s.trim()).map_err(|e| CliError::Usage(format!("{s:?} is not an address: {e}")))?;
    let address = address
        .require_network(network)
        .map_err(|_| CliError::Usage(format!("{s} is not an address of this wallet's network ({network})")))?;
    Ok(address.script_pubkey())
}

fn read_psbt(file: &Path) -> Result<Psbt, CliError> {
    let bytes = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Io("cannot read standard input", e))?;
        buf
    } else {
        std::fs::read(file).map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))?
    };
    psbt::decode(&bytes).map_err(|e| CliError::Message(format!("{}: {}", file.display(), chain(&e))))
}

fn write_psbt(psbt: &Psbt, output: Option<&Path>) -> Result<(), CliError> {
    let text = psbt::encode_base64(psbt);
    match output {
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

/// Broadcasts `tx` through `node` and prints its txid once bitcoind accepted it; without a
/// node, prints the txid and the raw transaction and says that it was not broadcast. With the
/// `wallet` that signed it, a rejected transaction gives back its policy reservation.
fn deliver(wallet: Option<&mut AnyaWallet>, tx: &Transaction, node: Option<&Node>) -> Result<(), CliError> {
    let Some(node) = node else {
        println!("{}", tx.compute_txid());
        println!("{}", serialize_hex(tx));
        eprintln!(
            "signed but NOT broadcast (--no-broadcast): send the hex with `bitcoin-cli sendrawtransaction`; \
             it counts as spent until then"
        );
        return Ok(());
    };
    let sent = match wallet {
        Some(wallet) => node.chain.broadcast_for(wallet, tx),
        None => node.chain.broadcast(tx),
    };
    match sent {
        Ok(txid) => {
            println!("{txid}");
            eprintln!("broadcast through bitcoind at {}", node.url);
            Ok(())
        }
        // Refused by the node: it never left, and the wallet released its reservation.
        Err(e @ RpcError::Rejected { .. }) => Err(CliError::Message(chain(&e))),
        Err(e) => {
            // Whether it reached the node is unknown: keep it counted, hand over the hex.
            println!("{}", serialize_hex(tx));
            Err(CliError::Message(format!(
                "broadcasting {} failed, it may not have reached the network ({}); the raw transaction is on standard output for `bitcoin-cli sendrawtransaction`",
                tx.compute_txid(),
                node.error(&e)
            )))
        }
    }
}

/// The error's message followed by each source whose text it does not already contain.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

pub(crate) fn wallet(dir: &Path, command: WalletCommand) -> Result<(), CliError> {
    match command {
        WalletCommand::New {
            name,
            root,
            kind,
            account,
            network,
            birthday,
        } => {
            let name = label(&name)?;
            let root = label(&root)?;
            let ks = keystore(dir)?;
            let template = match kind {
                Kind::Bip86 => Template::Bip86 { root, account },
                Kind::Bip84 => Template::Bip84 { root, account },
            };
            let mut wallet = AnyaWallet::create(ks.store, ks.hsm, clock(), name, &template, network.into())
                .map_err(CliError::chain)?;
            match birthday {
                Some(height) => {
                    wallet.set_birthday(height).map_err(CliError::chain)?;
                    eprintln!("birthday: block {height}; the first sync starts there");
                }
                None => eprintln!("no --birthday: the first sync scans from the genesis block"),
            }
            println!("{}", descriptor(&wallet));
        }
        WalletCommand::List => {
            let store: Arc<dyn KvStore> = open_store(dir, false)?;
            for name in AnyaWallet::list(&*store).map_err(CliError::chain)? {
                let wallet =
                    AnyaWallet::load_watch_only(Arc::clone(&store), clock(), name.clone()).map_err(CliError::chain)?;
                println!("{name}\t{}\t{}", wallet.network(), descriptor(&wallet));
            }
        }
        WalletCommand::Address { name } => {
            let info = watch_only(dir, &name)?.next_address().map_err(CliError::chain)?;
            println!("{}", info.address);
        }
        WalletCommand::Balance { name } => {
            let balance = watch_only(dir, &name)?.balance();
            println!("spendable         {} sat", balance.trusted_spendable().to_sat());
            println!("confirmed         {} sat", balance.confirmed.to_sat());
            println!("pending (own)     {} sat", balance.trusted_pending.to_sat());
            println!("pending (others)  {} sat", balance.untrusted_pending.to_sat());
            println!("immature          {} sat", balance.immature.to_sat());
            println!("total             {} sat", balance.total().to_sat());
        }
        WalletCommand::Sync { name, rpc } => {
            let mut wallet = watch_only(dir, &name)?;
            let node = rpc.connect(wallet.network())?;
            let report = node.chain.sync_wallet(&mut wallet).map_err(|e| node.error(&e))?;
            println!(
                "synced to height {} ({}): {} blocks, {} mempool transactions",
                report.tip.0, report.tip.1, report.blocks, report.mempool_txs
            );
            let balance = wallet.balance();
            println!(
                "spendable  {} sat (confirmed, and own unconfirmed change)",
                balance.trusted_spendable().to_sat()
            );
            println!(
                "pending    {} sat (unconfirmed payments from others)",
                balance.untrusted_pending.to_sat()
            );
            println!(
                "immature   {} sat (coinbase, spendable after 100 confirmations)",
                balance.immature.to_sat()
            );
        }
        WalletCommand::Send {
            name,
            to,
            amount,
            fee,
            psbt_out,
            no_broadcast,
            rpc,
        } => {
            // Everything that can fail without a key fails here, before the passphrase.
            let mut watch = watch_only(dir, &name)?;
            let recipients = [(address(&to, watch.network())?, amount)];
            let broadcast = psbt_out.is_none() && !no_broadcast;
            let node = if broadcast || !fee.is_given() {
                Some(rpc.connect(watch.network())?)
            } else {
                None
            };
            let fee_rate = fee.resolve(node.as_ref())?;
            let mut psbt = watch.build(&recipients, fee_rate).map_err(CliError::chain)?;
            drop(watch);
            if let Some(path) = psbt_out {
                return write_psbt(&psbt, Some(&path));
            }
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let tx = wallet.complete(&mut psbt, now()).map_err(CliError::chain)?;
            deliver(Some(&mut wallet), &tx, node.as_ref().filter(|_| broadcast))?;
        }
        WalletCommand::BumpFee {
            name,
            txid,
            fee_rate,
            no_broadcast,
            rpc,
        } => {
            let mut watch = watch_only(dir, &name)?;
            let node = if no_broadcast {
                None
            } else {
                Some(rpc.connect(watch.network())?)
            };
            let mut psbt = watch.bump_fee(txid, fee_rate).map_err(CliError::chain)?;
            drop(watch);
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let tx = wallet.complete(&mut psbt, now()).map_err(CliError::chain)?;
            deliver(Some(&mut wallet), &tx, node.as_ref())?;
        }
        WalletCommand::Policy {
            name,
            clear,
            max_per_tx,
            max_per_24h,
            allow,
            max_fee_rate,
            max_fee,
        } => {
            let changed = clear
                || max_per_tx.is_some()
                || max_per_24h.is_some()
                || !allow.is_empty()
                || max_fee_rate.is_some()
                || max_fee.is_some();
            // Showing the rules needs no key; changing them needs the passphrase.
            let wallet = if changed {
                load(&keystore(dir)?, &name)?
            } else {
                watch_only(dir, &name)?
            };
            let engine = wallet.policy();
            let mut rules = if clear {
                SpendPolicy::default()
            } else {
                engine.rules().map_err(CliError::chain)?
            };
            rules.max_per_tx = max_per_tx.or(rules.max_per_tx);
            rules.max_per_24h = max_per_24h.or(rules.max_per_24h);
            rules.max_fee_rate = max_fee_rate.or(rules.max_fee_rate);
            rules.max_fee = max_fee.or(rules.max_fee);
            if !allow.is_empty() {
                let mut list = rules.allowlist.take().unwrap_or_default();
                for a in &allow {
                    let script = address(a, wallet.network())?;
                    if !list.contains(&script) {
                        list.push(script);
                    }
                }
                rules.allowlist = Some(list);
            }
            if changed {
                engine.set_rules(&rules).map_err(CliError::chain)?;
            }
            print_rules(&rules, wallet.network());
            let spent = engine.spent_last_24h().map_err(CliError::chain)?;
            println!("spent in the last 24h  {} sat", spent.to_sat());
        }
    }
    Ok(())
}

fn print_rules(rules: &SpendPolicy, network: Network) {
    let amount = |a: Option<Amount>| a.map_or_else(|| "no limit".to_owned(), |a| format!("{} sat", a.to_sat()));
    println!("max per transaction    {}", amount(rules.max_per_tx));
    println!("max per 24 hours       {}", amount(rules.max_per_24h));
    println!("max fee                {}", amount(rules.max_fee));
    println!(
        "max fee rate           {}",
        rules.max_fee_rate.map_or_else(|| "no limit".to_owned(), show_rate)
    );
    println!(
        "change to wallet       {}",
        if rules.change_to_wallet {
            "required"
        } else {
            "not checked"
        }
    );
    match &rules.allowlist {
        None => println!("destinations           any"),
        Some(list) => {
            println!("destinations           only these {}:", list.len());
            for script in list {
                match Address::from_script(script, network) {
                    Ok(a) => println!("  {a}"),
                    Err(_) => println!("  script {}", script.to_hex_string()),
                }
            }
        }
    }
}

pub(crate) fn psbt(dir: &Path, command: PsbtCommand) -> Result<(), CliError> {
    match command {
        PsbtCommand::Inspect { file, network } => {
            let psbt = read_psbt(&file)?;
            let info = psbt::try_inspect(&psbt, network.into()).map_err(psbt_error)?;
            println!("{info}");
        }
        PsbtCommand::Sign { file, wallet, output } => {
            let mut psbt = read_psbt(&file)?;
            let ks = keystore(dir)?;
            let wallet = load(&ks, &wallet)?;
            let report = wallet.sign(&mut psbt).map_err(CliError::chain)?;
            eprintln!(
                "added {} signatures ({} ecdsa, {} taproot key path, {} taproot script)",
                report.total(),
                report.ecdsa,
                report.taproot_key,
                report.taproot_script
            );
            write_psbt(&psbt, output.as_deref())?;
        }
        PsbtCommand::Combine { files, output } => {
            let mut psbts = files.iter().map(|f| read_psbt(f));
            let first = psbts
                .next()
                .ok_or_else(|| CliError::Usage("combine needs PSBT files".to_owned()))??;
            let combined = psbts.try_fold(first, |acc, next| {
                psbt::combine(acc, next?).map_err(|e| CliError::Message(chain(&e)))
            })?;
            write_psbt(&combined, output.as_deref())?;
        }
        PsbtCommand::Finalize {
            file,
            wallet,
            network,
            output,
            no_broadcast,
            rpc,
        } => {
            let mut psbt = read_psbt(&file)?;
            let watch = wallet.as_deref().map(|name| watch_only(dir, name)).transpose()?;
            let network = match (&watch, network.map(Network::from)) {
                (Some(w), Some(n)) if w.network() != n => {
                    return Err(CliError::Usage(format!(
                        "--network {n} differs from the wallet's network {}",
                        w.network()
                    )))
                }
                (Some(w), _) => w.network(),
                (None, n) => n.unwrap_or(Network::Regtest),
            };
            let node = if no_broadcast {
                None
            } else {
                Some(rpc.connect(network)?)
            };
            let tx = match &watch {
                Some(w) => w.finalize(&mut psbt).map_err(CliError::chain)?,
                None => {
                    psbt::finalize(&mut psbt).map_err(psbt_error)?;
                    psbt::extract_verified(&psbt).map_err(psbt_error)?
                }
            };
            drop(watch);
            // Broadcasting for a wallet opens its keystore, so that a rejected transaction's
            // release reaches the audit chain. Nothing is signed here.
            let mut wallet = match (wallet, &node) {
                (Some(name), Some(_)) => Some(load(&keystore(dir)?, &name)?),
                _ => None,
            };
            if let Some(path) = output {
                write_psbt(&psbt, Some(&path))?;
            }
            deliver(wallet.as_mut(), &tx, node.as_ref())?;
        }
    }
    Ok(())
}

fn psbt_error(e: PsbtError) -> CliError {
    CliError::Message(chain(&e))
}

impl CliError {
    pub(crate) fn chain<E: std::error::Error>(e: E) -> Self {
        CliError::Message(chain(&e))
    }
}
