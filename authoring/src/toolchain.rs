//! The pinned toolchains that turn sources into components, installed once
//! into a cache folder outside any project (`$FLOWHOST_TOOLCHAINS`, else
//! `$XDG_CACHE_HOME/flowhost/toolchains`, else `~/.cache/flowhost/toolchains`):
//!
//! - Python: componentize-py from PyPI, in a venv (`python/`).
//! - JavaScript: componentize-js from npm, at the versions of `pins/js/`
//!   (`js/`).
//! - Rust: the `wasm32-wasip2` target, through rustup.
//! - C: clang with a wasm32-wasi sysroot: `$WASI_SDK_PATH` (a wasi-sdk), else
//!   `clang` on the PATH with Debian's wasi-libc, installed with apt-get
//!   when missing and we are root.
//!
//! Each install holds a file lock, so parallel builds install once; a
//! changed pin reinstalls. What cannot be installed is a
//! `ToolchainMissing` error naming what is missing and how to get it.
//!
//! Imports only the crate root.

use crate::{Error, Lang, project::hex};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// componentize-py, as the repository's plugins use it.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The npm project that pins componentize-js (and its lock file).
const JS_PACKAGE: &str = include_str!("../pins/js/package.json");
const JS_LOCK: &str = include_str!("../pins/js/package-lock.json");
/// Debian's packages that build C for wasm32-wasi.
pub const C_PACKAGES: [&str; 4] = ["clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32"];

/// The pin of the JavaScript toolchain: a digest of its package and lock files.
pub fn js_pin() -> String {
    hex(&Sha256::digest(format!("{JS_PACKAGE}{JS_LOCK}").as_bytes()))
}

/// Where toolchains live, and how progress is reported.
#[derive(Debug, Clone)]
pub struct Toolchains {
    dir: PathBuf,
    note: fn(&str),
}

/// A C compiler that targets wasm32-wasi.
#[derive(Debug, Clone)]
pub struct CToolchain {
    pub clang: PathBuf,
    pub sysroot: Option<PathBuf>,
}

impl CToolchain {
    /// `clang` with the target, exec model and sysroot set.
    pub fn command(&self) -> Command {
        let mut cc = Command::new(&self.clang);
        cc.args(["--target=wasm32-wasi", "-mexec-model=reactor"]);
        if let Some(s) = &self.sysroot {
            cc.arg(format!("--sysroot={}", s.display()));
        }
        cc
    }
}

impl Toolchains {
    /// Toolchains in `dir`; `note` reports what is being installed.
    pub fn at(dir: PathBuf, note: fn(&str)) -> Toolchains {
        Toolchains { dir, note }
    }

