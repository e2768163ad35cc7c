//! [`DlcService`]: one party's contracts, ready to serve.
//!
//! It holds a `ddk-manager` on anya's wallet, HSM, store and bitcoind (the [`DlcManager`]), runs
//! [`resume()`] when it opens (so a restart after a crash at any step picks the contract up
//! again), works in message bytes ([`encode_message`]'s format) so that
//! any transport can carry them, and runs one manager operation at a time (a contract's steps
//! read and write several records; serializing them keeps each step whole).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anya_bitcoin::rpc::BitcoindChain;
use anya_bitcoin::wallet::AnyaWallet;
use anya_core_types::Clock;
use anya_hsm::{HsmProvider, KeyId};
use anya_storage::KvStore;
use bitcoin::hex::DisplayHex;
use bitcoin::{Amount, Network, Txid};
use ddk_manager::contract::contract_input::ContractInput;
use ddk_manager::contract::Contract;
use ddk_manager::error::Error as ManagerError;
use ddk_manager::{ContractId, Storage as _};
use ddk_messages::Message;
use secp256k1::{PublicKey, XOnlyPublicKey};
use serde::Serialize;

use super::resume::Resumed;
use super::snapshot::{Snapshot, SnapshotOracle};
use super::wire::{decode_message, encode_message, WireError};
use super::{
    resume, BitcoindBlockchain, ClockTime, DlcManager, DlcWallet, HsmContractSignerProvider, KvDlcStorage,
    TracingLogger,
};

/// Any oracle the manager reads, remote or local.
pub type AnyOracle = dyn ddk_manager::Oracle + Send + Sync;

/// The most values a numeric contract received from a peer may range over (2^20): the
/// manager evaluates the payout curve at each.
pub const MAX_NUMERIC_VALUES: u64 = 1 << 20;

/// The store namespace of the contracts.
pub const CONTRACTS_NS: &str = "anya/dlc/contracts";

/// Why a contract operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlcError {
    /// Message bytes that are not a contract message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The manager refused (a message that does not verify, a contract in another state, an
    /// unknown oracle, not enough coins, …) or failed.
    #[error("{0}")]
    Manager(#[from] ManagerError),
    /// No contract has this id.
    #[error("no contract {0}")]
    NotFound(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] anya_storage::StoreError),
    /// The node is not on the wallet's network, or cannot be reached.
    #[error("chain: {0}")]
    Chain(#[from] anya_bitcoin::rpc::RpcError),
    /// A contract anya refuses to enter: one with several contract infos (a disjoint
    /// contract). ddk-manager 1.1.2 builds the CETs of every info after the first with lock
    /// time 0 on the accepting side and checks the offer side's adaptor signatures against the
    /// wrong CETs, so the two parties sign different transactions for those outcomes (found
    /// with the dlcspecs vectors, `tests/dlc_vectors.rs`): such a contract could close only on
    /// the first info's outcomes or by refund.
    #[error("disjoint contracts (several contract infos) are refused: their CETs are not signed alike by both parties in ddk-manager 1.1.2")]
    Disjoint,
    /// A message anya refuses before the manager sees it (see [`DlcService::receive`]).
    #[error("refused: {0}")]
    Refused(String),
    /// The manager panicked on this input (ddk-manager 1.1.2 does on some hostile messages);
    /// nothing was stored.
    #[error("the contract manager failed on this input: {0}")]
    Panicked(String),
}

fn refused(reason: impl Into<String>) -> DlcError {
    DlcError::Refused(reason.into())
}

