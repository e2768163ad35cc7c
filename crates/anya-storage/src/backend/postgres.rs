//! The server backend: PostgreSQL through an `r2d2` pool of synchronous `postgres` clients.
//!
//! Everything lives in one Postgres schema (default `anya`): the `anya_kv` table of records,
//! the `anya_meta` table holding `schema_version`, and the `anya_version_seq` sequence that
//! hands out [`Version`]s. A sequence never gives a number twice, also not after a rollback, a
//! delete or a restart, which is exactly the uniqueness the contract asks of versions; gaps
//! (from rolled-back or retried batches) are allowed.
//!
//! # Isolation
//!
//! A batch runs in one transaction. Batches without checks run at `READ COMMITTED`: each put is
//! an atomic upsert, so there is nothing to lose. Batches with checks run at `SERIALIZABLE`:
//! `SELECT … FOR UPDATE` locks a row that exists, but cannot lock a key that is absent, and only
//! serializable isolation also catches a concurrent insert of a key a check expected to be
//! absent. Postgres reports such races as serialization failures; the batch is then retried
//! from the start (a bounded number of times, with jittered backoff), its checks evaluated
//! again, so that a real conflict still ends in [`StoreError::Conflict`].
//!
//! # Durability
//!
//! `Ok` from a write means the server acknowledged the commit, which with Postgres' default
//! `synchronous_commit = on` means it was flushed to the server's WAL. If the connection breaks
//! during `COMMIT` itself, the client cannot know whether the server committed; that one case is
//! reported as [`StoreError::Backend`] although the batch may have been applied (any database
//! client has this window). A batch with a check can be re-run safely: its check then fails.
//!
//! # TLS
//!
//! Connections are made without TLS ([`NoTls`]): use this backend over loopback or a Unix
//! socket (`postgres:///db?host=/run/postgresql`), or through a TLS-terminating tunnel. A URL
//! that demands `sslmode=require` fails to connect rather than falling back to plain text.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, IsolationLevel, NoTls, Statement};
use r2d2::{ManageConnection, Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use crate::batch::Op;
use crate::namespace::check_key;
use crate::{Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Forward migrations: `MIGRATIONS[i]` takes a store from schema `i` to `i + 1`. `{schema}`
/// stands for the quoted Postgres schema name.
///
/// `ns` uses the "C" collation so that namespace equality and the primary-key index never
/// depend on the database's locale; `key` is `bytea`, which Postgres orders bytewise
/// (`memcmp`, then length), the order the contract asks of scans.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE {schema}.anya_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE {schema}.anya_kv (
        ns TEXT COLLATE \"C\" NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE SEQUENCE {schema}.anya_version_seq AS BIGINT START WITH 1 NO CYCLE;
"];

/// The objects of an anya store; any of them without `anya_meta` means the schema belongs to
/// someone else.
const OBJECTS: [&str; 3] = ["anya_meta", "anya_kv", "anya_version_seq"];

/// Most attempts of one batch that keeps hitting serialization failures or deadlocks.
const MAX_ATTEMPTS: u32 = 64;

const BACKEND: &str = "postgres";

/// Options for [`PostgresStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The Postgres schema holding the store's tables (default `anya`): 1 to 63 characters of
    /// `[a-z0-9_]`, not starting with a digit or with `pg_`. Several stores can share one
    /// database under different schemas. It is created if absent.
    pub schema: String,
    /// Most connections the store keeps open to the server (default 16); also the most
    /// operations it runs at once, further callers wait for a free connection.
    pub pool_size: u32,
    /// How long to wait for a connection, both to establish one and to get one from a busy pool
    /// (default 10 s); past it the operation fails with [`StoreError::Backend`].
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "anya".to_owned(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// An options value the backend refuses; the `source` of the [`StoreError::Backend`] that
/// [`PostgresStore::open`] returns for it.
#[derive(Debug, thiserror::Error)]
enum OptionsError {
    #[error("schema name {0:?} is not 1 to 63 characters of [a-z0-9_] starting with [a-z_] (and not pg_)")]
    Schema(String),
    #[error("pool_size must be at least 1")]
    PoolSize,
}

/// A [`KvStore`] in a PostgreSQL database.
///
/// Cheap to share: clone an `Arc<PostgresStore>` into every thread; each operation borrows a
/// pooled connection for its duration. See the [module documentation](self) for isolation,
/// durability and TLS.
pub struct PostgresStore {
    schema: String,
    pool: Pool<Manager>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and opens (or creates) the store in
    /// `options.schema`, migrating an older schema forward.
    ///
    /// `url` is a libpq-style URL or key-value string (`postgres://user@127.0.0.1:5432/db`,
    /// `host=/run/postgresql dbname=db`). Connections use no TLS (see the module docs).
    ///
    /// Several processes may open the same store at once: creation and migration run in one
    /// transaction under an advisory lock. Refuses, changing nothing, a schema whose
    /// `schema_version` is newer than [`SCHEMA_VERSION`] ([`StoreError::SchemaTooNew`]) and a
    /// schema that has anya's table names without anya's metadata
    /// ([`StoreError::NotAnAnyaStore`]).
    ///
    /// # Errors
    ///
    /// Besides those two, [`StoreError::Backend`] for options it refuses (a schema name that is
    /// not a plain identifier, a zero `pool_size`), a URL it cannot parse, a server it cannot
    /// reach within `connect_timeout`, or a server error (such as a missing `CREATE`
    /// privilege on the database).
    pub fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        if !valid_schema_name(&options.schema) {
            return Err(backend_err(OptionsError::Schema(options.schema)));
        }
        if options.pool_size == 0 {
            return Err(backend_err(OptionsError::PoolSize));
        }
        let mut config: Config = url.parse().map_err(backend_err)?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("anya-storage");
        }

        let quoted = format!("\"{}\"", options.schema);
        let mut client = config.connect(NoTls).map_err(backend_err)?;
        migrate(&mut client, &options.schema, &quoted)?;
        // Closing politely is a courtesy to the server; the migration is already committed.
        let _ = client.close();

        let manager = Manager {
            inner: PostgresConnectionManager::new(config, NoTls),
            sql: Arc::new(Sql::new(&quoted)),
        };
        let pool = Pool::builder()
            .max_size(options.pool_size)
            // Connections open on demand and the pool keeps one warm, rather than holding
            // `pool_size` server processes for an idle store.
            .min_idle(Some(1))
            // r2d2 would otherwise send a query on every checkout to validate the connection,
            // a second round trip per operation. A connection that broke fails its next
            // statement with a typed error and r2d2 drops it (`has_broken`) when it comes back.
            .test_on_check_out(false)
            .connection_timeout(options.connect_timeout)
            .error_handler(Box::new(TracingErrorHandler))
            .build(manager)
            .map_err(backend_err)?;
        Ok(Self {
            schema: options.schema,
            pool,
        })
    }

    /// The Postgres schema holding this store.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn conn(&self) -> Result<PooledConnection<Manager>, StoreError> {
        self.pool.get().map_err(backend_err)
    }
}

