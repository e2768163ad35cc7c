#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod node;
pub mod server;

pub use api::router;
pub use config::NodeConfig;
pub use error::ApiError;
pub use node::{Node, NodeError, Started};
pub use server::serve;
