//! flowhost: a workflow host whose user logic runs as sandboxed WebAssembly plugins.
//!
//! # Layout
//! - [`expr`]: templates and conditions of machine configs (minijinja),
//!   rendering to native JSON values.
//! - [`plugin`]: the plugin runtime (wasmtime engine, sandbox, limits, cache,
//!   plugins folder, golden tests, benchmarks).
//! - [`cli`]: the `flowhost` command line; thin: parse, call the library, print.

pub mod cli;
pub mod expr;
pub mod plugin;
