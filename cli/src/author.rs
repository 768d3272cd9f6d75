//! `flowhost plugin new | build`: thin over `flowhost_authoring` (projects,
//! toolchains, builds); this file adds the host's own check that a built
//! component links, and the words on the terminal.

use super::CliError;
use clap::Args;
use flowhost::plugin::{Runtime, RuntimeConfig, World};
use flowhost_authoring::{BuildOptions, Built, Lang, Project, Toolchains};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct NewArgs {
    /// The plugin's name (a letter, then letters, digits, - or _).
    name: String,
    /// The language: rust, python, js or c.
    #[arg(long, value_parser = parse_lang)]
    lang: Lang,
    /// What the plugin is: processor (input → output), hook (lifecycle
    /// events) or step (a state's work and the next state).
    #[arg(long, default_value = "processor", value_parser = parse_world)]
    world: flowhost_authoring::World,
    /// The folder to create (default: ./<name>); must not exist or be empty.
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct BuildArgs {
    /// The plugin project (default: the current folder).
    dir: Option<PathBuf>,
    /// Where the component goes (default: <project>/dist).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where toolchains are installed (default: $FLOWHOST_TOOLCHAINS, else
    /// ~/.cache/flowhost/toolchains).
    #[arg(long, value_name = "DIR")]
    toolchains: Option<PathBuf>,
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    Lang::parse(s).ok_or_else(|| format!("unknown language `{s}` (rust, python, js or c)"))
}

fn parse_world(s: &str) -> Result<flowhost_authoring::World, String> {
    flowhost_authoring::World::parse(s)
        .ok_or_else(|| format!("unknown world `{s}` (processor, hook or step)"))
}

fn authoring_error(e: flowhost_authoring::Error) -> CliError {
    CliError::Other(e.to_string())
}

pub(super) fn new(a: NewArgs) -> Result<ExitCode, CliError> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from(&a.name));
    let files =
        flowhost_authoring::scaffold(&a.name, a.lang, a.world, &dir).map_err(|e| match e {
            flowhost_authoring::Error::Project(m) => CliError::Usage(m),
            other => authoring_error(other),
        })?;
    println!(
        "created {} plugin `{}` ({}) in {}:",
        a.world,
        a.name,
        a.lang,
        dir.display()
    );
    for f in files {
        println!("  {}", f.display());
    }
    let shown = dir.display();
    println!("next: flowhost plugin build {shown} && flowhost plugin test {shown}");
    Ok(ExitCode::SUCCESS)
}

/// The toolchains folder, with progress notes on stderr.
pub(super) fn toolchains(dir: Option<PathBuf>) -> Toolchains {
    Toolchains::at(dir.unwrap_or_else(Toolchains::default_dir), |note| {
        eprintln!("  {note}")
    })
}

/// The project's default output folder.
pub(super) fn dist(project_dir: &Path) -> PathBuf {
    project_dir.join("dist")
}

pub(super) async fn build(a: BuildArgs) -> Result<ExitCode, CliError> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("."));
    let project = Project::open(&dir).map_err(authoring_error)?;
    let tc = toolchains(a.toolchains);
    let out = a.out.unwrap_or_else(|| dist(&dir));
    build_and_check(&project, &out, &tc).await?;
    println!(
        "next: flowhost plugin test {}{}",
        dir.display(),
        if out == dist(&dir) {
            String::new()
        } else {
            format!(" --plugins {}", out.display())
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds a project and checks that the component links against this host
/// as the world the project says; prints one line about it.
pub(super) async fn build_and_check(
    project: &Project,
    out: &Path,
    tc: &Toolchains,
) -> Result<Built, CliError> {
    eprintln!(
        "building {} ({} {}) from {}",
        project.name,
        project.lang,
        project.world,
        project.dir.display()
    );
    let opts = BuildOptions {
        out: out.to_path_buf(),
        wit: None,
        cargo_profile: None,
    };
    let (p, t) = (project.clone(), tc.clone());
    let built = tokio::task::spawn_blocking(move || flowhost_authoring::build(&p, &opts, &t))
        .await
        .map_err(|e| CliError::Other(format!("the build stopped: {e}")))?
        .map_err(authoring_error)?;
    let bytes = std::fs::read(&built.wasm)
        .map_err(|e| CliError::Other(format!("{}: {e}", built.wasm.display())))?;
    let rt = Runtime::new(RuntimeConfig::default()).map_err(|e| CliError::Other(e.to_string()))?;
    let summary = super::loading(&project.name, || rt.inspect(&bytes))
        .map_err(CliError::plugin(format!("plugin `{}`", project.name)))?;
    if let Some(e) = summary.link_error {
        return Err(CliError::Other(format!(
            "{} was built but does not link against this host: {e}",
            built.wasm.display()
        )));
    }
    if let Some(m) = &built.manifest {
        flowhost::plugin::registry::Manifest::read(m).map_err(CliError::plugin(format!(
            "the manifest of `{}`",
            project.name
        )))?;
    }
    if summary.world.map(World::as_str) != Some(project.world.as_str()) {
        return Err(CliError::Other(format!(
            "{} exports the {} world, but {} says {}",
            built.wasm.display(),
            summary.world.map_or("no flowhost", |w| w.as_str()),
            project.dir.join("flowhost.toml").display(),
            project.world
        )));
    }
    let verb = if built.rebuilt {
        "built"
    } else {
        "up to date:"
    };
    println!(
        "{verb} {}  {} bytes  sha256 {}  ({:.1} s){}",
        built.wasm.display(),
        built.size,
        built.sha256,
        built.duration.as_secs_f64(),
        built
            .manifest
            .as_ref()
            .map(|m| format!(", manifest {}", m.display()))
            .unwrap_or_default()
    );
    Ok(built)
}
