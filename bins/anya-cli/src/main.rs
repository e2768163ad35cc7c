//! `anya`: the command line of a software HSM keystore kept in a data directory.
//!
//! Wiring only: the keystore, signing and the audit chain are `anya-hsm`; the store is
//! `anya-storage`'s embedded SQLite; wallets, PSBTs and the spending policy are `anya-bitcoin`;
//! the DLC oracle is `anya-layer2`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command line prints its results and errors"
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anya_hsm::anchor::FileAnchor;
use anya_hsm::{
    AuxRand, HsmError, HsmProvider, KeyInfo, KeyPolicy, KeyRef, KeySpec, Label, PublicKey, SecretString, SoftwareHsm,
    SoftwareOptions,
};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::hex::{DisplayHex, FromHex};
use clap::{Parser, Subcommand, ValueEnum};

mod dlc;
mod ln;
mod node;
mod onchain;
mod oracle;

const LONG_ABOUT: &str = "\
anya keeps keys in a software HSM: a keystore sealed with AES-256-GCM under a key derived \
from your passphrase (Argon2id, 64 MiB, 3 passes), stored in an embedded SQLite database in the \
data directory. Every operation appends a record to a hash-chained audit log in the same store.

The passphrase is read from the ANYA_PASSPHRASE environment variable, or asked for on the \
terminal (not echoed).

Examples:
  anya hsm init                                   # create the keystore in ./anya-data
  anya key new treasury --type secp256k1          # a new secp256k1 key; prints its public key
  anya key list
  anya sign treasury --scheme schnorr --message-hex 0101010101010101010101010101010101010101010101010101010101010101
  anya audit verify                               # check the audit chain
  ANYA_DATA_DIR=/var/lib/anya anya hsm unlock-check

Bitcoin (see `anya wallet --help` and `anya psbt --help`):
  anya key new root --type bip32                  # a BIP32 root for wallets
  anya wallet new savings --root root             # a BIP86 (Taproot) regtest wallet
  anya wallet address savings
  anya wallet sync savings                        # bitcoind found as bitcoin-cli finds it
  anya wallet send savings --to ADDRESS --amount 25000
  anya psbt inspect tx.psbt

A DLC oracle (see `anya oracle --help`; needs --anchor-dir or ANYA_ANCHOR_DIR):
  anya oracle init                                # prints the oracle's x-only public key
  anya oracle event create-enum match-42 --maturity 1767225600 --outcome home --outcome away
  anya oracle attest match-42 --outcome home

DLC contracts (see `anya dlc --help`):
  anya key new dlc-root --type bip32 --dlc        # a root that may derive contract keys
  anya wallet new bets --root dlc-root --kind bip84
  anya dlc identity --wallet bets                 # what the counterparty names you by
  anya dlc offer … --out offer.msg                # then accept, sign, receive, close, list

Lightning, through a running anya-node with [ln] enabled (see `anya ln --help`):
  anya ln info
  anya ln open NODE_ID@HOST:PORT --amount 1000000
  anya ln pay lnbcrt…                             # then invoice, offer, channels, payments, close";

const SIGN_ABOUT: &str = "\
Sign a message with a stored key; prints the signature in hex.

  ecdsa    DER-encoded, low-S ECDSA (RFC 6979) of a 32-byte digest.
  schnorr  64-byte BIP340 signature of a 32-byte message, with fresh auxiliary randomness.
  ed25519  64-byte Ed25519 signature of a message of any length.
  p256     DER-encoded ECDSA P-256 signature of SHA-256 of a message of any length
           (ES256, WebAuthn, X.509); not normalised to low-S.";

/// The anya command line: keys, signatures and the audit chain of a software HSM keystore.
#[derive(Debug, Parser)]
#[command(name = "anya", version, about, long_about = LONG_ABOUT)]
struct Cli {
    /// Directory holding the store (`anya.db`); created by `hsm init`.
    #[arg(long, global = true, env = "ANYA_DATA_DIR", default_value = "./anya-data")]
    data_dir: PathBuf,

