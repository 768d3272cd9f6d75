//! Calls from a plugin into the host: log, progress, config, cancellation and
//! execution-scoped state.
//!
//! On wasm32 these are the `flowhost:plugin/host` imports. Natively (under
//! `cargo test`) they go to the thread's [`FakeHost`](crate::testing::FakeHost),
//! so the same plugin code is testable without a host.

use crate::types::Error;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a log line attributed to this plugin and call.
pub fn log(level: Level, message: impl AsRef<str>) {
    imp::log(level, message.as_ref())
}
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message)
}
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message)
}
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message)
}
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message)
}

/// Reports progress of a long call; `fraction` is clamped to 0.0..=1.0.
pub fn progress(fraction: f32, note: impl AsRef<str>) {
    imp::progress(fraction.clamp(0.0, 1.0), note.as_ref())
}

/// The plugin's config as JSON (`{}` when none was given).
pub fn config() -> Value {
    serde_json::from_str(&imp::config()).unwrap_or(Value::Object(Default::default()))
}

/// The plugin's config as a typed value; a mismatch is an `invalid-input` error.
pub fn config_as<T: DeserializeOwned>() -> Result<T, Error> {
    crate::glue::decode("config", &imp::config())
}

/// True once the host wants this call to stop early.
pub fn cancelled() -> bool {
    imp::cancelled()
}

/// Execution-scoped state, shared by every plugin call of one execution.
pub mod state {
    use super::imp;
    use crate::types::Error;
    use serde_json::Value;

    fn json(value: &Value) -> String {
        value.to_string()
    }

    fn parse(key: &str, text: String) -> Result<Value, Error> {
        serde_json::from_str(&text).map_err(|e| Error::Fatal(format!("state `{key}`: {e}")))
    }

    /// The value under `key`, if any.
    pub fn get(key: &str) -> Result<Option<Value>, Error> {
        imp::state_get(key).map(|t| parse(key, t)).transpose()
    }
    pub fn set(key: &str, value: &Value) -> Result<(), Error> {
        imp::state_set(key, &json(value)).map_err(Error::Fatal)
    }
    /// Adds `delta` (missing counts as 0) and returns the new value.
    pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
        imp::state_increment(key, delta).map_err(Error::Fatal)
    }
    /// Appends to a list (missing counts as `[]`) and returns the new length.
    pub fn append(key: &str, value: &Value) -> Result<u64, Error> {
        imp::state_append(key, &json(value)).map_err(Error::Fatal)
    }
    /// Sets `key` to `new` only if it currently equals `expected` (`None` =
    /// absent); `new = None` deletes. Returns whether it swapped.
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&Value>,
        new: Option<&Value>,
    ) -> Result<bool, Error> {
        let expected = expected.map(json);
        let new = new.map(json);
        imp::state_compare_and_swap(key, expected.as_deref(), new.as_deref()).map_err(Error::Fatal)
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::__processor::flowhost::plugin::host as h;
    use crate::__processor::flowhost::plugin::types::LogLevel;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        h::log(level, message)
    }
    pub fn progress(fraction: f32, note: &str) {
        h::progress(fraction, note)
    }
    pub fn config() -> String {
        h::config()
    }
    pub fn cancelled() -> bool {
        h::cancelled()
    }
    pub fn state_get(key: &str) -> Option<String> {
        h::state_get(key)
    }
    pub fn state_set(key: &str, value: &str) -> Result<(), String> {
        h::state_set(key, value)
    }
    pub fn state_increment(key: &str, delta: i64) -> Result<i64, String> {
        h::state_increment(key, delta)
    }
    pub fn state_append(key: &str, value: &str) -> Result<u64, String> {
        h::state_append(key, value)
    }
    pub fn state_compare_and_swap(
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, String> {
        h::state_compare_and_swap(key, expected, new)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub use crate::testing::fake::*;
}
