//! The embedded SQLite backend: one database file, WAL mode, versioned
//! migrations, and one writer thread that group-commits every write that
//! arrived while the previous commit was running (so many executions that
//! checkpoint at once share one fsync). Reads go to a separate connection.

use super::clock::{Clock, HostClock, SystemTimeSource, TimeSource};
use super::digest::{checkpoint_digest, result_digest};
use super::write_queue::{ErrorSlot, Receiver, WriteQueue, deliver};
use super::{
    Backend, BackendError, BackendResult, Checkpoint, Checkpoints, Definitions, ListFilter,
    Results, Signal, Signals, StoreErrorKind, StoredResult,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// How many times a connection retries another process's lock (about 1 ms
/// apart, so roughly 15 s) before failing.
const BUSY_RETRIES: i32 = 15_000;

/// Retries a busy database after a short random pause. SQLite's own busy
/// timeout sleeps in growing steps up to 100 ms, which lets one process
/// starve under steady contention from others; short jittered retries keep
/// the lock moving between processes.
fn busy(attempt: i32) -> bool {
    std::thread::sleep(Duration::from_micros(200 + fastrand::u64(0..1600)));
    attempt < BUSY_RETRIES
}

/// Schema versions, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE executions (
    id         TEXT PRIMARY KEY,
    parent     TEXT,
    machine    TEXT NOT NULL,
    status     TEXT NOT NULL,
    state      TEXT NOT NULL,
    step       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX executions_status ON executions(status, created_ms);
CREATE INDEX executions_parent ON executions(parent);
CREATE TABLE results (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    value      TEXT NOT NULL,
    written_ms INTEGER NOT NULL
);
CREATE TABLE signals (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    execution  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    data       TEXT NOT NULL,
    sent_ms    INTEGER NOT NULL
);
CREATE INDEX signals_target ON signals(execution, channel, seq);
"#,
    r#"
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    pool            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    run_at_ms       INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL,
    idempotency_key TEXT,
    worker          TEXT,
    lease_until_ms  INTEGER,
    fence           INTEGER NOT NULL DEFAULT 0,
    result          TEXT,
    error           TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(pool, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_claim ON jobs(pool, status, priority DESC, run_at_ms, id);
CREATE INDEX jobs_worker ON jobs(worker) WHERE worker IS NOT NULL;
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    pool         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_ms   INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE owners (
    execution  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    started    INTEGER NOT NULL,
    token      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE definitions (
    digest     TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE history (
    execution  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    event      TEXT NOT NULL,
    PRIMARY KEY (execution, seq)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE fan_ins (
    key        TEXT PRIMARY KEY,
    remaining  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
CREATE INDEX executions_created ON executions(created_ms, id);
CREATE INDEX executions_machine ON executions(machine, created_ms, id);
DROP INDEX executions_status;
CREATE INDEX executions_status ON executions(status, created_ms, id);
DROP INDEX executions_parent;
CREATE INDEX executions_parent ON executions(parent, created_ms, id);
CREATE TABLE state (
    execution  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (execution, key)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE clock (
    boot_id     TEXT PRIMARY KEY,
    offset_ms   INTEGER NOT NULL,
    anchored_ms INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE executions ADD COLUMN digest TEXT;
ALTER TABLE results ADD COLUMN digest TEXT;
CREATE INDEX jobs_due ON jobs(pool, status, run_at_ms);
"#,
    // Counts by (root or child, machine, status), kept by triggers in the
    // write that changes an execution: what the dashboard shows, read
    // without counting a table of a million rows.
    r#"
CREATE TABLE execution_counts (
    root     INTEGER NOT NULL,
    machine  TEXT NOT NULL,
    status   TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (root, machine, status)
) WITHOUT ROWID;
INSERT INTO execution_counts (root, machine, status, n)
    SELECT parent IS NULL, machine, status, count(*) FROM executions GROUP BY 1, 2, 3;
CREATE TRIGGER execution_counts_insert AFTER INSERT ON executions BEGIN
    INSERT INTO execution_counts (root, machine, status, n)
        VALUES (NEW.parent IS NULL, NEW.machine, NEW.status, 1)
        ON CONFLICT (root, machine, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER execution_counts_delete AFTER DELETE ON executions BEGIN
    UPDATE execution_counts SET n = n - 1
        WHERE root = (OLD.parent IS NULL) AND machine = OLD.machine AND status = OLD.status;
END;
CREATE TRIGGER execution_counts_update AFTER UPDATE OF status, machine, parent ON executions
    WHEN OLD.status IS NOT NEW.status OR OLD.machine IS NOT NEW.machine
      OR (OLD.parent IS NULL) IS NOT (NEW.parent IS NULL)
BEGIN
    UPDATE execution_counts SET n = n - 1
        WHERE root = (OLD.parent IS NULL) AND machine = OLD.machine AND status = OLD.status;
    INSERT INTO execution_counts (root, machine, status, n)
        VALUES (NEW.parent IS NULL, NEW.machine, NEW.status, 1)
        ON CONFLICT (root, machine, status) DO UPDATE SET n = n + 1;
END;
"#,
];

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss.
    Full,
    /// `synchronous=NORMAL`: a commit survives a crash of the process, not of
    /// the machine.
    Normal,
}

/// A write the job pool and worker code composes itself; its result travels
/// back as JSON.
pub(super) type Custom = Box<dyn FnOnce(&Connection) -> BackendResult<Value> + Send>;

pub(super) enum Op {
    Save(Checkpoint),
    WriteResult(String, StoredResult),
    /// Execution, channel, data, sent at (ms).
    SendSignal(String, String, String, u64),
    TakeSignal(String, String),
    DeleteResult(String),
    /// Digest, body, stored at (ms).
    PutDefinition(String, String, u64),
    /// Execution, its events in order, how many to keep.
    AppendHistory(String, Vec<super::history::NewEvent>, usize),
    /// Counter key, the children it counts, the parent's fence.
    OpenFanIn(String, Vec<String>, Option<super::Fence>),
    Custom(Custom),
}

/// Where the outcome of a write goes.
type Reply = super::write_queue::Reply<Option<Value>>;

/// A [`Backend`] in one SQLite file.
pub struct SqliteBackend {
    path: PathBuf,
    /// In front of the writer thread (which owns the writing connection).
    queue: WriteQueue<Op, Option<Value>>,
    reader: Mutex<Connection>,
    pub(super) clock: Arc<dyn Clock>,
}

/// The kind of an SQLite failure.
fn classify(e: &rusqlite::Error) -> StoreErrorKind {
    use rusqlite::ffi::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreErrorKind::Busy,
        Some(C::DiskFull | C::TooBig) => StoreErrorKind::Full,
        Some(C::DatabaseCorrupt | C::NotADatabase) => StoreErrorKind::Corrupt,
        Some(C::ReadOnly) => StoreErrorKind::ReadOnly,
        Some(_) => StoreErrorKind::Io,
        // A stored value that does not read back as what was written.
        None if matches!(
            e,
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..)
        ) =>
        {
            StoreErrorKind::Corrupt
        }
        None => StoreErrorKind::Io,
    }
}

/// Statuses are stored as their spelling; one that does not read back is a
/// conversion failure (so: `corrupt`).
macro_rules! status_as_text {
    ($($t:ty),*) => {$(
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = v.as_str()?;
                <$t>::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown status `{text}` (expected one of {})", <$t>::spellings()).into(),
                    )
                })
            }
        }
    )*};
}
status_as_text!(
    super::ExecutionStatus,
    super::JobStatus,
    super::WorkerStatus
);

