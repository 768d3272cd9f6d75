//! Execution state: a JSON value per key per execution, changed by atomic
//! operations (set, increment, append, add to a set, compare-and-swap).
//! Plugins reach it through the host interface (`state-*`), and the daemon's
//! API through `/workflows/{id}/state`: the same rows. Every operation is
//! applied in one store write (SQLite: the writer's transaction), so
//! concurrent operations never lose one another.
//!
//! One function ([`apply`]) decides what an operation does to a value; both
//! stores call it, so they cannot disagree.

use super::memory::MemoryBackend;
use super::sqlite::SqliteBackend;
use super::sqlite_pools::fault;
use super::{BackendError, BackendResult, StoreErrorKind};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// An atomic change of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    Set(Value),
    /// Remove the key.
    Delete,
    /// Add to an integer (an absent key counts as 0).
    Increment(i64),
    /// Push onto a list (an absent key is an empty list).
    Append(Value),
    /// Add to a set: a list that holds each value once.
    Add(Value),
    /// Replace the value if it is `expected` (`None`: the key is absent);
    /// `new: None` removes it.
    CompareAndSwap {
        expected: Option<Value>,
        new: Option<Value>,
    },
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateAnswer {
    /// Set or delete.
    Done,
    /// The integer after an increment.
    Count(i64),
    /// The list's length after an append.
    Length(u64),
    /// Whether an add changed the set.
    Added(bool),
    /// Whether a compare-and-swap swapped; when it did not, the value found.
    Swapped {
        swapped: bool,
        current: Option<Value>,
    },
}

/// An operation the key's value does not allow (an increment of a string):
/// the message says what the value is. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StateConflict(pub String);

/// What an operation does to a key's value: the new value (`None`: absent)
/// and the answer, or why the value does not allow it.
pub fn apply(
    key: &str,
    current: Option<Value>,
    op: StateOp,
) -> Result<(Option<Value>, StateAnswer), StateConflict> {
    let conflict =
        |what: &str, v: &Value| StateConflict(format!("state `{key}` is {}, not {what}", short(v)));
    // Appends and adds work on a list; an absent key is an empty one.
    let list_of = |current: Option<Value>, what: &str| match current {
        None => Ok(vec![]),
        Some(Value::Array(list)) => Ok(list),
        Some(v) => Err(conflict(what, &v)),
    };
    match op {
        StateOp::Set(v) => Ok((Some(v), StateAnswer::Done)),
        StateOp::Delete => Ok((None, StateAnswer::Done)),
        StateOp::Increment(by) => {
            let now = match &current {
                None => 0,
                Some(v) => v.as_i64().ok_or_else(|| conflict("an integer", v))?,
            };
            let next = now
                .checked_add(by)
                .ok_or_else(|| StateConflict(format!("state `{key}` would overflow")))?;
            Ok((Some(Value::from(next)), StateAnswer::Count(next)))
        }
        StateOp::Append(item) => {
            let mut list = list_of(current, "a list")?;
            list.push(item);
            let len = list.len() as u64;
            Ok((Some(Value::Array(list)), StateAnswer::Length(len)))
        }
        StateOp::Add(item) => {
            let mut set = list_of(current, "a set (a list)")?;
            let added = !set.contains(&item);
            if added {
                set.push(item);
            }
            Ok((Some(Value::Array(set)), StateAnswer::Added(added)))
        }
        StateOp::CompareAndSwap { expected, new } => {
            if current == expected {
                Ok((
                    new,
                    StateAnswer::Swapped {
                        swapped: true,
                        current: None,
                    },
                ))
            } else {
                Ok((
                    current.clone(),
                    StateAnswer::Swapped {
                        swapped: false,
                        current,
                    },
                ))
            }
        }
    }
}

/// A value for a message: JSON, cut at 60 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Per-execution key/value state.
#[async_trait::async_trait]
pub trait State: Send + Sync {
    /// Every key of the execution's state.
    async fn state(&self, execution: &str) -> BackendResult<BTreeMap<String, Value>>;
    async fn state_get(&self, execution: &str, key: &str) -> BackendResult<Option<Value>>;
    /// Replaces the whole state with `values` (in one write).
    async fn state_replace(
        &self,
        execution: &str,
        values: BTreeMap<String, Value>,
    ) -> BackendResult<()>;
    /// Applies one operation atomically. The inner error is an operation
    /// the value does not allow; nothing is changed then.
    async fn state_apply(
        &self,
        execution: &str,
        key: &str,
        op: StateOp,
    ) -> BackendResult<Result<StateAnswer, StateConflict>>;
}

