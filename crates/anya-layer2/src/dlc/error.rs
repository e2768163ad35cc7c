use anya_hsm::HsmError;
use anya_storage::StoreError;

use super::digits::DigitsError;
use super::price::PriceError;

/// Why an oracle operation did nothing (or, for a signature, returned nothing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    /// The HSM refused or failed (a rolled-back store is [`HsmError::RolledBack`], a nonce
    /// asked for a second message [`HsmError::NonceAlreadyUsed`]).
    #[error("hsm: {0}")]
    Hsm(#[from] HsmError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An event with this id was already announced (its announcement is unchanged).
    #[error("event {event_id:?} already exists")]
    EventExists {
        /// The event id.
        event_id: String,
    },
    /// No event has this id.
    #[error("no event {event_id:?}")]
    EventNotFound {
        /// The event id.
        event_id: String,
    },
    /// An event id that is empty, too long or has control characters.
    #[error("invalid event id: {reason}")]
    InvalidEventId {
        /// What is wrong with it.
        reason: String,
    },
    /// An event description the spec (or this oracle's limits) does not allow.
    #[error("invalid event: {reason}")]
    InvalidEvent {
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric layout that is not valid.
    #[error("invalid digits: {0}")]
    Digits(#[from] DigitsError),
    /// An enum outcome the event does not list.
    #[error("event {event_id:?} has no outcome {outcome:?}")]
    UnknownOutcome {
        /// The event id.
        event_id: String,
        /// The outcome asked for.
        outcome: String,
    },
    /// An enum attestation asked of a numeric event, or the other way round.
    #[error("event {event_id:?} is a {kind} event")]
    WrongEventKind {
        /// The event id.
        event_id: String,
        /// What it is: `"enum"` or `"numeric"`.
        kind: &'static str,
    },
    /// The event's maturity has not come yet.
    #[error("event {event_id:?} matures at {maturity}, it is {now}")]
    NotMature {
        /// The event id.
        event_id: String,
        /// Its maturity (unix seconds).
        maturity: u32,
        /// The time now (unix seconds).
        now: u64,
    },
    /// The event is attested for another outcome; nothing was signed.
    #[error("event {event_id:?} is already attested as {attested:?}, not {requested:?}")]
    AlreadyAttested {
        /// The event id.
        event_id: String,
        /// The outcomes it was attested for.
        attested: Vec<String>,
        /// The outcomes asked for.
        requested: Vec<String>,
    },
    /// A price could not be decided (too few fresh sources, too wide a spread, the circuit
    /// breaker); recorded in the HSM audit chain.
    #[error("price for {asset:?}: {source}")]
    Price {
        /// The asset.
        asset: String,
        /// Why.
        #[source]
        source: PriceError,
    },
    /// Price attestation for the asset is halted by the circuit breaker until an admin
    /// confirms a value ([`Oracle::confirm_price`](super::Oracle::confirm_price)).
    #[error("price attestation for {asset:?} is halted: {proposed} after {last}, awaiting an admin's confirmation")]
    Halted {
        /// The asset.
        asset: String,
        /// The last attested value.
        last: f64,
        /// The value the sources gave.
        proposed: f64,
    },
    /// No price sources are configured for the asset.
    #[error("no price sources for {asset:?}")]
    NoSources {
        /// The asset.
        asset: String,
    },
    /// A stored oracle record does not parse: the store was written by something else.
    #[error("corrupt oracle record {key:?}: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A message this oracle made failed its own independent check before leaving; nothing
    /// was returned (this is a bug or a faulty HSM, never an input error).
    #[error("self-check failed: {reason}")]
    SelfCheck {
        /// What failed.
        reason: String,
    },
}
