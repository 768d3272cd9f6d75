//! End-to-end tests: the real `flowhost` binary and library against the real
//! plugins. One test binary, one module per topic. Run with `cargo xtask test`.

mod agents;
mod authoring;
mod cache;
mod chaos;
mod cli;
mod daemon;
mod dashboard;
mod definitions;
mod engine;
mod failures;
mod fuzz;
mod hardening;
mod hostile;
mod polyglot;
mod postgres;
mod queue;
mod sandbox;
mod storage;
mod ui;
mod validate;
mod workers;
