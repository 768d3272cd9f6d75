//! The wasmtime runtime: one engine per process, the linker, the epoch ticker,
//! and loading components (read, verify, compile or fetch from cache, check
//! the contract version, pre-link).

use super::bindings::{hook, processor, step};
use super::cache::{CompileCache, content_digest, sha256_hex};
use super::call::{DirGrant, StoreState};
use super::error::PluginError;
use super::limits::{LimitOverrides, Limits};
use super::loaded::Plugin;
pub use crate::warm::{OperatorPool, WarmPool};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

const MIB: u64 = 1 << 20;
/// The contract this host implements (`wit/plugin.wit`).
pub const CONTRACT_PACKAGE: &str = "flowhost:plugin";
pub const CONTRACT_VERSION: &str = "0.1.0";

/// How the runtime is sized. Checked by [`Runtime::new`], which fails rather
/// than silently running with less.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Component instances that may be alive at once (the pool's slot count).
    pub max_instances: u32,
    /// The largest memory cap any plugin may ask for, in bytes.
    pub memory_ceiling: u64,
    /// Build the engine with fuel metering (`limits.fuel` then applies).
    pub fuel: bool,
    /// Where compiled plugins are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Limits of a plugin that sets none.
    pub defaults: Limits,
    /// Warm pools the operator sets per plugin name (they win over the
    /// plugin's manifest): `max_uses` as the plugin's `reuse`, and the pool.
    pub warm_pools: std::collections::BTreeMap<String, OperatorPool>,
    /// Outbound HTTP: the hosts the operator allows, the secrets added.
    pub net: Arc<super::net::NetConfig>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 256,
            memory_ceiling: 1024 * MIB,
            fuel: false,
            cache_dir: CompileCache::default_dir(),
            defaults: Limits::default(),
            warm_pools: Default::default(),
            net: Default::default(),
        }
    }
}

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    #[error(
        "cannot set up the plugin engine for {instances} instances with a {ceiling_mib} MiB memory ceiling: {reason} (lower --max-instances or the memory ceiling)"
    )]
    Engine {
        instances: u32,
        ceiling_mib: u64,
        reason: String,
    },
}

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    Processor,
    Hook,
    Step,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Processor => "processor",
            World::Hook => "hook",
            World::Step => "step",
        }
    }

    /// The export that identifies the world.
    fn entry_point(self) -> &'static str {
        match self {
            World::Processor => "process",
            World::Hook => "on-event",
            World::Step => "run",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now with Cranelift.
    Compiled,
    /// Read back from the disk cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

/// What a load did and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub source: LoadSource,
    pub duration: Duration,
}

/// How to run a plugin: its name, config, limits, grants and reuse.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub name: String,
    /// What the guest's `config()` returns.
    pub config: Value,
    /// Replaces the runtime's default limits field by field.
    pub limits: LimitOverrides,
    /// Directories lent to the plugin (none by default).
    pub grants: Vec<DirGrant>,
    /// Calls one instance may serve before it is discarded; 0 = a fresh
    /// instance for every call (the default, and the isolated choice).
    /// With reuse, finished instances wait in a warm pool (`pool`).
    pub reuse: u32,
    /// How the warm pool of a reused plugin is kept.
    pub pool: WarmPool,
    /// Refuse to load unless the file's sha256 is this (hex).
    pub sha256: Option<String>,
    /// Outbound HTTP the plugin asks for (its manifest's `allowed_hosts`).
    pub http: super::net::HttpGrant,
}

impl PluginSettings {
    pub fn new(name: impl Into<String>) -> Self {
        PluginSettings {
            name: name.into(),
            config: Value::Object(Default::default()),
            limits: LimitOverrides::default(),
            grants: Vec::new(),
            reuse: 0,
            pool: WarmPool::default(),
            sha256: None,
            http: Default::default(),
        }
    }
}

impl PluginSettings {
    /// Reuse on, with the warm pool `pool` describes.
    pub fn pooled(&mut self, pool: &OperatorPool) -> Result<(), String> {
        let (uses, warm) = pool.pool()?;
        self.reuse = uses;
        self.pool = warm;
        Ok(())
    }
}

/// A compiled, pre-linked component, shared by every [`Plugin`] made from it.
pub(crate) struct Compiled {
    pub(crate) pre: Pre,
    pub(crate) world: World,
    /// [`content_digest`] of the component.
    pub(crate) digest: String,
}

pub(crate) enum Pre {
    Processor(processor::ProcessorPre<StoreState>),
    Hook(hook::HookPre<StoreState>),
    Step(step::StepPre<StoreState>),
}