    /// Directory of the keystore's rollback anchor: a copy of its audit head and spent nonces,
    /// so that a data directory restored from an older backup is refused instead of used. Keep
    /// it where restores of the data directory do not reach, and back it up with it
    /// (docs/OPERATIONS.md). Without it, such a restore goes unnoticed.
    #[arg(long, global = true, env = "ANYA_ANCHOR_DIR")]
    anchor_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or check the keystore.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// Create and list keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign a message with a stored key; prints the signature in hex.
    #[command(long_about = SIGN_ABOUT)]
    Sign {
        /// The key id.
        id: String,
        /// The signature scheme.
        #[arg(long, value_enum)]
        scheme: Scheme,
        /// The message (for ecdsa and schnorr: the 32-byte digest) in hex.
        #[arg(long)]
        message_hex: String,
    },
    /// Inspect the audit chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bitcoin wallets whose keys stay in the keystore: create, receive, send, bump fees, set
    /// the spending policy.
    #[command(subcommand, long_about = onchain::WALLET_ABOUT)]
    Wallet(onchain::WalletCommand),
    /// Inspect, sign, combine and finalize PSBTs.
    #[command(subcommand, long_about = onchain::PSBT_ABOUT)]
    Psbt(onchain::PsbtCommand),
    /// A DLC oracle whose key and nonces stay in the keystore: announce events, attest
    /// outcomes. Needs --anchor-dir.
    #[command(subcommand, long_about = oracle::ORACLE_ABOUT)]
    Oracle(oracle::OracleCommand),
    /// DLC contracts funded by a wallet of the keystore: offer, accept, sign, follow and close
    /// them; messages travel as files.
    #[command(subcommand, long_about = dlc::DLC_ABOUT)]
    Dlc(dlc::DlcCommand),
    /// The Lightning node of a running anya-node: channels, invoices, offers, payments
    /// (through its API).
    #[command(subcommand, long_about = ln::LN_ABOUT)]
    Ln(ln::LnCommand),
}

#[derive(Debug, Subcommand)]
enum HsmCommand {
    /// Create a new keystore in the data directory, sealed under a passphrase.
    Init,
    /// Check that the passphrase unlocks the keystore.
    UnlockCheck,
    /// Accept a data directory restored behind its rollback anchor (after a restore that was
    /// meant): moves the anchor to the restored store and records the override in the audit
    /// chain. Needs the passphrase and --anchor-dir. Spent oracle nonces stay spent.
    AcceptRollback,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a new key inside the keystore; prints its public key.
    New {
        /// The key id (letters, digits, `-`, `_`, `.`, up to 64 bytes).
        id: String,
        /// The kind of key.
        #[arg(long = "type", value_enum)]
        key_type: KeyType,
        /// Allow the secret to be exported later (fixed at creation).
        #[arg(long)]
        exportable: bool,
        /// For a bip32 root: allow DLC contract keys below it (fixed at creation). Only the
        /// per-contract keys of its DLC branch may then leave the keystore, each time recorded
        /// in the audit chain; the wallet's keys never do (docs/adr/0006-dlc-contract-keys.md).
        #[arg(long)]
        dlc: bool,
    },
    /// List every key: id, type, exportable, public key.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every record of the audit chain and its head; prints the count and head hash.
    Verify,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyType {
    /// A secp256k1 key (ECDSA, BIP340, Taproot).
    Secp256k1,
    /// An Ed25519 key.
    Ed25519,
    /// An AES-256-GCM key.
    Aes256,
    /// A random BIP32 root (signs at derivation paths inside the keystore).
    Bip32,
    /// A NIST P-256 (secp256r1) key for ECDSA with SHA-256 (ES256, WebAuthn, X.509).
    P256,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scheme {
    Ecdsa,
    Schnorr,
    Ed25519,
    P256,
}

/// What can go wrong, each with a one-line message.
#[derive(Debug)]
enum CliError {
    Hsm(HsmError),
    Store(anya_storage::StoreError),
    Io(&'static str, std::io::Error),
    Usage(String),
    /// A finished message (a wallet, PSBT or node error with its sources).
    Message(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Hsm(e) => write_chain(f, e),
            CliError::Store(e) => write_chain(f, e),
            CliError::Io(what, e) => write!(f, "{what}: {e}"),
            CliError::Usage(m) | CliError::Message(m) => f.write_str(m),
        }
    }
}

fn write_chain(f: &mut std::fmt::Formatter<'_>, e: &dyn std::error::Error) -> std::fmt::Result {
    write!(f, "{e}")?;
    let mut source = e.source();
    while let Some(s) = source {
        write!(f, ": {s}")?;
        source = s.source();
    }
    Ok(())
}

impl From<HsmError> for CliError {
    fn from(e: HsmError) -> Self {
        CliError::Hsm(e)
    }
}

impl From<anya_storage::StoreError> for CliError {
    fn from(e: anya_storage::StoreError) -> Self {
        CliError::Store(e)
    }
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(panic_line));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A panic is one line on stderr, never a backtrace. The usual one is standard output closed
/// early (`anya … | head -1`), which ends the process quietly with the exit status of a
/// broken pipe, as shell tools do.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    if message.contains("Broken pipe") {
        std::process::exit(141);
    }
    let location = info
        .location()
        .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
    eprintln!("error: internal error, please report it: {message}{location}");
}

