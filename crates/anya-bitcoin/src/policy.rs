//! The spending policy: rules checked before the HSM is asked to sign.
//!
//! What VLS does for Lightning, for on-chain spends. Each wallet has a [`SpendPolicy`] stored
//! in its namespace: a maximum amount per transaction, a rolling 24-hour velocity limit, a
//! destination allowlist, fee-rate and absolute-fee caps, and the rule that change returns to
//! the wallet. [`PolicyEngine::approve`] checks a [`SpendSummary`] against every rule at once:
//! a refusal is a [`PolicyViolation`] naming **every** broken rule. An approval records the
//! spend in the wallet's history in the same atomic batch that checks nobody else approved a
//! spend meanwhile, so two concurrent approvals cannot both slip under the velocity limit, and
//! the history survives restarts. Every decision, approval or refusal, is appended to the
//! HSM's audit chain ([`HsmProvider::record_decision`]) with the txid as its subject and the
//! bitmask of broken rules ([`Violation::code`]) as its outcome.
//!
//! # Replacements and releases
//!
//! Each recorded spend remembers the outpoints it consumes. A later spend that consumes any of
//! them (a BIP125 fee bump, or any other double spend of the same coins) cannot confirm beside
//! it, so [`PolicyEngine::approve`] lets it *take the place* of the spends it conflicts with:
//! they stop counting, the replacement counts instead, and it keeps the earliest of their times
//! so that bumping never stretches the window. The replaced spends are kept, marked with their
//! replacement, so that [`PolicyEngine::release`] of a replacement that never reached the
//! network puts them back: the original may still be in mempools.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use anya_core_types::Clock;
use anya_hsm::{HsmError, HsmProvider, KeyId};
use anya_storage::{KvStore, Namespace, Scan, StoreError, Version, WriteBatch};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

/// The length of the velocity window, in seconds.
pub const VELOCITY_WINDOW_SECS: u64 = 24 * 60 * 60;

const RULES_KEY: &[u8] = b"rules";
const HEAD_KEY: &[u8] = b"head";
const SPEND_PREFIX: &[u8] = b"s/";
const TXID_PREFIX: &[u8] = b"t/";
const MAX_RETRIES: usize = 64;
/// Format byte of a `t/` record that carries the spend's inputs (the first version held only the
/// 8-byte time).
const TXID_FORMAT_INPUTS: u8 = 1;
/// Length of a `t/` record before its inputs: time, format, replaced flag, replacement txid.
const TXID_RECORD_HEAD: usize = 8 + 1 + 1 + 32;
/// Length of one encoded outpoint: txid and big-endian vout.
const OUTPOINT_LEN: usize = 32 + 4;

/// The audit outcome recorded when a reservation is released (a spend that never reached the
/// network stops counting). Rule bits ([`Violation::code`]) use the low bits; this one is
/// never set by a refusal.
pub const RELEASE_OUTCOME: u16 = 1 << 15;

/// A wallet's spending rules. `None` means no limit of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendPolicy {
    /// Most value one transaction may send out of the wallet (outputs that are not the
    /// wallet's own).
    pub max_per_tx: Option<Amount>,
    /// Most value all approved transactions may send out in any rolling 24 hours.
    pub max_per_24h: Option<Amount>,
    /// The only scripts a transaction may pay outside the wallet; `None` allows any.
    pub allowlist: Option<Vec<ScriptBuf>>,
    /// Highest fee rate, estimated on the signed size.
    pub max_fee_rate: Option<FeeRate>,
    /// Highest absolute fee.
    pub max_fee: Option<Amount>,
    /// Every output that claims to be change (carries this wallet's key origins) must pay a
    /// script of the wallet.
    pub change_to_wallet: bool,
    /// The only Lightning nodes a payment may be made to (its payee's node id); `None` allows
    /// any. On-chain spends are judged by `allowlist` instead.
    #[serde(default)]
    pub node_allowlist: Option<Vec<PublicKey>>,
}

impl Default for SpendPolicy {
    /// No limits; change must return to the wallet.
    fn default() -> Self {
        Self {
            max_per_tx: None,
            max_per_24h: None,
            allowlist: None,
            max_fee_rate: None,
            max_fee: None,
            change_to_wallet: true,
            node_allowlist: None,
        }
    }
}

/// Who an output pays, as the wallet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRole {
    /// Someone outside the wallet.
    External,
    /// The wallet itself (change or a self-transfer).
    Wallet,
    /// An output that carries the wallet's key origins, as change does, but whose script is not
    /// the wallet's: a PSBT trying to pass a payment off as change.
    ForgedChange,
}

/// One output of a spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendOutput {
    /// Its script.
    pub script_pubkey: ScriptBuf,
    /// Its value.
    pub value: Amount,
    /// Who it pays.
    pub role: OutputRole,
}

