//! Storage backends, each behind its cargo feature.

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "rocksdb")]
pub mod rocksdb;

#[cfg(feature = "postgres")]
pub mod postgres;
