//! The embedded default backend: SQLite in WAL mode with `synchronous=FULL` and group commit.
//!
//! One writer connection, owned by the group committer, applies every write; readers take
//! connections from a small pool and run concurrently with it (WAL). Versions come from a
//! counter in the `anya_meta` table, read and advanced inside each write transaction, so two
//! processes opening the same file still never hand out a version twice.
//!
//! Schema 2 stores each record as one row of `anya_kv (k BLOB PRIMARY KEY, v BLOB)`: `k` is the
//! namespace's id (4 bytes, big-endian, from `anya_ns`) followed by the key, `v` the version
//! (8 bytes, big-endian) followed by the value. Keys of one namespace are therefore one
//! contiguous, bytewise-ordered range, and a read or scan is the same single-column index walk
//! a hand-written key-value table needs. Schema 1 (a `(ns, key)` composite key and separate
//! `value` and `version` columns) is migrated forward on open.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::batch::Op;
use crate::group_commit::{GroupCommit, GroupWriter};
use crate::namespace::check_key;
use crate::{Entry, KvStore, Namespace, Scan, StoreError, Version, Versioned, WriteBatch};

/// `PRAGMA application_id` of every anya SQLite store: "anya" in ASCII.
pub const APPLICATION_ID: i32 = 0x616e_7961;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 2;

/// Forward migrations: `MIGRATIONS[i]` takes a database from schema `i` to `i + 1`.
type Migration = fn(&Connection) -> Result<(), StoreError>;
const MIGRATIONS: &[Migration] = &[create_schema_1, migrate_1_to_2];

fn create_schema_1(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE anya_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO anya_meta (name, value) VALUES ('last_version', 0);
         CREATE TABLE anya_kv (
             ns TEXT NOT NULL,
             key BLOB NOT NULL,
             value BLOB NOT NULL,
             version INTEGER NOT NULL,
             PRIMARY KEY (ns, key)
         ) WITHOUT ROWID;",
    )
    .map_err(map_err)
}

