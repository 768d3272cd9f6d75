//! A fake host for testing plugin functions natively with `cargo test`.
//!
//! ```
//! use flowhost_sdk::testing::FakeHost;
//! use flowhost_sdk::{host, json};
//!
//! let fake = FakeHost::new().config(json!({"greeting": "hi"})).install();
//! host::info("hello");
//! assert_eq!(host::config()["greeting"], "hi");
//! assert_eq!(fake.logs(), vec![(host::Level::Info, "hello".to_string())]);
//! ```
//!
//! Each thread has its own fake host; without [`FakeHost::install`] a default
//! one (config `{}`, empty state) is used.

use crate::host::Level;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// What the fake host holds and records.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    config: Option<Value>,
    state: BTreeMap<String, Value>,
    cancelled: bool,
    logs: Vec<(Level, String)>,
    progress: Vec<(f32, String)>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }
    /// The config `host::config()` returns.
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }
    /// Seeds the execution state.
    pub fn state(mut self, key: &str, value: Value) -> Self {
        self.state.insert(key.to_string(), value);
        self
    }
    /// Makes `host::cancelled()` return true.
    pub fn cancelled(mut self) -> Self {
        self.cancelled = true;
        self
    }
    /// Makes this the current thread's host until the guard is dropped.
    pub fn install(self) -> FakeHostGuard {
        let shared = Rc::new(RefCell::new(self));
        let previous = CURRENT.with(|c| c.replace(Some(shared.clone())));
        FakeHostGuard { shared, previous }
    }
}

/// Keeps a [`FakeHost`] installed; read what the plugin did through it.
pub struct FakeHostGuard {
    shared: Rc<RefCell<FakeHost>>,
    previous: Option<Rc<RefCell<FakeHost>>>,
}

impl FakeHostGuard {
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.shared.borrow().logs.clone()
    }
    pub fn progress(&self) -> Vec<(f32, String)> {
        self.shared.borrow().progress.clone()
    }
    pub fn state(&self) -> BTreeMap<String, Value> {
        self.shared.borrow().state.clone()
    }
}

impl Drop for FakeHostGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<FakeHost>>>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    let shared = CURRENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| Rc::new(RefCell::new(FakeHost::default())))
            .clone()
    });
    let mut host = shared.borrow_mut();
    f(&mut host)
}

fn parse(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// The native implementation of the host calls (same semantics as the host's
/// in-memory execution state).
#[doc(hidden)]
pub mod fake {
    use super::*;

    pub fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_string())))
    }
    pub fn progress(fraction: f32, note: &str) {
        with(|h| h.progress.push((fraction, note.to_string())))
    }
    pub fn config() -> String {
        with(|h| {
            h.config
                .clone()
                .unwrap_or(Value::Object(Map::new()))
                .to_string()
        })
    }
    pub fn cancelled() -> bool {
        with(|h| h.cancelled)
    }
    pub fn state_get(key: &str) -> Option<String> {
        with(|h| h.state.get(key).map(Value::to_string))
    }
    pub fn state_set(key: &str, value: &str) -> Result<(), String> {
        let value = parse("value", value)?;
        with(|h| h.state.insert(key.to_string(), value));
        Ok(())
    }
    pub fn state_increment(key: &str, delta: i64) -> Result<i64, String> {
        with(|h| {
            let current = match h.state.get(key) {
                None => 0,
                Some(v) => v
                    .as_i64()
                    .ok_or_else(|| format!("state `{key}` is {v}, not an integer"))?,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| format!("state `{key}` would overflow"))?;
            h.state.insert(key.to_string(), Value::from(next));
            Ok(next)
        })
    }
    pub fn state_append(key: &str, value: &str) -> Result<u64, String> {
        let value = parse("value", value)?;
        with(|h| {
            let entry = h
                .state
                .entry(key.to_string())
                .or_insert_with(|| Value::Array(vec![]));
            let list = entry
                .as_array_mut()
                .ok_or_else(|| format!("state `{key}` is not a list"))?;
            list.push(value);
            Ok(list.len() as u64)
        })
    }
    pub fn state_compare_and_swap(
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, String> {
        let expected = expected.map(|e| parse("expected", e)).transpose()?;
        let new = new.map(|n| parse("new", n)).transpose()?;
        with(|h| {
            if h.state.get(key) != expected.as_ref() {
                return Ok(false);
            }
            match new {
                Some(v) => h.state.insert(key.to_string(), v),
                None => h.state.remove(key),
            };
            Ok(true)
        })
    }
}
