//! DLC contracts through dlcdevkit's `ddk-manager`, with anya behind its traits.
//!
//! [`KvDlcStorage`] keeps the manager's contracts, channels and chain
//! monitor in any anya store. The oracle side:
//! [`HttpOracle`] (any oracle serving kormir's or the p2pderivatives routes, through the
//! verifying [`OracleClient`]) and [`LocalOracle`] (an anya [`Oracle`] in the same process)
//! implement `ddk_manager::Oracle`. Both run their blocking I/O on tokio's blocking pool, and
//! both hand the manager only messages that verified: the client checks every announcement and
//! attestation against the oracle's key and nonces, and the local oracle checks its own before
//! they leave it.

use std::sync::Arc;

/// The contract manager crate, for its traits and types.
pub use ddk_manager;
use ddk_manager::error::Error as ManagerError;
use ddk_messages::oracle_msgs::{OracleAnnouncement, OracleAttestation};
use secp256k1::XOnlyPublicKey;

use super::client::OracleClient;
use super::Oracle;

pub mod cets;
#[cfg(feature = "dlc-contracts")]
pub mod regtest;
pub mod resume;
#[cfg(feature = "dlc-contracts")]
pub mod service;
pub mod signer;
#[cfg(feature = "dlc-contracts")]
mod snapshot;
pub mod storage;
#[cfg(feature = "dlc-contracts")]
pub mod wallet;
pub mod wire;

#[cfg(feature = "dlc-contracts")]
pub use regtest::RegtestBlockchain;
pub use resume::{outgoing_message, Pending};
#[cfg(feature = "dlc-contracts")]
pub use resume::{resume, Resumed};
#[cfg(feature = "dlc-contracts")]
pub use service::{AnyOracle, ContractSummary, DlcError, DlcParts, DlcService};
pub use signer::{HsmContractSigner, HsmContractSignerProvider};
pub use storage::KvDlcStorage;
#[cfg(feature = "dlc-contracts")]
pub use wallet::{BitcoindBlockchain, ClockTime, DlcWallet, TracingLogger};
pub use wire::{decode_message, encode_message, WireError};

/// The contract manager on anya: an [`AnyaWallet`](anya_bitcoin::wallet::AnyaWallet) and its
/// HSM root for funding and contract keys, a chain `B` for blocks, broadcasts and fee
/// estimates (a bitcoind node by default, or the in-process [`RegtestBlockchain`]), an anya
/// store for every contract, and oracles of type `O` (an [`HttpOracle`], a [`LocalOracle`], or
/// `dyn ddk_manager::Oracle + Send + Sync` to mix them).
///
/// Built by hand, mind one trap of ddk-manager 1.1: it asks a contract's oracles for their
/// attestations at once and closes a multi-oracle numeric contract only if the answers arrive
/// in the contract's oracle order (otherwise it skips the close for that check, silently).
/// [`DlcService`] reads each tick's attestations first and hands them to the manager from
/// memory, in order.
#[cfg(feature = "dlc-contracts")]
pub type DlcManager<O, B = BitcoindBlockchain> = ddk_manager::manager::Manager<
    Arc<DlcWallet>,
    Arc<ddk_manager::CachedContractSignerProvider<Arc<HsmContractSignerProvider>, HsmContractSigner>>,
    Arc<B>,
    Arc<KvDlcStorage>,
    Arc<O>,
    Arc<ClockTime>,
    Arc<B>,
    HsmContractSigner,
    Arc<TracingLogger>,
>;

fn oracle_error(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::OracleError(e.to_string())
}

/// Runs `f` on tokio's blocking pool (it does store, HSM or network I/O).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ManagerError> + Send + 'static,
) -> Result<T, ManagerError> {
    tokio::task::spawn_blocking(f).await.map_err(oracle_error)?
}

/// A remote oracle, read through the verifying [`OracleClient`].
#[derive(Debug, Clone)]
pub struct HttpOracle {
    client: Arc<OracleClient>,
}

impl HttpOracle {
    /// The oracle `client` is connected to.
    pub fn new(client: OracleClient) -> Self {
        Self {
            client: Arc::new(client),
        }
    }
}

#[async_trait::async_trait]
impl ddk_manager::Oracle for HttpOracle {
    fn get_public_key(&self) -> XOnlyPublicKey {
        self.client.public_key()
    }

    async fn get_announcement(&self, event_id: &str) -> Result<OracleAnnouncement, ManagerError> {
        let (client, id) = (Arc::clone(&self.client), event_id.to_owned());
        blocking(move || client.announcement(&id).map_err(oracle_error)).await
    }

    async fn get_attestation(&self, event_id: &str) -> Result<OracleAttestation, ManagerError> {
        let (client, id) = (Arc::clone(&self.client), event_id.to_owned());
        blocking(move || client.attestation(&id).map_err(oracle_error)).await
    }
}

/// An anya [`Oracle`] in this process.
#[derive(Debug, Clone)]
pub struct LocalOracle {
    oracle: Arc<Oracle>,
}

impl LocalOracle {
    /// `oracle`, as the contract manager's oracle.
    pub fn new(oracle: Arc<Oracle>) -> Self {
        Self { oracle }
    }
}

#[async_trait::async_trait]
impl ddk_manager::Oracle for LocalOracle {
    fn get_public_key(&self) -> XOnlyPublicKey {
        self.oracle.public_key()
    }

    async fn get_announcement(&self, event_id: &str) -> Result<OracleAnnouncement, ManagerError> {
        let (oracle, id) = (Arc::clone(&self.oracle), event_id.to_owned());
        blocking(move || oracle.announcement(&id).map_err(oracle_error)).await
    }

    async fn get_attestation(&self, event_id: &str) -> Result<OracleAttestation, ManagerError> {
        let (oracle, id) = (Arc::clone(&self.oracle), event_id.to_owned());
        blocking(move || {
            oracle
                .attestation(&id)
                .map_err(oracle_error)?
                .ok_or_else(|| ManagerError::OracleError(format!("event {id:?} is not attested yet")))
        })
        .await
    }
}