/// An SQLite failure as a store error of its kind.
pub(super) fn sql_error(e: rusqlite::Error) -> BackendError {
    let kind = classify(&e);
    let mut message = e.to_string();
    match kind {
        StoreErrorKind::Full => message.push_str(" (free space; nothing of this write was stored)"),
        StoreErrorKind::Corrupt => message.push_str(
            " (corrupt: the database is damaged or a stored value does not read back as written; check it with `sqlite3 <file> 'PRAGMA integrity_check'` and restore from a backup)",
        ),
        StoreErrorKind::ReadOnly => message.push_str(
            " (the database file, its folder or its -wal/-shm files are read-only for this user; nothing of this write was stored)",
        ),
        StoreErrorKind::Busy => message.push_str(
            " (another process held the write lock longer than flowhost waits, about 15 s; nothing of this write was stored)",
        ),
        _ => {}
    }
    BackendError::of(kind, message)
}

pub(super) fn db_error(path: &Path) -> impl Fn(rusqlite::Error) -> BackendError + '_ {
    move |e| at_path(sql_error(e), path)
}

/// A store error, placed at the database's path. SQLite reports some writes
/// on a full disk (creating the WAL index, growing the WAL) as a plain I/O
/// error: when the database's filesystem has no space left, it is `full`.
fn at_path(e: BackendError, path: &Path) -> BackendError {
    let e = if e.kind == StoreErrorKind::Io && no_space_left(path) {
        BackendError::of(
            StoreErrorKind::Full,
            format!(
                "{} (the disk is full: free space; nothing of this write was stored)",
                e.message
            ),
        )
    } else {
        e
    };
    e.at(path.display())
}

