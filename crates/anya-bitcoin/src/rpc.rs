//! Chain data from Bitcoin Core over JSON-RPC.
//!
//! [`BitcoindChain`] talks to a `bitcoind` through [`bitcoincore_rpc`] over `jsonrpc`'s
//! `simple_http` transport (which, unlike the transport `bitcoincore_rpc::Client::new` picks,
//! takes a timeout). It reads the tip and blocks, broadcasts, counts confirmations, estimates
//! fees with `estimatesmartfee` (falling back to a configured rate when Core has no estimate),
//! and brings an [`AnyaWallet`] up to the node's tip with `bdk_bitcoind_rpc`'s `Emitter`, which
//! finds the point where the wallet's chain and the node's agree and so survives reorgs.
//!
//! # Retries
//!
//! Every call is retried, at most [`RpcConfig::max_retries`] times with a backoff of
//! `backoff_base * 2^attempt`, when the failure says nothing about the request itself:
//! connection refused or reset, a timeout, a closed or truncated reply, HTTP 5xx without a
//! JSON-RPC body (Core's "work queue depth exceeded" is a 503), and `RPC_IN_WARMUP` (-28).
//! Errors that are the caller's (a rejected transaction, -25/-26, an unknown block, a bad
//! parameter), HTTP 401/403 and unreadable replies are returned at once.
//!
//! Broadcasting is safe to retry: Core answers `sendrawtransaction` with the txid when the
//! transaction is already in its mempool.
//!
//! # Rejected broadcasts
//!
//! [`BitcoindChain::broadcast_for`] broadcasts a wallet's transaction and, when the node
//! answers that it refuses it (so the transaction certainly did not reach the network through
//! it), releases what the wallet's spending policy reserved for it ([`AnyaWallet::release`]).
//! A transport failure releases nothing: the node may have relayed the transaction before the
//! reply was lost.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anya_hsm::SecretString;
use bdk_bitcoind_rpc::Emitter;
use bitcoin::{Amount, Block, BlockHash, FeeRate, Network, Transaction, Txid};
use bitcoincore_rpc::RpcApi;
use jsonrpc::simple_http::{self, SimpleHttpTransport};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::wallet::{AnyaWallet, WalletError};

/// How many blocks [`BitcoindChain::sync_wallet`] applies between two writes to the store.
pub const SYNC_PERSIST_BLOCKS: u32 = 100;
/// The longest [`BitcoindChain::sync_wallet`] holds applied blocks before writing them, so that
/// a slow node still sees progress stored.
pub const SYNC_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Bitcoin Core's `RPC_IN_WARMUP`: the node is starting and will answer later.
const RPC_IN_WARMUP: i32 = -28;
/// Bitcoin Core's `RPC_INVALID_ADDRESS_OR_KEY`, which it also uses for "no such transaction".
const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
/// The codes with which `sendrawtransaction` refuses a transaction it could read or not:
/// `RPC_VERIFY_ERROR` (-25: missing or spent inputs, fee over the maximum),
/// `RPC_VERIFY_REJECTED` (-26: policy or consensus), `RPC_DESERIALIZATION_ERROR` (-22). Not
/// `RPC_VERIFY_ALREADY_IN_CHAIN` (-27): that transaction did reach the network.
const BROADCAST_REJECTED: [i32; 3] = [-25, -26, -22];

/// How the client proves itself to `bitcoind`.
#[derive(Debug)]
pub enum RpcAuth {
    /// The cookie file `bitcoind` writes into its data directory (`.cookie`, holding
    /// `__cookie__:<password>`). It is read once, by [`BitcoindChain::connect`]; `bitcoind`
    /// writes a new one each time it starts, so connect again after a restart.
    Cookie(PathBuf),
    /// `-rpcuser`/`-rpcpassword` or an `-rpcauth` entry.
    UserPass {
        /// The user name.
        user: String,
        /// The password; its `Debug` output is redacted.
        pass: SecretString,
    },
}

