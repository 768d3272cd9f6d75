//! Checks a parsed machine config before anything runs, collecting every
//! problem: references (states, agents, plugins, machines), the shapes of the
//! flexible keys, templates and conditions, and settings.

use super::locate::LineIndex;
use super::schema::{ExecutionType, MachineFile, Mode, State, StateType};
use super::{ConfigError, ConfigErrors, Options};
use crate::duration;
use crate::expr::Expressions;
use crate::failure::FailureKind;
use crate::text::closest;
use serde_json::Value;
use std::path::{Path, PathBuf};

const CHECKPOINT_EVENTS: [&str; 6] = [
    "machine_start",
    "state_enter",
    "execute",
    "state_exit",
    "machine_end",
    "waiting",
];
const PLUGIN_KEYS: [&str; 6] = ["plugin", "version", "sha256", "config", "limits", "reuse"];
const LIMIT_KEYS: [&str; 4] = ["memory_mb", "timeout_ms", "fuel", "output_mb"];

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

/// Validates the file; returns the initial state's name.
pub(super) fn validate(
    path: &Path,
    index: &LineIndex,
    file: &MachineFile,
    options: &Options,
) -> Result<String, ConfigErrors> {
    let mut c = Checker {
        path,
        index,
        plugins_dir: options.plugins_dir.as_deref(),
        pinned: options.pinned,
        exprs: Expressions::new(),
        errors: Vec::new(),
    };
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
    check_plugins(&mut c, data.plugins.iter(), "plugins");
    check_agents(&mut c, &data.agents);
    check_machines(&mut c, path, &data.machines);
    for (key, hooks) in [
        ("hooks", &data.hooks),
        ("lifecycle_hooks", &data.lifecycle_hooks),
    ] {
        if let Some(h) = hooks
            && let Err(why) = hooks_shape(h)
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
    for (name, state) in &data.states {
        check_state(&mut c, file, &names, name, state);
    }

    if c.errors.is_empty() {
        Ok(initial.unwrap_or_default())
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

fn check_state(c: &mut Checker<'_>, file: &MachineFile, names: &[String], name: &str, s: &State) {
    let data = &file.data;
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
    let agents: Vec<String> = data.agents.keys().cloned().collect();
    let plugins: Vec<String> = data.plugins.keys().cloned().collect();
    let machines: Vec<String> = data.machines.keys().cloned().collect();
    if let Some(agent) = &s.agent
        && !agents.contains(agent)
    {
        c.in_state(
            name,
            &["agent:"],
            format!(
                "unknown agent `{agent}`{}; agents are declared under data.agents",
                hint(agent, &agents)
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
                    hint(alias, &plugins)
                ),
            );
        }
    }
    let mut children = Vec::new();
    if let Some(m) = &s.machine {
        match machine_names(m) {
            Ok(list) => children.extend(list.into_iter().map(|n| ("machine", n))),
            Err(why) => c.in_state(name, &["machine:"], format!("`machine`: {why}")),
        }
    }
    if let Some(l) = &s.launch {
        match machine_names(l) {
            Ok(list) => children.extend(list.into_iter().map(|n| ("launch", n))),
            Err(why) => c.in_state(name, &["launch:"], format!("`launch`: {why}")),
        }
    }
    for (key, child) in children {
        if !machines.contains(&child) {
            c.in_state(
                name,
                &[key, &child],
                format!(
                    "unknown machine `{child}`{}; machines are declared under data.machines",
                    hint(&child, &machines)
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
    if s.foreach.is_some() && !matches!(&s.machine, Some(Value::String(_))) {
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
    if let Some(on_error) = &s.on_error {
        check_on_error(c, names, name, on_error);
    }
    if let Some(h) = &s.hooks
        && let Err(why) = hooks_shape(h)
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
}

fn check_on_error(c: &mut Checker<'_>, names: &[String], name: &str, on_error: &Value) {
    let kinds: Vec<String> = FailureKind::ALL
        .into_iter()
        .filter(|k| k.is_routable())
        .map(|k| k.to_string())
        .chain(["default".to_string()])
        .collect();
    let targets: Vec<&str> = match on_error {
        Value::String(target) => vec![target.as_str()],
        Value::Object(map) => {
            for kind in map.keys() {
                if let Some(k) = FailureKind::parse(kind).filter(|k| !k.is_routable()) {
                    c.in_state(
                        name,
                        &[kind],
                        format!("`on_error`: `{k}` ends the execution; it cannot be routed"),
                    );
                } else if !kinds.contains(kind) {
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
}

/// `name`, `[a, b]` or `[{name, input}, ...]` → the machine names.
fn machine_names(value: &Value) -> Result<Vec<String>, String> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(m) => m
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "a child given as a map needs a `name`".to_string()),
        other => Err(format!("expected a machine name, got {other}")),
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// Hook plugin name(s), the legacy `{file, class}`, or `{name, args}`.
fn hooks_shape(value: &Value) -> Result<(), String> {
    match value {
        Value::String(_) => Ok(()),
        Value::Array(items) => items.iter().try_for_each(hooks_shape),
        Value::Object(m) if m.get("class").is_some_and(Value::is_string) => Ok(()),
        Value::Object(m) if m.get("name").is_some_and(Value::is_string) => Ok(()),
        _ => Err(
            "expected a hook plugin name, a list of them, `{file, class}` or `{name, args}`".into(),
        ),
    }
}

fn check_plugins<'a>(
    c: &mut Checker<'_>,
    plugins: impl Iterator<Item = (&'a String, &'a Value)>,
    section: &str,
) {
    for (alias, value) in plugins {
        let problem = match value {
            Value::String(name) => c.missing_plugin(name),
            Value::Object(m) => {
                let plugin = m.get("plugin").and_then(Value::as_str);
                if let Some(why) = plugin.and_then(|n| c.missing_plugin(n)) {
                    Some(why)
                } else if plugin.is_none() {
                    Some("needs `plugin: <name>`".to_string())
                } else if let Some(key) = m.keys().find(|k| !PLUGIN_KEYS.contains(&k.as_str())) {
                    let known: Vec<String> = PLUGIN_KEYS.iter().map(|s| s.to_string()).collect();
                    Some(format!("unknown key `{key}`{}", hint(key, &known)))
                } else {
                    m.get("limits").and_then(limits_problem)
                }
            }
            _ => Some("expected a plugin name or `{plugin, config, limits, ...}`".to_string()),
        };
        if let Some(why) = problem {
            c.top(&[alias.as_str(), ":"], format!("{section}.{alias}: {why}"));
        }
    }
}

fn limits_problem(limits: &Value) -> Option<String> {
    let Value::Object(m) = limits else {
        return Some("`limits` must be a map".into());
    };
    for (key, value) in m {
        if !LIMIT_KEYS.contains(&key.as_str()) {
            let known: Vec<String> = LIMIT_KEYS.iter().map(|s| s.to_string()).collect();
            return Some(format!("unknown limit `{key}`{}", hint(key, &known)));
        }
        if value.as_u64().is_none_or(|n| n == 0) {
            return Some(format!("limit `{key}` must be a positive whole number"));
        }
    }
    None
}

fn check_agents(c: &mut Checker<'_>, agents: &std::collections::BTreeMap<String, Value>) {
    for (name, value) in agents {
        if let Value::String(path) = value {
            c.top(
                &[name.as_str(), path.as_str()],
                format!(
                    "agent `{name}` points at `{path}`, a FlatAgents LLM agent; flowhost runs agents as plugins: `{name}: {{plugin: <plugin>}}`"
                ),
            );
        }
    }
    check_plugins(c, agents.iter().filter(|(_, v)| !v.is_string()), "agents");
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

fn check_machines(
    c: &mut Checker<'_>,
    path: &Path,
    machines: &std::collections::BTreeMap<String, Value>,
) {
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, value) in machines {
        match value {
            Value::String(_) if c.pinned => {}
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
                }
            }
            Value::Object(m) if m.contains_key("data") => {}
            _ => c.top(
                &[name.as_str(), ":"],
                format!("machine `{name}`: expected a file path or an inline machine"),
            ),
        }
    }
}
