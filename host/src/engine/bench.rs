//! Engine throughput benchmarks (`flowhost bench engine`): a linear machine
//! with a WASM processor in every state, and a foreach over many items with a
//! sub-machine per item, on a given store.

use super::{Engine, EngineError, Status};
use serde_json::json;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one benchmark measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// States (linear) or items (foreach) completed.
    pub units: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes the benchmark machines into `dir`; returns (linear, foreach) paths.
/// `plugin` is the processor every state calls; `reuse` is how many calls one
/// warm instance serves (0 = a fresh instance per call).
pub fn write_machines(
    dir: &Path,
    states: usize,
    plugin: &str,
    reuse: u32,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let mut linear = format!(
        "spec: flatmachine\ndata:\n  name: linear\n  plugins:\n    p: {{plugin: {plugin}, reuse: {reuse}}}\n  context: {{n: 0}}\n  states:\n"
    );
    for i in 0..states {
        let next = if i + 1 == states {
            "done".to_string()
        } else {
            format!("s{}", i + 1)
        };
        let initial = if i == 0 { "type: initial, " } else { "" };
        let _ = writeln!(
            linear,
            "    s{i}: {{{initial}plugin: p, input: {{n: \"{{{{ context.n }}}}\", i: {i}}}, output_to_context: {{last: \"{{{{ output.i }}}}\"}}, transitions: [{{to: {next}}}]}}"
        );
    }
    linear.push_str("    done: {type: final, output: {last: \"{{ context.last }}\"}}\n");
    let foreach = format!(
        r#"spec: flatmachine
data:
  name: fanout
  machines:
    item:
      spec: flatmachine
      data:
        name: item
        plugins:
          p: {{plugin: {plugin}, reuse: {reuse}}}
        states:
          work: {{type: initial, plugin: p, input: {{v: "{{{{ input.v }}}}"}}, output_to_context: {{v: "{{{{ output.v }}}}"}}, transitions: [{{to: end}}]}}
          end: {{type: final, output: {{v: "{{{{ context.v }}}}"}}}}
  states:
    fan:
      type: initial
      foreach: "{{{{ input.items }}}}"
      as: x
      machine: item
      max_concurrency: 64
      input: {{v: "{{{{ x }}}}"}}
      output_to_context: {{count: "{{{{ output | length }}}}"}}
      transitions: [{{to: done}}]
    done: {{type: final, output: {{count: "{{{{ context.count }}}}"}}}}
"#
    );
    let linear_path = dir.join("linear.yml");
    let foreach_path = dir.join("foreach.yml");
    std::fs::write(&linear_path, linear)?;
    std::fs::write(&foreach_path, foreach)?;
    Ok((linear_path, foreach_path))
}

fn check(o: &super::Outcome) -> Result<(), EngineError> {
    if o.status == Status::Done {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "benchmark execution ended {}: {:?}",
            o.status.as_str(),
            o.error
        )))
    }
}

/// Runs the linear machine `runs` times (one warm-up run first).
pub async fn linear(
    engine: &Arc<Engine>,
    machine: &Path,
    states: usize,
    runs: usize,
) -> Result<Throughput, EngineError> {
    check(&engine.start(machine, json!({})).await?)?;
    let started = Instant::now();
    for _ in 0..runs {
        check(&engine.start(machine, json!({})).await?)?;
    }
    Ok(Throughput {
        units: (runs * (states + 1)) as u64,
        elapsed: started.elapsed(),
    })
}

/// Runs the foreach machine over `items` items (after a small warm-up).
pub async fn foreach(
    engine: &Arc<Engine>,
    machine: &Path,
    items: usize,
) -> Result<Throughput, EngineError> {
    check(&engine.start(machine, json!({"items": [1, 2, 3]})).await?)?;
    let list: Vec<usize> = (0..items).collect();
    let started = Instant::now();
    check(&engine.start(machine, json!({ "items": list })).await?)?;
    Ok(Throughput {
        units: items as u64,
        elapsed: started.elapsed(),
    })
}