/// Whether the filesystem that holds `path` has (next to) no space left.
fn no_space_left(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed struct statvfs fills in.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut fs) } != 0 {
        return false;
    }
    (fs.f_bavail as u64).saturating_mul(fs.f_frsize as u64) < 64 * 1024
}

fn open_connection(path: &Path, durability: Durability) -> BackendResult<Connection> {
    let err = db_error(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_handler(Some(busy)).map_err(&err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{}: cannot switch to WAL mode (got `{mode}`)",
                path.display()
            ),
        ));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
    ))
    .map_err(&err)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> BackendResult<()> {
    let err = db_error(path);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&err)?;
    let version: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(&err)? as usize;
    if version > MIGRATIONS.len() {
        return Err(BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{}: the database is at schema version {version}, newer than this flowhost knows ({}); upgrade flowhost",
                path.display(),
                MIGRATIONS.len()
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        if i > version {
            crate::crash::point("store.migration");
        }
        tx.execute_batch(sql).map_err(&err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(&err)?;
    }
    tx.commit().map_err(&err)
}

/// The store's timeline for this boot ([`HostClock`]): the offset from the
/// boot clock that the first process to open the store after boot fixed,
/// so every process on the machine reads the same time and no step of the
/// wall clock moves it. A new boot anchors at the wall clock, but never
/// before the latest instant the store recorded (a clock set back across a
/// reboot would keep dead workers' heartbeats in the future).
fn anchor(
    conn: &mut Connection,
    path: &Path,
    source: Arc<dyn TimeSource>,
) -> BackendResult<HostClock> {
    let Some(boot) = source.boot_id() else {
        // No boot to anchor to: this process's own timeline.
        let now = source.wall_ms();
        return Ok(HostClock::anchored_at(source, now));
    };
    let err = db_error(path);
    let known = |conn: &Connection| -> BackendResult<Option<i64>> {
        conn.query_row(
            "SELECT offset_ms FROM clock WHERE boot_id = ?1",
            params![boot],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)
    };
    // Anchored already (the usual case): a read, no write lock.
    if let Some(offset) = known(conn)? {
        return Ok(HostClock::with_offset(source, offset));
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&err)?;
    let offset = match known(&tx)? {
        Some(offset) => offset,
        None => {
            let floor: i64 = tx
                .query_row(
                    "SELECT max(
                        coalesce((SELECT max(anchored_ms) FROM clock), 0),
                        coalesce((SELECT max(heartbeat_ms) FROM workers), 0),
                        coalesce((SELECT max(created_ms) FROM executions), 0),
                        coalesce((SELECT created_ms FROM jobs ORDER BY id DESC LIMIT 1), 0))",
                    [],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            let now = (source.wall_ms() as i64).max(floor);
            let offset = now - source.boot_ms() as i64;
            tx.execute(
                "INSERT INTO clock (boot_id, offset_ms, anchored_ms) VALUES (?1, ?2, ?3)",
                params![boot, offset, now],
            )
            .map_err(&err)?;
            offset
        }
    };
    tx.commit().map_err(&err)?;
    Ok(HostClock::with_offset(source, offset))
}

impl SqliteBackend {
    /// Opens an existing database (for commands that only read, or act on
    /// what is already stored): a missing file is an error, never a new
    /// empty database.
    pub fn open_existing(path: &Path, durability: Durability) -> BackendResult<SqliteBackend> {
        if !path.exists() {
            return Err(BackendError::of(
                StoreErrorKind::NotFound,
                format!(
                    "{}: no such database (check --db or FLOWHOST_DB; commands that only read never create one)",
                    path.display()
                ),
            ));
        }
        Self::open(path, durability)
    }

    /// Opens (creating if needed) the database at `path`. The folder must exist.
    pub fn open(path: &Path, durability: Durability) -> BackendResult<SqliteBackend> {
        Self::open_with_time(path, durability, Arc::new(SystemTimeSource))
    }

    /// [`Self::open`], reading time from `source` (tests move it by hand).
    pub fn open_with_time(
        path: &Path,
        durability: Durability,
        source: Arc<dyn TimeSource>,
    ) -> BackendResult<SqliteBackend> {
        if path.is_dir() {
            return Err(BackendError::of(
                StoreErrorKind::Incompatible,
                format!(
                    "{} is a directory, not a database file (try {})",
                    path.display(),
                    path.join("flowhost.db").display()
                ),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(BackendError::of(
                StoreErrorKind::NotFound,
                format!(
                    "{}: the folder {} does not exist",
                    path.display(),
                    dir.display()
                ),
            ));
        }
        let mut writer_conn = open_connection(path, durability)?;
        migrate(&mut writer_conn, path)?;
        let clock = anchor(&mut writer_conn, path, source)?;
        let reader = open_connection(path, durability)?;
        let writer_path = path.to_path_buf();
        let queue = WriteQueue::start(
            "flowhost-sqlite-writer",
            path.display().to_string(),
            move |rx, slot| {
                let file = FileIdentity::of(&writer_path);
                write_loop(writer_conn, &writer_path, file, rx, &slot)
            },
        )?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            queue,
            reader: Mutex::new(reader),
            clock: Arc::new(clock),
        })
    }

    /// Decides time by `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write; with no reply it is not waited for (a failure is
    /// reported by every later write).
    pub(super) fn send(&self, op: Op, reply: Reply) -> BackendResult<()> {
        self.queue.send(op, reply)
    }

    /// Queues a write that needs no commit of its own: it is applied, in
    /// order, with the next write (or when the store closes).
    pub(super) fn send_lazy(&self, op: Op) {
        self.queue.send_lazy(op)
    }

    pub(super) async fn write(&self, op: Op) -> BackendResult<Option<Value>> {
        self.queue.write(op).await
    }

    pub(super) fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which file a path names (device and inode), to notice the database
/// deleted, moved away or replaced under an open store: writes would go to
/// a file nobody else can find any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity(u64, u64);

impl FileIdentity {
    fn of(path: &Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .ok()
            .map(|m| FileIdentity(m.dev(), m.ino()))
    }
}

/// Refuses a batch when the database file is no longer at its path.
fn check_file(path: &Path, opened: Option<FileIdentity>) -> BackendResult<()> {
    let now = FileIdentity::of(path);
    if opened.is_some() && now != opened {
        let what = if now.is_none() {
            "was deleted or moved away"
        } else {
            "was replaced by another file"
        };
        return Err(BackendError::of(
            StoreErrorKind::NotFound,
            format!(
                "{}: the database file {what} while this process had it open; nothing of this write was stored (put the file back, or restart on the new one)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Applies batches of writes, one transaction per batch, until every sender is gone.
fn write_loop(
    mut conn: Connection,
    path: &Path,
    file: Option<FileIdentity>,
    mut rx: Receiver<Op, Option<Value>>,
    deferred_error: &ErrorSlot,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let err = db_error(path);
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
        let outcome = (|| -> BackendResult<Vec<BackendResult<Option<Value>>>> {
            check_file(path, file)?;
            let mut tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&err)?;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                // Each write in its own savepoint: one that fails leaves no trace.
                let sp = tx.savepoint().map_err(&err)?;
                let result = apply(&sp, op, path);
                match result {
                    Ok(_) => sp.commit().map_err(&err)?,
                    // Some failures (a full disk) make SQLite roll back the
                    // whole transaction: the batch is lost, and every write
                    // in it is told why.
                    Err(e) if sp.is_autocommit() => return Err(e),
                    Err(_) => {}
                }
                results.push(result);
            }
            crate::crash::point("store.commit.before");
            tx.commit().map_err(&err)?;
            crate::crash::point("store.commit.after");
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    deliver(deferred_error, reply, result);
                }
            }
            Err(e) => {
                for reply in replies {
                    deliver(deferred_error, reply, Err(e.clone()));
                }
            }
        }
    }
}

fn apply(tx: &Connection, op: Op, path: &Path) -> BackendResult<Option<Value>> {
    let err = db_error(path);
    match op {
        Op::Save(c) => {
            if stale(tx, c.fence.as_ref()).map_err(&err)? {
                return Ok(Some(Value::String(REFUSED.into())));
            }
            let digest = checkpoint_digest(
                &c.id,
                c.status.as_str(),
                &c.state,
                c.step as i64,
                c.updated_ms as i64,
                &c.record,
            );
            tx.prepare_cached(
                "INSERT INTO executions (id, parent, machine, status, state, step, created_ms, updated_ms, record, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET status = excluded.status, state = excluded.state,
                   step = excluded.step, updated_ms = excluded.updated_ms, record = excluded.record,
                   digest = excluded.digest",
            )
            .and_then(|mut s| {
                s.execute(params![
                    c.id,
                    c.parent,
                    c.machine,
                    c.status,
                    c.state,
                    c.step as i64,
                    c.created_ms as i64,
                    c.updated_ms as i64,
                    c.record,
                    digest
                ])
            })
            .map_err(&err)?;
            if let Some(seq) = c.consumes_signal {
                tx.prepare_cached("DELETE FROM signals WHERE seq = ?1 AND execution = ?2")
                    .and_then(|mut s| s.execute(params![seq as i64, c.id]))
                    .map_err(&err)?;
            }
            for (pool, job) in &c.enqueue {
                super::sqlite_pools::insert_job(tx, c.updated_ms, pool, job).map_err(&err)?;
            }
            if let Some(r) = c.result {
                put_result(tx, &c.id, r).map_err(&err)?;
            }
            Ok(None)
        }
        Op::WriteResult(id, r) => {
            if stale(tx, r.fence.as_ref()).map_err(&err)? {
                return Ok(Some(Value::String(REFUSED.into())));
            }
            put_result(tx, &id, r).map_err(&err)?;
            Ok(None)
        }
        Op::OpenFanIn(key, children, fence) => {
            if stale(tx, fence.as_ref()).map_err(&err)? {
                return Ok(Some(Value::String(REFUSED.into())));
            }
            let open: Option<i64> = tx
                .prepare_cached("SELECT remaining FROM fan_ins WHERE key = ?1")
                .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
                .map_err(&err)?;
            let remaining = match open {
                Some(n) => n,
                None => {
                    let mut finished = 0i64;
                    let mut has = tx
                        .prepare_cached("SELECT 1 FROM results WHERE id = ?1")
                        .map_err(&err)?;
                    for child in &children {
                        if has.exists(params![child]).map_err(&err)? {
                            finished += 1;
                        }
                    }
                    let n = children.len() as i64 - finished;
                    tx.prepare_cached("INSERT INTO fan_ins (key, remaining) VALUES (?1, ?2)")
                        .and_then(|mut s| s.execute(params![key, n]))
                        .map_err(&err)?;
                    n
                }
            };
            Ok(Some(Value::from(remaining.max(0))))
        }
        Op::DeleteResult(id) => {
            tx.prepare_cached("DELETE FROM results WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(&err)?;
            Ok(None)
        }
        Op::SendSignal(id, channel, data, sent_ms) => {
            tx.prepare_cached(
                "INSERT INTO signals (execution, channel, data, sent_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![id, channel, data, sent_ms as i64]))
            .map_err(&err)?;
            Ok(None)
        }
        Op::PutDefinition(digest, body, at_ms) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO definitions (digest, body, created_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![digest, body, at_ms as i64]))
            .map_err(&err)?;
            Ok(None)
        }
        Op::AppendHistory(execution, events, keep) => {
            super::history::append(tx, &execution, &events, keep).map_err(&err)?;
            Ok(None)
        }
        Op::Custom(f) => f(tx).map(Some).map_err(|e| at_path(e, path)),
        Op::TakeSignal(id, channel) => {
            let row: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, data FROM signals WHERE execution = ?1 AND channel = ?2 ORDER BY seq LIMIT 1",
                    params![id, channel],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(&err)?;
            let Some((seq, data)) = row else {
                return Ok(None);
            };
            tx.execute("DELETE FROM signals WHERE seq = ?1", params![seq])
                .map_err(&err)?;
            signal_data(path, seq, &data).map(Some)
        }
    }
}

/// Stores a result (its fence already checked); the first result of a
/// fan-out child counts its fan-in down.
fn put_result(tx: &Connection, id: &str, r: StoredResult) -> rusqlite::Result<()> {
    let first = tx
        .prepare_cached("SELECT 1 FROM results WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_none();
    let value = r.value.to_string();
    let digest = result_digest(id, r.status.as_str(), &value, r.written_ms as i64);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO results (id, status, value, written_ms, digest) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, r.status, value, r.written_ms as i64, digest])?;
    crate::crash::point("store.result.write");
    if let Some(fan_in) = r.counts_toward.filter(|_| first) {
        count_down(tx, &fan_in, r.written_ms)?;
    }
    Ok(())
}

/// A child's first result counts its fan-in down; at zero (or when the
/// child decides it) the parent's wake-up job is pushed, and the next
/// child's job if it names one, in the same transaction.
fn count_down(tx: &Connection, fan_in: &super::FanIn, now_ms: u64) -> rusqlite::Result<()> {
    let remaining: Option<i64> = tx
        .prepare_cached(
            "UPDATE fan_ins SET remaining = remaining - 1 WHERE key = ?1 AND remaining > 0 RETURNING remaining",
        )?
        .query_row(params![fan_in.key], |r| r.get(0))
        .optional()?;
    // No row: the parent has not opened it yet, and counts this result when it does.
    if fan_in.wake_now || remaining == Some(0) {
        super::sqlite_pools::insert_job(tx, now_ms, &fan_in.wake_pool, &fan_in.wake)?;
    }
    if let Some(next) = &fan_in.next {
        super::sqlite_pools::insert_job(tx, now_ms, &fan_in.wake_pool, next)?;
    }
    Ok(())
}

/// What a write refused by its fence answers (it changes nothing, and the
/// rest of its transaction goes on).
const REFUSED: &str = "refused: stale fence";

/// Whether a fenced write's lease token is no longer the lease's.
fn stale(tx: &Connection, fence: Option<&super::Fence>) -> rusqlite::Result<bool> {
    let Some(fence) = fence else {
        return Ok(false);
    };
    let token: Option<i64> = tx
        .prepare_cached("SELECT token FROM owners WHERE execution = ?1")?
        .query_row(params![fence.root], |r| r.get(0))
        .optional()?;
    Ok(token != Some(fence.token as i64))
}

/// A fenced write's answer as the caller sees it.
fn fenced(answer: Option<Value>, fence: Option<&super::Fence>) -> BackendResult<()> {
    match (answer, fence) {
        (Some(Value::String(s)), Some(f)) if s == REFUSED => Err(f.refused()),
        _ => Ok(()),
    }
}

/// A stored signal's data.
fn signal_data(path: &Path, seq: i64, text: &str) -> BackendResult<Value> {
    serde_json::from_str(text).map_err(|e| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("{}: signal {seq} is not JSON: {e}", path.display()),
        )
    })
}