/// The facts about a transaction that the rules judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendSummary {
    /// The transaction's id.
    pub txid: Txid,
    /// Sum of the spent outputs.
    pub input_value: Amount,
    /// The outputs, in order.
    pub outputs: Vec<SpendOutput>,
    /// `input_value` minus the outputs.
    pub fee: Amount,
    /// The fee over the estimated signed size.
    pub fee_rate: FeeRate,
    /// The outpoints it spends, in input order. An approved spend that shares any of them with
    /// a recorded one replaces it in the velocity window.
    pub inputs: Vec<OutPoint>,
}

impl SpendSummary {
    /// Value paid outside the wallet (every output that is not [`OutputRole::Wallet`]).
    pub fn outgoing(&self) -> Amount {
        self.outputs
            .iter()
            .filter(|o| o.role != OutputRole::Wallet)
            .map(|o| o.value)
            .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap_or(Amount::MAX_MONEY))
    }

    /// Value leaving the wallet: outgoing value plus the fee. This is what the per-transaction
    /// and velocity limits count.
    pub fn spent(&self) -> Amount {
        self.outgoing().checked_add(self.fee).unwrap_or(Amount::MAX_MONEY)
    }
}

/// The facts about an outgoing Lightning payment that the rules judge. A payment counts in the
/// same history as the wallet's on-chain spends: the per-transaction limit is its per-payment
/// maximum, and the 24-hour velocity limit covers both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSummary {
    /// The payment's hash: its key in the history and the audit record's subject.
    pub payment_hash: [u8; 32],
    /// What the payee receives, in millisatoshis.
    pub amount_msat: u64,
    /// The most routing fee the payment may pay, in millisatoshis (the router is held to it).
    pub max_fee_msat: u64,
    /// The payee's node id.
    pub destination: PublicKey,
}

impl PaymentSummary {
    /// The most the payment can take out: amount plus the fee limit, rounded up to whole
    /// satoshis. This is what the per-payment and velocity limits count.
    pub fn spent(&self) -> Amount {
        Amount::from_sat(msat_to_sat_ceil(self.amount_msat.saturating_add(self.max_fee_msat)))
    }

    /// The fee limit, rounded up to whole satoshis, which `max_fee` caps.
    pub fn max_fee(&self) -> Amount {
        Amount::from_sat(msat_to_sat_ceil(self.max_fee_msat))
    }

    /// The payment as the rules see it: a spend keyed by the payment hash, with no inputs (it
    /// replaces nothing) and no outputs (its destination is a node, not a script; the amount
    /// it counts is [`spent`](Self::spent), given beside it).
    fn as_spend(&self) -> SpendSummary {
        SpendSummary {
            txid: Txid::from_byte_array(self.payment_hash),
            input_value: self.spent(),
            outputs: Vec::new(),
            fee: self.max_fee(),
            fee_rate: FeeRate::ZERO,
            inputs: Vec::new(),
        }
    }
}

fn msat_to_sat_ceil(msat: u64) -> u64 {
    msat.div_ceil(1000)
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The transaction sends more than `max_per_tx`.
    AmountOverLimit {
        /// What it sends (outgoing value plus fee).
        amount: Amount,
        /// The limit.
        limit: Amount,
    },
    /// The transaction would take the last 24 hours' spending over `max_per_24h`.
    VelocityOverLimit {
        /// Already spent in the window.
        spent_24h: Amount,
        /// What this transaction adds.
        amount: Amount,
        /// The limit.
        limit: Amount,
    },
    /// An output pays a script outside the allowlist.
    DestinationNotAllowed {
        /// The output's index.
        index: usize,
        /// Its script.
        script_pubkey: ScriptBuf,
    },
    /// The fee rate is over `max_fee_rate`.
    FeeRateOverCap {
        /// The estimated fee rate.
        fee_rate: FeeRate,
        /// The cap.
        cap: FeeRate,
    },
    /// The fee is over `max_fee`.
    FeeOverCap {
        /// The fee.
        fee: Amount,
        /// The cap.
        cap: Amount,
    },
    /// An output claims to be change but does not pay the wallet.
    ChangeNotToWallet {
        /// The output's index.
        index: usize,
    },
    /// A Lightning payment's payee is not on `node_allowlist`.
    NodeNotAllowed {
        /// The payee's node id.
        node_id: PublicKey,
    },
}

