//! New plugin projects (`flowhost plugin new`): for each language and world
//! a working example (`templates/<lang>/<world>.*`), the golden cases it
//! passes (`templates/golden/`, the same for every language), a machine
//! that uses it, `flowhost.toml`, the contract in `wit/`, a README and a
//! `.gitignore`. `__NAME__` in a template becomes the plugin's name.
//!
//! Imports the crate root and `project`.

use crate::project::{PROJECT_FILE, check_name};
use crate::{Error, Lang, World};
use std::path::{Path, PathBuf};

/// The example source of one language and world: (file name, text).
fn source(lang: Lang, world: World, name: &str) -> (String, &'static str) {
    use {Lang::*, World::*};
    let text = match (lang, world) {
        (Rust, Processor) => include_str!("../templates/rust/processor.rs"),
        (Rust, Hook) => include_str!("../templates/rust/hook.rs"),
        (Rust, Step) => include_str!("../templates/rust/step.rs"),
        (Python, Processor) => include_str!("../templates/python/processor.py"),
        (Python, Hook) => include_str!("../templates/python/hook.py"),
        (Python, Step) => include_str!("../templates/python/step.py"),
        (Js, Processor) => include_str!("../templates/js/processor.js"),
        (Js, Hook) => include_str!("../templates/js/hook.js"),
        (Js, Step) => include_str!("../templates/js/step.js"),
        (C, Processor) => include_str!("../templates/c/processor.c"),
        (C, Hook) => include_str!("../templates/c/hook.c"),
        (C, Step) => include_str!("../templates/c/step.c"),
    };
    let file = match lang {
        Rust => "src/lib.rs".to_string(),
        Python => "app.py".to_string(),
        Js => format!("{name}.js"),
        C => format!("{name}.c"),
    };
    (file, text)
}

fn golden(world: World) -> &'static str {
    match world {
        World::Processor => include_str!("../templates/golden/processor.json"),
        World::Hook => include_str!("../templates/golden/hook.json"),
        World::Step => include_str!("../templates/golden/step.json"),
    }
}

fn machine(world: World) -> &'static str {
    match world {
        World::Processor => include_str!("../templates/machine/processor.yml"),
        World::Hook => include_str!("../templates/machine/hook.yml"),
        World::Step => include_str!("../templates/machine/step.yml"),
    }
}

/// Writes a new project for plugin `name` into `dir` (which must not exist,
/// or be empty); returns the files written, relative to `dir`.
pub fn scaffold(name: &str, lang: Lang, world: World, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    check_name(name).map_err(Error::Project)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir.display(), e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Project(format!(
                "{} exists and is not empty: choose a new folder",
                dir.display()
            )));
        }
    }
    let (source_file, source_text) = source(lang, world, name);
    let (sample, event, run_input) = match world {
        World::Processor => (r#"{"name": "Ada"}"#, "", r#" --input '{"name": "Ada"}'"#),
        World::Hook => (
            "{}",
            r#" --event '{"transition": {"from": "start", "to": "unsafe_delete"}}'"#,
            "",
        ),
        World::Step => (r#"{"urgent": true}"#, "", r#" --input '{"urgent": true}'"#),
    };
    let export = match world {
        World::Processor => "process(meta, input)",
        World::Hook => "on-event(event, meta, context)",
        World::Step => "run(meta, context)",
    };
    let readme = include_str!("../templates/README.md")
        .replace("__SOURCE__", &source_file)
        .replace("__EXPORT__", export)
        .replace("__LANGNAME__", lang.title())
        .replace("__WORLD__", world.as_str())
        .replace("__SAMPLE__", sample)
        .replace("__EVENT__", event)
        .replace("__RUNINPUT__", run_input);
    let project = format!(
        "# A flowhost plugin project: `flowhost plugin build` reads this file.\n\
         [plugin]\nname = \"{name}\"\nlang = \"{lang}\"\nworld = \"{world}\"\n\n\
         # The plugin manifest, shipped beside the component as {name}.toml.\n\
         [manifest]\nversion = \"0.1.0\"\n\n[manifest.limits]\ntimeout_ms = 5000\nmemory_mb = 64\n"
    );
    let mut files: Vec<(String, String)> = vec![
        (source_file, source_text.to_string()),
        ("golden.json".into(), golden(world).to_string()),
        ("machine.yml".into(), machine(world).to_string()),
        (PROJECT_FILE.into(), project),
        ("wit/plugin.wit".into(), crate::WIT.to_string()),
        ("README.md".into(), readme),
        (
            ".gitignore".into(),
            include_str!("../templates/gitignore").to_string(),
        ),
    ];
    if lang == Lang::Rust {
        files.push((
            "Cargo.toml".into(),
            include_str!("../templates/rust/Cargo.toml").to_string(),
        ));
    }
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
        }
        std::fs::write(&path, text.replace("__NAME__", name))
            .map_err(|e| Error::io(path.display(), e))?;
        written.push(PathBuf::from(file));
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Project;

    #[test]
    fn every_project_opens_as_what_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        for lang in Lang::ALL {
            for world in World::ALL {
                let name = format!("p-{lang}-{world}");
                let at = dir.path().join(&name);
                let files = scaffold(&name, lang, world, &at).unwrap();
                assert!(files.contains(&PathBuf::from("golden.json")));
                let project = Project::open(&at).unwrap();
                assert_eq!(
                    (project.name.as_str(), project.lang, project.world),
                    (name.as_str(), lang, world)
                );
                let readme = std::fs::read_to_string(at.join("README.md")).unwrap();
                assert!(!readme.contains("__"), "{readme}");
                assert!(project.manifest.is_some());
                let suite: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(at.join("golden.json")).unwrap())
                        .unwrap();
                assert_eq!(suite["plugin"], name.as_str());
            }
        }
    }

    #[test]
    fn refuses_a_folder_with_files_and_a_bad_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let err = scaffold("ok", Lang::C, World::Hook, dir.path()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = scaffold("no/way", Lang::C, World::Hook, &dir.path().join("n")).unwrap_err();
        assert!(err.to_string().contains("not a plugin name"), "{err}");
    }
}
