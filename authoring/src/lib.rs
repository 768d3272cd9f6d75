//! Plugin authoring: everything between a plugin's sources and its
//! component, shared by `flowhost plugin new` / `plugin build` and the
//! repository's own `cargo xtask plugins` (one way to build a plugin).
//!
//! - `project`: what a plugin project is (language, world, name, sources,
//!   `flowhost.toml`) and its source fingerprint.
//! - `toolchain`: the pinned toolchains, installed once into a cache outside
//!   the project (componentize-py from PyPI, componentize-js from npm, the
//!   `wasm32-wasip2` Rust target, clang + wasi-libc for C).
//! - `build`: sources → component, per language, written atomically into the
//!   output folder; incremental.
//! - `scaffold`: new projects from the templates in `templates/`.
//!
//! Imports no other flowhost crate (no wasmtime): checking that a component
//! links against the host is the caller's job.

pub mod build;
pub mod project;
pub mod scaffold;
pub mod toolchain;

pub use build::{BuildOptions, Built, build};
pub use project::Project;
pub use scaffold::scaffold;
pub use toolchain::Toolchains;

use std::fmt;

/// The plugin contract every template and build uses (`wit/plugin.wit`).
pub const WIT: &str = include_str!("../../wit/plugin.wit");

/// A source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    /// The language's name in prose: Rust, Python, JavaScript, C.
    pub fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Some(Lang::Rust),
            "python" | "py" => Some(Lang::Python),
            "js" | "javascript" => Some(Lang::Js),
            "c" => Some(Lang::C),
            _ => None,
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A world of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum World {
    Processor,
    Hook,
    Step,
}

impl World {
    pub const ALL: [World; 3] = [World::Processor, World::Hook, World::Step];

    pub fn as_str(self) -> &'static str {
        match self {
            World::Processor => "processor",
            World::Hook => "hook",
            World::Step => "step",
        }
    }

    pub fn parse(s: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A language's toolchain is missing and cannot be installed here.
    /// `what` names it, `how` says how to get it.
    #[error("{} plugins need {what}: {how}", lang.title())]
    ToolchainMissing {
        lang: Lang,
        what: String,
        how: String,
    },
    /// The compiler (or componentizer) rejected the sources; its own
    /// message went to stderr.
    #[error("building `{name}` ({lang}) failed: {message}")]
    Compile {
        name: String,
        lang: Lang,
        message: String,
    },
    /// Not a plugin project, or a project file that does not make sense.
    #[error("{0}")]
    Project(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub(crate) fn io(what: impl fmt::Display, e: impl fmt::Display) -> Error {
        Error::Io(format!("{what}: {e}"))
    }
}
