//! MapReduce in one call: a machine made from a mapper and a reducer
//! plugin, submitted like any other (status, history, cancel, retry all
//! work). Each item goes through the mapper as a fan-out child on the run
//! queue (so the items spread over every worker); the reducer gets the list
//! of the mapper's outputs, in the items' order, and its output is the
//! execution's.
//!
//! The machine is written as YAML from data (never by pasting names into
//! text) into a folder the caller owns, named by its content, and pinned
//! like any machine when it is submitted.

use super::queue::{SubmitOptions, Submitted};
use super::{Engine, EngineError};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a MapReduce runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MapReduce {
    /// A processor plugin: one item in, anything out.
    pub mapper: String,
    /// A processor plugin: the list of mapper outputs in, the result out.
    pub reducer: String,
    /// Items mapped at once (the fan-out's `max_concurrency`).
    pub parallelism: u32,
    /// A warm pool for the mapper (the seed's agent pooling): its instances
    /// are reused across items instead of made fresh for each.
    pub pool: Option<crate::warm::OperatorPool>,
}

/// Most items mapped at once.
pub const MAX_PARALLELISM: u32 = 10_000;

fn check_plugin(what: &str, name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok && !name.starts_with('.') {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "{what} `{}` is not a plugin name (letters, digits, - _ .)",
            crate::text::escape_control(name)
        )))
    }
}

impl MapReduce {
    /// The machine, as YAML.
    pub fn machine(&self) -> Result<String, EngineError> {
        check_plugin("mapper", &self.mapper)?;
        check_plugin("reducer", &self.reducer)?;
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(EngineError::Invalid(format!(
                "parallelism must be from 1 to {MAX_PARALLELISM}"
            )));
        }
        let mapper = match &self.pool {
            None => json!(self.mapper),
            Some(pool) => {
                pool.pool()
                    .map_err(|e| EngineError::Invalid(format!("pool: {e}")))?;
                json!({"plugin": self.mapper, "pool": pool})
            }
        };
        let map = json!({
            "spec": "flatmachine",
            "data": {
                "name": "map",
                "plugins": {"mapper": mapper},
                "states": {
                    "map": {
                        "type": "initial",
                        "plugin": "mapper",
                        "input": "{{ input.item }}",
                        "output_to_context": {"out": "{{ output }}"},
                        "transitions": [{"to": "done"}],
                    },
                    "done": {"type": "final", "output": "{{ context.out }}"},
                },
            },
        });
        let machine = json!({
            "spec": "flatmachine",
            "data": {
                "name": "mapreduce",
                "plugins": {"reducer": self.reducer},
                "machines": {"map": map},
                "states": {
                    "map": {
                        "type": "initial",
                        "foreach": "{{ input.items }}",
                        "as": "item",
                        "machine": "map",
                        "input": {"item": "{{ item }}"},
                        "max_concurrency": self.parallelism,
                        "output_to_context": {"mapped": "{{ output }}"},
                        "transitions": [{"to": "reduce"}],
                    },
                    "reduce": {
                        "plugin": "reducer",
                        "input": "{{ context.mapped }}",
                        "output_to_context": {"result": "{{ output }}"},
                        "transitions": [{"to": "done"}],
                    },
                    "done": {"type": "final", "output": "{{ context.result }}"},
                },
            },
        });
        serde_yaml::to_string(&machine)
            .map_err(|e| EngineError::Invalid(format!("the MapReduce machine: {e}")))
    }

    /// Writes the machine into `dir` (once per content) and returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, EngineError> {
        let text = self.machine()?;
        let digest = blake3::hash(text.as_bytes()).to_hex();
        let file = dir.join(format!("mapreduce-{}.yml", &digest[..16]));
        if !file.is_file() {
            std::fs::create_dir_all(dir).map_err(|e| {
                EngineError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
            // Written whole under another name, then renamed: a reader never
            // sees half a file.
            let part = dir.join(format!(
                ".mapreduce-{}.{}",
                &digest[..16],
                std::process::id()
            ));
            std::fs::write(&part, &text)
                .and_then(|_| std::fs::rename(&part, &file))
                .map_err(|e| {
                    EngineError::Invalid(format!("cannot write {}: {e}", file.display()))
                })?;
        }
        Ok(file)
    }
}

impl Engine {
    /// Submits a MapReduce over `items` (a list) to the run queue; its
    /// machine file is kept in `dir`.
    pub async fn submit_mapreduce(
        self: &Arc<Self>,
        job: &MapReduce,
        items: Value,
        dir: &Path,
        options: SubmitOptions,
    ) -> Result<Submitted, EngineError> {
        if !items.is_array() {
            return Err(EngineError::Invalid(
                "the items of a MapReduce are a JSON list".into(),
            ));
        }
        let file = job.write(dir)?;
        self.submit_with(&file, json!({ "items": items }), options)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_data_not_text() {
        let job = |mapper: &str| MapReduce {
            mapper: mapper.into(),
            reducer: "sum".into(),
            parallelism: 4,
            pool: None,
        };
        let text = job("count-words").machine().unwrap();
        assert!(text.contains("max_concurrency: 4"), "{text}");
        for bad in ["", "a\nstates: {}", "../x", "x y", ".hidden"] {
            assert!(job(bad).machine().is_err(), "{bad:?} accepted");
        }
        let none = MapReduce {
            parallelism: 0,
            ..job("m")
        };
        assert!(none.machine().is_err());
        let pooled = MapReduce {
            pool: Some(crate::warm::OperatorPool {
                min: Some(2),
                warm_up: Some(true),
                ..Default::default()
            }),
            ..job("m")
        };
        let text = pooled.machine().unwrap();
        assert!(text.contains("warm_up: true"), "{text}");
        let bad = MapReduce {
            pool: Some(crate::warm::OperatorPool {
                min: Some(9),
                max: Some(1),
                ..Default::default()
            }),
            ..job("m")
        };
        assert!(bad.machine().is_err());
    }
}
