//! `anya wallet …` and `anya psbt …`: descriptor wallets whose keys stay in the keystore, and
//! PSBTs from anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anya_bitcoin::policy::SpendPolicy;
use anya_bitcoin::psbt::{self, PsbtError};
use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, Template};
use anya_core_types::{Clock, SystemClock};
use anya_hsm::{HsmProvider, Label, SecretString};
use anya_storage::KvStore;
use bdk_wallet::KeychainKind;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, Denomination, FeeRate, Network, ScriptBuf, Transaction, Txid};
use clap::{Args, Subcommand, ValueEnum};

use crate::{open_store, unlocked_in, CliError};

pub(crate) const WALLET_ABOUT: &str = "\
Descriptor wallets whose private keys never leave the keystore.

A wallet is a BIP86 (Taproot, the default) or BIP84 (native segwit) account below a BIP32 root \
key of the keystore. Its state (addresses, coins, transactions) and its spending policy live in \
the same store. Every signature is checked against the policy first and recorded in the audit \
chain; every transaction is verified by Bitcoin Core's script interpreter before it is printed.

A new wallet has no coins. Pay to `anya wallet address`, then bring the wallet up to date with \
`anya wallet sync --rpc-url … --rpc-cookie …` against a bitcoind.

Example (regtest):
  anya key new root --type bip32
  anya wallet new savings --root root --kind bip86 --network regtest
  anya wallet address savings
  anya wallet sync savings --rpc-url http://127.0.0.1:18443 --rpc-cookie ~/.bitcoin/regtest/.cookie
  anya wallet balance savings
  anya wallet policy savings --max-per-tx 0.01btc --max-fee-rate 50
  anya wallet send savings --to bcrt1q… --amount 25000 --fee-rate 2
  anya wallet bump-fee savings --txid <txid> --fee-rate 5";

pub(crate) const PSBT_ABOUT: &str = "\
Partially signed transactions (BIP174/BIP370/BIP371) from this or any other wallet.

FILE is a path or `-` for standard input, holding the PSBT as base64 (what Bitcoin Core prints), \
hex, or raw binary.

Example:
  bitcoin-cli walletcreatefundedpsbt … > tx.psbt
  anya psbt inspect tx.psbt --network testnet
  anya psbt sign tx.psbt --wallet savings -o signed.psbt
  anya psbt combine signed.psbt cosigner.psbt -o both.psbt
  anya psbt finalize both.psbt";

/// `bitcoind` to talk to.
#[derive(Debug, Args)]
pub(crate) struct RpcArgs {
    /// Bitcoin Core's RPC address, e.g. http://127.0.0.1:18443; without it nothing is broadcast.
    #[arg(long, env = "ANYA_RPC_URL")]
    rpc_url: Option<String>,
    /// Bitcoin Core's cookie file (`<datadir>/[regtest/].cookie`).
    #[arg(long, env = "ANYA_RPC_COOKIE", conflicts_with = "rpc_user")]
    rpc_cookie: Option<PathBuf>,
    /// RPC user name (with the password from ANYA_RPC_PASSWORD), instead of a cookie.
    #[arg(long, env = "ANYA_RPC_USER")]
    rpc_user: Option<String>,
}

