//! What happened to an execution, in order: the events the step and the
//! driver note on the record as they go (`Record::journal`), written to the
//! store's history with the next save. Bounded per execution: a machine's
//! `settings.history_limit` (default [`DEFAULT_LIMIT`]; 0 keeps none).

use super::record::{Record, Status};
use crate::failure::FailureKind;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Events kept per execution unless the machine says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// One thing that happened to an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    StateEntered {
        state: String,
        step: u64,
        attempt: u32,
    },
    /// A state that runs a plugin (processor or step) called it; `error`
    /// when it failed. (Such a state has no `state_entered`: it entered
    /// `ms` before this event.)
    PluginCalled {
        state: String,
        step: u64,
        plugin: String,
        attempt: u32,
        /// Wall time of the call, by the engine's monotonic clock.
        ms: f64,
        /// Host and process that made the call.
        worker: Cow<'static, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<FailureKind>,
        /// Bytes of the output (as JSON), when the call succeeded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_bytes: Option<u64>,
    },
    /// An agent state's model calls: how many, the tokens they used.
    AgentCalled {
        state: String,
        agent: String,
        model: String,
        calls: u32,
        prompt_tokens: u64,
        completion_tokens: u64,
        total_tokens: u64,
    },
    RetryScheduled {
        state: String,
        /// The attempt that will run after the pause.
        attempt: u32,
        pause_ms: u64,
    },
    /// A failed state went elsewhere (`on_error`, or a hook's redirect).
    Routed {
        state: String,
        kind: FailureKind,
        to: String,
    },
    ChildrenStarted {
        state: String,
        children: usize,
    },
    /// Every child of the fan-out has an outcome (each child's own history
    /// tells its story).
    ChildrenFinished {
        state: String,
        done: usize,
        failed: usize,
        cancelled: usize,
    },
    Launched {
        state: String,
        child: String,
    },
    SignalReceived {
        state: String,
        channel: String,
    },
    /// `flowhost retry` re-ran a failed execution from its failed state.
    Retried {
        state: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<FailureKind>,
    },
    /// Cancelled by `flowhost cancel` (or its parent's cancellation).
    Cancelled {
        state: String,
        reason: String,
    },
    /// Stopped at a state boundary (a signal to the process, a lost lease).
    Interrupted {
        state: String,
        reason: String,
    },
    Finished {
        status: Status,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<FailureKind>,
    },
}

impl Event {
    /// A plugin call of the record's current state and attempt, made from
    /// this process, that took `took` and failed with `error` or gave `output`.
    pub(super) fn plugin_called(
        rec: &super::record::Record,
        plugin: &str,
        took: std::time::Duration,
        error: Option<FailureKind>,
        output: Option<&serde_json::Value>,
    ) -> Event {
        Event::PluginCalled {
            state: rec.state.clone(),
            step: rec.step,
            plugin: plugin.to_string(),
            attempt: rec.attempt,
            ms: took.as_secs_f64() * 1e3,
            worker: worker().into(),
            error,
            output_bytes: output.map(json_size),
        }
    }

    /// One line for a timeline: what happened, and where.
    pub fn line(&self) -> String {
        match self {
            Event::StateEntered {
                state,
                step,
                attempt,
            } => match attempt {
                1 => format!("entered `{state}` (step {step})"),
                n => format!("entered `{state}` (step {step}, attempt {n})"),
            },
            Event::PluginCalled {
                state,
                step,
                plugin,
                attempt,
                ms,
                worker,
                error,
                output_bytes,
            } => {
                let outcome = match (error, output_bytes) {
                    (Some(kind), _) => format!("failed: {kind}"),
                    (None, Some(n)) => format!("ok, {n} bytes out"),
                    (None, None) => "ok".into(),
                };
                let attempt = match attempt {
                    1 => String::new(),
                    n => format!(", attempt {n}"),
                };
                format!(
                    "`{state}` (step {step}{attempt}) called {plugin} in {ms:.1} ms on {worker}: {outcome}"
                )
            }
            Event::AgentCalled {
                state,
                agent,
                model,
                calls,
                prompt_tokens,
                completion_tokens,
                total_tokens,
            } => format!(
                "`{state}` asked agent {agent} ({model}) {calls} time{}: {total_tokens} tokens ({prompt_tokens} in, {completion_tokens} out)",
                if *calls == 1 { "" } else { "s" }
            ),
            Event::RetryScheduled {
                state,
                attempt,
                pause_ms,
            } => format!("`{state}` will try attempt {attempt} in {pause_ms} ms"),
            Event::Routed { state, kind, to } => {
                format!("`{state}` failed ({kind}), routed to `{to}`")
            }
            Event::ChildrenStarted { state, children } => {
                format!("`{state}` started {children} children")
            }
            Event::ChildrenFinished {
                state,
                done,
                failed,
                cancelled,
            } => format!(
                "`{state}` children finished: {done} done, {failed} failed, {cancelled} cancelled"
            ),
            Event::Launched { state, child } => format!("`{state}` launched {child}"),
            Event::SignalReceived { state, channel } => {
                format!("`{state}` received a signal on `{channel}`")
            }
            Event::Interrupted { state, reason } => {
                format!("stopped at `{state}`: {reason}")
            }
            Event::Cancelled { state, reason } => {
                format!("cancelled at `{state}`: {reason}")
            }
            Event::Retried {
                state,
                attempt,
                after,
            } => match after {
                Some(kind) => format!("retried `{state}` (attempt {attempt}) after {kind}"),
                None => format!("retried `{state}` (attempt {attempt})"),
            },
            Event::Finished {
                status,
                state,
                error,
            } => match error {
                Some(kind) => format!("{status} at `{state}` ({kind})"),
                None => format!("{status} at `{state}`"),
            },
        }
    }
}

/// This process, as history names it: `host:pid`.
pub fn worker() -> &'static str {
    static WORKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    WORKER.get_or_init(|| {
        let me = super::owner::this_process();
        format!("{}:{}", me.host, me.pid)
    })
}

/// Notes `event` on the record's journal at `at_ms`, numbered after the
/// record's last event.
pub fn note(rec: &mut Record, at_ms: u64, event: &Event) {
    match serde_json::to_string(event) {
        Ok(json) => {
            rec.history_seq += 1;
            rec.journal.push(crate::backend::NewEvent {
                seq: rec.history_seq,
                at_ms,
                json,
            });
        }
        Err(e) => tracing::warn!(execution = %rec.id, "a history event was not kept: {e}"),
    }
}

/// The `Finished` event of a record that ended.
pub fn finished(rec: &Record) -> Event {
    Event::Finished {
        status: rec.status,
        state: rec.state.clone(),
        error: rec.error.as_ref().map(|f| f.kind),
    }
}

/// The size of `value` written as compact JSON, without writing it anywhere.
pub(super) fn json_size(value: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // (Writing a Value to a sink that cannot fail does not fail.)
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
