//! Lightning nodes on ldk-node with anya's store, HSM-derived keys and a real bitcoind.
//!
//! - [`LdkStore`]: lightning 0.2's `KVStore` and `KVStoreSync` on anya's `KvStore`, so channel
//!   monitors and the channel manager live in SQLite, RocksDB or PostgreSQL.
//! - [`LightningNode`]: an ldk-node node whose 64-byte seed is derived inside anya-hsm (BIP85,
//!   an audited operation the root's policy must allow) and whose records live in an
//!   [`LdkStore`]; chain data and fee estimates from bitcoind's RPC.
//!
//! Why ldk-node and not bare `lightning` with an HSM-backed signer: ADR 0007.

mod invoice;
mod node;
mod store;

pub use invoice::{parse_invoice, parse_offer, parse_peer, HintHop, InvoiceSummary};
pub use node::{default_max_fee_msat, BitcoindRpc, LightningError, LightningNode, NodeOptions};
pub use store::{LdkStore, READ_AHEAD_BYTES};

/// ldk-node, re-exported so that users name the same version anya builds on.
pub use ldk_node;