fn row_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    let c = Checkpoint {
        id: r.get(0)?,
        parent: r.get(1)?,
        machine: r.get(2)?,
        status: r.get(3)?,
        state: r.get(4)?,
        step: r.get::<_, i64>(5)? as u64,
        created_ms: r.get::<_, i64>(6)? as u64,
        updated_ms: r.get::<_, i64>(7)? as u64,
        record: r.get(8)?,
        consumes_signal: None,
        enqueue: Vec::new(),
        result: None,
        fence: None,
    };
    let digest = checkpoint_digest(
        &c.id,
        c.status.as_str(),
        &c.state,
        r.get(5)?,
        r.get(7)?,
        &c.record,
    );
    verify(r, 9, &digest, || {
        format!("the checkpoint of execution {}", c.id)
    })?;
    Ok(c)
}

const CHECKPOINT_COLUMNS: &str =
    "id, parent, machine, status, state, step, created_ms, updated_ms, record, digest";

/// Refuses a row whose stored digest (column `at`) is not `expected`; rows
/// written before digests were kept have none and pass.
fn verify(
    r: &rusqlite::Row<'_>,
    at: usize,
    expected: &str,
    what: impl FnOnce() -> String,
) -> rusqlite::Result<()> {
    match r.get::<_, Option<String>>(at)? {
        Some(stored) if stored != expected => Err(rusqlite::Error::FromSqlConversionFailure(
            at,
            rusqlite::types::Type::Text,
            format!(
                "{} does not match its checksum: it changed on disk since it was written",
                what()
            )
            .into(),
        )),
        _ => Ok(()),
    }
}

