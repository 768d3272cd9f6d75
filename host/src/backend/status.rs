//! The statuses a store keeps: of executions, of jobs, of workers. Each is
//! an enum with one spelling (stored as text, shown by commands), parsed
//! back when a row is read; an unknown spelling in a store is corruption,
//! not a status.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every status, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The status spelled `text`, if there is one.
            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|s| s.as_str() == text)
            }

            /// What a bad spelling is checked against: `a, b, c`.
            pub fn spellings() -> String {
                Self::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

status!(
    /// Where an execution is.
    ExecutionStatus {
        /// Submitted and on the run queue; no worker has started it yet.
        Queued = "queued",
        Running = "running",
        /// Parked in a `wait_for` state until a signal arrives.
        Waiting = "waiting",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl ExecutionStatus {
    /// Done, failed or cancelled: it will not move again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Done | ExecutionStatus::Failed | ExecutionStatus::Cancelled
        )
    }
}

status!(
    /// Where a job of a pool is.
    JobStatus {
        /// Waiting for a worker (or for its retry time).
        Pending = "pending",
        /// Held by a worker under a lease.
        Claimed = "claimed",
        Done = "done",
        /// Out of retries (or failed with a kind not worth retrying).
        Poisoned = "poisoned",
    }
);

status!(
    /// Whether a registered worker is alive.
    WorkerStatus {
        Active = "active",
        /// Stopped on its own.
        Stopped = "stopped",
        /// Its heartbeats stopped; the reaper released its jobs.
        Lost = "lost",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_spelling_and_json() {
        for s in ExecutionStatus::ALL {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in WorkerStatus::ALL {
            assert_eq!(WorkerStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(JobStatus::parse("Done"), None);
        assert_eq!(WorkerStatus::spellings(), "active, stopped, lost");
    }
}
