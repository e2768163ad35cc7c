//! The chain the node serves: the in-process regtest chain (the embedded default), kept in the
//! node's store so that it survives a restart, or a `bitcoind` reached over JSON-RPC.
//!
//! The regtest chain has a mempool: a broadcast is admitted only if the next block could hold
//! it on top of what the mempool already holds ([`RegtestChain::accepts`]: Core's checks and
//! script interpreter), and a transaction that spends an input a mempool transaction spends
//! replaces it (and its descendants) only when it pays more fee than all of them together plus
//! its own size at 1 sat/vB (BIP125's rules 3 and 4). Both the blocks and the mempool are
//! written to the store before a call returns, so a transaction the API acknowledged is still
//! there after a crash.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use anya_bitcoin::regtest::{RegtestChain, RegtestError};
use anya_bitcoin::rpc::{BitcoindChain, RpcError};
use anya_bitcoin::wallet::{AnyaWallet, WalletError};
use anya_storage::{KvStore, Namespace, Scan, StoreError, WriteBatch};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Address, Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// bitcoind failed or refused.
    #[error("bitcoind: {0}")]
    Rpc(#[from] RpcError),
    /// The wallet failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// The stored regtest chain does not replay to the blocks it recorded.
    #[error("the stored regtest chain is damaged: {0}")]
    Corrupt(String),
    /// The chain refused the transaction; what the wallet's policy reserved for it was
    /// released.
    #[error("transaction {txid} refused: {reason}")]
    Rejected {
        /// The transaction.
        txid: Txid,
        /// Why.
        reason: String,
        /// What the release gave back to the velocity limit.
        released: Option<Amount>,
    },
    /// Mining is for regtest only.
    #[error("blocks are mined on regtest only; this node serves {0}")]
    NotRegtest(Network),
    /// The wallet's chain does not connect to this chain source's.
    #[error("wallet tip {height} {hash} is not on this chain")]
    ForeignTip {
        /// The wallet's tip height.
        height: u32,
        /// Its hash.
        hash: BlockHash,
    },
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Blocks applied to the wallet.
    pub blocks: u32,
    /// The wallet's tip afterwards.
    pub height: u32,
    /// Mempool transactions handed to the wallet.
    pub mempool_txs: usize,
}

/// The chain source's part of the readiness report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainHealth {
    /// What the source is.
    pub source: String,
    /// Whether it serves blocks: the tip block itself can be read (not only its header) and
    /// the node has every block it has a header for.
    pub serving: bool,
    /// The tip height, when known.
    pub height: Option<u32>,
    /// The best header height the source knows of, when known.
    pub headers: Option<u32>,
    /// Seconds since the tip last changed, when the source is bitcoind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tip_age_secs: Option<u64>,
    /// Why it is not serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `getblockchaininfo`, the fields the health check reads.
#[derive(serde::Deserialize)]
struct ChainInfo {
    blocks: u32,
    headers: u32,
    bestblockhash: BlockHash,
}

/// A chain source.
#[derive(Debug)]
pub enum Chain {
    /// The in-process regtest chain.
    Regtest(Regtest),
    /// A bitcoind on `network`.
    Bitcoind {
        /// The client.
        client: Arc<BitcoindChain>,
        /// The network it was checked to serve.
        network: Network,
        /// The tip last seen and when it was first seen, for the staleness check.
        last_tip: Mutex<Option<(BlockHash, std::time::Instant)>>,
        /// A tip unchanged this long is not serving (not on regtest, where blocks come on
        /// demand).
        stale_after: std::time::Duration,
    },
}

impl Chain {
    /// The network of the chain.
    pub fn network(&self) -> Network {
        match self {
            Chain::Regtest(_) => Network::Regtest,
            Chain::Bitcoind { network, .. } => *network,
        }
    }

    /// The bitcoind client, when the source is bitcoind.
    pub fn bitcoind(&self) -> Option<&Arc<BitcoindChain>> {
        match self {
            Chain::Regtest(_) => None,
            Chain::Bitcoind { client, .. } => Some(client),
        }
    }

