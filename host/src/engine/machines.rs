//! Loading a machine and everything it needs before it runs: its child
//! machines (files next to it or inline), the plugins its states, agents and
//! hooks name, with the limits its states set. A problem anywhere in the tree
//! is reported before the first state runs. A tree is read from disk (and
//! yields the [`Definition`] that pins it) or from a pinned definition.

use super::EngineError;
use super::definition::{Definition, PinnedFile};
use super::record::MachineRef;
use super::runner::{Loaded, Runner, Runners};
use crate::config::{self, Machine, State};
use crate::plugin::{LimitOverrides, Plugin, Runtime, World, registry};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The built-in hooks of the seed's distributed worker.
pub const BUILTIN_HOOKS_CLASS: &str = "DistributedWorkerHooks";

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

/// Loads plugins by name or by a `{plugin, config, limits, ...}` spec, once each.
pub struct Library {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    loaded: Mutex<HashMap<String, (String, Plugin)>>,
}

impl Library {
    pub fn new(runtime: Arc<Runtime>, dir: PathBuf) -> Library {
        Library {
            runtime,
            dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// A plugin from a spec: `name` or `{plugin, version, sha256, config, limits, reuse}`.
    pub fn plugin(&self, spec: &Value, world: World) -> Result<Plugin, EngineError> {
        self.named_plugin(spec, world).map(|(_, plugin)| plugin)
    }

    /// [`Library::plugin`] with the plugin's name.
    fn named_plugin(&self, spec: &Value, world: World) -> Result<(String, Plugin), EngineError> {
        let key = spec.to_string();
        if let Some(p) = self.lock().get(&key) {
            return Ok(p.clone());
        }
        let (name, extra) = match spec {
            Value::String(name) => (name.as_str(), None),
            Value::Object(m) => (
                m.get("plugin").and_then(Value::as_str).ok_or_else(|| {
                    EngineError::Invalid(format!("plugin spec {spec} has no `plugin` name"))
                })?,
                Some(m),
            ),
            other => return Err(EngineError::Invalid(format!("bad plugin spec {other}"))),
        };
        let located = registry::locate(name, &self.dir).map_err(EngineError::plugin(name))?;
        let mut settings = located.settings().map_err(EngineError::plugin(name))?;
        let mut limits = LimitOverrides::default();
        if let Some(m) = extra {
            if let Some(config) = m.get("config") {
                settings.config = config.clone();
            }
            if let Some(reuse) = m.get("reuse").and_then(Value::as_u64) {
                settings.reuse = reuse.min(u32::MAX as u64) as u32;
            }
            if let Some(sha) = m.get("sha256").and_then(Value::as_str) {
                settings.sha256 = Some(sha.to_string());
            }
            if let Some(l) = m.get("limits") {
                limits = serde_json::from_value(l.clone())
                    .map_err(|e| EngineError::Invalid(format!("limits of plugin `{name}`: {e}")))?;
            }
        }
        let plugin = self
            .runtime
            .load_file(&located.wasm, settings)
            .map_err(EngineError::plugin(name))?;
        plugin
            .expect_world(world)
            .map_err(EngineError::plugin(name))?;
        // A machine config may tighten a plugin's limits, never widen them.
        let plugin = if limits == LimitOverrides::default() {
            plugin
        } else {
            plugin.tightened(&limits)
        };
        self.lock().insert(key, (name.to_string(), plugin.clone()));
        Ok((name.to_string(), plugin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Plugin)>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runners for Library {
    fn load(&self, spec: &Value, world: World) -> Result<Loaded, EngineError> {
        let (name, plugin) = self.named_plugin(spec, world)?;
        Ok(Loaded {
            name,
            digest: plugin.digest().to_string(),
            runner: Arc::new(plugin),
        })
    }

    fn plugins_dir(&self) -> Option<&Path> {
        Some(&self.dir)
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
        let options = self.options();
        match self.pinned {
            None => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| config_error(file, format!("cannot read: {e}")))?;
                let machine =
                    config::parse_with(file, &text, &options).map_err(EngineError::Config)?;
                self.read.push(PinnedFile {
                    path: path.to_vec(),
                    file: file.to_path_buf(),
                    text,
                });
                Ok(machine)
            }
            Some(def) => {
                let pinned = def.file(path).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "the pinned definition of {} has no config for machine `{}`",
                        def.root.display(),
                        path.join(".")
                    ))
                })?;
                config::parse_with(&pinned.file, &pinned.text, &options)
                    .map_err(EngineError::Config)
            }
        }
    }

    fn options(&self) -> config::Options {
        config::Options {
            plugins_dir: self.runners.plugins_dir().map(Path::to_path_buf),
            pinned: self.pinned.is_some(),
        }
    }

    fn plugin(&mut self, spec: &Value, world: World) -> Result<Arc<dyn Runner>, EngineError> {
        let loaded = self.runners.load(spec, world)?;
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
    let builtin_actions = inherited_builtins
        || [&data.hooks, &data.lifecycle_hooks]
            .into_iter()
            .flatten()
            .any(names_builtin_hooks);

    // Hooks: the ancestors', then this machine's.
    let mut hooks = inherited.to_vec();
    for spec in [&data.hooks, &data.lifecycle_hooks].into_iter().flatten() {
        hooks.extend(hook_plugins(spec, data, loader).map_err(|e| e.context(&at("hooks")))?);
    }
    let mut state_hooks = HashMap::new();
    let mut runners = HashMap::new();
    for (name, state) in &data.states {
        if let Some(spec) = &state.hooks {
            let list = hook_plugins(spec, data, loader)
                .map_err(|e| e.context(&at(&format!("state `{name}`: hooks"))))?;
            state_hooks.insert(name.clone(), list);
        }
        let runner = if let Some(alias) = &state.plugin {
            Some((plugin_spec(&data.plugins, alias), World::Processor))
        } else if let Some(agent) = &state.agent {
            let spec = data.agents.get(agent).cloned().unwrap_or(Value::Null);
            Some((spec, World::Processor))
        } else {
            state
                .step
                .as_ref()
                .map(|alias| (plugin_spec(&data.plugins, alias), World::Step))
        };
        if let Some((spec, world)) = runner {
            let mut plugin = loader
                .plugin(&spec, world)
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
            Value::String(rel) => {
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
            inline => {
                let text = serde_yaml::to_string(inline).map_err(|e| {
                    EngineError::Invalid(at(&format!("inline machine `{name}`: {e}")))
                })?;
                let pseudo = machine.path.with_extension(format!("{name}.inline.yml"));
                config::parse_with(&pseudo, &text, &loader.options())
                    .map_err(EngineError::Config)?
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

/// Whether a hooks spec (or one in its list) is `{class: DistributedWorkerHooks}`.
fn names_builtin_hooks(spec: &Value) -> bool {
    match spec {
        Value::Array(items) => items.iter().any(names_builtin_hooks),
        Value::Object(m) => m.get("class").and_then(Value::as_str) == Some(BUILTIN_HOOKS_CLASS),
        _ => false,
    }
}

/// `plugin: alias` → the `data.plugins` entry, or the alias itself as a plugin name.
fn plugin_spec(plugins: &BTreeMap<String, Value>, alias: &str) -> Value {
    plugins
        .get(alias)
        .cloned()
        .unwrap_or_else(|| Value::String(alias.to_string()))
}

fn hook_plugins(
    spec: &Value,
    data: &config::MachineData,
    loader: &mut Loader<'_>,
) -> Result<Vec<Arc<dyn Runner>>, EngineError> {
    match spec {
        Value::Array(items) => {
            let mut all = Vec::new();
            for item in items {
                all.extend(hook_plugins(item, data, loader)?);
            }
            Ok(all)
        }
        Value::String(alias) => Ok(vec![
            loader.plugin(&plugin_spec(&data.plugins, alias), World::Hook)?,
        ]),
        Value::Object(m) => {
            if let Some(class) = m.get("class").and_then(Value::as_str) {
                if class == BUILTIN_HOOKS_CLASS {
                    // The seed's worker hooks are built into the host as actions.
                    return Ok(vec![]);
                }
                return Ok(vec![
                    loader.plugin(&plugin_spec(&data.plugins, class), World::Hook)?,
                ]);
            }
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            let mut spec = plugin_spec(&data.plugins, name);
            if let (Some(args), Value::String(n)) = (m.get("args"), &spec) {
                spec = serde_json::json!({"plugin": n, "config": args});
            }
            Ok(vec![loader.plugin(&spec, World::Hook)?])
        }
        other => Err(EngineError::Invalid(format!("bad hooks entry {other}"))),
    }
}