#[async_trait::async_trait]
impl State for MemoryBackend {
    async fn state(&self, execution: &str) -> BackendResult<BTreeMap<String, Value>> {
        Ok(self
            .lock()
            .state
            .get(execution)
            .cloned()
            .unwrap_or_default())
    }

    async fn state_get(&self, execution: &str, key: &str) -> BackendResult<Option<Value>> {
        Ok(self
            .lock()
            .state
            .get(execution)
            .and_then(|m| m.get(key))
            .cloned())
    }

    async fn state_replace(
        &self,
        execution: &str,
        values: BTreeMap<String, Value>,
    ) -> BackendResult<()> {
        self.lock().state.insert(execution.to_string(), values);
        Ok(())
    }

    async fn state_apply(
        &self,
        execution: &str,
        key: &str,
        op: StateOp,
    ) -> BackendResult<Result<StateAnswer, StateConflict>> {
        let mut data = self.lock();
        let map = data.state.entry(execution.to_string()).or_default();
        Ok(
            apply(key, map.get(key).cloned(), op).map(|(value, answer)| {
                match value {
                    Some(v) => map.insert(key.to_string(), v),
                    None => map.remove(key),
                };
                answer
            }),
        )
    }
}

fn stored(execution: &str, key: &str, text: &str) -> BackendResult<Value> {
    serde_json::from_str(text).map_err(|e| {
        BackendError::of(
            StoreErrorKind::Corrupt,
            format!("state `{key}` of {execution} is not JSON: {e}"),
        )
    })
}

#[async_trait::async_trait]
impl State for SqliteBackend {
    async fn state(&self, execution: &str) -> BackendResult<BTreeMap<String, Value>> {
        let rows: Vec<(String, String)> = {
            let conn = self.reader();
            let mut stmt = conn
                .prepare_cached("SELECT key, value FROM state WHERE execution = ?1 ORDER BY key")
                .map_err(fault)?;
            stmt.query_map(params![execution], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<_, _>>())
                .map_err(|e| fault(e).at(self.path().display()))?
        };
        rows.into_iter()
            .map(|(k, v)| Ok((k.clone(), stored(execution, &k, &v)?)))
            .collect()
    }

    async fn state_get(&self, execution: &str, key: &str) -> BackendResult<Option<Value>> {
        let text: Option<String> = self
            .reader()
            .prepare_cached("SELECT value FROM state WHERE execution = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![execution, key], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| fault(e).at(self.path().display()))?;
        text.map(|t| stored(execution, key, &t)).transpose()
    }

    async fn state_replace(
        &self,
        execution: &str,
        values: BTreeMap<String, Value>,
    ) -> BackendResult<()> {
        let execution = execution.to_string();
        self.exec::<Value>(move |c| {
            c.prepare_cached("DELETE FROM state WHERE execution = ?1")
                .and_then(|mut s| s.execute(params![execution]))
                .map_err(fault)?;
            let mut insert = c
                .prepare_cached("INSERT INTO state (execution, key, value) VALUES (?1, ?2, ?3)")
                .map_err(fault)?;
            for (k, v) in &values {
                insert
                    .execute(params![execution, k, v.to_string()])
                    .map_err(fault)?;
            }
            Ok(Value::Null)
        })
        .await
        .map(|_| ())
    }

    async fn state_apply(
        &self,
        execution: &str,
        key: &str,
        op: StateOp,
    ) -> BackendResult<Result<StateAnswer, StateConflict>> {
        let (execution, key) = (execution.to_string(), key.to_string());
        let answer: Result<StateAnswer, String> = self
            .exec(move |c| {
                let text: Option<String> = c
                    .prepare_cached("SELECT value FROM state WHERE execution = ?1 AND key = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![execution, key], |r| r.get(0))
                            .optional()
                    })
                    .map_err(fault)?;
                let current = text.map(|t| stored(&execution, &key, &t)).transpose()?;
                let unchanged = current.clone();
                let (value, answer) = match apply(&key, current, op) {
                    Ok(done) => done,
                    Err(StateConflict(m)) => return Ok(serde_json::json!({ "Err": m })),
                };
                if value != unchanged {
                    match &value {
                        Some(v) => c
                            .prepare_cached(
                                "INSERT INTO state (execution, key, value) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (execution, key) DO UPDATE SET value = excluded.value",
                            )
                            .and_then(|mut s| s.execute(params![execution, key, v.to_string()])),
                        None => c
                            .prepare_cached("DELETE FROM state WHERE execution = ?1 AND key = ?2")
                            .and_then(|mut s| s.execute(params![execution, key])),
                    }
                    .map_err(fault)?;
                }
                serde_json::to_value(Ok::<_, String>(answer)).map_err(fault)
            })
            .await?;
        Ok(answer.map_err(StateConflict))
    }
}
