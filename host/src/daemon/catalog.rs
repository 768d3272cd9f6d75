//! The daemon's plugins folder, watched: each plugin's name, version,
//! world, digest, when its current version was loaded, and why the last
//! load failed (for `GET /plugins`). A new or changed `.wasm` or manifest is
//! compiled here, off the request path, once it has stopped changing (two
//! looks in a row see the same size and time); then the engine forgets the
//! old version, so the next call loads the new one from the compile cache.
//! Calls in flight and executions pinned to the old version keep it. A file
//! that does not load leaves the old version in place and says why.
//!
//! The folder is polled (a directory listing and a few `stat`s per second):
//! it works the same on every filesystem and needs no watch limits.
//!
//! Imports `plugin`, `engine` and the daemon's metrics.

use super::metrics::Metrics;
use crate::engine::Engine;
use crate::plugin::{Runtime, registry};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// One plugin of the folder.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginEntry {
    pub name: String,
    /// What its `info()` says; empty until a version loaded.
    pub version: String,
    /// `processor`, `hook` or `step`.
    pub world: String,
    /// The component's content digest (BLAKE3), as executions pin it.
    pub digest: String,
    pub size: u64,
    /// When the current version was loaded (ms since the epoch).
    pub loaded_ms: Option<u64>,
    /// Versions swapped in since the daemon started.
    pub reloads: u64,
    /// Why the last load failed (the version above, if any, still runs).
    pub error: Option<String>,
}

/// What a file looked like: size and modification time of the `.wasm` and
/// of its manifest.
type Fingerprint = (u64, Option<SystemTime>, Option<(u64, Option<SystemTime>)>);

fn fingerprint(wasm: &Path, manifest: Option<&Path>) -> Option<Fingerprint> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let (len, modified) = stat(wasm)?;
    Some((len, modified, manifest.and_then(stat)))
}

/// The plugins folder as last looked at.
pub struct Catalog {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    entries: Arc<Mutex<BTreeMap<String, PluginEntry>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are replaced whole: a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the folder is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

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

    /// Watches the folder until the task is dropped: loads every plugin at
    /// first, then each new or changed one once it is stable.
    pub fn watch(&self, engine: Arc<Engine>, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
        let (runtime, dir, entries) =
            (self.runtime.clone(), self.dir.clone(), self.entries.clone());
        tokio::spawn(async move {
            // name → (fingerprint loaded or tried, fingerprint seen last look)
            let mut seen: BTreeMap<String, (Option<Fingerprint>, Option<Fingerprint>)> =
                BTreeMap::new();
            let mut first = true;
            loop {
                let found = registry::list(&dir);
                let names: Vec<String> = found.iter().map(|l| l.name.clone()).collect();
                // Removed files: new executions cannot use them; running
                // ones keep the version they hold.
                let gone: Vec<String> = seen
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    seen.remove(&name);
                    lock(&entries).remove(&name);
                    engine.plugin_changed(&name);
                    tracing::info!(plugin = %name, "plugin removed from the folder");
                }
                for located in found {
                    let now = fingerprint(&located.wasm, located.manifest.as_deref());
                    let (tried, last) = seen.entry(located.name.clone()).or_default();
                    let stable = first || *last == now;
                    *last = now;
                    if *tried == now || !stable {
                        continue;
                    }
                    *tried = now;
                    let reload = lock(&entries).contains_key(&located.name);
                    let size = now.map_or(0, |f| f.0);
                    let (rt, loc) = (runtime.clone(), located.clone());
                    let loaded = tokio::task::spawn_blocking(move || {
                        loc.settings().and_then(|s| rt.load_file(&loc.wasm, s))
                    })
                    .await;
                    let loaded = match loaded {
                        Ok(Ok(plugin)) => match plugin.info().await {
                            Ok(info) => Ok((plugin, info.version)),
                            Err(e) => Err(format!("info() failed: {e}")),
                        },
                        Ok(Err(e)) => Err(format!("[{}] {e}", e.kind())),
                        Err(e) => Err(format!("the load task failed: {e}")),
                    };
                    let mut all = lock(&entries);
                    let entry = all
                        .entry(located.name.clone())
                        .or_insert_with(|| PluginEntry {
                            name: located.name.clone(),
                            version: String::new(),
                            world: String::new(),
                            digest: String::new(),
                            size,
                            loaded_ms: None,
                            reloads: 0,
                            error: None,
                        });
                    match loaded {
                        Ok((plugin, version)) => {
                            let changed = entry.digest != plugin.digest();
                            entry.version = version;
                            entry.world = plugin.world().to_string();
                            entry.digest = plugin.digest().to_string();
                            entry.size = size;
                            entry.loaded_ms = Some(crate::backend::now_ms());
                            entry.error = None;
                            if reload && changed {
                                entry.reloads += 1;
                                drop(all);
                                engine.plugin_changed(&located.name);
                                metrics.reloaded(&located.name, true);
                                tracing::info!(plugin = %located.name, digest = %plugin.digest(), "plugin reloaded: new calls use the new version");
                            }
                        }
                        Err(e) => {
                            if reload {
                                tracing::warn!(plugin = %located.name, "plugin not reloaded, the version loaded before stays: {e}");
                                metrics.reloaded(&located.name, false);
                            } else {
                                tracing::warn!(plugin = %located.name, "plugin cannot be loaded: {e}");
                            }
                            entry.error = Some(e);
                        }
                    }
                }
                first = false;
                tokio::time::sleep(LOOK_EVERY).await;
            }
        })
    }
}
