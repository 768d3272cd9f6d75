//! Pinned definitions: what an execution runs, frozen when it starts.
//!
//! A [`Definition`] holds the text of every config file of a machine tree
//! and the content digest of every plugin the tree uses. It is stored once
//! under the digest of its encoding, and every record of the tree names that
//! digest, so whoever continues an execution (`resume`, later any worker)
//! runs exactly what it started with: an edited or deleted file changes
//! nothing, and a replaced plugin is refused rather than run in its place.
//!
//! Imports nothing from flowhost but the content digest of `plugin::cache`.

use super::EngineError;
use crate::plugin::cache::content_digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A machine tree's config texts and plugin digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// The root config file, as it was found when the execution started.
    pub root: PathBuf,
    /// Every config file of the tree, by where it sits in it.
    pub files: Vec<PinnedFile>,
    /// Plugin name → content digest of the component loaded for it.
    pub plugins: BTreeMap<String, String>,
}

/// One config file of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinnedFile {
    /// The chain of `data.machines` names from the root to this machine
    /// (empty for the root).
    pub path: Vec<String>,
    /// Where the file was read from (for messages).
    pub file: PathBuf,
    pub text: String,
    /// Agent and profile files the config names, by that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl Definition {
    /// The stored form and its digest.
    pub fn encode(&self) -> Result<(String, String), EngineError> {
        let body = serde_json::to_string(self)
            .map_err(|e| EngineError::Invalid(format!("cannot encode a definition: {e}")))?;
        Ok((content_digest(body.as_bytes()), body))
    }

    /// A stored definition, checked against the digest it was stored under.
    pub fn decode(digest: &str, body: &str) -> Result<Definition, EngineError> {
        let actual = content_digest(body.as_bytes());
        if actual != digest {
            return Err(EngineError::Invalid(format!(
                "the stored definition {} is damaged: its text has digest {}",
                short(digest),
                short(&actual)
            )));
        }
        serde_json::from_str(body).map_err(|e| {
            EngineError::Invalid(format!(
                "the stored definition {} cannot be read: {e}",
                short(digest)
            ))
        })
    }

    /// The file pinned for the machine at `path` below the root.
    pub fn file(&self, path: &[String]) -> Option<&PinnedFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Plugins whose installed digest differs from the pinned one, as
    /// messages naming the plugin and both digests.
    pub fn changed_plugins(&self, installed: &BTreeMap<String, String>) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, pinned) in &self.plugins {
            match installed.get(name) {
                Some(now) if now == pinned => {}
                Some(now) => changed.push(format!(
                    "plugin `{name}` changed since the execution started: it ran {}, the plugins folder now has {}",
                    short(pinned),
                    short(now)
                )),
                None => changed.push(format!(
                    "plugin `{name}` ({}) is no longer used by the definition",
                    short(pinned)
                )),
            }
        }
        for (name, now) in installed {
            if !self.plugins.contains_key(name) {
                changed.push(format!(
                    "plugin `{name}` ({}) was not part of the definition",
                    short(now)
                ));
            }
        }
        changed
    }
}

/// A digest shortened for messages (16 hex digits identify it in practice).
pub fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Definition {
        Definition {
            root: "/m/main.yml".into(),
            files: vec![
                PinnedFile {
                    path: vec![],
                    file: "/m/main.yml".into(),
                    text: "root".into(),
                    files: Default::default(),
                },
                PinnedFile {
                    path: vec!["child".into()],
                    file: "/m/child.yml".into(),
                    text: "child".into(),
                    files: [("agent.yml".to_string(), "spec: flatagent".to_string())].into(),
                },
            ],
            plugins: [("echo".to_string(), "a".repeat(64))].into(),
        }
    }

    #[test]
    fn a_definition_round_trips_under_its_digest_and_refuses_another() {
        let def = sample();
        let (digest, body) = def.encode().unwrap();
        assert_eq!(Definition::decode(&digest, &body).unwrap(), def);
        // The same definition always has the same digest.
        assert_eq!(def.encode().unwrap().0, digest);
        let tampered = body.replace("child", "chilD");
        let e = Definition::decode(&digest, &tampered).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        assert_eq!(def.file(&["child".into()]).unwrap().text, "child");
        assert!(def.file(&["other".into()]).is_none());
    }

    #[test]
    fn changed_plugins_name_the_plugin_and_both_digests() {
        let def = sample();
        let same = def.plugins.clone();
        assert!(def.changed_plugins(&same).is_empty());
        let other: BTreeMap<_, _> = [("echo".to_string(), "b".repeat(64))].into();
        let changed = def.changed_plugins(&other);
        assert_eq!(changed.len(), 1);
        assert!(
            changed[0].contains("`echo`")
                && changed[0].contains(&"a".repeat(16))
                && changed[0].contains(&"b".repeat(16)),
            "{changed:?}"
        );
    }
}
