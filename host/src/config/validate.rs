//! Checks a parsed machine config before anything runs, collecting every
//! problem: references (states, agents, plugins, machines), the shapes of the
//! flexible keys, templates and conditions, and settings. A config with no
//! problem comes out as the typed [`model`](super::model): the flexible keys
//! are read here and nowhere else.

use super::agent;
use super::locate::LineIndex;
use super::model;
use super::model::{
    ChildMachine, ChildSpec, Children, Data, Hook, OnError, PluginLimits, PluginSpec, RunKind, Runs,
};
use super::schema::{ExecutionType, MachineFile, Mode, State, StateType};
use super::{ConfigError, ConfigErrors, Options};
use crate::duration;
use crate::expr::Expressions;
use crate::failure::FailureKind;
use crate::text::closest;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CHECKPOINT_EVENTS: [&str; 6] = [
    "machine_start",
    "state_enter",
    "execute",
    "state_exit",
    "machine_end",
    "waiting",
];
const PLUGIN_KEYS: [&str; 7] = [
    "plugin", "version", "sha256", "config", "limits", "reuse", "pool",
];

/// A did-you-mean suffix for `word` among `names`.
fn hint(word: &str, names: &[String]) -> String {
    match closest(word, names) {
        Some(near) => format!(" (did you mean `{near}`?)"),
        None if names.is_empty() => String::new(),
        None => format!(" (known: {})", names.join(", ")),
    }
}

/// Turns a YAML or schema error into a [`ConfigError`] with line, state and,
/// for an unknown key or value, a "did you mean".
pub(super) fn serde_error(path: &Path, index: &LineIndex, e: &serde_yaml::Error) -> ConfigError {
    let line = e.location().map(|l| l.line());
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    // "data.states.work: unknown field `trnsitions`, expected one of `type`, ..."
    let (context, detail) = match message.split_once(": ") {
        Some((ctx, rest)) if ctx.starts_with("data") || ctx == "." => {
            (Some(ctx.to_string()), rest.to_string())
        }
        _ => (None, message.clone()),
    };
    let state = context
        .as_deref()
        .and_then(|c| c.strip_prefix("data.states."))
        .map(|s| s.split('.').next().unwrap_or(s).to_string())
        .or_else(|| line.and_then(|l| index.state_at(l)).map(str::to_string));
    let detail = improve_unknown(&detail);
    let message = match context {
        Some(ctx) if state.is_none() => format!("{ctx}: {detail}"),
        _ => detail,
    };
    ConfigError {
        file: path.to_path_buf(),
        line,
        state,
        message,
    }
}

/// "unknown field `x`, expected one of `a`, `b`" → "unknown key `x` (did you mean `a`?)".
fn improve_unknown(detail: &str) -> String {
    for (prefix, noun) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        let Some(rest) = detail.strip_prefix(prefix) else {
            continue;
        };
        let Some((word, expected)) = rest.split_once('`') else {
            continue;
        };
        let options: Vec<String> = expected
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_string())
            .collect();
        return format!("unknown {noun} `{word}`{}", hint(word, &options));
    }
    detail.to_string()
}