    /// The default folder (see the module doc).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("FLOWHOST_TOOLCHAINS").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        cache.join("flowhost").join("toolchains")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn note(&self, text: &str) {
        (self.note)(text)
    }

    /// Holds `<dir>/<name>.lock` until dropped.
    fn lock(&self, name: &str) -> Result<std::fs::File, Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(self.dir.display(), e))?;
        let path = self.dir.join(format!("{name}.lock"));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
        file.lock().map_err(|e| Error::io(path.display(), e))?;
        Ok(file)
    }

    /// Makes sure `tool` is installed at `pin`: if it is missing, or its
    /// `stamp` file records another pin, runs `install` under the lock
    /// `<lock>.lock` (looking again once the lock is held, in case a
    /// parallel build installed it meanwhile) and then records the pin.
    fn install_once(
        &self,
        lock: &str,
        tool: &Path,
        stamp: &Path,
        pin: &str,
        install: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let installed =
            || tool.is_file() && std::fs::read_to_string(stamp).ok().as_deref() == Some(pin);
        if installed() {
            return Ok(());
        }
        let _lock = self.lock(lock)?;
        if installed() {
            return Ok(());
        }
        install()?;
        std::fs::write(stamp, pin).map_err(|e| Error::io(stamp.display(), e))
    }

    /// The plugin contract as a WIT folder (for projects without their own
    /// `wit/`): written once per contract version.
    pub fn wit_dir(&self) -> Result<PathBuf, Error> {
        let digest = hex(&Sha256::digest(crate::WIT.as_bytes()));
        let dir = self.dir.join(format!("wit-{}", &digest[..12]));
        let file = dir.join("plugin.wit");
        if !file.is_file() {
            let _lock = self.lock("wit")?;
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
            std::fs::write(&file, crate::WIT).map_err(|e| Error::io(file.display(), e))?;
        }
        Ok(dir)
    }

    /// A Python tool from PyPI at its pin, in its own venv `<dir>/<venv>`;
    /// returns the path of its executable `bin`.
    pub fn pip_tool(&self, lang: Lang, venv: &str, pin: &str, bin: &str) -> Result<PathBuf, Error> {
        let lock = venv;
        let venv = self.dir.join(venv);
        let tool = venv.join("bin").join(bin);
        self.install_once(lock, &tool, &venv.join("flowhost-pin"), pin, || {
            let missing = |what: &str, how: &str| Error::ToolchainMissing {
                lang,
                what: what.to_string(),
                how: how.to_string(),
            };
            let python_how = "install Python 3.10 or newer with venv \
                              (Debian/Ubuntu: apt-get install python3 python3-venv; macOS: brew install python)";
            if !succeeds(Command::new("python3").arg("--version")) {
                return Err(missing(&format!("python3 (to install {pin})"), python_how));
            }
            self.note(&format!("installing {pin} into {} (once)", venv.display()));
            let _ = std::fs::remove_dir_all(&venv);
            if !succeeds(Command::new("python3").args(["-m", "venv"]).arg(&venv)) {
                return Err(missing(
                    &format!("python3's venv module (to install {pin})"),
                    python_how,
                ));
            }
            let pip = Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", pin])
                .status();
            if !pip.is_ok_and(|s| s.success()) {
                return Err(missing(
                    pin,
                    "pip could not install it from PyPI (its message is above); check the network or a proxy (PIP_INDEX_URL)",
                ));
            }
            Ok(())
        })?;
        Ok(tool)
    }

    /// componentize-py (Python plugins).
    pub fn componentize_py(&self) -> Result<PathBuf, Error> {
        self.pip_tool(Lang::Python, "python", COMPONENTIZE_PY, "componentize-py")
    }

    /// componentize-js at the pinned versions (JavaScript plugins), and the
    /// wizer it should run.
    ///
    /// componentize-js starts wizer with an empty environment, so wizer's
    /// compile cache falls back to the account's home folder from the user
    /// database — which a service account may not have (`/nonexistent`).
    /// The returned wrapper runs wizer with its cache in the toolchain folder.
    pub fn componentize_js(&self) -> Result<(PathBuf, Option<PathBuf>), Error> {
        let tool = self.install_componentize_js()?;
        let dir = self.dir.join("js");
        let scope = dir.join("node_modules").join("@bytecodealliance");
        let wizer = std::fs::read_dir(&scope)
            .map_err(|e| Error::io(scope.display(), e))?
            .flatten()
            .map(|e| e.path().join("wizer"))
            .find(|p| {
                p.is_file()
                    && p.parent()
                        .and_then(|d| d.file_name())
                        .is_some_and(|n| n.to_string_lossy().starts_with("wizer-"))
            });
        let Some(wizer) = wizer else {
            return Ok((tool, None));
        };
        let wrapper = dir.join("wizer-with-cache");
        let script = format!(
            "#!/bin/sh\n# Written by flowhost: wizer with its compile cache here, not in $HOME.\n\
             XDG_CACHE_HOME='{}' exec '{}' \"$@\"\n",
            quoted(&dir.join("cache")),
            quoted(&wizer)
        );
        if std::fs::read_to_string(&wrapper).ok().as_deref() != Some(&script) {
            std::fs::write(&wrapper, &script).map_err(|e| Error::io(wrapper.display(), e))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io(wrapper.display(), e))?;
            }
        }
        Ok((tool, Some(wrapper)))
    }

    fn install_componentize_js(&self) -> Result<PathBuf, Error> {
        let dir = self.dir.join("js");
        let tool = dir
            .join("node_modules")
            .join(".bin")
            .join("componentize-js");
        self.install_once("js", &tool, &dir.join("flowhost-pin"), &js_pin(), || {
            if !succeeds(Command::new("npm").arg("--version")) {
                return Err(Error::ToolchainMissing {
                    lang: Lang::Js,
                    what: "node and npm (to install componentize-js 0.23.0)".into(),
                    how: "install Node.js 18 or newer with npm (Debian/Ubuntu: apt-get install nodejs npm; macOS: brew install node)".into(),
                });
            }
            self.note(&format!(
                "installing componentize-js into {} (once)",
                dir.display()
            ));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
            for (name, text) in [("package.json", JS_PACKAGE), ("package-lock.json", JS_LOCK)] {
                std::fs::write(dir.join(name), text)
                    .map_err(|e| Error::io(dir.join(name).display(), e))?;
            }
            // Versions come from the lock file; not `npm ci`, whose strict sync
            // check fails on lock files written without resolved URLs.
            let npm = Command::new("npm")
                .current_dir(&dir)
                .args([
                    "install",
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .status();
            if !npm.is_ok_and(|s| s.success()) || !tool.is_file() {
                return Err(Error::ToolchainMissing {
                    lang: Lang::Js,
                    what: "componentize-js 0.23.0".into(),
                    how: "npm could not install it (its message is above); check the network or the npm registry setting".into(),
                });
            }
            Ok(())
        })?;
        Ok(tool)
    }

    /// The `wasm32-wasip2` Rust target, added through rustup when missing.
    pub fn wasm_target(&self) -> Result<(), Error> {
        let Ok(out) = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
        else {
            return Ok(()); // no rustup: cargo names a missing target itself
        };
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
        {
            return Ok(());
        }
        let _lock = self.lock("rustup")?;
        self.note("adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
        let added = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
        if added.is_ok_and(|s| s.success()) {
            Ok(())
        } else {
            Err(Error::ToolchainMissing {
                lang: Lang::Rust,
                what: "the wasm32-wasip2 target".into(),
                how: "rustup could not add it (its message is above): run `rustup target add wasm32-wasip2`".into(),
            })
        }
    }

    /// A clang that builds wasm32-wasi reactors; installs Debian's packages
    /// when it is missing and we are root with apt-get.
    pub fn c(&self) -> Result<CToolchain, Error> {
        let sdk = std::env::var_os("WASI_SDK_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        self.c_with(sdk)
    }

    /// [`Toolchains::c`] with the wasi-sdk given (`$WASI_SDK_PATH`).
    fn c_with(&self, sdk: Option<PathBuf>) -> Result<CToolchain, Error> {
        let toolchain = match &sdk {
            Some(sdk) => CToolchain {
                clang: sdk.join("bin").join("clang"),
                sysroot: Some(sdk.join("share").join("wasi-sysroot")),
            },
            None => CToolchain {
                clang: PathBuf::from("clang"),
                sysroot: None,
            },
        };
        if self.c_works(&toolchain)? {
            return Ok(toolchain);
        }
        let packages = C_PACKAGES.join(" ");
        if let Some(sdk) = sdk {
            return Err(Error::ToolchainMissing {
                lang: Lang::C,
                what: format!("a wasi-sdk at WASI_SDK_PATH={}", sdk.display()),
                how: "its bin/clang could not build a wasm32-wasi module: point WASI_SDK_PATH at an unpacked wasi-sdk release".into(),
            });
        }
        if can_apt_install() {
            let _lock = self.lock("apt")?;
            self.note(&format!("installing {packages} with apt-get (once)"));
            if apt_install(&C_PACKAGES) && self.c_works(&toolchain)? {
                return Ok(toolchain);
            }
        }
        Err(Error::ToolchainMissing {
            lang: Lang::C,
            what: "clang with a wasm32-wasi sysroot (wasi-libc)".into(),
            how: format!(
                "Debian/Ubuntu: sudo apt-get install {packages}; elsewhere (macOS) \
                 unpack a wasi-sdk (github.com/WebAssembly/wasi-sdk/releases) and set WASI_SDK_PATH to it"
            ),
        })
    }

    /// Whether `toolchain` compiles and links a tiny reactor.
    fn c_works(&self, toolchain: &CToolchain) -> Result<bool, Error> {
        let dir = self.dir.join("c-probe");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let source = dir.join(format!("probe-{}.c", std::process::id()));
        std::fs::write(
            &source,
            "#include <stdlib.h>\nvoid *probe(size_t n) { return malloc(n); }\n",
        )
        .map_err(|e| Error::io(source.display(), e))?;
        let ok = succeeds(
            toolchain
                .command()
                .arg(&source)
                .arg("-o")
                .arg(source.with_extension("wasm")),
        );
        let _ = std::fs::remove_file(&source);
        let _ = std::fs::remove_file(source.with_extension("wasm"));
        Ok(ok)
    }
}

/// A path inside single quotes of a shell script.
fn quoted(path: &Path) -> String {
    path.display().to_string().replace('\'', "'\\''")
}

/// Runs a command quietly; true if it ran and succeeded.
/// Whether Debian packages can be installed here: root, with apt-get.
pub fn can_apt_install() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    root && succeeds(Command::new("apt-get").arg("--version"))
}

/// Installs Debian packages (`apt-get update`, then `install -y`); whether
/// it worked. Only where [`can_apt_install`].
pub fn apt_install(packages: &[&str]) -> bool {
    succeeds(Command::new("apt-get").args(["update", "-qq"]))
        && succeeds(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq"])
                .args(packages),
        )
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wasi_sdk_that_cannot_build_is_named_with_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = dir.path().join("not-a-wasi-sdk");
        std::fs::create_dir(&sdk).unwrap();
        let tc = Toolchains::at(dir.path().join("tc"), |_| {});
        let err = tc.c_with(Some(sdk.clone())).unwrap_err();
        assert!(
            matches!(&err, Error::ToolchainMissing { lang: Lang::C, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("C plugins need")
                && text.contains(&sdk.display().to_string())
                && text.contains("WASI_SDK_PATH"),
            "{text}"
        );
    }

    #[test]
    fn the_contract_is_written_once_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let tc = Toolchains::at(dir.path().to_path_buf(), |_| {});
        let wit = tc.wit_dir().unwrap();
        assert_eq!(
            std::fs::read_to_string(wit.join("plugin.wit")).unwrap(),
            crate::WIT
        );
        assert_eq!(tc.wit_dir().unwrap(), wit);
    }
}
