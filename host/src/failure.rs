//! The kinds of failure, one list for everything that can fail a state: the
//! plugin error kinds and the engine's own. `on_error` routes by them,
//! retries and job workers decide by them, records store them by name.
//!
//! Imports nothing from flowhost.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a state (or a job) failed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    // Plugin error kinds (a guest's error or the host's verdict on a call).
    InvalidInput,
    Retryable,
    Fatal,
    Timeout,
    OutOfMemory,
    Trap,
    InvalidOutput,
    Link,
    Load,
    // The engine's own.
    /// A template or condition could not be rendered.
    Template,
    /// No transition matched and none is unconditional.
    NoTransition,
    /// More than `settings.max_steps` states were entered.
    MaxSteps,
    /// The store failed under a state (a signal could not be read).
    Store,
    /// A child execution was cancelled.
    Cancelled,
    /// The execution's config does not fit its record (a state is missing).
    InvalidConfig,
    /// More than `settings.max_agent_calls` agent calls were asked for.
    MaxAgentCalls,
}

impl FailureKind {
    pub const ALL: [FailureKind; 16] = [
        FailureKind::InvalidInput,
        FailureKind::Retryable,
        FailureKind::Fatal,
        FailureKind::Timeout,
        FailureKind::OutOfMemory,
        FailureKind::Trap,
        FailureKind::InvalidOutput,
        FailureKind::Link,
        FailureKind::Load,
        FailureKind::Template,
        FailureKind::NoTransition,
        FailureKind::MaxSteps,
        FailureKind::Store,
        FailureKind::Cancelled,
        FailureKind::InvalidConfig,
        FailureKind::MaxAgentCalls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::Retryable => "retryable",
            FailureKind::Fatal => "fatal",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Trap => "trap",
            FailureKind::InvalidOutput => "invalid_output",
            FailureKind::Link => "link",
            FailureKind::Load => "load",
            FailureKind::Template => "template",
            FailureKind::NoTransition => "no_transition",
            FailureKind::MaxSteps => "max_steps",
            FailureKind::Store => "store",
            FailureKind::Cancelled => "cancelled",
            FailureKind::InvalidConfig => "invalid_config",
            FailureKind::MaxAgentCalls => "max_agent_calls",
        }
    }

    pub fn parse(name: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether `on_error` can route it. `max_steps`, `max_agent_calls` and
    /// `invalid_config` end the execution: routing them would run a machine
    /// past its bound or on a config that does not fit.
    pub fn is_routable(self) -> bool {
        !matches!(
            self,
            FailureKind::MaxSteps | FailureKind::InvalidConfig | FailureKind::MaxAgentCalls
        )
    }

    /// Transient kinds: worth trying again under `execution: {type: retry}`
    /// and by job workers. The others would fail the same way again.
    pub fn is_retried(self) -> bool {
        matches!(
            self,
            FailureKind::Retryable
                | FailureKind::Timeout
                | FailureKind::Trap
                | FailureKind::OutOfMemory
                | FailureKind::InvalidOutput
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_serde() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(serde_json::from_value::<FailureKind>(json).unwrap(), kind);
        }
        assert_eq!(FailureKind::parse("default"), None);
        assert!(FailureKind::Timeout.is_retried());
        assert!(!FailureKind::InvalidInput.is_retried());
        assert!(!FailureKind::NoTransition.is_retried());
        assert!(FailureKind::NoTransition.is_routable());
        assert!(!FailureKind::MaxSteps.is_routable());
    }
}