/// What `flowhost plugin inspect` shows about a component.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    pub world: Option<World>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub size: usize,
    pub sha256: String,
    /// Why the component cannot run on this host, if it cannot.
    pub link_error: Option<String>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    linker: Linker<StoreState>,
    pub(crate) config: RuntimeConfig,
    cache: Option<CompileCache>,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    /// The outbound-HTTP policy of each plugin name and grant, shared by
    /// every spec loaded from it (one `max_concurrent` for all its agents).
    http: Mutex<HashMap<(String, super::net::HttpGrant), Arc<super::net::HttpPolicy>>>,
    _ticker: Ticker,
}

impl RuntimeInner {
    pub(crate) fn http_policy(
        &self,
        name: &Arc<str>,
        grant: super::net::HttpGrant,
    ) -> Arc<super::net::HttpPolicy> {
        let mut all = self.http.lock().unwrap_or_else(|p| p.into_inner());
        all.entry((name.to_string(), grant.clone()))
            .or_insert_with(|| {
                Arc::new(super::net::HttpPolicy::new(
                    name.clone(),
                    grant,
                    self.config.net.clone(),
                ))
            })
            .clone()
    }
}

/// The plugin runtime. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl Runtime {
    /// Builds the engine (pooling allocator, copy-on-write memory images,
    /// epoch interruption with a 1 ms ticker) and the linker.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        validate(&config)?;
        let engine = Engine::new(&engine_config(&config)).map_err(|e| RuntimeError::Engine {
            instances: config.max_instances,
            ceiling_mib: config.memory_ceiling / MIB,
            reason: format!("{e:#}"),
        })?;
        let mut linker = Linker::new(&engine);
        let link = |r: wasmtime::Result<()>| {
            r.map_err(|e| RuntimeError::Config(format!("cannot build the linker: {e:#}")))
        };
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(processor::Processor::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s))?;
        link(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
            &mut linker,
        ))?;
        // An unusable cache is not a reason to refuse every call: warn once
        // and compile in memory.
        let cache =
            config
                .cache_dir
                .as_ref()
                .and_then(|dir| match CompileCache::open(dir, &engine) {
                    Ok(cache) => Some(cache),
                    Err(e) => {
                        tracing::warn!(
                            "compile cache {} is not used ({e}); plugins are compiled in memory",
                            dir.display()
                        );
                        None
                    }
                });
        let ticker = Ticker::start(engine.clone());
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                cache,
                compiled: Mutex::new(HashMap::new()),
                http: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The disk cache, if enabled.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.cache.as_ref()
    }

    /// Loads a plugin from a `.wasm` component file.
    /// The plugin `spec` (a name in `dir` or a `.wasm` path) with its
    /// manifest's settings, changed by `adjust`, checked to be a `world`
    /// plugin: the one way the engine and the commands load a plugin by name.
    pub fn load_named(
        &self,
        spec: &str,
        dir: &Path,
        world: super::World,
        adjust: impl FnOnce(&mut PluginSettings),
    ) -> Result<Plugin, PluginError> {
        let located = super::registry::locate(spec, dir)?;
        let mut settings = located.settings()?;
        adjust(&mut settings);
        let plugin = self.load_file(&located.wasm, settings)?;
        plugin.expect_world(world)?;
        Ok(plugin)
    }

    pub fn load_file(&self, path: &Path, settings: PluginSettings) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path)
            .map_err(|e| PluginError::load(format!("cannot read {}: {e}", path.display())))?;
        self.load_bytes(&bytes, settings)
    }

    /// Loads a plugin from the bytes of a component. Compiling is CPU-bound:
    /// call this from a blocking context (e.g. `spawn_blocking`) in a server.
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        settings: PluginSettings,
    ) -> Result<Plugin, PluginError> {
        let started = Instant::now();
        let mut settings = settings;
        if let Some(pool) = self.inner.config.warm_pools.get(&settings.name) {
            settings.pooled(pool).map_err(|e| {
                PluginError::load(format!("the warm pool of `{}`: {e}", settings.name))
            })?;
        }
        if let Some(pin) = &settings.sha256
            && let sha256 = sha256_hex(bytes)
            && !pin.eq_ignore_ascii_case(&sha256)
        {
            return Err(PluginError::load(format!(
                "sha256 mismatch for `{}`: expected {pin}, the file has {sha256}",
                settings.name
            )));
        }
        let limits = self.inner.config.defaults.with(&settings.limits);
        limits
            .validate(self.inner.config.memory_ceiling)
            .map_err(|e| PluginError::load(format!("limits of `{}`: {e}", settings.name)))?;
        let mut guests = std::collections::HashSet::new();
        for grant in &settings.grants {
            if Path::new(&grant.guest)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(PluginError::load(format!(
                    "guest path `{}` of `{}` contains `..`",
                    grant.guest, settings.name
                )));
            }
            if !guests.insert(grant.guest.trim_end_matches('/')) {
                return Err(PluginError::load(format!(
                    "guest path `{}` of `{}` is granted twice",
                    grant.guest, settings.name
                )));
            }
            if !grant.host.is_dir() {
                return Err(PluginError::load(format!(
                    "granted directory {} does not exist or is not a directory",
                    grant.host.display()
                )));
            }
        }
        let (compiled, source) = self.compiled(bytes, &content_digest(bytes))?;
        let report = LoadReport {
            source,
            duration: started.elapsed(),
        };
        tracing::debug!(plugin = %settings.name, world = %compiled.world, ?source, ?report.duration, "plugin loaded");
        Ok(Plugin::new(
            self.inner.clone(),
            compiled,
            settings,
            limits,
            report,
        ))
    }

    /// Describes a component without requiring that it links.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ComponentSummary, PluginError> {
        let digest = content_digest(bytes);
        let (component, _) = self.component(bytes, &digest)?;
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let link_error = self.link(&component, &digest).err().map(|e| e.to_string());
        Ok(ComponentSummary {
            world: detect_world(&exports),
            imports,
            exports,
            size: bytes.len(),
            sha256: sha256_hex(bytes),
            link_error,
        })
    }

    fn compiled(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Arc<Compiled>, LoadSource), PluginError> {
        if let Some(hit) = self.lock_compiled().get(digest) {
            return Ok((hit.clone(), LoadSource::Memory));
        }
        let (component, source) = self.component(bytes, digest)?;
        let compiled = Arc::new(self.link(&component, digest)?);
        self.lock_compiled()
            .insert(digest.to_string(), compiled.clone());
        Ok((compiled, source))
    }

    fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Compiled>>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Gets machine code for the component: from the disk cache, or by compiling it.
    fn component(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, LoadSource), PluginError> {
        check_is_component(bytes)?;
        let engine = &self.inner.engine;
        if let Some(cache) = &self.inner.cache {
            match cache.load(engine, digest) {
                Ok(Some(component)) => return Ok((component, LoadSource::DiskCache)),
                Ok(None) => {}
                Err(reject) => tracing::warn!("compile cache entry rejected and rebuilt: {reject}"),
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| PluginError::load(format!("not a valid component: {e:#}")))?;
        if let Some(cache) = &self.inner.cache
            && let Err(e) = cache.store(digest, &component)
        {
            tracing::warn!(
                "cannot write the compile cache in {}: {e}",
                cache.dir().display()
            );
        }
        Ok((component, LoadSource::Compiled))
    }

    /// Checks the contract version, finds the world and pre-links the component.
    fn link(&self, component: &Component, digest: &str) -> Result<Compiled, PluginError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        for (name, _) in ty.imports(engine) {
            check_contract_version(name)?;
        }
        let exports: Vec<String> = ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let world = detect_world(&exports).ok_or_else(|| {
            PluginError::link(format!(
                "the component exports none of `process`, `on-event`, `run`, so it is not a flowhost plugin (it exports: {})",
                list_or_none(&exports)
            ))
        })?;
        let pre = self.inner.linker.instantiate_pre(component).map_err(|e| {
            PluginError::link(format!(
                "the {world} plugin needs something this host does not provide: {e:#}"
            ))
        })?;
        let typed = |e: wasmtime::Error| {
            PluginError::link(format!(
                "the component's exports do not match the `{world}` world of {CONTRACT_PACKAGE}@{CONTRACT_VERSION}: {e:#}"
            ))
        };
        let pre = match world {
            World::Processor => Pre::Processor(processor::ProcessorPre::new(pre).map_err(typed)?),
            World::Hook => Pre::Hook(hook::HookPre::new(pre).map_err(typed)?),
            World::Step => Pre::Step(step::StepPre::new(pre).map_err(typed)?),
        };
        Ok(Compiled {
            pre,
            world,
            digest: digest.to_string(),
        })
    }
}