impl KvStore for PostgresStore {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let row = client
            .query_opt(&stmts.get, &[&ns.as_str(), &key])
            .map_err(backend_err)?;
        row.map(|row| {
            Ok(Versioned {
                value: row.try_get(0).map_err(backend_err)?,
                version: version_from_sql(row.try_get(1).map_err(backend_err)?)?,
            })
        })
        .transpose()
    }

    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        scan.validate()?;
        if scan.limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, lower_exclusive, upper) = scan.bounds();
        let limit = i64::try_from(scan.limit).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let rows = match (&upper, lower_exclusive) {
            (None, false) => client.query(&stmts.scan_ge, &[&ns.as_str(), &lower, &limit]),
            (None, true) => client.query(&stmts.scan_gt, &[&ns.as_str(), &lower, &limit]),
            (Some(upper), false) => client.query(&stmts.scan_ge_lt, &[&ns.as_str(), &lower, upper, &limit]),
            (Some(upper), true) => client.query(&stmts.scan_gt_lt, &[&ns.as_str(), &lower, upper, &limit]),
        }
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok(Entry {
                    key: row.try_get(0).map_err(backend_err)?,
                    value: row.try_get(1).map_err(backend_err)?,
                    version: version_from_sql(row.try_get(2).map_err(backend_err)?)?,
                })
            })
            .collect()
    }

    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        let checked = batch.has_checks();
        let ops = batch.into_ops();
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            match write_once(&mut conn, &ops, checked) {
                Ok(version) => return Ok(version),
                Err(Attempt::Failed(err)) => return Err(err),
                Err(Attempt::Transient(err)) => {
                    attempt += 1;
                    if attempt >= MAX_ATTEMPTS {
                        return Err(backend_err(err));
                    }
                    tracing::debug!(attempt, error = %err, "postgres batch retried");
                    std::thread::sleep(backoff(attempt));
                }
            }
        }
    }
}

