//! Machine configs: reading `spec: flatmachine` YAML files and checking them
//! before anything runs.
//!
//! Every problem is a [`ConfigError`] naming the file, the line (when it can
//! be found) and the state, e.g.
//! `machine.yml:14: state `extract`: transition to unknown state `dne` (did you mean `done`?)`.
//! Validation collects all problems of a file instead of stopping at the first.
//!
//! `schema` is the serde form of the YAML; validation turns it into the
//! typed [`model`], the only form the rest of the host sees.
//!
//! FlatAgents agent and profile files that a machine names are read here
//! too ([`agent`]), into the config of the provided `llm` plugin.
//!
//! Imports `expr` (to check templates and conditions), `text`, `duration`,
//! `failure`, `warm` and `providers`.

pub mod agent;
pub mod graph;
mod locate;
pub mod model;
pub mod schema;
mod validate;

pub use model::{
    ChildMachine, ChildSpec, Children, Data, Hook, OnError, PluginLimits, PluginSpec, RunKind,
    Runs, State,
};
pub use schema::{MachineFile, StateType, Transition};
pub use validate::BUILTIN_HOOKS_CLASS;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a machine config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub state: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(state) = &self.state {
            write!(f, "state `{state}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A parsed and validated machine config.
#[derive(Debug, Clone)]
pub struct Machine {
    pub path: PathBuf,
    /// The typed model of the file's `data`.
    pub data: Data,
    /// The state the machine starts in.
    pub initial: String,
    /// Agent and profile files the config names, by that name, as read
    /// (what a pinned definition keeps besides the config itself).
    pub files: std::collections::BTreeMap<String, String>,
}

impl Machine {
    pub fn name(&self) -> &str {
        self.data.name.as_deref().unwrap_or("unnamed-machine")
    }
    pub fn data(&self) -> &Data {
        &self.data
    }
}

/// What validation may look at besides the file itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The plugins folder, when known: every plugin a config names must be
    /// there (as `<name>.wasm`).
    pub plugins_dir: Option<PathBuf>,
    /// The config comes from a pinned definition, which holds its child
    /// machines' files: they are not looked for on disk.
    pub pinned: bool,
    /// With `pinned`: the agent and profile files the definition holds for
    /// this config, by the name the config gives them.
    pub files: std::collections::BTreeMap<String, String>,
}

/// Deepest nesting of flow collections (`[` / `{`) accepted in a config.
/// YAML parsers slow down sharply with depth; real configs nest a few levels.
pub const MAX_NESTING: usize = 64;

/// Most unknown keys reported from one file (each costs a re-parse).
const MAX_UNKNOWN_KEYS: usize = 32;

/// Reads, parses and validates a machine config file.
pub fn load(path: &Path) -> Result<Machine, ConfigErrors> {
    load_with(path, &Options::default())
}

/// [`load`] with [`Options`].
pub fn load_with(path: &Path, options: &Options) -> Result<Machine, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            state: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse_with(path, &source, options)
}

/// Parses and validates config text that came from `path`.
pub fn parse(path: &Path, source: &str) -> Result<Machine, ConfigErrors> {
    parse_with(path, source, &Options::default())
}

/// [`parse`] with [`Options`].
pub fn parse_with(path: &Path, source: &str, options: &Options) -> Result<Machine, ConfigErrors> {
    let error = |line: Option<usize>, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        state: None,
        message,
    };
    // Refused in linear time, before a parser spends quadratic time on it.
    if let Some((depth_line, depth)) = locate::flow_depth_over(source, MAX_NESTING) {
        return Err(ConfigErrors(vec![error(
            Some(depth_line),
            format!("nested more than {MAX_NESTING} levels deep ({depth} at this line)"),
        )]));
    }
    let index = locate::LineIndex::new(source);
    // Duplicate keys anywhere (serde would keep the last one silently).
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(source) {
        let mut err = validate::serde_error(path, &index, &e);
        let text = e.to_string();
        let key = text
            .split_once("duplicate entry with key ")
            .map(|(_, rest)| rest)
            .map(|rest| {
                rest.split(" at line")
                    .next()
                    .unwrap_or(rest)
                    .trim_matches('"')
            });
        if let (Some(key), Some(line)) = (key, err.line)
            && let Some((first, second)) = index.same_key_twice(line, key)
        {
            err.line = Some(second);
            err.state = index
                .state_at(second)
                .map(str::to_string)
                .filter(|s| s != key);
            err.message =
                format!("duplicate key `{key}`: first at line {first}, again at line {second}");
        }
        return Err(ConfigErrors(vec![err]));
    }
    let file = deserialize(path, &index, source)?;
    let (initial, data, files) = validate::validate(path, &index, file, options)?;
    Ok(Machine {
        path: path.to_path_buf(),
        data,
        initial,
        files,
    })
}

/// Deserializes the schema; on unknown keys, reports every one of them (the
/// key's block is commented out and the text parsed again, so the next one
/// shows up), not just the first.
fn deserialize(
    path: &Path,
    index: &locate::LineIndex,
    source: &str,
) -> Result<MachineFile, ConfigErrors> {
    let mut text = source.to_string();
    let mut errors = Vec::new();
    loop {
        match serde_yaml::from_str::<MachineFile>(&text) {
            Ok(file) if errors.is_empty() => return Ok(file),
            Ok(_) => return Err(ConfigErrors(errors)),
            Err(e) => {
                let unknown = e.to_string().starts_with("unknown field")
                    || e.to_string().contains(": unknown field");
                let err = validate::serde_error(path, index, &e);
                let next = match (unknown, e.location()) {
                    (true, Some(at)) if errors.len() < MAX_UNKNOWN_KEYS => {
                        locate::comment_out_block(&text, at.line())
                    }
                    _ => None,
                };
                errors.push(err);
                match next {
                    Some(t) if t != text => text = t,
                    _ => return Err(ConfigErrors(errors)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
