//! Discreet Log Contracts: a [dlcspecs] oracle on anya-hsm's one-time nonces.
//!
//! - [`oracle`]: [`Oracle`] announces enum and numeric (digit decomposition) events and attests
//!   them. Its attestation key and every nonce live in an [`anya_hsm::HsmProvider`]; an event
//!   is attested for one outcome only, fixed in the store by a compare-and-swap before any
//!   signature exists, and the HSM's nonces refuse a second message even if the store is
//!   rolled back or rewritten.
//! - [`digits`]: the spec's digit decomposition of numeric outcomes, with its clamping.
//! - [`price`]: price events decided from several HTTP JSON sources (N of M fresh quotes,
//!   median, a spread limit and a circuit breaker).
//! - [`client`]: a client for the kormir and p2pderivatives oracle route families.
//! - [`contracts`]: contracts through `ddk-manager`, anya behind its traits (so far: the
//!   oracle, remote or in-process).
//!
//! The messages are [`ddk_messages`]' (`oracle_event`, `oracle_announcement`,
//! `oracle_attestation`, with the spec's TLV types and tagged hashes), re-exported in
//! [`messages`].
//!
//! [dlcspecs]: https://github.com/discreetlogcontracts/dlcspecs

pub mod client;
pub mod contracts;
pub mod digits;
mod error;
pub mod oracle;
pub mod price;
pub mod schedule;

pub use error::OracleError;
pub use oracle::{EventKind, EventSummary, Oracle, OracleOptions};

/// The dlcspecs oracle messages and their signing hashes, from `ddk-messages`.
pub mod messages {
    pub use ddk_messages::oracle_msgs::{
        tagged_announcement_msg, tagged_attestation_msg, DigitDecompositionEventDescriptor, EnumEventDescriptor,
        EventDescriptor, OracleAnnouncement, OracleAttestation, OracleEvent, ANNOUNCEMENT_TYPE, ATTESTATION_TYPE,
        ORACLE_ANNOUNCEMENT_TAG, ORACLE_ATTESTATION_TAG,
    };
}