/// How many CET adaptor signatures each party makes for `offered`: one per adaptor point of
/// each contract info, in the order ddk-manager makes them.
fn adaptor_signature_count(
    offered: &ddk_manager::contract::offered_contract::OfferedContract,
) -> Result<usize, DlcError> {
    use ddk_manager::contract::ContractDescriptor;
    use ddk_trie::combination_iterator::CombinationIterator;
    use ddk_trie::multi_oracle_trie::MultiOracleTrie;
    use ddk_trie::multi_oracle_trie_with_diff::MultiOracleTrieWithDiff;
    use ddk_trie::DlcTrie as _;
    let mut total = 0usize;
    for info in &offered.contract_info {
        let oracles = info.oracle_announcements.len();
        if info.threshold == 0 || info.threshold > oracles {
            return Err(refused(format!(
                "a threshold of {} of {oracles} oracles",
                info.threshold
            )));
        }
        let count = match &info.contract_descriptor {
            ContractDescriptor::Enum(e) => {
                let combinations = CombinationIterator::new(oracles, info.threshold).count();
                e.outcome_payouts.len().saturating_mul(combinations)
            }
            ContractDescriptor::Numerical(n) => {
                let trie_error = |e: ddk_dlc::Error| refused(format!("the contract's adaptor trie: {e:?}"));
                let outcomes = n
                    .get_range_payouts(offered.total_collateral)
                    .map_err(|e| refused(format!("the contract's payouts: {e}")))?;
                match &n.difference_params {
                    Some(p) => MultiOracleTrieWithDiff::new(
                        &n.oracle_numeric_infos,
                        info.threshold,
                        p.min_support_exp,
                        p.max_error_exp,
                    )
                    .map_err(trie_error)?
                    .generate(total, &outcomes)
                    .map_err(trie_error)?
                    .len(),
                    None => MultiOracleTrie::new(&n.oracle_numeric_infos, info.threshold)
                        .map_err(trie_error)?
                        .generate(total, &outcomes)
                        .map_err(trie_error)?
                        .len(),
                }
            }
        };
        total = total.saturating_add(count);
    }
    Ok(total)
}

/// Runs a manager step, a panic in it turned into [`DlcError::Panicked`].
async fn guarded<T>(step: impl std::future::Future<Output = Result<T, ManagerError>>) -> Result<T, DlcError> {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(step).catch_unwind().await {
        Ok(result) => Ok(result?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(DlcError::Panicked(what))
        }
    }
}

/// The sum of the outputs `inputs` spend, each read from its previous transaction; a missing
/// output, an undecodable transaction or a sum past the money supply is refused.
fn funding_value(inputs: &[ddk_messages::FundingInput]) -> Result<Amount, DlcError> {
    let mut total = Amount::ZERO;
    for (n, input) in inputs.iter().enumerate() {
        let prev: bitcoin::Transaction = bitcoin::consensus::deserialize(&input.prev_tx)
            .map_err(|e| refused(format!("funding input {n}: its previous transaction: {e}")))?;
        let out = prev
            .output
            .get(input.prev_tx_vout as usize)
            .ok_or_else(|| refused(format!("funding input {n}: no output {}", input.prev_tx_vout)))?;
        total = total
            .checked_add(out.value)
            .filter(|t| *t <= Amount::MAX_MONEY)
            .ok_or_else(|| refused("the funding inputs are worth more than the money supply"))?;
    }
    Ok(total)
}

/// A contract as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractSummary {
    /// Its id (hex): the final id once accepted, the temporary id before.
    pub id: String,
    /// Its temporary id (hex), as the offer named it.
    pub temporary_id: String,
    /// Its state: `offered`, `accepted`, `signed`, `confirmed`, `preclosed`, `closed`,
    /// `refunded`, `failed-accept`, `failed-sign` or `rejected`.
    pub state: &'static str,
    /// Whether this party offered it.
    pub is_offer_party: bool,
    /// The counterparty (hex public key).
    pub counterparty: String,
    /// The offer party's collateral (sat).
    pub offer_collateral: u64,
    /// The accepting party's collateral (sat).
    pub accept_collateral: u64,
    /// The funding transaction, once there is one.
    pub funding_txid: Option<Txid>,
    /// The closing transaction (CET or refund), once there is one.
    pub closing_txid: Option<Txid>,
    /// This party's profit or loss in sat, once closed.
    pub pnl: i64,
    /// The oracle events it settles on.
    pub events: Vec<String>,
}

/// The state's name.
pub fn state_name(contract: &Contract) -> &'static str {
    match contract {
        Contract::Offered(_) => "offered",
        Contract::Accepted(_) => "accepted",
        Contract::Signed(_) => "signed",
        Contract::Confirmed(_) => "confirmed",
        Contract::PreClosed(_) => "preclosed",
        Contract::Closed(_) => "closed",
        Contract::Refunded(_) => "refunded",
        Contract::FailedAccept(_) => "failed-accept",
        Contract::FailedSign(_) => "failed-sign",
        Contract::Rejected(_) => "rejected",
    }
}

