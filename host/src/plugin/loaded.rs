//! A loaded plugin and its calls: a fresh store and instance per call (or a
//! warm one when `reuse` allows), the epoch deadline, the memory cap, and the
//! translation of every outcome into a value or a typed [`PluginError`].

use super::bindings::{hook, processor, step, wit};
use super::call::{CallContext, DirGrant, StoreState};
use super::error::PluginError;
use super::limits::{LimitOverrides, Limits};
use super::runtime::{Compiled, LoadReport, PluginSettings, Pre, RuntimeInner, World};
use crate::text::escape_control;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

/// Extra time the outer fence waits beyond the epoch deadline before it drops
/// the call (only reached if the guest is stuck in a host call).
const FENCE_GRACE: Duration = Duration::from_millis(250);
/// Most idle warm instances kept per plugin, whatever its pool says.
const MAX_WARM: usize = 1024;

pub use wit::CallMeta;

/// What `info()` reports about a plugin.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub kinds: Vec<String>,
    pub description: String,
    pub config_schema: Option<Value>,
}

/// A lifecycle event for a hook plugin.
pub use wit::{ErrorInfo, HookEvent, TransitionInfo};

/// What a hook returned.
#[derive(Debug, Clone, PartialEq)]
pub struct HookResult {
    pub context: Option<Value>,
    pub redirect: Option<String>,
}

/// What a step returned.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    pub output: Value,
    pub next: Option<String>,
}

/// How a call went, besides its result.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    /// Time to create the store and instance (zero when a warm one was reused).
    pub instantiate: Duration,
    /// Time inside the guest's export, host calls included.
    pub call: Duration,
    pub reused: bool,
}

enum Instance {
    Processor(processor::Processor),
    Hook(hook::Hook),
    Step(step::Step),
}

struct Warm {
    store: Store<StoreState>,
    instance: Instance,
    uses: u32,
    /// When it went back to the pool.
    idle_since: Instant,
}

/// How a plugin's warm pool has served calls so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WarmStats {
    /// Calls that found a warm instance.
    pub hits: u64,
    /// Calls that had to make one (the pool was empty).
    pub misses: u64,
    /// Instances waiting now.
    pub idle: usize,
}

