//! A plugin project: a folder of sources in one language that builds into one
//! component. Its optional `flowhost.toml` names the plugin, its language and
//! world, and holds the manifest that ships beside the component:
//!
//! ```toml
//! [plugin]
//! name = "greet"        # default: the Rust package name, else the folder name
//! lang = "python"       # default: detected (Cargo.toml, app.py, *.c, *.js)
//! world = "processor"   # default: processor
//!
//! [manifest]            # optional: shipped as <name>.toml (limits, config, ...)
//! [manifest.limits]
//! timeout_ms = 1000
//! ```
//!
//! Imports only the crate root.

use crate::{Error, Lang, World};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The project file's name.
pub const PROJECT_FILE: &str = "flowhost.toml";

/// Folders of build output and tool caches: never sources, never searched
/// for golden cases.
pub const BUILD_OUTPUT: [&str; 4] = ["dist", "target", "node_modules", "__pycache__"];

/// Files of a project that are not sources: golden cases, docs, the example
/// machine and the project file (changing them does not change the component).
const NOT_SOURCES: [&str; 4] = ["machine.yml", "golden.json", "README.md", PROJECT_FILE];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    #[serde(default)]
    plugin: PluginSection,
    manifest: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSection {
    name: Option<String>,
    lang: Option<String>,
    world: Option<String>,
}

/// A plugin project found in a folder.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub lang: Lang,
    pub world: World,
    /// `[manifest]` of flowhost.toml, shipped as `<name>.toml`.
    pub manifest: Option<toml::Table>,
}

impl Project {
    /// Reads the project in `dir`; the error says what a project needs.
    pub fn open(dir: &Path) -> Result<Project, Error> {
        if !dir.is_dir() {
            return Err(Error::Project(format!(
                "{}: not a folder (a plugin project is a folder of sources)",
                dir.display()
            )));
        }
        let file = dir.join(PROJECT_FILE);
        let spec: ProjectFile = if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| Error::io(file.display(), e))?;
            toml::from_str(&text).map_err(|e| Error::Project(format!("{}: {e}", file.display())))?
        } else {
            ProjectFile::default()
        };
        let lang = match &spec.plugin.lang {
            Some(l) => Lang::parse(l).ok_or_else(|| {
                Error::Project(format!(
                    "{}: unknown lang `{l}` (expected rust, python, js or c)",
                    file.display()
                ))
            })?,
            None => detect(dir)?,
        };
        let world = match &spec.plugin.world {
            Some(w) => World::parse(w).ok_or_else(|| {
                Error::Project(format!(
                    "{}: unknown world `{w}` (expected processor, hook or step)",
                    file.display()
                ))
            })?,
            None => World::Processor,
        };
        let name = match spec.plugin.name {
            Some(n) => n,
            None if lang == Lang::Rust => cargo_package_name(dir)?,
            None => dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
        };
        check_name(&name).map_err(|e| Error::Project(format!("{}: {e}", dir.display())))?;
        Ok(Project {
            dir: dir.to_path_buf(),
            name,
            lang,
            world,
            manifest: spec.manifest,
        })
    }

    /// The project's own `wit/` folder, if it has one.
    pub fn wit_dir(&self) -> Option<PathBuf> {
        Some(self.dir.join("wit")).filter(|d| d.is_dir())
    }

    /// Every source file, sorted (see `NOT_SOURCES`; hidden files are not
    /// sources either).
    pub fn sources(&self) -> Result<Vec<PathBuf>, Error> {
        let skip: Vec<&str> = BUILD_OUTPUT.iter().chain(&NOT_SOURCES).copied().collect();
        files_below(&self.dir, &skip)
    }

    /// The files of one extension directly in the project folder, sorted.
    pub fn files_with_extension(&self, ext: &str) -> Result<Vec<PathBuf>, Error> {
        files_with_extension(&self.dir, ext)
    }
}

