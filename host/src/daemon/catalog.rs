//! What the daemon knows of its plugins folder, for `GET /plugins`: each
//! plugin's name, version, world, digest, when it was loaded, and why it
//! could not be. Scanned in the background at start (a first load compiles,
//! which takes seconds for Python and JavaScript plugins), so the API is up
//! at once.
//!
//! Imports `plugin`.

use crate::plugin::{Runtime, registry};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// One plugin of the folder.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginEntry {
    pub name: String,
    /// What its `info()` says; empty until it loaded.
    pub version: String,
    /// `processor`, `hook` or `step`.
    pub world: String,
    /// sha256 of the `.wasm`, as manifests pin it.
    pub digest: String,
    pub size: u64,
    /// When it was loaded (ms since the epoch).
    pub loaded_ms: Option<u64>,
    /// Why it could not be loaded.
    pub error: Option<String>,
}

/// The plugins folder as last scanned.
pub struct Catalog {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    entries: Arc<Mutex<BTreeMap<String, PluginEntry>>>,
}

fn lock(m: &Mutex<BTreeMap<String, PluginEntry>>) -> MutexGuard<'_, BTreeMap<String, PluginEntry>> {
    // Entries are replaced whole: a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    pub fn new(runtime: Arc<Runtime>, dir: PathBuf) -> Catalog {
        Catalog {
            runtime,
            dir,
            entries: Arc::default(),
        }
    }

    pub fn entries(&self) -> Vec<PluginEntry> {
        lock(&self.entries).values().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        registry::locate(name, &self.dir).is_ok()
    }

    /// Loads every plugin of the folder, one after another, off the async
    /// threads.
    pub fn scan_in_background(&self) {
        let (runtime, dir, entries) =
            (self.runtime.clone(), self.dir.clone(), self.entries.clone());
        tokio::spawn(async move {
            for located in registry::list(&dir) {
                let size = std::fs::metadata(&located.wasm)
                    .map(|m| m.len())
                    .unwrap_or(0);
                let rt = runtime.clone();
                let loc = located.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    loc.settings().and_then(|s| rt.load_file(&loc.wasm, s))
                })
                .await;
                let mut entry = PluginEntry {
                    name: located.name.clone(),
                    version: String::new(),
                    world: String::new(),
                    digest: String::new(),
                    size,
                    loaded_ms: None,
                    error: None,
                };
                match loaded {
                    Ok(Ok(plugin)) => {
                        entry.world = plugin.world().to_string();
                        entry.digest = plugin.digest().to_string();
                        entry.loaded_ms = Some(crate::backend::now_ms());
                        match plugin.info().await {
                            Ok(info) => entry.version = info.version,
                            Err(e) => entry.error = Some(format!("info() failed: {e}")),
                        }
                    }
                    Ok(Err(e)) => entry.error = Some(format!("[{}] {e}", e.kind())),
                    Err(e) => entry.error = Some(format!("load task failed: {e}")),
                }
                lock(&entries).insert(entry.name.clone(), entry);
            }
        });
    }
}
