//! The contract manager's wallet, chain, clock and logger on anya's.
//!
//! - [`DlcWallet`]: an [`AnyaWallet`] (the same handle the node's wallet routes lock). Funding
//!   coins are chosen and reserved in the store ([`AnyaWallet::select_coins`]), so they survive
//!   restarts and the wallet's own payments never spend them; each funding input is signed
//!   through the HSM after the spending policy approved what the funding transaction takes
//!   from the wallet ([`AnyaWallet::sign_shared_input`]), and checked by Core's interpreter.
//! - [`BitcoindBlockchain`]: a [`BitcoindChain`] (blocks, transactions, confirmations,
//!   broadcast), plus fee estimates for the manager.
//! - [`ClockTime`] and [`TracingLogger`]: anya's clock, and `tracing` for the manager's logs.

use std::sync::{Arc, Mutex, MutexGuard};

use anya_bitcoin::rpc::{BitcoindChain, RpcError};
use anya_bitcoin::wallet::{AnyaWallet, WalletError};
use anya_core_types::Clock;
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, Block, Network, OutPoint, ScriptBuf, Transaction, Txid};
use ddk_manager::error::Error as ManagerError;
use ddk_manager::Utxo;
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use lightning::util::logger::{Level, Logger, Record};

fn wallet_error(e: WalletError) -> ManagerError {
    ManagerError::WalletError(Box::new(e))
}

fn chain_error(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::BlockchainError(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ManagerError> + Send + 'static,
) -> Result<T, ManagerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ManagerError::InvalidState(format!("a blocking task failed: {e}")))?
}

fn lock(wallet: &Mutex<AnyaWallet>) -> MutexGuard<'_, AnyaWallet> {
    // Every wallet change is one store batch: what the lock guards is what the store holds.
    wallet.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An anya wallet as the contract manager's wallet.
#[derive(Debug, Clone)]
pub struct DlcWallet {
    wallet: Arc<Mutex<AnyaWallet>>,
}

impl DlcWallet {
    /// The manager's wallet on `wallet` (opened with its HSM: funding inputs are signed).
    pub fn new(wallet: Arc<Mutex<AnyaWallet>>) -> Self {
        Self { wallet }
    }

    /// The wallet.
    pub fn wallet(&self) -> &Arc<Mutex<AnyaWallet>> {
        &self.wallet
    }

    /// Releases every reserved coin not in `keep` (the coins live contracts fund themselves
    /// with, from [`funding_outpoints`](super::resume::funding_outpoints)) and returns them.
    pub fn release_unused(&self, keep: &std::collections::HashSet<OutPoint>) -> Result<Vec<OutPoint>, ManagerError> {
        let w = lock(&self.wallet);
        let unused: Vec<OutPoint> = w
            .reserved()
            .map_err(wallet_error)?
            .into_iter()
            .filter(|o| !keep.contains(o))
            .collect();
        w.unreserve(&unused).map_err(wallet_error)?;
        Ok(unused)
    }
}

#[async_trait::async_trait]
impl ddk_manager::Wallet for DlcWallet {
    async fn get_new_address(&self) -> Result<Address, ManagerError> {
        let wallet = Arc::clone(&self.wallet);
        blocking(move || Ok(lock(&wallet).next_address().map_err(wallet_error)?.address)).await
    }

    async fn get_new_change_address(&self) -> Result<Address, ManagerError> {
        let wallet = Arc::clone(&self.wallet);
        blocking(move || Ok(lock(&wallet).next_change_address().map_err(wallet_error)?.address)).await
    }

    async fn get_utxos_for_amount(
        &self,
        amount: Amount,
        _fee_rate: u64,
        lock_utxos: bool,
    ) -> Result<Vec<Utxo>, ManagerError> {
        let wallet = Arc::clone(&self.wallet);
        blocking(move || {
            let w = lock(&wallet);
            let network = w.network();
            let chosen = w.select_coins(amount, lock_utxos).map_err(wallet_error)?;
            chosen
                .into_iter()
                .map(|u| {
                    let address = Address::from_script(&u.txout.script_pubkey, network)
                        .map_err(|e| ManagerError::WalletError(Box::new(e)))?;
                    Ok(Utxo {
                        tx_out: u.txout,
                        outpoint: u.outpoint,
                        address,
                        redeem_script: ScriptBuf::new(),
                        reserved: lock_utxos,
                    })
                })
                .collect()
        })
        .await
    }

    async fn sign_psbt_input(&self, psbt: &mut Psbt, input_index: usize) -> Result<(), ManagerError> {
        let wallet = Arc::clone(&self.wallet);
        let mut owned = psbt.clone();
        let signed = blocking(move || {
            lock(&wallet)
                .sign_shared_input(&mut owned, input_index)
                .map_err(wallet_error)?;
            Ok(owned)
        })
        .await?;
        *psbt = signed;
        Ok(())
    }