/// How one attempt at a batch ended, when it did not commit.
enum Attempt {
    /// Lost a race with another transaction (serialization failure, deadlock, duplicate key);
    /// nothing was applied and the batch may run again.
    Transient(postgres::Error),
    /// A final answer: a failed check, or an error that retrying would not cure.
    Failed(StoreError),
}

impl From<postgres::Error> for Attempt {
    fn from(err: postgres::Error) -> Self {
        let transient = matches!(
            err.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        );
        if transient {
            Attempt::Transient(err)
        } else {
            Attempt::Failed(backend_err(err))
        }
    }
}

impl From<StoreError> for Attempt {
    fn from(err: StoreError) -> Self {
        Attempt::Failed(err)
    }
}

/// Runs `ops` in one transaction; dropping the transaction on an early return rolls it back.
fn write_once(conn: &mut Conn, ops: &[Op], checked: bool) -> Result<Version, Attempt> {
    let Conn { client, stmts } = conn;
    // One put alone is one statement, atomic and durable by itself: one round trip instead of
    // four (BEGIN, nextval, upsert, COMMIT).
    if let [Op::Put { ns, key, value }] = ops {
        let raw: i64 = client
            .query_one(&stmts.put_one, &[&ns.as_str(), key, value])?
            .try_get(0)?;
        return Ok(version_from_sql(raw)?);
    }
    // Explicit levels, so that a server-wide `default_transaction_isolation` changes nothing.
    let isolation = if checked {
        IsolationLevel::Serializable
    } else {
        IsolationLevel::ReadCommitted
    };
    let mut tx = client.build_transaction().isolation_level(isolation).start()?;
    let raw: i64 = tx.query_one(&stmts.next_version, &[])?.try_get(0)?;
    let version = version_from_sql(raw)?;
    for op in ops {
        match op {
            Op::Put { ns, key, value } => {
                tx.execute(&stmts.upsert, &[&ns.as_str(), key, value, &raw])?;
            }
            Op::Delete { ns, key } => {
                tx.execute(&stmts.delete, &[&ns.as_str(), key])?;
            }
            Op::Check { ns, key, expected } => {
                let found = match tx.query_opt(&stmts.check, &[&ns.as_str(), key])? {
                    Some(row) => Some(version_from_sql(row.try_get(0)?)?),
                    None => None,
                };
                if found != *expected {
                    return Err(Attempt::Failed(StoreError::conflict(ns, key, *expected, found)));
                }
            }
        }
    }
    tx.commit()?;
    Ok(version)
}

/// Sleep before retry `attempt` (from 1): full jitter under an exponential cap of
/// 100 µs · 2^attempt, at most 25.6 ms, so that racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let cap_us = 100u64 << attempt.min(8);
    // A fresh `RandomState` is randomly keyed: enough jitter without a random-number crate.
    let noise = RandomState::new().build_hasher().finish();
    Duration::from_micros(50 + noise % cap_us)
}

