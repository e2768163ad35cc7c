//! The oracle: announcements and attestations through an [`HsmProvider`].
//!
//! # How an event can never be signed for two outcomes
//!
//! 1. **Announce.** Every nonce is committed in the HSM ([`HsmProvider::commit_nonce`]) under a
//!    fresh random label; the announcement is signed with the oracle key and stored with a
//!    compare-and-swap "only if absent", so one event id has one announcement.
//! 2. **Attest.** The outcome is written with a compare-and-swap "only if not yet attested"
//!    *before* any signature is asked for. A second caller with another outcome finds the first
//!    and gets [`OracleError::AlreadyAttested`] without a signature being made.
//! 3. **Sign.** Each outcome is signed with its committed nonce
//!    ([`HsmProvider::sign_with_nonce`]). The HSM binds each nonce to one message, durably and
//!    before the signature leaves, and (with a rollback anchor) refuses a store restored from
//!    an older copy. So even a store whose outcome record was rewritten or put back cannot get a
//!    second outcome signed: that would be a second message for a nonce.
//! 4. **Repeat.** Asking again with the same outcome returns the same attestation (BIP340 with
//!    the same nonce and message is the same signature), so a reply lost to a crash is simply
//!    asked for again; [`Oracle::open`] also finishes any attestation whose outcome was fixed
//!    but whose signatures were not yet stored.
//!
//! There is no way to delete or re-announce an event.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anya_core_types::{Clock, UnixTime};
use anya_hsm::{AuxRand, HsmError, HsmProvider, KeyId, KeyPolicy, KeyRef, KeySpec, Label, PublicKey, Usage};
use anya_storage::{KvStore, Namespace, Scan, WriteBatch};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::hex::{DisplayHex, FromHex};
use ddk_messages::oracle_msgs::{
    tagged_announcement_msg, tagged_attestation_msg, DigitDecompositionEventDescriptor, EnumEventDescriptor,
    EventDescriptor, OracleAnnouncement, OracleAttestation, OracleEvent,
};
use lightning::util::ser::{Readable, Writeable};
use rand::RngCore;
use secp256k1::{Secp256k1, VerifyOnly, XOnlyPublicKey};
use serde::{Deserialize, Serialize};

use super::digits::Digits;
use super::price::{self, PriceError, PriceRules, PriceSource};
use super::OracleError;

/// The longest event id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 256;
/// The most outcomes an enum event may list.
pub const MAX_ENUM_OUTCOMES: usize = 1024;
/// The longest outcome string or unit, in bytes.
pub const MAX_OUTCOME_LEN: usize = 256;

/// Audit codes of the price decisions this oracle records with
/// [`HsmProvider::record_decision`] (0 is an admin's confirmation).
pub mod audit_codes {
    /// An admin confirmed a price after the circuit breaker halted attestation.
    pub const PRICE_CONFIRMED: u16 = 0;
    /// Too few fresh quotes.
    pub const NOT_ENOUGH_SOURCES: u16 = 0x0D01;
    /// The quotes disagreed beyond the deviation limit.
    pub const SPREAD: u16 = 0x0D02;
    /// The price moved beyond the circuit breaker's limit; attestation halted.
    pub const CIRCUIT_BREAKER: u16 = 0x0D03;
    /// Attestation asked for while halted.
    pub const HALTED: u16 = 0x0D04;
}

/// How an [`Oracle`] is set up.
#[derive(Debug, Clone)]
pub struct OracleOptions {
    /// The HSM key that signs announcements and attestations (a secp256k1 key allowed
    /// `SignSchnorr` and `OracleNonce`); made, not exportable, on first open.
    pub key: KeyId,
    /// The store namespace of the oracle's records.
    pub namespace: String,
    /// Attest before an event's maturity (off: [`OracleError::NotMature`]).
    pub allow_early: bool,
}

