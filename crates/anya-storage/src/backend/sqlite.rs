//! The embedded default backend: SQLite in WAL mode with `synchronous=FULL` and group commit.
//!
//! One writer connection, owned by the group committer, applies every write; readers take
//! connections from a small pool and run concurrently with it (WAL). Versions come from a
//! counter in the `anya_meta` table, read and advanced inside each write transaction, so two
//! processes opening the same file still never hand out a version twice.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::batch::Op;
use crate::group_commit::{GroupCommit, GroupWriter};
use crate::namespace::check_key;
use crate::{Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch};

/// `PRAGMA application_id` of every anya SQLite store: "anya" in ASCII.
pub const APPLICATION_ID: i32 = 0x616e_7961;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Forward migrations: `MIGRATIONS[i]` takes a database from schema `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE anya_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO anya_meta (name, value) VALUES ('last_version', 0);
    CREATE TABLE anya_kv (
        ns TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;
"];

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Options for [`SqliteStore::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Create the database file if it does not exist (default `true`).
    pub create_if_missing: bool,
    /// How long to wait for another process holding the write lock (default 5 s).
    pub busy_timeout: Duration,
    /// Page cache per connection, in KiB (default 8 MiB).
    pub cache_size_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            create_if_missing: true,
            busy_timeout: Duration::from_secs(5),
            cache_size_kib: 8 * 1024,
        }
    }
}

/// A [`KvStore`] in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    options: SqliteOptions,
    writer: GroupCommit<SqliteWriter>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct SqliteWriter {
    conn: Connection,
}

fn map_err(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
            StoreError::Corrupt { source: Box::new(err) }
        }
        _ => StoreError::Backend {
            backend: "sqlite",
            source: Box::new(err),
        },
    }
}

fn io_err(err: std::io::Error) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        source: Box::new(err),
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

impl SqliteStore {
    /// Opens (or creates) the store at `path`, migrating an older schema forward.
    ///
    /// Refuses, without writing a byte, a file that is not SQLite, a SQLite database of another
    /// application, and a database written by a newer schema.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let exists = check_header(&path)?;
        if !exists && !options.create_if_missing {
            return Err(StoreError::NotAnAnyaStore {
                detail: format!("{} does not exist", path.display()),
            });
        }
        let conn = open_connection(&path, &options, false)?;
        let (app_id, user_version, tables): (i32, u32, i64) = (
            conn.query_row("PRAGMA application_id", [], |r| r.get(0))
                .map_err(map_err)?,
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(map_err)?,
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(map_err)?,
        );
        if app_id != APPLICATION_ID && !(app_id == 0 && user_version == 0 && tables == 0) {
            return Err(StoreError::NotAnAnyaStore {
                detail: format!("SQLite database with application_id {app_id:#x} and {tables} schema objects"),
            });
        }
        if user_version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: user_version,
                supported: SCHEMA_VERSION,
            });
        }
        // Validation done: from here on the file is ours to write.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(map_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(map_err)?;
        migrate(&conn)?;
        let store = Self {
            path,
            options,
            writer: GroupCommit::new(SqliteWriter { conn }),
            readers: Mutex::new(Vec::new()),
        };
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs SQLite's full `integrity_check`; any finding is [`StoreError::Corrupt`].
    ///
    /// Reads the whole database, so it is for operators and start-up checks of small stores,
    /// not for every open.
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        self.with_reader(|conn| {
            let report: Vec<String> = conn
                .prepare("PRAGMA integrity_check")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(map_err)?;
            if report == ["ok"] {
                Ok(())
            } else {
                Err(StoreError::Corrupt {
                    source: report.join("; ").into(),
                })
            }
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map_err(|_| StoreError::Poisoned)?.pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, &self.options, true)?,
        };
        let result = f(&conn);
        // A connection that saw an error goes back too: SQLite connections stay usable.
        self.readers.lock().map_err(|_| StoreError::Poisoned)?.push(conn);
        result
    }
}

/// Whether a database file exists at `path`; an error if it exists but is not SQLite.
fn check_header(path: &Path) -> Result<bool, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(StoreError::NotAnAnyaStore {
            detail: format!("{} is a directory", path.display()),
        });
    }
    if meta.len() == 0 {
        return Ok(true);
    }
    let mut header = [0u8; 16];
    if file.read_exact(&mut header).is_err() || &header != SQLITE_MAGIC {
        return Err(StoreError::NotAnAnyaStore {
            detail: format!("{} is not a SQLite database", path.display()),
        });
    }
    Ok(true)
}

