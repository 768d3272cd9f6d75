//! The plugins folder: `<dir>/<name>.wasm` plus an optional `<name>.toml`
//! manifest, and how a name or path given by a user becomes a file and
//! [`PluginSettings`].
//!
//! ```toml
//! # echo.toml
//! version = "0.1.0"        # informational
//! sha256 = "ab12..."       # refuse to load any other file
//! reuse = 0                # calls per instance; 0 = fresh instance per call
//! [pool]                   # a warm pool instead (reuse = max_uses)
//! min = 2                  # kept warm when idle
//! max = 8                  # most idle instances kept
//! idle_timeout = "60s"     # idle ones beyond min dropped after this
//! max_uses = 1000          # calls per instance
//! warm_up = true           # make `min` instances at load
//! [limits]
//! memory_mb = 32
//! timeout_ms = 2000
//! [[dirs]]                 # directories lent to the plugin
//! host = "data"            # relative to the plugins folder, and may not leave it
//! guest = "/data"
//! writable = false
//! [config]                 # what the plugin's config() returns
//! greeting = "hi"
//! ```
//!
//! Outbound HTTP (see `net`): `allowed_hosts = ["api.example.com"]` at the
//! top, and an `[http]` table (`timeout_ms`, `max_response_mb`,
//! `max_concurrent`).
//!
//! A manifest travels with a plugin, so it cannot grant what the operator did
//! not: a relative `host` must stay inside the plugins folder (after `..` and
//! symbolic links are resolved), and an absolute one is refused unless it lies
//! in a directory the operator lists in `FLOWHOST_ALLOW_DIRS` (paths separated
//! by `:`). Directories given with `--dir` on the command line are the
//! operator's own and need no listing.

use super::call::DirGrant;
use super::error::PluginError;
use super::limits::LimitOverrides;
use super::runtime::PluginSettings;
use crate::text::closest;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A plugin manifest (`<name>.toml`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: Option<String>,
    pub sha256: Option<String>,
    #[serde(default)]
    pub reuse: u32,
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub dirs: Vec<ManifestDir>,
    pub config: Option<toml::Table>,
    /// A warm pool of reused instances (sets `reuse` to its `max_uses`).
    pub pool: Option<super::OperatorPool>,
    /// Hosts the plugin may send HTTP requests to (the operator must allow
    /// them too).
    #[serde(default)]
    pub allowed_hosts: Vec<super::HostRule>,
    /// Limits of its outbound HTTP.
    #[serde(default)]
    pub http: super::HttpLimits,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestDir {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

impl Manifest {
    /// Reads and checks a manifest; errors name the file, line and column.
    pub fn read(path: &Path) -> Result<Manifest, PluginError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PluginError::load(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| PluginError::load(format!("{}: {e}", path.display())))
    }

    /// Settings for a plugin called `name` whose manifest lives in `dir`.
    pub fn settings(&self, name: &str, dir: &Path) -> Result<PluginSettings, PluginError> {
        let mut settings = PluginSettings::new(name);
        settings.sha256 = self.sha256.clone();
        settings.reuse = self.reuse;
        if let Some(pool) = &self.pool {
            settings
                .pooled(pool)
                .map_err(|e| PluginError::load(format!("manifest of `{name}`: [pool]: {e}")))?;
        }
        settings.limits = self.limits.clone();
        self.http
            .check()
            .map_err(|e| PluginError::load(format!("manifest of `{name}`: {e}")))?;
        settings.http = super::HttpGrant {
            allowed_hosts: self.allowed_hosts.clone(),
            limits: self.http,
        };
        if let Some(config) = &self.config {
            settings.config = serde_json::to_value(config)
                .map_err(|e| PluginError::load(format!("config of `{name}`: {e}")))?;
        }
        settings.grants = self
            .dirs
            .iter()
            .map(|d| {
                Ok(DirGrant {
                    host: manifest_grant(name, dir, &d.host)?,
                    guest: d.guest.clone(),
                    writable: d.writable,
                })
            })
            .collect::<Result<_, PluginError>>()?;
        Ok(settings)
    }
}

/// Directories the operator allows manifests to grant by absolute path.
fn operator_allowed_dirs() -> Vec<PathBuf> {
    std::env::var_os("FLOWHOST_ALLOW_DIRS")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| p.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves the host side of a manifest grant and checks it against the rule
/// in the module doc.
fn manifest_grant(name: &str, folder: &Path, host: &Path) -> Result<PathBuf, PluginError> {
    let refuse = |why: String| {
        PluginError::load(format!(
            "manifest of `{name}`: directory `{}` {why}",
            host.display()
        ))
    };
    let joined = folder.join(host);
    let real =
        std::fs::canonicalize(&joined).map_err(|e| refuse(format!("cannot be granted: {e}")))?;
    if host.is_absolute() {
        let allowed = operator_allowed_dirs()
            .iter()
            .any(|a| std::fs::canonicalize(a).is_ok_and(|a| real.starts_with(a)));
        if !allowed {
            return Err(refuse(
                "is an absolute path; the operator must allow it in FLOWHOST_ALLOW_DIRS".into(),
            ));
        }
        return Ok(real);
    }
    let root = std::fs::canonicalize(folder)
        .map_err(|e| refuse(format!("cannot be granted: {}: {e}", folder.display())))?;
    if !real.starts_with(&root) {
        return Err(refuse(format!(
            "leaves the plugins folder {} (it is {})",
            folder.display(),
            real.display()
        )));
    }
    Ok(real)
}

/// A plugin found on disk.
#[derive(Debug, Clone)]
pub struct Located {
    pub name: String,
    pub wasm: PathBuf,
    pub manifest: Option<PathBuf>,
}

impl Located {
    /// Settings from the manifest, or defaults when there is none.
    pub fn settings(&self) -> Result<PluginSettings, PluginError> {
        match &self.manifest {
            None => Ok(PluginSettings::new(&self.name)),
            Some(path) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                Manifest::read(path)?.settings(&self.name, dir)
            }
        }
    }
}

/// The plugins folder to use: the flag, else `$FLOWHOST_PLUGINS`, else `./plugins`.
pub fn plugins_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FLOWHOST_PLUGINS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("plugins"))
}

