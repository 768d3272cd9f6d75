//! Sources → component, per language, into an output folder as
//! `<name>.wasm` (and `<name>.toml` when the project has a manifest).
//!
//! - Rust: `cargo build --target wasm32-wasip2`; cargo decides what is stale
//!   (it knows path dependencies and the lock file), and the component is
//!   copied only when its bytes changed.
//! - Python (componentize-py), JavaScript (componentize-js), C (clang +
//!   wit-bindgen-c + wit-component with the WASI preview1 adapter): skipped
//!   when the sources' fingerprint (sources, WIT, toolchain pin) matches the
//!   one recorded beside the component (`.<name>.build`).
//!
//! A component is written to a hidden `.partial` file and renamed into
//! place, so a failed build never leaves half a component where a host
//! would load it (the last good one stays).
//!
//! Imports the crate root, `project` and `toolchain`.

use crate::project::{Project, fingerprint, hex};
use crate::toolchain::{COMPONENTIZE_PY, Toolchains, js_pin};
use crate::{Error, Lang};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where and how to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The folder the component goes to.
    pub out: PathBuf,
    /// The WIT folder to build against; default: the project's `wit/`, else
    /// this flowhost's contract.
    pub wit: Option<PathBuf>,
    /// Rust: the cargo profile (default `release`).
    pub cargo_profile: Option<String>,
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub lang: Lang,
    pub wasm: PathBuf,
    pub manifest: Option<PathBuf>,
    pub size: u64,
    pub sha256: String,
    /// False when the component was already up to date (its file untouched).
    pub rebuilt: bool,
    pub duration: Duration,
}

/// Builds one project.
pub fn build(project: &Project, opts: &BuildOptions, tc: &Toolchains) -> Result<Built, Error> {
    type Compile = fn(&Project, &Path, &Path, &Toolchains) -> Result<(), Error>;
    let (pin, compile): (String, Compile) = match project.lang {
        Lang::Rust => {
            let mut built = build_rust(std::slice::from_ref(project), opts, tc)?;
            return built.pop().ok_or_else(|| {
                Error::Project(format!("{}: nothing built", project.dir.display()))
            });
        }
        Lang::Python => (COMPONENTIZE_PY.to_string(), python),
        Lang::Js => (js_pin(), js),
        Lang::C => ("clang".to_string(), c),
    };
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(opts.out.display(), e))?;
    let wit = wit_dir(project, opts, tc)?;
    let print = fingerprint(
        project,
        &wit,
        &format!("flowhost-authoring {} {pin}", env!("CARGO_PKG_VERSION")),
    )?;
    let wasm = opts.out.join(format!("{}.wasm", project.name));
    let stamp = opts.out.join(format!(".{}.build", project.name));
    if let Ok(bytes) = std::fs::read(&wasm)
        && let sha256 = hex(&Sha256::digest(&bytes))
        && std::fs::read_to_string(&stamp).ok() == Some(stamp_line(&print, &sha256))
    {
        let manifest = write_manifest(project, &opts.out)?;
        return Ok(built(
            project, wasm, manifest, &bytes, sha256, false, started,
        ));
    }
    let partial = partial_path(&opts.out, &project.name);
    if let Err(e) = compile(project, &wit, &partial, tc) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let bytes = std::fs::read(&partial).map_err(|e| Error::io(partial.display(), e))?;
    std::fs::rename(&partial, &wasm).map_err(|e| Error::io(wasm.display(), e))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    std::fs::write(&stamp, stamp_line(&print, &sha256))
        .map_err(|e| Error::io(stamp.display(), e))?;
    let manifest = write_manifest(project, &opts.out)?;
    Ok(built(
        project, wasm, manifest, &bytes, sha256, true, started,
    ))
}

