//! The attestations one [`DlcService::tick`](super::DlcService::tick) works from, read before the
//! manager asks for them.
//!
//! ddk-manager (1.1) asks every matured oracle of a contract at once and takes the attestations
//! in the order the answers arrive. Its numeric lookup (ddk-trie's multi-oracle trie) finds the
//! CET only when they come in the contract's oracle order: a 2-of-3 contract attested by its
//! first and third oracles is not closed in a tick where the third answered first, and nothing
//! says so. With oracles that do I/O the order is chance. Here every oracle the manager holds
//! answers a tick's attestation requests from memory, so each answer is ready when first polled
//! and they arrive in the order the manager asked (the contract's). Each attestation is read
//! once per tick, however many contracts use its event.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use ddk_manager::contract::Contract;
use ddk_manager::error::Error as ManagerError;
use ddk_messages::oracle_msgs::{OracleAnnouncement, OracleAttestation};
use secp256k1::XOnlyPublicKey;

use super::service::AnyOracle;

/// What each oracle attested, by oracle and event id.
type Attested = HashMap<(XOnlyPublicKey, String), OracleAttestation>;

/// The attestations of the tick in progress, shared by the manager's oracles: `None` outside a
/// tick (the oracles then ask their source).
#[derive(Debug, Default)]
pub(crate) struct Snapshot(Mutex<Option<Attested>>);

impl Snapshot {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Attested>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads, from `oracles`, the attestations of every event of `contracts` that has matured
    /// by `now` (unix seconds) and that the manager could close in this tick: signed contracts
    /// (their funding may confirm in it) and confirmed ones.
    /// Events an oracle has not attested (or could not be read) are left out; the manager
    /// then sees them as not attested in this tick. The snapshot holds until the returned
    /// guard drops.
    pub(crate) async fn take<'a>(
        &'a self,
        oracles: &HashMap<XOnlyPublicKey, Arc<AnyOracle>>,
        contracts: &[Contract],
        now: u64,
    ) -> SnapshotGuard<'a> {
        let wanted: BTreeSet<(XOnlyPublicKey, String)> = contracts
            .iter()
            .filter_map(|c| match c {
                Contract::Signed(s) | Contract::Confirmed(s) => Some(s),
                _ => None,
            })
            .flat_map(|s| &s.accepted_contract.offered_contract.contract_info)
            .flat_map(|info| &info.oracle_announcements)
            .filter(|a| u64::from(a.oracle_event.event_maturity_epoch) <= now)
            .map(|a| (a.oracle_public_key, a.oracle_event.event_id.clone()))
            .collect();
        let reads = wanted.into_iter().filter_map(|(key, event)| {
            let oracle = Arc::clone(oracles.get(&key)?);
            Some(async move {
                match oracle.get_attestation(&event).await {
                    Ok(a) => Some(((key, event), a)),
                    Err(e) => {
                        tracing::debug!(target: "anya::dlc", oracle = %key, event, error = %e, "no attestation");
                        None
                    }
                }
            })
        });
        let attested: Attested = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        *self.slot() = Some(attested);
        SnapshotGuard(self)
    }
}

/// Ends the tick's snapshot when dropped (also when the tick fails or is cancelled).
#[must_use = "the snapshot ends when the guard drops"]
pub(crate) struct SnapshotGuard<'a>(&'a Snapshot);

impl Drop for SnapshotGuard<'_> {
    fn drop(&mut self) {
        *self.0.slot() = None;
    }
}

/// An oracle as a [`DlcService`](super::DlcService)'s manager holds it: attestations come from
/// the tick's snapshot while one is taken, from `inner` otherwise.
pub(crate) struct SnapshotOracle {
    pub(crate) inner: Arc<AnyOracle>,
    pub(crate) snapshot: Arc<Snapshot>,
}

#[async_trait::async_trait]
impl ddk_manager::Oracle for SnapshotOracle {
    fn get_public_key(&self) -> XOnlyPublicKey {
        self.inner.get_public_key()
    }

    async fn get_announcement(&self, event_id: &str) -> Result<OracleAnnouncement, ManagerError> {
        self.inner.get_announcement(event_id).await
    }

    async fn get_attestation(&self, event_id: &str) -> Result<OracleAttestation, ManagerError> {
        let key = (self.inner.get_public_key(), event_id.to_owned());
        // The guard is dropped before any await.
        let served = self.snapshot.slot().as_ref().map(|a| a.get(&key).cloned());
        match served {
            Some(Some(attestation)) => Ok(attestation),
            Some(None) => Err(ManagerError::OracleError(format!(
                "event {event_id:?} was not attested when this tick began"
            ))),
            None => self.inner.get_attestation(event_id).await,
        }
    }
}
