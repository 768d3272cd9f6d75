//! `flowhost graph <machine.yml> --format mermaid|dot`.

use super::CliError;
use clap::{Args, ValueEnum};
use flowhost::config::{self, graph};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct GraphArgs {
    /// The machine config.
    machine: PathBuf,
    /// Mermaid (for Markdown) or Graphviz dot.
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    format: GraphFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
    /// States and edges as data (what the daemon's dashboard draws).
    Json,
}

pub(super) fn run(a: GraphArgs) -> Result<ExitCode, CliError> {
    let machine = config::load(&a.machine).map_err(|e| CliError::Config(e.to_string()))?;
    let format = match a.format {
        GraphFormat::Mermaid => graph::Format::Mermaid,
        GraphFormat::Dot => graph::Format::Dot,
        GraphFormat::Json => graph::Format::Json,
    };
    print!("{}", graph::render(&machine, format));
    Ok(ExitCode::SUCCESS)
}
