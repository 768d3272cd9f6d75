//! Each execution's history: an ordered list of events, bounded per
//! execution (the oldest go first). The engine hands events over as JSON and
//! the store keeps them without reading them, like checkpoints.

use super::memory::MemoryBackend;
use super::sqlite::{Op, SqliteBackend, db_error};
use super::{BackendError, BackendResult, StoreErrorKind};
use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Its place in the execution's history: 1, 2, … (kept when older
    /// events are dropped).
    pub seq: u64,
    /// Milliseconds since the Unix epoch, by the engine's clock.
    pub at_ms: u64,
    pub event: Value,
}

#[async_trait::async_trait]
pub trait History: Send + Sync {
    /// Appends events (time, event) of one execution in order and keeps at
    /// most `keep` of its newest. Like [`super::Checkpoints::save_deferred`]
    /// it may be queued: it is stored before any write made after it.
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<(u64, Value)>,
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

#[async_trait::async_trait]
impl History for MemoryBackend {
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<(u64, Value)>,
        keep: usize,
    ) -> BackendResult<()> {
        let mut d = self.lock();
        let list = d.history.entry(execution.to_string()).or_default();
        let next = list.back().map_or(0, |e| e.seq) + 1;
        for (seq, (at_ms, event)) in (next..).zip(events) {
            list.push_back(HistoryEntry { seq, at_ms, event });
        }
        while list.len() > keep {
            list.pop_front();
        }
        Ok(())
    }

    async fn history(
        &self,
        execution: &str,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<HistoryEntry>> {
        Ok(self
            .lock()
            .history
            .get(execution)
            .map(|list| {
                list.iter()
                    .filter(|e| e.seq > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The SQLite write of [`History::append_history`].
pub(super) fn append(
    tx: &rusqlite::Connection,
    execution: &str,
    events: &[(u64, String)],
    keep: usize,
) -> rusqlite::Result<()> {
    let last: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM history WHERE execution = ?1")?
        .query_row(params![execution], |r| r.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO history (execution, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut seq = last;
    for (at_ms, event) in events {
        seq += 1;
        insert.execute(params![execution, seq, *at_ms as i64, event])?;
    }
    // Everything older than the newest `keep`: a range of the primary key.
    let oldest_kept = seq - keep.min(i64::MAX as usize) as i64;
    if oldest_kept > 0 {
        tx.prepare_cached("DELETE FROM history WHERE execution = ?1 AND seq <= ?2")?
            .execute(params![execution, oldest_kept])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl History for SqliteBackend {
    async fn append_history(
        &self,
        execution: &str,
        events: Vec<(u64, Value)>,
        keep: usize,
    ) -> BackendResult<()> {
        let events = events
            .into_iter()
            .map(|(at, e)| (at, e.to_string()))
            .collect();
        self.send(Op::AppendHistory(execution.to_string(), events, keep), None)
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
                params![execution, after as i64, limit.min(i64::MAX as usize) as i64],
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
            let event = serde_json::from_str(&text).map_err(|e| {
                BackendError::of(
                    StoreErrorKind::Corrupt,
                    format!("{}: history event {seq} is not JSON: {e}", path.display()),
                )
            })?;
            out.push(HistoryEntry {
                seq: seq as u64,
                at_ms: at_ms as u64,
                event,
            });
        }
        Ok(out)
    }
}
