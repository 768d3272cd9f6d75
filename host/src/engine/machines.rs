//! Loading a machine and everything it needs before it runs: its child
//! machines (files next to it or inline), the plugins its states, agents and
//! hooks name, with the limits its states set. A problem anywhere in the tree
//! is reported before the first state runs. A tree is read from disk (and
//! yields the [`Definition`] that pins it) or from a pinned definition.

use super::EngineError;
use super::definition::{Definition, PinnedFile};
use super::record::MachineRef;
use super::runner::{Loaded, Runner, Runners};
use crate::config::{self, ChildMachine, Hook, Machine, PluginLimits, PluginSpec, RunKind, State};
use crate::plugin::{LimitOverrides, Plugin, Runtime, World};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A machine ready to run.
pub struct MachineDef {
    pub config: Machine,
    pub source: MachineRef,
    /// `data.machines`, loaded.
    pub children: BTreeMap<String, Arc<MachineDef>>,
    /// What each state runs (plugin, agent or step), with the state's limits.
    pub runners: HashMap<String, Arc<dyn Runner>>,
    /// Hooks in effect for this machine: every ancestor's, then its own.
    pub hooks: Vec<Arc<dyn Runner>>,
    /// Hooks of single states (`states.<name>.hooks`).
    pub state_hooks: HashMap<String, Vec<Arc<dyn Runner>>>,
    /// The machine (or an ancestor) names `DistributedWorkerHooks`: the
    /// built-in work-pool actions are available.
    pub builtin_actions: bool,
}

impl MachineDef {
    pub fn state(&self, name: &str) -> Result<&State, EngineError> {
        self.config
            .data()
            .states
            .get(name)
            .ok_or_else(|| EngineError::Invalid(format!(
                "machine `{}` has no state `{name}` (was the config changed since this execution started?)",
                self.config.name()
            )))
    }

    /// The machine `source` names, below this root.
    pub fn find(self: &Arc<Self>, path: &[String]) -> Result<Arc<MachineDef>, EngineError> {
        let mut def = self.clone();
        for name in path {
            def = def.children.get(name).cloned().ok_or_else(|| {
                EngineError::Invalid(format!(
                    "machine `{}` has no child machine `{name}`",
                    def.config.name()
                ))
            })?;
        }
        Ok(def)
    }
}

/// Loads plugins by name or by a `{plugin, config, limits, ...}` spec, once
/// each (again after [`Runners::forget`]); every version loaded stays
/// available by its digest for executions pinned to it.
pub struct Library {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Plugin>>,
    /// (spec key, digest) → every version loaded in this process.
    versions: Mutex<HashMap<(String, String), Plugin>>,
}

impl Library {
    pub fn new(runtime: Arc<Runtime>, dir: PathBuf) -> Library {
        Library {
            runtime,
            dir,
            loaded: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
        }
    }

    fn key(spec: &PluginSpec) -> String {
        serde_json::to_string(spec).unwrap_or_else(|_| spec.plugin.clone())
    }

    /// The plugin a spec names, loaded once per spec.
    pub fn plugin(&self, spec: &PluginSpec, world: World) -> Result<Plugin, EngineError> {
        let key = Library::key(spec);
        if let Some(p) = self.lock().get(&key) {
            return Ok(p.clone());
        }
        let name = spec.plugin.as_str();
        let plugin = self
            .runtime
            .load_named(name, &self.dir, world, |settings| {
                if let Some(config) = &spec.config {
                    settings.config = config.clone();
                }
                if let Some(reuse) = spec.reuse {
                    settings.reuse = reuse;
                }
                // (Validation checked the pool already.)
                if let Some(pool) = &spec.pool
                    && let Err(e) = settings.pooled(pool)
                {
                    tracing::warn!(plugin = %spec.plugin, "pool: {e}");
                }
                if let Some(sha) = &spec.sha256 {
                    settings.sha256 = Some(sha.clone());
                }
            })
            .map_err(EngineError::plugin(name))?;
        // A machine config may tighten a plugin's limits, never widen them.
        let limits = overrides(&spec.limits);
        let plugin = if limits == LimitOverrides::default() {
            plugin
        } else {
            plugin.tightened(&limits)
        };
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((key.clone(), plugin.digest().to_string()), plugin.clone());
        // A pool that says `warm_up` gets its `min` instances now, beside
        // the first call instead of in its way.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let warm = plugin.clone();
            handle.spawn(async move {
                if let Err(e) = warm.warm_up().await {
                    tracing::warn!(plugin = %warm.name(), "{e}");
                }
            });
        }
        self.lock().insert(key, plugin.clone());
        Ok(plugin)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Plugin>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every plugin loaded now (the current version of each spec).
    pub fn current(&self) -> Vec<Plugin> {
        self.lock().values().cloned().collect()
    }
}