/// Builds Rust plugin crates of one cargo workspace (or one standalone
/// crate) in a single cargo run.
pub fn build_rust(
    projects: &[Project],
    opts: &BuildOptions,
    tc: &Toolchains,
) -> Result<Vec<Built>, Error> {
    let Some(first) = projects.first() else {
        return Ok(Vec::new());
    };
    let started = Instant::now();
    tc.wasm_target()?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(opts.out.display(), e))?;
    let profile = opts.cargo_profile.as_deref().unwrap_or("release");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(["build", "--target", "wasm32-wasip2", "--profile", profile])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(first.dir.join("Cargo.toml"));
    for p in projects {
        cargo.args(["-p", &p.name]);
    }
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::ToolchainMissing {
            lang: Lang::Rust,
            what: "cargo".into(),
            how: format!("it could not be started ({e}); install Rust with rustup (rustup.rs)"),
        })?;
    if !out.status.success() {
        return Err(Error::Compile {
            name: names(projects),
            lang: Lang::Rust,
            message: format!("cargo exited with {} (its messages are above)", out.status),
        });
    }
    // Which .wasm each crate produced, from cargo's own report.
    let mut artifacts = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let (true, Some(name), Some(wasm)) = (is_cdylib, msg["target"]["name"].as_str(), wasm) {
            artifacts.insert(name.to_string(), PathBuf::from(wasm));
        }
    }
    let mut all = Vec::new();
    for p in projects {
        let from = artifacts.get(&p.name.replace('-', "_")).ok_or_else(|| {
            Error::Project(format!(
                "{}: cargo built no WebAssembly library for `{}` (is `crate-type = [\"cdylib\"]` in its [lib]?)",
                p.dir.display(),
                p.name
            ))
        })?;
        let bytes = std::fs::read(from).map_err(|e| Error::io(from.display(), e))?;
        let wasm = opts.out.join(format!("{}.wasm", p.name));
        let same = std::fs::read(&wasm).is_ok_and(|old| old == bytes);
        if !same {
            let partial = partial_path(&opts.out, &p.name);
            std::fs::write(&partial, &bytes).map_err(|e| Error::io(partial.display(), e))?;
            std::fs::rename(&partial, &wasm).map_err(|e| Error::io(wasm.display(), e))?;
        }
        let manifest = write_manifest(p, &opts.out)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        all.push(built(p, wasm, manifest, &bytes, sha256, !same, started));
    }
    Ok(all)
}

/// Where a component is written before it is renamed into place (one per
/// process, so two builds into one folder do not mix their bytes).
fn partial_path(out: &Path, name: &str) -> PathBuf {
    out.join(format!(".{name}.wasm.{}.partial", std::process::id()))
}

fn names(projects: &[Project]) -> String {
    projects
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn built(
    project: &Project,
    wasm: PathBuf,
    manifest: Option<PathBuf>,
    bytes: &[u8],
    sha256: String,
    rebuilt: bool,
    started: Instant,
) -> Built {
    Built {
        name: project.name.clone(),
        lang: project.lang,
        wasm,
        manifest,
        size: bytes.len() as u64,
        sha256,
        rebuilt,
        duration: started.elapsed(),
    }
}

/// What `.<name>.build` holds: the sources' fingerprint and the digest of
/// the component built from them.
fn stamp_line(fingerprint: &str, component_sha256: &str) -> String {
    format!("{fingerprint} {component_sha256}\n")
}

fn wit_dir(project: &Project, opts: &BuildOptions, tc: &Toolchains) -> Result<PathBuf, Error> {
    match opts.wit.clone().or_else(|| project.wit_dir()) {
        Some(w) => Ok(w),
        None => tc.wit_dir(),
    }
}

/// Writes the project's manifest as `<name>.toml` (only when it changed).
fn write_manifest(project: &Project, out: &Path) -> Result<Option<PathBuf>, Error> {
    let Some(table) = &project.manifest else {
        return Ok(None);
    };
    let path = out.join(format!("{}.toml", project.name));
    let text = format!(
        "# Written by `flowhost plugin build` from {}: edit that file, not this one.\n{}",
        project.dir.join(crate::project::PROJECT_FILE).display(),
        toml::to_string(table).map_err(|e| Error::Project(format!("[manifest]: {e}")))?
    );
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&text) {
        std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))?;
    }
    Ok(Some(path))
}

/// Runs a compiler with its output on our stderr.
fn compile(project: &Project, tool: &str, cmd: &mut Command) -> Result<(), Error> {
    let status = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Error::Compile {
            name: project.name.clone(),
            lang: project.lang,
            message: format!("cannot run {tool}: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Compile {
            name: project.name.clone(),
            lang: project.lang,
            message: format!("{tool} exited with {status} (its messages are above)"),
        })
    }
}

fn python(project: &Project, wit: &Path, out: &Path, tc: &Toolchains) -> Result<(), Error> {
    let tool = tc.componentize_py()?;
    let mut cmd = Command::new(tool);
    cmd.arg("--wit-path")
        .arg(wit)
        .args(["--world", project.world.as_str(), "componentize", "app"])
        .arg("--python-path")
        .arg(&project.dir)
        .arg("--output")
        .arg(out);
    compile(project, "componentize-py", &mut cmd)
}

