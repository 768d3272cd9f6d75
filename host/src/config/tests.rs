use super::*;

/// Writes `yaml` (and empty child machine files it may name) into a temp dir
/// and parses it.
fn check(yaml: &str) -> Result<Machine, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.yml"), "").unwrap();
    let path = dir.path().join("m.yml");
    std::fs::write(&path, yaml).unwrap();
    load(&path)
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    check(yaml).expect_err("the config should be rejected").0
}

const GOOD: &str = r#"
spec: flatmachine
spec_version: "1.0.0"
data:
  name: demo
  plugins:
    text: text
    summarizer: {plugin: text, config: {max_sentences: 2}, limits: {timeout_ms: 500}}
  agents:
    worker: {plugin: text}
  machines:
    child: ./child.yml
  context:
    tasks: "{{ input.tasks }}"
  hooks:
    file: ../python/hooks.py
    class: DistributedWorkerHooks
  states:
    start:
      type: initial
      agent: worker
      input:
        task: "{{ context.task }}"
      output_to_context:
        result: "{{ output.result }}"
      on_error: {timeout: failed, default: failed}
      transitions:
        - condition: "context.result | length > 0"
          to: fan_out
        - to: failed
    fan_out:
      foreach: "{{ context.tasks }}"
      as: task
      machine: child
      transitions:
        - to: done
    failed:
      type: final
      output: {ok: false}
    done:
      type: final
      output:
        result: "{{ context.result }}"
"#;

#[test]
fn a_good_config_parses_with_its_initial_state() {
    let m = check(GOOD).unwrap();
    assert_eq!((m.name(), m.initial.as_str()), ("demo", "start"));
    assert_eq!(
        m.data().states.keys().collect::<Vec<_>>(),
        ["start", "fan_out", "failed", "done"]
    );
}

#[test]
fn the_initial_state_is_typed_else_start_else_first() {
    let without = GOOD.replace("      type: initial\n", "");
    assert_eq!(check(&without).unwrap().initial, "start");
    let renamed = without.replace("    start:\n", "    begin:\n");
    assert_eq!(check(&renamed).unwrap().initial, "begin");
}

#[test]
fn an_unknown_key_names_line_state_and_the_likely_key() {
    let yaml = GOOD.replace(
        "      transitions:\n        - to: done",
        "      trnsitions:\n        - to: done",
    );
    let e = &errors(&yaml)[0];
    assert_eq!(e.state.as_deref(), Some("fan_out"));
    let line = yaml.lines().position(|l| l.contains("trnsitions")).unwrap() + 1;
    assert_eq!(e.line, Some(line));
    assert!(
        e.message
            .contains("unknown key `trnsitions` (did you mean `transitions`?)"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}:{line}: state `fan_out`: ", e.file.display())),
        "{e}"
    );
}

#[test]
fn a_transition_to_a_missing_state_points_at_the_transition() {
    let yaml = GOOD.replace("        - to: done", "        - to: dnoe");
    let e = &errors(&yaml)[0];
    let line = yaml.lines().position(|l| l.contains("to: dnoe")).unwrap() + 1;
    assert_eq!((e.state.as_deref(), e.line), (Some("fan_out"), Some(line)));
    assert!(
        e.message
            .contains("unknown state `dnoe` (did you mean `done`?)"),
        "{e}"
    );
}

#[test]
fn unknown_references_are_reported_each() {
    let yaml = GOOD
        .replace("      agent: worker", "      agent: wroker")
        .replace("      machine: child", "      machine: kid");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
    assert!(
        errs[0]
            .message
            .contains("unknown agent `wroker` (did you mean `worker`?)"),
        "{}",
        errs[0]
    );
    assert!(errs[1].message.contains("unknown machine `kid`"));
    let plugin = GOOD.replace("      agent: worker", "      plugin: summariser");
    assert!(
        errors(&plugin)[0]
            .message
            .contains("unknown plugin `summariser` (did you mean `summarizer`?)")
    );
}

#[test]
fn bad_templates_and_conditions_name_the_state() {
    let yaml = GOOD.replace("\"{{ output.result }}\"", "\"{{ output.result + }}\"");
    let e = &errors(&yaml)[0];
    assert_eq!(e.state.as_deref(), Some("start"));
    assert!(e.message.contains("{{ output.result + }}"), "{e}");
    let yaml = GOOD.replace("context.result | length > 0", "context.result >");
    let e = &errors(&yaml)[0];
    let line = yaml
        .lines()
        .position(|l| l.contains("context.result >"))
        .unwrap()
        + 1;
    assert_eq!((e.state.as_deref(), e.line), (Some("start"), Some(line)));
    assert!(e.message.starts_with("condition `context.result >`"), "{e}");
}

