//! The serialisable execution record: everything needed to continue an
//! execution in another process. Checkpoints store it as JSON.

use crate::failure::FailureKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where an execution's machine comes from: the root file, then the chain of
/// `data.machines` names that leads to the machine from there. Walking the
/// chain also yields the hooks inherited from every ancestor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MachineRef {
    pub file: PathBuf,
    #[serde(default)]
    pub path: Vec<String>,
}

impl MachineRef {
    pub fn child(&self, name: &str) -> MachineRef {
        let mut path = self.path.clone();
        path.push(name.to_string());
        MachineRef {
            file: self.file.clone(),
            path,
        }
    }
}

/// An execution's status: the one the store keeps in its index.
pub use crate::backend::ExecutionStatus as Status;

/// Why a state or an execution failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub state: String,
    /// The service asked to be called again no sooner than this (a model
    /// provider's `Retry-After`); a retry waits at least as long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// How a state's children combine into its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `machine: name`: the child's output.
    Single,
    /// `machine: [a, b]`: `{a: output, b: output}`.
    ByName,
    /// `foreach` without `key`: the outputs in item order.
    List,
    /// `foreach` with `key`: `{key: output}`.
    ByKey,
}

/// Children a state waits for (blocking `machine` and `foreach`): what to
/// start them with. Their outcomes are not stored here, so the parent's
/// checkpoint is written once per fan-out, not once per child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub shape: Shape,
    /// `any`: the first child to finish well decides; the rest are cancelled.
    pub any: bool,
    /// `continue_on_partial`: failed children are data, not a failed state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    pub max_concurrency: usize,
    pub children: Vec<Child>,
    /// The state's `timeout` as an instant (store clock, ms), from when the
    /// fan-out began: on the run queue, children still running then are
    /// cancelled and the state fails with kind `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Child {
    pub id: String,
    /// A name in the parent's `data.machines`.
    pub machine: String,
    pub input: Value,
    /// The rendered `key` (foreach with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How a child ended. It is not kept in the parent's record: the child's own
/// record (and result) holds it, written once where the child finishes; the
/// driver gathers them for the fan-in (see `step::Outcomes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildOutcome {
    Done(Value),
    Failed(Failure),
    Cancelled,
}

/// Where a child on the run queue counts its end: its parent's fan-in
/// counter (the store counts the child's first result down in the same
/// write as the result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanInRef {
    pub key: String,
    /// `mode: any`: a child that finishes well wakes the parent at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any: bool,
    /// The sibling whose job this child's first result pushes (the one
    /// `max_concurrency` places later), so only so many run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A fire-and-forget child, written to the outbox with the parent's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Launch {
    pub id: String,
    pub machine: String,
    pub input: Value,
    /// The child's own record exists; from here on it runs on its own.
    pub started: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub machine: String,
    pub source: MachineRef,
    /// Digest of the pinned [`Definition`](super::Definition) the execution
    /// runs (absent in records written before definitions were pinned: those
    /// are pinned when they are next resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    pub status: Status,
    pub state: String,
    /// States entered so far (the current one included).
    pub step: u64,
    /// Attempt of the current state (1 + retries so far).
    pub attempt: u32,
    pub input: Value,
    pub context: Value,
    /// The engine's own notes on the execution (the worker actions' job id
    /// and fence). Plugins' execution state lives in the store ([`crate::backend::State`]).
    #[serde(default)]
    pub kv: BTreeMap<String, Value>,
    /// Runs on the run queue under a lease of its own (not its root's): its
    /// fan-out children and launches become queued executions too, which
    /// any worker may run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// For a fan-out child on the run queue: the fan-in it counts toward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_in: Option<FanInRef>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub launches: Vec<Launch>,
    /// The channel a `wait_for` state waits on.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// When (store clock, ms) the execution is cancelled with kind
    /// `timeout` if it has not finished: from `submit --deadline` or the
    /// machine's `settings.timeout`; fan-out children inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<Failure>,
    pub created_ms: u64,
    /// The number of the last history event noted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history_seq: u64,
    /// Agent calls (model requests) made so far (`settings.max_agent_calls`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub agent_calls: u64,
    /// Events noted since the last save, written to the store's history with
    /// the next save; never part of the checkpoint.
    #[serde(skip)]
    pub journal: Vec<crate::backend::NewEvent>,
}
