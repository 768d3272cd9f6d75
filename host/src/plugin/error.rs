//! Every way a plugin load or call can fail, as one typed error.
//!
//! The kinds are part of the product: machine configs route on them
//! (`on_error: {timeout: ...}`), retry policies look at them, and the CLI maps
//! each to its own exit code (see [`ErrorKind::exit_code`]).

use std::fmt;
use std::time::Duration;

/// Why a plugin could not be loaded or a call did not produce output.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PluginError {
    /// The guest rejected its input or config (`plugin-error::invalid-input`).
    #[error("the plugin rejected its input: {0}")]
    InvalidInput(String),
    /// The guest reported a transient failure (`plugin-error::retryable`).
    #[error("the plugin reported a retryable failure: {0}")]
    Retryable(String),
    /// The guest gave up (`plugin-error::fatal`).
    #[error("the plugin reported a fatal failure: {0}")]
    Fatal(String),
    /// The call ran past its time (or fuel) budget and was interrupted.
    #[error("timed out: {detail}")]
    Timeout { limit: Duration, detail: String },
    /// The guest tried to grow its memory past the cap and died of it.
    #[error(
        "out of memory: the plugin tried to grow its memory to {requested} bytes; the limit is {limit} bytes"
    )]
    OutOfMemory { limit: u64, requested: u64 },
    /// The guest trapped: panic, stack overflow, unreachable, bad memory access...
    #[error("trap: {message}")]
    Trap { message: String },
    /// The guest returned something that is not acceptable output.
    #[error("invalid output: {reason}")]
    InvalidOutput { reason: String },
    /// The component does not fit this host: wrong world, missing import,
    /// incompatible contract version.
    #[error("link error: {reason}")]
    Link { reason: String },
    /// The plugin could not be read, verified or compiled.
    #[error("cannot load: {reason}")]
    Load { reason: String },
}

/// The kind of a [`PluginError`], as used in configs (`on_error`), golden
/// tests (`expect.error`) and CLI messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidInput,
    Retryable,
    Fatal,
    Timeout,
    OutOfMemory,
    Trap,
    InvalidOutput,
    Link,
    Load,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
        ErrorKind::Retryable,
        ErrorKind::Fatal,
        ErrorKind::Timeout,
        ErrorKind::OutOfMemory,
        ErrorKind::Trap,
        ErrorKind::InvalidOutput,
        ErrorKind::Link,
        ErrorKind::Load,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Trap => "trap",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::Link => "link",
            ErrorKind::Load => "load",
        }
    }

    /// The process exit code the CLI uses for this kind (10..=18; 1 is any
    /// other failure, 2 a usage error).
    pub fn exit_code(self) -> u8 {
        10 + ErrorKind::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    /// Parses `invalid_input` or `invalid-input` style names.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        let name = name.replace('-', "_");
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl From<ErrorKind> for crate::failure::FailureKind {
    fn from(kind: ErrorKind) -> Self {
        use crate::failure::FailureKind as F;
        match kind {
            ErrorKind::InvalidInput => F::InvalidInput,
            ErrorKind::Retryable => F::Retryable,
            ErrorKind::Fatal => F::Fatal,
            ErrorKind::Timeout => F::Timeout,
            ErrorKind::OutOfMemory => F::OutOfMemory,
            ErrorKind::Trap => F::Trap,
            ErrorKind::InvalidOutput => F::InvalidOutput,
            ErrorKind::Link => F::Link,
            ErrorKind::Load => F::Load,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PluginError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PluginError::InvalidInput(_) => ErrorKind::InvalidInput,
            PluginError::Retryable(_) => ErrorKind::Retryable,
            PluginError::Fatal(_) => ErrorKind::Fatal,
            PluginError::Timeout { .. } => ErrorKind::Timeout,
            PluginError::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            PluginError::Trap { .. } => ErrorKind::Trap,
            PluginError::InvalidOutput { .. } => ErrorKind::InvalidOutput,
            PluginError::Link { .. } => ErrorKind::Link,
            PluginError::Load { .. } => ErrorKind::Load,
        }
    }

    pub(crate) fn load(reason: impl Into<String>) -> Self {
        PluginError::Load {
            reason: reason.into(),
        }
    }

    pub(crate) fn link(reason: impl Into<String>) -> Self {
        PluginError::Link {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_have_distinct_exit_codes() {
        let mut codes = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            assert!(codes.insert(kind.exit_code()), "{kind} shares an exit code");
            assert!(kind.exit_code() >= 10);
        }
        assert_eq!(
            ErrorKind::parse("out-of-memory"),
            Some(ErrorKind::OutOfMemory)
        );
        assert_eq!(ErrorKind::parse("nope"), None);
    }
}