#[test]
fn flatagents_agent_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("machine.yml");
    let yaml = GOOD
        .replace("    worker: {plugin: text}", "    worker: ./worker.yml")
        .replace(
            "  name: demo\n",
            "  name: demo\n  profiles: ./profiles.yml\n",
        );
    std::fs::write(dir.path().join("child.yml"), "").unwrap();
    let load = |yaml: &str| super::parse(&machine, yaml);

    let e = load(&yaml).unwrap_err().0;
    assert!(
        e.iter().any(|e| e
            .message
            .contains("agent `worker` (./worker.yml): cannot read `./worker.yml`")),
        "{e:?}"
    );
    assert!(
        e.iter().any(
            |e| e.message.contains("profiles `./profiles.yml`: cannot read") && e.line == Some(6)
        ),
        "{e:?}"
    );
    std::fs::write(
        dir.path().join("profiles.yml"),
        "spec: flatprofiles\ndata:\n  model_profiles:\n    fast: {provider: openai, name: gpt-x}\n  default: fast\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("worker.yml"),
        "spec: flatagent\ndata:\n  model: fats\n  user: 'Do {{ input.task }}'\n",
    )
    .unwrap();
    let e = load(&yaml).unwrap_err().0;
    assert!(
        e[0].message.contains("no profile `fats`") && e[0].message.contains("did you mean `fast`"),
        "{e:?}"
    );
    std::fs::write(
        dir.path().join("worker.yml"),
        "spec: flatagent\ndata:\n  model: fast\n  user: 'Do {{ input.task }}'\n  output: {done: {type: bool}}\n",
    )
    .unwrap();
    let m = load(&yaml).unwrap();
    let spec = &m.data.agents["worker"];
    assert_eq!(spec.plugin, "llm");
    let config = spec.config.as_ref().unwrap();
    assert_eq!(config["model"]["base_url"], "https://api.openai.com/v1");
    assert_eq!(config["agent"]["output"]["done"]["type"], "bool");
    let runs = m
        .data
        .states
        .values()
        .find_map(|s| s.runs.as_ref().filter(|r| r.llm));
    assert!(runs.is_some(), "the agent state runs an LLM agent");
    assert_eq!(
        m.files.len(),
        2,
        "agent and profiles kept for pinning: {:?}",
        m.files.keys()
    );

    // A pinned definition's texts are used, not the disk.
    std::fs::remove_file(dir.path().join("worker.yml")).unwrap();
    let options = super::Options {
        pinned: true,
        files: m.files.clone(),
        ..Default::default()
    };
    let again = super::parse_with(&machine, &yaml, &options).unwrap();
    assert_eq!(again.data.agents["worker"], *spec);
}

#[test]
fn structural_mistakes_are_caught() {
    let dead_end = GOOD.replace("      transitions:\n        - to: done\n", "");
    assert!(
        errors(&dead_end)[0]
            .message
            .contains("not final and has no transitions")
    );
    let kind = GOOD.replace("{timeout: failed, default: failed}", "{timout: failed}");
    assert!(
        errors(&kind)[0]
            .message
            .contains("unknown error kind `timout` (did you mean `timeout`?)")
    );
    let spec = GOOD.replace("spec: flatmachine", "spec: flatagent");
    assert!(
        errors(&spec)[0]
            .message
            .contains("`spec` must be `flatmachine`")
    );
    let state_type = GOOD.replace("type: initial", "type: inital");
    assert!(
        errors(&state_type)[0]
            .message
            .contains("unknown value `inital` (did you mean `initial`?)")
    );
    let deadline = GOOD.replace(
        "  name: demo\n",
        "  name: demo\n  settings: {timeout: -5}\n",
    );
    assert!(
        errors(&deadline)[0]
            .message
            .contains("`settings.timeout` must be a positive number of seconds"),
        "{:?}",
        errors(&deadline)
    );
    let limits = GOOD.replace("{timeout_ms: 500}", "{timeout: 500}");
    assert!(
        errors(&limits)[0]
            .message
            .contains("unknown limit `timeout`")
    );
    let two_initials = GOOD.replace("    fan_out:\n", "    fan_out:\n      type: initial\n");
    assert!(
        errors(&two_initials)[0]
            .message
            .contains("second `type: initial`")
    );
}