/// Where `bitcoind` is and how hard to try reaching it.
#[derive(Debug)]
pub struct RpcConfig {
    /// `http://host:port`, optionally with a `/wallet/<name>` path.
    pub url: String,
    /// The credentials.
    pub auth: RpcAuth,
    /// The limit for connecting, and for each read and write on the socket. `simple_http`
    /// re-sends once on a fresh socket when a kept-alive socket gives no reply, so one attempt
    /// can take up to twice this.
    pub timeout: Duration,
    /// How many times a failed call is retried (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// The wait before the first retry; each later retry waits twice as long as the one before.
    pub backoff_base: Duration,
    /// The fee rate [`BitcoindChain::estimate_fee_rate`] returns when Core has no estimate (on
    /// regtest, or on a node that has not yet seen enough blocks).
    pub fallback_fee_rate: FeeRate,
}

impl RpcConfig {
    /// The default retry count.
    pub const DEFAULT_MAX_RETRIES: u32 = 3;
    /// The default wait before the first retry.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
    /// The default timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default fallback fee rate, 20 sat/vB: Bitcoin Core's documented example
    /// `-fallbackfee=0.0002` (BTC/kvB).
    pub const DEFAULT_FALLBACK_FEE_RATE: FeeRate = FeeRate::from_sat_per_kwu(5_000);

    /// A configuration for `url` and `auth` with the defaults: a 30 s timeout, 3 retries from a
    /// 100 ms backoff, and a 20 sat/vB fallback fee rate.
    pub fn new(url: impl Into<String>, auth: RpcAuth) -> Self {
        Self {
            url: url.into(),
            auth,
            timeout: Self::DEFAULT_TIMEOUT,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            fallback_fee_rate: Self::DEFAULT_FALLBACK_FEE_RATE,
        }
    }
}

