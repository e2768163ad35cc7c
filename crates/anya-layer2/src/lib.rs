//! Bitcoin Layer 2 protocols on anya's HSM and store.
//!
//! - [`dlc`] (feature `dlc`, on by default): a [dlcspecs] oracle whose attestation key and
//!   one-time nonces live in an [`anya_hsm::HsmProvider`], so that no event can ever be signed
//!   for two outcomes; price events decided from several sources; a client for the kormir and
//!   p2pderivatives route families.
//!
//! [dlcspecs]: https://github.com/discreetlogcontracts/dlcspecs

#[cfg(feature = "dlc")]
pub mod dlc;

#[cfg(feature = "lightning")]
pub mod lightning;
