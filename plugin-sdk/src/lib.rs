//! Write flowhost plugins in Rust.
//!
//! A plugin is an ordinary function plus one macro line:
//!
//! ```ignore
//! use flowhost_sdk::{Error, Meta, Value};
//!
//! fn echo(_meta: &Meta, input: Value) -> Result<Value, Error> {
//!     Ok(input)
//! }
//!
//! flowhost_sdk::processor!(echo);
//! ```
//!
//! `cargo build --target wasm32-wasip2 --release` turns the crate (with
//! `crate-type = ["cdylib", "rlib"]`) into a component for the `processor`
//! world of `wit/plugin.wit`. The input and output can be any serde types; a
//! payload that does not deserialize becomes an `invalid-input` error.
//!
//! The same function runs natively under `cargo test`: the [`host`] functions
//! (log, progress, config, execution state) then talk to a [`testing::FakeHost`]
//! instead of the real host.
//!
//! # Layout
//! - [`types`]: the author-facing types ([`Meta`], [`Error`], [`HookEvent`], ...).
//! - [`host`]: calls into the host (log, progress, config, cancelled, state).
//! - `http` (feature `http`): outbound HTTP requests.
//! - [`testing`]: the fake host for native tests (not on wasm32).
//! - the `processor!`, `hook!` and `step!` macros export a function as a plugin.

extern crate self as flowhost_sdk;

pub mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod testing;
pub mod types;

#[doc(hidden)]
pub mod glue;

pub use serde_json::{Value, json};
pub use types::{Error, HookEvent, HookOutcome, Info, Meta, StepResult};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Generated bindings of the `processor` world.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod __processor {
    wit_bindgen::generate!({
        path: "../wit",
        world: "processor",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "flowhost_sdk::__processor",
        runtime_path: "flowhost_sdk::__wit_bindgen::rt",
    });
}

/// Generated bindings of the `hook` world (shares types with `processor`).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod __hook {
    wit_bindgen::generate!({
        path: "../wit",
        world: "hook",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "flowhost_sdk::__hook",
        runtime_path: "flowhost_sdk::__wit_bindgen::rt",
        with: {
            "flowhost:plugin/types@0.1.0": crate::__processor::flowhost::plugin::types,
            "flowhost:plugin/host@0.1.0": crate::__processor::flowhost::plugin::host,
        },
    });
}

/// Generated bindings of the `step` world (shares types with `processor`).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod __step {
    wit_bindgen::generate!({
        path: "../wit",
        world: "step",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "flowhost_sdk::__step",
        runtime_path: "flowhost_sdk::__wit_bindgen::rt",
        with: {
            "flowhost:plugin/types@0.1.0": crate::__processor::flowhost::plugin::types,
            "flowhost:plugin/host@0.1.0": crate::__processor::flowhost::plugin::host,
        },
    });
}

/// Exports `fn(&Meta, In) -> Result<Out, Error>` as a `processor` plugin.
///
/// `In` must implement `serde::de::DeserializeOwned` and `Out` must implement
/// `serde::Serialize`. An optional description shows up in `flowhost plugin inspect`:
/// `processor!(my_fn, description = "does a thing")`.
#[macro_export]
macro_rules! processor {
    ($func:path) => {
        $crate::processor!($func, description = "");
    };
    ($func:path, description = $desc:expr) => {
        #[doc(hidden)]
        pub struct __FlowhostProcessor;

        impl $crate::__processor::Guest for __FlowhostProcessor {
            fn info() -> $crate::__processor::PluginInfo {
                $crate::glue::info(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    "processor",
                    $desc,
                )
            }
            fn process(
                meta: $crate::__processor::CallMeta,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__processor::PluginError> {
                $crate::glue::process($func, meta, &input)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__processor::export!(__FlowhostProcessor with_types_in $crate::__processor);
    };
}

/// Exports `fn(&HookEvent, &Meta, Value) -> Result<HookOutcome, Error>` as a `hook` plugin.
#[macro_export]
macro_rules! hook {
    ($func:path) => {
        $crate::hook!($func, description = "");
    };
    ($func:path, description = $desc:expr) => {
        #[doc(hidden)]
        pub struct __FlowhostHook;

        impl $crate::__hook::Guest for __FlowhostHook {
            fn info() -> $crate::__hook::PluginInfo {
                $crate::glue::info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "hook", $desc)
            }
            fn on_event(
                event: $crate::__hook::HookEvent,
                meta: $crate::__hook::CallMeta,
                context: ::std::string::String,
            ) -> ::std::result::Result<$crate::__hook::HookOutcome, $crate::__hook::PluginError> {
                $crate::glue::on_event($func, event, meta, &context)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__hook::export!(__FlowhostHook with_types_in $crate::__hook);
    };
}

/// Exports `fn(&Meta, In) -> Result<StepResult, Error>` as a `step` plugin.
#[macro_export]
macro_rules! step {
    ($func:path) => {
        $crate::step!($func, description = "");
    };
    ($func:path, description = $desc:expr) => {
        #[doc(hidden)]
        pub struct __FlowhostStep;

        impl $crate::__step::Guest for __FlowhostStep {
            fn info() -> $crate::__step::PluginInfo {
                $crate::glue::info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "step", $desc)
            }
            fn run(
                meta: $crate::__step::CallMeta,
                context: ::std::string::String,
            ) -> ::std::result::Result<$crate::__step::StepResult, $crate::__step::PluginError> {
                $crate::glue::run($func, meta, &context)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__step::export!(__FlowhostStep with_types_in $crate::__step);
    };
}
