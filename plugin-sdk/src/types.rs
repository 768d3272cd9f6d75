//! The author-facing types: what a plugin function receives and returns.
//!
//! They mirror the WIT types of `flowhost:plugin/types` but are plain Rust
//! types that work the same natively and on wasm32.

use serde_json::Value;

/// Where a call comes from (the WIT `call-meta`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub execution_id: String,
    pub machine: String,
    pub state: String,
    pub step: u64,
    /// 1 on the first try, 2 on the first retry, ...
    pub attempt: u32,
    /// `execution_id/step/attempt`. Steps run at least once: a plugin with
    /// effects outside the sandbox should apply them once per key.
    pub idempotency_key: String,
    /// Wall-clock budget left in milliseconds; 0 = no limit.
    pub deadline_ms: u64,
}

impl Meta {
    /// A meta for native tests: execution `test`, state `test`, attempt 1.
    pub fn test() -> Self {
        Meta {
            execution_id: "test".into(),
            machine: "test".into(),
            state: "test".into(),
            step: 1,
            attempt: 1,
            idempotency_key: "test/1/1".into(),
            deadline_ms: 0,
        }
    }
}

/// A plugin's own verdict on a failed call (the WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input or config is wrong; retrying will not help.
    InvalidInput(String),
    /// A transient failure; the engine may retry.
    Retryable(String),
    /// The plugin cannot go on; do not retry.
    Fatal(String),
}

impl Error {
    pub fn invalid_input(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
    pub fn retryable(msg: impl Into<String>) -> Self {
        Error::Retryable(msg.into())
    }
    pub fn fatal(msg: impl Into<String>) -> Self {
        Error::Fatal(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Retryable(m) => write!(f, "retryable: {m}"),
            Error::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// What `info()` reports. Filled in by the export macros from Cargo metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub kinds: Vec<String>,
    pub description: String,
}

/// A lifecycle event delivered to a hook plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    MachineStart,
    MachineEnd,
    StateEnter(String),
    StateExit(String),
    Transition {
        from: String,
        to: String,
    },
    Error {
        state: String,
        kind: String,
        message: String,
    },
    /// An `action:` state naming this hook.
    Action(String),
}

/// What a hook returns: an optional new context and an optional redirect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookOutcome {
    /// Replaces the machine's context when set.
    pub context: Option<Value>,
    /// The state to go to instead (for transition and error events).
    pub redirect: Option<String>,
}

impl HookOutcome {
    /// Leave everything as it is.
    pub fn unchanged() -> Self {
        Self::default()
    }
    /// Replace the context.
    pub fn with_context(context: Value) -> Self {
        HookOutcome {
            context: Some(context),
            redirect: None,
        }
    }
    /// Go to `state` instead.
    pub fn redirect(state: impl Into<String>) -> Self {
        HookOutcome {
            context: None,
            redirect: Some(state.into()),
        }
    }
}

/// What a step returns: its output and optionally the next state.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub output: Value,
    pub next: Option<String>,
}

impl StepResult {
    pub fn output(output: Value) -> Self {
        StepResult { output, next: None }
    }
    pub fn goto(next: impl Into<String>, output: Value) -> Self {
        StepResult {
            output,
            next: Some(next.into()),
        }
    }
}
