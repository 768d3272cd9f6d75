//! Machine configs: reading `spec: flatmachine` YAML files and checking them
//! before anything runs.
//!
//! Every problem is a [`ConfigError`] naming the file, the line (when it can
//! be found) and the state, e.g.
//! `machine.yml:14: state `extract`: transition to unknown state `dne` (did you mean `done`?)`.
//! Validation collects all problems of a file instead of stopping at the first.
//!
//! Imports `expr` (to check templates and conditions) and nothing else.

pub mod graph;
mod locate;
pub mod schema;
mod validate;

pub use schema::{MachineData, MachineFile, State, StateType, Transition};
pub use validate::ERROR_KINDS;

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
    pub file: MachineFile,
    /// The state the machine starts in.
    pub initial: String,
}

impl Machine {
    pub fn name(&self) -> &str {
        self.file.data.name.as_deref().unwrap_or("unnamed-machine")
    }
    pub fn data(&self) -> &MachineData {
        &self.file.data
    }
}

/// Reads, parses and validates a machine config file.
pub fn load(path: &Path) -> Result<Machine, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            state: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &source)
}

/// Parses and validates config text that came from `path`.
pub fn parse(path: &Path, source: &str) -> Result<Machine, ConfigErrors> {
    let index = locate::LineIndex::new(source);
    let file: MachineFile = serde_yaml::from_str(source)
        .map_err(|e| ConfigErrors(vec![validate::serde_error(path, &index, &e)]))?;
    let initial = validate::validate(path, &index, &file)?;
    Ok(Machine {
        path: path.to_path_buf(),
        file,
        initial,
    })
}

#[cfg(test)]
mod tests;