/// What went wrong talking to `bitcoind`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The node could not be reached or did not answer, `attempts` times in a row.
    #[error("bitcoind unreachable after {attempts} attempt(s)")]
    Transport {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The node answered with a JSON-RPC error (for `RPC_IN_WARMUP`, after the retries ran out).
    #[error("bitcoind returned error {code}: {message}")]
    Rpc {
        /// Bitcoin Core's error code (`RPC_VERIFY_REJECTED` is -26, and so on).
        code: i32,
        /// Bitcoin Core's message.
        message: String,
    },
    /// The node refused the credentials (HTTP 401) or the client's address (HTTP 403).
    #[error("bitcoind refused the credentials (http {status})")]
    Auth {
        /// The HTTP status.
        status: u16,
    },
    /// The node answered with an HTTP status that is neither success nor worth retrying.
    #[error("bitcoind answered http {status}")]
    Http {
        /// The HTTP status.
        status: u16,
    },
    /// The cookie file could not be read.
    #[error("cannot read the rpc cookie file {path}")]
    Cookie {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The cookie file does not hold `user:password`.
    #[error("the rpc cookie file {path} does not hold user:password")]
    InvalidCookie {
        /// The file.
        path: PathBuf,
    },
    /// The URL is not one the transport can use.
    #[error("invalid bitcoind url")]
    Url(#[source] simple_http::Error),
    /// The reply could not be decoded into what the method returns.
    #[error("cannot decode bitcoind's reply")]
    Reply(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Applying what the node sent to the wallet failed.
    #[error("cannot apply chain data to the wallet")]
    Wallet(#[from] WalletError),
    /// The node refused to accept the transaction ([`BitcoindChain::broadcast_for`]): it did
    /// not reach the network through this node, and the wallet's reservation was released.
    #[error("bitcoind rejected {txid} (error {code}: {message}); {}", released_note(released))]
    Rejected {
        /// The rejected transaction.
        txid: Txid,
        /// Bitcoin Core's error code (-26 for policy or consensus, -25 for missing inputs).
        code: i32,
        /// Bitcoin Core's reason (`min relay fee not met`, …).
        message: String,
        /// What the spending policy had counted for it and no longer counts; `None` when it
        /// counted nothing (or the wallet is watch-only and cannot release).
        released: Option<Amount>,
    },
    /// The node's chain is not the wallet's network: its genesis block differs.
    #[error("the node is not on {wallet} (its genesis block is {node_genesis})")]
    NetworkMismatch {
        /// The wallet's network.
        wallet: Network,
        /// The node's block at height 0.
        node_genesis: BlockHash,
    },
}

/// The network whose genesis block is `genesis`, among those rust-bitcoin knows; `None` for
/// any other chain. It names the chain a node of [`RpcError::NetworkMismatch`] is on.
pub fn network_of_genesis(genesis: &BlockHash) -> Option<Network> {
    [
        Network::Bitcoin,
        Network::Testnet,
        Network::Testnet4,
        Network::Signet,
        Network::Regtest,
    ]
    .into_iter()
    .find(|n| bitcoin::constants::genesis_block(*n).block_hash() == *genesis)
}

fn released_note(released: &Option<Amount>) -> String {
    match released {
        Some(amount) => format!(
            "its spending-policy reservation of {} sat was released",
            amount.to_sat()
        ),
        None => "no spending-policy reservation was released".to_owned(),
    }
}

/// What to do with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Worth trying again.
    Retry,
    /// The answer will not change.
    Fail,
}

fn classify(error: &bitcoincore_rpc::Error) -> Disposition {
    use bitcoincore_rpc::Error as E;
    match error {
        E::JsonRpc(jsonrpc::Error::Rpc(e)) if e.code == RPC_IN_WARMUP => Disposition::Retry,
        E::JsonRpc(jsonrpc::Error::Transport(e)) => match e.downcast_ref::<simple_http::Error>() {
            Some(simple_http::Error::SocketError(_))
            | Some(simple_http::Error::HttpResponseTooShort { .. })
            | Some(simple_http::Error::IncompleteResponse { .. }) => Disposition::Retry,
            Some(simple_http::Error::HttpErrorCode(status)) if *status >= 500 => Disposition::Retry,
            Some(_) => Disposition::Fail,
            // Another transport's error: assume it is about the connection.
            None => Disposition::Retry,
        },
        E::Io(_) => Disposition::Retry,
        _ => Disposition::Fail,
    }
}

fn into_error(error: bitcoincore_rpc::Error, attempts: u32) -> RpcError {
    use bitcoincore_rpc::Error as E;
    match error {
        E::JsonRpc(jsonrpc::Error::Rpc(e)) => RpcError::Rpc {
            code: e.code,
            message: e.message,
        },
        E::JsonRpc(jsonrpc::Error::Transport(e)) => match e.downcast_ref::<simple_http::Error>() {
            Some(simple_http::Error::HttpErrorCode(status @ (401 | 403))) => RpcError::Auth { status: *status },
            Some(simple_http::Error::HttpErrorCode(status)) if *status < 500 => RpcError::Http { status: *status },
            _ => RpcError::Transport { attempts, source: e },
        },
        E::Io(e) => RpcError::Transport {
            attempts,
            source: Box::new(e),
        },
        e => RpcError::Reply(Box::new(e)),
    }
}

/// Whether a `sendrawtransaction` failure is the node refusing the transaction (so it did not
/// reach the network through this node), as opposed to a failure where delivery is unknown.
fn is_rejection(error: &RpcError) -> bool {
    matches!(error, RpcError::Rpc { code, .. } if BROADCAST_REJECTED.contains(code))
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16))
}

/// A [`bitcoincore_rpc::Client`] that retries; it implements [`RpcApi`] so that the `Emitter`
/// gets the same retries as the typed methods.
struct RetryingClient {
    url: String,
    inner: bitcoincore_rpc::Client,
    max_retries: u32,
    backoff_base: Duration,
    /// Attempts made by the latest call, for the error of a call made through the `Emitter`.
    last_attempts: AtomicU32,
}

impl RetryingClient {
    fn call_counted<T: DeserializeOwned>(
        &self,
        cmd: &str,
        args: &[serde_json::Value],
    ) -> Result<T, (bitcoincore_rpc::Error, u32)> {
        let mut attempt = 0;
        loop {
            match self.inner.call(cmd, args) {
                Ok(value) => {
                    self.last_attempts.store(attempt + 1, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e) if attempt < self.max_retries && classify(&e) == Disposition::Retry => {
                    let wait = backoff(self.backoff_base, attempt);
                    tracing::debug!(method = cmd, attempt, ?wait, error = %e, "retrying bitcoind call");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => {
                    self.last_attempts.store(attempt + 1, Ordering::Relaxed);
                    return Err((e, attempt + 1));
                }
            }
        }
    }
}

impl RpcApi for RetryingClient {
    fn call<T: for<'a> Deserialize<'a>>(&self, cmd: &str, args: &[serde_json::Value]) -> bitcoincore_rpc::Result<T> {
        self.call_counted(cmd, args).map_err(|(e, _)| e)
    }
}

/// What [`BitcoindChain::sync_wallet`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Blocks applied to the wallet (after a reorg, this counts the replacement blocks).
    pub blocks: u32,
    /// The wallet's tip afterwards.
    pub tip: (u32, BlockHash),
    /// Mempool transactions handed to the wallet (it keeps only those relevant to it).
    pub mempool_txs: usize,
    /// Unconfirmed wallet transactions the node's mempool no longer holds; the wallet has
    /// marked them evicted ([`AnyaWallet::apply_evicted`]).
    pub evicted: Vec<Txid>,
}

/// Where a fee estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeeSource {
    /// `estimatesmartfee`, for confirmation within `blocks` blocks (Core may widen the target).
    Estimated {
        /// The target Core answered for.
        blocks: u32,
    },
    /// Core had no estimate; this is [`RpcConfig::fallback_fee_rate`].
    Fallback,
}

/// A fee rate and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeEstimate {
    /// The rate.
    pub fee_rate: FeeRate,
    /// Where it came from.
    pub source: FeeSource,
}