fn validate(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    let fail = |m: String| Err(RuntimeError::Config(m));
    if config.max_instances == 0 {
        return fail("max_instances must be at least 1".into());
    }
    if config.memory_ceiling < MIB || config.memory_ceiling > 4096 * MIB {
        return fail(format!(
            "the memory ceiling must be between 1 MiB and 4096 MiB, not {} bytes",
            config.memory_ceiling
        ));
    }
    config
        .defaults
        .validate(config.memory_ceiling)
        .or_else(|e| fail(format!("default limits: {e}")))
}

fn engine_config(config: &RuntimeConfig) -> Config {
    let instances = config.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .max_core_instances_per_component(32)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .table_elements(100_000)
        .max_memory_size(config.memory_ceiling as usize)
        .linear_memory_keep_resident(MIB as usize)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut c = Config::new();
    c.wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel)
        .max_wasm_stack(MIB as usize)
        .async_stack_size(2 * MIB as usize)
        .parallel_compilation(true);
    c
}

/// Rejects anything that is not a WebAssembly component, with a hint.
fn check_is_component(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.starts_with(b"\x7fELF") {
        return Err(PluginError::load(
            "this is precompiled native code (.cwasm); flowhost only loads .wasm components and compiles them itself",
        ));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::load(
            "not a WebAssembly file (no `\\0asm` header)",
        ));
    }
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::load(
            "this is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`",
        ));
    }
    Ok(())
}

