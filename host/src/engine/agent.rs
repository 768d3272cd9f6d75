//! Agent states whose agent is a FlatAgents agent, run by the `llm` plugin:
//! its envelope unwrapped (`{output, usage}` or `{error: {kind, message,
//! retry_after_ms}}`), the tokens noted in the history (and so in the
//! metrics), the execution types that sample an agent — `parallel`
//! (`n_samples` calls at once, output `{results, count}`) and `mdap_voting`
//! (first answer to lead by `k_margin` votes, at most `max_candidates`
//! calls) — `retry_on_empty`, and `settings.max_agent_calls`.
//!
//! Part of the engine; imports `config`, `plugin` (call types) and `failure`.

use super::Engine;
use super::advance::{Frame, failure};
use super::history::Event;
use super::record::{Failure, Record};
use super::runner::Runner;
use crate::config::State;
use crate::config::schema::ExecutionType;
use crate::failure::FailureKind;
use crate::plugin::{CallContext, CallMeta};
use serde_json::{Value, json};
use std::sync::Arc;

/// What one model call gave.
struct Call {
    result: Result<Value, Failure>,
    usage: [u64; 3],
    model: Option<String>,
}

impl Engine {
    /// Runs the state's agent as its `execution` says; the output the
    /// machine sees.
    pub(super) async fn agent(
        &self,
        frame: &Frame,
        rec: &mut Record,
        state: &State,
        agent: &str,
        plugin: &Arc<dyn Runner>,
        input: Value,
    ) -> Result<Value, Failure> {
        let name = rec.state.clone();
        let ex = state.execution.as_ref();
        let kind = ex.map_or(ExecutionType::Default, |e| e.kind);
        let limit = frame.def.config.data().settings.max_agent_calls;
        let over = |rec: &Record, more: u64| {
            limit
                .filter(|max| rec.agent_calls + more > *max)
                .map(|max| {
                    failure(
                        FailureKind::MaxAgentCalls,
                        format!(
                            "the execution made {} agent calls; {more} more would pass settings.max_agent_calls ({max})",
                            rec.agent_calls
                        ),
                        &name,
                    )
                })
        };
        let meta = self.meta(rec, plugin.as_ref());
        let ctx = self.call_context(frame, rec);
        let input = Arc::new(input);
        let mut calls = Vec::new();
        let result = match kind {
            ExecutionType::Parallel => {
                let n = ex.and_then(|e| e.n_samples).unwrap_or(3).max(1);
                if let Some(f) = over(rec, u64::from(n)) {
                    return Err(f);
                }
                rec.agent_calls += u64::from(n);
                calls = self
                    .sample(frame, rec, plugin, &meta, &ctx, &input, n)
                    .await;
                let ok: Vec<Value> = calls
                    .iter()
                    .filter_map(|c| c.result.as_ref().ok().cloned())
                    .collect();
                match calls.iter().find_map(|c| c.result.as_ref().err()) {
                    Some(f) if ok.is_empty() => Err(f.clone()),
                    _ => Ok(json!({"count": ok.len(), "results": ok})),
                }
            }
            ExecutionType::MdapVoting => {
                let k = ex.and_then(|e| e.k_margin).unwrap_or(3).max(1);
                let most = ex.and_then(|e| e.max_candidates).unwrap_or(10).max(k);
                let mut votes: Vec<(Value, u32)> = Vec::new();
                let mut winner = None;
                // The first `k` samples can decide at the earliest: ask them at once.
                let mut batch = k;
                while winner.is_none() && (calls.len() as u32) < most {
                    let n = batch.min(most - calls.len() as u32);
                    if let Some(f) = over(rec, u64::from(n)) {
                        return Err(f);
                    }
                    rec.agent_calls += u64::from(n);
                    let round = self
                        .sample(frame, rec, plugin, &meta, &ctx, &input, n)
                        .await;
                    for call in &round {
                        if let Ok(answer) = &call.result {
                            match votes.iter_mut().find(|(v, _)| v == answer) {
                                Some((_, n)) => *n += 1,
                                None => votes.push((answer.clone(), 1)),
                            }
                        }
                    }
                    calls.extend(round);
                    let mut ranked: Vec<u32> = votes.iter().map(|(_, n)| *n).collect();
                    ranked.sort_unstable_by(|a, b| b.cmp(a));
                    let lead = ranked.first().copied().unwrap_or(0);
                    let second = ranked.get(1).copied().unwrap_or(0);
                    if lead >= second + k {
                        winner = votes
                            .iter()
                            .find(|(_, n)| *n == lead)
                            .map(|(v, _)| v.clone());
                    }
                    batch = 1;
                }
                // No answer led by k: the one with the most votes (first seen on a tie).
                let best = winner.or_else(|| {
                    let top = votes.iter().map(|(_, n)| *n).max()?;
                    votes
                        .iter()
                        .find(|(_, n)| *n == top)
                        .map(|(v, _)| v.clone())
                });
                match best {
                    Some(v) => Ok(v),
                    None => Err(calls
                        .iter()
                        .find_map(|c| c.result.as_ref().err().cloned())
                        .unwrap_or_else(|| {
                            failure(FailureKind::Fatal, "no agent call was made", &name)
                        })),
                }
            }
            ExecutionType::Default | ExecutionType::Retry => {
                if let Some(f) = over(rec, 1) {
                    return Err(f);
                }
                rec.agent_calls += 1;
                calls = self
                    .sample(frame, rec, plugin, &meta, &ctx, &input, 1)
                    .await;
                calls.first().map(|c| c.result.clone()).unwrap_or_else(|| {
                    Err(failure(FailureKind::Fatal, "no agent call was made", &name))
                })
            }
        };
        let usage = calls.iter().fold([0u64; 3], |acc, c| {
            [
                acc[0] + c.usage[0],
                acc[1] + c.usage[1],
                acc[2] + c.usage[2],
            ]
        });
        let model = calls
            .iter()
            .find_map(|c| c.model.clone())
            .unwrap_or_default();
        let called = Event::AgentCalled {
            state: name.clone(),
            agent: agent.to_string(),
            model,
            calls: calls.len() as u32,
            prompt_tokens: usage[0],
            completion_tokens: usage[1],
            total_tokens: usage[2],
        };
        self.note(frame, rec, called);
        let output = result?;
        if ex.is_some_and(|e| e.retry_on_empty) && is_empty(&output) {
            return Err(failure(
                FailureKind::Retryable,
                "the agent answered nothing (retry_on_empty)",
                &name,
            ));
        }
        Ok(output)
    }