/// Schema 1 to 2: namespaces get ids, each record becomes one `(k, v)` row.
fn migrate_1_to_2(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE anya_ns (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE anya_kv2 (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
    )
    .map_err(map_err)?;
    {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut read = conn
            .prepare("SELECT ns, key, value, version FROM anya_kv ORDER BY ns, key")
            .map_err(map_err)?;
        let mut insert_ns = conn
            .prepare("INSERT INTO anya_ns (name) VALUES (?1)")
            .map_err(map_err)?;
        let mut insert = conn
            .prepare("INSERT INTO anya_kv2 (k, v) VALUES (?1, ?2)")
            .map_err(map_err)?;
        let mut rows = read.query([]).map_err(map_err)?;
        while let Some(row) = rows.next().map_err(map_err)? {
            let ns: String = row.get(0).map_err(map_err)?;
            let key: Vec<u8> = row.get(1).map_err(map_err)?;
            let value: Vec<u8> = row.get(2).map_err(map_err)?;
            let version = version_from_sql(row.get(3).map_err(map_err)?)?;
            let id = match ids.get(&ns) {
                Some(id) => *id,
                None => {
                    insert_ns.execute([&ns]).map_err(map_err)?;
                    let id = ns_id_from_sql(conn.last_insert_rowid())?;
                    ids.insert(ns, id);
                    id
                }
            };
            insert
                .execute(params![row_key(id, &key), row_value(version, &value)])
                .map_err(map_err)?;
        }
    }
    conn.execute_batch("DROP TABLE anya_kv; ALTER TABLE anya_kv2 RENAME TO anya_kv;")
        .map_err(map_err)
}

/// The row key of `key` in namespace `id`.
fn row_key(id: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    row_key_into(&mut k, id, key);
    k
}

/// [`row_key`] into a reused buffer.
fn row_key_into(out: &mut Vec<u8>, id: u32, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
}

/// The first row key after every key of namespace `id`.
fn ns_end(id: u32) -> [u8; 4] {
    // Ids stop below u32::MAX (see `ns_id_from_sql`), so this never wraps.
    (id + 1).to_be_bytes()
}

/// The row value of `value` written at `version`.
fn row_value(version: Version, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    row_value_into(&mut v, version, value);
    v
}

/// [`row_value`] into a reused buffer.
fn row_value_into(out: &mut Vec<u8>, version: Version, value: &[u8]) {
    out.clear();
    out.extend_from_slice(&version.get().to_be_bytes());
    out.extend_from_slice(value);
}

/// Splits a row value into its version and value bytes.
fn split_value(v: &[u8]) -> Result<(Version, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt {
        source: format!("a record of {} bytes has no version", v.len()).into(),
    };
    let (head, value) = v.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let version = Version::new(u64::from_be_bytes(*head)).ok_or_else(corrupt)?;
    Ok((version, value))
}

/// A namespace id read from `anya_ns`.
fn ns_id_from_sql(id: i64) -> Result<u32, StoreError> {
    u32::try_from(id)
        .ok()
        .filter(|id| *id < u32::MAX)
        .ok_or_else(|| StoreError::Backend {
            backend: "sqlite",
            source: format!("namespace id {id} is out of range").into(),
        })
}

/// The namespace ids of one group commit. Operations mostly come in runs on one namespace, so
/// the last hit is tried first, before the map (comparing clones of one `Namespace` compares
/// pointers first).
#[derive(Default)]
struct NsMap<'a> {
    last: Option<(&'a Namespace, u32)>,
    map: HashMap<&'a str, u32>,
}

impl<'a> NsMap<'a> {
    fn get(&self, ns: &Namespace) -> Option<u32> {
        match self.last {
            Some((last, id)) if last == ns => Some(id),
            _ => self.map.get(ns.as_str()).copied(),
        }
    }

    fn insert(&mut self, ns: &'a Namespace, id: u32) {
        self.last = Some((ns, id));
        self.map.insert(ns.as_str(), id);
    }
}

/// Upsert of one record. `OR REPLACE` finds the row once; `ON CONFLICT DO UPDATE` looks it up
/// for the conflict and again to write it. Both leave the same row: the table has no other
/// column, index or trigger.
const PUT_SQL: &str = "INSERT OR REPLACE INTO anya_kv (k, v) VALUES (?1, ?2)";
const DELETE_SQL: &str = "DELETE FROM anya_kv WHERE k = ?1";

/// What applying operations reuses from one to the next inside a commit: the prepared
/// statements, taken from the cache once instead of per operation, and the row buffers.
#[derive(Default)]
struct OpWriter<'c> {
    put: Option<rusqlite::CachedStatement<'c>>,
    delete: Option<rusqlite::CachedStatement<'c>>,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Namespace ids known to be committed; ids are never reused, so entries never go stale.
#[derive(Debug, Default)]
struct NsIds(RwLock<HashMap<String, u32>>);

impl NsIds {
    fn get(&self, ns: &Namespace) -> Result<Option<u32>, StoreError> {
        Ok(self
            .0
            .read()
            .map_err(|_| StoreError::Poisoned)?
            .get(ns.as_str())
            .copied())
    }

    fn insert(&self, ns: &str, id: u32) -> Result<(), StoreError> {
        self.0
            .write()
            .map_err(|_| StoreError::Poisoned)?
            .insert(ns.to_owned(), id);
        Ok(())
    }

    /// The id of `ns` as `conn` sees the database; `None` if it has never been written.
    fn lookup(&self, conn: &Connection, ns: &Namespace) -> Result<Option<u32>, StoreError> {
        if let Some(id) = self.get(ns)? {
            return Ok(Some(id));
        }
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM anya_ns WHERE name = ?1")
            .and_then(|mut s| s.query_row([ns.as_str()], |r| r.get(0)).optional())
            .map_err(map_err)?;
        match id {
            Some(id) => {
                let id = ns_id_from_sql(id)?;
                self.insert(ns.as_str(), id)?;
                Ok(Some(id))
            }
            None => Ok(None),
        }
    }
}

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
    ns_ids: Arc<NsIds>,
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
    ns_ids: Arc<NsIds>,
    /// Versions this writer has reserved and not yet handed out: `next..=limit` (empty while
    /// `next > limit`). See [`VERSION_BLOCK`].
    next: u64,
    limit: u64,
}