/// A hash of everything a build reads: the sources, the WIT, and `extra`
/// (the toolchain pin and flowhost's version).
pub fn fingerprint(project: &Project, wit: &Path, extra: &str) -> Result<String, Error> {
    let mut hash = Sha256::new();
    hash.update(extra.as_bytes());
    hash.update(format!("\0{}\0{}\0{}\0", project.name, project.lang, project.world).as_bytes());
    let mut files = project.sources()?;
    if !wit.starts_with(&project.dir) {
        files.extend(files_below(wit, &[])?);
    }
    if let Some(m) = &project.manifest {
        hash.update(m.to_string().as_bytes());
    }
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(file.display(), e))?;
        let shown = file.strip_prefix(&project.dir).unwrap_or(&file);
        hash.update(shown.to_string_lossy().as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(hex(&hash.finalize()))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plugin name: a letter, then letters, digits, `-` or `_` (it becomes a
/// file name, a crate name and the name machines use).
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a plugin name (a letter, then letters, digits, - or _; at most 64)",
            name.escape_debug()
        ))
    }
}

fn detect(dir: &Path) -> Result<Lang, Error> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(Lang::Rust);
    }
    if dir.join("app.py").is_file() {
        return Ok(Lang::Python);
    }
    if !files_with_extension(dir, "c")?.is_empty() {
        return Ok(Lang::C);
    }
    if !files_with_extension(dir, "js")?.is_empty() {
        return Ok(Lang::Js);
    }
    Err(Error::Project(format!(
        "{}: no plugin sources here: expected Cargo.toml (Rust), app.py (Python), .c files (C) \
         or a .js file (JavaScript), or a {PROJECT_FILE} naming `lang` \
         (`flowhost plugin new NAME --lang LANG` makes a project)",
        dir.display()
    )))
}

fn cargo_package_name(dir: &Path) -> Result<String, Error> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| Error::Project(format!("{}: {e}", path.display())))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Project(format!("{}: no [package] name", path.display())))
}

fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// Every file below `dir`, sorted, leaving out hidden entries and those
/// named in `skip`.
pub fn files_below(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>, Error> {
    fn walk(dir: &Path, skip: &[&str], files: &mut Vec<PathBuf>) -> Result<(), Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || skip.contains(&name.as_ref()) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(&path, skip, files)?;
            } else {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, skip, &mut files)?;
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_language_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shout");
        std::fs::create_dir(&p).unwrap();
        assert!(
            matches!(Project::open(&p), Err(Error::Project(m)) if m.contains("no plugin sources"))
        );
        std::fs::write(p.join("app.py"), "").unwrap();
        let project = Project::open(&p).unwrap();
        assert_eq!(
            (project.lang, project.world),
            (Lang::Python, World::Processor)
        );
        assert_eq!(project.name, "shout");
        std::fs::write(
            p.join(PROJECT_FILE),
            "[plugin]\nname = \"loud\"\nworld = \"step\"\n[manifest.limits]\ntimeout_ms = 5\n",
        )
        .unwrap();
        let project = Project::open(&p).unwrap();
        assert_eq!(
            (project.name.as_str(), project.world),
            ("loud", World::Step)
        );
        assert!(project.manifest.is_some());
    }

    #[test]
    fn bad_project_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "[plugin]\nlang = \"cobol\"\n",
        )
        .unwrap();
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("flowhost.toml") && err.contains("cobol"),
            "{err}"
        );
        std::fs::write(dir.path().join(PROJECT_FILE), "[plugin]\nnmae = \"x\"\n").unwrap();
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("nmae"), "{err}");
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "[plugin]\nname = \"../x\"\nlang = \"c\"\n",
        )
        .unwrap();
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a plugin name"), "{err}");
    }

    #[test]
    fn fingerprint_follows_sources_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tempfile::TempDir::new_in(tmp.path()).unwrap();
        std::fs::write(dir.path().join(PROJECT_FILE), "[plugin]\nname = \"fp\"\n").unwrap();
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        std::fs::write(dir.path().join("golden.json"), "{}").unwrap();
        let project = Project::open(dir.path()).unwrap();
        let wit = dir.path().join("wit");
        std::fs::create_dir(&wit).unwrap();
        let first = fingerprint(&project, &wit, "pin").unwrap();
        std::fs::write(dir.path().join("golden.json"), "{\"cases\": []}").unwrap();
        std::fs::create_dir(dir.path().join("dist")).unwrap();
        std::fs::write(dir.path().join("dist/x.wasm"), "built").unwrap();
        assert_eq!(fingerprint(&project, &wit, "pin").unwrap(), first);
        assert_ne!(fingerprint(&project, &wit, "pin2").unwrap(), first);
        std::fs::write(dir.path().join("app.py"), "x = 2\n").unwrap();
        assert_ne!(fingerprint(&project, &wit, "pin").unwrap(), first);
    }
}
