//! The node's wallets: [`AnyaWallet`]s over the node's store and HSM, opened on first use and
//! kept open, one lock each (a wallet's operations are serialized; different wallets run side
//! by side).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use anya_bitcoin::wallet::{AnyaWallet, Template, WalletError};
use anya_core_types::{Clock, Label};
use anya_hsm::HsmProvider;
use anya_storage::KvStore;
use bdk_wallet::chain::ChainPosition;
use bitcoin::Txid;

use crate::chain::{Chain, ChainError, Synced};
use crate::events::{Event, Events};

/// One open wallet.
pub type WalletHandle = Arc<Mutex<AnyaWallet>>;

/// Locks a wallet (a panic in another request does not make it unusable: every wallet change
/// is written in one store batch, so what the lock guards is what the store holds).
pub fn lock(handle: &WalletHandle) -> MutexGuard<'_, AnyaWallet> {
    handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wallets of a node.
pub struct Wallets {
    store: Arc<dyn KvStore>,
    hsm: Arc<dyn HsmProvider>,
    clock: Arc<dyn Clock>,
    chain: Arc<Chain>,
    events: Events,
    open: Mutex<HashMap<String, WalletHandle>>,
}

impl std::fmt::Debug for Wallets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallets")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// The height a transaction confirmed at; `None` while unconfirmed.
pub fn confirmed_height<A: bdk_wallet::chain::Anchor>(position: &ChainPosition<A>) -> Option<u32> {
    match position {
        ChainPosition::Confirmed { anchor, .. } => Some(anchor.anchor_block().height),
        ChainPosition::Unconfirmed { .. } => None,
    }
}

/// Each transaction of a wallet and the height it confirmed at.
fn positions(wallet: &AnyaWallet) -> BTreeMap<Txid, Option<u32>> {
    wallet
        .bdk()
        .transactions()
        .map(|tx| (tx.tx_node.txid, confirmed_height(&tx.chain_position)))
        .collect()
}

impl Wallets {
    /// The wallets in `store`, signing with `hsm`, served by `chain`.
    pub fn new(
        store: Arc<dyn KvStore>,
        hsm: Arc<dyn HsmProvider>,
        clock: Arc<dyn Clock>,
        chain: Arc<Chain>,
        events: Events,
    ) -> Self {
        Self {
            store,
            hsm,
            clock,
            chain,
            events,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn opened(&self) -> MutexGuard<'_, HashMap<String, WalletHandle>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The chain source.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// The names of every wallet in the store.
    pub fn list(&self) -> Result<Vec<Label>, WalletError> {
        AnyaWallet::list(&*self.store)
    }

    /// Creates the wallet `name` on the chain's network.
    pub fn create(&self, name: Label, template: &Template) -> Result<WalletHandle, WalletError> {
        let mut open = self.opened();
        let wallet = AnyaWallet::create(
            Arc::clone(&self.store),
            Arc::clone(&self.hsm),
            Arc::clone(&self.clock),
            name.clone(),
            template,
            self.chain.network(),
        )?;
        let handle = Arc::new(Mutex::new(wallet));
        open.insert(name.as_str().to_owned(), Arc::clone(&handle));
        self.events.publish(Event::WalletCreated {
            wallet: name.as_str().to_owned(),
        });
        Ok(handle)
    }

    /// The wallet `name`, opened on first use.
    pub fn get(&self, name: &Label) -> Result<WalletHandle, WalletError> {
        let mut open = self.opened();
        if let Some(handle) = open.get(name.as_str()) {
            return Ok(Arc::clone(handle));
        }
        let wallet = AnyaWallet::load(
            Arc::clone(&self.store),
            Arc::clone(&self.hsm),
            Arc::clone(&self.clock),
            name.clone(),
        )?;
        let handle = Arc::new(Mutex::new(wallet));
        open.insert(name.as_str().to_owned(), Arc::clone(&handle));
        Ok(handle)
    }

    /// Syncs `wallet` with the chain and publishes what it newly saw or saw confirm.
    pub fn sync(&self, wallet: &mut AnyaWallet) -> Result<Synced, ChainError> {
        let before = positions(wallet);
        let synced = self.chain.sync(wallet, self.clock.now().as_secs())?;
        self.publish_changes(wallet, &before);
        Ok(synced)
    }

    /// Broadcasts `wallet`'s transaction and publishes it as seen.
    pub fn broadcast(&self, wallet: &mut AnyaWallet, tx: &bitcoin::Transaction) -> Result<Txid, ChainError> {
        let before = positions(wallet);
        let txid = self.chain.broadcast(wallet, tx, self.clock.now().as_secs())?;
        self.publish_changes(wallet, &before);
        Ok(txid)
    }

    fn publish_changes(&self, wallet: &AnyaWallet, before: &BTreeMap<Txid, Option<u32>>) {
        let name = wallet.name().as_str();
        for (txid, height) in positions(wallet) {
            match (before.get(&txid), height) {
                (None, confirmed) => self.events.publish(Event::TxSeen {
                    wallet: name.to_owned(),
                    txid: txid.to_string(),
                    confirmed: confirmed.is_some(),
                }),
                (Some(None), Some(height)) => self.events.publish(Event::TxConfirmed {
                    wallet: name.to_owned(),
                    txid: txid.to_string(),
                    height,
                }),
                _ => {}
            }
        }
    }
}