    /// What it is, for the health report.
    pub fn describe(&self) -> String {
        match self {
            Chain::Regtest(_) => "regtest (in-process)".to_owned(),
            Chain::Bitcoind { network, .. } => format!("bitcoind ({network})"),
        }
    }

    /// Whether the source is serving blocks.
    pub fn health(&self) -> ChainHealth {
        match self {
            Chain::Regtest(r) => {
                let inner = r.lock();
                ChainHealth {
                    source: self.describe(),
                    serving: true,
                    height: Some(inner.chain.height()),
                    headers: Some(inner.chain.height()),
                    tip_age_secs: None,
                    detail: None,
                }
            }
            Chain::Bitcoind {
                client,
                network,
                last_tip,
                stale_after,
            } => {
                let info = client
                    .call::<ChainInfo>("getblockchaininfo", &[])
                    .and_then(|info| client.block_by_hash(&info.bestblockhash).map(|_| info));
                match info {
                    Ok(info) => {
                        let age = {
                            let mut last = last_tip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            match *last {
                                Some((hash, since)) if hash == info.bestblockhash => since.elapsed(),
                                _ => {
                                    *last = Some((info.bestblockhash, std::time::Instant::now()));
                                    std::time::Duration::ZERO
                                }
                            }
                        };
                        let caught_up = info.blocks >= info.headers;
                        let advancing = *network == Network::Regtest || age < *stale_after;
                        let detail = if !caught_up {
                            Some(format!("{} blocks behind its headers", info.headers - info.blocks))
                        } else if !advancing {
                            Some(format!("no new block for {} s", age.as_secs()))
                        } else {
                            None
                        };
                        ChainHealth {
                            source: self.describe(),
                            serving: caught_up && advancing,
                            height: Some(info.blocks),
                            headers: Some(info.headers),
                            tip_age_secs: Some(age.as_secs()),
                            detail,
                        }
                    }
                    Err(e) => ChainHealth {
                        source: self.describe(),
                        serving: false,
                        height: None,
                        headers: None,
                        tip_age_secs: None,
                        detail: Some(e.to_string()),
                    },
                }
            }
        }
    }

    /// The tip's height and hash.
    pub fn tip(&self) -> Result<(u32, BlockHash), ChainError> {
        match self {
            Chain::Regtest(r) => {
                let inner = r.lock();
                Ok((inner.chain.height(), inner.chain.tip().block_hash()))
            }
            Chain::Bitcoind { client, .. } => Ok(client.tip()?),
        }
    }

    /// Brings `wallet` up to the chain's tip and mempool.
    pub fn sync(&self, wallet: &mut AnyaWallet, now: u64) -> Result<Synced, ChainError> {
        match self {
            Chain::Regtest(r) => r.sync(wallet, now),
            Chain::Bitcoind { client, .. } => {
                let report = client.sync_wallet(wallet)?;
                Ok(Synced {
                    blocks: report.blocks,
                    height: report.tip.0,
                    mempool_txs: report.mempool_txs,
                })
            }
        }
    }