/// A config's `limits:` as the plugin runtime takes them.
fn overrides(limits: &PluginLimits) -> LimitOverrides {
    LimitOverrides {
        memory_mb: limits.memory_mb,
        timeout_ms: limits.timeout_ms,
        fuel: limits.fuel,
        output_mb: limits.output_mb,
    }
}

impl Runners for Library {
    fn load(&self, spec: &PluginSpec, world: World) -> Result<Loaded, EngineError> {
        let plugin = self.plugin(spec, world)?;
        Ok(Loaded {
            name: spec.plugin.clone(),
            digest: plugin.digest().to_string(),
            runner: Arc::new(plugin),
        })
    }

    fn plugins_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn version(&self, spec: &PluginSpec, world: World, digest: &str) -> Option<Loaded> {
        let plugin = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(Library::key(spec), digest.to_string()))
            .cloned()
            .filter(|p| p.world() == world)?;
        Some(Loaded {
            name: spec.plugin.clone(),
            digest: digest.to_string(),
            runner: Arc::new(plugin),
        })
    }

    fn warm_stats(&self) -> Vec<(String, crate::plugin::WarmStats)> {
        self.current()
            .iter()
            .map(|p| (p.name().to_string(), p.warm_stats()))
            .collect()
    }

    fn forget(&self, name: &str) {
        self.lock().retain(|_, p| p.name() != name);
    }
}

/// Walks a machine tree: reads its configs, loads its plugins, and notes
/// what a [`Definition`] pins.
struct Loader<'a> {
    runners: &'a dyn Runners,
    /// Where config texts come from: a pinned definition, or (when `None`)
    /// the disk, collecting what was read into `read`.
    pinned: Option<&'a Definition>,
    read: Vec<PinnedFile>,
    /// Plugin name → content digest of every plugin loaded.
    plugins: BTreeMap<String, String>,
    /// The files of the machines being built, to refuse a tree that includes itself.
    stack: Vec<PathBuf>,
}

impl Loader<'_> {
    /// The config of the machine at `path` in the tree, read from `file`.
    fn machine(&mut self, path: &[String], file: &Path) -> Result<Machine, EngineError> {
        match self.pinned {
            None => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| config_error(file, format!("cannot read: {e}")))?;
                self.parse(path, file, text, false)
            }
            Some(def) => {
                let pinned = def.file(path).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "the pinned definition of {} has no config for machine `{}`",
                        def.root.display(),
                        path.join(".")
                    ))
                })?;
                self.parse(path, &pinned.file, pinned.text.clone(), false)
            }
        }
    }

    /// Parses the config text of the machine at `path` (read from `file`,
    /// or `inline` in its parent); from disk, notes it and the agent and
    /// profile files it read for the definition (an inline machine only if
    /// it read some: its text is in its parent's).
    fn parse(
        &mut self,
        path: &[String],
        file: &Path,
        text: String,
        inline: bool,
    ) -> Result<Machine, EngineError> {
        let mut options = self.options();
        if let Some(pinned) = self.pinned.and_then(|d| d.file(path)) {
            options.files = pinned.files.clone();
        }
        let machine = config::parse_with(file, &text, &options).map_err(EngineError::Config)?;
        if self.pinned.is_none() && !(inline && machine.files.is_empty()) {
            self.read.push(PinnedFile {
                path: path.to_vec(),
                file: file.to_path_buf(),
                text,
                files: machine.files.clone(),
            });
        }
        Ok(machine)
    }

    fn options(&self) -> config::Options {
        config::Options {
            plugins_dir: self.runners.plugins_dir().map(Path::to_path_buf),
            pinned: self.pinned.is_some(),
            files: Default::default(),
        }
    }

    fn plugin(&mut self, spec: &PluginSpec, world: World) -> Result<Arc<dyn Runner>, EngineError> {
        // A pinned tree takes the version it was pinned to, when this
        // process still has it (the file may have changed since).
        let pinned = self
            .pinned
            .and_then(|d| d.plugins.get(&spec.plugin))
            .and_then(|digest| self.runners.version(spec, world, digest));
        let loaded = match pinned {
            Some(l) => l,
            None => self.runners.load(spec, world)?,
        };
        self.plugins.insert(loaded.name, loaded.digest);
        Ok(loaded.runner)
    }
}

fn config_error(file: &Path, message: String) -> EngineError {
    EngineError::Config(config::ConfigErrors(vec![config::ConfigError {
        file: file.to_path_buf(),
        line: None,
        state: None,
        message,
    }]))
}

