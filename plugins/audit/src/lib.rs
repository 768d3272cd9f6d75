//! `audit`: a hook that records machine events into the context and can
//! redirect transitions.
//!
//! Every event appends one entry to `context.audit` (a list): `"enter:<state>"`,
//! `"exit:<state>"`, `"transition:<from>-><to>"`, `"start"`, `"end"`,
//! `"error:<state>:<kind>"`, `"action:<name>"`. It also counts events in the
//! execution state under `audit_events`.
//!
//! Config `{"redirect": {"<to>": "<instead>"}}` sends a transition whose target
//! is `<to>` to `<instead>`; `{"on_error": "<state>"}` routes errors there.

use flowhost_sdk::{Error, HookEvent, HookOutcome, Meta, Value, host};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    redirect: BTreeMap<String, String>,
    #[serde(default)]
    on_error: Option<String>,
}

pub fn on_event(event: &HookEvent, _meta: &Meta, mut context: Value) -> Result<HookOutcome, Error> {
    let config: Config = host::config_as()?;
    let entry = match event {
        HookEvent::MachineStart => "start".to_string(),
        HookEvent::MachineEnd => "end".to_string(),
        HookEvent::StateEnter(s) => format!("enter:{s}"),
        HookEvent::StateExit(s) => format!("exit:{s}"),
        HookEvent::Transition { from, to } => format!("transition:{from}->{to}"),
        HookEvent::Error { state, kind, .. } => format!("error:{state}:{kind}"),
        HookEvent::Action(name) => format!("action:{name}"),
    };
    let Some(object) = context.as_object_mut() else {
        return Err(Error::invalid_input("context must be a JSON object"));
    };
    let audit = object
        .entry("audit")
        .or_insert_with(|| Value::Array(vec![]));
    let Some(list) = audit.as_array_mut() else {
        return Err(Error::invalid_input("context.audit must be a list"));
    };
    list.push(Value::String(entry));
    host::state::increment("audit_events", 1)?;

    let redirect = match event {
        HookEvent::Transition { to, .. } => config.redirect.get(to).cloned(),
        HookEvent::Error { .. } => config.on_error.clone(),
        _ => None,
    };
    Ok(HookOutcome {
        context: Some(context),
        redirect,
    })
}

flowhost_sdk::hook!(
    on_event,
    description = "Audits machine events into context.audit; can redirect transitions"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::json;
    use flowhost_sdk::testing::FakeHost;

    #[test]
    fn appends_entries_and_counts() {
        let host = FakeHost::new().install();
        let out = on_event(
            &HookEvent::StateEnter("a".into()),
            &Meta::test(),
            json!({"x": 1}),
        )
        .unwrap();
        let ctx = out.context.unwrap();
        let out = on_event(&HookEvent::StateExit("a".into()), &Meta::test(), ctx).unwrap();
        assert_eq!(
            out.context.unwrap(),
            json!({"x": 1, "audit": ["enter:a", "exit:a"]})
        );
        assert_eq!(host.state()["audit_events"], 2);
    }

    #[test]
    fn redirects_configured_transitions_only() {
        let _h = FakeHost::new()
            .config(json!({"redirect": {"b": "c"}}))
            .install();
        let t = |to: &str| HookEvent::Transition {
            from: "a".into(),
            to: to.into(),
        };
        assert_eq!(
            on_event(&t("b"), &Meta::test(), json!({}))
                .unwrap()
                .redirect
                .as_deref(),
            Some("c")
        );
        assert_eq!(
            on_event(&t("d"), &Meta::test(), json!({}))
                .unwrap()
                .redirect,
            None
        );
    }

    #[test]
    fn non_object_context_is_invalid_input() {
        let err = on_event(&HookEvent::MachineStart, &Meta::test(), json!([1])).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }
}