/// Finds a plugin given as a `.wasm` path or as a name in `dir`.
pub fn locate(spec: &str, dir: &Path) -> Result<Located, PluginError> {
    let as_path = Path::new(spec);
    if spec.ends_with(".wasm") || as_path.is_file() {
        if !as_path.is_file() {
            return Err(PluginError::load(format!("{spec}: no such file")));
        }
        let name = as_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(spec)
            .to_string();
        let manifest = Some(as_path.with_extension("toml")).filter(|m| m.is_file());
        return Ok(Located {
            name,
            wasm: as_path.to_path_buf(),
            manifest,
        });
    }
    let wasm = dir.join(format!("{spec}.wasm"));
    if !wasm.is_file() {
        let names: Vec<String> = list(dir).into_iter().map(|l| l.name).collect();
        let hint = match closest(spec, &names) {
            Some(near) => format!("; did you mean `{near}`?"),
            None if names.is_empty() => format!("; {} has no plugins", dir.display()),
            None => format!("; available: {}", names.join(", ")),
        };
        return Err(PluginError::load(format!(
            "no plugin `{spec}` in {}{hint}",
            dir.display()
        )));
    }
    let manifest = Some(dir.join(format!("{spec}.toml"))).filter(|m| m.is_file());
    Ok(Located {
        name: spec.to_string(),
        wasm,
        manifest,
    })
}