    /// Sends `wallet`'s transaction `tx`; on a refusal the wallet releases what its policy
    /// reserved for it ([`AnyaWallet::release`]).
    pub fn broadcast(&self, wallet: &mut AnyaWallet, tx: &Transaction, now: u64) -> Result<Txid, ChainError> {
        match self {
            Chain::Regtest(r) => r.broadcast(wallet, tx, now),
            Chain::Bitcoind { client, .. } => match client.broadcast_for(wallet, tx) {
                Err(RpcError::Rejected {
                    txid,
                    code,
                    message,
                    released,
                }) => Err(ChainError::Rejected {
                    txid,
                    reason: format!("bitcoind {code}: {message}"),
                    released,
                }),
                Ok(txid) => {
                    wallet.apply_unconfirmed(vec![tx.clone()], now)?;
                    Ok(txid)
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Mines `blocks` blocks paying `to` (regtest only); the first holds the mempool. Returns
    /// their hashes.
    pub fn mine(&self, blocks: u32, to: &Address) -> Result<Vec<BlockHash>, ChainError> {
        match self {
            Chain::Regtest(r) => r.mine(blocks, &to.script_pubkey()),
            Chain::Bitcoind { client, network, .. } => {
                if *network != Network::Regtest {
                    return Err(ChainError::NotRegtest(*network));
                }
                Ok(client.call("generatetoaddress", &[blocks.into(), to.to_string().into()])?)
            }
        }
    }
}

/// The in-process regtest chain and its mempool, kept in a store namespace.
pub struct Regtest {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    inner: Mutex<RegtestState>,
}

impl std::fmt::Debug for Regtest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Regtest")
            .field("height", &inner.chain.height())
            .field("mempool", &inner.mempool.len())
            .finish()
    }
}

struct RegtestState {
    chain: RegtestChain,
    /// In arrival order (a child after its parent), with its store sequence number.
    mempool: Vec<(u64, Transaction)>,
    next_seq: u64,
}

impl RegtestState {
    fn txs(&self) -> Vec<Transaction> {
        self.mempool.iter().map(|(_, tx)| tx.clone()).collect()
    }
}

const BLOCK: &[u8] = b"b/";
const MEMPOOL: &[u8] = b"m/";

fn block_key(height: u32) -> Vec<u8> {
    [BLOCK, &height.to_be_bytes()[..]].concat()
}

fn mempool_key(seq: u64) -> Vec<u8> {
    [MEMPOOL, &seq.to_be_bytes()[..]].concat()
}

/// A transaction's virtual size, for the replacement rule.
fn vsize(tx: &Transaction) -> u64 {
    tx.weight().to_vbytes_ceil()
}

impl Regtest {
    /// Opens the chain kept in `store` (namespace `anya/node/regtest`), replaying each stored
    /// block through [`RegtestChain::mine`] (every transaction checked again) and checking it
    /// comes out with the hash that was stored.
    pub fn open(store: Arc<dyn KvStore>) -> Result<Self, ChainError> {
        let ns = Namespace::new("anya/node/regtest")?;
        let mut chain = RegtestChain::new();
        for entry in store.scan(&ns, Scan::prefix(BLOCK))? {
            let block: bitcoin::Block = deserialize(&entry.value)
                .map_err(|e| ChainError::Corrupt(format!("block record {:?}: {e}", entry.key)))?;
            let expected_height = chain.height() + 1;
            if entry.key != block_key(expected_height) {
                return Err(ChainError::Corrupt(format!("block {expected_height} is missing")));
            }
            let coinbase_to = block
                .txdata
                .first()
                .and_then(|cb| cb.output.first())
                .map(|o| o.script_pubkey.clone())
                .ok_or_else(|| ChainError::Corrupt(format!("block {expected_height} has no coinbase")))?;
            let mined = chain
                .mine(&coinbase_to, block.txdata[1..].to_vec())
                .map_err(|e| ChainError::Corrupt(format!("block {expected_height}: {e}")))?;
            if mined.block_hash() != block.block_hash() {
                return Err(ChainError::Corrupt(format!(
                    "block {expected_height} replays to {}, not {}",
                    mined.block_hash(),
                    block.block_hash()
                )));
            }
        }
        let mut mempool = Vec::new();
        let mut next_seq = 0;
        for entry in store.scan(&ns, Scan::prefix(MEMPOOL))? {
            let seq = entry
                .key
                .get(MEMPOOL.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| ChainError::Corrupt("a mempool key".to_owned()))?;
            let tx: Transaction =
                deserialize(&entry.value).map_err(|e| ChainError::Corrupt(format!("mempool record {seq}: {e}")))?;
            mempool.push((seq, tx));
            next_seq = seq + 1;
        }
        let regtest = Self {
            store,
            ns,
            inner: Mutex::new(RegtestState {
                chain,
                mempool,
                next_seq,
            }),
        };
        // A mempool transaction the chain no longer accepts (it was written by an older run
        // and its inputs were since spent) is dropped, as a node restart would.
        {
            let mut inner = regtest.lock();
            let (keep, drop) = regtest.admissible(&inner.chain, &inner.mempool);
            if !drop.is_empty() {
                let mut batch = WriteBatch::new();
                for seq in &drop {
                    batch.delete(&regtest.ns, mempool_key(*seq))?;
                }
                regtest.store.write(batch)?;
                inner.mempool = keep;
            }
        }
        Ok(regtest)
    }

    fn lock(&self) -> MutexGuard<'_, RegtestState> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mempool entries the next block can hold, in order, and the sequence numbers of the
    /// others.
    fn admissible(&self, chain: &RegtestChain, mempool: &[(u64, Transaction)]) -> (Vec<(u64, Transaction)>, Vec<u64>) {
        let mut keep: Vec<(u64, Transaction)> = Vec::new();
        let mut txs: Vec<Transaction> = Vec::new();
        let mut drop = Vec::new();
        for (seq, tx) in mempool {
            txs.push(tx.clone());
            if chain.accepts(&txs).is_ok() {
                keep.push((*seq, tx.clone()));
            } else {
                txs.pop();
                drop.push(*seq);
            }
        }
        (keep, drop)
    }

    fn sync(&self, wallet: &mut AnyaWallet, now: u64) -> Result<Synced, ChainError> {
        let (blocks, mempool) = {
            let inner = self.lock();
            let checkpoint = wallet.bdk().latest_checkpoint();
            let (height, hash) = (checkpoint.height(), checkpoint.hash());
            if inner.chain.hash(height) != Some(hash) {
                return Err(ChainError::ForeignTip { height, hash });
            }
            let blocks: Vec<(u32, bitcoin::Block)> = (height + 1..=inner.chain.height())
                .filter_map(|h| inner.chain.block(h).map(|b| (h, b.clone())))
                .collect();
            (blocks, inner.txs())
        };
        let applied = blocks.len() as u32;
        let mut height = wallet.bdk().latest_checkpoint().height();
        for (h, block) in &blocks {
            wallet.apply_block(block, *h)?;
            height = *h;
        }
        // The wallet's own transactions and those paying it.
        let relevant: Vec<Transaction> = mempool
            .into_iter()
            .filter(|tx| {
                tx.output.iter().any(|o| wallet.is_mine(&o.script_pubkey))
                    || tx
                        .input
                        .iter()
                        .any(|i| wallet.bdk().get_tx(i.previous_output.txid).is_some())
            })
            .collect();
        let mempool_txs = relevant.len();
        if !relevant.is_empty() {
            wallet.apply_unconfirmed(relevant, now)?;
        }
        Ok(Synced {
            blocks: applied,
            height,
            mempool_txs,
        })
    }

    /// The mempool entries that conflict with `tx` (spend an input it spends), and their
    /// descendants.
    fn conflicts(mempool: &[(u64, Transaction)], tx: &Transaction) -> HashSet<u64> {
        let spends: HashSet<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
        let mut out = HashSet::new();
        let mut replaced_txids = HashSet::new();
        for (seq, m) in mempool {
            let conflicting = m.input.iter().any(|i| spends.contains(&i.previous_output));
            let descendant = m.input.iter().any(|i| replaced_txids.contains(&i.previous_output.txid));
            if conflicting || descendant {
                out.insert(*seq);
                replaced_txids.insert(m.compute_txid());
            }
        }
        out
    }

    fn broadcast(&self, wallet: &mut AnyaWallet, tx: &Transaction, now: u64) -> Result<Txid, ChainError> {
        let txid = tx.compute_txid();
        let verdict = {
            let mut inner = self.lock();
            if inner.mempool.iter().any(|(_, m)| m.compute_txid() == txid) {
                return Ok(txid);
            }
            match self.admit(&inner, tx) {
                Ok(replaced) => {
                    let replaced_txids: Vec<Txid> = inner
                        .mempool
                        .iter()
                        .filter(|(s, _)| replaced.contains(s))
                        .map(|(_, m)| m.compute_txid())
                        .collect();
                    let seq = inner.next_seq;
                    let mut batch = WriteBatch::new();
                    batch.put(&self.ns, mempool_key(seq), serialize(tx))?;
                    for r in &replaced {
                        batch.delete(&self.ns, mempool_key(*r))?;
                    }
                    self.store.write(batch)?;
                    inner.mempool.retain(|(s, _)| !replaced.contains(s));
                    inner.mempool.push((seq, tx.clone()));
                    inner.next_seq += 1;
                    Ok(replaced_txids)
                }
                Err(reason) => Err(reason),
            }
        };
        match verdict {
            Ok(replaced) => {
                wallet.apply_unconfirmed(vec![tx.clone()], now)?;
                // The wallet must not keep counting what this replaced (both may carry the
                // same seen-at second, and BDK cannot tell which came last).
                let evicted: Vec<(Txid, u64)> = replaced
                    .into_iter()
                    .filter(|t| wallet.bdk().get_tx(*t).is_some())
                    .map(|t| (t, now))
                    .collect();
                if !evicted.is_empty() {
                    wallet.apply_evicted(evicted)?;
                }
                Ok(txid)
            }
            Err(reason) => {
                let released = if wallet.is_watch_only() {
                    None
                } else {
                    match wallet.release(txid) {
                        Ok(released) => released,
                        Err(WalletError::AlreadyConfirmed { .. }) => None,
                        Err(e) => return Err(e.into()),
                    }
                };
                Err(ChainError::Rejected { txid, reason, released })
            }
        }
    }

    /// Whether the mempool takes `tx`: the sequence numbers it replaces, or why not.
    fn admit(&self, inner: &RegtestState, tx: &Transaction) -> Result<HashSet<u64>, String> {
        let replaced = Self::conflicts(&inner.mempool, tx);
        let kept: Vec<Transaction> = inner
            .mempool
            .iter()
            .filter(|(s, _)| !replaced.contains(s))
            .map(|(_, m)| m.clone())
            .collect();
        let base_fees = inner.chain.accepts(&kept).map_err(|e| e.to_string())?;
        let mut with = kept;
        with.push(tx.clone());
        let total = inner.chain.accepts(&with).map_err(|e: RegtestError| e.to_string())?;
        if !replaced.is_empty() {
            let all_fees = inner.chain.accepts(&inner.txs()).map_err(|e| e.to_string())?;
            let replaced_fees = all_fees.checked_sub(base_fees).unwrap_or(Amount::ZERO);
            let fee = total.checked_sub(base_fees).unwrap_or(Amount::ZERO);
            let needed = replaced_fees + Amount::from_sat(vsize(tx));
            if fee < needed {
                return Err(format!(
                    "insufficient fee to replace {} mempool transaction(s): {} sat, needs at least {} sat",
                    replaced.len(),
                    fee.to_sat(),
                    needed.to_sat()
                ));
            }
        }
        Ok(replaced)
    }

    fn mine(&self, blocks: u32, to: &ScriptBuf) -> Result<Vec<BlockHash>, ChainError> {
        let mut inner = self.lock();
        let (keep, dropped) = self.admissible(&inner.chain, &inner.mempool);
        let mut hashes = Vec::with_capacity(blocks as usize);
        let start = inner.chain.height();
        let mut txs: Vec<Transaction> = keep.iter().map(|(_, tx)| tx.clone()).collect();
        for _ in 0..blocks {
            let block = inner
                .chain
                .mine(to, std::mem::take(&mut txs))
                .map_err(|e| ChainError::Corrupt(format!("mining: {e}")))?;
            hashes.push(block.block_hash());
        }
        let mut batch = WriteBatch::new();
        for h in start + 1..=inner.chain.height() {
            let block = inner
                .chain
                .block(h)
                .ok_or_else(|| ChainError::Corrupt("a mined block".to_owned()))?;
            batch.put(&self.ns, block_key(h), serialize(block))?;
        }
        for seq in keep.iter().map(|(s, _)| *s).chain(dropped) {
            batch.delete(&self.ns, mempool_key(seq))?;
        }
        if let Err(e) = self.store.write(batch) {
            // Nothing was stored: go back to what the store holds.
            drop(inner);
            let reopened = Self::open(Arc::clone(&self.store))?;
            *self.lock() = reopened
                .inner
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return Err(e.into());
        }
        inner.mempool.clear();
        Ok(hashes)
    }
}
