use super::*;
use serde_json::json;

fn vars() -> Value {
    json!({
        "context": {"tasks": [{"task": "a"}, {"task": "b"}], "n": 3, "name": "peer", "job": null,
                    "tags": ["x", "y"], "nested": {"k": {"v": true}}, "raw": "{\"a\": [1, 2]}"},
        "input": {"pool_id": "p1"},
        "output": {"queue_depth": 7, "content": "done"}
    })
}

fn render(t: Value) -> Value {
    Expressions::new().render(&t, &vars()).unwrap()
}

#[test]
fn a_single_expression_renders_to_its_native_value() {
    assert_eq!(
        render(json!("{{ context.tasks }}")),
        json!([{"task": "a"}, {"task": "b"}])
    );
    assert_eq!(render(json!("{{ context.n }}")), json!(3));
    assert_eq!(render(json!("  {{ output.queue_depth + 1 }} ")), json!(8));
    assert_eq!(
        render(json!("{{ context.nested }}")),
        json!({"k": {"v": true}})
    );
    assert_eq!(render(json!("{{- context.name -}}")), json!("peer"));
    assert_eq!(render(json!("{{ context.missing }}")), json!(null));
}

#[test]
fn mixed_text_renders_to_a_string_with_json_for_collections() {
    assert_eq!(render(json!("n={{ context.n }}")), json!("n=3"));
    assert_eq!(
        render(json!("{{ context.n }} and {{ context.name }}")),
        json!("3 and peer")
    );
    assert_eq!(
        render(json!("tags: {{ context.tags }}")),
        json!(r#"tags: ["x","y"]"#)
    );
    assert_eq!(
        render(json!("{% for t in context.tags %}{{ t }};{% endfor %}")),
        json!("x;y;")
    );
}

#[test]
fn bare_paths_resolve_natively_and_other_strings_are_literals() {
    assert_eq!(
        render(json!("context.tasks")),
        json!([{"task": "a"}, {"task": "b"}])
    );
    assert_eq!(render(json!("output.queue_depth")), json!(7));
    assert_eq!(render(json!("context.nested.k.v")), json!(true));
    assert_eq!(render(json!("context.nope")), json!(null));
    assert_eq!(render(json!("contexts.tasks")), json!("contexts.tasks"));
    assert_eq!(render(json!("hello world")), json!("hello world"));
    assert_eq!(
        render(json!(" context.n")),
        json!(" context.n"),
        "spaces make it a literal"
    );
}

#[test]
fn maps_and_lists_render_recursively_and_scalars_stay() {
    let t = json!({"a": "{{ context.n }}", "b": ["{{ input.pool_id }}", 2, null], "c": {"d": "context.name"}, "e": 1.5});
    assert_eq!(
        render(t),
        json!({"a": 3, "b": ["p1", 2, null], "c": {"d": "peer"}, "e": 1.5})
    );
}

#[test]
fn filters_work_including_fromjson_and_tojson() {
    assert_eq!(
        render(json!("{{ context.raw | fromjson }}")),
        json!({"a": [1, 2]})
    );
    let text = render(json!("{{ context.tags | tojson }}"));
    let parsed: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(parsed, json!(["x", "y"]));
    assert_eq!(render(json!("{{ input.max | default(3) }}")), json!(3));
    assert_eq!(render(json!("{{ context.tags | length }}")), json!(2));
    let err = Expressions::new()
        .render(&json!("{{ context.name | fromjson }}"), &vars())
        .unwrap_err();
    assert!(err.to_string().contains("fromjson"), "{err}");
}

#[test]
fn conditions_see_context_input_and_output() {
    let e = Expressions::new();
    let yes = |c: &str| e.condition(c, &vars()).unwrap();
    assert!(yes("context.n > 2"));
    assert!(!yes("context.n > 3"));
    assert!(yes("output.queue_depth == 7 and input.pool_id == 'p1'"));
    assert!(yes("'x' in context.tags"));
    assert!(yes("context.tasks | length == 2"));
    assert!(yes("not context.missing"));
    assert!(yes(""), "an empty condition is true");
    assert!(yes("context.job == None") && yes("context.job == none") && yes("context.job == null"));
    assert!(yes("context.job is none"));
    // A missing key is undefined: falsy, but not equal to null.
    assert!(yes("context.missing is undefined") && !yes("context.missing == None"));
}

#[test]
fn bad_templates_and_conditions_are_reported_with_the_text() {
    let e = Expressions::new();
    let err = e
        .check_template(&json!({"a": ["{{ context.n + }}"]}))
        .unwrap_err();
    assert!(
        matches!(&err, ExprError::Template { template, .. } if template == "{{ context.n + }}"),
        "{err}"
    );
    assert!(e.check_template(&json!("{% for x in y %}")).is_err());
    assert!(
        e.check_template(&json!({"ok": "{{ context.n }}", "lit": "x"}))
            .is_ok()
    );
    let err = e.check_condition("context.n >").unwrap_err();
    assert!(
        err.to_string().starts_with("condition `context.n >`"),
        "{err}"
    );
    assert!(e.check_condition("").is_ok());
}

#[test]
fn runaway_templates_run_out_of_fuel() {
    let err = Expressions::new()
        .render(
            &json!(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            ),
            &vars(),
        )
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("fuel"), "{err}");
}