/// The rollback anchor's directory (`--anchor-dir`), set once from the command line.
static ANCHOR_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// The keystore's options: the defaults, with the rollback anchor when one is given.
pub(crate) fn hsm_options() -> Result<SoftwareOptions, CliError> {
    let options = SoftwareOptions::default();
    Ok(match ANCHOR_DIR.get() {
        Some(Some(dir)) => options.with_anchor(Arc::new(FileAnchor::open(dir)?)),
        _ => options,
    })
}

fn run(cli: Cli) -> Result<(), CliError> {
    let _ = ANCHOR_DIR.set(cli.anchor_dir.clone());
    let dir = &cli.data_dir;
    match cli.command {
        Command::Hsm(HsmCommand::Init) => {
            std::fs::create_dir_all(dir).map_err(|e| CliError::Io("cannot create the data directory", e))?;
            let store = open_store(dir, true)?;
            let pass = passphrase(true)?;
            SoftwareHsm::create(store, &pass, hsm_options()?)?;
            println!("created keystore in {}", dir.display());
        }
        Command::Hsm(HsmCommand::AcceptRollback) => {
            if cli.anchor_dir.is_none() {
                return Err(CliError::Usage(
                    "accept-rollback moves the rollback anchor: pass --anchor-dir".to_owned(),
                ));
            }
            let store = open_store(dir, false)?;
            let (_, old, new) = SoftwareHsm::accept_rollback(store, &passphrase(false)?, hsm_options()?)?;
            match old {
                Some(old) => println!(
                    "accepted: the anchor held audit record {}, the store ends at record {}",
                    old.seq, new.seq
                ),
                None => println!("accepted: the anchor was empty, the store ends at record {}", new.seq),
            }
        }
        Command::Hsm(HsmCommand::UnlockCheck) => {
            let hsm = unlocked(dir)?;
            let n = hsm.list_keys()?.len();
            println!("unlocked: the passphrase is correct ({n} keys)");
        }
        Command::Key(KeyCommand::New {
            id,
            key_type,
            exportable,
            dlc,
        }) => {
            let id = Label::new(id).map_err(HsmError::from)?;
            let spec = match key_type {
                KeyType::Secp256k1 => KeySpec::Secp256k1,
                KeyType::Ed25519 => KeySpec::Ed25519,
                KeyType::Aes256 => KeySpec::Aes256,
                KeyType::Bip32 => KeySpec::Bip32Root,
                KeyType::P256 => KeySpec::P256,
            };
            if dlc && spec != KeySpec::Bip32Root {
                return Err(CliError::Usage("--dlc is for a bip32 root (--type bip32)".to_owned()));
            }
            let hsm = unlocked(dir)?;
            let mut policy = KeyPolicy {
                exportable,
                ..KeyPolicy::default_for(spec)
            };
            if dlc {
                policy = policy.allowing(anya_hsm::Usage::ExportDlcChild);
            }
            let info = hsm.generate_key(&id, spec, policy)?;
            println!("{}", key_line(&hsm, &info)?);
        }
        Command::Key(KeyCommand::List) => {
            let hsm = unlocked(dir)?;
            for info in hsm.list_keys()? {
                println!("{}", key_line(&hsm, &info)?);
            }
        }
        Command::Sign {
            id,
            scheme,
            message_hex,
        } => {
            let id = Label::new(id).map_err(HsmError::from)?;
            let message = from_hex(&message_hex)?;
            let hsm = unlocked(dir)?;
            let signature = match scheme {
                Scheme::Ecdsa => hsm
                    .sign_ecdsa(KeyRef::Key(&id), &digest(&message)?)?
                    .serialize_der()
                    .to_vec(),
                Scheme::Schnorr => hsm
                    .sign_schnorr(KeyRef::Key(&id), &digest(&message)?, AuxRand::Fresh)?
                    .as_ref()
                    .to_vec(),
                Scheme::Ed25519 => hsm.sign_ed25519(&id, &message)?.0.to_vec(),
                Scheme::P256 => hsm.sign_p256(&id, &message)?.to_der(),
            };
            println!("{}", to_hex(&signature));
        }
        Command::Wallet(command) => onchain::wallet(dir, command)?,
        Command::Psbt(command) => onchain::psbt(dir, command)?,
        Command::Oracle(command) => oracle::oracle(dir, cli.anchor_dir.is_some(), command)?,
        Command::Dlc(command) => dlc::dlc(dir, cli.anchor_dir.is_some(), command)?,
        Command::Ln(command) => ln::ln(dir, command)?,
        Command::Audit(AuditCommand::Verify) => {
            let store = open_store(dir, false)?;
            let hsm = SoftwareHsm::open(store, hsm_options()?)?;
            let summary = hsm.verify_audit_chain()?;
            println!(
                "audit chain ok: {} records, head {}",
                summary.records,
                to_hex(&summary.head)
            );
        }
    }
    Ok(())
}

