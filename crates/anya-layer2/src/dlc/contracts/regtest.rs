//! The contract manager's chain on anya's in-process regtest chain ([`RegtestChain`]), for
//! examples and tests that run without a bitcoind.
//!
//! A broadcast transaction joins a mempool only if the next block could hold it on top of what
//! the mempool holds ([`RegtestChain::accepts`]: Core's context-free checks, the UTXO set,
//! value rules and Core's script interpreter for every input); [`mine`](RegtestBlockchain::mine)
//! puts the mempool in a block. Lock times are enforced as Core does (a CET's or a refund's
//! time lock against the median time past), but the in-process chain's block times start at
//! the regtest genesis (2011) and go up one second a block: a manager on it must run on a
//! clock that follows the chain (see `examples/dlc.rs`). Use a bitcoind
//! ([`BitcoindBlockchain`](super::BitcoindBlockchain)) for anything that depends on the
//! network as it runs.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use anya_bitcoin::regtest::RegtestChain;
use bitcoin::{Block, Network, ScriptBuf, Transaction, Txid};
use ddk_manager::error::Error as ManagerError;
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator, FEERATE_FLOOR_SATS_PER_KW};

#[derive(Debug)]
struct State {
    chain: RegtestChain,
    mempool: Vec<Transaction>,
    /// Where each confirmed transaction is: its block height.
    confirmed: HashMap<Txid, u32>,
}

/// An in-process regtest chain with a mempool, as the contract manager's chain.
#[derive(Debug)]
pub struct RegtestBlockchain {
    state: Mutex<State>,
}

impl Default for RegtestBlockchain {
    fn default() -> Self {
        Self::new(RegtestChain::new())
    }
}

impl RegtestBlockchain {
    /// The manager's chain on `chain`.
    pub fn new(chain: RegtestChain) -> Self {
        let mut confirmed = HashMap::new();
        for height in 0..=chain.height() {
            if let Some(block) = chain.block(height) {
                for tx in &block.txdata {
                    confirmed.insert(tx.compute_txid(), height);
                }
            }
        }
        Self {
            state: Mutex::new(State {
                chain,
                mempool: Vec::new(),
                confirmed,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is made whole before the lock is released.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mines `n` blocks paying `coinbase_to`, the first with the mempool's transactions;
    /// returns the blocks.
    pub fn mine(&self, n: u32, coinbase_to: &ScriptBuf) -> Result<Vec<Block>, anya_bitcoin::regtest::RegtestError> {
        let mut state = self.lock();
        let mut blocks = Vec::new();
        for i in 0..n {
            let txs = if i == 0 {
                std::mem::take(&mut state.mempool)
            } else {
                Vec::new()
            };
            let block = state.chain.mine(coinbase_to, txs)?.clone();
            let height = state.chain.height();
            for tx in &block.txdata {
                state.confirmed.insert(tx.compute_txid(), height);
            }
            blocks.push(block);
        }
        Ok(blocks)
    }

    /// The block at `height`.
    pub fn block(&self, height: u32) -> Option<Block> {
        self.lock().chain.block(height).cloned()
    }

    /// The height of the tip.
    pub fn height(&self) -> u32 {
        self.lock().chain.height()
    }

    /// The transactions waiting for the next block.
    pub fn mempool(&self) -> Vec<Transaction> {
        self.lock().mempool.clone()
    }
}

fn chain_error(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::BlockchainError(e.to_string())
}

#[async_trait::async_trait]
impl ddk_manager::Blockchain for RegtestBlockchain {
    async fn send_transaction(&self, transaction: &Transaction) -> Result<(), ManagerError> {
        let mut state = self.lock();
        let txid = transaction.compute_txid();
        if state.confirmed.contains_key(&txid) || state.mempool.iter().any(|t| t.compute_txid() == txid) {
            return Ok(());
        }
        let mut candidate = state.mempool.clone();
        candidate.push(transaction.clone());
        state.chain.accepts(&candidate).map_err(chain_error)?;
        state.mempool.push(transaction.clone());
        Ok(())
    }

    fn get_network(&self) -> Result<Network, ManagerError> {
        Ok(Network::Regtest)
    }

    async fn get_blockchain_height(&self) -> Result<u64, ManagerError> {
        Ok(u64::from(self.height()))
    }

    async fn get_block_at_height(&self, height: u64) -> Result<Block, ManagerError> {
        let height = u32::try_from(height).map_err(chain_error)?;
        self.block(height)
            .ok_or_else(|| ManagerError::BlockchainError(format!("no block at height {height}")))
    }

    async fn get_transaction(&self, tx_id: &Txid) -> Result<Transaction, ManagerError> {
        let state = self.lock();
        if let Some(tx) = state.mempool.iter().find(|t| t.compute_txid() == *tx_id) {
            return Ok(tx.clone());
        }
        state
            .confirmed
            .get(tx_id)
            .and_then(|h| state.chain.block(*h))
            .and_then(|b| b.txdata.iter().find(|t| t.compute_txid() == *tx_id))
            .cloned()
            .ok_or_else(|| ManagerError::BlockchainError(format!("unknown transaction {tx_id}")))
    }

    async fn get_transaction_confirmations(&self, tx_id: &Txid) -> Result<u32, ManagerError> {
        let state = self.lock();
        Ok(state.confirmed.get(tx_id).map_or(0, |h| state.chain.height() - h + 1))
    }
}

impl FeeEstimator for RegtestBlockchain {
    /// The in-process chain has no fee market: LDK's floor.
    fn get_est_sat_per_1000_weight(&self, _target: ConfirmationTarget) -> u32 {
        FEERATE_FLOOR_SATS_PER_KW
    }
}
