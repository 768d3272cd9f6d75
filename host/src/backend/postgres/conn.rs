//! Reaching a PostgreSQL server: the URL (checked, shown without its
//! password), connecting, what a failure is (its `StoreErrorKind`, whether
//! the connection is gone), the schema migrations and the clock anchored to
//! the server's.
//!
//! Imports the backend's types and `ops` (the migrations).

use super::super::clock::{HostClock, SystemTimeSource};
use super::super::{BackendError, BackendResult, StoreErrorKind};
use super::ops::MIGRATIONS;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls};

/// Serialises schema migrations across hosts (an advisory lock's key).
const MIGRATION_LOCK: i64 = 0x666c_6f77_686f_7374;

/// Whether a URL names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The URL with its password hidden.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

pub(super) fn parse(url: &str) -> BackendResult<tokio_postgres::Config> {
    let shown = redact(url);
    if !is_postgres_url(url) {
        return Err(BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{shown}: not a PostgreSQL URL (expected postgres://user:password@host:port/database)"
            ),
        ));
    }
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        BackendError::of(
            StoreErrorKind::Incompatible,
            format!("{shown}: not a usable PostgreSQL URL: {e} (expected postgres://user:password@host:port/database)"),
        )
    })?;
    if config.get_hosts().is_empty() {
        return Err(BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{shown}: the URL names no host (expected postgres://user:password@host:port/database)"
            ),
        ));
    }
    if config.get_user().is_none() {
        return Err(BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{shown}: the URL names no user (expected postgres://user:password@host:port/database)"
            ),
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .application_name("flowhost")
        .keepalives_idle(Duration::from_secs(10));
    Ok(config)
}

/// `postgres://user@host:port/database`, as messages show it.
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Whether an error means the connection is gone (the server restarted, the
/// network dropped) rather than a statement refused.
pub(super) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
    }
}

/// What the server's refusals mean here: their kind, and what to do.
const REFUSALS: &[(&[SqlState], StoreErrorKind, &str)] = &[
    (
        &[
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        ],
        StoreErrorKind::Io,
        " (check the user and password in the URL)",
    ),
    (
        &[SqlState::INVALID_CATALOG_NAME],
        StoreErrorKind::NotFound,
        " (create it first, e.g. `createdb <name>`)",
    ),
    (
        &[SqlState::DISK_FULL],
        StoreErrorKind::Full,
        " (free space on the database server; nothing of this write was stored)",
    ),
    (
        &[
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ],
        StoreErrorKind::ReadOnly,
        " (this user cannot write there, or the server is a read-only standby; nothing of this write was stored)",
    ),
    (
        &[SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED],
        StoreErrorKind::Corrupt,
        " (the server reports damaged data: restore from a backup)",
    ),
    (
        &[
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ],
        StoreErrorKind::Busy,
        " (other hosts held the rows this write needs; nothing of this write was stored)",
    ),
    (
        &[
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::UNTRANSLATABLE_CHARACTER,
        ],
        StoreErrorKind::Incompatible,
        " (PostgreSQL stores no NUL character in text: a name or key with one is refused; nothing of this write was stored)",
    ),
    (
        &[SqlState::UNDEFINED_TABLE, SqlState::UNDEFINED_COLUMN],
        StoreErrorKind::Incompatible,
        " (the flowhost tables are missing or not what this flowhost made)",
    ),
];

/// A PostgreSQL failure as a store error of its kind, placed at `target`.
pub(super) fn pg_error(target: &str, e: &tokio_postgres::Error) -> BackendError {
    let Some(db) = e.as_db_error() else {
        let cause = std::error::Error::source(e)
            .map(|s| format!("{e}: {s}"))
            .unwrap_or_else(|| e.to_string());
        return BackendError::new(format!(
            "{target}: cannot reach the database: {cause} (is the server running and reachable?)"
        ));
    };
    let (kind, advice) = REFUSALS
        .iter()
        .find(|(codes, _, _)| codes.contains(db.code()))
        .map_or((StoreErrorKind::Io, ""), |(_, kind, advice)| {
            (*kind, *advice)
        });
    let mut message = format!("{target}: {}", db.message());
    if let Some(detail) = db.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    message.push_str(advice);
    BackendError::of(kind, message)
}

/// Connects, driving the connection on the current runtime.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    target: &str,
) -> BackendResult<Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(target, &e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Brings the schema up to date, refusing a newer one. Without `create`, a
/// database that holds no flowhost tables yet is an error and stays as it is.
pub(super) async fn migrate(client: &mut Client, target: &str, create: bool) -> BackendResult<()> {
    let err = |e: tokio_postgres::Error| pg_error(target, &e);
    let newer = |version: i64| {
        BackendError::of(
            StoreErrorKind::Incompatible,
            format!(
                "{target}: the database is at schema version {version}, newer than this flowhost knows ({}); upgrade flowhost",
                MIGRATIONS.len()
            ),
        )
    };
    let exists: bool = client
        .query_one("SELECT to_regclass('flowhost_schema') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .get(0);
    if exists {
        // Up to date (the usual case): a read, no lock.
        if schema_version(&*client).await.map_err(err)? == MIGRATIONS.len() as i64 {
            return Ok(());
        }
    } else if !create {
        return Err(BackendError::of(
            StoreErrorKind::NotFound,
            format!(
                "{target}: no flowhost data in this database (commands that only read never create it; submit or push work first)"
            ),
        ));
    }
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS flowhost_schema (version INTEGER NOT NULL)")
        .await
        .map_err(err)?;
    let v = schema_version(&tx).await.map_err(err)?;
    if v > MIGRATIONS.len() as i64 {
        return Err(newer(v));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
        if i > v as usize {
            crate::crash::point("store.migration");
        }
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO flowhost_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// How many migrations ran.
async fn schema_version(c: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT coalesce(max(version), 0)::BIGINT FROM flowhost_schema",
        &[],
    )
    .await?
    .get(0))
}

/// This process's timeline, anchored to the server's clock.
pub(super) async fn anchor(client: &Client, target: &str) -> BackendResult<HostClock> {
    let asked = Instant::now();
    let server: i64 = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
            &[],
        )
        .await
        .map_err(|e| pg_error(target, &e))?
        .get(0);
    let half_trip = asked.elapsed().as_millis() as i64 / 2;
    Ok(HostClock::anchored_at(
        Arc::new(SystemTimeSource),
        (server + half_trip).max(0) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=disable"),
            "postgres://u@h:5432/db?sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h"), "postgres://h");
    }
}
