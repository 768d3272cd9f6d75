//! The boundary between the generated WIT bindings and author functions:
//! JSON in, typed values, JSON out. Used by the export macros; not public API.

use crate::__processor::flowhost::plugin::types as wit;
use crate::types::{Error, HookEvent, HookOutcome, Meta, StepResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn info(name: &str, version: &str, kind: &str, description: &str) -> wit::PluginInfo {
    wit::PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        kinds: vec![kind.to_string()],
        description: description.to_string(),
        config_schema: None,
    }
}

pub fn meta(m: wit::CallMeta) -> Meta {
    Meta {
        execution_id: m.execution_id,
        machine: m.machine,
        state: m.state,
        step: m.step,
        attempt: m.attempt,
        idempotency_key: m.idempotency_key,
        deadline_ms: m.deadline_ms,
    }
}

pub fn error(e: Error) -> wit::PluginError {
    match e {
        Error::InvalidInput(m) => wit::PluginError::InvalidInput(m),
        Error::Retryable(m) => wit::PluginError::Retryable(m),
        Error::Fatal(m) => wit::PluginError::Fatal(m),
    }
}

/// Parses `json` into the author's input type; a mismatch is the caller's fault.
pub fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|e| Error::InvalidInput(format!("{what}: {e}")))
}

/// Serialises the author's output; a failure here is the plugin's own bug.
pub fn encode<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Fatal(format!("cannot encode output: {e}")))
}

pub fn process<I, O>(
    f: impl Fn(&Meta, I) -> Result<O, Error>,
    m: wit::CallMeta,
    input: &str,
) -> Result<String, wit::PluginError>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let run = || -> Result<String, Error> {
        let input = decode("input", input)?;
        encode(&f(&meta(m), input)?)
    };
    run().map_err(error)
}

pub fn hook_event(e: wit::HookEvent) -> HookEvent {
    match e {
        wit::HookEvent::MachineStart => HookEvent::MachineStart,
        wit::HookEvent::MachineEnd => HookEvent::MachineEnd,
        wit::HookEvent::StateEnter(s) => HookEvent::StateEnter(s),
        wit::HookEvent::StateExit(s) => HookEvent::StateExit(s),
        wit::HookEvent::Transition(t) => HookEvent::Transition {
            from: t.from,
            to: t.to,
        },
        wit::HookEvent::Error(e) => HookEvent::Error {
            state: e.state,
            kind: e.kind,
            message: e.message,
        },
        wit::HookEvent::Action(a) => HookEvent::Action(a),
    }
}

pub fn on_event<C>(
    f: impl Fn(&HookEvent, &Meta, C) -> Result<HookOutcome, Error>,
    event: wit::HookEvent,
    m: wit::CallMeta,
    context: &str,
) -> Result<wit::HookOutcome, wit::PluginError>
where
    C: DeserializeOwned,
{
    let run = || -> Result<wit::HookOutcome, Error> {
        let context = decode("context", context)?;
        let out = f(&hook_event(event), &meta(m), context)?;
        Ok(wit::HookOutcome {
            context: out.context.as_ref().map(encode).transpose()?,
            redirect: out.redirect,
        })
    };
    run().map_err(error)
}

pub fn run<C>(
    f: impl Fn(&Meta, C) -> Result<StepResult, Error>,
    m: wit::CallMeta,
    context: &str,
) -> Result<wit::StepResult, wit::PluginError>
where
    C: DeserializeOwned,
{
    let run = || -> Result<wit::StepResult, Error> {
        let context = decode("context", context)?;
        let out = f(&meta(m), context)?;
        Ok(wit::StepResult {
            output: encode(&out.output)?,
            next: out.next,
        })
    };
    run().map_err(error)
}