impl Default for OracleOptions {
    fn default() -> Self {
        Self {
            // A valid label, checked by the test below.
            key: KeyId::new("oracle").unwrap_or_else(|_| unreachable!("\"oracle\" is a valid label")),
            namespace: "dlc.oracle".to_owned(),
            allow_early: false,
        }
    }
}

/// Whether an event is an enumeration or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Enumerated outcomes.
    Enum,
    /// A number by digit decomposition.
    Numeric,
}

/// One event as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    /// The event id.
    pub event_id: String,
    /// Its maturity (unix seconds).
    pub maturity: u32,
    /// Enum or numeric.
    pub kind: EventKind,
    /// The price asset it is attested from, for price events.
    pub asset: Option<String>,
    /// The attested outcomes, once fixed.
    pub outcomes: Option<Vec<String>>,
}

/// Price sources and rules for one asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceFeed {
    /// The sources asked.
    pub sources: Vec<PriceSource>,
    /// The rules their quotes must pass.
    #[serde(default)]
    pub rules: PriceRules,
}

#[derive(Serialize, Deserialize)]
struct EventRecord {
    /// The announcement, serialized as the spec says (hex).
    announcement: String,
    /// The HSM labels of its nonces, in order.
    nonces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asset: Option<String>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct OutcomeRecord {
    outcomes: Vec<String>,
    at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct PriceState {
    /// The last attested value, in the asset's units.
    last: Option<f64>,
    /// The maturity of the event that attested it.
    last_maturity: u32,
    /// Set by the circuit breaker: the value the sources gave.
    halted_at: Option<f64>,
}

struct Event {
    announcement: OracleAnnouncement,
    nonces: Vec<Label>,
    asset: Option<String>,
}

/// A dlcspecs oracle whose key and nonces live in an HSM. Cheap to share (`Arc`); every
/// method is safe to call from many threads and processes on one store.
pub struct Oracle {
    hsm: Arc<dyn HsmProvider>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    ns: Namespace,
    options: OracleOptions,
    public_key: XOnlyPublicKey,
    feeds: RwLock<HashMap<String, PriceFeed>>,
    secp: Secp256k1<VerifyOnly>,
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oracle")
            .field("key", &self.options.key)
            .field("public_key", &self.public_key)
            .field("namespace", &self.ns)
            .finish_non_exhaustive()
    }
}

const EVENT: &str = "e/";
const OUTCOME: &str = "o/";
const ATTESTATION: &str = "a/";
const PRICE: &str = "p/";
/// Events whose outcome is fixed and whose attestation is not stored yet (written with the
/// outcome, removed with the attestation), so that a restart looks only at those.
const PENDING: &str = "q/";

fn key(prefix: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> OracleError {
    OracleError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a whole spec-serialized message; trailing bytes are an error.
pub(crate) fn decode_exact<T: Readable>(bytes: &[u8]) -> Result<T, String> {
    let mut cursor = lightning::io::Cursor::new(bytes);
    let value = T::read(&mut cursor).map_err(|e| format!("{e:?}"))?;
    if cursor.position() != bytes.len() as u64 {
        return Err(format!("{} trailing bytes", bytes.len() as u64 - cursor.position()));
    }
    Ok(value)
}

/// Checks an event id: 1 to [`MAX_EVENT_ID_LEN`] bytes, printable, no `/` (it is a URL path
/// segment in both route families).
pub fn check_event_id(id: &str) -> Result<(), OracleError> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_EVENT_ID_LEN {
        "longer than 256 bytes"
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
        "has whitespace, a control character or '/'"
    } else {
        return Ok(());
    };
    Err(OracleError::InvalidEventId {
        reason: reason.to_owned(),
    })
}

fn invalid(reason: impl Into<String>) -> OracleError {
    OracleError::InvalidEvent { reason: reason.into() }
}

fn check_text(what: &str, s: &str) -> Result<(), OracleError> {
    if s.len() > MAX_OUTCOME_LEN {
        return Err(invalid(format!("{what} is longer than {MAX_OUTCOME_LEN} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!("{what} has a control character")));
    }
    Ok(())
}

impl Oracle {
    /// Opens the oracle on `hsm` and `store`: makes its key on first use and finishes any
    /// attestation whose outcome was fixed but whose signatures were not stored (a crash).
    pub fn open(
        hsm: Arc<dyn HsmProvider>,
        store: Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        options: OracleOptions,
    ) -> Result<Self, OracleError> {
        let ns = Namespace::new(options.namespace.clone())?;
        match hsm.key_info(&options.key) {
            Ok(_) => {}
            Err(HsmError::KeyNotFound { .. }) => {
                let policy = KeyPolicy::only(&[Usage::SignSchnorr, Usage::OracleNonce]);
                match hsm.generate_key(&options.key, KeySpec::Secp256k1, policy) {
                    Ok(_) | Err(HsmError::KeyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        let public_key = match hsm.public_key(KeyRef::Key(&options.key))? {
            PublicKey::Secp256k1(pk) => pk.x_only_public_key().0,
            _ => {
                return Err(HsmError::WrongKeyType {
                    id: options.key.clone(),
                    spec: hsm.key_info(&options.key)?.spec,
                    usage: Usage::OracleNonce,
                }
                .into())
            }
        };
        let oracle = Self {
            hsm,
            store,
            clock,
            ns,
            options,
            public_key,
            feeds: RwLock::new(HashMap::new()),
            secp: Secp256k1::verification_only(),
        };
        oracle.finish_pending()?;
        Ok(oracle)
    }

    /// The oracle's BIP340 public key.
    pub fn public_key(&self) -> XOnlyPublicKey {
        self.public_key
    }

    /// The HSM key id.
    pub fn key_id(&self) -> &KeyId {
        &self.options.key
    }

    /// Sets (or replaces) the price sources of `asset`, used by [`attest_price`](Self::attest_price).
    pub fn set_price_feed(&self, asset: &str, feed: PriceFeed) {
        self.feeds
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(asset.to_owned(), feed);
    }

    /// Announces an enum event.
    pub fn create_enum_event(
        &self,
        event_id: &str,
        maturity: u32,
        outcomes: Vec<String>,
    ) -> Result<OracleAnnouncement, OracleError> {
        if outcomes.is_empty() {
            return Err(invalid("an enum event needs at least one outcome"));
        }
        if outcomes.len() > MAX_ENUM_OUTCOMES {
            return Err(invalid(format!("more than {MAX_ENUM_OUTCOMES} outcomes")));
        }
        for (i, o) in outcomes.iter().enumerate() {
            check_text("an outcome", o)?;
            if outcomes[..i].contains(o) {
                return Err(invalid(format!("outcome {o:?} is listed twice")));
            }
        }
        self.announce(
            event_id,
            maturity,
            EventDescriptor::EnumEvent(EnumEventDescriptor { outcomes }),
            None,
        )
    }

    /// Announces a numeric event: `nb_digits` digits in `base`, with a sign nonce first when
    /// `signed`. The attested integer `v` means `v × 10^precision` `unit`.
    pub fn create_numeric_event(
        &self,
        event_id: &str,
        maturity: u32,
        descriptor: DigitDecompositionEventDescriptor,
    ) -> Result<OracleAnnouncement, OracleError> {
        self.create_numeric(event_id, maturity, descriptor, None)
    }

    /// Announces a numeric event attested from `asset`'s price sources by
    /// [`attest_price`](Self::attest_price).
    pub fn create_price_event(
        &self,
        event_id: &str,
        maturity: u32,
        asset: &str,
        descriptor: DigitDecompositionEventDescriptor,
    ) -> Result<OracleAnnouncement, OracleError> {
        check_text("the asset", asset)?;
        self.create_numeric(event_id, maturity, descriptor, Some(asset.to_owned()))
    }

    fn create_numeric(
        &self,
        event_id: &str,
        maturity: u32,
        descriptor: DigitDecompositionEventDescriptor,
        asset: Option<String>,
    ) -> Result<OracleAnnouncement, OracleError> {
        Digits::new(descriptor.base, descriptor.nb_digits, descriptor.is_signed)?;
        check_text("the unit", &descriptor.unit)?;
        self.announce(
            event_id,
            maturity,
            EventDescriptor::DigitDecompositionEvent(descriptor),
            asset,
        )
    }

    fn announce(
        &self,
        event_id: &str,
        maturity: u32,
        descriptor: EventDescriptor,
        asset: Option<String>,
    ) -> Result<OracleAnnouncement, OracleError> {
        check_event_id(event_id)?;
        let event_key = key(EVENT, event_id);
        if self.store.get(&self.ns, &event_key)?.is_some() {
            return Err(OracleError::EventExists {
                event_id: event_id.to_owned(),
            });
        }
        let count = match &descriptor {
            EventDescriptor::EnumEvent(_) => 1,
            EventDescriptor::DigitDecompositionEvent(d) => usize::from(d.nb_digits) + usize::from(d.is_signed),
        };
        // Fresh labels: a crash after committing leaves unused nonces, never reused ones.
        let mut tag = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut tag);
        let tag = tag.to_lower_hex_string();
        let mut labels = Vec::with_capacity(count);
        let mut nonces = Vec::with_capacity(count);
        for i in 0..count {
            let label = Label::new(format!("n{tag}.{i}")).map_err(|e| invalid(e.to_string()))?;
            nonces.push(self.hsm.commit_nonce(&self.options.key, &label)?);
            labels.push(label);
        }
        let oracle_event = OracleEvent {
            oracle_nonces: nonces,
            event_maturity_epoch: maturity,
            event_descriptor: descriptor,
            event_id: event_id.to_owned(),
        };
        oracle_event.validate().map_err(|e| invalid(format!("{e:?}")))?;
        let msg = tagged_announcement_msg(&oracle_event);
        let announcement_signature =
            self.hsm
                .sign_schnorr(KeyRef::Key(&self.options.key), msg.as_ref(), AuxRand::Fresh)?;
        let announcement = OracleAnnouncement {
            announcement_signature,
            oracle_public_key: self.public_key,
            oracle_event,
        };
        announcement.validate(&self.secp).map_err(|e| OracleError::SelfCheck {
            reason: format!("announcement: {e:?}"),
        })?;
        let record = EventRecord {
            announcement: announcement.encode().to_lower_hex_string(),
            nonces: labels.iter().map(|l| l.as_str().to_owned()).collect(),
            asset,
        };
        let value = serde_json::to_vec(&record).map_err(|e| corrupt(&event_key, e))?;
        match self.store.compare_and_swap(&self.ns, &event_key, None, Some(&value)) {
            Ok(_) => Ok(announcement),
            Err(e) if e.is_conflict() => Err(OracleError::EventExists {
                event_id: event_id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn load(&self, event_id: &str) -> Result<Event, OracleError> {
        check_event_id(event_id)?;
        let k = key(EVENT, event_id);
        let Some(v) = self.store.get(&self.ns, &k)? else {
            return Err(OracleError::EventNotFound {
                event_id: event_id.to_owned(),
            });
        };
        self.parse_event(&k, &v.value, event_id)
    }

    /// The event record `value` stored at `k`, checked to be `event_id`'s and this oracle's.
    fn parse_event(&self, k: &[u8], value: &[u8], event_id: &str) -> Result<Event, OracleError> {
        let record: EventRecord = serde_json::from_slice(value).map_err(|e| corrupt(k, e))?;
        let bytes = Vec::<u8>::from_hex(&record.announcement).map_err(|e| corrupt(k, e))?;
        let announcement: OracleAnnouncement = decode_exact(&bytes).map_err(|e| corrupt(k, e))?;
        let nonces = record
            .nonces
            .iter()
            .map(|l| Label::new(l.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(k, e))?;
        if announcement.oracle_event.event_id != event_id
            || nonces.len() != announcement.oracle_event.oracle_nonces.len()
            || announcement.oracle_public_key != self.public_key
        {
            return Err(corrupt(k, "the record does not match its event"));
        }
        Ok(Event {
            announcement,
            nonces,
            asset: record.asset,
        })
    }

    /// The announcement of an event.
    pub fn announcement(&self, event_id: &str) -> Result<OracleAnnouncement, OracleError> {
        Ok(self.load(event_id)?.announcement)
    }

    /// The attestation of an event, once it is attested and signed.
    pub fn attestation(&self, event_id: &str) -> Result<Option<OracleAttestation>, OracleError> {
        check_event_id(event_id)?;
        let k = key(ATTESTATION, event_id);
        let Some(v) = self.store.get(&self.ns, &k)? else {
            // Not signed yet; an unknown event is an error, not "not yet".
            self.load(event_id)?;
            return Ok(None);
        };
        decode_exact(&v.value).map(Some).map_err(|e| corrupt(&k, e))
    }

    /// Up to `limit` events with ids after `after`, in id order.
    pub fn events(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventSummary>, OracleError> {
        let after_key = after.map(|a| key(EVENT, a));
        let mut scan = Scan::prefix(EVENT.as_bytes()).limit(limit);
        if let Some(a) = &after_key {
            scan = scan.after(a);
        }
        let mut out = Vec::new();
        for entry in self.store.scan(&self.ns, scan)? {
            let id = String::from_utf8(entry.key[EVENT.len()..].to_vec()).map_err(|e| corrupt(&entry.key, e))?;
            let event = self.parse_event(&entry.key, &entry.value, &id)?;
            let outcomes = self.fixed_outcome(&id)?.map(|o| o.outcomes);
            let e = &event.announcement.oracle_event;
            out.push(EventSummary {
                maturity: e.event_maturity_epoch,
                kind: match e.event_descriptor {
                    EventDescriptor::EnumEvent(_) => EventKind::Enum,
                    EventDescriptor::DigitDecompositionEvent(_) => EventKind::Numeric,
                },
                asset: event.asset,
                outcomes,
                event_id: id,
            });
        }
        Ok(out)
    }

    fn fixed_outcome(&self, event_id: &str) -> Result<Option<OutcomeRecord>, OracleError> {
        let k = key(OUTCOME, event_id);
        match self.store.get(&self.ns, &k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v.value).map(Some).map_err(|e| corrupt(&k, e)),
        }
    }

    /// Attests an enum event for `outcome`.
    pub fn attest_enum(&self, event_id: &str, outcome: &str) -> Result<OracleAttestation, OracleError> {
        let event = self.load(event_id)?;
        let EventDescriptor::EnumEvent(d) = &event.announcement.oracle_event.event_descriptor else {
            return Err(OracleError::WrongEventKind {
                event_id: event_id.to_owned(),
                kind: "numeric",
            });
        };
        if !d.outcomes.iter().any(|o| o == outcome) {
            return Err(OracleError::UnknownOutcome {
                event_id: event_id.to_owned(),
                outcome: outcome.to_owned(),
            });
        }
        self.attest(event, vec![outcome.to_owned()])
    }

    /// Attests a numeric event for `value` (clamped to what its digits hold, as the spec says).
    pub fn attest_numeric(&self, event_id: &str, value: i64) -> Result<OracleAttestation, OracleError> {
        let event = self.load(event_id)?;
        let digits = numeric_layout(&event)?;
        let outcomes = digits.decompose(value);
        self.attest(event, outcomes)
    }

    fn attest(&self, event: Event, outcomes: Vec<String>) -> Result<OracleAttestation, OracleError> {
        let e = &event.announcement.oracle_event;
        let now = self.clock.now().as_secs();
        if !self.options.allow_early && now < u64::from(e.event_maturity_epoch) {
            return Err(OracleError::NotMature {
                event_id: e.event_id.clone(),
                maturity: e.event_maturity_epoch,
                now,
            });
        }
        self.fix_outcome(&e.event_id, &outcomes, now)?;
        self.sign(&event, outcomes)
    }

    /// Records the outcome "only if not yet attested"; the same outcome again is fine.
    fn fix_outcome(&self, event_id: &str, outcomes: &[String], now: u64) -> Result<(), OracleError> {
        let k = key(OUTCOME, event_id);
        let record = OutcomeRecord {
            outcomes: outcomes.to_vec(),
            at: now,
        };
        let value = serde_json::to_vec(&record).map_err(|e| corrupt(&k, e))?;
        let mut batch = WriteBatch::new();
        batch.check(&self.ns, k.clone(), None)?;
        batch.put(&self.ns, k.clone(), value)?;
        batch.put(&self.ns, key(PENDING, event_id), Vec::new())?;
        match self.store.write(batch) {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => match self.fixed_outcome(event_id)? {
                Some(fixed) if fixed.outcomes == outcomes => Ok(()),
                Some(fixed) => Err(OracleError::AlreadyAttested {
                    event_id: event_id.to_owned(),
                    attested: fixed.outcomes,
                    requested: outcomes.to_vec(),
                }),
                None => Err(corrupt(&k, "the outcome record vanished after a conflict")),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn sign(&self, event: &Event, outcomes: Vec<String>) -> Result<OracleAttestation, OracleError> {
        let e = &event.announcement.oracle_event;
        let mut signatures = Vec::with_capacity(outcomes.len());
        for (label, outcome) in event.nonces.iter().zip(&outcomes) {
            let msg = tagged_attestation_msg(outcome);
            signatures.push(self.hsm.sign_with_nonce(&self.options.key, label, msg.as_ref())?);
        }
        let attestation = OracleAttestation {
            event_id: e.event_id.clone(),
            oracle_public_key: self.public_key,
            signatures,
            outcomes,
        };
        attestation
            .validate(&self.secp, &event.announcement)
            .map_err(|err| OracleError::SelfCheck {
                reason: format!("attestation: {err:?}"),
            })?;
        let k = key(ATTESTATION, &e.event_id);
        let bytes = attestation.encode();
        let mut batch = WriteBatch::new();
        batch.check(&self.ns, k.clone(), None)?;
        batch.put(&self.ns, k.clone(), bytes.clone())?;
        batch.delete(&self.ns, key(PENDING, &e.event_id))?;
        match self.store.write(batch) {
            Ok(_) => {}
            Err(err) if err.is_conflict() => {
                // Another caller stored it first; the signatures are the same ones.
                let stored = self.store.get(&self.ns, &k)?.map(|v| v.value);
                if stored.as_deref() != Some(&bytes[..]) {
                    return Err(corrupt(&k, "a different attestation is stored"));
                }
            }
            Err(err) => return Err(err.into()),
        }
        Ok(attestation)
    }

    /// Signs every event whose outcome was fixed but whose attestation was not stored.
    /// [`open`](Self::open) calls it; returns how many it finished.
    pub fn finish_pending(&self) -> Result<usize, OracleError> {
        let mut finished = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut scan = Scan::prefix(PENDING.as_bytes()).limit(256);
            if let Some(a) = &after {
                scan = scan.after(a);
            }
            let page = self.store.scan(&self.ns, scan)?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in &page {
                let id = String::from_utf8(entry.key[PENDING.len()..].to_vec()).map_err(|e| corrupt(&entry.key, e))?;
                let Some(record) = self.fixed_outcome(&id)? else {
                    return Err(corrupt(&entry.key, "a pending attestation without its outcome"));
                };
                let event = self.load(&id)?;
                self.sign(&event, record.outcomes)?;
                finished += 1;
            }
        }
        if finished > 0 {
            tracing::info!(finished, "finished attestations interrupted by a crash");
        }
        Ok(finished)
    }

    /// Attests a price event from its asset's sources: at least N of M fresh quotes, their
    /// median, within the spread limit and the circuit breaker. A refusal is a typed error and
    /// a record in the HSM audit chain; a breaker trip halts the asset until
    /// [`confirm_price`](Self::confirm_price).
    pub fn attest_price(&self, event_id: &str) -> Result<OracleAttestation, OracleError> {
        let event = self.load(event_id)?;
        let Some(asset) = event.asset.clone() else {
            return Err(invalid(format!("event {event_id:?} is not a price event")));
        };
        let digits = numeric_layout(&event)?;
        let EventDescriptor::DigitDecompositionEvent(d) = &event.announcement.oracle_event.event_descriptor else {
            unreachable!("numeric_layout checked the kind");
        };
        let precision = d.precision;
        // Already fixed (a retry, or a crash before the signatures): sign what was fixed.
        if let Some(fixed) = self.fixed_outcome(event_id)? {
            return self.sign(&event, fixed.outcomes);
        }
        let now = self.clock.now();
        let maturity = event.announcement.oracle_event.event_maturity_epoch;
        if !self.options.allow_early && now.as_secs() < u64::from(maturity) {
            return Err(OracleError::NotMature {
                event_id: event_id.to_owned(),
                maturity,
                now: now.as_secs(),
            });
        }
        let feed = self
            .feeds
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&asset)
            .cloned()
            .ok_or_else(|| OracleError::NoSources { asset: asset.clone() })?;
        let (state_key, state, version) = self.price_state(&asset)?;
        if let Some(proposed) = state.halted_at {
            self.record_price(&asset, event_id, audit_codes::HALTED, proposed)?;
            return Err(OracleError::Halted {
                asset,
                last: state.last.unwrap_or(f64::NAN),
                proposed,
            });
        }
        let decision = match price::consensus_price(&feed.sources, &feed.rules, now, state.last) {
            Ok(d) => d,
            Err(source) => {
                let (code, value) = match &source {
                    PriceError::CircuitBreaker { median, .. } => (audit_codes::CIRCUIT_BREAKER, *median),
                    PriceError::Spread { median, .. } => (audit_codes::SPREAD, *median),
                    _ => (audit_codes::NOT_ENOUGH_SOURCES, f64::NAN),
                };
                if let PriceError::CircuitBreaker { median, .. } = &source {
                    let halted = PriceState {
                        halted_at: Some(*median),
                        ..state
                    };
                    self.put_price_state(&state_key, version, &halted)?;
                }
                self.record_price(&asset, event_id, code, value)?;
                return Err(OracleError::Price { asset, source });
            }
        };
        let value = scale(decision.median, precision);
        let attestation = self.attest(event, digits.decompose(value))?;
        // The reference for the breaker follows the latest maturity attested.
        let (state_key, state, version) = self.price_state(&asset)?;
        if state.last.is_none() || maturity >= state.last_maturity {
            let next = PriceState {
                last: Some(decision.median),
                last_maturity: maturity,
                halted_at: state.halted_at,
            };
            // A concurrent update (another process attesting a later event) wins; that is fine.
            match self.put_price_state(&state_key, version, &next) {
                Err(OracleError::Store(e)) if e.is_conflict() => {}
                other => other?,
            }
        }
        Ok(attestation)
    }

    /// An admin's confirmation after the circuit breaker halted `asset`: `value` becomes the
    /// reference the next move is measured from, and attestation resumes. Recorded in the HSM
    /// audit chain.
    pub fn confirm_price(&self, asset: &str, value: f64) -> Result<(), OracleError> {
        if !value.is_finite() || value <= 0.0 {
            return Err(invalid(format!("a confirmed price must be positive, not {value}")));
        }
        let (state_key, state, version) = self.price_state(asset)?;
        self.record_price(asset, "", audit_codes::PRICE_CONFIRMED, value)?;
        let next = PriceState {
            last: Some(value),
            last_maturity: state.last_maturity,
            halted_at: None,
        };
        self.put_price_state(&state_key, version, &next)
    }

    /// Whether `asset` is halted by the circuit breaker, with the value that tripped it.
    pub fn halted(&self, asset: &str) -> Result<Option<f64>, OracleError> {
        Ok(self.price_state(asset)?.1.halted_at)
    }

    fn price_state(&self, asset: &str) -> Result<(Vec<u8>, PriceState, Option<anya_storage::Version>), OracleError> {
        let k = key(PRICE, asset);
        match self.store.get(&self.ns, &k)? {
            None => Ok((k, PriceState::default(), None)),
            Some(v) => {
                let s = serde_json::from_slice(&v.value).map_err(|e| corrupt(&k, e))?;
                Ok((k, s, Some(v.version)))
            }
        }
    }

    fn put_price_state(
        &self,
        k: &[u8],
        version: Option<anya_storage::Version>,
        state: &PriceState,
    ) -> Result<(), OracleError> {
        let value = serde_json::to_vec(state).map_err(|e| corrupt(k, e))?;
        self.store.compare_and_swap(&self.ns, k, version, Some(&value))?;
        Ok(())
    }

    fn record_price(&self, asset: &str, event_id: &str, code: u16, value: f64) -> Result<(), OracleError> {
        let mut engine = sha256::Hash::engine();
        engine.input(b"anya/dlc/price/v1");
        for part in [asset.as_bytes(), event_id.as_bytes(), &value.to_be_bytes()] {
            engine.input(&(part.len() as u64).to_be_bytes());
            engine.input(part);
        }
        let subject = sha256::Hash::from_engine(engine).to_byte_array();
        self.hsm.record_decision(Some(&self.options.key), &subject, code)?;
        Ok(())
    }
}

fn numeric_layout(event: &Event) -> Result<Digits, OracleError> {
    match &event.announcement.oracle_event.event_descriptor {
        EventDescriptor::DigitDecompositionEvent(d) => Ok(Digits::new(d.base, d.nb_digits, d.is_signed)?),
        EventDescriptor::EnumEvent(_) => Err(OracleError::WrongEventKind {
            event_id: event.announcement.oracle_event.event_id.clone(),
            kind: "enum",
        }),
    }
}

/// `price / 10^precision`, rounded to the nearest integer and saturated to `i64`.
pub fn scale(price: f64, precision: i32) -> i64 {
    let scaled = (price / 10f64.powi(precision)).round();
    if scaled.is_nan() {
        0
    } else {
        // `as` saturates at the i64 bounds.
        scaled as i64
    }
}

/// The time an event matures, as the spec's `u32` epoch (saturated).
pub fn maturity_epoch(t: UnixTime) -> u32 {
    u32::try_from(t.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_is_a_label() {
        assert_eq!(OracleOptions::default().key.as_str(), "oracle");
    }

    #[test]
    fn event_ids() {
        assert!(check_event_id("btcusd1700000000").is_ok());
        for bad in ["", "a/b", "a b", "a\nb", &"x".repeat(257)] {
            assert!(
                matches!(check_event_id(bad), Err(OracleError::InvalidEventId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scaling() {
        assert_eq!(scale(43_210.49, 0), 43_210);
        assert_eq!(scale(43_210.5, 0), 43_211);
        assert_eq!(scale(43_210.0, 1), 4_321);
        assert_eq!(scale(0.0123, -4), 123);
        assert_eq!(scale(f64::INFINITY, 0), i64::MAX);
        assert_eq!(scale(f64::NAN, 0), 0);
    }
}
