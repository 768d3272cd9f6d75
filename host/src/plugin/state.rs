//! Execution-scoped state that plugins reach through the host interface
//! (`state-get`, `state-set`, `state-increment`, `state-append`,
//! `state-compare-and-swap`).
//!
//! The runtime only knows the [`ExecutionState`] trait; the engine backs it
//! with a durable store. [`MemoryState`] is the in-process implementation used
//! by `flowhost plugin call/test` and by tests.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Atomic key/value operations on one execution's state. Errors are messages
/// for the guest (e.g. "state `n` is "x", not an integer").
#[async_trait::async_trait]
pub trait ExecutionState: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Value>, String>;
    async fn set(&self, key: &str, value: Value) -> Result<(), String>;
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
    async fn append(&self, key: &str, value: Value) -> Result<u64, String>;
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<bool, String>;
}

/// An in-memory [`ExecutionState`].
#[derive(Debug, Default)]
pub struct MemoryState {
    values: Mutex<BTreeMap<String, Value>>,
}

impl MemoryState {
    pub fn new(initial: BTreeMap<String, Value>) -> Self {
        MemoryState {
            values: Mutex::new(initial),
        }
    }

    /// A copy of every key and value.
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        // A panic while holding the lock cannot leave a half-applied operation
        // (each one is a single map update), so a poisoned lock is still usable.
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl ExecutionState for MemoryState {
    async fn get(&self, key: &str) -> Result<Option<Value>, String> {
        Ok(self.lock().get(key).cloned())
    }

    async fn set(&self, key: &str, value: Value) -> Result<(), String> {
        self.lock().insert(key.to_string(), value);
        Ok(())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut values = self.lock();
        let current = match values.get(key) {
            None => 0,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| format!("state `{key}` is {v}, not an integer"))?,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| format!("state `{key}` would overflow"))?;
        values.insert(key.to_string(), Value::from(next));
        Ok(next)
    }

    async fn append(&self, key: &str, value: Value) -> Result<u64, String> {
        let mut values = self.lock();
        let entry = values
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(vec![]));
        let list = entry
            .as_array_mut()
            .ok_or_else(|| format!("state `{key}` is not a list"))?;
        list.push(value);
        Ok(list.len() as u64)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<bool, String> {
        let mut values = self.lock();
        if values.get(key) != expected.as_ref() {
            return Ok(false);
        }
        match new {
            Some(v) => values.insert(key.to_string(), v),
            None => values.remove(key),
        };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn operations_follow_the_contract() {
        let s = MemoryState::default();
        assert_eq!(s.increment("n", 2).await, Ok(2));
        assert_eq!(s.increment("n", -5).await, Ok(-3));
        assert_eq!(s.append("l", json!(1)).await, Ok(1));
        assert_eq!(s.append("l", json!("x")).await, Ok(2));
        assert!(
            s.append("n", json!(1))
                .await
                .unwrap_err()
                .contains("not a list")
        );
        s.set("t", json!("x")).await.unwrap();
        assert!(
            s.increment("t", 1)
                .await
                .unwrap_err()
                .contains("not an integer")
        );
        assert_eq!(
            s.compare_and_swap("k", None, Some(json!(1))).await,
            Ok(true)
        );
        assert_eq!(
            s.compare_and_swap("k", None, Some(json!(2))).await,
            Ok(false)
        );
        assert_eq!(
            s.compare_and_swap("k", Some(json!(1)), None).await,
            Ok(true)
        );
        assert_eq!(s.get("k").await, Ok(None));
        assert_eq!(s.snapshot()["l"], json!([1, "x"]));
    }
}