#[derive(Deserialize)]
struct HeaderInfo {
    height: u32,
}

#[derive(Deserialize)]
struct TxInfo {
    #[serde(default)]
    confirmations: Option<u32>,
    /// Present when Core found the transaction in a block (with `-txindex`, possibly a block
    /// that a reorg took out of the best chain); absent for a mempool transaction.
    #[serde(default)]
    blockhash: Option<BlockHash>,
}

#[derive(Deserialize)]
struct SmartFee {
    #[serde(default, rename = "feerate", with = "bitcoin::amount::serde::as_btc::opt")]
    fee_rate: Option<Amount>,
    #[serde(default)]
    blocks: Option<u32>,
}

#[derive(Deserialize)]
struct MempoolEntry {
    fees: MempoolFees,
}

#[derive(Deserialize)]
struct MempoolFees {
    #[serde(with = "bitcoin::amount::serde::as_btc")]
    base: Amount,
}

/// A chain source backed by a `bitcoind` JSON-RPC server.
pub struct BitcoindChain {
    client: Arc<RetryingClient>,
    fallback_fee_rate: FeeRate,
    /// The node's genesis hash, read once: a node does not change chains while running.
    genesis: OnceLock<BlockHash>,
}

impl fmt::Debug for BitcoindChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BitcoindChain")
            .field("url", &self.client.url)
            .field("max_retries", &self.client.max_retries)
            .finish_non_exhaustive()
    }
}

fn read_cookie(path: &Path) -> Result<(String, SecretString), RpcError> {
    let text = SecretString::new(std::fs::read_to_string(path).map_err(|source| RpcError::Cookie {
        path: path.to_path_buf(),
        source,
    })?);
    let line = text.expose().lines().next().unwrap_or_default();
    let (user, pass) = line.split_once(':').ok_or_else(|| RpcError::InvalidCookie {
        path: path.to_path_buf(),
    })?;
    Ok((user.to_owned(), SecretString::from(pass)))
}

impl BitcoindChain {
    /// Sets up the client: resolves the URL and reads the cookie file, without contacting the
    /// node (the first call does, with retries).
    pub fn connect(config: RpcConfig) -> Result<Self, RpcError> {
        let (user, pass) = match &config.auth {
            RpcAuth::Cookie(path) => read_cookie(path)?,
            RpcAuth::UserPass { user, pass } => (user.clone(), SecretString::from(pass.expose())),
        };
        let transport: SimpleHttpTransport = SimpleHttpTransport::builder()
            .url(&config.url)
            .map_err(RpcError::Url)?
            .timeout(config.timeout)
            .auth(user.as_str(), Some(pass.expose()))
            .build();
        let inner = bitcoincore_rpc::Client::from_jsonrpc(jsonrpc::Client::with_transport(transport));
        Ok(Self {
            client: Arc::new(RetryingClient {
                url: config.url,
                inner,
                max_retries: config.max_retries,
                backoff_base: config.backoff_base,
                last_attempts: AtomicU32::new(0),
            }),
            fallback_fee_rate: config.fallback_fee_rate,
            genesis: OnceLock::new(),
        })
    }

    /// Calls `method` with `params` and decodes the result, with the retries described in the
    /// [module docs](self). For the calls this type has no method for (`generatetoaddress` on
    /// regtest, `getmempoolinfo`, …).
    pub fn call<T: DeserializeOwned>(&self, method: &str, params: &[serde_json::Value]) -> Result<T, RpcError> {
        self.client
            .call_counted(method, params)
            .map_err(|(e, attempts)| into_error(e, attempts))
    }

