//! The on-disk cache of compiled plugins.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds (a
//! small Rust plugin) to seconds (a Python or JavaScript one); loading the
//! compiled code back is much faster. Entries are keyed by the BLAKE3 digest of
//! the `.wasm` and a digest of the engine's compatibility hash, so a changed
//! plugin or a different engine configuration never hits a stale entry.
//!
//! A cache entry is native code. It is only ever read from this cache's own
//! directory (never from a plugins folder), and every entry carries the BLAKE3
//! digest of its payload (BLAKE3 rather than sha256 because entries of large
//! plugins are tens of MB and are checked on every load): a corrupted or
//! foreign file is rejected, deleted and rebuilt, never executed. Writes go to
//! a temporary file that is renamed into place, so a crash never leaves a
//! half-written entry and a reader never sees one change.

use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 16] = b"flowhost-cwasm2\n";
const HEADER: usize = MAGIC.len() + 32;

/// Hex sha256 of some bytes (what manifests pin and `inspect` shows).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex BLAKE3 digest of a component: its identity in the caches.
pub fn content_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a `Hash` value into BLAKE3, giving a digest that is stable across
/// runs (unlike `DefaultHasher`, whose algorithm is not guaranteed).
struct StableHasher(blake3::Hasher);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A short digest of everything that makes compiled code (in)compatible with
/// this engine: wasmtime version, target, and the settings that affect codegen.
pub fn engine_key(engine: &Engine) -> String {
    let mut hasher = StableHasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize().as_bytes()[..8])
}

/// Why a cache entry was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheReject {
    #[error("{0}: not a flowhost cache entry")]
    NotOurs(PathBuf),
    #[error("{0}: checksum mismatch (corrupted)")]
    Corrupted(PathBuf),
    #[error("{path}: refused by the engine: {reason}")]
    Incompatible { path: PathBuf, reason: String },
}

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// Opens (creating it, private to this user) the cache directory.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
        })
    }

    /// The default directory: `$FLOWHOST_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/flowhost/compiled`, else `~/.cache/flowhost/compiled`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("FLOWHOST_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("flowhost").join("compiled"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for a component with this [`content_digest`] lives.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled component, `Ok(None)` on a miss. A rejected entry is
    /// deleted before the error is returned, so the next store replaces it.
    pub fn load(&self, engine: &Engine, digest: &str) -> Result<Option<Component>, CacheReject> {
        let path = self.entry_path(digest);
        let Ok(file) = fs::File::open(&path) else {
            return Ok(None);
        };
        // SAFETY: a read-only mapping of a file in our private directory.
        // Entries are replaced by rename, never written in place, so the
        // mapped file cannot change while we read it.
        let Ok(bytes) = (unsafe { memmap2::Mmap::map(&file) }) else {
            return Ok(None);
        };
        let result = verify(&path, &bytes).and_then(|payload| {
            // SAFETY: `payload` comes from our own cache directory and its
            // digest matches the one we wrote in front of it, so it is the
            // unmodified output of `Component::serialize` from an engine with
            // the same compatibility key (which `deserialize` checks again).
            unsafe { Component::deserialize(engine, payload) }.map_err(|e| {
                CacheReject::Incompatible {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })
        });
        match result {
            Ok(component) => Ok(Some(component)),
            Err(reject) => {
                let _ = fs::remove_file(&path);
                Err(reject)
            }
        }
    }

    /// Writes a compiled component atomically.
    pub fn store(&self, digest: &str, component: &Component) -> std::io::Result<PathBuf> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        let path = self.entry_path(digest);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(blake3::hash(&payload).as_bytes())?;
        tmp.write_all(&payload)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

fn verify<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], CacheReject> {
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(CacheReject::NotOurs(path.to_path_buf()));
    }
    let (digest, payload) = bytes[MAGIC.len()..].split_at(32);
    if blake3::hash(payload).as_bytes().as_slice() != digest {
        return Err(CacheReject::Corrupted(path.to_path_buf()));
    }
    Ok(payload)
}