/// Creates or migrates the store in `schema` in one transaction under an advisory lock keyed
/// by the schema name, so that concurrent openers take turns and the later ones find the work
/// done.
fn migrate(client: &mut Client, schema: &str, quoted: &str) -> Result<(), StoreError> {
    // Catalog checks below must see what concurrent openers committed before we got the lock:
    // READ COMMITTED takes a new snapshot per statement.
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .map_err(backend_err)?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&advisory_lock_key(schema)])
        .map_err(backend_err)?;
    let rows = tx
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname IN ('anya_meta', 'anya_kv', 'anya_version_seq')",
            &[&schema],
        )
        .map_err(backend_err)?;
    let mut present = Vec::with_capacity(rows.len());
    for row in &rows {
        present.push(row.try_get::<_, String>(0).map_err(backend_err)?);
    }

    let from = if present.iter().any(|name| name == OBJECTS[0]) {
        let row = tx
            .query_opt(
                &format!("SELECT value FROM {quoted}.anya_meta WHERE name = 'schema_version'"),
                &[],
            )
            .map_err(backend_err)?;
        let found: i64 = match row {
            Some(row) => row.try_get(0).map_err(backend_err)?,
            None => {
                return Err(StoreError::NotAnAnyaStore {
                    detail: format!("schema {schema:?} has an anya_meta table without schema_version"),
                })
            }
        };
        if found > i64::from(SCHEMA_VERSION) {
            return Err(StoreError::SchemaTooNew {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION,
            });
        }
        if found < 1 {
            return Err(StoreError::NotAnAnyaStore {
                detail: format!("schema {schema:?} records schema_version {found}"),
            });
        }
        usize::try_from(found).map_err(|_| StoreError::NotAnAnyaStore {
            detail: format!("schema {schema:?} records schema_version {found}"),
        })?
    } else if present.is_empty() {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .map_err(backend_err)?;
        0
    } else {
        present.sort();
        return Err(StoreError::NotAnAnyaStore {
            detail: format!("schema {schema:?} has {} but no anya_meta table", present.join(", ")),
        });
    };

    if from == MIGRATIONS.len() {
        // Up to date: nothing to write; the transaction only held the lock.
        return tx.commit().map_err(backend_err);
    }
    for step in &MIGRATIONS[from..] {
        tx.batch_execute(&step.replace("{schema}", quoted))
            .map_err(backend_err)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {quoted}.anya_meta (name, value) VALUES ('schema_version', $1) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        ),
        &[&i64::from(SCHEMA_VERSION)],
    )
    .map_err(backend_err)?;
    tx.commit().map_err(backend_err)?;
    tracing::info!(schema, from, to = SCHEMA_VERSION, "postgres store schema migrated");
    Ok(())
}

/// The advisory-lock key of a schema: FNV-1a over a fixed tag and the name, so that stores in
/// different schemas do not wait for each other.
fn advisory_lock_key(schema: &str) -> i64 {
    let hash = b"anya-storage/postgres:"
        .iter()
        .chain(schema.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// `[a-z_][a-z0-9_]{0,62}`, minus the `pg_` prefix Postgres reserves: such a name needs no
/// quoting rules beyond the surrounding double quotes and fits Postgres' 63-byte identifiers.
fn valid_schema_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_lowercase() || *first == b'_' => {}
        _ => return false,
    }
    bytes.len() <= 63
        && !name.starts_with("pg_")
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

fn backend_err(err: impl Into<crate::BoxError>) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        source: err.into(),
    }
}

fn version_from_sql(n: i64) -> Result<Version, StoreError> {
    u64::try_from(n)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| StoreError::Corrupt {
            source: format!("stored version {n} is not a positive integer").into(),
        })
}

/// Every statement the store runs, with the quoted schema name filled in once at open.
struct Sql {
    get: String,
    check: String,
    upsert: String,
    put_one: String,
    delete: String,
    next_version: String,
    scan_ge: String,
    scan_gt: String,
    scan_ge_lt: String,
    scan_gt_lt: String,
}

