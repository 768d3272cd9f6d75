//! `router`: a step that picks the next state from its input.
//!
//! The output is the input. The next state is, in order:
//! 1. `input.next` if it is a string;
//! 2. `config.routes[input[config.field]]` if `field` is set and the value is routed;
//! 3. `config.default`, if set;
//! 4. none (the machine's own transitions decide).

use flowhost_sdk::{Error, Meta, StepResult, Value, host};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    default: Option<String>,
}

pub fn run(_meta: &Meta, input: Value) -> Result<StepResult, Error> {
    let config: Config = host::config_as()?;
    let explicit = input
        .get("next")
        .and_then(Value::as_str)
        .map(str::to_string);
    let routed = config.field.as_deref().and_then(|field| {
        let key = match input.get(field)? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        config.routes.get(&key).cloned()
    });
    let next = explicit.or(routed).or(config.default);
    Ok(StepResult {
        output: input,
        next,
    })
}

flowhost_sdk::step!(
    run,
    description = "Picks the next state from input.next or a routing table"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::json;
    use flowhost_sdk::testing::FakeHost;

    #[test]
    fn explicit_next_wins() {
        let _h = FakeHost::new().config(json!({"default": "z"})).install();
        assert_eq!(
            run(&Meta::test(), json!({"next": "a"}))
                .unwrap()
                .next
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn routes_by_field_then_default() {
        let cfg = json!({"field": "kind", "routes": {"spam": "reject", "true": "yes"}, "default": "review"});
        let _h = FakeHost::new().config(cfg).install();
        assert_eq!(
            run(&Meta::test(), json!({"kind": "spam"}))
                .unwrap()
                .next
                .as_deref(),
            Some("reject")
        );
        assert_eq!(
            run(&Meta::test(), json!({"kind": true}))
                .unwrap()
                .next
                .as_deref(),
            Some("yes")
        );
        assert_eq!(
            run(&Meta::test(), json!({"kind": "ham"}))
                .unwrap()
                .next
                .as_deref(),
            Some("review")
        );
    }

    #[test]
    fn no_route_means_none() {
        let out = run(&Meta::test(), json!({"x": 1})).unwrap();
        assert_eq!((out.next, out.output), (None, json!({"x": 1})));
    }
}