struct Checker<'a> {
    path: &'a Path,
    index: &'a LineIndex,
    plugins_dir: Option<&'a Path>,
    /// Child machine files are not on disk to check (see [`Options::pinned`]).
    pinned: bool,
    /// Texts of agent and profile files a pinned definition holds.
    files: &'a BTreeMap<String, String>,
    /// Agent and profile files read, by the path the config names them.
    read: BTreeMap<String, String>,
    exprs: Expressions,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, state: Option<&str>, line: Option<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.path.to_path_buf(),
            line,
            state: state.map(str::to_string),
            message,
        });
    }

    /// Why a plugin name cannot be found in the plugins folder (when one is known).
    fn missing_plugin(&self, name: &str) -> Option<String> {
        let dir = self.plugins_dir?;
        let found = if name.ends_with(".wasm") {
            Path::new(name).is_file()
        } else {
            dir.join(format!("{name}.wasm")).is_file()
        };
        if found {
            return None;
        }
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "wasm")
                    .then(|| path.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        names.sort();
        Some(format!(
            "no plugin `{name}` in {}{}",
            dir.display(),
            match closest(name, &names) {
                Some(near) => format!(" (did you mean `{near}`?)"),
                None => String::new(),
            }
        ))
    }

    /// The text of a file the config names next to itself (an agent or a
    /// profiles file): from the pinned definition, or read from disk and
    /// kept for pinning.
    fn file_text(&mut self, rel: &str) -> Result<String, String> {
        if let Some(t) = self.read.get(rel) {
            return Ok(t.clone());
        }
        let text = if self.pinned {
            self.files
                .get(rel)
                .cloned()
                .ok_or_else(|| format!("the pinned definition holds no file `{rel}`"))?
        } else {
            let path = self.path.parent().unwrap_or(Path::new(".")).join(rel);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{rel}` next to this config: {e}"))?
        };
        self.read.insert(rel.to_string(), text.clone());
        Ok(text)
    }

    /// Whether a file `rel` is next to this config (in the pinned
    /// definition, when pinned).
    fn pinned_or_beside(&self, rel: &str) -> bool {
        if self.pinned {
            self.files.contains_key(rel)
        } else {
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(rel)
                .is_file()
        }
    }

    fn in_state(&mut self, state: &str, needles: &[&str], message: String) {
        let line = self.index.in_state(state, needles);
        self.error(Some(state), line, message);
    }

    fn top(&mut self, needles: &[&str], message: String) {
        let line = self.index.find(needles);
        self.error(None, line, message);
    }

    fn template(&mut self, state: Option<&str>, key: &str, value: &Value) {
        if let Err(e) = self.exprs.check_template(value) {
            let line = match state {
                Some(s) => self.index.in_state(s, &[key]),
                None => self.index.find(&[key]),
            };
            self.error(state, line, format!("`{key}`: {e}"));
        }
    }
}

/// Validates the file; returns the initial state's name, the typed model
/// and the agent and profile files it read.
pub(super) fn validate(
    path: &Path,
    index: &LineIndex,
    owned: MachineFile,
    options: &Options,
) -> Result<(String, Data, BTreeMap<String, String>), ConfigErrors> {
    let mut c = Checker {
        path,
        index,
        plugins_dir: options.plugins_dir.as_deref(),
        pinned: options.pinned,
        files: &options.files,
        read: BTreeMap::new(),
        exprs: Expressions::new(),
        errors: Vec::new(),
    };
    let file = &owned;
    let data = &file.data;

    if file.spec != "flatmachine" {
        c.top(
            &["spec:"],
            format!("`spec` must be `flatmachine`, not `{}`", file.spec),
        );
    }
    if let Some(version) = &file.spec_version {
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if !matches!(major, Some(1..=4)) {
            c.top(
                &["spec_version"],
                format!("unsupported spec_version `{version}` (flowhost reads 1.x to 4.x)"),
            );
        }
    }
    if let Some(engine) = &data.expression_engine
        && engine != "simple"
        && engine != "jinja"
    {
        c.top(
            &["expression_engine"],
            format!(
                "expression_engine `{engine}` is not supported; conditions are Jinja expressions"
            ),
        );
    }
    for (key, value) in &data.context {
        c.template(None, key, value);
    }
    let plugins = check_plugins(&mut c, data.plugins.iter(), "plugins");
    let (agents, llm_agents) = check_agents(&mut c, &data.agents, data.profiles.as_deref());
    let machines = check_machines(&mut c, path, &data.machines);
    let mut hooks = Vec::new();
    for (key, spec) in [
        ("hooks", &data.hooks),
        ("lifecycle_hooks", &data.lifecycle_hooks),
    ] {
        if let Some(spec) = spec
            && let Err(why) = read_hooks(spec, &plugins, &mut hooks)
        {
            c.top(&[key], format!("`{key}`: {why}"));
        }
    }
    if data.settings.max_steps == Some(0) {
        c.top(
            &["max_steps"],
            "`settings.max_steps` must be at least 1".into(),
        );
    }
    if let Some(t) = data.settings.timeout
        && !(t > 0.0 && duration::from_secs(t).is_some())
    {
        c.top(
            &["timeout"],
            format!(
                "`settings.timeout` must be a positive number of seconds up to {}, not {t:?}",
                duration::max_text()
            ),
        );
    }
    if data.settings.max_agent_calls == Some(0) {
        c.top(
            &["max_agent_calls"],
            "`settings.max_agent_calls` must be at least 1".into(),
        );
    }
    if data.settings.max_concurrency == Some(0) {
        c.top(
            &["max_concurrency"],
            "`settings.max_concurrency` must be at least 1".into(),
        );
    }
    if let Some(p) = &data.persistence {
        if let Some(backend) = &p.backend
            && !["memory", "sqlite", "local"].contains(&backend.as_str())
        {
            c.top(
                &["backend"],
                format!("persistence backend `{backend}` is not one of memory, sqlite, local"),
            );
        }
        for event in p.checkpoint_on.iter().flatten() {
            if !CHECKPOINT_EVENTS.contains(&event.as_str()) {
                let known: Vec<String> = CHECKPOINT_EVENTS.iter().map(|s| s.to_string()).collect();
                c.top(
                    &[event],
                    format!("unknown checkpoint event `{event}`{}", hint(event, &known)),
                );
            }
        }
    }

    let names: Vec<String> = data.states.keys().cloned().collect();
    let initial = initial_state(&mut c, file);
    let known = Known {
        states: &names,
        plugins: &plugins,
        agents: &agents,
        plugin_names: data.plugins.keys().cloned().collect(),
        agent_names: data.agents.keys().cloned().collect(),
        llm_agents: &llm_agents,
        machines: data.machines.keys().cloned().collect(),
    };
    let mut states = indexmap::IndexMap::new();
    for (name, state) in &data.states {
        if let Some(s) = check_state(&mut c, &known, name, state) {
            states.insert(name.clone(), s);
        }
    }

    if c.errors.is_empty() {
        let data = owned.data;
        let model = Data {
            name: data.name,
            context: data.context,
            agents,
            machines,
            plugins,
            states,
            settings: data.settings,
            persistence: data.persistence,
            hooks,
        };
        Ok((initial.unwrap_or_default(), model, c.read))
    } else {
        c.errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(ConfigErrors(c.errors))
    }
}

fn initial_state(c: &mut Checker<'_>, file: &MachineFile) -> Option<String> {
    let states = &file.data.states;
    if states.is_empty() {
        c.top(&["states"], "the machine has no states".into());
        return None;
    }
    let marked: Vec<&String> = states
        .iter()
        .filter(|(_, s)| s.kind == Some(StateType::Initial))
        .map(|(n, _)| n)
        .collect();
    if marked.len() > 1 {
        for name in &marked[1..] {
            let line = c.index.state(name);
            c.error(
                Some(name),
                line,
                format!(
                    "a second `type: initial` state (`{}` is already initial)",
                    marked[0]
                ),
            );
        }
    }
    if !states.values().any(|s| s.kind == Some(StateType::Final)) {
        c.top(
            &["states"],
            "the machine has no `type: final` state, so it can never finish".into(),
        );
    }
    marked
        .first()
        .map(|n| n.to_string())
        .or_else(|| states.contains_key("start").then(|| "start".to_string()))
        .or_else(|| states.keys().next().cloned())
}

/// What a state may refer to.
struct Known<'a> {
    states: &'a [String],
    /// Specs of the plugins and agents declared without a problem.
    plugins: &'a BTreeMap<String, PluginSpec>,
    agents: &'a BTreeMap<String, PluginSpec>,
    /// Every name declared (a bad spec is reported where it is declared).
    plugin_names: Vec<String>,
    agent_names: Vec<String>,
    /// Agents that are FlatAgents agents (run by the `llm` plugin).
    llm_agents: &'a std::collections::BTreeSet<String>,
    machines: Vec<String>,
}

/// Checks a state; the typed state when it has no problem.
fn check_state(
    c: &mut Checker<'_>,
    known: &Known<'_>,
    name: &str,
    s: &State,
) -> Option<model::State> {
    let before = c.errors.len();
    let names = known.states;
    let is_final = s.kind == Some(StateType::Final);
    if is_final && !s.transitions.is_empty() {
        c.in_state(
            name,
            &["transitions"],
            "a final state cannot have transitions".into(),
        );
    }
    if !is_final && s.transitions.is_empty() && s.step.is_none() {
        let line = c.index.state(name);
        c.error(
            Some(name),
            line,
            "not final and has no transitions: the machine would stop here without output".into(),
        );
    }
    for t in &s.transitions {
        if !names.contains(&t.to) {
            c.in_state(
                name,
                &["to:", &t.to],
                format!(
                    "transition to unknown state `{}`{}",
                    t.to,
                    hint(&t.to, names)
                ),
            );
        }
        if let Some(cond) = &t.condition
            && let Err(e) = c.exprs.check_condition(cond)
        {
            c.in_state(name, &["condition"], e.to_string());
        }
    }
    let runners = [s.agent.is_some(), s.plugin.is_some(), s.step.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if runners > 1 {
        c.in_state(
            name,
            &[],
            "a state runs at most one of `agent`, `plugin`, `step`".into(),
        );
    }
    let agents = &known.agent_names;
    let plugins = &known.plugin_names;
    let machines = &known.machines;
    if let Some(agent) = &s.agent
        && !agents.contains(agent)
    {
        c.in_state(
            name,
            &["agent:"],
            format!(
                "unknown agent `{agent}`{}; agents are declared under data.agents",
                hint(agent, agents)
            ),
        );
    }
    for (key, alias) in [("plugin:", &s.plugin), ("step:", &s.step)] {
        if let Some(alias) = alias
            && !plugins.contains(alias)
        {
            c.in_state(
                name,
                &[key],
                format!(
                    "unknown plugin `{alias}`{}; plugins are declared under data.plugins",
                    hint(alias, plugins)
                ),
            );
        }
    }
    let runs = [
        (RunKind::Plugin, &s.plugin, known.plugins),
        (RunKind::Agent, &s.agent, known.agents),
        (RunKind::Step, &s.step, known.plugins),
    ]
    .into_iter()
    .find_map(|(kind, alias, specs)| {
        let name = alias.as_ref()?;
        Some(Runs {
            kind,
            name: name.clone(),
            spec: specs.get(name)?.clone(),
            llm: kind == RunKind::Agent && known.llm_agents.contains(name),
        })
    });
    let machine = match &s.machine {
        None => None,
        Some(m) => match read_children(m) {
            Ok(list) if m.is_array() => Some(Children::Parallel(list)),
            Ok(mut list) => list.pop().map(Children::One),
            Err(why) => {
                c.in_state(name, &["machine:"], format!("`machine`: {why}"));
                None
            }
        },
    };
    let launch = match &s.launch {
        None => Vec::new(),
        Some(l) => read_children(l).unwrap_or_else(|why| {
            c.in_state(name, &["launch:"], format!("`launch`: {why}"));
            Vec::new()
        }),
    };
    let named = machine
        .iter()
        .flat_map(|m| m.list())
        .map(|child| ("machine", child))
        .chain(launch.iter().map(|child| ("launch", child)));
    for (key, child) in named {
        let child = &child.machine;
        if !machines.contains(child) {
            c.in_state(
                name,
                &[key, child],
                format!(
                    "unknown machine `{child}`{}; machines are declared under data.machines",
                    hint(child, machines)
                ),
            );
        }
    }
    if let Some(items) = &s.foreach
        && !matches!(items, Value::String(_) | Value::Array(_))
    {
        c.in_state(
            name,
            &["foreach"],
            format!(
                "`foreach` must be a template that gives a list (e.g. \"{{{{ context.items }}}}\") or a list, not {items}"
            ),
        );
    }
    if s.continue_on_partial.is_some() {
        if s.machine.is_none() {
            c.in_state(
                name,
                &["continue_on_partial"],
                "`continue_on_partial` applies to states that run child machines (`machine`, `foreach`)".into(),
            );
        } else if s.mode == Some(Mode::Any) {
            c.in_state(
                name,
                &["continue_on_partial"],
                "`continue_on_partial` has no effect with `mode: any` (the first success decides)"
                    .into(),
            );
        }
    }
    if s.foreach.is_some() && !matches!(machine, Some(Children::One(_))) {
        c.in_state(
            name,
            &["foreach"],
            "`foreach` runs one `machine` (a single name) per item".into(),
        );
    }
    if s.launch_input.is_some() && s.launch.is_none() {
        c.in_state(
            name,
            &["launch_input"],
            "`launch_input` without `launch`".into(),
        );
    }
    if let Some(t) = s.timeout
        && !(t > 0.0 && duration::from_secs(t).is_some())
    {
        c.in_state(
            name,
            &["timeout"],
            format!(
                "`timeout` must be a positive number of seconds up to {}, not {t:?}",
                duration::max_text()
            ),
        );
    }
    if s.max_concurrency == Some(0) {
        c.in_state(
            name,
            &["max_concurrency"],
            "`max_concurrency` must be at least 1".into(),
        );
    }
    if let Some(ex) = &s.execution
        && ex.kind == ExecutionType::Retry
    {
        if ex
            .backoffs
            .iter()
            .flatten()
            .any(|b| duration::from_secs(*b).is_none())
        {
            c.in_state(
                name,
                &["backoffs"],
                format!(
                    "`execution.backoffs` must be seconds from 0 to {}",
                    duration::max_text()
                ),
            );
        }
        if ex.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
            c.in_state(
                name,
                &["jitter"],
                "`execution.jitter` must be between 0 and 1".into(),
            );
        }
    }
    if let Some(ex) = &s.execution
        && matches!(ex.kind, ExecutionType::Parallel | ExecutionType::MdapVoting)
    {
        if s.agent.is_none() {
            c.in_state(
                name,
                &["execution", "type"],
                "`execution` types `parallel` and `mdap_voting` sample an agent: the state needs `agent:`".into(),
            );
        }
        let bounded = |v: Option<u32>| v.is_none_or(|n| (1..=100).contains(&n));
        if !bounded(ex.n_samples) || !bounded(ex.k_margin) || !bounded(ex.max_candidates) {
            c.in_state(
                name,
                &["n_samples", "k_margin", "max_candidates"],
                "`n_samples`, `k_margin` and `max_candidates` are whole numbers from 1 to 100"
                    .into(),
            );
        }
    }
    let on_error = match &s.on_error {
        Some(on_error) => check_on_error(c, names, name, on_error),
        None => OnError::default(),
    };
    let mut hooks = Vec::new();
    if let Some(h) = &s.hooks
        && let Err(why) = read_hooks(h, known.plugins, &mut hooks)
    {
        c.in_state(name, &["hooks"], format!("`hooks`: {why}"));
    }
    for (key, value) in [
        ("input", &s.input),
        ("launch_input", &s.launch_input),
        ("output", &s.output),
        ("foreach", &s.foreach),
    ] {
        if let Some(v) = value {
            c.template(Some(name), key, v);
        }
    }
    if let Some(key) = &s.key {
        c.template(Some(name), "key", &Value::String(key.clone()));
    }
    if let Some(wait) = &s.wait_for {
        c.template(Some(name), "wait_for", &Value::String(wait.clone()));
    }
    for (key, value) in s.output_to_context.iter().flatten() {
        c.template(Some(name), key, value);
    }
    (c.errors.len() == before).then(|| model::State {
        kind: s.kind,
        action: s.action.clone(),
        hooks,
        runs,
        execution: s.execution.clone(),
        machine,
        foreach: s.foreach.clone(),
        as_name: s.as_name.clone(),
        key: s.key.clone(),
        mode: s.mode,
        continue_on_partial: s.continue_on_partial.unwrap_or(false),
        timeout: s.timeout,
        max_concurrency: s.max_concurrency,
        input: s.input.clone(),
        output_to_context: s.output_to_context.clone(),
        launch,
        launch_input: s.launch_input.clone(),
        wait_for: s.wait_for.clone(),
        on_error,
        transitions: s.transitions.clone(),
        output: s.output.clone(),
    })
}

fn check_on_error(c: &mut Checker<'_>, names: &[String], name: &str, on_error: &Value) -> OnError {
    let mut routes = OnError::default();
    let kinds: Vec<String> = FailureKind::ALL
        .into_iter()
        .filter(|k| k.is_routable())
        .map(|k| k.to_string())
        .chain(["default".to_string()])
        .collect();
    let targets: Vec<&str> = match on_error {
        Value::String(target) => {
            routes.default = Some(target.clone());
            vec![target.as_str()]
        }
        Value::Object(map) => {
            for (kind, target) in map {
                let Some(target) = target.as_str() else {
                    c.in_state(
                        name,
                        &[kind],
                        format!("`on_error`: `{kind}` must name a state, not {target}"),
                    );
                    continue;
                };
                if kind == "default" {
                    routes.default = Some(target.to_string());
                } else if let Some(k) = FailureKind::parse(kind).filter(|k| k.is_routable()) {
                    routes.by_kind.push((k, target.to_string()));
                } else if let Some(k) = FailureKind::parse(kind) {
                    c.in_state(
                        name,
                        &[kind],
                        format!("`on_error`: `{k}` ends the execution; it cannot be routed"),
                    );
                } else {
                    c.in_state(
                        name,
                        &[kind],
                        format!(
                            "`on_error`: unknown error kind `{kind}`{}",
                            hint(kind, &kinds)
                        ),
                    );
                }
            }
            map.values().filter_map(Value::as_str).collect()
        }
        _ => {
            c.in_state(
                name,
                &["on_error"],
                "`on_error` must be a state name or a map of error kind to state".into(),
            );
            vec![]
        }
    };
    for target in targets {
        if !names.iter().any(|n| n == target) {
            c.in_state(
                name,
                &["on_error", target],
                format!(
                    "`on_error` goes to unknown state `{target}`{}",
                    hint(target, names)
                ),
            );
        }
    }
    routes
}

/// `name`, `[a, b]` or `[{name, input}, ...]` → the children.
fn read_children(value: &Value) -> Result<Vec<ChildSpec>, String> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(ChildSpec {
            machine: s.clone(),
            input: None,
        }),
        Value::Object(m) => match m.get("name") {
            Some(Value::String(name)) => Ok(ChildSpec {
                machine: name.clone(),
                input: m.get("input").cloned(),
            }),
            _ => Err("a child given as a map needs a `name`".to_string()),
        },
        other => Err(format!("expected a machine name, got {other}")),
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// Hook plugin name(s), the legacy `{file, class}`, or `{name, args}`,
/// each resolved through `data.plugins` (a name not declared there is a
/// plugin's own name) and added to `out`.
fn read_hooks(
    value: &Value,
    plugins: &BTreeMap<String, PluginSpec>,
    out: &mut Vec<Hook>,
) -> Result<(), String> {
    let resolve = |alias: &str| {
        plugins
            .get(alias)
            .cloned()
            .unwrap_or_else(|| PluginSpec::named(alias))
    };
    let hook = match value {
        Value::Array(items) => {
            return items
                .iter()
                .try_for_each(|item| read_hooks(item, plugins, out));
        }
        Value::String(alias) => Hook::Plugin(resolve(alias)),
        Value::Object(m) => match (m.get("class"), m.get("name")) {
            (Some(Value::String(class)), _) if class == BUILTIN_HOOKS_CLASS => {
                Hook::BuiltinWorkerActions
            }
            (Some(Value::String(class)), _) => Hook::Plugin(resolve(class)),
            (_, Some(Value::String(name))) => {
                let mut spec = resolve(name);
                if let Some(args) = m.get("args") {
                    spec.config = Some(args.clone());
                }
                Hook::Plugin(spec)
            }
            _ => return Err(HOOKS_SHAPE.into()),
        },
        _ => return Err(HOOKS_SHAPE.into()),
    };
    out.push(hook);
    Ok(())
}

const HOOKS_SHAPE: &str =
    "expected a hook plugin name, a list of them, `{file, class}` or `{name, args}`";

/// The built-in hooks of the seed's distributed worker.
pub const BUILTIN_HOOKS_CLASS: &str = "DistributedWorkerHooks";

/// Checks `data.plugins` (or `data.agents`); the specs without a problem.
fn check_plugins<'a>(
    c: &mut Checker<'_>,
    plugins: impl Iterator<Item = (&'a String, &'a Value)>,
    section: &str,
) -> BTreeMap<String, PluginSpec> {
    let mut specs = BTreeMap::new();
    for (alias, value) in plugins {
        let name = match value {
            Value::Object(m) => m.get("plugin").and_then(Value::as_str),
            other => other.as_str(),
        };
        let spec = match name.and_then(|n| c.missing_plugin(n)) {
            Some(why) => Err(why),
            None => read_plugin(value),
        };
        match spec {
            Ok(spec) => {
                specs.insert(alias.clone(), spec);
            }
            Err(why) => c.top(&[alias.as_str(), ":"], format!("{section}.{alias}: {why}")),
        }
    }
    specs
}

/// `name` or `{plugin, version, sha256, config, limits, reuse}`.
fn read_plugin(value: &Value) -> Result<PluginSpec, String> {
    let m = match value {
        Value::String(name) => return Ok(PluginSpec::named(name)),
        Value::Object(m) => m,
        _ => return Err("expected a plugin name or `{plugin, config, limits, ...}`".to_string()),
    };
    let Some(Value::String(plugin)) = m.get("plugin") else {
        return Err("needs `plugin: <name>`".to_string());
    };
    if let Some(key) = m.keys().find(|k| !PLUGIN_KEYS.contains(&k.as_str())) {
        let known: Vec<String> = PLUGIN_KEYS.iter().map(|s| s.to_string()).collect();
        return Err(format!("unknown key `{key}`{}", hint(key, &known)));
    }
    let text = |key: &str| match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string, not {other}")),
    };
    let reuse = match m.get("reuse") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("`reuse` must be a whole number, not {v}"))?,
        ),
    };
    let pool = match m.get("pool") {
        None => None,
        Some(v) => {
            let pool: crate::warm::OperatorPool =
                serde_json::from_value(v.clone()).map_err(|e| {
                    format!("`pool`: {e} (keys: min, max, idle_timeout, max_uses, warm_up)")
                })?;
            pool.pool().map_err(|e| format!("`pool`: {e}"))?;
            Some(Box::new(pool))
        }
    };
    Ok(PluginSpec {
        plugin: plugin.clone(),
        pool,
        version: text("version")?,
        sha256: text("sha256")?,
        config: m.get("config").cloned(),
        limits: m
            .get("limits")
            .map(read_limits)
            .transpose()?
            .unwrap_or_default(),
        reuse,
    })
}

fn read_limits(limits: &Value) -> Result<PluginLimits, String> {
    let Value::Object(m) = limits else {
        return Err("`limits` must be a map".into());
    };
    let mut out = PluginLimits::default();
    for (key, value) in m {
        let n = value.as_u64().filter(|n| *n > 0);
        if !PluginLimits::KEYS.contains(&key.as_str()) {
            let known: Vec<String> = PluginLimits::KEYS.iter().map(|s| s.to_string()).collect();
            return Err(format!("unknown limit `{key}`{}", hint(key, &known)));
        }
        match n {
            Some(n) => {
                out.set(key, n);
            }
            None => return Err(format!("limit `{key}` must be a positive whole number")),
        }
    }
    Ok(out)
}

/// Checks `data.agents`: the agents (each a plugin) without a problem, and
/// which of them are FlatAgents agents (`./agent.yml`, an inline
/// `spec: flatagent` map or `{type: flatagent, ref}`), run by the `llm`
/// plugin with the agent, resolved against the profiles, as its config.
fn check_agents(
    c: &mut Checker<'_>,
    agents: &BTreeMap<String, Value>,
    profiles_file: Option<&str>,
) -> (
    BTreeMap<String, PluginSpec>,
    std::collections::BTreeSet<String>,
) {
    let mut profiles: Option<Option<agent::Profiles>> = None;
    let mut specs = BTreeMap::new();
    let mut llm = std::collections::BTreeSet::new();
    for (name, value) in agents {
        let source = match value {
            Value::String(rel) => Some((rel.clone(), None)),
            Value::Object(m) if m.contains_key("spec") => {
                Some((format!("data.agents.{name}"), Some(value.clone())))
            }
            Value::Object(m) if m.contains_key("type") && !m.contains_key("plugin") => {
                match (m.get("type").and_then(Value::as_str), m.get("ref")) {
                    (Some("flatagent"), Some(Value::String(rel))) => Some((rel.clone(), None)),
                    (Some("flatagent"), _) => {
                        c.top(
                            &[name.as_str(), ":"],
                            format!("agent `{name}`: `type: flatagent` needs `ref: ./agent.yml`"),
                        );
                        continue;
                    }
                    (kind, _) => {
                        c.top(
                            &[name.as_str(), ":"],
                            format!(
                                "agent `{name}`: adapter `{}` is not supported; flowhost runs FlatAgents agents (`spec: flatagent`) and plugins (`{{plugin: <name>}}`)",
                                kind.unwrap_or("?")
                            ),
                        );
                        continue;
                    }
                }
            }
            _ => None,
        };
        let Some((label, inline)) = source else {
            continue;
        };
        if profiles.is_none() {
            // As FlatAgents does: without `data.profiles`, a `profiles.yml`
            // beside the machine is used.
            let beside = c.pinned_or_beside(DEFAULT_PROFILES);
            let profiles_file = profiles_file.or(beside.then_some(DEFAULT_PROFILES));
            profiles = Some(profiles_file.and_then(|rel| {
                let read = c
                    .file_text(rel)
                    .and_then(|t| agent::yaml(Path::new(rel), &t))
                    .and_then(|doc| agent::read_profiles(rel, &doc));
                read.map_err(|e| c.top(&["profiles:"], format!("profiles `{rel}`: {e}")))
                    .ok()
            }));
        }
        let doc = match inline {
            Some(doc) => Ok(doc),
            None => c
                .file_text(&label)
                .and_then(|t| agent::yaml(Path::new(&label), &t)),
        };
        let config = doc.and_then(|d| {
            agent::read_agent(&label, &d, profiles.as_ref().and_then(Option::as_ref))
        });
        let config = config.and_then(|config| match c.missing_plugin(agent::LLM_PLUGIN) {
            Some(why) => Err(format!(
                "FlatAgents agents run on the provided `{}` plugin: {why} (`cargo xtask plugins` builds it)",
                agent::LLM_PLUGIN
            )),
            None => Ok(config),
        });
        match config {
            Ok(config) => {
                let mut spec = PluginSpec::named(agent::LLM_PLUGIN);
                spec.config = Some(config);
                specs.insert(name.clone(), spec);
                llm.insert(name.clone());
            }
            Err(why) => c.top(
                &[name.as_str(), label.as_str()],
                format!("agent `{name}` ({label}): {why}"),
            ),
        }
    }
    let plugins = check_plugins(
        c,
        agents
            .iter()
            .filter(|(_, v)| !v.is_string() && !is_flat_agent(v)),
        "agents",
    );
    specs.extend(plugins);
    (specs, llm)
}

/// The profiles file used when a machine names none.
const DEFAULT_PROFILES: &str = "profiles.yml";

/// An agent given as an inline `spec: flatagent` map or `{type, ref}`.
fn is_flat_agent(v: &Value) -> bool {
    v.get("spec").is_some() || (v.get("type").is_some() && v.get("plugin").is_none())
}

/// The chain of machine files from `child` back to `root` (`root` is
/// canonical), if `child` or a machine it includes at any depth is `root`.
/// Unreadable files are skipped: they are reported where they are named.
fn includes(root: &Path, child: &Path, seen: &mut Vec<PathBuf>) -> Option<Vec<PathBuf>> {
    let real = std::fs::canonicalize(child).ok()?;
    if real == root {
        return Some(vec![real]);
    }
    if seen.contains(&real) {
        return None;
    }
    seen.push(real.clone());
    let file: MachineFile = serde_yaml::from_str(&std::fs::read_to_string(&real).ok()?).ok()?;
    let dir = real.parent()?.to_path_buf();
    file.data.machines.values().find_map(|value| {
        let Value::String(rel) = value else {
            return None;
        };
        let mut chain = includes(root, &dir.join(rel), seen)?;
        chain.insert(0, real.clone());
        Some(chain)
    })
}

/// Checks `data.machines`; the child machines without a problem.
fn check_machines(
    c: &mut Checker<'_>,
    path: &Path,
    machines: &BTreeMap<String, Value>,
) -> BTreeMap<String, ChildMachine> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for (name, value) in machines {
        match value {
            Value::String(rel) if c.pinned => {
                out.insert(name.clone(), ChildMachine::File(rel.clone()));
            }
            Value::String(rel) => {
                if !dir.join(rel).is_file() {
                    c.top(
                        &[name.as_str(), rel.as_str()],
                        format!("machine `{name}`: no file `{rel}` next to this config"),
                    );
                } else if let Some(chain) = std::fs::canonicalize(path)
                    .ok()
                    .and_then(|root| includes(&root, &dir.join(rel), &mut Vec::new()))
                {
                    let names: Vec<String> = std::iter::once(path.to_path_buf())
                        .chain(chain)
                        .map(|p| {
                            p.file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                        })
                        .collect();
                    c.top(
                        &[name.as_str(), rel.as_str()],
                        format!(
                            "machine `{name}` includes this machine again ({}): it would never finish loading",
                            names.join(" → ")
                        ),
                    );
                } else {
                    out.insert(name.clone(), ChildMachine::File(rel.clone()));
                }
            }
            Value::Object(m) if m.contains_key("data") => match serde_yaml::to_string(value) {
                Ok(text) => {
                    out.insert(name.clone(), ChildMachine::Inline(text));
                }
                Err(e) => c.top(
                    &[name.as_str(), ":"],
                    format!("machine `{name}`: the inline machine cannot be read: {e}"),
                ),
            },
            _ => c.top(
                &[name.as_str(), ":"],
                format!("machine `{name}`: expected a file path or an inline machine"),
            ),
        }
    }
    out
}