impl Violation {
    /// The rule's bit in an audit record's outcome (the outcome is the OR of every broken
    /// rule's bit; 0 is an approval).
    pub fn code(&self) -> u16 {
        match self {
            Violation::AmountOverLimit { .. } => 1 << 0,
            Violation::VelocityOverLimit { .. } => 1 << 1,
            Violation::DestinationNotAllowed { .. } => 1 << 2,
            Violation::FeeRateOverCap { .. } => 1 << 3,
            Violation::FeeOverCap { .. } => 1 << 4,
            Violation::ChangeNotToWallet { .. } => 1 << 5,
            Violation::NodeNotAllowed { .. } => 1 << 6,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::AmountOverLimit { amount, limit } => {
                write!(f, "sends {amount}, over the per-transaction limit of {limit}")
            }
            Violation::VelocityOverLimit {
                spent_24h,
                amount,
                limit,
            } => write!(
                f,
                "{amount} on top of {spent_24h} spent in the last 24 hours is over the limit of {limit}"
            ),
            Violation::DestinationNotAllowed { index, script_pubkey } => {
                write!(f, "output {index} pays {script_pubkey}, which is not on the allowlist")
            }
            Violation::FeeRateOverCap { fee_rate, cap } => write!(
                f,
                "fee rate {} sat/vB is over the cap of {} sat/vB",
                fee_rate.to_sat_per_vb_ceil(),
                cap.to_sat_per_vb_ceil()
            ),
            Violation::FeeOverCap { fee, cap } => write!(f, "fee {fee} is over the cap of {cap}"),
            Violation::ChangeNotToWallet { index } => {
                write!(f, "output {index} claims to be change but does not pay the wallet")
            }
            Violation::NodeNotAllowed { node_id } => {
                write!(
                    f,
                    "the payment goes to node {node_id}, which is not on the node allowlist"
                )
            }
        }
    }
}

/// A refused spend and every rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyViolation {
    /// The refused transaction.
    pub txid: Txid,
    /// Every broken rule (never empty).
    pub violations: Vec<Violation>,
}

impl PolicyViolation {
    /// The audit outcome: the OR of the rules' codes.
    pub fn code(&self) -> u16 {
        self.violations.iter().fold(0, |acc, v| acc | v.code())
    }
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spending policy refused {}: ", self.txid)?;
        write_violations(f, &self.violations)
    }
}

fn write_violations(f: &mut fmt::Formatter<'_>, violations: &[Violation]) -> fmt::Result {
    for (i, v) in violations.iter().enumerate() {
        if i > 0 {
            f.write_str("; ")?;
        }
        write!(f, "{v}")?;
    }
    Ok(())
}

/// A refused Lightning payment and every rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentViolation {
    /// The refused payment's hash.
    pub payment_hash: [u8; 32],
    /// Every broken rule (never empty).
    pub violations: Vec<Violation>,
}

impl PaymentViolation {
    /// The audit outcome: the OR of the rules' codes.
    pub fn code(&self) -> u16 {
        self.violations.iter().fold(0, |acc, v| acc | v.code())
    }
}

impl fmt::Display for PaymentViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spending policy refused payment {}: ",
            bitcoin::hex::DisplayHex::to_lower_hex_string(&self.payment_hash[..])
        )?;
        write_violations(f, &self.violations)
    }
}

impl std::error::Error for PaymentViolation {}

impl std::error::Error for PolicyViolation {}