/// Versions a writer reserves at a time. `anya_meta.last_version` is the highest version any
/// writer may hand out; a writer raises it by a block, inside a write transaction, only when
/// its reserved range runs out. Ranges of two processes on one file are disjoint, so versions
/// stay unique (the only promise, ADR 0002) while most commits leave the meta page alone and
/// write one page fewer. Versions skipped when a process exits are never handed out.
const VERSION_BLOCK: u64 = 1024;

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
        let ns_ids = Arc::new(NsIds::default());
        let store = Self {
            path,
            options,
            writer: GroupCommit::new(SqliteWriter {
                conn,
                ns_ids: Arc::clone(&ns_ids),
                next: 1,
                limit: 0,
            }),
            readers: Mutex::new(Vec::new()),
            ns_ids,
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
        for (from, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tracing::info!(from, to = from + 1, "migrating sqlite store schema");
            step(conn)?;
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

/// What a committed transaction leaves the writer: its version range and new namespaces.
struct Reserved {
    next: u64,
    limit: u64,
    created: Vec<(String, u32)>,
}

impl SqliteWriter {
    /// Runs one statement without parameters, prepared once: the group commit's `BEGIN`,
    /// `COMMIT` and `ROLLBACK` run for every round.
    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(map_err)
    }

    /// The ids of every namespace `batches` touch, creating those never written before. New
    /// ids are returned apart: they exist only if this transaction commits.
    fn namespace_ids<'b>(&self, batches: &'b [WriteBatch]) -> Result<(NsMap<'b>, Vec<(String, u32)>), StoreError> {
        let mut ids = NsMap::default();
        let mut created = Vec::new();
        for op in batches.iter().flat_map(WriteBatch::ops) {
            let ns = op.namespace();
            if ids.get(ns).is_some() {
                continue;
            }
            let id = match self.ns_ids.lookup(&self.conn, ns)? {
                Some(id) => id,
                None => {
                    self.conn
                        .prepare_cached("INSERT INTO anya_ns (name) VALUES (?1)")
                        .and_then(|mut s| s.execute([ns.as_str()]))
                        .map_err(map_err)?;
                    let id = ns_id_from_sql(self.conn.last_insert_rowid())?;
                    created.push((ns.as_str().to_owned(), id));
                    id
                }
            };
            ids.insert(ns, id);
        }
        Ok((ids, created))
    }

    fn apply<'c>(
        &'c self,
        ops: &[Op],
        ids: &NsMap<'_>,
        version: Version,
        w: &mut OpWriter<'c>,
    ) -> Result<BatchOutcome, StoreError> {
        let id = |ns: &Namespace| {
            ids.get(ns).ok_or_else(|| StoreError::Backend {
                backend: "sqlite",
                source: format!("no id was looked up for namespace {ns}").into(),
            })
        };
        for op in ops {
            match op {
                Op::Put { ns, key, value } => {
                    row_key_into(&mut w.key, id(ns)?, key);
                    row_value_into(&mut w.value, version, value);
                    let stmt = match &mut w.put {
                        Some(stmt) => stmt,
                        put => put.insert(self.conn.prepare_cached(PUT_SQL).map_err(map_err)?),
                    };
                    stmt.execute(params![&w.key[..], &w.value[..]]).map_err(map_err)?;
                }
                Op::Delete { ns, key } => {
                    row_key_into(&mut w.key, id(ns)?, key);
                    let stmt = match &mut w.delete {
                        Some(stmt) => stmt,
                        delete => delete.insert(self.conn.prepare_cached(DELETE_SQL).map_err(map_err)?),
                    };
                    stmt.execute([&w.key[..]]).map_err(map_err)?;
                }
                Op::Check { ns, key, expected } => {
                    row_key_into(&mut w.key, id(ns)?, key);
                    let head: Option<Vec<u8>> = self
                        .conn
                        .prepare_cached("SELECT substr(v, 1, 8) FROM anya_kv WHERE k = ?1")
                        .and_then(|mut s| s.query_row([&w.key[..]], |r| r.get(0)).optional())
                        .map_err(map_err)?;
                    let found = head.map(|h| split_value(&h).map(|(v, _)| v)).transpose()?;
                    if found != *expected {
                        return Ok(BatchOutcome::Conflict(StoreError::conflict(ns, key, *expected, found)));
                    }
                }
            }
        }
        Ok(BatchOutcome::Applied)
    }

    /// Applies `batches` inside the open transaction; returns each batch's result and the
    /// namespaces created.
    #[allow(clippy::type_complexity, reason = "one private call site")]
    fn commit_in_tx(
        &mut self,
        batches: &[WriteBatch],
    ) -> Result<(Vec<Result<Version, StoreError>>, Reserved), StoreError> {
        let needed = batches.len() as u64;
        let (first, limit) = if self.next.saturating_add(needed.saturating_sub(1)) <= self.limit {
            (self.next, self.limit)
        } else {
            // Reserve a new range above everything any writer may have handed out.
            let persisted: i64 = self
                .conn
                .prepare_cached("SELECT value FROM anya_meta WHERE name = 'last_version'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(map_err)?;
            let exhausted = || StoreError::Backend {
                backend: "sqlite",
                source: "version counter exhausted".into(),
            };
            let base = u64::try_from(persisted).map_err(|_| exhausted())?;
            let limit = base
                .checked_add(VERSION_BLOCK.max(needed))
                .filter(|l| i64::try_from(*l).is_ok())
                .ok_or_else(exhausted)?;
            self.conn
                .prepare_cached("UPDATE anya_meta SET value = ?1 WHERE name = 'last_version'")
                .and_then(|mut s| s.execute([limit as i64]))
                .map_err(map_err)?;
            (base + 1, limit)
        };
        let mut last = first as i64 - 1;
        let (ids, created) = self.namespace_ids(batches)?;
        let grouped = batches.len() > 1;
        let mut results = Vec::with_capacity(batches.len());
        let mut writer = OpWriter::default();
        for batch in batches {
            // Only a check can fail one batch alone; any other error fails the whole group,
            // so batches without checks need no savepoint of their own.
            let isolate = grouped && batch.has_checks();
            let next = last.checked_add(1).ok_or_else(|| StoreError::Backend {
                backend: "sqlite",
                source: "version counter exhausted".into(),
            })?;
            let version = version_from_sql(next)?;
            if isolate {
                self.exec("SAVEPOINT anya_batch")?;
            }
            match self.apply(batch.ops(), &ids, version, &mut writer)? {
                BatchOutcome::Applied => {
                    if isolate {
                        self.exec("RELEASE anya_batch")?;
                    }
                    last = next;
                    results.push(Ok(version));
                }
                BatchOutcome::Conflict(err) => {
                    if isolate {
                        self.exec("ROLLBACK TO anya_batch")?;
                        self.exec("RELEASE anya_batch")?;
                    }
                    results.push(Err(err));
                }
            }
        }
        Ok((
            results,
            Reserved {
                next: last as u64 + 1,
                limit,
                created,
            },
        ))
    }
}