/// A prefix matching fewer executions than this is listed by the primary
/// key's range (then sorted); one matching more, newest first on the
/// creation index (matches are common enough there to fill a page soon).
const PREFIX_BY_KEY: i64 = 2000;

/// The statement that lists executions, and its values. Only the filters
/// given are in it (one cached statement per combination), so SQLite plans
/// each on its index — by status, machine, parent or creation time —
/// instead of one generic plan that walks them all. With `by_key`, the
/// other filters' columns are written `+column` (which no index serves), so
/// the id prefix's range of the primary key is the plan.
fn list_statement(filter: &ListFilter, by_key: bool) -> (String, Vec<rusqlite::types::Value>) {
    let col = |name: &str| match by_key {
        true => format!("+{name}"),
        false => name.to_string(),
    };
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut param = |v: rusqlite::types::Value| {
        values.push(v);
        format!("?{}", values.len())
    };
    if let Some(status) = filter.status {
        let v = param(status.as_str().to_string().into());
        conditions.push(format!("{} = {v}", col("status")));
    }
    if let Some(machine) = &filter.machine {
        let v = param(machine.clone().into());
        conditions.push(format!("{} = {v}", col("machine")));
    }
    if let Some(parent) = &filter.parent {
        let v = param(parent.clone().into());
        conditions.push(format!("{} = {v}", col("parent")));
    }
    if let Some((ms, id)) = &filter.after {
        let (ms, id) = (param((*ms as i64).into()), param(id.clone().into()));
        conditions.push(format!(
            "({}, {}) < ({ms}, {id})",
            col("created_ms"),
            col("id")
        ));
    }
    if let Some(from) = filter.created_from {
        let v = param((from.min(i64::MAX as u64) as i64).into());
        conditions.push(format!("{} >= {v}", col("created_ms")));
    }
    if let Some(before) = filter.created_before {
        let v = param((before.min(i64::MAX as u64) as i64).into());
        conditions.push(format!("{} < {v}", col("created_ms")));
    }
    if let Some(prefix) = filter.id_prefix.as_ref().filter(|p| !p.is_empty()) {
        // A range of the primary key: every id that starts with the prefix
        // sorts from it to it followed by the largest character.
        let (from, to) = prefix_range(prefix);
        let (from, to) = (param(from.into()), param(to.into()));
        conditions.push(format!("id >= {from} AND id < {to}"));
    }
    let limit = param(filter.limit.map_or(-1, |l| l as i64).into());
    if filter.roots_only {
        conditions.push(format!("{} IS NULL", col("parent")));
    }
    let filters = match conditions.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", conditions.join(" AND ")),
    };
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM executions {filters}
         ORDER BY created_ms DESC, id DESC LIMIT {limit}"
    );
    (sql, values)
}