struct Inner {
    runtime: Arc<RuntimeInner>,
    compiled: Arc<Compiled>,
    name: Arc<str>,
    config: Arc<str>,
    limits: Limits,
    grants: Vec<DirGrant>,
    /// Outbound HTTP (one per plugin name and grant: one concurrency cap).
    http: Arc<super::net::HttpPolicy>,
    reuse: u32,
    pool: super::runtime::WarmPool,
    report: LoadReport,
    /// Oldest first.
    warm: Mutex<Vec<Warm>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A plugin ready to call. Cheap to clone; clones share warm instances.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

impl Plugin {
    pub(crate) fn new(
        runtime: Arc<RuntimeInner>,
        compiled: Arc<Compiled>,
        settings: PluginSettings,
        limits: Limits,
        report: LoadReport,
    ) -> Plugin {
        let name: Arc<str> = settings.name.into();
        let http = runtime.http_policy(&name, settings.http);
        Plugin {
            inner: Arc::new(Inner {
                runtime,
                compiled,
                name,
                config: settings.config.to_string().into(),
                limits,
                grants: settings.grants,
                http,
                reuse: settings.reuse,
                pool: settings.pool,
                report,
                warm: Mutex::new(Vec::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn world(&self) -> World {
        self.inner.compiled.world
    }
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
    /// The component's content digest (BLAKE3), its key in the caches.
    pub fn digest(&self) -> &str {
        &self.inner.compiled.digest
    }
    pub fn load_report(&self) -> LoadReport {
        self.inner.report
    }

    /// The same plugin with tighter limits (e.g. a state's `timeout`). The
    /// result does not share warm instances with `self`.
    pub fn tightened(&self, overrides: &LimitOverrides) -> Plugin {
        let i = &self.inner;
        Plugin {
            inner: Arc::new(Inner {
                runtime: i.runtime.clone(),
                compiled: i.compiled.clone(),
                name: i.name.clone(),
                config: i.config.clone(),
                limits: i.limits.tightened_by(overrides),
                grants: i.grants.clone(),
                http: i.http.clone(),
                reuse: i.reuse,
                pool: i.pool,
                report: i.report,
                warm: Mutex::new(Vec::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// Calls `info()`.
    pub async fn info(&self) -> Result<PluginInfo, PluginError> {
        let ctx = CallContext::default();
        let (info, _) = self
            .call(&ctx, |instance, store| {
                Box::pin(async move {
                    match instance {
                        Instance::Processor(p) => p.call_info(store).await,
                        Instance::Hook(h) => h.call_info(store).await,
                        Instance::Step(s) => s.call_info(store).await,
                    }
                })
            })
            .await?;
        let config_schema = match info.config_schema {
            None => None,
            Some(text) => Some(self.parse_output("config-schema", &text)?),
        };
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            kinds: info.kinds,
            description: info.description,
            config_schema,
        })
    }

    /// Runs a processor: `input` in, JSON out.
    pub async fn process(
        &self,
        meta: &CallMeta,
        input: &Value,
        ctx: &CallContext,
    ) -> Result<Value, PluginError> {
        self.process_timed(meta, input, ctx).await.map(|(v, _)| v)
    }

    /// [`Plugin::process`], also returning how long instantiation and the call took.
    pub async fn process_timed(
        &self,
        meta: &CallMeta,
        input: &Value,
        ctx: &CallContext,
    ) -> Result<(Value, CallStats), PluginError> {
        self.expect_world(World::Processor)?;
        let input = input.to_string();
        let meta = meta.clone();
        let (result, stats) = self
            .call(ctx, move |instance, store| {
                Box::pin(async move {
                    match instance {
                        Instance::Processor(p) => p.call_process(store, &meta, &input).await,
                        _ => wasmtime::bail!("internal error: world checked before the call"),
                    }
                })
            })
            .await?;
        let text = result.map_err(guest_error)?;
        Ok((self.parse_output("output", &text)?, stats))
    }

    /// Delivers a lifecycle event to a hook.
    pub async fn on_event(
        &self,
        event: &HookEvent,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<HookResult, PluginError> {
        self.expect_world(World::Hook)?;
        let context = context.to_string();
        let (event, meta) = (event.clone(), meta.clone());
        let (result, _) = self
            .call(ctx, move |instance, store| {
                Box::pin(async move {
                    match instance {
                        Instance::Hook(h) => h.call_on_event(store, &event, &meta, &context).await,
                        _ => wasmtime::bail!("internal error: world checked before the call"),
                    }
                })
            })
            .await?;
        let outcome = result.map_err(guest_error)?;
        Ok(HookResult {
            context: outcome
                .context
                .map(|c| self.parse_output("context", &c))
                .transpose()?,
            redirect: outcome.redirect,
        })
    }

    /// Runs a step: context in, output and optional next state out.
    pub async fn run(
        &self,
        meta: &CallMeta,
        context: &Value,
        ctx: &CallContext,
    ) -> Result<StepOutput, PluginError> {
        self.expect_world(World::Step)?;
        let context = context.to_string();
        let meta = meta.clone();
        let (result, _) = self
            .call(ctx, move |instance, store| {
                Box::pin(async move {
                    match instance {
                        Instance::Step(s) => s.call_run(store, &meta, &context).await,
                        _ => wasmtime::bail!("internal error: world checked before the call"),
                    }
                })
            })
            .await?;
        let out = result.map_err(guest_error)?;
        Ok(StepOutput {
            output: self.parse_output("output", &out.output)?,
            next: out.next,
        })
    }

    /// A plugin used as the wrong kind does not fit its caller: a `link` error.
    pub fn expect_world(&self, world: World) -> Result<(), PluginError> {
        if self.world() == world {
            return Ok(());
        }
        Err(PluginError::link(format!(
            "`{}` is a {} plugin, but a {world} plugin is needed here",
            self.name(),
            self.world()
        )))
    }

    /// Checks a JSON value coming out of the guest: size, then syntax.
    fn parse_output(&self, what: &str, text: &str) -> Result<Value, PluginError> {
        let limit = self.inner.limits.output_bytes;
        if text.len() as u64 > limit {
            return Err(PluginError::InvalidOutput {
                reason: format!("{what} is {} bytes; the limit is {limit} bytes", text.len()),
            });
        }
        serde_json::from_str(text).map_err(|e| PluginError::InvalidOutput {
            reason: format!("{what} is not valid JSON: {e}"),
        })
    }

    /// The one place a guest runs: get an instance, arm the deadline, call,
    /// classify the outcome, and keep the instance only if reuse allows.
    async fn call<R: Send>(
        &self,
        ctx: &CallContext,
        f: impl for<'a> FnOnce(&'a Instance, &'a mut Store<StoreState>) -> CallFuture<'a, R>,
    ) -> Result<(R, CallStats), PluginError> {
        let limits = &self.inner.limits;
        let started = Instant::now();
        let warm = self.take_warm();
        let reused = warm.is_some();
        let (mut store, instance, uses) = match warm {
            Some(w) => (w.store, Some(w.instance), w.uses),
            None => (self.new_store()?, None, 0),
        };
        store
            .data_mut()
            .reset_for_call(ctx.clone(), started + limits.timeout);
        store.set_epoch_deadline(1);
        if self.inner.runtime.config.fuel {
            store
                .set_fuel(limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| PluginError::load(format!("cannot set fuel: {e}")))?;
        }

        let mut stats = CallStats {
            reused,
            ..CallStats::default()
        };
        let run = async {
            let instance = match instance {
                Some(i) => i,
                None => self.instantiate(&mut store).await?,
            };
            stats.instantiate = started.elapsed();
            let call_started = Instant::now();
            let result = f(&instance, &mut store).await?;
            stats.call = call_started.elapsed();
            Ok::<_, wasmtime::Error>((result, instance))
        };
        let outcome = tokio::time::timeout(limits.timeout + FENCE_GRACE, run).await;
        match outcome {
            Err(_) => {
                Err(self
                    .timeout_error("the call did not return after its deadline and was dropped"))
            }
            Ok(Err(e)) => Err(self.classify(e, store.data())),
            Ok(Ok((result, instance))) => {
                if uses + 1 < self.inner.reuse {
                    self.put_warm(Warm {
                        store,
                        instance,
                        uses: uses + 1,
                        idle_since: Instant::now(),
                    });
                }
                Ok((result, stats))
            }
        }
    }

    fn new_store(&self) -> Result<Store<StoreState>, PluginError> {
        let i = &self.inner;
        let data = StoreState::new(
            i.name.clone(),
            i.config.clone(),
            &i.grants,
            i.limits.memory_bytes,
            i.http.clone(),
        )
        .map_err(PluginError::load)?;
        let mut store = Store::new(&i.runtime.engine, data);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if state.context.cancel.interrupt_due(Instant::now()) {
                wasmtime::bail!("cancelled by the host");
            }
            if state.deadline.is_some_and(|d| Instant::now() >= d) {
                state.timed_out = true;
                wasmtime::bail!("deadline reached");
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }

    async fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Instance> {
        Ok(match &self.inner.compiled.pre {
            Pre::Processor(p) => Instance::Processor(p.instantiate_async(store).await?),
            Pre::Hook(p) => Instance::Hook(p.instantiate_async(store).await?),
            Pre::Step(p) => Instance::Step(p.instantiate_async(store).await?),
        })
    }

    fn timeout_error(&self, detail: &str) -> PluginError {
        let limit = self.inner.limits.timeout;
        PluginError::Timeout {
            limit,
            detail: format!("{} ms limit: {detail}", limit.as_millis()),
        }
    }

    /// Turns a failed call into the error kind it really is.
    fn classify(&self, error: wasmtime::Error, state: &StoreState) -> PluginError {
        tracing::debug!(plugin = %self.inner.name, "call failed: {error:?}");
        if state.timed_out {
            return self.timeout_error("the guest was still running and was interrupted");
        }
        if let Some(requested) = state.memory.exceeded {
            return PluginError::OutOfMemory {
                limit: state.memory.limit,
                requested,
            };
        }
        let message = match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                let fuel = self.inner.limits.fuel.unwrap_or(u64::MAX);
                return PluginError::Timeout {
                    limit: self.inner.limits.timeout,
                    detail: format!("the guest ran out of fuel ({fuel} units)"),
                };
            }
            Some(Trap::StackOverflow) => {
                "stack overflow (the guest recursed too deeply)".to_string()
            }
            Some(Trap::MemoryOutOfBounds) => format!(
                "{} (in Rust or C guests this is often a stack overflow: deep recursion runs out of the stack kept in linear memory)",
                Trap::MemoryOutOfBounds
            ),
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        let stderr = state.stderr.tail();
        let message = if stderr.is_empty() {
            message
        } else {
            format!("{message}; guest stderr: {}", escape_control(&stderr))
        };
        PluginError::Trap { message }
    }

    fn warm_pool(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        // Each change is one push or pop: a poisoned lock holds a usable list.
        self.inner.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops idle instances past the idle timeout, oldest first, keeping `min`.
    fn prune(&self, pool: &mut Vec<Warm>) {
        let p = &self.inner.pool;
        let keep_from = pool
            .iter()
            .position(|w| w.idle_since.elapsed() < p.idle_timeout)
            .unwrap_or(pool.len())
            .min(pool.len().saturating_sub(p.min as usize));
        pool.drain(..keep_from);
    }

    fn take_warm(&self) -> Option<Warm> {
        if self.inner.reuse == 0 {
            return None;
        }
        let mut pool = self.warm_pool();
        self.prune(&mut pool);
        let warm = pool.pop();
        let counter = match warm {
            Some(_) => &self.inner.hits,
            None => &self.inner.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        warm
    }

    fn put_warm(&self, warm: Warm) {
        let mut pool = self.warm_pool();
        self.prune(&mut pool);
        if pool.len() < (self.inner.pool.max as usize).min(MAX_WARM) {
            pool.push(warm);
        }
    }

    /// Its warm pool so far (all zero for a plugin that is not reused).
    pub fn warm_stats(&self) -> WarmStats {
        WarmStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            idle: self.warm_pool().len(),
        }
    }

    /// Makes instances until `min` wait warm (a reused plugin whose pool
    /// says `warm_up`); returns how many it made.
    pub async fn warm_up(&self) -> Result<usize, PluginError> {
        let p = &self.inner.pool;
        if self.inner.reuse == 0 || !p.warm_up {
            return Ok(0);
        }
        let mut made = 0;
        while self.warm_pool().len() < p.min as usize {
            let mut store = self.new_store()?;
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = self
                .instantiate(&mut store)
                .await
                .map_err(|e| PluginError::load(format!("warm-up of `{}`: {e:#}", self.name())))?;
            self.put_warm(Warm {
                store,
                instance,
                uses: 0,
                idle_since: Instant::now(),
            });
            made += 1;
        }
        Ok(made)
    }
}

fn guest_error(e: wit::PluginError) -> PluginError {
    match e {
        wit::PluginError::InvalidInput(m) => PluginError::InvalidInput(escape_control(&m).into()),
        wit::PluginError::Retryable(m) => PluginError::Retryable(escape_control(&m).into()),
        wit::PluginError::Fatal(m) => PluginError::Fatal(escape_control(&m).into()),
    }
}

/// A call meta for calls made outside any execution (CLI, tests).
pub fn standalone_meta(state: &str) -> CallMeta {
    let execution_id = "standalone".to_string();
    CallMeta {
        idempotency_key: format!("{execution_id}/1/1"),
        execution_id,
        machine: String::new(),
        state: state.to_string(),
        step: 1,
        attempt: 1,
        deadline_ms: 0,
    }
}