impl GroupWriter for SqliteWriter {
    fn commit_group(&mut self, batches: Vec<WriteBatch>) -> Result<Vec<Result<Version, StoreError>>, StoreError> {
        self.exec("BEGIN IMMEDIATE")?;
        let (results, reserved) = match self.commit_in_tx(&batches) {
            Ok(done) => done,
            Err(e) => {
                let _ = self.exec("ROLLBACK");
                return Err(e);
            }
        };
        if results.iter().all(Result::is_err) {
            // Nothing to make durable: skip the fsync.
            self.exec("ROLLBACK")?;
            return Ok(results);
        }
        if let Err(e) = self.exec("COMMIT") {
            let _ = self.exec("ROLLBACK");
            return Err(e);
        }
        // Only now, with the transaction durable, do its reservation and namespaces count.
        self.next = reserved.next;
        self.limit = reserved.limit;
        for (ns, id) in reserved.created {
            self.ns_ids.insert(&ns, id)?;
        }
        Ok(results)
    }
}

/// Scan statements by `[limited][exclusive start]`. An unlimited scan has no `LIMIT` clause:
/// SQLite would otherwise count down a limit on every row.
const SCAN_SQL: [[&str; 2]; 2] = [
    [
        "SELECT k, v FROM anya_kv WHERE k >= ?1 AND k < ?2 ORDER BY k",
        "SELECT k, v FROM anya_kv WHERE k > ?1 AND k < ?2 ORDER BY k",
    ],
    [
        "SELECT k, v FROM anya_kv WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3",
        "SELECT k, v FROM anya_kv WHERE k > ?1 AND k < ?2 ORDER BY k LIMIT ?3",
    ],
];