    /// The manager watches the funding output itself (its chain monitor); a descriptor wallet
    /// has nothing to import, and its coins are only its descriptors' outputs.
    fn import_address(&self, _address: &Address) -> Result<(), ManagerError> {
        Ok(())
    }

    fn unreserve_utxos(&self, outpoints: &[OutPoint]) -> Result<(), ManagerError> {
        lock(&self.wallet).unreserve(outpoints).map_err(wallet_error)
    }
}

/// A bitcoind node as the contract manager's chain.
#[derive(Debug, Clone)]
pub struct BitcoindBlockchain {
    chain: Arc<BitcoindChain>,
    network: Network,
}

impl BitcoindBlockchain {
    /// The manager's chain on `chain`, which must be on `network` (asked of the node now).
    pub fn new(chain: Arc<BitcoindChain>, network: Network) -> Result<Self, RpcError> {
        chain.check_network(network)?;
        Ok(Self { chain, network })
    }

    /// The node.
    pub fn chain(&self) -> &Arc<BitcoindChain> {
        &self.chain
    }
}

#[async_trait::async_trait]
impl ddk_manager::Blockchain for BitcoindBlockchain {
    async fn send_transaction(&self, transaction: &Transaction) -> Result<(), ManagerError> {
        let (chain, tx) = (Arc::clone(&self.chain), transaction.clone());
        blocking(move || match chain.broadcast(&tx) {
            Ok(_) => Ok(()),
            // Already in a block: what the manager wanted is done.
            Err(RpcError::Rpc { code: -27, .. }) => Ok(()),
            Err(e) => Err(chain_error(e)),
        })
        .await
    }

    fn get_network(&self) -> Result<Network, ManagerError> {
        Ok(self.network)
    }

    async fn get_blockchain_height(&self) -> Result<u64, ManagerError> {
        let chain = Arc::clone(&self.chain);
        blocking(move || chain.height().map(u64::from).map_err(chain_error)).await
    }

    async fn get_block_at_height(&self, height: u64) -> Result<Block, ManagerError> {
        let chain = Arc::clone(&self.chain);
        let height = u32::try_from(height).map_err(chain_error)?;
        blocking(move || chain.block(height).map_err(chain_error)).await
    }

    async fn get_transaction(&self, tx_id: &Txid) -> Result<Transaction, ManagerError> {
        let (chain, txid) = (Arc::clone(&self.chain), *tx_id);
        blocking(move || {
            chain
                .transaction(&txid)
                .map_err(chain_error)?
                .ok_or_else(|| ManagerError::BlockchainError(format!("the node does not know transaction {txid}")))
        })
        .await
    }

    async fn get_transaction_confirmations(&self, tx_id: &Txid) -> Result<u32, ManagerError> {
        let (chain, txid) = (Arc::clone(&self.chain), *tx_id);
        blocking(move || Ok(chain.confirmations(&txid).map_err(chain_error)?.unwrap_or(0))).await
    }
}

impl FeeEstimator for BitcoindBlockchain {
    /// Core's `estimatesmartfee` (or the chain's configured fallback when Core has no estimate),
    /// never below LDK's floor of 253 sat per 1000 weight units. When the node cannot be
    /// reached the floor is returned and the failure logged: the trait has no error.
    fn get_est_sat_per_1000_weight(&self, target: ConfirmationTarget) -> u32 {
        let blocks = match target {
            ConfirmationTarget::MaximumFeeEstimate | ConfirmationTarget::UrgentOnChainSweep => 2,
            ConfirmationTarget::MinAllowedAnchorChannelRemoteFee
            | ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee
            | ConfirmationTarget::ChannelCloseMinimum => 144,
            _ => 6,
        };
        match self.chain.estimate_fee_rate(blocks) {
            Ok(rate) => u32::try_from(rate.to_sat_per_kwu()).unwrap_or(u32::MAX).max(253),
            Err(e) => {
                tracing::warn!(error = %e, "fee estimate unavailable; using the floor of 253 sat/kwu");
                253
            }
        }
    }
}

/// anya's clock as the manager's.
#[derive(Clone)]
pub struct ClockTime(pub Arc<dyn Clock>);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl ddk_manager::Time for ClockTime {
    fn unix_time_now(&self) -> u64 {
        self.0.now().as_secs()
    }
}

/// The manager's logs, as `tracing` events (target `anya_layer2::dlc::manager`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLogger;

impl Logger for TracingLogger {
    fn log(&self, record: Record) {
        let module = record.module_path;
        match record.level {
            Level::Gossip | Level::Trace => {
                tracing::trace!(target: "anya_layer2::dlc::manager", module, "{}", record.args)
            }
            Level::Debug => tracing::debug!(target: "anya_layer2::dlc::manager", module, "{}", record.args),
            Level::Info => tracing::info!(target: "anya_layer2::dlc::manager", module, "{}", record.args),
            Level::Warn => tracing::warn!(target: "anya_layer2::dlc::manager", module, "{}", record.args),
            Level::Error => tracing::error!(target: "anya_layer2::dlc::manager", module, "{}", record.args),
        }
    }
}