fn prefix_range(prefix: &str) -> (String, String) {
    (prefix.to_string(), format!("{prefix}\u{10FFFF}"))
}

impl SqliteBackend {
    /// The list statement for a filter on this store: by the primary key
    /// when its id prefix matches few executions (counted up to
    /// [`PREFIX_BY_KEY`], a bounded read of the key).
    fn list_plan(
        &self,
        conn: &Connection,
        filter: &ListFilter,
    ) -> BackendResult<(String, Vec<rusqlite::types::Value>)> {
        let by_key = match filter.id_prefix.as_ref().filter(|p| !p.is_empty()) {
            Some(prefix) => {
                let (from, to) = prefix_range(prefix);
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM (SELECT 1 FROM executions WHERE id >= ?1 AND id < ?2 LIMIT ?3)",
                    )
                    .and_then(|mut s| s.query_row(params![from, to, PREFIX_BY_KEY], |r| r.get(0)))
                    .map_err(db_error(&self.path))?;
                n < PREFIX_BY_KEY
            }
            None => false,
        };
        Ok(list_statement(filter, by_key))
    }
}

impl SqliteBackend {
    /// How SQLite runs the list a filter asks for (`EXPLAIN QUERY PLAN`,
    /// one line per step): what the dashboard benchmark prints.
    pub fn explain_list(&self, filter: &ListFilter) -> BackendResult<Vec<String>> {
        let conn = self.reader();
        let (sql, values) = self.list_plan(&conn, filter)?;
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(db_error(&self.path))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .map_err(db_error(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(db_error(&self.path))
    }
}

#[async_trait::async_trait]
impl Checkpoints for SqliteBackend {
    async fn save(&self, checkpoint: Checkpoint) -> BackendResult<()> {
        let fence = checkpoint.fence.clone();
        fenced(self.write(Op::Save(checkpoint)).await?, fence.as_ref())
    }

    async fn save_deferred(&self, checkpoint: Checkpoint) -> BackendResult<()> {
        self.send(Op::Save(checkpoint), None)
    }

    async fn load(&self, id: &str) -> BackendResult<Option<Checkpoint>> {
        self.reader()
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM executions WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![id], row_checkpoint).optional())
            .map_err(db_error(&self.path))
    }