    /// The height of the node's best chain (`getblockcount`).
    pub fn height(&self) -> Result<u32, RpcError> {
        self.call("getblockcount", &[])
    }

    /// The node's best block: its height and hash. The two come from one header, so they agree
    /// even when a block arrives between the calls.
    pub fn tip(&self) -> Result<(u32, BlockHash), RpcError> {
        let hash: BlockHash = self.call("getbestblockhash", &[])?;
        let header: HeaderInfo = self.call("getblockheader", &[serde_json::json!(hash), true.into()])?;
        Ok((header.height, hash))
    }

    /// The hash of the best chain's block at `height`; `Rpc { code: -8 }` above the tip.
    pub fn block_hash(&self, height: u32) -> Result<BlockHash, RpcError> {
        self.call("getblockhash", &[height.into()])
    }

    /// The best chain's block at `height`.
    pub fn block(&self, height: u32) -> Result<Block, RpcError> {
        let hash = self.block_hash(height)?;
        self.block_by_hash(&hash)
    }

    /// The block `hash`, in the best chain or not; `Rpc { code: -5 }` when the node does not
    /// know it.
    pub fn block_by_hash(&self, hash: &BlockHash) -> Result<Block, RpcError> {
        let hex: String = self.call("getblock", &[serde_json::json!(hash), 0.into()])?;
        bitcoin::consensus::encode::deserialize_hex(&hex).map_err(|e| RpcError::Reply(Box::new(e)))
    }

    /// Sends `tx` to the node's mempool and peers (`sendrawtransaction`). A rejection is
    /// `Rpc { code: -26 }` (policy or consensus), `-25` (missing or spent inputs) or `-27`
    /// (already confirmed).
    pub fn broadcast(&self, tx: &Transaction) -> Result<Txid, RpcError> {
        self.call(
            "sendrawtransaction",
            &[bitcoin::consensus::encode::serialize_hex(tx).into()],
        )
    }

    /// [`broadcast`](Self::broadcast)s `wallet`'s transaction `tx`. When the node refuses it
    /// (codes -25, -26, -22: it answered, and the transaction did not reach the network
    /// through it), the wallet releases what its spending policy reserved for `tx` and stops
    /// counting it as pending ([`AnyaWallet::release`]), and the result is
    /// [`RpcError::Rejected`] saying what was released. Transport errors, where delivery is
    /// unknown, and -27 (already in a block) release nothing and are returned as they are.
    pub fn broadcast_for(&self, wallet: &mut AnyaWallet, tx: &Transaction) -> Result<Txid, RpcError> {
        let txid = tx.compute_txid();
        let (code, message) = match self.broadcast(tx) {
            Err(e) if is_rejection(&e) => match e {
                RpcError::Rpc { code, message } => (code, message),
                other => return Err(other),
            },
            other => return other,
        };
        if wallet.is_watch_only() {
            // Nothing a watch-only handle signed can be reserved; the signing side releases.
            return Err(RpcError::Rejected {
                txid,
                code,
                message,
                released: None,
            });
        }
        match wallet.release(txid) {
            Ok(released) => Err(RpcError::Rejected {
                txid,
                code,
                message,
                released,
            }),
            // -25 also answers a confirmed transaction whose outputs are all spent: the
            // wallet's view says it did reach the chain, so nothing is released.
            Err(WalletError::AlreadyConfirmed { .. }) => Err(RpcError::Rpc { code, message }),
            Err(e) => {
                tracing::warn!(%txid, code, %message, "bitcoind rejected the transaction; releasing its reservation failed");
                Err(RpcError::Wallet(e))
            }
        }
    }

    /// The node's genesis block hash (`getblockhash 0`), fetched once per chain source.
    pub fn genesis_hash(&self) -> Result<BlockHash, RpcError> {
        if let Some(hash) = self.genesis.get() {
            return Ok(*hash);
        }
        let hash = self.block_hash(0)?;
        Ok(*self.genesis.get_or_init(|| hash))
    }

    /// [`RpcError::NetworkMismatch`] unless the node's genesis block is `network`'s.
    pub fn check_network(&self, network: Network) -> Result<(), RpcError> {
        let node_genesis = self.genesis_hash()?;
        if node_genesis == bitcoin::constants::genesis_block(network).block_hash() {
            Ok(())
        } else {
            Err(RpcError::NetworkMismatch {
                wallet: network,
                node_genesis,
            })
        }
    }

