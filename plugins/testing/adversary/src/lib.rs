//! `adversary` (test only): misbehaves on request, so the host's sandbox and
//! error kinds can be tested. It implements the generated bindings directly
//! (not the SDK's typed glue) so that it can return output the SDK would
//! never produce, such as invalid JSON.
//!
//! Input `{"attack": "<name>", ...}`:
//! - `loop`: spins forever.
//! - `memory`: allocates and touches 1 MiB blocks until stopped.
//! - `recursion`: recurses without end on the wasm stack (stack overflow).
//! - `shadow_stack`: recurses with big frames (overflows the shadow stack in linear memory).
//! - `panic`: panics with a known message.
//! - `read_file` / `write_file` (`path`, `content`): file access; errors are `fatal` with the io error.
//! - `env`: returns the environment variables and arguments it sees.
//! - `invalid_json`: returns text that is not JSON.
//! - `huge_output` (`mb`, default 100): returns a JSON string of that many MiB.
//! - `guest_error` (`kind`, `message`): returns that plugin error.
//! - `count`: how many calls this instance has served (1 = fresh instance).
//! - `flaky` (`fail_times`, `kind`): fails with `kind` (default `retryable`)
//!   while the call's attempt number is at most `fail_times`; then returns
//!   `{"attempt": n, "idempotency_key": ...}`.
//! - `state` (`key`, default `calls`): increments the key in the execution
//!   state (the store's, shared with the daemon's `/workflows/{id}/state`).
//! - `sleep` (`ms`): sleeps, checking `cancelled()` each millisecond; returns
//!   `{"slept_ms": ms, "attempt": n}`.

use flowhost_sdk::__processor::{CallMeta, Guest, PluginError, PluginInfo};
use flowhost_sdk::{Value, glue, host, json};
use std::hint::black_box;

pub struct Adversary;

/// Calls served by this instance: shows whether the host reused it.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Guest for Adversary {
    fn info() -> PluginInfo {
        glue::info(
            "adversary",
            env!("CARGO_PKG_VERSION"),
            "processor",
            "misbehaves on request",
        )
    }

    fn process(meta: CallMeta, input: String) -> Result<String, PluginError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| PluginError::InvalidInput(format!("input: {e}")))?;
        let text = |key: &str| {
            input
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let fatal = |e: std::io::Error| PluginError::Fatal(e.to_string());
        match text("attack").as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut blocks = Vec::new();
                loop {
                    let mut block = vec![0u8; 1 << 20];
                    for i in (0..block.len()).step_by(4096) {
                        block[i] = 1;
                    }
                    blocks.push(black_box(block));
                }
            }
            "recursion" => Ok(deep(1).to_string()),
            "shadow_stack" => Ok(recurse(black_box(1)).to_string()),
            "panic" => panic!("adversary panicked on purpose"),
            "read_file" => {
                let content = std::fs::read_to_string(text("path")).map_err(fatal)?;
                Ok(json!({"content": content}).to_string())
            }
            "write_file" => {
                std::fs::write(text("path"), text("content")).map_err(fatal)?;
                Ok(json!({"written": true}).to_string())
            }
            "env" => {
                let vars: serde_json::Map<String, Value> = std::env::vars()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                let args: Vec<String> = std::env::args().collect();
                Ok(json!({"vars": vars, "args": args}).to_string())
            }
            "invalid_json" => Ok("{\"this is\": not json".to_string()),
            // Returns `text` as its output, byte for byte (the fuzzing of
            // what a hostile plugin returns).
            "raw" => Ok(text("text")),
            "huge_output" => {
                let mb = input.get("mb").and_then(Value::as_u64).unwrap_or(100) as usize;
                let mut s = String::with_capacity(mb * (1 << 20) + 2);
                s.push('"');
                s.extend(std::iter::repeat_n('x', mb * (1 << 20)));
                s.push('"');
                Ok(s)
            }
            "guest_error" => {
                let message = text("message");
                Err(match text("kind").as_str() {
                    "invalid_input" => PluginError::InvalidInput(message),
                    "retryable" => PluginError::Retryable(message),
                    _ => PluginError::Fatal(message),
                })
            }
            "count" => {
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Ok(json!({"calls_in_this_instance": n}).to_string())
            }
            "flaky" => {
                let fail_times = input.get("fail_times").and_then(Value::as_u64).unwrap_or(1);
                if u64::from(meta.attempt) <= fail_times {
                    let message = format!("flaky: attempt {} fails", meta.attempt);
                    return Err(match text("kind").as_str() {
                        "fatal" => PluginError::Fatal(message),
                        "invalid_input" => PluginError::InvalidInput(message),
                        _ => PluginError::Retryable(message),
                    });
                }
                Ok(
                    json!({"attempt": meta.attempt, "idempotency_key": meta.idempotency_key})
                        .to_string(),
                )
            }
            "state" => {
                // Counts its calls in the execution's state (the store's).
                let key = input.get("key").and_then(Value::as_str).unwrap_or("calls");
                let n = host::state::increment(key, 1)
                    .map_err(|e| PluginError::Fatal(format!("state: {e:?}")))?;
                Ok(json!({ "count": n }).to_string())
            }
            "sleep" => {
                let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
                for _ in 0..ms {
                    if host::cancelled() {
                        return Err(PluginError::Retryable("cancelled".into()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(json!({"slept_ms": ms, "attempt": meta.attempt}).to_string())
            }
            other => Err(PluginError::InvalidInput(format!(
                "unknown attack `{other}`"
            ))),
        }
    }
}

/// Recursion that lives on the wasm call stack only: the callee is read
/// through a volatile static, so the compiler can neither inline nor turn it
/// into a loop, and no frame data goes to the shadow stack in linear memory.
static DEEP: fn(u64) -> u64 = deep;

#[inline(never)]
fn deep(n: u64) -> u64 {
    // SAFETY: reading a plain `fn` pointer from a static.
    let next = unsafe { std::ptr::read_volatile(&DEEP) };
    next(n + 1).wrapping_add(n)
}

/// Recursion with big frames: overflows the shadow stack in linear memory
/// (seen by the host as an out-of-bounds memory access).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(black_box(depth + 1)) + frame[(depth % 64) as usize]
}

#[cfg(target_arch = "wasm32")]
flowhost_sdk::__processor::export!(Adversary with_types_in flowhost_sdk::__processor);