fn offered(contract: &Contract) -> Option<&ddk_manager::contract::offered_contract::OfferedContract> {
    Some(match contract {
        Contract::Offered(o) | Contract::Rejected(o) => o,
        Contract::Accepted(a) => &a.offered_contract,
        Contract::Signed(s) | Contract::Confirmed(s) | Contract::Refunded(s) => &s.accepted_contract.offered_contract,
        Contract::PreClosed(p) => &p.signed_contract.accepted_contract.offered_contract,
        Contract::Closed(c) => &c.signed_contract.accepted_contract.offered_contract,
        Contract::FailedAccept(f) => &f.offered_contract,
        Contract::FailedSign(f) => &f.accepted_contract.offered_contract,
    })
}

impl ContractSummary {
    /// The summary of `contract`.
    pub fn of(contract: &Contract) -> Self {
        let (offer, accept, _) = contract.get_collateral();
        let closing_txid = match contract {
            Contract::PreClosed(p) => Some(p.signed_cet.compute_txid()),
            Contract::Closed(c) => c.signed_cet.as_ref().map(bitcoin::Transaction::compute_txid),
            Contract::Refunded(r) => Some(r.accepted_contract.dlc_transactions.refund.compute_txid()),
            _ => None,
        };
        let offered = offered(contract);
        Self {
            id: contract.get_id().to_lower_hex_string(),
            temporary_id: contract.get_temporary_id().to_lower_hex_string(),
            state: state_name(contract),
            is_offer_party: offered.is_some_and(|o| o.is_offer_party),
            counterparty: contract.get_counter_party_id().serialize().to_lower_hex_string(),
            offer_collateral: offer.to_sat(),
            accept_collateral: accept.to_sat(),
            funding_txid: contract.get_funding_txid(),
            closing_txid,
            pnl: contract.get_pnl().to_sat(),
            events: offered
                .map(|o| {
                    o.contract_info
                        .iter()
                        .flat_map(|i| i.oracle_announcements.iter().map(|a| a.oracle_event.event_id.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What the parts of a [`DlcService`] are.
pub struct DlcParts {
    /// The store (contracts live in [`CONTRACTS_NS`]).
    pub store: Arc<dyn KvStore>,
    /// The keystore holding `root`.
    pub hsm: Arc<dyn HsmProvider>,
    /// The BIP32 root of the contract keys (its policy must allow
    /// [`Usage::ExportDlcChild`](anya_hsm::Usage::ExportDlcChild)); usually the wallet's.
    pub root: KeyId,
    /// The wallet funding the contracts.
    pub wallet: Arc<Mutex<AnyaWallet>>,
    /// The node.
    pub chain: Arc<BitcoindChain>,
    /// The network (checked against the node).
    pub network: Network,
    /// The oracles contracts may use.
    pub oracles: Vec<Arc<AnyOracle>>,
    /// The time the manager sees.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DlcParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlcParts")
            .field("root", &self.root)
            .field("network", &self.network)
            .field("oracles", &self.oracles.len())
            .finish_non_exhaustive()
    }
}

/// One party's contracts (see the [module docs](self)).
pub struct DlcService {
    manager: tokio::sync::Mutex<DlcManager<AnyOracle>>,
    storage: Arc<KvDlcStorage>,
    wallet: Arc<DlcWallet>,
    blockchain: Arc<BitcoindBlockchain>,
    oracle_keys: Vec<XOnlyPublicKey>,
    oracles: HashMap<XOnlyPublicKey, Arc<AnyOracle>>,
    snapshot: Arc<Snapshot>,
    time: Arc<ClockTime>,
}

impl std::fmt::Debug for DlcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlcService")
            .field("oracles", &self.oracle_keys)
            .finish_non_exhaustive()
    }
}

impl DlcService {
    /// Opens the service and [resumes](resume()) what a previous process left: returns what the
    /// resume did (the messages in it are to be sent again, as bytes from
    /// [`encode_message`]).
    pub async fn open(parts: DlcParts) -> Result<(Self, Resumed), DlcError> {
        let blockchain = Arc::new(BitcoindBlockchain::new(Arc::clone(&parts.chain), parts.network)?);
        let storage = Arc::new(KvDlcStorage::new(Arc::clone(&parts.store), CONTRACTS_NS)?);
        let wallet = Arc::new(DlcWallet::new(parts.wallet));
        let snapshot = Arc::new(Snapshot::default());
        let time = Arc::new(ClockTime(parts.clock));
        let mut oracles = HashMap::new();
        let mut held: HashMap<XOnlyPublicKey, Arc<AnyOracle>> = HashMap::new();
        let mut oracle_keys = Vec::new();
        for oracle in parts.oracles {
            let key = oracle.get_public_key();
            oracle_keys.push(key);
            held.insert(
                key,
                Arc::new(SnapshotOracle {
                    inner: Arc::clone(&oracle),
                    snapshot: Arc::clone(&snapshot),
                }),
            );
            oracles.insert(key, oracle);
        }
        let manager = DlcManager::new(
            Arc::clone(&wallet),
            Arc::new(HsmContractSignerProvider::new(parts.hsm, parts.root)),
            Arc::clone(&blockchain),
            Arc::clone(&storage),
            held,
            Arc::clone(&time),
            Arc::clone(&blockchain),
            Arc::new(TracingLogger),
        )
        .await?;
        let resumed = resume(&storage, &wallet, &blockchain).await?;
        Ok((
            Self {
                manager: tokio::sync::Mutex::new(manager),
                storage,
                wallet,
                blockchain,
                oracle_keys,
                oracles,
                snapshot,
                time,
            },
            resumed,
        ))
    }

    /// The oracles' public keys.
    pub fn oracles(&self) -> &[XOnlyPublicKey] {
        &self.oracle_keys
    }

    /// The wallet funding the contracts.
    pub fn wallet(&self) -> &Arc<DlcWallet> {
        &self.wallet
    }

    /// The node.
    pub fn blockchain(&self) -> &Arc<BitcoindBlockchain> {
        &self.blockchain
    }

    /// Offers `input` to `counterparty` (the announcements are read from the oracles): returns
    /// the contract's temporary id and the offer's bytes. The offer is stored (and its coins
    /// reserved) before it is returned.
    pub async fn offer(
        &self,
        input: &ContractInput,
        counterparty: PublicKey,
    ) -> Result<(ContractId, Vec<u8>), DlcError> {
        if input.contract_infos.len() != 1 {
            return Err(DlcError::Disjoint);
        }
        let manager = self.manager.lock().await;
        let offer = guarded(manager.send_offer(input, counterparty)).await;
        drop(manager);
        self.after(&offer).await;
        let offer = offer?;
        Ok((offer.temporary_contract_id, encode_message(&Message::Offer(offer))))
    }

    /// Hands a message from `from` to the manager: an offer is stored (to accept or not), an
    /// accept is answered with the sign message (returned), a sign makes this party broadcast
    /// the funding transaction. A message that does not decode, verify or fit the contract's
    /// state is an error.
    pub async fn receive(&self, bytes: &[u8], from: PublicKey) -> Result<Option<Vec<u8>>, DlcError> {
        let message = decode_message(bytes)?;
        match &message {
            Message::Offer(offer) => self.check_offer(offer).await?,
            Message::Accept(accept) => {
                funding_value(&accept.funding_inputs)?;
                let count = accept.cet_adaptor_signatures.ecdsa_adaptor_signatures.len();
                self.check_adaptor_count(&accept.temporary_contract_id, count, "accept")
                    .await?;
            }
            Message::Sign(sign) => {
                let count = sign.cet_adaptor_signatures.ecdsa_adaptor_signatures.len();
                self.check_adaptor_count(&sign.contract_id, count, "sign").await?;
                self.check_sign(sign, &from).await?;
            }
            _ => {}
        }
        let manager = self.manager.lock().await;
        let reply = guarded(manager.on_dlc_message(&message, from)).await;
        drop(manager);
        self.after(&reply).await;
        Ok(reply?.as_ref().map(encode_message))
    }

    /// Accepts the offer `temporary_id`: returns the contract's id and the accept's bytes for
    /// the offer party. The accepted contract is stored before it is returned.
    pub async fn accept(&self, temporary_id: &ContractId) -> Result<(ContractId, Vec<u8>), DlcError> {
        let manager = self.manager.lock().await;
        let accepted = guarded(manager.accept_contract_offer(temporary_id)).await;
        drop(manager);
        self.after(&accepted).await;
        let (id, _, accept) = accepted?;
        Ok((id, encode_message(&Message::Accept(accept))))
    }

    /// After a failed step: coins reserved for a contract that failed (a bad accept or sign
    /// message leaves it failed with its coins reserved; ddk-manager never releases them) go
    /// back to the wallet.
    async fn after<T>(&self, step: &Result<T, DlcError>) {
        if step.is_ok() {
            return;
        }
        let released = match resume::funding_outpoints(&self.storage).await {
            Ok(live) => self.wallet.release_unused(&live),
            Err(e) => Err(e),
        };
        match released {
            Ok(coins) if !coins.is_empty() => {
                tracing::info!(coins = coins.len(), "released the coins of a failed contract step")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not release the coins of a failed contract step"),
        }
    }

    /// What anya checks in an offer before the manager sees it: ddk-manager 1.1.2 panics on
    /// some (payouts above the total collateral, funding inputs worth more than the money
    /// supply, a multi-oracle info without announcements, a numeric payout function without
    /// pieces) and takes others (an offer
    /// collateral above the total, a fee rate of 0, announcements of an oracle this party does
    /// not use, a temporary id it already holds a contract under).
    async fn check_offer(&self, offer: &ddk_messages::OfferDlc) -> Result<(), DlcError> {
        use ddk_messages::contract_msgs::{ContractDescriptor, ContractInfo};
        use ddk_messages::oracle_msgs::{EventDescriptor, OracleInfo};
        let ContractInfo::SingleContractInfo(info) = &offer.contract_info else {
            return Err(DlcError::Disjoint);
        };
        let total = info.total_collateral;
        if offer.offer_collateral > total {
            return Err(refused("the offer collateral exceeds the total collateral"));
        }
        if offer.fee_rate_per_vb == 0 {
            return Err(refused("a fee rate of 0 sat/vB"));
        }
        match &info.contract_info.contract_descriptor {
            ContractDescriptor::EnumeratedContractDescriptor(e) => {
                if e.payouts.iter().any(|p| p.offer_payout > total) {
                    return Err(refused("a payout exceeds the total collateral"));
                }
            }
            ContractDescriptor::NumericOutcomeContractDescriptor(n) => {
                if n.payout_function.payout_function_pieces.is_empty() {
                    return Err(refused("a payout function without pieces"));
                }
                if n.rounding_intervals.intervals.is_empty() {
                    return Err(refused("no rounding interval"));
                }
            }
        }
        let announcements: Vec<_> = match &info.contract_info.oracle_info {
            OracleInfo::Single(s) => vec![&s.oracle_announcement],
            OracleInfo::Multi(m) => m.oracle_announcements.iter().collect(),
        };
        if let ContractDescriptor::NumericOutcomeContractDescriptor(n) = &info.contract_info.contract_descriptor {
            // ddk-manager evaluates the payout curve at every value when it takes an offer in,
            // and checks the curve only against the offer's own digit count: a curve over
            // 2^64 values would hold the manager for ever, and one on other digits than the
            // oracles attest could never close by CET.
            for a in &announcements {
                let EventDescriptor::DigitDecompositionEvent(d) = &a.oracle_event.event_descriptor else {
                    return Err(refused("a numeric contract on an enum event"));
                };
                if d.nb_digits != n.num_digits {
                    return Err(refused(format!(
                        "the contract has {} digits, the oracle's event {}",
                        n.num_digits, d.nb_digits
                    )));
                }
                let values = u64::from(d.base)
                    .checked_pow(u32::from(d.nb_digits))
                    .filter(|v| *v <= MAX_NUMERIC_VALUES);
                if d.base < 2 || values.is_none() {
                    return Err(refused(format!(
                        "a numeric event of base {} with {} digits (at most {MAX_NUMERIC_VALUES} values)",
                        d.base, d.nb_digits
                    )));
                }
            }
        }
        if announcements.is_empty() {
            return Err(refused("no oracle announcement"));
        }
        if let Some(a) = announcements
            .iter()
            .find(|a| !self.oracle_keys.contains(&a.oracle_public_key))
        {
            return Err(refused(format!(
                "oracle {} is not one this party uses",
                a.oracle_public_key
            )));
        }
        funding_value(&offer.funding_inputs)?;
        let known = self.storage.get_contracts().await?;
        if known
            .iter()
            .any(|c| c.get_temporary_id() == offer.temporary_contract_id || c.get_id() == offer.temporary_contract_id)
        {
            return Err(refused("a contract with this temporary id exists"));
        }
        Ok(())
    }

    /// An accept or sign message must carry one CET adaptor signature per adaptor point of
    /// the contract: ddk-manager 1.1.2 indexes past the end of a short list (a panic, which
    /// a build with `panic = "abort"` could not catch) and ignores extra ones. The count is
    /// the contract's, computed without any curve operation: for an enum contract, outcomes
    /// times oracle combinations; for a numeric one, the entries of the same ddk-trie trie the
    /// manager builds.
    async fn check_adaptor_count(&self, id: &ContractId, got: usize, what: &str) -> Result<(), DlcError> {
        let offered = match self.storage.get_contract(id).await? {
            Some(Contract::Offered(o)) => o,
            Some(Contract::Accepted(a)) => a.offered_contract,
            // Not a contract at the step this message is for: the manager refuses it.
            _ => return Ok(()),
        };
        let expected = adaptor_signature_count(&offered)?;
        if got != expected {
            return Err(refused(format!(
                "the {what} message carries {got} CET adaptor signatures; the contract has {expected} adaptor points"
            )));
        }
        Ok(())
    }

    /// What anya checks in a sign message before the manager sees it: ddk-manager 1.1.2 does
    /// not check the offer party's funding signatures, so a bad one would have this party's
    /// policy approve and its HSM sign a funding transaction the network refuses, and store
    /// the contract as signed. Each of the offer party's inputs is verified here with Bitcoin
    /// Core's interpreter.
    async fn check_sign(&self, sign: &ddk_messages::SignDlc, from: &PublicKey) -> Result<(), DlcError> {
        let Some(Contract::Accepted(accepted)) = self.storage.get_contract(&sign.contract_id).await? else {
            // Not an accepted contract of ours: the manager refuses it with the reason.
            return Ok(());
        };
        if accepted.offered_contract.counter_party != *from {
            return Ok(());
        }
        let (psbt, ours) = resume::funding_with_offer_witnesses(&accepted, &sign.funding_signatures)
            .map_err(|e| refused(format!("funding signatures: {e}")))?;
        resume::verify_offer_witnesses(&psbt, &ours).map_err(refused)?;
        Ok(())
    }

    /// The manager's periodic work: new blocks, funding confirmations, attestations (closing
    /// by CET), refunds after the refund locktime. Returns the contracts whose state changed,
    /// in their new state.
    pub async fn tick(&self) -> Result<Vec<ContractSummary>, DlcError> {
        let manager = self.manager.lock().await;
        let contracts = self.storage.get_contracts().await?;
        let before: HashMap<ContractId, &'static str> = contracts.iter().map(|c| (c.get_id(), state_name(c))).collect();
        let _attested = self
            .snapshot
            .take(&self.oracles, &contracts, ddk_manager::Time::unix_time_now(&*self.time))
            .await;
        manager.periodic_chain_monitor().await?;
        manager.periodic_check(false).await?;
        Ok(self
            .storage
            .get_contracts()
            .await?
            .iter()
            .filter(|c| before.get(&c.get_id()) != Some(&state_name(c)))
            .map(ContractSummary::of)
            .collect())
    }

    /// Every contract.
    pub async fn contracts(&self) -> Result<Vec<ContractSummary>, DlcError> {
        Ok(self
            .storage
            .get_contracts()
            .await?
            .iter()
            .map(ContractSummary::of)
            .collect())
    }

    /// The contract `id` (its final id, or its temporary id before it has one).
    pub async fn contract(&self, id: &ContractId) -> Result<Contract, DlcError> {
        if let Some(c) = self.storage.get_contract(id).await? {
            return Ok(c);
        }
        self.storage
            .get_contracts()
            .await?
            .into_iter()
            .find(|c| c.get_temporary_id() == *id)
            .ok_or_else(|| DlcError::NotFound(id.to_lower_hex_string()))
    }

    /// What `contract` pays this party when it closed by a CET or refund (what its outputs to
    /// this party's payout script hold), once known.
    pub fn payout(contract: &Contract) -> Option<Amount> {
        let signed = match contract {
            Contract::Closed(c) => &c.signed_contract,
            Contract::PreClosed(p) => &p.signed_contract,
            _ => return None,
        };
        let offer = &signed.accepted_contract.offered_contract;
        let spk = if offer.is_offer_party {
            &offer.offer_params.payout_script_pubkey
        } else {
            &signed.accepted_contract.accept_params.payout_script_pubkey
        };
        let cet = match contract {
            Contract::Closed(c) => c.signed_cet.as_ref()?,
            Contract::PreClosed(p) => &p.signed_cet,
            _ => return None,
        };
        Some(
            cet.output
                .iter()
                .filter(|o| &o.script_pubkey == spk)
                .map(|o| o.value)
                .sum(),
        )
    }
}
