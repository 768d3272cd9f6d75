//! What the engine calls to run a state, a hook or a step: the [`Runner`]
//! trait, and [`Runners`], where a machine tree's runners come from. Loaded
//! WebAssembly plugins are the real ones ([`Library`](super::Library));
//! engine unit tests give fakes, so the step is tested without any `.wasm`.

use super::EngineError;
use crate::config::PluginSpec;
use crate::plugin::{
    CallContext, CallMeta, HookEvent, HookResult, LimitOverrides, Plugin, PluginError, StepOutput,
    World,
};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One runnable thing of a machine: a processor, a hook or a step.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    fn name(&self) -> &str;
    /// How long one call may take (the call's deadline is derived from it).
    fn timeout(&self) -> Duration;
    /// The same runner with a time limit no longer than `limit`.
    fn with_timeout(&self, limit: Duration) -> Arc<dyn Runner>;
    /// A processor call: input in, JSON out.
    async fn process(
        &self,
        meta: &CallMeta,
        input: &Value,
        ctx: &CallContext,
    ) -> Result<Value, PluginError>;
    /// A step call: context in, output and the next state (if it chooses) out.
    async fn run(
        &self,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<StepOutput, PluginError>;
    /// A hook call: a lifecycle event.
    async fn on_event(
        &self,
        event: &HookEvent,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<HookResult, PluginError>;
}

/// A runner as loaded for a spec, with what a definition pins of it.
#[derive(Clone)]
pub struct Loaded {
    pub name: String,
    /// Content digest of what runs (the component's, for plugins).
    pub digest: String,
    pub runner: Arc<dyn Runner>,
}

/// Where a machine tree's runners come from.
pub trait Runners: Send + Sync {
    /// The runner a plugin spec names, to be used as `world`.
    fn load(&self, spec: &PluginSpec, world: World) -> Result<Loaded, EngineError>;
    /// The runner for `spec` whose digest is `digest`, if this process
    /// loaded that version before (it may have changed on disk since): what
    /// an execution pinned to it continues on.
    fn version(&self, _spec: &PluginSpec, _world: World, _digest: &str) -> Option<Loaded> {
        None
    }
    /// Plugin `name` changed on disk: the next [`Runners::load`] reads it
    /// again. Versions handed out keep running (calls in flight, executions
    /// pinned to them).
    fn forget(&self, _name: &str) {}
    /// The warm pools of the plugins loaded now, by plugin name.
    fn warm_stats(&self) -> Vec<(String, crate::plugin::WarmStats)> {
        Vec::new()
    }
    /// The plugins folder names are checked against (and that spawned
    /// processes are given), when there is one.
    fn plugins_dir(&self) -> Option<&Path>;
}

#[async_trait::async_trait]
impl Runner for Plugin {
    fn name(&self) -> &str {
        Plugin::name(self)
    }

    fn timeout(&self) -> Duration {
        self.limits().timeout
    }

    fn with_timeout(&self, limit: Duration) -> Arc<dyn Runner> {
        Arc::new(self.tightened(&LimitOverrides {
            timeout_ms: Some((limit.as_millis() as u64).max(1)),
            ..Default::default()
        }))
    }

    async fn process(
        &self,
        meta: &CallMeta,
        input: &Value,
        ctx: &CallContext,
    ) -> Result<Value, PluginError> {
        Plugin::process(self, meta, input, ctx).await
    }

    async fn run(
        &self,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<StepOutput, PluginError> {
        Plugin::run(self, meta, context, ctx).await
    }

    async fn on_event(
        &self,
        event: &HookEvent,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<HookResult, PluginError> {
        Plugin::on_event(self, event, meta, context, ctx).await
    }
}
