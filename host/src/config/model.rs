//! The typed machine model: what a validated config is. Validation reads
//! the serde form (`schema`) once, turns every part that YAML allows in
//! several shapes (`machine:`, `launch:`, `on_error`, hooks, plugin and
//! agent specs, child machine files) into the types here, and hands out
//! nothing else. The engine and the state diagram read these types; none of
//! them looks at a JSON shape to learn what a config means.
//!
//! Templates (`input`, `output`, `foreach`, `context`, ...) and plugin
//! `config` stay JSON values: they are data, rendered or passed on as they
//! are.
//!
//! Imports `failure`.

use super::schema::{Execution, Mode, Persistence, Settings, StateType, Transition};
use crate::failure::FailureKind;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A validated machine: `data` of a `spec: flatmachine` file.
#[derive(Debug, Clone)]
pub struct Data {
    pub name: Option<String>,
    /// Initial context: templates rendered once with `{input}`.
    pub context: Map<String, Value>,
    /// `data.agents`, each a plugin.
    pub agents: BTreeMap<String, PluginSpec>,
    /// `data.machines`: child machines by name.
    pub machines: BTreeMap<String, ChildMachine>,
    /// `data.plugins`: plugin specs by alias.
    pub plugins: BTreeMap<String, PluginSpec>,
    /// In file order.
    pub states: IndexMap<String, State>,
    pub settings: Settings,
    pub persistence: Option<Persistence>,
    /// `data.hooks`, then `data.lifecycle_hooks`; they apply to every state
    /// and sub-machine.
    pub hooks: Vec<Hook>,
}

/// A plugin as a config names it: `alias: name`, or
/// `{plugin, version, sha256, config, limits, reuse}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginSpec {
    /// The plugin's name in the plugins folder (or a path to a `.wasm`).
    pub plugin: String,
    pub version: Option<String>,
    /// The plugin must have this sha256 (hex).
    pub sha256: Option<String>,
    /// Replaces the manifest's `config`.
    pub config: Option<Value>,
    /// Tighter limits than the plugin's own (never wider).
    pub limits: PluginLimits,
    /// Calls a warm instance serves before it is replaced.
    pub reuse: Option<u32>,
    /// A warm pool of reused instances (checked by validation).
    pub pool: Option<Box<crate::warm::OperatorPool>>,
}

impl PluginSpec {
    /// The plugin `name` as it is installed.
    pub fn named(name: &str) -> PluginSpec {
        PluginSpec {
            plugin: name.to_string(),
            version: None,
            sha256: None,
            config: None,
            limits: PluginLimits::default(),
            reuse: None,
            pool: None,
        }
    }
}

/// `limits:` of a plugin spec; every value is positive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PluginLimits {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub output_mb: Option<u64>,
}

impl PluginLimits {
    /// The keys `limits:` accepts.
    pub const KEYS: [&'static str; 4] = ["memory_mb", "timeout_ms", "fuel", "output_mb"];

    /// Sets the limit `key` (one of [`Self::KEYS`]); false for another key.
    pub(super) fn set(&mut self, key: &str, value: u64) -> bool {
        let slot = match key {
            "memory_mb" => &mut self.memory_mb,
            "timeout_ms" => &mut self.timeout_ms,
            "fuel" => &mut self.fuel,
            "output_mb" => &mut self.output_mb,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// A child machine of `data.machines`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildMachine {
    /// A file, relative to the config that names it.
    File(String),
    /// A machine written inline, as YAML text of a whole config.
    Inline(String),
}

/// A hook entry, with its plugin resolved through `data.plugins`.
#[derive(Debug, Clone, PartialEq)]
pub enum Hook {
    /// A hook plugin (`alias`, `{name, args}` or the legacy `{file, class}`).
    Plugin(PluginSpec),
    /// The seed's `DistributedWorkerHooks`: the host's built-in work-pool
    /// actions.
    BuiltinWorkerActions,
}

/// A child a `machine:` or `launch:` key names, with its own `input`
/// template if it has one (else the state's input is used).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    pub machine: String,
    pub input: Option<Value>,
}

/// What a state's `machine:` runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Children {
    /// `machine: name`: one blocking child; its output is the state's.
    One(ChildSpec),
    /// `machine: [a, b]`: in parallel; the output is `{a: …, b: …}`.
    Parallel(Vec<ChildSpec>),
}

impl Children {
    pub fn list(&self) -> &[ChildSpec] {
        match self {
            Children::One(c) => std::slice::from_ref(c),
            Children::Parallel(list) => list,
        }
    }
}

/// Where a failed state goes: `on_error: state`, or a map from failure
/// kind (and `default`) to state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnError {
    /// Routes by kind, in the config's order.
    pub by_kind: Vec<(FailureKind, String)>,
    /// Every other kind (`on_error: state`, or the map's `default`).
    pub default: Option<String>,
}

impl OnError {
    /// The state a failure of `kind` goes to, if any.
    pub fn target(&self, kind: FailureKind) -> Option<&str> {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s.as_str())
            .or(self.default.as_deref())
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty() && self.default.is_none()
    }
}

/// What a state runs, if it runs a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Runs {
    pub kind: RunKind,
    /// The alias or agent name as the state wrote it.
    pub name: String,
    pub spec: PluginSpec,
    /// A FlatAgents agent: the `llm` plugin runs it and answers with an
    /// envelope (`{output, usage}` or `{error}`) the engine unwraps.
    pub llm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `plugin: alias`: a processor.
    Plugin,
    /// `agent: name`: a processor declared under `data.agents`.
    Agent,
    /// `step: alias`: a step plugin, which may name the next state.
    Step,
}

/// One state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub kind: Option<StateType>,
    /// A hook plugin's action or a built-in host action.
    pub action: Option<String>,
    /// Hooks of this state only.
    pub hooks: Vec<Hook>,
    /// The plugin, agent or step the state runs.
    pub runs: Option<Runs>,
    pub execution: Option<Execution>,
    pub machine: Option<Children>,
    /// A template giving the list of items (with `machine`).
    pub foreach: Option<Value>,
    pub as_name: Option<String>,
    pub key: Option<String>,
    pub mode: Option<Mode>,
    pub continue_on_partial: bool,
    /// Seconds.
    pub timeout: Option<f64>,
    pub max_concurrency: Option<u32>,
    pub input: Option<Value>,
    pub output_to_context: Option<Map<String, Value>>,
    /// Children started fire-and-forget.
    pub launch: Vec<ChildSpec>,
    pub launch_input: Option<Value>,
    pub wait_for: Option<String>,
    pub on_error: OnError,
    pub transitions: Vec<Transition>,
    pub output: Option<Value>,
}

impl State {
    pub fn is_final(&self) -> bool {
        self.kind == Some(StateType::Final)
    }

    /// Whether the state runs a step plugin (which may choose the next state).
    pub fn is_step(&self) -> bool {
        self.runs.as_ref().is_some_and(|r| r.kind == RunKind::Step)
    }
}
