//! flowhost: a workflow host whose user logic runs as sandboxed WebAssembly plugins.
//!
//! # Layout
//! - [`plugin`]: the plugin runtime (wasmtime engine, sandbox, limits, cache,
//!   plugins folder, golden tests, benchmarks).
//! - [`cli`]: the `flowhost` command line; thin: parse, call the library, print.

pub mod cli;
pub mod plugin;