/// Why the policy could not approve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The spend broke rules.
    #[error(transparent)]
    Refused(#[from] PolicyViolation),
    /// The Lightning payment broke rules.
    #[error(transparent)]
    PaymentRefused(#[from] PaymentViolation),
    /// The store failed.
    #[error("policy store: {0}")]
    Store(#[from] StoreError),
    /// The decision could not be written to the audit chain; nothing was approved.
    #[error("policy audit: {0}")]
    Audit(#[from] HsmError),
    /// The stored rules or history are unreadable.
    #[error("policy record {key} is unreadable: {reason}")]
    Corrupt {
        /// The record.
        key: String,
        /// Why.
        reason: String,
    },
    /// Approvals kept racing; try again.
    #[error("spend history kept changing under {MAX_RETRIES} attempts")]
    Contended,
}

/// One recorded spend.
#[derive(Debug, Clone)]
struct Spend {
    /// Its `s/` key.
    key: Vec<u8>,
    /// When it was approved (a replacement inherits the earliest time of what it replaced).
    time: u64,
    /// What it counts.
    amount: Amount,
    txid: Txid,
    /// The outpoints it consumes (empty for records written before inputs were kept).
    inputs: Vec<OutPoint>,
    /// The spend that took its place; it does not count while this is set.
    replaced_by: Option<Txid>,
}

impl Spend {
    fn in_window(&self, now: u64) -> bool {
        self.time.saturating_add(VELOCITY_WINDOW_SECS) > now
    }

    /// Whether it counts against the velocity limit at `now`.
    fn counts(&self, now: u64) -> bool {
        self.replaced_by.is_none() && self.in_window(now)
    }
}

/// The recorded spends: the namespace's `s/` and `t/` records, decoded and joined.
#[derive(Debug, Clone, Default)]
struct History {
    /// By `s/` key, which orders them by time.
    spends: BTreeMap<Vec<u8>, Spend>,
    /// The `t/` records, by txid.
    details: HashMap<Txid, TxidDetail>,
    /// The `s/` keys of each txid (one, unless the store was damaged).
    keys: HashMap<Txid, BTreeSet<Vec<u8>>>,
}

impl History {
    fn load(store: &dyn KvStore, ns: &Namespace) -> Result<Self, PolicyError> {
        let mut details = HashMap::new();
        for entry in store.scan(ns, Scan::prefix(TXID_PREFIX))? {
            let (txid, detail) = decode_txid_record(&entry.key, &entry.value)?;
            details.insert(txid, detail);
        }
        let mut history = Self {
            details,
            ..Self::default()
        };
        for entry in store.scan(ns, Scan::prefix(SPEND_PREFIX))? {
            let corrupt = || corrupt_record("spend", &entry.key, "not a spend record");
            let rest = &entry.key[SPEND_PREFIX.len()..];
            if rest.len() != 8 + 32 || entry.value.len() != 8 {
                return Err(corrupt());
            }
            let time = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
            let txid = Txid::from_slice(&rest[8..]).map_err(|_| corrupt())?;
            let sats = u64::from_be_bytes(entry.value[..].try_into().map_err(|_| corrupt())?);
            history.insert(entry.key, time, txid, Amount::from_sat(sats));
        }
        Ok(history)
    }

    /// Adds the `s/` record `key`, joined with its txid's `t/` record.
    fn insert(&mut self, key: Vec<u8>, time: u64, txid: Txid, amount: Amount) {
        // A spend without a `t/` record (it was never written apart from the spend, but a
        // damaged store may lack it) counts, with no inputs to be replaced through.
        let (inputs, replaced_by) = self.details.get(&txid).cloned().unwrap_or_default();
        let spend = Spend {
            key: key.clone(),
            time,
            amount,
            txid,
            inputs,
            replaced_by,
        };
        self.keys.entry(txid).or_default().insert(key.clone());
        self.spends.insert(key, spend);
    }

    /// The recorded spends of `txid`, oldest first.
    fn of(&self, txid: Txid) -> impl Iterator<Item = &Spend> {
        self.keys
            .get(&txid)
            .into_iter()
            .flatten()
            .filter_map(|key| self.spends.get(key))
    }

    /// Gives the spends of `txid` its `t/` record `detail`.
    fn set_detail(&mut self, txid: Txid, detail: TxidDetail) {
        for key in self.keys.get(&txid).into_iter().flatten() {
            if let Some(spend) = self.spends.get_mut(key) {
                (spend.inputs, spend.replaced_by) = detail.clone();
            }
        }
        self.details.insert(txid, detail);
    }

    /// Every recorded spend, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Spend> {
        self.spends.values()
    }

    /// The (oldest) recorded spend of `txid`.
    fn find(&self, txid: Txid) -> Option<&Spend> {
        self.of(txid).next()
    }

    /// Makes the change `edit` wrote to the store here as well.
    fn apply(&mut self, edit: &Edit) {
        match edit {
            Edit::PutSpend {
                key,
                time,
                txid,
                amount,
            } => self.insert(key.clone(), *time, *txid, *amount),
            Edit::DeleteSpend { key } => {
                if let Some(spend) = self.spends.remove(key) {
                    if let Some(keys) = self.keys.get_mut(&spend.txid) {
                        keys.remove(key);
                        if keys.is_empty() {
                            self.keys.remove(&spend.txid);
                        }
                    }
                }
            }
            Edit::PutDetail { txid, detail } => self.set_detail(*txid, detail.clone()),
            Edit::DeleteDetail { txid } => {
                self.set_detail(*txid, TxidDetail::default());
                self.details.remove(txid);
            }
        }
    }
}

/// One change to the history, made in the store and in the engine's copy alike.
#[derive(Debug)]
enum Edit {
    PutSpend {
        key: Vec<u8>,
        time: u64,
        txid: Txid,
        amount: Amount,
    },
    DeleteSpend {
        key: Vec<u8>,
    },
    PutDetail {
        txid: Txid,
        detail: TxidDetail,
    },
    DeleteDetail {
        txid: Txid,
    },
}

/// A write to the history: a batch that only commits if the head record is still at the
/// version the history was read at, and the same changes for the engine's copy.
struct HistoryWrite<'a> {
    ns: &'a Namespace,
    batch: WriteBatch,
    edits: Vec<Edit>,
}

impl<'a> HistoryWrite<'a> {
    fn new(ns: &'a Namespace, head: Option<Version>, now: u64) -> Result<Self, PolicyError> {
        let mut batch = WriteBatch::new();
        batch.check(ns, HEAD_KEY, head)?;
        batch.put(ns, HEAD_KEY, now.to_be_bytes())?;
        Ok(Self {
            ns,
            batch,
            edits: Vec::new(),
        })
    }

    fn put_spend(&mut self, time: u64, txid: Txid, amount: Amount) -> Result<(), PolicyError> {
        let mut key = SPEND_PREFIX.to_vec();
        key.extend_from_slice(&time.to_be_bytes());
        key.extend_from_slice(&txid.to_byte_array());
        self.batch.put(self.ns, key.clone(), amount.to_sat().to_be_bytes())?;
        self.edits.push(Edit::PutSpend {
            key,
            time,
            txid,
            amount,
        });
        Ok(())
    }

    fn delete_spend(&mut self, key: &[u8]) -> Result<(), PolicyError> {
        self.batch.delete(self.ns, key.to_vec())?;
        self.edits.push(Edit::DeleteSpend { key: key.to_vec() });
        Ok(())
    }

    fn put_detail(
        &mut self,
        txid: Txid,
        time: u64,
        replaced_by: Option<Txid>,
        inputs: &[OutPoint],
    ) -> Result<(), PolicyError> {
        self.batch
            .put(self.ns, txid_key(&txid), encode_txid_record(time, replaced_by, inputs))?;
        self.edits.push(Edit::PutDetail {
            txid,
            detail: (inputs.to_vec(), replaced_by),
        });
        Ok(())
    }

    fn delete_detail(&mut self, txid: Txid) -> Result<(), PolicyError> {
        self.batch.delete(self.ns, txid_key(&txid))?;
        self.edits.push(Edit::DeleteDetail { txid });
        Ok(())
    }
}

/// The history as of one version of the head record, which every write to it moves.
#[derive(Debug)]
struct Cached {
    head: Option<Version>,
    history: History,
}

/// A wallet's rules and spend history in a [`KvStore`] namespace.
///
/// The engine keeps a copy of the history, shared by its clones, and reads the store's again
/// only when the head record shows that another engine (another process, or another instance
/// on the same namespace) wrote to it since: an approval costs one read of the head and one
/// write, however long the history. Approvals through one engine and its clones take turns,
/// so they do not conflict with each other; engines that share the namespace otherwise still
/// meet at the head record's compare-and-swap.
#[derive(Clone)]
pub struct PolicyEngine {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    clock: Arc<dyn Clock>,
    cache: Arc<Mutex<Option<Cached>>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// The engine whose rules and history live in `ns`.
    pub fn new(store: Arc<dyn KvStore>, ns: Namespace, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            ns,
            clock,
            cache: Arc::default(),
        }
    }

    /// The stored rules ([`SpendPolicy::default`] if none were set).
    pub fn rules(&self) -> Result<SpendPolicy, PolicyError> {
        match self.store.get(&self.ns, RULES_KEY)? {
            None => Ok(SpendPolicy::default()),
            Some(v) => serde_json::from_slice(&v.value).map_err(|e| PolicyError::Corrupt {
                key: "rules".to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Replaces the rules (durably).
    pub fn set_rules(&self, rules: &SpendPolicy) -> Result<(), PolicyError> {
        let bytes = serde_json::to_vec(rules).map_err(|e| PolicyError::Corrupt {
            key: "rules".to_owned(),
            reason: e.to_string(),
        })?;
        self.store.put(&self.ns, RULES_KEY, &bytes)?;
        Ok(())
    }

    /// Value spent by approved transactions in the last 24 hours.
    pub fn spent_last_24h(&self) -> Result<Amount, PolicyError> {
        let now = self.clock.now().as_secs();
        let mut cache = self.lock();
        Ok(window_sum(&self.current(&mut cache)?.history, now, &[]))
    }

    /// Every rule `summary` breaks under the current rules and history; empty if none.
    pub fn evaluate(&self, summary: &SpendSummary) -> Result<Vec<Violation>, PolicyError> {
        let rules = self.rules()?;
        let now = self.clock.now().as_secs();
        let mut cache = self.lock();
        let history = &self.current(&mut cache)?.history;
        let mut except: Vec<Txid> = conflicts(history, now, summary).map(|s| s.txid).collect();
        except.push(summary.txid);
        Ok(check(&rules, history, now, summary, summary.spent(), &except))
    }

    /// Checks `summary` against every rule, records the decision in `hsm`'s audit chain under
    /// `key`, and on approval adds the spend to the history (once per txid: approving the same
    /// transaction again, to re-sign it, does not count it twice).
    ///
    /// A spend that consumes an input of a recorded spend still in the window replaces it (see
    /// the [module docs](self)): the velocity rule judges it without its predecessors, and it
    /// is recorded at their earliest time. The engine does not know whether a predecessor has
    /// confirmed; if it has, the replacement is invalid and can never move coins.
    ///
    /// The spend is counted when it is approved, before any signature exists: if signing then
    /// fails, or the transaction is never broadcast, it still counts for 24 hours unless it is
    /// [released](Self::release). The limit can be under-used that way, never exceeded.
    pub fn approve(&self, summary: &SpendSummary, hsm: &dyn HsmProvider, key: &KeyId) -> Result<(), PolicyError> {
        self.approve_with(summary, summary.spent(), |_| Vec::new(), hsm, key)
    }

    /// Checks an outgoing Lightning payment against every rule, records the decision in
    /// `hsm`'s audit chain under `key` (the payment hash as its subject), and on approval adds
    /// [`PaymentSummary::spent`] to the history that on-chain spends count in (once per payment
    /// hash). The rules: `max_per_tx` (per payment), `max_per_24h` (shared with on-chain
    /// spends), `max_fee` (the routing fee limit) and `node_allowlist`; the script allowlist,
    /// fee rate and change rules are for transactions.
    ///
    /// A refusal is [`PolicyError::PaymentRefused`]. A payment that fails is
    /// [released](Self::release_payment); one whose outcome is not known (the process stopped
    /// first) keeps counting for 24 hours.
    pub fn approve_payment(
        &self,
        payment: &PaymentSummary,
        hsm: &dyn HsmProvider,
        key: &KeyId,
    ) -> Result<(), PolicyError> {
        let node_rule = |rules: &SpendPolicy| match &rules.node_allowlist {
            Some(allowed) if !allowed.contains(&payment.destination) => vec![Violation::NodeNotAllowed {
                node_id: payment.destination,
            }],
            _ => Vec::new(),
        };
        match self.approve_with(&payment.as_spend(), payment.spent(), node_rule, hsm, key) {
            Err(PolicyError::Refused(refusal)) => Err(PaymentViolation {
                payment_hash: payment.payment_hash,
                violations: refusal.violations,
            }
            .into()),
            other => other,
        }
    }

    /// Removes the reservation of a payment that failed (no part of it reached the payee), as
    /// [`release`](Self::release) does for a transaction.
    pub fn release_payment(&self, payment_hash: [u8; 32]) -> Result<Option<Amount>, PolicyError> {
        self.release(Txid::from_byte_array(payment_hash))
    }

    /// Moves the reservation of a payment approved under `from` to the key `to`, keeping its
    /// amount and time, in one write: for a payment whose lasting id is only known once it is
    /// under way (a BOLT12 payment's id, chosen by the Lightning node), approved first under a
    /// key of the caller's. Returns whether it moved: `false`, with nothing changed, when
    /// nothing is reserved under `from` or something already is under `to`.
    pub fn rekey_payment(&self, from: [u8; 32], to: [u8; 32]) -> Result<bool, PolicyError> {
        let (from, to) = (Txid::from_byte_array(from), Txid::from_byte_array(to));
        let mut cache = self.lock();
        for _ in 0..MAX_RETRIES {
            let Cached { head, history } = self.current(&mut cache)?;
            let Some(target) = history.find(from) else {
                return Ok(false);
            };
            if from == to || history.find(to).is_some() {
                return Ok(false);
            }
            let mut write = HistoryWrite::new(&self.ns, *head, self.clock.now().as_secs())?;
            write.delete_spend(&target.key)?;
            write.delete_detail(from)?;
            write.put_spend(target.time, to, target.amount)?;
            write.put_detail(to, target.time, target.replaced_by, &target.inputs)?;
            if self.commit(&mut cache, write)? {
                return Ok(true);
            }
        }
        Err(PolicyError::Contended)
    }

    /// [`approve`](Self::approve) of a spend taking `amount` out of the wallet, with the
    /// violations `extra` finds under the rules added.
    fn approve_with(
        &self,
        summary: &SpendSummary,
        amount: Amount,
        extra: impl Fn(&SpendPolicy) -> Vec<Violation>,
        hsm: &dyn HsmProvider,
        key: &KeyId,
    ) -> Result<(), PolicyError> {
        let rules = self.rules()?;
        let subject = summary.txid.to_byte_array();
        let approved = self.record_approval(summary, amount, &rules, extra);
        let outcome = match &approved {
            Ok(()) => 0,
            Err(PolicyError::Refused(refusal)) => refusal.code(),
            Err(_) => return approved,
        };
        hsm.record_decision(Some(key), &subject, outcome)?;
        approved
    }

    /// The decision on `summary` (taking `amount` out of the wallet) under `rules` and the
    /// violations `extra` finds, and on approval the spend recorded in the history.
    fn record_approval(
        &self,
        summary: &SpendSummary,
        amount: Amount,
        rules: &SpendPolicy,
        extra: impl Fn(&SpendPolicy) -> Vec<Violation>,
    ) -> Result<(), PolicyError> {
        let mut cache = self.lock();
        for _ in 0..MAX_RETRIES {
            let Cached { head, history } = self.current(&mut cache)?;
            let now = self.clock.now().as_secs();
            // A record that left the window is pruned below; approving the same transaction
            // again then counts it afresh.
            let existing = history.of(summary.txid).find(|s| s.in_window(now));
            let replaced: Vec<&Spend> = conflicts(history, now, summary).collect();
            let mut excluded: Vec<Txid> = replaced.iter().map(|s| s.txid).collect();
            excluded.push(summary.txid);
            let mut violations = check(rules, history, now, summary, amount, &excluded);
            violations.extend(extra(rules));
            if !violations.is_empty() {
                return Err(PolicyViolation {
                    txid: summary.txid,
                    violations,
                }
                .into());
            }
            let mut write = HistoryWrite::new(&self.ns, *head, now)?;
            // Spends that left the window are pruned as the history is written; the history
            // is in time order, so they are the ones before the first spend still in it.
            for spend in history.iter().take_while(|s| !s.in_window(now)) {
                write.delete_spend(&spend.key)?;
                // This spend's own `t/` record is rewritten below.
                if spend.txid != summary.txid {
                    write.delete_detail(spend.txid)?;
                }
            }
            match existing {
                // Approved before and still counting: nothing changes.
                Some(spend) if spend.replaced_by.is_none() && replaced.is_empty() => {}
                // Approved before, then replaced (or now displacing a later conflict): it
                // counts again, at its own time.
                Some(spend) => write.put_detail(spend.txid, spend.time, None, &summary.inputs)?,
                None => {
                    // The replacement keeps the earliest time of what it replaces, so bumping
                    // a fee never pushes a payment's end of window later.
                    let time = replaced.iter().map(|s| s.time).fold(now, u64::min);
                    write.put_spend(time, summary.txid, amount)?;
                    write.put_detail(summary.txid, time, None, &summary.inputs)?;
                }
            }
            for spend in &replaced {
                write.put_detail(spend.txid, spend.time, Some(summary.txid), &spend.inputs)?;
            }
            if self.commit(&mut cache, write)? {
                return Ok(());
            }
        }
        Err(PolicyError::Contended)
    }

    /// Removes the reservation of `txid`, a spend that never reached the network (the node
    /// rejected it, or it was never broadcast), and returns what it counted: `None` when no
    /// spend of that txid counts (none was approved, it was replaced, or it left the window).
    ///
    /// The spends it had replaced count again, at their own times, since they may still be in
    /// mempools. Releasing a spend that did reach the network lets the wallet spend past its
    /// limit; callers release only on a definite refusal. This does not write to the audit
    /// chain (the engine holds no HSM): [`AnyaWallet::release`](crate::wallet::AnyaWallet::release)
    /// records [`RELEASE_OUTCOME`] there.
    pub fn release(&self, txid: Txid) -> Result<Option<Amount>, PolicyError> {
        let mut cache = self.lock();
        for _ in 0..MAX_RETRIES {
            let Cached { head, history } = self.current(&mut cache)?;
            let now = self.clock.now().as_secs();
            let Some(target) = history.find(txid) else {
                return Ok(None);
            };
            let counted = target.counts(now).then_some(target.amount);
            let mut write = HistoryWrite::new(&self.ns, *head, now)?;
            write.delete_spend(&target.key)?;
            write.delete_detail(txid)?;
            // What it replaced goes back to where it was before: counting if the released
            // spend counted, replaced by its replacement if it had one.
            for spend in history.iter().filter(|s| s.replaced_by == Some(txid)) {
                write.put_detail(spend.txid, spend.time, target.replaced_by, &spend.inputs)?;
            }
            if self.commit(&mut cache, write)? {
                return Ok(counted);
            }
        }
        Err(PolicyError::Contended)
    }

    /// The engine's copy of the history, for one caller at a time.
    fn lock(&self) -> MutexGuard<'_, Option<Cached>> {
        self.cache.lock().unwrap_or_else(|poisoned| {
            // A caller panicked holding it: the copy may be half changed, so it is read again.
            let mut cache = poisoned.into_inner();
            *cache = None;
            self.cache.clear_poison();
            cache
        })
    }

    /// The history as the store holds it now: the copy in `cache` while the head record has
    /// not moved since it was taken, else read again.
    fn current<'c>(&self, cache: &'c mut Option<Cached>) -> Result<&'c mut Cached, PolicyError> {
        let head = self.store.get(&self.ns, HEAD_KEY)?.map(|v| v.version);
        let fresh = match cache.take() {
            Some(copy) if copy.head == head => copy,
            _ => Cached {
                head,
                history: History::load(&*self.store, &self.ns)?,
            },
        };
        Ok(cache.insert(fresh))
    }

    /// Writes `write` and makes the same changes to the copy in `cache`, which is at the head
    /// version the write checks: `false` if the head moved meanwhile and nothing was written.
    fn commit(&self, cache: &mut Option<Cached>, write: HistoryWrite<'_>) -> Result<bool, PolicyError> {
        match self.store.write(write.batch) {
            Ok(version) => {
                if let Some(copy) = cache {
                    for edit in &write.edits {
                        copy.history.apply(edit);
                    }
                    copy.head = Some(version);
                }
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => {
                // Whether it was written is not known.
                *cache = None;
                Err(e.into())
            }
        }
    }
}

fn corrupt_record(kind: &str, key: &[u8], reason: &str) -> PolicyError {
    PolicyError::Corrupt {
        key: format!("{kind} {}", bitcoin::hex::DisplayHex::to_lower_hex_string(key)),
        reason: reason.to_owned(),
    }
}

/// A `t/` record: the time, then (format 1) whether and by what the spend was replaced, and the
/// outpoints it consumes.
fn encode_txid_record(time: u64, replaced_by: Option<Txid>, inputs: &[OutPoint]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TXID_RECORD_HEAD + inputs.len() * OUTPOINT_LEN);
    v.extend_from_slice(&time.to_be_bytes());
    v.push(TXID_FORMAT_INPUTS);
    match replaced_by {
        Some(txid) => {
            v.push(1);
            v.extend_from_slice(&txid.to_byte_array());
        }
        None => {
            v.push(0);
            v.extend_from_slice(&[0; 32]);
        }
    }
    for outpoint in inputs {
        v.extend_from_slice(&outpoint.txid.to_byte_array());
        v.extend_from_slice(&outpoint.vout.to_be_bytes());
    }
    v
}

type TxidDetail = (Vec<OutPoint>, Option<Txid>);

fn decode_txid_record(key: &[u8], value: &[u8]) -> Result<(Txid, TxidDetail), PolicyError> {
    let corrupt = |reason| corrupt_record("txid", key, reason);
    let txid = key
        .strip_prefix(TXID_PREFIX)
        .and_then(|k| Txid::from_slice(k).ok())
        .ok_or_else(|| corrupt("key is not a txid"))?;
    // Records written before inputs were kept hold only the time.
    if value.len() == 8 {
        return Ok((txid, (Vec::new(), None)));
    }
    let (head, tail) = value
        .split_at_checked(TXID_RECORD_HEAD)
        .ok_or_else(|| corrupt("too short"))?;
    if head[8] != TXID_FORMAT_INPUTS {
        return Err(corrupt("unknown record format"));
    }
    let replaced_by = match head[9] {
        0 => None,
        1 => Some(Txid::from_slice(&head[10..]).map_err(|_| corrupt("bad replacement txid"))?),
        _ => return Err(corrupt("bad replaced flag")),
    };
    if tail.len() % OUTPOINT_LEN != 0 {
        return Err(corrupt("inputs are not whole outpoints"));
    }
    let inputs = tail
        .chunks_exact(OUTPOINT_LEN)
        .map(|c| {
            let (id, vout) = c.split_at(32);
            Ok(OutPoint {
                txid: Txid::from_slice(id).map_err(|_| corrupt("bad input txid"))?,
                vout: u32::from_be_bytes(vout.try_into().map_err(|_| corrupt("bad input vout"))?),
            })
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    Ok((txid, (inputs, replaced_by)))
}

fn txid_key(txid: &Txid) -> Vec<u8> {
    let mut k = TXID_PREFIX.to_vec();
    k.extend_from_slice(&txid.to_byte_array());
    k
}

/// The counting spends, other than `summary` itself, that consume an input of `summary`: it
/// replaces them.
fn conflicts<'a>(history: &'a History, now: u64, summary: &'a SpendSummary) -> impl Iterator<Item = &'a Spend> {
    // A payment consumes no outpoints.
    let candidates = if summary.inputs.is_empty() {
        None
    } else {
        Some(history.iter())
    };
    candidates
        .into_iter()
        .flatten()
        .filter(move |s| s.txid != summary.txid && s.counts(now) && s.inputs.iter().any(|o| summary.inputs.contains(o)))
}

/// What the spends counting at `now` add up to, leaving out `except`.
fn window_sum(history: &History, now: u64, except: &[Txid]) -> Amount {
    history
        .iter()
        .filter(|s| s.counts(now) && !except.contains(&s.txid))
        .map(|s| s.amount)
        .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap_or(Amount::MAX_MONEY))
}

/// Every rule `summary`, taking `amount` out of the wallet, breaks; `except` are the spends it
/// would take the place of (itself and what it replaces), which the velocity rule leaves out.
fn check(
    rules: &SpendPolicy,
    history: &History,
    now: u64,
    summary: &SpendSummary,
    amount: Amount,
    except: &[Txid],
) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(limit) = rules.max_per_tx {
        if amount > limit {
            out.push(Violation::AmountOverLimit { amount, limit });
        }
    }
    if let Some(limit) = rules.max_per_24h {
        let spent_24h = window_sum(history, now, except);
        if spent_24h.checked_add(amount).is_none_or(|total| total > limit) {
            out.push(Violation::VelocityOverLimit {
                spent_24h,
                amount,
                limit,
            });
        }
    }
    for (index, output) in summary.outputs.iter().enumerate() {
        if output.role == OutputRole::Wallet {
            continue;
        }
        if output.role == OutputRole::ForgedChange && rules.change_to_wallet {
            out.push(Violation::ChangeNotToWallet { index });
        }
        if let Some(allowed) = &rules.allowlist {
            if !allowed.contains(&output.script_pubkey) {
                out.push(Violation::DestinationNotAllowed {
                    index,
                    script_pubkey: output.script_pubkey.clone(),
                });
            }
        }
    }
    if let Some(cap) = rules.max_fee_rate {
        if summary.fee_rate > cap {
            out.push(Violation::FeeRateOverCap {
                fee_rate: summary.fee_rate,
                cap,
            });
        }
    }
    if let Some(cap) = rules.max_fee {
        if summary.fee > cap {
            out.push(Violation::FeeOverCap { fee: summary.fee, cap });
        }
    }
    out
}