impl KvStore for SqliteStore {
    fn get(&self, ns: &Namespace, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        self.with_reader(|conn| {
            let Some(id) = self.ns_ids.lookup(conn, ns)? else {
                return Ok(None);
            };
            let mut stmt = conn
                .prepare_cached("SELECT v FROM anya_kv WHERE k = ?1")
                .map_err(map_err)?;
            let mut rows = stmt.query([row_key(id, key)]).map_err(map_err)?;
            let Some(row) = rows.next().map_err(map_err)? else {
                return Ok(None);
            };
            let v = row.get_ref(0).and_then(|v| Ok(v.as_blob()?)).map_err(map_err)?;
            let (version, value) = split_value(v)?;
            Ok(Some(Versioned {
                value: value.to_vec(),
                version,
            }))
        })
    }

    fn scan(&self, ns: &Namespace, scan: Scan<'_>) -> Result<Vec<Entry>, StoreError> {
        scan.validate()?;
        if scan.limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, exclusive, upper) = scan.bounds();
        let limited = i64::try_from(scan.limit).ok();
        self.with_reader(|conn| {
            let Some(id) = self.ns_ids.lookup(conn, ns)? else {
                return Ok(Vec::new());
            };
            let lower = row_key(id, &lower);
            let upper = match upper {
                Some(upper) => row_key(id, &upper),
                None => ns_end(id).to_vec(),
            };
            let mut stmt = conn
                .prepare_cached(SCAN_SQL[usize::from(limited.is_some())][usize::from(exclusive)])
                .map_err(map_err)?;
            let mut rows = match limited {
                Some(limit) => stmt.query(params![lower, upper, limit]),
                None => stmt.query(params![lower, upper]),
            }
            .map_err(map_err)?;
            let mut out = Vec::with_capacity(scan.limit.min(1024));
            while let Some(row) = rows.next().map_err(map_err)? {
                let k = row.get_ref(0).and_then(|k| Ok(k.as_blob()?)).map_err(map_err)?;
                let v = row.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(map_err)?;
                let key = k.get(4..).ok_or_else(|| StoreError::Corrupt {
                    source: "a record key has no namespace id".into(),
                })?;
                let (version, value) = split_value(v)?;
                out.push(Entry {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    version,
                });
            }
            Ok(out)
        })
    }

    fn write(&self, batch: WriteBatch) -> Result<Version, StoreError> {
        self.writer.write(batch)
    }
}