#[test]
fn unreadable_and_non_yaml_files_are_errors_not_panics() {
    let e = load(Path::new("/no/such/machine.yml")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
    let e = &errors("spec: [unclosed")[0];
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn validation_hands_out_the_typed_model() {
    let m = check(GOOD).unwrap();
    let data = m.data();
    assert_eq!(data.hooks, [Hook::BuiltinWorkerActions]);
    assert_eq!(
        data.machines.get("child"),
        Some(&ChildMachine::File("./child.yml".into()))
    );
    let summarizer = &data.plugins["summarizer"];
    assert_eq!(summarizer.plugin, "text");
    assert_eq!(summarizer.limits.timeout_ms, Some(500));
    assert_eq!(
        summarizer.config,
        Some(serde_json::json!({"max_sentences": 2}))
    );
    let start = &data.states["start"];
    let runs = start.runs.as_ref().unwrap();
    assert_eq!((runs.kind, runs.name.as_str()), (RunKind::Agent, "worker"));
    assert_eq!(runs.spec, PluginSpec::named("text"));
    assert_eq!(
        start.on_error.target(crate::failure::FailureKind::Timeout),
        Some("failed")
    );
    assert_eq!(
        start
            .on_error
            .target(crate::failure::FailureKind::NoTransition),
        Some("failed"),
        "default catches every other routable kind"
    );
    let fan_out = &data.states["fan_out"];
    assert_eq!(
        fan_out.machine,
        Some(Children::One(ChildSpec {
            machine: "child".into(),
            input: None
        }))
    );
}

#[test]
fn child_lists_hooks_and_on_error_forms_become_one_type_each() {
    let yaml = GOOD
        .replace(
            "      foreach: \"{{ context.tasks }}\"\n      as: task\n      machine: child\n",
            "      machine: [child, {name: child, input: {n: 1}}]\n      launch: child\n      hooks: [{name: text, args: {a: 1}}, {file: x.py, class: text}]\n      on_error: failed\n",
        );
    let m = check(&yaml).unwrap();
    let fan_out = &m.data().states["fan_out"];
    let children = fan_out.machine.as_ref().unwrap();
    assert!(matches!(children, Children::Parallel(_)));
    assert_eq!(children.list()[1].input, Some(serde_json::json!({"n": 1})));
    assert_eq!(fan_out.launch.len(), 1);
    assert_eq!(
        fan_out.on_error,
        OnError {
            by_kind: vec![],
            default: Some("failed".into())
        }
    );
    let text_with_args = PluginSpec {
        config: Some(serde_json::json!({"a": 1})),
        ..PluginSpec::named("text")
    };
    assert_eq!(
        fan_out.hooks,
        [
            Hook::Plugin(text_with_args),
            Hook::Plugin(PluginSpec::named("text"))
        ]
    );
}

#[test]
fn an_on_error_route_must_name_a_state() {
    let yaml = GOOD.replace(
        "on_error: {timeout: failed, default: failed}",
        "on_error: {timeout: [failed]}",
    );
    let e = errors(&yaml);
    assert!(
        e.iter()
            .any(|e| e.message.contains("`timeout` must name a state")),
        "{e:?}"
    );
}

#[test]
fn a_plugin_spec_may_ask_for_a_warm_pool_and_a_bad_one_is_named() {
    let machine = |pool: &str| {
        format!(
            "spec: flatmachine\ndata:\n  name: p\n  plugins:\n    t: {{plugin: text, pool: {pool}}}\n  states:\n    start: {{type: initial, plugin: t, transitions: [{{to: done}}]}}\n    done: {{type: final}}\n"
        )
    };
    let m = check(&machine("{min: 2, warm_up: true}")).unwrap();
    let spec = m.data().plugins.get("t").expect("the alias");
    let pool = spec.pool.as_ref().expect("a pool");
    assert_eq!((pool.min, pool.warm_up), (Some(2), Some(true)));
    for (bad, says) in [
        ("{min: 3, max: 1}", "min"),
        ("{mni: 1}", "mni"),
        ("{idle_timeout: soon}", "idle_timeout"),
    ] {
        let text: Vec<String> = errors(&machine(bad))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            text.iter().any(|e| e.contains("pool") && e.contains(says)),
            "{bad}: {text:?}"
        );
    }
}