fn open_store(dir: &Path, create: bool) -> Result<Arc<SqliteStore>, CliError> {
    let path = dir.join("anya.db");
    if !create && !path.exists() {
        return Err(CliError::Usage(format!(
            "no keystore in {} (run `anya hsm init` first, or pass --data-dir)",
            dir.display()
        )));
    }
    Ok(Arc::new(SqliteStore::open(path, SqliteOptions::default())?))
}

fn unlocked(dir: &Path) -> Result<SoftwareHsm, CliError> {
    unlocked_in(open_store(dir, false)?)
}

fn unlocked_in(store: Arc<dyn KvStore>) -> Result<SoftwareHsm, CliError> {
    let hsm = SoftwareHsm::open(store, hsm_options()?)?;
    hsm.unlock(&passphrase(false)?)?;
    Ok(hsm)
}

fn key_line(hsm: &SoftwareHsm, info: &KeyInfo) -> Result<String, CliError> {
    let public = match info.spec {
        KeySpec::Aes256 => "-".to_owned(),
        _ => match hsm.public_key(KeyRef::Key(&info.id))? {
            PublicKey::Secp256k1(pk) => to_hex(&pk.serialize()),
            PublicKey::Ed25519(pk) => to_hex(&pk),
            PublicKey::P256(pk) => to_hex(&pk),
            _ => "-".to_owned(),
        },
    };
    let spec = match info.spec {
        KeySpec::Secp256k1 => "secp256k1",
        KeySpec::Ed25519 => "ed25519",
        KeySpec::Aes256 => "aes256",
        KeySpec::Bip32Root => "bip32",
        KeySpec::P256 => "p256",
        _ => "other",
    };
    let export = if info.policy.exportable {
        "exportable"
    } else {
        "non-exportable"
    };
    Ok(format!("{}\t{spec}\t{export}\t{public}", info.id))
}

/// The passphrase from `ANYA_PASSPHRASE`, or read from the terminal without echo.
fn passphrase(confirm: bool) -> Result<SecretString, CliError> {
    anya_hsm::passphrase::read_passphrase(None, confirm).map_err(|e| CliError::Usage(e.to_string()))
}

fn digest(message: &[u8]) -> Result<[u8; 32], CliError> {
    message.try_into().map_err(|_| {
        CliError::Usage(format!(
            "ecdsa and schnorr sign a 32-byte digest; --message-hex has {} bytes",
            message.len()
        ))
    })
}

fn from_hex(s: &str) -> Result<Vec<u8>, CliError> {
    Vec::<u8>::from_hex(s).map_err(|_| CliError::Usage(format!("--message-hex is not hex: {s:?}")))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.to_lower_hex_string()
}
