//! Benches that span anya's crates, and the fixtures they share.
//!
//! - [`numeric`]: a numeric DLC as ddk-manager builds it. The event is announced by anya
//!   [`Oracle`](anya_layer2::dlc::Oracle)s on software HSMs. The contract info uses
//!   ddk-manager's `NumericalDescriptor` with `DifferenceParams` and a payout curve; its CETs
//!   come from ddk-dlc; its adaptor trie and signatures from ddk-manager's own
//!   `ContractInfo::get_adaptor_info`.
//! - [`trie`]: the digit paths of ddk-trie's adaptor trie in adaptor-signature order. This is
//!   the input anya's `dlc::contracts::cets` takes for the signatures the manager makes.
//!
//! The benches are in `benches/`: `dlc_cets` (criterion: CET adaptor signatures, anya beside
//! ddk-dlc's serial functions and ddk-manager's own path), `dlc_e2e` (offer to signed
//! through two ddk-manager instances on anya, on a regtest bitcoind) and `ln_payments`
//! (Lightning payments per second between two nodes on a regtest bitcoind, anya's
//! `LightningNode` on SQLite and PostgreSQL beside plain ldk-node on its own SQLite store).

#![warn(missing_docs)]

pub mod numeric;
pub mod trie;
