//! Dev-only helpers for anya's tests: real servers, started for a test and stopped after it.
//!
//! Every crate's tests that need a chain use [`Bitcoind`]: a regtest `bitcoind` in a temporary
//! data directory, on free loopback ports, with cookie authentication, stopped (and its
//! directory removed) when the value drops, also when the test panics. Any number may run at
//! once in one test binary or several.
//!
//! The binary comes from `BITCOIND_EXE` (`.ci/run` builds it with `scripts/bitcoind` and
//! exports the path). Without it a test is skipped outside CI and fails in CI (`CI` set):
//!
//! ```no_run
//! let Some(node) = anya_testkit::Bitcoind::start() else { return };
//! let address = node.new_burn_address();
//! node.mine(101, &address);
//! assert_eq!(node.height(), 101);
//! ```
#![warn(missing_docs)]

mod bitcoind;
pub mod dlc;
mod env;
pub mod http;

pub use bitcoind::{Bitcoind, BitcoindOptions};
pub use env::require_env;
