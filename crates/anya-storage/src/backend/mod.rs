//! Storage backends, each behind its cargo feature.

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "rocksdb")]
pub mod rocksdb;

#[cfg(feature = "postgres")]
pub mod postgres;

use std::sync::Arc;

use crate::{KvStore, StoreError};

/// Why a store address was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreUrlError {
    /// Not `sqlite:PATH`, `rocksdb:PATH`, `postgres://…` or `postgresql://…`.
    #[error("unknown store address {0:?}: sqlite:PATH, rocksdb:PATH or postgres://USER@HOST/DB")]
    Unknown(String),
    /// The backend is not compiled in.
    #[error("this build has no {0} backend (cargo feature {0})")]
    NotBuilt(&'static str),
    /// Opening it failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the store at `url` with each backend's default options: `sqlite:PATH` (the embedded
/// default), `rocksdb:PATH`, or `postgres://…` / `postgresql://…` (a libpq URL; put the
/// password in `PGPASSWORD`-style configuration or a `.pgpass` file rather than in the URL when
/// it is logged or shown).
pub fn open_url(url: &str) -> Result<Arc<dyn KvStore>, StoreUrlError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(sqlite::SqliteStore::open(
            path,
            sqlite::SqliteOptions::default(),
        )?));
        #[cfg(not(feature = "sqlite"))]
        return {
            let _ = path;
            Err(StoreUrlError::NotBuilt("sqlite"))
        };
    }
    if let Some(path) = url.strip_prefix("rocksdb:") {
        #[cfg(feature = "rocksdb")]
        return Ok(Arc::new(rocksdb::RocksDbStore::open(
            path,
            rocksdb::RocksDbOptions::default(),
        )?));
        #[cfg(not(feature = "rocksdb"))]
        return {
            let _ = path;
            Err(StoreUrlError::NotBuilt("rocksdb"))
        };
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresStore::open(
            url,
            postgres::PostgresOptions::default(),
        )?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreUrlError::NotBuilt("postgres"));
    }
    Err(StoreUrlError::Unknown(url.to_owned()))
}