    async fn statuses(
        &self,
        ids: &[String],
    ) -> BackendResult<HashMap<String, super::ExecutionStatus>> {
        // In chunks below SQLite's bound on parameters per statement.
        const CHUNK: usize = 500;
        let conn = self.reader();
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT id, status FROM executions WHERE id IN ({marks})");
            let mut stmt = conn.prepare_cached(&sql).map_err(db_error(&self.path))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk), |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?))
                })
                .map_err(db_error(&self.path))?;
            for row in rows {
                let (id, status) = row.map_err(db_error(&self.path))?;
                found.insert(id, status);
            }
        }
        Ok(found)
    }

    async fn list(&self, filter: &ListFilter) -> BackendResult<Vec<Checkpoint>> {
        let conn = self.reader();
        let (sql, values) = self.list_plan(&conn, filter)?;
        let mut stmt = conn.prepare_cached(&sql).map_err(db_error(&self.path))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), row_checkpoint)
            .map_err(db_error(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(db_error(&self.path))
    }

    async fn counts(&self) -> BackendResult<Vec<super::ExecutionCount>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT root, machine, status, n FROM execution_counts WHERE n <> 0
                 ORDER BY root DESC, machine, status",
            )
            .map_err(db_error(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, bool>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, super::ExecutionStatus>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(db_error(&self.path))?;
        let mut counts = Vec::new();
        for row in rows {
            let (root, machine, status, n) = row.map_err(db_error(&self.path))?;
            counts.push(super::ExecutionCount {
                root,
                machine,
                status,
                count: n.max(0) as u64,
            });
        }
        Ok(counts)
    }
}

