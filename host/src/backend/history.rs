//! Each execution's history: an ordered list of events, bounded per
//! execution (the oldest go first). The engine numbers the events and hands
//! them over as JSON text; the store keeps them without reading them, like
//! checkpoints.

use super::memory::MemoryBackend;
use super::sqlite::{Op, SqliteBackend, db_error};
use super::{BackendError, BackendResult, StoreErrorKind};
use rusqlite::params;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// An event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Its place in the execution's history: 1, 2, … An event stored again
    /// under the same place (a state re-run after a crash) replaces it.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, by the engine's clock.
    pub at_ms: u64,
    /// The event, as JSON text.
    pub json: String,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: Value,
}

#[async_trait::async_trait]
pub trait History: Send + Sync {
    /// Stores events of one execution (in order) and keeps only those within
    /// `keep` of the newest. It may be queued: stores apply it before, or
    /// with, the next write made after it (SQLite: with the next write, or
    /// when the store closes).
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<NewEvent>,
        keep: usize,
    ) -> BackendResult<()>;
    /// Events of `execution` with `seq` above `after`, oldest first, at most
    /// `limit`.
    async fn history(
        &self,
        execution: &str,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<HistoryEntry>>;
}

/// The seq of the oldest event kept when the newest is `last`.
fn oldest_kept(last: u64, keep: usize) -> u64 {
    last.saturating_sub(keep as u64) + 1
}

fn entry(path: &Path, seq: u64, at_ms: u64, json: &str) -> BackendResult<HistoryEntry> {
    let event = serde_json::from_str(json).map_err(|e| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("{}: history event {seq} is not JSON: {e}", path.display()),
        )
    })?;
    Ok(HistoryEntry { seq, at_ms, event })
}

#[async_trait::async_trait]
impl History for MemoryBackend {
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<NewEvent>,
        keep: usize,
    ) -> BackendResult<()> {
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let mut d = self.lock();
        let list = d.history.entry(execution.to_string()).or_default();
        for e in events {
            list.insert(e.seq, e);
        }
        let oldest = oldest_kept(last, keep);
        list.retain(|seq, _| *seq >= oldest);
        Ok(())
    }

    async fn history(
        &self,
        execution: &str,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<HistoryEntry>> {
        let d = self.lock();
        let Some(list) = d.history.get(execution) else {
            return Ok(Vec::new());
        };
        list.range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| entry(Path::new("memory"), e.seq, e.at_ms, &e.json))
            .collect()
    }
}

/// The SQLite write of [`History::append_history`].
pub(super) fn append(
    tx: &rusqlite::Connection,
    execution: &str,
    events: &[NewEvent],
    keep: usize,
) -> rusqlite::Result<()> {
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(());
    };
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO history (execution, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for e in events {
        insert.execute(params![execution, e.seq as i64, e.at_ms as i64, e.json])?;
    }
    // Older than the newest `keep`: a range of the primary key (nothing to
    // do, and no statement, while an execution has fewer events).
    let oldest = oldest_kept(last, keep);
    if oldest > 1 {
        tx.prepare_cached("DELETE FROM history WHERE execution = ?1 AND seq < ?2")?
            .execute(params![execution, oldest as i64])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl History for SqliteBackend {
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<NewEvent>,
        keep: usize,
    ) -> BackendResult<()> {
        if !events.is_empty() {
            // Rides with the next write (the checkpoint that follows it).
            self.send_lazy(Op::AppendHistory(execution.to_string(), events, keep));
        }
        Ok(())
    }

    async fn history(
        &self,
        execution: &str,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<HistoryEntry>> {
        let path = self.path();
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at_ms, event FROM history WHERE execution = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(db_error(path))?;
        let rows = stmt
            .query_map(
                params![
                    execution,
                    after.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .map_err(db_error(path))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, text) = row.map_err(db_error(path))?;
            out.push(entry(path, seq as u64, at_ms as u64, &text)?);
        }
        Ok(out)
    }
}
