//! The state diagram of a machine config as Mermaid or Graphviz DOT, with
//! child machines drawn inside the states that run them, or as data
//! ([`Graph`]: states, their children and the edges between them) for a
//! program to draw — the daemon's dashboard does.

use super::{ChildMachine, Machine, OnError, StateType};
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mermaid,
    Dot,
    /// [`Graph`] as JSON.
    Json,
}

/// A machine's states and the edges between them, in the config's order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Graph {
    pub machine: String,
    pub initial: String,
    pub states: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Node {
    pub name: String,
    /// `initial`, `final` or `state`.
    pub kind: &'static str,
    /// What it runs or waits for (`runs grade`, `waits for approval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The child machines it runs, each with how (`machine`, `foreach`,
    /// `launch`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRef>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChildRef {
    pub machine: String,
    pub how: &'static str,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The transition's condition, or `on_error <kind>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `transition` or `on_error`.
    pub kind: &'static str,
}

impl Graph {
    /// The graph of one machine (its children named, not nested).
    pub fn of(machine: &Machine) -> Graph {
        let data = machine.data();
        let mut states = Vec::new();
        let mut edges = Vec::new();
        for (name, state) in &data.states {
            let kind = if state.kind == Some(StateType::Final) {
                "final"
            } else if *name == machine.initial {
                "initial"
            } else {
                "state"
            };
            states.push(Node {
                name: name.clone(),
                kind,
                label: label(state),
                children: child_refs(state),
            });
            for t in &state.transitions {
                edges.push(Edge {
                    from: name.clone(),
                    to: t.to.clone(),
                    label: t.condition.clone(),
                    kind: "transition",
                });
            }
            for (kind, to) in on_error_targets(&state.on_error) {
                edges.push(Edge {
                    from: name.clone(),
                    to,
                    label: Some(format!("on_error {kind}")),
                    kind: "on_error",
                });
            }
        }
        Graph {
            machine: machine.name().to_string(),
            initial: machine.initial.clone(),
            states,
            edges,
        }
    }
}

/// Child machines a graph will nest at most this deep (a machine that runs
/// itself would otherwise never end).
const MAX_DEPTH: usize = 4;

/// Renders the machine and, nested, the child machines its states run.
pub fn render(machine: &Machine, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Json => {
            out = serde_json::to_string_pretty(&Graph::of(machine)).unwrap_or_default();
            out.push('\n');
        }
        Format::Mermaid => {
            out.push_str("stateDiagram-v2\n");
            mermaid(machine, "", 1, &mut out);
        }
        Format::Dot => {
            let _ = writeln!(
                out,
                "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];",
                esc(machine.name())
            );
            dot(machine, "", 1, &mut out);
            out.push_str("}\n");
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('"', "'")
}

fn id(prefix: &str, state: &str) -> String {
    let clean: String = state
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}{clean}")
}

/// The child machines a state runs, with how it runs them.
fn child_refs(state: &super::State) -> Vec<ChildRef> {
    let how = if state.foreach.is_some() {
        "foreach"
    } else {
        "machine"
    };
    let run = state.machine.iter().flat_map(|m| m.list());
    run.map(|c| (c, how))
        .chain(state.launch.iter().map(|c| (c, "launch")))
        .map(|(c, how)| ChildRef {
            machine: c.machine.clone(),
            how,
        })
        .collect()
}

/// [`child_refs`] with each child's config loaded, when it can be.
fn children(
    machine: &Machine,
    state: &super::State,
) -> Vec<(String, &'static str, Option<Machine>)> {
    child_refs(state)
        .into_iter()
        .map(|c| {
            let def = load_child(machine, &c.machine);
            (c.machine, c.how, def)
        })
        .collect()
}

fn load_child(machine: &Machine, name: &str) -> Option<Machine> {
    match machine.data().machines.get(name)? {
        ChildMachine::File(rel) => {
            let dir = machine.path.parent().unwrap_or(Path::new("."));
            super::load(&dir.join(rel)).ok()
        }
        ChildMachine::Inline(text) => super::parse(&machine.path, text).ok(),
    }
}

fn label(state: &super::State) -> Option<String> {
    if let Some(runs) = &state.runs {
        return Some(format!("runs {}", runs.name));
    }
    if let Some(a) = &state.action {
        return Some(format!("action {a}"));
    }
    state.wait_for.as_ref().map(|w| format!("waits for {w}"))
}

fn mermaid(machine: &Machine, prefix: &str, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    let data = machine.data();
    let _ = writeln!(out, "{indent}[*] --> {}", id(prefix, &machine.initial));
    for (i, (name, state)) in data.states.iter().enumerate() {
        let sid = id(prefix, name);
        if let Some(l) = label(state) {
            let _ = writeln!(out, "{indent}{sid} : {} ({})", esc(name), esc(&l));
        }
        let kids = children(machine, state);
        if !kids.is_empty() && depth <= MAX_DEPTH {
            let _ = writeln!(out, "{indent}state {sid} {{");
            for (n, (child, how, def)) in kids.iter().enumerate() {
                let cid = format!("{sid}__{n}_");
                let _ = writeln!(out, "{indent}    state \"{how} {}\" as {cid}", esc(child));
                if let Some(def) = def {
                    let _ = writeln!(out, "{indent}    state {cid} {{");
                    mermaid(def, &format!("{cid}{i}_"), depth + 2, out);
                    let _ = writeln!(out, "{indent}    }}");
                }
            }
            let _ = writeln!(out, "{indent}}}");
        }
        for t in &state.transitions {
            let to = id(prefix, &t.to);
            match &t.condition {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "{indent}{sid} --> {to} : {}",
                        esc(c).replace(':', "#58;")
                    );
                }
                None => {
                    let _ = writeln!(out, "{indent}{sid} --> {to}");
                }
            }
        }
        for (kind, target) in on_error_targets(&state.on_error) {
            let _ = writeln!(
                out,
                "{indent}{sid} --> {} : on_error {kind}",
                id(prefix, &target)
            );
        }
        if state.kind == Some(StateType::Final) {
            let _ = writeln!(out, "{indent}{sid} --> [*]");
        }
    }
}

/// `(kind, target)` of every `on_error` route; the default route is `any`
/// when it is the only one, else `default`.
fn on_error_targets(on_error: &OnError) -> Vec<(String, String)> {
    let mut routes: Vec<(String, String)> = on_error
        .by_kind
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    if let Some(t) = &on_error.default {
        let kind = if routes.is_empty() { "any" } else { "default" };
        routes.push((kind.into(), t.clone()));
    }
    routes
}

fn dot(machine: &Machine, prefix: &str, depth: usize, out: &mut String) {
    let data = machine.data();
    let start = format!("{prefix}__start");
    let _ = writeln!(out, "  {start} [shape=point, label=\"\"];");
    let _ = writeln!(out, "  {start} -> {};", id(prefix, &machine.initial));
    for (i, (name, state)) in data.states.iter().enumerate() {
        let sid = id(prefix, name);
        let shape = if state.kind == Some(StateType::Final) {
            ", peripheries=2"
        } else {
            ""
        };
        let text = match label(state) {
            Some(l) => format!("{}\\n{}", esc(name), esc(&l)),
            None => esc(name),
        };
        let _ = writeln!(out, "  {sid} [label=\"{text}\"{shape}];");
        for (n, (child, how, def)) in children(machine, state).into_iter().enumerate() {
            let cluster = format!("{sid}__{n}_{i}_");
            let _ = writeln!(
                out,
                "  subgraph cluster_{cluster} {{\n  label=\"{how} {}\"; style=dashed;",
                esc(&child)
            );
            match def {
                Some(def) if depth <= MAX_DEPTH => dot(&def, &cluster, depth + 1, out),
                _ => {
                    let _ = writeln!(out, "  {cluster}__start [label=\"{}\"];", esc(&child));
                }
            }
            out.push_str("  }\n");
            let style = if how == "launch" { "dotted" } else { "dashed" };
            let _ = writeln!(
                out,
                "  {sid} -> {cluster}__start [style={style}, label=\"{how}\"];"
            );
        }
        for t in &state.transitions {
            let to = id(prefix, &t.to);
            match &t.condition {
                Some(c) => {
                    let _ = writeln!(out, "  {sid} -> {to} [label=\"{}\"];", esc(c));
                }
                None => {
                    let _ = writeln!(out, "  {sid} -> {to};");
                }
            }
        }
        for (kind, target) in on_error_targets(&state.on_error) {
            let _ = writeln!(
                out,
                "  {sid} -> {} [color=red, label=\"on_error {kind}\"];",
                id(prefix, &target)
            );
        }
    }
}