#[async_trait::async_trait]
impl Results for SqliteBackend {
    async fn write_result(&self, id: &str, result: StoredResult) -> BackendResult<()> {
        let fence = result.fence.clone();
        fenced(
            self.write(Op::WriteResult(id.to_string(), result)).await?,
            fence.as_ref(),
        )
    }

    async fn delete_result(&self, id: &str) -> BackendResult<()> {
        self.write(Op::DeleteResult(id.to_string()))
            .await
            .map(|_| ())
    }

    async fn open_fan_in(
        &self,
        key: &str,
        children: Vec<String>,
        fence: Option<super::Fence>,
    ) -> BackendResult<u64> {
        let answer = self
            .write(Op::OpenFanIn(key.to_string(), children, fence.clone()))
            .await?;
        if let Some(n) = answer.as_ref().and_then(Value::as_u64) {
            return Ok(n);
        }
        fenced(answer.clone(), fence.as_ref())?;
        Err(BackendError::new(format!(
            "internal: opening fan-in {key} answered {answer:?}"
        )))
    }

    async fn read_result(&self, id: &str) -> BackendResult<Option<StoredResult>> {
        let row: Option<(super::ExecutionStatus, String, i64)> = self
            .reader()
            .prepare_cached("SELECT status, value, written_ms, digest FROM results WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row(params![id], |r| {
                    let (status, value, written): (super::ExecutionStatus, String, i64) =
                        (r.get(0)?, r.get(1)?, r.get(2)?);
                    let digest = result_digest(id, status.as_str(), &value, written);
                    verify(r, 3, &digest, || format!("the result of execution {id}"))?;
                    Ok((status, value, written))
                })
                .optional()
            })
            .map_err(db_error(&self.path))?;
        row.map(|(status, value, written)| {
            let value = serde_json::from_str(&value).map_err(|e| {
                BackendError::new(format!(
                    "{}: result of {id} is not JSON: {e}",
                    self.path.display()
                ))
            })?;
            Ok(StoredResult {
                fence: None,
                status,
                value,
                written_ms: written as u64,
                counts_toward: None,
            })
        })
        .transpose()
    }
}

#[async_trait::async_trait]
impl Signals for SqliteBackend {
    async fn send_signal(&self, id: &str, channel: &str, data: Value) -> BackendResult<()> {
        self.write(Op::SendSignal(
            id.to_string(),
            channel.to_string(),
            data.to_string(),
            self.clock.now_ms(),
        ))
        .await
        .map(|_| ())
    }

    async fn take_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Value>> {
        self.write(Op::TakeSignal(id.to_string(), channel.to_string()))
            .await
    }

    async fn peek_signal(&self, id: &str, channel: &str) -> BackendResult<Option<Signal>> {
        let row: Option<(i64, String)> = self
            .reader()
            .prepare_cached(
                "SELECT seq, data FROM signals WHERE execution = ?1 AND channel = ?2 ORDER BY seq LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![id, channel], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db_error(&self.path))?;
        row.map(|(seq, data)| {
            Ok(Signal {
                seq: seq as u64,
                data: signal_data(&self.path, seq, &data)?,
            })
        })
        .transpose()
    }
}

#[async_trait::async_trait]
impl Definitions for SqliteBackend {
    async fn put_definition(&self, digest: &str, body: &str) -> BackendResult<()> {
        let at = self.clock.now_ms();
        self.send(
            Op::PutDefinition(digest.to_string(), body.to_string(), at),
            None,
        )
    }

    async fn get_definition(&self, digest: &str) -> BackendResult<Option<String>> {
        self.reader()
            .prepare_cached("SELECT body FROM definitions WHERE digest = ?1")
            .and_then(|mut s| s.query_row(params![digest], |r| r.get(0)).optional())
            .map_err(db_error(&self.path))
    }
}

impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}