impl RpcArgs {
    fn connect(&self) -> Result<Option<BitcoindChain>, CliError> {
        let Some(url) = &self.rpc_url else { return Ok(None) };
        let auth =
            match (&self.rpc_cookie, &self.rpc_user) {
                (Some(cookie), _) => RpcAuth::Cookie(cookie.clone()),
                (None, Some(user)) => RpcAuth::UserPass {
                    user: user.clone(),
                    pass: SecretString::new(std::env::var("ANYA_RPC_PASSWORD").map_err(|_| {
                        CliError::Usage("--rpc-user needs the password in ANYA_RPC_PASSWORD".to_owned())
                    })?),
                },
                (None, None) => {
                    return Err(CliError::Usage(
                        "--rpc-url needs --rpc-cookie FILE or --rpc-user USER".to_owned(),
                    ))
                }
            };
        Ok(Some(
            BitcoindChain::connect(RpcConfig::new(url.clone(), auth)).map_err(CliError::chain)?,
        ))
    }
}

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
    Signet,
    Bitcoin,
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Regtest => Network::Regtest,
            NetworkArg::Testnet => Network::Testnet,
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
    },
    /// List the wallets: name, network, receive descriptor.
    List,
    /// Reveal the wallet's next receive address.
    Address {
        /// The wallet.
        name: String,
    },
    /// Show the wallet's balance in satoshis.
    Balance {
        /// The wallet.
        name: String,
    },
    /// Bring the wallet up to bitcoind's tip and mempool.
    Sync {
        /// The wallet.
        name: String,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Pay an address: build, check the policy, sign in the keystore, finalize and verify.
    ///
    /// Prints the txid, then the raw transaction in hex. With --rpc-url it is broadcast;
    /// otherwise broadcast the hex yourself (`bitcoin-cli sendrawtransaction HEX`). With
    /// --psbt-out nothing is signed: the unsigned PSBT is written for review or other signers.
    Send {
        /// The wallet.
        name: String,
        /// The address to pay (of the wallet's network).
        #[arg(long)]
        to: String,
        /// The amount: satoshis (`25000`, `25000sat`) or bitcoin (`0.00025`, `0.00025btc`).
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
        /// The fee rate in sat/vB (decimals allowed, e.g. 1.5).
        #[arg(long, value_parser = parse_fee_rate)]
        fee_rate: FeeRate,
        /// Write the unsigned PSBT (base64) here (`-` for standard output) instead of signing.
        #[arg(long)]
        psbt_out: Option<PathBuf>,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Replace an unconfirmed transaction of the wallet with one paying a higher fee rate (BIP125).
    BumpFee {
        /// The wallet.
        name: String,
        /// The transaction to replace.
        #[arg(long)]
        txid: Txid,
        /// The new fee rate in sat/vB.
        #[arg(long, value_parser = parse_fee_rate)]
        fee_rate: FeeRate,
        #[command(flatten)]
        rpc: RpcArgs,
    },
    /// Show the wallet's spending policy; with options, change it first.
    ///
    /// Amounts are satoshis or bitcoin (`0.01btc`); fee rates are sat/vB. Every signature the
    /// wallet makes is checked against these rules first.
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
    /// Finalize a fully signed PSBT, verify it with Bitcoin Core's script interpreter, and
    /// print the txid and the raw transaction in hex.
    Finalize {
        /// The PSBT file, or `-`.
        file: PathBuf,
        /// Finalize with this wallet's descriptors (needed for scripts miniscript cannot
        /// infer from the PSBT alone).
        #[arg(long)]
        wallet: Option<String>,
        /// Also write the finalized PSBT (base64) here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        rpc: RpcArgs,
    },
}

fn parse_amount(s: &str) -> Result<Amount, String> {
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
fn parse_fee_rate(s: &str) -> Result<FeeRate, String> {
    let bad = |why: &str| format!("{s:?} is not a fee rate in sat/vB: {why}");
    let scaled = Amount::from_str_in(s.trim(), Denomination::Bitcoin).map_err(|e| bad(&e.to_string()))?;
    let kwu = scaled.to_sat().saturating_mul(250) / 100_000_000;
    if kwu == 0 {
        return Err(bad("it must be at least 0.004 sat/vB"));
    }
    Ok(FeeRate::from_sat_per_kwu(kwu))
}

fn show_rate(rate: FeeRate) -> String {
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

/// Prints the txid and hex, and broadcasts when bitcoind is configured.
fn deliver(tx: &Transaction, rpc: &RpcArgs) -> Result<(), CliError> {
    println!("{}", tx.compute_txid());
    println!("{}", serialize_hex(tx));
    match rpc.connect()? {
        Some(node) => {
            let txid = node.broadcast(tx).map_err(CliError::chain)?;
            eprintln!("broadcast {txid}");
        }
        None => eprintln!("not broadcast (no --rpc-url): send the hex with `bitcoin-cli sendrawtransaction`"),
    }
    Ok(())
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
        } => {
            let name = label(&name)?;
            let root = label(&root)?;
            let ks = keystore(dir)?;
            let template = match kind {
                Kind::Bip86 => Template::Bip86 { root, account },
                Kind::Bip84 => Template::Bip84 { root, account },
            };
            let wallet = AnyaWallet::create(ks.store, ks.hsm, clock(), name, &template, network.into())
                .map_err(CliError::chain)?;
            println!("{}", descriptor(&wallet));
        }
        WalletCommand::List => {
            let ks = keystore(dir)?;
            for name in AnyaWallet::list(&*ks.store).map_err(CliError::chain)? {
                let wallet = load(&ks, name.as_str())?;
                println!("{name}\t{}\t{}", wallet.network(), descriptor(&wallet));
            }
        }
        WalletCommand::Address { name } => {
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let info = wallet.next_address().map_err(CliError::chain)?;
            println!("{}", info.address);
        }
        WalletCommand::Balance { name } => {
            let ks = keystore(dir)?;
            let balance = load(&ks, &name)?.balance();
            println!("confirmed         {} sat", balance.confirmed.to_sat());
            println!("pending (own)     {} sat", balance.trusted_pending.to_sat());
            println!("pending (others)  {} sat", balance.untrusted_pending.to_sat());
            println!("immature          {} sat", balance.immature.to_sat());
            println!("total             {} sat", balance.total().to_sat());
        }
        WalletCommand::Sync { name, rpc } => {
            let node = rpc
                .connect()?
                .ok_or_else(|| CliError::Usage("sync needs --rpc-url (or ANYA_RPC_URL)".to_owned()))?;
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let report = node.sync_wallet(&mut wallet).map_err(CliError::chain)?;
            println!(
                "synced to height {} ({}): {} blocks, {} mempool transactions",
                report.tip.0, report.tip.1, report.blocks, report.mempool_txs
            );
            println!("balance {} sat", wallet.balance().total().to_sat());
        }
        WalletCommand::Send {
            name,
            to,
            amount,
            fee_rate,
            psbt_out,
            rpc,
        } => {
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let recipients = [(address(&to, wallet.network())?, amount)];
            match psbt_out {
                Some(path) => {
                    let psbt = wallet.build(&recipients, fee_rate).map_err(CliError::chain)?;
                    write_psbt(&psbt, Some(&path))?;
                }
                None => {
                    let tx = wallet.send(&recipients, fee_rate, now()).map_err(CliError::chain)?;
                    deliver(&tx, &rpc)?;
                }
            }
        }
        WalletCommand::BumpFee {
            name,
            txid,
            fee_rate,
            rpc,
        } => {
            let ks = keystore(dir)?;
            let mut wallet = load(&ks, &name)?;
            let mut psbt = wallet.bump_fee(txid, fee_rate).map_err(CliError::chain)?;
            wallet.sign(&mut psbt).map_err(CliError::chain)?;
            let tx = wallet.finalize(&mut psbt).map_err(CliError::chain)?;
            wallet
                .apply_unconfirmed(vec![tx.clone()], now())
                .map_err(CliError::chain)?;
            deliver(&tx, &rpc)?;
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
            let ks = keystore(dir)?;
            let wallet = load(&ks, &name)?;
            let engine = wallet.policy();
            let mut rules = if clear {
                SpendPolicy::default()
            } else {
                engine.rules().map_err(CliError::chain)?
            };
            let changed = clear
                || max_per_tx.is_some()
                || max_per_24h.is_some()
                || !allow.is_empty()
                || max_fee_rate.is_some()
                || max_fee.is_some();
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
            println!("{}", psbt::inspect(&psbt, network.into()));
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
            output,
            rpc,
        } => {
            let mut psbt = read_psbt(&file)?;
            let tx = match wallet {
                Some(name) => {
                    let ks = keystore(dir)?;
                    load(&ks, &name)?.finalize(&mut psbt).map_err(CliError::chain)?
                }
                None => {
                    psbt::finalize(&mut psbt).map_err(psbt_error)?;
                    psbt::extract_verified(&psbt).map_err(psbt_error)?
                }
            };
            if let Some(path) = output {
                write_psbt(&psbt, Some(&path))?;
            }
            deliver(&tx, &rpc)?;
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
