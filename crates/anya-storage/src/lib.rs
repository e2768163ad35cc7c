#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod batch;
mod error;
mod namespace;
mod store;
mod version;

#[cfg(any(feature = "sqlite", feature = "rocksdb"))]
mod group_commit;

pub mod backend;

#[cfg(feature = "tokio")]
mod async_store;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use batch::{Op, WriteBatch};
pub use error::{BoxError, StoreError};
pub use namespace::{prefix_successor, Namespace, MAX_KEY_LEN, MAX_NAMESPACE_LEN, MAX_VALUE_LEN};
pub use store::{Entry, KvStore, Scan, Versioned};
pub use version::Version;

pub use backend::{open_url, StoreUrlError};

#[cfg(feature = "tokio")]
pub use async_store::AsyncStore;

#[cfg(feature = "sqlite")]
pub use backend::sqlite::{SqliteOptions, SqliteStore};

#[cfg(feature = "rocksdb")]
pub use backend::rocksdb::{RocksDbOptions, RocksDbStore};

#[cfg(feature = "postgres")]
pub use backend::postgres::{PostgresOptions, PostgresStore};
