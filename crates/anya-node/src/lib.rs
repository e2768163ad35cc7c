#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod chain;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod dlc;
pub mod error;
pub mod events;
pub mod limits;
pub mod ln;
pub mod metrics;
pub mod node;
pub mod server;
pub mod tls;
pub mod wallets;

pub use api::router;
pub use config::NodeConfig;
pub use error::ApiError;
pub use node::{Node, NodeError, ReloadError, Reloader, Started};
pub use server::serve;