impl Sql {
    fn new(q: &str) -> Self {
        let scan = |lower: &str, upper: &str| {
            format!(
                "SELECT key, value, version FROM {q}.anya_kv \
                 WHERE ns = $1 AND key {lower} $2{upper} ORDER BY key LIMIT ${}",
                if upper.is_empty() { 3 } else { 4 }
            )
        };
        Self {
            get: format!("SELECT value, version FROM {q}.anya_kv WHERE ns = $1 AND key = $2"),
            check: format!("SELECT version FROM {q}.anya_kv WHERE ns = $1 AND key = $2 FOR UPDATE"),
            upsert: format!(
                "INSERT INTO {q}.anya_kv (ns, key, value, version) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version"
            ),
            put_one: format!(
                "INSERT INTO {q}.anya_kv (ns, key, value, version) \
                 VALUES ($1, $2, $3, nextval('{q}.anya_version_seq')) \
                 ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version \
                 RETURNING version"
            ),
            delete: format!("DELETE FROM {q}.anya_kv WHERE ns = $1 AND key = $2"),
            next_version: format!("SELECT nextval('{q}.anya_version_seq')"),
            scan_ge: scan(">=", ""),
            scan_gt: scan(">", ""),
            scan_ge_lt: scan(">=", " AND key < $3"),
            scan_gt_lt: scan(">", " AND key < $3"),
        }
    }
}

/// [`Sql`] prepared on one connection.
struct Statements {
    get: Statement,
    check: Statement,
    upsert: Statement,
    put_one: Statement,
    delete: Statement,
    next_version: Statement,
    scan_ge: Statement,
    scan_gt: Statement,
    scan_ge_lt: Statement,
    scan_gt_lt: Statement,
}

impl Statements {
    fn prepare(client: &mut Client, sql: &Sql) -> Result<Self, postgres::Error> {
        Ok(Self {
            get: client.prepare(&sql.get)?,
            check: client.prepare(&sql.check)?,
            upsert: client.prepare(&sql.upsert)?,
            put_one: client.prepare(&sql.put_one)?,
            delete: client.prepare(&sql.delete)?,
            next_version: client.prepare(&sql.next_version)?,
            scan_ge: client.prepare(&sql.scan_ge)?,
            scan_gt: client.prepare(&sql.scan_gt)?,
            scan_ge_lt: client.prepare(&sql.scan_ge_lt)?,
            scan_gt_lt: client.prepare(&sql.scan_gt_lt)?,
        })
    }
}

/// A pooled connection with the store's statements prepared on it.
struct Conn {
    client: Client,
    stmts: Statements,
}

/// `r2d2_postgres`' manager, plus preparing the store's statements on each new connection.
struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    sql: Arc<Sql>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.inner.connect()?;
        let stmts = Statements::prepare(&mut client, &self.sql)?;
        Ok(Conn { client, stmts })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}

/// Reports connection failures seen by the pool's background threads through `tracing`
/// (r2d2's default handler logs through the `log` crate, which anya does not wire up).
#[derive(Debug, Clone, Copy)]
struct TracingErrorHandler;

impl r2d2::HandleError<postgres::Error> for TracingErrorHandler {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(%error, "postgres pool could not open a connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["anya", "_x", "t_0123abcd", "a", &"a".repeat(63)] {
            assert!(valid_schema_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Anya",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "pg_anya",
            "ünï",
            &"a".repeat(64),
        ] {
            assert!(!valid_schema_name(bad), "{bad}");
        }
    }

    #[test]
    fn sql_uses_the_quoted_schema() {
        let sql = Sql::new("\"s1\"");
        assert_eq!(
            sql.scan_gt_lt,
            "SELECT key, value, version FROM \"s1\".anya_kv WHERE ns = $1 AND key > $2 AND key < $3 \
             ORDER BY key LIMIT $4"
        );
        assert!(sql.scan_ge.ends_with("key >= $2 ORDER BY key LIMIT $3"));
        assert_eq!(sql.next_version, "SELECT nextval('\"s1\".anya_version_seq')");
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(advisory_lock_key("anya"), advisory_lock_key("anyb"));
        assert_eq!(advisory_lock_key("anya"), advisory_lock_key("anya"));
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..=MAX_ATTEMPTS {
            assert!(backoff(attempt) <= Duration::from_micros(50 + (100 << 8)));
        }
    }
}
