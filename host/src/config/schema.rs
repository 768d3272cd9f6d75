//! The serde model of `spec: flatmachine` files (FlatMachines 1.x seed files
//! and 4.x), plus flowhost's `data.plugins`.
//!
//! Fixed-shape parts are typed structs with `deny_unknown_fields`, so a typo
//! is an error. Parts with several accepted shapes (agents, machines, plugins,
//! hooks, `machine:`, `launch:`, `on_error`) stay JSON values here; validation
//! reads them once, says exactly what shape was expected, and turns them
//! into the typed [`model`](super::model). Nothing outside `config` reads
//! this form.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    pub spec: String,
    #[serde(default)]
    pub spec_version: Option<String>,
    pub data: MachineData,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineData {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub expression_engine: Option<String>,
    /// Initial context: templates rendered once with `{input}`.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// `name: ./agent.yml` (FlatAgents, not runnable here) or `name: {plugin: alias-or-name, ...}`.
    #[serde(default)]
    pub agents: BTreeMap<String, Value>,
    /// `name: ./child.yml` (relative to this file) or an inline machine.
    #[serde(default)]
    pub machines: BTreeMap<String, Value>,
    /// `alias: name` or `alias: {plugin, version, sha256, config, limits, reuse}`.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    /// In file order: without a `type: initial` state, `start` or the first state begins.
    pub states: IndexMap<String, State>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub persistence: Option<Persistence>,
    /// Legacy `{file, class}` or hook plugin name(s); applies to every state and sub-machine.
    #[serde(default)]
    pub hooks: Option<Value>,
    #[serde(default)]
    pub lifecycle_hooks: Option<Value>,
    /// Seed files name a FlatAgents profiles file; accepted and not used.
    #[serde(default)]
    pub profiles: Option<String>,
}

/// `settings`: a free dict (seed files put their own keys here); flowhost reads these.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Events of history kept per execution (0 keeps none).
    #[serde(default)]
    pub history_limit: Option<u32>,
    /// Seconds an execution of this machine may take in all (from its
    /// start, or its submit); past it, it is cancelled with kind `timeout`.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Most agent calls (LLM requests) one execution may make; past it the
    /// state fails with kind `max_agent_calls`.
    #[serde(default)]
    pub max_agent_calls: Option<u64>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub db_path: Option<String>,
    #[serde(default)]
    pub checkpoint_on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateType {
    Initial,
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Settled,
    Any,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default, rename = "type")]
    pub kind: Option<StateType>,
    /// A hook plugin's action or a built-in host action.
    #[serde(default)]
    pub action: Option<String>,
    /// Hook plugin(s) local to this state.
    #[serde(default)]
    pub hooks: Option<Value>,
    /// An agent from `data.agents` (run as its plugin).
    #[serde(default)]
    pub agent: Option<String>,
    /// A processor from `data.plugins` (or the plugins folder).
    #[serde(default)]
    pub plugin: Option<String>,
    /// A step plugin that may choose the next state.
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub execution: Option<Execution>,
    /// `name` (blocking child) or a list (parallel).
    #[serde(default)]
    pub machine: Option<Value>,
    #[serde(default)]
    pub foreach: Option<Value>,
    #[serde(default, rename = "as")]
    pub as_name: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Fan-out states: finish with every child's output or error as data
    /// (`{ok, output}` / `{ok, error}`) instead of failing on a failed child.
    #[serde(default)]
    pub continue_on_partial: Option<bool>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub output_to_context: Option<Map<String, Value>>,
    #[serde(default)]
    pub launch: Option<Value>,
    #[serde(default)]
    pub launch_input: Option<Value>,
    #[serde(default)]
    pub wait_for: Option<String>,
    /// A state name, or `{error_kind: state, default: state}`.
    #[serde(default)]
    pub on_error: Option<Value>,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    #[serde(default)]
    pub output: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    #[serde(default)]
    pub condition: Option<String>,
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionType {
    Default,
    Retry,
    /// Agent states: `n_samples` calls at once; the output is `{results, count}`.
    Parallel,
    /// Agent states: sample until one answer leads the others by `k_margin`
    /// votes (at most `max_candidates` calls); the output is that answer.
    #[serde(rename = "mdap_voting")]
    MdapVoting,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Execution {
    #[serde(rename = "type")]
    pub kind: ExecutionType,
    /// Seconds to wait before each retry; their count is the number of retries.
    #[serde(default)]
    pub backoffs: Option<Vec<f64>>,
    /// Fraction of each backoff added or removed at random.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// An empty output (null, "", {}, [] or an empty `content`) counts as a
    /// retryable failure.
    #[serde(default)]
    pub retry_on_empty: bool,
    /// `parallel`: calls made at once (default 3).
    #[serde(default)]
    pub n_samples: Option<u32>,
    /// `mdap_voting`: the lead that wins (default 3).
    #[serde(default)]
    pub k_margin: Option<u32>,
    /// `mdap_voting`: most calls (default 10).
    #[serde(default)]
    pub max_candidates: Option<u32>,
}