/// Every `<name>.wasm` in `dir`, sorted by name.
pub fn list(dir: &Path) -> Vec<Located> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Located> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            let manifest = Some(p.with_extension("toml")).filter(|m| m.is_file());
            Some(Located {
                name,
                wasm: p,
                manifest,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Reads a JSON argument: inline text, `@path` for a file, or `-` for stdin.
pub fn read_json_arg(what: &str, arg: &str) -> Result<Value, String> {
    let (text, source) = if arg == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("{what}: cannot read stdin: {e}"))?;
        (s, "stdin".to_string())
    } else if let Some(path) = arg.strip_prefix('@') {
        let s = std::fs::read_to_string(path)
            .map_err(|e| format!("{what}: cannot read {path}: {e}"))?;
        (s, path.to_string())
    } else {
        (arg.to_string(), "the command line".to_string())
    };
    serde_json::from_str(&text).map_err(|e| format!("{what} from {source} is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_rejects_unknown_keys_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "reuse = 3\n[limits]\nmemory_mb = 8\n[config]\nx = 1\n",
        )
        .unwrap();
        let m = Manifest::read(&path).unwrap();
        let s = m.settings("p", dir.path()).unwrap();
        assert_eq!((s.reuse, s.limits.memory_mb), (3, Some(8)));
        assert_eq!(s.config, serde_json::json!({"x": 1}));

        std::fs::write(&path, "reuse = 3\n[limits]\nmemroy_mb = 8\n").unwrap();
        let err = Manifest::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.toml") && err.contains("line 3") && err.contains("memroy_mb"),
            "{err}"
        );
    }

    #[test]
    fn a_pool_table_turns_reuse_on_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[pool]
min = 2
idle_timeout = \"90s\"
warm_up = true
",
        )
        .unwrap();
        let s = Manifest::read(&path)
            .unwrap()
            .settings("p", dir.path())
            .unwrap();
        assert_eq!(s.reuse, 1000, "max_uses defaults to 1000");
        assert_eq!(
            (
                s.pool.min,
                s.pool.max,
                s.pool.idle_timeout.as_secs(),
                s.pool.warm_up
            ),
            (2, 16, 90, true)
        );
        for bad in [
            "[pool]\nmin = 3\nmax = 2\n",
            "[pool]\nmax_uses = 0\n",
            "[pool]\nidle_timeout = \"soon\"\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = Manifest::read(&path)
                .and_then(|m| m.settings("p", dir.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("[pool]"), "{bad}: {err}");
        }
        std::fs::write(&path, "[pool]\nminn = 1\n").unwrap();
        assert!(
            Manifest::read(&path)
                .unwrap_err()
                .to_string()
                .contains("minn")
        );
    }

    #[test]
    fn manifest_grants_stay_inside_the_plugins_folder() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("plugins");
        std::fs::create_dir_all(folder.join("data")).unwrap();
        std::fs::create_dir_all(root.path().join("secret")).unwrap();
        let grant = |host: &str| {
            let m = Manifest {
                dirs: vec![ManifestDir {
                    host: PathBuf::from(host),
                    guest: "/d".into(),
                    writable: false,
                }],
                ..Default::default()
            };
            m.settings("p", &folder)
        };
        let ok = grant("data").unwrap();
        assert_eq!(
            ok.grants[0].host,
            folder.join("data").canonicalize().unwrap()
        );
        let err = grant("../secret").unwrap_err().to_string();
        assert!(err.contains("leaves the plugins folder"), "{err}");
        let err = grant("data/../../secret").unwrap_err().to_string();
        assert!(err.contains("leaves the plugins folder"), "{err}");
        let err = grant("/etc").unwrap_err().to_string();
        assert!(err.contains("FLOWHOST_ALLOW_DIRS"), "{err}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path().join("secret"), folder.join("link")).unwrap();
            let err = grant("link").unwrap_err().to_string();
            assert!(err.contains("leaves the plugins folder"), "{err}");
        }
    }

    #[test]
    fn locate_suggests_close_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("echo.wasm"), b"").unwrap();
        assert_eq!(
            locate("echo", dir.path()).unwrap().wasm,
            dir.path().join("echo.wasm")
        );
        let err = locate("ecoh", dir.path()).unwrap_err().to_string();
        assert!(err.contains("did you mean `echo`"), "{err}");
        let err = locate("zzzzzz", dir.path()).unwrap_err().to_string();
        assert!(err.contains("available: echo"), "{err}");
    }

    #[test]
    fn json_args() {
        assert_eq!(
            read_json_arg("input", "[1]").unwrap(),
            serde_json::json!([1])
        );
        let err = read_json_arg("input", "{nope").unwrap_err();
        assert!(
            err.contains("input from the command line is not valid JSON"),
            "{err}"
        );
        assert!(
            read_json_arg("input", "@/no/such/file")
                .unwrap_err()
                .contains("/no/such/file")
        );
    }
}
