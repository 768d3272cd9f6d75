//! The compile cache: used on the second load; a corrupted or foreign entry
//! is rejected and rebuilt, never executed.

use flowhost::plugin::{
    CallContext, LoadSource, PluginSettings, Runtime, RuntimeConfig, standalone_meta,
};
use flowhost_e2e::{plugin, runtime};
use serde_json::json;
use std::path::{Path, PathBuf};

fn load(rt: &Runtime) -> flowhost::plugin::Plugin {
    rt.load_file(&plugin("echo"), PluginSettings::new("echo"))
        .unwrap()
}

fn entry(rt: &Runtime) -> PathBuf {
    let digest = load(rt).digest().to_string();
    rt.cache().unwrap().entry_path(&digest)
}

async fn works(p: &flowhost::plugin::Plugin) {
    let out = p
        .process(
            &standalone_meta("t"),
            &json!({"ok": true}),
            &CallContext::default(),
        )
        .await;
    assert_eq!(out, Ok(json!({"ok": true})));
}

fn fresh_source(cache: &Path) -> LoadSource {
    load(&runtime(Some(cache))).load_report().source
}

#[tokio::test]
async fn second_load_comes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(Some(dir.path()));
    let first = load(&rt);
    assert_eq!(first.load_report().source, LoadSource::Compiled);
    assert!(entry(&rt).is_file(), "the compiled code was not written");
    assert_eq!(load(&rt).load_report().source, LoadSource::Memory);

    let again = load(&runtime(Some(dir.path())));
    assert_eq!(
        again.load_report().source,
        LoadSource::DiskCache,
        "a new process must not recompile"
    );
    works(&again).await;
}

#[tokio::test]
async fn a_corrupted_entry_is_rejected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = entry(&runtime(Some(dir.path())));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let rt = runtime(Some(dir.path()));
    let p = load(&rt);
    assert_eq!(
        p.load_report().source,
        LoadSource::Compiled,
        "a corrupted entry must not be used"
    );
    works(&p).await;
    assert_eq!(
        fresh_source(dir.path()),
        LoadSource::DiskCache,
        "the rebuilt entry is used next time"
    );
}

#[tokio::test]
async fn junk_and_foreign_entries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = entry(&runtime(Some(dir.path())));
    std::fs::write(&path, b"not compiled code at all").unwrap();
    assert_eq!(fresh_source(dir.path()), LoadSource::Compiled);

    // A well-formed entry from an engine with other settings (fuel metering
    // changes the generated code) is refused by the compatibility check.
    let fuel_dir = tempfile::tempdir().unwrap();
    let fuel_rt = Runtime::new(RuntimeConfig {
        fuel: true,
        cache_dir: Some(fuel_dir.path().to_path_buf()),
        max_instances: 8,
        ..Default::default()
    })
    .unwrap();
    let foreign = entry(&fuel_rt);
    assert_ne!(
        foreign.file_name(),
        path.file_name(),
        "engine settings are part of the key"
    );
    std::fs::copy(&foreign, &path).unwrap();
    let rt = runtime(Some(dir.path()));
    let p = load(&rt);
    assert_eq!(
        p.load_report().source,
        LoadSource::Compiled,
        "a foreign entry must not be used"
    );
    works(&p).await;
}

/// The entry of another plugin copied over echo's entry (the repro of a
/// foreign-code attack): refused, and echo's own code runs.
#[tokio::test]
async fn another_plugins_entry_under_this_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(Some(dir.path()));
    let echo = entry(&rt);
    let adversary = rt
        .load_file(&plugin("adversary"), PluginSettings::new("adversary"))
        .unwrap();
    let foreign = rt.cache().unwrap().entry_path(adversary.digest());
    std::fs::copy(&foreign, &echo).unwrap();

    let p = load(&runtime(Some(dir.path())));
    assert_eq!(
        p.load_report().source,
        LoadSource::Compiled,
        "another plugin's entry must not be used"
    );
    let input = json!({"attack": "count"});
    let out = p
        .process(&standalone_meta("t"), &input, &CallContext::default())
        .await;
    assert_eq!(out, Ok(input), "echo's own code must run");
}

#[cfg(unix)]
#[test]
fn the_cache_directory_is_private_and_an_unsafe_one_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("new").join("cache");
    let rt = runtime(Some(&dir));
    assert!(rt.cache().is_some());
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a new cache directory is private");

    // A directory others can write to could hold planted code: not used.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = runtime(Some(&shared));
    assert!(
        rt.cache().is_none(),
        "a world-writable cache must be refused"
    );
    let p = load(&rt);
    assert_eq!(p.load_report().source, LoadSource::Compiled);
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);

    // A file where the directory should be: calls still work, compiled in memory.
    let file = base.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let rt = runtime(Some(&file));
    assert!(rt.cache().is_none());
    assert_eq!(load(&rt).load_report().source, LoadSource::Compiled);
}
