//! The plugin runtime: WebAssembly components that implement the
//! `flowhost:plugin` contract (`wit/plugin.wit`), run sandboxed.
//!
//! Owns: the wasmtime engine and linker ([`Runtime`]), loading and the
//! compiled-code cache ([`cache`]), per-call stores with limits and a
//! deny-by-default WASI context ([`call`]), outbound HTTP under two
//! allow-lists with host-side secrets ([`net`]), typed calls into the three worlds
//! ([`Plugin`]), the plugins folder and manifests ([`registry`]), and golden
//! tests and benchmarks of single plugins ([`golden`], [`bench`]).
//!
//! Imports only the leaf modules `text`, `duration`, `failure` (its error
//! kinds convert into failure kinds), `warm` and `providers` (the key
//! variables of known model providers): the engine hands in execution state
//! through the [`ExecutionState`] trait.

pub mod bench;
mod bindings;
pub mod cache;
pub mod call;
pub mod error;
pub mod golden;
pub mod limits;
mod loaded;
pub mod net;
pub mod registry;
mod runtime;
pub mod state;

pub use call::{CallContext, CallEvents, CancelToken, DirGrant};
pub use error::{ErrorKind, PluginError};
pub use limits::{LimitOverrides, Limits};
pub use loaded::{
    CallMeta, CallStats, ErrorInfo, HookEvent, HookResult, Plugin, PluginInfo, StepOutput,
    TransitionInfo, WarmStats, standalone_meta,
};
pub use net::{HostRule, HttpGrant, HttpLimits, NetConfig, Secrets};
pub use runtime::{
    CONTRACT_PACKAGE, CONTRACT_VERSION, ComponentSummary, LoadReport, LoadSource, OperatorPool,
    PluginSettings, Runtime, RuntimeConfig, RuntimeError, WarmPool, World,
};
pub use state::{ExecutionState, MemoryState};