/// Refuses imports of the flowhost contract at an incompatible version.
fn check_contract_version(import: &str) -> Result<(), PluginError> {
    let Some(rest) = import
        .strip_prefix(CONTRACT_PACKAGE)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Ok(());
    };
    let Some((_, version)) = rest.split_once('@') else {
        return Err(PluginError::link(format!(
            "the plugin imports `{import}` without a version; this host provides {CONTRACT_PACKAGE}@{CONTRACT_VERSION}"
        )));
    };
    let ours = semver::Version::new(0, 1, 0);
    let compatible = semver::Version::parse(version)
        .map(|v| {
            if ours.major == 0 {
                v.major == 0 && v.minor == ours.minor
            } else {
                v.major == ours.major
            }
        })
        .unwrap_or(false);
    if compatible {
        Ok(())
    } else {
        Err(PluginError::link(format!(
            "the plugin was built against {CONTRACT_PACKAGE}@{version}; this host provides {CONTRACT_PACKAGE}@{CONTRACT_VERSION} (compatible: 0.1.x)"
        )))
    }
}

fn detect_world(exports: &[String]) -> Option<World> {
    [World::Processor, World::Hook, World::Step]
        .into_iter()
        .find(|w| exports.iter().any(|e| e == w.entry_point()))
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

/// Advances the engine's epoch every millisecond; the per-store deadline
/// callback turns ticks into timeouts and cooperative yields.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("flowhost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    engine.increment_epoch();
                }
            })
            .ok();
        Ticker { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_versions() {
        assert!(check_contract_version("flowhost:plugin/host@0.1.0").is_ok());
        assert!(check_contract_version("flowhost:plugin/host@0.1.7").is_ok());
        assert!(check_contract_version("wasi:cli/environment@0.2.6").is_ok());
        let err = check_contract_version("flowhost:plugin/types@0.2.0").unwrap_err();
        assert!(
            err.to_string().contains("0.2.0") && err.to_string().contains("0.1.0"),
            "{err}"
        );
        assert!(check_contract_version("flowhost:plugin/host@1.0.0").is_err());
    }

    #[test]
    fn non_components_are_refused_with_a_hint() {
        let core = b"\0asm\x01\0\0\0";
        assert!(
            check_is_component(core)
                .unwrap_err()
                .to_string()
                .contains("core WebAssembly module")
        );
        assert!(
            check_is_component(b"\x7fELF....")
                .unwrap_err()
                .to_string()
                .contains(".cwasm")
        );
        assert!(
            check_is_component(b"{}")
                .unwrap_err()
                .to_string()
                .contains("not a WebAssembly file")
        );
    }

    #[test]
    fn a_plugin_has_one_http_policy_for_all_its_specs() {
        let rt = Runtime::new(RuntimeConfig {
            max_instances: 2,
            cache_dir: None,
            ..Default::default()
        })
        .unwrap();
        let name: Arc<str> = "llm".into();
        let grant = super::super::net::HttpGrant {
            allowed_hosts: vec![super::super::net::HostRule::parse("*").unwrap()],
            limits: Default::default(),
        };
        let a = rt.inner.http_policy(&name, grant.clone());
        let b = rt.inner.http_policy(&name, grant.clone());
        assert!(
            Arc::ptr_eq(&a, &b),
            "one concurrency cap for every agent of `llm`"
        );
        let other = rt.inner.http_policy(&"echo".into(), grant);
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn bad_runtime_config_is_refused() {
        let zero = RuntimeConfig {
            max_instances: 0,
            cache_dir: None,
            ..Default::default()
        };
        assert!(matches!(Runtime::new(zero), Err(RuntimeError::Config(_))));
        let small = RuntimeConfig {
            memory_ceiling: 16 * MIB,
            cache_dir: None,
            ..Default::default()
        };
        let err = Runtime::new(small)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ceiling"), "{err}");
    }
}