#[test]
fn a_value_that_is_not_json_is_an_error_not_null() {
    let err = Expressions::new()
        .render(&json!("{{ range }}"), &vars())
        .unwrap_err();
    assert!(
        matches!(&err, ExprError::Template { template, .. } if template == "{{ range }}"),
        "{err}"
    );
    assert!(err.to_string().contains("not a JSON value"), "{err}");
}

#[test]
fn unknown_filters_and_tests_are_found_without_evaluating() {
    let e = Expressions::new();
    assert_eq!(
        e.unknown_names("{{ x | upper | nosuch }} é {{ y is odd }} {{ z is not nosuchtest }}"),
        vec!["nosuch".to_string(), "nosuchtest".to_string()]
    );
    assert!(e.unknown_names("x is naïve or y | ünïcode").is_empty());
    assert!(
        e.unknown_names(r#"x ~ "a|b is c" ~ 'd | e\' | f'"#)
            .is_empty()
    );
    assert_eq!(
        e.unknown_names(r#""a|b" | nosuch"#),
        vec!["nosuch".to_string()]
    );
    // Text outside `{{ }}` is not code: `a | b` there is just text.
    assert!(
        e.check_template(&json!("café | nosuch is odd: {{ x | fromjson }}"))
            .is_ok()
    );
    assert!(e.check_condition("context.n is nosuchtest").is_err());
    assert!(e.check_condition("context.items | length > 0").is_ok());
    assert!(
        e.check_template(&json!("{{ context.x | nosuchfilter }}"))
            .unwrap_err()
            .to_string()
            .contains("unknown filter or test `nosuchfilter`")
    );
}

#[test]
fn jinja2_filters_and_python_methods_that_flatmachines_templates_use() {
    assert_eq!(
        render(json!(
            "{{ 'a long sentence here' | truncate(9, true, '...', leeway=0) }}"
        )),
        json!("a long...")
    );
    assert_eq!(
        render(json!(
            "{{ 'a long sentence here' | truncate(12, leeway=0) }}"
        )),
        json!("a long...")
    );
    assert_eq!(
        render(json!("{{ 'short' | truncate(500, true) }}")),
        json!("short")
    );
    assert_eq!(render(json!("{{ context.name.upper() }}")), json!("PEER"));
    assert_eq!(
        render(json!("{{ context.nested.items() | list | length }}")),
        json!(1)
    );
    assert_eq!(render(json!("{{ ' x '.strip() }}")), json!("x"));
}