/// Loads a machine file and its whole tree from disk, with the definition
/// that pins it.
pub fn load_tree(
    file: &Path,
    runners: &dyn Runners,
) -> Result<(Arc<MachineDef>, Definition), EngineError> {
    let file =
        std::fs::canonicalize(file).map_err(|e| config_error(file, format!("cannot read: {e}")))?;
    let mut loader = Loader {
        runners,
        pinned: None,
        read: Vec::new(),
        plugins: BTreeMap::new(),
        stack: vec![file.clone()],
    };
    let machine = loader.machine(&[], &file)?;
    let source = MachineRef {
        file: file.clone(),
        path: vec![],
    };
    let def = build(machine, source, &[], false, &mut loader)?;
    let definition = Definition {
        root: file,
        files: loader.read,
        plugins: loader.plugins,
    };
    Ok((def, definition))
}

/// Loads the tree a definition pins. Plugins come from the plugins folder
/// and must be the ones pinned: a changed plugin is refused, naming it and
/// both digests.
pub fn load_pinned(
    definition: &Definition,
    runners: &dyn Runners,
) -> Result<Arc<MachineDef>, EngineError> {
    let mut loader = Loader {
        runners,
        pinned: Some(definition),
        read: Vec::new(),
        plugins: BTreeMap::new(),
        stack: vec![definition.root.clone()],
    };
    let machine = loader.machine(&[], &definition.root)?;
    let source = MachineRef {
        file: definition.root.clone(),
        path: vec![],
    };
    let def = build(machine, source, &[], false, &mut loader)?;
    let changed = definition.changed_plugins(&loader.plugins);
    if !changed.is_empty() {
        return Err(EngineError::Changed(changed.join("; ")));
    }
    Ok(def)
}

fn build(
    machine: Machine,
    source: MachineRef,
    inherited: &[Arc<dyn Runner>],
    inherited_builtins: bool,
    loader: &mut Loader<'_>,
) -> Result<Arc<MachineDef>, EngineError> {
    let data = machine.data();
    let at = |what: &str| format!("{}: {what}", machine.path.display());
    let builtin_actions = inherited_builtins || data.hooks.contains(&Hook::BuiltinWorkerActions);

    // Hooks: the ancestors', then this machine's.
    let mut hooks = inherited.to_vec();
    hooks.extend(hook_plugins(&data.hooks, loader).map_err(|e| e.context(&at("hooks")))?);
    let mut state_hooks = HashMap::new();
    let mut runners = HashMap::new();
    for (name, state) in &data.states {
        if !state.hooks.is_empty() {
            let list = hook_plugins(&state.hooks, loader)
                .map_err(|e| e.context(&at(&format!("state `{name}`: hooks"))))?;
            state_hooks.insert(name.clone(), list);
        }
        if let Some(runs) = &state.runs {
            let world = match runs.kind {
                RunKind::Plugin | RunKind::Agent => World::Processor,
                RunKind::Step => World::Step,
            };
            let mut plugin = loader
                .plugin(&runs.spec, world)
                .map_err(|e| e.context(&at(&format!("state `{name}`"))))?;
            if let Some(secs) = state.timeout {
                plugin = plugin.with_timeout(crate::duration::clamp_secs(secs));
            }
            runners.insert(name.clone(), plugin);
        }
    }

    let mut children = BTreeMap::new();
    let dir = machine
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (name, value) in &data.machines {
        let child_source = source.child(name);
        let child = match value {
            ChildMachine::File(rel) => {
                let path = dir.join(rel);
                let path = std::fs::canonicalize(&path).unwrap_or(path);
                if loader.stack.contains(&path) {
                    return Err(EngineError::Invalid(at(&format!(
                        "machine `{name}` ({}) includes itself through its children",
                        path.display()
                    ))));
                }
                loader.machine(&child_source.path, &path)?
            }
            ChildMachine::Inline(text) => {
                let pseudo = machine.path.with_extension(format!("{name}.inline.yml"));
                loader.parse(&child_source.path, &pseudo, text.clone(), true)?
            }
        };
        loader.stack.push(child.path.clone());
        let def = build(child, child_source, &hooks, builtin_actions, loader)?;
        loader.stack.pop();
        children.insert(name.clone(), def);
    }

    Ok(Arc::new(MachineDef {
        config: machine,
        source,
        children,
        runners,
        hooks,
        state_hooks,
        builtin_actions,
    }))
}

/// The plugins of a hook list (the built-in worker actions are no plugin).
fn hook_plugins(
    hooks: &[Hook],
    loader: &mut Loader<'_>,
) -> Result<Vec<Arc<dyn Runner>>, EngineError> {
    let mut all = Vec::new();
    for hook in hooks {
        if let Hook::Plugin(spec) = hook {
            all.push(loader.plugin(spec, World::Hook)?);
        }
    }
    Ok(all)
}
