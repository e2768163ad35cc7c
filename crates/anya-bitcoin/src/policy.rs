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

use std::fmt;
use std::sync::Arc;

use anya_core_types::Clock;
use anya_hsm::{HsmError, HsmProvider, KeyId};
use anya_storage::{KvStore, Namespace, Scan, StoreError, WriteBatch};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, FeeRate, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

/// The length of the velocity window, in seconds.
pub const VELOCITY_WINDOW_SECS: u64 = 24 * 60 * 60;

const RULES_KEY: &[u8] = b"rules";
const HEAD_KEY: &[u8] = b"head";
const SPEND_PREFIX: &[u8] = b"s/";
const TXID_PREFIX: &[u8] = b"t/";
const MAX_RETRIES: usize = 64;

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
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyViolation {}

/// Why the policy could not approve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The spend broke rules.
    #[error(transparent)]
    Refused(#[from] PolicyViolation),
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

/// The approved spends of the current window.
#[derive(Debug, Clone, Default)]
struct History {
    /// `(key, time, amount, txid)` of every recorded spend.
    spends: Vec<(Vec<u8>, u64, Amount, Txid)>,
}

/// A wallet's rules and spend history in a [`KvStore`] namespace.
#[derive(Clone)]
pub struct PolicyEngine {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    clock: Arc<dyn Clock>,
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
        Self { store, ns, clock }
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
        Ok(window_sum(&self.history()?, now, None))
    }

    /// Every rule `summary` breaks under the current rules and history; empty if none.
    pub fn evaluate(&self, summary: &SpendSummary) -> Result<Vec<Violation>, PolicyError> {
        let now = self.clock.now().as_secs();
        Ok(check(&self.rules()?, &self.history()?, now, summary))
    }

    /// Checks `summary` against every rule, records the decision in `hsm`'s audit chain under
    /// `key`, and on approval adds the spend to the history (once per txid: approving the same
    /// transaction again, to re-sign it, does not count it twice).
    ///
    /// The spend is counted when it is approved, before any signature exists: if signing then
    /// fails, or the transaction is never broadcast, it still counts for 24 hours. The limit can
    /// be under-used that way, never exceeded.
    pub fn approve(&self, summary: &SpendSummary, hsm: &dyn HsmProvider, key: &KeyId) -> Result<(), PolicyError> {
        let rules = self.rules()?;
        let subject = summary.txid.to_byte_array();
        for _ in 0..MAX_RETRIES {
            let head = self.store.get(&self.ns, HEAD_KEY)?.map(|v| v.version);
            let history = self.history()?;
            let now = self.clock.now().as_secs();
            let violations = check(&rules, &history, now, summary);
            if !violations.is_empty() {
                let refusal = PolicyViolation {
                    txid: summary.txid,
                    violations,
                };
                hsm.record_decision(Some(key), &subject, refusal.code())?;
                return Err(refusal.into());
            }
            let mut batch = WriteBatch::new();
            batch.check(&self.ns, HEAD_KEY, head)?;
            batch.put(&self.ns, HEAD_KEY, now.to_be_bytes())?;
            // Spends that left the window are pruned as the history is written.
            for (k, time, _, txid) in &history.spends {
                if time.saturating_add(VELOCITY_WINDOW_SECS) <= now {
                    batch.delete(&self.ns, k.clone())?;
                    batch.delete(&self.ns, txid_key(txid))?;
                }
            }
            let already = history.spends.iter().any(|(_, _, _, t)| *t == summary.txid);
            if !already {
                let mut k = SPEND_PREFIX.to_vec();
                k.extend_from_slice(&now.to_be_bytes());
                k.extend_from_slice(&subject);
                batch.put(&self.ns, k, summary.spent().to_sat().to_be_bytes())?;
                batch.put(&self.ns, txid_key(&summary.txid), now.to_be_bytes())?;
            }
            match self.store.write(batch) {
                Ok(_) => {
                    hsm.record_decision(Some(key), &subject, 0)?;
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PolicyError::Contended)
    }

    fn history(&self) -> Result<History, PolicyError> {
        let mut history = History::default();
        for entry in self.store.scan(&self.ns, Scan::prefix(SPEND_PREFIX))? {
            let corrupt = || PolicyError::Corrupt {
                key: format!(
                    "spend {}",
                    bitcoin::hex::DisplayHex::to_lower_hex_string(&entry.key[..])
                ),
                reason: "not a spend record".to_owned(),
            };
            let rest = &entry.key[SPEND_PREFIX.len()..];
            if rest.len() != 8 + 32 || entry.value.len() != 8 {
                return Err(corrupt());
            }
            let time = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
            let txid = Txid::from_slice(&rest[8..]).map_err(|_| corrupt())?;
            let sats = u64::from_be_bytes(entry.value[..].try_into().map_err(|_| corrupt())?);
            history.spends.push((entry.key, time, Amount::from_sat(sats), txid));
        }
        Ok(history)
    }
}

fn txid_key(txid: &Txid) -> Vec<u8> {
    let mut k = TXID_PREFIX.to_vec();
    k.extend_from_slice(&txid.to_byte_array());
    k
}

fn window_sum(history: &History, now: u64, except: Option<Txid>) -> Amount {
    history
        .spends
        .iter()
        .filter(|(_, time, _, txid)| time.saturating_add(VELOCITY_WINDOW_SECS) > now && Some(*txid) != except)
        .map(|(_, _, amount, _)| *amount)
        .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap_or(Amount::MAX_MONEY))
}

fn check(rules: &SpendPolicy, history: &History, now: u64, summary: &SpendSummary) -> Vec<Violation> {
    let mut out = Vec::new();
    let amount = summary.spent();
    if let Some(limit) = rules.max_per_tx {
        if amount > limit {
            out.push(Violation::AmountOverLimit { amount, limit });
        }
    }
    if let Some(limit) = rules.max_per_24h {
        let spent_24h = window_sum(history, now, Some(summary.txid));
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
