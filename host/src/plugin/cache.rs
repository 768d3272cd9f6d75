//! The on-disk cache of compiled plugins.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds (a
//! small Rust plugin) to seconds (a Python or JavaScript one); loading the
//! compiled code back is much faster. Entries are keyed by the BLAKE3 digest of
//! the `.wasm` and a digest of the engine's compatibility hash, so a changed
//! plugin or a different engine configuration never hits a stale entry.
//!
//! A cache entry is native code, so it is trusted only when it proves where
//! it came from. Its header holds the BLAKE3 digest of the `.wasm` it was
//! compiled from and the engine's full compatibility hash, and a checksum
//! covers header and payload together: an entry copied over another entry's
//! file name (another plugin's code, or another engine's) is refused as
//! foreign, a corrupted one as corrupted, and either is deleted and rebuilt,
//! never executed. (BLAKE3 rather than sha256: entries of large plugins are
//! tens of MB and are checked on every load.)
//!
//! The directory is created private (0700) and refused when another user
//! owns it or can write to it; the runtime then compiles in memory with one
//! warning. Writes go to a temporary file that is renamed into place, so a
//! crash never leaves a half-written entry and a reader never sees one change.

use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 16] = b"flowhost-cwasm3\n";
/// Magic, the wasm's digest, the engine's hash, the checksum; then the payload.
const HEADER: usize = MAGIC.len() + 3 * 32;

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

/// The digest of everything that makes compiled code (in)compatible with
/// this engine: wasmtime version, target, and the settings that affect codegen.
fn engine_hash(engine: &Engine) -> [u8; 32] {
    let mut hasher = StableHasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    *hasher.0.finalize().as_bytes()
}

/// A short form of [`engine_hash`], part of every entry's file name.
pub fn engine_key(engine: &Engine) -> String {
    hex(&engine_hash(engine)[..8])
}

/// Why a cache entry was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheReject {
    #[error("{0}: not a flowhost cache entry")]
    NotOurs(PathBuf),
    #[error("{0}: checksum mismatch (corrupted)")]
    Corrupted(PathBuf),
    #[error("{path}: foreign entry: compiled from {what}")]
    Foreign { path: PathBuf, what: String },
    #[error("{path}: refused by the engine: {reason}")]
    Incompatible { path: PathBuf, reason: String },
}

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: [u8; 32],
    engine_key: String,
}

impl CompileCache {
    /// Opens the cache directory, creating it private to this user (0700).
    /// Refuses a path that is not a directory, a directory another user owns
    /// or can write to, and one this process cannot write to.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        let meta = fs::metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a directory"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(std::io::Error::other(format!(
                    "owned by user {}, not by this user ({me})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "other users can write to it (mode {:o}); `chmod 700` it",
                    meta.mode() & 0o777
                )));
            }
        }
        tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("not writable: {e}")))?;
        let engine_hash = engine_hash(engine);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: hex(&engine_hash[..8]),
            engine_hash,
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
        let result = self.verify(&path, digest, &bytes).and_then(|payload| {
            // SAFETY: `payload` comes from our own private cache directory,
            // its checksum matches, and its header says it was compiled from
            // this very wasm by an engine with this compatibility hash (which
            // `deserialize` checks again): it is the unmodified output of
            // `Component::serialize` for this component.
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
        let wasm = unhex(digest)
            .ok_or_else(|| std::io::Error::other(format!("`{digest}` is not a content digest")))?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&wasm)?;
        tmp.write_all(&self.engine_hash)?;
        tmp.write_all(checksum(&wasm, &self.engine_hash, &payload).as_bytes())?;
        tmp.write_all(&payload)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

impl CompileCache {
    /// The payload of an entry, if the entry is intact and was compiled from
    /// the wasm with `digest` by an engine like ours.
    fn verify<'a>(
        &self,
        path: &Path,
        digest: &str,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], CacheReject> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(CacheReject::NotOurs(path.to_path_buf()));
        }
        let (header, payload) = bytes[MAGIC.len()..].split_at(3 * 32);
        let (wasm, rest) = header.split_at(32);
        let (engine, sum) = rest.split_at(32);
        if checksum(wasm, engine, payload).as_bytes().as_slice() != sum {
            return Err(CacheReject::Corrupted(path.to_path_buf()));
        }
        if hex(wasm) != digest {
            return Err(CacheReject::Foreign {
                path: path.to_path_buf(),
                what: format!("another component ({}…)", &hex(wasm)[..16]),
            });
        }
        if engine != self.engine_hash {
            return Err(CacheReject::Foreign {
                path: path.to_path_buf(),
                what: "an engine with other settings".to_string(),
            });
        }
        Ok(payload)
    }
}

/// The checksum of an entry: its header fields and its payload.
fn checksum(wasm: &[u8], engine: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(wasm).update(engine).update(payload);
    hasher.finalize()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}