fn open_connection(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if read_only {
        flags |= OpenFlags::SQLITE_OPEN_READ_ONLY;
    } else {
        flags |= OpenFlags::SQLITE_OPEN_READ_WRITE;
        if options.create_if_missing {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
    }
    let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
    conn.busy_timeout(options.busy_timeout).map_err(map_err)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
        .map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(map_err)?;
    let result = (|| {
        // Re-read under the write lock: another process may have migrated meanwhile.
        let current: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(map_err)?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tracing::info!(from, to = from + 1, "migrating sqlite store schema");
            conn.execute_batch(sql).map_err(map_err)?;
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(map_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(map_err)?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(map_err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

enum BatchOutcome {
    Applied,
    Conflict(StoreError),
}

impl SqliteWriter {
    fn apply(&self, ops: &[Op], version: i64) -> Result<BatchOutcome, StoreError> {
        for op in ops {
            match op {
                Op::Put { ns, key, value } => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO anya_kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version",
                        )
                        .and_then(|mut s| s.execute(params![ns.as_str(), key, value, version]))
                        .map_err(map_err)?;
                }
                Op::Delete { ns, key } => {
                    self.conn
                        .prepare_cached("DELETE FROM anya_kv WHERE ns = ?1 AND key = ?2")
                        .and_then(|mut s| s.execute(params![ns.as_str(), key]))
                        .map_err(map_err)?;
                }
                Op::Check { ns, key, expected } => {
                    let found: Option<i64> = self
                        .conn
                        .prepare_cached("SELECT version FROM anya_kv WHERE ns = ?1 AND key = ?2")
                        .and_then(|mut s| s.query_row(params![ns.as_str(), key], |r| r.get(0)).optional())
                        .map_err(map_err)?;
                    let found = found.map(version_from_sql).transpose()?;
                    if found != *expected {
                        return Ok(BatchOutcome::Conflict(StoreError::conflict(ns, key, *expected, found)));
                    }
                }
            }
        }
        Ok(BatchOutcome::Applied)
    }

    fn commit_in_tx(&mut self, batches: &[WriteBatch]) -> Result<Vec<Result<Version, StoreError>>, StoreError> {
        let mut last: i64 = self
            .conn
            .prepare_cached("SELECT value FROM anya_meta WHERE name = 'last_version'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(map_err)?;
        let grouped = batches.len() > 1;
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            // Only a check can fail one batch alone; any other error fails the whole group,
            // so batches without checks need no savepoint of their own.
            let isolate = grouped && batch.has_checks();
            let version = last.checked_add(1).ok_or_else(|| StoreError::Backend {
                backend: "sqlite",
                source: "version counter exhausted".into(),
            })?;
            if isolate {
                self.conn.execute_batch("SAVEPOINT anya_batch").map_err(map_err)?;
            }
            match self.apply(batch.ops(), version)? {
                BatchOutcome::Applied => {
                    if isolate {
                        self.conn.execute_batch("RELEASE anya_batch").map_err(map_err)?;
                    }
                    last = version;
                    results.push(version_from_sql(version));
                }
                BatchOutcome::Conflict(err) => {
                    if isolate {
                        self.conn
                            .execute_batch("ROLLBACK TO anya_batch; RELEASE anya_batch")
                            .map_err(map_err)?;
                    }
                    results.push(Err(err));
                }
            }
        }
        self.conn
            .prepare_cached("UPDATE anya_meta SET value = ?1 WHERE name = 'last_version'")
            .and_then(|mut s| s.execute([last]))
            .map_err(map_err)?;
        Ok(results)
    }
}

impl GroupWriter for SqliteWriter {
    fn commit_group(&mut self, batches: Vec<WriteBatch>) -> Result<Vec<Result<Version, StoreError>>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(map_err)?;
        let results = match self.commit_in_tx(&batches) {
            Ok(results) => results,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if results.iter().all(Result::is_err) {
            // Nothing to make durable: skip the fsync.
            self.conn.execute_batch("ROLLBACK").map_err(map_err)?;
            return Ok(results);
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(map_err(e));
        }
        Ok(results)
    }
}

/// Scan statements by `[limited][upper bound absent][exclusive start]`. An unlimited scan has no
/// `LIMIT` clause: SQLite would otherwise count down a limit on every row.
const SCAN_SQL: [[[&str; 2]; 2]; 2] = [
    [
        [
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key > ?2 AND key < ?3 ORDER BY key",
        ],
        [
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key >= ?2 ORDER BY key",
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key > ?2 ORDER BY key",
        ],
    ],
    [
        [
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key > ?2 AND key < ?3 ORDER BY key LIMIT ?4",
        ],
        [
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key >= ?2 ORDER BY key LIMIT ?4",
            "SELECT key, value, version FROM anya_kv WHERE ns = ?1 AND key > ?2 ORDER BY key LIMIT ?4",
        ],
    ],
];

impl KvStore for SqliteStore {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        self.with_reader(|conn| {
            let row: Option<(Vec<u8>, i64)> = conn
                .prepare_cached("SELECT value, version FROM anya_kv WHERE ns = ?1 AND key = ?2")
                .and_then(|mut s| {
                    s.query_row(params![ns.as_str(), key], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(map_err)?;
            row.map(|(value, v)| {
                Ok(Versioned {
                    value,
                    version: version_from_sql(v)?,
                })
            })
            .transpose()
        })
    }

    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        scan.validate()?;
        if scan.limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, exclusive, upper) = scan.bounds();
        let limited = i64::try_from(scan.limit).ok();
        let sql = SCAN_SQL[usize::from(limited.is_some())][usize::from(upper.is_none())][usize::from(exclusive)];
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(map_err)?;
            let mut rows = match (limited, upper) {
                (Some(limit), Some(upper)) => stmt.query(params![ns.as_str(), lower, upper, limit]),
                (Some(limit), None) => stmt.query(params![ns.as_str(), lower, rusqlite::types::Null, limit]),
                (None, Some(upper)) => stmt.query(params![ns.as_str(), lower, upper]),
                (None, None) => stmt.query(params![ns.as_str(), lower]),
            }
            .map_err(map_err)?;
            let mut out = Vec::with_capacity(scan.limit.min(1024));
            while let Some(row) = rows.next().map_err(map_err)? {
                out.push(Entry {
                    key: row.get(0).map_err(map_err)?,
                    value: row.get(1).map_err(map_err)?,
                    version: version_from_sql(row.get(2).map_err(map_err)?)?,
                });
            }
            Ok(out)
        })
    }

    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        self.writer.write(batch)
    }
}