fn js(project: &Project, wit: &Path, out: &Path, tc: &Toolchains) -> Result<(), Error> {
    let scripts = project.files_with_extension("js")?;
    let named = project.dir.join(format!("{}.js", project.name));
    let entry = if named.is_file() {
        named
    } else if let [only] = scripts.as_slice() {
        only.clone()
    } else {
        return Err(Error::Project(format!(
            "{}: which .js file is the plugin? Name it {}.js",
            project.dir.display(),
            project.name
        )));
    };
    let (tool, wizer) = tc.componentize_js()?;
    check_js_syntax(project, &entry, tc)?;
    let mut cmd = Command::new(tool);
    if let Some(wizer) = wizer {
        cmd.arg("--wizer-bin").arg(wizer);
    }
    // No wasi:http: a JavaScript plugin gets no fetch().
    cmd.arg("--wit")
        .arg(wit)
        .args(["--world-name", project.world.as_str()])
        .args(["--disable", "http", "fetch-event", "--out"])
        .arg(out)
        .arg(entry);
    compile(project, "componentize-js", &mut cmd)
}

/// componentize-js reports a syntax error without saying where; node's
/// parser does (on a copy named .mjs, so it reads the file as a module).
fn check_js_syntax(project: &Project, entry: &Path, tc: &Toolchains) -> Result<(), Error> {
    let dir = tc.dir().join("js-check");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    let copy = dir.join(format!("{}-{}.mjs", project.name, std::process::id()));
    std::fs::copy(entry, &copy).map_err(|e| Error::io(entry.display(), e))?;
    let checked = Command::new("node").arg("--check").arg(&copy).output();
    let _ = std::fs::remove_file(&copy);
    let Ok(checked) = checked else {
        return Ok(()); // no node: componentize-js will say so
    };
    if checked.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&checked.stderr)
        .replace(&copy.display().to_string(), &entry.display().to_string());
    eprint!("{message}");
    Err(Error::Compile {
        name: project.name.clone(),
        lang: Lang::Js,
        message: "a syntax error (node's message is above)".into(),
    })
}

fn c(project: &Project, wit: &Path, out: &Path, tc: &Toolchains) -> Result<(), Error> {
    let clang = tc.c()?;
    let sources = project.files_with_extension("c")?;
    let work = tc
        .dir()
        .join("c-build")
        .join(format!("{}-{}", project.name, std::process::id()));
    let result = (|| {
        let bindings = c_bindings(project, wit, &work)?;
        let core = work.join("core.wasm");
        let world = project.world.as_str();
        let mut cc = clang.command();
        cc.args(["-O2", "-Wall", "-I"])
            .arg(&bindings)
            .arg("-I")
            .arg(&project.dir)
            .args(&sources)
            .arg(bindings.join(format!("{world}.c")))
            .arg(bindings.join(format!("{world}_component_type.o")))
            .arg("-o")
            .arg(&core);
        compile(project, "clang", &mut cc)?;
        let module = std::fs::read(&core).map_err(|e| Error::io(core.display(), e))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| {
                e.adapter(
                    "wasi_snapshot_preview1",
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )
            })
            .and_then(|e| e.validate(true).encode())
            .map_err(|e| Error::Compile {
                name: project.name.clone(),
                lang: Lang::C,
                message: format!("turning the module into a component: {e:#}"),
            })?;
        std::fs::write(out, component).map_err(|e| Error::io(out.display(), e))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Generates the C bindings of the project's world into `work/bindings`.
fn c_bindings(project: &Project, wit: &Path, work: &Path) -> Result<PathBuf, Error> {
    let out = work.join("bindings");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(out.display(), e))?;
    // wit-parser and wit-bindgen report anyhow errors: `{:#}` shows causes.
    let bad_wit = |e: &dyn std::fmt::Display| Error::Project(format!("{}: {e:#}", wit.display()));
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_path(wit).map_err(|e| bad_wit(&e))?;
    let world = resolve
        .select_world(&[pkg], Some(project.world.as_str()))
        .map_err(|e| bad_wit(&e))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| bad_wit(&e))?;
    for (name, contents) in files.iter() {
        std::fs::write(out.join(name), contents).map_err(|e| Error::io(name, e))?;
    }
    Ok(out)
}
