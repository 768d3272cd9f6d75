//! `flowhost validate`: every problem with file, line and state; exit 3.

use flowhost_e2e::{run, stderr, stdout};

#[test]
fn validate_reports_every_problem_with_file_line_and_state() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "spec: flatmachine\ndata:\n  name: g\n  plugins:\n    text: text\n  states:\n    start:\n      type: initial\n      plugin: text\n      transitions:\n        - to: done\n    done:\n      type: final\n",
    )
    .unwrap();
    let o = run(cache.path(), &["validate", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ok:") && stdout(&o).contains("starts at `start`"),
        "{}",
        stdout(&o)
    );

    let bad = dir.path().join("bad.yml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("plugin: text", "plugin: txt")
        .replace("- to: done", "- to: dnoe");
    std::fs::write(&bad, text).unwrap();
    let o = run(
        cache.path(),
        &["validate", good.to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:9: state `start`: unknown plugin `txt` (did you mean `text`?)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:11: state `start`: transition to unknown state `dnoe`"
        )),
        "{err}"
    );
    assert!(
        stdout(&o).contains("ok:"),
        "the good file is still reported ok"
    );
}

#[test]
fn on_error_accepts_every_kind_a_state_can_fail_with() {
    use flowhost::failure::FailureKind;
    let yaml = |kind: &str| {
        format!(
            "spec: flatmachine\ndata:\n  states:\n    start:\n      type: initial\n      on_error: {{{kind}: end}}\n      transitions: [{{to: end}}]\n    end: {{type: final}}\n"
        )
    };
    // Every plugin error kind is a failure kind.
    for kind in flowhost::plugin::ErrorKind::ALL {
        assert_eq!(FailureKind::from(kind).as_str(), kind.as_str());
    }
    for kind in FailureKind::ALL.into_iter().filter(|k| k.is_routable()) {
        let parsed = flowhost::config::parse(std::path::Path::new("m.yml"), &yaml(kind.as_str()));
        assert!(
            parsed.is_ok(),
            "on_error refuses `{kind}`: {:?}",
            parsed.err()
        );
    }
    let e = flowhost::config::parse(std::path::Path::new("m.yml"), &yaml("max_steps"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`max_steps` ends the execution"), "{e}");
    let e = flowhost::config::parse(std::path::Path::new("m.yml"), &yaml("timout"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `timeout`"), "{e}");
}