    /// `n` calls of the agent at once, each noted in the history.
    #[allow(clippy::too_many_arguments)]
    async fn sample(
        &self,
        frame: &Frame,
        rec: &mut Record,
        plugin: &Arc<dyn Runner>,
        meta: &CallMeta,
        ctx: &CallContext,
        input: &Arc<Value>,
        n: u32,
    ) -> Vec<Call> {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (plugin, meta, ctx, input) =
                (plugin.clone(), meta.clone(), ctx.clone(), input.clone());
            set.spawn(async move {
                let started = std::time::Instant::now();
                let out = plugin.process(&meta, &input, &ctx).await;
                (i, out, started.elapsed())
            });
        }
        let mut done = Vec::with_capacity(n as usize);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(one) => done.push(one),
                Err(e) => tracing::error!("an agent call's task failed: {e}"),
            }
        }
        done.sort_by_key(|(i, _, _)| *i);
        let state = rec.state.clone();
        let mut calls = Vec::with_capacity(done.len());
        for (_, out, took) in done {
            let call = match out {
                Ok(envelope) => unwrap(envelope, &state),
                Err(e) => Call {
                    result: Err(failure(e.kind().into(), e.to_string(), &state)),
                    usage: [0; 3],
                    model: None,
                },
            };
            let event = Event::plugin_called(
                rec,
                plugin.name(),
                took,
                call.result.as_ref().err().map(|f| f.kind),
                call.result.as_ref().ok(),
            );
            self.note(frame, rec, event);
            calls.push(call);
        }
        calls
    }
}

/// Reads the `llm` plugin's envelope.
fn unwrap(envelope: Value, state: &str) -> Call {
    let usage = |key: &str| {
        envelope
            .pointer(&format!("/usage/{key}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let tokens = [
        usage("prompt_tokens"),
        usage("completion_tokens"),
        usage("total_tokens"),
    ];
    let model = envelope
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let result = if let Some(e) = envelope.get("error") {
        let kind = e
            .get("kind")
            .and_then(Value::as_str)
            .and_then(FailureKind::parse)
            .unwrap_or(FailureKind::Fatal);
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the agent failed")
            .to_string();
        let mut f = failure(kind, message, state);
        f.retry_after_ms = e.get("retry_after_ms").and_then(Value::as_u64);
        Err(f)
    } else if let Some(output) = envelope.get("output") {
        Ok(output.clone())
    } else {
        Err(failure(
            FailureKind::InvalidOutput,
            "the llm plugin answered without `output` or `error`",
            state,
        ))
    };
    Call {
        result,
        usage: tokens,
        model,
    }
}

/// An answer that says nothing: null, "", {}, [], an object whose values
/// are all empty (e.g. `{content: ""}`).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_become_outputs_or_failures() {
        let ok = unwrap(
            json!({"output": {"content": "hi"}, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, "model": "m"}),
            "s",
        );
        assert_eq!(ok.result.unwrap(), json!({"content": "hi"}));
        assert_eq!(ok.usage, [3, 1, 4]);
        let err = unwrap(
            json!({"error": {"kind": "retryable", "message": "429", "retry_after_ms": 1500}}),
            "s",
        );
        let f = err.result.unwrap_err();
        assert_eq!(
            (f.kind, f.retry_after_ms),
            (FailureKind::Retryable, Some(1500))
        );
        let odd = unwrap(json!({"something": 1}), "s");
        assert_eq!(odd.result.unwrap_err().kind, FailureKind::InvalidOutput);
    }

    #[test]
    fn empty_answers() {
        for v in [
            json!(null),
            json!(""),
            json!({"content": "  "}),
            json!([]),
            json!({}),
        ] {
            assert!(is_empty(&v), "{v}");
        }
        for v in [
            json!({"content": "x"}),
            json!(0),
            json!(false),
            json!({"a": null, "b": 1}),
        ] {
            assert!(!is_empty(&v), "{v}");
        }
    }
}
