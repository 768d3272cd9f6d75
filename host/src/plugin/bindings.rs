//! Host-side bindings of the three plugin worlds, generated from `wit/`.
//!
//! `processor` generates the shared `flowhost:plugin/types` and `host`
//! interfaces; `hook` and `step` reuse them, so one host implementation and
//! one linker serve all three worlds.

pub mod processor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "processor",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

pub mod hook {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hook",
        imports: { default: async },
        exports: { default: async },
        with: {
            "flowhost:plugin/types": super::processor::flowhost::plugin::types,
            "flowhost:plugin/host": super::processor::flowhost::plugin::host,
        },
    });
}

pub mod step {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "step",
        imports: { default: async },
        exports: { default: async },
        with: {
            "flowhost:plugin/types": super::processor::flowhost::plugin::types,
            "flowhost:plugin/host": super::processor::flowhost::plugin::host,
        },
    });
}

pub use processor::flowhost::plugin::host as host_api;
pub use processor::flowhost::plugin::types as wit;