    /// How many blocks confirm `txid`: `Some(0)` in the mempool, `None` when the node cannot
    /// find it in its mempool or best chain (a transaction whose block a reorg took away, and
    /// which did not return to the mempool, is `None` even though `-txindex` still holds it).
    /// Without `-txindex`, Core finds a confirmed transaction only while one of its outputs is
    /// unspent in a wallet loaded on the node; use [`confirmations_in`](Self::confirmations_in)
    /// when the block is known.
    pub fn confirmations(&self, txid: &Txid) -> Result<Option<u32>, RpcError> {
        match self.call::<TxInfo>("getrawtransaction", &[serde_json::json!(txid), true.into()]) {
            // Core reports 0 confirmations for a block outside the best chain.
            Ok(TxInfo {
                confirmations: None | Some(0),
                blockhash: Some(_),
            }) => Ok(None),
            Ok(info) => Ok(Some(info.confirmations.unwrap_or(0))),
            Err(RpcError::Rpc { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The transaction `txid` (`getrawtransaction`), or `None` when the node does not know it.
    /// A confirmed transaction is found through `-txindex` (the node started by
    /// `anya_testkit::Bitcoind` has it); without it, Core finds only mempool transactions and
    /// those with an output in a wallet loaded on the node. The answer is checked to be the
    /// transaction asked for.
    pub fn transaction(&self, txid: &Txid) -> Result<Option<Transaction>, RpcError> {
        match self.call::<String>("getrawtransaction", &[serde_json::json!(txid), false.into()]) {
            Ok(hex) => {
                let tx: Transaction =
                    bitcoin::consensus::encode::deserialize_hex(&hex).map_err(|e| RpcError::Reply(Box::new(e)))?;
                if tx.compute_txid() != *txid {
                    return Err(RpcError::Reply(
                        format!("getrawtransaction {txid} answered {}", tx.compute_txid()).into(),
                    ));
                }
                Ok(Some(tx))
            }
            Err(RpcError::Rpc { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The fee `txid` pays, from the node's mempool (`getmempoolentry`), or `None` when it is
    /// not in the mempool. This is how to learn the fee of a transaction someone else sent,
    /// for [`AnyaWallet::cpfp_with_parent_fee`].
    pub fn mempool_fee(&self, txid: &Txid) -> Result<Option<Amount>, RpcError> {
        match self.call::<MempoolEntry>("getmempoolentry", &[serde_json::json!(txid)]) {
            Ok(entry) if entry.fees.base <= Amount::MAX_MONEY => Ok(Some(entry.fees.base)),
            Ok(entry) => Err(RpcError::Reply(
                format!(
                    "getmempoolentry: a fee of {} is more than the money supply",
                    entry.fees.base
                )
                .into(),
            )),
            Err(RpcError::Rpc { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How many blocks confirm `txid`, looked up in the block `block` (no `-txindex` needed):
    /// `Some(0)` when the block is no longer in the best chain, `None` when the transaction is
    /// not in it.
    pub fn confirmations_in(&self, txid: &Txid, block: &BlockHash) -> Result<Option<u32>, RpcError> {
        self.tx_confirmations(&[serde_json::json!(txid), true.into(), serde_json::json!(block)])
    }

    fn tx_confirmations(&self, params: &[serde_json::Value]) -> Result<Option<u32>, RpcError> {
        match self.call::<TxInfo>("getrawtransaction", params) {
            Ok(info) => Ok(Some(info.confirmations.unwrap_or(0))),
            Err(RpcError::Rpc { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A fee rate for confirmation within `target_blocks` blocks (Core takes 1 to 1008), and
    /// where it came from. When `estimatesmartfee` has no estimate (it says so in `errors`, as it
    /// always does on regtest) this is the configured fallback; failures to reach the node and
    /// RPC errors (an out-of-range target is `-8`) are returned, never masked by the fallback.
    pub fn estimate_fee(&self, target_blocks: u16) -> Result<FeeEstimate, RpcError> {
        let reply: SmartFee = self.call("estimatesmartfee", &[target_blocks.into()])?;
        Ok(match reply.fee_rate {
            Some(per_kvb) if per_kvb.to_sat() > 0 => FeeEstimate {
                // BTC/kvB to sat/kwu, rounding up so that the estimate is never undercut.
                fee_rate: FeeRate::from_sat_per_kwu(per_kvb.to_sat().div_ceil(4)),
                source: FeeSource::Estimated {
                    blocks: reply.blocks.unwrap_or(u32::from(target_blocks)),
                },
            },
            _ => FeeEstimate {
                fee_rate: self.fallback_fee_rate,
                source: FeeSource::Fallback,
            },
        })
    }

    /// The fee rate of [`estimate_fee`](Self::estimate_fee), without its source.
    pub fn estimate_fee_rate(&self, target_blocks: u16) -> Result<FeeRate, RpcError> {
        Ok(self.estimate_fee(target_blocks)?.fee_rate)
    }

    /// Brings `wallet` to the node's tip: applies every block after the point where the
    /// wallet's checkpoints and the node's best chain agree (so a reorg replaces the stale
    /// blocks), then the node's mempool, seen now. A wallet whose chain is still below its
    /// [birthday](AnyaWallet::birthday) starts at the birthday instead of at genesis.
    ///
    /// Applied blocks are stored in groups: every [`SYNC_PERSIST_BLOCKS`] blocks or
    /// [`SYNC_PERSIST_INTERVAL`], whichever comes first, and once more with the mempool at the
    /// end, so a sync costs a few commits (and `fsync`s) instead of one per block. When it
    /// returns `Ok`, everything it applied is durable. A sync that is killed resumes from the
    /// last group it stored, fetching at most one group again; one that fails on an RPC error
    /// stores what it applied before returning the error.
    ///
    /// The node must be on the wallet's network ([`RpcError::NetworkMismatch`] otherwise).
    pub fn sync_wallet(&self, wallet: &mut AnyaWallet) -> Result<SyncReport, RpcError> {
        self.check_network(wallet.network())?;
        let emitter_error = |e| into_error(e, self.client.last_attempts.load(Ordering::Relaxed));
        let checkpoint = wallet.bdk().latest_checkpoint();
        let start_height = match wallet.birthday() {
            // The emitter asks for the block at its start height: past the node's tip, that
            // is an error rather than "nothing yet".
            Some(birthday) if birthday > checkpoint.height() => birthday.min(self.height()?),
            _ => 0,
        };
        let unconfirmed: Vec<Arc<Transaction>> = wallet
            .bdk()
            .transactions()
            .filter(|tx| !tx.chain_position.is_confirmed())
            .map(|tx| Arc::clone(&tx.tx_node.tx))
            .collect();
        let mut emitter = Emitter::new(&*self.client, checkpoint, start_height, unconfirmed);
        let mut blocks = 0u32;
        let mut staged = 0u32;
        let mut last_write = Instant::now();
        loop {
            let event = match emitter.next_block() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    // Keep what was applied: the next sync starts after it.
                    wallet.persist()?;
                    return Err(emitter_error(e));
                }
            };
            // After a skip to the birthday the block's parent is not in the wallet's chain;
            // the emitter says which block it connects through.
            wallet.stage_block_connected_to(&event.block, event.block_height(), event.connected_to())?;
            blocks += 1;
            staged += 1;
            if staged >= SYNC_PERSIST_BLOCKS || last_write.elapsed() >= SYNC_PERSIST_INTERVAL {
                wallet.persist()?;
                staged = 0;
                last_write = Instant::now();
            }
        }
        let mempool = match emitter.mempool() {
            Ok(mempool) => mempool,
            Err(e) => {
                wallet.persist()?;
                return Err(emitter_error(e));
            }
        };
        let synced_at = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs());
        let seen_at = mempool.update.first().map_or(synced_at, |(_, at)| *at);
        let mempool_txs = mempool.update.len();
        let in_mempool: HashSet<Txid> = mempool.update.iter().map(|(tx, _)| tx.compute_txid()).collect();
        if !mempool.update.is_empty() {
            let txs = mempool
                .update
                .into_iter()
                .map(|(tx, _)| Arc::unwrap_or_clone(tx))
                .collect();
            wallet.stage_unconfirmed(txs, seen_at);
        }
        let mut evicted = mempool.evicted;
        // The emitter reports only evictions of transactions that were unconfirmed when the
        // sync began. A transaction confirmed then, whose block a reorg took away and which
        // did not come back to the mempool (it spent a coinbase that no longer exists, or its
        // inputs were spent again in the new chain), is now unconfirmed in the wallet and in no
        // mempool: without this it would count as pending forever. A transaction that was mined
        // after the mempool snapshot is marked too, harmlessly: its block, applied on the next
        // sync, outranks the eviction.
        let stale: Vec<Txid> = wallet
            .bdk()
            .transactions()
            .filter(|tx| !tx.chain_position.is_confirmed())
            .map(|tx| tx.tx_node.txid)
            .filter(|txid| !in_mempool.contains(txid) && !evicted.iter().any(|(e, _)| e == txid))
            .collect();
        evicted.extend(stale.into_iter().map(|txid| (txid, seen_at.max(synced_at))));
        let evicted_txids: Vec<Txid> = evicted.iter().map(|(txid, _)| *txid).collect();
        wallet.stage_evicted(evicted);
        wallet.persist()?;
        let tip = wallet.bdk().latest_checkpoint();
        Ok(SyncReport {
            blocks,
            tip: (tip.height(), tip.hash()),
            mempool_txs,
            evicted: evicted_txids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn transport(e: simple_http::Error) -> bitcoincore_rpc::Error {
        bitcoincore_rpc::Error::JsonRpc(e.into())
    }

    fn rpc(code: i32) -> bitcoincore_rpc::Error {
        bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(jsonrpc::error::RpcError {
            code,
            message: "m".into(),
            data: None,
        }))
    }

    #[test]
    fn classifies_transient_failures_as_retryable() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            classify(&transport(simple_http::Error::SocketError(refused))),
            Disposition::Retry
        );
        assert_eq!(
            classify(&transport(simple_http::Error::HttpErrorCode(503))),
            Disposition::Retry
        );
        assert_eq!(
            classify(&transport(simple_http::Error::HttpResponseTooShort {
                actual: 0,
                needed: 12
            })),
            Disposition::Retry
        );
        assert_eq!(classify(&rpc(RPC_IN_WARMUP)), Disposition::Retry);
    }

    #[test]
    fn classifies_callers_errors_as_final() {
        assert_eq!(
            classify(&transport(simple_http::Error::HttpErrorCode(401))),
            Disposition::Fail
        );
        assert_eq!(
            classify(&transport(simple_http::Error::HttpErrorCode(404))),
            Disposition::Fail
        );
        for code in [-25, -26, -27, -5, -8] {
            assert_eq!(classify(&rpc(code)), Disposition::Fail, "code {code}");
        }
        assert!(matches!(
            into_error(transport(simple_http::Error::HttpErrorCode(401)), 1),
            RpcError::Auth { status: 401 }
        ));
        assert!(matches!(into_error(rpc(-26), 1), RpcError::Rpc { code: -26, .. }));
    }

    #[test]
    fn only_a_refusal_is_a_rejection() {
        for code in [-25, -26, -22] {
            assert!(is_rejection(&into_error(rpc(code), 1)), "code {code}");
        }
        // Already in a block, warming up, or not reached: delivery is known or unknown, never
        // refused.
        assert!(!is_rejection(&into_error(rpc(-27), 1)));
        assert!(!is_rejection(&into_error(rpc(RPC_IN_WARMUP), 4)));
        let refused = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!is_rejection(&into_error(
            transport(simple_http::Error::SocketError(refused)),
            4
        )));
        assert!(!is_rejection(&into_error(
            transport(simple_http::Error::HttpErrorCode(401)),
            1
        )));
    }

    #[test]
    fn rejection_says_what_was_released() {
        let txid = Txid::from_byte_array([1; 32]);
        let rejected = |released| RpcError::Rejected {
            txid,
            code: -26,
            message: "min relay fee not met, 1 < 110".to_owned(),
            released,
        };
        assert_eq!(
            rejected(Some(Amount::from_sat(100_000_141))).to_string(),
            format!("bitcoind rejected {txid} (error -26: min relay fee not met, 1 < 110); its spending-policy reservation of 100000141 sat was released")
        );
        assert!(rejected(None)
            .to_string()
            .ends_with("; no spending-policy reservation was released"));
    }

    #[test]
    fn backoff_doubles() {
        let base = Duration::from_millis(100);
        let waits: Vec<_> = (0..4).map(|a| backoff(base, a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800]);
        assert_eq!(backoff(base, u32::MAX), base * (1 << 16));
    }
}
