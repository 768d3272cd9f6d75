//! flowhost: a workflow host whose user logic runs as sandboxed WebAssembly plugins.
//!
//! # Layout
//! - [`config`]: machine configs (`spec: flatmachine` YAML): schema and
//!   validation with file, line and state in every error.
//! - [`expr`]: templates and conditions of machine configs (minijinja),
//!   rendering to native JSON values.
//! - [`plugin`]: the plugin runtime (wasmtime engine, sandbox, limits, cache,
//!   plugins folder, golden tests, benchmarks).
//! - [`engine`]: the state machine (resumable step function + local driver).
//! - [`backend`]: checkpoints, results and signals (memory, SQLite).
//! - [`worker`]: the job pool worker (claims, runs, completes, heartbeats).
//! - [`failure`]: the kinds of failure (plugin error kinds and the engine's).
//! - [`text`]: "did you mean" suggestions, escaping outside text.
//! - [`duration`]: bounded durations from outside, converted without panics.
//! - [`spawn`]: starting worker processes on the same store.
//! - [`warm`]: the settings of warm plugin pools.
//! - [`providers`]: model providers known by name (base URL, key variable).
//! - [`crash`]: named crash points for the fault-injection suite.
//! - [`daemon`]: `flowhost serve` (HTTP API, scaling workers, hot reload, metrics).
//!
//! The `flowhost` binary (the command line) is the `flowhost-cli` crate; this
//! library has no command-line dependencies.

pub mod backend;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod duration;
pub mod engine;
pub mod expr;
pub mod failure;
pub mod plugin;
pub mod providers;
pub mod spawn;
pub mod text;
pub mod warm;
pub mod worker;
